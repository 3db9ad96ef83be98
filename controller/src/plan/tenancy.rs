//! The tenant boundary: which sandboxes an Attachment may use, which
//! namespaces a Network admits, which host ports and addresses its
//! PortMappings may publish.
//!
//! In Kubernetes mode the people writing Attachments are tenants and the
//! Network (cluster-scoped) is the admin's: a tenant gets only what is
//! theirs (`pod` and `attachment` sandboxes of their own namespace, ports
//! from 1024) unless the Network grants more. In standalone mode the
//! operator is root and every kind and port is allowed, as with Docker,
//! unless a Network lists its own (`allowedSandboxes`, `hostPorts`). In both
//! modes a `netns` or `path` sandbox that is the node's own namespace is
//! refused: the node's facts say which paths resolve to it, compared by
//! namespace identity (never by path), and the dataplane refuses to open it
//! again when it opens a sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use kube::core::{Selector, SelectorExt};

use super::attachment::{CheckedAttachment, SandboxChoice, SandboxRef};
use super::network::ResolvedNetwork;
use super::outcome::{reason, Failure};
use super::{Local, NodeFacts, Plan};
use crate::api::{NetworkSpec, SandboxKind};
use crate::objects::ObjectName;

/// Who writes the objects, as far as the plan must know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tenancy {
    /// Kubernetes mode: Attachments come from tenants.
    pub kubernetes: bool,
    /// Kubernetes mode: every Namespace's labels (`namespaceSelector`).
    pub namespace_labels: Arc<BTreeMap<String, BTreeMap<String, String>>>,
}

/// What Kubernetes mode allows when a Network does not say.
const KUBERNETES_SANDBOXES: [SandboxKind; 2] = [SandboxKind::Pod, SandboxKind::Attachment];
/// The lowest host port a Kubernetes-mode PortMapping may publish by
/// default: below it are the node's privileged services' ports.
pub const KUBERNETES_MIN_HOST_PORT: u16 = 1024;

/// A Network's tenancy fields, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkTenancy {
    allowed_sandboxes: Option<Vec<SandboxKind>>,
    namespace_selector: Option<Selector>,
    host_ports: (Option<u16>, Option<u16>),
    host_addresses: Vec<IpAddr>,
}

impl NetworkTenancy {
    pub fn resolve(spec: &NetworkSpec) -> Result<Self, Failure> {
        let namespace_selector = match &spec.namespace_selector {
            Some(selector) => {
                Some(Selector::try_from(selector.clone()).map_err(|e| Failure::invalid(format!("namespaceSelector: {}", e.0)))?)
            }
            None => None,
        };
        let host = spec.host_ports.clone().unwrap_or_default();
        if let (Some(min), Some(max)) = (host.min, host.max) {
            if min > max {
                return Err(Failure::invalid(format!("hostPorts.min {min} is above hostPorts.max {max}")));
            }
        }
        if host.min == Some(0) {
            return Err(Failure::invalid("hostPorts.min must be between 1 and 65535"));
        }
        let host_addresses = host
            .addresses
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| Failure::invalid(format!("hostPorts.addresses[{i}] {text:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetworkTenancy {
            allowed_sandboxes: spec.allowed_sandboxes.clone(),
            namespace_selector,
            host_ports: (host.min, host.max),
            host_addresses,
        })
    }

    /// The host ports (inclusive) its port mappings may publish.
    pub fn host_port_range(&self, tenancy: &Tenancy) -> (u16, u16) {
        let default_min = if tenancy.kubernetes { KUBERNETES_MIN_HOST_PORT } else { 1 };
        (self.host_ports.0.unwrap_or(default_min), self.host_ports.1.unwrap_or(u16::MAX))
    }
}

/// The kind of sandbox an attachment asked for (a pod's stays a pod once
/// its sandbox is found: a path the runtime made, not one the tenant gave).
pub fn kind_of(checked: &CheckedAttachment) -> SandboxKind {
    if checked.pod.is_some() {
        return SandboxKind::Pod;
    }
    match &checked.sandbox {
        SandboxChoice::Namespace(SandboxRef::Managed(_)) => SandboxKind::Netns,
        SandboxChoice::Namespace(SandboxRef::Path(_)) => SandboxKind::Path,
        SandboxChoice::SharedWith(_) => SandboxKind::Attachment,
        SandboxChoice::Host => SandboxKind::Host,
        SandboxChoice::Pod(_) | SandboxChoice::PodWaiting(_) => SandboxKind::Pod,
    }
}

/// Whose each named netns is (Kubernetes mode; empty otherwise).
#[derive(Default)]
pub struct NetnsClaims<'a> {
    /// netns name -> the namespace of the first attachment (in creation
    /// order) that names it, the one netlet makes it for.
    first: BTreeMap<&'a str, &'a str>,
    /// (namespace, sandbox path) that attachments' status, which only the
    /// agent writes, says netlet realized on this node: a namespace it made
    /// before its record of them was lost.
    reported: BTreeSet<(&'a str, &'a str)>,
}

impl<'a> NetnsClaims<'a> {
    pub fn of(local: &'a [Local<'_>], node: &NodeFacts) -> Self {
        let mut claims = NetnsClaims::default();
        if !node.tenancy.kubernetes {
            return claims;
        }
        for (key, att, checked) in local {
            let SandboxChoice::Namespace(SandboxRef::Managed(name)) = &checked.sandbox else { continue };
            let namespace = key.namespace().unwrap_or("default");
            claims.first.entry(name.as_str()).or_insert(namespace);
            let status = att.status.as_ref().filter(|s| s.node.as_deref() == Some(node.node_name.as_str()));
            if let Some(path) = status.and_then(|s| s.sandbox_path.as_deref()) {
                claims.reported.insert((namespace, path));
            }
        }
        claims
    }
}

