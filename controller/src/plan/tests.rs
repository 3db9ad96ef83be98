use super::*;
use crate::api::{AttachmentSpec, IpamConfig, Network, NetworkSpec, PortMapping, PortMappingSpec, PortSpec, Sandbox};
use std::net::IpAddr;

pub(super) fn network(name: &str, subnet: &str) -> Network {
    let mut n = Network::new(name, NetworkSpec::default());
    n.spec.ipam.config.push(IpamConfig { subnet: subnet.into(), ..Default::default() });
    n
}

pub(super) fn attachment(name: &str, network: &str, netns: &str) -> Attachment {
    let mut a = Attachment::new(
        name,
        AttachmentSpec {
            network: network.into(),
            sandbox: Sandbox { netns: Some(netns.into()), ..Default::default() },
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a
}

fn port_mapping(name: &str, att: &str, container: u16, host: Option<u16>) -> PortMapping {
    let mut p = PortMapping::new(
        name,
        PortMappingSpec {
            attachment: att.into(),
            ports: vec![PortSpec { container_port: container, host_port: host, ..Default::default() }],
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("default".into());
    p
}

pub(super) fn arcs<T>(objects: Vec<T>) -> Vec<std::sync::Arc<T>> {
    objects.into_iter().map(std::sync::Arc::new).collect()
}

fn facts() -> NodeFacts {
    NodeFacts { node_name: "node-a".into(), ephemeral_ports: (32768, 60999), ..Default::default() }
}

fn run(objects: ObjectSet) -> Plan {
    plan(&objects, &facts(), &Allocations::default())
}

fn ok_att<'a>(p: &'a Plan, key: &str) -> &'a AttachmentInfo {
    p.attachments[key].as_ref().unwrap_or_else(|f| panic!("{key} failed: {f}"))
}

fn failed(p: &Plan, key: &str) -> Failure {
    p.attachments[key].clone().expect_err("expected failure")
}

#[test]
fn docker_isolated_nw_scenario_plans_bridge_addresses_and_interfaces() {
    let mut isolated = network("isolated_nw", "172.25.0.0/16");
    isolated.spec.ipam.config[0].gateway = Some("172.25.0.1".into());
    isolated.spec.ipam.config[0].ip_range = Some("172.25.5.0/24".into());
    isolated.spec.ipam.config[0].aux_addresses.insert("my-router".into(), "172.25.1.5".into());
    isolated.spec.options.insert("com.docker.network.bridge.name".into(), "docker1".into());
    let mut c3 = attachment("container3", "isolated_nw", "container3");
    c3.spec.ipv4_address = Some("172.25.3.3".into());
    let objects = ObjectSet {
        networks: arcs(vec![network("bridge", "172.17.0.0/16"), isolated]),
        attachments: arcs(vec![
            attachment("container2-bridge", "bridge", "container2"),
            attachment("container2", "isolated_nw", "container2"),
            c3,
        ]),
        ..Default::default()
    };
    let p = run(objects);
    assert_eq!(p.desired.bridges.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["nl-bridge", "docker1"]);
    let c3 = ok_att(&p, "default/container3");
    assert_eq!(c3.ipv4.unwrap().to_string(), "172.25.3.3/16");
    assert_eq!(c3.mac.as_deref(), Some("02:42:ac:19:03:03"));
    assert_eq!(c3.interface.as_deref(), Some("eth0"));
    let c2 = ok_att(&p, "default/container2");
    assert_eq!(c2.ipv4.unwrap().to_string(), "172.25.5.0/16");
    assert_eq!(c2.interface.as_deref(), Some("eth1"), "second network of container2 is eth1");
    assert_eq!(ok_att(&p, "default/container2-bridge").ipv4.unwrap().to_string(), "172.17.0.2/16");
    // Only the first network of container2 carries the default route.
    let routes: Vec<_> = p.desired.endpoints.iter().filter(|e| e.gateway_v4.is_some()).map(|e| e.owner.as_str()).collect();
    assert_eq!(routes, ["default/container2-bridge", "default/container3"]);
    assert_eq!(p.desired.sandboxes.len(), 2);
    assert!(p.desired.ipv4_forwarding);
}

#[test]
fn held_allocations_survive_a_replan_with_new_earlier_objects() {
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24")]),
        attachments: arcs(vec![attachment("b", "n", "b")]),
        ..Default::default()
    };
    let first = run(objects);
    assert_eq!(ok_att(&first, "default/b").ipv4.unwrap().to_string(), "10.1.0.2/24");
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24")]),
        attachments: arcs(vec![attachment("a", "n", "a"), attachment("b", "n", "b")]),
        ..Default::default()
    };
    let second = plan(&objects, &facts(), &first.allocations);
    assert_eq!(ok_att(&second, "default/b").ipv4.unwrap().to_string(), "10.1.0.2/24");
    assert_eq!(ok_att(&second, "default/a").ipv4.unwrap().to_string(), "10.1.0.3/24");
}

