//! The manifest directory as the verbs see it: one readable YAML file per
//! object they write (`network-NAME.yaml`, `attachment-NAME.yaml`,
//! `portmapping-NAME.yaml`, namespaced ones outside `default` as
//! `KIND-NAMESPACE.NAME.yaml`), written atomically, and the agent's status
//! to wait on.
//!
//! Objects defined elsewhere in the directory (an imported multi-document
//! file, a hand-written one) are read and respected, but never rewritten
//! or removed by a verb: the user's files stay the user's.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::{ready_condition, Kind};
use crate::objects::{ObjectKey, ObjectName};
use crate::source::manifests::{self, Loaded};
use crate::state::StateDir;

pub struct ManifestDir {
    pub dir: PathBuf,
    pub loaded: Loaded,
    /// The file each object is defined in, and how many objects that file holds.
    files: BTreeMap<ObjectKey, (PathBuf, usize)>,
}

pub fn key(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectKey {
    let name = match kind.namespaced() {
        true => ObjectName::namespaced(namespace.unwrap_or("default"), name),
        false => ObjectName::cluster(name),
    };
    ObjectKey { kind, name }
}

impl ManifestDir {
    /// Reads every object of `dir` (created when missing).
    pub fn open(dir: &Path) -> anyhow::Result<ManifestDir> {
        fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create the manifest directory {}: {e}", dir.display()))?;
        anyhow::ensure!(dir.is_dir(), "{} is not a directory: the verbs write one file per object into a directory", dir.display());
        let mut loaded = Loaded::default();
        let mut files = BTreeMap::new();
        for file in manifests::manifest_files(dir)? {
            let text = fs::read_to_string(&file)?;
            let parsed = manifests::parse(&file, &text);
            let objects = &parsed.objects;
            let keys: Vec<ObjectKey> =
                objects
                    .networks
                    .iter()
                    .map(|n| key(Kind::Network, None, n.metadata.name.as_deref().unwrap_or_default()))
                    .chain(
                        objects.attachments.iter().map(|a| {
                            key(Kind::Attachment, a.metadata.namespace.as_deref(), a.metadata.name.as_deref().unwrap_or_default())
                        }),
                    )
                    .chain(
                        objects.port_mappings.iter().map(|p| {
                            key(Kind::PortMapping, p.metadata.namespace.as_deref(), p.metadata.name.as_deref().unwrap_or_default())
                        }),
                    )
                    .collect();
            for k in &keys {
                files.insert(k.clone(), (file.clone(), keys.len()));
            }
            loaded.objects.networks.extend(parsed.objects.networks);
            loaded.objects.attachments.extend(parsed.objects.attachments);
            loaded.objects.port_mappings.extend(parsed.objects.port_mappings);
            loaded.errors.extend(parsed.errors);
        }
        Ok(ManifestDir { dir: dir.to_path_buf(), loaded, files })
    }

    /// The file a verb writes `key` to.
    pub fn own_file(&self, key: &ObjectKey) -> PathBuf {
        let kind = key.kind.as_str().to_ascii_lowercase();
        let name = match key.name.namespace() {
            None | Some("default") => format!("{kind}-{}.yaml", key.name.name()),
            Some(ns) => format!("{kind}-{ns}.{}.yaml", key.name.name()),
        };
        self.dir.join(name)
    }

    pub fn defined_in(&self, key: &ObjectKey) -> Option<&Path> {
        self.files.get(key).map(|(f, _)| f.as_path())
    }

    /// Writes one object to its own file, atomically (the agent never reads
    /// it half-written). An object defined in a file of the user's is not
    /// taken over.
    pub fn write<T: Serialize>(&self, key: &ObjectKey, object: &T) -> anyhow::Result<PathBuf> {
        let path = self.own_file(key);
        if let Some(other) = self.defined_in(key).filter(|f| *f != path) {
            anyhow::bail!("{key} is defined in {}: edit that file instead", other.display());
        }
        let yaml = serde_yaml::to_string(object)?;
        let tmp = self.dir.join(format!(".{}.tmp", path.file_name().expect("a file name").to_string_lossy()));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Removes the file holding `key`, if it holds only that object.
    pub fn remove(&self, key: &ObjectKey) -> anyhow::Result<()> {
        match self.files.get(key) {
            None => Ok(()),
            Some((file, 1)) => Ok(fs::remove_file(file)?),
            Some((file, n)) => anyhow::bail!("{key} is one of {n} objects in {}: remove it from that file", file.display()),
        }
    }
}

/// What the agent reported about one object.
pub enum Outcome<T> {
    Ready(T),
    Failed { reason: String, message: String },
}

/// Waits until the agent's status shows `key` with `same` holding for its
/// object (the version just written) and a Ready verdict.
pub fn wait_for<T: DeserializeOwned>(
    state_dir: &Path,
    key: &ObjectKey,
    timeout: Duration,
    same: impl Fn(&T) -> bool,
) -> anyhow::Result<Outcome<T>> {
    let state = StateDir::open(state_dir)?;
    let started = Instant::now();
    loop {
        if let Some(entry) = find(&state.load_status(), key) {
            if let Ok(object) = serde_json::from_value::<T>(entry.clone()) {
                let conditions: Vec<crate::api::Condition> =
                    entry.pointer("/status/conditions").cloned().and_then(|c| serde_json::from_value(c).ok()).unwrap_or_default();
                match ready_condition(&conditions) {
                    Some(c) if same(&object) && c.is_true() => return Ok(Outcome::Ready(object)),
                    Some(c) if same(&object) => return Ok(Outcome::Failed { reason: c.reason.clone(), message: c.message.clone() }),
                    _ => {}
                }
            }
        }
        anyhow::ensure!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for the agent to realize {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent's status no longer shows `key`.
pub fn wait_gone(state_dir: &Path, key: &ObjectKey, timeout: Duration) -> anyhow::Result<()> {
    let state = StateDir::open(state_dir)?;
    let started = Instant::now();
    while find(&state.load_status(), key).is_some() {
        anyhow::ensure!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for the agent to remove {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn find<'a>(store: &'a [Value], key: &ObjectKey) -> Option<&'a Value> {
    store.iter().find(|v| crate::status::key_of(v).as_ref() == Some(key))
}
