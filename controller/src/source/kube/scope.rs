//! What this agent watches, so that its cost follows its own node's
//! objects and the node count, not the cluster's attachments.
//!
//! Attachments and PortMappings carry the label `netlet.io/node` (and
//! Attachments `netlet.io/network`); each agent watches those labeled for
//! its node, and those labeled for no node yet (a new object, whatever
//! tool made it): the agent of the Attachment's `spec.nodeName`, or of its
//! pod's node for a `pod` sandbox, labels it and its PortMappings, after
//! which the others stop hearing of it. The attachments a pod's
//! `netlet.io/networks` annotation stands for are made labeled. Label
//! values are the names, or a hash of a name that is no valid label value.
//! Networks and Nodes are watched whole: there are few, and an overlay
//! needs every peer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::api::{Api, ListParams, Patch};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use super::pods::{pod_in, pod_of};
use super::publish::patch_params;
use super::{note_api, reflect, Cluster};
use crate::api::{Attachment, PortMapping};
use crate::metrics::Metrics;
use crate::objects::{namespace_of, ObjectName};

pub const NODE_LABEL: &str = "netlet.io/node";
pub const NETWORK_LABEL: &str = "netlet.io/network";

/// `name` as a label value: itself when it is one (at most 63 characters
/// of `[A-Za-z0-9._-]`, alphanumeric at both ends), else `h-` and a hash.
pub fn label_value(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        name.to_string()
    } else {
        format!("h-{:016x}", crate::naming::stable_hash(name))
    }
}

/// One kind, watched twice: the objects labeled for this node, and those
/// labeled for none.
pub(super) struct Scoped<K: Resource<DynamicType = ()> + 'static> {
    mine: Store<K>,
    unlabeled: Store<K>,
}

impl<K> Scoped<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    pub(super) fn start(api: Api<K>, node: &str, changed: Arc<Notify>, metrics: Arc<Metrics>) -> Self {
        let mine = watcher::Config::default().labels(&format!("{NODE_LABEL}={}", label_value(node)));
        let unlabeled = watcher::Config::default().labels(&format!("!{NODE_LABEL}"));
        Scoped { mine: reflect(api.clone(), mine, changed.clone(), metrics.clone()), unlabeled: reflect(api, unlabeled, changed, metrics) }
    }

    /// Both sets, each object once (an object being labeled can be in
    /// both for a moment: the labeled copy wins).
    pub(super) fn state(&self) -> Vec<Arc<K>> {
        let mut by_name: BTreeMap<ObjectName, Arc<K>> = BTreeMap::new();
        for o in self.unlabeled.state().into_iter().chain(self.mine.state()) {
            by_name.insert(ObjectName::of(&*o), o);
        }
        by_name.into_values().collect()
    }

    pub(super) async fn wait_until_ready(&self) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.mine.wait_until_ready().await?;
        self.unlabeled.wait_until_ready().await
    }
}

/// The labels an object should carry, where they differ from what it has.
fn missing_labels(obj: &impl ResourceExt, want: &[(&str, String)]) -> Option<serde_json::Value> {
    let have = obj.labels();
    let differ = want.iter().any(|(k, v)| have.get(*k) != Some(v));
    differ.then(|| json!({"metadata": {"labels": want.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>()}}))
}

