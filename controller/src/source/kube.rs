//! Kubernetes mode: desired objects from the API server, status and
//! finalizers back to it. The only module that talks to the API.
//!
//! Contract (the same as kube-runtime's finalizer helper states for
//! controllers): reconcile is level-triggered and idempotent; teardown is
//! whatever the next reconcile does when an object is excluded from the
//! desired set, so it works even if the object was never realized; a
//! finalizer is removed only after a reconcile that excluded the object
//! finished without node-level errors. The dataplane never depends on the
//! API being reachable: while it is down, nothing is torn down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::api::{
    ready_condition, AddressBlock, Attachment, Condition, Driver, Network, NetworkNodeStatus, NetworkStatus, OverlayPeer, PortMapping,
};
use crate::metrics::Metrics;
use crate::objects::{namespace_of, ObjectSet};
use crate::plan::{overlay, Allocations, HeldEndpoint};
use crate::reconcile::Reconciler;
use crate::state::StateDir;
use crate::status::key_of;

/// Finalizer on Attachments and PortMappings: the node's agent tears the
/// object down before it disappears.
pub const TEARDOWN_FINALIZER: &str = "netlet.io/teardown";
/// Finalizer on Networks: held while any Attachment references the network.
pub const IN_USE_FINALIZER: &str = "netlet.io/in-use";
/// Our name in managedFields.
const FIELD_MANAGER: &str = "netlet";

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// Is this attachment for `node`? (Unscheduled ones are nobody's here.)
fn scheduled_on(a: &Attachment, node: &str) -> bool {
    a.spec.node_name.as_deref() == Some(node)
}

pub struct KubeOptions {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub resync_period: Duration,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Starts a reflector for `api` that pokes `changed` on every event. A
/// list or watch the agent's role refuses is a problem `/readyz` reports
/// (see [`note_api`]) until the next event arrives.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>, metrics: Arc<Metrics>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let what = format!("list/watch {}", K::plural(&()));
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    note_api(&metrics, &what, None);
                    changed.notify_one()
                }
                Err(e) => {
                    let refusal = match &e {
                        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                            refused(e)
                        }
                        watcher::Error::WatchError(r) => (r.code == 401 || r.code == 403).then_some(&**r),
                        _ => None,
                    };
                    if refusal.is_none() {
                        tracing::warn!(error = %e, "watch interrupted; retrying with backoff");
                    }
                    note_api_refusal(&metrics, &what, refusal);
                }
            }
        }
    });
    store
}

/// The API server's answer when it refused a call as unauthenticated (401)
/// or forbidden (403): retrying cannot help until the operator changes the
/// agent's credentials or role.
fn refused(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(r) if r.code == 401 || r.code == 403 => Some(&**r),
        _ => None,
    }
}

/// Records how an API call went: a refusal becomes a problem `/readyz`
/// reports, logged as an error once (not at every retry); success clears
/// it. Other errors are transient and their callers log them.
fn note_api(metrics: &Metrics, what: &str, error: Option<&kube::Error>) {
    note_api_refusal(metrics, what, error.and_then(refused));
}

fn note_api_refusal(metrics: &Metrics, what: &str, refusal: Option<&kube::core::Status>) {
    let problem = refusal.map(|r| format!("{} ({}); the agent's ClusterRole must allow it (manifests/rbac.yaml)", r.message, r.reason));
    let logged = problem.clone();
    if metrics.set_problem(what, problem) {
        match logged {
            Some(p) => tracing::error!(call = what, "API refused a call the agent needs: {p}"),
            None => tracing::info!(call = what, "API allows the call again"),
        }
    }
}

