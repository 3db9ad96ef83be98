//! The state directory: what must survive a crash or restart.
//!
//! - `allocations.json`: addresses, interface names and ephemeral ports held
//!   by objects (the plan's memory; losing it could move an address), with
//!   a journal of the small changes since (`allocations`).
//! - `owned.json`: namespaces netlet created, recorded *before* creating
//!   them, so a crash never leaks one (links carry their own marker). A copy
//!   is kept under `/run/netlet/` (tmpfs: the same lifetime as the
//!   namespaces), so a wiped state dir does not orphan them either. The
//!   record ahead of a creation is a line appended to `owned.log` beside
//!   each copy (rewriting the JSON atomically took ~1 ms on ext4, on the
//!   path of every add); the log is folded into the JSON after the pass's
//!   status write, and read back with it.
//! - `status.json`: the last status of every object, for `netlet get`.
//!
//! Every file is written atomically: temp file, rename (a journal line is
//! appended whole, and read back only whole). Allocations must survive the
//! machine and are fsynced (file and dir); owned.json only needs to survive
//! the agent (what it lists, namespaces and the links in them,
//! does not outlive the machine), so it is not fsynced: it is written
//! before each namespace is created, on the path of every add.
//! A file that cannot be parsed is reported and set aside (`*.corrupt`),
//! never silently trusted.

mod allocations;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::plan::Allocations;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/netlet";
/// Namespaces recorded since owned.json was last written (see above).
const OWNED_LOG: &str = "owned.log";
/// Runtime copies (see `owned.json`), one directory per state dir.
const RUNTIME_ROOT: &str = "/run/netlet";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding {file}: {source}")]
    Encode {
        file: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Namespaces netlet created and may therefore delete.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owned {
    #[serde(default)]
    pub netns: BTreeSet<String>,
    /// Links created straight inside a sandbox (macvlan), which carry no
    /// marker the node namespace can see: attachment -> (sandbox path, name).
    #[serde(default)]
    pub sandbox_links: std::collections::BTreeMap<crate::objects::ObjectName, (String, String)>,
}

/// A record the dataplane makes before it creates something: the
/// namespaces it is about to make (appended to the log), or the whole
/// record (a sandbox link, rare).
pub enum OwnedRecord<'a> {
    Namespaces(&'a [&'a String]),
    Whole(&'a Owned),
}

/// One object's last reported state, as `netlet get` shows it.
pub type StatusStore = Vec<serde_json::Value>;

#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// What the allocation files hold, shared by the clones that write them.
    journal: Arc<Mutex<allocations::Journal>>,
}

