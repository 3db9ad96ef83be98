//! Tests of the ruleset: rendering, normalizing, the element diff and nft's errors.

use super::*;
use crate::api::Protocol;
use crate::plan::desired::{FirewallNetwork, PublishedPort};

const NO_BRNF: BrNetfilter = BrNetfilter { ipv4: false, ipv6: false };

fn network(name: &str, bridge: &str, subnets: &[&str]) -> FirewallNetwork {
    FirewallNetwork {
        overlay_device: None,
        name: name.into(),
        bridge: bridge.into(),
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        icc: true,
        masquerade: true,
        internal: false,
    }
}

fn port(proto: Protocol, host_ip: Option<&str>, hp: u16, cip: &str, cp: u16) -> PublishedPort {
    PublishedPort {
        protocol: proto,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port: hp,
        container_ip: cip.parse().unwrap(),
        container_port: cp,
        bridge: "br1".into(),
    }
}

fn inet(plan: &FirewallPlan) -> String {
    render(plan, NO_BRNF).unwrap().inet.unwrap()
}

/// The `elements = { ... }` of one set or map, as a sorted list.
fn elements(table: &str, name: &str) -> Vec<String> {
    let norm = normalize(table);
    let start = norm.find(&format!(" {name} {{")).unwrap_or_else(|| panic!("{name} missing"));
    let block = &norm[start..start + norm[start..].find(" } ").unwrap() + 2];
    match block.find("elements = {") {
        None => vec![],
        Some(i) => block[i + 12..block.rfind('}').unwrap()].split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
    }
}

fn two_networks() -> FirewallPlan {
    FirewallPlan { networks: vec![network("a", "br1", &["172.25.0.0/16"]), network("b", "br2", &["172.26.0.0/16"])], ..Default::default() }
}

#[test]
fn empty_plan_means_no_tables() {
    let r = render(&FirewallPlan::default(), NO_BRNF).unwrap();
    assert_eq!(r, Ruleset::default());
    assert_eq!(
        r.script(),
        "add table inet netlet\ndelete table inet netlet\n\
         add table bridge netlet\ndelete table bridge netlet\n"
    );
}

#[test]
fn an_overlays_vxlan_device_counts_as_its_network() {
    let mut plan = two_networks();
    plan.networks[0].overlay_device = Some("nlx7".into());
    let t = inet(&plan);
    assert_eq!(elements(&t, "bridges"), ["\"br1\"", "\"br2\"", "\"nlx7\""]);
    let same = elements(&t, "same_bridge");
    for pair in ["\"br1\" . \"nlx7\"", "\"nlx7\" . \"br1\"", "\"nlx7\" . \"nlx7\""] {
        assert!(same.iter().any(|e| e == pair), "{pair} in {same:?}");
    }
    assert!(!same.iter().any(|e| e.contains("br2") && e.contains("nlx7")), "other networks stay isolated from it");
    // Routed to another node, the subnet is not masqueraded.
    assert!(elements(&t, "subnet_bridge_v4").iter().any(|e| e.ends_with(". \"nlx7\"")));
}

#[test]
fn isolation_between_bridges() {
    let t = inet(&two_networks());
    assert_eq!(elements(&t, "bridges"), ["\"br1\"", "\"br2\""]);
    assert_eq!(elements(&t, "same_bridge"), ["\"br1\" . \"br1\"", "\"br2\" . \"br2\""]);
    assert!(t.contains("iifname @bridges oifname @bridges iifname . oifname != @same_bridge drop"));
    // Established first, DNAT accepted before isolation.
    let est = t.find("ct state established,related accept").unwrap();
    let dnat = t.find("ct status dnat accept").unwrap();
    let iso = t.find("iifname @bridges oifname @bridges").unwrap();
    assert!(est < dnat && dnat < iso);
    assert!(!t.contains("fwd"));
    assert!(render(&two_networks(), NO_BRNF).unwrap().bridge.is_none());
}

