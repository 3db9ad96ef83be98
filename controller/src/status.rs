//! Status: computed from the plan and the dataplane's report, merged with
//! the previous status (so `lastTransitionTime` only moves on a flip), and
//! written only when it changed.

use std::collections::HashSet;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use kube::ResourceExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{
    merge_condition, Attachment, AttachmentStatus, Condition, Kind, Network, NetworkStatus, PortMapping, PortMappingStatus, API_VERSION,
};
use crate::dataplane::SyncReport;
use crate::objects::{attachment_key, network_key, port_mapping_key, ObjectKey, ObjectName, ObjectSet};
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

impl Verdict {
    /// The verdict an object's Ready condition states. Only a failure's
    /// reason and message are kept (what is reported and counted; for a
    /// thousand ready objects, two copies each of the same words).
    fn of(key: &ObjectKey, ready: &Condition) -> Self {
        let ok = ready.is_true();
        let (reason, message) = if ok { (String::new(), String::new()) } else { (ready.reason.clone(), ready.message.clone()) };
        Verdict { key: key.clone(), ready: ok, reason, message }
    }
}

pub struct Computed {
    pub store: StatusStore,
    pub verdicts: Vec<Verdict>,
    /// The store differs from the previous one (it needs writing).
    pub changed: bool,
    /// For each entry, its position in the previous store when it was
    /// moved over unchanged: its serialized form can be reused too.
    pub origins: Vec<Option<usize>>,
    /// For the next pass's [`Previous`].
    pub memo: StatusMemo,
}

/// Key of a stored object (apiVersion/kind/metadata).
pub fn key_of(value: &Value) -> Option<ObjectKey> {
    let kind = Kind::parse(value.get("kind")?.as_str()?)?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(ObjectKey {
        kind,
        name: match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) => ObjectName::namespaced(ns, name),
            None => ObjectName::cluster(name),
        },
    })
}

/// An object as the status store holds it: the object itself, then its
/// status. An entry is reused as it stands while neither changed.
trait Stored: serde::Serialize {
    fn key(&self) -> ObjectKey;
    /// Same metadata and spec (the status part is the store's own).
    fn same_as(&self, before: &Self) -> bool;
}

macro_rules! stored {
    ($kind:ty, $key:path) => {
        impl Stored for $kind {
            fn key(&self) -> ObjectKey {
                $key(self)
            }
            fn same_as(&self, before: &Self) -> bool {
                self.metadata == before.metadata && self.spec == before.spec
            }
        }
    };
}
stored!(Network, network_key);
stored!(Attachment, attachment_key);
stored!(PortMapping, port_mapping_key);

/// One entry's status in typed form. Kept beside the store, so the next
/// pass compares typed values instead of parsing and serializing JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum TypedStatus {
    Network(NetworkStatus),
    /// With the node's addresses of a host-mode attachment.
    Attachment(AttachmentStatus, Vec<String>),
    PortMapping(PortMappingStatus),
    /// An object that failed to load has only conditions.
    Unloaded(Vec<Condition>),
}

impl TypedStatus {
    fn conditions(&self) -> &[Condition] {
        match self {
            TypedStatus::Network(s) => &s.conditions,
            TypedStatus::Attachment(s, _) => &s.conditions,
            TypedStatus::PortMapping(s) => &s.conditions,
            TypedStatus::Unloaded(c) => c,
        }
    }

    fn to_value(&self) -> Value {
        let value = match self {
            TypedStatus::Network(s) => serde_json::to_value(s),
            TypedStatus::Attachment(s, node_addresses) => serde_json::to_value(s).map(|mut v| {
                if !node_addresses.is_empty() {
                    v["nodeAddresses"] = json!(node_addresses);
                }
                v
            }),
            TypedStatus::PortMapping(s) => serde_json::to_value(s),
            TypedStatus::Unloaded(conditions) => Ok(json!({ "conditions": conditions })),
        };
        value.expect("status serializes")
    }
}