#[test]
fn attachment_on_a_missing_network_fails_alone() {
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24")]),
        attachments: arcs(vec![attachment("lost", "nope", "x"), attachment("fine", "n", "y")]),
        ..Default::default()
    };
    let p = run(objects);
    assert_eq!(failed(&p, "default/lost").reason, reason::NETWORK_NOT_FOUND);
    assert!(p.attachments["default/fine"].is_ok());
    assert_eq!(p.desired.endpoints.len(), 1);
}

#[test]
fn overlapping_and_invalid_networks_fail_with_specific_reasons() {
    let mut bad_gw = network("badgw", "10.9.0.0/24");
    bad_gw.spec.ipam.config[0].gateway = Some("10.8.0.1".into());
    let objects = ObjectSet {
        networks: arcs(vec![network("first", "10.1.0.0/16"), network("second", "10.1.2.0/24"), network("cidr", "10.1.0.0/33"), bad_gw]),
        ..Default::default()
    };
    let p = run(objects);
    assert!(p.networks["first"].is_ok());
    let second = p.networks["second"].clone().unwrap_err();
    assert_eq!(second.reason, reason::SUBNET_OVERLAP);
    assert!(second.message.contains("first"));
    assert!(p.networks["cidr"].clone().unwrap_err().message.contains("not a valid CIDR"));
    assert!(p.networks["badgw"].clone().unwrap_err().message.contains("outside the subnet"));
}

#[test]
fn static_address_problems_are_reported_per_attachment() {
    let mut gw = attachment("gw", "n", "a");
    gw.spec.ipv4_address = Some("10.1.0.1".into());
    let mut outside = attachment("outside", "n", "b");
    outside.spec.ipv4_address = Some("10.2.0.1".into());
    let mut first = attachment("first", "n", "c");
    first.spec.ipv4_address = Some("10.1.0.9".into());
    let mut dup = attachment("dup", "n", "d");
    dup.spec.ipv4_address = Some("10.1.0.9".into());
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24")]),
        attachments: arcs(vec![gw, outside, first, dup]),
        ..Default::default()
    };
    let p = run(objects);
    assert!(failed(&p, "default/gw").message.contains("gateway"));
    assert!(failed(&p, "default/outside").message.contains("outside every subnet"));
    assert!(p.attachments["default/first"].is_ok());
    assert_eq!(failed(&p, "default/dup").reason, reason::ADDRESS_IN_USE);
}

#[test]
fn conflicting_sandbox_variants_are_rejected() {
    let mut a = attachment("a", "n", "a");
    a.spec.sandbox.path = Some("/proc/1/ns/net".into());
    let objects = ObjectSet { networks: arcs(vec![network("n", "10.1.0.0/24")]), attachments: arcs(vec![a]), ..Default::default() };
    let f = failed(&run(objects), "default/a");
    assert_eq!(f.reason, reason::INVALID_SPEC);
    assert!(f.message.contains("netns, path"), "{}", f.message);
}

#[test]
fn explicit_interface_names_and_duplicate_macs() {
    let mut a = attachment("a", "n", "s");
    a.spec.interface = Some("eth0".into());
    let mut b = attachment("b", "m", "s");
    b.spec.interface = Some("eth0".into());
    let mut c = attachment("c", "n", "t");
    c.spec.mac_address = Some("02:42:0a:01:00:02".into()); // what a's derived MAC is
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24"), network("m", "10.2.0.0/24")]),
        attachments: arcs(vec![a, b, c]),
        ..Default::default()
    };
    let p = run(objects);
    assert!(p.attachments["default/a"].is_ok());
    assert_eq!(failed(&p, "default/b").reason, reason::INTERFACE_CONFLICT);
    assert_eq!(failed(&p, "default/c").reason, reason::DUPLICATE_MAC);
}

