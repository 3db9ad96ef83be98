//! The nftables dataplane with real packets: a node namespace, containers
//! on its bridges, and a remote host on an uplink (10.250.0.0/24, inside
//! namespaces this test made).

mod harness;

use harness::*;

const NETWORKS: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: front}
spec: {ipam: {config: [{subnet: 10.41.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: back}
spec: {ipam: {config: [{subnet: 10.42.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: quiet}
spec:
  bridge: {icc: false}
  ipam: {config: [{subnet: 10.43.0.0/24}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: sealed}
spec:
  internal: true
  ipam: {config: [{subnet: 10.44.0.0/24}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: nosnat}
spec:
  bridge: {ipMasquerade: false}
  ipam: {config: [{subnet: 10.45.0.0/24}]}
"#;

fn att(name: &str, network: &str, netns: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: {network}, sandbox: {{netns: \"{{T}}{netns}\"}}}}\n")
}

fn pm(name: &str, attachment: &str, ports: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}}}\nspec: {{attachment: {attachment}, ports: {ports}}}\n")
}

/// The node with a remote host at 10.250.0.2 (node side 10.250.0.1).
fn setup(extra: &str) -> (Node, String) {
    let node = Node::new();
    let remote = node.add_remote("rem", "10.250.0.1", "10.250.0.2");
    node.write("all.yaml", &format!("{NETWORKS}{extra}"));
    node.converge();
    (node, remote)
}

#[test]
fn published_ports_answer_from_remote_hosts_the_node_and_containers() {
    let extra = [
        att("web", "front", "web"),
        att("peer", "front", "peer"),
        pm("web", "web", "[{containerPort: 80, hostPort: 8080}, {containerPort: 53, hostPort: 8053, protocol: udp}]"),
    ]
    .concat();
    let (node, remote) = setup(&extra);
    let (web, peer) = (node.ns("web"), node.ns("peer"));
    let _tcp = Server::start(&web, 80, false, false);
    let _udp = Server::start(&web, 53, true, false);

    // (a) from another host: DNAT keeps the client's address.
    assert_eq!(connect(&remote, "10.250.0.1", 8080, false).as_deref(), Some("hello 10.250.0.2"));
    assert_eq!(connect(&remote, "10.250.0.1", 8053, true).as_deref(), Some("hello 10.250.0.2"), "udp");
    // (b) from the node itself, including 127.0.0.1.
    assert!(connect(&node.name, "127.0.0.1", 8080, false).is_some(), "node -> 127.0.0.1:8080");
    assert!(connect(&node.name, "10.250.0.1", 8080, false).is_some(), "node -> its own address");
    // (c) hairpin: a container on the same bridge through the node's address,
    // and one reaching its own published port, both with br_netfilter
    // handing bridged traffic to the inet hooks (its default here) and without.
    for brnf in ["1", "0"] {
        ok(&format!("ip netns exec {} sysctl -qw net.bridge.bridge-nf-call-iptables={brnf}", node.name));
        assert!(connect(&peer, "10.250.0.1", 8080, false).is_some(), "hairpin from a neighbour, br_netfilter {brnf}");
        assert!(connect(&peer, "10.41.0.1", 8080, false).is_some(), "hairpin through the gateway, br_netfilter {brnf}");
        assert!(connect(&web, "10.250.0.1", 8080, false).is_some(), "a container to its own published port, br_netfilter {brnf}");
    }

    let status = node.status("portmappings", "web");
    assert_eq!(status["bindings"][0]["hostPort"], 8080);
    assert_eq!(status["bindings"][0]["hostIP"], "0.0.0.0");
}

#[test]
fn masquerade_isolation_icc_and_internal_networks() {
    let extra = [
        att("f1", "front", "f1"),
        att("f2", "front", "f2"),
        att("b1", "back", "b1"),
        att("both-front", "front", "both"),
        att("both-back", "back", "both"),
        att("q1", "quiet", "q1"),
        att("q2", "quiet", "q2"),
        att("s1", "sealed", "s1"),
        att("s2", "sealed", "s2"),
        att("n1", "nosnat", "n1"),
        pm("q1web", "q1", "[{containerPort: 80, hostPort: 8081}]"),
    ]
    .concat();
    let (node, remote) = setup(&extra);
    let _remote_server = Server::start(&remote, 9000, false, false);
    let ip = |name: &str| node.status("attachments", name)["ipv4Address"].as_str().unwrap().split('/').next().unwrap().to_string();

    // Masquerade: the remote host sees the node's address.
    assert_eq!(connect(&node.ns("f1"), "10.250.0.2", 9000, false).as_deref(), Some("hello 10.250.0.1"));
    // ipMasquerade: false keeps the container's address (the reply then has
    // no route back, as with Docker: nothing answers).
    assert_eq!(connect(&node.ns("n1"), "10.250.0.2", 9000, false), None);

    // Isolation between networks; a container on both reaches each.
    assert!(ping(&node.ns("f1"), &ip("f2")), "same network");
    assert!(!ping(&node.ns("f1"), &ip("b1")), "front -> back is isolated");
    assert!(!ping(&node.ns("b1"), &ip("f1")), "back -> front is isolated");
    assert!(ping(&node.ns("both"), &ip("f1")) && ping(&node.ns("both"), &ip("b1")), "a container on both reaches each");

    // icc: false: no container-to-container, but gateway, outside and published ports work.
    assert!(!ping(&node.ns("q2"), &ip("q1")), "icc off blocks neighbours");
    assert!(ping(&node.ns("q2"), "10.43.0.1"), "the gateway answers");
    assert!(connect(&node.ns("q2"), "10.250.0.2", 9000, false).is_some(), "the outside is reachable");
    let _q1 = Server::start(&node.ns("q1"), 80, false, false);
    assert!(connect(&remote, "10.250.0.1", 8081, false).is_some(), "published port of an icc:false container");

    // internal: members talk, nothing in or out.
    assert!(ping(&node.ns("s1"), &ip("s2")), "internal members talk");
    assert!(connect(&node.ns("s1"), "10.250.0.2", 9000, false).is_none(), "no way out");
    assert!(!ping(&node.ns("f1"), &ip("s1")), "no way in from another network");
}

#[test]
fn only_netlets_table_is_touched_and_a_deleted_table_is_rebuilt() {
    let node = Node::new();
    node.in_node("nft add table inet foreign; nft add chain inet foreign c { type filter hook input priority 0 \\; policy accept \\; }; nft add rule inet foreign c tcp dport 1234 counter accept");
    let foreign_before = String::from_utf8_lossy(&node.in_node("nft list table inet foreign").stdout).into_owned();
    node.write(
        "all.yaml",
        &format!("{NETWORKS}{}{}", att("web", "front", "web"), pm("web", "web", "[{containerPort: 80, hostPort: 8080}]")),
    );
    node.converge();
    assert!(node.in_node("nft list table inet netlet").status.success());
    assert_eq!(
        String::from_utf8_lossy(&node.in_node("nft list table inet foreign").stdout),
        foreign_before,
        "the foreign table is byte-for-byte intact"
    );

    // Deleted behind our back: rebuilt at the next pass; a second pass is a no-op.
    assert!(node.in_node("nft delete table inet netlet").status.success());
    let out = node.converge();
    assert!(out.contains("\"nft\": 1"), "{out}");
    assert!(node.in_node("nft list table inet netlet").status.success());
    assert!(node.converge().contains("0 kernel mutations"));
    // Flushed: the same.
    assert!(node.in_node("nft flush table inet netlet").status.success());
    assert!(node.converge().contains("\"nft\": 1"));
    assert_eq!(String::from_utf8_lossy(&node.in_node("nft list table inet foreign").stdout), foreign_before);

    // Nothing left once everything is gone, the foreign table included untouched.
    node.converge_empty();
    assert!(!node.in_node("nft list table inet netlet").status.success(), "no netlet table after teardown");
    assert_eq!(String::from_utf8_lossy(&node.in_node("nft list table inet foreign").stdout), foreign_before);
}

#[test]
fn conflicting_ports_ephemeral_ports_ranges_and_host_ips() {
    let extra = [
        att("a", "front", "a"),
        att("b", "front", "b"),
        pm("first", "a", "[{containerPort: 80, hostPort: 8080}]"),
        pm("second", "b", "[{containerPort: 80, hostPort: 8080}]"),
        pm("eph", "b", "[{containerPort: 81}]"),
        pm("range", "b", "[{containerPort: 7000, containerPortEnd: 7002, hostPort: 17000, hostPortEnd: 17002}]"),
        pm("local", "a", "[{containerPort: 80, hostPort: 9090, hostIP: 127.0.0.1}]"),
    ]
    .concat();
    let node = Node::new();
    let remote = node.add_remote("rem", "10.250.0.1", "10.250.0.2");
    node.write("all.yaml", &format!("{NETWORKS}{extra}"));
    let out = node.once();
    assert!(!out.status.success(), "a port conflict makes --once fail");
    let (status, reason) = node.ready("portmappings", "second");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "PortConflict"));
    let msg = node.status("portmappings", "second")["conditions"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("default/first"), "names the winner: {msg}");
    assert_eq!(node.ready("portmappings", "first").0, "True");

    // Ephemeral port from the kernel's range, kept across passes.
    let eph = node.status("portmappings", "eph")["bindings"][0]["hostPort"].as_u64().unwrap();
    let range = ok(&format!("ip netns exec {} cat /proc/sys/net/ipv4/ip_local_port_range", node.name));
    let lo: u64 = range.split_whitespace().next().unwrap().parse().unwrap();
    assert!(eph >= lo, "{eph} from {range}");
    node.once();
    assert_eq!(node.status("portmappings", "eph")["bindings"][0]["hostPort"].as_u64(), Some(eph));

    // A range maps one to one; a 127.0.0.1 binding answers locally only.
    assert_eq!(node.status("portmappings", "range")["bindings"].as_array().unwrap().len(), 3);
    let _s = Server::start(&node.ns("b"), 7001, false, false);
    assert!(connect(&remote, "10.250.0.1", 17001, false).is_some());
    let _a = Server::start(&node.ns("a"), 80, false, false);
    assert!(connect(&node.name, "127.0.0.1", 9090, false).is_some());
    assert!(connect(&remote, "10.250.0.1", 9090, false).is_none(), "a 127.0.0.1 binding is not reachable from outside");
}

#[test]
fn a_port_held_by_a_node_process_is_reported_and_sctp_is_published() {
    let node = Node::new();
    let _listener = Server::start(&node.name, 8090, false, false);
    // Python can take longer than Server's grace period to bind under load.
    wait_until("the node's listener", std::time::Duration::from_secs(10), || !node.in_node("ss -Hltn sport = :8090").stdout.is_empty());
    let extra = [
        att("a", "front", "a"),
        pm("taken", "a", "[{containerPort: 80, hostPort: 8090}]"),
        pm("sctp", "a", "[{containerPort: 9, hostPort: 9009, protocol: sctp}]"),
    ]
    .concat();
    node.write("all.yaml", &format!("{NETWORKS}{extra}"));
    let out = node.once();
    assert!(!out.status.success());
    let (status, reason) = node.ready("portmappings", "taken");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "PortInUse"));
    // SCTP cannot be connected to on this kernel, but its DNAT entry is there.
    assert_eq!(node.ready("portmappings", "sctp").0, "True");
    let map = String::from_utf8_lossy(&node.in_node("nft list map inet netlet ports_v4").stdout).into_owned();
    assert!(map.contains("sctp . 9009"), "{map}");
}

#[test]
fn element_updates_keep_the_table_equal_to_a_fresh_rendering() {
    use netlet::dataplane::firewall::{NftFirewall, SyncOutcome};
    use netlet::plan::desired::{FirewallNetwork, FirewallPlan, PublishedPort};
    let node = Node::new();
    let plan = |mappings: std::ops::Range<u16>| FirewallPlan {
        networks: vec![FirewallNetwork {
            name: "n".into(),
            bridge: "nlinc0".into(),
            overlay_device: None,
            subnets: vec!["10.66.0.0/16".parse().unwrap()],
            icc: true,
            masquerade: true,
            internal: false,
        }],
        ports: mappings
            .map(|i| PublishedPort {
                protocol: netlet::api::Protocol::Tcp,
                host_ip: None,
                host_port: 20000 + i,
                container_ip: std::net::IpAddr::from([10, 66, (i / 250) as u8, (2 + i % 250) as u8]),
                container_port: 80,
                bridge: "nlinc0".into(),
            })
            .collect(),
        ..Default::default()
    };
    let ns = std::fs::File::open(format!("/run/netns/{}", node.name)).unwrap();
    let name = node.name.clone();
    // The firewall works on its thread's namespace: a thread of our own.
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mapped = || ok(&format!("ip netns exec {name} nft list map inet netlet ports_v4")).matches(" : 10.66.").count();
        let mut fw = NftFirewall::new();
        assert_eq!(fw.sync(&plan(0..1000)).unwrap(), SyncOutcome::Applied);
        assert_eq!(fw.sync(&plan(0..1001)).unwrap(), SyncOutcome::Applied, "one more");
        assert_eq!(mapped(), 1001);
        // What the update left lists exactly like a fresh rendering.
        assert_eq!(fw.sync(&plan(0..1001)).unwrap(), SyncOutcome::InSync);
        assert_eq!(fw.sync(&plan(1..1001)).unwrap(), SyncOutcome::Applied, "one less");
        assert_eq!(mapped(), 1000);
        assert_eq!(fw.sync(&plan(1..1001)).unwrap(), SyncOutcome::InSync);
        // Flushed behind our back between two changes: still repaired.
        ok(&format!("ip netns exec {name} nft flush table inet netlet"));
        fw.sync(&plan(1..1002)).unwrap();
        assert_eq!(fw.sync(&plan(1..1002)).unwrap(), SyncOutcome::Applied, "the flush is noticed and repaired");
        assert_eq!(fw.sync(&plan(1..1002)).unwrap(), SyncOutcome::InSync);
        assert_eq!(mapped(), 1001);
        fw.remove().unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn element_changes_of_every_fixed_size_set_go_over_netlink_and_list_as_rendered() {
    use netlet::api::Protocol::{Tcp, Udp};
    use netlet::dataplane::firewall::{NftFirewall, SyncOutcome};
    use netlet::plan::desired::{FirewallNetwork, FirewallPlan, PublishedPort};
    let node = Node::new();
    let port = |protocol, host_ip: Option<&str>, host_port, container_ip: &str| PublishedPort {
        protocol,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        container_ip: container_ip.parse().unwrap(),
        container_port: 80,
        bridge: "nlq0".into(),
    };
    let network = |name: &str, bridge: &str, subnets: &[&str]| FirewallNetwork {
        name: name.into(),
        bridge: bridge.into(),
        overlay_device: None,
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        icc: false,
        masquerade: true,
        internal: false,
    };
    // icc: false (without br_netfilter here) brings the bridge table and its port set.
    let mut before = FirewallPlan {
        networks: vec![network("q", "nlq0", &["10.77.0.0/24", "fd77::/64"])],
        ports: vec![port(Tcp, None, 8080, "10.77.0.2"), port(Udp, Some("127.0.0.1"), 53, "10.77.0.3"), port(Tcp, None, 8443, "fd77::2")],
        ..Default::default()
    };
    before.bridge_ports.insert("nlq0".into(), vec!["nlvetha".into()]);
    // Every fixed-size set and map changes: a second bridge (bridges,
    // same_bridge, icc_off_bridges), a port on it, a mapping moved to
    // another container (delete + add of one key), v4 and v6, with and
    // without a host address. The second network has no subnet, so the
    // interval sets (subnets, which nft splits into ranges) stay as they are.
    let mut after = before.clone();
    after.networks.push(network("q2", "nlq1", &[]));
    after.bridge_ports.insert("nlq1".into(), vec!["nlvethb".into()]);
    after.ports = vec![
        port(Tcp, None, 8080, "10.77.0.9"),
        port(Udp, Some("127.0.0.1"), 5353, "10.77.0.3"),
        port(Tcp, Some("fd77::1"), 9443, "fd77::2"),
        port(Udp, None, 8443, "fd77::3"),
    ];
    // Bridged traffic kept away from the inet hooks, as without
    // br_netfilter: the bridge table (and its port set) is needed.
    ok(&format!(
        "ip netns exec {} sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 || true",
        node.name
    ));
    let ns = std::fs::File::open(format!("/run/netns/{}", node.name)).unwrap();
    let dir = std::env::temp_dir().join(format!("netlet-nftlog-{}", node.name));
    std::fs::create_dir_all(&dir).unwrap();
    // nft, logging how it is called: element updates must not need it.
    let (wrapper, log) = (dir.join("nft"), dir.join("calls"));
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$*\" >> {}\nexec nft \"$@\"\n", log.display())).unwrap();
    ok(&format!("chmod +x {}", wrapper.display()));
    let calls = {
        let log = log.clone();
        move || std::fs::read_to_string(&log).unwrap_or_default()
    };
    let name = node.name.clone();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut fw = NftFirewall::with_binary(&wrapper);
        assert_eq!(fw.sync(&before).unwrap(), SyncOutcome::Applied);
        assert!(calls().contains("-f -"), "the first apply is a full one through nft: {}", calls());
        std::fs::remove_file(&log).unwrap();
        assert_eq!(fw.sync(&after).unwrap(), SyncOutcome::Applied);
        assert_eq!(calls(), "", "the element update ran nft");
        // The kernel holds what nft would list for a fresh rendering.
        assert_eq!(fw.sync(&after).unwrap(), SyncOutcome::InSync, "the update lists differently from the rendering");
        let listing = ok(&format!("ip netns exec {name} nft list ruleset"));
        for want in [
            "tcp . 8080 : 10.77.0.9 . 80",
            "127.0.0.1 . udp . 5353 : 10.77.0.3 . 80",
            "fd77::1 . tcp . 9443 : fd77::2 . 80",
            "udp . 8443 : fd77::3 . 80",
            "\"nlvethb\"",
        ] {
            assert!(listing.contains(want), "{want} missing from\n{listing}");
        }
        assert!(!listing.contains("10.77.0.2 . 80"), "the moved mapping's old value is gone\n{listing}");
        // And back: deletions of every kind.
        std::fs::remove_file(&log).unwrap();
        assert_eq!(fw.sync(&before).unwrap(), SyncOutcome::Applied);
        assert_eq!(fw.sync(&before).unwrap(), SyncOutcome::InSync);
        assert!(!calls().contains("-f -"), "the way back ran nft -f: {}", calls());
        fw.remove().unwrap();
    })
    .join()
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn published_ports_answer_at_the_ipv6_loopback_like_at_127_0_0_1() {
    let mut node = Node::new();
    let extra = [
        att("web", "front", "web"),
        pm("web", "web", "[{containerPort: 80, hostPort: 8080}, {containerPort: 53, hostPort: 8053, protocol: udp}]"),
        pm("local", "web", "[{containerPort: 81, hostPort: 8081, hostIP: 127.0.0.1}]"),
    ]
    .concat();
    node.write("all.yaml", &format!("{NETWORKS}{extra}"));
    // [::1] is relayed by the running agent (no NAT can leave ::1).
    node.spawn(&["--metrics-addr", "off"]);
    wait_until("the port mapping", std::time::Duration::from_secs(10), || node.ready("portmappings", "web").0 == "True");
    let web = node.ns("web");
    let _tcp = Server::start(&web, 80, false, false);
    let _udp = Server::start(&web, 53, true, false);
    let _local = Server::start(&web, 81, false, false);
    let seen = |port: u16, udp: bool| connect(&node.name, "::1", port, udp);
    wait_until("[::1]:8080", std::time::Duration::from_secs(5), || seen(8080, false).is_some());
    assert!(seen(8080, false).unwrap().starts_with("hello 10.41.0."), "an IPv4 container behind [::1]");
    assert!(seen(8053, true).is_some(), "udp at [::1]");
    assert!(connect(&node.name, "127.0.0.1", 8080, false).is_some(), "127.0.0.1 as before");
    assert!(seen(8081, false).is_none(), "a port bound to 127.0.0.1 only is not at [::1]");
    // The relay's own sockets are no process standing in the port's way:
    // after a change (which re-reads the node's sockets), still Ready.
    node.write(
        "more.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: later}\nspec: {ipam: {config: [{subnet: 10.49.0.0/24}]}}\n",
    );
    wait_until("the new network", std::time::Duration::from_secs(10), || node.ready("networks", "later").0 == "True");
    assert_eq!(node.ready("portmappings", "web"), ("True".to_string(), "Ready".to_string()));
    // Unpublished: gone from [::1] too.
    node.write("all.yaml", &format!("{NETWORKS}{}", att("web", "front", "web")));
    wait_until("[::1]:8080 to close", std::time::Duration::from_secs(5), || seen(8080, false).is_none());
}
