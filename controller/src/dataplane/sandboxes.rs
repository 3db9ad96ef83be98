//! Sandboxes: the managed namespaces made (recorded first), netlink
//! handles into any sandbox, and what the kernel says attachments hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::kernel::{Namespace, Recorded};
use super::report::SyncReport;
use super::{is_link_local, is_ours, netns, Dataplane};
use crate::objects::ObjectName;
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::Endpoint;
use crate::plan::outcome::{reason, Failure};
use crate::state::{Owned, OwnedRecord};

/// A sandbox held open, with its netlink (changes counted); a namespace
/// recreated at the same path is another one (`ns.identity`).
pub(super) struct SandboxHandle {
    pub(super) ns: Namespace,
    pub(super) netlink: Recorded,
    path: String,
}

impl SandboxHandle {
    pub(super) fn path(&self) -> &str {
        &self.path
    }
}

/// A namespace as `readlink /proc/PID/ns/net` shows it.
fn show_namespace((_, inode): (u64, u64)) -> String {
    format!("net:[{inode}]")
}

/// Where the agent finds the node's own network namespace: its own, and
/// PID 1's (the node's init, or a hostNetwork pod's first process).
pub(super) const NODE_NAMESPACE_PATHS: [&str; 2] = ["/proc/self/ns/net", "/proc/1/ns/net"];

impl Dataplane {
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
        let Ok(node_links) = self.node.links().await else { return held };
        for att in objects.attachments.iter().map(|a| &**a) {
            let key = ObjectName::of(att);
            if known.endpoints.contains_key(&key) {
                continue;
            }
            let host = crate::naming::host_veth_name_of(att);
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
            held.endpoints.insert(key, entry);
        }
        self.sandboxes.clear();
        held
    }

    /// Creates the managed namespaces that are missing among `stale` (the
    /// sandboxes whose record does not hold; the others are there).
    pub(super) async fn sync_sandboxes(
        &mut self,
        stale: &[(&SandboxRef, Vec<&Endpoint>)],
        owned: &mut Owned,
        record_owned: &mut dyn FnMut(OwnedRecord<'_>) -> Result<(), String>,
        report: &mut SyncReport,
    ) -> BTreeMap<String, netns::Created> {
        let mut fresh = BTreeMap::new();
        let missing: Vec<&String> = stale
            .iter()
            .filter_map(|(sandbox, _)| match sandbox {
                SandboxRef::Managed(name) => self.system.namespace_at(&sandbox.path()).is_none().then_some(name),
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
            match self.system.create_namespace(name) {
                Ok(created) => {
                    self.journal.count("netns", 1);
                    fresh.insert(SandboxRef::Managed(name.clone()).path(), created);
                }
                Err(e) => report.node_errors.push(format!("creating namespace {name}: {e}")),
            }
        }
        fresh
    }

    /// The `paths` a namespace is at, each with what it resolved to when it
    /// is the node's own network namespace (compared by identity: device
    /// and inode), else None.
    pub fn namespaces_at(&self, paths: Vec<String>) -> BTreeMap<String, Option<String>> {
        paths
            .into_iter()
            .filter_map(|path| {
                let id = self.system.namespace_at(&path)?;
                Some((path, self.node_namespaces.contains(&id).then(|| show_namespace(id))))
            })
            .collect()
    }

    /// A netlink handle inside `sandbox`, reopened when the namespace at
    /// that path was replaced. Never the node's own namespace: the plan
    /// refuses it, and this refuses it again should a path have come to
    /// be it since (a bind mount replaced).
    pub(super) fn sandbox(&mut self, sandbox: &SandboxRef) -> Result<&SandboxHandle, Failure> {
        let path = sandbox.path();
        let Some(id) = self.system.namespace_at(&path) else {
            self.sandboxes.remove(&path);
            return Err(Failure::new(reason::SANDBOX_NOT_FOUND, format!("network namespace {path} does not exist")));
        };
        let stale = self.sandboxes.get(&path).is_none_or(|h| h.ns.identity != id);
        if stale {
            let ns =
                self.system.open(&path).map_err(|e| Failure::new(reason::SANDBOX_NOT_FOUND, format!("opening namespace {path}: {e}")))?;
            if self.node_namespaces.contains(&ns.identity) {
                return Err(Failure::new(
                    reason::FORBIDDEN,
                    format!("{path} is the node's own network namespace ({}); it is not a sandbox", show_namespace(ns.identity)),
                ));
            }
            let netlink = Recorded::new(ns.rtnl.clone(), self.journal.clone());
            self.sandboxes.insert(path.clone(), SandboxHandle { ns, netlink, path: path.clone() });
        }
        Ok(&self.sandboxes[&path])
    }

    /// As [`Dataplane::sandbox`], taken out of the cache: its socket is
    /// closed once the caller is done with it.
    pub(super) fn take_sandbox(&mut self, sandbox: &SandboxRef) -> Result<SandboxHandle, Failure> {
        self.sandbox(sandbox)?;
        Ok(self.sandboxes.remove(&sandbox.path()).expect("opened just above"))
    }
}