#[test]
fn attachments_of_other_nodes_are_ignored() {
    let mut a = attachment("a", "n", "a");
    a.spec.node_name = Some("node-b".into());
    let objects = ObjectSet { networks: arcs(vec![network("n", "10.1.0.0/24")]), attachments: arcs(vec![a]), ..Default::default() };
    let p = run(objects);
    assert!(p.attachments.is_empty());
    assert!(p.desired.endpoints.is_empty());
}

#[test]
fn port_mappings_expand_allocate_and_conflict_in_creation_order() {
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24")]),
        attachments: arcs(vec![attachment("web", "n", "web"), attachment("db", "n", "db")]),
        port_mappings: arcs(vec![
            port_mapping("web", "web", 80, Some(8080)),
            port_mapping("db", "db", 5432, Some(8080)),
            port_mapping("eph", "db", 5432, None),
            port_mapping("ghost", "nobody", 1, None),
        ]),
        pods: None,
    };
    let p = run(objects);
    let web = p.port_mappings["default/web"].as_ref().unwrap();
    assert_eq!((web[0].host_port, web[0].container_port, web[0].host_ip.as_str()), (8080, 80, "0.0.0.0"));
    let conflict = p.port_mappings["default/db"].clone().unwrap_err();
    assert_eq!(conflict.reason, reason::PORT_CONFLICT);
    assert!(conflict.message.contains("default/web"));
    assert_eq!(p.port_mappings["default/eph"].as_ref().unwrap()[0].host_port, 32768);
    assert_eq!(p.port_mappings["default/ghost"].clone().unwrap_err().reason, reason::ATTACHMENT_NOT_FOUND);
    assert_eq!(p.desired.firewall.ports.len(), 2);
}

pub(super) fn overlay_network() -> Network {
    let mut n = network("ov", "10.77.0.0/24");
    n.spec.driver = crate::api::Driver::Overlay;
    n.spec.overlay = Some(crate::api::OverlayOptions {
        vni: 4096,
        port: None,
        peers: ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, node)| crate::api::OverlayPeer { node: node.to_string(), address: format!("10.99.0.{}", i + 1) })
            .collect(),
        block_prefix_length: None,
    });
    n
}

pub(super) fn on_node(mut a: Attachment, node: &str) -> Attachment {
    a.spec.node_name = Some(node.into());
    a
}

pub(super) fn facts_for(node: &str) -> NodeFacts {
    NodeFacts { node_name: node.into(), ephemeral_ports: (32768, 60999), ..Default::default() }
}

#[test]
fn every_node_computes_the_same_overlay_addresses_each_from_its_nodes_block() {
    let objects = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![
            on_node(attachment("c1", "ov", "c1"), "n1"),
            on_node(attachment("c2", "ov", "c2"), "n2"),
            on_node(attachment("c3", "ov", "c3"), "n3"),
        ]),
        ..Default::default()
    };
    let plans: Vec<Plan> = ["n1", "n2", "n3"].iter().map(|n| plan(&objects, &facts_for(n), &Allocations::default())).collect();
    for p in &plans {
        // /26 blocks of the /24, in peers order.
        assert_eq!(p.allocations.endpoints["default/c1"].ipv4, Some("10.77.0.2".parse().unwrap()));
        assert_eq!(p.allocations.endpoints["default/c2"].ipv4, Some("10.77.0.64".parse().unwrap()));
        assert_eq!(p.allocations.endpoints["default/c3"].ipv4, Some("10.77.0.128".parse().unwrap()));
        assert_eq!(p.desired.endpoints.len(), 1, "one local container per node");
        let vx = &p.desired.vxlans[0];
        assert_eq!((vx.name.as_str(), vx.vni, vx.port, vx.mtu), ("nlx4096", 4096, 4789, 1450));
        assert_eq!(vx.peers.len(), 2);
        assert!(vx.local_routes.is_empty(), "every address is in its node's block");
    }
    let n1 = &plans[0].desired.vxlans[0];
    assert_eq!(n1.local.to_string(), "10.99.0.1");
    assert_eq!(n1.mac, overlay::device_mac("ov", "n1"));
    let n2 = &n1.peers[0];
    assert_eq!((n2.node.as_str(), n2.vtep.to_string()), ("n2", "10.99.0.2".to_string()));
    assert_eq!(n2.mac, plans[1].desired.vxlans[0].mac, "n1 names n2's device by the MAC n2 gives it");
    assert_eq!(n2.routes, ["10.77.0.64/26".parse::<ipnet::IpNet>().unwrap()], "one route for the whole block, not one per attachment");
}

