//! Overlay networks: one subnet across nodes, VXLAN between them, routed
//! per node.
//!
//! Each node hands out dynamic addresses from its own address blocks:
//! claimed in the Network's status in Kubernetes mode, derived from the
//! position in the peers list in standalone mode. Every agent computes the
//! same thing from the same objects, with no central allocator: in
//! standalone mode every agent computes every attachment's address (held
//! addresses kept, statics next, then lowest-free of its node's block in
//! creation order), and in Kubernetes mode other nodes' addresses are read
//! from each Attachment's status. A node reaches another node's blocks
//! through one route, one neighbour and one FDB entry for that node
//! (flannel's VXLAN scheme); only addresses outside their node's blocks
//! (static or held ones) cost a host route each. Nothing is flooded or
//! learned.
//!
//! IPv6 follows the IPv4 blocks: the node holding the k-th IPv4 block
//! holds the k-th IPv6 block (`mirror_block`), so nothing more is claimed
//! or exchanged. Linux routes IPv6 only via an IPv6 next hop, so each
//! remote node holding IPv6 costs one more neighbour entry (its device's
//! link-local address -> its MAC, the same FDB entry). There is no proxy
//! NDP for a range, so containers route instead of the bridge answering
//! for them (`container_routes`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use super::attachment::{self, SandboxChoice};
use super::desired::{EndpointRoute, VxlanLink, VxlanPeer};
use super::network::{ResolvedNetwork, Subnet, VXLAN_OVERHEAD};
use super::outcome::{reason, Failure};
use super::{ipam, is_local, AddressPair, Allocations, HeldEndpoint, Member, NodeFacts, Plan};
use crate::api::{Attachment, Driver};
use crate::naming;
use crate::objects::{ObjectName, ObjectSet};

/// Addresses of every attachment (any node) on overlay networks.
pub type OverlayAddresses = BTreeMap<ObjectName, (Option<IpAddr>, Option<IpAddr>)>;

/// One overlay network's address blocks, and addresses outside them, by
/// node.
pub type NodeBlocks = BTreeMap<String, NodeRoutes>;

/// What one node of an overlay is routed for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeRoutes {
    /// The blocks it hands out dynamic addresses from: IPv4 as claimed or
    /// derived; IPv6 ones mirrored from them where the plan needs both.
    pub blocks: Vec<IpNet>,
    /// Kubernetes mode: its attachments' addresses outside its blocks (its
    /// summary in the Network's status), as attachments of other nodes are
    /// not watched. Standalone mode finds them among the attachments.
    pub outside: Vec<IpAddr>,
}

pub fn vxlan_name(vni: u32) -> String {
    format!("nlx{vni}")
}

/// Checks VNI collisions and this node's membership, and derives the MTU
/// from the underlay link that holds the local VTEP address.
pub fn prepare(networks: &mut BTreeMap<String, Result<ResolvedNetwork, Failure>>, node: &NodeFacts, out: &mut Plan) {
    let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
    let names: Vec<String> = networks.keys().cloned().collect();
    for name in names {
        let Some(Ok(net)) = networks.get(&name) else { continue };
        let Some(ov) = net.overlay.clone() else { continue };
        let failure = if let Some(other) = vnis.get(&ov.vni) {
            Some(Failure::new(reason::INVALID_SPEC, format!("overlay.vni {} is already used by network {other}", ov.vni)))
        } else if !ov.peers.iter().any(|(n, _)| n == &node.node_name) {
            Some(Failure::new(reason::NOT_A_PEER, format!("node {} is not listed in overlay.peers", node.node_name)))
        } else {
            None
        };
        if let Some(f) = failure {
            out.networks.insert(name.clone(), Err(f.clone()));
            networks.insert(name, Err(f));
            continue;
        }
        vnis.insert(ov.vni, name.clone());
        let local = ov.peers.iter().find(|(n, _)| n == &node.node_name).map(|(_, ip)| *ip).expect("checked above");
        if let Some(Ok(net)) = networks.get_mut(&name) {
            if !net.mtu_explicit {
                let underlay = node.link_mtu_by_address.get(&local).copied().unwrap_or(1500);
                net.mtu = underlay.saturating_sub(VXLAN_OVERHEAD).max(68);
            }
        }
    }
}

