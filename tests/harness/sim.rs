//! A simulated cluster (issue 23): one real agent per simulated node, each
//! in its own node namespace on the underlay of [`KubeCluster`], against
//! the real API server; and "agentless" nodes that only exist as Node
//! objects, carrying the cluster's other attachments.
//!
//! The agentless nodes' attachments are written through the API as their
//! agent would leave them once Ready: labeled for their node and network,
//! with the teardown finalizer and a Ready status. So the cluster grows
//! around the agents while each agent's own objects stay fixed, and the
//! agents' cost can be compared across cluster sizes. Those attachments
//! are on a bridge network (`spread`) every node realizes; the agents'
//! nodes also share an overlay (`ov`) that selects them alone (label
//! `netlet.io/sim-agent`), so its per-node routes, FDB and neighbour
//! entries follow the agent count.

use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use netlet::api::{Attachment, AttachmentSpec, AttachmentStatus, Condition, Sandbox};

use super::kube::KubeCluster;
use super::kubectl::ready_of;
use super::{ip_json, wait_until};

/// The overlay across the agents' nodes, and its VXLAN device on a node.
pub const OVERLAY: &str = "ov";
pub const OVERLAY_DEVICE: &str = "nlx4100";
/// The bridge network every node realizes; the agentless nodes' attachments are on it.
pub const SPREAD: &str = "spread";
const AGENT_LABEL: &str = "netlet.io/sim-agent";
/// Where the agentless nodes' attachments get their (made-up) addresses.
const SPREAD_SUBNET: &str = "10.112.0.0/12";
/// Concurrent requests while growing the cluster.
const CREATE_POOL: usize = 32;

pub struct SimCluster {
    pub k: KubeCluster,
    /// Agentless nodes' names.
    pub agentless: Vec<String>,
    /// Attachments on agentless nodes so far (`x0` .. `x{n-1}`).
    pub elsewhere: usize,
    /// Each agent's PID (its node's index), once started.
    pub pids: Vec<u32>,
}

/// What one agent has cost so far (counters) and holds now (RSS).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct AgentSample {
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Bytes its node's underlay link received: the API server's answers
    /// and watch streams, bookmarks included (no other traffic reaches an
    /// idle node; the link's count is the node's IP octets plus framing).
    pub rx_bytes: u64,
    /// Objects it received on lists and watches (netlet_watch_events_total).
    pub watch_events: u64,
}

/// The API server's counters (its /metrics).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ApiSample {
    pub requests: f64,
    pub watch_events: f64,
}

/// Sum of a Prometheus metric's samples whose labels include all `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl SimCluster {
    /// An API server, `agents` node namespaces (no agent running yet),
    /// `agentless` Node objects, and the two networks.
    pub fn start(agents: usize, agentless: usize) -> SimCluster {
        let names: Vec<String> = (0..agents).map(|i| format!("a{i}")).collect();
        let k = KubeCluster::start(&names.iter().map(String::as_str).collect::<Vec<_>>());
        k.kubectl_ok(&format!("label nodes {} {AGENT_LABEL}=true", names.join(" ")));
        let agentless: Vec<String> = (0..agentless).map(|i| format!("v{i}")).collect();
        let nodes: String = agentless
            .iter()
            .map(|n| format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {n}, labels: {{kubernetes.io/hostname: {n}}}}}\n"))
            .collect();
        if !nodes.is_empty() {
            k.apply(&nodes);
        }
        k.apply(&format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {OVERLAY}}}\nspec:\n  driver: overlay\n  overlay: {{vni: 4100}}\n  ipam: {{config: [{{subnet: 10.80.0.0/16}}]}}\n  nodeSelector: {{{AGENT_LABEL}: \"true\"}}\n  allowedSandboxes: [netns]\n\
             ---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {SPREAD}}}\nspec:\n  ipam: {{config: [{{subnet: {SPREAD_SUBNET}}}]}}\n  allowedSandboxes: [netns]\n"
        ));
        SimCluster { k, agentless, elsewhere: 0, pids: Vec::new() }
    }

    pub fn agents(&self) -> usize {
        self.k.nodes.len()
    }

    /// Every agent, as the chart runs it (default resync period).
    pub fn start_agents(&mut self) {
        let kubeconfig = self.k.node_kubeconfig.clone();
        self.pids = self.k.nodes.iter_mut().map(|n| n.spawn_kube(&kubeconfig, &["--metrics-addr", "127.0.0.1:9464"])).collect();
    }

    /// `per_agent` attachments on each agent's node, alternately on the
    /// overlay and the bridge network, created unlabeled as a user would
    /// (the node's agent labels them); waits until all are Ready.
    pub fn add_local(&self, per_agent: usize, timeout: Duration) -> Vec<String> {
        let mut yaml = String::new();
        let mut names = Vec::new();
        for i in 0..self.agents() {
            for j in 0..per_agent {
                let (name, network) = (format!("l{i}x{j}"), if j % 2 == 0 { OVERLAY } else { SPREAD });
                yaml += &format!(
                    "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}, namespace: default}}\nspec: {{network: {network}, nodeName: a{i}, sandbox: {{netns: \"{{T}}{name}\"}}}}\n"
                );
                names.push(name);
            }
        }
        self.k.apply(&yaml);
        wait_until(&format!("{} local attachments Ready", names.len()), timeout, || {
            let listed = self.k.list("attachments", &format!("-n default {}", names.join(" ")));
            listed.iter().filter(|a| ready_of(a).0 == "True").count() == names.len()
        });
        names
    }

    /// Runs `f` with an admin client in the control plane's namespace (the
    /// API server listens on its loopback too), on a thread of its own.
    pub fn with_api<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let (cp, kubeconfig) = (self.k.cp.clone(), self.k.dir.join("kubeconfig"));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{cp}")).expect("the control plane's namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                f(kube::Client::try_from(config)?).await
            })
        })
        .join()
        .expect("the API thread")
        .expect("the API calls")
    }

    /// Grows the agentless nodes' attachments to `total`, round-robin over
    /// those nodes, each written as its agent would leave it.
    pub fn grow_elsewhere(&mut self, total: usize) {
        if total <= self.elsewhere {
            return;
        }
        let (from, nodes) = (self.elsewhere, self.agentless.clone());
        assert!(!nodes.is_empty(), "no agentless node to put attachments on");
        self.with_api(move |client| async move {
            let api: Api<Attachment> = Api::namespaced(client, "default");
            let writes = (from..total).map(|j| {
                let api = api.clone();
                let node = nodes[j % nodes.len()].clone();
                async move { with_retries(|| write_as_agent(&api, j, &node)).await }
            });
            futures::stream::iter(writes).buffer_unordered(CREATE_POOL).try_collect::<Vec<()>>().await?;
            Ok(())
        });
        self.elsewhere = total;
    }

    /// Agent `i`'s costs so far.
    pub fn agent_sample(&self, i: usize) -> AgentSample {
        let pid = self.pids[i];
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent runs");
        let rss_kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent runs");
        // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat has a command").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let node = &self.k.nodes[i];
        let link = ip_json(&node.name, "-s link show dev ul0");
        let rx_bytes = link.first().and_then(|l| l["stats64"]["rx"]["bytes"].as_u64()).expect("ul0's counters");
        let metrics = String::from_utf8_lossy(&node.in_node("curl -sf http://127.0.0.1:9464/metrics").stdout).into_owned();
        AgentSample {
            rss_kib: rss_kib.expect("VmRSS"),
            cpu_seconds: ticks as f64 / hz,
            rx_bytes,
            watch_events: metric_sum(&metrics, "netlet_watch_events_total", &[]) as u64,
        }
    }

    /// Agent `i`'s own metric `name` (summed over labels matching `labels`).
    pub fn agent_metric(&self, i: usize, name: &str, labels: &[&str]) -> f64 {
        let metrics = String::from_utf8_lossy(&self.k.nodes[i].in_node("curl -sf http://127.0.0.1:9464/metrics").stdout).into_owned();
        metric_sum(&metrics, name, labels)
    }

    pub fn api_sample(&self) -> ApiSample {
        let m = self.k.kubectl_ok("get --raw /metrics");
        ApiSample {
            requests: metric_sum(&m, "apiserver_request_total", &[]),
            watch_events: metric_sum(&m, "apiserver_watch_events_total", &[]),
        }
    }
}