#[test]
fn an_address_outside_its_nodes_block_is_routed_on_its_own() {
    let mut c2 = on_node(attachment("c2", "ov", "c2"), "n2");
    c2.spec.ipv4_address = Some("10.77.0.2".into()); // inside n1's block
    let objects = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n1"), c2]),
        ..Default::default()
    };
    let plans: Vec<Plan> = ["n1", "n2", "n3"].iter().map(|n| plan(&objects, &facts_for(n), &Allocations::default())).collect();
    for p in &plans {
        assert_eq!(p.allocations.endpoints["default/c1"].ipv4, Some("10.77.0.3".parse().unwrap()), "n2's static is never handed out");
    }
    let host: ipnet::IpNet = "10.77.0.2/32".parse().unwrap();
    let n2_on = |p: &Plan| p.desired.vxlans[0].peers.iter().find(|peer| peer.node == "n2").unwrap().routes.clone();
    assert_eq!(n2_on(&plans[0]), ["10.77.0.64/26".parse().unwrap(), host]);
    assert_eq!(n2_on(&plans[2]), ["10.77.0.64/26".parse().unwrap(), host]);
    assert_eq!(plans[1].desired.vxlans[0].local_routes, [host], "n2 keeps it from the route towards n1");
    assert!(plans[0].desired.vxlans[0].local_routes.is_empty());
}

#[test]
fn a_peer_beyond_the_last_block_gets_a_clear_error() {
    let mut net = overlay_network();
    net.spec.overlay.as_mut().unwrap().block_prefix_length = Some(25); // two blocks, three peers
    let objects =
        ObjectSet { networks: arcs(vec![net]), attachments: arcs(vec![on_node(attachment("c3", "ov", "c3"), "n3")]), ..Default::default() };
    let p = plan(&objects, &facts_for("n3"), &Allocations::default());
    let err = p.attachments["default/c3"].clone().unwrap_err();
    assert_eq!(err.reason, reason::POOL_EXHAUSTED);
    assert!(err.message.contains("node n3 has no address block"), "{}", err.message);
}

#[test]
fn overlay_addresses_stay_put_when_an_earlier_attachment_goes() {
    let all = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n2"), on_node(attachment("c2", "ov", "c2"), "n2")]),
        ..Default::default()
    };
    let first = plan(&all, &facts_for("n2"), &Allocations::default());
    let fewer = ObjectSet { networks: arcs(vec![overlay_network()]), attachments: vec![all.attachments[1].clone()], ..Default::default() };
    let second = plan(&fewer, &facts_for("n2"), &first.allocations);
    assert_eq!(second.allocations.endpoints["default/c2"].ipv4, Some("10.77.0.65".parse().unwrap()));
}

#[test]
fn a_node_outside_the_peers_and_vni_collisions_are_reported() {
    let mut twin = overlay_network();
    twin.metadata.name = Some("twin".into());
    twin.spec.ipam.config[0].subnet = "10.78.0.0/24".into();
    let objects = ObjectSet { networks: arcs(vec![overlay_network(), twin]), ..Default::default() };
    let p = plan(&objects, &facts_for("n1"), &Allocations::default());
    assert!(p.networks["twin"].clone().unwrap_err().message.contains("already used by network ov"));
    let outsider = plan(&objects, &facts_for("n9"), &Allocations::default());
    assert_eq!(outsider.networks["ov"].clone().unwrap_err().reason, reason::NOT_A_PEER);
}

#[test]
fn an_explicit_default_route_wins_and_internal_networks_never_carry_it() {
    let mut internal = network("int", "10.3.0.0/24");
    internal.spec.internal = true;
    let mut b = attachment("b", "m", "s");
    b.spec.default_route = Some(true);
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24"), network("m", "10.2.0.0/24"), internal]),
        attachments: arcs(vec![attachment("a", "n", "s"), b, attachment("i", "int", "t")]),
        ..Default::default()
    };
    let p = run(objects);
    let gw: Vec<(&str, Option<String>)> =
        p.desired.endpoints.iter().map(|e| (e.owner.as_str(), e.gateway_v4.map(|g| g.to_string()))).collect();
    assert_eq!(gw, [("default/a", None), ("default/b", Some("10.2.0.1".into())), ("default/i", None)]);
}