impl Cluster {
    /// Labels this node's Attachments (node and network) and their
    /// PortMappings where the labels are missing or stale; an Attachment
    /// labeled for this node but moved to another gets that node's label.
    pub(super) async fn label_own(&self) {
        let attachments = self.attachments.state();
        let mine = label_value(&self.node);
        for a in &attachments {
            let Some(node) = self.node_of(a) else { continue };
            let labeled_mine = a.labels().get(NODE_LABEL) == Some(&mine);
            if node != self.node && !labeled_mine {
                continue; // another node's, and not labeled for us: theirs to label
            }
            let want = [(NODE_LABEL, label_value(node)), (NETWORK_LABEL, label_value(&a.spec.network))];
            if let Some(patch) = missing_labels(&**a, &want) {
                let api: Api<Attachment> = Api::namespaced(self.client.clone(), &namespace_of(&**a));
                self.patch_labels(&api, &a.name_any(), &patch).await;
            }
        }
        // Looked up by name: a scan per PortMapping was quadratic in the
        // node's objects, on every pass.
        let by_name: HashMap<ObjectName, &Attachment> = attachments.iter().map(|a| (ObjectName::of(&**a), &**a)).collect();
        for p in self.port_mappings.state() {
            let owner = by_name.get(&ObjectName::namespaced(&namespace_of(&*p), &p.spec.attachment));
            let Some(node) = owner.and_then(|a| self.node_of(a)) else { continue };
            if node != self.node {
                continue;
            }
            if let Some(patch) = missing_labels(&*p, &[(NODE_LABEL, label_value(node))]) {
                let api: Api<PortMapping> = Api::namespaced(self.client.clone(), &namespace_of(&*p));
                self.patch_labels(&api, &p.name_any(), &patch).await;
            }
        }
    }

    /// The node an Attachment is for, as far as labels go: its `nodeName`,
    /// or this node for a pod's attachment whose pod runs here (the pod
    /// watch holds this node's pods only).
    fn node_of<'a>(&'a self, a: &'a Attachment) -> Option<&'a str> {
        match a.spec.node_name.as_deref() {
            Some(node) => Some(node),
            None => pod_of(a).filter(|pod| pod_in(&self.pods, pod).is_some()).map(|_| self.node.as_str()),
        }
    }

    async fn patch_labels<K>(&self, api: &Api<K>, name: &str, patch: &serde_json::Value)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let result = api.patch(name, &patch_params(), &Patch::Merge(patch)).await;
        note_api(&self.metrics, &format!("patch {}", K::plural(&())), result.as_ref().err());
        match result {
            Ok(_) => tracing::debug!(object = name, "labeled for its node"),
            Err(e) => tracing::warn!(object = name, error = %e, "labeling failed; next pass"),
        }
    }

    /// Whether any Attachment in the cluster still uses `network` (one
    /// request, asked only while a Network is being deleted): those labeled
    /// for it, and those labeled for no node yet.
    pub(super) async fn network_in_use(&self, network: &str) -> bool {
        if self.attachments.state().iter().any(|a| a.spec.network == network) {
            return true;
        }
        let api: Api<Attachment> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{NETWORK_LABEL}={}", label_value(network))).limit(1);
        let result = api.list_metadata(&params).await;
        note_api(&self.metrics, "list attachments", result.as_ref().err());
        match result {
            Ok(list) => !list.items.is_empty(),
            Err(e) => {
                tracing::warn!(network, error = %e, "cannot tell whether the network is still in use; keeping its finalizer");
                true
            }
        }
    }

    /// Whether the Attachment a PortMapping names exists anywhere (asked
    /// only for a PortMapping being deleted whose Attachment this node
    /// does not see).
    pub(super) async fn attachment_exists(&self, namespace: &str, name: &str) -> bool {
        let api: Api<Attachment> = Api::namespaced(self.client.clone(), namespace);
        // A list by name: the role grants list, not get.
        let result = api.list_metadata(&ListParams::default().fields(&format!("metadata.name={name}")).limit(1)).await;
        note_api(&self.metrics, "list attachments", result.as_ref().err());
        !matches!(result, Ok(list) if list.items.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_names_or_hashes_of_names() {
        assert_eq!(label_value("node-a.example"), "node-a.example");
        let long = "n".repeat(64);
        let hashed = label_value(&long);
        assert!(hashed.starts_with("h-") && hashed.len() <= 63, "{hashed}");
        assert_eq!(hashed, label_value(&long), "stable");
        assert_ne!(label_value("-x"), "-x");
    }
}
