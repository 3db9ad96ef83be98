//! What a Network's status costs as nodes grow (root, a kube-apiserver from
//! e2e/kube-apiserver.sh): `cargo bench --bench network_status`. For each
//! node count in NETLET_BENCH_NODES (default "2,4,8"), that many real
//! agents, one per node namespace, realize one bridge Network; then one
//! attachment after another (NETLET_BENCH_ATTACHMENTS per node, default 2)
//! is created on the nodes in turn, each waited for until Ready. Counted
//! from the API server's and the agents' own metrics, per attachment:
//! writes (and 409 conflicts) of the Network's status, Network watch
//! events and their bytes sent to agents, and passes run by all agents.
//! NETLET_BENCH_AGENT runs another build of the agent (an older one, to
//! compare); NETLET_BENCH_LABELED=1 creates the attachments labeled for
//! their node, as a tool that knows netlet would (no agent but their
//! node's hears of them). Writes target/bench-network-status.json.

#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::kube::KubeCluster;
use harness::wait_until;

/// Sums of the API server's counters we look at.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct ApiCounts {
    network_status_writes: f64,
    network_status_conflicts: f64,
    network_watch_events: f64,
    network_watch_bytes: f64,
}

impl std::ops::Sub for ApiCounts {
    type Output = ApiCounts;
    fn sub(self, o: ApiCounts) -> ApiCounts {
        ApiCounts {
            network_status_writes: self.network_status_writes - o.network_status_writes,
            network_status_conflicts: self.network_status_conflicts - o.network_status_conflicts,
            network_watch_events: self.network_watch_events - o.network_watch_events,
            network_watch_bytes: self.network_watch_bytes - o.network_watch_bytes,
        }
    }
}

/// The value of a Prometheus sample line whose labels include all of `labels`.
fn samples<'a>(text: &'a str, metric: &'a str, labels: &'a [&'a str]) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(move |l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn api_counts(k: &KubeCluster) -> ApiCounts {
    let m = k.kubectl_ok("get --raw /metrics");
    let writes = ["resource=\"networks\"", "subresource=\"status\"", "verb=\"PUT\""];
    ApiCounts {
        network_status_writes: samples(&m, "apiserver_request_total", &writes).sum(),
        network_status_conflicts: samples(&m, "apiserver_request_total", &[writes[0], writes[1], writes[2], "code=\"409\""]).sum(),
        network_watch_events: samples(&m, "apiserver_watch_events_total", &["kind=\"Network\""]).sum(),
        network_watch_bytes: samples(&m, "apiserver_watch_events_sizes_sum", &["kind=\"Network\""]).sum(),
    }
}

/// Passes run so far by every agent.
fn agent_passes(k: &KubeCluster) -> f64 {
    k.nodes
        .iter()
        .map(|n| {
            let m = String::from_utf8_lossy(&n.in_node("curl -sf http://127.0.0.1:9464/metrics").stdout).into_owned();
            samples(&m, "netlet_reconciles_total", &[]).sum::<f64>()
        })
        .sum()
}

fn attachment(name: &str, node: &str, netns: &str, labeled: bool) -> String {
    let labels = if labeled { format!(", labels: {{netlet.io/node: {node}}}") } else { String::new() };
    format!(
        "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}, namespace: default{labels}}}\nspec: {{network: bench, nodeName: {node}, sandbox: {{netns: \"{netns}\"}}}}\n"
    )
}

#[derive(serde::Serialize)]
struct Row {
    nodes: usize,
    attachments: usize,
    network_status_bytes: usize,
    startup: ApiCounts,
    per_attachment: ApiCounts,
    agent_passes_per_attachment: f64,
}

