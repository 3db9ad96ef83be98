//! All side effects on the node: namespaces, links, addresses, routes,
//! sysctls and the nftables table. The only module that touches the kernel.
//!
//! [`Dataplane::sync`] observes the kernel, compares with the desired state
//! and changes only what differs (ensure / delete / prune). Every change is
//! counted: an in-sync node costs zero mutations. A pass goes, in order:
//! the ruleset's sync starts on a thread of its own (`firewall_sync`);
//! sysctls and bridges (`bridges`), overlays (`vxlan`) against the node's
//! links (`node_view`); missing namespaces made (`sandboxes`); each
//! sandbox's interfaces, addresses and routes (`endpoints`); /etc/netns
//! files; what is no longer wanted removed (`prune`). `freshness` says when
//! a pass may trust what an earlier one verified; `report` is what it did.

mod bridges;
pub mod dump;
mod endpoints;
pub mod events;
pub mod facts;
pub mod files;
pub mod firewall;
mod firewall_sync;
mod freshness;
pub mod kernel;
pub mod linux;
pub mod netlink;
pub mod netns;
mod node_view;
mod prune;
mod report;
mod sandboxes;
pub mod set_elements;
pub mod sysctl;
mod vxlan;

pub use node_view::NodeView;
pub use report::{FinishedDeletions, SyncReport};

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::naming::{OWNER_ALIAS_PREFIX, OWNER_LINK_GROUP};
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{DesiredState, Endpoint, EndpointKind};
use crate::state::{Owned, OwnedRecord};
use freshness::{audit_due, OWN_EVENTS_SETTLE};
use kernel::{Journal, Recorded, System};
use netlink::Link;
use node_view::ViewChanges;
use report::LinkDeletions;
use sandboxes::SandboxHandle;

