//! Dual-stack overlays: IPv6 blocks mirror the IPv4 ones by index, the
//! refusal rule, the per-node routes and next hops, and the routes a
//! container gets instead of proxy NDP.

use ipnet::IpNet;

use super::desired::EndpointRoute;
use super::outcome::reason;
use super::overlay::{self, CONTAINER_ROUTE_METRIC};
use super::tests::{arcs, attachment, facts_for, on_node, overlay_network};
use super::{plan, Allocations, Plan};
use crate::api::{IpamConfig, Network};
use crate::objects::ObjectSet;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// The three-node overlay of `tests`, with `subnet6` beside its /24.
fn dual_stack(subnet6: &str) -> Network {
    let mut n = overlay_network();
    n.spec.enable_ipv6 = true;
    n.spec.ipam.config.push(IpamConfig { subnet: subnet6.into(), ..Default::default() });
    n
}

fn plans(objects: &ObjectSet) -> Vec<Plan> {
    ["n1", "n2", "n3"].iter().map(|n| plan(objects, &facts_for(n), &Allocations::default())).collect()
}

#[test]
fn the_kth_ipv4_block_gives_the_kth_ipv6_block_with_as_many_block_bits() {
    let (v4, v6) = (net("10.77.0.0/24"), net("fd00:77::/64"));
    assert_eq!(overlay::mirror_block(v4, v6, net("10.77.0.0/26")), Some(net("fd00:77::/66")));
    assert_eq!(overlay::mirror_block(v4, v6, net("10.77.0.64/26")), Some(net("fd00:77:0:0:4000::/66")));
    assert_eq!(overlay::mirror_block(v4, v6, net("10.77.0.192/26")), Some(net("fd00:77:0:0:c000::/66")));
    // A claimed /30 (the 32nd of 64): /64 + 6 bits.
    assert_eq!(overlay::mirror_block(v4, v6, net("10.77.0.128/30")), Some(net("fd00:77:0:0:8000::/70")));
    assert_eq!(overlay::mirror_block(v4, v6, net("10.78.0.0/26")), None, "not a block of the subnet");
    assert_eq!(overlay::mirror_block(v4, net("fd00::/127"), net("10.77.0.0/26")), None, "past /128");
}

#[test]
fn an_ipv6_subnet_too_small_for_the_mirrored_blocks_or_alone_is_refused() {
    // /24 in /26 blocks: two block bits, so a /122 leaves 4 host bits, a /123 three.
    let fine = plan(
        &ObjectSet { networks: arcs(vec![dual_stack("fd00:77::/122")]), ..Default::default() },
        &facts_for("n1"),
        &Allocations::default(),
    );
    assert!(fine.networks["ov"].is_ok(), "{:?}", fine.networks["ov"]);
    let small = plan(
        &ObjectSet { networks: arcs(vec![dual_stack("fd00:77::/123")]), ..Default::default() },
        &facts_for("n1"),
        &Allocations::default(),
    );
    let err = small.networks["ov"].clone().unwrap_err();
    assert_eq!(err.reason, reason::INVALID_SPEC);
    assert!(err.message.contains("fd00:77::/123 is too small") && err.message.contains("a /125"), "{}", err.message);

    let mut alone = dual_stack("fd00:77::/64");
    alone.spec.ipam.config.remove(0);
    let p = plan(&ObjectSet { networks: arcs(vec![alone]), ..Default::default() }, &facts_for("n1"), &Allocations::default());
    assert!(p.networks["ov"].clone().unwrap_err().message.contains("needs an IPv4 subnet beside it"));
}

#[test]
fn every_node_hands_out_ipv6_from_its_mirrored_block_and_routes_the_others_via_their_link_local() {
    let objects = ObjectSet {
        networks: arcs(vec![dual_stack("fd00:77::/64")]),
        attachments: arcs(vec![
            on_node(attachment("c1", "ov", "c1"), "n1"),
            on_node(attachment("c2", "ov", "c2"), "n2"),
            on_node(attachment("c3", "ov", "c3"), "n3"),
        ]),
        ..Default::default()
    };
    let plans = plans(&objects);
    let v6 = |p: &Plan, k: &str| p.allocations.endpoints[k].ipv6;
    for p in &plans {
        assert_eq!(v6(p, "default/c1"), "fd00:77::2".parse().ok(), "the gateway ::1 is reserved");
        assert_eq!(v6(p, "default/c2"), "fd00:77::4000:0:0:0".parse().ok());
        assert_eq!(v6(p, "default/c3"), "fd00:77::8000:0:0:0".parse().ok());
    }
    let n1 = &plans[0];
    let to_n2 = n1.desired.vxlans[0].peers.iter().find(|p| p.node == "n2").unwrap();
    assert_eq!(to_n2.routes, [net("10.77.0.64/26"), net("fd00:77:0:0:4000::/66")], "one route per block and family");
    assert_eq!(to_n2.ipv6_next_hop, Some(overlay::link_local(overlay::device_mac("ov", "n2"))));
    assert!(n1.desired.vxlans[0].local_routes.is_empty());

    // The container keeps the subnet's prefix and routes the subnet via the
    // gateway, its own node's block on the link.
    let ep = &n1.desired.endpoints[0];
    assert_eq!(ep.addresses, [net("10.77.0.2/24"), net("fd00:77::2/64")]);
    let gateway = "fd00:77::1".parse().ok();
    assert_eq!(
        ep.routes,
        [
            EndpointRoute { dst: net("fd00:77::/64"), gateway, metric: CONTAINER_ROUTE_METRIC },
            EndpointRoute { dst: net("fd00:77::1/128"), gateway: None, metric: CONTAINER_ROUTE_METRIC },
            EndpointRoute { dst: net("fd00:77::/66"), gateway: None, metric: CONTAINER_ROUTE_METRIC },
        ]
    );
    assert_eq!(n1.attachments["default/c1"].as_ref().unwrap().ipv6, Some(net("fd00:77::2/64")), "status says what the kernel holds");
}

