//! One object's status: its inputs, its typed form computed from them
//! alone, and the entry status.json holds (the object with its status).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

use crate::api::{
    merge_condition, ready_condition, Attachment, AttachmentStatus, Condition, Network, NetworkStatus, PortBinding, PortMapping,
    PortMappingStatus, API_VERSION,
};
use crate::objects::{Kind, ObjectKey};
use crate::plan::outcome::{reason, Failure};
use crate::plan::{AttachmentInfo, NetworkInfo};

/// One object's status in typed form.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectStatus {
    Network(NetworkStatus),
    /// With the node's addresses of a host-mode attachment (shown by
    /// `netlet get`; not a field of the CRD).
    Attachment(AttachmentStatus, Vec<String>),
    PortMapping(PortMappingStatus),
    /// An object that failed to load has only conditions.
    Unloaded(Vec<Condition>),
}

impl ObjectStatus {
    pub fn conditions(&self) -> &[Condition] {
        match self {
            ObjectStatus::Network(s) => &s.conditions,
            ObjectStatus::Attachment(s, _) => &s.conditions,
            ObjectStatus::PortMapping(s) => &s.conditions,
            ObjectStatus::Unloaded(c) => c,
        }
    }
}

/// The object a status is about.
#[derive(Clone, Debug)]
pub enum Subject {
    Network(Arc<Network>),
    Attachment(Arc<Attachment>),
    PortMapping(Arc<PortMapping>),
    /// It could not be read; only its key is known.
    Unloaded,
}

impl Subject {
    /// The same object, or one with the same metadata and spec.
    pub(super) fn same_as(&self, before: &Subject) -> bool {
        fn same<T: kube::Resource>(a: &Arc<T>, b: &Arc<T>, spec: impl Fn(&T, &T) -> bool) -> bool {
            Arc::ptr_eq(a, b) || (a.meta() == b.meta() && spec(a, b))
        }
        match (self, before) {
            (Subject::Network(a), Subject::Network(b)) => same(a, b, |a, b| a.spec == b.spec),
            (Subject::Attachment(a), Subject::Attachment(b)) => same(a, b, |a, b| a.spec == b.spec),
            (Subject::PortMapping(a), Subject::PortMapping(b)) => same(a, b, |a, b| a.spec == b.spec),
            (Subject::Unloaded, Subject::Unloaded) => true,
            _ => false,
        }
    }
}

/// Everything one object's status is computed from, borrowed from the
/// plan and the report where it can be.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs<'a> {
    Network { generation: Option<i64>, result: Result<(), Cow<'a, Failure>>, info: Option<Cow<'a, NetworkInfo>>, unreachable: Vec<String> },
    Attachment { generation: Option<i64>, node: Cow<'a, str>, result: Result<(), Cow<'a, Failure>>, info: Option<Cow<'a, AttachmentInfo>> },
    PortMapping { generation: Option<i64>, result: Result<(), Cow<'a, Failure>>, bindings: Option<Cow<'a, [PortBinding]>> },
    Unloaded { message: Cow<'a, str> },
}

fn own<T: Clone>(c: Cow<'_, T>) -> Cow<'static, T> {
    Cow::Owned(c.into_owned())
}

fn own_result(r: Result<(), Cow<'_, Failure>>) -> Result<(), Cow<'static, Failure>> {
    r.map_err(own)
}

impl Inputs<'_> {
    pub(super) fn into_owned(self) -> Inputs<'static> {
        match self {
            Inputs::Network { generation, result, info, unreachable } => {
                Inputs::Network { generation, result: own_result(result), info: info.map(own), unreachable }
            }
            Inputs::Attachment { generation, node, result, info } => {
                Inputs::Attachment { generation, node: Cow::Owned(node.into_owned()), result: own_result(result), info: info.map(own) }
            }
            Inputs::PortMapping { generation, result, bindings } => {
                Inputs::PortMapping { generation, result: own_result(result), bindings: bindings.map(|b| Cow::Owned(b.into_owned())) }
            }
            Inputs::Unloaded { message } => Inputs::Unloaded { message: Cow::Owned(message.into_owned()) },
        }
    }

    fn result(&self) -> Result<(), &Failure> {
        match self {
            Inputs::Network { result, .. } | Inputs::Attachment { result, .. } | Inputs::PortMapping { result, .. } => {
                result.as_ref().map(|_| ()).map_err(|f| &**f)
            }
            Inputs::Unloaded { .. } => Ok(()),
        }
    }
}

/// An object's status from its inputs alone, its Ready condition merged
/// into `previous` conditions (`now` is the transition time of a flip).
pub fn status_of(inputs: &Inputs<'_>, previous: &[Condition], now: &str) -> ObjectStatus {
    let ready = |generation: Option<i64>, result: Result<(), &Failure>| {
        let mut c = match result {
            Ok(()) => Condition::ready(true, reason::READY, "realized on the node"),
            Err(f) => Condition::ready(false, f.reason, f.message.clone()),
        };
        c.observed_generation = generation;
        merge_condition(previous, c, now)
    };
    match inputs {
        Inputs::Network { generation, info, unreachable, .. } => {
            let info = info.as_deref();
            ObjectStatus::Network(NetworkStatus {
                conditions: ready(*generation, inputs.result()),
                bridge: info.and_then(|i| i.bridge.clone()),
                gateways: info.map(|i| i.gateways.clone()).unwrap_or_default(),
                attachments: Some(info.map(|i| i.attachments).unwrap_or(0)),
                observed_generation: *generation,
                nodes: Vec::new(),
                address_blocks: Vec::new(),
                mtu: info.and_then(|i| i.mtu),
                unreachable_peers: unreachable.clone(),
            })
        }
        Inputs::Attachment { generation, node, result, info } => {
            let info = info.as_deref().filter(|_| result.is_ok());
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
                pod: info.and_then(|i| i.pod.as_deref().cloned()),
                observed_generation: *generation,
                conditions: ready(*generation, inputs.result()),
            };
            ObjectStatus::Attachment(status, info.map(|i| i.node_addresses.clone()).unwrap_or_default())
        }
        Inputs::PortMapping { generation, result, bindings } => ObjectStatus::PortMapping(PortMappingStatus {
            bindings: bindings.as_deref().filter(|_| result.is_ok()).map(<[PortBinding]>::to_vec).unwrap_or_default(),
            observed_generation: *generation,
            conditions: ready(*generation, inputs.result()),
        }),
        Inputs::Unloaded { message } => ObjectStatus::Unloaded(ready(Some(1), Err(&Failure::invalid(message.to_string())))),
    }
}

