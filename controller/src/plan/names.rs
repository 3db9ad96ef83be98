//! Name files for managed sandboxes: what `ip netns exec NAME` shows as
//! /etc/hosts and /etc/resolv.conf (it bind-mounts /etc/netns/NAME/*).
//!
//! Like Docker: the sandbox's own names map to its addresses, `extraHosts`
//! are appended, and on user-defined networks the resolver is netlet's
//! embedded DNS (on the network's gateway), which forwards what it does not
//! know to `dns.nameservers` or the node's resolvers. On the default
//! `bridge` network there is no embedded DNS: the resolvers are used directly.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};
use kube::ResourceExt;

use super::network::{ResolvedNetwork, DEFAULT_BRIDGE_NETWORK};
use super::outcome::Failure;
use super::{AttachmentInfo, Local, Plan};
use crate::api::{Attachment, DnsConfig};

/// What the embedded DNS server answers, per network: built by the plan,
/// served by `resolver`. Names are lower-case, without a trailing dot.
/// The big maps are hashed: they are only looked up, and rebuilt for
/// every attachment on every pass that changes any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NameTable {
    /// network -> name -> addresses (every attachment holding the name).
    pub records: BTreeMap<String, HashMap<String, Vec<IpAddr>>>,
    /// A container address -> who is asking: its networks and upstreams.
    pub clients: HashMap<IpAddr, NameClient>,
    /// network -> address -> the attachment's primary name (PTR).
    pub reverse: BTreeMap<String, HashMap<IpAddr, String>>,
    /// Where the server listens: each user-defined network's gateway, and
    /// the network it serves there (only that network's clients are answered).
    pub listen: BTreeMap<IpAddr, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NameClient {
    pub networks: Vec<String>,
    /// The sandbox's `dns.nameservers` (empty: the node's resolvers).
    pub upstreams: Vec<IpAddr>,
}

/// The table for every ready attachment on a network with embedded DNS:
/// its Attachment name, netns or pod name, hostname and aliases.
/// `local` is this node's checked attachments, in creation order.
pub fn name_table(local: &[Local<'_>], networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>, out: &Plan) -> NameTable {
    let mut table = NameTable { clients: HashMap::with_capacity(local.len()), ..Default::default() };
    // Built for a thousand attachments on every pass that changes any:
    // names are borrowed until they are stored, stored once.
    let mut sandbox_networks: HashMap<&str, (Vec<&str>, Vec<IpAddr>)> = HashMap::with_capacity(local.len());
    let mut members: Vec<(&Attachment, &AttachmentInfo)> = Vec::with_capacity(local.len());
    for (key, att, _) in local {
        let Some(Ok(info)) = out.attachments.get(key) else { continue };
        let Some(sandbox) = info.sandbox_path.as_deref() else { continue };
        let entry = sandbox_networks.entry(sandbox).or_default();
        entry.0.push(&info.network);
        if let Some(dns) = &att.spec.dns {
            entry.1.extend(dns.nameservers.iter().filter_map(|n| n.parse::<IpAddr>().ok()));
        }
        members.push((att, info));
    }
    for (att, info) in &members {
        let Some(Ok(net)) = networks.get(&info.network) else { continue };
        if !has_embedded_dns(net) || att.spec.sandbox.attachment.is_some() {
            continue;
        }
        let addrs: Vec<IpAddr> = info.ipv4.iter().chain(info.ipv6.iter()).map(|n| n.addr()).collect();
        let name = att.name_any();
        let names = std::iter::once(name.as_str())
            .chain(att.spec.sandbox.netns.as_deref())
            .chain(att.spec.sandbox.pod.as_deref())
            .chain(att.spec.hostname.as_deref())
            .chain(att.spec.aliases.iter().map(String::as_str));
        let records = entry_of(&mut table.records, &info.network);
        for name in names {
            let list = records.entry(name.to_ascii_lowercase()).or_insert_with(|| Vec::with_capacity(addrs.len()));
            for a in &addrs {
                if !list.contains(a) {
                    list.push(*a);
                }
            }
        }
        if addrs.is_empty() {
            continue;
        }
        let reverse = entry_of(&mut table.reverse, &info.network);
        for a in &addrs {
            reverse.insert(*a, name.to_ascii_lowercase());
        }
        if let Some(sandbox) = info.sandbox_path.as_deref() {
            let (nets, upstreams) = &sandbox_networks[sandbox];
            for a in &addrs {
                let client = NameClient { networks: nets.iter().map(|n| n.to_string()).collect(), upstreams: upstreams.clone() };
                table.clients.insert(*a, client);
            }
        }
    }
    for net in networks.values().flatten() {
        if has_embedded_dns(net) {
            if let Some(s) = net.subnet_v4() {
                table.listen.insert(s.gateway, net.name.clone());
            }
        }
    }
    table
}

/// The map `network` keys in `by_network`, made on first use (without
/// copying the name for each attachment that finds it there).
fn entry_of<'m, V: Default>(by_network: &'m mut BTreeMap<String, V>, network: &str) -> &'m mut V {
    if !by_network.contains_key(network) {
        by_network.insert(network.to_string(), V::default());
    }
    by_network.get_mut(network).expect("inserted above")
}

