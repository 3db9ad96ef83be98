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
    /// every changed file written and closed (an editor's save, `cp`, a
    /// rename lands at once). Without inotify, for a change inotify has not
    /// reported yet, or for a file held open for writing over HELD_OPEN,
    /// until the set holds still for SETTLE with no write seen starting.
    async fn until_written(&mut self, changed: Fingerprint) -> Fingerprint {
        let named = self.path.file_name().map(|n| n.to_os_string());
        let matters = |f: &Path| manifests::is_manifest(f) || f.file_name() == named.as_deref();
        let since = Instant::now();
        let mut last = changed;
        loop {
            // No write open, and inotify saw each change: read at once.
            if let Some(w) = &mut self.watch {
                if w.quiet(matters) {
                    let now = manifests::fingerprint(&self.path);
                    if manifests::changed_files(&self.settled, &now).all(|f| w.touched(f)) {
                        return now;
                    }
                }
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
            let quiet = self.watch.as_mut().is_none_or(|w| w.quiet(matters));
            if again == last && (quiet || since.elapsed() >= HELD_OPEN) {
                return again;
            }
            last = again;
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
                if let Some(w) = &mut self.watch {
                    w.forget_touched();
                }
                return;
            }
        }
    }

    async fn publish(&mut self, _outcome: &Outcome) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    /// The kernel sizes a file before it queues the event that says so, so
    /// a write can be seen before inotify reports it. Here the file is
    /// emptied through a hard link outside the watched directory, which
    /// inotify never reports, and then written through its own name.
    #[tokio::test]
    async fn a_change_inotify_has_not_reported_is_not_read_until_its_write_ends() {
        let root = std::env::temp_dir().join(format!("netlet-unreported-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (manifests, elsewhere) = (root.join("manifests"), root.join("elsewhere"));
        fs::create_dir_all(&manifests).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        let whole = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\n";
        fs::write(manifests.join("all.yaml"), whole).unwrap();
        fs::hard_link(manifests.join("all.yaml"), elsewhere.join("all.yaml")).unwrap();
        let mut source = ManifestSource::new(&manifests, true);
        assert!(source.watch.is_some(), "inotify works here");

        // As `open(O_TRUNC)` leaves it before its event is queued.
        drop(fs::File::create(elsewhere.join("all.yaml")).unwrap());
        let emptied = manifests::fingerprint(&manifests);
        let mut waiting = Box::pin(source.until_written(emptied));
        assert!(futures::poll!(&mut waiting).is_pending(), "an emptied file was read before inotify said a word");

        let mut file = fs::OpenOptions::new().write(true).open(manifests.join("all.yaml")).unwrap();
        file.write_all(whole.as_bytes()).unwrap();
        let open = tokio::time::timeout(Duration::from_millis(200), &mut waiting).await;
        assert!(open.is_err(), "read while still open for writing");
        drop(file);
        let read = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("read once closed");
        assert_eq!(read[0].2, whole.len() as u64);
        let _ = fs::remove_dir_all(&root);
    }
}
