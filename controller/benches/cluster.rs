//! A simulated cluster's per-agent cost as the cluster grows around it
//! (issue 23, goal 3; root, a kube-apiserver from e2e/kube-apiserver.sh):
//! `cargo bench --bench cluster`.
//!
//! For each node count in NETLET_BENCH_NODES (default "10,30"), that many
//! real agents, one process per node namespace on an underlay (see
//! tests/harness/sim.rs), each with NETLET_BENCH_LOCAL attachments of its
//! own (default 4, half on an overlay across the agents' nodes, half on a
//! bridge network). The rest of the cluster's attachments are on
//! NETLET_BENCH_AGENTLESS nodes (default 10) that have a Node object but no
//! agent: written through the API as their agent would leave them (labeled
//! for their node, with its finalizer and a Ready status), so the agents
//! see a cluster of that size that they should not pay for, while their own
//! objects stay fixed. The cluster grows, without a restart, through the
//! attachment counts in NETLET_BENCH_ATTACHMENTS (default
//! "1000,5000,20000", the agentless nodes' attachments), and at each:
//! - per agent: RSS; CPU seconds per minute, bytes its node received
//!   (API answers and watch streams, on its underlay link) per minute and
//!   objects its watches delivered (netlet_watch_events_total) per minute,
//!   over an idle window of NETLET_BENCH_IDLE_SECS (default 60); objects
//!   and bytes received while the cluster grew to this size;
//! - apply-to-Ready of one new attachment on an agent's node, created
//!   unlabeled as a user would (NETLET_BENCH_ROUNDS rounds, default 30,
//!   on the agents in turn): from the create request to the watch event
//!   with the Ready status the agent wrote; p50 and p99;
//! - the API server: requests and watch events per second over the idle
//!   window (its apiserver_request_total and apiserver_watch_events_total;
//!   the bench's own scrapes are among the requests).
//!
//! Writes target/bench-cluster.json (after each point); bench/render-cluster.py
//! draws it. The agents are the build the bench was built with: `cargo bench`
//! runs release builds, `cargo test --bench cluster` debug ones.

#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use harness::sim::{AgentSample, ApiSample, SimCluster, SPREAD};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};
use netlet::api::{Attachment, AttachmentSpec, Sandbox};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

fn env_list(key: &str, default: &str) -> Vec<usize> {
    env_or(key, default).split(',').filter_map(|v| v.trim().parse().ok()).collect()
}

/// One agent at one cluster size.
#[derive(Clone, Debug, serde::Serialize)]
struct AgentCost {
    rss_mib: f64,
    cpu_seconds_per_minute: f64,
    rx_bytes_per_minute: f64,
    watch_events_per_minute: f64,
    /// While the cluster grew to this size.
    growth_watch_events: u64,
    growth_rx_bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Point {
    nodes: usize,
    agentless_nodes: usize,
    local_per_agent: usize,
    /// Every attachment in the cluster (the agents' own and the others).
    cluster_attachments: usize,
    agents: Vec<AgentCost>,
    mean: AgentCost,
    apply_to_ready_p50_ms: f64,
    apply_to_ready_p99_ms: f64,
    apply_to_ready_all_ms: Vec<f64>,
    api_requests_per_second: f64,
    api_watch_events_per_second: f64,
    idle_seconds: f64,
}

fn mean_of(agents: &[AgentCost]) -> AgentCost {
    let n = agents.len().max(1) as f64;
    let avg = |f: fn(&AgentCost) -> f64| agents.iter().map(f).sum::<f64>() / n;
    AgentCost {
        rss_mib: avg(|a| a.rss_mib),
        cpu_seconds_per_minute: avg(|a| a.cpu_seconds_per_minute),
        rx_bytes_per_minute: avg(|a| a.rx_bytes_per_minute),
        watch_events_per_minute: avg(|a| a.watch_events_per_minute),
        growth_watch_events: avg(|a| a.growth_watch_events as f64).round() as u64,
        growth_rx_bytes: avg(|a| a.growth_rx_bytes as f64).round() as u64,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn is_ready(a: &Attachment) -> bool {
    a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.is_true()))
}

/// `rounds` attachments, one at a time on the agents' nodes in turn: each
/// created, timed to its Ready status on a watch, then deleted and waited
/// out (so the agent's own count stays fixed).
async fn apply_to_ready(client: kube::Client, tag: String, label: String, agents: usize, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let api: Api<Attachment> = Api::namespaced(client, "default");
    let mut out = Vec::new();
    for round in 0..rounds {
        let name = format!("p{label}r{round}");
        let node = format!("a{}", round % agents);
        let mut events = watcher::watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).boxed();
        while !matches!(events.try_next().await?, Some(Event::InitDone)) {}
        let mut a = Attachment::new(
            &name,
            AttachmentSpec {
                network: SPREAD.into(),
                node_name: Some(node),
                sandbox: Sandbox { netns: Some(format!("{tag}{name}")), ..Default::default() },
                ..Default::default()
            },
        );
        a.metadata.namespace = Some("default".into());
        let created = Instant::now();
        api.create(&PostParams::default(), &a).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), events.try_next()).await?? {
                Some(Event::Apply(a)) if is_ready(&a) => break,
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        }
        out.push(created.elapsed().as_secs_f64() * 1e3);
        api.delete(&name, &DeleteParams::default()).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), events.try_next()).await?? {
                Some(Event::Delete(_)) => break,
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(out)
}

