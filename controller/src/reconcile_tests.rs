//! The reconciler's skip and retry logic, on the fake kernel (no root):
//! what a pass changes, what it reads, and what it leaves alone.

use std::sync::Arc;

use crate::dataplane::events::EventLog;
use crate::dataplane::fake::FakeKernel;
use crate::metrics::Metrics;
use crate::reconcile::{Outcome, Reconciler};
use crate::reconcile_thread::Setup;
use crate::runner::Snapshot;
use crate::source::manifests;
use crate::state::StateDir;

struct Agent {
    kernel: FakeKernel,
    reconciler: Reconciler,
    dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(runtime) = StateDir::open(&self.dir).ok().and_then(|s| s.runtime_path()) {
            let _ = std::fs::remove_dir_all(runtime);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn agent(tag: &str) -> Agent {
    let dir = std::env::temp_dir().join(format!("netlet-reconcile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let events = Arc::new(EventLog::default());
    let kernel = FakeKernel::new().with_events(events.clone());
    let setup = Setup {
        state_dir: dir.clone(),
        node_name: "n1".into(),
        metrics: Metrics::new(),
        events: Some(events),
        dns: None,
        loopback_proxy: None,
        spare_namespace: false,
        progress: None,
    };
    let reconciler = Reconciler::with_system(setup, kernel.system()).expect("a reconciler on the fake kernel");
    Agent { kernel, reconciler, dir }
}

/// A network and `names` attachments on it, each in a namespace of its own.
fn snapshot(names: &[&str], version: u64) -> Snapshot {
    let mut yaml =
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.9.0.0/24}]}}\n".to_string();
    for name in names {
        yaml += &format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: {name}}}}}\n");
    }
    let loaded = manifests::parse(std::path::Path::new("t.yaml"), &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Snapshot { objects: Arc::new(loaded.objects), version, ..Default::default() }
}

fn ready(outcome: &Outcome) -> bool {
    assert!(outcome.node_errors.is_empty(), "{:?}", outcome.node_errors);
    outcome.all_ready()
}

fn host_veth(name: &str) -> String {
    crate::naming::host_veth_name("default", name)
}

#[tokio::test]
async fn a_pass_over_an_unchanged_node_changes_and_reads_nothing() {
    let mut a = agent("unchanged");
    let s = snapshot(&["a0", "a1"], 1);
    let first = a.reconciler.pass(&s).await;
    assert!(ready(&first) && first.mutations > 0);
    assert!(a.kernel.changes().iter().any(|c| c.contains("create veth")), "the first pass builds");
    // The agent's own changes are heard: the next pass looks at what they
    // were about, finds it in place, and changes nothing.
    let second = a.reconciler.pass(&s).await;
    assert_eq!(second.mutations, 0, "{:?}", a.kernel.changes());
    a.kernel.reads();
    // Then nothing at all happened: nothing is read, nothing changed, and
    // the verdicts are the very ones of the pass before.
    let third = a.reconciler.pass(&s).await;
    assert_eq!(third.mutations, 0);
    assert_eq!(a.kernel.reads(), Vec::<String>::new());
    assert!(Arc::ptr_eq(&second.verdicts, &third.verdicts), "a quiet pass reuses its verdicts");
    // Another version of the same objects: planned again, still nothing to do.
    let fourth = a.reconciler.pass(&snapshot(&["a0", "a1"], 2)).await;
    assert!(ready(&fourth) && fourth.mutations == 0);
    assert!(!Arc::ptr_eq(&third.verdicts, &fourth.verdicts), "a new snapshot is planned and reported again");
}

/// `snapshot(names)` plus attachments whose sandbox is `(name, sandbox yaml)`.
fn with_sandboxes(names: &[&str], sandboxes: &[(&str, &str)], version: u64) -> Snapshot {
    let mut s = snapshot(names, version);
    let mut yaml = String::new();
    for (name, sandbox) in sandboxes {
        yaml += &format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {sandbox}}}\n"
        );
    }
    let loaded = manifests::parse(std::path::Path::new("t2.yaml"), &yaml);
    let mut objects = (*s.objects).clone();
    objects.attachments.extend(loaded.objects.attachments);
    s.objects = Arc::new(objects);
    s
}