pub struct Dataplane {
    /// Every side effect goes through it (see `kernel`).
    system: Box<dyn System>,
    /// What this pass changed, by kind: every change is counted where it
    /// is applied (`Recorded`), never at call sites.
    journal: Journal,
    node: Recorded,
    /// Kernel events, when watched: lets a pass skip what it verified.
    events: Option<events::EventCounter>,
    /// Event count at the end of the previous pass.
    events_baseline: u64,
    /// Until when the kernel events of our last sync are still arriving
    /// (see [`Dataplane::settle_events`]).
    own_events_until: Option<tokio::time::Instant>,
    /// Passes since the last full one (every FULL_PASS_EVERY-th is full).
    passes_since_full: u32,
    /// The desired-state generation of the previous pass.
    last_generation: Option<u64>,
    /// Sandboxes verified in sync, with the endpoints they were verified
    /// for (by sandbox, not path: a pass looks up every one of them).
    verified: HashMap<SandboxRef, Vec<Endpoint>>,
    last_firewall: Option<crate::plan::desired::FirewallPlan>,
    /// Advanced as a pass goes (`--once` on a terminal draws it).
    pub progress: Option<std::sync::Arc<crate::progress::Progress>>,
    last_files: Option<std::sync::Arc<Vec<crate::plan::names::SandboxFiles>>>,
    /// Generation of the desired state the previous pass converged to
    /// without errors.
    last_clean: Option<u64>,
    /// Node links and addresses, valid while no kernel event arrives.
    node_view: Option<NodeView>,
    sandboxes: HashMap<String, SandboxHandle>,
    /// Sends the node link deletions that wait for the kernel, from a
    /// thread of its own (None: there is none; they go inline).
    unhurried: Option<Recorded>,
    /// Link deletions a pass started and has not yet seen finish.
    pending_deletions: Option<tokio::task::JoinHandle<LinkDeletions>>,
    /// Node links this pass changed: the view is brought up to date from
    /// them instead of dumped again.
    view_changes: ViewChanges,
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
        Dataplane {
            node: Recorded::new(system.node(), journal.clone()),
            unhurried: system.unhurried().map(|u| Recorded::new(u, journal.clone())),
            system,
            journal,
            events: None,
            events_baseline: 0,
            own_events_until: None,
            passes_since_full: 0,
            last_generation: None,
            verified: HashMap::new(),
            last_firewall: None,
            progress: None,
            last_files: None,
            last_clean: None,
            node_view: None,
            sandboxes: HashMap::new(),
            pending_deletions: None,
            view_changes: ViewChanges::default(),
        }
    }

    /// Goes by kernel events from now on (long-running agents): passes
    /// with no events since the previous one skip re-observing what they
    /// verified. They are watched from the agent's runtime (`events::watch`).
    pub fn use_events(&mut self, events: events::EventCounter) {
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
        self.settle_events().await;
        // A full pass observes everything; a quick one skips what was
        // verified before, when no kernel event arrived since.
        let full = match &self.events {
            None => true,
            Some(events) => {
                events.is_dead()
                    || events.get() != self.events_baseline
                    || audit_due(self.passes_since_full, self.last_generation, generation)
            }
        };
        self.passes_since_full = if full { 0 } else { self.passes_since_full + 1 };
        self.last_generation = Some(generation);
        report.full = full;
        // Nothing changed in the kernel (no event) nor in what we want since
        // a pass that converged cleanly: there is nothing to look at.
        if !full && self.last_clean == Some(generation) {
            return;
        }
        self.last_clean = None;
        let started = std::time::Instant::now();
        let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
        let lap = |name: &'static str, phases: &mut Vec<(&str, std::time::Duration)>| {
            phases.push((name, started.elapsed() - phases.iter().map(|p| p.1).sum::<std::time::Duration>()))
        };
        // The ruleset's sync (an element update over netlink, or a full
        // check and apply through nft processes) runs beside the link work.
        let firewall_job = self.start_firewall(desired, full);
        self.set_phase("node", 0);
        self.sync_sysctls(desired, report);
        // A full pass reads the node's links afresh, not the view that
        // earlier passes kept up to date with their own changes; so does a
        // pass after one that did not finish bringing the view up to date.
        if full || !self.view_changes.is_empty() {
            self.node_view = None;
            self.view_changes = ViewChanges::default();
        }
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
        self.set_phase("namespaces", 0);
        let fresh = self.sync_sandboxes(desired, full, owned, record_owned, report).await;
        lap("netns", &mut phases);
        self.set_phase("attachments", desired.sandboxes.len());
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
        self.sync_endpoints(desired, node_links, &bridges, full, &fresh, report).await;
        lap("endpoints", &mut phases);
        self.set_phase("name files", 0);
        if full || self.last_files.as_ref() != Some(&desired.sandbox_files) {
            let mut ok = true;
            // A quick pass rewrites only what changed since the last clean
            // write; a full pass checks every file against its content. The
            // lists are sorted by namespace name (a miss only costs a look
            // at the files on disk).
            let last: &[crate::plan::names::SandboxFiles] = match (&self.last_files, full) {
                (Some(last), false) => last,
                _ => &[],
            };
            let unchanged =
                |f: &crate::plan::names::SandboxFiles| last.binary_search_by(|l| l.netns.cmp(&f.netns)).is_ok_and(|i| last[i] == *f);
            for f in desired.sandbox_files.iter().filter(|f| !unchanged(f)) {
                match self.system.write_files(f) {
                    Ok(n) => self.journal.count("file", n),
                    Err(e) => {
                        ok = false;
                        report.node_errors.push(format!("writing /etc/netns/{}: {e}", f.netns));
                    }
                }
            }
            self.last_files = ok.then(|| desired.sandbox_files.clone());
        }
        lap("files", &mut phases);
        self.set_phase("cleanup", 0);
        self.prune(desired, node_links, owned, record_owned, report).await;
        lap("prune", &mut phases);
        self.set_phase("firewall", 0);
        if let Some(job) = firewall_job {
            self.finish_firewall(job, report).await;
        }
        lap("nft wait", &mut phases);
        tracing::debug!(?phases, full, "sync phases");
        // Sockets into sandboxes are cheap to reopen and cost a receive
        // buffer each: keep none between passes.
        self.sandboxes.clear();
        self.update_node_view().await;
        let clean = report.endpoint_errors.is_empty()
            && report.network_errors.is_empty()
            && report.node_errors.is_empty()
            && report.firewall_error.is_none();
        if clean {
            self.last_clean = Some(generation);
        }
        self.own_events_until = Some(tokio::time::Instant::now() + OWN_EVENTS_SETTLE);
    }
}