#[test]
fn icc_false() {
    let mut plan = two_networks();
    plan.networks[0].icc = false;
    plan.bridge_ports.insert("br1".into(), vec!["vethb".into(), "vetha".into()]);
    plan.bridge_ports.insert("br2".into(), vec!["vethc".into()]);
    let r = render(&plan, NO_BRNF).unwrap();
    let t = r.inet.as_deref().unwrap();
    assert_eq!(elements(t, "icc_off_bridges"), ["\"br1\""]);
    assert!(t.contains("iifname @icc_off_bridges iifname . oifname @same_bridge drop"));
    let b = r.bridge.unwrap();
    assert!(b.starts_with("table bridge netlet {"));
    assert_eq!(elements(&b, "icc_off_ports"), ["\"vetha\"", "\"vethb\""]);
    assert_eq!(elements(&b, "icc_off_v4"), ["172.25.0.0/16 . 172.25.0.0/16"]);
    assert!(b.contains("ether type ip iifname @icc_off_ports oifname @icc_off_ports drop"));
    assert!(b.contains("ip6 saddr . ip6 daddr @icc_off_v6 drop"));
    // With br_netfilter a family is left to the inet forward chain.
    let only6 = render(&plan, BrNetfilter { ipv4: true, ipv6: false }).unwrap();
    let b6 = only6.bridge.unwrap();
    assert!(!b6.contains("ether type ip "));
    assert!(b6.contains("ether type ip6 iifname @icc_off_ports oifname @icc_off_ports drop"));
    let both = BrNetfilter { ipv4: true, ipv6: true };
    assert!(render(&plan, both).unwrap().bridge.is_none());
    // Gateway and outside stay reachable: nothing filters input, and
    // only bridge -> same bridge is dropped.
    assert!(!t.contains("hook input"));
    // The bridge table goes away with the last icc: false network.
    plan.networks[0].icc = true;
    let r = render(&plan, NO_BRNF).unwrap();
    assert!(r.bridge.is_none());
    assert!(r.script().contains("delete table bridge netlet\n"));
}

#[test]
fn internal_network() {
    let mut plan = two_networks();
    plan.networks[1].internal = true;
    let t = inet(&plan);
    assert_eq!(elements(&t, "internal_bridges"), ["\"br2\""]);
    // Internal is sealed before published traffic is let through.
    let drop = t.find("oifname @internal_bridges iifname . oifname != @same_bridge drop").unwrap();
    assert!(t.find("iifname @internal_bridges").unwrap() < drop);
    assert!(drop < t.find("ct status dnat accept").unwrap());
    // Never masqueraded, even if asked to.
    assert_eq!(elements(&t, "masq_v4"), ["172.25.0.0/16"]);
}

#[test]
fn masquerade_on_off() {
    let mut plan = two_networks();
    plan.networks[1].masquerade = false;
    let t = inet(&plan);
    assert_eq!(elements(&t, "masq_v4"), ["172.25.0.0/16"]);
    // Both subnets are known with their bridge (own-bridge exemption, hairpin).
    assert_eq!(elements(&t, "subnet_bridge_v4"), ["172.25.0.0/16 . \"br1\"", "172.26.0.0/16 . \"br2\""]);
    let ret = t.find("ip saddr . oifname @subnet_bridge_v4 return").unwrap();
    assert!(ret < t.find("ip saddr @masq_v4 masquerade").unwrap());
    plan.networks[0].masquerade = false;
    assert!(elements(&inet(&plan), "masq_v4").is_empty());
    // Adjacent subnets are merged as nft lists them; overlaps dropped.
    let plan = FirewallPlan {
        networks: vec![network("a", "br1", &["10.0.0.0/24", "10.0.0.0/16"]), network("b", "br2", &["10.1.0.0/16"])],
        ..Default::default()
    };
    let t = inet(&plan);
    assert_eq!(elements(&t, "masq_v4"), ["10.0.0.0/15"]);
    assert_eq!(elements(&t, "subnet_bridge_v4"), ["10.0.0.0/16 . \"br1\"", "10.1.0.0/16 . \"br2\""]);
    // Host bits are cleared.
    let plan = FirewallPlan { networks: vec![network("a", "br1", &["172.25.3.4/16"])], ..Default::default() };
    assert_eq!(elements(&inet(&plan), "masq_v4"), ["172.25.0.0/16"]);
}

