//! The `netlet.io/networks` pod annotation, in Multus' network-selection
//! syntax, and the Attachments it stands for.
//!
//! Two forms, as Multus takes them:
//! - a comma-separated list of `network[@interface]`: `blue, red@eth2`;
//! - a JSON list of objects with `name`, and optionally `interface`, `ips`
//!   (addresses, a prefix length allowed and ignored: the network's subnet
//!   decides it) and `mac`.
//!
//! Interfaces without a name are `net1`, `net2`, ... by position (Multus'
//! habit), so a pod's first interface on netlet is `net1` beside the
//! primary network's `eth0`. netlet Networks are cluster-scoped: Multus'
//! `namespace/network` form is refused, with its reason.
//!
//! Each selected network becomes an Attachment named `<pod>-<interface>`
//! in the pod's namespace, owned by the pod (Kubernetes' garbage
//! collector removes it with the pod) and labelled [`POD_LABEL`].

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Deserialize;

use crate::api::{Attachment, AttachmentSpec, Sandbox};

pub const NETWORKS_ANNOTATION: &str = "netlet.io/networks";
/// Where the agent reports what a pod got, in the spirit of Multus'
/// `k8s.v1.cni.cncf.io/network-status`.
pub const NETWORK_STATUS_ANNOTATION: &str = "netlet.io/network-status";
/// On Attachments made from the annotation: the pod they belong to.
pub const POD_LABEL: &str = "netlet.io/pod";

/// One network a pod asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub network: String,
    pub interface: String,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub mac: Option<String>,
}

/// Multus' JSON form of one selection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSelection {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}

/// Parses the annotation's value; the error says what is wrong with it.
pub fn parse(value: &str) -> Result<Vec<Selection>, String> {
    let value = value.trim();
    let raw: Vec<JsonSelection> = if value.starts_with('[') {
        serde_json::from_str(value).map_err(|e| format!("{NETWORKS_ANNOTATION} is not a valid JSON list of networks: {e}"))?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (name, interface) = match item.split_once('@') {
                    Some((name, interface)) => (name.trim(), Some(interface.trim().to_string())),
                    None => (item, None),
                };
                let (namespace, name) = match name.split_once('/') {
                    Some((ns, name)) => (Some(ns.to_string()), name),
                    None => (None, name),
                };
                JsonSelection { name: name.to_string(), namespace, interface, ips: Vec::new(), mac: None }
            })
            .collect()
    };
    let mut out: Vec<Selection> = Vec::with_capacity(raw.len());
    for (position, s) in raw.into_iter().enumerate() {
        if let Some(ns) = s.namespace {
            return Err(format!("{}/{}: netlet networks are cluster-scoped; name the network without a namespace", ns, s.name));
        }
        let network_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if s.name.is_empty() || !s.name.chars().all(network_name) {
            return Err(format!("entry {} ({:?}) is not a network name", position + 1, s.name));
        }
        let interface = s.interface.unwrap_or_else(|| format!("net{}", position + 1));
        crate::naming::check_ifname(&interface).map_err(|e| format!("network {}: interface: {e}", s.name))?;
        if let Some(other) = out.iter().find(|o| o.interface == interface) {
            return Err(format!("networks {} and {} both ask for interface {interface}", other.network, s.name));
        }
        let mut selection = Selection { network: s.name, interface, mac: s.mac, ..Selection::default() };
        for ip in &s.ips {
            let addr: IpAddr = ip
                .split('/')
                .next()
                .unwrap_or_default()
                .trim()
                .parse()
                .map_err(|_| format!("network {}: {ip:?} is not an IP address", selection.network))?;
            let slot = if addr.is_ipv4() { &mut selection.ipv4 } else { &mut selection.ipv6 };
            if slot.replace(addr).is_some() {
                return Err(format!("network {}: one address per family ({ip} is the second)", selection.network));
            }
        }
        out.push(selection);
    }
    Ok(out)
}