/// One object's entry: its status, typed and as status.json holds it.
#[derive(Debug)]
pub struct StatusEntry {
    pub key: ObjectKey,
    pub subject: Subject,
    pub status: ObjectStatus,
    /// The object with this status, compact JSON (status.json's entry).
    pub json: Arc<[u8]>,
    pub(super) inputs: Inputs<'static>,
}

impl StatusEntry {
    pub fn ready(&self) -> Option<&Condition> {
        ready_condition(self.status.conditions())
    }
}

/// status.json's form of an entry: the object's own fields, then its status.
#[derive(Serialize)]
struct Stored<'a, M: Serialize, S: Serialize, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a M,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<&'a S>,
    status: T,
}

/// An attachment's status as status.json shows it.
#[derive(Serialize)]
struct AttachmentView<'a> {
    #[serde(flatten)]
    status: &'a AttachmentStatus,
    #[serde(rename = "nodeAddresses", skip_serializing_if = "<[String]>::is_empty")]
    node_addresses: &'a [String],
}

pub(super) fn serialize(key: &ObjectKey, subject: &Subject, status: &ObjectStatus) -> Arc<[u8]> {
    fn entry<M: Serialize, S: Serialize, T: Serialize>(kind: Kind, metadata: &M, spec: Option<&S>, status: T) -> Vec<u8> {
        let stored = Stored { api_version: API_VERSION, kind: kind.as_str(), metadata, spec, status };
        serde_json::to_vec(&stored).expect("status entries serialize")
    }
    let bytes = match (subject, status) {
        (Subject::Network(n), ObjectStatus::Network(s)) => entry(key.kind, &n.metadata, Some(&n.spec), s),
        (Subject::Attachment(a), ObjectStatus::Attachment(s, node_addresses)) => {
            entry(key.kind, &a.metadata, Some(&a.spec), AttachmentView { status: s, node_addresses })
        }
        (Subject::PortMapping(p), ObjectStatus::PortMapping(s)) => entry(key.kind, &p.metadata, Some(&p.spec), s),
        (_, status) => {
            #[derive(Serialize)]
            struct Meta<'a> {
                name: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                namespace: Option<&'a str>,
            }
            #[derive(Serialize)]
            struct Conditions<'a> {
                conditions: &'a [Condition],
            }
            let meta = Meta { name: key.name.name(), namespace: key.name.namespace() };
            entry(key.kind, &meta, None::<&()>, Conditions { conditions: status.conditions() })
        }
    };
    bytes.into()
}
