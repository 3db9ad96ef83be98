#!/usr/bin/env python3
"""Renders docs/dashboard.png: the panels of charts/netlet/dashboards/netlet.json,
in the same order and with the same formulas, computed from /metrics scrapes
of a real agent during a benchmark run (not a Grafana screenshot; Grafana is
not installable here).

    sudo python3 -m venv /tmp/graf-venv && sudo /tmp/graf-venv/bin/pip install matplotlib
    sudo /tmp/graf-venv/bin/python bench/render-dashboard.py [path/to/netlet]

Runs the agent standalone in a throwaway network namespace (nlgraf*) on a
generated workload for about 100 s: 50 attachments with a published port
each, then 150 more, a bad object and a port conflict, churn, tampering
(a deleted veth, a flushed nft table), DNS queries, removals. It touches
nothing outside the namespaces it creates and kills only the agent it
started.
"""
import json, os, re, shutil, signal, subprocess, sys, tempfile, time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/netlet")
TAG = f"nlgraf{os.getpid() % 10000}"
NODE = f"{TAG}n"
WINDOW = 10.0  # seconds, like Grafana's $__rate_interval at this resolution


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True).stdout


def att(i, network="web"):
    return (f"---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: a{i}}}\n"
            f"spec: {{network: {network}, sandbox: {{netns: {TAG}-{i}}}}}\n"
            f"---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: p{i}}}\n"
            f"spec: {{attachment: a{i}, ports: [{{containerPort: 80, hostPort: {20000 + i}}}]}}\n")


def scrape():
    text = sh(f"ip netns exec {NODE} curl -s --max-time 2 http://127.0.0.1:9464/metrics", check=False)
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(netlet_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$', line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def run_workload(manifests, state):
    samples = []
    env = dict(os.environ, RUST_LOG="warn")
    # nsenter, not `ip netns exec`: the latter gives the agent a mount
    # namespace of its own, hiding the namespaces it creates from the host.
    agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{NODE}", BIN, "run", "--manifests", manifests, "--state-dir", state,
                              "--node-name", "graf", "--metrics-addr", "127.0.0.1:9464", "--resync-period", "5s"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    net = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: web}\nspec: {ipam: {config: [{subnet: 10.233.0.0/22}]}}\n"
    write = lambda name, text: open(os.path.join(manifests, name), "w").write(text)
    steps = {
        0: lambda: (write("net.yaml", net), write("first.yaml", "".join(att(i) for i in range(50)))),
        12: lambda: write("more.yaml", "".join(att(i) for i in range(50, 200))),
        26: lambda: write("bad.yaml", att(900, network="missing") +
                          "---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {name: clash}\n"
                          "spec: {attachment: a1, ports: [{containerPort: 81, hostPort: 20002}]}\n"),
        56: lambda: (sh(f"ip -n {NODE} link del $(ip -n {NODE} -o link show | grep -o 'nlv[0-9a-f]*' | head -1)", check=False),
                     sh(f"ip netns exec {NODE} nft flush table inet netlet", check=False)),
        64: lambda: os.remove(os.path.join(manifests, "bad.yaml")),
        80: lambda: os.remove(os.path.join(manifests, "more.yaml")),
    }
    churn = {t: (lambda t=t: write("churn.yaml", att(300 + t))) for t in range(34, 54, 4)}
    churn.update({t: (lambda: os.remove(os.path.join(manifests, "churn.yaml"))) for t in range(36, 56, 4)})
    started = time.time()
    done = set()
    try:
        while (now := time.time() - started) < 100:
            for t, action in list(steps.items()) + list(churn.items()):
                if t <= now and t not in done and (t, id(action)) not in done:
                    done.add(t) if t in steps else done.add((t, id(action)))
                    try:
                        action()
                    except OSError:
                        pass
            if 66 <= now < 78:
                # Embedded DNS: a local name, and a name that goes upstream.
                sh(f"ip netns exec {TAG}-3 getent hosts a7 >/dev/null; ip netns exec {TAG}-3 timeout 1 getent hosts example.invalid >/dev/null", check=False)
            samples.append((now, scrape()))
            time.sleep(max(0.0, 1.0 - (time.time() - started - now)))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait()
    return samples


