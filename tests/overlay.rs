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

    // Every agent computed the same addresses, each from its node's block
    // (the /24 cut into /26 blocks, in peers order).
    let ips = ["10.77.0.2", "10.77.0.64", "10.77.0.128"];
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
    assert_eq!(addresses(&cluster.sandbox("x3"), "eth0"), ["10.78.0.128/24"]);
    assert!(!ping(&cluster.sandbox("c1"), "10.78.0.128"), "overlays with different VNIs are isolated, routed or not");

    // Static entries only, per node: node 1 reaches node 3 through node 3's
    // device MAC at its VTEP, and node 3's block through one route.
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", cluster.nodes[0].name));
    let n3_mac = netlet::naming::format_mac(&netlet::plan::overlay::device_mac("ov", "n3"));
    assert!(fdb.contains(&format!("{n3_mac} dst 10.99.0.3")), "{fdb}");
    let routes = ok(&format!("ip -n {} route show dev nlx4096", cluster.nodes[0].name));
    assert!(routes.contains("10.77.0.128/26 via 10.99.0.3 proto 78 onlink"), "{routes}");

    // In sync everywhere: a second pass changes nothing on any node.
    for node in &cluster.nodes {
        assert!(node.converge().contains("0 kernel mutations"));
    }

    // c3 leaves: node 3 keeps its block, so nothing changes elsewhere
    // (entries follow nodes, not attachments); nobody moves.
    let without_c3 = yaml.split("---").filter(|d| !d.contains("name: c3}")).collect::<Vec<_>>().join("---");
    for node in &cluster.nodes {
        node.write("cluster.yaml", &without_c3.replace("{T}", &cluster.nodes[0].tag));
    }
    assert!(cluster.nodes[0].converge().contains("0 kernel mutations"), "node 1 does not hear of c3 leaving node 3");
    cluster.nodes[2].converge();
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", cluster.nodes[0].name));
    assert!(fdb.contains(&format!("{n3_mac} dst 10.99.0.3")), "{fdb}");
    assert!(!ping(&cluster.sandbox("c1"), "10.77.0.128"), "c3 is gone");
    assert_eq!(addresses(&cluster.sandbox("c2"), "eth0"), ["10.77.0.64/24"]);
    assert!(ping(&cluster.sandbox("c1"), "10.77.0.64"));

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
    // Traffic towards the ghost (n4's block is the fourth /26): ARP for its
    // VTEP fails on the underlay.
    assert!(!ping(&cluster.sandbox("c1"), "10.77.0.192"));
    wait_until("the VTEP's ARP to fail", Duration::from_secs(10), || {
        ok(&format!("ip -n {} neigh show 10.99.0.9", n1.name)).contains("FAILED")
    });
    n1.converge();
    assert_eq!(n1.status("networks", "ov")["unreachablePeers"], serde_json::json!(["n4 (10.99.0.9)"]));
    assert_eq!(n1.ready("networks", "ov").0, "True", "the overlay still works between the other peers");
}

#[test]
fn a_node_reaches_the_other_nodes_through_one_entry_each_whatever_their_attachment_count() {
    let cluster = Cluster::new();
    let mut yaml = overlay("ov", 4096, "10.77.0.0/24");
    let mut remote = Vec::new();
    for i in 0..8 {
        for (n, node) in ["n1", "n2", "n3"].iter().enumerate() {
            yaml += &att(&format!("a{n}x{i}"), "ov", node);
            if n > 0 {
                remote.push(format!("10.77.0.{}", 64 * n + 2 * usize::from(n == 0) + i));
            }
        }
    }
    // A static address on n2 inside n1's block (10.77.0.0/26): a host route of its own.
    yaml += "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: pinned}\nspec: {network: ov, nodeName: n2, ipv4Address: 10.77.0.40, sandbox: {netns: \"{T}pinned\"}}\n";
    cluster.apply(&yaml);
    assert_eq!(addresses(&cluster.sandbox("a1x0"), "eth0"), ["10.77.0.64/24"]);
    assert_eq!(addresses(&cluster.sandbox("a2x7"), "eth0"), ["10.77.0.135/24"]);

    // Node 1: one FDB and one neighbour entry per other node, one route per
    // block, one host route for the out-of-block address.
    let n1 = &cluster.nodes[0].name;
    let fdb = ok(&format!("bridge -n {n1} fdb show dev nlx4096"));
    assert_eq!(fdb.lines().filter(|l| l.contains(" dst ")).count(), 2, "{fdb}");
    let neigh = ok(&format!("ip -n {n1} neigh show dev nlx4096 nud permanent"));
    assert_eq!(neigh.lines().count(), 2, "{neigh}");
    let n2_mac = netlet::naming::format_mac(&netlet::plan::overlay::device_mac("ov", "n2"));
    assert!(neigh.contains(&format!("10.99.0.2 lladdr {n2_mac}")), "{neigh}");
    let routes = ok(&format!("ip -n {n1} route show proto 78"));
    let mut lines: Vec<&str> = routes.lines().map(str::trim).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "10.77.0.128/26 via 10.99.0.3 dev nlx4096 onlink",
            "10.77.0.40 via 10.99.0.2 dev nlx4096 onlink",
            "10.77.0.64/26 via 10.99.0.2 dev nlx4096 onlink"
        ],
        "{routes}"
    );
    // Node 2 keeps its out-of-block address from the route towards node 1.
    let n2_routes = ok(&format!("ip -n {} route show proto 78", cluster.nodes[1].name));
    assert!(n2_routes.lines().any(|l| l.starts_with("10.77.0.40 dev ") && l.contains("scope link")), "{n2_routes}");

    // Real traffic: node 1 reaches every attachment elsewhere, and the pinned one both ways.
    for ip in remote.iter().map(String::as_str).chain(["10.77.0.40"]) {
        assert!(ping(&cluster.sandbox("a0x0"), ip), "a0x0 -> {ip}");
    }
    assert!(ping(&cluster.sandbox("pinned"), "10.77.0.2"), "pinned -> a0x0");
    assert!(ping(&cluster.sandbox("pinned"), "10.77.0.64"), "pinned -> a1x0 on its own node");
    assert!(ping(&cluster.sandbox("a2x0"), "10.77.0.40"), "a2x0 -> pinned");
    for node in &cluster.nodes {
        assert!(node.converge().contains("0 kernel mutations"));
    }
}

