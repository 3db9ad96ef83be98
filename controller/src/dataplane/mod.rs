//! All side effects on the node: namespaces, links, addresses, routes,
//! sysctls and the nftables table. The only module that touches the kernel.
//!
//! [`Dataplane::sync`] observes the kernel, compares with the desired state
//! and changes only what differs (ensure / delete / prune). Every change is
//! counted: an in-sync node costs zero mutations.

pub mod coexist;
pub mod dump;
pub mod events;
pub mod facts;
pub mod files;
pub mod firewall;
pub mod netlink;
pub mod netns;
pub mod set_elements;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ipnet::IpNet;

use crate::naming::{OWNER_ALIAS_PREFIX, OWNER_LINK_GROUP};
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{DesiredState, Endpoint, EndpointKind};
use crate::plan::outcome::{reason, Failure};
use crate::state::{Owned, OwnedRecord};
use netlink::{Link, LinkChange, Netlink, NetlinkError};

/// What one sync did and what went wrong, per object.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Kernel changes by kind (link, address, route, netns, sysctl, nft).
    pub mutations: BTreeMap<&'static str, u32>,
    /// By attachment `namespace/name`.
    pub endpoint_errors: BTreeMap<String, Failure>,
    /// By network name.
    pub network_errors: BTreeMap<String, Failure>,
    /// Node-wide problems (sysctls, pruning) that belong to no one object.
    pub node_errors: Vec<String>,
    /// The nftables transaction failed: every published port is affected.
    pub firewall_error: Option<String>,
    /// Overlay network -> remote VTEPs the underlay failed to resolve (ARP
    /// FAILED after traffic was sent their way).
    pub unreachable_vteps: BTreeMap<String, Vec<IpAddr>>,
    /// Everything was re-read from the kernel (not only what events or
    /// changes pointed at).
    pub full: bool,
    /// Deleted namespaces were dropped from `owned` but not recorded: the
    /// caller records it once the pass has reported (a crash before that
    /// only leaves names of namespaces already gone, which the next prune
    /// drops).
    pub owned_to_record: bool,
}

impl SyncReport {
    pub fn mutated(&mut self, kind: &'static str) {
        *self.mutations.entry(kind).or_default() += 1;
    }
    pub fn total_mutations(&self) -> u32 {
        self.mutations.values().sum()
    }
    fn kernel(op: &NetlinkError) -> Failure {
        Failure::new(reason::KERNEL_ERROR, op.to_string())
    }
}

/// A sandbox we hold a netlink socket in, and the file identity it was
/// opened for (a namespace recreated at the same path gets a new socket).
struct SandboxHandle {
    file: File,
    netlink: Netlink,
    identity: (u64, u64),
}

pub struct Dataplane {
    node: Netlink,
    firewall: firewall::NftFirewall,
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
    /// thread of its own (None: it could not start; they go inline).
    unhurried: Option<Netlink>,
    /// The node namespace's IPv6 interface settings, held open.
    node_ipv6_conf: sysctl::Ipv6Conf,
    /// Link deletions a pass started and has not yet seen finish.
    pending_deletions: Option<tokio::task::JoinHandle<LinkDeletions>>,
    /// The next managed namespace, made between passes (long-running agents).
    spare_netns: netns::Spare,
    /// Node links this pass changed: the view is brought up to date from
    /// them instead of dumped again.
    view_changes: ViewChanges,
}

/// The node links a pass touched (created, changed, or whose addresses
/// changed) by name, and deleted by index. Recorded before each change is
/// sent, so a failed one is only looked at again.
#[derive(Default)]
struct ViewChanges {
    touched: BTreeSet<String>,
    gone: BTreeSet<u32>,
}

impl ViewChanges {
    fn is_empty(&self) -> bool {
        self.touched.is_empty() && self.gone.is_empty()
    }

    fn touch(&mut self, name: &str) {
        if !self.touched.contains(name) {
            self.touched.insert(name.to_string());
        }
    }
}

/// What deleting stale node links came to: one outcome per link.
type LinkDeletions = Vec<Result<(), NetlinkError>>;

/// What finishing a pass's link deletions did.
#[derive(Debug, Default)]
pub struct FinishedDeletions {
    pub links: u32,
    pub errors: Vec<String>,
}

impl FinishedDeletions {
    fn of(results: LinkDeletions) -> Self {
        let mut finished = FinishedDeletions::default();
        for result in results {
            match result {
                Ok(()) => finished.links += 1,
                Err(e) => finished.errors.push(e.to_string()),
            }
        }
        finished
    }

    /// Adds these to a pass's mutations by kind and its errors.
    pub fn record(self, mutations: &mut BTreeMap<&'static str, u32>, errors: &mut Vec<String>) {
        if self.links > 0 {
            *mutations.entry("link").or_default() += self.links;
        }
        errors.extend(self.errors);
    }
}

/// What deleting one namespace we made came to.
struct DeletedNamespace {
    name: String,
    existed: bool,
    /// Removing its /etc/netns files failed (the namespace still goes).
    files_error: Option<String>,
    result: std::io::Result<()>,
}

/// Deletes namespaces and their /etc/netns files.
fn delete_namespaces(names: Vec<String>) -> Vec<DeletedNamespace> {
    names
        .into_iter()
        .map(|name| DeletedNamespace {
            existed: Path::new(&SandboxRef::Managed(name.clone()).path()).exists(),
            files_error: files::remove(&name).err().map(|e| e.to_string()),
            result: netns::delete(&name),
            name,
        })
        .collect()
}

/// The firewall's sync running on a blocking thread; it hands the
/// firewall back with the plan it applied.
type FirewallJob = tokio::task::JoinHandle<(
    firewall::NftFirewall,
    crate::plan::desired::FirewallPlan,
    Result<firewall::SyncOutcome, firewall::FirewallError>,
)>;

/// How long after a sync its own kernel notifications are still counted as
/// its own (they are queued by the time its requests are answered; the
/// watcher task needs a moment to count them).
const OWN_EVENTS_SETTLE: std::time::Duration = std::time::Duration::from_millis(2);

