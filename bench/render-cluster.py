#!/usr/bin/env python3
"""Renders docs/cluster-scale.png from target/bench-cluster.json (written by
`cargo bench --bench cluster`): each agent's cost (means over the agents)
against the cluster's attachments, one line per node count. Flat lines are
the point: an agent pays for its own objects and the node count, not for
the cluster's attachments.

    python3 -m venv /tmp/sim-venv && /tmp/sim-venv/bin/pip install matplotlib
    /tmp/sim-venv/bin/python bench/render-cluster.py [bench-cluster.json] [out.png]
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/bench-cluster.json")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs/cluster-scale.png")

# (title, y label, solid line's value of a point, dashed line's or None)
PANELS = [
    ("Agent RSS", "MiB", lambda p: p["mean"]["rss_mib"], None),
    ("Agent CPU, idle", "CPU seconds per minute", lambda p: p["mean"]["cpu_seconds_per_minute"], None),
    ("Bytes an agent's node receives, idle", "bytes per minute", lambda p: p["mean"]["rx_bytes_per_minute"], None),
    ("Bytes received while the cluster grew to it", "bytes per agent (no objects among them)", lambda p: p["mean"]["growth_rx_bytes"], None),
    (
        "Apply-to-Ready, one new attachment",
        "ms (solid p50, dashed p99)",
        lambda p: p["apply_to_ready_p50_ms"],
        lambda p: p["apply_to_ready_p99_ms"],
    ),
    (
        "API server, idle",
        "per second (solid requests, dashed watch events)",
        lambda p: p["api_requests_per_second"],
        lambda p: p["api_watch_events_per_second"],
    ),
]


def main():
    with open(SOURCE) as f:
        data = json.load(f)
    points = data["points"]
    by_nodes = {}
    for p in points:
        by_nodes.setdefault(p["nodes"], []).append(p)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (title, unit, solid, dashed) in zip(axes.flat, PANELS):
        for nodes, series in sorted(by_nodes.items()):
            series = sorted(series, key=lambda p: p["cluster_attachments"])
            xs = [p["cluster_attachments"] for p in series]
            (line,) = ax.plot(xs, [solid(p) for p in series], marker="o", label=f"{nodes} agents")
            if dashed is not None:
                ax.plot(xs, [dashed(p) for p in series], marker="x", linestyle="--", color=line.get_color())
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("attachments in the cluster")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    local = points[0]["local_per_agent"] if points else 0
    agentless = points[0]["agentless_nodes"] if points else 0
    fig.suptitle(
        f"netlet per-agent cost as the cluster grows around it: {local} attachments per agent, "
        f"the rest on {agentless} agentless nodes (cargo bench --bench cluster)"
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(OUT)
    print_table(points)


def print_table(points):
    """The README's table (markdown): means over the agents, and the ratio of
    each cost at the largest cluster over the smallest, per node count."""
    print("\n| agents | cluster attachments | RSS MiB | CPU ms/min idle | bytes/min idle "
          "| objects received while growing (max over agents) | bytes received while growing "
          "| apply-to-Ready p50 / p99 ms | API requests/s, watch events/s idle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in sorted(points, key=lambda p: (p["nodes"], p["cluster_attachments"])):
        m = p["mean"]
        grown = max(a["growth_watch_events"] for a in p["agents"])
        print(f"| {p['nodes']} | {p['cluster_attachments']:,} | {m['rss_mib']:.1f} | {m['cpu_seconds_per_minute'] * 1000:.1f} "
              f"| {m['rx_bytes_per_minute']:,.0f} | {grown} | {m['growth_rx_bytes']:,} "
              f"| {p['apply_to_ready_p50_ms']:.0f} / {p['apply_to_ready_p99_ms']:.0f} "
              f"| {p['api_requests_per_second']:.2f}, {p['api_watch_events_per_second']:.2f} |")
    print("\n| agents | attachments | RSS | CPU/min | bytes/min | apply-to-Ready p50 | p99 |")
    print("|---|---|---|---|---|---|---|")
    for nodes in sorted({p["nodes"] for p in points}):
        series = sorted((p for p in points if p["nodes"] == nodes), key=lambda p: p["cluster_attachments"])
        small, large = series[0], series[-1]

        def ratio(f):
            return f"{f(large) / f(small):.2f}x" if f(small) else "n/a"

        print(f"| {nodes} | {small['cluster_attachments']:,} -> {large['cluster_attachments']:,} "
              f"| {ratio(lambda p: p['mean']['rss_mib'])} | {ratio(lambda p: p['mean']['cpu_seconds_per_minute'])} "
              f"| {ratio(lambda p: p['mean']['rx_bytes_per_minute'])} | {ratio(lambda p: p['apply_to_ready_p50_ms'])} "
              f"| {ratio(lambda p: p['apply_to_ready_p99_ms'])} |")


if __name__ == "__main__":
    main()
