//! The desired objects one reconcile works from, whatever their source.

use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{Attachment, Kind, Network, PortMapping};

/// Identity of one object: kind, namespace (none for Networks), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjectKey {
    pub kind: KindName,
    pub namespace: Option<String>,
    pub name: String,
}

/// `Kind` as a serializable string wrapper (state files are JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum KindName {
    Network,
    Attachment,
    PortMapping,
}

impl From<Kind> for KindName {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Network => KindName::Network,
            Kind::Attachment => KindName::Attachment,
            Kind::PortMapping => KindName::PortMapping,
        }
    }
}

impl From<KindName> for Kind {
    fn from(kind: KindName) -> Self {
        match kind {
            KindName::Network => Kind::Network,
            KindName::Attachment => Kind::Attachment,
            KindName::PortMapping => Kind::PortMapping,
        }
    }
}

impl ObjectKey {
    pub fn network(name: &str) -> Self {
        ObjectKey { kind: KindName::Network, namespace: None, name: name.into() }
    }
    pub fn attachment(namespace: &str, name: &str) -> Self {
        ObjectKey { kind: KindName::Attachment, namespace: Some(namespace.into()), name: name.into() }
    }
    pub fn port_mapping(namespace: &str, name: &str) -> Self {
        ObjectKey { kind: KindName::PortMapping, namespace: Some(namespace.into()), name: name.into() }
    }
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn ns_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Kind::from(self.kind), self.ns_name())
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
    ObjectKey::attachment(&namespace_of(a), &a.name_any())
}
pub fn port_mapping_key(p: &PortMapping) -> ObjectKey {
    ObjectKey::port_mapping(&namespace_of(p), &p.name_any())
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
        self.networks.sort_by_key(|n| n.name_any());
        self.attachments.sort_by_key(|a| attachment_key(a));
        self.port_mappings.sort_by_key(|p| port_mapping_key(p));
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
}
