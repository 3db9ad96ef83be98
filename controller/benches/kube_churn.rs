//! Kubernetes-mode churn (root, a kube-apiserver from
//! e2e/kube-apiserver.sh): `cargo bench --bench kube_churn`. With 1,000
//! attachments (NETLET_BENCH_N) in place and Ready, one more is created and
//! deleted, nine times, through the API (a client of the bench's own, no
//! kubectl start-up in the timing): from the create request to the watch
//! event carrying the Ready status the agent wrote, and from the delete
//! request to the object gone (the agent's teardown, then its finalizer
//! released). Medians; writes target/bench-kube-churn.json.

#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use netlet::api::{Attachment, AttachmentSpec, Sandbox};

const ROUNDS: usize = 9;

fn is_ready(a: &Attachment) -> bool {
    a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.is_true()))
}

fn attachment(name: &str, netns: String) -> Attachment {
    let mut a = Attachment::new(
        name,
        AttachmentSpec {
            network: "bench".into(),
            node_name: Some("bench".into()),
            sandbox: Sandbox { netns: Some(netns), ..Default::default() },
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(serde::Serialize)]
struct Result {
    attachments: usize,
    rounds: usize,
    create_to_ready_ms: f64,
    delete_to_gone_ms: f64,
    create_to_ready_all_ms: Vec<f64>,
    delete_to_gone_all_ms: Vec<f64>,
}

/// Everything the bench does through the API, in the control plane's
/// namespace (the API server listens on its 127.0.0.1).
async fn churn(kubeconfig: std::path::PathBuf, tag: String, n: usize) -> anyhow::Result<Result> {
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<Attachment> = Api::namespaced(client, "default");
    // The 1,000, a few requests at a time.
    let creates = (0..n).map(|i| {
        let api = api.clone();
        let a = attachment(&format!("a{i}"), format!("{tag}a{i}"));
        async move { api.create(&PostParams::default(), &a).await.map(|_| ()) }
    });
    futures::stream::iter(creates).buffer_unordered(16).try_collect::<Vec<()>>().await?;
    let started = Instant::now();
    loop {
        let ready = api.list(&ListParams::default()).await?.items.iter().filter(|a| is_ready(a)).count();
        if ready >= n {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "only {ready} of {n} attachments became Ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("{n} attachments Ready {:.1} s after the last was created", started.elapsed().as_secs_f64());
    // The passes that follow the agent's own status writes settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (mut to_ready, mut to_gone) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("churn{round}");
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api.clone(), config).boxed();
        // The watch is in place before the write.
        while !matches!(events.try_next().await?, Some(Event::InitDone)) {}
        let created = Instant::now();
        api.create(&PostParams::default(), &attachment(&name, format!("{tag}{name}"))).await?;
        loop {
            match events.try_next().await? {
                Some(Event::Apply(a)) if is_ready(&a) => break,
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        }
        to_ready.push(created.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deleted = Instant::now();
        api.delete(&name, &DeleteParams::default()).await?;
        loop {
            match events.try_next().await? {
                Some(Event::Delete(_)) => break,
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        }
        to_gone.push(deleted.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (all_ready, all_gone) = (to_ready.clone(), to_gone.clone());
    Ok(Result {
        attachments: n,
        rounds: ROUNDS,
        create_to_ready_ms: median(&mut to_ready),
        delete_to_gone_ms: median(&mut to_gone),
        create_to_ready_all_ms: all_ready,
        delete_to_gone_all_ms: all_gone,
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the Kubernetes churn benchmark needs root (it builds throwaway network namespaces)");
    let n: usize = std::env::var("NETLET_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut k = harness::kube::KubeCluster::start(&["bench"]);
    k.apply("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: bench}\nspec:\n  ipam: {config: [{subnet: 10.242.0.0/16}]}\n  allowedSandboxes: [netns]\n");
    k.start_agent(0);
    let (cp, kubeconfig, tag) = (k.cp.clone(), k.dir.join("kubeconfig"), k.nodes[0].tag.clone());
    let result = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{cp}")).expect("the control plane's namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(churn(kubeconfig, tag, n))
    })
    .join()
    .expect("the churn thread")
    .expect("the churn");
    println!(
        "Kubernetes mode, {n} attachments in place, {ROUNDS} rounds: create -> Ready status {:.1} ms, delete -> gone {:.1} ms (medians; all: {:?} / {:?})",
        result.create_to_ready_ms,
        result.delete_to_gone_ms,
        result.create_to_ready_all_ms.iter().map(|v| v.round() as u64).collect::<Vec<_>>(),
        result.delete_to_gone_all_ms.iter().map(|v| v.round() as u64).collect::<Vec<_>>()
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-kube-churn.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("results: {}", out.display());
    // Through the API, so the agent tears everything down before the
    // cluster goes (the harness then removes what is left by tag).
    k.kubectl_ok("delete attachments --all -n default --timeout=600s");
}