#[test]
fn kubernetes_overlay_allocates_only_from_the_nodes_blocks_and_trusts_other_nodes_status() {
    let objects = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![
            on_node(attachment("r1", "ov", "r1"), "n2"),
            on_node(attachment("r2", "ov", "r2"), "n2"),
            on_node(attachment("c1", "ov", "c1"), "n1"),
            on_node(attachment("c2", "ov", "c2"), "n1"),
        ]),
        ..Default::default()
    };
    let mut held = Allocations::default();
    // r1's node reported its address; r2's has not yet.
    held.endpoints
        .insert("default/r1".into(), HeldEndpoint { network: "ov".into(), ipv4: Some("10.77.0.2".parse().unwrap()), ..Default::default() });
    let mut node = facts_for("n1");
    let mine = vec!["10.77.0.64/31".parse().unwrap(), "10.77.0.128/30".parse().unwrap()];
    node.overlay_blocks.insert("ov".into(), [("n1".to_string(), overlay::NodeRoutes { blocks: mine, outside: Vec::new() })].into());
    let p = plan(&objects, &node, &held);
    let ip = |k: &str| p.allocations.endpoints.get(k).and_then(|h| h.ipv4).map(|ip| ip.to_string());
    // The first block first, then the next; never the lowest free of the subnet.
    assert_eq!(ip("default/c1").as_deref(), Some("10.77.0.64"));
    assert_eq!(ip("default/c2").as_deref(), Some("10.77.0.65"));
    let vx = &p.desired.vxlans[0];
    // r1 is known by its status; n2's blocks are not: a host route for it alone.
    let n2 = vx.peers.iter().find(|p| p.node == "n2").unwrap();
    assert_eq!(n2.routes, ["10.77.0.2/32".parse::<ipnet::IpNet>().unwrap()], "r2 is not known yet");
    assert!(!p.attachments.contains_key("default/r2"), "no verdict on another node's attachment");

    // A third local attachment spills into the second block.
    let mut more = objects.clone();
    more.attachments.push(std::sync::Arc::new(on_node(attachment("c3", "ov", "c3"), "n1")));
    let p = plan(&more, &node, &held);
    assert_eq!(p.allocations.endpoints["default/c3"].ipv4, Some("10.77.0.128".parse().unwrap()), "a block boundary is no subnet boundary");

    // No block yet: the dynamic attachments wait, with a reason that says so.
    node.overlay_blocks.insert("ov".into(), Default::default());
    let p = plan(&objects, &node, &held);
    assert_eq!(p.attachments["default/c1"].clone().unwrap_err().reason, reason::ADDRESS_BLOCK_PENDING);
}

#[test]
fn overlay_blocks_default_to_26_and_skip_claimed_ones() {
    let subnet: ipnet::IpNet = "10.77.0.0/24".parse().unwrap();
    assert_eq!(overlay::block_prefix(subnet, None), 26);
    assert_eq!(overlay::block_prefix("10.77.0.0/28".parse().unwrap(), None), 30);
    assert_eq!(overlay::block_prefix(subnet, Some(8)), 24, "never wider than the subnet");
    let claimed: Vec<ipnet::IpNet> = vec!["10.77.0.0/26".parse().unwrap(), "10.77.0.128/25".parse().unwrap()];
    assert_eq!(overlay::free_block(subnet, 26, &claimed), Some("10.77.0.64/26".parse().unwrap()));
    assert_eq!(overlay::free_block(subnet, 26, &[subnet]), None);
}

