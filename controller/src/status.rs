//! Status: one typed form per object, computed from the plan and the
//! dataplane's report, merged with the previous one (so
//! `lastTransitionTime` only moves on a flip), and kept with its JSON form.
//!
//! **The rule.** An object's entry is rebuilt when the object changed (not
//! the same shared object, nor the same metadata and spec) or when its
//! [`Inputs`] (everything its status is computed from: [`status_of`] reads
//! nothing else) differ by value from the previous pass's. The JSON form
//! (status.json's entry: the object with its status) is serialized only
//! when a rebuilt entry's object or status differs. The state dir writes
//! those bytes; the Kubernetes writer reads the typed status.

use std::borrow::Cow;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    merge_condition, ready_condition, Attachment, AttachmentStatus, Condition, Network, NetworkStatus, PortBinding, PortMapping,
    PortMappingStatus, API_VERSION,
};
use crate::dataplane::SyncReport;
use crate::objects::{attachment_key, network_key, port_mapping_key, Kind, ObjectKey, ObjectName, ObjectSet};
use crate::plan::outcome::{reason, Failure};
use crate::plan::{is_local, AttachmentInfo, NetworkInfo, Plan};
use crate::source::manifests::LoadError;

/// One object's verdict, for `--once` output and metrics.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub key: ObjectKey,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    /// The verdict an object's Ready condition states. Only a failure's
    /// reason and message are kept (what is reported and counted).
    fn of(key: &ObjectKey, ready: Option<&Condition>) -> Self {
        let ok = ready.is_some_and(Condition::is_true);
        let (reason, message) = match ready {
            Some(c) if !ok => (c.reason.clone(), c.message.clone()),
            _ => (String::new(), String::new()),
        };
        Verdict { key: key.clone(), ready: ok, reason, message }
    }
}

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
    fn same_as(&self, before: &Subject) -> bool {
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
    fn into_owned(self) -> Inputs<'static> {
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
                attachments: info.map(|i| i.attachments).unwrap_or(0),
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
    inputs: Inputs<'static>,
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

fn serialize(key: &ObjectKey, subject: &Subject, status: &ObjectStatus) -> Arc<[u8]> {
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

/// Every object's entry, in the order of the object set (networks,
/// attachments, port mappings, then objects that failed to load).
#[derive(Debug, Default)]
pub struct StatusBook {
    pub entries: Vec<Arc<StatusEntry>>,
}

/// What the previous pass left to build on.
pub enum Previous<'a> {
    /// This process's previous book: its entries are reused.
    Book(&'a StatusBook),
    /// The conditions status.json held at start: their transition times
    /// are kept, every entry is built.
    Stored(HashMap<ObjectKey, Vec<Condition>>),
}

impl Previous<'_> {
    /// The conditions of each entry of a loaded status.json.
    pub fn stored(store: &[serde_json::Value]) -> Previous<'static> {
        let mut conditions = HashMap::with_capacity(store.len());
        for value in store {
            let Some(key) = key_of(value) else { continue };
            let parsed = value.get("status").and_then(|s| s.get("conditions")).and_then(|c| serde::Deserialize::deserialize(c).ok());
            conditions.entry(key).or_insert_with(|| parsed.unwrap_or_default());
        }
        Previous::Stored(conditions)
    }
}

/// Key of a stored object (apiVersion/kind/metadata).
pub fn key_of(value: &serde_json::Value) -> Option<ObjectKey> {
    let kind = Kind::parse(value.get("kind")?.as_str()?)?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let name = match meta.get("namespace").and_then(serde_json::Value::as_str) {
        Some(ns) => ObjectName::namespaced(ns, name),
        None => ObjectName::cluster(name),
    };
    Some(ObjectKey { kind, name })
}

pub struct Computed {
    pub book: StatusBook,
    pub verdicts: Vec<Verdict>,
    /// The book differs from the previous one (status.json needs writing).
    pub changed: bool,
}

/// Finds previous entries by key. Entries mostly keep their order from
/// pass to pass (one object more or less shifts the rest by one), so the
/// same position and its neighbours are tried before every key is indexed.
struct Finder<'a> {
    entries: &'a [Arc<StatusEntry>],
    index: Option<HashMap<&'a ObjectKey, usize>>,
}