/// An overlay without `peers` spans the Nodes it selects: each at its
/// `netlet.io/vtep-address` annotation, else its InternalIP.
fn with_node_peers(net: Arc<Network>, nodes: &[Arc<Node>]) -> Arc<Network> {
    let Some(overlay) = net.spec.overlay.as_ref().filter(|o| o.peers.is_empty() && net.spec.driver == Driver::Overlay) else { return net };
    let mut peers: Vec<OverlayPeer> = nodes
        .iter()
        .filter(|n| selector_matches(&net.spec.node_selector, n.labels()))
        .filter_map(|n| Some(OverlayPeer { node: n.name_any(), address: vtep_address(n)? }))
        .collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    let mut net = (*net).clone();
    net.spec.overlay = Some(crate::api::OverlayOptions { peers, ..overlay.clone() });
    Arc::new(net)
}

pub const VTEP_ANNOTATION: &str = "netlet.io/vtep-address";

fn vtep_address(node: &Node) -> Option<String> {
    if let Some(a) = node.annotations().get(VTEP_ANNOTATION) {
        return Some(a.clone());
    }
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses.iter().find(|a| a.type_ == "InternalIP" && a.address.parse::<std::net::Ipv4Addr>().is_ok()).map(|a| a.address.clone())
}

fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn has_finalizer<K: ResourceExt>(o: &K, f: &str) -> bool {
    o.finalizers().iter().any(|x| x == f)
}

/// Addresses and ports recorded in status: the source of truth when the
/// state dir was lost (a new node disk, a wiped /var/lib/netlet).
fn allocations_from_status(attachments: &[Arc<Attachment>], port_mappings: &[Arc<PortMapping>]) -> Allocations {
    let mut held = Allocations::default();
    for a in attachments.iter().map(|a| &**a) {
        let Some(status) = &a.status else { continue };
        let addr = |cidr: &Option<String>| cidr.as_deref().and_then(|c| c.split('/').next()).and_then(|ip| ip.parse().ok());
        let entry = HeldEndpoint {
            network: a.spec.network.clone(),
            ipv4: addr(&status.ipv4_address),
            ipv6: addr(&status.ipv6_address),
            interface: status.interface.clone(),
        };
        if entry.ipv4.is_some() || entry.ipv6.is_some() {
            held.endpoints.insert(format!("{}/{}", namespace_of(a), a.name_any()), entry);
        }
    }
    for p in port_mappings.iter().map(|p| &**p) {
        let Some(status) = &p.status else { continue };
        for b in &status.bindings {
            let host_ip = if b.host_ip == "::" { "0.0.0.0" } else { b.host_ip.as_str() };
            held.ports.insert(
                format!("{}/{}|{}|{}|{host_ip}", namespace_of(p), p.name_any(), b.protocol.as_str(), b.container_port),
                b.host_port,
            );
        }
    }
    held
}

