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
//!
//! Here: the watches and the desired set for this node; `blocks`: overlay
//! address blocks claimed in Network status; `publish`: finalizers, status
//! and Events written back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;

use crate::api::{Attachment, Driver, Network, OverlayPeer, PortMapping};
use crate::metrics::Metrics;
use crate::objects::{namespace_of, ObjectName, ObjectSet};
use crate::plan::tenancy::Tenancy;
use crate::plan::{Allocations, HeldEndpoint, PortKey};
use crate::pods::cni::PodCalls;
use crate::pods::{PodSandbox, SandboxBook};
use crate::reconcile::Outcome;
use crate::runner::{Snapshot, Source};
use crate::status::ObjectStatus;

mod blocks;
mod pods;
mod publish;
mod scope;

use publish::concurrently;
pub use publish::{IN_USE_FINALIZER, TEARDOWN_FINALIZER};
pub use scope::{label_value, NETWORK_LABEL, NODE_LABEL};

/// Is this attachment for `node`? (Unscheduled ones are nobody's here.)
fn scheduled_on(a: &Attachment, node: &str) -> bool {
    a.spec.node_name.as_deref() == Some(node)
}

pub struct KubeOptions {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    /// netlet-cni's calls (the agent's CNI socket), answered from passes.
    pub cni_calls: Option<tokio::sync::mpsc::Receiver<crate::cni::CniCall>>,
    /// Where the pod sandboxes netlet-cni reported are kept.
    pub state_dir: PathBuf,
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
    // Lists (at start, and after a watch expired) from the API server's
    // watch cache, filtered there in memory: a most-recent list reads every
    // object of the kind from etcd to find this node's few, so each
    // agent's relist costs the cluster's size, and on a busy server it
    // timed out (504) again and again while attachments elsewhere churned.
    let config = config.any_semantic();
    let resource = K::plural(&()).to_string();
    let what = format!("list/watch {resource}");
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let received = match event {
                        watcher::Event::Apply(_) => Some("apply"),
                        watcher::Event::Delete(_) => Some("delete"),
                        watcher::Event::InitApply(_) => Some("list"),
                        watcher::Event::Init | watcher::Event::InitDone => None,
                    };
                    if let Some(received) = received {
                        metrics.watch_event(&resource, received);
                    }
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
            held.endpoints.insert(ObjectName::of(a), entry);
        }
    }
    for p in port_mappings.iter().map(|p| &**p) {
        let Some(status) = &p.status else { continue };
        for b in &status.bindings {
            // Both families of a mapping without a hostIP hold one port.
            let Ok(host_ip) = b.host_ip.parse::<std::net::IpAddr>() else { continue };
            let host_ip = if host_ip.is_unspecified() { std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { host_ip };
            let key = PortKey { mapping: ObjectName::of(p), protocol: b.protocol, container_port: b.container_port, host_ip };
            held.ports.insert(key, b.host_port);
        }
    }
    held
}

struct Cluster {
    client: Client,
    node: String,
    networks: Store<Network>,
    /// This node's (and not yet labeled) Attachments and PortMappings.
    attachments: scope::Scoped<Attachment>,
    port_mappings: scope::Scoped<PortMapping>,
    nodes: Store<Node>,
    /// This node's pods.
    pods: Store<Pod>,
    /// Namespaces' labels (Networks' namespaceSelector).
    namespaces: Store<PartialObjectMeta<Namespace>>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

/// This node's desired objects, and the attachments, port mappings and
/// networks being deleted (torn down, then their finalizers released).
type Desired = (Arc<ObjectSet>, Vec<Arc<Attachment>>, Vec<Arc<PortMapping>>, Vec<Arc<Network>>);

impl Cluster {
    /// Is this attachment realized by this node? Its nodeName says so, or
    /// it names a pod of this node.
    fn ours(&self, a: &Attachment, pods: &pods::Claims<'_>) -> bool {
        match &a.spec.node_name {
            Some(node) => node == &self.node,
            None => self.pod_attachment_is_ours(a, pods),
        }
    }