/// What the previous pass knew of one entry: its position in the store,
/// its status in typed form, and a digest of everything that status was
/// computed from besides the object itself (its plan outcome, the
/// dataplane's errors for it, its generation).
#[derive(Clone, Debug)]
pub struct Memo {
    position: usize,
    /// Boxed: memos move between maps every pass, and a status is large.
    status: Box<TypedStatus>,
    inputs: u64,
}

/// The memo of every entry, by key.
pub type StatusMemo = HashMap<ObjectKey, Memo>;

/// Digest of a status's inputs. 64 bits: two different inputs that collide
/// would keep an entry stale until its next change; at 2^-64 per entry and
/// pass, that is never.
fn digest(inputs: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    // Fixed seed: digests are compared across passes. foldhash's quality
    // variant, several times faster than SipHash over an attachment's strings.
    let mut h = std::hash::BuildHasher::build_hasher(&foldhash::quality::FixedState::default());
    inputs.hash(&mut h);
    h.finish()
}

/// What the previous pass left: its store and, when this process computed
/// it, the objects and typed statuses it came from. Serializing every
/// object again each pass was most of the status cost of a one-object
/// change among thousands.
pub struct Previous<'a> {
    pub store: StatusStore,
    /// None (first pass after a start): every entry is rebuilt, keeping
    /// only the stored conditions' transition times.
    pub computed_from: Option<(&'a ObjectSet, StatusMemo)>,
}

/// The previous objects of one kind, found by key. Lists mostly keep their
/// order from pass to pass (one object more or less shifts the rest by
/// one), so the same position and its neighbours are tried before an index
/// of every key is built.
struct Before<'a, T> {
    list: &'a [Arc<T>],
    index: Option<HashMap<ObjectKey, &'a Arc<T>>>,
}

impl<'a, T: Stored + kube::Resource> Before<'a, T> {
    fn new(list: &'a [Arc<T>]) -> Self {
        Before { list, index: None }
    }

    /// Whether the previous object with `object`'s key had the same
    /// metadata and spec (the very same object, most of the time);
    /// `position` is `object`'s in its list.
    fn unchanged(&mut self, position: usize, object: &Arc<T>, key: &ObjectKey) -> bool {
        let same = |o: &&Arc<T>| o.meta().name == object.meta().name && o.meta().namespace == object.meta().namespace;
        let near = [Some(position), position.checked_sub(1), position.checked_add(1)];
        let list = self.list;
        let before = match near.into_iter().flatten().filter_map(|i| list.get(i)).find(same) {
            Some(found) => Some(found),
            None => self.index.get_or_insert_with(|| list.iter().map(|o| (o.key(), o)).collect()).get(key).copied(),
        };
        before.is_some_and(|b| Arc::ptr_eq(b, object) || object.same_as(b))
    }
}

struct Builder<'a> {
    /// The previous store; entries are taken out as they are reused.
    previous: Vec<Option<Value>>,
    memo: StatusMemo,
    /// Positions in `previous` when there is no memo (read from the entries).
    index: HashMap<ObjectKey, usize>,
    networks: Before<'a, Network>,
    attachments: Before<'a, Attachment>,
    port_mappings: Before<'a, PortMapping>,
    now: &'a str,
    store: StatusStore,
    origins: Vec<Option<usize>>,
    new_memo: StatusMemo,
    verdicts: Vec<Verdict>,
    changed: bool,
}

impl<'a> Builder<'a> {
    fn new(previous: Previous<'a>, now: &'a str) -> Self {
        let (objects, memo) = match previous.computed_from {
            Some((objects, memo)) => (Some(objects), memo),
            None => (None, StatusMemo::new()),
        };
        let index = match objects {
            Some(_) => HashMap::new(),
            None => previous.store.iter().enumerate().rev().filter_map(|(i, v)| Some((key_of(v)?, i))).collect(),
        };
        Builder {
            new_memo: HashMap::with_capacity(previous.store.len() + 1),
            previous: previous.store.into_iter().map(Some).collect(),
            memo,
            index,
            networks: Before::new(objects.map(|o| o.networks.as_slice()).unwrap_or_default()),
            attachments: Before::new(objects.map(|o| o.attachments.as_slice()).unwrap_or_default()),
            port_mappings: Before::new(objects.map(|o| o.port_mappings.as_slice()).unwrap_or_default()),
            now,
            store: Vec::new(),
            origins: Vec::new(),
            verdicts: Vec::new(),
            changed: false,
        }
    }