def series(samples, name, by, gauge=False, window=WINDOW):
    """{label-values: [(t, value)]}: a gauge summed by `by`, or a rate over `window`."""
    out = defaultdict(list)
    for i, (t, s) in enumerate(samples):
        j = next((k for k in range(i, -1, -1) if t - samples[k][0] >= window), None)
        acc = defaultdict(float)
        for (n, labels), v in s.items():
            if n != name:
                continue
            key = tuple(dict(labels).get(b, "") for b in by)
            if gauge:
                acc[key] += v
            elif j is not None:
                acc[key] += (v - samples[j][1].get((n, labels), 0.0)) / (t - samples[j][0])
        for key, v in acc.items():
            out[key].append((t, v))
    return out


def quantile(samples, q, metric="netlet_reconcile_duration_seconds_bucket"):
    pts = []
    for i, (t, s) in enumerate(samples):
        j = next((k for k in range(i, -1, -1) if t - samples[k][0] >= WINDOW), None)
        if j is None:
            continue
        buckets = sorted((float(dict(l)["le"]) if dict(l)["le"] != "+Inf" else float("inf"), v - samples[j][1].get((n, l), 0.0))
                         for (n, l), v in s.items() if n == metric)
        if not buckets or buckets[-1][1] <= 0:
            continue
        rank, prev_le, prev_c = q * buckets[-1][1], 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    pts.append((t, prev_le))
                else:
                    pts.append((t, prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)))
                break
            prev_le, prev_c = le, c
    return pts


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    assert os.geteuid() == 0, "needs root (throwaway network namespaces)"
    dash = json.load(open(os.path.join(ROOT, "charts/netlet/dashboards/netlet.json")))
    work = tempfile.mkdtemp(prefix="netlet-graf-")
    manifests, state = os.path.join(work, "m"), os.path.join(work, "state")
    os.makedirs(manifests)
    sh(f"ip netns add {NODE} && ip -n {NODE} link set lo up")
    try:
        samples = run_workload(manifests, state)
    finally:
        os.makedirs(os.path.join(work, "empty"), exist_ok=True)
        subprocess.run(["nsenter", f"--net=/run/netns/{NODE}", BIN, "run", "--manifests", os.path.join(work, "empty"),
                        "--state-dir", state, "--once", "--metrics-addr", "off"], capture_output=True)
        for ns in sh("ip netns list").split():
            if ns.startswith(TAG):
                sh(f"ip netns del {ns}", check=False)
                shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    computed = {
        1: {"p50": quantile(samples, 0.5), "p99": quantile(samples, 0.99),
            "p50 of full passes": quantile(samples, 0.5, "netlet_full_reconcile_duration_seconds_bucket")},
        2: series(samples, "netlet_reconciles_total", ["result"]),
        3: series(samples, "netlet_reconcile_errors_total", ["reason"]),
        4: series(samples, "netlet_objects", ["kind", "ready"], gauge=True),
        5: series(samples, "netlet_kernel_mutations_total", ["kind"]),
        6: series(samples, "netlet_drift_repairs_total", ["kind"]),
        7: {},
        8: series(samples, "netlet_published_ports", ["protocol"], gauge=True),
        9: series(samples, "netlet_dns_queries_total", ["result"]),
    }
    used = series(samples, "netlet_addresses_in_use", ["network"], gauge=True)
    cap = series(samples, "netlet_address_capacity", ["network"], gauge=True)
    for key, pts in used.items():
        c = dict(cap.get(key, []))
        computed[7][key] = [(t, v / c[t]) for t, v in pts if c.get(t)]

    panels = dash["panels"]
    fig, axes = plt.subplots(3, 3, figsize=(15, 10), facecolor="#111217")
    for ax, panel in zip(axes.flat, panels):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#ccccdc", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        lines = computed.get(panel["id"], {})
        for key, pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
            if not pts:
                continue
            label = key if isinstance(key, str) else " ".join(k for k in key if k)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.3, label=label or "total")
        if lines:
            ax.legend(fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#ccccdc", loc="upper left")
        unit = panel["fieldConfig"]["defaults"].get("unit")
        ax.set_ylabel({"s": "seconds", "ops": "per second", "percentunit": "fraction", "short": "count"}.get(unit, ""), color="#8e8e8e", fontsize=8)
        ax.set_xlabel("seconds into the run", color="#8e8e8e", fontsize=8)
    fig.suptitle("netlet — dashboards/netlet.json panels, computed from /metrics scrapes of one benchmark run (bench/render-dashboard.py)",
                 color="#ccccdc", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = os.path.join(ROOT, "docs/dashboard.png")
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    print(out, os.path.getsize(out), "bytes,", len(samples), "scrapes")


if __name__ == "__main__":
    main()