#[tokio::test]
async fn the_nodes_own_namespace_is_never_a_sandbox_by_path_or_by_name() {
    let mut a = agent("node-ns");
    a.reconciler.pass(&snapshot(&["a0"], 1)).await;
    a.kernel.mount_node_namespace("/run/netns/node-alias");
    a.kernel.changes();
    let hostile = with_sandboxes(&["a0"], &[("by-path", "{path: /proc/self/ns/net}"), ("by-name", "{netns: node-alias}")], 2);
    let outcome = a.reconciler.pass(&hostile).await;
    let refused: Vec<(String, String, String)> =
        outcome.verdicts.iter().filter(|v| !v.ready).map(|v| (v.key.to_string(), v.reason.clone(), v.message.clone())).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (key, reason, message) in &refused {
        assert_eq!(reason, "Forbidden", "{key}");
        assert!(message.contains("the node's own network namespace (net:[0])"), "{key}: {message}");
    }
    assert_eq!(a.kernel.changes(), Vec::<String>::new(), "nothing changed");
    assert!(a.kernel.default_gateways("node").is_empty(), "no default route was put into the node");
}

#[tokio::test]
async fn a_change_that_failed_is_tried_again_by_the_next_pass() {
    let mut a = agent("retry");
    let s = snapshot(&["a0", "a1"], 1);
    a.kernel.fail(&format!("create veth {}", host_veth("a1")), 1);
    let first = a.reconciler.pass(&s).await;
    let failed: Vec<_> = first.verdicts.iter().filter(|v| !v.ready).map(|v| (v.key.to_string(), v.reason.clone())).collect();
    assert_eq!(failed, [("Attachment/default/a1".to_string(), "KernelError".to_string())]);
    assert!(a.kernel.link("/run/netns/a1", "eth0").is_none());
    // Nothing else changed since, yet a1 is looked at again (a failure is
    // never recorded as converged), and made this time.
    let second = a.reconciler.pass(&s).await;
    assert!(ready(&second), "{:?}", second.failures());
    assert_eq!(a.kernel.addresses("/run/netns/a1", "eth0"), ["10.9.0.3/24".parse::<ipnet::IpNet>().unwrap()]);
}

#[tokio::test]
async fn drift_is_repaired_and_only_what_it_touched_is_read() {
    let mut a = agent("drift");
    let s = snapshot(&["a0", "a1", "a2"], 1);
    a.reconciler.pass(&s).await;
    a.reconciler.pass(&s).await;
    a.kernel.changes();
    a.kernel.reads();
    a.kernel.delete_link("node", &host_veth("a1"));
    let repaired = a.reconciler.pass(&s).await;
    assert!(ready(&repaired) && repaired.mutations > 0);
    assert!(a.kernel.changes().iter().any(|c| c.contains(&format!("create veth {}", host_veth("a1")))));
    let reads = a.kernel.reads();
    assert!(reads.iter().all(|r| r.starts_with("/run/netns/a1:")), "only a1's sandbox is read: {reads:?}");
    assert_eq!(a.kernel.addresses("/run/netns/a1", "eth0"), ["10.9.0.3/24".parse::<ipnet::IpNet>().unwrap()]);
    // Someone flushes a2's addresses: heard in its namespace, put back.
    a.kernel.flush_addresses("/run/netns/a2", "eth0");
    a.reconciler.pass(&s).await;
    assert_eq!(a.kernel.changes(), ["/run/netns/a2: add address 10.9.0.4/24 to eth0", "/run/netns/a2: replace default route via 10.9.0.1"]);
}

