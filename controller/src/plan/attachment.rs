//! Attachment validation: everything that can be checked from the object alone.

use std::net::IpAddr;

use kube::ResourceExt;

use super::outcome::{reason, Failure};
use crate::api::Attachment;
use crate::naming;

/// Where an attachment's interface lives, as the dataplane sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum SandboxRef {
    /// `/run/netns/<name>`, created and removed by netlet.
    Managed(String),
    /// An existing namespace file, never created or deleted by netlet.
    Path(String),
}

pub const NETNS_DIR: &str = "/run/netns";

impl SandboxRef {
    pub fn path(&self) -> String {
        match self {
            SandboxRef::Managed(name) => format!("{NETNS_DIR}/{name}"),
            SandboxRef::Path(path) => path.clone(),
        }
    }
    /// The netns name (managed sandboxes only), used for DNS and /etc/netns.
    pub fn netns_name(&self) -> Option<&str> {
        match self {
            SandboxRef::Managed(name) => Some(name),
            SandboxRef::Path(_) => None,
        }
    }
}

/// The sandbox variant an attachment asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxChoice {
    Namespace(SandboxRef),
    /// Share another Attachment's namespace (same Kubernetes namespace).
    SharedWith(String),
    Host,
    /// A pod (same Kubernetes namespace) by name, until the plan finds its
    /// sandbox (see `pods`).
    Pod(String),
    /// A pod whose sandbox is not there: addresses are held, nothing is
    /// realized, and this is why.
    PodWaiting(Failure),
}

/// The checked, parsed parts of an Attachment spec.
#[derive(Clone, Debug)]
pub struct CheckedAttachment {
    pub sandbox: SandboxChoice,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub mac: Option<[u8; 6]>,
    /// A pod sandbox: which pod and sandbox it resolved to.
    pub pod: Option<crate::api::PodSandboxStatus>,
}

impl CheckedAttachment {
    /// Takes addresses on its network (realized now or held for later).
    pub fn holds_addresses(&self) -> bool {
        matches!(self.sandbox, SandboxChoice::Namespace(_) | SandboxChoice::PodWaiting(_))
    }
}

fn check_netns_name(name: &str) -> Result<(), Failure> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.len() > 255
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Failure::invalid(format!("sandbox.netns {name:?} is not a valid namespace name (no '/', whitespace, '.' or '..')")));
    }
    Ok(())
}

fn check_dns_name(what: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Failure::invalid(format!("{what} {name:?} is not a valid DNS name")))
    }
}

pub fn check(att: &Attachment) -> Result<CheckedAttachment, Failure> {
    let spec = &att.spec;
    let sb = &spec.sandbox;
    let chosen = [sb.netns.is_some(), sb.path.is_some(), sb.attachment.is_some(), sb.host.unwrap_or(false), sb.pod.is_some()];
    let sandbox = match chosen.iter().filter(|x| **x).count() {
        0 => return Err(Failure::invalid("sandbox needs exactly one of netns, path, attachment, pod or host: true; none is set")),
        1 => {
            if let Some(name) = &sb.netns {
                check_netns_name(name)?;
                SandboxChoice::Namespace(SandboxRef::Managed(name.clone()))
            } else if let Some(path) = &sb.path {
                if !path.starts_with('/') {
                    return Err(Failure::invalid(format!("sandbox.path {path:?} must be an absolute path")));
                }
                SandboxChoice::Namespace(SandboxRef::Path(path.clone()))
            } else if let Some(owner) = &sb.attachment {
                if owner == &att.name_any() {
                    return Err(Failure::invalid("sandbox.attachment names the attachment itself"));
                }
                if owner.contains('/') {
                    return Err(Failure::new(
                        reason::FORBIDDEN,
                        format!("sandbox.attachment {owner:?} reaches outside the attachment's namespace: only an Attachment of the same namespace can be shared"),
                    ));
                }
                SandboxChoice::SharedWith(owner.clone())
            } else if let Some(pod) = &sb.pod {
                check_dns_name("sandbox.pod", pod)?;
                SandboxChoice::Pod(pod.clone())
            } else {
                SandboxChoice::Host
            }
        }
        _ => {
            let names: Vec<&str> =
                ["netns", "path", "attachment", "host", "pod"].iter().zip(chosen).filter(|(_, set)| *set).map(|(n, _)| *n).collect();
            return Err(Failure::invalid(format!(
                "sandbox needs exactly one of netns, path, attachment, pod or host: true; {} are all set",
                names.join(", ")
            )));
        }
    };
    if let Some(ifname) = &spec.interface {
        naming::check_ifname(ifname).map_err(|e| Failure::invalid(format!("interface: {e}")))?;
    }
    let ipv4 = match &spec.ipv4_address {
        Some(text) => {
            let ip: IpAddr =
                text.trim().parse().map_err(|_| Failure::invalid(format!("ipv4Address {text:?} is not a valid IPv4 address")))?;
            if !ip.is_ipv4() {
                return Err(Failure::invalid(format!("ipv4Address {text:?} is not an IPv4 address")));
            }
            Some(ip)
        }
        None => None,
    };
    let ipv6 = match &spec.ipv6_address {
        Some(text) => {
            let ip: IpAddr =
                text.trim().parse().map_err(|_| Failure::invalid(format!("ipv6Address {text:?} is not a valid IPv6 address")))?;
            if !ip.is_ipv6() {
                return Err(Failure::invalid(format!("ipv6Address {text:?} is not an IPv6 address")));
            }
            Some(ip)
        }
        None => None,
    };
    let mac = match &spec.mac_address {
        Some(text) => Some(naming::parse_mac(text).map_err(|e| Failure::invalid(format!("macAddress: {e}")))?),
        None => None,
    };
    for alias in &spec.aliases {
        check_dns_name("alias", alias)?;
    }
    if let Some(hostname) = &spec.hostname {
        check_dns_name("hostname", hostname)?;
    }
    for entry in &spec.extra_hosts {
        let (name, addr) =
            entry.split_once(':').ok_or_else(|| Failure::invalid(format!("extraHosts entry {entry:?} is not of the form name:address")))?;
        check_dns_name("extraHosts name", name)?;
        addr.parse::<IpAddr>().map_err(|_| Failure::invalid(format!("extraHosts entry {entry:?}: {addr:?} is not an IP address")))?;
    }
    if let Some(dns) = &spec.dns {
        for ns in &dns.nameservers {
            ns.parse::<IpAddr>().map_err(|_| Failure::invalid(format!("dns.nameservers entry {ns:?} is not an IP address")))?;
        }
    }
    for exposed in &spec.expose {
        if exposed.port == 0 {
            return Err(Failure::invalid("expose: port 0 is not a valid port"));
        }
    }
    Ok(CheckedAttachment { sandbox, ipv4, ipv6, mac, pod: None })
}