impl StateDir {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StateError::Io { dir: dir.clone(), source })?;
        Ok(StateDir { dir, journal: Arc::default() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn load<T: DeserializeOwned + Default>(&self, name: &str) -> T {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read state file; starting from empty");
                return T::default();
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                tracing::error!(
                    file = %path.display(), error = %e, moved_to = %aside.display(),
                    "state file is corrupt; it is set aside and rebuilt from the kernel and the objects"
                );
                let _ = fs::rename(&path, &aside);
                T::default()
            }
        }
    }

    fn store<T: Serialize>(&self, name: &str, value: &T, durable: bool) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Encode { file: name.into(), source })?;
        write_atomically(&self.dir, name, bytes.len(), durable, |f| f.write_all(&bytes))
            .map_err(|source| StateError::Io { dir: self.dir.clone(), source })
    }

    /// A state file of another module (`name` in the state dir), empty
    /// when missing; a corrupt one is set aside.
    pub fn load_json<T: DeserializeOwned + Default>(&self, name: &str) -> T {
        self.load(name)
    }
    /// Writes `name` atomically and durably.
    pub fn store_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.store(name, value, true)
    }

    /// As [`StateDir::store_allocations`], on a thread of its own (an
    /// fsync, or two for a fold, take milliseconds); the returned write is
    /// waited for with [`AllocationsWrite::finish`].
    pub fn store_allocations_in_background(&self, a: Allocations) -> AllocationsWrite {
        let state = self.clone();
        let spawned = std::thread::Builder::new()
            .name("store-allocations".into())
            .spawn(move || state.store_allocations(&a).map(|()| a).map_err(|e| e.to_string()));
        AllocationsWrite(spawned.map_err(|e| format!("starting a thread to write allocations: {e}")))
    }
    /// What we created: the state dir's record joined with the runtime
    /// copy, each with the namespaces its log adds.
    pub fn load_owned(&self) -> Owned {
        let mut owned: Owned = self.load("owned.json");
        owned.netns.extend(self.logged_namespaces());
        if let Some(runtime) = self.runtime() {
            let copy: Owned = runtime.load("owned.json");
            owned.netns.extend(copy.netns);
            owned.netns.extend(runtime.logged_namespaces());
            for (k, v) in copy.sandbox_links {
                owned.sandbox_links.entry(k).or_insert(v);
            }
        }
        owned
    }
    /// Rewrites the record whole, then drops the logs it now holds.
    pub fn store_owned(&self, o: &Owned) -> Result<(), StateError> {
        self.store("owned.json", o, false)?;
        self.drop_log();
        if let Some(runtime) = self.runtime() {
            match runtime.store("owned.json", o, false) {
                Ok(()) => runtime.drop_log(),
                Err(e) => tracing::warn!(error = %e, "cannot keep the runtime copy of owned.json"),
            }
        }
        Ok(())
    }
    /// Records namespaces about to be created: a line each, appended to
    /// the log of both copies (a crash mid-line leaves a line without its
    /// newline, which is not read back: that namespace was not made yet).
    pub fn log_owned_namespaces(&self, names: &[&String]) -> Result<(), StateError> {
        let mut lines = String::new();
        for name in names {
            lines.push_str(name);
            lines.push('\n');
        }
        self.append_log(&lines).map_err(|source| StateError::Io { dir: self.dir.clone(), source })?;
        if let Some(runtime) = self.runtime() {
            if let Err(e) = runtime.append_log(&lines) {
                tracing::warn!(error = %e, "cannot keep the runtime copy of owned.log");
            }
        }
        Ok(())
    }
    fn append_log(&self, lines: &str) -> std::io::Result<()> {
        fs::OpenOptions::new().append(true).create(true).open(self.dir.join(OWNED_LOG))?.write_all(lines.as_bytes())
    }
    fn logged_namespaces(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.join(OWNED_LOG)).unwrap_or_default();
        whole_lines(&text).filter(|l| !l.is_empty()).map(String::from).collect()
    }
    fn drop_log(&self) {
        if let Err(e) = fs::remove_file(self.dir.join(OWNED_LOG)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove owned.log; it is read back with owned.json");
            }
        }
    }

    /// `/run/netlet/<hash of this state dir's absolute path>`: several
    /// agents on one host (tests, simulated nodes) keep separate records.
    fn runtime(&self) -> Option<StateDir> {
        let dir = self.runtime_path()?;
        fs::create_dir_all(&dir).ok()?;
        Some(StateDir { dir, journal: Arc::default() })
    }

    pub fn runtime_path(&self) -> Option<PathBuf> {
        let absolute = fs::canonicalize(&self.dir).ok()?;
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = absolute
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
        Some(Path::new(RUNTIME_ROOT).join(format!("{hash:016x}")))
    }
    pub fn load_status(&self) -> StatusStore {
        self.load("status.json")
    }
    /// Status is only displayed (`netlet get`) and every pass recomputes
    /// it: written atomically but compact and without fsync, which would
    /// cost more than the rest of a small change's reconcile. Entries come
    /// serialized (each kept with its status, see `status`); the file is
    /// their array, written through a small buffer rather than gathered
    /// first (a megabyte at 1,000 attachments, in memory freshly paged in).
    pub fn store_status(&self, entries: &[std::sync::Arc<crate::status::StatusEntry>]) -> Result<(), StateError> {
        let len = entries.iter().map(|e| e.json.len() + 1).sum::<usize>() + 1;
        let write = |f: &mut fs::File| {
            let mut out = std::io::BufWriter::with_capacity(128 * 1024, f);
            out.write_all(b"[")?;
            for (i, entry) in entries.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(&entry.json)?;
            }
            out.write_all(b"]")?;
            out.flush()
        };
        write_atomically(&self.dir, "status.json", len, false, write).map_err(|source| StateError::Io { dir: self.dir.clone(), source })
    }
}

/// The lines of an appended log that end in a newline: the last one may
/// have been cut by a crash, and what it recorded was never relied on.
fn whole_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n'))
}

/// An allocations write under way; `finish` waits for it and gives back
/// what was made durable.
pub struct AllocationsWrite(Result<std::thread::JoinHandle<Result<Allocations, String>>, String>);