#[test]
fn published_ports_with_and_without_host_ip() {
    let mut plan = two_networks();
    plan.ports = vec![
        port(Protocol::Tcp, None, 8080, "172.25.0.2", 80),
        port(Protocol::Udp, Some("0.0.0.0"), 5353, "172.25.0.2", 53),
        port(Protocol::Tcp, Some("127.0.0.1"), 9090, "172.25.0.3", 90),
        port(Protocol::Sctp, Some("10.0.0.1"), 3868, "172.25.0.3", 3868),
        // Cross-family: skipped.
        port(Protocol::Tcp, Some("10.0.0.1"), 7000, "fd00::2", 7000),
    ];
    let t = inet(&plan);
    assert_eq!(elements(&t, "ports_v4"), ["tcp . 8080 : 172.25.0.2 . 80", "udp . 5353 : 172.25.0.2 . 53"]);
    assert_eq!(elements(&t, "ports_v4_ip"), ["10.0.0.1 . sctp . 3868 : 172.25.0.3 . 3868", "127.0.0.1 . tcp . 9090 : 172.25.0.3 . 90"]);
    assert!(elements(&t, "ports_v6").is_empty());
    assert!(elements(&t, "ports_v6_ip").is_empty());
    assert!(t.contains("fib daddr type local dnat ip to meta l4proto . th dport map @ports_v4"));
    assert!(t.contains("dnat ip to ip daddr . meta l4proto . th dport map @ports_v4_ip"));
    assert!(t.contains("type nat hook output priority -100;"));
    assert!(t.contains("priority -100; policy accept;\n\t\tip6 daddr ::1 return\n"), "::1 is relayed, never DNATed");
    assert!(t.contains("type nat hook prerouting priority dstnat;"));
    // Localhost publishing and hairpin; remote clients keep their source.
    assert!(t.contains("oifname @bridges ip saddr 127.0.0.0/8 masquerade"));
    assert!(t.contains("ct status dnat ip saddr . oifname @subnet_bridge_v4 masquerade"));
    assert!(t.contains("iifname @bridges ip daddr 127.0.0.0/8 drop"));
    assert_eq!(t.matches("masquerade").count(), 5);
}

#[test]
fn ipv6() {
    let plan = FirewallPlan {
        networks: vec![network("a", "br1", &["172.25.0.0/16", "fd00:1::/64"])],
        ports: vec![
            port(Protocol::Tcp, None, 8080, "fd00:1::2", 80),
            port(Protocol::Tcp, Some("::"), 8081, "fd00:1::2", 81),
            port(Protocol::Udp, Some("fd00:9::1"), 53, "fd00:1::3", 5353),
        ],
        ..Default::default()
    };
    let t = inet(&plan);
    assert_eq!(elements(&t, "masq_v6"), ["fd00:1::/64"]);
    assert_eq!(elements(&t, "subnet_bridge_v6"), ["fd00:1::/64 . \"br1\""]);
    assert_eq!(elements(&t, "ports_v6"), ["tcp . 8080 : fd00:1::2 . 80", "tcp . 8081 : fd00:1::2 . 81"]);
    assert_eq!(elements(&t, "ports_v6_ip"), ["fd00:9::1 . udp . 53 : fd00:1::3 . 5353"]);
    assert!(elements(&t, "ports_v4").is_empty());
    assert!(t.contains("fib daddr type local dnat ip6 to meta l4proto . th dport map @ports_v6"));
}

