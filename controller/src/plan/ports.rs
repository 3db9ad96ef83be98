//! Port publishing: PortMappings expanded into single host-port bindings,
//! ephemeral ports chosen and kept, conflicts decided by creation order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use super::desired::PublishedPort;
use super::network::ResolvedNetwork;
use super::outcome::{reason, Failure};
use super::tenancy;
use super::{is_local, Allocations, NodeFacts, Plan, PortKey};
use crate::api::{Attachment, Driver, PortBinding, PortMapping, Protocol};
use crate::objects::{namespace_of, ObjectName, ObjectSet};

/// Bindings published so far: (protocol, IPv6?, port) -> [(host ip,
/// position of the publishing mapping)].
type Published = BTreeMap<(Protocol, bool, u16), Vec<(Option<IpAddr>, usize)>>;

/// One binding before conflicts are checked.
struct Wanted {
    protocol: Protocol,
    host_ip: Option<IpAddr>,
    /// None: ephemeral.
    host_port: Option<u16>,
    container_port: u16,
    container_ip: IpAddr,
}

fn overlaps(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        _ => true,
    }
}

fn show_ip(ip: Option<IpAddr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".into())
}

pub(super) fn plan_ports(
    objects: &ObjectSet,
    node: &NodeFacts,
    held: &Allocations,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    out: &mut Plan,
) {
    // v4 and v6 bindings of one port are distinct, as with Docker's
    // dual-stack publishing.
    let mut published: Published = BTreeMap::new();
    out.desired.firewall.ports.reserve(objects.port_mappings.len());
    let (lo, hi) = node.ephemeral_ports;
    // Attachments by (namespace, name): one lookup per mapping, not a scan
    // (the first of a duplicated name wins, as everywhere else).
    let mut attachments: HashMap<(String, &str), &Attachment> = HashMap::with_capacity(objects.attachments.len());
    for a in objects.attachments.iter().map(|a| &**a) {
        let Some(name) = a.metadata.name.as_deref() else { continue };
        attachments.entry((namespace_of(a), name)).or_insert(a);
    }
    // The name of the mapping at `position`, for a conflict's message.
    let mapping_name = |position: usize| ObjectName::of(&*objects.port_mappings[position]);
    for (position, pm) in objects.port_mappings.iter().map(|p| &**p).enumerate() {
        let key = ObjectName::of(pm);
        if pm.spec.attachment.contains('/') {
            let failure = Failure::new(
                reason::FORBIDDEN,
                format!(
                    "spec.attachment {:?} reaches outside the port mapping's namespace: it publishes an Attachment of its own namespace",
                    pm.spec.attachment
                ),
            );
            out.port_mappings.insert(key, Err(failure));
            continue;
        }
        let att_key = key.sibling(&pm.spec.attachment);
        let Some(&att) = attachments.get(&(namespace_of(pm), pm.spec.attachment.as_str())) else {
            out.port_mappings.insert(key, Err(Failure::new(reason::ATTACHMENT_NOT_FOUND, format!("attachment {att_key} does not exist"))));
            continue;
        };
        if !is_local(att, &node.node_name) {
            continue; // another node publishes it
        }
        let network = networks.get(&att.spec.network).and_then(|n| n.as_ref().ok());
        // Ephemeral ports come from the node's range within the network's
        // (from the network's when the two do not meet).
        let (lo, hi) = match network.map(|n| n.tenancy.host_port_range(&node.tenancy)) {
            Some((min, max)) if lo.max(min) <= hi.min(max) => (lo.max(min), hi.min(max)),
            Some((min, max)) => (min, max),
            None => (lo, hi),
        };
        let result = wanted_bindings(pm, att, &att_key, networks, out).and_then(|wanted| {
            // Check every fixed port first: a mapping is applied whole or not at all.
            let mut mine: Vec<(Protocol, Option<IpAddr>, u16, u16, IpAddr)> = Vec::with_capacity(wanted.len());
            if let Some(network) = network {
                for w in &wanted {
                    tenancy::check_host_binding(network, &node.tenancy, w.host_ip, w.host_port.unwrap_or(lo))?;
                }
            }
            for w in wanted.iter().filter(|w| w.host_port.is_some()) {
                let port = w.host_port.expect("filtered");
                if let Some((_, winner)) = published
                    .get(&(w.protocol, w.container_ip.is_ipv6(), port))
                    .and_then(|v| v.iter().find(|(ip, _)| overlaps(*ip, w.host_ip)))
                {
                    return Err(Failure::new(
                        reason::PORT_CONFLICT,
                        format!(
                            "host port {}:{port}/{} is already published by port mapping {}",
                            show_ip(w.host_ip),
                            w.protocol.as_str(),
                            mapping_name(*winner)
                        ),
                    ));
                }
                if mine.iter().any(|(p, ip, hp, _, c)| {
                    *p == w.protocol && *hp == port && c.is_ipv6() == w.container_ip.is_ipv6() && overlaps(*ip, w.host_ip)
                }) {
                    return Err(Failure::invalid(format!("host port {port}/{} is listed twice", w.protocol.as_str())));
                }
                if let Some((_, ip, _)) =
                    node.bound_ports.iter().find(|(p, ip, bp)| *p == w.protocol && *bp == port && overlaps(Some(*ip), w.host_ip))
                {
                    return Err(Failure::new(
                        reason::PORT_IN_USE,
                        format!("host port {ip}:{port}/{} is already bound by a process on the node", w.protocol.as_str()),
                    ));
                }
                mine.push((w.protocol, w.host_ip, port, w.container_port, w.container_ip));
            }
            // Then ephemeral ports: the one held before if still free, else the lowest free.
            for w in wanted.iter().filter(|w| w.host_port.is_none()) {
                let alloc_key = PortKey {
                    mapping: key.clone(),
                    protocol: w.protocol,
                    container_port: w.container_port,
                    host_ip: w.host_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                };
                let free = |port: u16| {
                    !published
                        .get(&(w.protocol, w.container_ip.is_ipv6(), port))
                        .is_some_and(|v| v.iter().any(|(ip, _)| overlaps(*ip, w.host_ip)))
                        && !mine.iter().any(|(p, ip, hp, _, c)| {
                            *p == w.protocol && *hp == port && c.is_ipv6() == w.container_ip.is_ipv6() && overlaps(*ip, w.host_ip)
                        })
                        && !node.bound_ports.iter().any(|(p, ip, bp)| *p == w.protocol && *bp == port && overlaps(Some(*ip), w.host_ip))
                };
                let port = held
                    .ports
                    .get(&alloc_key)
                    .copied()
                    .filter(|p| (lo..=hi).contains(p) && free(*p))
                    .or_else(|| (lo..=hi).find(|p| free(*p)))
                    .ok_or_else(|| {
                        Failure::new(reason::PORTS_EXHAUSTED, format!("no free host port left in {lo}-{hi} for {}", w.protocol.as_str()))
                    })?;
                out.allocations.ports.insert(alloc_key, port);
                mine.push((w.protocol, w.host_ip, port, w.container_port, w.container_ip));
            }
            Ok(mine)
        });
        match result {
            Ok(mine) => {
                let net = networks.get(&att.spec.network).and_then(|n| n.as_ref().ok());
                let bridge = net.map(|n| n.bridge.clone()).unwrap_or_default();
                let mut bindings = Vec::with_capacity(mine.len());
                for (protocol, host_ip, host_port, container_port, container_ip) in mine {
                    published.entry((protocol, container_ip.is_ipv6(), host_port)).or_default().push((host_ip, position));
                    bindings.push(PortBinding {
                        protocol,
                        host_ip: match (host_ip, container_ip) {
                            (Some(ip), _) => ip.to_string(),
                            (None, IpAddr::V4(_)) => "0.0.0.0".into(),
                            (None, IpAddr::V6(_)) => "::".into(),
                        },
                        host_port,
                        container_port,
                    });
                    out.desired.firewall.ports.push(PublishedPort {
                        protocol,
                        host_ip,
                        host_port,
                        container_ip,
                        container_port,
                        bridge: bridge.clone(),
                    });
                }
                out.port_mappings.insert(key, Ok(bindings));
            }
            Err(failure) => {
                out.port_mappings.insert(key, Err(failure));
            }
        }
    }
    out.desired.firewall.ports.sort();
}