    fn condition(&mut self, key: &ObjectKey, generation: Option<i64>, result: &Result<(), Failure>) -> Vec<Condition> {
        let mut c = match result {
            Ok(()) => Condition::ready(true, reason::READY, "realized on the node"),
            Err(f) => Condition::ready(false, f.reason, f.message.clone()),
        };
        c.observed_generation = generation;
        self.verdicts.push(Verdict::of(key, &c));
        let parsed;
        let previous: &[Condition] = match self.memo.get(key) {
            Some(memo) => memo.status.conditions(),
            None => {
                // Without a memo no entry is reused: each goes as soon as
                // its conditions are read (two whole stores at once were
                // the peak of a restart).
                let entry = self.index.get(key).and_then(|i| self.previous[*i].take());
                parsed = entry
                    .as_ref()
                    .and_then(|v| v.get("status")?.get("conditions"))
                    .and_then(|c| Vec::<Condition>::deserialize(c).ok())
                    .unwrap_or_default();
                &parsed
            }
        };
        merge_condition(previous, c, self.now)
    }

    /// Whether the previous pass left an entry for `key` to reuse: a new
    /// object has none, and looking for its previous version would index
    /// every object of its kind.
    fn remembers(&self, key: &ObjectKey) -> bool {
        self.memo.contains_key(key)
    }

    /// Moves the previous entry over as it stands, building nothing, when
    /// the object and everything its status is computed from (`inputs`)
    /// are what they were: most of a pass among thousands of objects.
    fn reuse_unchanged(&mut self, key: &ObjectKey, unchanged: bool, inputs: u64) -> bool {
        if !unchanged {
            return false;
        }
        let Some(memo) = self.memo.get(key).filter(|m| m.inputs == inputs && self.previous.get(m.position).is_some_and(Option::is_some))
        else {
            return false;
        };
        let Some(ready) = crate::api::ready_condition(memo.status.conditions()) else { return false };
        self.verdicts.push(Verdict::of(key, ready));
        let memo = self.memo.remove(key).expect("looked up above");
        self.take_over(key, memo)
    }

    /// Appends `object` with `status`, reusing the previous entry when the
    /// object (`unchanged`) and its status are what they were.
    fn push<T: Stored>(&mut self, key: ObjectKey, object: &T, unchanged: bool, status: TypedStatus, inputs: u64) {
        if unchanged && self.reuse(&key, &status, inputs) {
            return;
        }
        let mut value = serde_json::to_value(object).expect("objects serialize");
        value["status"] = status.to_value();
        self.add(key, value, status, inputs);
    }

    /// Appends an entry of an object that failed to load.
    fn push_unloaded(&mut self, key: &ObjectKey, conditions: Vec<Condition>) {
        let status = TypedStatus::Unloaded(conditions);
        if self.reuse(key, &status, 0) {
            return;
        }
        let mut metadata = json!({"name": key.name.name()});
        if let Some(ns) = key.name.namespace() {
            metadata["namespace"] = json!(ns);
        }
        let value = json!({
            "apiVersion": API_VERSION,
            "kind": key.kind.as_str(),
            "metadata": metadata,
            "status": status.to_value(),
        });
        self.add(key.clone(), value, status, 0);
    }

    /// Moves the previous entry of `key` over if its status is `status`.
    fn reuse(&mut self, key: &ObjectKey, status: &TypedStatus, inputs: u64) -> bool {
        let Some(before) = self.memo.remove(key) else { return false };
        if *before.status != *status {
            return false;
        }
        self.take_over(key, Memo { inputs, ..before })
    }