#[test]
fn element_updates_touch_only_what_changed() {
    let mut plan = two_networks();
    plan.ports = vec![port(Protocol::Tcp, None, 8080, "172.25.0.2", 80), port(Protocol::Tcp, None, 8081, "172.25.0.3", 80)];
    let before = render(&plan, NO_BRNF).unwrap();
    assert!(element_changes(&before, &before).is_empty(), "no change, empty transaction");
    // One mapping more, one moved to another container, one gone.
    plan.ports = vec![port(Protocol::Tcp, None, 8080, "172.25.0.9", 80), port(Protocol::Udp, None, 53, "172.25.0.4", 53)];
    let after = render(&plan, NO_BRNF).unwrap();
    assert_eq!(before.skeleton, after.skeleton, "mappings change elements only");
    assert_eq!(
        element_script(&element_changes(&before, &after)),
        "delete element inet netlet ports_v4 { tcp . 8080, tcp . 8081 }\n\
         add element inet netlet ports_v4 { tcp . 8080 : 172.25.0.9 . 80, udp . 53 : 172.25.0.4 . 53 }\n"
    );
    // icc: false adds a table: not an element change.
    plan.networks[0].icc = false;
    assert_ne!(render(&plan, NO_BRNF).unwrap().skeleton, after.skeleton);
}

#[test]
fn deterministic_and_order_independent() {
    let mut plan = two_networks();
    plan.networks[0].icc = false;
    plan.bridge_ports.insert("br1".into(), vec!["v2".into(), "v1".into()]);
    plan.ports = vec![
        port(Protocol::Tcp, None, 8080, "172.25.0.2", 80),
        port(Protocol::Udp, None, 8080, "172.25.0.2", 80),
        port(Protocol::Tcp, Some("10.0.0.1"), 8080, "172.26.0.2", 80),
    ];
    let a = render(&plan, NO_BRNF).unwrap();
    let mut shuffled = plan.clone();
    shuffled.networks.reverse();
    shuffled.ports.reverse();
    shuffled.bridge_ports.get_mut("br1").unwrap().reverse();
    assert_eq!(a, render(&shuffled, NO_BRNF).unwrap());
    assert_eq!(a.script(), render(&plan.clone(), NO_BRNF).unwrap().script());
    // Duplicate key: the first in sorted order wins, no nft error.
    plan.ports.push(port(Protocol::Tcp, None, 8080, "172.25.0.9", 80));
    assert_eq!(elements(&inet(&plan), "ports_v4"), ["tcp . 8080 : 172.25.0.2 . 80", "udp . 8080 : 172.25.0.2 . 80"]);
}

#[test]
fn bad_interface_name_is_an_error() {
    let plan = FirewallPlan { networks: vec![network("a", "br\"1", &["10.0.0.0/24"])], ..Default::default() };
    assert!(matches!(render(&plan, NO_BRNF), Err(FirewallError::Invalid(_))));
}

#[test]
fn normalize_matches_nft_listing_style() {
    let plan = FirewallPlan {
        networks: vec![network("a", "br1", &["172.25.0.0/16"]), network("b", "br2", &["10.1.0.0/24"])],
        ..Default::default()
    };
    let rendered = inet(&plan);
    // nft wraps elements, indents with tabs, puts blank lines between
    // blocks and may order hash elements differently.
    let listed = rendered.replace("\t}\n\tset", "\t}\n\n\tset").replace("{ \"br1\",\n\t\t\t     \"br2\" }", "{ \"br2\", \"br1\" }");
    assert_ne!(listed, rendered);
    assert_eq!(normalize(&listed), normalize(&rendered));
    assert_ne!(normalize(&listed), normalize(&inet(&two_networks())));
}

#[test]
fn nft_error_points_at_the_script_line() {
    let script = "table inet netlet {\n\tchain x {\n\t\tmeta bogus drop\n\t}\n}\n";
    let stderr = "/dev/stdin:3:3-12: Error: syntax error, unexpected bogus\n\t\tmeta bogus drop\n\t\t^^^^\n";
    let (n, line) = error_line(stderr, script);
    assert_eq!(n, Some(3));
    let err = FirewallError::Nft { action: "apply", stderr: stderr.into(), line_number: n, line };
    assert_eq!(err.to_string(), "nft apply failed: Error: syntax error, unexpected bogus (script line 3: `meta bogus drop`)");
}