/// Every this-many passes, observe everything even without kernel events
/// (what no event reports: edits of /etc/netns files, missed events).
const FULL_PASS_EVERY: u32 = 10;

/// Whether a pass should be the periodic audit. A pass that realizes a
/// change (its generation is not the previous pass's) leaves it to the next
/// one: a change among thousands of objects should not wait for every
/// sandbox to be re-read. Changes that keep coming delay it at most another
/// FULL_PASS_EVERY passes.
fn audit_due(passes_since_full: u32, last_generation: Option<u64>, generation: u64) -> bool {
    let due = passes_since_full + 1 >= FULL_PASS_EVERY;
    let overdue = passes_since_full + 1 >= 2 * FULL_PASS_EVERY;
    due && (overdue || last_generation == Some(generation))
}

/// The node namespace's links and addresses as last dumped.
pub type NodeView = std::sync::Arc<(Vec<Link>, Vec<netlink::Address>)>;

/// Link group used only for a moment, to delete many of our links in one
/// request; checked to be empty of foreign links before use.
const DOOMED_GROUP: u32 = 0x6e6c_7400;

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every network namespace's loopback device has this index.
const LOOPBACK_INDEX: u32 = 1;

/// Ours: created in our link group, or (links made before the group was
/// used) carrying our alias.
fn is_ours(link: &Link) -> bool {
    link.group == OWNER_LINK_GROUP || link.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX))
}

