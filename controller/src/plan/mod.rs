//! The plan: a pure function from desired objects, node facts and held
//! allocations to the node's desired state and each object's outcome.
//!
//! No I/O happens here. Everything the dataplane will do is decided here,
//! which is why this is where most unit tests live.

mod addresses;
mod allocations;
pub mod attachment;
pub mod desired;
mod interfaces;
pub mod ipam;
pub mod names;
pub mod network;
pub mod outcome;
pub mod overlay;
mod pod_sandbox;
pub mod ports;
pub mod tenancy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::{HashMap, HashMapExt};
use ipnet::IpNet;
use kube::ResourceExt;

use crate::api::{Attachment, Driver, Protocol};
use crate::naming;
use crate::objects::{ObjectName, ObjectSet};
pub(crate) use addresses::{AddressPair, Member};
pub use allocations::{Allocations, HeldEndpoint, PortKey};
use attachment::{CheckedAttachment, SandboxChoice, SandboxRef};
use desired::{BridgeLink, DesiredState, Endpoint, EndpointKind, FirewallNetwork, SandboxSpec};
use network::ResolvedNetwork;
use outcome::{reason, Failure};

/// What the plan needs to know about the node it plans for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    pub node_name: String,
    /// net.ipv4.ip_local_port_range: where ephemeral host ports come from.
    pub ephemeral_ports: (u16, u16),
    /// Sockets listening in the node namespace (not ours).
    pub bound_ports: Vec<(Protocol, IpAddr, u16)>,
    /// The node's own addresses (status of host-mode attachments).
    pub node_addresses: Vec<IpNet>,
    /// MTU of the link holding each node address (overlay MTU derivation).
    pub link_mtu_by_address: BTreeMap<IpAddr, u32>,
    /// The node's own resolvers (/etc/resolv.conf): upstreams for containers.
    pub resolvers: Vec<IpAddr>,
    /// The agent serves DNS on user-defined networks (long-running agents).
    pub embedded_dns: bool,
    /// Kubernetes mode: the IPv4 address blocks every node claimed, by
    /// overlay network (from its status). Present for a network: this node
    /// hands out dynamic addresses only from its own, and knows other
    /// nodes' attachments only by the addresses their status holds.
    /// Absent: blocks derived from the peers list (standalone).
    pub overlay_blocks: BTreeMap<String, overlay::NodeBlocks>,
    /// The sandbox paths of this node's attachments that are the node's
    /// own network namespace, with what each resolved to (`net:[4026531840]`).
    pub node_namespace_at: BTreeMap<String, String>,
    /// The `netns` names of this node's attachments that exist on the node
    /// but netlet did not make (its record of what it made lacks them).
    pub unowned_netns: BTreeSet<String>,
    /// Who writes the objects: the tenant boundary's mode and namespaces.
    pub tenancy: tenancy::Tenancy,
}

#[derive(Clone, Debug, Default, PartialEq, Hash)]
pub struct NetworkInfo {
    pub bridge: Option<String>,
    pub gateways: Vec<String>,
    pub attachments: u32,
    /// Addresses handed out (IPv4 and IPv6 counted separately).
    pub addresses_in_use: u64,
    /// Addresses the ranges can hand out (saturating for big IPv6 ranges).
    pub address_capacity: u64,
    /// MTU of the network's links (bridge, overlay, macvlan).
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Hash)]
pub struct AttachmentInfo {
    pub network: String,
    pub interface: Option<String>,
    pub host_interface: Option<String>,
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub ipv6_gateway: Option<IpAddr>,
    pub mac: Option<String>,
    pub sandbox_path: Option<String>,
    /// A pod sandbox: the pod and sandbox it is realized in (boxed: most
    /// attachments have none).
    pub pod: Option<Box<crate::api::PodSandboxStatus>>,
    /// Host mode: the node's addresses, reported for information.
    pub node_addresses: Vec<String>,
}

/// The plan's answer.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub desired: DesiredState,
    pub allocations: Allocations,
    pub networks: BTreeMap<String, Result<NetworkInfo, Failure>>,
    /// Only attachments of this node. Hashed: only ever looked up by name
    /// (a dozen times per attachment in a pass), never walked in order.
    pub attachments: HashMap<ObjectName, Result<AttachmentInfo, Failure>>,
    /// Only port mappings of this node's attachments (hashed, as above).
    pub port_mappings: HashMap<ObjectName, Result<Vec<crate::api::PortBinding>, Failure>>,
}

/// An attachment of this node that passed its own checks: its name, the
/// object, and what the checks parsed.
pub type Local<'a> = (ObjectName, &'a Attachment, CheckedAttachment);

/// Is this attachment for the node `node`? (No nodeName: whoever reads it.)
pub fn is_local(att: &Attachment, node: &str) -> bool {
    att.spec.node_name.as_deref().is_none_or(|n| n == node)
}

