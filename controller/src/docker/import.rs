//! `netlet import docker`: what `docker network inspect NET...` and
//! `docker inspect CONTAINER...` print (one JSON array, several
//! concatenated, networks and containers mixed) becomes netlet objects.
//!
//! Networks keep their driver, IPAM, `internal`, IPv6, the
//! `com.docker.network.*` options netlet has fields for, and labels.
//! Containers become Attachments (one per network, the addresses and MAC
//! Docker assigned made static so that applying the YAML reproduces them)
//! and PortMappings (see `import_containers`). Docker's own `bridge`,
//! `host` and `none` are netlet's default networks of the same names
//! (`manifests/default-networks.yaml`) and are not written again.
//!
//! Whatever cannot be carried over is a [`Dropped`] entry naming the object,
//! the field and the reason; nothing is dropped silently. Docker's JSON is
//! read as untyped values on purpose: every key of a network is looked at,
//! so one a newer Docker adds is reported, not ignored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::import_containers::containers;
use crate::api::{
    docker_options, Attachment, BridgeOptions, Driver, Ipam, IpamConfig, MacvlanMode, MacvlanOptions, Network, NetworkSpec, OverlayOptions,
    PortMapping,
};

/// Docker's default networks, which netlet ships under the same names.
pub const DEFAULT_NETWORKS: [&str; 3] = ["bridge", "host", "none"];
/// The subnet of netlet's default `bridge` network.
const DEFAULT_BRIDGE_SUBNET: &str = "172.17.0.0/16";

/// Something of Docker's that the netlet objects do not carry, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// `network NAME` or `container NAME`.
    pub object: String,
    /// The field, as Docker's JSON path (`IPAM.Options`, ...).
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// The objects made from one input, and what could not come along.
#[derive(Debug, Default)]
pub struct Imported {
    pub networks: Vec<Network>,
    pub attachments: Vec<Attachment>,
    pub port_mappings: Vec<PortMapping>,
    pub dropped: Vec<Dropped>,
}

impl Imported {
    pub(super) fn drop_field(&mut self, object: &str, field: &str, reason: impl Into<String>) {
        self.dropped.push(Dropped { object: object.into(), field: field.into(), reason: reason.into() });
    }

    /// The objects as one multi-document YAML stream: networks, then
    /// attachments, then port mappings, each in input order.
    pub fn to_yaml(&self) -> String {
        let docs = self
            .networks
            .iter()
            .map(serde_yaml::to_string)
            .chain(self.attachments.iter().map(serde_yaml::to_string))
            .chain(self.port_mappings.iter().map(serde_yaml::to_string));
        docs.map(|d| d.expect("objects serialize")).collect::<Vec<_>>().join("---\n")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not Docker inspect JSON: {0} (expected what `docker network inspect` or `docker inspect` prints)")]
    Json(#[from] serde_json::Error),
    #[error("no networks or containers found in the input")]
    Empty,
}

/// Reads every JSON value in `text` (arrays are flattened) and converts
/// the networks and containers among them.
pub fn import(text: &str) -> Result<Imported, ImportError> {
    let mut items = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value? {
            Value::Array(list) => items.extend(list),
            other => items.push(other),
        }
    }
    let mut out = Imported::default();
    let (mut nets, mut ctrs) = (Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        if item.get("NetworkSettings").is_some() || item.get("HostConfig").is_some() {
            ctrs.push(item);
        } else if item.get("IPAM").is_some() || item.get("Driver").is_some() && item.get("Containers").is_some() {
            nets.push(item);
        } else {
            out.drop_field(&format!("item {}", i + 1), "(whole object)", "neither a network nor a container");
        }
    }
    if nets.is_empty() && ctrs.is_empty() {
        return Err(ImportError::Empty);
    }
    let mut known = Networks::default();
    for net in &nets {
        network(net, &mut out, &mut known);
    }
    containers(&ctrs, &nets, &known, &mut out);
    Ok(out)
}

/// What the converted networks tell the containers' conversion.
#[derive(Debug, Default)]
pub(super) struct Networks {
    /// Networks of the input, by name: `true` when netlet can carry them.
    pub carried: BTreeMap<String, bool>,
}

pub(super) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A value worth mentioning when dropped: not null, "", false, [], nor an
/// object of only such values (`"ConfigFrom": {"Network": ""}`).
pub(super) fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(is_set),
        Value::Number(_) => true,
    }
}