#[test]
fn the_name_table_holds_every_name_its_reverse_and_who_asks() {
    let mut web = attachment("web", "n", "web-ns");
    web.spec.hostname = Some("WWW".into());
    web.spec.aliases = vec!["front".into()];
    web.spec.dns = Some(crate::api::DnsConfig { nameservers: vec!["10.9.9.9".into()], ..Default::default() });
    let db = attachment("db", "n", "db-ns");
    let also = attachment("web-other", "m", "web-ns");
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.1.0.0/24"), network("m", "10.2.0.0/24")]),
        attachments: arcs(vec![web, db, also]),
        ..Default::default()
    };
    let p = plan(&objects, &NodeFacts { embedded_dns: true, ..facts() }, &Allocations::default());
    let names = &p.desired.names;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let on_n = &names.records["n"];
    for name in ["web", "web-ns", "www", "front"] {
        assert_eq!(on_n[name], [ip("10.1.0.2")], "{name}");
    }
    assert_eq!(on_n["db"], [ip("10.1.0.3")]);
    assert_eq!(names.records["m"]["web-other"], [ip("10.2.0.2")]);
    assert_eq!(names.reverse["n"][&ip("10.1.0.2")], "web");
    assert_eq!(names.reverse["m"][&ip("10.2.0.2")], "web-other");
    // Both of web-ns's addresses ask with its two networks and its own upstream.
    let client = &names.clients[&ip("10.2.0.2")];
    assert_eq!(client.networks, ["n", "m"]);
    assert_eq!(client.upstreams, [ip("10.9.9.9")]);
    assert_eq!(names.clients[&ip("10.1.0.2")], *client);
    assert!(names.clients[&ip("10.1.0.3")].upstreams.is_empty());
    assert_eq!(names.listen, BTreeMap::from([(ip("10.1.0.1"), "n".to_string()), (ip("10.2.0.1"), "m".to_string())]));
}

#[test]
fn kubernetes_overlay_routes_and_never_hands_out_another_nodes_address_outside_its_blocks() {
    let objects = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n1"), on_node(attachment("c2", "ov", "c2"), "n1")]),
        ..Default::default()
    };
    let mut node = facts_for("n1");
    let n1 = overlay::NodeRoutes { blocks: vec!["10.77.0.64/31".parse().unwrap(), "10.77.0.128/30".parse().unwrap()], outside: Vec::new() };
    // n2's summary: a static address of its own inside n1's first block.
    let n2 = overlay::NodeRoutes { blocks: vec!["10.77.0.0/26".parse().unwrap()], outside: vec!["10.77.0.65".parse().unwrap()] };
    node.overlay_blocks.insert("ov".into(), [("n1".to_string(), n1), ("n2".to_string(), n2)].into());
    let p = plan(&objects, &node, &Allocations::default());
    let ip = |k: &str| p.allocations.endpoints[k].ipv4.map(|ip| ip.to_string());
    assert_eq!(ip("default/c1").as_deref(), Some("10.77.0.64"));
    assert_eq!(ip("default/c2").as_deref(), Some("10.77.0.128"), "10.77.0.65 is n2's");
    assert!(!p.allocations.endpoints.keys().any(|k| k.as_str().contains("10.77.0.65")), "the reservation is no allocation");
    let routes = &p.desired.vxlans[0].peers.iter().find(|peer| peer.node == "n2").unwrap().routes;
    assert_eq!(routes, &["10.77.0.0/26".parse::<ipnet::IpNet>().unwrap(), "10.77.0.65/32".parse().unwrap()]);
    assert_eq!(p.desired.vxlans[0].local_routes, Vec::<ipnet::IpNet>::new());
}

/// What a crash leaves when it comes before a write that only forgets
/// lands (the reconciler waits for such writes after the status): entries
/// of objects that are gone. They hold nothing.
#[test]
fn held_entries_of_objects_that_are_gone_are_dropped_and_reserve_nothing() {
    let objects = ObjectSet {
        networks: arcs(vec![network("n", "10.9.0.0/24")]),
        attachments: arcs(vec![attachment("b", "n", "b")]),
        ..Default::default()
    };
    let mut held = Allocations::default();
    let gone =
        HeldEndpoint { network: "n".into(), ipv4: Some("10.9.0.2".parse().unwrap()), interface: Some("eth0".into()), ..Default::default() };
    held.endpoints.insert("default/a".into(), gone);
    held.ports.insert("default/pa|tcp|80|0.0.0.0".parse().unwrap(), 32768);
    let p = plan(&objects, &facts(), &held);
    assert_eq!(ok_att(&p, "default/b").ipv4, Some("10.9.0.2/24".parse().unwrap()), "the address of what is gone is free");
    assert!(!p.allocations.endpoints.contains_key("default/a") && p.allocations.ports.is_empty());
}
