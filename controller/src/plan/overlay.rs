//! Overlay networks: one L2 segment across nodes, VXLAN between them.
//!
//! Every agent computes the same thing from the same objects, with no
//! central allocator: addresses are a function of the network's
//! attachments on *all* nodes (held addresses kept, statics next, then
//! lowest-free in creation order). What is "held" is the same everywhere:
//! every agent persists the allocation of every attachment of the overlay,
//! not only its own, and in Kubernetes mode it is read back from each
//! Attachment's status, which all agents see. Remote endpoints are
//! programmed statically (FDB: MAC -> VTEP; neighbour: IP -> MAC, answered
//! by the VXLAN device's ARP proxy), so nothing is flooded or learned.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::attachment::{self, SandboxChoice};
use super::desired::{VxlanLink, VxlanRemote};
use super::network::{ResolvedNetwork, Subnet, VXLAN_OVERHEAD};
use super::outcome::{reason, Failure};
use super::{ipam, is_local, AddressPair, Allocations, HeldEndpoint, Member, NodeFacts, Plan};
use crate::api::{Attachment, Driver};
use crate::naming;
use crate::objects::{ObjectName, ObjectSet};

/// Addresses of every attachment (any node) on overlay networks.
pub type OverlayAddresses = BTreeMap<ObjectName, (Option<IpAddr>, Option<IpAddr>)>;

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
/// way. Kubernetes mode (`node.overlay_blocks`): this node allocates its own
/// attachments from its blocks and takes other nodes' from their status.
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
        let blocks = node.overlay_blocks.get(name);
        let known = |a: &Attachment| held.endpoints.get(&ObjectName::of(a)).is_some_and(|h| &h.network == name);
        let members: Vec<(ObjectName, attachment::CheckedAttachment)> = objects
            .attachments
            .iter()
            .filter(|a| &a.spec.network == name)
            .filter(|a| blocks.is_none() || is_local(a, &node.node_name) || known(a))
            .filter_map(|a| Some((ObjectName::of(&**a), attachment::check(a).ok()?)))
            .filter(|(_, c)| matches!(c.sandbox, SandboxChoice::Namespace(_)))
            .collect();
        let requests: Vec<Member<'_>> = members.iter().map(|(key, c)| (key.as_str(), c.ipv4, c.ipv6)).collect();
        let results = match blocks {
            None => super::allocate_network(name, net, &requests, held),
            Some(blocks) => allocate_in_blocks(name, net, &requests, held, blocks),
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

/// The VXLAN device of every overlay network realized here, with every
/// attachment on *other* nodes as a static remote.
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
        let mut remotes = Vec::new();
        for att in objects.attachments.iter().filter(|a| &a.spec.network == name && !is_local(a, &node.node_name)) {
            let Some(remote_node) = att.spec.node_name.as_deref() else { continue };
            let Some(vtep) = ov.peers.iter().find(|(n, _)| n == remote_node).map(|(_, ip)| *ip) else { continue };
            let key = ObjectName::of(&**att);
            let Some((v4, v6)) = addresses.get(&key).copied() else { continue };
            let mac = match att.spec.mac_address.as_deref().map(naming::parse_mac) {
                Some(Ok(mac)) => mac,
                Some(Err(_)) => continue,
                None => match v4 {
                    Some(IpAddr::V4(ip)) => naming::mac_from_ipv4(ip),
                    _ => naming::mac_from_key(key.as_str()),
                },
            };
            remotes.push(VxlanRemote { owner: key, mac, vtep, addresses: v4.into_iter().chain(v6).collect() });
        }
        remotes.sort_by(|a, b| a.owner.cmp(&b.owner));
        out.push(VxlanLink {
            name: vxlan_name(ov.vni),
            network: name.clone(),
            vni: ov.vni,
            port: ov.port,
            local,
            bridge: net.bridge.clone(),
            mtu: net.mtu,
            remotes,
        });
    }
    out
}
