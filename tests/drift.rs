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