fn network(v: &Value, out: &mut Imported, known: &mut Networks) {
    let name = str_of(v, "Name").to_string();
    let object = format!("network {name}");
    let driver = str_of(v, "Driver");
    let options: BTreeMap<String, String> = v
        .get("Options")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let default_driver = matches!((name.as_str(), driver), ("bridge", "bridge") | ("host", "host") | ("none", "null"));
    if default_driver {
        known.carried.insert(name.clone(), true);
        let subnet = v.pointer("/IPAM/Config/0/Subnet").and_then(Value::as_str).unwrap_or(DEFAULT_BRIDGE_SUBNET);
        let note = if name == "bridge" && subnet != DEFAULT_BRIDGE_SUBNET {
            format!(
                "Docker's default network is netlet's default `{name}` (manifests/default-networks.yaml), whose subnet is \
                 {DEFAULT_BRIDGE_SUBNET}, not {subnet}: edit that file to keep {subnet}"
            )
        } else {
            format!("Docker's default network is netlet's default `{name}` (manifests/default-networks.yaml), not written again")
        };
        out.drop_field(&object, "(whole network)", note);
        return;
    }
    let mut spec = NetworkSpec::default();
    let carried = match driver {
        "bridge" | "" => {
            spec.driver = Driver::Bridge;
            true
        }
        "macvlan" => {
            spec.driver = Driver::Macvlan;
            true
        }
        "overlay" => {
            spec.driver = Driver::Overlay;
            true
        }
        "host" => {
            spec.driver = Driver::Host;
            true
        }
        "null" => {
            spec.driver = Driver::Null;
            true
        }
        other => {
            out.drop_field(&object, "Driver", format!("netlet has no {other:?} driver (it has bridge, macvlan, overlay, host, null)"));
            false
        }
    };
    known.carried.insert(name.clone(), carried);
    if !carried {
        return;
    }
    let mut metadata_labels = None;
    for (key, value) in v.as_object().into_iter().flatten() {
        match key.as_str() {
            "Name" | "Driver" | "Options" | "IPAM" | "Containers" | "Peers" => {}
            "Created" => {}
            "Id" => out.drop_field(&object, "Id, Created", "Docker's own identity and time: netlet objects are known by name"),
            "Scope" => match value.as_str().unwrap_or_default() {
                "" | "local" => {}
                "swarm" => out.drop_field(&object, key, "a swarm network: netlet realizes it per node (overlay peers are listed by hand)"),
                other => out.drop_field(&object, key, format!("scope {other:?}: netlet networks are realized per node")),
            },
            "EnableIPv4" if value.as_bool() == Some(true) => {}
            "EnableIPv4" => out.drop_field(&object, key, "netlet networks always have IPv4"),
            _ if !is_set(value) => {}
            "Internal" => spec.internal = value.as_bool().unwrap_or(false),
            "EnableIPv6" => spec.enable_ipv6 = value.as_bool().unwrap_or(false),
            "Labels" => {
                let labels: BTreeMap<String, String> =
                    value.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
                metadata_labels = Some(labels).filter(|l| !l.is_empty());
            }
            "Attachable" => out.drop_field(&object, key, "swarm attachability: every netlet network takes Attachments"),
            "Ingress" => out.drop_field(&object, key, "swarm's routing mesh has no netlet counterpart"),
            "ConfigFrom" | "ConfigOnly" => out.drop_field(&object, key, "config-only networks have no netlet counterpart"),
            _ => out.drop_field(&object, key, "not understood by this netlet"),
        }
    }
    ipam(v, &object, &mut spec, out);
    network_options(&options, &object, &name, &mut spec, out);
    let mut net = Network::new(&name, spec);
    net.metadata.labels = metadata_labels;
    out.networks.push(net);
}