struct Cluster {
    client: Client,
    node: String,
    networks: Store<Network>,
    attachments: Store<Attachment>,
    port_mappings: Store<PortMapping>,
    nodes: Store<Node>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

/// This node's desired objects, and the attachments, port mappings and
/// networks being deleted (torn down, then their finalizers released).
type Desired = (ObjectSet, Vec<Arc<Attachment>>, Vec<Arc<PortMapping>>, Vec<Arc<Network>>);

impl Cluster {
    /// The desired objects for this node, and those being deleted.
    fn desired(&self) -> Desired {
        let nodes = self.nodes.state();
        let labels = nodes.iter().find(|n| n.name_any() == self.node).map(|n| n.labels().clone()).unwrap_or_default();
        let attachments = self.attachments.state();
        let mut set = ObjectSet::default();
        let mut deleting_networks = Vec::new();
        for n in self.networks.state() {
            if !selector_matches(&n.spec.node_selector, &labels) {
                continue;
            }
            let n = with_node_peers(n, &nodes);
            let referenced = attachments.iter().any(|a| a.spec.network == n.name_any() && a.meta().deletion_timestamp.is_none());
            if n.meta().deletion_timestamp.is_some() {
                deleting_networks.push(n.clone());
                if !referenced {
                    continue; // torn down now; finalizer removed after
                }
            }
            set.networks.push(n);
        }
        let overlays: BTreeSet<String> = set.networks.iter().filter(|n| n.spec.driver == Driver::Overlay).map(|n| n.name_any()).collect();
        let mut deleting_attachments = Vec::new();
        for a in &attachments {
            if !scheduled_on(a, &self.node) {
                // Another node's attachment matters here only as an overlay
                // remote (a static FDB and neighbour entry), until deleted.
                if a.spec.node_name.is_some() && overlays.contains(&a.spec.network) && a.meta().deletion_timestamp.is_none() {
                    set.attachments.push(a.clone());
                }
                continue;
            }
            if a.meta().deletion_timestamp.is_some() {
                deleting_attachments.push(a.clone());
            } else {
                set.attachments.push(a.clone());
            }
        }
        let mut deleting_pms = Vec::new();
        for p in self.port_mappings.state() {
            let attachment = attachments.iter().find(|a| namespace_of(&***a) == namespace_of(&*p) && a.name_any() == p.spec.attachment);
            let Some(attachment) = attachment else {
                // No attachment, so no node realizes it: nothing to tear
                // down anywhere, and any agent may let it go (the loser of
                // that race gets a 409 on its conditional patch).
                if p.meta().deletion_timestamp.is_some() {
                    deleting_pms.push(p.clone());
                }
                continue;
            };
            if !scheduled_on(attachment, &self.node) {
                continue;
            }
            if p.meta().deletion_timestamp.is_some() {
                deleting_pms.push(p.clone());
            } else {
                set.port_mappings.push(p);
            }
        }
        set.sort_by_creation_then_name();
        (set, deleting_attachments, deleting_pms, deleting_networks)
    }

    async fn ensure_finalizer<K>(&self, api: &Api<K>, obj: &K, finalizer: &str)
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

    async fn remove_finalizer<K>(&self, api: &Api<K>, obj: &K, finalizer: &str)
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