fn samples(sim: &SimCluster) -> (Vec<AgentSample>, ApiSample, Instant) {
    let agents = (0..sim.agents()).map(|i| sim.agent_sample(i)).collect();
    (agents, sim.api_sample(), Instant::now())
}

fn measure(sim: &mut SimCluster, local: usize, total_elsewhere: usize, idle: Duration, rounds: usize) -> Point {
    let (before_growth, _, _) = samples(sim);
    let started = Instant::now();
    sim.grow_elsewhere(total_elsewhere);
    println!("  {} attachments on agentless nodes ({:.0} s to grow)", sim.elsewhere, started.elapsed().as_secs_f64());
    // The API server's and the agents' work after the writes settle.
    std::thread::sleep(Duration::from_secs(10));
    let (a0, api0, t0) = samples(sim);
    std::thread::sleep(idle);
    let (a1, api1, t1) = samples(sim);
    let minutes = (t1 - t0).as_secs_f64() / 60.0;
    let agents: Vec<AgentCost> = (0..sim.agents())
        .map(|i| AgentCost {
            rss_mib: a1[i].rss_kib as f64 / 1024.0,
            cpu_seconds_per_minute: (a1[i].cpu_seconds - a0[i].cpu_seconds) / minutes,
            rx_bytes_per_minute: (a1[i].rx_bytes - a0[i].rx_bytes) as f64 / minutes,
            watch_events_per_minute: (a1[i].watch_events - a0[i].watch_events) as f64 / minutes,
            growth_watch_events: a0[i].watch_events - before_growth[i].watch_events,
            growth_rx_bytes: a0[i].rx_bytes - before_growth[i].rx_bytes,
        })
        .collect();
    let seconds = (t1 - t0).as_secs_f64();
    let (tag, label, n) = (sim.k.nodes[0].tag.clone(), total_elsewhere.to_string(), sim.agents());
    let mut latencies = sim.with_api(move |client| apply_to_ready(client, tag, label, n, rounds));
    let all = latencies.clone();
    latencies.sort_by(f64::total_cmp);
    Point {
        nodes: sim.agents(),
        agentless_nodes: sim.agentless.len(),
        local_per_agent: local,
        cluster_attachments: sim.elsewhere + local * sim.agents(),
        mean: mean_of(&agents),
        agents,
        apply_to_ready_p50_ms: percentile(&latencies, 0.5),
        apply_to_ready_p99_ms: percentile(&latencies, 0.99),
        apply_to_ready_all_ms: all,
        api_requests_per_second: (api1.requests - api0.requests) / seconds,
        api_watch_events_per_second: (api1.watch_events - api0.watch_events) / seconds,
        idle_seconds: seconds,
    }
}

fn print_row(p: &Point) {
    println!(
        "{:>5} {:>7} {:>8.1} {:>8.3} {:>9.0} {:>7.1} {:>8} {:>9} {:>7.1} {:>7.1} {:>8.1} {:>8.1}",
        p.nodes,
        p.cluster_attachments,
        p.mean.rss_mib,
        p.mean.cpu_seconds_per_minute,
        p.mean.rx_bytes_per_minute,
        p.mean.watch_events_per_minute,
        p.mean.growth_watch_events,
        p.mean.growth_rx_bytes,
        p.apply_to_ready_p50_ms,
        p.apply_to_ready_p99_ms,
        p.api_requests_per_second,
        p.api_watch_events_per_second
    );
}

