//! Pods on the real one-node cluster (root; e2e/local-cluster.sh, the
//! agent installed by its chart): `cargo bench --bench pods`.
//!
//! - kubelet's pod start-up latency (the bench's create request to the
//!   watch event with the pod Ready; a pause container, no probe) without
//!   netlet-cni chained (`cni.enabled=false`), then with it, for a pod
//!   without netlet networks and for one annotated onto a bridge network;
//! - netlet-cni's ADD as the agent serves it (the call in, to the answer
//!   with the pod's attachments realized: the agent's `CNI call answered
//!   elapsed_ms`), with 1, 10 and 100 annotated pods already on the node
//!   (NETLET_BENCH_PODS, comma-separated).
//!
//! Each figure is ROUNDS pods created and deleted one after the other; p50
//! and p99 (with 20 rounds, the p99 is the worst). Writes
//! target/bench-pods.json, and the agent's log to
//! target/bench-pods-agent.log (NETLET_BENCH_LOG sets its RUST_LOG).

#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use harness::cluster::{LocalCluster, SYSTEM};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};

const ROUNDS: usize = 20;
const AGENT: &str = "app.kubernetes.io/name=netlet";
const ROLLOUT: Duration = Duration::from_secs(180);

fn pod(name: &str, networks: Option<&str>) -> Pod {
    let annotations = networks.map(|n| format!("\"annotations\": {{\"netlet.io/networks\": \"{n}\"}},")).unwrap_or_default();
    serde_json::from_str(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
            "metadata": {{"name": "{name}", "namespace": "default", {annotations} "labels": {{"bench": "pods"}}}},
            "spec": {{"terminationGracePeriodSeconds": 0,
                      "containers": [{{"name": "pause", "image": "k8s.gcr.io/pause:3.2", "imagePullPolicy": "Never"}}]}}}}"#
    ))
    .unwrap()
}

fn is_ready(p: &Pod) -> bool {
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// (p50, p99) of `values`, in ms.
fn percentiles(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99))
}

#[derive(serde::Serialize, Clone, Debug)]
struct Figure {
    what: String,
    rounds: usize,
    p50_ms: f64,
    p99_ms: f64,
    all_ms: Vec<f64>,
}

fn figure(what: &str, all: Vec<f64>) -> Figure {
    let (p50, p99) = percentiles(&all);
    let f = Figure {
        what: what.into(),
        rounds: all.len(),
        p50_ms: p50,
        p99_ms: p99,
        all_ms: all.iter().map(|v| (v * 10.0).round() / 10.0).collect(),
    };
    println!("{:<72} p50 {:>7.1} ms   p99 {:>7.1} ms", f.what, f.p50_ms, f.p99_ms);
    f
}

/// The bench's API client, working from the control plane's namespace.
struct Client {
    runtime: tokio::runtime::Runtime,
    pods: Api<Pod>,
}