fn is_link_local(net: &IpNet) -> bool {
    matches!(net.addr(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

impl Dataplane {
    /// Opens the node-namespace handle. Needs a tokio runtime context on the
    /// reconciler's dedicated thread.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Dataplane {
            node: Netlink::connect()?,
            firewall: firewall::NftFirewall::new(),
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
            unhurried: Netlink::connect_on_own_thread()
                .inspect_err(|e| tracing::warn!(error = %e, "link deletions will hold up status writes"))
                .ok(),
            pending_deletions: None,
            spare_netns: netns::Spare::default(),
            view_changes: ViewChanges::default(),
            node_ipv6_conf: sysctl::Ipv6Conf::open(),
        })
    }

    /// Watches kernel events from now on (long-running agents): drift that
    /// the kernel reports wakes `wake`, and passes with no events since the
    /// previous one skip re-observing what they verified.
    pub fn watch_events(&mut self, wake: std::sync::Arc<tokio::sync::Notify>) {
        match events::watch(wake) {
            Ok(counter) => self.events = Some(counter),
            Err(e) => tracing::warn!(error = %e, "no kernel events; every pass observes everything"),
        }
    }

    /// Keeps a namespace made ahead for the next attachment that needs one
    /// (long-running agents; see [`netns::Spare`]).
    pub fn keep_spare_namespace(&mut self) {
        self.spare_netns = netns::Spare::wanted();
        self.spare_netns.refill();
    }

    /// Makes the next spare namespace if the last one was used: called
    /// after the status write, off the path to Ready.
    pub fn refill_spare_namespace(&mut self) {
        self.spare_netns.refill();
    }

    pub fn node(&self) -> &Netlink {
        &self.node
    }

    /// Tells the progress display (if any) which phase a pass is in.
    fn set_phase(&self, name: &'static str, total: usize) {
        if let Some(p) = &self.progress {
            p.phase(name, total);
        }
    }

    /// What the kernel says attachments hold, for when the state dir lost
    /// it: each attachment's host veth (derived name, ours) leads to its
    /// peer in the sandbox, whose addresses and name are read back. Used
    /// once at start when no allocations were loaded, so a wiped or corrupt
    /// state file never moves a running container's address.
    pub async fn recover_allocations(
        &mut self,
        objects: &crate::objects::ObjectSet,
        known: &crate::plan::Allocations,
    ) -> crate::plan::Allocations {
        let mut held = crate::plan::Allocations::default();
        let Ok(node_links) = netlink::dump_links().await else { return held };
        for att in objects.attachments.iter().map(|a| &**a) {
            let ns = crate::objects::namespace_of(att);
            let name = kube::ResourceExt::name_any(att);
            if known.endpoints.contains_key(&format!("{ns}/{name}")) {
                continue;
            }
            let host = crate::naming::host_veth_name(&ns, &name);
            let Some(peer_index) = node_links.iter().find(|l| l.name == host && is_ours(l)).and_then(|l| l.link) else { continue };
            let sandbox = match (&att.spec.sandbox.netns, &att.spec.sandbox.path) {
                (Some(n), _) => SandboxRef::Managed(n.clone()),
                (None, Some(p)) => SandboxRef::Path(p.clone()),
                _ => continue,
            };
            let Ok(h) = self.sandbox(&sandbox) else { continue };
            let sb = h.netlink.clone();
            let (Ok(links), Ok(addrs)) = (sb.links().await, sb.addresses().await) else { continue };
            let Some(peer) = links.iter().find(|l| l.index == peer_index) else { continue };
            let mut entry =
                crate::plan::HeldEndpoint { network: att.spec.network.clone(), interface: Some(peer.name.clone()), ..Default::default() };
            for a in addrs.iter().filter(|a| a.index == peer_index && !is_link_local(&a.net)) {
                match a.net.addr() {
                    IpAddr::V4(_) => entry.ipv4 = Some(a.net.addr()),
                    IpAddr::V6(_) => entry.ipv6 = Some(a.net.addr()),
                }
            }
            held.endpoints.insert(format!("{ns}/{name}"), entry);
        }
        self.sandboxes.clear();
        held
    }

    /// The node's links and addresses: dumped, or the previous dump while
    /// no kernel event has arrived since the last pass.
    pub async fn node_view(&mut self) -> Result<NodeView, NetlinkError> {
        self.settle_events().await;
        let quiet = self.events.as_ref().is_some_and(|e| e.get() == self.events_baseline);
        if let (true, Some(view)) = (quiet, &self.node_view) {
            return Ok(view.clone());
        }
        let view: NodeView = std::sync::Arc::new((netlink::dump_links().await?, self.node.addresses().await?));
        self.node_view = Some(view.clone());
        Ok(view)
    }

    /// Brings the node view up to date with this pass's own changes: the
    /// links it touched are read back one by one (a get each) and the
    /// addresses dumped (a handful), instead of dumping every link again,
    /// which with a thousand veths costs ~17 ms (the kernel looks up each
    /// peer's namespace id) and made every change cost a second pass that
    /// did it. Anything that cannot be read leaves no view: the next pass
    /// dumps.
    async fn update_node_view(&mut self) {
        let changes = std::mem::take(&mut self.view_changes);
        if changes.is_empty() {
            return;
        }
        let Some(view) = self.node_view.take() else { return };
        let mut links: Vec<Link> =
            view.0.iter().filter(|l| !changes.gone.contains(&l.index) && !changes.touched.contains(&l.name)).cloned().collect();
        for name in &changes.touched {
            match self.node.link_by_name(name).await {
                Ok(Some(link)) => {
                    links.retain(|l| l.index != link.index);
                    links.push(link);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the node's links will be dumped again");
                    return;
                }
            }
        }
        match self.node.addresses().await {
            Ok(addresses) => self.node_view = Some(std::sync::Arc::new((links, addresses))),
            Err(e) => tracing::debug!(error = %e, "the node's links will be dumped again"),
        }
        // Debug builds (the tests' agents) check the result against a dump
        // (links being deleted may still be listed: a deletion of several
        // finishes after the status write).
        #[cfg(debug_assertions)]
        if let (Some(view), Ok(mut dumped)) = (&self.node_view, netlink::dump_links().await) {
            let mut patched = view.0.clone();
            patched.sort_by_key(|l| l.index);
            dumped.retain(|l| !changes.gone.contains(&l.index));
            dumped.sort_by_key(|l| l.index);
            if patched != dumped {
                tracing::warn!(?patched, ?dumped, "node view brought up to date differs from the kernel's links");
                self.node_view = None;
            }
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
        self.finish_deletions().await.record(&mut report.mutations, &mut report.node_errors);
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
            return report;
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
        self.sync_sysctls(desired, &mut report);
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
                    self.finish_firewall(job, &mut report).await;
                }
                return report;
            }
        };
        let (node_links, node_addresses) = (&view.0, &view.1);
        let bridges = self.sync_bridges(desired, node_links, node_addresses, &mut report).await;
        self.sync_vxlans(desired, node_links, &bridges, &mut report).await;
        lap("node", &mut phases);
        self.set_phase("namespaces", 0);
        let fresh = self.sync_sandboxes(desired, full, owned, record_owned, &mut report).await;
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
        self.sync_endpoints(desired, node_links, &bridges, full, &fresh, &mut report).await;
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
                match files::ensure(f) {
                    Ok(n) => (0..n).for_each(|_| report.mutated("file")),
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
        self.prune(desired, node_links, owned, record_owned, &mut report).await;
        lap("prune", &mut phases);
        self.set_phase("firewall", 0);
        if let Some(job) = firewall_job {
            self.finish_firewall(job, &mut report).await;
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
        report
    }

    /// Waits for the link deletions the last sync started (see `prune`):
    /// called after the status write, so a removal is reported while the
    /// kernel finishes releasing links that are already down.
    pub async fn finish_deletions(&mut self) -> FinishedDeletions {
        let Some(job) = self.pending_deletions.take() else { return FinishedDeletions::default() };
        let results =
            job.await.unwrap_or_else(|e| vec![Err(NetlinkError { op: "delete links".into(), message: e.to_string(), errno: None })]);
        let finished = FinishedDeletions::of(results);
        if !finished.errors.is_empty() {
            // The next pass must look again, not trust this one (nor the
            // view, which already left the links out).
            self.last_clean = None;
            self.node_view = None;
        }
        self.own_events_until = Some(tokio::time::Instant::now() + OWN_EVENTS_SETTLE);
        finished
    }

    /// Counts the kernel events of our last sync as seen once they had
    /// OWN_EVENTS_SETTLE to arrive, so that they do not make the next pass
    /// a full one. The reconciler calls it after writing status (which
    /// leaves them that time, off the path to Ready); the next pass does
    /// if nobody did.
    pub async fn settle_events(&mut self) {
        let Some(until) = self.own_events_until.take() else { return };
        if let Some(events) = &self.events {
            tokio::time::sleep_until(until).await;
            self.events_baseline = events.get();
        }
    }

    /// Starts the whole ruleset's sync (one transaction, nothing when in
    /// sync) on a blocking thread, unless it is known to be in place.
    fn start_firewall(&mut self, desired: &DesiredState, full: bool) -> Option<FirewallJob> {
        if !full && self.last_firewall.as_ref() == Some(&desired.firewall) {
            return None;
        }
        self.last_firewall = None;
        let mut firewall = std::mem::take(&mut self.firewall);
        let plan = desired.firewall.clone();
        Some(tokio::task::spawn_blocking(move || {
            let result = firewall.sync(&plan);
            (firewall, plan, result)
        }))
    }

    async fn finish_firewall(&mut self, job: FirewallJob, report: &mut SyncReport) {
        let (firewall, plan, result) = match job.await {
            Ok(done) => done,
            Err(e) => {
                report.firewall_error = Some(format!("firewall task failed: {e}"));
                return;
            }
        };
        self.firewall = firewall;
        match result {
            Ok(outcome) => {
                if outcome.mutated() {
                    report.mutated("nft");
                }
                self.last_firewall = Some(plan);
            }
            Err(e) => {
                tracing::warn!(error = %e, "firewall not applied");
                report.firewall_error = Some(e.to_string());
            }
        }
    }

    fn sync_sysctls(&self, desired: &DesiredState, report: &mut SyncReport) {
        let mut wanted: Vec<(String, &str)> = Vec::new();
        if desired.ipv4_forwarding {
            wanted.push(("net/ipv4/ip_forward".into(), "1"));
        }
        if desired.ipv6_forwarding {
            wanted.push(("net/ipv6/conf/all/forwarding".into(), "1"));
        }
        for (key, value) in wanted {
            match sysctl::ensure(&key, value) {
                Ok(true) => report.mutated("sysctl"),
                Ok(false) => {}
                Err(e) => report.node_errors.push(format!("sysctl {key}: {e}")),
            }
        }
    }

    /// Ensures every bridge; returns name -> index of the ready ones.
    async fn sync_bridges(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        node_addresses: &[netlink::Address],
        report: &mut SyncReport,
    ) -> HashMap<String, u32> {
        let mut ready = HashMap::new();
        let addresses = node_addresses;
        for bridge in &desired.bridges {
            let alias = format!("{OWNER_ALIAS_PREFIX}network/{}", bridge.network);
            let existing = node_links.iter().find(|l| l.name == bridge.name);
            let result: Result<u32, Failure> = async {
                let link = match existing {
                    Some(l) if l.kind.as_deref() == Some("bridge") && is_ours(l) => l.clone(),
                    Some(_) => {
                        return Err(Failure::new(
                            reason::BRIDGE_NAME_CONFLICT,
                            format!("a link named {} already exists on the node and was not created by netlet", bridge.name),
                        ))
                    }
                    None => {
                        self.view_changes.touch(&bridge.name);
                        self.node.create_bridge(&bridge.name, bridge.mtu, bridge.mac, &alias).await.map_err(|e| SyncReport::kernel(&e))?;
                        report.mutated("link");
                        self.node
                            .link_by_name(&bridge.name)
                            .await
                            .map_err(|e| SyncReport::kernel(&e))?
                            .ok_or_else(|| Failure::new(reason::KERNEL_ERROR, format!("bridge {} vanished after creation", bridge.name)))?
                    }
                };
                let change = LinkChange {
                    up: !link.up,
                    mtu: (link.mtu != bridge.mtu).then_some(bridge.mtu),
                    mac: (link.mac != bridge.mac).then_some(bridge.mac),
                    controller: None,
                };
                if !change.is_empty() {
                    self.view_changes.touch(&bridge.name);
                    self.node.set_link(link.index, &bridge.name, change).await.map_err(|e| SyncReport::kernel(&e))?;
                    report.mutated("link");
                }
                let have: BTreeSet<IpNet> =
                    addresses.iter().filter(|a| a.index == link.index && !is_link_local(&a.net)).map(|a| a.net).collect();
                let want: BTreeSet<IpNet> = bridge.addresses.iter().copied().collect();
                for net in want.difference(&have) {
                    self.view_changes.touch(&bridge.name);
                    self.node.add_address(link.index, *net, &bridge.name).await.map_err(|e| SyncReport::kernel(&e))?;
                    report.mutated("address");
                }
                for net in have.difference(&want) {
                    self.view_changes.touch(&bridge.name);
                    self.node.delete_address(link.index, *net, &bridge.name).await.map_err(|e| SyncReport::kernel(&e))?;
                    report.mutated("address");
                }
                // Published ports on 127.0.0.1 are DNATed out through the bridge.
                match sysctl::ensure(&format!("net/ipv4/conf/{}/route_localnet", bridge.name), "1") {
                    Ok(true) => report.mutated("sysctl"),
                    Ok(false) => {}
                    Err(e) => return Err(Failure::new(reason::KERNEL_ERROR, format!("route_localnet on {}: {e}", bridge.name))),
                }
                Ok(link.index)
            }
            .await;
            match result {
                Ok(index) => {
                    ready.insert(bridge.name.clone(), index);
                }
                Err(f) => {
                    tracing::warn!(network = %bridge.network, bridge = %bridge.name, error = %f, "bridge not ready");
                    report.network_errors.insert(bridge.network.clone(), f);
                }
            }
        }
        ready
    }

    /// Ensures each overlay's VXLAN device on its bridge, and its static
    /// remotes: FDB entries (MAC -> VTEP) and proxy-ARP/ND entries (IP -> MAC).
    async fn sync_vxlans(&mut self, desired: &DesiredState, node_links: &[Link], bridges: &HashMap<String, u32>, report: &mut SyncReport) {
        for vx in &desired.vxlans {
            let result: Result<(), Failure> = async {
                let Some(&bridge) = bridges.get(&vx.bridge) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("bridge {} is not ready", vx.bridge)));
                };
                let kernel = |e: NetlinkError| SyncReport::kernel(&e);
                let IpAddr::V4(local) = vx.local else {
                    return Err(Failure::invalid("only IPv4 VTEP addresses are supported"));
                };
                let want_identity = (vx.vni, vx.port, Some(vx.local));
                let mut link = node_links.iter().find(|l| l.name == vx.name).cloned();
                if let Some(l) = &link {
                    if !is_ours(l) {
                        return Err(Failure::new(reason::INTERFACE_CONFLICT, format!("a link named {} exists on the node and is not netlet's", vx.name)));
                    }
                    if l.kind.as_deref() != Some("vxlan") || l.vxlan != Some(want_identity) {
                        self.view_changes.gone.insert(l.index);
                        self.node.delete_link(l.index, &vx.name).await.map_err(kernel)?;
                        report.mutated("link");
                        link = None;
                    }
                }
                let link = match link {
                    Some(l) => l,
                    None => {
                        let alias = format!("{OWNER_ALIAS_PREFIX}overlay/{}", vx.network);
                        self.view_changes.touch(&vx.name);
                        self.node.create_vxlan(&vx.name, vx.vni, vx.port, local, vx.mtu, bridge, &alias).await.map_err(kernel)?;
                        report.mutated("link");
                        self.node
                            .link_by_name(&vx.name)
                            .await
                            .map_err(kernel)?
                            .ok_or_else(|| Failure::new(reason::KERNEL_ERROR, format!("{} vanished after creation", vx.name)))?
                    }
                };
                let change = LinkChange {
                    up: !link.up,
                    mtu: (link.mtu != vx.mtu).then_some(vx.mtu),
                    controller: (link.controller != Some(bridge)).then_some(bridge),
                    mac: None,
                };
                if !change.is_empty() {
                    self.view_changes.touch(&vx.name);
                    self.node.set_link(link.index, &vx.name, change).await.map_err(kernel)?;
                    report.mutated("link");
                }
                let current = self.node.neighbours(link.index).await.map_err(kernel)?;
                for n in &current {
                    tracing::debug!(family = ?n.message.header.family, flags = ?n.message.header.flags, state = ?n.message.header.state, mac = ?n.mac, ip = ?n.ip, "vxlan neighbour");
                }
                let own = |n: &&netlink::Neighbour| n.message.header.flags.contains(netlink_packet_route::neighbour::NeighbourFlags::Own);
                let is_fdb = |n: &&netlink::Neighbour| n.message.header.family == netlink_packet_route::AddressFamily::Bridge;
                let have_fdb: Vec<&netlink::Neighbour> = current.iter().filter(is_fdb).filter(own).filter(|n| n.ip.is_some()).collect();
                // Only permanent entries: the kernel keeps its own (multicast, NOARP) ones.
                let have_neigh: Vec<&netlink::Neighbour> = current
                    .iter()
                    .filter(|n| !is_fdb(n) && n.message.header.state == netlink_packet_route::neighbour::NeighbourState::Permanent)
                    .collect();
                let want_fdb: BTreeSet<([u8; 6], IpAddr)> = vx.remotes.iter().map(|r| (r.mac, r.vtep)).collect();
                let want_neigh: BTreeSet<(IpAddr, [u8; 6])> = vx.remotes.iter().flat_map(|r| r.addresses.iter().map(move |ip| (*ip, r.mac))).collect();
                for (mac, vtep) in &want_fdb {
                    if !have_fdb.iter().any(|n| n.mac == mac.as_slice() && n.ip == Some(*vtep)) {
                        self.node.add_fdb(link.index, *mac, *vtep).await.map_err(kernel)?;
                        report.mutated("neighbour");
                    }
                }
                for n in have_fdb.iter().filter(|n| !want_fdb.iter().any(|(mac, vtep)| n.mac == mac.as_slice() && n.ip == Some(*vtep))) {
                    self.node.delete_neighbour(n).await.map_err(kernel)?;
                    report.mutated("neighbour");
                }
                for (ip, mac) in &want_neigh {
                    if !have_neigh.iter().any(|n| n.ip == Some(*ip) && n.mac == mac.as_slice()) {
                        self.node.add_neighbour(link.index, *ip, *mac).await.map_err(kernel)?;
                        report.mutated("neighbour");
                    }
                }
                for n in have_neigh.iter().filter(|n| !want_neigh.iter().any(|(ip, mac)| n.ip == Some(*ip) && n.mac == mac.as_slice())) {
                    self.node.delete_neighbour(n).await.map_err(kernel)?;
                    report.mutated("neighbour");
                }
                Ok(())
            }
            .await;
            if let Err(f) = result {
                tracing::warn!(network = %vx.network, vxlan = %vx.name, error = %f, "overlay not ready");
                report.network_errors.insert(vx.network.clone(), f);
            }
        }
        if !desired.vxlans.is_empty() {
            self.check_vteps(desired, report).await;
        }
    }

    /// A peer whose VTEP the underlay cannot resolve gets no traffic: the
    /// kernel marks its neighbour entry FAILED once encapsulated packets
    /// were sent its way. Read only; nothing is probed or changed.
    async fn check_vteps(&mut self, desired: &DesiredState, report: &mut SyncReport) {
        use netlink_packet_route::neighbour::NeighbourState;
        let Ok(neighbours) = self.node.ipv4_neighbours().await else { return };
        let failed: BTreeSet<IpAddr> = neighbours
            .iter()
            .filter(|n| matches!(n.message.header.state, NeighbourState::Failed | NeighbourState::Incomplete))
            .filter_map(|n| n.ip)
            .collect();
        for vx in &desired.vxlans {
            let vteps: BTreeSet<IpAddr> = vx.remotes.iter().map(|r| r.vtep).filter(|v| failed.contains(v)).collect();
            if !vteps.is_empty() {
                tracing::warn!(network = %vx.network, vteps = ?vteps, "overlay peers unreachable on the underlay");
                report.unreachable_vteps.insert(vx.network.clone(), vteps.into_iter().collect());
            }
        }
    }

    /// Creates the managed namespaces that are missing. A quick pass takes
    /// those verified by an earlier pass as present (no kernel event since).
    async fn sync_sandboxes(
        &mut self,
        desired: &DesiredState,
        full: bool,
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
        report: &mut SyncReport,
    ) -> BTreeMap<String, netns::Created> {
        let mut fresh = BTreeMap::new();
        let missing: Vec<&String> = desired
            .sandboxes
            .iter()
            .filter_map(|s| s.sandbox.netns_name().map(|_| &s.sandbox))
            .filter_map(|s| match s {
                SandboxRef::Managed(name) => {
                    let known = !full && self.verified.contains_key(s);
                    (!known && !netns::is_namespace(Path::new(&s.path()))).then_some(name)
                }
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            return fresh;
        }
        // Write-ahead, once for the whole batch: recorded before created, so
        // a crash cannot leak one (recording a name that then fails to be
        // created is harmless: deleting an absent namespace succeeds).
        let unrecorded: Vec<&String> = missing.iter().copied().filter(|n| !owned.netns.contains(*n)).collect();
        if !unrecorded.is_empty() {
            if let Err(e) = record_owned(OwnedRecord::Namespaces(&unrecorded)) {
                report.node_errors.push(format!("recording namespaces: {e}"));
                return fresh;
            }
            owned.netns.extend(unrecorded.into_iter().cloned());
        }
        for name in missing {
            match netns::create(name, &mut self.spare_netns) {
                Ok(created) => {
                    report.mutated("netns");
                    fresh.insert(SandboxRef::Managed(name.clone()).path(), created);
                }
                Err(e) => report.node_errors.push(format!("creating namespace {name}: {e}")),
            }
        }
        fresh
    }

    /// A netlink handle inside `sandbox`, reopened when the namespace at
    /// that path was replaced.
    fn sandbox(&mut self, sandbox: &SandboxRef) -> Result<&SandboxHandle, Failure> {
        let path = sandbox.path();
        let id = identity(Path::new(&path)).filter(|_| netns::is_namespace(Path::new(&path)) || matches!(sandbox, SandboxRef::Path(_)));
        let Some(id) = id else {
            self.sandboxes.remove(&path);
            return Err(Failure::new(reason::SANDBOX_NOT_FOUND, format!("network namespace {path} does not exist")));
        };
        let stale = self.sandboxes.get(&path).is_none_or(|h| h.identity != id);
        if stale {
            let file = File::open(&path).map_err(|e| Failure::new(reason::SANDBOX_NOT_FOUND, format!("opening namespace {path}: {e}")))?;
            let netlink =
                Netlink::connect_in(&file).map_err(|e| Failure::new(reason::SANDBOX_NOT_FOUND, format!("namespace {path}: {e}")))?;
            self.sandboxes.insert(path.clone(), SandboxHandle { file, netlink, identity: id });
        }
        Ok(&self.sandboxes[&path])
    }

    async fn sync_endpoints(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        full: bool,
        fresh: &BTreeMap<String, netns::Created>,
        report: &mut SyncReport,
    ) {
        // Group by sandbox: one dump of links, addresses and routes each.
        let mut by_sandbox: BTreeMap<&SandboxRef, Vec<&Endpoint>> = BTreeMap::new();
        for spec in &desired.sandboxes {
            by_sandbox.entry(&spec.sandbox).or_default();
        }
        for ep in &desired.endpoints {
            by_sandbox.entry(&ep.sandbox).or_default().push(ep);
        }
        self.verified.retain(|sandbox, _| by_sandbox.contains_key(sandbox));
        for (sandbox, endpoints) in by_sandbox {
            if !full && self.verified.get(sandbox).is_some_and(|v| v.iter().eq(endpoints.iter().copied())) {
                continue;
            }
            self.verified.remove(sandbox);
            let path = sandbox.path();
            let handle = match self.sandbox(sandbox) {
                Ok(h) => (h.netlink.clone(), h.file.try_clone()),
                Err(f) => {
                    for ep in endpoints {
                        report.endpoint_errors.insert(ep.owner.clone(), f.clone());
                    }
                    continue;
                }
            };
            let (sb, file) = handle;
            let Ok(file) = file else { continue };
            if let Err(e) = self.sync_sandbox(&sb, &file, &endpoints, node_links, bridges, fresh.get(&path), report).await {
                for ep in &endpoints {
                    report.endpoint_errors.entry(ep.owner.clone()).or_insert_with(|| SyncReport::kernel(&e));
                }
            }
            // One socket at a time: a thousand open ones cost a receive buffer each.
            self.sandboxes.remove(&path);
            if let Some(p) = &self.progress {
                p.step();
            }
            if endpoints.iter().all(|ep| !report.endpoint_errors.contains_key(&ep.owner)) {
                self.verified.insert(sandbox.clone(), endpoints.iter().map(|e| (*e).clone()).collect());
            }
        }
    }

    /// Converges one sandbox: lo, its endpoints' links, addresses, routes.
    /// A namespace created in this very pass holds only lo, down: nothing
    /// in it is read back but the links we add (each dump would wait for
    /// the RTNL lock the kernel's own link-up work keeps taking).
    #[allow(clippy::too_many_arguments)]
    async fn sync_sandbox(
        &mut self,
        sb: &Netlink,
        file: &File,
        endpoints: &[&Endpoint],
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        fresh: Option<&netns::Created>,
        report: &mut SyncReport,
    ) -> Result<(), NetlinkError> {
        let ipv6_conf = fresh.and_then(|c| c.ipv6_conf.as_ref());
        let loopback_up = fresh.is_some_and(|c| c.loopback_up);
        let fresh = fresh.is_some();
        let mut links = Vec::new();
        if fresh {
            // A namespace made ahead had lo brought up then: the change is
            // still this pass's.
            if !loopback_up {
                sb.set_link(LOOPBACK_INDEX, "lo", LinkChange { up: true, ..Default::default() }).await?;
            }
            report.mutated("link");
        } else {
            links = sb.links().await?;
            if let Some(lo) = links.iter().find(|l| l.name == "lo") {
                if !lo.up {
                    sb.set_link(lo.index, "lo", LinkChange { up: true, ..Default::default() }).await?;
                    report.mutated("link");
                }
            }
        }
        let mut created = false;
        for ep in endpoints {
            if let Err(f) = self.ensure_link(file, ipv6_conf, ep, &links, node_links, bridges, report, &mut created).await {
                report.endpoint_errors.insert(ep.owner.clone(), f);
            }
        }
        if created && fresh {
            for ep in endpoints {
                links.extend(sb.link_by_name(&ep.ifname).await?);
            }
        } else if created {
            links = sb.links().await?;
        }
        let (addresses, routes) = if fresh { (Vec::new(), Vec::new()) } else { (sb.addresses().await?, sb.default_routes().await?) };
        let mut default_v4 = None;
        let mut default_v6 = None;
        let mut our_indexes = BTreeSet::new();
        for ep in endpoints {
            if report.endpoint_errors.contains_key(&ep.owner) {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.name == ep.ifname) else {
                report.endpoint_errors.insert(
                    ep.owner.clone(),
                    Failure::new(reason::KERNEL_ERROR, format!("interface {} missing after creation", ep.ifname)),
                );
                continue;
            };
            our_indexes.insert(link.index);
            let result: Result<(), NetlinkError> = async {
                let change = LinkChange {
                    up: !link.up,
                    mtu: (link.mtu != ep.mtu).then_some(ep.mtu),
                    mac: (link.mac != ep.mac).then_some(ep.mac),
                    controller: None,
                };
                if !change.is_empty() {
                    sb.set_link(link.index, &ep.ifname, change).await?;
                    report.mutated("link");
                }
                let have: BTreeSet<IpNet> =
                    addresses.iter().filter(|a| a.index == link.index && !is_link_local(&a.net)).map(|a| a.net).collect();
                let want: BTreeSet<IpNet> = ep.addresses.iter().copied().collect();
                for net in want.difference(&have) {
                    sb.add_address(link.index, *net, &ep.ifname).await?;
                    report.mutated("address");
                }
                for net in have.difference(&want) {
                    sb.delete_address(link.index, *net, &ep.ifname).await?;
                    report.mutated("address");
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                report.endpoint_errors.insert(ep.owner.clone(), SyncReport::kernel(&e));
                continue;
            }
            if let Some(gw) = ep.gateway_v4 {
                default_v4 = Some((link.index, IpAddr::V4(gw), ep.owner.clone()));
            }
            if let Some(gw) = ep.gateway_v6 {
                default_v6 = Some((link.index, IpAddr::V6(gw), ep.owner.clone()));
            }
        }
        for (want, v4) in [(default_v4, true), (default_v6, false)] {
            let current: Vec<_> = routes
                .iter()
                .filter(|r| {
                    r.message.header.address_family
                        == if v4 { netlink_packet_route::AddressFamily::Inet } else { netlink_packet_route::AddressFamily::Inet6 }
                })
                .collect();
            match want {
                Some((index, gw, owner)) => {
                    let in_place = current.iter().any(|r| r.oif == Some(index) && r.gateway == Some(gw));
                    if !in_place {
                        if let Err(e) = sb.replace_default_route(index, gw).await {
                            report.endpoint_errors.insert(owner, SyncReport::kernel(&e));
                        } else {
                            report.mutated("route");
                        }
                    }
                    // Another default route through one of our interfaces is stale.
                    for r in current.iter().filter(|r| r.oif != Some(index) && r.oif.is_some_and(|o| our_indexes.contains(&o))) {
                        sb.delete_route(r).await?;
                        report.mutated("route");
                    }
                }
                None => {
                    for r in current.iter().filter(|r| r.oif.is_some_and(|o| our_indexes.contains(&o))) {
                        sb.delete_route(r).await?;
                        report.mutated("route");
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the endpoint's link exist: for a veth, the host end on its
    /// bridge with the right peer in the sandbox; for macvlan, the link in
    /// the sandbox.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_link(
        &mut self,
        file: &File,
        ipv6_conf: Option<&sysctl::Ipv6Conf>,
        ep: &Endpoint,
        sb_links: &[Link],
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        report: &mut SyncReport,
        created: &mut bool,
    ) -> Result<(), Failure> {
        let inner = sb_links.iter().find(|l| l.name == ep.ifname);
        match &ep.kind {
            EndpointKind::Veth { host_name, bridge } => {
                let Some(&bridge_index) = bridges.get(bridge) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("bridge {bridge} is not ready")));
                };
                let host = node_links.iter().find(|l| &l.name == host_name);
                let paired = match (host, inner) {
                    (Some(h), Some(i)) => i.kind.as_deref() == Some("veth") && i.link == Some(h.index) && h.link == Some(i.index),
                    _ => false,
                };
                if let (Some(h), true) = (host, paired) {
                    let change = LinkChange {
                        up: !h.up,
                        mtu: (h.mtu != ep.mtu).then_some(ep.mtu),
                        controller: (h.controller != Some(bridge_index)).then_some(bridge_index),
                        mac: None,
                    };
                    if !change.is_empty() {
                        self.view_changes.touch(host_name);
                        self.node.set_link(h.index, host_name, change).await.map_err(|e| SyncReport::kernel(&e))?;
                        report.mutated("link");
                    }
                    if h.hairpin != Some(true) {
                        self.node.set_hairpin(h.index, host_name).await.map_err(|e| SyncReport::kernel(&e))?;
                        report.mutated("link");
                    }
                    return Ok(());
                }
                if let Some(i) = inner {
                    // The name is taken in the sandbox by a link that is not our peer.
                    return Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!(
                            "interface {} already exists in sandbox {} (index {}) and is not netlet's",
                            ep.ifname,
                            ep.sandbox.path(),
                            i.index
                        ),
                    ));
                }
                if let Some(h) = host {
                    // Our host end lost its peer (sandbox replaced): start over.
                    if !is_ours(h) {
                        return Err(Failure::new(
                            reason::INTERFACE_CONFLICT,
                            format!("a link named {host_name} exists on the node and is not netlet's"),
                        ));
                    }
                    self.view_changes.gone.insert(h.index);
                    self.node.delete_link(h.index, host_name).await.map_err(|e| SyncReport::kernel(&e))?;
                    report.mutated("link");
                }
                let alias = format!("{OWNER_ALIAS_PREFIX}attachment/{}", ep.owner);
                self.view_changes.touch(host_name);
                self.node
                    .create_veth(host_name, &alias, bridge_index, &ep.ifname, file, ep.mac, ep.mtu)
                    .await
                    .map_err(|e| SyncReport::kernel(&e))?;
                report.mutated("link");
                // A bridge port needs no IPv6 of its own; nor does a
                // container on an IPv4-only network (Docker does the same).
                // Otherwise each new port's DAD and MLD multicast is flooded
                // to every other port of the bridge: quadratic work at scale.
                self.node_ipv6_conf.disable_on(host_name);
                if !ep.addresses.iter().any(|a| a.addr().is_ipv6()) {
                    let _ = netns::with_netns(file, || match ipv6_conf {
                        Some(conf) => conf.disable_on(&ep.ifname),
                        None => sysctl::disable_ipv6_on(&ep.ifname),
                    });
                }
                *created = true;
                Ok(())
            }
            EndpointKind::Macvlan { parent, mode } => {
                if inner.is_some_and(|i| i.kind.as_deref() == Some("macvlan")) {
                    return Ok(());
                }
                if inner.is_some() {
                    return Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!("interface {} already exists in sandbox {} and is not a macvlan", ep.ifname, ep.sandbox.path()),
                    ));
                }
                let Some(parent_link) = node_links.iter().find(|l| &l.name == parent) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("macvlan parent {parent} does not exist on the node")));
                };
                self.node
                    .create_macvlan(&ep.ifname, parent_link.index, *mode, file, ep.mac, ep.mtu)
                    .await
                    .map_err(|e| SyncReport::kernel(&e))?;
                report.mutated("link");
                *created = true;
                Ok(())
            }
        }
    }

    /// Removes what netlet created and no longer wants: host veths and
    /// bridges carrying our alias, and namespaces recorded as ours.
    async fn prune(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
        report: &mut SyncReport,
    ) {
        let wanted_links: BTreeSet<&str> = desired
            .bridges
            .iter()
            .map(|b| b.name.as_str())
            .chain(desired.endpoints.iter().filter_map(|e| e.host_name()))
            .chain(desired.vxlans.iter().map(|v| v.name.as_str()))
            .collect();
        let wanted_sandbox_links: BTreeSet<(String, String)> = desired
            .endpoints
            .iter()
            .filter(|e| matches!(e.kind, EndpointKind::Macvlan { .. }))
            .map(|e| (e.sandbox.path(), e.ifname.clone()))
            .collect();
        let stale: Vec<(String, (String, String))> = owned
            .sandbox_links
            .iter()
            .filter(|(_, place)| !wanted_sandbox_links.contains(*place))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (owner, (path, ifname)) in stale {
            let sandbox = SandboxRef::Path(path.clone());
            let removed = match self.sandbox(&sandbox) {
                // The namespace is gone, and the link with it.
                Err(_) => Ok(false),
                Ok(h) => {
                    let sb = h.netlink.clone();
                    match sb.links().await {
                        Ok(links) => match links.iter().find(|l| l.name == ifname && l.kind.as_deref() == Some("macvlan")) {
                            Some(l) => sb.delete_link(l.index, &ifname).await.map(|()| true),
                            None => Ok(false),
                        },
                        Err(e) => Err(e),
                    }
                }
            };
            self.sandboxes.remove(&path);
            match removed {
                Ok(done) => {
                    if done {
                        report.mutated("link");
                    }
                    owned.sandbox_links.remove(&owner);
                    if let Err(e) = record_owned(OwnedRecord::Whole(owned)) {
                        report.node_errors.push(format!("recording sandbox link removal: {e}"));
                    }
                }
                Err(e) => report.node_errors.push(e.to_string()),
            }
        }
        // Namespaces we made and no longer want: deleted on a blocking
        // thread while the links go (both wait for the kernel).
        let wanted_netns: BTreeSet<&str> = desired.sandboxes.iter().filter_map(|s| s.sandbox.netns_name()).collect();
        let stale_netns: Vec<String> = owned.netns.iter().filter(|n| !wanted_netns.contains(n.as_str())).cloned().collect();
        for name in &stale_netns {
            self.sandboxes.remove(&SandboxRef::Managed(name.clone()).path());
        }
        let netns_job = (!stale_netns.is_empty()).then(|| tokio::task::spawn_blocking(move || delete_namespaces(stale_netns)));
        // Veths first (batched), so a bridge is empty when it goes. Their
        // deletion waits ~20-30 ms in the kernel (an RCU grace period) after
        // the link is already down and unlisted: it is sent from another
        // thread and finished after the status write (`finish_deletions`).
        let stale: Vec<&Link> = node_links.iter().filter(|l| is_ours(l) && !wanted_links.contains(l.name.as_str())).collect();
        let (bridges, others): (Vec<&Link>, Vec<&Link>) = stale.into_iter().partition(|l| l.kind.as_deref() == Some("bridge"));
        let group_is_free = !node_links.iter().any(|l| l.group == DOOMED_GROUP && !others.iter().any(|o| o.index == l.index));
        let doomed: Vec<(u32, String)> = others.iter().map(|l| (l.index, l.name.clone())).collect();
        self.view_changes.gone.extend(doomed.iter().map(|(index, _)| *index));
        if !doomed.is_empty() {
            let netlink = self.unhurried.clone().unwrap_or_else(|| self.node.clone());
            let deletion = async move {
                if doomed.len() > 1 && group_is_free {
                    let result = netlink.delete_links_batched(&doomed, DOOMED_GROUP).await;
                    doomed.iter().map(|_| result.clone()).collect()
                } else {
                    let mut results = Vec::new();
                    for (index, name) in &doomed {
                        results.push(netlink.delete_link(*index, name).await);
                    }
                    results
                }
            };
            if !bridges.is_empty() || self.unhurried.is_none() {
                // A bridge goes only once its ports have.
                FinishedDeletions::of(deletion.await).record(&mut report.mutations, &mut report.node_errors);
            } else {
                self.pending_deletions = Some(tokio::spawn(deletion));
            }
        }
        for link in bridges {
            self.view_changes.gone.insert(link.index);
            match self.node.delete_link(link.index, &link.name).await {
                Ok(()) => report.mutated("link"),
                Err(e) => report.node_errors.push(e.to_string()),
            }
        }
        let owned_before = owned.netns.len();
        let deleted = match netns_job {
            Some(job) => match job.await {
                Ok(deleted) => deleted,
                Err(e) => {
                    report.node_errors.push(format!("namespace deletion task failed: {e}"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        for d in deleted {
            let name = d.name;
            if let Some(e) = d.files_error {
                report.node_errors.push(format!("removing /etc/netns/{name}: {e}"));
            }
            match d.result {
                Ok(()) => {
                    if d.existed {
                        report.mutated("netns");
                    }
                    owned.netns.remove(&name);
                }
                Err(e) => report.node_errors.push(format!("deleting namespace {name}: {e}")),
            }
        }
        // Recorded after the fact, by the caller, once the pass reported.
        report.owned_to_record |= owned.netns.len() != owned_before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_periodic_audit_waits_for_a_pass_without_a_change() {
        let last = FULL_PASS_EVERY - 1;
        assert!(!audit_due(last - 1, Some(7), 7), "not due yet");
        assert!(audit_due(last, Some(7), 7), "due, nothing changed");
        assert!(!audit_due(last, Some(7), 8), "due, but this pass realizes a change");
        assert!(!audit_due(last, None, 1), "the first pass of a change");
        assert!(audit_due(last + 1, Some(8), 8), "the pass after the change");
        assert!(audit_due(2 * FULL_PASS_EVERY - 1, Some(8), 9), "changes that keep coming delay it only so long");
    }
}
