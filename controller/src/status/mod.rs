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

use crate::api::{Attachment, Condition, Network, PortMapping};
use crate::dataplane::SyncReport;
use crate::objects::{attachment_key, network_key, port_mapping_key, Kind, ObjectKey, ObjectName, ObjectSet};
use crate::plan::outcome::{reason, Failure};
use crate::plan::{is_local, Plan};
use crate::source::manifests::LoadError;

mod entry;
#[cfg(test)]
mod tests;

use entry::serialize;
pub use entry::{status_of, Inputs, ObjectStatus, StatusEntry, Subject};

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