/// Allocates addresses on every overlay network over all its attachments.
/// Standalone: every agent computes every attachment's address the same
/// way, each node's from its derived block. Kubernetes mode
/// (`node.overlay_blocks`): this node allocates its own attachments from
/// its claimed blocks and takes other nodes' from their status.
pub fn allocate(
    objects: &ObjectSet,
    node: &NodeFacts,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    held: &Allocations,
    out: &mut Plan,
) -> OverlayAddresses {
    let mut addresses = OverlayAddresses::new();
    for (name, net) in networks {
        let Ok(net) = net else { continue };
        if net.driver != Driver::Overlay {
            continue;
        }
        let claimed = node.overlay_blocks.get(name);
        let known = |a: &Attachment| held.endpoints.get(&ObjectName::of(a)).is_some_and(|h| &h.network == name);
        let members: Vec<(ObjectName, &str, attachment::CheckedAttachment)> = objects
            .attachments
            .iter()
            .filter(|a| &a.spec.network == name)
            .filter(|a| claimed.is_none() || is_local(a, &node.node_name) || known(a))
            .filter_map(|a| {
                let owner = a.spec.node_name.as_deref().unwrap_or(&node.node_name);
                Some((ObjectName::of(&**a), owner, attachment::check(a).ok()?))
            })
            .filter(|(_, _, c)| matches!(c.sandbox, SandboxChoice::Namespace(_) | SandboxChoice::Pod(_)))
            .collect();
        let requests: Vec<Member<'_>> = members.iter().map(|(key, _, c)| (key.as_str(), c.ipv4, c.ipv6)).collect();
        let results = match claimed {
            Some(claimed) => {
                let mine = claimed.get(&node.node_name).map(|r| r.blocks.as_slice()).unwrap_or_default();
                let mine_both = with_mirrors(net, mine);
                // Other nodes' addresses inside our blocks are taken: asked
                // for as statics, after ours, their answers dropped.
                let taken: Vec<(String, IpAddr)> = claimed
                    .iter()
                    .filter(|(n, _)| *n != &node.node_name)
                    .flat_map(|(n, r)| {
                        r.outside.iter().filter(|ip| mine_both.iter().any(|b| b.contains(*ip))).map(move |ip| (format!("{n}:{ip}"), *ip))
                    })
                    .collect();
                let mut asked = requests.clone();
                asked.extend(taken.iter().map(|(key, ip)| match ip {
                    IpAddr::V4(_) => (key.as_str(), Some(*ip), None),
                    IpAddr::V6(_) => (key.as_str(), None, Some(*ip)),
                }));
                let mut results = allocate_in_blocks(name, net, &asked, held, mine);
                results.truncate(requests.len());
                results
            }
            None => {
                let owners: Vec<&str> = members.iter().map(|(_, owner, _)| *owner).collect();
                allocate_by_node(name, net, &requests, &owners, held, &derived_blocks(net))
            }
        };
        for ((owner, _, _), result) in requests.iter().zip(results) {
            let Some(result) = result else { continue };
            let owner = ObjectName::from(*owner);
            match result {
                Ok((v4, v6)) => {
                    let h = out
                        .allocations
                        .endpoints
                        .entry(owner.clone())
                        .or_insert_with(|| HeldEndpoint { network: name.clone(), ..Default::default() });
                    h.ipv4 = v4;
                    h.ipv6 = v6;
                    addresses.insert(owner, (v4, v6));
                }
                Err(f) => {
                    out.attachments.entry(owner).or_insert(Err(f));
                }
            }
        }
    }
    addresses
}