    /// Patches the status of namespaced objects this node alone writes.
    async fn publish_status<K>(&self, api_for: impl Fn(&str) -> Api<K>, current: Option<&K>, wanted: &Value)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    {
        let Some(obj) = current else { return };
        let have = serde_json::to_value(obj).ok().and_then(|v| v.get("status").cloned()).unwrap_or(Value::Null);
        let want = wanted.get("status").cloned().unwrap_or(Value::Null);
        if have == want {
            return;
        }
        let was_ready = ready_of(&have);
        let is_ready = ready_of(&want);
        let api = api_for(&obj.namespace().unwrap_or_default());
        let patch = json!({"status": want});
        let result =
            tokio::time::timeout(Duration::from_secs(10), api.patch_status(&obj.name_any(), &patch_params(), &Patch::Merge(&patch)))
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("timeout".into())));
        note_api(&self.metrics, &format!("patch {}/status", K::plural(&())), result.as_ref().err());
        if let Err(e) = result {
            tracing::warn!(object = %obj.name_any(), error = %e, "status update failed; will retry");
            return;
        }
        if was_ready != Some(false) && is_ready == Some(false) {
            self.event(obj, &want).await;
        }
    }

    async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, status: &Value) {
        let Some(cond) = conditions_of(status).into_iter().find(|c| c.type_ == crate::api::READY) else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: cond.reason.clone(),
            note: Some(cond.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let result = self.recorder.publish(&event, &obj.object_ref(&())).await;
        note_api(&self.metrics, "create events.events.k8s.io", result.as_ref().err());
        if let Err(e) = result {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// This node's IPv4 address blocks on every overlay network it realizes,
    /// claiming another one (the lowest free block, recorded in the
    /// Network's status.addressBlocks) while its own attachments outnumber
    /// them. The claim is a replace with the resourceVersion just read, so
    /// two nodes claiming at once cannot both win the same block: the loser
    /// gets a 409, reads again and takes the next one.
    async fn overlay_blocks(&self, objects: &ObjectSet) -> BTreeMap<String, Vec<IpNet>> {
        let mut out = BTreeMap::new();
        for net in objects.networks.iter().filter(|n| n.spec.driver == Driver::Overlay) {
            let name = net.name_any();
            let Some(subnet) = crate::plan::network::resolve(net).ok().and_then(|r| r.subnet_v4().cloned()) else { continue };
            let prefix = overlay::block_prefix(subnet.net, net.spec.overlay.as_ref().and_then(|o| o.block_prefix_length));
            let need = objects
                .attachments
                .iter()
                .filter(|a| a.spec.network == name && scheduled_on(a, &self.node) && a.spec.ipv4_address.is_none())
                .count() as u64;
            let mine = |status: &Option<NetworkStatus>| -> Vec<IpNet> {
                let blocks = status.as_ref().map(|s| s.address_blocks.as_slice()).unwrap_or_default();
                blocks.iter().filter(|b| b.node == self.node).filter_map(|b| b.cidr.parse().ok()).collect()
            };
            let capacity = |blocks: &[IpNet]| blocks.iter().map(|b| overlay::block_capacity(&subnet, *b)).sum::<u64>();
            // The cached copy usually shows enough: no API call.
            let cached = self.networks.get(&reflector::ObjectRef::new(&name)).map(|n| mine(&n.status)).unwrap_or_default();
            if capacity(&cached) >= need {
                out.insert(name, cached);
                continue;
            }
            let api: Api<Network> = Api::all(self.client.clone());
            let mut blocks = cached;
            for _ in 0..10 {
                let current = api.get_status(&name).await;
                note_api(&self.metrics, "get networks/status", current.as_ref().err());
                let current = match current {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(network = %name, error = %e, "cannot read the network to claim an address block; will retry");
                        break;
                    }
                };
                blocks = mine(&current.status);
                if capacity(&blocks) >= need {
                    break;
                }
                let mut status = current.status.clone().unwrap_or_default();
                let claimed: Vec<IpNet> = status.address_blocks.iter().filter_map(|b| b.cidr.parse().ok()).collect();
                let Some(block) = overlay::free_block(subnet.net, prefix, &claimed) else {
                    tracing::warn!(network = %name, "every address block of the subnet is claimed; this node allocates from what it has");
                    break;
                };
                status.address_blocks.push(AddressBlock { node: self.node.clone(), cidr: block.to_string() });
                let mut updated = current.clone();
                updated.status = Some(status);
                let result = api.replace_status(&name, &post_params(), &updated).await;
                note_api(&self.metrics, "update networks/status", result.as_ref().err());
                match result {
                    Ok(_) => tracing::info!(network = %name, %block, "claimed an address block"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        tracing::info!(network = %name, "address block claim raced another writer (409); reading again")
                    }
                    Err(e) => {
                        tracing::warn!(network = %name, error = %e, "claiming an address block failed; will retry");
                        break;
                    }
                }
            }
            out.insert(name, blocks);
        }
        out
    }

    /// Networks are written by every node realizing them: each agent owns
    /// its entry in `status.nodes`; Ready summarizes all entries. Conflicts
    /// (409) are retried with a fresh read.
    async fn publish_network_status(&self, name: &str, wanted: &Value) {
        let api: Api<Network> = Api::all(self.client.clone());
        let ours: NetworkStatus = wanted.get("status").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
        let our_ready = ours.conditions.iter().find(|c| c.type_ == crate::api::READY).cloned();
        for _ in 0..5 {
            let current = api.get_status(name).await;
            note_api(&self.metrics, "get networks/status", current.as_ref().err());
            let Ok(current) = current else {
                return;
            };
            let mut status = current.status.clone().unwrap_or_default();
            let entry = NetworkNodeStatus {
                node: self.node.clone(),
                ready: our_ready.as_ref().is_some_and(|c| c.is_true()),
                attachments: ours.attachments,
                mtu: ours.mtu,
                unreachable_peers: ours.unreachable_peers.clone(),
                message: our_ready.as_ref().filter(|c| !c.is_true()).map(|c| c.message.clone()).unwrap_or_default(),
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
                    our_ready.as_ref().filter(|c| !c.is_true()).map(|c| c.reason.clone()).unwrap_or_else(|| "NotReadyOnSomeNodes".into()),
                    failing.join("; "),
                )
            };
            if current.meta().deletion_timestamp.is_some() {
                let refs = self.attachments.state().iter().filter(|a| a.spec.network == name).count();
                cond = Condition::ready(
                    false,
                    "DeletionPending",
                    format!("deletion waits for {refs} attachment(s) that still reference this network"),
                );
            }
            cond.observed_generation = current.meta().generation;
            let now = crate::api::now_rfc3339();
            let new = NetworkStatus {
                conditions: crate::api::merge_condition(&status.conditions, cond, &now),
                bridge: ours.bridge.clone(),
                gateways: ours.gateways.clone(),
                attachments: nodes.iter().map(|n| n.attachments).sum(),
                observed_generation: current.meta().generation,
                nodes,
                address_blocks: status.address_blocks.clone(),
                // Per node (in `nodes`): one shared value would flip-flop
                // between nodes that see it differently.
                mtu: None,
                unreachable_peers: Vec::new(),
            };
            if new == status {
                return;
            }
            status = new;
            let mut updated = current.clone();
            updated.status = Some(status);
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
}

fn conditions_of(status: &Value) -> Vec<Condition> {
    status.get("conditions").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default()
}

fn ready_of(status: &Value) -> Option<bool> {
    ready_condition(&conditions_of(status)).map(|c| c.is_true())
}

pub async fn run_kubernetes(opts: KubeOptions) -> anyhow::Result<i32> {
    let client = client(opts.kubeconfig.as_ref()).await?;
    let changed = Arc::new(Notify::new());
    let metrics = Metrics::new();
    let cluster = Cluster {
        networks: reflect(Api::<Network>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone()),
        attachments: reflect(Api::<Attachment>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone()),
        port_mappings: reflect(Api::<PortMapping>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone()),
        // Every Node: this one's labels select networks, the others' addresses are overlay VTEPs.
        nodes: reflect(Api::<Node>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone()),
        recorder: Recorder::new(client.clone(), Reporter { controller: "netlet".into(), instance: Some(opts.node_name.clone()) }),
        node: opts.node_name.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
    };
    if let Some(addr) = opts.metrics_addr {
        match crate::metrics::serve(addr, metrics.clone()).await {
            Ok(bound) => tracing::info!(%bound, "serving /metrics, /healthz, /readyz"),
            Err(e) => tracing::warn!(%addr, error = %e, "cannot serve metrics; continuing without"),
        }
    }
    let state = StateDir::open(&opts.state_dir)?;
    let mut reconciler = Reconciler::new(state, opts.node_name.clone())?.with_metrics(metrics);
    reconciler.watch_events(changed.clone());
    reconciler.serve_dns();
    reconciler.serve_loopback_ports();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(node = %opts.node_name, "netlet Kubernetes agent starting; waiting for the initial lists");
    // Nothing is reconciled before every list is in: a partial view (no
    // Node labels, say) would tear down what a full one keeps. A list the
    // API refuses is retried with backoff and reported by /readyz meanwhile.
    let lists = async {
        cluster.networks.wait_until_ready().await?;
        cluster.attachments.wait_until_ready().await?;
        cluster.port_mappings.wait_until_ready().await?;
        cluster.nodes.wait_until_ready().await
    };
    tokio::select! {
        r = lists => r?,
        _ = term.recv() => return Ok(0),
        _ = int.recv() => return Ok(0),
    }
    tracing::info!("initial lists complete");

    loop {
        let (objects, deleting_atts, deleting_pms, deleting_nets) = cluster.desired();
        // Addresses and ports already handed out, from status: ours fill
        // what the state dir lacks; other nodes' (overlay remotes) are
        // theirs to decide, so their status wins.
        let (ours, others): (Vec<Arc<Attachment>>, Vec<Arc<Attachment>>) =
            cluster.attachments.state().into_iter().partition(|a| scheduled_on(a, &opts.node_name));
        reconciler.seed_allocations(allocations_from_status(&ours, &objects.port_mappings));
        reconciler.override_allocations(allocations_from_status(&others, &[]));
        let blocks = cluster.overlay_blocks(&objects).await;
        reconciler.set_overlay_blocks(blocks);
        let objects = std::sync::Arc::new(objects);
        let outcome = reconciler.reconcile(objects.clone(), &[]).await;

        // Finalizers first on live objects, so a later delete waits for us.
        let att_api = |ns: &str| Api::<Attachment>::namespaced(client.clone(), ns);
        let pm_api = |ns: &str| Api::<PortMapping>::namespaced(client.clone(), ns);
        let net_api: Api<Network> = Api::all(client.clone());
        for a in objects.attachments.iter().map(|a| &**a).filter(|a| scheduled_on(a, &opts.node_name)) {
            cluster.ensure_finalizer(&att_api(&namespace_of(a)), a, TEARDOWN_FINALIZER).await;
        }
        for p in objects.port_mappings.iter().map(|p| &**p) {
            cluster.ensure_finalizer(&pm_api(&namespace_of(p)), p, TEARDOWN_FINALIZER).await;
        }
        for n in &objects.networks {
            cluster.ensure_finalizer(&net_api, n, IN_USE_FINALIZER).await;
        }
        // Status, only where it changed.
        let live_atts: BTreeMap<String, Arc<Attachment>> =
            cluster.attachments.state().into_iter().map(|a| (format!("{}/{}", namespace_of(&*a), a.name_any()), a)).collect();
        let live_pms: BTreeMap<String, Arc<PortMapping>> =
            cluster.port_mappings.state().into_iter().map(|p| (format!("{}/{}", namespace_of(&*p), p.name_any()), p)).collect();
        for value in reconciler.status() {
            let Some(key) = key_of(value) else { continue };
            match key.kind {
                crate::objects::KindName::Network => cluster.publish_network_status(&key.name, value).await,
                crate::objects::KindName::Attachment => {
                    cluster.publish_status(att_api, live_atts.get(&key.ns_name()).map(|a| &**a), value).await
                }
                crate::objects::KindName::PortMapping => {
                    cluster.publish_status(pm_api, live_pms.get(&key.ns_name()).map(|p| &**p), value).await
                }
            }
        }
        // Teardown finished for excluded objects: let them go.
        if outcome.node_errors.is_empty() {
            for a in &deleting_atts {
                cluster.remove_finalizer(&att_api(&namespace_of(&**a)), &**a, TEARDOWN_FINALIZER).await;
            }
            for p in &deleting_pms {
                cluster.remove_finalizer(&pm_api(&namespace_of(&**p)), &**p, TEARDOWN_FINALIZER).await;
            }
            let referenced: BTreeSet<String> = cluster.attachments.state().iter().map(|a| a.spec.network.clone()).collect();
            for n in deleting_nets.iter().filter(|n| !referenced.contains(&n.name_any())) {
                cluster.remove_finalizer(&net_api, &**n, IN_USE_FINALIZER).await;
            }
        }

        // Wait for a change (and the rest of its burst), the resync period, or a signal.
        tokio::select! {
            _ = changed.notified() => settle(&changed).await,
            _ = tokio::time::sleep(opts.resync_period) => {}
            _ = term.recv() => { tracing::info!("SIGTERM: stopping, dataplane left in place"); return Ok(0); }
            _ = int.recv() => { tracing::info!("SIGINT: stopping, dataplane left in place"); return Ok(0); }
        }
    }
}

/// A change is read once the watches have been quiet for CHANGE_QUIET (the
/// rest of a `kubectl apply`, a burst of kernel events), or after
/// CHANGE_SETTLE_MAX while changes keep coming: a single change is not held
/// for a fixed delay, and a large apply is still taken in few passes.
const CHANGE_QUIET: Duration = Duration::from_millis(10);
const CHANGE_SETTLE_MAX: Duration = Duration::from_millis(100);

async fn settle(changed: &Notify) {
    let deadline = tokio::time::Instant::now() + CHANGE_SETTLE_MAX;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(CHANGE_QUIET) => return,
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AttachmentSpec, AttachmentStatus, PortBinding, PortMappingSpec, PortMappingStatus, Protocol, Sandbox};

    #[tokio::test]
    async fn a_burst_of_changes_is_waited_out_but_never_forever() {
        let changed = Arc::new(Notify::new());
        let started = std::time::Instant::now();
        settle(&changed).await;
        assert!(started.elapsed() >= CHANGE_QUIET, "a quiet moment is waited for");
        // Changes that never stop: read anyway.
        let poker = {
            let changed = changed.clone();
            tokio::spawn(async move {
                loop {
                    changed.notify_one();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(5), settle(&changed)).await.expect("settles while changes keep coming");
        poker.abort();
    }

    #[test]
    fn allocations_are_rebuilt_from_status() {
        let mut a = Attachment::new(
            "c1",
            AttachmentSpec {
                network: "n".into(),
                sandbox: Sandbox { netns: Some("c1".into()), ..Default::default() },
                ..Default::default()
            },
        );
        a.metadata.namespace = Some("ns".into());
        a.status =
            Some(AttachmentStatus { ipv4_address: Some("10.0.0.7/24".into()), interface: Some("eth0".into()), ..Default::default() });
        let mut p = PortMapping::new("web", PortMappingSpec { attachment: "c1".into(), ..Default::default() });
        p.metadata.namespace = Some("ns".into());
        p.status = Some(PortMappingStatus {
            bindings: vec![PortBinding { protocol: Protocol::Tcp, host_ip: "0.0.0.0".into(), host_port: 32800, container_port: 80 }],
            ..Default::default()
        });
        let held = allocations_from_status(&[Arc::new(a)], &[Arc::new(p)]);
        assert_eq!(held.endpoints["ns/c1"].ipv4, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(held.endpoints["ns/c1"].interface.as_deref(), Some("eth0"));
        assert_eq!(held.ports["ns/web|tcp|80|0.0.0.0"], 32800);
    }

    #[test]
    fn vteps_come_from_the_annotation_else_the_internal_ip() {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.status = Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { type_: "Hostname".into(), address: "n1".into() },
                NodeAddress { type_: "InternalIP".into(), address: "fd00::1".into() },
                NodeAddress { type_: "InternalIP".into(), address: "192.0.2.10".into() },
            ]),
            ..Default::default()
        });
        assert_eq!(vtep_address(&node).as_deref(), Some("192.0.2.10"), "the IPv4 InternalIP");
        node.metadata.annotations = Some(BTreeMap::from([(VTEP_ANNOTATION.to_string(), "10.9.9.9".to_string())]));
        assert_eq!(vtep_address(&node).as_deref(), Some("10.9.9.9"), "the annotation wins");
        let mut net = Network::new("ov", Default::default());
        net.spec.driver = Driver::Overlay;
        net.spec.overlay = Some(crate::api::OverlayOptions { vni: 7, ..Default::default() });
        let filled = with_node_peers(Arc::new(net), &[Arc::new(node)]);
        assert_eq!(filled.spec.overlay.as_ref().unwrap().peers, [OverlayPeer { node: "n1".into(), address: "10.9.9.9".into() }]);
    }

    #[test]
    fn node_selectors_match_labels() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        assert!(selector_matches(&BTreeMap::new(), &labels));
        assert!(selector_matches(&BTreeMap::from([("zone".into(), "a".into())]), &labels));
        assert!(!selector_matches(&BTreeMap::from([("zone".into(), "b".into())]), &labels));
    }
}
