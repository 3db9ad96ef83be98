//! Drift wherever it lands: a kernel change made while a pass is running
//! (the pass observed the object before the change, or after it, or is
//! writing status) is repaired within a second, round after round.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

const NET: &str = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.93.0.0/16}]}}\n";

fn attachment(name: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: \"{{T}}{name}\"}}}}\n")
}

/// The race of issue 24: a manifest edit starts a pass, and 0-30 ms later
/// another attachment's host veth is deleted, so the deletion lands before,
/// during or right after that pass. Each time the veth and the container's
/// address are back within a second.
#[test]
fn a_veth_deleted_while_a_pass_runs_is_back_within_a_second() {
    const ATTACHMENTS: usize = 200;
    const ROUNDS: usize = 50;
    let mut node = Node::new();
    let mut yaml = NET.to_string();
    for i in 0..ATTACHMENTS {
        yaml += &attachment(&format!("a{i}"));
    }
    node.write("base.yaml", &yaml);
    node.converge();
    // The default resync (30 s): only the kernel's events can bring a repair
    // within a second.
    node.spawn(&["--metrics-addr", "off"]);
    wait_until("the agent's first pass", Duration::from_secs(30), || node.agent_log(0).contains("reconciled"));
    std::thread::sleep(Duration::from_millis(500));

    let mut rng = Lcg(0x24);
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        // One attachment more, or one less: a pass that changes something.
        if round % 2 == 0 {
            node.write("churn.yaml", &attachment("churn"));
        } else {
            node.remove("churn.yaml");
        }
        std::thread::sleep(Duration::from_millis(rng.next(31)));
        let victim = format!("a{}", rng.next(ATTACHMENTS as u64));
        let status = node.status("attachments", &victim);
        let host = status["hostInterface"].as_str().unwrap_or_else(|| panic!("{victim}: {status}")).to_string();
        let address = status["ipv4Address"].as_str().unwrap().to_string();
        node.in_node(&format!("ip link del {host}"));
        let deleted = Instant::now();
        let sandbox = node.ns(&victim);
        let back = || link(&node.name, &host).is_some() && addresses(&sandbox, "eth0") == [address.clone()];
        while !back() {
            assert!(
                deleted.elapsed() < Duration::from_secs(1),
                "round {round}: {victim}'s veth {host} not back within a second:\n{}",
                node.agent_log(0).lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        slowest = slowest.max(deleted.elapsed());
        // Let the repair's own pass end before the next round.
        std::thread::sleep(Duration::from_millis(150));
    }
    eprintln!("{ROUNDS} rounds, slowest repair {slowest:?}");
    assert!(ping(&node.ns("a0"), "10.93.0.1"));
}

/// A bridge sends a port's notice again whenever one of its timers expires,
/// with nothing changed: with STP off, when the port's forward delay ends
/// (15 s after a container joins, by default). The agent's event watch
/// takes that repeat for nothing, for ports made before it started as for
/// those made after, so it does not make the container's sandbox be read
/// again; a real change of a port is still heard.
#[test]
fn a_bridge_timer_repeating_a_port_notice_is_not_a_change() {
    use std::sync::Arc;

    use netlet::dataplane::events::{watch, EventLog, Scope};

    let node = Node::new();
    let n = &node.name;
    // Ports of this bridge end their forward delay 1 s after they join.
    let port = |name: &str| {
        ok(&format!(
            "ip -n {n} link add {name} type veth peer name {name}-peer && ip -n {n} link set {name} master nlt-br && \
             ip -n {n} link set {name} up && ip -n {n} link set {name}-peer up"
        ));
        Scope::NodeLink(ifindex(n, name).expect("the port") as u32)
    };
    ok(&format!("ip -n {n} link add nlt-br type bridge forward_delay 100 && ip -n {n} link set nlt-br up"));
    let before = port("nlt-a");

    let log = Arc::new(EventLog::default());
    let namespace = std::fs::File::open(format!("/run/netns/{n}")).expect("the node namespace");
    let watcher = log.clone();
    // The watch's socket is made in the node namespace, by a thread that
    // goes there and ends. (Its reader never stops: it holds the deleted
    // node namespace until this test binary exits.)
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the node namespace");
        watch(watcher, Arc::new(tokio::sync::Notify::new())).expect("the event watch starts");
    })
    .join()
    .unwrap();
    let after = port("nlt-b");
    std::thread::sleep(Duration::from_millis(300));
    let (observed, repeats) = (log.epoch(), log.repeats_ignored());

    wait_until("the bridge to repeat both ports' notices", Duration::from_secs(5), || log.repeats_ignored() >= repeats + 2);
    assert!(!log.stale(&[before], observed), "a repeat made the port made before the watch look changed");
    assert!(!log.stale(&[after], observed), "a repeat made the port made after the watch look changed");

    ok(&format!("ip netns exec {n} bridge link set dev nlt-a hairpin on"));
    wait_until("hairpin turned on to be heard", Duration::from_secs(5), || log.stale(&[before], observed));
    assert!(!log.stale(&[after], observed), "only the port that changed looks changed");
    ok(&format!("ip -n {n} link del nlt-a && ip -n {n} link del nlt-b && ip -n {n} link del nlt-br"));
}
