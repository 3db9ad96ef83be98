//! One reconcile, whatever woke it: plan -> sync -> status.
//!
//! Level-triggered: each pass computes the node's whole desired state from
//! a [`Snapshot`] and converges to it; it never asks why it was called. The
//! reconciler lives on a thread of its own (see `reconcile_thread`; it may
//! `setns` briefly to open sandbox sockets).
//!
//! What a pass reuses from the previous one is a pure function of inputs
//! compared by value: the plan, when the snapshot's version, the node facts
//! and the held allocations are the ones it was computed from (a plan fed
//! its own allocations gives itself again); each status entry, as `status`
//! states; the verdicts, when the plan was reused and nothing was changed
//! or failed. What the dataplane skips follows its own rule (`realized`).

use std::time::Instant;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::dataplane::linux::Linux;
use crate::dataplane::{facts, sysctl, Dataplane, SyncReport};
use crate::metrics::{AddressUsage, Metrics};
use crate::objects::ObjectSet;
use crate::plan::attachment::SandboxRef;
use crate::plan::{self, Allocations, NodeFacts};
use crate::reconcile_thread::{DnsLink, Setup};
use crate::runner::Snapshot;
use crate::state::{AllocationsWrite, Owned, OwnedRecord, StateDir, StatusStore};
use crate::status::{self, StatusBook, Verdict};

/// What one pass did, for logs, `--once`, metrics and the source.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Shared with the reconciler, which hands the same verdicts out again
    /// for a pass that changed nothing (2,000 objects' keys and messages).
    pub verdicts: Arc<[Verdict]>,
    /// Every object's status (the Kubernetes writer publishes it).
    pub status: Arc<StatusBook>,
    pub mutations: u32,
    pub mutations_by_kind: std::collections::BTreeMap<&'static str, u32>,
    pub node_errors: Vec<String>,
    pub load_errors: Vec<String>,
    pub duration: std::time::Duration,
    /// The dataplane trusted nothing it verified before (an audit, or no
    /// kernel events to go by).
    pub full: bool,
}

impl Outcome {
    pub fn all_ready(&self) -> bool {
        self.verdicts.iter().all(|v| v.ready) && self.node_errors.is_empty() && self.load_errors.is_empty()
    }
    /// Human-readable problems, one per line.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self.load_errors.clone();
        out.extend(self.verdicts.iter().filter(|v| !v.ready).map(|v| format!("{}: {}: {}", v.key, v.reason, v.message)));
        out.extend(self.node_errors.iter().map(|e| format!("node: {e}")));
        out
    }
}

/// The plan of the previous pass and what it was computed from.
struct LastPlan {
    version: u64,
    facts: NodeFacts,
    plan: plan::Plan,
}

pub struct Reconciler {
    state: StateDir,
    node_name: String,
    dataplane: Dataplane,
    allocations: Allocations,
    owned: Owned,
    /// Every object's status, as the last pass computed it (shared with
    /// the Kubernetes writer).
    status: Arc<StatusBook>,
    /// What status.json held at start, until the first pass replaces it.
    stored_status: Option<StatusStore>,
    /// The last status write failed: retry even if nothing changes.
    status_unwritten: bool,
    metrics: Arc<Metrics>,
    /// Bumped whenever a plan's desired state differs from the previous
    /// one: the dataplane and the drift metric compare generations instead
    /// of keeping copies of a state that holds every object.
    desired_generation: u64,
    /// The embedded DNS server (long-running agents only).
    dns: Option<DnsLink>,
    /// Published ports at [::1] (long-running agents).
    loopback_proxy: Option<crate::proxy::LoopbackProxy>,
    /// At the first pass, read back from the kernel what attachments hold
    /// (a lost or corrupt state file must not move an address).
    recover_from_kernel: bool,
    last_plan: Option<LastPlan>,
    last_verdicts: Arc<[Verdict]>,
    /// The sandboxes of the snapshot of this version that netlet did not
    /// make (see `sandboxes_made_elsewhere`).
    sandbox_candidates: Option<(u64, Vec<SandboxRef>)>,
    /// Listening sockets, with the snapshot version and time of reading.
    bound_ports_cache: Option<(u64, Instant, Vec<BoundPort>)>,
}

