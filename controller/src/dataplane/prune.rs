//! Removing what netlet made and no longer wants: links (batched, their
//! deletion finished after the status write), sandbox links, namespaces.

use std::collections::BTreeSet;

use foldhash::HashSet;

use super::kernel::Change;
use super::netlink::{Link, NetlinkError};
use super::report::{FinishedDeletions, SyncReport};
use super::{is_ours, Dataplane};
use crate::objects::ObjectName;
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{DesiredState, EndpointKind};
use crate::state::{Owned, OwnedRecord};

/// Link group used only for a moment, to delete many of our links in one
/// request; checked to be empty of foreign links before use.
pub(super) const DOOMED_GROUP: u32 = 0x6e6c_7400;

impl Dataplane {
    /// Waits for the link deletions the last sync started (see `prune`),
    /// and for its ruleset sync if that only removed: called after the
    /// status write, so a removal is reported while the kernel finishes
    /// releasing links that are already down (and nf_tables its elements,
    /// ~10 ms for one map element here).
    pub async fn finish_deletions(&mut self) -> FinishedDeletions {
        let mut errors: Vec<String> = Vec::new();
        if let Some(job) = self.pending_firewall.take() {
            let mut report = SyncReport::default();
            self.finish_firewall(job, &mut report).await;
            errors.extend(report.firewall_error);
        }
        if let Some(job) = self.pending_deletions.take() {
            let results =
                job.await.unwrap_or_else(|e| vec![Err(NetlinkError { op: "delete links".into(), message: e.to_string(), errno: None })]);
            errors.extend(results.into_iter().filter_map(Result::err).map(|e| e.to_string()));
        }
        let finished = FinishedDeletions { mutations: self.journal.take(), errors };
        if !finished.errors.is_empty() {
            // The next pass must look again, not trust this one.
            self.realized.node = None;
        }
        finished
    }

    /// Removes what netlet created and no longer wants: host veths and
    /// bridges carrying our alias, and namespaces recorded as ours.
    pub(super) async fn prune(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
        report: &mut SyncReport,
    ) {
        // Membership only, asked of every link and namespace of the node: hashed.
        let wanted_links: HashSet<&str> = desired
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
        let stale: Vec<(ObjectName, (String, String))> = owned
            .sandbox_links
            .iter()
            .filter(|(_, place)| !wanted_sandbox_links.contains(*place))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (owner, (path, ifname)) in stale {
            let sandbox = SandboxRef::Path(path.clone());
            let removed = match self.sandbox(&sandbox) {
                // The namespace is gone, and the link with it.
                Err(_) => Ok(()),
                Ok(h) => {
                    let sb = h.netlink.clone();
                    match sb.links().await {
                        Ok(links) => match links.iter().find(|l| l.name == ifname && l.kind.as_deref() == Some("macvlan")) {
                            Some(l) => sb.apply(Change::DeleteLink { index: l.index, name: &ifname }).await,
                            None => Ok(()),
                        },
                        Err(e) => Err(e),
                    }
                }
            };
            self.sandboxes.remove(&path);
            match removed {
                Ok(()) => {
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
        let wanted_netns: HashSet<&str> = desired.sandboxes.iter().filter_map(|s| s.sandbox.netns_name()).collect();
        let stale_netns: Vec<String> = owned.netns.iter().filter(|n| !wanted_netns.contains(n.as_str())).cloned().collect();
        for name in &stale_netns {
            self.sandboxes.remove(&SandboxRef::Managed(name.clone()).path());
        }
        let delete = self.system.namespace_deleter();
        let netns_job = (!stale_netns.is_empty()).then(|| tokio::task::spawn_blocking(move || delete(stale_netns)));
        // Veths first (batched), so a bridge is empty when it goes. Their
        // deletion waits ~20-30 ms in the kernel (an RCU grace period) after
        // the link is already down and unlisted: it is sent from another
        // thread and finished after the status write (`finish_deletions`).
        let stale: Vec<&Link> = node_links.iter().filter(|l| is_ours(l) && !wanted_links.contains(l.name.as_str())).collect();
        let (bridges, others): (Vec<&Link>, Vec<&Link>) = stale.into_iter().partition(|l| l.kind.as_deref() == Some("bridge"));
        let group_is_free = !node_links.iter().any(|l| l.group == DOOMED_GROUP && !others.iter().any(|o| o.index == l.index));
        let doomed: Vec<(u32, String)> = others.iter().map(|l| (l.index, l.name.clone())).collect();
        if !doomed.is_empty() {
            let netlink = self.unhurried.clone().unwrap_or_else(|| self.node.clone());
            let deletion = async move {
                if doomed.len() > 1 && group_is_free {
                    let result = netlink.apply(Change::DeleteLinks { links: &doomed, group: DOOMED_GROUP }).await;
                    doomed.iter().map(|_| result.clone()).collect()
                } else {
                    let mut results = Vec::new();
                    for (index, name) in &doomed {
                        results.push(netlink.apply(Change::DeleteLink { index: *index, name }).await);
                    }
                    results
                }
            };
            if !bridges.is_empty() || self.unhurried.is_none() {
                // A bridge goes only once its ports have.
                let results: super::report::LinkDeletions = deletion.await;
                report.node_errors.extend(results.into_iter().filter_map(Result::err).map(|e| e.to_string()));
            } else {
                self.pending_deletions = Some(tokio::spawn(deletion));
            }
        }
        for link in bridges {
            if let Err(e) = self.node.apply(Change::DeleteLink { index: link.index, name: &link.name }).await {
                report.node_errors.push(e.to_string());
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
                    self.journal.count("netns", u32::from(d.existed));
                    owned.netns.remove(&name);
                }
                Err(e) => report.node_errors.push(format!("deleting namespace {name}: {e}")),
            }
        }
        // Recorded after the fact, by the caller, once the pass reported.
        report.owned_to_record |= owned.netns.len() != owned_before;
    }
}