/// A dual-stack overlay: IPv6 blocks mirror the IPv4 ones (the /24 in /26
/// blocks and the /64 in /66 blocks, in peers order), remote IPv6 blocks
/// are routed via each node's device link-local address, and containers
/// route the subnet via the gateway, their own node's block on the link.
#[test]
fn a_dual_stack_overlay_routes_ipv6_per_node_as_well() {
    let cluster = Cluster::new();
    let dual = |name: &str, vni: u32, v4: &str, v6: &str| {
        overlay(name, vni, v4).replace(
            &format!("  ipam: {{config: [{{subnet: {v4}}}]}}"),
            &format!("  enableIPv6: true\n  ipam: {{config: [{{subnet: {v4}}}, {{subnet: \"{v6}\"}}]}}"),
        )
    };
    let mut yaml = dual("ov", 4096, "10.77.0.0/24", "fd00:77::/64") + &dual("other", 5000, "10.78.0.0/24", "fd00:78::/64");
    for (name, node) in [("a1", "n1"), ("b1", "n2"), ("b2", "n2"), ("c1", "n3")] {
        yaml += &att(name, "ov", node);
    }
    yaml += &att("x3", "other", "n3");
    // Statics on n2: in the fourth /66, which no node holds, and in n1's
    // block: a host route each; n1's bridge answers for the second (proxy
    // NDP), as n1's containers take it for on-link.
    let statik = |name: &str, ip: &str| {
        format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: ov, nodeName: n2, ipv6Address: \"{ip}\", sandbox: {{netns: \"{{T}}{name}\"}}}}\n")
    };
    yaml += &(statik("pinned", "fd00:77::c000:0:0:9") + &statik("inside", "fd00:77::40"));
    cluster.apply(&yaml);

    let v6 = |text: &str| text.parse::<std::net::Ipv6Addr>().unwrap().to_string();
    let (a1, b1, b2, c1, pinned) =
        (v6("fd00:77::2"), v6("fd00:77::4000:0:0:0"), v6("fd00:77::4000:0:0:1"), v6("fd00:77::8000:0:0:0"), v6("fd00:77::c000:0:0:9"));
    let inside = v6("fd00:77::40");
    assert_eq!(addresses(&cluster.sandbox("a1"), "eth0"), ["10.77.0.2/24".to_string(), format!("{a1}/64")]);
    assert_eq!(addresses(&cluster.sandbox("b2"), "eth0"), ["10.77.0.65/24".to_string(), format!("{b2}/64")]);
    assert_eq!(addresses(&cluster.sandbox("pinned"), "eth0"), ["10.77.0.66/24".to_string(), format!("{pinned}/64")]);

    // The container: the subnet via the gateway (ahead of the kernel's
    // prefix route), the gateway and its node's block on the link.
    let routes = ok(&format!("ip -n {} -6 route show proto 78", cluster.sandbox("b1")));
    let mut lines: Vec<&str> = routes.lines().map(str::trim).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "fd00:77:0:0:4000::/66 dev eth0 metric 1 pref medium",
            "fd00:77::/64 via fd00:77::1 dev eth0 metric 1 onlink pref medium",
            "fd00:77::1 dev eth0 metric 1 pref medium"
        ],
        "{routes}"
    );

    // Node 1: one FDB entry per other node, one neighbour entry per other
    // node and family (IPv6 needs an IPv6 next hop), one route per block
    // and family, and a host route for the static outside every block.
    let n1 = &cluster.nodes[0].name;
    let fdb = ok(&format!("bridge -n {n1} fdb show dev nlx4096"));
    assert_eq!(fdb.lines().filter(|l| l.contains(" dst ")).count(), 2, "{fdb}");
    let neigh = ok(&format!("ip -n {n1} neigh show dev nlx4096 nud permanent"));
    assert_eq!(neigh.lines().count(), 4, "{neigh}");
    let n2_mac = netlet::plan::overlay::device_mac("ov", "n2");
    let n2_ll = netlet::plan::overlay::link_local(n2_mac);
    assert!(neigh.contains(&format!("{n2_ll} lladdr {}", netlet::naming::format_mac(&n2_mac))), "{neigh}");
    let n3_ll = netlet::plan::overlay::link_local(netlet::plan::overlay::device_mac("ov", "n3"));
    let routes = ok(&format!("ip -n {n1} -6 route show proto 78"));
    let mut lines: Vec<&str> = routes.lines().map(str::trim).filter(|l| l.contains(" dev nlx4096 ")).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("fd00:77:0:0:4000::/66 via {n2_ll} dev nlx4096 metric 1024 onlink pref medium"),
            format!("fd00:77:0:0:8000::/66 via {n3_ll} dev nlx4096 metric 1024 onlink pref medium"),
            format!("fd00:77::40 via {n2_ll} dev nlx4096 metric 1024 onlink pref medium"),
            format!("{pinned} via {n2_ll} dev nlx4096 metric 1024 onlink pref medium"),
        ],
        "{routes}"
    );
    let proxies = ok(&format!("ip -n {n1} -6 neigh show proxy"));
    assert_eq!(proxies.trim(), "fd00:77::40 dev nl-ov proxy", "{proxies}");

    // The bridges' link-local addresses skip DAD: Linux solicits no
    // neighbour for a forwarded packet while it is tentative.
    for node in &cluster.nodes {
        assert_eq!(ok(&format!("ip -n {} -6 addr show dev nl-ov tentative", node.name)), "", "{}", node.name);
    }
    // Traffic both ways: across nodes, on one node, to and from the static.
    for (from, to) in [
        ("a1", &b1),
        ("a1", &c1),
        ("a1", &pinned),
        ("b1", &a1),
        ("b1", &b2),
        ("c1", &b2),
        ("pinned", &a1),
        ("pinned", &b1),
        ("a1", &inside),
        ("inside", &a1),
        ("inside", &b1),
        ("c1", &inside),
    ] {
        assert!(ping(&cluster.sandbox(from), to), "{from} -> {to}");
    }
    let server = Server::start(&cluster.sandbox("c1"), 8080, false, true);
    assert_eq!(connect(&cluster.sandbox("a1"), &c1, 8080, false), Some(format!("hello {a1}")), "TCP over IPv6 across nodes");
    assert_eq!(connect(&cluster.sandbox("pinned"), &c1, 8080, false), Some(format!("hello {pinned}")));
    drop(server);
    let server = Server::start(&cluster.sandbox("b2"), 8081, false, true);
    assert_eq!(connect(&cluster.sandbox("b1"), &b2, 8081, false), Some(format!("hello {b1}")), "TCP over IPv6 on one node");
    drop(server);
    // IPv4 still works, and the other VNI stays apart.
    assert!(ping(&cluster.sandbox("a1"), "10.77.0.128"));
    assert!(!ping(&cluster.sandbox("a1"), "10.78.0.128"));
    assert_eq!(addresses(&cluster.sandbox("x3"), "eth0"), ["10.78.0.128/24".to_string(), format!("{}/64", v6("fd00:78::8000:0:0:0"))]);
    assert!(!ping(&cluster.sandbox("a1"), &v6("fd00:78::8000:0:0:0")), "nor over IPv6");

    // In sync everywhere: a second pass changes nothing on any node.
    for node in &cluster.nodes {
        assert!(node.converge().contains("0 kernel mutations"));
    }
    // Drift: a container route and a node route deleted are made again.
    ok(&format!("ip -n {} -6 route del fd00:77::/64 via fd00:77::1 dev eth0 metric 1", cluster.sandbox("a1")));
    ok(&format!("ip -n {n1} -6 route del fd00:77:0:0:8000::/66 dev nlx4096"));
    cluster.nodes[0].converge();
    assert!(ping(&cluster.sandbox("a1"), &c1), "a1 -> c1 after the repair");
    assert!(ping(&cluster.sandbox("a1"), &b1), "a1 -> b1 after the repair");
    assert!(cluster.nodes[0].converge().contains("0 kernel mutations"));
}