impl AllocationsWrite {
    pub fn finish(self) -> Result<Allocations, String> {
        match self.0 {
            Ok(thread) => thread.join().unwrap_or_else(|_| Err("the thread writing allocations panicked".into())),
            Err(e) => Err(e),
        }
    }
}

/// Temp file in the same directory, filled by `write` (`len` bytes),
/// renamed over; `durable` adds an fsync of the file before and of the
/// directory after.
fn write_atomically(
    dir: &Path,
    name: &str,
    len: usize,
    durable: bool,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        write(&mut f)?;
        if durable {
            f.sync_all()?;
        }
    }
    // Releasing a large file replaced (freeing a megabyte of page cache
    // takes ~1 ms) is left to the last holder of it: a thread of its own.
    let large = len > 256 * 1024;
    let replaced = if durable || !large { None } else { fs::File::open(dir.join(name)).ok() };
    fs::rename(&tmp, dir.join(name))?;
    if let Some(old) = replaced {
        let _ = std::thread::Builder::new().name("release-old-file".into()).spawn(move || drop(old));
    }
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test (the journal's tests use it too).
    pub(super) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netlet-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocations_round_trip() {
        let dir = temp_dir("rt");
        let state = StateDir::open(&dir).unwrap();
        let mut a = Allocations::default();
        a.ports.insert("default/web|tcp|80|0.0.0.0".parse().unwrap(), 32768);
        a.ports.insert("default/a|b|udp|53|fd00::1".parse().unwrap(), 32769);
        a.endpoints.insert("default/c1".into(), crate::plan::HeldEndpoint { network: "n".into(), ..Default::default() });
        state.store_allocations(&a).unwrap();
        assert_eq!(state.load_allocations(), a);
        // The file keeps the form earlier versions wrote.
        let text = fs::read_to_string(dir.join("allocations.json")).unwrap();
        for key in ["\"default/web|tcp|80|0.0.0.0\"", "\"default/a|b|udp|53|fd00::1\"", "\"default/c1\""] {
            assert!(text.contains(key), "{key} in {text}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn created_namespaces_are_remembered_when_the_state_dir_is_wiped() {
        let dir = temp_dir("wiped");
        let state = StateDir::open(&dir).unwrap();
        let owned = Owned { netns: BTreeSet::from(["c1".to_string()]), ..Default::default() };
        state.store_owned(&owned).unwrap();
        let runtime = state.runtime_path().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.load_owned(), owned, "the runtime copy under {} (needs root)", runtime.display());
        // Releasing it everywhere.
        state.store_owned(&Owned::default()).unwrap();
        assert_eq!(state.load_owned(), Owned::default());
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(runtime).unwrap();
    }

    #[test]
    fn namespaces_logged_ahead_are_read_back_until_the_record_is_rewritten() {
        let dir = temp_dir("logged");
        let state = StateDir::open(&dir).unwrap();
        let runtime = state.runtime_path().unwrap();
        let c1 = Owned { netns: BTreeSet::from(["c1".to_string()]), ..Default::default() };
        state.store_owned(&c1).unwrap();
        let (c2, c3) = ("c2".to_string(), "c3".to_string());
        state.log_owned_namespaces(&[&c2, &c3]).unwrap();
        // A crash in the middle of the next line: it is not read back.
        fs::OpenOptions::new().append(true).open(dir.join(OWNED_LOG)).unwrap().write_all(b"c4").unwrap();
        let all = BTreeSet::from(["c1", "c2", "c3"].map(String::from));
        assert_eq!(state.load_owned().netns, all);
        // The runtime copy's log alone is enough (a wiped state dir).
        fs::remove_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.load_owned().netns, all, "from the runtime copy under {} (needs root)", runtime.display());
        // Rewritten whole (c2 gone meanwhile): the logs go with it.
        let now = Owned { netns: BTreeSet::from(["c1".to_string(), c3.clone()]), ..Default::default() };
        state.store_owned(&now).unwrap();
        assert!(!dir.join(OWNED_LOG).exists() && !runtime.join(OWNED_LOG).exists());
        assert_eq!(state.load_owned(), now);
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(runtime).unwrap();
    }

    #[test]
    fn corrupt_file_is_set_aside_not_trusted() {
        let dir = temp_dir("corrupt");
        let state = StateDir::open(&dir).unwrap();
        fs::write(dir.join("allocations.json"), b"{\"endpoints\": {trunc").unwrap();
        assert_eq!(state.load_allocations(), Allocations::default());
        assert!(dir.join("allocations.json.corrupt").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
