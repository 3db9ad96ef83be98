//! The plan: a pure function from desired objects, node facts and held
//! allocations to the node's desired state and each object's outcome.
//!
//! No I/O happens here. Everything the dataplane will do is decided here,
//! which is why this is where most unit tests live.

mod allocations;
pub mod attachment;
pub mod desired;
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

    let mut addresses = allocate_addresses(&local, &networks, held, &mut out);
    let overlay_addresses = overlay::allocate(objects, node, &networks, held, &mut out);
    for ((key, _, _), pair) in local.iter().zip(&mut addresses) {
        if let Some(a) = overlay_addresses.get(key) {
            *pair = *a;
        }
    }
    let interfaces = assign_interfaces(&local, held, &mut out);
    let default_routes = choose_default_routes(&local, &networks, &out);

    // (network, MAC) -> the attachment holding it.
    let mut macs: HashMap<(&str, [u8; 6]), &str> = HashMap::new();
    let mut sandboxes: BTreeSet<SandboxRef> = BTreeSet::new();
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
        sandboxes.insert(sandbox.clone());
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

    out.desired.sandboxes = sandboxes.into_iter().map(|sandbox| SandboxSpec { sandbox }).collect();
    out.desired.endpoints.sort_by(|a, b| a.owner.cmp(&b.owner));
    for ep in &out.desired.endpoints {
        if let EndpointKind::Veth { host_name, bridge } = &ep.kind {
            out.desired.firewall.bridge_ports.entry(bridge.clone()).or_default().push(host_name.clone());
        }
    }
    out
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

/// Runs IPAM for every subnet of every ready network; the answer is by
/// position in `local` (failures go to `out`).
fn allocate_addresses(
    local: &[Local<'_>],
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    held: &Allocations,
    out: &mut Plan,
) -> Vec<AddressPair> {
    let mut addresses: Vec<AddressPair> = vec![(None, None); local.len()];
    for (name, net) in networks {
        let Ok(net) = net else { continue };
        if !matches!(net.driver, Driver::Bridge | Driver::Macvlan) {
            continue;
        }
        let members: Vec<usize> = (0..local.len())
            .filter(|i| {
                let (_, att, checked) = &local[*i];
                &att.spec.network == name && checked.holds_addresses()
            })
            .collect();
        let requests: Vec<Member<'_>> = members.iter().map(|i| (local[*i].0.as_str(), local[*i].2.ipv4, local[*i].2.ipv6)).collect();
        for (i, result) in members.into_iter().zip(allocate_network(name, net, &requests, held)) {
            match result {
                Some(Ok(pair)) => addresses[i] = pair,
                Some(Err(f)) => {
                    out.attachments.entry(local[i].0.clone()).or_insert(Err(f));
                }
                None => {}
            }
        }
    }
    addresses
}

/// An attachment's IPv4 and IPv6 address on one network.
pub(crate) type AddressPair = (Option<IpAddr>, Option<IpAddr>);

/// An attachment asking for addresses on a network: its key, static IPv4, static IPv6.
pub(crate) type Member<'a> = (&'a str, Option<IpAddr>, Option<IpAddr>);

