//! One reconcile, whatever woke it: load -> plan -> sync -> status.
//!
//! Level-triggered: each pass computes the node's whole desired state from
//! the objects and converges to it; it never asks why it was called. The
//! reconciler lives on one dedicated thread (it may `setns` briefly to open
//! sandbox sockets), so it is never run on a shared tokio worker.

use std::time::Instant;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dataplane::{facts, sysctl, Dataplane, SyncReport};
use crate::metrics::{AddressUsage, Metrics};
use crate::objects::ObjectSet;
use crate::plan::{self, Allocations, NodeFacts};
use crate::source::manifests::LoadError;
use crate::state::{Owned, OwnedRecord, StateDir, StatusStore};
use crate::status::{self, Verdict};

/// What one pass did, for logs, `--once` and metrics.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Shared with the reconciler, which hands the same verdicts out again
    /// for a pass that changed nothing (2,000 objects' keys and messages).
    pub verdicts: Arc<[Verdict]>,
    pub mutations: u32,
    pub mutations_by_kind: std::collections::BTreeMap<&'static str, u32>,
    pub node_errors: Vec<String>,
    pub load_errors: Vec<String>,
    pub duration: std::time::Duration,
    /// The dataplane re-read everything from the kernel this pass.
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

pub struct Reconciler {
    state: StateDir,
    node_name: String,
    dataplane: Dataplane,
    allocations: Allocations,
    owned: Owned,
    status: StatusStore,
    /// Each entry of `status` serialized, reused while the entry is
    /// (re-serializing thousands was most of writing the file).
    status_serialized: Vec<Vec<u8>>,
    /// The objects `status` was computed from (entries of unchanged objects are reused).
    status_objects: Option<Arc<ObjectSet>>,
    /// The typed form of `status`, by object.
    status_memo: status::StatusMemo,
    /// The last status write failed: retry even if nothing changes.
    status_unwritten: bool,
    metrics: Option<Arc<Metrics>>,
    /// Bumped whenever a plan's desired state differs from the previous
    /// one: the dataplane and the drift metric compare generations instead
    /// of keeping copies of a state that holds every object.
    desired_generation: u64,
    /// The embedded DNS server (long-running agents only).
    dns: Option<crate::resolver::DnsServer>,
    /// Published ports at [::1] (long-running agents).
    loopback_proxy: Option<crate::proxy::LoopbackProxy>,
    /// At the first pass, read back from the kernel what attachments hold
    /// (a lost or corrupt state file must not move an address).
    recover_from_kernel: bool,
    /// The last plan, with the object-set version and facts it came from.
    last_plan: Option<(Option<u64>, NodeFacts, plan::Plan)>,
    last_verdicts: Arc<[Verdict]>,
    /// Kubernetes mode: the overlay address blocks this node claimed.
    overlay_blocks: BTreeMap<String, Vec<ipnet::IpNet>>,
    /// Listening sockets, with the object-set version and time of reading.
    bound_ports_cache: Option<(Option<u64>, Instant, Vec<BoundPort>)>,
}

type BoundPort = (crate::api::Protocol, std::net::IpAddr, u16);

