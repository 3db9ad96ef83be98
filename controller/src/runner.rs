//! One runner for both modes. A [`Source`] (manifest files, or the
//! Kubernetes API) yields [`Snapshot`]s of the desired state and takes
//! each pass's [`Outcome`]; the reconciler runs every pass on a thread of
//! its own (see [`crate::reconcile_thread`]). This loop, the admin server
//! (`/metrics`, `/healthz`, `/readyz`), the DNS server, the kernel-event
//! watch and the sources' watches live on the agent's runtime, which a
//! pass never blocks.
//!
//! A pass starts when the source changed, when the kernel reported what
//! may be drift, or when the resync period passed since the last one; one
//! debounce ([`settle`]) takes a burst of changes in one pass.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::dataplane::events::{self, EventLog};
use crate::metrics::Metrics;
use crate::objects::ObjectSet;
use crate::plan::Allocations;
use crate::reconcile::Outcome;
use crate::reconcile_thread::{DnsLink, Passes, Setup};
use crate::source::manifests::LoadError;

/// The desired state, as a source has it now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub objects: Arc<ObjectSet>,
    pub load_errors: Arc<[LoadError]>,
    /// Changes whenever anything in this snapshot does: a pass with the
    /// version and node facts of the previous one reuses its plan.
    pub version: u64,
    /// Allocations recorded elsewhere (Kubernetes status) that fill what
    /// the state dir lacks.
    pub known: Allocations,
    /// Allocations only their owner decides (other nodes' overlay
    /// addresses): they override the state dir.
    pub decided: Allocations,
    /// Kubernetes mode: every node's address blocks on each overlay network.
    pub overlay_blocks: BTreeMap<String, crate::plan::overlay::NodeBlocks>,
    /// Who writes the objects (Kubernetes mode: tenants, and their
    /// namespaces' labels); standalone by default.
    pub tenancy: crate::plan::tenancy::Tenancy,
}

/// Where desired objects come from and status goes to.
pub trait Source {
    /// Waits until the source can be read (Kubernetes: the first lists).
    fn ready(&mut self) -> impl Future<Output = anyhow::Result<()>>;
    /// The desired state now.
    fn snapshot(&mut self) -> impl Future<Output = Snapshot>;
    /// Resolves once the desired state may differ from the last snapshot's
    /// (a burst already waited out). Dropped unfinished, nothing is lost:
    /// the next call looks again.
    fn changed(&mut self) -> impl Future<Output = ()>;
    /// Takes a pass's outcome: status to publish, finalizers to release.
    fn publish(&mut self, outcome: &Outcome) -> impl Future<Output = ()>;
}

pub struct Options {
    pub state_dir: PathBuf,
    pub node_name: String,
    /// One pass, then the exit code: 0 only when every object is Ready.
    pub once: bool,
    pub resync_period: Duration,
    /// Where to serve /metrics, /healthz, /readyz (None: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The agent's metrics (the source reports what keeps it from working
    /// there too: `/readyz`).
    pub metrics: Arc<Metrics>,
}

/// A change is taken once its burst has been quiet for CHANGE_QUIET (the
/// rest of a `kubectl apply`, a namespace's links going one by one), or
/// after CHANGE_SETTLE_MAX while changes keep coming: a single change is
/// not held for a fixed delay, and a large one is still taken in few passes.
pub const CHANGE_QUIET: Duration = Duration::from_millis(10);
pub const CHANGE_SETTLE_MAX: Duration = Duration::from_millis(100);

