//! Overlay networks on this node, routed per node: a VXLAN device (on no
//! bridge), and for each other node one FDB entry (its device's MAC -> its
//! VTEP), one neighbour entry (its VTEP address, as the next hop -> that
//! MAC) and a route per block it holds (see `plan::desired::VxlanLink`).
//! IPv6 blocks go via that node's device's link-local address instead, one
//! more neighbour entry for that MAC: Linux refuses an IPv4 next hop
//! (RTA_VIA, or an IPv4 nexthop object) for an IPv6 route.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::AddressFamily;

use super::kernel::{Change, LinkId, Neighbours};
use super::netlink::{self, Link, LinkChange, NetlinkError};
use super::report::SyncReport;
use super::{is_ours, Dataplane};
use crate::naming::OWNER_ALIAS_PREFIX;
use crate::plan::desired::{DesiredState, VxlanLink};
use crate::plan::outcome::{reason, Failure};

impl Dataplane {
    /// Ensures each overlay's VXLAN device, its per-node entries and
    /// routes, and proxy ARP on its bridge (containers ARP for addresses
    /// on other nodes; the node answers and routes them).
    pub(super) async fn sync_vxlans(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        report: &mut SyncReport,
    ) {
        // Read once for every overlay: our routes, told apart by device.
        let mut routes: Option<Vec<netlink::Route>> = None;
        for vx in &desired.vxlans {
            let result: Result<(), Failure> = async {
                let Some(&bridge) = bridges.get(&vx.bridge) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("bridge {} is not ready", vx.bridge)));
                };
                let kernel = |e: NetlinkError| SyncReport::kernel(&e);
                let IpAddr::V4(local) = vx.local else {
                    return Err(Failure::invalid("only IPv4 VTEP addresses are supported"));
                };
                let link = self.ensure_vxlan_device(vx, local, node_links).await?;
                for (key, value) in
                    [(format!("net/ipv4/conf/{}/proxy_arp", vx.bridge), "1"), (format!("net/ipv4/neigh/{}/proxy_delay", vx.bridge), "0")]
                {
                    self.node_sysctl(&key, value).map_err(|e| Failure::new(reason::KERNEL_ERROR, format!("{key}: {e}")))?;
                }
                self.sync_vxlan_entries(vx, link.index).await?;
                let have = match &routes {
                    Some(r) => r,
                    None => routes.insert(self.node.owned_routes().await.map_err(kernel)?),
                };
                let want = wanted_routes(vx, link.index, bridge);
                let mine = |r: &&netlink::Route| r.oif == Some(link.index) || r.oif == Some(bridge);
                let wanted =
                    |r: &netlink::Route| want.iter().any(|(dst, index, gw)| r.dst == *dst && r.oif == Some(*index) && r.gateway == *gw);
                let stale: Vec<netlink::Route> = have.iter().filter(mine).filter(|r| !wanted(r)).cloned().collect();
                for (dst, index, gateway) in &want {
                    let present = have.iter().any(|r| r.dst == *dst && r.oif == Some(*index) && r.gateway == *gateway);
                    if !present {
                        let change = Change::ReplaceRoute { dst: *dst, index: *index, gateway: *gateway, metric: None };
                        self.node.apply(change).await.map_err(kernel)?;
                    }
                }
                for route in &stale {
                    self.node.apply(Change::DeleteRoute { route }).await.map_err(kernel)?;
                }
                self.sync_proxies(vx, bridge).await
            }
            .await;
            if let Err(f) = result {
                tracing::warn!(network = %vx.network, vxlan = %vx.name, error = %f, "overlay not ready");
                report.network_errors.insert(vx.network.clone(), f);
            }
        }
        if !desired.vxlans.is_empty() {
            self.check_vteps(desired, report).await;
        }
    }

    /// The device as `vx` wants it: made again when its identity changed
    /// (VNI, port, local address) or it is a bridge port (an older agent's
    /// layout), else adjusted in place (up, MTU, MAC).
    async fn ensure_vxlan_device(&mut self, vx: &VxlanLink, local: std::net::Ipv4Addr, node_links: &[Link]) -> Result<Link, Failure> {
        let kernel = |e: NetlinkError| SyncReport::kernel(&e);
        let want_identity = (vx.vni, vx.port, Some(vx.local));
        let mut link = node_links.iter().find(|l| l.name == vx.name).cloned();
        if let Some(l) = &link {
            if !is_ours(l) {
                return Err(Failure::new(
                    reason::INTERFACE_CONFLICT,
                    format!("a link named {} exists on the node and is not netlet's", vx.name),
                ));
            }
            if l.kind.as_deref() != Some("vxlan") || l.vxlan != Some(want_identity) || l.controller.is_some() {
                self.node.apply(Change::DeleteLink { index: l.index, name: &vx.name }).await.map_err(kernel)?;
                link = None;
            }
        }
        let link = match link {
            Some(l) => l,
            None => {
                let alias = format!("{OWNER_ALIAS_PREFIX}overlay/{}", vx.network);
                let create =
                    Change::CreateVxlan { name: &vx.name, vni: vx.vni, port: vx.port, local, mtu: vx.mtu, mac: vx.mac, alias: &alias };
                self.node.apply(create).await.map_err(kernel)?;
                self.node
                    .link(LinkId::Name(&vx.name))
                    .await
                    .map_err(kernel)?
                    .ok_or_else(|| Failure::new(reason::KERNEL_ERROR, format!("{} vanished after creation", vx.name)))?
            }
        };
        let change = LinkChange {
            up: !link.up,
            mtu: (link.mtu != vx.mtu).then_some(vx.mtu),
            mac: (link.mac != vx.mac).then_some(vx.mac),
            controller: None,
        };
        if !change.is_empty() {
            self.node.apply(Change::SetLink { index: link.index, name: &vx.name, change }).await.map_err(kernel)?;
        }
        Ok(link)
    }

    /// One FDB and one neighbour entry per other node that holds anything
    /// (and a second neighbour entry, its IPv6 next hop, if it holds IPv6):
    /// added where missing, ours that nobody wants removed.
    async fn sync_vxlan_entries(&mut self, vx: &VxlanLink, index: u32) -> Result<(), Failure> {
        let kernel = |e: NetlinkError| SyncReport::kernel(&e);
        let current = self.node.neighbours(Neighbours::OnDevice(index)).await.map_err(kernel)?;
        let is_fdb = |n: &&netlink::Neighbour| n.message.header.family == AddressFamily::Bridge;
        let own = |n: &&netlink::Neighbour| n.message.header.flags.contains(NeighbourFlags::Own);
        let have_fdb: Vec<&netlink::Neighbour> = current.iter().filter(is_fdb).filter(own).filter(|n| n.ip.is_some()).collect();
        // Only permanent entries: the kernel keeps its own (multicast, NOARP) ones.
        let have_neigh: Vec<&netlink::Neighbour> =
            current.iter().filter(|n| !is_fdb(n) && n.message.header.state == NeighbourState::Permanent).collect();
        let peers = vx.peers.iter().filter(|p| !p.routes.is_empty());
        let want_fdb: BTreeSet<([u8; 6], IpAddr)> = peers.clone().map(|p| (p.mac, p.vtep)).collect();
        let want_neigh: BTreeSet<(IpAddr, [u8; 6])> =
            peers.flat_map(|p| std::iter::once(p.vtep).chain(p.ipv6_next_hop.map(IpAddr::V6)).map(|ip| (ip, p.mac))).collect();
        for (mac, vtep) in &want_fdb {
            if !have_fdb.iter().any(|n| n.mac == mac.as_slice() && n.ip == Some(*vtep)) {
                self.node.apply(Change::AddFdb { index, mac: *mac, vtep: *vtep }).await.map_err(kernel)?;
            }
        }
        for n in have_fdb.iter().filter(|n| !want_fdb.iter().any(|(mac, vtep)| n.mac == mac.as_slice() && n.ip == Some(*vtep))) {
            self.node.apply(Change::DeleteNeighbour { neighbour: n }).await.map_err(kernel)?;
        }
        for (ip, mac) in &want_neigh {
            if !have_neigh.iter().any(|n| n.ip == Some(*ip) && n.mac == mac.as_slice()) {
                self.node.apply(Change::AddNeighbour { index, ip: *ip, mac: *mac }).await.map_err(kernel)?;
            }
        }
        for n in have_neigh.iter().filter(|n| !want_neigh.iter().any(|(ip, mac)| n.ip == Some(*ip) && n.mac == mac.as_slice())) {
            self.node.apply(Change::DeleteNeighbour { neighbour: n }).await.map_err(kernel)?;
        }
        Ok(())
    }

    /// Proxy NDP entries on the bridge for the other nodes' IPv6 addresses
    /// inside this node's blocks (proxy_ndp on, answered at once), and none
    /// of netlet's that nobody wants.
    async fn sync_proxies(&mut self, vx: &VxlanLink, bridge: u32) -> Result<(), Failure> {
        let kernel = |e: NetlinkError| SyncReport::kernel(&e);
        if !vx.proxy_ndp.is_empty() {
            for (key, value) in
                [(format!("net/ipv6/conf/{}/proxy_ndp", vx.bridge), "1"), (format!("net/ipv6/neigh/{}/proxy_delay", vx.bridge), "0")]
            {
                self.node_sysctl(&key, value).map_err(|e| Failure::new(reason::KERNEL_ERROR, format!("{key}: {e}")))?;
            }
        }
        // The bridge is netlet's: every proxy entry on it is too.
        let have = self.node.neighbours(Neighbours::Proxies(bridge)).await.map_err(kernel)?;
        for ip in vx.proxy_ndp.iter().filter(|ip| !have.iter().any(|n| n.ip == Some(**ip))) {
            self.node.apply(Change::AddProxy { index: bridge, ip: *ip }).await.map_err(kernel)?;
        }
        for n in have.iter().filter(|n| !n.ip.is_some_and(|ip| vx.proxy_ndp.contains(&ip))) {
            self.node.apply(Change::DeleteNeighbour { neighbour: n }).await.map_err(kernel)?;
        }
        Ok(())
    }

    /// A peer whose VTEP the underlay cannot resolve gets no traffic: the
    /// kernel marks its neighbour entry FAILED once encapsulated packets
    /// were sent its way. Read only; nothing is probed or changed.
    pub(super) async fn check_vteps(&mut self, desired: &DesiredState, report: &mut SyncReport) {
        let Ok(neighbours) = self.node.neighbours(Neighbours::Ipv4).await else { return };
        let failed: BTreeSet<IpAddr> = neighbours
            .iter()
            .filter(|n| matches!(n.message.header.state, NeighbourState::Failed | NeighbourState::Incomplete))
            .filter_map(|n| n.ip)
            .collect();
        for vx in &desired.vxlans {
            let vteps: BTreeSet<IpAddr> = vx.peers.iter().map(|p| p.vtep).filter(|v| failed.contains(v)).collect();
            if !vteps.is_empty() {
                tracing::warn!(network = %vx.network, vteps = ?vteps, "overlay peers unreachable on the underlay");
                report.unreachable_vteps.insert(vx.network.clone(), vteps.into_iter().collect());
            }
        }
    }
}

/// (destination, device, next hop) of every route `vx` needs: each other
/// node's blocks and host routes on the VXLAN device, via its VTEP address
/// (IPv4) or its IPv6 next hop, and host routes on the bridge for local
/// addresses inside their blocks.
fn wanted_routes(vx: &VxlanLink, device: u32, bridge: u32) -> Vec<(IpNet, u32, Option<IpAddr>)> {
    let mut out = Vec::new();
    for peer in &vx.peers {
        let IpAddr::V4(vtep) = peer.vtep else { continue };
        for dst in &peer.routes {
            let gateway = match dst {
                IpNet::V4(_) => Some(IpAddr::V4(vtep)),
                IpNet::V6(_) => peer.ipv6_next_hop.map(IpAddr::V6),
            };
            out.extend(gateway.map(|gw| (dst.trunc(), device, Some(gw))));
        }
    }
    out.extend(vx.local_routes.iter().map(|dst| (dst.trunc(), bridge, None)));
    out.sort();
    out.dedup_by_key(|(dst, _, _)| *dst);
    out
}