/// Computes the whole desired state of the node.
pub fn plan(objects: &ObjectSet, node: &NodeFacts, held: &Allocations) -> Plan {
    let mut out = Plan::default();
    let mut networks = resolve_networks(objects, &mut out);
    overlay::prepare(&mut networks, node, &mut out);

    // Attachments of this node, checked, in creation order.
    let mut local: Vec<Local<'_>> = Vec::new();
    for att in objects.attachments.iter().map(|a| &**a).filter(|a| is_local(a, &node.node_name)) {
        let key = ObjectName::of(att);
        let checked = attachment::check(att)
            .and_then(|checked| check_against_network(att, &checked, &networks).map(|()| checked))
            .and_then(|checked| pod_sandbox::resolve(&key, checked, objects.pods.as_deref()));
        match checked {
            Ok(checked) => local.push((key, att, checked)),
            Err(failure) => {
                out.attachments.insert(key, Err(failure));
            }
        }
    }
    tenancy::refuse_outsiders(&mut local, &networks, node, &mut out);
    // Sized once: grown one attachment at a time, the map of results was
    // rehashed about ten times on each pass.
    out.attachments.reserve(local.len());
    out.desired.endpoints.reserve(local.len());

    let mut addresses = addresses::allocate_addresses(&local, &networks, held, &mut out);
    let overlay_addresses = overlay::allocate(objects, node, &networks, held, &mut out);
    for ((key, _, _), pair) in local.iter().zip(&mut addresses) {
        if let Some(a) = overlay_addresses.get(key) {
            *pair = *a;
        }
    }
    let interfaces = interfaces::assign_interfaces(&local, held, &mut out);
    let default_routes = interfaces::choose_default_routes(&local, &networks, &out);

    // (network, MAC) -> the attachment holding it.
    let mut macs: HashMap<(&str, [u8; 6]), &str> = HashMap::new();
    // Sorted once at the end (a sorted set compared names on every insert).
    let mut sandboxes: Vec<SandboxRef> = Vec::with_capacity(local.len());
    for (position, (key, att, checked)) in local.iter().enumerate() {
        if out.attachments.contains_key(key) {
            continue; // already failed
        }
        if let SandboxChoice::PodWaiting(failure) = &checked.sandbox {
            // Nothing to realize; the addresses (and interface name) stay held.
            let (ipv4, ipv6) = addresses[position];
            let interface = held.endpoints.get(key).and_then(|h| h.interface.clone());
            out.allocations.endpoints.insert(key.clone(), HeldEndpoint { network: att.spec.network.clone(), ipv4, ipv6, interface });
            out.attachments.insert(key.clone(), Err(failure.clone()));
            continue;
        }
        let SandboxChoice::Namespace(sandbox) = &checked.sandbox else {
            continue;
        };
        let net = &networks[&att.spec.network].as_ref().expect("checked against a ready network");
        sandboxes.push(sandbox.clone());
        if net.driver == Driver::Null {
            out.attachments.insert(
                key.clone(),
                Ok(AttachmentInfo { network: net.name.clone(), sandbox_path: Some(sandbox.path()), ..Default::default() }),
            );
            out.allocations.endpoints.insert(key.clone(), HeldEndpoint { network: net.name.clone(), ..Default::default() });
            continue;
        }
        let (v4, v6) = addresses[position];
        let mac = checked.mac.unwrap_or_else(|| match v4 {
            Some(IpAddr::V4(ip)) => naming::mac_from_ipv4(ip),
            _ => naming::mac_from_key(key.as_str()),
        });
        if let Some(holder) = macs.get(&(net.name.as_str(), mac)) {
            out.attachments.insert(
                key.clone(),
                Err(Failure::new(
                    reason::DUPLICATE_MAC,
                    format!("MAC address {} is already used by attachment {holder} on network {}", naming::format_mac(&mac), net.name),
                )),
            );
            continue;
        }
        macs.insert((net.name.as_str(), mac), key.as_str());

        let Some(ifname) = interfaces[position].clone() else { continue };
        let with_prefix =
            |ip: Option<IpAddr>| ip.and_then(|ip| net.subnet_for(ip).map(|s| IpNet::new(ip, s.net.prefix_len()).expect("valid prefix")));
        let (cidr4, cidr6) = (with_prefix(v4), with_prefix(v6));
        let gw4 = v4.and_then(|ip| net.subnet_for(ip)).map(|s| s.gateway);
        let gw6 = v6.and_then(|ip| net.subnet_for(ip)).map(|s| s.gateway);
        let carries_default = default_routes.get(sandbox) == Some(&position);
        let kind = match net.driver {
            Driver::Macvlan => {
                let (parent, mode) = net.macvlan.clone().expect("resolved macvlan network has a parent");
                EndpointKind::Macvlan { parent, mode }
            }
            _ => EndpointKind::Veth { host_name: naming::host_veth_name_of(att), bridge: net.bridge.clone() },
        };
        let endpoint = Endpoint {
            owner: key.clone(),
            network: net.name.clone(),
            sandbox: sandbox.clone(),
            ifname: ifname.clone(),
            mac,
            mtu: net.mtu,
            addresses: cidr4.into_iter().chain(cidr6).collect(),
            gateway_v4: carries_default.then_some(gw4).flatten().and_then(as_v4),
            gateway_v6: carries_default.then_some(gw6).flatten().and_then(as_v6),
            routes: overlay::container_routes(net, node, v6),
            kind,
        };
        out.attachments.insert(
            key.clone(),
            Ok(AttachmentInfo {
                network: net.name.clone(),
                interface: Some(ifname.clone()),
                host_interface: endpoint.host_name().map(String::from),
                ipv4: cidr4,
                ipv6: cidr6,
                gateway: gw4,
                ipv6_gateway: gw6,
                mac: Some(naming::format_mac(&mac)),
                sandbox_path: Some(sandbox.path()),
                pod: checked.pod.clone().map(Box::new),
                node_addresses: Vec::new(),
            }),
        );
        out.allocations
            .endpoints
            .insert(key.clone(), HeldEndpoint { network: net.name.clone(), ipv4: v4, ipv6: v6, interface: Some(ifname) });
        out.desired.endpoints.push(endpoint);
    }

    // Host and container-mode attachments borrow everything from elsewhere.
    for (key, att, checked) in &local {
        if out.attachments.contains_key(key) {
            continue;
        }
        let info = match &checked.sandbox {
            SandboxChoice::Host => Ok(AttachmentInfo {
                network: att.spec.network.clone(),
                sandbox_path: Some("/proc/1/ns/net".into()),
                node_addresses: node.node_addresses.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            SandboxChoice::SharedWith(owner) => {
                let owner_key = key.sibling(owner);
                match out.attachments.get(&owner_key) {
                    Some(Ok(info)) => Ok(AttachmentInfo { host_interface: None, ..info.clone() }),
                    _ => Err(Failure::new(
                        reason::SANDBOX_OWNER_GONE,
                        format!("attachment {owner_key}, whose namespace this one shares, does not exist or is not ready"),
                    )),
                }
            }
            SandboxChoice::Namespace(_) | SandboxChoice::Pod(_) | SandboxChoice::PodWaiting(_) => continue,
        };
        out.attachments.insert(key.clone(), info);
    }

    // Networks: bridges, firewall, counts.
    for (name, net) in &networks {
        let Ok(net) = net else { continue };
        let count = out.attachments.values().filter(|a| matches!(a, Ok(info) if &info.network == name)).count() as u32;
        let gateways: Vec<String> = net.subnets.iter().map(|s| s.gateway_cidr().to_string()).collect();
        if net.has_bridge() {
            out.desired.bridges.push(BridgeLink {
                name: net.bridge.clone(),
                network: name.clone(),
                mtu: net.mtu,
                mac: naming::mac_from_key(&format!("bridge/{name}")),
                addresses: net.subnets.iter().map(|s| s.gateway_cidr()).collect(),
            });
            out.desired.firewall.networks.push(FirewallNetwork {
                name: name.clone(),
                bridge: net.bridge.clone(),
                overlay_device: net.overlay.as_ref().map(|o| overlay::vxlan_name(o.vni)),
                subnets: net.subnets.iter().map(|s| s.net).collect(),
                icc: net.icc,
                masquerade: net.masquerade && !net.internal,
                internal: net.internal,
            });
            out.desired.ipv4_forwarding |= net.subnet_v4().is_some();
            out.desired.ipv6_forwarding |= net.subnet_v6().is_some();
        }
        let addresses_in_use = out
            .allocations
            .endpoints
            .values()
            .filter(|h| &h.network == name)
            .map(|h| u64::from(h.ipv4.is_some()) + u64::from(h.ipv6.is_some()))
            .sum();
        let address_capacity = net.subnets.iter().map(ipam::capacity).fold(0u64, u64::saturating_add);
        out.networks.insert(
            name.clone(),
            Ok(NetworkInfo {
                bridge: net.has_bridge().then(|| net.bridge.clone()),
                gateways,
                attachments: count,
                addresses_in_use,
                address_capacity,
                mtu: (net.has_bridge() || net.driver == Driver::Macvlan).then_some(net.mtu),
            }),
        );
    }

    ports::plan_ports(objects, node, held, &networks, &mut out);
    out.desired.vxlans = overlay::vxlans(objects, node, &networks, &overlay_addresses);
    out.desired.sandbox_files = std::sync::Arc::new(names::sandbox_files(&local, &networks, &node.resolvers, node.embedded_dns, &out));
    if node.embedded_dns {
        out.desired.names = std::sync::Arc::new(names::name_table(&local, &networks, &out));
    }

    sandboxes.sort_unstable();
    sandboxes.dedup();
    out.desired.sandboxes = sandboxes.into_iter().map(|sandbox| SandboxSpec { sandbox }).collect();
    out.desired.endpoints.sort_by(|a, b| a.owner.cmp(&b.owner));
    for ep in &out.desired.endpoints {
        if let EndpointKind::Veth { host_name, bridge } = &ep.kind {
            out.desired.firewall.bridge_ports.entry(bridge.clone()).or_default().push(host_name.clone());
        }
    }
    out
}

/// Whether `fewer` is `more` with items taken away: each of its items is
/// found in `more`, in the same order (one walk of each).
fn taken_from<T: PartialEq>(fewer: impl IntoIterator<Item = T>, more: impl IntoIterator<Item = T>) -> bool {
    let mut more = more.into_iter();
    fewer.into_iter().all(|item| more.any(|other| other == item))
}

fn as_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}
fn as_v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    }
}