type BoundPort = (crate::api::Protocol, std::net::IpAddr, u16);

/// A reading of the node's listening sockets under way.
type SocketsRead = tokio::task::JoinHandle<Vec<BoundPort>>;

const BOUND_PORTS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Reconciler {
    /// Needs a tokio runtime context (netlink sockets), on the thread that
    /// will run its passes.
    pub fn new(setup: Setup) -> anyhow::Result<Self> {
        Self::with_system(setup, Box::new(Linux::new()?))
    }

    /// As [`Reconciler::new`], with the dataplane's side effects going to
    /// `system` (the fake kernel, in tests).
    pub fn with_system(setup: Setup, system: Box<dyn crate::dataplane::kernel::System>) -> anyhow::Result<Self> {
        let state = StateDir::open(&setup.state_dir)?;
        let mut dataplane = Dataplane::new(system);
        if let Some(events) = setup.events {
            dataplane.use_events(events);
        }
        if setup.spare_namespace {
            dataplane.keep_spare_namespace();
        }
        dataplane.progress = setup.progress;
        Ok(Reconciler {
            allocations: state.load_allocations(),
            owned: state.load_owned(),
            status: Arc::default(),
            stored_status: Some(state.load_status()),
            status_unwritten: false,
            state,
            node_name: setup.node_name,
            dataplane,
            recover_from_kernel: true,
            dns: setup.dns,
            loopback_proxy: setup.loopback_proxy,
            metrics: setup.metrics,
            desired_generation: 0,
            last_plan: None,
            last_verdicts: Arc::from([]),
            bound_ports_cache: None,
            sandbox_candidates: None,
        })
    }

    /// Adds allocations known from elsewhere (Kubernetes status, the
    /// kernel) that the state dir lacks; what the state dir holds wins.
    fn seed_allocations(&mut self, held: &Allocations) {
        for (k, v) in &held.endpoints {
            self.allocations.endpoints.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &held.ports {
            self.allocations.ports.entry(k.clone()).or_insert(*v);
        }
    }

    /// Adds allocations that override what the state dir holds: other
    /// nodes' overlay addresses, which only their status decides.
    fn override_allocations(&mut self, held: &Allocations) {
        self.allocations.endpoints.extend(held.endpoints.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Waits for an allocations write; what it made durable is what the
    /// next pass holds (a failed write is tried again by the next pass).
    fn finish_allocations(held: &mut Allocations, write: Option<AllocationsWrite>, node_errors: &mut Vec<String>) {
        match write.map(AllocationsWrite::finish) {
            Some(Ok(allocations)) => *held = allocations,
            Some(Err(e)) => node_errors.push(format!("persisting allocations: {e}")),
            None => {}
        }
    }

    /// The node facts a plan needs. The listening sockets (other than the
    /// loopback proxy's) are read again when the snapshot changed, else at
    /// most every BOUND_PORTS_TTL (no event reports a socket; they only
    /// matter when ports are published): the kernel's whole socket tables
    /// are walked on another thread. The facts hold the last reading
    /// meanwhile, and the read under way is returned for the pass to finish
    /// (the first one is waited for here).
    async fn facts(&mut self, snapshot: &Snapshot) -> (NodeFacts, Option<SocketsRead>) {
        let due = self.bound_ports_cache.as_ref().is_none_or(|(v, at, _)| *v != snapshot.version || at.elapsed() >= BOUND_PORTS_TTL);
        let mut reading = due.then(|| tokio::task::spawn_blocking(facts::bound_ports));
        let view = self.dataplane.node_view().await.unwrap_or_default();
        if self.bound_ports_cache.is_none() {
            if let Some(read) = reading.take() {
                self.finish_sockets_read(read, snapshot).await;
            }
        }
        let bound_ports = self.bound_ports_cache.as_ref().map(|(_, _, ports)| ports.clone()).unwrap_or_default();
        let (links, addrs) = (&view.0, &view.1);
        let mtu_of = |index: u32| links.iter().find(|l| l.index == index).map(|l| l.mtu);
        let (node_namespace_at, unowned_netns) = self.sandboxes_made_elsewhere(snapshot);
        let facts = NodeFacts {
            node_name: self.node_name.clone(),
            ephemeral_ports: sysctl::ephemeral_port_range(),
            bound_ports,
            resolvers: crate::dataplane::files::node_resolvers(),
            embedded_dns: self.dns.is_some(),
            link_mtu_by_address: addrs.iter().filter_map(|a| Some((a.net.addr(), mtu_of(a.index)?))).collect(),
            node_addresses: addrs.iter().map(|a| a.net).filter(|n| !n.addr().is_loopback()).collect(),
            overlay_blocks: snapshot.overlay_blocks.clone(),
            node_namespace_at,
            unowned_netns,
            tenancy: snapshot.tenancy.clone(),
        };
        (facts, reading)
    }

    /// Takes a reading of the listening sockets as the last one.
    async fn finish_sockets_read(&mut self, read: SocketsRead, snapshot: &Snapshot) {
        let mut ports = read.await.unwrap_or_default();
        // Left out as read: the proxy's sockets come and go with the
        // ports it relays, and must not make the next facts differ.
        if let Some(proxy) = &self.loopback_proxy {
            ports.retain(|b| !proxy.holds(b));
        }
        self.bound_ports_cache = Some((snapshot.version, Instant::now(), ports));
    }

    /// Makes the plan for `facts` the last plan, unless it is already (the
    /// same snapshot version, facts and held allocations). Returns None
    /// when it was, else the last plan it replaced and whether the desired
    /// state changed.
    fn replan(&mut self, snapshot: &Snapshot, objects: &ObjectSet, facts: NodeFacts) -> Option<(Option<LastPlan>, bool)> {
        let last = self.last_plan.as_ref();
        if last.is_some_and(|last| last.version == snapshot.version && last.facts == facts && last.plan.allocations == self.allocations) {
            return None;
        }
        let plan = plan::plan(objects, &facts, &self.allocations);
        let desired_changed = last.is_none_or(|last| last.plan.desired != plan.desired);
        self.desired_generation += u64::from(desired_changed);
        Some((self.last_plan.replace(LastPlan { version: snapshot.version, facts, plan }), desired_changed))
    }

    /// The sandboxes this node's attachments name that netlet did not make
    /// (every `path`, and each `netns` its record lacks; one it made is a
    /// new namespace): those that are the node's own namespace, with what
    /// each resolved to, and the `netns` names that exist. A stat each.
    fn sandboxes_made_elsewhere(&mut self, snapshot: &Snapshot) -> (BTreeMap<String, String>, BTreeSet<String>) {
        let made_here = |name: &str| self.owned.netns.contains(name);
        // Listed once per snapshot, then only shortened as netlet makes
        // them (a quiet pass among a thousand attachments looks up none).
        let candidates = match &mut self.sandbox_candidates {
            Some((version, list)) if *version == snapshot.version => list,
            slot => {
                let local = snapshot.objects.attachments.iter().filter(|a| plan::is_local(a, &self.node_name));
                let list = local
                    .filter(|a| !a.spec.sandbox.netns.as_deref().is_some_and(made_here))
                    .filter_map(|a| match (&a.spec.sandbox.netns, &a.spec.sandbox.path) {
                        (Some(name), _) => Some(SandboxRef::Managed(name.clone())),
                        (None, Some(path)) => Some(SandboxRef::Path(path.clone())),
                        _ => None,
                    })
                    .collect::<BTreeSet<_>>();
                &mut slot.insert((snapshot.version, list.into_iter().collect())).1
            }
        };
        candidates.retain(|sandbox| !sandbox.netns_name().is_some_and(made_here));
        let found = self.dataplane.namespaces_at(candidates.iter().map(SandboxRef::path).collect());
        let unowned =
            candidates.iter().filter_map(|s| s.netns_name().filter(|_| found.contains_key(&s.path()))).map(String::from).collect();
        let node_namespace_at = found.into_iter().filter_map(|(path, node)| Some((path, node?))).collect();
        (node_namespace_at, unowned)
    }

    /// One pass over `snapshot`. When its version, the node facts and the
    /// held allocations are the previous plan's, that plan is reused, and a
    /// pass that then changes nothing reuses the previous status too: an
    /// in-sync node costs almost nothing to check.
    #[tracing::instrument(skip_all, fields(node = %self.node_name, objects = snapshot.objects.len()))]
    pub async fn pass(&mut self, snapshot: &Snapshot) -> Outcome {
        let started = Instant::now();
        self.seed_allocations(&snapshot.known);
        self.override_allocations(&snapshot.decided);
        if std::mem::take(&mut self.recover_from_kernel) {
            let recovered = self.dataplane.recover_allocations(&snapshot.objects, &self.allocations).await;
            let missing = recovered.endpoints.keys().filter(|k| !self.allocations.endpoints.contains_key(*k)).count();
            if missing > 0 {
                tracing::warn!(attachments = missing, "allocations missing from the state dir were recovered from the kernel");
                self.seed_allocations(&recovered);
            }
        }
        let (facts, sockets_read) = self.facts(snapshot).await;
        let t_facts = started.elapsed();
        let objects = match snapshot.objects.is_sorted_by_creation() {
            true => snapshot.objects.clone(),
            false => Arc::new(snapshot.objects.in_creation_order().into_owned()),
        };
        let load_errors = &snapshot.load_errors[..];
        // Planned with the last reading of the listening sockets while they
        // are read again; planned again in the rare case they changed.
        let mut first = self.replan(snapshot, &objects, facts);
        let again = match sockets_read {
            Some(read) => {
                self.finish_sockets_read(read, snapshot).await;
                let sockets = self.bound_ports_cache.as_ref().map(|(_, _, ports)| ports).expect("just read");
                let last = &self.last_plan.as_ref().expect("planned above").facts;
                match last.bound_ports != *sockets {
                    true => {
                        let facts = NodeFacts { bound_ports: sockets.clone(), ..last.clone() };
                        // The plan made with the old reading goes before
                        // the new one is made, which replaces the last.
                        if let Some((previous, _)) = first.take() {
                            self.last_plan = previous;
                        }
                        self.replan(snapshot, &objects, facts)
                    }
                    false => None,
                }
            }
            None => None,
        };
        let reused = first.is_none() && again.is_none();
        // Mutations made while the desired state is unchanged are drift repairs.
        let desired_changed = [&first, &again].iter().any(|p| p.as_ref().is_some_and(|(_, changed)| *changed));
        // What this pass replaces is dropped once its status is written
        // (freeing thousands of objects takes a millisecond or two).
        let replaced_plan = (first.and_then(|p| p.0), again.and_then(|p| p.0));
        let mut replaced_status = None;
        let last = self.last_plan.as_ref().expect("set above");
        let plan = &last.plan;
        let t_plan = started.elapsed();

        // Allocations are made durable while the kernel work runs, and the
        // pass reports nothing before they are: what a crash in between
        // leaves unrecorded is in the kernel, and the first pass after a
        // restart reads it back from there (`recover_allocations`). A write
        // that only forgets (objects removed) is waited for after the
        // status instead: a crash before it lands leaves entries of objects
        // that are gone, which no plan reads.
        let mut node_errors = Vec::new();
        let changed = plan.allocations != self.allocations;
        let forgets_only = changed && plan.allocations.only_forgets(&self.allocations);
        let mut allocations_write = changed.then(|| self.state.store_allocations_in_background(plan.allocations.clone()));
        let t_allocations = started.elapsed();
        let state = self.state.clone();
        // Namespaces about to be made are logged (an append); the whole
        // record is rewritten after the status write.
        let mut namespaces_logged = false;
        let mut record = |record: OwnedRecord<'_>| match record {
            OwnedRecord::Namespaces(names) => {
                state.log_owned_namespaces(names).map_err(|e| e.to_string())?;
                namespaces_logged = true;
                Ok(())
            }
            OwnedRecord::Whole(owned) => state.store_owned(owned).map_err(|e| e.to_string()),
        };
        let report: SyncReport = self.dataplane.sync(&plan.desired, self.desired_generation, &mut self.owned, &mut record).await;
        if !forgets_only {
            Self::finish_allocations(&mut self.allocations, allocations_write.take(), &mut node_errors);
        }
        let t_sync = started.elapsed();
        // The names are served before the status says they are there.
        if let Some(dns) = &mut self.dns {
            dns.update(&plan.desired.names, &last.facts.resolvers).await;
        }
        if let Some(proxy) = &mut self.loopback_proxy {
            proxy.update(&plan.desired.firewall.ports);
        }
        node_errors.extend(report.node_errors.iter().cloned());

        let quiet = reused
            && !self.status_unwritten
            && load_errors.is_empty()
            && report.total_mutations() == 0
            && report.endpoint_errors.is_empty()
            && report.network_errors.is_empty()
            && report.firewall_error.is_none()
            && node_errors.is_empty();
        let mut t_status_computed = started.elapsed();
        let verdicts = if quiet {
            self.last_verdicts.clone()
        } else {
            let now = crate::api::now_rfc3339();
            let previous = match self.stored_status.take() {
                Some(stored) => status::Previous::stored(&stored),
                None => status::Previous::Book(&self.status),
            };
            let computed = status::compute(&objects, plan, &report, load_errors, previous, &self.node_name, &now);
            t_status_computed = started.elapsed();
            replaced_status = Some(std::mem::replace(&mut self.status, Arc::new(computed.book)));
            if computed.changed || self.status_unwritten {
                self.status_unwritten = false;
                if let Err(e) = self.state.store_status(&self.status.entries) {
                    self.status_unwritten = true;
                    node_errors.push(format!("writing status: {e}"));
                }
            }
            self.last_verdicts = computed.verdicts.into();
            self.last_verdicts.clone()
        };
        let t_status = started.elapsed();
        let mut mutations_by_kind = report.mutations.clone();
        Self::finish_allocations(&mut self.allocations, allocations_write, &mut node_errors);
        self.dataplane.finish_deletions().await.record(&mut mutations_by_kind, &mut node_errors);
        self.dataplane.refill_spare_namespace();
        if report.owned_to_record || namespaces_logged {
            if let Err(e) = self.state.store_owned(&self.owned) {
                node_errors.push(format!("recording the namespaces netlet made and removed: {e}"));
            }
        }
        tracing::debug!(?t_facts, ?t_plan, ?t_allocations, ?t_sync, ?t_status_computed, ?t_status, deletions = ?started.elapsed(), reused, full = report.full, "reconcile phases (cumulative)");
        drop((replaced_plan, replaced_status));
        let outcome = Outcome {
            verdicts,
            status: self.status.clone(),
            mutations: mutations_by_kind.values().sum(),
            mutations_by_kind,
            node_errors,
            load_errors: load_errors.iter().map(|e| e.to_string()).collect(),
            duration: started.elapsed(),
            full: report.full,
        };
        for failure in outcome.failures() {
            tracing::warn!("{failure}");
        }
        tracing::info!(
            mutations = outcome.mutations,
            by_kind = ?outcome.mutations_by_kind,
            ready = outcome.verdicts.iter().filter(|v| v.ready).count(),
            not_ready = outcome.verdicts.iter().filter(|v| !v.ready).count(),
            duration_ms = outcome.duration.as_secs_f64() * 1000.0,
            "reconciled"
        );
        let plan = &self.last_plan.as_ref().expect("set above").plan;
        let usage: BTreeMap<String, AddressUsage> = plan
            .networks
            .iter()
            .filter_map(|(name, n)| {
                n.as_ref().ok().map(|i| (name.clone(), AddressUsage { in_use: i.addresses_in_use, capacity: i.address_capacity }))
            })
            .collect();
        let mut ports: BTreeMap<&'static str, i64> = BTreeMap::new();
        for p in &plan.desired.firewall.ports {
            *ports.entry(p.protocol.as_str()).or_default() += 1;
        }
        self.metrics.record(&outcome, !desired_changed, &usage, &ports);
        outcome
    }
}
