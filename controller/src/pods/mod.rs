//! Pods as sandboxes (Kubernetes mode): what netlet-cni told the agent
//! about each pod sandbox of this node, kept in the state dir and checked
//! against the kernel; what a pass knows of the pods it may attach to;
//! the `netlet.io/networks` annotation (`annotation`); and the CNI calls
//! answered from a pass's outcome (`cni`).
//!
//! A pod's network namespace is the one the container runtime made and
//! named to the plugin on ADD (CNI_NETNS): the agent never looks for it
//! elsewhere. A sandbox whose namespace is gone (the pod's sandbox was torn
//! down while the agent was away, so its DEL was missed) is forgotten.

pub mod annotation;
pub mod cni;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::objects::ObjectName;
use crate::state::{StateDir, StateError};

/// One pod sandbox, as netlet-cni reported it on ADD.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSandbox {
    /// The pod's UID (runtimes that do not send K8S_POD_UID: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The runtime's sandbox ID (CNI_CONTAINERID).
    pub sandbox_id: String,
    /// The sandbox's network namespace, as the runtime named it (CNI_NETNS).
    pub netns: String,
}

/// What a pass knows of a pod this node may attach to. A pod absent from
/// the map does not run on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PodState {
    /// Scheduled here, but no sandbox has been reported (or it is the
    /// sandbox of an earlier pod of that name).
    NotStarted,
    Running(PodSandbox),
}

/// The pods of this node by namespace/name (Kubernetes mode).
pub type Pods = BTreeMap<ObjectName, PodState>;

/// The sandboxes netlet-cni reported, by pod, persisted in the state dir
/// (`pod-sandboxes.json`) before a call is answered.
#[derive(Debug)]
pub struct SandboxBook {
    state: StateDir,
    sandboxes: BTreeMap<ObjectName, PodSandbox>,
}

const FILE: &str = "pod-sandboxes.json";

impl SandboxBook {
    /// The book as the state dir holds it, without the sandboxes whose
    /// namespace is gone.
    pub fn load(state: StateDir) -> SandboxBook {
        let sandboxes = state.load_json(FILE);
        let mut book = SandboxBook { state, sandboxes };
        if let Err(e) = book.forget_gone() {
            tracing::warn!(error = %e, "cannot record the pod sandboxes that are gone");
        }
        book
    }

    pub fn sandboxes(&self) -> &BTreeMap<ObjectName, PodSandbox> {
        &self.sandboxes
    }

    /// ADD: `pod` runs in `sandbox` now (a later sandbox of the pod
    /// replaces an earlier one). Recorded before it returns.
    pub fn record(&mut self, pod: ObjectName, sandbox: PodSandbox) -> Result<(), StateError> {
        if self.sandboxes.get(&pod) == Some(&sandbox) {
            return Ok(());
        }
        self.sandboxes.insert(pod, sandbox);
        self.store()
    }

    /// DEL: the runtime tore `sandbox_id` down. Another sandbox of the pod
    /// (a DEL repeated after the pod's next ADD) is kept.
    pub fn remove(&mut self, pod: &ObjectName, sandbox_id: &str) -> Result<bool, StateError> {
        if self.sandboxes.get(pod).is_none_or(|s| s.sandbox_id != sandbox_id) {
            return Ok(false);
        }
        self.sandboxes.remove(pod);
        self.store().map(|()| true)
    }

    /// Forgets the sandboxes whose network namespace the kernel no longer
    /// has; true if any was.
    pub fn forget_gone(&mut self) -> Result<bool, StateError> {
        let before = self.sandboxes.len();
        self.sandboxes.retain(|pod, s| {
            let alive = netns_alive(&s.netns);
            if !alive {
                tracing::info!(%pod, sandbox = %s.sandbox_id, netns = %s.netns, "pod sandbox gone: its namespace no longer exists");
            }
            alive
        });
        match self.sandboxes.len() == before {
            true => Ok(false),
            false => self.store().map(|()| true),
        }
    }

    fn store(&self) -> Result<(), StateError> {
        self.state.store_json(FILE, &self.sandboxes)
    }
}

/// Where the agent opens a namespace path the runtime gave: as given, or,
/// for the runtimes' default `/var/run/netns/...` in an agent container
/// that mounts the host's `/run/netns` but has no `/var/run`, under `/run`.
pub fn local_netns_path(netns: &str) -> PathBuf {
    let given = Path::new(netns);
    match netns.strip_prefix("/var/run/") {
        Some(rest) if !given.exists() => Path::new("/run").join(rest),
        _ => given.to_path_buf(),
    }
}

/// Is `netns` (a runtime's path) a network namespace still? A namespace
/// file is a mount of nsfs; once the runtime tears the sandbox down it is
/// unmounted (an empty file) or removed.
pub fn netns_alive(netns: &str) -> bool {
    nix::sys::statfs::statfs(&local_netns_path(netns)).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tag: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!("netlet-pods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir::open(dir).unwrap()
    }

    fn sandbox(id: &str, netns: &str) -> PodSandbox {
        PodSandbox { uid: Some(format!("uid-{id}")), sandbox_id: id.into(), netns: netns.into() }
    }

    #[test]
    fn a_sandbox_is_kept_across_restarts_while_its_namespace_lives() {
        let dir = state("keep");
        let mut book = SandboxBook::load(dir.clone());
        // This process's own namespace is a live nsfs file.
        book.record("ns/web".into(), sandbox("s1", "/proc/self/ns/net")).unwrap();
        book.record("ns/gone".into(), sandbox("s2", "/nonexistent/netns/cni-1")).unwrap();
        let reloaded = SandboxBook::load(dir.clone());
        assert_eq!(reloaded.sandboxes().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["ns/web"], "a gone namespace is forgotten");
        assert_eq!(SandboxBook::load(dir.clone()).sandboxes().len(), 1, "and that is recorded");
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn a_del_removes_only_the_sandbox_it_names() {
        let dir = state("del");
        let mut book = SandboxBook::load(dir.clone());
        book.record("ns/web".into(), sandbox("new", "/proc/self/ns/net")).unwrap();
        assert!(!book.remove(&"ns/web".into(), "old").unwrap(), "a repeated DEL of the pod's earlier sandbox");
        assert_eq!(book.sandboxes()["ns/web"].sandbox_id, "new");
        assert!(book.remove(&"ns/web".into(), "new").unwrap());
        assert!(book.sandboxes().is_empty());
        assert!(!book.remove(&"ns/web".into(), "new").unwrap(), "DEL is repeated: tolerated");
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn only_a_namespace_file_is_a_live_namespace() {
        assert!(netns_alive("/proc/self/ns/net"));
        assert!(!netns_alive("/proc/self/status"), "a file, not nsfs");
        assert!(!netns_alive("/nonexistent"));
        assert_eq!(local_netns_path("/proc/self/ns/net"), PathBuf::from("/proc/self/ns/net"));
    }
}
