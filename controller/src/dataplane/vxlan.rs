//! Overlay networks on this node: VXLAN devices and their static remotes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::kernel::{Change, LinkId, Neighbours};
use super::netlink::{self, Link, LinkChange, NetlinkError};
use super::report::SyncReport;
use super::{is_ours, Dataplane};
use crate::naming::OWNER_ALIAS_PREFIX;
use crate::plan::desired::DesiredState;
use crate::plan::outcome::{reason, Failure};

impl Dataplane {
    /// Ensures each overlay's VXLAN device on its bridge, and its static
    /// remotes: FDB entries (MAC -> VTEP) and proxy-ARP/ND entries (IP -> MAC).
    pub(super) async fn sync_vxlans(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        report: &mut SyncReport,
    ) {
        for vx in &desired.vxlans {
            let result: Result<(), Failure> = async {
                let Some(&bridge) = bridges.get(&vx.bridge) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("bridge {} is not ready", vx.bridge)));
                };
                let kernel = |e: NetlinkError| SyncReport::kernel(&e);
                let IpAddr::V4(local) = vx.local else {
                    return Err(Failure::invalid("only IPv4 VTEP addresses are supported"));
                };
                let want_identity = (vx.vni, vx.port, Some(vx.local));
                let mut link = node_links.iter().find(|l| l.name == vx.name).cloned();
                if let Some(l) = &link {
                    if !is_ours(l) {
                        return Err(Failure::new(reason::INTERFACE_CONFLICT, format!("a link named {} exists on the node and is not netlet's", vx.name)));
                    }
                    if l.kind.as_deref() != Some("vxlan") || l.vxlan != Some(want_identity) {
                        self.node.apply(Change::DeleteLink { index: l.index, name: &vx.name }).await.map_err(kernel)?;
                        link = None;
                    }
                }
                let link = match link {
                    Some(l) => l,
                    None => {
                        let alias = format!("{OWNER_ALIAS_PREFIX}overlay/{}", vx.network);
                        let create = Change::CreateVxlan {
                            name: &vx.name,
                            vni: vx.vni,
                            port: vx.port,
                            local,
                            mtu: vx.mtu,
                            controller: bridge,
                            alias: &alias,
                        };
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
                    controller: (link.controller != Some(bridge)).then_some(bridge),
                    mac: None,
                };
                if !change.is_empty() {
                    self.node.apply(Change::SetLink { index: link.index, name: &vx.name, change }).await.map_err(kernel)?;
                }
                let current = self.node.neighbours(Neighbours::OnDevice(link.index)).await.map_err(kernel)?;
                for n in &current {
                    tracing::debug!(family = ?n.message.header.family, flags = ?n.message.header.flags, state = ?n.message.header.state, mac = ?n.mac, ip = ?n.ip, "vxlan neighbour");
                }
                let own = |n: &&netlink::Neighbour| n.message.header.flags.contains(netlink_packet_route::neighbour::NeighbourFlags::Own);
                let is_fdb = |n: &&netlink::Neighbour| n.message.header.family == netlink_packet_route::AddressFamily::Bridge;
                let have_fdb: Vec<&netlink::Neighbour> = current.iter().filter(is_fdb).filter(own).filter(|n| n.ip.is_some()).collect();
                // Only permanent entries: the kernel keeps its own (multicast, NOARP) ones.
                let have_neigh: Vec<&netlink::Neighbour> = current
                    .iter()
                    .filter(|n| !is_fdb(n) && n.message.header.state == netlink_packet_route::neighbour::NeighbourState::Permanent)
                    .collect();
                let want_fdb: BTreeSet<([u8; 6], IpAddr)> = vx.remotes.iter().map(|r| (r.mac, r.vtep)).collect();
                let want_neigh: BTreeSet<(IpAddr, [u8; 6])> = vx.remotes.iter().flat_map(|r| r.addresses.iter().map(move |ip| (*ip, r.mac))).collect();
                for (mac, vtep) in &want_fdb {
                    if !have_fdb.iter().any(|n| n.mac == mac.as_slice() && n.ip == Some(*vtep)) {
                        self.node.apply(Change::AddFdb { index: link.index, mac: *mac, vtep: *vtep }).await.map_err(kernel)?;
                    }
                }
                for n in have_fdb.iter().filter(|n| !want_fdb.iter().any(|(mac, vtep)| n.mac == mac.as_slice() && n.ip == Some(*vtep))) {
                    self.node.apply(Change::DeleteNeighbour { neighbour: n }).await.map_err(kernel)?;
                }
                for (ip, mac) in &want_neigh {
                    if !have_neigh.iter().any(|n| n.ip == Some(*ip) && n.mac == mac.as_slice()) {
                        self.node.apply(Change::AddNeighbour { index: link.index, ip: *ip, mac: *mac }).await.map_err(kernel)?;
                    }
                }
                for n in have_neigh.iter().filter(|n| !want_neigh.iter().any(|(ip, mac)| n.ip == Some(*ip) && n.mac == mac.as_slice())) {
                    self.node.apply(Change::DeleteNeighbour { neighbour: n }).await.map_err(kernel)?;
                }
                Ok(())
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

    /// A peer whose VTEP the underlay cannot resolve gets no traffic: the
    /// kernel marks its neighbour entry FAILED once encapsulated packets
    /// were sent its way. Read only; nothing is probed or changed.
    pub(super) async fn check_vteps(&mut self, desired: &DesiredState, report: &mut SyncReport) {
        use netlink_packet_route::neighbour::NeighbourState;
        let Ok(neighbours) = self.node.neighbours(Neighbours::Ipv4).await else { return };
        let failed: BTreeSet<IpAddr> = neighbours
            .iter()
            .filter(|n| matches!(n.message.header.state, NeighbourState::Failed | NeighbourState::Incomplete))
            .filter_map(|n| n.ip)
            .collect();
        for vx in &desired.vxlans {
            let vteps: BTreeSet<IpAddr> = vx.remotes.iter().map(|r| r.vtep).filter(|v| failed.contains(v)).collect();
            if !vteps.is_empty() {
                tracing::warn!(network = %vx.network, vteps = ?vteps, "overlay peers unreachable on the underlay");
                report.unreachable_vteps.insert(vx.network.clone(), vteps.into_iter().collect());
            }
        }
    }
}