impl<'a> Finder<'a> {
    fn find(&mut self, position: usize, key: &ObjectKey) -> Option<&'a Arc<StatusEntry>> {
        let entries = self.entries;
        let near = [Some(position), position.checked_sub(1), position.checked_add(1)];
        if let Some(i) = near.into_iter().flatten().find(|i| entries.get(*i).is_some_and(|e| e.key == *key)) {
            return Some(&entries[i]);
        }
        let index = self.index.get_or_insert_with(|| entries.iter().enumerate().map(|(i, e)| (&e.key, i)).collect());
        index.get(key).map(|i| &entries[*i])
    }
}

struct Builder<'a> {
    previous: Previous<'a>,
    finder: Finder<'a>,
    now: &'a str,
    entries: Vec<Arc<StatusEntry>>,
    verdicts: Vec<Verdict>,
    /// Entries whose JSON is the previous entry's at the same position.
    same: usize,
}

impl<'a> Builder<'a> {
    fn new(previous: Previous<'a>, now: &'a str) -> Self {
        let entries: &[Arc<StatusEntry>] = match &previous {
            Previous::Book(book) => &book.entries,
            Previous::Stored(_) => &[],
        };
        Builder { finder: Finder { entries, index: None }, previous, now, entries: Vec::new(), verdicts: Vec::new(), same: 0 }
    }

    /// Adds the entry of `key`: the previous one when neither the object
    /// nor the inputs changed, else one rebuilt (serialized again only if
    /// its object or status differ).
    fn push(&mut self, key: ObjectKey, subject: Subject, inputs: Inputs<'_>) {
        let position = self.entries.len();
        let before = self.finder.find(position, &key);
        let entry = match before {
            Some(b) if b.subject.same_as(&subject) && b.inputs == inputs => b.clone(),
            _ => {
                let stored;
                let previous_conditions: &[Condition] = match (before, &self.previous) {
                    (Some(b), _) => b.status.conditions(),
                    (None, Previous::Stored(conditions)) => {
                        stored = conditions.get(&key);
                        stored.map(Vec::as_slice).unwrap_or_default()
                    }
                    (None, Previous::Book(_)) => &[],
                };
                let status = status_of(&inputs, previous_conditions, self.now);
                let json = match before {
                    Some(b) if b.status == status && b.subject.same_as(&subject) => b.json.clone(),
                    _ => serialize(&key, &subject, &status),
                };
                Arc::new(StatusEntry { key, subject, status, json, inputs: inputs.into_owned() })
            }
        };
        // The file keeps this entry as it was when the same bytes stay at the same place.
        self.same += usize::from(self.finder.entries.get(position).is_some_and(|e| Arc::ptr_eq(&e.json, &entry.json)));
        self.verdicts.push(Verdict::of(&entry.key, entry.ready()));
        self.entries.push(entry);
    }

