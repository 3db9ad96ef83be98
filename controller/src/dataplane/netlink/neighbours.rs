//! Neighbour and FDB entries, all of them for overlays: each remote node's
//! FDB entry (its MAC -> its VTEP) and neighbour entry on the VXLAN device,
//! the proxy entries on the network's bridge, and the underlay's entries,
//! read to tell which VTEPs cannot be reached.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::AddressFamily;

use super::{deleted, Netlink, NetlinkError, Result};

/// A neighbour-table entry: an FDB entry (bridge family: MAC -> remote
/// VTEP) or an ARP/ND entry (IP -> MAC), on device `index`.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbour {
    pub index: u32,
    pub mac: Vec<u8>,
    pub ip: Option<IpAddr>,
    pub message: NeighbourMessage,
}

impl Netlink {
    /// Every neighbour and FDB entry on device `index` (both families).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        self.neighbour_dump(&[AddressFamily::Bridge, AddressFamily::Inet, AddressFamily::Inet6], Some(index)).await
    }

    /// Every IPv4 neighbour entry of the namespace, on any device.
    pub async fn ipv4_neighbours(&self) -> Result<Vec<Neighbour>> {
        self.neighbour_dump(&[AddressFamily::Inet], None).await
    }

    /// The IPv6 proxy entries on device `index`.
    pub async fn proxy_neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        self.neighbour_dump_of(&[AddressFamily::Inet6], Some(index), true).await
    }

    async fn neighbour_dump(&self, families: &[AddressFamily], only: Option<u32>) -> Result<Vec<Neighbour>> {
        self.neighbour_dump_of(families, only, false).await
    }

    async fn neighbour_dump_of(&self, families: &[AddressFamily], only: Option<u32>, proxies: bool) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for &family in families {
            let request = self.handle.neighbours().get().set_address_family(family);
            let request = if proxies { request.proxies() } else { request };
            let msgs: Vec<NeighbourMessage> =
                request.execute().try_collect().await.map_err(|e| NetlinkError::from_rtnetlink("list neighbours", e))?;
            for msg in msgs.into_iter().filter(|m| only.is_none_or(|i| m.header.ifindex == i)) {
                let mut n = Neighbour { index: msg.header.ifindex, mac: Vec::new(), ip: None, message: msg.clone() };
                for a in &msg.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(mac) => n.mac = mac.clone(),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => n.ip = Some(IpAddr::V4(*ip)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => n.ip = Some(IpAddr::V6(*ip)),
                        // FDB entries (bridge family) carry the VTEP as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                            n.ip = match bytes.len() {
                                4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                                _ => None,
                            }
                        }
                        _ => {}
                    }
                }
                out.push(n);
            }
        }
        Ok(out)
    }

    /// `bridge fdb replace MAC dev INDEX dst VTEP self permanent`.
    pub async fn add_fdb(&self, index: u32, mac: [u8; 6], vtep: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(vtep)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink(format!("add fdb entry for {} via {vtep}", crate::naming::format_mac(&mac)), e))
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
    pub async fn add_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink(format!("add neighbour {ip}"), e))
    }

    /// `ip -6 neigh add proxy IP dev INDEX`.
    pub async fn add_proxy(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink(format!("add proxy neighbour {ip}"), e))
    }

    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<()> {
        deleted(
            self.handle
                .neighbours()
                .del(n.message.clone())
                .execute()
                .await
                .map_err(|e| NetlinkError::from_rtnetlink("delete neighbour", e)),
        )
    }
}
