//! All side effects on the node: namespaces, links, addresses, routes,
//! sysctls and the nftables table. The only module that touches the kernel
//! (through the narrow traits of `kernel`; `linux` is the real one).
//!
//! [`Dataplane::sync`] observes the kernel, compares with the desired state
//! and changes only what differs (ensure / delete / prune). Every change is
//! counted where it is applied: an in-sync node costs zero mutations. What
//! a pass may skip follows one rule, stated in `realized`. A pass goes, in
//! order: the ruleset's sync starts on a thread of its own
//! (`firewall_sync`); sysctls and bridges (`bridges`), overlays (`vxlan`)
//! against the node's links (`node_view`); missing namespaces made
//! (`sandboxes`); each sandbox's interfaces, addresses and routes
//! (`endpoints`); /etc/netns files; what is no longer wanted removed
//! (`prune`). The removals that wait for the kernel (link deletions, a
//! ruleset change that only takes away) finish after the pass reported
//! (`Dataplane::finish_deletions`). `report` is what it did.

mod bridges;
pub mod coexist;
pub mod dump;
mod endpoints;
pub mod events;
pub mod facts;
#[cfg(test)]
pub mod fake;
pub mod files;
pub mod firewall;
mod firewall_sync;
pub mod kernel;
pub mod linux;
pub mod netlink;
pub mod netns;
mod nft_generation;
mod node_view;
mod nsid;
mod prune;
pub mod realized;
mod report;
mod sandboxes;
pub mod set_elements;
pub mod sysctl;
mod vxlan;

pub use node_view::NodeView;
pub use report::{FinishedDeletions, SyncReport};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::naming::{OWNER_ALIAS_PREFIX, OWNER_LINK_GROUP};
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{DesiredState, Endpoint, EndpointKind};
use crate::plan::names::SandboxFiles;
use crate::state::{Owned, OwnedRecord};
use events::EventLog;
use kernel::{Journal, Recorded, System, Touched};
use netlink::Link;
use realized::{audit_due, Judge, Realized, Record};
use report::LinkDeletions;
use sandboxes::SandboxHandle;

pub struct Dataplane {
    /// Every side effect goes through it (see `kernel`).
    system: Box<dyn System>,
    /// What this pass changed, by kind: every change is counted where it
    /// is applied (`Recorded`), never at call sites.
    journal: Journal,
    node: Recorded,
    /// Node links the dataplane changed since the node view was last read.
    touched: Arc<Mutex<Touched>>,
    /// Sends the node link deletions that wait for the kernel, from a
    /// thread of its own (None: there is none; they go inline).
    unhurried: Option<Recorded>,
    /// Kernel events, when watched (long-running agents).
    events: Option<Arc<EventLog>>,
    /// What was converged, per item: see `realized` for when it is trusted.
    realized: Realized,
    /// Passes since the last audit (every AUDIT_EVERY-th trusts nothing).
    passes_since_audit: u32,
    /// The desired-state generation of the previous pass.
    last_generation: Option<u64>,
    /// The node's links and addresses, and the epoch they were observed at.
    node_view: Option<(NodeView, u64)>,
    sandboxes: HashMap<String, SandboxHandle>,
    /// The node's own network namespace(s), by identity: never a sandbox.
    node_namespaces: Vec<(u64, u64)>,
    /// Link deletions a pass started and has not yet seen finish.
    pending_deletions: Option<tokio::task::JoinHandle<LinkDeletions>>,
    /// A ruleset sync that only removes, finished with the link deletions.
    pending_firewall: Option<firewall_sync::Started>,
    /// Advanced as a pass goes (`--once` on a terminal draws it).
    pub progress: Option<Arc<crate::progress::Progress>>,
}

/// Every network namespace's loopback device has this index.
pub(super) const LOOPBACK_INDEX: u32 = 1;

/// Ours: created in our link group, or (links made before the group was
/// used) carrying our alias.
pub(super) fn is_ours(link: &Link) -> bool {
    link.group == OWNER_LINK_GROUP || link.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX))
}