#[tokio::test]
async fn drift_that_lands_while_a_pass_runs_is_repaired_by_the_next() {
    let mut a = agent("race");
    a.reconciler.pass(&snapshot(&["a0", "a1"], 1)).await;
    a.reconciler.pass(&snapshot(&["a0", "a1"], 1)).await;
    // While a pass adds a2 (after it judged a0 in place), a0's veth goes.
    a.kernel.delete_link_when(&format!("create veth {}", host_veth("a2")), "node", &host_veth("a0"));
    let s = snapshot(&["a0", "a1", "a2"], 2);
    a.reconciler.pass(&s).await;
    assert!(a.kernel.link("node", &host_veth("a0")).is_none(), "deleted during the pass");
    let next = a.reconciler.pass(&s).await;
    assert!(ready(&next));
    assert!(a.kernel.link("node", &host_veth("a0")).is_some(), "the next pass put it back");
}

#[tokio::test]
async fn a_namespace_deleted_behind_our_back_is_made_again() {
    let mut a = agent("netns");
    let s = snapshot(&["a0"], 1);
    a.reconciler.pass(&s).await;
    a.reconciler.pass(&s).await;
    a.kernel.delete_namespace("/run/netns/a0");
    let repaired = a.reconciler.pass(&s).await;
    assert!(ready(&repaired));
    assert!(a.kernel.namespaces().contains(&"/run/netns/a0".to_string()));
    assert_eq!(a.kernel.addresses("/run/netns/a0", "eth0"), ["10.9.0.2/24".parse::<ipnet::IpNet>().unwrap()]);
}

#[tokio::test]
async fn every_tenth_pass_reads_everything_again() {
    let mut a = agent("audit");
    let s = snapshot(&["a0", "a1"], 1);
    for _ in 0..3 {
        a.reconciler.pass(&s).await;
    }
    let mut sandboxes_read = Vec::new();
    for _ in 0..crate::dataplane::realized::AUDIT_EVERY {
        a.kernel.reads();
        let outcome = a.reconciler.pass(&s).await;
        let reads = a.kernel.reads();
        sandboxes_read.push((outcome.full, reads.iter().filter(|r| r.ends_with(": links")).count()));
    }
    assert_eq!(sandboxes_read.iter().filter(|(full, _)| *full).count(), 1, "one audit: {sandboxes_read:?}");
    assert!(sandboxes_read.iter().all(|(full, read)| if *full { *read == 2 } else { *read == 0 }), "{sandboxes_read:?}");
}

#[tokio::test]
async fn a_removed_attachment_takes_its_namespace_and_veth() {
    let mut a = agent("remove");
    a.reconciler.pass(&snapshot(&["a0", "a1"], 1)).await;
    let removed = a.reconciler.pass(&snapshot(&["a0"], 2)).await;
    assert!(ready(&removed));
    assert_eq!(a.kernel.namespaces(), ["/run/netns/a0"]);
    assert!(a.kernel.link("node", &host_veth("a1")).is_none());
    assert!(a.kernel.link("node", &host_veth("a0")).is_some(), "the other stays");
}

/// `names`' attachments with these static addresses.
fn with_addresses(attachments: &[(&str, &str)], version: u64) -> Snapshot {
    let mut yaml =
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.9.0.0/24}]}}\n".to_string();
    for (name, ip) in attachments {
        yaml += &format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: {name}}}, ipv4Address: {ip}}}\n"
        );
    }
    let loaded = manifests::parse(std::path::Path::new("t.yaml"), &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Snapshot { objects: Arc::new(loaded.objects), version, ..Default::default() }
}

#[tokio::test]
async fn a_changed_address_is_never_missing_and_what_is_ready_is_what_the_kernel_holds() {
    let mut a = agent("readdress");
    a.reconciler.pass(&with_addresses(&[("a0", "10.9.0.10")], 1)).await;
    a.kernel.changes();
    // The new address in the same subnet goes on as a secondary, then the
    // old primary goes: with promote_secondaries on, the new one stays.
    let moved = a.reconciler.pass(&with_addresses(&[("a0", "10.9.0.20")], 2)).await;
    assert!(ready(&moved), "{:?}", moved.failures());
    assert_eq!(a.kernel.addresses("/run/netns/a0", "eth0"), ["10.9.0.20/24".parse::<ipnet::IpNet>().unwrap()]);
    let changes = a.kernel.changes();
    let add = changes.iter().position(|c| c.contains("add address 10.9.0.20/24")).expect("added");
    let delete = changes.iter().position(|c| c.contains("delete address 10.9.0.10/24")).expect("deleted");
    assert!(add < delete, "never without an address: {changes:?}");
    assert_eq!(a.kernel.default_gateways("/run/netns/a0"), ["10.9.0.1".parse::<std::net::IpAddr>().unwrap()]);
}