/// Resolves every network; a later network that collides with an earlier
/// ready one (bridge name, overlapping subnet) fails, the earlier one stays.
fn resolve_networks(objects: &ObjectSet, out: &mut Plan) -> BTreeMap<String, Result<ResolvedNetwork, Failure>> {
    let mut resolved: BTreeMap<String, Result<ResolvedNetwork, Failure>> = BTreeMap::new();
    let mut ready: Vec<ResolvedNetwork> = Vec::new();
    for net in &objects.networks {
        let name = net.name_any();
        let result = network::resolve(net).and_then(|r| {
            for earlier in &ready {
                if r.has_bridge() && earlier.has_bridge() && r.bridge == earlier.bridge {
                    return Err(Failure::new(
                        reason::BRIDGE_NAME_CONFLICT,
                        format!("bridge name {} is already used by network {}", r.bridge, earlier.name),
                    ));
                }
                if let Some((mine, theirs)) = network::overlap(&r, earlier) {
                    return Err(Failure::new(
                        reason::SUBNET_OVERLAP,
                        format!("subnet {mine} overlaps subnet {theirs} of network {}", earlier.name),
                    ));
                }
            }
            Ok(r)
        });
        if let Ok(r) = &result {
            ready.push(r.clone());
        }
        if let Err(f) = &result {
            out.networks.insert(name.clone(), Err(f.clone()));
        }
        resolved.insert(name, result);
    }
    resolved
}

