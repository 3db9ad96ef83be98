//! Overlay networks across three simulated nodes: node namespaces joined by
//! an underlay bridge (in a namespace of its own), one agent per node, all
//! reading the same manifests.

mod harness;

use std::time::Duration;

use harness::*;

struct Cluster {
    nodes: Vec<Node>,
    underlay: String,
}

impl Cluster {
    fn new() -> Cluster {
        let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| Node::named(n)).collect();
        let underlay = nodes[0].ns("ul");
        ok(&format!("ip netns add {underlay} && ip -n {underlay} link add br0 type bridge && ip -n {underlay} link set br0 up"));
        for (i, node) in nodes.iter().enumerate() {
            let port = format!("{}p{i}", nodes[0].tag);
            ok(&format!(
                "ip link add {port} netns {underlay} type veth peer name ul0 netns {n} && ip -n {underlay} link set {port} master br0 up && \
                 ip -n {n} addr add 10.99.0.{}/24 dev ul0 && ip -n {n} link set ul0 up",
                i + 1,
                n = node.name
            ));
        }
        Cluster { nodes, underlay }
    }

    /// The same manifests on every node (`{T}` is node 1's tag everywhere).
    fn apply(&self, yaml: &str) {
        let yaml = yaml.replace("{T}", &self.nodes[0].tag);
        for node in &self.nodes {
            node.write("cluster.yaml", &yaml);
        }
        for node in &self.nodes {
            node.converge();
        }
    }

    fn sandbox(&self, short: &str) -> String {
        self.nodes[0].ns(short)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.underlay));
    }
}

fn overlay(name: &str, vni: u32, subnet: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec:\n  driver: overlay\n  overlay:\n    vni: {vni}\n    peers: [{{node: n1, address: 10.99.0.1}}, {{node: n2, address: 10.99.0.2}}, {{node: n3, address: 10.99.0.3}}]\n  ipam: {{config: [{{subnet: {subnet}}}]}}\n"
    )
}

fn att(name: &str, network: &str, node: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: {network}, nodeName: {node}, sandbox: {{netns: \"{{T}}{name}\"}}}}\n")
}

#[test]
fn containers_on_three_nodes_share_one_overlay_and_only_it() {
    let cluster = Cluster::new();
    let mut yaml = overlay("ov", 4096, "10.77.0.0/24") + &overlay("other", 5000, "10.78.0.0/24");
    for (name, node) in [("c1", "n1"), ("c2", "n2"), ("c3", "n3")] {
        yaml += &att(name, "ov", node);
    }
    yaml += &att("x3", "other", "n3");
    cluster.apply(&yaml);

    // Every agent computed the same addresses, in manifest order.
    let ips = ["10.77.0.2", "10.77.0.3", "10.77.0.4"];
    for (i, name) in ["c1", "c2", "c3"].iter().enumerate() {
        assert_eq!(addresses(&cluster.sandbox(name), "eth0"), [format!("{}/24", ips[i])]);
    }
    // VXLAN: VNI, port, no learning, MTU from the underlay (1500 - 50).
    let vx = link(&cluster.nodes[0].name, "nlx4096").expect("vxlan device");
    assert_eq!(vx["linkinfo"]["info_data"]["id"], 4096);
    assert_eq!(vx["linkinfo"]["info_data"]["port"], 4789);
    assert_eq!(vx["linkinfo"]["info_data"]["learning"], false);
    assert_eq!(vx["mtu"], 1450);
    assert_eq!(link(&cluster.sandbox("c1"), "eth0").unwrap()["mtu"], 1450);

    // Every pair reaches each other across nodes.
    for (from, _) in [("c1", 0), ("c2", 1), ("c3", 2)] {
        for ip in ips {
            assert!(ping(&cluster.sandbox(from), ip), "{from} -> {ip}");
        }
    }
    // A different VNI is a different segment.
    assert!(!ping(&cluster.sandbox("c1"), "10.78.0.2"), "overlays with different VNIs are isolated");

    // Static entries only: node 1 knows c2 and c3 by FDB and neighbour entries.
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", cluster.nodes[0].name));
    assert!(fdb.contains("02:42:0a:4d:00:04 dst 10.99.0.3"), "{fdb}");

    // In sync everywhere: a second pass changes nothing on any node.
    for node in &cluster.nodes {
        assert!(node.converge().contains("0 kernel mutations"));
    }

    // c3 leaves: its entries are withdrawn on the other nodes; nobody moves.
    let without_c3 = yaml.split("---").filter(|d| !d.contains("name: c3}")).collect::<Vec<_>>().join("---");
    cluster.apply(&without_c3);
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", cluster.nodes[0].name));
    // (the bridge's own learned entry ages out; ours is the `dst` one)
    assert!(!fdb.contains("02:42:0a:4d:00:04 dst"), "c3's FDB entry withdrawn: {fdb}");
    let neigh = ok(&format!("ip -n {} neigh show dev nlx4096", cluster.nodes[0].name));
    assert!(!neigh.contains("10.77.0.4"), "{neigh}");
    assert_eq!(addresses(&cluster.sandbox("c2"), "eth0"), ["10.77.0.3/24"]);
    assert!(ping(&cluster.sandbox("c1"), "10.77.0.3"));

    // Node 2 leaves the peers: its entries go from node 1.
    let without_n2 = without_c3
        .replace("{node: n2, address: 10.99.0.2}, ", "")
        .split("---")
        .filter(|d| !d.contains("name: c2}"))
        .collect::<Vec<_>>()
        .join("---");
    let yaml = without_n2.replace("{T}", &cluster.nodes[0].tag);
    cluster.nodes[0].write("cluster.yaml", &yaml);
    cluster.nodes[0].converge();
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", cluster.nodes[0].name));
    assert!(!fdb.contains("10.99.0.2"), "{fdb}");
}

#[test]
fn mtu_and_unreachable_peers_are_reported_in_status() {
    let cluster = Cluster::new();
    // A fourth peer whose VTEP nobody answers for.
    let net = overlay("ov", 4096, "10.77.0.0/24")
        .replace("{node: n3, address: 10.99.0.3}]", "{node: n3, address: 10.99.0.3}, {node: n4, address: 10.99.0.9}]");
    let yaml = net + &att("c1", "ov", "n1") + &att("ghost", "ov", "n4");
    let n1 = &cluster.nodes[0];
    n1.write("cluster.yaml", &yaml.replace("{T}", &n1.tag));
    n1.converge();
    assert_eq!(n1.status("networks", "ov")["mtu"], 1450);
    assert!(n1.status("networks", "ov")["unreachablePeers"].is_null(), "nothing known before any traffic");
    // Traffic towards the ghost: ARP for its VTEP fails on the underlay.
    assert!(!ping(&cluster.sandbox("c1"), "10.77.0.3"));
    wait_until("the VTEP's ARP to fail", Duration::from_secs(10), || {
        ok(&format!("ip -n {} neigh show 10.99.0.9", n1.name)).contains("FAILED")
    });
    n1.converge();
    assert_eq!(n1.status("networks", "ov")["unreachablePeers"], serde_json::json!(["n4 (10.99.0.9)"]));
    assert_eq!(n1.ready("networks", "ov").0, "True", "the overlay still works between the other peers");
}
