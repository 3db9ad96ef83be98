//! The nftables ruleset's sync, run on a blocking thread beside the link
//! work, and skipped while it is known to be in place.

use super::kernel::Ruleset;
use super::report::SyncReport;
use super::Dataplane;
use crate::plan::desired::{DesiredState, FirewallPlan};

/// The ruleset's sync running on a blocking thread; it hands the ruleset
/// back with the plan it applied.
pub(super) type FirewallJob = tokio::task::JoinHandle<(Box<dyn Ruleset>, FirewallPlan, Result<bool, String>)>;

impl Dataplane {
    /// Starts the whole ruleset's sync (one transaction, nothing when in
    /// sync) on a blocking thread, unless it is known to be in place.
    pub(super) fn start_firewall(&mut self, desired: &DesiredState, full: bool) -> Option<FirewallJob> {
        if !full && self.last_firewall.as_ref() == Some(&desired.firewall) {
            return None;
        }
        self.last_firewall = None;
        let mut ruleset = self.system.take_ruleset();
        let plan = desired.firewall.clone();
        Some(tokio::task::spawn_blocking(move || {
            let result = ruleset.sync(&plan);
            (ruleset, plan, result)
        }))
    }

    pub(super) async fn finish_firewall(&mut self, job: FirewallJob, report: &mut SyncReport) {
        let (ruleset, plan, result) = match job.await {
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
                self.last_firewall = Some(plan);
            }
            Err(e) => {
                tracing::warn!(error = %e, "firewall not applied");
                report.firewall_error = Some(e);
            }
        }
    }
}
