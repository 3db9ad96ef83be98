//! CPU cost of the pure half of a reconcile pass (no root, no kernel): the
//! plan and the status computed from it, for N attachments on one bridge
//! with one published port each, once everything is allocated. This is the
//! part of a churn pass that grows with N.
//! `cargo bench --bench plan`; NETLET_BENCH_N picks N (default 1000).

/// The agent's allocator (src/main.rs), so the CPU measured is the agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::{Duration, Instant};

use netlet::dataplane::SyncReport;
use netlet::objects::ObjectSet;
use netlet::plan::{plan, NodeFacts};
use netlet::source::manifests;
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

/// An agent's passes are at least ~100 ms apart, long enough for its data
/// to leave the caches (measured here: back to back, the churn plan takes
/// 3.7 ms; 150 ms apart, sleeping or spinning, 5.5-6.3 ms, as in the agent).
const BETWEEN_PASSES: Duration = Duration::from_millis(150);

/// The CPU side of the churn passes an agent runs, phase by phase: one
/// manifest file added to (and removed from) a directory holding N
/// attachments, read through the manifest cache, planned, compared with the
/// previous plan, and given a status (entries serialized as they are
/// rebuilt), every result kept for the next pass as
/// the reconciler keeps it.
#[inline(never)]
fn churn_passes(n: usize, runs: usize, facts: &NodeFacts, report: &SyncReport) {
    let dir = std::env::temp_dir().join(format!("netlet-plan-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let all = manifest(n + 1);
    let split = all.rfind("apiVersion: netlet.io/v1alpha1\nkind: Attachment").unwrap();
    std::fs::write(dir.join("base.yaml"), &all[..split]).unwrap();
    let churn = dir.join("churn.yaml");
    let mut cache = manifests::ManifestCache::default();
    let first = cache.load(&dir).objects;
    let mut last_plan = plan(&first, facts, &Default::default());
    let mut last = status::compute(&first, &last_plan, report, &[], Previous::Stored(Default::default()), "bench", "2026-01-01T00:00:00Z");
    let phases = ["load", "plan", "compare", "status", "keep"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); phases.len() + 1];
    for round in 0..runs * 2 {
        if round % 2 == 0 {
            std::fs::write(&churn, &all[split..]).unwrap();
        } else {
            std::fs::remove_file(&churn).unwrap();
        }
        std::thread::sleep(BETWEEN_PASSES);
        let mut marks = vec![Instant::now()];
        let loaded = cache.load(&dir);
        marks.push(Instant::now());
        let next_plan = plan(&loaded.objects, facts, &last_plan.allocations);
        marks.push(Instant::now());
        assert!(next_plan.desired != last_plan.desired && next_plan.allocations != last_plan.allocations);
        marks.push(Instant::now());
        let computed =
            status::compute(&loaded.objects, &next_plan, report, &[], Previous::Book(&last.book), "bench", "2026-01-01T00:00:01Z");
        assert!(computed.changed);
        marks.push(Instant::now());
        last_plan = next_plan;
        last = computed;
        marks.push(Instant::now());
        for (i, w) in marks.windows(2).enumerate() {
            times[i].push((w[1] - w[0]).as_secs_f64() * 1e3);
        }
        times[phases.len()].push((marks[marks.len() - 1] - marks[0]).as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut line = format!("N={n} churn pass (CPU side, median of {}):", runs * 2);
    for (name, t) in phases.iter().chain(["total"].iter()).zip(times.iter_mut()) {
        t.sort_by(f64::total_cmp);
        line.push_str(&format!(" {name} {:.2}", t[t.len() / 2]));
    }
    println!("{line} ms");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("NETLET_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let runs: usize = std::env::var("NETLET_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let facts = NodeFacts {
        node_name: "bench".into(),
        ephemeral_ports: (32768, 60999),
        embedded_dns: true,
        resolvers: vec!["10.0.0.53".parse().unwrap()],
        ..Default::default()
    };
    let report = SyncReport::default();
    churn_passes(n, runs, &facts, &report);

    // N settled objects (allocated, status written), then one attachment
    // and its mapping added: the pure work of the pass that follows.
    let before = objects(n);
    let settled_plan = plan(&before, &facts, &Default::default());
    let settled =
        status::compute(&before, &settled_plan, &report, &[], Previous::Stored(Default::default()), "bench", "2026-01-01T00:00:00Z");
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
        || (),
        |()| {
            let previous = Previous::Book(&settled.book);
            let computed = status::compute(&after, &churn_plan, &report, &[], previous, "bench", "2026-01-01T00:00:01Z");
            assert!(computed.changed);
            std::hint::black_box(computed);
        },
    );
    let t_cold_status = median(
        runs,
        || (),
        |()| {
            let fresh = Previous::Stored(Default::default());
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
