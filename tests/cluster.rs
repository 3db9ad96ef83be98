//! A simulated cluster (issue 23, goal 3): four real agents, each in its
//! node namespace on the underlay, against the real API server, with a few
//! attachments each, and hundreds on four agentless nodes (see
//! harness/sim.rs). Each agent realizes its own attachments only, hears
//! nothing of a burst on the other nodes, and routes the overlay per node.

mod harness;

use std::time::Duration;

use harness::sim::{SimCluster, OVERLAY_DEVICE};
use harness::{ip_json, netns_exists, ok, ping};

const AGENTS: usize = 4;
const LOCAL: usize = 2;

#[test]
fn agents_realize_and_hear_only_their_own_nodes_attachments_in_a_growing_cluster() {
    let mut sim = SimCluster::start(AGENTS, 4);
    sim.start_agents();
    let local = sim.add_local(LOCAL, Duration::from_secs(60));
    sim.grow_elsewhere(200);
    // The agents' passes after their own status writes settle.
    std::thread::sleep(Duration::from_secs(3));

    // A burst of 100 attachments on the agentless nodes: no agent hears of
    // it, on its watches or on the wire.
    let before: Vec<_> = (0..AGENTS).map(|i| sim.agent_sample(i)).collect();
    sim.grow_elsewhere(300);
    std::thread::sleep(Duration::from_secs(3));
    for (i, before) in before.iter().enumerate() {
        let after = sim.agent_sample(i);
        assert_eq!(after.watch_events, before.watch_events, "agent a{i} received objects of other nodes");
        let rx = after.rx_bytes - before.rx_bytes;
        // 100 attachments are some 100 kB on a watch; what an idle node
        // receives meanwhile (a scrape's ARP, a watch bookmark) is far less.
        assert!(rx < 8 * 1024, "agent a{i}'s node received {rx} bytes during the burst elsewhere");
    }
    let listed = sim.k.kubectl_ok("get attachments -n default --no-headers -o custom-columns=NAME:.metadata.name");
    assert_eq!(listed.lines().count(), local.len() + 300, "{listed}");

    // Only its own attachments are realized and Ready on each node.
    let namespaces: Vec<String> = ok("ip netns list").lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect();
    let realized_elsewhere: Vec<&String> = namespaces.iter().filter(|n| (0..300).any(|j| **n == format!("x{j}"))).collect();
    assert!(realized_elsewhere.is_empty(), "agentless nodes' attachments realized: {realized_elsewhere:?}");
    for i in 0..AGENTS {
        for j in 0..LOCAL {
            let name = format!("l{i}x{j}");
            assert!(netns_exists(&sim.k.nodes[0].ns(&name)), "{name}'s sandbox");
            let a = sim.k.get("attachment", &format!("default/{name}"));
            assert_eq!(harness::kubectl::ready_of(&a).0, "True", "{name}: {a}");
            assert_eq!(a["metadata"]["labels"]["netlet.io/node"], format!("a{i}"), "{name} labeled by its agent");
        }
        let node = &sim.k.nodes[i].name;
        let veths: Vec<String> = ip_json(node, "link show type veth")
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .filter(|n| n != "ul0")
            .collect();
        assert_eq!(veths.len(), LOCAL, "a{i}'s node holds its own attachments' veths only: {veths:?}");
        assert_eq!(sim.agent_metric(i, "netlet_objects", &["kind=\"Attachment\"", "ready=\"true\""]), LOCAL as f64, "a{i}'s objects");

        // Routed per node: one static FDB and neighbour entry per other agent node.
        let fdb = ok(&format!("bridge -n {node} fdb show dev {OVERLAY_DEVICE}"));
        assert_eq!(fdb.lines().filter(|l| l.contains("dst 10.97.0.")).count(), AGENTS - 1, "a{i}:\n{fdb}");
        let neigh = ok(&format!("ip -n {node} neigh show dev {OVERLAY_DEVICE} nud permanent"));
        assert_eq!(neigh.lines().count(), AGENTS - 1, "a{i}:\n{neigh}");
    }

    // Real traffic between two agents' overlay attachments.
    let ip_of = |name: &str| {
        let a = sim.k.get("attachment", &format!("default/{name}"));
        a["status"]["ipv4Address"].as_str().unwrap().split('/').next().unwrap().to_string()
    };
    let (from, to) = (sim.k.nodes[0].ns("l0x0"), ip_of("l3x0"));
    assert!(ping(&from, &to), "l0x0 -> l3x0 ({to}) across the overlay");
}