/// Node `i`'s agent, as `KubeCluster::start_agent` runs it but from `bin`.
fn start_agent(k: &KubeCluster, i: usize, bin: &str) -> std::process::Child {
    let node = &k.nodes[i];
    let log = std::fs::File::create(node.dir.join("bench-agent.log")).unwrap();
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.name))
        .arg(bin)
        .args(["run", "--node-name", &node.node_name, "--metrics-addr", "127.0.0.1:9464", "--resync-period", "5s"])
        .arg("--state-dir")
        .arg(node.state_dir())
        .arg("--kubeconfig")
        .arg(&k.node_kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts")
}

fn run(nodes: usize, per_node: usize, bin: &str, labeled: bool) -> Row {
    let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
    let k = KubeCluster::start(&names.iter().map(String::as_str).collect::<Vec<_>>());
    k.apply("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: bench}\nspec:\n  ipam: {config: [{subnet: 10.242.0.0/16}]}\n");
    let before = api_counts(&k);
    let mut agents: Vec<std::process::Child> = (0..nodes).map(|i| start_agent(&k, i, bin)).collect();
    wait_until("every node's entry in the Network's status", Duration::from_secs(120), || {
        let net = k.get("network", "bench");
        net["status"]["nodes"].as_array().is_some_and(|n| n.len() == nodes)
    });
    std::thread::sleep(Duration::from_secs(3));
    let startup = api_counts(&k) - before;
    let (before, passes_before) = (api_counts(&k), agent_passes(&k));
    let total = nodes * per_node;
    let started = Instant::now();
    for j in 0..total {
        let (name, node) = (format!("a{j}"), &names[j % nodes]);
        k.apply(&attachment(&name, node, &k.nodes[0].ns(&name), labeled));
        k.wait_ready("attachment", &format!("default/{name}"), Duration::from_secs(60));
    }
    // The writes and passes that follow the last Ready settle.
    std::thread::sleep(Duration::from_secs(3));
    let churn = api_counts(&k) - before;
    let passes = agent_passes(&k) - passes_before;
    let status_bytes = serde_json::to_string(&k.get("network", "bench")["status"]).unwrap().len();
    let per = |v: f64| v / total as f64;
    let row = Row {
        nodes,
        attachments: total,
        network_status_bytes: status_bytes,
        startup,
        per_attachment: ApiCounts {
            network_status_writes: per(churn.network_status_writes),
            network_status_conflicts: per(churn.network_status_conflicts),
            network_watch_events: per(churn.network_watch_events),
            network_watch_bytes: per(churn.network_watch_bytes),
        },
        agent_passes_per_attachment: per(passes),
    };
    println!(
        "{nodes:>3} nodes: startup {:>4} status writes ({:>3} 409s) | per attachment: {:.2} status writes ({:.2} 409s), {:.1} Network watch events ({:.0} bytes), {:.1} agent passes | status {} bytes | {:.1} s",
        row.startup.network_status_writes,
        row.startup.network_status_conflicts,
        row.per_attachment.network_status_writes,
        row.per_attachment.network_status_conflicts,
        row.per_attachment.network_watch_events,
        row.per_attachment.network_watch_bytes,
        row.agent_passes_per_attachment,
        row.network_status_bytes,
        started.elapsed().as_secs_f64()
    );
    k.kubectl_ok("delete attachments --all -n default --timeout=300s");
    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the network status benchmark needs root (it builds throwaway network namespaces)");
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let sizes: Vec<usize> = env("NETLET_BENCH_NODES", "2,4,8").split(',').filter_map(|v| v.trim().parse().ok()).collect();
    let per_node: usize = env("NETLET_BENCH_ATTACHMENTS", "2").parse().unwrap_or(2);
    let bin = env("NETLET_BENCH_AGENT", harness::BIN);
    let labeled = env("NETLET_BENCH_LABELED", "0") == "1";
    let rows: Vec<Row> = sizes.iter().map(|&n| run(n, per_node, &bin, labeled)).collect();
    let by_nodes: BTreeMap<usize, &Row> = rows.iter().map(|r| (r.nodes, r)).collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-network-status.json");
    std::fs::write(&out, serde_json::to_string_pretty(&by_nodes).unwrap()).unwrap();
    println!("results: {}", out.display());
}