/// Checks that combine an attachment with its network.
fn check_against_network(
    att: &Attachment,
    checked: &CheckedAttachment,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
) -> Result<(), Failure> {
    if let SandboxChoice::SharedWith(_) = checked.sandbox {
        return Ok(()); // no network of its own
    }
    let name = &att.spec.network;
    let net = match networks.get(name) {
        None => return Err(Failure::new(reason::NETWORK_NOT_FOUND, format!("network {name:?} does not exist"))),
        Some(Err(f)) => return Err(Failure::new(reason::NETWORK_NOT_READY, format!("network {name:?} is not ready: {}", f.message))),
        Some(Ok(net)) => net,
    };
    match (net.driver, &checked.sandbox) {
        (Driver::Host, SandboxChoice::Host) => return Ok(()),
        (Driver::Host, _) => {
            return Err(Failure::invalid(format!("network {name:?} has driver host: the attachment needs sandbox.host: true")))
        }
        (_, SandboxChoice::Host) => {
            return Err(Failure::invalid(format!(
                "sandbox.host: true needs a network with driver host; {name:?} has driver {}",
                net.driver.as_str()
            )))
        }
        _ => {}
    }
    for ip in checked.ipv4.iter().chain(checked.ipv6.iter()) {
        if net.driver == Driver::Null {
            return Err(Failure::invalid(format!("network {name:?} has driver null: it takes no addresses")));
        }
        match net.subnet_for(*ip) {
            Some(subnet) => ipam::check_static(subnet, *ip)?,
            None => {
                let subnets: Vec<String> = net.subnets.iter().map(|s| s.net.to_string()).collect();
                return Err(Failure::invalid(format!("address {ip} is outside every subnet of network {name:?} ({})", subnets.join(", "))));
            }
        }
    }
    if checked.ipv6.is_some() && !net.enable_ipv6 {
        return Err(Failure::invalid(format!("ipv6Address is set but network {name:?} does not enable IPv6")));
    }
    Ok(())
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod overlay_tests;
#[cfg(test)]
mod tenancy_tests;
#[cfg(test)]
mod tests;