    /// The desired objects for this node, and those being deleted.
    fn desired(&self, pods: &pods::Claims<'_>) -> Desired {
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
        let mut deleting_attachments = Vec::new();
        for a in &attachments {
            if !self.ours(a, pods) {
                // Another node's (seen only until it is labeled): overlays
                // reach it through its node's blocks and summary.
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
                // A reach into another namespace: refused by the plan, on
                // whichever node (each says the same).
                if p.spec.attachment.contains('/') && p.meta().deletion_timestamp.is_none() {
                    set.port_mappings.push(p);
                    continue;
                }
                // No attachment here. If none exists anywhere, no node
                // realizes it: nothing to tear down, and any agent may let
                // it go (checked before, in publish; the loser of that race
                // gets a 409 on its conditional patch).
                if p.meta().deletion_timestamp.is_some() {
                    deleting_pms.push(p.clone());
                }
                continue;
            };
            if !self.ours(attachment, pods) {
                continue;
            }
            if p.meta().deletion_timestamp.is_some() {
                deleting_pms.push(p.clone());
            } else {
                set.port_mappings.push(p);
            }
        }
        set.pods = Some(Arc::new(self.pods_for(&set.attachments, pods.sandboxes)));
        set.sort_by_creation_then_name();
        (Arc::new(set), deleting_attachments, deleting_pms, deleting_networks)
    }

    /// Tenants write the Attachments; their namespaces' labels decide
    /// which Networks admit them.
    fn tenancy(&self) -> Tenancy {
        let labels = self.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();
        Tenancy { kubernetes: true, namespace_labels: Arc::new(labels) }
    }
}

/// Kubernetes mode's source: the watches, the node's desired set from
/// them, and status and finalizers written back.
pub struct KubeSource {
    cluster: Cluster,
    /// Poked by every watch event.
    changed: Arc<Notify>,
    /// What the last snapshot was made of: finalizers and status follow it.
    last: Option<Desired>,
    /// netlet-cni's calls and the pod sandboxes they reported.
    calls: Option<PodCalls>,
    /// No pod sandbox at all without netlet-cni.
    no_sandboxes: BTreeMap<ObjectName, PodSandbox>,
    /// Pod attachments whose pod exists nowhere: this agent reports them.
    orphans: BTreeSet<ObjectName>,
    /// The overlay blocks of the last snapshot.
    last_blocks: BTreeMap<String, crate::plan::overlay::NodeBlocks>,
}

impl KubeSource {
    /// Connects and starts the watches (Networks, Attachments,
    /// PortMappings, Nodes); nothing is read yet. API calls the agent's
    /// role refuses are reported in `metrics` (`/readyz`).
    pub async fn connect(opts: KubeOptions, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = client(opts.kubeconfig.as_ref()).await?;
        let changed = Arc::new(Notify::new());
        let networks = reflect(Api::<Network>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone());
        let node = &opts.node_name;
        let attachments = scope::Scoped::start(Api::<Attachment>::all(client.clone()), node, changed.clone(), metrics.clone());
        let port_mappings = scope::Scoped::start(Api::<PortMapping>::all(client.clone()), node, changed.clone(), metrics.clone());
        // Every Node: this one's labels select networks, the others' addresses are overlay VTEPs.
        let nodes = reflect(Api::<Node>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone());
        // This node's pods only: the sandboxes `pod` attachments name.
        let on_this_node = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node_name));
        let pods = reflect(Api::<Pod>::all(client.clone()), on_this_node, changed.clone(), metrics.clone());
        // Namespaces: their labels only (metadata-only requests).
        let namespaces =
            reflect(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default(), changed.clone(), metrics.clone());
        let cluster = Cluster {
            networks,
            namespaces,
            attachments,
            port_mappings,
            nodes,
            pods,
            recorder: Recorder::new(client.clone(), Reporter { controller: "netlet".into(), instance: Some(opts.node_name.clone()) }),
            node: opts.node_name.clone(),
            client,
            metrics,
        };
        let calls = match opts.cni_calls {
            Some(calls) => Some(PodCalls::new(calls, SandboxBook::load(crate::state::StateDir::open(&opts.state_dir)?))),
            None => None,
        };
        Ok(KubeSource {
            cluster,
            changed,
            last: None,
            last_blocks: BTreeMap::new(),
            calls,
            no_sandboxes: BTreeMap::new(),
            orphans: BTreeSet::new(),
        })
    }

    fn sandboxes(&self) -> &BTreeMap<ObjectName, PodSandbox> {
        self.calls.as_ref().map(|c| c.book().sandboxes()).unwrap_or(&self.no_sandboxes)
    }
}