/// The name of the Attachment a pod's selection becomes.
pub fn attachment_name(pod: &str, selection: &Selection) -> String {
    format!("{pod}-{}", selection.interface)
}

/// The Attachment a selection of pod `pod` (namespace, name, UID) becomes.
pub fn attachment_for(namespace: &str, pod: &str, uid: &str, selection: &Selection) -> Attachment {
    let spec = AttachmentSpec {
        network: selection.network.clone(),
        sandbox: Sandbox { pod: Some(pod.to_string()), ..Sandbox::default() },
        interface: Some(selection.interface.clone()),
        ipv4_address: selection.ipv4.map(|ip| ip.to_string()),
        ipv6_address: selection.ipv6.map(|ip| ip.to_string()),
        mac_address: selection.mac.clone(),
        ..AttachmentSpec::default()
    };
    let mut att = Attachment::new(&attachment_name(pod, selection), spec);
    att.metadata.namespace = Some(namespace.to_string());
    att.metadata.labels = Some([(POD_LABEL.to_string(), pod.to_string())].into());
    att.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.to_string(),
        uid: uid.to_string(),
        ..OwnerReference::default()
    }]);
    att
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(selections: &[Selection]) -> Vec<(String, String)> {
        selections.iter().map(|s| (s.network.clone(), s.interface.clone())).collect()
    }

    #[test]
    fn the_short_form_names_networks_and_interfaces_by_position() {
        let s = parse(" blue, red@eth2 ,green").unwrap();
        assert_eq!(
            names(&s),
            [("blue".into(), "net1".into()), ("red".into(), "eth2".into()), ("green".into(), "net3".into())],
            "net<position>, as Multus numbers them"
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn the_json_form_carries_addresses_and_a_mac() {
        let s = parse(
            r#"[{"name": "blue", "interface": "data", "ips": ["10.1.0.7/24", "fd00::7"], "mac": "02:00:00:00:00:07"}, {"name": "red"}]"#,
        )
        .unwrap();
        assert_eq!(names(&s), [("blue".into(), "data".into()), ("red".into(), "net2".into())]);
        assert_eq!(s[0].ipv4, Some("10.1.0.7".parse().unwrap()), "the prefix is the subnet's business");
        assert_eq!(s[0].ipv6, Some("fd00::7".parse().unwrap()));
        assert_eq!(s[0].mac.as_deref(), Some("02:00:00:00:00:07"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_its_reason() {
        let refused = |text: &str| parse(text).unwrap_err();
        assert!(refused("other/blue").contains("cluster-scoped"), "{}", refused("other/blue"));
        assert!(refused("blue@eth0, red@eth0").contains("both ask for interface eth0"));
        assert!(refused("blue@this-name-is-far-too-long").contains("interface"));
        assert!(refused(r#"[{"name": "blue", "ips": ["nope"]}]"#).contains("not an IP address"));
        assert!(refused(r#"[{"name": "blue", "ips": ["10.0.0.1", "10.0.0.2"]}]"#).contains("one address per family"));
        assert!(refused(r#"[{"name": "blue", "bogus": 1}]"#).contains("not a valid JSON list"));
        assert!(refused(r#"{"name": "blue"}"#).contains("not a network name"), "an object is not a list");
        assert!(refused("blue,,@eth1").contains("not a network name"));
    }

    #[test]
    fn a_selection_becomes_an_attachment_owned_by_the_pod() {
        let s = &parse(r#"[{"name": "blue", "ips": ["10.1.0.7"]}]"#).unwrap()[0];
        let att = attachment_for("team", "web-0", "u-1", s);
        assert_eq!(att.metadata.name.as_deref(), Some("web-0-net1"));
        assert_eq!(att.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(att.spec.sandbox.pod.as_deref(), Some("web-0"));
        assert_eq!((att.spec.network.as_str(), att.spec.ipv4_address.as_deref()), ("blue", Some("10.1.0.7")));
        let owner = &att.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Pod", "web-0", "u-1"));
        assert_eq!(att.metadata.labels.unwrap()[POD_LABEL], "web-0");
    }
}