impl Client {
    fn new(c: &LocalCluster) -> Client {
        let env = std::fs::read_to_string(c.dir.join("env")).unwrap();
        let cp = env.lines().find_map(|l| l.strip_prefix("CP_NS=")).unwrap().to_string();
        let kubeconfig = c.dir.join("apiserver/kubeconfig");
        // The whole client lives on one thread in the control plane's
        // network namespace (the API server listens on its 127.0.0.1).
        let ns = std::fs::File::open(format!("/run/netns/{cp}")).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pods = runtime.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
            Api::<Pod>::namespaced(kube::Client::try_from(config).unwrap(), "default")
        });
        Client { runtime, pods }
    }

    /// Creates a pod and waits for it Ready: the time that took, in ms.
    fn start(&self, pod: &Pod) -> f64 {
        self.runtime.block_on(async {
            let name = pod.metadata.name.clone().unwrap();
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut events = watcher::watcher(self.pods.clone(), config).boxed();
            while !matches!(events.try_next().await.unwrap(), Some(Event::InitDone)) {}
            let created = Instant::now();
            self.pods.create(&PostParams::default(), pod).await.unwrap();
            loop {
                match tokio::time::timeout(ROLLOUT, events.try_next()).await.expect("the pod Ready in time").unwrap() {
                    Some(Event::Apply(p)) if is_ready(&p) => break,
                    Some(_) => continue,
                    None => panic!("the watch ended"),
                }
            }
            created.elapsed().as_secs_f64() * 1e3
        })
    }

    /// Deletes pods by name and waits until they are gone.
    fn delete(&self, names: &[String]) {
        self.runtime.block_on(async {
            for name in names {
                let _ = self.pods.delete(name, &DeleteParams::default()).await;
            }
            let deadline = Instant::now() + ROLLOUT;
            loop {
                let left = self.pods.list(&ListParams::default().labels("bench=pods")).await.unwrap().items;
                if !left.iter().any(|p| names.contains(p.metadata.name.as_ref().unwrap())) {
                    break;
                }
                assert!(Instant::now() < deadline, "pods not gone in time");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Creates pods a few at a time and waits for all Ready.
    fn background(&self, from: usize, to: usize) {
        self.runtime.block_on(async {
            let creates = (from..to).map(|i| {
                let api = self.pods.clone();
                async move { api.create(&PostParams::default(), &pod(&format!("bg{i}"), Some("bench"))).await.map(drop) }
            });
            futures::stream::iter(creates).buffer_unordered(8).try_collect::<Vec<()>>().await.unwrap();
            let started = Instant::now();
            loop {
                let pods = self.pods.list(&ListParams::default().labels("bench=pods")).await.unwrap().items;
                if pods.iter().filter(|p| is_ready(p)).count() >= to {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(900), "background pods not Ready in time");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

/// Start-up latency of ROUNDS pods made by `make`.
fn start_ups(client: &Client, prefix: &str, make: impl Fn(&str) -> Pod) -> Vec<f64> {
    (0..ROUNDS)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let ms = client.start(&make(&name));
            client.delete(&[name]);
            ms
        })
        .collect()
}

/// The agent's ADD times (ms) for pods whose name starts with `prefix`.
fn add_times(log: &str, prefix: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("CNI call answered") && l.contains("command=ADD") && l.contains(&format!("pod=default/{prefix}")))
        .filter_map(|l| l.split("elapsed_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the pods benchmark needs root (a one-node cluster in throwaway namespaces)");
    let levels: Vec<usize> = std::env::var("NETLET_BENCH_PODS")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .map(|n| n.trim().parse().expect("NETLET_BENCH_PODS: numbers"))
        .collect();
    let c = LocalCluster::up();
    c.load_agent_image();
    c.kubectl_ok(&format!("create namespace {SYSTEM}"));
    // NETLET_BENCH_LOG: the agent's RUST_LOG (its log is kept beside the figures).
    let log_level = std::env::var("NETLET_BENCH_LOG").map(|l| format!("--set-string logLevel={l}")).unwrap_or_default();
    c.helm_install(&format!("--set defaultNetworks.enabled=false,cni.enabled=false {log_level}"));
    c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    c.apply("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: bench}\nspec: {ipam: {config: [{subnet: 172.31.0.0/16}]}}\n");
    let client = Client::new(&c);
    let mut figures = Vec::new();

    figures.push(figure("pod start-up, netlet-cni not chained", start_ups(&client, "plain-off", |n| pod(n, None))));
    c.helm(&format!(
        "upgrade netlet {}/../charts/netlet -n {SYSTEM} --reuse-values --set cni.enabled=true --wait --timeout 180s",
        env!("CARGO_MANIFEST_DIR")
    ));
    let agent = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| p["spec"]["containers"][0]["args"].to_string().contains("--cni-socket"));
    figures.push(figure("pod start-up, netlet-cni chained, no netlet network", start_ups(&client, "plain-on", |n| pod(n, None))));

    let mut in_place = 0;
    for level in levels {
        client.background(in_place, level);
        in_place = level;
        let prefix = format!("probe{level}-");
        let start_up = start_ups(&client, &prefix, |n| pod(n, Some("bench")));
        figures.push(figure(&format!("pod start-up, annotated onto a bridge network, {level} annotated pods in place"), start_up));
        let adds = add_times(&c.container_log(&agent, "netlet", 0), &prefix);
        assert_eq!(adds.len(), ROUNDS, "one answered ADD per probe pod");
        figures.push(figure(&format!("netlet-cni ADD at the agent (attachments realized), {level} annotated pods in place"), adds));
    }

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::write(target.join("bench-pods-agent.log"), c.container_log(&agent, "netlet", 0)).unwrap();
    let out = target.join("bench-pods.json");
    std::fs::write(&out, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    println!("results: {}", out.display());
    let names: Vec<String> = (0..in_place).map(|i| format!("bg{i}")).collect();
    client.delete(&names);
    c.helm(&format!("uninstall netlet -n {SYSTEM} --wait --timeout 180s"));
    c.down();
}
