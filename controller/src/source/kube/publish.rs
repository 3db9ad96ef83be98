//! What this agent writes back: finalizers, status (its own objects', its
//! entry of each Network's), and Events when an object stops being Ready.
//! Writes stay proportional: an attachment's change writes its own status
//! only; a Network's entry of this node changes with the node's
//! realization of it (ready, MTU, unreachable peers), not with its
//! attachments, since every agent watches every Network.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{note_api, Cluster};
use crate::api::{ready_condition, Condition, Network, NetworkNodeStatus, NetworkStatus};
use crate::plan::outcome::reason;

/// Finalizer on Attachments and PortMappings: the node's agent tears the
/// object down before it disappears.
pub const TEARDOWN_FINALIZER: &str = "netlet.io/teardown";
/// Finalizer on Networks: held while any Attachment references the network.
pub const IN_USE_FINALIZER: &str = "netlet.io/in-use";
/// Our name in managedFields.
const FIELD_MANAGER: &str = "netlet";

pub(super) fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

pub(super) fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// Writes of one kind go out together, this many at a time: a pass that
/// changed many objects is not published one round trip after another.
const WRITES_IN_FLIGHT: usize = 16;

pub(super) async fn concurrently<F: std::future::Future<Output = ()>>(writes: impl IntoIterator<Item = F>) {
    futures::stream::iter(writes).for_each_concurrent(WRITES_IN_FLIGHT, |write| write).await
}

pub(super) fn has_finalizer<K: ResourceExt>(o: &K, f: &str) -> bool {
    o.finalizers().iter().any(|x| x == f)
}

