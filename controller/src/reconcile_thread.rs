//! The reconciler on a thread of its own, with its own current-thread
//! runtime: a pass may block (namespaces made, files and status written,
//! `setns`) without the agent's runtime noticing. The DNS server, the
//! admin server and the sources' watches keep answering while it runs.
//!
//! Passes are sent to it one at a time ([`Passes::run`]) and their
//! outcomes come back. What it needs from the agent's runtime goes through
//! handles made there: the kernel-event log, and [`DnsLink`] to the DNS
//! server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::plan::names::NameTable;
use crate::reconcile::{Outcome, Reconciler};
use crate::runner::Snapshot;

/// What the reconciler is made with.
pub struct Setup {
    pub state_dir: PathBuf,
    pub node_name: String,
    pub metrics: Arc<Metrics>,
    /// Kernel events, watched from the agent's runtime (long-running agents).
    pub events: Option<Arc<crate::dataplane::events::EventLog>>,
    /// The embedded DNS server (long-running agents).
    pub dns: Option<DnsLink>,
    /// Published ports relayed at [::1] (long-running agents).
    pub loopback_proxy: Option<crate::proxy::LoopbackProxy>,
    /// Keep a namespace made ahead for the next attachment (long-running agents).
    pub spare_namespace: bool,
    /// Where a pass reports how far it got (`--once` on a terminal).
    pub progress: Option<Arc<crate::progress::Progress>>,
}

struct Job {
    snapshot: Snapshot,
    done: oneshot::Sender<Outcome>,
}

/// The reconciler's thread, taking one pass at a time.
pub struct Passes {
    jobs: mpsc::Sender<Job>,
}

impl Passes {
    /// Starts the thread and makes the reconciler on it.
    pub fn start(setup: Setup) -> anyhow::Result<Passes> {
        let (jobs, mut queue) = mpsc::channel::<Job>(1);
        let (started, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        std::thread::Builder::new().name("reconciler".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return drop(started.send(Err(e.into()))),
            };
            runtime.block_on(async move {
                let mut reconciler = match Reconciler::new(setup) {
                    Ok(r) => {
                        let _ = started.send(Ok(()));
                        r
                    }
                    Err(e) => return drop(started.send(Err(e))),
                };
                while let Some(job) = queue.recv().await {
                    let outcome = reconciler.pass(&job.snapshot).await;
                    let _ = job.done.send(outcome);
                }
            });
        })?;
        ready.recv().map_err(|_| anyhow::anyhow!("the reconciler thread ended before starting"))??;
        Ok(Passes { jobs })
    }

    /// Runs one pass over `snapshot` on the reconciler's thread.
    pub async fn run(&self, snapshot: Snapshot) -> anyhow::Result<Outcome> {
        let (done, outcome) = oneshot::channel();
        self.jobs.send(Job { snapshot, done }).await.map_err(|_| anyhow::anyhow!("the reconciler thread is gone"))?;
        outcome.await.map_err(|_| anyhow::anyhow!("the reconciler thread ended during a pass"))
    }
}

/// The embedded DNS server, run on the agent's runtime. A pass hands it the
/// new name table and waits until it serves it (a status that says an
/// attachment is Ready never precedes its name).
pub struct DnsLink {
    tables: mpsc::UnboundedSender<(Arc<NameTable>, Vec<IpAddr>, oneshot::Sender<()>)>,
    /// What the server was last given (a pass that changes neither sends nothing).
    served: Option<(Arc<NameTable>, Vec<IpAddr>)>,
}

impl DnsLink {
    /// Starts the server on the current runtime (the agent's), counted in `metrics`.
    pub fn serve(metrics: &Metrics) -> DnsLink {
        let mut server = crate::resolver::DnsServer::new(53);
        metrics.attach_dns(server.stats.clone());
        let (tables, mut updates) = mpsc::unbounded_channel::<(Arc<NameTable>, Vec<IpAddr>, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            while let Some((table, resolvers, served)) = updates.recv().await {
                server.update(&table, resolvers).await;
                let _ = served.send(());
            }
        });
        DnsLink { tables, served: None }
    }

    /// Serves `table` from now on, forwarding to `resolvers`; returns once it does.
    pub async fn update(&mut self, table: &Arc<NameTable>, resolvers: &[IpAddr]) {
        if self.served.as_ref().is_some_and(|(t, r)| Arc::ptr_eq(t, table) && r == resolvers) {
            return;
        }
        let (served, done) = oneshot::channel();
        if self.tables.send((table.clone(), resolvers.to_vec(), served)).is_ok() && done.await.is_ok() {
            self.served = Some((table.clone(), resolvers.to_vec()));
        }
    }
}
