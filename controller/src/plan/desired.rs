//! The desired state of one node: what the dataplane must make true.
//!
//! Plain data, ordered deterministically, so that two plans of the same
//! inputs compare equal and the dataplane can diff against the kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::attachment::SandboxRef;
use crate::api::{MacvlanMode, Protocol};
use crate::objects::ObjectName;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    pub bridges: Vec<BridgeLink>,
    /// Every sandbox an endpoint or a null attachment lives in.
    pub sandboxes: Vec<SandboxSpec>,
    pub endpoints: Vec<Endpoint>,
    /// VXLAN devices of overlay networks, with their static remotes.
    pub vxlans: Vec<VxlanLink>,
    /// /etc/netns/<name>/{hosts,resolv.conf} of managed sandboxes, sorted by
    /// name (shared with the dataplane, which keeps the last one written).
    pub sandbox_files: std::sync::Arc<Vec<super::names::SandboxFiles>>,
    /// What the embedded DNS server answers (shared with it, not copied).
    pub names: std::sync::Arc<super::names::NameTable>,
    pub firewall: FirewallPlan,
    /// net.ipv4.ip_forward / net.ipv6.conf.all.forwarding in the node namespace.
    pub ipv4_forwarding: bool,
    pub ipv6_forwarding: bool,
}

/// A bridge device in the node namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeLink {
    pub name: String,
    pub network: String,
    pub mtu: u32,
    /// Set explicitly: a bridge left to itself takes the lowest MAC of its
    /// ports, so it changes as containers come and go, and every container's
    /// ARP entry for the gateway goes stale (traffic to the gateway, DNS
    /// included, stalls until it expires).
    pub mac: [u8; 6],
    /// Gateway addresses with the subnet prefix.
    pub addresses: Vec<IpNet>,
}

/// The VXLAN device of one overlay network on this node, routed per node
/// (flannel's VXLAN scheme): the device is no bridge port; each remote
/// node is one neighbour (its VTEP address as the next hop -> its device's
/// MAC) and one FDB entry (that MAC -> its VTEP), and its address blocks
/// are routes via that next hop. The network's bridge answers ARP for
/// them (proxy ARP), so containers still see one subnet.
#[derive(Clone, Debug, PartialEq)]
pub struct VxlanLink {
    pub name: String,
    pub network: String,
    pub vni: u32,
    pub port: u16,
    /// This node's VTEP address.
    pub local: IpAddr,
    /// This node's device MAC: the other nodes' neighbour entries name it.
    pub mac: [u8; 6],
    pub bridge: String,
    pub mtu: u32,
    /// Every other peer, with what is routed to it (possibly nothing yet).
    pub peers: Vec<VxlanPeer>,
    /// Local addresses that lie in another node's block: host routes on the
    /// bridge, so the broader route towards that node does not take them.
    pub local_routes: Vec<IpNet>,
    /// Other nodes' IPv6 addresses inside this node's IPv6 blocks: this
    /// node's containers take them for on-link (their block's route), so
    /// the bridge answers for them (proxy NDP), as proxy ARP does for IPv4.
    pub proxy_ndp: Vec<IpAddr>,
}

/// Another node of an overlay: where its frames go, and what lives there.
#[derive(Clone, Debug, PartialEq)]
pub struct VxlanPeer {
    pub node: String,
    pub vtep: IpAddr,
    /// Its VXLAN device's MAC.
    pub mac: [u8; 6],
    /// Its address blocks, then host routes for its attachments outside
    /// them (static or held addresses), IPv4 and IPv6.
    pub routes: Vec<IpNet>,
    /// The next hop of its IPv6 routes (its device's link-local address,
    /// with a neighbour entry of its own): Linux routes IPv6 only via an
    /// IPv6 next hop, not via the VTEP's IPv4 address. None: nothing of it
    /// is IPv6.
    pub ipv6_next_hop: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SandboxSpec {
    pub sandbox: SandboxRef,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EndpointKind {
    /// veth pair: host end on `bridge`, the other end in the sandbox.
    Veth { host_name: String, bridge: String },
    /// macvlan on `parent`, created straight into the sandbox.
    Macvlan { parent: String, mode: MacvlanMode },
}

/// One interface in one sandbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The Attachment.
    pub owner: ObjectName,
    pub network: String,
    pub kind: EndpointKind,
    pub sandbox: SandboxRef,
    pub ifname: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    /// Default route via these gateways, when the attachment carries it.
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// More routes on the interface (IPv6 on overlays), netlet's own.
    pub routes: Vec<EndpointRoute>,
}

/// A route on an endpoint's interface: via `gateway` (onlink), or on the
/// link without one, at `metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
}

