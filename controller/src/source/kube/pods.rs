//! Pods of this node (watched with `spec.nodeName=<node>`): which
//! attachments are this node's because their pod runs here, what a pass
//! knows of those pods, the Attachments the `netlet.io/networks`
//! annotation stands for (made by this agent, owned by the pod), and the
//! `netlet.io/network-status` annotation written back.
//!
//! The annotation's Attachments are made as soon as the pod is seen on
//! this node, before the runtime sets its sandbox up: when netlet-cni's
//! ADD comes, they are already in the agent's view, and the ADD waits for
//! one pass only, not for API round trips.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::publish::{concurrently, patch_params, post_params};
use super::scope::{label_value, NETWORK_LABEL, NODE_LABEL};
use super::{note_api, Cluster};
use crate::api::{Attachment, AttachmentStatus};
use crate::objects::{namespace_of, ObjectKey, ObjectName};
use crate::pods::annotation::{self, NETWORKS_ANNOTATION, NETWORK_STATUS_ANNOTATION, POD_LABEL};
use crate::pods::cni::{attachment_statuses, PodAttachment, PodAttachments};
use crate::pods::{local_netns_path, PodSandbox, PodState, Pods};
use crate::reconcile::Outcome;

/// The pod an attachment's sandbox names, as namespace/name.
pub(super) fn pod_of(a: &Attachment) -> Option<ObjectName> {
    a.spec.sandbox.pod.as_deref().map(|pod| ObjectName::namespaced(&namespace_of(a), pod))
}

pub(super) fn pod_in(store: &Store<Pod>, key: &ObjectName) -> Option<Arc<Pod>> {
    store.get(&ObjectRef::new(key.name()).within(key.namespace().unwrap_or("default")))
}

/// The selections of a pod's annotation (none if it has none or it is
/// not valid: the network-status annotation says why).
fn selections(pod: &Pod) -> Result<Vec<annotation::Selection>, String> {
    match pod.annotations().get(NETWORKS_ANNOTATION) {
        None => Ok(Vec::new()),
        Some(value) => annotation::parse(value),
    }
}

/// A view of the pods and attachments the agent has, for CNI calls.
pub(super) struct PodView<'a> {
    pub attachments: &'a super::scope::Scoped<Attachment>,
    pub pods: &'a Store<Pod>,
}

impl PodAttachments for PodView<'_> {
    fn attachments_of(&self, pod: &ObjectName) -> Option<Vec<PodAttachment>> {
        let named = by_pod(&self.attachments.state()).remove(pod).unwrap_or_default();
        with_annotation(named, pod, pod_in(self.pods, pod).as_deref())
    }
}

/// The live attachments that name a pod, by pod.
fn by_pod(attachments: &[Arc<Attachment>]) -> HashMap<ObjectName, Vec<PodAttachment>> {
    let mut out: HashMap<ObjectName, Vec<PodAttachment>> = HashMap::new();
    for a in attachments.iter().filter(|a| a.meta().deletion_timestamp.is_none()) {
        let Some(pod) = pod_of(a) else { continue };
        let network = a.spec.network.clone();
        out.entry(pod).or_default().push(PodAttachment {
            name: ObjectName::of(&**a),
            network,
            default_route: a.spec.default_route == Some(true),
        });
    }
    out
}

/// A pod's attachments: those naming it, and those its annotation stands
/// for (made by the agent, maybe not yet). None: neither is known.
fn with_annotation(mut named: Vec<PodAttachment>, pod: &ObjectName, live: Option<&Pod>) -> Option<Vec<PodAttachment>> {
    let Some(live) = live else { return (!named.is_empty()).then_some(named) };
    for s in selections(live).unwrap_or_default() {
        let name = pod.sibling(&annotation::attachment_name(pod.name(), &s));
        if !named.iter().any(|a| a.name == name) {
            named.push(PodAttachment { name, network: s.network, default_route: false });
        }
    }
    Some(named)
}

/// What makes a pod attachment this node's, besides its pod in the watch.
pub(super) struct Claims<'a> {
    /// The pod sandboxes netlet-cni reported.
    pub sandboxes: &'a BTreeMap<ObjectName, PodSandbox>,
    /// Attachments whose pod exists nowhere, reported by this agent.
    pub orphans: &'a BTreeSet<ObjectName>,
}

impl Cluster {
    /// Is this pod attachment this node's? Its pod runs here (or ran, and
    /// its sandbox is still recorded), or this node realized it last (the
    /// pod is gone: the addresses stay held here, and status says why), or
    /// its pod exists nowhere and no node has reported it yet.
    pub(super) fn pod_attachment_is_ours(&self, a: &Attachment, claims: &Claims<'_>) -> bool {
        let Some(pod) = pod_of(a) else { return false };
        pod_in(&self.pods, &pod).is_some()
            || claims.sandboxes.contains_key(&pod)
            || a.status.as_ref().and_then(|s| s.node.as_deref()) == Some(self.node.as_str())
            || claims.orphans.contains(&ObjectName::of(a))
    }