#[test]
fn an_ipv4_only_overlay_has_no_ipv6_next_hop_and_no_container_routes() {
    let objects = ObjectSet {
        networks: arcs(vec![overlay_network()]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n1")]),
        ..Default::default()
    };
    let p = &plans(&objects)[0];
    assert!(p.desired.vxlans[0].peers.iter().all(|peer| peer.ipv6_next_hop.is_none()));
    assert!(p.desired.endpoints[0].routes.is_empty());
}

#[test]
fn a_static_ipv6_address_outside_its_nodes_block_costs_one_host_route_each_side() {
    let mut c2 = on_node(attachment("c2", "ov", "c2"), "n2");
    c2.spec.ipv6_address = Some("fd00:77::2".into()); // inside n1's IPv6 block
    let objects = ObjectSet {
        networks: arcs(vec![dual_stack("fd00:77::/64")]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n1"), c2]),
        ..Default::default()
    };
    let plans = plans(&objects);
    let host = net("fd00:77::2/128");
    for p in &plans {
        assert_eq!(p.allocations.endpoints["default/c1"].ipv6, "fd00:77::3".parse().ok(), "n2's static is never handed out");
    }
    let n2_on = |p: &Plan| p.desired.vxlans[0].peers.iter().find(|peer| peer.node == "n2").unwrap().clone();
    assert_eq!(n2_on(&plans[0]).routes, [net("10.77.0.64/26"), net("fd00:77:0:0:4000::/66"), host]);
    assert_eq!(n2_on(&plans[2]).routes.last(), Some(&host));
    assert_eq!(plans[1].desired.vxlans[0].local_routes, [host], "n2 keeps it from the route towards n1");
    // n1's containers take it for on-link (their block): n1's bridge answers for it.
    assert_eq!(plans[0].desired.vxlans[0].proxy_ndp, [host.addr()]);
    assert!(plans[1].desired.vxlans[0].proxy_ndp.is_empty() && plans[2].desired.vxlans[0].proxy_ndp.is_empty());
    // Its container reaches the rest of the subnet, its own node's block included, via the gateway and its block.
    let ep = &plans[1].desired.endpoints[0];
    assert_eq!(
        ep.routes.iter().map(|r| r.dst).collect::<Vec<_>>(),
        [net("fd00:77::/64"), net("fd00:77::1/128"), net("fd00:77:0:0:4000::/66")]
    );
}

#[test]
fn kubernetes_mode_mirrors_the_claimed_blocks_and_waits_for_one_for_a_dynamic_ipv6_address() {
    let mut c2 = on_node(attachment("c2", "ov", "c2"), "n1");
    c2.spec.ipv4_address = Some("10.77.0.70".into());
    let objects = ObjectSet {
        networks: arcs(vec![dual_stack("fd00:77::/64")]),
        attachments: arcs(vec![on_node(attachment("c1", "ov", "c1"), "n1"), c2]),
        ..Default::default()
    };
    let mut node = facts_for("n1");
    let claims = |blocks: Vec<IpNet>| overlay::NodeRoutes { blocks, outside: Vec::new() };
    node.overlay_blocks.insert(
        "ov".into(),
        [("n1".to_string(), claims(vec![net("10.77.0.128/30")])), ("n2".to_string(), claims(vec![net("10.77.0.0/26")]))].into(),
    );
    let p = plan(&objects, &node, &Allocations::default());
    let v6 = |p: &Plan, k: &str| p.allocations.endpoints[k].ipv6;
    assert_eq!(v6(&p, "default/c1"), "fd00:77::8000:0:0:0".parse().ok());
    assert_eq!(v6(&p, "default/c2"), "fd00:77::8000:0:0:1".parse().ok(), "a static IPv4 address, a dynamic IPv6 one");
    let n2 = p.desired.vxlans[0].peers.iter().find(|peer| peer.node == "n2").unwrap();
    assert_eq!(n2.routes, [net("10.77.0.0/26"), net("fd00:77::/66")]);

    // n2's static IPv6 address inside n1's mirrored block is never handed out.
    let mut with_outside = node.clone();
    let n2 = overlay::NodeRoutes { blocks: vec![net("10.77.0.0/26")], outside: vec!["fd00:77::8000:0:0:0".parse().unwrap()] };
    with_outside.overlay_blocks.get_mut("ov").unwrap().insert("n2".into(), n2);
    let p = plan(&objects, &with_outside, &Allocations::default());
    assert_eq!(v6(&p, "default/c1"), "fd00:77::8000:0:0:1".parse().ok());
    assert_eq!(v6(&p, "default/c2"), "fd00:77::8000:0:0:2".parse().ok());
    assert!(p.desired.vxlans[0].proxy_ndp.contains(&"fd00:77::8000:0:0:0".parse().unwrap()), "and answered for here");

    // No block yet: the IPv6 address waits too.
    node.overlay_blocks.insert("ov".into(), Default::default());
    let p = plan(&objects, &node, &Allocations::default());
    assert_eq!(p.attachments["default/c2"].clone().unwrap_err().reason, reason::ADDRESS_BLOCK_PENDING);
}

#[test]
fn a_devices_link_local_address_is_its_modified_eui64() {
    assert_eq!(overlay::link_local([0x02, 0, 0, 0, 0, 0x0b]).to_string(), "fe80::ff:fe00:b");
    assert_eq!(overlay::link_local([0xb2, 0x8c, 0x01, 0x63, 0x18, 0xdc]).to_string(), "fe80::b08c:1ff:fe63:18dc");
}