fn ipam(v: &Value, object: &str, spec: &mut NetworkSpec, out: &mut Imported) {
    let Some(ipam) = v.get("IPAM") else { return };
    let driver = str_of(ipam, "Driver");
    if !driver.is_empty() && driver != "default" {
        out.drop_field(object, "IPAM.Driver", format!("IPAM driver {driver:?}: netlet allocates addresses itself"));
    }
    if ipam.get("Options").is_some_and(is_set) {
        out.drop_field(object, "IPAM.Options", "IPAM driver options have no netlet counterpart");
    }
    let mut config = Vec::new();
    for c in ipam.get("Config").and_then(Value::as_array).into_iter().flatten() {
        let text = |k: &str| Some(str_of(c, k)).filter(|s| !s.is_empty()).map(str::to_string);
        let Some(subnet) = text("Subnet") else {
            out.drop_field(object, "IPAM.Config[]", "an entry without a subnet");
            continue;
        };
        let aux_addresses = c
            .get("AuxiliaryAddresses")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        config.push(IpamConfig { subnet, gateway: text("Gateway"), ip_range: text("IPRange"), aux_addresses });
    }
    spec.ipam = Ipam { config };
}

fn network_options(options: &BTreeMap<String, String>, object: &str, name: &str, spec: &mut NetworkSpec, out: &mut Imported) {
    let mut bridge = BridgeOptions::default();
    let flag = |v: &str| v.parse::<bool>().ok();
    for (key, value) in options {
        let field = format!("Options.{key}");
        match key.as_str() {
            docker_options::BRIDGE_NAME if spec.driver == Driver::Bridge => bridge.name = Some(value.clone()),
            docker_options::ENABLE_ICC if spec.driver == Driver::Bridge => bridge.icc = flag(value).filter(|on| !on),
            docker_options::ENABLE_IP_MASQUERADE if spec.driver == Driver::Bridge => bridge.ip_masquerade = flag(value).filter(|on| !on),
            docker_options::HOST_BINDING_IPV4 if spec.driver == Driver::Bridge => {
                bridge.host_binding_ipv4 = Some(value.clone()).filter(|v| v != "0.0.0.0")
            }
            docker_options::MTU => spec.mtu = value.parse().ok().filter(|m| *m != 1500),
            "parent" if spec.driver == Driver::Macvlan => spec.macvlan.get_or_insert_with(MacvlanOptions::default).parent = value.clone(),
            "macvlan_mode" if spec.driver == Driver::Macvlan => match serde_json::from_value::<MacvlanMode>(Value::String(value.clone())) {
                Ok(mode) => spec.macvlan.get_or_insert_with(MacvlanOptions::default).mode = mode,
                Err(_) => out.drop_field(object, &field, format!("macvlan mode {value:?} is not bridge, private, vepa or passthru")),
            },
            "com.docker.network.driver.overlay.vxlanid_list" if spec.driver == Driver::Overlay => {
                match value.split(',').next().and_then(|v| v.trim().parse().ok()) {
                    Some(vni) => {
                        spec.overlay = Some(OverlayOptions { vni, ..Default::default() });
                        out.drop_field(
                            object,
                            "Peers",
                            "swarm finds overlay peers itself: list every node's address in spec.overlay.peers \
                             (Kubernetes mode finds them)",
                        );
                    }
                    None => out.drop_field(object, &field, format!("VNI list {value:?} is not a number")),
                }
            }
            "com.docker.network.bridge.default_bridge" => {}
            _ => out.drop_field(object, &field, format!("option not supported by netlet's {} driver", spec.driver.as_str())),
        }
    }
    if spec.driver == Driver::Macvlan && spec.macvlan.as_ref().is_none_or(|m| m.parent.is_empty()) {
        out.drop_field(object, "Options.parent", "missing: set spec.macvlan.parent to this node's uplink");
    }
    if spec.driver == Driver::Overlay && spec.overlay.is_none() {
        out.drop_field(object, "Options", format!("no VNI: set spec.overlay.vni for {name}"));
    }
    if bridge != BridgeOptions::default() {
        spec.bridge = Some(bridge);
    }
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