#[tokio::test]
async fn an_address_change_the_kernel_cannot_make_safely_keeps_the_old_one_and_says_why() {
    let mut a = agent("readdress-fails");
    a.reconciler.pass(&with_addresses(&[("a0", "10.9.0.10")], 1)).await;
    a.kernel.fail("sysctl net/ipv4/conf/eth0/promote_secondaries", 1);
    let s = with_addresses(&[("a0", "10.9.0.20")], 2);
    let failed = a.reconciler.pass(&s).await;
    let verdict = failed.verdicts.iter().find(|v| v.key.name.name() == "a0").unwrap();
    assert!(!verdict.ready && verdict.message.contains("promote"), "{verdict:?}");
    let held: Vec<String> = a.kernel.addresses("/run/netns/a0", "eth0").iter().map(|n| n.to_string()).collect();
    assert_eq!(held, ["10.9.0.10/24", "10.9.0.20/24"], "the container kept an address");
    // Retried, and made.
    assert!(ready(&a.reconciler.pass(&s).await));
    assert_eq!(a.kernel.addresses("/run/netns/a0", "eth0"), ["10.9.0.20/24".parse::<ipnet::IpNet>().unwrap()]);
}

#[tokio::test]
async fn the_ruleset_is_applied_again_only_when_someone_else_changed_it() {
    let mut a = agent("ruleset");
    let s = snapshot(&["a0"], 1);
    a.reconciler.pass(&s).await;
    assert!(a.kernel.changes().contains(&"ruleset".to_string()));
    assert!(a.kernel.ruleset().is_some());
    // Our own transaction is not someone else's: nothing to redo.
    a.reconciler.pass(&s).await;
    a.reconciler.pass(&s).await;
    assert!(!a.kernel.changes().contains(&"ruleset".to_string()));
    a.kernel.flush_ruleset();
    a.reconciler.pass(&s).await;
    assert!(a.kernel.changes().contains(&"ruleset".to_string()), "rebuilt");
    assert!(a.kernel.ruleset().is_some());
}