/// Standalone mode: each peer's block is the one at its position in the
/// peers list, of the IPv4 range cut into `block_prefix` blocks; peers
/// beyond the last block get none.
pub fn derived_blocks(net: &ResolvedNetwork) -> NodeBlocks {
    let (Some(ov), Some(subnet)) = (&net.overlay, net.subnet_v4()) else { return NodeBlocks::new() };
    let prefix = block_prefix(subnet.range, ov.block_prefix_length);
    let mut blocks = subnet.range.subnets(prefix).into_iter().flatten();
    ov.peers
        .iter()
        .map(|(node, _)| (node.clone(), NodeRoutes { blocks: blocks.next().into_iter().collect(), outside: Vec::new() }))
        .collect()
}

/// Standalone mode: every node's dynamic addresses from its own blocks.
/// One node at a time, each seeing what the earlier ones got (as held) and
/// every static and held address, so nothing is handed out twice and every
/// agent gets the same answer. `owners` is each request's node.
fn allocate_by_node(
    name: &str,
    net: &ResolvedNetwork,
    requests: &[Member<'_>],
    owners: &[&str],
    held: &Allocations,
    blocks: &NodeBlocks,
) -> Vec<Option<Result<AddressPair, Failure>>> {
    let mut held = held.clone();
    let mut out = vec![None; requests.len()];
    let nodes: std::collections::BTreeSet<&str> = owners.iter().copied().collect();
    for node in nodes {
        let is_placed = |i: usize, held: &Allocations| {
            let (key, v4, v6) = requests[i];
            v4.is_some() || v6.is_some() || held.endpoints.get(key).is_some_and(|h| h.network == name)
        };
        let subset: Vec<usize> = (0..requests.len()).filter(|&i| owners[i] == node || is_placed(i, &held)).collect();
        let asked: Vec<Member<'_>> = subset.iter().map(|&i| requests[i]).collect();
        let own = blocks.get(node).map(|r| r.blocks.as_slice()).unwrap_or_default();
        let results = allocate_in_blocks(name, net, &asked, &held, own);
        for (&i, mut result) in subset.iter().zip(results) {
            if owners[i] != node {
                continue;
            }
            match &mut result {
                Some(Ok((v4, v6))) => {
                    let h = held.endpoints.entry(ObjectName::from(requests[i].0)).or_default();
                    (h.network, h.ipv4, h.ipv6) = (name.into(), *v4, *v6);
                }
                Some(Err(f)) if own.is_empty() && f.reason == reason::ADDRESS_BLOCK_PENDING => {
                    *f = Failure::new(
                        reason::POOL_EXHAUSTED,
                        format!(
                            "node {node} has no address block of network {name}: its range holds fewer blocks than overlay.peers lists nodes (overlay.blockPrefixLength sets their size)"
                        ),
                    )
                }
                _ => {}
            }
            out[i] = result;
        }
    }
    out
}

/// Dynamic addresses from this node's blocks only (IPv6 from their
/// mirrors), the first block first; held and static addresses as usual.
fn allocate_in_blocks(
    name: &str,
    net: &ResolvedNetwork,
    requests: &[Member<'_>],
    held: &Allocations,
    blocks: &[IpNet],
) -> Vec<Option<Result<AddressPair, Failure>>> {
    let Some(v4) = net.subnet_v4().map(|s| s.net) else { return super::addresses::allocate_network(name, net, requests, held) };
    // The IPv4 range becomes the block, the IPv6 range its mirror (no
    // block: the network address alone, so nothing dynamic is free).
    let v6 = net.subnet_v6().map(|s| s.net);
    let scoped = |block: Option<IpNet>| {
        let mut n = net.clone();
        for s in n.subnets.iter_mut().filter(|s| s.net == v4 || Some(s.net) == v6) {
            let range = if s.net == v4 { block } else { block.and_then(|b| mirror_block(v4, s.net, b)) };
            s.range = range.unwrap_or(IpNet::from(s.net.network()));
        }
        n
    };
    let blocks: Vec<IpNet> = blocks.iter().filter(|b| b.addr().is_ipv4()).copied().collect();
    if blocks.is_empty() {
        // No block yet: held and static addresses stand, dynamic ones wait.
        let mut out = super::addresses::allocate_network(name, &scoped(None), requests, held);
        for result in out.iter_mut().flatten() {
            if matches!(result, Err(f) if f.reason == reason::POOL_EXHAUSTED) {
                *result = Err(Failure::new(
                    reason::ADDRESS_BLOCK_PENDING,
                    format!("this node has not claimed an address block of network {name} yet (status.addressBlocks)"),
                ));
            }
        }
        return out;
    }
    let mut held = held.clone();
    let mut out = Vec::new();
    for block in blocks {
        out = super::addresses::allocate_network(name, &scoped(Some(block)), requests, &held);
        for ((owner, _, _), result) in requests.iter().zip(&out) {
            if let Some(Ok((v4, v6))) = result {
                let h = held
                    .endpoints
                    .entry(ObjectName::from(*owner))
                    .or_insert_with(|| HeldEndpoint { network: name.into(), ..Default::default() });
                (h.network, h.ipv4, h.ipv6) = (name.into(), *v4, *v6);
            }
        }
        if out.iter().flatten().all(|r| r.is_ok()) {
            break;
        }
    }
    out
}

/// Kubernetes mode: the prefix length of an overlay subnet's node blocks.
pub fn block_prefix(subnet: IpNet, configured: Option<u8>) -> u8 {
    configured.unwrap_or(26.max(subnet.prefix_len() + 2)).clamp(subnet.prefix_len(), subnet.max_prefix_len())
}

/// The lowest block of `subnet` that overlaps no claimed one.
pub fn free_block(subnet: IpNet, prefix: u8, claimed: &[IpNet]) -> Option<IpNet> {
    subnet.subnets(prefix).ok()?.find(|b| !claimed.iter().any(|c| c.contains(&b.network()) || b.contains(&c.network())))
}

/// Addresses a block can hand out (the subnet's reserved ones excluded).
pub fn block_capacity(subnet: &Subnet, block: IpNet) -> u64 {
    ipam::capacity(&Subnet { range: block, ..subnet.clone() })
}

/// The fewest host bits an IPv6 block keeps (16 addresses): a mirrored
/// prefix longer than /124 is refused.
pub const MIN_IPV6_BLOCK_HOST_BITS: u8 = 4;

/// IPv6 blocks mirror the IPv4 ones (see [`mirror_block`]): an overlay
/// with an IPv6 subnet needs an IPv4 one to mirror, and an IPv6 subnet
/// large enough that each mirrored block keeps
/// [`MIN_IPV6_BLOCK_HOST_BITS`] host bits.
pub fn check_ipv6_blocks(subnets: &[Subnet], configured: Option<u8>) -> Result<(), Failure> {
    let Some(v6) = subnets.iter().find(|s| s.net.addr().is_ipv6()) else { return Ok(()) };
    let Some(v4) = subnets.iter().find(|s| s.net.addr().is_ipv4()) else {
        return Err(Failure::invalid(format!(
            "overlay subnet {} needs an IPv4 subnet beside it: an overlay's IPv6 blocks mirror its IPv4 blocks",
            v6.net
        )));
    };
    // Standalone mode cuts the IPv4 range, Kubernetes mode the subnet: the
    // smaller blocks of the two decide.
    let b4 = block_prefix(v4.range, configured).max(block_prefix(v4.net, configured));
    let b6 = v6.net.prefix_len() + (b4 - v4.net.prefix_len());
    let longest = 128 - MIN_IPV6_BLOCK_HOST_BITS;
    if b6 > longest {
        return Err(Failure::invalid(format!(
            "overlay IPv6 subnet {} is too small: each node's IPv6 block mirrors its IPv4 block (/{b4} of {}), a /{b6}, \
             longer than /{longest}; use a shorter IPv6 prefix (e.g. a /64) or a larger overlay.blockPrefixLength span",
            v6.net, v4.net
        )));
    }
    Ok(())
}

/// The IPv6 block that mirrors `block`, an IPv4 block of subnet `v4`: the
/// k-th block of `v4` (prefix B4 in a /P4) gives the k-th block of `v6`
/// (a /P6), of prefix P6 + (B4 - P4). None if it has no mirror.
pub fn mirror_block(v4: IpNet, v6: IpNet, block: IpNet) -> Option<IpNet> {
    let (IpNet::V4(v4), IpNet::V6(v6), IpNet::V4(block)) = (v4, v6, block) else { return None };
    if !v4.contains(&block.network()) {
        return None;
    }
    let prefix = v6.prefix_len() + block.prefix_len().checked_sub(v4.prefix_len())?;
    if prefix > 128 {
        return None;
    }
    let offset = u64::from(u32::from(block.network()) - u32::from(v4.network()));
    let index = u128::from(offset.checked_shr(u32::from(32 - block.prefix_len())).unwrap_or(0));
    let start = u128::from(v6.network()) | index.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
    Ipv6Net::new(Ipv6Addr::from(start), prefix).ok().map(IpNet::V6)
}

/// Every node's blocks of overlay `name`, both families: claimed
/// (Kubernetes mode) or derived, with the IPv6 mirror of each IPv4 block.
pub fn node_blocks(name: &str, net: &ResolvedNetwork, node: &NodeFacts) -> NodeBlocks {
    let mut blocks = node.overlay_blocks.get(name).cloned().unwrap_or_else(|| derived_blocks(net));
    for routes in blocks.values_mut() {
        routes.blocks = with_mirrors(net, &routes.blocks);
    }
    blocks
}

/// This node's blocks of overlay `net`, both families (without copying
/// every other node's: it is asked once per container).
fn own_blocks(net: &ResolvedNetwork, node: &NodeFacts) -> Vec<IpNet> {
    let v4 = match node.overlay_blocks.get(&net.name) {
        Some(claimed) => claimed.get(&node.node_name).map(|r| r.blocks.clone()).unwrap_or_default(),
        None => derived_blocks(net).remove(&node.node_name).map(|r| r.blocks).unwrap_or_default(),
    };
    with_mirrors(net, &v4)
}

/// IPv4 `blocks` of `net`, then the IPv6 mirror of each (if `net` has
/// an IPv6 subnet).
pub fn with_mirrors(net: &ResolvedNetwork, blocks: &[IpNet]) -> Vec<IpNet> {
    let v4: Vec<IpNet> = blocks.iter().filter(|b| b.addr().is_ipv4()).copied().collect();
    let mirrors = match (net.subnet_v4(), net.subnet_v6()) {
        (Some(s4), Some(s6)) => v4.iter().filter_map(|b| mirror_block(s4.net, s6.net, *b)).collect(),
        _ => Vec::new(),
    };
    v4.into_iter().chain(mirrors).collect()
}

/// Below the kernel's own prefix route (metric 256), so it wins.
pub const CONTAINER_ROUTE_METRIC: u32 = 1;

/// The IPv6 routes of a container on overlay `net` at address `ipv6`: the
/// subnet via the gateway, ahead of the kernel's prefix route, so an
/// address on another node goes through this node, which routes it (no
/// proxy NDP answers for a range); the gateway itself on the link (else
/// Linux finds it behind that very route and refuses a default route via
/// it: EHOSTUNREACH); and this node's own IPv6 blocks on the link, more
/// specific, so neighbours on this node are reached directly. The address
/// keeps the subnet's prefix.
pub fn container_routes(net: &ResolvedNetwork, node: &NodeFacts, ipv6: Option<IpAddr>) -> Vec<EndpointRoute> {
    let (Some(ipv6), Some(_)) = (ipv6, &net.overlay) else { return Vec::new() };
    let Some(subnet) = net.subnet_for(ipv6) else { return Vec::new() };
    let mine = own_blocks(net, node).into_iter().filter(|b| b.addr().is_ipv6());
    let on_link = std::iter::once(IpNet::from(subnet.gateway)).chain(mine);
    std::iter::once(EndpointRoute { dst: subnet.net, gateway: Some(subnet.gateway), metric: CONTAINER_ROUTE_METRIC })
        .chain(on_link.map(|dst| EndpointRoute { dst, gateway: None, metric: CONTAINER_ROUTE_METRIC }))
        .collect()
}

/// The link-local address the kernel gives a device of MAC `mac`
/// (modified EUI-64): the IPv6 next hop towards that node's device.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    let word = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
    Ipv6Addr::new(0xfe80, 0, 0, 0, word(a ^ 0x02, b), word(c, 0xff), word(0xfe, d), word(e, f))
}

/// The MAC of `node`'s VXLAN device of `network`: every node derives the
/// same one, so a node's neighbour entry for another needs no exchange.
pub fn device_mac(network: &str, node: &str) -> [u8; 6] {
    naming::mac_from_key(&format!("overlay/{network}/{node}"))
}

/// The VXLAN device of every overlay network realized here, with every
/// other peer's blocks routed to it, and host routes for the addresses
/// that lie outside their node's blocks.
pub fn vxlans(
    objects: &ObjectSet,
    node: &NodeFacts,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    addresses: &OverlayAddresses,
) -> Vec<VxlanLink> {
    let mut out = Vec::new();
    for (name, net) in networks {
        let (Ok(net), true) = (net, net.as_ref().is_ok_and(|n| n.driver == Driver::Overlay)) else { continue };
        let ov = net.overlay.as_ref().expect("overlay network has overlay options");
        let Some(local) = ov.peers.iter().find(|(n, _)| n == &node.node_name).map(|(_, ip)| *ip) else { continue };
        let blocks = node_blocks(name, net, node);
        let in_blocks = |owner: &str, ip: &IpAddr| blocks.get(owner).is_some_and(|r| r.blocks.iter().any(|block| block.contains(ip)));
        let mut peers: Vec<VxlanPeer> = ov
            .peers
            .iter()
            .filter(|(n, _)| n != &node.node_name)
            .map(|(n, vtep)| VxlanPeer {
                node: n.clone(),
                vtep: *vtep,
                mac: device_mac(name, n),
                routes: blocks
                    .get(n)
                    .map(|r| r.blocks.iter().copied().chain(r.outside.iter().map(|ip| IpNet::from(*ip))).collect())
                    .unwrap_or_default(),
                ipv6_next_hop: None,
            })
            .collect();
        let mut local_routes = Vec::new();
        for att in objects.attachments.iter().filter(|a| &a.spec.network == name) {
            let Some((v4, v6)) = addresses.get(&ObjectName::of(&**att)).copied() else { continue };
            for ip in [v4, v6].into_iter().flatten() {
                if is_local(att, &node.node_name) {
                    if peers.iter().any(|p| p.routes.iter().any(|r| r.contains(&ip))) {
                        local_routes.push(IpNet::from(ip));
                    }
                    continue;
                }
                let Some(owner) = att.spec.node_name.as_deref() else { continue };
                let host = IpNet::from(ip);
                if let Some(peer) =
                    peers.iter_mut().find(|p| p.node == owner).filter(|p| !in_blocks(owner, &ip) && !p.routes.contains(&host))
                {
                    peer.routes.push(host);
                }
            }
        }
        for peer in &mut peers {
            peer.ipv6_next_hop = peer.routes.iter().any(|r| r.addr().is_ipv6()).then(|| link_local(peer.mac));
        }
        local_routes.sort();
        local_routes.dedup();
        let own_v6: Vec<IpNet> =
            blocks.get(&node.node_name).map(|r| r.blocks.iter().filter(|b| b.addr().is_ipv6()).copied().collect()).unwrap_or_default();
        let mut proxy_ndp: Vec<IpAddr> = peers
            .iter()
            .flat_map(|p| &p.routes)
            .filter(|r| r.addr().is_ipv6() && r.prefix_len() == 128 && own_v6.iter().any(|b| b.contains(&r.addr())))
            .map(|r| r.addr())
            .collect();
        proxy_ndp.sort();
        proxy_ndp.dedup();
        out.push(VxlanLink {
            name: vxlan_name(ov.vni),
            network: name.clone(),
            vni: ov.vni,
            port: ov.port,
            local,
            mac: device_mac(name, &node.node_name),
            bridge: net.bridge.clone(),
            mtu: net.mtu,
            peers,
            local_routes,
            proxy_ndp,
        });
    }
    out
}
