//! Standalone mode: manifests from a file or directory, watched and
//! reconciled on change and on every resync period.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::source::manifests;
use crate::state::StateDir;

pub struct StandaloneOptions {
    pub manifests: PathBuf,
    pub state_dir: PathBuf,
    pub node_name: String,
    pub once: bool,
    pub resync_period: Duration,
    /// Where to serve /metrics, /healthz, /readyz (None: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How often the manifest set is checked for changes without an inotify
/// wake-up (nested directories, filesystems without inotify).
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A changed manifest set must hold still this long before it is read
/// (when inotify cannot tell that its writes are done).
const SETTLE: Duration = Duration::from_millis(10);
/// A manifest kept open for writing this long is read once it holds still.
const HELD_OPEN: Duration = Duration::from_secs(2);

/// Runs until SIGTERM/SIGINT (or one pass with `once`). Returns the exit code.
pub async fn run_standalone(opts: StandaloneOptions) -> anyhow::Result<i32> {
    let state = StateDir::open(&opts.state_dir)?;
    let metrics = Metrics::new();
    let mut reconciler = Reconciler::new(state, opts.node_name.clone())?.with_metrics(metrics.clone());
    // One pass of a large manifest set takes seconds: show how far it got.
    let progress = (opts.once && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| std::sync::Arc::new(crate::progress::Progress::default()));
    if let Some(p) = &progress {
        reconciler = reconciler.with_progress(p.clone());
    }
    if let (Some(addr), false) = (opts.metrics_addr, opts.once) {
        match crate::metrics::serve(addr, metrics).await {
            Ok(bound) => tracing::info!(%bound, "serving /metrics, /healthz, /readyz"),
            Err(e) => tracing::warn!(%addr, error = %e, "cannot serve metrics; continuing without"),
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(manifests = %opts.manifests.display(), state_dir = %opts.state_dir.display(), node = %opts.node_name, "netlet standalone agent starting");

    let kernel_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    if !opts.once {
        // For `netlet network ...`: where to write, and that someone reads it.
        if let Err(e) = crate::running::record(&opts.state_dir, &opts.manifests) {
            tracing::warn!(error = %e, "cannot record the agent in the state dir; `netlet network` will not wait for it");
        }
        reconciler.watch_events(kernel_changed.clone());
        reconciler.serve_dns();
        reconciler.serve_loopback_ports();
    }
    let mut fingerprint = manifests::fingerprint(&opts.manifests);
    let mut file_watch = if opts.once { None } else { crate::source::file_watch::FileWatch::new(&opts.manifests) };
    let mut cache = manifests::ManifestCache::default();
    let mut loaded: Option<(u64, std::sync::Arc<crate::objects::ObjectSet>, Vec<manifests::LoadError>)> = None;
    loop {
        // Parse only when the manifest set changed; the version lets the
        // reconciler reuse its plan when nothing did.
        let version = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fingerprint.hash(&mut h);
            h.finish()
        };
        let display = progress.as_ref().map(|p| p.show());
        if loaded.as_ref().is_none_or(|(v, _, _)| *v != version) {
            if let Some(p) = &progress {
                p.phase("reading manifests", 0);
            }
            let fresh = cache.load(&opts.manifests);
            loaded = Some((version, std::sync::Arc::new(fresh.objects), fresh.errors));
        }
        let (_, objects, errors) = loaded.as_ref().expect("loaded above");
        if let Some(p) = &progress {
            p.phase("planning", 0);
        }
        let outcome = reconciler.reconcile_versioned(objects.clone(), errors, Some(version)).await;
        drop(display);
        if opts.once {
            let failures = outcome.failures();
            for f in &failures {
                eprintln!("{f}");
            }
            let ready = outcome.verdicts.iter().filter(|v| v.ready).count();
            println!("{ready}/{} objects ready, {} kernel mutations", outcome.verdicts.len(), outcome.mutations);
            return Ok(if outcome.all_ready() { 0 } else { 1 });
        }
        // Wait for a change, the resync deadline, or a signal. A graceful
        // stop leaves the dataplane in place: containers keep networking.
        let deadline = Instant::now() + opts.resync_period;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping, dataplane left in place"); return Ok(0); }
                _ = int.recv() => { tracing::info!("SIGINT: stopping, dataplane left in place"); return Ok(0); }
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = async { match &mut file_watch { Some(w) => w.changed().await, None => std::future::pending().await } } => {}
                _ = kernel_changed.notified() => {
                    // Let a burst of events settle, then repair in one pass.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tracing::debug!("kernel changed under us");
                    break;
                }
            }
            let now = manifests::fingerprint(&opts.manifests);
            if now != fingerprint {
                // Never read a manifest half-written: wait until inotify
                // has seen every write to one closed (an editor's save,
                // `cp`, a rename lands at once). Without inotify, or for a
                // file held open for writing over HELD_OPEN, wait until the
                // set holds still for SETTLE.
                let named = opts.manifests.file_name();
                let matters = |f: &std::path::Path| manifests::is_manifest(f) || f.file_name() == named;
                let since = Instant::now();
                let mut settled = now;
                loop {
                    if file_watch.as_mut().is_some_and(|w| w.quiet(matters)) {
                        settled = manifests::fingerprint(&opts.manifests);
                        break;
                    }
                    // With inotify, the close that ends the write wakes
                    // us at once; SETTLE bounds the wait either way.
                    match &mut file_watch {
                        Some(w) => {
                            let _ = tokio::time::timeout(SETTLE, w.changed()).await;
                        }
                        None => tokio::time::sleep(SETTLE).await,
                    }
                    let again = manifests::fingerprint(&opts.manifests);
                    if again == settled && (file_watch.is_none() || since.elapsed() >= HELD_OPEN) {
                        break;
                    }
                    settled = again;
                }
                fingerprint = settled;
                tracing::debug!("manifests changed");
                break;
            }
            if Instant::now() >= deadline {
                tracing::debug!("resync period elapsed");
                break;
            }
        }
    }
}
