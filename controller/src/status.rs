//! Status: computed from the plan and the dataplane's report, merged with
//! the previous status (so `lastTransitionTime` only moves on a flip), and
//! written only when it changed.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{json, Value};

use crate::api::{
    merge_condition, Attachment, AttachmentStatus, Condition, Kind, Network, NetworkStatus, PortMapping, PortMappingStatus, API_VERSION,
};
use crate::dataplane::SyncReport;
use crate::objects::{attachment_key, network_key, port_mapping_key, KindName, ObjectKey, ObjectSet};
use crate::plan::outcome::{reason, Failure};
use crate::plan::{is_local, Plan};
use crate::source::manifests::LoadError;
use crate::state::StatusStore;

/// One object's verdict, for `--once` output and metrics.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub key: ObjectKey,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

pub struct Computed {
    pub store: StatusStore,
    pub verdicts: Vec<Verdict>,
}

/// Key of a stored object (apiVersion/kind/metadata).
pub fn key_of(value: &Value) -> Option<ObjectKey> {
    let kind = Kind::parse(value.get("kind")?.as_str()?)?;
    let meta = value.get("metadata")?;
    Some(ObjectKey {
        kind: KindName::from(kind),
        namespace: meta.get("namespace").and_then(Value::as_str).map(String::from),
        name: meta.get("name")?.as_str()?.to_string(),
    })
}

fn previous_conditions(previous: &StatusStore) -> BTreeMap<ObjectKey, Vec<Condition>> {
    previous
        .iter()
        .filter_map(|v| {
            let conditions = serde_json::from_value(v.get("status")?.get("conditions")?.clone()).ok()?;
            Some((key_of(v)?, conditions))
        })
        .collect()
}

struct Builder<'a> {
    previous: BTreeMap<ObjectKey, Vec<Condition>>,
    now: &'a str,
    store: StatusStore,
    verdicts: Vec<Verdict>,
}

impl Builder<'_> {
    fn condition(&mut self, key: &ObjectKey, generation: Option<i64>, result: &Result<(), Failure>) -> Vec<Condition> {
        let mut c = match result {
            Ok(()) => Condition::ready(true, reason::READY, "realized on the node"),
            Err(f) => Condition::ready(false, f.reason, f.message.clone()),
        };
        c.observed_generation = generation;
        self.verdicts.push(Verdict { key: key.clone(), ready: result.is_ok(), reason: c.reason.clone(), message: c.message.clone() });
        let previous = self.previous.get(key).cloned().unwrap_or_default();
        merge_condition(&previous, c, self.now)
    }

    fn push<T: serde::Serialize>(&mut self, object: &T, status: Value) {
        let mut value = serde_json::to_value(object).expect("objects serialize");
        value["status"] = status;
        self.store.push(value);
    }
}

/// Standalone objects have no generation; report 1 so observedGeneration is meaningful.
fn generation<K: ResourceExt>(o: &K) -> Option<i64> {
    Some(o.meta().generation.unwrap_or(1))
}