/// `ports[i]` in messages, formatted only when one is written.
struct PortIndex(usize);

impl std::fmt::Display for PortIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ports[{}]", self.0)
    }
}

/// Expands a PortMapping into single-port bindings for the attachment's addresses.
fn wanted_bindings(
    pm: &PortMapping,
    att: &Attachment,
    att_key: &ObjectName,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    out: &Plan,
) -> Result<Vec<Wanted>, Failure> {
    if att.spec.sandbox.attachment.is_some() {
        return Err(Failure::new(
            reason::NOT_APPLICABLE,
            format!("attachment {att_key} shares another attachment's namespace; publish ports on that one"),
        ));
    }
    if let Some(Ok(net)) = networks.get(&att.spec.network) {
        if matches!(net.driver, Driver::Host | Driver::Null) {
            return Err(Failure::new(
                reason::NOT_APPLICABLE,
                format!(
                    "attachment {att_key} is on network {} with driver {}: publishing ports means nothing there",
                    net.name,
                    net.driver.as_str()
                ),
            ));
        }
        if !matches!(net.driver, Driver::Bridge | Driver::Overlay) {
            return Err(Failure::new(reason::UNSUPPORTED, format!("port publishing on driver {} is not supported", net.driver.as_str())));
        }
    }
    let info = match out.attachments.get(att_key) {
        Some(Ok(info)) => info,
        Some(Err(f)) => {
            return Err(Failure::new(reason::ATTACHMENT_NOT_READY, format!("attachment {att_key} is not ready: {}", f.message)))
        }
        None => return Err(Failure::new(reason::ATTACHMENT_NOT_READY, format!("attachment {att_key} is not ready"))),
    };
    let default_host_ip = networks.get(&att.spec.network).and_then(|n| n.as_ref().ok()).and_then(|n| n.host_binding_ipv4);
    let mut wanted = Vec::new();
    let mut push = |protocol: Protocol, host_ip: Option<IpAddr>, host_port: Option<u16>, container_port: u16| -> Result<(), Failure> {
        let families: Vec<IpAddr> = match host_ip {
            Some(ip) if ip.is_ipv4() => info.ipv4.map(|n| n.addr()).into_iter().collect(),
            Some(_) => info.ipv6.map(|n| n.addr()).into_iter().collect(),
            None => info.ipv4.iter().chain(info.ipv6.iter()).map(|n| n.addr()).collect(),
        };
        if families.is_empty() {
            return Err(Failure::invalid(format!("hostIP {} has no matching address family on attachment {att_key}", show_ip(host_ip))));
        }
        for container_ip in families {
            wanted.push(Wanted { protocol, host_ip, host_port, container_port, container_ip });
        }
        Ok(())
    };
    for (i, port) in pm.spec.ports.iter().enumerate() {
        let what = PortIndex(i);
        if port.container_port == 0 {
            return Err(Failure::invalid(format!("{what}.containerPort must be between 1 and 65535")));
        }
        let c_end = port.container_port_end.unwrap_or(port.container_port);
        if c_end < port.container_port {
            return Err(Failure::invalid(format!("{what}.containerPortEnd {c_end} is below containerPort {}", port.container_port)));
        }
        let host_ip = match &port.host_ip {
            Some(text) => {
                Some(text.parse::<IpAddr>().map_err(|_| Failure::invalid(format!("{what}.hostIP {text:?} is not an IP address")))?)
            }
            None => default_host_ip,
        };
        let host_start = port.host_port.filter(|p| *p != 0);
        let count = c_end - port.container_port;
        if let Some(start) = host_start {
            let end = port.host_port_end.unwrap_or_else(|| start.saturating_add(count));
            if end < start {
                return Err(Failure::invalid(format!("{what}.hostPortEnd {end} is below hostPort {start}")));
            }
            if end - start != count {
                return Err(Failure::invalid(format!(
                    "{what}: host range {start}-{end} and container range {}-{c_end} differ in size",
                    port.container_port
                )));
            }
        } else if port.host_port_end.is_some() {
            return Err(Failure::invalid(format!("{what}.hostPortEnd needs hostPort")));
        }
        for offset in 0..=count {
            push(port.protocol, host_ip, host_start.map(|s| s + offset), port.container_port + offset)?;
        }
    }
    if pm.spec.publish_all {
        let mut seen = BTreeSet::new();
        for exposed in &att.spec.expose {
            if seen.insert((exposed.protocol, exposed.port)) {
                push(exposed.protocol, default_host_ip, None, exposed.port)?;
            }
        }
    }
    if wanted.is_empty() {
        return Err(Failure::invalid("nothing to publish: ports is empty and publishAll found no expose entries"));
    }
    Ok(wanted)
}