/// `f` again while the API server answers that it is overloaded (a busy
/// machine makes it time out: 429, 5xx).
async fn with_retries<Fut: Future<Output = anyhow::Result<()>>>(f: impl Fn() -> Fut) -> anyhow::Result<()> {
    for attempt in 1.. {
        match f().await {
            Err(e) if attempt < 10 && e.downcast_ref::<kube::Error>().is_some_and(overloaded) => {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}

fn overloaded(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 429 || s.code >= 500)
}

/// Attachment `x{j}` on `node`, as that node's agent leaves it: created,
/// labeled, its finalizer added and its Ready status written.
async fn write_as_agent(api: &Api<Attachment>, j: usize, node: &str) -> anyhow::Result<()> {
    let name = format!("x{j}");
    let mut a = Attachment::new(
        &name,
        AttachmentSpec {
            network: SPREAD.into(),
            node_name: Some(node.into()),
            sandbox: Sandbox { netns: Some(name.clone()), ..Default::default() },
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a.metadata.labels = Some(
        [(netlet::source::kube::NODE_LABEL, node), (netlet::source::kube::NETWORK_LABEL, SPREAD)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    a.metadata.finalizers = Some(vec![netlet::source::kube::TEARDOWN_FINALIZER.into()]);
    let created = match api.create(&PostParams::default(), &a).await {
        // A retry after a create that went through but timed out.
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await?,
        result => result?,
    };
    let subnet: ipnet::Ipv4Net = SPREAD_SUBNET.parse().unwrap();
    // Made-up but distinct: the j-th address after the gateway.
    let ip = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 2 + j as u32);
    let mut ready = Condition::ready(true, "Ready", format!("realized on node {node}"));
    ready.last_transition_time = Some(netlet::api::now_rfc3339());
    ready.observed_generation = created.metadata.generation;
    let status = AttachmentStatus {
        phase: "Ready".into(),
        node: Some(node.into()),
        interface: Some("eth0".into()),
        host_interface: Some(format!("nl{:08x}", j)),
        ipv4_address: Some(format!("{ip}/{}", subnet.prefix_len())),
        gateway: Some(std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1).to_string()),
        mac_address: Some(format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", (j >> 24) & 0xff, (j >> 16) & 0xff, (j >> 8) & 0xff, j & 0xff)),
        sandbox_path: Some(format!("/run/netns/{name}")),
        observed_generation: created.metadata.generation,
        conditions: vec![ready],
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&name, &PatchParams { field_manager: Some("netlet".into()), ..Default::default() }, &Patch::Merge(&patch)).await?;
    Ok(())
}