impl Cluster {
    pub(super) async fn ensure_finalizer<K>(&self, api: &Api<K>, obj: &K, finalizer: &str)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    {
        if has_finalizer(obj, finalizer) || obj.meta().deletion_timestamp.is_some() {
            return;
        }
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(finalizer.into());
        // resourceVersion makes this a conditional update: a concurrent
        // writer makes it fail with 409 and the next reconcile retries.
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
        let result = api.patch(&obj.name_any(), &patch_params(), &Patch::Merge(&patch)).await;
        note_api(&self.metrics, &format!("patch {}", K::plural(&())), result.as_ref().err());
        match result {
            Ok(_) => {}
            // Another node added its copy of the same finalizer first.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(object = %obj.name_any(), "finalizer patch raced (409); next pass")
            }
            Err(e) => tracing::warn!(object = %obj.name_any(), error = %e, "adding finalizer failed; will retry"),
        }
    }

    pub(super) async fn remove_finalizer<K>(&self, api: &Api<K>, obj: &K, finalizer: &str)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    {
        if !has_finalizer(obj, finalizer) {
            return;
        }
        let finalizers: Vec<&String> = obj.finalizers().iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
        let result = api.patch(&obj.name_any(), &patch_params(), &Patch::Merge(&patch)).await;
        note_api(&self.metrics, &format!("patch {}", K::plural(&())), result.as_ref().err());
        match result {
            Ok(_) => tracing::info!(object = %obj.name_any(), "teardown done; finalizer removed"),
            Err(e) => {
                tracing::warn!(object = %obj.name_any(), error = %e, "removing finalizer failed; will retry")
            }
        }
    }

    /// Patches the status of a namespaced object this node alone writes,
    /// when the live one differs; an Event when it stops being Ready.
    pub(super) async fn publish_status<K, S>(&self, api: Api<K>, live: &K, have: Option<&S>, want: &S, conditions: fn(&S) -> &[Condition])
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: serde::Serialize + PartialEq,
    {
        if have == Some(want) {
            return;
        }
        let ready = |s: &S| ready_condition(conditions(s)).map(Condition::is_true);
        let was_ready = have.and_then(ready);
        let patch = json!({ "status": want });
        let result =
            tokio::time::timeout(Duration::from_secs(10), api.patch_status(&live.name_any(), &patch_params(), &Patch::Merge(&patch)))
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("timeout".into())));
        note_api(&self.metrics, &format!("patch {}/status", K::plural(&())), result.as_ref().err());
        if let Err(e) = result {
            tracing::warn!(object = %live.name_any(), error = %e, "status update failed; will retry");
            return;
        }
        // A state that resolves itself (a pod's sandbox not made yet, an
        // address block being claimed) is no Warning: every pod start
        // would raise one.
        let failed = |c: &&Condition| !c.is_true() && !reason::is_pending(&c.reason);
        if let (true, Some(condition)) = (was_ready != Some(false), ready_condition(conditions(want)).filter(failed)) {
            self.event(live, condition).await;
        }
    }

    pub(super) async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, ready: &Condition) {
        let event = Event {
            type_: EventType::Warning,
            reason: ready.reason.clone(),
            note: Some(ready.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let result = self.recorder.publish(&event, &obj.object_ref(&())).await;
        note_api(&self.metrics, "create events.events.k8s.io", result.as_ref().err());
        if let Err(e) = result {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// Networks are written by every node realizing them: each agent owns
    /// its entry in `status.nodes`; Ready summarizes all entries. Conflicts
    /// (409) are retried with a fresh read.
    pub(super) async fn publish_network_status(&self, name: &str, ours: &NetworkStatus, outside: &[String]) {
        // The watched copy usually shows our entry as it is: no request.
        let cached = self.networks.get(&reflector::ObjectRef::new(name));
        if cached.is_some_and(|c| self.network_status(&c, ours, outside) == c.status.clone().unwrap_or_default()) {
            return;
        }
        let api: Api<Network> = Api::all(self.client.clone());
        for _ in 0..5 {
            let current = api.get_status(name).await;
            note_api(&self.metrics, "get networks/status", current.as_ref().err());
            let Ok(current) = current else {
                return;
            };
            let new = self.network_status(&current, ours, outside);
            if current.status.as_ref() == Some(&new) {
                return;
            }
            let mut updated = current.clone();
            updated.status = Some(new);
            let result = api.replace_status(name, &post_params(), &updated).await;
            note_api(&self.metrics, "update networks/status", result.as_ref().err());
            match result {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::info!(network = name, "network status changed under us (409); retrying with a fresh read");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(network = name, error = %e, "network status update failed; will retry");
                    return;
                }
            }
        }
    }

    /// `current`'s status with this node's entry as `ours` says, and Ready
    /// summarizing every node's.
    fn network_status(&self, current: &Network, ours: &NetworkStatus, outside: &[String]) -> NetworkStatus {
        let status = current.status.clone().unwrap_or_default();
        let our_ready = ready_condition(&ours.conditions);
        let entry = NetworkNodeStatus {
            node: self.node.clone(),
            ready: our_ready.is_some_and(|c| c.is_true()),
            mtu: ours.mtu,
            unreachable_peers: ours.unreachable_peers.clone(),
            addresses_outside_blocks: outside.to_vec(),
            message: our_ready.filter(|c| !c.is_true()).map(|c| c.message.clone()).unwrap_or_default(),
        };
        let mut nodes: Vec<NetworkNodeStatus> = status.nodes.iter().filter(|n| n.node != self.node).cloned().collect();
        nodes.push(entry);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let failing: Vec<String> = nodes.iter().filter(|n| !n.ready).map(|n| format!("{}: {}", n.node, n.message)).collect();
        let mut cond = if failing.is_empty() {
            Condition::ready(true, "Ready", format!("realized on {} node(s)", nodes.len()))
        } else {
            Condition::ready(
                false,
                our_ready.filter(|c| !c.is_true()).map(|c| c.reason.clone()).unwrap_or_else(|| "NotReadyOnSomeNodes".into()),
                failing.join("; "),
            )
        };
        if current.meta().deletion_timestamp.is_some() {
            let name = current.name_any();
            let refs = self.attachments.state().iter().filter(|a| a.spec.network == name).count();
            cond = Condition::ready(
                false,
                "DeletionPending",
                format!("deletion waits for {refs} attachment(s) that still reference this network"),
            );
        }
        cond.observed_generation = current.meta().generation;
        let now = crate::api::now_rfc3339();
        NetworkStatus {
            conditions: crate::api::merge_condition(&status.conditions, cond, &now),
            bridge: ours.bridge.clone(),
            gateways: ours.gateways.clone(),
            // No count here (see NetworkStatus::attachments).
            attachments: None,
            observed_generation: current.meta().generation,
            nodes,
            address_blocks: status.address_blocks,
            // Per node (in `nodes`): one shared value would flip-flop
            // between nodes that see it differently.
            mtu: None,
            unreachable_peers: Vec::new(),
        }
    }
}