    /// Moves the previous entry `memo` describes to the end of the store.
    fn take_over(&mut self, key: &ObjectKey, memo: Memo) -> bool {
        let i = memo.position;
        let Some(value) = self.previous.get_mut(i).and_then(Option::take) else { return false };
        // The same entry at another position is still a different file.
        self.changed |= i != self.store.len();
        self.new_memo.insert(key.clone(), Memo { position: self.store.len(), ..memo });
        self.store.push(value);
        self.origins.push(Some(i));
        true
    }

    fn add(&mut self, key: ObjectKey, value: Value, status: TypedStatus, inputs: u64) {
        self.changed = true;
        self.new_memo.insert(key, Memo { position: self.store.len(), status: Box::new(status), inputs });
        self.store.push(value);
        self.origins.push(None);
    }

    fn finish(self) -> Computed {
        let changed = self.changed || self.store.len() != self.previous.len();
        Computed { store: self.store, origins: self.origins, memo: self.new_memo, verdicts: self.verdicts, changed }
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

    for (position, shared) in objects.networks.iter().enumerate() {
        let net: &Network = shared;
        let key = network_key(net);
        let planned = plan.networks.get(&net.name_any());
        let result = match (planned, report.network_errors.get(&net.name_any())) {
            (Some(Err(f)), _) | (_, Some(f)) => Err(f.clone()),
            (Some(Ok(_)), None) => Ok(()),
            (None, None) => Err(Failure::new(reason::KERNEL_ERROR, "not planned")),
        };
        let info = planned.and_then(|p| p.as_ref().ok());
        let unreachable = unreachable_peers(net, report);
        let inputs = digest((generation(net), &result, info, &unreachable));
        let unchanged = b.remembers(&key) && b.networks.unchanged(position, shared, &key);
        if b.reuse_unchanged(&key, unchanged, inputs) {
            continue;
        }
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
            unreachable_peers: unreachable,
        };
        b.push(key, net, unchanged, TypedStatus::Network(status), inputs);
    }