/// Each figure at the largest cluster over the same figure at the
/// smallest, per node count.
fn ratios(points: &[Point], print: bool) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut nodes: Vec<usize> = points.iter().map(|p| p.nodes).collect();
    nodes.dedup();
    for n in nodes {
        let at: Vec<&Point> = points.iter().filter(|p| p.nodes == n).collect();
        let (Some(small), Some(large)) = (at.first(), at.last()) else { continue };
        let r = |f: fn(&Point) -> f64| if f(small) > 0.0 { f(large) / f(small) } else { f64::NAN };
        let row = serde_json::json!({
            "nodes": n,
            "from_attachments": small.cluster_attachments,
            "to_attachments": large.cluster_attachments,
            "rss": r(|p| p.mean.rss_mib),
            "cpu_per_minute": r(|p| p.mean.cpu_seconds_per_minute),
            "rx_bytes_per_minute": r(|p| p.mean.rx_bytes_per_minute),
            "apply_to_ready_p50": r(|p| p.apply_to_ready_p50_ms),
            "apply_to_ready_p99": r(|p| p.apply_to_ready_p99_ms),
        });
        if !print {
            out.push(row);
            continue;
        }
        println!(
            "{n} nodes, {} -> {} cluster attachments: RSS x{:.2}, CPU/min x{:.2}, bytes/min x{:.2}, apply-to-Ready p50 x{:.2}, p99 x{:.2}",
            small.cluster_attachments,
            large.cluster_attachments,
            row["rss"].as_f64().unwrap_or(f64::NAN),
            row["cpu_per_minute"].as_f64().unwrap_or(f64::NAN),
            row["rx_bytes_per_minute"].as_f64().unwrap_or(f64::NAN),
            row["apply_to_ready_p50"].as_f64().unwrap_or(f64::NAN),
            row["apply_to_ready_p99"].as_f64().unwrap_or(f64::NAN),
        );
        out.push(row);
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the cluster benchmark needs root (it builds throwaway network namespaces)");
    let node_counts = env_list("NETLET_BENCH_NODES", "10,30");
    let sizes = env_list("NETLET_BENCH_ATTACHMENTS", "1000,5000,20000");
    let local: usize = env_or("NETLET_BENCH_LOCAL", "4").parse().expect("NETLET_BENCH_LOCAL");
    let agentless: usize = env_or("NETLET_BENCH_AGENTLESS", "10").parse().expect("NETLET_BENCH_AGENTLESS");
    let idle = Duration::from_secs(env_or("NETLET_BENCH_IDLE_SECS", "60").parse().expect("NETLET_BENCH_IDLE_SECS"));
    let rounds: usize = env_or("NETLET_BENCH_ROUNDS", "30").parse().expect("NETLET_BENCH_ROUNDS");
    let mut points = Vec::new();
    for &nodes in &node_counts {
        let started = Instant::now();
        let mut sim = SimCluster::start(nodes, agentless);
        sim.start_agents();
        sim.add_local(local, Duration::from_secs(120 + 4 * nodes as u64));
        println!("{nodes} agents, {local} attachments each, Ready in {:.0} s", started.elapsed().as_secs_f64());
        for &size in &sizes {
            let point = measure(&mut sim, local, size, idle, rounds);
            print_row(&point);
            points.push(point);
            // Written as it goes: a long sweep keeps what it measured.
            write_results(&points);
        }
        // Dropping the cluster stops the agents and the API server (the
        // agentless nodes' finalizers never need releasing) and removes
        // every namespace it made.
    }
    println!("\nper agent (means over agents); idle window {} s; growth = received while the cluster grew to this size", idle.as_secs());
    println!(
        "{:>5} {:>7} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8}",
        "nodes", "attach", "RSS MiB", "CPU s/m", "rx B/m", "obj/m", "grow obj", "grow B", "p50 ms", "p99 ms", "API rq/s", "API ev/s"
    );
    for p in &points {
        print_row(p);
    }
    ratios(&points, true);
    println!("results: {}", write_results(&points).display());
}

fn write_results(points: &[Point]) -> std::path::PathBuf {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cluster.json");
    let json = serde_json::json!({ "points": points, "ratios": ratios(points, false) });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    out
}