/// A dual-stack overlay with this node its only peer (nothing remote, so
/// no neighbour entries the fake does not keep).
fn dual_stack_overlay(version: u64) -> Snapshot {
    let yaml = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: ov}\nspec:\n  driver: overlay\n  overlay: {vni: 42, peers: [{node: n1, address: 10.99.0.1}]}\n  enableIPv6: true\n  ipam: {config: [{subnet: 10.42.0.0/24}, {subnet: \"fd00:42::/64\"}]}\n---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: c}\nspec: {network: ov, sandbox: {netns: c}}\n";
    let loaded = manifests::parse(std::path::Path::new("t.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Snapshot { objects: Arc::new(loaded.objects), version, ..Default::default() }
}

#[tokio::test]
async fn an_overlay_containers_ipv6_routes_are_made_kept_and_repaired_alone() {
    let mut a = agent("overlay-v6");
    let s = dual_stack_overlay(1);
    assert!(ready(&a.reconciler.pass(&s).await));
    let net = |text: &str| text.parse::<ipnet::IpNet>().unwrap();
    let gateway = "fd00:42::1".parse().ok();
    let want = [(net("fd00:42::/64"), gateway, Some(1)), (net("fd00:42::1/128"), None, Some(1)), (net("fd00:42::/66"), None, Some(1))];
    assert_eq!(a.kernel.owned_routes("/run/netns/c"), want);
    let second = a.reconciler.pass(&s).await;
    assert_eq!(second.mutations, 0, "{:?}", a.kernel.changes());
    a.kernel.changes();
    a.kernel.delete_routes_to("/run/netns/c", net("fd00:42::/64"));
    let repaired = a.reconciler.pass(&s).await;
    assert!(ready(&repaired));
    assert_eq!(a.kernel.changes(), ["/run/netns/c: replace route fd00:42::/64 via Some(fd00:42::1) metric Some(1)"]);
    let mut have = a.kernel.owned_routes("/run/netns/c");
    have.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(have, want);
}

/// `names`' attachments, each publishing its own host port.
fn with_ports(names: &[&str], version: u64) -> Snapshot {
    let mut snapshot = snapshot(names, version);
    let mut yaml = String::new();
    for (i, name) in names.iter().enumerate() {
        yaml += &format!("---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}}}\nspec: {{attachment: {name}, ports: [{{containerPort: 80, hostPort: {}}}]}}\n", 8080 + i);
    }
    let loaded = manifests::parse(std::path::Path::new("p.yaml"), &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut objects = (*snapshot.objects).clone();
    objects.port_mappings.extend(loaded.objects.port_mappings);
    snapshot.objects = Arc::new(objects);
    snapshot
}

#[tokio::test]
async fn a_ruleset_change_that_only_removes_is_reported_without_waiting_and_retried_if_it_failed() {
    let mut a = agent("ruleset-removal");
    assert!(ready(&a.reconciler.pass(&with_ports(&["a0", "a1"], 1)).await));
    a.reconciler.pass(&with_ports(&["a0", "a1"], 1)).await;
    a.kernel.fail("ruleset", 1);
    let removed = a.reconciler.pass(&with_ports(&["a0"], 2)).await;
    // What remains was never in doubt: its status says so; the failed
    // removal is the node's error, found after the status was written.
    assert!(removed.verdicts.iter().all(|v| v.ready), "{:?}", removed.failures());
    assert_eq!(removed.verdicts.len(), 3);
    assert!(removed.node_errors.iter().any(|e| e.contains("failed on purpose")), "{:?}", removed.node_errors);
    let published = |a: &Agent| a.kernel.ruleset().expect("a ruleset").ports.len();
    assert_eq!(published(&a), 2, "the failed removal left the ruleset as it was");
    let again = a.reconciler.pass(&with_ports(&["a0"], 2)).await;
    assert!(ready(&again));
    assert_eq!(published(&a), 1, "retried by the next pass");
    assert!(a.kernel.ruleset().expect("a ruleset").bridge_ports.values().flatten().all(|veth| *veth != host_veth("a1")));
}

#[tokio::test]
async fn a_port_bound_since_the_last_reading_of_the_sockets_is_not_published_over() {
    let mut a = agent("sockets");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert!(ready(&a.reconciler.pass(&snapshot(&["a0"], 1)).await), "the sockets are read once without the listener");
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is still free");
    // The pass plans with the last reading while it reads the sockets
    // again: the listener, found by that reading, makes it plan again.
    let mut publishing = snapshot(&["a0"], 2);
    let yaml = format!("apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: p0}}\nspec: {{attachment: a0, ports: [{{containerPort: 80, hostPort: {port}}}]}}\n");
    let loaded = manifests::parse(std::path::Path::new("p.yaml"), &yaml);
    let mut objects = (*publishing.objects).clone();
    objects.port_mappings.extend(loaded.objects.port_mappings);
    publishing.objects = Arc::new(objects);
    let outcome = a.reconciler.pass(&publishing).await;
    let mapping = outcome.verdicts.iter().find(|v| v.key.kind == crate::api::Kind::PortMapping).expect("the mapping has a verdict");
    assert!(!mapping.ready && mapping.reason == crate::plan::outcome::reason::PORT_IN_USE, "{mapping:?}");
    assert!(a.kernel.ruleset().is_none_or(|r| r.ports.is_empty()), "nothing published over the listener");
}