    /// The pod attachments nobody reports (no node realizes or realized
    /// them) whose pod does not exist: asked of the API server one by one
    /// (the watch has this node's pods only). The first agent to report
    /// PodNotFound keeps them; a pod scheduled later is its node's.
    pub(super) async fn orphans(
        &self,
        sandboxes: &BTreeMap<ObjectName, PodSandbox>,
        before: &BTreeSet<ObjectName>,
    ) -> BTreeSet<ObjectName> {
        let mut orphans = BTreeSet::new();
        for a in self.attachments.state() {
            let Some(pod) = pod_of(&a) else { continue };
            let reported = a.status.as_ref().is_some_and(|s| s.node.is_some());
            if a.spec.node_name.is_some() || reported || a.meta().deletion_timestamp.is_some() {
                continue;
            }
            if pod_in(&self.pods, &pod).is_some() || sandboxes.contains_key(&pod) {
                continue;
            }
            let key = ObjectName::of(&*a);
            let api = Api::<Pod>::namespaced(self.client.clone(), pod.namespace().unwrap_or("default"));
            let found = api.get_opt(pod.name()).await;
            note_api(&self.metrics, "get pods", found.as_ref().err());
            match found {
                Ok(None) => {
                    orphans.insert(key);
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(pod = %pod, error = %e, "cannot tell whether a pod exists; as before");
                    if before.contains(&key) {
                        orphans.insert(key);
                    }
                }
            }
        }
        orphans
    }

    /// What a pass knows of the pods `attachments` name.
    pub(super) fn pods_for(&self, attachments: &[Arc<Attachment>], sandboxes: &BTreeMap<ObjectName, PodSandbox>) -> Pods {
        let mut pods = Pods::new();
        for key in attachments.iter().filter_map(|a| pod_of(a)) {
            if pods.contains_key(&key) {
                continue;
            }
            let live = pod_in(&self.pods, &key);
            let state = match (sandboxes.get(&key), &live) {
                // A sandbox of an earlier pod of that name is not this one's.
                (Some(s), Some(p)) if s.uid.is_some() && s.uid.as_deref() != p.metadata.uid.as_deref() => PodState::NotStarted,
                (Some(s), _) => {
                    PodState::Running(PodSandbox { netns: local_netns_path(&s.netns).to_string_lossy().into_owned(), ..s.clone() })
                }
                (None, Some(_)) => PodState::NotStarted,
                (None, None) => continue,
            };
            pods.insert(key, state);
        }
        pods
    }