const BOUND_PORTS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Reconciler {
    /// Needs a tokio runtime context (netlink sockets).
    pub fn new(state: StateDir, node_name: String) -> anyhow::Result<Self> {
        let dataplane = Dataplane::new()?;
        Ok(Reconciler {
            allocations: state.load_allocations(),
            owned: state.load_owned(),
            status: state.load_status(),
            status_serialized: Vec::new(),
            status_objects: None,
            status_memo: Default::default(),
            status_unwritten: false,
            state,
            node_name,
            dataplane,
            recover_from_kernel: true,
            dns: None,
            loopback_proxy: None,
            metrics: None,
            desired_generation: 0,
            last_plan: None,
            last_verdicts: Arc::from([]),
            overlay_blocks: BTreeMap::new(),
            bound_ports_cache: None,
        })
    }

    /// Adds allocations known from elsewhere (Kubernetes status) that the
    /// state dir lacks; what the state dir holds wins.
    pub fn seed_allocations(&mut self, held: Allocations) {
        for (k, v) in held.endpoints {
            self.allocations.endpoints.entry(k).or_insert(v);
        }
        for (k, v) in held.ports {
            self.allocations.ports.entry(k).or_insert(v);
        }
    }

    /// Kubernetes mode: the address blocks this node may allocate from on
    /// each overlay network (see `NodeFacts::overlay_blocks`).
    pub fn set_overlay_blocks(&mut self, blocks: BTreeMap<String, Vec<ipnet::IpNet>>) {
        self.overlay_blocks = blocks;
    }

    /// Adds allocations that override what the state dir holds: other
    /// nodes' overlay addresses, which only their status decides.
    pub fn override_allocations(&mut self, held: Allocations) {
        self.allocations.endpoints.extend(held.endpoints);
    }

    /// Serve DNS on user-defined networks from now on (long-running agents).
    pub fn serve_dns(&mut self) {
        let dns = crate::resolver::DnsServer::new(53);
        if let Some(metrics) = &self.metrics {
            metrics.attach_dns(dns.stats.clone());
        }
        self.dns = Some(dns);
    }

    /// Relay published ports at [::1] from now on (long-running agents).
    pub fn serve_loopback_ports(&mut self) {
        self.loopback_proxy = Some(crate::proxy::LoopbackProxy::default());
    }

    /// Watch kernel events, and keep a namespace made ahead (long-running
    /// agents): see `Dataplane::watch_events` and `keep_spare_namespace`.
    pub fn watch_events(&mut self, wake: Arc<tokio::sync::Notify>) {
        self.dataplane.watch_events(wake);
        self.dataplane.keep_spare_namespace();
    }

    /// The last computed status of every object.
    pub fn status(&self) -> &StatusStore {
        &self.status
    }

    /// Reports each pass's progress to `progress`.
    pub fn with_progress(mut self, progress: Arc<crate::progress::Progress>) -> Self {
        self.dataplane.progress = Some(progress);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Listening sockets of the node. Reading them walks the kernel's whole
    /// socket tables (~5 ms, most of a no-op pass), and they only matter
    /// when ports are allocated: re-read when the object set changed, else
    /// at most every BOUND_PORTS_TTL.
    fn bound_ports(&mut self, version: Option<u64>) -> Vec<BoundPort> {
        match &self.bound_ports_cache {
            Some((v, at, ports)) if version.is_some() && *v == version && at.elapsed() < BOUND_PORTS_TTL => ports.clone(),
            _ => {
                let ports = facts::bound_ports();
                self.bound_ports_cache = Some((version, Instant::now(), ports.clone()));
                ports
            }
        }
    }

    async fn facts(&mut self, version: Option<u64>) -> NodeFacts {
        let mut bound_ports = self.bound_ports(version);
        if let Some(proxy) = &self.loopback_proxy {
            bound_ports.retain(|b| !proxy.holds(b));
        }
        let view = self.dataplane.node_view().await.unwrap_or_default();
        let (links, addrs) = (&view.0, &view.1);
        let mtus: BTreeMap<u32, u32> = links.iter().map(|l| (l.index, l.mtu)).collect();
        NodeFacts {
            node_name: self.node_name.clone(),
            ephemeral_ports: sysctl::ephemeral_port_range(),
            bound_ports,
            resolvers: crate::dataplane::files::node_resolvers(),
            embedded_dns: self.dns.is_some(),
            link_mtu_by_address: addrs.iter().filter_map(|a| Some((a.net.addr(), *mtus.get(&a.index)?))).collect(),
            node_addresses: addrs.iter().map(|a| a.net).filter(|n| !n.addr().is_loopback()).collect(),
            overlay_blocks: self.overlay_blocks.clone(),
        }
    }

    pub async fn reconcile(&mut self, objects: Arc<ObjectSet>, load_errors: &[LoadError]) -> Outcome {
        self.reconcile_versioned(objects, load_errors, None).await
    }

    /// As [`Reconciler::reconcile`]; `version` identifies the object set
    /// (a manifest fingerprint, a hash of resourceVersions). When it and the
    /// node facts are unchanged, the previous plan is reused, and a pass
    /// that then changes nothing reuses the previous status too: an in-sync
    /// node costs almost nothing to check.
    #[tracing::instrument(skip_all, fields(node = %self.node_name, objects = objects.len()))]
    pub async fn reconcile_versioned(&mut self, objects: Arc<ObjectSet>, load_errors: &[LoadError], version: Option<u64>) -> Outcome {
        let started = Instant::now();
        if std::mem::take(&mut self.recover_from_kernel) {
            let recovered = self.dataplane.recover_allocations(&objects, &self.allocations).await;
            let missing = recovered.endpoints.keys().filter(|k| !self.allocations.endpoints.contains_key(*k)).count();
            if missing > 0 {
                tracing::warn!(attachments = missing, "allocations missing from the state dir were recovered from the kernel");
                self.seed_allocations(recovered);
            }
        }
        let facts = self.facts(version).await;
        let t_facts = started.elapsed();
        let reused = version.is_some() && matches!(&self.last_plan, Some((v, f, _)) if *v == version && *f == facts);
        let objects = match objects.is_sorted_by_creation() {
            true => objects,
            false => Arc::new(objects.in_creation_order().into_owned()),
        };
        // What this pass replaces is dropped once its status is written
        // (freeing thousands of objects takes a millisecond or two).
        let (mut replaced_plan, mut replaced_objects) = (None, None);
        // Mutations made while the desired state is unchanged are drift repairs.
        let mut desired_changed = false;
        if !reused {
            let plan = plan::plan(&objects, &facts, &self.allocations);
            desired_changed = self.last_plan.as_ref().is_none_or(|(_, _, last)| last.desired != plan.desired);
            self.desired_generation += u64::from(desired_changed);
            replaced_plan = self.last_plan.replace((version, facts, plan)).map(|(_, _, plan)| plan);
        }
        let plan = &self.last_plan.as_ref().expect("set above").2;
        let t_plan = started.elapsed();

        // Allocations are made durable while the kernel work runs, and the
        // pass reports nothing before they are: what a crash in between
        // leaves unrecorded is in the kernel, and the first pass after a
        // restart reads it back from there (`recover_allocations`).
        let mut node_errors = Vec::new();
        let allocations_write =
            (plan.allocations != self.allocations).then(|| self.state.store_allocations_in_background(plan.allocations.clone()));
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
        if let Some(write) = allocations_write {
            match write.finish() {
                Ok(allocations) => self.allocations = allocations,
                Err(e) => node_errors.push(format!("persisting allocations: {e}")),
            }
        }
        let t_sync = started.elapsed();
        if let Some(dns) = &mut self.dns {
            let resolvers = self.last_plan.as_ref().map(|(_, f, _)| f.resolvers.clone()).unwrap_or_default();
            dns.update(&plan.desired.names, resolvers).await;
        }
        if let Some(proxy) = &mut self.loopback_proxy {
            proxy.update(&plan.desired.firewall.ports).await;
        }
        node_errors.extend(report.node_errors.iter().cloned());

        let quiet = reused
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
            let computed_from = self.status_objects.as_deref().map(|o| (o, std::mem::take(&mut self.status_memo)));
            let previous = status::Previous { store: std::mem::take(&mut self.status), computed_from };
            let computed = status::compute(&objects, plan, &report, load_errors, previous, &self.node_name, &now);
            self.status = computed.store;
            self.status_memo = computed.memo;
            let mut before: Vec<Option<Vec<u8>>> = std::mem::take(&mut self.status_serialized).into_iter().map(Some).collect();
            self.status_serialized = (self.status.iter().zip(&computed.origins))
                .map(|(entry, origin)| {
                    origin.and_then(|i| before.get_mut(i)?.take()).unwrap_or_else(|| crate::state::serialize_status_entry(entry))
                })
                .collect();
            t_status_computed = started.elapsed();
            replaced_objects = self.status_objects.replace(objects.clone());
            if computed.changed || self.status_unwritten {
                self.status_unwritten = false;
                if let Err(e) = self.state.store_status(&self.status_serialized) {
                    self.status_unwritten = true;
                    node_errors.push(format!("writing status: {e}"));
                }
            }
            self.last_verdicts = computed.verdicts.into();
            self.last_verdicts.clone()
        };
        let t_status = started.elapsed();
        let mut mutations_by_kind = report.mutations.clone();
        self.dataplane.finish_deletions().await.record(&mut mutations_by_kind, &mut node_errors);
        self.dataplane.refill_spare_namespace();
        if report.owned_to_record || namespaces_logged {
            if let Err(e) = self.state.store_owned(&self.owned) {
                node_errors.push(format!("recording the namespaces netlet made and removed: {e}"));
            }
        }
        tracing::debug!(?t_facts, ?t_plan, ?t_allocations, ?t_sync, ?t_status_computed, ?t_status, deletions = ?started.elapsed(), reused, full = report.full, "reconcile phases (cumulative)");
        self.dataplane.settle_events().await;
        drop((replaced_plan, replaced_objects));
        let outcome = Outcome {
            verdicts,
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
        if let Some(metrics) = &self.metrics {
            let drift = !desired_changed;
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
            metrics.record(&outcome, drift, &usage, &ports);
        }
        outcome
    }
}