    // Whether each local attachment is ready, by `namespace/name`, for its port mappings.
    let mut ready_attachments: HashMap<ObjectName, bool> = HashMap::with_capacity(objects.attachments.len());
    for (position, shared) in objects.attachments.iter().enumerate().filter(|(_, a)| is_local(a, node)) {
        let att: &Attachment = shared;
        let key = attachment_key(att);
        let ns_name = key.name.clone();
        let planned = plan.attachments.get(&ns_name);
        let owner_failure = att.spec.sandbox.attachment.as_ref().and_then(|owner| {
            let owner_key = key.name.sibling(owner);
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
        ready_attachments.insert(ns_name, result.is_ok());
        let inputs = digest((generation(att), &result, info));
        let unchanged = b.remembers(&key) && b.attachments.unchanged(position, shared, &key);
        if b.reuse_unchanged(&key, unchanged, inputs) {
            continue;
        }
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
        let node_addresses = info.map(|i| i.node_addresses.clone()).unwrap_or_default();
        b.push(key, att, unchanged, TypedStatus::Attachment(status, node_addresses), inputs);
    }

    for (position, shared) in objects.port_mappings.iter().enumerate() {
        let pm: &PortMapping = shared;
        let key = port_mapping_key(pm);
        let Some(planned) = plan.port_mappings.get(&key.name) else {
            continue;
        };
        let att_key = key.name.sibling(&pm.spec.attachment);
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
        let bindings = planned.as_ref().ok().filter(|_| result.is_ok());
        let inputs = digest((generation(pm), &result, bindings));
        let unchanged = b.remembers(&key) && b.port_mappings.unchanged(position, shared, &key);
        if b.reuse_unchanged(&key, unchanged, inputs) {
            continue;
        }
        let conditions = b.condition(&key, generation(pm), &result);
        let status = PortMappingStatus { bindings: bindings.cloned().unwrap_or_default(), observed_generation: generation(pm), conditions };
        b.push(key, pm, unchanged, TypedStatus::PortMapping(status), inputs);
    }

    // Objects that could not even be parsed still get a status (once).
    let mut listed: HashSet<ObjectKey> = HashSet::new();
    if !load_errors.is_empty() {
        listed.extend(b.verdicts.iter().map(|v| v.key.clone()));
    }
    for err in load_errors {
        let Some(key) = &err.key else { continue };
        if !listed.insert(key.clone()) {
            continue;
        }
        let conditions = b.condition(key, Some(1), &Err(Failure::invalid(err.message.clone())));
        b.push_unloaded(key, conditions);
    }
    b.finish()
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

    fn pass(objects: &ObjectSet, previous: Previous<'_>, now: &str) -> Computed {
        let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
        let plan = crate::plan::plan(objects, &facts, &Default::default());
        compute(objects, &plan, &SyncReport::default(), &[], previous, "n1", now)
    }

    #[test]
    fn unchanged_objects_keep_their_entries_and_a_new_one_is_added() {
        let two = objects(2);
        let first = pass(&two, Previous { store: Vec::new(), computed_from: None }, "t1");
        assert!(first.changed);
        assert_eq!(first.store.len(), 5);

        let again = pass(&two, Previous { store: first.store.clone(), computed_from: Some((&two, first.memo.clone())) }, "t2");
        assert!(!again.changed, "an unchanged set rewrites nothing");
        assert_eq!(again.store, first.store, "lastTransitionTime stays t1");

        // After a restart there is no memo: every entry is rebuilt, and the
        // stored conditions still keep their transition times.
        let restarted = pass(&two, Previous { store: first.store.clone(), computed_from: None }, "t2");
        assert_eq!(restarted.store, first.store);

        let three = objects(3);
        let grown = pass(&three, Previous { store: first.store.clone(), computed_from: Some((&two, first.memo.clone())) }, "t3");
        assert!(grown.changed);
        assert_eq!(grown.store.len(), 7);
        let fresh = pass(&three, Previous { store: Vec::new(), computed_from: None }, "t1");
        // Same content as computing from nothing, bar the new objects' transition time.
        let strip = |s: &StatusStore| serde_json::to_string(s).unwrap().replace("t3", "t1");
        assert_eq!(strip(&grown.store), strip(&fresh.store));
        // Where each entry came from: the old attachments and mappings moved
        // over as they were (their serialized form is reused); the network
        // (one attachment more) and the new objects built.
        let built: Vec<String> = grown
            .store
            .iter()
            .zip(&grown.origins)
            .filter(|(_, o)| o.is_none())
            .map(|(e, _)| key_of(e).unwrap().name.name().to_string())
            .collect();
        assert_eq!(built, ["n", "a2", "p2"]);
        for (entry, origin) in grown.store.iter().zip(&grown.origins).filter(|(_, o)| o.is_some()) {
            assert_eq!(entry, &first.store[origin.unwrap()]);
        }
        assert!(restarted.origins.iter().all(Option::is_none), "without a memo nothing is moved over");
    }

    /// A pass with `report` instead of a clean one.
    fn pass_with(objects: &ObjectSet, report: &SyncReport, previous: Previous<'_>, now: &str) -> Computed {
        let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
        let plan = crate::plan::plan(objects, &facts, &Default::default());
        compute(objects, &plan, report, &[], previous, "n1", now)
    }

    fn ready_of(store: &StatusStore, key: ObjectKey) -> (String, String) {
        let entry = store.iter().find(|v| key_of(v) == Some(key.clone())).unwrap();
        let c = &entry["status"]["conditions"][0];
        (c["status"].as_str().unwrap().to_string(), c["lastTransitionTime"].as_str().unwrap().to_string())
    }

    #[test]
    fn an_unchanged_object_whose_outcome_changed_is_rebuilt_and_the_rest_moved_over() {
        let two = objects(2);
        let first = pass(&two, Previous { store: Vec::new(), computed_from: None }, "t1");
        // Same objects, same plan; the dataplane failed for a1 only.
        let mut failed = SyncReport::default();
        failed.endpoint_errors.insert(ObjectName::from("default/a1"), Failure::new(reason::KERNEL_ERROR, "veth: no"));
        let broken =
            pass_with(&two, &failed, Previous { store: first.store.clone(), computed_from: Some((&two, first.memo.clone())) }, "t2");
        assert!(broken.changed);
        assert_eq!(ready_of(&broken.store, ObjectKey::attachment("default", "a1")), ("False".into(), "t2".into()));
        // Its mapping follows it; everything else is the previous entry, moved.
        assert_eq!(ready_of(&broken.store, ObjectKey::port_mapping("default", "p1")), ("False".into(), "t2".into()));
        let rebuilt: Vec<String> = broken
            .store
            .iter()
            .zip(&broken.origins)
            .filter(|(_, o)| o.is_none())
            .map(|(e, _)| key_of(e).unwrap().name.name().to_string())
            .collect();
        assert_eq!(rebuilt, ["a1", "p1"]);
        let verdict = broken.verdicts.iter().find(|v| v.key == ObjectKey::attachment("default", "a0")).unwrap();
        assert!(verdict.ready, "a verdict of a moved entry is read from it");

        // Repaired: Ready again, from the moment it was.
        let repaired = pass(&two, Previous { store: broken.store.clone(), computed_from: Some((&two, broken.memo.clone())) }, "t3");
        assert_eq!(ready_of(&repaired.store, ObjectKey::attachment("default", "a1")), ("True".into(), "t3".into()));
        assert_eq!(ready_of(&repaired.store, ObjectKey::attachment("default", "a0")), ("True".into(), "t1".into()));
        assert!(repaired.verdicts.iter().all(|v| v.ready));
    }

    #[test]
    fn objects_in_another_order_are_still_found_and_moved_over() {
        let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
        let three = objects(3);
        let plan = crate::plan::plan(&three, &facts, &Default::default());
        let first = compute(&three, &plan, &SyncReport::default(), &[], Previous { store: Vec::new(), computed_from: None }, "n1", "t1");
        // Another order, the same outcome (what was handed out is held).
        let mut reordered = three.clone();
        reordered.port_mappings.reverse();
        reordered.attachments.rotate_left(1);
        let replan = crate::plan::plan(&reordered, &facts, &plan.allocations);
        let previous = Previous { store: first.store.clone(), computed_from: Some((&three, first.memo.clone())) };
        let again = compute(&reordered, &replan, &SyncReport::default(), &[], previous, "n1", "t2");
        assert!(again.origins.iter().all(Option::is_some), "every entry moved over: {:?}", again.origins);
        assert!(again.changed, "the file lists them in the new order");
        assert_eq!(ready_of(&again.store, ObjectKey::port_mapping("default", "p0")), ("True".into(), "t1".into()));
    }

    #[test]
    fn a_changed_spec_or_status_rebuilds_the_entry() {
        let two = objects(2);
        let first = pass(&two, Previous { store: Vec::new(), computed_from: None }, "t1");
        let mut edited = two.clone();
        std::sync::Arc::make_mut(&mut edited.attachments[1]).spec.interface = Some("net9".into());
        let after = pass(&edited, Previous { store: first.store.clone(), computed_from: Some((&two, first.memo.clone())) }, "t2");
        assert!(after.changed);
        let a1 = after.store.iter().find(|v| key_of(v) == Some(ObjectKey::attachment("default", "a1"))).unwrap();
        assert_eq!(a1["spec"]["interface"], "net9");
        assert_eq!(a1["status"]["interface"], "net9");

        // Fewer objects: the store shrinks and is rewritten.
        let one = objects(1);
        let shrunk = pass(&one, Previous { store: first.store, computed_from: Some((&two, first.memo)) }, "t2");
        assert!(shrunk.changed);
        assert_eq!(shrunk.store.len(), 3);
    }
}