/// Takes the attachments outside the tenant boundary out of `local`
/// (refused: `Forbidden`), before anything is allocated for them.
pub(super) fn refuse_outsiders(
    local: &mut Vec<Local<'_>>,
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    node: &NodeFacts,
    out: &mut Plan,
) {
    let tenants = NetnsClaims::of(local, node);
    let refused: BTreeMap<ObjectName, Failure> = local
        .iter()
        .filter_map(|(key, att, checked)| {
            let network = networks.get(&att.spec.network).and_then(|n| n.as_ref().ok());
            admit(key, checked, network, node, &tenants).err().map(|f| (key.clone(), f))
        })
        .collect();
    if refused.is_empty() {
        return;
    }
    local.retain(|(key, _, _)| !refused.contains_key(key));
    out.attachments.extend(refused.into_iter().map(|(key, f)| (key, Err(f))));
}

/// May this attachment use its sandbox on `network` (None: its network
/// does not exist, or it joins none of its own)? Every refusal is
/// `Forbidden`, with what was refused and what would allow it.
pub fn admit(
    key: &ObjectName,
    checked: &CheckedAttachment,
    network: Option<&ResolvedNetwork>,
    node: &NodeFacts,
    claims: &NetnsClaims<'_>,
) -> Result<(), Failure> {
    // (Empty but for a misdirected sandbox: no path is made to look it up.)
    if let (SandboxChoice::Namespace(sandbox), false) = (&checked.sandbox, node.node_namespace_at.is_empty()) {
        if let Some(resolved) = node.node_namespace_at.get(&sandbox.path()) {
            let field = match sandbox {
                SandboxRef::Managed(name) => format!("sandbox.netns {name:?} ({})", sandbox.path()),
                SandboxRef::Path(path) => format!("sandbox.path {path}"),
            };
            return Err(Failure::new(
                reason::FORBIDDEN,
                format!(
                    "{field} is the node's own network namespace ({resolved}); netlet never configures it through a netns or path sandbox (a host network with sandbox.host is the way to the node's namespace)"
                ),
            ));
        }
    }
    let tenancy = &node.tenancy;
    let namespace = key.namespace().unwrap_or("default");
    if let SandboxChoice::Namespace(sandbox @ SandboxRef::Managed(name)) = &checked.sandbox {
        if let Some(owner) = claims.first.get(name.as_str()).filter(|owner| **owner != namespace) {
            return Err(Failure::new(
                reason::FORBIDDEN,
                format!("sandbox.netns {name:?} is the sandbox of an attachment of namespace {owner}; an attachment may only use its own namespace's sandboxes"),
            ));
        }
        // Kubernetes mode: a namespace already on the node that netlet did
        // not make is a pod's (containerd's cni-<uuid>) or another program's.
        if tenancy.kubernetes && node.unowned_netns.contains(name) && !claims.reported.contains(&(namespace, sandbox.path().as_str())) {
            return Err(Failure::new(
                reason::FORBIDDEN,
                format!("sandbox.netns {name:?} is a namespace on the node that netlet did not make (a pod's, or another program's); an attachment may only use a netns netlet makes for its namespace"),
            ));
        }
    }
    let Some(network) = network else { return Ok(()) };
    // A list the network gives holds in every mode; without one,
    // Kubernetes mode allows a tenant's own kinds, standalone every kind.
    let listed = network.tenancy.allowed_sandboxes.as_deref();
    let allowed = listed.or(tenancy.kubernetes.then_some(&KUBERNETES_SANDBOXES[..]));
    let kind = kind_of(checked);
    if let Some(allowed) = allowed.filter(|allowed| !allowed.contains(&kind)) {
        let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
        return Err(Failure::new(
            reason::FORBIDDEN,
            format!(
                "network {:?} does not allow {} sandboxes (spec.allowedSandboxes: [{}]{})",
                network.name,
                kind.as_str(),
                names.join(", "),
                if listed.is_none() { ", the Kubernetes-mode default" } else { "" }
            ),
        ));
    }
    if !tenancy.kubernetes {
        return Ok(());
    }
    if let Some(selector) = &network.tenancy.namespace_selector {
        let none = BTreeMap::new();
        let labels = tenancy.namespace_labels.get(namespace).unwrap_or(&none);
        if !selector.matches(labels) {
            return Err(Failure::new(
                reason::FORBIDDEN,
                format!(
                    "network {:?} does not admit namespace {namespace}: its labels do not match spec.namespaceSelector ({selector})",
                    network.name
                ),
            ));
        }
    }
    Ok(())
}

/// May a binding of `host_port` on `host_ip` (None: every address) be
/// published for an attachment on `network`?
pub fn check_host_binding(network: &ResolvedNetwork, tenancy: &Tenancy, host_ip: Option<IpAddr>, host_port: u16) -> Result<(), Failure> {
    let (min, max) = network.tenancy.host_port_range(tenancy);
    if !(min..=max).contains(&host_port) {
        return Err(Failure::new(
            reason::FORBIDDEN,
            format!(
                "host port {host_port} is outside the ports network {:?} lets its attachments publish ({min}-{max}, spec.hostPorts)",
                network.name
            ),
        ));
    }
    let allowed = &network.tenancy.host_addresses;
    if !allowed.is_empty() && !host_ip.is_some_and(|ip| allowed.contains(&ip)) {
        let listed: Vec<String> = allowed.iter().map(|ip| ip.to_string()).collect();
        return Err(Failure::new(
            reason::FORBIDDEN,
            format!(
                "host address {} is not one network {:?} lets its attachments publish on (spec.hostPorts.addresses: {})",
                host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0 (every address)".into()),
                network.name,
                listed.join(", ")
            ),
        ));
    }
    Ok(())
}
