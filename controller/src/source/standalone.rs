//! Standalone mode's source: a manifest file or directory, read through
//! the manifest cache, watched with inotify (polled where that cannot be),
//! and never read while a manifest is still being written. Status goes to
//! the state dir, which the reconciler writes itself.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::file_watch::FileWatch;
use super::manifests::{self, Fingerprint, ManifestCache};
use crate::reconcile::Outcome;
use crate::runner::{Snapshot, Source};

/// How often the manifest set is checked for changes without an inotify
/// wake-up (nested directories, filesystems without inotify).
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A changed manifest set must hold still this long before it is read
/// (when inotify cannot tell that its writes are done).
const SETTLE: Duration = Duration::from_millis(10);
/// A manifest kept open for writing this long is read once it holds still.
const HELD_OPEN: Duration = Duration::from_secs(2);

pub struct ManifestSource {
    path: PathBuf,
    watch: Option<FileWatch>,
    cache: ManifestCache,
    /// The set as it was when last found whole (files not mid-write).
    settled: Fingerprint,
    /// What the settled set loaded to.
    loaded: Option<(Fingerprint, Snapshot)>,
}

impl ManifestSource {
    /// Reads `path`; with `watch`, follows its changes (a running agent).
    pub fn new(path: &Path, watch: bool) -> Self {
        tracing::info!(manifests = %path.display(), "reading manifests");
        ManifestSource {
            path: path.to_path_buf(),
            watch: if watch { FileWatch::new(path) } else { None },
            cache: ManifestCache::default(),
            settled: manifests::fingerprint(path),
            loaded: None,
        }
    }

    /// Waits until the manifest set at `changed` is whole: inotify saw
    /// every write to one closed (an editor's save, `cp`, a rename lands
    /// at once). Without inotify, or for a file held open for writing over
    /// HELD_OPEN, until the set holds still for SETTLE.
    async fn until_written(&mut self, changed: Fingerprint) -> Fingerprint {
        let named = self.path.file_name().map(|n| n.to_os_string());
        let matters = |f: &Path| manifests::is_manifest(f) || f.file_name() == named.as_deref();
        let since = Instant::now();
        let mut settled = changed;
        loop {
            if self.watch.as_mut().is_some_and(|w| w.quiet(matters)) {
                return manifests::fingerprint(&self.path);
            }
            // With inotify, the close that ends the write wakes us at
            // once; SETTLE bounds the wait either way.
            match &mut self.watch {
                Some(w) => {
                    let _ = tokio::time::timeout(SETTLE, w.changed()).await;
                }
                None => tokio::time::sleep(SETTLE).await,
            }
            let again = manifests::fingerprint(&self.path);
            if again == settled && (self.watch.is_none() || since.elapsed() >= HELD_OPEN) {
                return again;
            }
            settled = again;
        }
    }
}

impl Source for ManifestSource {
    async fn ready(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Parses only when the manifest set changed; the version (a hash of
    /// the set's names, sizes and times) lets the reconciler reuse its plan
    /// when nothing did.
    async fn snapshot(&mut self) -> Snapshot {
        if let Some((fingerprint, snapshot)) = &self.loaded {
            if *fingerprint == self.settled {
                return snapshot.clone();
            }
        }
        let fresh = self.cache.load(&self.path);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.settled.hash(&mut hasher);
        let snapshot =
            Snapshot { objects: Arc::new(fresh.objects), load_errors: fresh.errors.into(), version: hasher.finish(), ..Default::default() };
        self.loaded = Some((self.settled.clone(), snapshot.clone()));
        snapshot
    }

    async fn changed(&mut self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = async { match &mut self.watch { Some(w) => w.changed().await, None => std::future::pending().await } } => {}
            }
            let now = manifests::fingerprint(&self.path);
            if now != self.settled {
                // Never read a manifest half-written.
                self.settled = self.until_written(now).await;
                return;
            }
        }
    }

    async fn publish(&mut self, _outcome: &Outcome) {}
}