    /// Makes the Attachments each pod's annotation stands for, adopts
    /// those of an earlier pod of the same name, and deletes those it no
    /// longer asks for. Objects are compared with the watch's view; a
    /// create that raced (409) is seen by the next pass.
    pub(super) async fn sync_annotation_attachments(&self) {
        let attachments = self.attachments.state();
        // The attachments made for each pod, by its label.
        let mut made_for: HashMap<ObjectName, Vec<&Arc<Attachment>>> = HashMap::new();
        for a in &attachments {
            if let Some(pod) = a.labels().get(POD_LABEL) {
                made_for.entry(ObjectName::namespaced(&namespace_of(&**a), pod)).or_default().push(a);
            }
        }
        for pod in self.pods.state() {
            let (Some(uid), None) = (pod.metadata.uid.as_deref(), pod.metadata.deletion_timestamp.as_ref()) else { continue };
            let namespace = namespace_of(&*pod);
            let name = pod.name_any();
            // Labeled for this node from the start: no other agent hears of them.
            let wanted: Vec<Attachment> = selections(&pod)
                .unwrap_or_default()
                .iter()
                .map(|s| self.labeled_for_this_node(annotation::attachment_for(&namespace, &name, uid, s)))
                .collect();
            let api = Api::<Attachment>::namespaced(self.client.clone(), &namespace);
            let made = made_for.remove(&ObjectName::namespaced(&namespace, &name)).unwrap_or_default();
            for want in &wanted {
                let existing = made.iter().find(|a| a.metadata.name == want.metadata.name);
                let result = match existing {
                    None => api.create(&post_params(), want).await.map(drop),
                    Some(have) if have.spec != want.spec => {
                        // The annotation changed: the object follows it.
                        let patch = json!({"spec": want.spec, "metadata": {"ownerReferences": want.metadata.owner_references, "labels": want.metadata.labels}});
                        api.patch(&want.name_any(), &patch_params(), &Patch::Merge(&patch)).await.map(drop)
                    }
                    Some(have) if have.owner_references() != want.owner_references() && have.metadata.deletion_timestamp.is_none() => {
                        // A recreated pod of that name takes it over (and its addresses).
                        let patch = json!({"metadata": {"ownerReferences": want.metadata.owner_references}});
                        api.patch(&want.name_any(), &patch_params(), &Patch::Merge(&patch)).await.map(drop)
                    }
                    Some(_) => Ok(()),
                };
                note_api(&self.metrics, "create/patch attachments", result.as_ref().err());
                match result {
                    Ok(()) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), attachment = %want.name_any(), error = %e, "cannot make the annotation's attachment; will retry")
                    }
                }
            }
            for stale in made
                .iter()
                .filter(|a| a.metadata.deletion_timestamp.is_none() && !wanted.iter().any(|w| w.metadata.name == a.metadata.name))
            {
                let result = api.delete(&stale.name_any(), &DeleteParams::default()).await.map(drop);
                note_api(&self.metrics, "delete attachments", result.as_ref().err());
                if let Err(e) = result {
                    tracing::warn!(attachment = %stale.name_any(), error = %e, "cannot delete an attachment the pod no longer asks for; will retry");
                }
            }
        }
    }

    /// `a` with this node's node and network labels (see scope.rs). A pod
    /// recreated under the same name on another node gets its attachments
    /// once the old ones go with the old pod, their owner: that node's
    /// agent does not see them, and its create is refused until then.
    fn labeled_for_this_node(&self, mut a: Attachment) -> Attachment {
        let labels = a.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(NODE_LABEL.into(), label_value(&self.node));
        labels.insert(NETWORK_LABEL.into(), label_value(&a.spec.network));
        a
    }

    /// Writes each pod's `netlet.io/network-status` annotation where it
    /// changed: one entry per attachment of the pod, from this pass.
    pub(super) async fn publish_pod_network_status(&self, outcome: &Outcome) {
        let status = attachment_statuses(outcome);
        let mut named = by_pod(&self.attachments.state());
        let mut changes: Vec<(Arc<Pod>, Option<String>)> = Vec::new();
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = ObjectName::of(&*pod);
            let attachments = with_annotation(named.remove(&key).unwrap_or_default(), &key, Some(&pod)).unwrap_or_default();
            let text = match selections(&pod) {
                Err(e) => json!([{"error": format!("{NETWORKS_ANNOTATION}: {e}")}]).to_string(),
                Ok(_) if attachments.is_empty() => {
                    if pod.annotations().contains_key(NETWORK_STATUS_ANNOTATION) {
                        changes.push((pod, None));
                    }
                    continue;
                }
                Ok(_) => network_status(&attachments, &status).to_string(),
            };
            if pod.annotations().get(NETWORK_STATUS_ANNOTATION) != Some(&text) {
                changes.push((pod, Some(text)));
            }
        }
        concurrently(changes.iter().map(|(pod, text)| self.annotate(pod, text.as_deref()))).await;
    }

    async fn annotate(&self, pod: &Pod, value: Option<&str>) {
        let api = Api::<Pod>::namespaced(self.client.clone(), &namespace_of(pod));
        let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: value}}});
        let result = api.patch(&pod.name_any(), &patch_params(), &Patch::Merge(&patch)).await;
        note_api(&self.metrics, "patch pods", result.as_ref().err());
        if let Err(e) = result {
            tracing::warn!(pod = %pod.name_any(), error = %e, "cannot write the pod's network-status; will retry");
        }
    }
}

/// Multus' network-status shape (`name`, `interface`, `ips`, `mac`), with
/// netlet's attachment and its Ready condition.
fn network_status(attachments: &[PodAttachment], status: &HashMap<&ObjectKey, &AttachmentStatus>) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = attachments
        .iter()
        .map(|a| {
            let s = status.get(&ObjectKey { kind: crate::objects::Kind::Attachment, name: a.name.clone() });
            let ready = s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            let ips: Vec<&str> = s
                .map(|s| [&s.ipv4_address, &s.ipv6_address].into_iter().flatten().filter_map(|c| c.split('/').next()).collect())
                .unwrap_or_default();
            json!({
                "name": a.network,
                "attachment": a.name.name(),
                "interface": s.and_then(|s| s.interface.clone()),
                "ips": ips,
                "mac": s.and_then(|s| s.mac_address.clone()),
                "ready": ready.is_some_and(|c| c.status == "True"),
                "reason": ready.map(|c| c.reason.clone()),
                "message": ready.filter(|c| c.status != "True").map(|c| c.message.clone()),
            })
        })
        .collect();
    serde_json::Value::Array(entries)
}
