//! The desired objects one reconcile works from, whatever their source,
//! and the names that identify them everywhere else (allocations, plan
//! outcomes, the dataplane's per-object errors, status).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;

pub use crate::api::Kind;
use crate::api::{Attachment, Network, PortMapping};

/// An object's name with its namespace when it has one: `namespace/name`
/// for Attachments and PortMappings, `name` for Networks, as kubectl
/// prints them. Held as that one string (it is what allocations.json keys
/// and messages show), so a map keyed by it is also found by `&str`.
#[derive(Clone)]
pub struct ObjectName {
    text: String,
    /// Where the namespace ends in `text` (at the first '/', which no
    /// namespace contains).
    slash: Option<usize>,
}

impl ObjectName {
    pub fn namespaced(namespace: &str, name: &str) -> Self {
        let mut text = String::with_capacity(namespace.len() + 1 + name.len());
        text.push_str(namespace);
        text.push('/');
        text.push_str(name);
        ObjectName { text, slash: Some(namespace.len()) }
    }

    pub fn cluster(name: &str) -> Self {
        ObjectName { text: name.to_string(), slash: None }
    }

    /// A namespaced object's name (its namespace `default` when unset).
    pub fn of<K: ResourceExt>(object: &K) -> Self {
        let meta = object.meta();
        let name = meta.name.as_deref().or(meta.generate_name.as_deref()).unwrap_or_default();
        ObjectName::namespaced(meta.namespace.as_deref().unwrap_or("default"), name)
    }

    /// Another object of the same namespace (the attachment a port
    /// mapping publishes, the one whose sandbox is shared).
    pub fn sibling(&self, name: &str) -> Self {
        match self.namespace() {
            Some(ns) => ObjectName::namespaced(ns, name),
            None => ObjectName::cluster(name),
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.slash.map(|i| &self.text[..i])
    }

    pub fn name(&self) -> &str {
        match self.slash {
            Some(i) => &self.text[i + 1..],
            None => &self.text,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for ObjectName {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(ObjectName { text: text.to_string(), slash: text.find('/') })
    }
}

impl From<&str> for ObjectName {
    fn from(text: &str) -> Self {
        text.parse().unwrap_or_else(|never| match never {})
    }
}

// Equal, hashed and ordered as the string: `slash` follows from it.
impl PartialEq for ObjectName {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for ObjectName {}
impl std::hash::Hash for ObjectName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}
impl PartialOrd for ObjectName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ObjectName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}
impl Borrow<str> for ObjectName {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl serde::Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ObjectName::from(&*text))
    }
}

/// Identity of one object: its kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub name: ObjectName,
}

