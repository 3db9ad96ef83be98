//! The nftables ruleset's sync, run on a blocking thread beside the link
//! work, and skipped while it is known to be in place.

use super::kernel::Ruleset;
use super::realized::{Judge, Record};
use super::report::SyncReport;
use super::Dataplane;
use crate::plan::desired::{DesiredState, FirewallPlan};

/// The ruleset's sync running on a blocking thread; it hands the ruleset
/// back with the plan it applied.
pub(super) type FirewallJob = tokio::task::JoinHandle<(Box<dyn Ruleset>, FirewallPlan, Result<bool, String>)>;

/// A sync of the ruleset under way, and the ruleset's generation before it.
pub(super) struct Started {
    job: FirewallJob,
    generation: Option<u64>,
    /// It only takes away from a ruleset known to be in place (a mapping
    /// unpublished, a veth gone from a bridge's set): the pass reports
    /// before it finishes, as it does before link deletions finish.
    pub(super) removes_only: bool,
}

impl Dataplane {
    /// Starts the whole ruleset's sync (one transaction, nothing when in
    /// sync) on a blocking thread, unless its record holds (see `realized`:
    /// the ruleset's epoch is nf_tables' own generation).
    pub(super) fn start_firewall(&mut self, desired: &DesiredState, judge: &Judge<'_>) -> Option<Started> {
        let generation = self.system.ruleset_generation();
        if judge.holds_at(self.realized.ruleset.as_ref(), &desired.firewall, generation) {
            return None;
        }
        let removes_only = self.realized.ruleset.take().is_some_and(|record| {
            !judge.trusts_nothing() && generation == Some(record.observed) && desired.firewall.only_removes_from(&record.desired)
        });
        let mut ruleset = self.system.take_ruleset();
        let plan = desired.firewall.clone();
        let job = tokio::task::spawn_blocking(move || {
            let result = ruleset.sync(&plan);
            (ruleset, plan, result)
        });
        Some(Started { job, generation, removes_only })
    }

    pub(super) async fn finish_firewall(&mut self, started: Started, report: &mut SyncReport) {
        let (ruleset, plan, result) = match started.job.await {
            Ok(done) => done,
            Err(e) => {
                report.firewall_error = Some(format!("firewall task failed: {e}"));
                return;
            }
        };
        self.system.put_ruleset(ruleset);
        match result {
            Ok(mutated) => {
                self.journal.count("nft", u32::from(mutated));
                // Recorded at the generation our own transaction (if any)
                // made: any other number means someone else's came between.
                let after = self.system.ruleset_generation();
                if after.is_some() && after == started.generation.map(|g| g + u64::from(mutated)) {
                    self.realized.ruleset = Some(Record { desired: plan, observed: after.unwrap_or_default(), scopes: Vec::new() });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "firewall not applied");
                report.firewall_error = Some(e);
            }
        }
    }
}