/// A version of everything a snapshot holds: what each object is (its
/// resourceVersion, which moves with any change of it, status included),
/// what was derived from elsewhere (overlay peers from Nodes), held
/// allocations and address blocks.
fn version_of(
    objects: &ObjectSet,
    known: &Allocations,
    decided: &Allocations,
    blocks: &BTreeMap<String, crate::plan::overlay::NodeBlocks>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut object = |meta: &kube::core::ObjectMeta| (&meta.namespace, &meta.name, &meta.resource_version).hash(&mut h);
    objects.networks.iter().for_each(|n| object(&n.metadata));
    objects.attachments.iter().for_each(|a| object(&a.metadata));
    objects.port_mappings.iter().for_each(|p| object(&p.metadata));
    objects.pods.hash(&mut h);
    for n in &objects.networks {
        if let Some(overlay) = &n.spec.overlay {
            overlay.peers.iter().for_each(|p| (&p.node, &p.address).hash(&mut h));
        }
    }
    (known, decided, blocks).hash(&mut h);
    h.finish()
}

/// This node's overlay attachment addresses outside its blocks, by
/// network: its summary for the nodes that do not watch its attachments.
fn outside_blocks(
    blocks: &BTreeMap<String, crate::plan::overlay::NodeBlocks>,
    node: &str,
    objects: &ObjectSet,
    outcome: &Outcome,
) -> BTreeMap<String, Vec<String>> {
    // This node's blocks by network, with their IPv6 mirrors.
    let mine: BTreeMap<&str, Vec<ipnet::IpNet>> = blocks
        .iter()
        .filter_map(|(name, by_node)| {
            let net = crate::plan::network::resolve(objects.networks.iter().find(|n| &n.name_any() == name)?).ok()?;
            let claimed = by_node.get(node).map(|r| r.blocks.as_slice()).unwrap_or_default();
            Some((name.as_str(), crate::plan::overlay::with_mirrors(&net, claimed)))
        })
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if mine.is_empty() {
        return out; // no overlay here
    }
    // Each entry's network, looked up by name (not a scan per entry).
    let network_of: HashMap<ObjectName, &str> =
        objects.attachments.iter().map(|a| (ObjectName::of(&**a), a.spec.network.as_str())).collect();
    for entry in &outcome.status.entries {
        let ObjectStatus::Attachment(status, _) = &entry.status else { continue };
        let Some(&network) = network_of.get(&entry.key.name) else { continue };
        let Some(mine) = mine.get(network) else { continue };
        for cidr in [&status.ipv4_address, &status.ipv6_address].into_iter().flatten() {
            let ip = cidr.split('/').next().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            if let Some(ip) = ip.filter(|ip| !mine.iter().any(|b| b.contains(ip))) {
                out.entry(network.to_string()).or_default().push(ip.to_string());
            }
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

impl Source for KubeSource {
    /// Nothing is reconciled before every list is in: a partial view (no
    /// Node labels, say) would tear down what a full one keeps. A list the
    /// API refuses is retried with backoff and reported by /readyz meanwhile.
    async fn ready(&mut self) -> anyhow::Result<()> {
        tracing::info!(node = %self.cluster.node, "netlet Kubernetes agent starting; waiting for the initial lists");
        self.cluster.networks.wait_until_ready().await?;
        self.cluster.attachments.wait_until_ready().await?;
        self.cluster.port_mappings.wait_until_ready().await?;
        self.cluster.nodes.wait_until_ready().await?;
        self.cluster.pods.wait_until_ready().await?;
        self.cluster.namespaces.wait_until_ready().await?;
        tracing::info!("initial lists complete");
        Ok(())
    }

    async fn snapshot(&mut self) -> Snapshot {
        if let Some(calls) = &mut self.calls {
            let view = pods::PodView { attachments: &self.cluster.attachments, pods: &self.cluster.pods };
            calls.drain(&view);
            calls.forget_gone();
            calls.snapshot_taken();
        }
        self.orphans = self.cluster.orphans(self.sandboxes(), &self.orphans).await;
        let claims = pods::Claims { sandboxes: self.sandboxes(), orphans: &self.orphans };
        let desired = self.cluster.desired(&claims);
        // Addresses and ports already handed out, from status: ours fill
        // what the state dir lacks; other nodes' (overlay remotes) are
        // theirs to decide, so their status wins.
        let node = &self.cluster.node;
        let (ours, others): (Vec<Arc<Attachment>>, Vec<Arc<Attachment>>) = self
            .cluster
            .attachments
            .state()
            .into_iter()
            .filter(|a| a.spec.node_name.is_some() || self.cluster.ours(a, &claims))
            .partition(|a| a.spec.node_name.is_none() || scheduled_on(a, node));
        let known = allocations_from_status(&ours, &desired.0.port_mappings);
        let decided = allocations_from_status(&others, &[]);
        let overlay_blocks = self.cluster.overlay_blocks(&desired.0).await;
        let version = version_of(&desired.0, &known, &decided, &overlay_blocks);
        self.last_blocks = overlay_blocks.clone();
        let tenancy = self.cluster.tenancy();
        let snapshot =
            Snapshot { objects: desired.0.clone(), load_errors: Arc::from([]), version, known, decided, overlay_blocks, tenancy };
        self.last = Some(desired);
        snapshot
    }

    /// A watch event (a burst waited out), or a CNI call that needs a
    /// pass (taken at once: it is on a pod's start-up path).
    async fn changed(&mut self) {
        let Some(calls) = &mut self.calls else {
            self.changed.notified().await;
            return crate::runner::settle(&self.changed).await;
        };
        let view = pods::PodView { attachments: &self.cluster.attachments, pods: &self.cluster.pods };
        let deadline = calls.next_deadline();
        tokio::select! {
            _ = self.changed.notified() => crate::runner::settle(&self.changed).await,
            () = calls.next(&view) => {}
            // A waiting call ran out of patience: a pass answers it.
            () = async { tokio::time::sleep_until(deadline.expect("only with a deadline")).await }, if deadline.is_some() => {}
        }
    }

    async fn publish(&mut self, outcome: &Outcome) {
        let Some((objects, deleting_atts, deleting_pms, deleting_nets)) = &self.last else { return };
        let cluster = &self.cluster;
        // Pods wait for these: answered before any API write.
        if let Some(calls) = &mut self.calls {
            calls.answer(outcome, &pods::PodView { attachments: &cluster.attachments, pods: &cluster.pods });
        }
        // Labels first: the other agents stop hearing of our new objects
        // before our finalizer and status writes. Then finalizers on live
        // objects, so a later delete waits for us.
        cluster.label_own().await;
        let client = &cluster.client;
        let att_api = |ns: &str| Api::<Attachment>::namespaced(client.clone(), ns);
        let pm_api = |ns: &str| Api::<PortMapping>::namespaced(client.clone(), ns);
        let net_api: Api<Network> = Api::all(client.clone());
        let local_atts = objects.attachments.iter().map(|a| &**a).filter(|a| crate::plan::is_local(a, &cluster.node));
        concurrently(local_atts.map(|a| async move { cluster.ensure_finalizer(&att_api(&namespace_of(a)), a, TEARDOWN_FINALIZER).await }))
            .await;
        concurrently(
            objects
                .port_mappings
                .iter()
                .map(|p| async move { cluster.ensure_finalizer(&pm_api(&namespace_of(&**p)), &**p, TEARDOWN_FINALIZER).await }),
        )
        .await;
        concurrently(objects.networks.iter().map(|n| cluster.ensure_finalizer(&net_api, n, IN_USE_FINALIZER))).await;
        // Status, only where it changed.
        let live_atts: BTreeMap<ObjectName, Arc<Attachment>> =
            cluster.attachments.state().into_iter().map(|a| (ObjectName::of(&*a), a)).collect();
        let live_pms: BTreeMap<ObjectName, Arc<PortMapping>> =
            cluster.port_mappings.state().into_iter().map(|p| (ObjectName::of(&*p), p)).collect();
        let namespace = |name: &ObjectName| name.namespace().unwrap_or("default").to_string();
        let outside = outside_blocks(&self.last_blocks, &cluster.node, objects, outcome);
        let (outside, live_atts, live_pms) = (&outside, &live_atts, &live_pms);
        concurrently(outcome.status.entries.iter().map(|entry| async move {
            match &entry.status {
                ObjectStatus::Network(ours) => {
                    let name = entry.key.name.name();
                    let outside = outside.get(name).map(Vec::as_slice).unwrap_or_default();
                    cluster.publish_network_status(name, ours, outside).await
                }
                ObjectStatus::Attachment(want, _) => {
                    let Some(live) = live_atts.get(&entry.key.name) else { return };
                    let api = att_api(&namespace(&entry.key.name));
                    cluster.publish_status(api, &**live, live.status.as_ref(), want, |s| &s.conditions).await
                }
                ObjectStatus::PortMapping(want) => {
                    let Some(live) = live_pms.get(&entry.key.name) else { return };
                    let api = pm_api(&namespace(&entry.key.name));
                    cluster.publish_status(api, &**live, live.status.as_ref(), want, |s| &s.conditions).await
                }
                ObjectStatus::Unloaded(_) => {}
            }
        }))
        .await;
        cluster.sync_annotation_attachments().await;
        cluster.publish_pod_network_status(outcome).await;
        // Teardown finished for excluded objects: let them go.
        if outcome.node_errors.is_empty() {
            concurrently(
                deleting_atts
                    .iter()
                    .map(|a| async move { cluster.remove_finalizer(&att_api(&namespace_of(&**a)), &**a, TEARDOWN_FINALIZER).await }),
            )
            .await;
            let visible: BTreeSet<ObjectName> = cluster.attachments.state().iter().map(|a| ObjectName::of(&**a)).collect();
            let visible = &visible;
            concurrently(deleting_pms.iter().map(|p| async move {
                let namespace = namespace_of(&**p);
                // With an Attachment this node does not see: let go only
                // if that Attachment exists nowhere.
                let seen = visible.contains(&ObjectName::namespaced(&namespace, &p.spec.attachment));
                if seen || !cluster.attachment_exists(&namespace, &p.spec.attachment).await {
                    cluster.remove_finalizer(&pm_api(&namespace), &**p, TEARDOWN_FINALIZER).await;
                }
            }))
            .await;
            for n in deleting_nets {
                if publish::has_finalizer(&**n, IN_USE_FINALIZER) && !cluster.network_in_use(&n.name_any()).await {
                    cluster.remove_finalizer(&net_api, &**n, IN_USE_FINALIZER).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