impl ObjectKey {
    pub fn network(name: &str) -> Self {
        ObjectKey { kind: Kind::Network, name: ObjectName::cluster(name) }
    }
    pub fn attachment(namespace: &str, name: &str) -> Self {
        ObjectKey { kind: Kind::Attachment, name: ObjectName::namespaced(namespace, name) }
    }
    pub fn port_mapping(namespace: &str, name: &str) -> Self {
        ObjectKey { kind: Kind::PortMapping, name: ObjectName::namespaced(namespace, name) }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Namespace of a namespaced object; standalone objects without one are in `default`.
pub fn namespace_of<K: ResourceExt>(obj: &K) -> String {
    obj.namespace().unwrap_or_else(|| "default".into())
}

pub fn network_key(n: &Network) -> ObjectKey {
    ObjectKey::network(&n.name_any())
}
pub fn attachment_key(a: &Attachment) -> ObjectKey {
    ObjectKey { kind: Kind::Attachment, name: ObjectName::of(a) }
}
pub fn port_mapping_key(p: &PortMapping) -> ObjectKey {
    ObjectKey { kind: Kind::PortMapping, name: ObjectName::of(p) }
}

/// Every desired object, each list in creation order (creationTimestamp,
/// then source order, then namespace/name): the order in which addresses and
/// ports are handed out and conflicts are won. Objects are shared (`Arc`)
/// with the source they came from and with the previous pass's set: a pass
/// among thousands of objects neither copies nor frees the ones that did
/// not change, and tells them apart from changed ones by pointer.
#[derive(Clone, Debug, Default)]
pub struct ObjectSet {
    pub networks: Vec<Arc<Network>>,
    pub attachments: Vec<Arc<Attachment>>,
    pub port_mappings: Vec<Arc<PortMapping>>,
}

fn stamp<K: ResourceExt>(o: &Arc<K>) -> Option<k8s_openapi::jiff::Timestamp> {
    o.creation_timestamp().map(|t| t.0)
}

impl ObjectSet {
    /// Sorts each list into creation order. Sorting is stable, so objects
    /// with equal timestamps (standalone manifests have none) keep source order.
    pub fn sort_by_creation(&mut self) {
        self.networks.sort_by_key(stamp);
        self.attachments.sort_by_key(stamp);
        self.port_mappings.sort_by_key(stamp);
    }

    /// Creation order, ties broken by namespace/name: for a source whose
    /// own order means nothing (the API server's lists, a reflector's
    /// store), so that every agent, and every restart of one, sees the same
    /// order (which decides interface names and default routes).
    pub fn sort_by_creation_then_name(&mut self) {
        fn by_namespace_then_name<K: ResourceExt>(o: &Arc<K>) -> (Option<&str>, Option<&str>) {
            (o.meta().namespace.as_deref(), o.meta().name.as_deref())
        }
        self.networks.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        self.attachments.sort_by(|a, b| by_namespace_then_name(a).cmp(&by_namespace_then_name(b)));
        self.port_mappings.sort_by(|a, b| by_namespace_then_name(a).cmp(&by_namespace_then_name(b)));
        self.sort_by_creation();
    }

    pub fn is_sorted_by_creation(&self) -> bool {
        self.networks.is_sorted_by_key(stamp) && self.attachments.is_sorted_by_key(stamp) && self.port_mappings.is_sorted_by_key(stamp)
    }

    /// This set in creation order: borrowed when it already is (manifests
    /// in file order, a set the caller sorted), else a sorted copy.
    pub fn in_creation_order(&self) -> std::borrow::Cow<'_, ObjectSet> {
        if self.is_sorted_by_creation() {
            std::borrow::Cow::Borrowed(self)
        } else {
            let mut sorted = self.clone();
            sorted.sort_by_creation();
            std::borrow::Cow::Owned(sorted)
        }
    }

    pub fn network(&self, name: &str) -> Option<&Arc<Network>> {
        self.networks.iter().find(|n| n.name_any() == name)
    }

    pub fn len(&self) -> usize {
        self.networks.len() + self.attachments.len() + self.port_mappings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AttachmentSpec, NetworkSpec};

    fn stamped<K: kube::Resource>(mut o: K, second: i64) -> Arc<K> {
        let t = k8s_openapi::jiff::Timestamp::from_second(second).unwrap();
        o.meta_mut().creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t));
        Arc::new(o)
    }

    #[test]
    fn objects_created_in_the_same_second_are_ordered_by_name_whatever_order_they_came_in() {
        let attachment = |name: &str, ns: &str, second| {
            let mut a = Attachment::new(name, AttachmentSpec::default());
            a.metadata.namespace = Some(ns.into());
            stamped(a, second)
        };
        let mut set = ObjectSet {
            networks: vec![stamped(Network::new("b", NetworkSpec::default()), 5), stamped(Network::new("a", NetworkSpec::default()), 5)],
            attachments: vec![attachment("x", "default", 9), attachment("c", "other", 7), attachment("d", "default", 7)],
            port_mappings: vec![],
        };
        set.sort_by_creation_then_name();
        assert_eq!(set.networks.iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            set.attachments.iter().map(|a| a.name_any()).collect::<Vec<_>>(),
            ["d", "c", "x"],
            "default/d < other/c, both before the later x"
        );
        assert!(set.is_sorted_by_creation());
    }

    #[test]
    fn names_split_at_the_namespace_and_compare_as_their_text() {
        let a = ObjectName::namespaced("ns", "web");
        assert_eq!((a.namespace(), a.name(), a.as_str()), (Some("ns"), "web", "ns/web"));
        assert_eq!(a, ObjectName::from("ns/web"));
        assert_eq!(a.sibling("db"), ObjectName::namespaced("ns", "db"));
        let n = ObjectName::cluster("bridge");
        assert_eq!((n.namespace(), n.name()), (None, "bridge"));
        let map = std::collections::BTreeMap::from([(a.clone(), 1)]);
        assert_eq!(map.get("ns/web"), Some(&1), "found by text");
        assert_eq!(ObjectKey::attachment("ns", "web").to_string(), "Attachment/ns/web");
    }
}