/// The files of one managed sandbox.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SandboxFiles {
    pub netns: String,
    pub hosts: String,
    pub resolv_conf: String,
}

/// What every sandbox's /etc/hosts starts with (Docker's lines).
const HOSTS_HEADER: &str =
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// Is this a network with embedded DNS (a user-defined bridge or overlay)?
pub fn has_embedded_dns(net: &ResolvedNetwork) -> bool {
    net.has_bridge() && net.name != DEFAULT_BRIDGE_NETWORK && net.subnet_v4().is_some()
}

/// Builds the files of every managed sandbox from its ready attachments
/// (`local`: this node's checked attachments, in creation order).
pub fn sandbox_files(
    local: &[Local<'_>],
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    node_resolvers: &[IpAddr],
    embedded_dns: bool,
    out: &Plan,
) -> Vec<SandboxFiles> {
    // Grouped in a hash map, and the files sorted once at the end.
    let mut by_netns: HashMap<&str, Vec<(&Attachment, &AttachmentInfo)>> = HashMap::with_capacity(local.len());
    for (key, att, _) in local {
        let Some(Ok(info)) = out.attachments.get(key) else { continue };
        let Some(netns) = att.spec.sandbox.netns.as_deref() else { continue };
        by_netns.entry(netns).or_default().push((att, info));
    }
    let mut files = Vec::with_capacity(by_netns.len());
    for (netns, members) in by_netns {
        let hostname = members.iter().find_map(|(a, _)| a.spec.hostname.as_deref()).unwrap_or(netns);
        // Sized once: a thousand of these are built on every pass that
        // changes anything.
        let mut hosts = String::with_capacity(HOSTS_HEADER.len() + 64 * members.len());
        hosts.push_str(HOSTS_HEADER);
        for (_, info) in &members {
            for addr in info.ipv4.iter().chain(info.ipv6.iter()) {
                let _ = writeln!(hosts, "{}\t{hostname}", addr.addr());
            }
        }
        for (a, _) in &members {
            for entry in &a.spec.extra_hosts {
                if let Some((name, addr)) = entry.split_once(':') {
                    let _ = writeln!(hosts, "{addr}\t{name}");
                }
            }
        }
        // The first member on a network with embedded DNS decides the
        // resolver, when the agent serves DNS (a long-running agent; a
        // `--once` run points containers at the upstreams directly rather
        // than at a gateway where nothing will answer).
        let embedded = members.iter().find_map(|(a, _)| match networks.get(&a.spec.network) {
            Some(Ok(net)) if embedded_dns && has_embedded_dns(net) => net.subnet_v4().map(|s| s.gateway),
            _ => None,
        });
        let no_dns = DnsConfig::default();
        let dns = members.iter().find_map(|(a, _)| a.spec.dns.as_ref()).unwrap_or(&no_dns);
        let mut resolv = String::with_capacity(128);
        resolv.push_str("# generated by netlet\n");
        match embedded {
            Some(gw) => {
                let _ = writeln!(resolv, "nameserver {gw}");
            }
            None if !dns.nameservers.is_empty() => {
                for ns in &dns.nameservers {
                    let _ = writeln!(resolv, "nameserver {ns}");
                }
            }
            None => {
                for ip in node_resolvers.iter().filter(|ip| !ip.is_loopback()) {
                    let _ = writeln!(resolv, "nameserver {ip}");
                }
            }
        }
        if !dns.searches.is_empty() {
            let _ = writeln!(resolv, "search {}", dns.searches.join(" "));
        }
        if !dns.options.is_empty() {
            let _ = writeln!(resolv, "options {}", dns.options.join(" "));
        }
        files.push(SandboxFiles { netns: netns.to_string(), hosts, resolv_conf: resolv });
    }
    files.sort_unstable_by(|a, b| a.netns.cmp(&b.netns));
    files
}