pub fn compute(
    objects: &ObjectSet,
    plan: &Plan,
    report: &SyncReport,
    load_errors: &[LoadError],
    previous: &StatusStore,
    node: &str,
    now: &str,
) -> Computed {
    let mut b = Builder { previous: previous_conditions(previous), now, store: Vec::new(), verdicts: Vec::new() };

    for net in &objects.networks {
        let key = network_key(net);
        let planned = plan.networks.get(&net.name_any());
        let result = match (planned, report.network_errors.get(&net.name_any())) {
            (Some(Err(f)), _) | (_, Some(f)) => Err(f.clone()),
            (Some(Ok(_)), None) => Ok(()),
            (None, None) => Err(Failure::new(reason::KERNEL_ERROR, "not planned")),
        };
        let info = planned.and_then(|p| p.as_ref().ok());
        let conditions = b.condition(&key, generation(net), &result);
        let status = NetworkStatus {
            conditions,
            bridge: info.and_then(|i| i.bridge.clone()),
            gateways: info.map(|i| i.gateways.clone()).unwrap_or_default(),
            attachments: info.map(|i| i.attachments).unwrap_or(0),
            observed_generation: generation(net),
            nodes: Vec::new(),
            address_blocks: Vec::new(),
            mtu: info.and_then(|i| i.mtu),
            unreachable_peers: unreachable_peers(net, report),
        };
        b.push::<Network>(net, serde_json::to_value(status).expect("status serializes"));
    }

    for att in objects.attachments.iter().filter(|a| is_local(a, node)) {
        let key = attachment_key(att);
        let ns_name = key.ns_name();
        let planned = plan.attachments.get(&ns_name);
        let owner_failure = att.spec.sandbox.attachment.as_ref().and_then(|owner| {
            let owner_key = format!("{}/{owner}", key.namespace.as_deref().unwrap_or("default"));
            report.endpoint_errors.get(&owner_key).map(|f| {
                Failure::new(
                    reason::SANDBOX_OWNER_GONE,
                    format!("attachment {owner_key}, whose namespace this one shares, is not ready: {}", f.message),
                )
            })
        });
        let network_failure = report
            .network_errors
            .get(&att.spec.network)
            .map(|f| Failure::new(reason::NETWORK_NOT_READY, format!("network {} is not ready: {}", att.spec.network, f.message)));
        let result = match planned {
            Some(Err(f)) => Err(f.clone()),
            None => Err(Failure::new(reason::KERNEL_ERROR, "not planned")),
            Some(Ok(_)) => match report.endpoint_errors.get(&ns_name).cloned().or(owner_failure).or(network_failure) {
                Some(f) => Err(f),
                None => Ok(()),
            },
        };
        let info = planned.and_then(|p| p.as_ref().ok()).filter(|_| result.is_ok());
        let conditions = b.condition(&key, generation(att), &result);
        let status = AttachmentStatus {
            phase: if result.is_ok() { "Ready" } else { "Failed" }.into(),
            node: Some(node.to_string()),
            interface: info.and_then(|i| i.interface.clone()),
            host_interface: info.and_then(|i| i.host_interface.clone()),
            ipv4_address: info.and_then(|i| i.ipv4.map(|n| n.to_string())),
            ipv6_address: info.and_then(|i| i.ipv6.map(|n| n.to_string())),
            gateway: info.and_then(|i| i.gateway.map(|g| g.to_string())),
            ipv6_gateway: info.and_then(|i| i.ipv6_gateway.map(|g| g.to_string())),
            mac_address: info.and_then(|i| i.mac.clone()),
            sandbox_path: info.and_then(|i| i.sandbox_path.clone()),
            observed_generation: generation(att),
            conditions,
        };
        let mut status = serde_json::to_value(status).expect("status serializes");
        if let Some(i) = info.filter(|i| !i.node_addresses.is_empty()) {
            status["nodeAddresses"] = json!(i.node_addresses);
        }
        b.push::<Attachment>(att, status);
    }

    let ready_attachments: BTreeMap<String, bool> =
        b.verdicts.iter().filter(|v| v.key.kind == KindName::Attachment).map(|v| (v.key.ns_name(), v.ready)).collect();
    for pm in &objects.port_mappings {
        let key = port_mapping_key(pm);
        let Some(planned) = plan.port_mappings.get(&key.ns_name()) else {
            continue;
        };
        let att_key = format!("{}/{}", key.namespace.as_deref().unwrap_or("default"), pm.spec.attachment);
        let result = match planned {
            Err(f) => Err(f.clone()),
            Ok(_) if ready_attachments.get(&att_key) == Some(&false) => {
                Err(Failure::new(reason::ATTACHMENT_NOT_READY, format!("attachment {att_key} is not ready")))
            }
            Ok(_) => match &report.firewall_error {
                Some(e) => Err(Failure::new(reason::KERNEL_ERROR, format!("firewall: {e}"))),
                None => Ok(()),
            },
        };
        let conditions = b.condition(&key, generation(pm), &result);
        let status = PortMappingStatus {
            bindings: planned.as_ref().ok().filter(|_| result.is_ok()).cloned().unwrap_or_default(),
            observed_generation: generation(pm),
            conditions,
        };
        b.push::<PortMapping>(pm, serde_json::to_value(status).expect("status serializes"));
    }

    // Objects that could not even be parsed still get a status.
    for err in load_errors {
        let Some(key) = &err.key else { continue };
        if b.store.iter().any(|v| key_of(v).as_ref() == Some(key)) {
            continue;
        }
        let conditions = b.condition(key, Some(1), &Err(Failure::invalid(err.message.clone())));
        let mut metadata = json!({"name": key.name});
        if let Some(ns) = &key.namespace {
            metadata["namespace"] = json!(ns);
        }
        b.store.push(json!({
            "apiVersion": API_VERSION,
            "kind": Kind::from(key.kind).as_str(),
            "metadata": metadata,
            "status": {"conditions": conditions},
        }));
    }
    Computed { store: b.store, verdicts: b.verdicts }
}

/// `node (VTEP)` of every overlay peer the dataplane found unreachable.
fn unreachable_peers(net: &Network, report: &SyncReport) -> Vec<String> {
    let Some(vteps) = report.unreachable_vteps.get(&net.name_any()) else { return Vec::new() };
    let peers = net.spec.overlay.as_ref().map(|o| o.peers.as_slice()).unwrap_or_default();
    vteps
        .iter()
        .map(|v| match peers.iter().find(|p| p.address.parse::<std::net::IpAddr>().ok() == Some(*v)) {
            Some(p) => format!("{} ({v})", p.node),
            None => v.to_string(),
        })
        .collect()
}
