//! CPU cost of the pure half of a reconcile pass (no root, no kernel): the
//! plan and the status computed from it, for N attachments on one bridge
//! with one published port each, once everything is allocated. This is the
//! part of a churn pass that grows with N.
//! `cargo bench --bench plan`; NETLET_BENCH_N picks N (default 1000).

use std::path::Path;
use std::time::{Duration, Instant};

use netlet::dataplane::SyncReport;
use netlet::objects::ObjectSet;
use netlet::plan::{plan, NodeFacts};
use netlet::source::manifests;
use netlet::state::StatusStore;
use netlet::status::{self, Previous};

fn manifest(n: usize) -> String {
    let mut docs = vec![
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: bench}\nspec:\n  bridge: {name: nlbench0}\n  ipam: {config: [{subnet: 10.240.0.0/16}]}\n"
            .to_string(),
    ];
    for i in 0..n {
        docs.push(format!(
            "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: a{i}}}\nspec: {{network: bench, sandbox: {{netns: bench-{i}}}}}\n"
        ));
        docs.push(format!(
            "apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: p{i}}}\nspec: {{attachment: a{i}, ports: [{{containerPort: 80, hostPort: {}}}]}}\n",
            20000 + i
        ));
    }
    docs.join("---\n")
}

/// Median of `runs` timings of `f`, each on a fresh `setup()` (not timed).
fn median<S>(runs: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(S)) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let input = setup();
            let t = Instant::now();
            f(input);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn objects(n: usize) -> ObjectSet {
    let loaded = manifests::parse(Path::new("bench.yaml"), &manifest(n));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.objects
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("NETLET_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let runs: usize = std::env::var("NETLET_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let facts = NodeFacts { node_name: "bench".into(), ephemeral_ports: (32768, 60999), ..Default::default() };
    let report = SyncReport::default();

    // N settled objects (allocated, status written), then one attachment
    // and its mapping added: the pure work of the pass that follows.
    let before = objects(n);
    let settled_plan = plan(&before, &facts, &Default::default());
    let fresh = Previous { store: StatusStore::default(), computed_from: None };
    let settled = status::compute(&before, &settled_plan, &report, &[], fresh, "bench", "2026-01-01T00:00:00Z");
    let after = objects(n + 1);
    let churn_plan = plan(&after, &facts, &settled_plan.allocations);

    let t_plan = median(
        runs,
        || (),
        |()| {
            std::hint::black_box(plan(&after, &facts, &settled_plan.allocations));
        },
    );
    let t_status = median(
        runs,
        || (settled.store.clone(), settled.memo.clone()),
        |(store, memo)| {
            let previous = Previous { store, computed_from: Some((&before, memo)) };
            let computed = status::compute(&after, &churn_plan, &report, &[], previous, "bench", "2026-01-01T00:00:01Z");
            assert!(computed.changed);
            std::hint::black_box(computed);
        },
    );
    let t_cold_status = median(
        runs,
        || (),
        |()| {
            let fresh = Previous { store: StatusStore::default(), computed_from: None };
            std::hint::black_box(status::compute(&after, &churn_plan, &report, &[], fresh, "bench", "2026-01-01T00:00:01Z"));
        },
    );
    println!(
        "N={n} +1: plan {:.2} ms, status {:.2} ms (from nothing: {:.2} ms), median of {runs}",
        t_plan.as_secs_f64() * 1e3,
        t_status.as_secs_f64() * 1e3,
        t_cold_status.as_secs_f64() * 1e3
    );
}