/// The debounce: returns once `more` has been quiet for CHANGE_QUIET, or
/// CHANGE_SETTLE_MAX after the call.
pub async fn settle(more: &Notify) {
    let deadline = tokio::time::Instant::now() + CHANGE_SETTLE_MAX;
    loop {
        tokio::select! {
            _ = more.notified() => {}
            _ = tokio::time::sleep(CHANGE_QUIET) => return,
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (or one pass with `once`); returns
/// the exit code. A graceful stop leaves the dataplane in place:
/// containers keep their network.
pub async fn run<S: Source>(mut source: S, opts: Options) -> anyhow::Result<i32> {
    tracing::info!(state_dir = %opts.state_dir.display(), node = %opts.node_name, "netlet agent starting");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let metrics = opts.metrics.clone();
    if let (Some(addr), false) = (opts.metrics_addr, opts.once) {
        match crate::metrics::serve(addr, metrics.clone()).await {
            Ok(bound) => tracing::info!(%bound, "serving /metrics, /healthz, /readyz"),
            Err(e) => tracing::warn!(%addr, error = %e, "cannot serve metrics; continuing without"),
        }
    }
    // Kernel events: what lets an in-sync node be left alone, and drift be
    // repaired at once (long-running agents).
    let drift = Arc::new(Notify::new());
    let events = match opts.once {
        true => None,
        false => {
            let log = Arc::new(EventLog::default());
            match events::watch(log.clone(), drift.clone()) {
                Ok(()) => Some(log),
                Err(e) => {
                    tracing::warn!(error = %e, "no kernel events; every pass looks at everything");
                    None
                }
            }
        }
    };
    // One pass of a large manifest set takes seconds: `--once` on a terminal shows how far it got.
    let progress =
        (opts.once && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| Arc::new(crate::progress::Progress::default()));
    let setup = Setup {
        state_dir: opts.state_dir.clone(),
        node_name: opts.node_name.clone(),
        metrics: metrics.clone(),
        events,
        dns: (!opts.once).then(|| DnsLink::serve(&metrics)),
        loopback_proxy: (!opts.once).then(|| crate::proxy::LoopbackProxy::new(tokio::runtime::Handle::current())),
        spare_namespace: !opts.once,
        progress: progress.clone(),
    };
    let passes = Passes::start(setup)?;
    tokio::select! {
        ready = source.ready() => ready?,
        _ = term.recv() => return Ok(0),
        _ = int.recv() => return Ok(0),
    }
    loop {
        let display = progress.as_ref().map(|p| p.show());
        if let Some(p) = &progress {
            p.phase("reading the desired state", 0);
        }
        let snapshot = source.snapshot().await;
        if let Some(p) = &progress {
            p.phase("planning", 0);
        }
        let outcome = passes.run(snapshot).await?;
        drop(display);
        if opts.once {
            for failure in outcome.failures() {
                eprintln!("{failure}");
            }
            let ready = outcome.verdicts.iter().filter(|v| v.ready).count();
            println!("{ready}/{} objects ready, {} kernel mutations", outcome.verdicts.len(), outcome.mutations);
            return Ok(if outcome.all_ready() { 0 } else { 1 });
        }
        let stop = tokio::select! {
            () = source.publish(&outcome) => None,
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
        };
        let deadline = tokio::time::Instant::now() + opts.resync_period;
        let stop = match stop {
            Some(signal) => Some(signal),
            None => tokio::select! {
                _ = term.recv() => Some("SIGTERM"),
                _ = int.recv() => Some("SIGINT"),
                () = source.changed() => { tracing::debug!("desired state changed"); None }
                _ = drift.notified() => {
                    settle(&drift).await;
                    tracing::debug!("kernel changed under us");
                    None
                }
                _ = tokio::time::sleep_until(deadline) => { tracing::debug!("resync period elapsed"); None }
            },
        };
        if let Some(signal) = stop {
            tracing::info!("{signal}: stopping, dataplane left in place");
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_changes_is_waited_out_but_never_forever() {
        let changed = Arc::new(Notify::new());
        let started = std::time::Instant::now();
        settle(&changed).await;
        assert!(started.elapsed() >= CHANGE_QUIET, "a quiet moment is waited for");
        // Changes that never stop: read anyway.
        let poker = {
            let changed = changed.clone();
            tokio::spawn(async move {
                loop {
                    changed.notify_one();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(5), settle(&changed)).await.expect("settles while changes keep coming");
        poker.abort();
    }
}