    fn finish(self) -> Computed {
        let before = self.finder.entries;
        // Unchanged: as many entries, each the same bytes in the same place.
        let changed = self.entries.len() != before.len() || self.same != before.len() || matches!(self.previous, Previous::Stored(_));
        Computed { book: StatusBook { entries: self.entries }, verdicts: self.verdicts, changed }
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
    previous: Previous<'_>,
    node: &str,
    now: &str,
) -> Computed {
    let mut b = Builder::new(previous, now);

    for shared in &objects.networks {
        let net: &Network = shared;
        let key = network_key(net);
        let name = key.name.name();
        let planned = plan.networks.get(name);
        let result = match (planned, report.network_errors.get(name)) {
            (Some(Err(f)), _) | (_, Some(f)) => Err(Cow::Borrowed(f)),
            (Some(Ok(_)), None) => Ok(()),
            (None, None) => Err(Cow::Owned(Failure::new(reason::KERNEL_ERROR, "not planned"))),
        };
        let info = planned.and_then(|p| p.as_ref().ok()).map(Cow::Borrowed);
        let inputs = Inputs::Network { generation: generation(net), result, info, unreachable: unreachable_peers(net, report) };
        b.push(key, Subject::Network(shared.clone()), inputs);
    }

    // Whether each local attachment is ready, for its port mappings.
    let mut ready_attachments: HashMap<&ObjectName, bool> = HashMap::with_capacity(objects.attachments.len());
    for shared in objects.attachments.iter().filter(|a| is_local(a, node)) {
        let att: &Attachment = shared;
        let key = attachment_key(att);
        let Some((name, planned)) = plan.attachments.get_key_value(&key.name) else {
            let inputs = Inputs::Attachment {
                generation: generation(att),
                node: Cow::Borrowed(node),
                result: Err(Cow::Owned(Failure::new(reason::KERNEL_ERROR, "not planned"))),
                info: None,
            };
            b.push(key, Subject::Attachment(shared.clone()), inputs);
            continue;
        };
        let result = match planned {
            Err(f) => Err(Cow::Borrowed(f)),
            Ok(_) => match report.endpoint_errors.get(name) {
                Some(f) => Err(Cow::Borrowed(f)),
                None => match sandbox_owner_failure(att, name, report).or_else(|| network_failure(att, report)) {
                    Some(f) => Err(Cow::Owned(f)),
                    None => Ok(()),
                },
            },
        };
        ready_attachments.insert(name, result.is_ok());
        let info = planned.as_ref().ok().map(Cow::Borrowed);
        let inputs = Inputs::Attachment { generation: generation(att), node: Cow::Borrowed(node), result, info };
        b.push(key, Subject::Attachment(shared.clone()), inputs);
    }

    for shared in &objects.port_mappings {
        let pm: &PortMapping = shared;
        let key = port_mapping_key(pm);
        let Some(planned) = plan.port_mappings.get(&key.name) else { continue };
        let att_key = key.name.sibling(&pm.spec.attachment);
        let result = match planned {
            Err(f) => Err(Cow::Borrowed(f)),
            Ok(_) if ready_attachments.get(&att_key) == Some(&false) => {
                Err(Cow::Owned(Failure::new(reason::ATTACHMENT_NOT_READY, format!("attachment {att_key} is not ready"))))
            }
            Ok(_) => match &report.firewall_error {
                Some(e) => Err(Cow::Owned(Failure::new(reason::KERNEL_ERROR, format!("firewall: {e}")))),
                None => Ok(()),
            },
        };
        let bindings = planned.as_ref().ok().map(|b| Cow::Borrowed(b.as_slice()));
        b.push(key, Subject::PortMapping(shared.clone()), Inputs::PortMapping { generation: generation(pm), result, bindings });
    }

    // Objects that could not even be parsed still get a status (once).
    if !load_errors.is_empty() {
        let mut listed: HashSet<ObjectKey> = HashSet::with_capacity(b.entries.len());
        listed.extend(b.entries.iter().map(|e| e.key.clone()));
        for err in load_errors {
            let Some(key) = &err.key else { continue };
            if listed.insert(key.clone()) {
                b.push(key.clone(), Subject::Unloaded, Inputs::Unloaded { message: Cow::Borrowed(&err.message) });
            }
        }
    }
    b.finish()
}

/// The failure of the attachment whose sandbox `att` shares, if any.
fn sandbox_owner_failure(att: &Attachment, name: &ObjectName, report: &SyncReport) -> Option<Failure> {
    let owner = name.sibling(att.spec.sandbox.attachment.as_deref()?);
    let f = report.endpoint_errors.get(&owner)?;
    Some(Failure::new(
        reason::SANDBOX_OWNER_GONE,
        format!("attachment {owner}, whose namespace this one shares, is not ready: {}", f.message),
    ))
}

fn network_failure(att: &Attachment, report: &SyncReport) -> Option<Failure> {
    let f = report.network_errors.get(&att.spec.network)?;
    Some(Failure::new(reason::NETWORK_NOT_READY, format!("network {} is not ready: {}", att.spec.network, f.message)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests;

    fn objects(attachments: usize) -> ObjectSet {
        let mut docs = vec!["kind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.9.0.0/24}]}}\n".to_string()];
        for i in 0..attachments {
            docs.push(format!("kind: Attachment\nmetadata: {{name: a{i}}}\nspec: {{network: n, sandbox: {{netns: s{i}}}}}\n"));
            docs.push(format!("kind: PortMapping\nmetadata: {{name: p{i}}}\nspec: {{attachment: a{i}, ports: [{{containerPort: 80}}]}}\n"));
        }
        let text = docs.iter().map(|d| format!("apiVersion: {API_VERSION}\n{d}")).collect::<Vec<_>>().join("---\n");
        let loaded = manifests::parse(std::path::Path::new("t.yaml"), &text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects
    }

    fn pass_with(objects: &ObjectSet, report: &SyncReport, previous: Previous<'_>, now: &str) -> Computed {
        let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
        let plan = crate::plan::plan(objects, &facts, &Default::default());
        compute(objects, &plan, report, &[], previous, "n1", now)
    }

    fn pass(objects: &ObjectSet, previous: Previous<'_>, now: &str) -> Computed {
        pass_with(objects, &SyncReport::default(), previous, now)
    }

    /// status.json as the state dir writes it.
    fn file(book: &StatusBook) -> Vec<serde_json::Value> {
        book.entries.iter().map(|e| serde_json::from_slice(&e.json).unwrap()).collect()
    }

    /// Names of the entries that are not the previous book's very entries.
    fn rebuilt(book: &StatusBook, before: &StatusBook) -> Vec<String> {
        let reused = |e: &Arc<StatusEntry>| before.entries.iter().any(|b| Arc::ptr_eq(b, e));
        book.entries.iter().filter(|e| !reused(e)).map(|e| e.key.name.name().to_string()).collect()
    }

    fn ready_of(book: &StatusBook, key: ObjectKey) -> (String, String) {
        let entry = book.entries.iter().find(|e| e.key == key).unwrap();
        let c = entry.ready().unwrap();
        (c.status.clone(), c.last_transition_time.clone().unwrap())
    }

    #[test]
    fn unchanged_objects_keep_their_entries_and_a_new_one_is_added() {
        let two = objects(2);
        let first = pass(&two, Previous::Stored(Default::default()), "t1");
        assert!(first.changed);
        assert_eq!(first.book.entries.len(), 5);

        let again = pass(&two, Previous::Book(&first.book), "t2");
        assert!(!again.changed, "an unchanged set rewrites nothing");
        assert!(rebuilt(&again.book, &first.book).is_empty(), "every entry is the previous one");
        assert_eq!(file(&again.book), file(&first.book), "lastTransitionTime stays t1");

        // After a restart only status.json is left: every entry is rebuilt,
        // and the stored conditions keep their transition times.
        let restarted = pass(&two, Previous::stored(&file(&first.book)), "t2");
        assert_eq!(file(&restarted.book), file(&first.book));

        let three = objects(3);
        let grown = pass(&three, Previous::Book(&first.book), "t3");
        assert!(grown.changed);
        assert_eq!(grown.book.entries.len(), 7);
        let fresh = pass(&three, Previous::Stored(Default::default()), "t1");
        // Same content as computing from nothing, bar the new objects' transition time.
        let strip = |b: &StatusBook| serde_json::to_string(&file(b)).unwrap().replace("t3", "t1");
        assert_eq!(strip(&grown.book), strip(&fresh.book));
        // The old attachments and mappings are the previous entries; the
        // network (one attachment more) and the new objects are built.
        assert_eq!(rebuilt(&grown.book, &first.book), ["n", "a2", "p2"]);
    }

    #[test]
    fn an_unchanged_object_whose_outcome_changed_is_rebuilt_and_the_rest_moved_over() {
        let two = objects(2);
        let first = pass(&two, Previous::Stored(Default::default()), "t1");
        // Same objects, same plan; the dataplane failed for a1 only.
        let mut failed = SyncReport::default();
        failed.endpoint_errors.insert(ObjectName::from("default/a1"), Failure::new(reason::KERNEL_ERROR, "veth: no"));
        let broken = pass_with(&two, &failed, Previous::Book(&first.book), "t2");
        assert!(broken.changed);
        assert_eq!(ready_of(&broken.book, ObjectKey::attachment("default", "a1")), ("False".into(), "t2".into()));
        // Its mapping follows it; everything else is the previous entry.
        assert_eq!(ready_of(&broken.book, ObjectKey::port_mapping("default", "p1")), ("False".into(), "t2".into()));
        assert_eq!(rebuilt(&broken.book, &first.book), ["a1", "p1"]);
        let verdict = broken.verdicts.iter().find(|v| v.key == ObjectKey::attachment("default", "a1")).unwrap();
        assert_eq!((verdict.ready, verdict.reason.as_str(), verdict.message.as_str()), (false, reason::KERNEL_ERROR, "veth: no"));
        assert!(broken.verdicts.iter().find(|v| v.key == ObjectKey::attachment("default", "a0")).unwrap().ready);

        // Repaired: Ready again, from the moment it was.
        let repaired = pass(&two, Previous::Book(&broken.book), "t3");
        assert_eq!(ready_of(&repaired.book, ObjectKey::attachment("default", "a1")), ("True".into(), "t3".into()));
        assert_eq!(ready_of(&repaired.book, ObjectKey::attachment("default", "a0")), ("True".into(), "t1".into()));
        assert!(repaired.verdicts.iter().all(|v| v.ready));
    }

    #[test]
    fn objects_in_another_order_are_still_found_and_moved_over() {
        let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
        let three = objects(3);
        let plan = crate::plan::plan(&three, &facts, &Default::default());
        let first = compute(&three, &plan, &SyncReport::default(), &[], Previous::Stored(Default::default()), "n1", "t1");
        // Another order, the same outcome (what was handed out is held).
        let mut reordered = three.clone();
        reordered.port_mappings.reverse();
        reordered.attachments.rotate_left(1);
        let replan = crate::plan::plan(&reordered, &facts, &plan.allocations);
        let again = compute(&reordered, &replan, &SyncReport::default(), &[], Previous::Book(&first.book), "n1", "t2");
        assert!(rebuilt(&again.book, &first.book).is_empty(), "every entry moved over");
        assert!(again.changed, "the file lists them in the new order");
        assert_eq!(ready_of(&again.book, ObjectKey::port_mapping("default", "p0")), ("True".into(), "t1".into()));
    }

    #[test]
    fn a_changed_spec_or_status_rebuilds_the_entry() {
        let two = objects(2);
        let first = pass(&two, Previous::Stored(Default::default()), "t1");
        let mut edited = two.clone();
        Arc::make_mut(&mut edited.attachments[1]).spec.interface = Some("net9".into());
        let after = pass(&edited, Previous::Book(&first.book), "t2");
        assert!(after.changed);
        let a1 = file(&after.book).into_iter().find(|v| key_of(v) == Some(ObjectKey::attachment("default", "a1"))).unwrap();
        assert_eq!(a1["spec"]["interface"], "net9");
        assert_eq!(a1["status"]["interface"], "net9");
        let ObjectStatus::Attachment(typed, _) = &after.book.entries.iter().find(|e| e.key.name.name() == "a1").unwrap().status else {
            panic!("an attachment's status")
        };
        assert_eq!(typed.interface.as_deref(), Some("net9"), "the typed form says the same");

        // Fewer objects: the book shrinks and is rewritten.
        let one = objects(1);
        let shrunk = pass(&one, Previous::Book(&first.book), "t2");
        assert!(shrunk.changed);
        assert_eq!(shrunk.book.entries.len(), 3);
    }

    #[test]
    fn a_status_is_its_inputs_and_nothing_else() {
        // The same inputs give the same status, whatever else differs.
        let info = AttachmentInfo { network: "n".into(), interface: Some("eth0".into()), ..Default::default() };
        let inputs = |node: &'static str| Inputs::Attachment {
            generation: Some(3),
            node: Cow::Borrowed(node),
            result: Ok(()),
            info: Some(Cow::Owned(info.clone())),
        };
        assert_eq!(status_of(&inputs("n1"), &[], "t1"), status_of(&inputs("n1").into_owned(), &[], "t1"));
        assert_ne!(inputs("n1"), inputs("n2"), "what the status says differs, so do its inputs");
        // A flip moves the transition time; anything else keeps it.
        let ready = status_of(&inputs("n1"), &[], "t1");
        assert_eq!(status_of(&inputs("n1"), ready.conditions(), "t2"), ready);
        let failed = Inputs::Attachment {
            generation: Some(3),
            node: Cow::Borrowed("n1"),
            result: Err(Cow::Owned(Failure::invalid("bad"))),
            info: None,
        };
        let flipped = status_of(&failed, ready.conditions(), "t2");
        assert_eq!(ready_condition(flipped.conditions()).unwrap().last_transition_time.as_deref(), Some("t2"));
    }
}
