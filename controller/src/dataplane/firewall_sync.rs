//! The nftables ruleset's sync, run on a blocking thread beside the link
//! work, and skipped while it is known to be in place.

use super::report::SyncReport;
use super::{firewall, Dataplane};
use crate::plan::desired::DesiredState;

/// The firewall's sync running on a blocking thread; it hands the
/// firewall back with the plan it applied.
pub(super) type FirewallJob = tokio::task::JoinHandle<(
    firewall::NftFirewall,
    crate::plan::desired::FirewallPlan,
    Result<firewall::SyncOutcome, firewall::FirewallError>,
)>;

impl Dataplane {
    /// Starts the whole ruleset's sync (one transaction, nothing when in
    /// sync) on a blocking thread, unless it is known to be in place.
    pub(super) fn start_firewall(&mut self, desired: &DesiredState, full: bool) -> Option<FirewallJob> {
        if !full && self.last_firewall.as_ref() == Some(&desired.firewall) {
            return None;
        }
        self.last_firewall = None;
        let mut firewall = std::mem::take(&mut self.firewall);
        let plan = desired.firewall.clone();
        Some(tokio::task::spawn_blocking(move || {
            let result = firewall.sync(&plan);
            (firewall, plan, result)
        }))
    }

    pub(super) async fn finish_firewall(&mut self, job: FirewallJob, report: &mut SyncReport) {
        let (firewall, plan, result) = match job.await {
            Ok(done) => done,
            Err(e) => {
                report.firewall_error = Some(format!("firewall task failed: {e}"));
                return;
            }
        };
        self.firewall = firewall;
        match result {
            Ok(outcome) => {
                if outcome.mutated() {
                    report.mutated("nft");
                }
                self.last_firewall = Some(plan);
            }
            Err(e) => {
                tracing::warn!(error = %e, "firewall not applied");
                report.firewall_error = Some(e.to_string());
            }
        }
    }
}