pub(super) fn is_link_local(net: &IpNet) -> bool {
    matches!(net.addr(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

impl Dataplane {
    /// A dataplane whose side effects go to `system` (`linux::Linux`, on
    /// the reconciler's thread).
    pub fn new(system: Box<dyn System>) -> Self {
        let journal = Journal::default();
        let touched = Arc::new(Mutex::new(Touched::default()));
        let node_namespaces = sandboxes::NODE_NAMESPACE_PATHS.iter().filter_map(|path| system.namespace_at(path)).collect();
        Dataplane {
            node: Recorded::node(system.node(), journal.clone(), touched.clone()),
            node_namespaces,
            unhurried: system.unhurried().map(|u| Recorded::node(u, journal.clone(), touched.clone())),
            system,
            journal,
            touched,
            events: None,
            realized: Realized::default(),
            passes_since_audit: 0,
            last_generation: None,
            node_view: None,
            sandboxes: HashMap::new(),
            pending_deletions: None,
            pending_firewall: None,
            progress: None,
        }
    }

    /// Goes by kernel events from now on (long-running agents): a pass
    /// skips what an earlier one converged while no event says it changed
    /// (see `realized`). They are watched from the agent's runtime.
    pub fn use_events(&mut self, events: Arc<EventLog>) {
        self.events = Some(events);
    }

    /// Keeps a namespace made ahead for the next attachment that needs one
    /// (long-running agents; see [`netns::Spare`]).
    pub fn keep_spare_namespace(&mut self) {
        self.system.keep_spare_namespace();
    }

    /// Makes the next spare namespace if the last one was used: called
    /// after the status write, off the path to Ready.
    pub fn refill_spare_namespace(&mut self) {
        self.system.refill_spare_namespace();
    }

    /// Tells the progress display (if any) which phase a pass is in.
    fn set_phase(&self, name: &'static str, total: usize) {
        if let Some(p) = &self.progress {
            p.phase(name, total);
        }
    }

    /// Converges the node to `desired`, whose `generation` changes whenever
    /// it does. `owned` records the namespaces we created; `record_owned`
    /// persists it before anything relies on it.
    pub async fn sync(
        &mut self,
        desired: &DesiredState,
        generation: u64,
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        // Normally finished by the reconciler right after its status write.
        let finished = self.finish_deletions().await;
        report.node_errors.extend(finished.errors);
        self.converge(desired, generation, owned, record_owned, &mut report).await;
        report.mutations = self.journal.take();
        for (kind, n) in finished.mutations {
            *report.mutations.entry(kind).or_default() += n;
        }
        report
    }

    async fn converge(
        &mut self,
        desired: &DesiredState,
        generation: u64,
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
        report: &mut SyncReport,
    ) {
        let audit = audit_due(self.passes_since_audit, self.last_generation, generation);
        self.passes_since_audit = if audit { 0 } else { self.passes_since_audit + 1 };
        self.last_generation = Some(generation);
        let events = self.events.clone();
        let judge = Judge::new(events.as_deref(), audit);
        report.full = judge.trusts_nothing();
        // Nothing happened in the kernel nor to what we want since a pass
        // that converged everything: there is nothing to look at.
        if judge.node_holds(self.realized.node.as_ref(), generation) {
            return;
        }
        let observed = judge.epoch();
        self.realized.node = None;
        if judge.trusts_nothing() {
            self.forget_node_view();
        }
        let started = std::time::Instant::now();
        let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
        let lap = |name: &'static str, phases: &mut Vec<(&str, std::time::Duration)>| {
            phases.push((name, started.elapsed() - phases.iter().map(|p| p.1).sum::<std::time::Duration>()))
        };
        // The ruleset's sync (an element update over netlink, or a full
        // check and apply through nft processes) runs beside the link work.
        let firewall_job = self.start_firewall(desired, &judge);
        self.set_phase("node", 0);
        self.sync_sysctls(desired, report);
        let view = match self.node_view().await {
            Ok(view) => view,
            Err(e) => {
                report.node_errors.push(e.to_string());
                if let Some(job) = firewall_job {
                    self.finish_firewall(job, report).await;
                }
                return;
            }
        };
        let (node_links, node_addresses) = (&view.0, &view.1);
        let bridges = self.sync_bridges(desired, node_links, node_addresses, report).await;
        self.sync_vxlans(desired, node_links, &bridges, report).await;
        lap("node", &mut phases);
        // Sandboxes whose record does not hold are looked at; the rest are
        // as they were converged.
        // (Hashed, not ordered: a thousand sandboxes are looked at on every
        // pass that changes anything; the few stale ones are sorted.)
        let mut by_sandbox: foldhash::HashMap<&SandboxRef, Vec<&Endpoint>> = foldhash::HashMapExt::with_capacity(desired.sandboxes.len());
        for spec in &desired.sandboxes {
            by_sandbox.entry(&spec.sandbox).or_default();
        }
        for ep in &desired.endpoints {
            by_sandbox.entry(&ep.sandbox).or_default().push(ep);
        }
        self.realized.sandboxes.retain(|sandbox, _| by_sandbox.contains_key(sandbox));
        let mut stale: Vec<(&SandboxRef, Vec<&Endpoint>)> = by_sandbox
            .into_iter()
            .filter(|(sandbox, endpoints)| {
                !judge.holds_by(self.realized.sandboxes.get(*sandbox), |d| d.iter().eq(endpoints.iter().copied()))
            })
            .collect();
        stale.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.set_phase("namespaces", 0);
        let fresh = self.sync_sandboxes(&stale, owned, record_owned, report).await;
        lap("netns", &mut phases);
        self.set_phase("attachments", stale.len());
        // Write-ahead for links made inside sandboxes, which the node
        // namespace cannot mark.
        let before = owned.sandbox_links.len();
        for ep in desired.endpoints.iter().filter(|e| matches!(e.kind, EndpointKind::Macvlan { .. })) {
            owned.sandbox_links.entry(ep.owner.clone()).or_insert_with(|| (ep.sandbox.path(), ep.ifname.clone()));
        }
        if owned.sandbox_links.len() != before {
            if let Err(e) = record_owned(OwnedRecord::Whole(owned)) {
                report.node_errors.push(format!("recording sandbox links: {e}"));
            }
        }
        self.sync_endpoints(&stale, node_links, &bridges, &fresh, &judge, report).await;
        lap("endpoints", &mut phases);
        self.set_phase("name files", 0);
        self.sync_files(&desired.sandbox_files, &judge, report);
        lap("files", &mut phases);
        self.set_phase("cleanup", 0);
        self.prune(desired, node_links, owned, record_owned, report).await;
        lap("prune", &mut phases);
        self.set_phase("firewall", 0);
        match firewall_job {
            Some(job) if job.removes_only => self.pending_firewall = Some(job),
            Some(job) => self.finish_firewall(job, report).await,
            None => {}
        }
        lap("nft wait", &mut phases);
        tracing::debug!(?phases, full = report.full, sandboxes = stale.len(), "sync phases");
        // Sockets into sandboxes are cheap to reopen and cost a receive
        // buffer each: keep none between passes.
        self.sandboxes.clear();
        let clean = report.endpoint_errors.is_empty()
            && report.network_errors.is_empty()
            && report.node_errors.is_empty()
            && report.firewall_error.is_none();
        if clean {
            self.realized.node = Some(Record { desired: generation, observed, scopes: Vec::new() });
        }
        if let (true, Some(events)) = (audit, &self.events) {
            // Everything was observed at `observed` or later: older events
            // concern no record.
            events.forget_before(observed);
        }
    }

    /// The /etc/netns files: each written where it differs from what the
    /// record says was written (every one read back on an audit: no event
    /// reports an edit of a file).
    fn sync_files(&mut self, files: &Arc<Vec<SandboxFiles>>, judge: &Judge<'_>, report: &mut SyncReport) {
        let record = self.realized.files.take();
        if judge.trusts_nothing() || record.as_ref().is_none_or(|r| r.desired != *files) {
            // Both lists are sorted by namespace name: one walk of the last
            // finds each file's last version (a miss only costs a look at
            // the files on disk).
            let last: &[SandboxFiles] = match (&record, judge.trusts_nothing()) {
                (Some(r), false) => &r.desired,
                _ => &[],
            };
            let mut last = last.iter().peekable();
            let mut unchanged = |f: &SandboxFiles| {
                while last.next_if(|l| l.netns < f.netns).is_some() {}
                last.next_if(|l| l.netns == f.netns).is_some_and(|l| l == f)
            };
            let mut ok = true;
            for f in files.iter().filter(|f| !unchanged(f)) {
                match self.system.write_files(f) {
                    Ok(n) => self.journal.count("file", n),
                    Err(e) => {
                        ok = false;
                        report.node_errors.push(format!("writing /etc/netns/{}: {e}", f.netns));
                    }
                }
            }
            if ok {
                self.realized.files = Some(Record { desired: files.clone(), observed: judge.epoch(), scopes: Vec::new() });
            }
        } else {
            self.realized.files = record;
        }
    }
}