/// One network's IPAM over `members`: in each family, statics go to the
/// subnet holding them and dynamic addresses come from the family's first
/// subnet; what `held` records is kept. The answer is by position in
/// `members`; None for a member no subnet took.
pub(crate) fn allocate_network(
    name: &str,
    net: &ResolvedNetwork,
    members: &[Member<'_>],
    held: &Allocations,
) -> Vec<Option<Result<AddressPair, Failure>>> {
    let mut out: Vec<Option<Result<AddressPair, Failure>>> = vec![None; members.len()];
    for (v4, first) in [(true, net.subnet_v4()), (false, net.subnet_v6())] {
        let Some(first) = first else { continue };
        for subnet in net.subnets.iter().filter(|s| s.net.addr().is_ipv4() == v4) {
            let mut positions = Vec::new();
            let mut requests: Vec<ipam::Request> = Vec::new();
            for (i, (key, ipv4, ipv6)) in members.iter().enumerate() {
                let static_ip = if v4 { *ipv4 } else { *ipv6 };
                let wanted = match static_ip {
                    Some(ip) => match net.subnet_for(ip) {
                        Some(s) => s,
                        None => continue,
                    },
                    None => first,
                };
                if wanted != subnet {
                    continue;
                }
                let previous = held
                    .endpoints
                    .get(*key)
                    .filter(|h| h.network == name)
                    .and_then(|h| if v4 { h.ipv4 } else { h.ipv6 })
                    .filter(|ip| subnet.net.contains(ip));
                positions.push(i);
                requests.push(ipam::Request { owner: key, static_ip, previous });
            }
            for (i, result) in positions.into_iter().zip(ipam::allocate(subnet, &requests)) {
                let entry = out[i].get_or_insert(Ok((None, None)));
                match (result, entry.as_mut()) {
                    (Ok(ip), Ok(pair)) if v4 => pair.0 = Some(ip),
                    (Ok(ip), Ok(pair)) => pair.1 = Some(ip),
                    (Err(f), Ok(_)) => *entry = Err(f),
                    (_, Err(_)) => {}
                }
            }
        }
    }
    out
}

/// Names interfaces per sandbox: names held before, then explicit names, then eth0, eth1, ...
/// for the rest in creation order, keeping names assigned earlier. The
/// answer is by position in `local`; failed attachments have none.
fn assign_interfaces(local: &[Local<'_>], held: &Allocations, out: &mut Plan) -> Vec<Option<String>> {
    // Each sandbox is named apart from the others: hashed, in no order.
    let mut by_sandbox: HashMap<&SandboxRef, Vec<usize>> = HashMap::with_capacity(local.len());
    for (position, entry) in local.iter().enumerate() {
        if let SandboxChoice::Namespace(sandbox) = &entry.2.sandbox {
            by_sandbox.entry(sandbox).or_default().push(position);
        }
    }
    let mut names: Vec<Option<String>> = vec![None; local.len()];
    for members in by_sandbox.values() {
        // interface name -> attachment holding it, within this sandbox
        let mut taken: HashMap<String, &str> = HashMap::new();
        // Names held from earlier reconciles come first: a running
        // container's interface is never renamed because of a newcomer.
        for &i in members {
            let (key, att, _) = &local[i];
            let Some(ifname) = held.endpoints.get(key).and_then(|h| h.interface.as_ref()) else {
                continue;
            };
            if att.spec.interface.as_ref().is_none_or(|wanted| wanted == ifname) && !taken.contains_key(ifname) {
                taken.insert(ifname.clone(), key.as_str());
                names[i] = Some(ifname.clone());
            }
        }
        // Then explicit names, in creation order.
        for &i in members {
            let (key, att, _) = &local[i];
            let Some(ifname) = &att.spec.interface else {
                continue;
            };
            if names[i].is_some() {
                continue;
            }
            match taken.get(ifname) {
                Some(holder) => {
                    out.attachments.entry(key.clone()).or_insert(Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!("interface {ifname} in this sandbox is already used by attachment {holder}"),
                    )));
                }
                None => {
                    taken.insert(ifname.clone(), key.as_str());
                    names[i] = Some(ifname.clone());
                }
            }
        }
        // The rest: the lowest free ethN, in creation order.
        let mut next = 0;
        for &i in members {
            let key = &local[i].0;
            if names[i].is_some() || out.attachments.contains_key(key) {
                continue;
            }
            while taken.contains_key(&format!("eth{next}")) {
                next += 1;
            }
            let ifname = format!("eth{next}");
            taken.insert(ifname.clone(), key.as_str());
            names[i] = Some(ifname);
        }
    }
    names
}

/// One default route per sandbox: an explicit `defaultRoute: true` wins over
/// the default; ties go to the earliest created. Internal and null networks
/// never carry it. The answer is a position in `local`.
fn choose_default_routes<'a>(
    local: &'a [Local<'_>],
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    out: &Plan,
) -> HashMap<&'a SandboxRef, usize> {
    let mut chosen: HashMap<&SandboxRef, (bool, usize)> = HashMap::new();
    for (position, (key, att, checked)) in local.iter().enumerate() {
        let SandboxChoice::Namespace(sandbox) = &checked.sandbox else {
            continue;
        };
        if out.attachments.contains_key(key) || att.spec.default_route == Some(false) {
            continue;
        }
        // A pod's default route is its primary network's: taken only when asked.
        if checked.pod.is_some() && att.spec.default_route != Some(true) {
            continue;
        }
        let Some(Ok(net)) = networks.get(&att.spec.network) else {
            continue;
        };
        if net.internal || net.driver == Driver::Null {
            continue;
        }
        let explicit = att.spec.default_route == Some(true);
        match chosen.get(sandbox) {
            Some((true, _)) => {}
            Some((false, _)) if !explicit => {}
            _ => {
                chosen.insert(sandbox, (explicit, position));
            }
        }
    }
    chosen.into_iter().map(|(s, (_, i))| (s, i)).collect()
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod overlay_tests;
#[cfg(test)]
mod tenancy_tests;
#[cfg(test)]
mod tests;