impl Endpoint {
    pub fn host_name(&self) -> Option<&str> {
        match &self.kind {
            EndpointKind::Veth { host_name, .. } => Some(host_name),
            EndpointKind::Macvlan { .. } => None,
        }
    }
}

/// Everything the node firewall must express, rendered into netlet's one
/// nftables table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FirewallPlan {
    pub networks: Vec<FirewallNetwork>,
    pub ports: Vec<PublishedPort>,
    /// Bridge device -> the host-side veth names enslaved to it. Used to
    /// drop frames between two ports of an `icc: false` bridge in the
    /// bridge family (needed without br_netfilter); may be left empty.
    pub bridge_ports: BTreeMap<String, Vec<String>>,
}

impl FirewallPlan {
    /// Whether this is `before` with ports or bridge ports taken away, and
    /// nothing added or changed (the lists keep their order: ports sorted,
    /// bridge ports in endpoint order).
    pub fn only_removes_from(&self, before: &FirewallPlan) -> bool {
        self != before
            && self.networks == before.networks
            && super::taken_from(&self.ports, &before.ports)
            && self.bridge_ports.iter().all(|(bridge, ports)| before.bridge_ports.get(bridge).is_some_and(|b| super::taken_from(ports, b)))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FirewallNetwork {
    pub name: String,
    pub bridge: String,
    /// An overlay's VXLAN device: traffic routed through it to other nodes
    /// counts as staying on the network (isolation, masquerade).
    pub overlay_device: Option<String>,
    pub subnets: Vec<IpNet>,
    /// Containers on the bridge may talk to each other.
    pub icc: bool,
    /// SNAT traffic leaving the node.
    pub masquerade: bool,
    /// Sealed: nothing in or out but among members.
    pub internal: bool,
}

/// One host port forwarded to one container port (ranges are expanded).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    pub protocol: Protocol,
    /// None: every address of the node.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
    /// The bridge the container sits on (for hairpin and localhost rules).
    pub bridge: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(host_port: u16) -> PublishedPort {
        PublishedPort {
            protocol: crate::api::Protocol::Tcp,
            host_ip: None,
            host_port,
            container_ip: "10.0.0.2".parse().unwrap(),
            container_port: 80,
            bridge: "br0".into(),
        }
    }

    fn plan(ports: &[u16], veths: &[&str]) -> FirewallPlan {
        FirewallPlan {
            networks: Vec::new(),
            ports: ports.iter().map(|p| port(*p)).collect(),
            bridge_ports: [("br0".to_string(), veths.iter().map(|v| v.to_string()).collect())].into(),
        }
    }

    #[test]
    fn a_plan_only_removes_when_it_takes_away_and_adds_nothing() {
        let before = plan(&[80, 81, 82], &["v0", "v1", "v2"]);
        assert!(plan(&[80, 82], &["v0", "v2"]).only_removes_from(&before));
        assert!(plan(&[], &[]).only_removes_from(&before));
        assert!(!before.only_removes_from(&before), "nothing changed");
        assert!(!plan(&[80, 83], &["v0"]).only_removes_from(&before), "a port added");
        assert!(!plan(&[80], &["v0", "v3"]).only_removes_from(&before), "a veth added");
        assert!(!plan(&[82, 80], &["v0"]).only_removes_from(&before), "out of order");
        let mut moved = plan(&[80], &["v0"]);
        moved.ports[0].container_port = 81;
        assert!(!moved.only_removes_from(&before), "a port changed");
        let mut network = plan(&[80], &["v0"]);
        network.networks.push(FirewallNetwork {
            name: "n".into(),
            bridge: "br0".into(),
            overlay_device: None,
            subnets: Vec::new(),
            icc: true,
            masquerade: true,
            internal: false,
        });
        assert!(!network.only_removes_from(&before), "a network added");
    }
}
