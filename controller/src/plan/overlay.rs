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

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::attachment::{self, SandboxChoice};
use super::desired::{VxlanLink, VxlanPeer};
use super::network::{ResolvedNetwork, Subnet, VXLAN_OVERHEAD};
use super::outcome::{reason, Failure};
use super::{ipam, is_local, AddressPair, Allocations, HeldEndpoint, Member, NodeFacts, Plan};
use crate::api::{Attachment, Driver};
use crate::naming;
use crate::objects::{ObjectName, ObjectSet};

/// Addresses of every attachment (any node) on overlay networks.
pub type OverlayAddresses = BTreeMap<ObjectName, (Option<IpAddr>, Option<IpAddr>)>;

/// One overlay network's IPv4 address blocks, and addresses outside them,
/// by node.
pub type NodeBlocks = BTreeMap<String, NodeRoutes>;

/// What one node of an overlay is routed for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeRoutes {
    /// The blocks it hands out dynamic addresses from.
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
                // Other nodes' addresses inside our blocks are taken: asked
                // for as statics, after ours, their answers dropped.
                let taken: Vec<(String, IpAddr)> = claimed
                    .iter()
                    .filter(|(n, _)| *n != &node.node_name)
                    .flat_map(|(n, r)| {
                        r.outside.iter().filter(|ip| mine.iter().any(|b| b.contains(*ip))).map(move |ip| (format!("{n}:{ip}"), *ip))
                    })
                    .collect();
                let mut asked = requests.clone();
                asked.extend(taken.iter().map(|(key, ip)| (key.as_str(), Some(*ip), None)));
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

/// Kubernetes mode: dynamic IPv4 addresses from this node's blocks only,
/// the first block first; held and static addresses as usual.
fn allocate_in_blocks(
    name: &str,
    net: &ResolvedNetwork,
    requests: &[Member<'_>],
    held: &Allocations,
    blocks: &[IpNet],
) -> Vec<Option<Result<AddressPair, Failure>>> {
    let Some(v4) = net.subnet_v4().map(|s| s.net) else { return super::allocate_network(name, net, requests, held) };
    let scoped = |range: IpNet| {
        let mut n = net.clone();
        n.subnets.iter_mut().filter(|s| s.net == v4).for_each(|s| s.range = range);
        n
    };
    if blocks.is_empty() {
        // No block yet: held and static addresses stand, dynamic ones wait.
        let mut out = super::allocate_network(name, &scoped(IpNet::from(v4.network())), requests, held);
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
        out = super::allocate_network(name, &scoped(*block), requests, &held);
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
        let blocks = node.overlay_blocks.get(name).cloned().unwrap_or_else(|| derived_blocks(net));
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
            })
            .collect();
        let mut local_routes = Vec::new();
        for att in objects.attachments.iter().filter(|a| &a.spec.network == name) {
            let Some((Some(ip), _)) = addresses.get(&ObjectName::of(&**att)).copied() else { continue };
            if is_local(att, &node.node_name) {
                if peers.iter().any(|p| p.routes.iter().any(|r| r.contains(&ip))) {
                    local_routes.push(IpNet::from(ip));
                }
                continue;
            }
            let Some(owner) = att.spec.node_name.as_deref() else { continue };
            let host = IpNet::from(ip);
            if let Some(peer) = peers.iter_mut().find(|p| p.node == owner).filter(|p| !in_blocks(owner, &ip) && !p.routes.contains(&host)) {
                peer.routes.push(host);
            }
        }
        local_routes.sort();
        local_routes.dedup();
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
        });
    }
    out
}
