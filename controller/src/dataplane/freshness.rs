//! When a pass may trust what an earlier one verified: kernel events
//! since the previous pass, and the periodic audit.

use super::Dataplane;

/// How long after a sync its own kernel notifications are still counted as
/// its own (they are queued by the time its requests are answered; the
/// watcher task needs a moment to count them).
pub(super) const OWN_EVENTS_SETTLE: std::time::Duration = std::time::Duration::from_millis(2);

/// Every this-many passes, observe everything even without kernel events
/// (what no event reports: edits of /etc/netns files, missed events).
pub(super) const FULL_PASS_EVERY: u32 = 10;

/// Whether a pass should be the periodic audit. A pass that realizes a
/// change (its generation is not the previous pass's) leaves it to the next
/// one: a change among thousands of objects should not wait for every
/// sandbox to be re-read. Changes that keep coming delay it at most another
/// FULL_PASS_EVERY passes.
pub(super) fn audit_due(passes_since_full: u32, last_generation: Option<u64>, generation: u64) -> bool {
    let due = passes_since_full + 1 >= FULL_PASS_EVERY;
    let overdue = passes_since_full + 1 >= 2 * FULL_PASS_EVERY;
    due && (overdue || last_generation == Some(generation))
}

impl Dataplane {
    /// Counts the kernel events of our last sync as seen once they had
    /// OWN_EVENTS_SETTLE to arrive, so that they do not make the next pass
    /// a full one. The reconciler calls it after writing status (which
    /// leaves them that time, off the path to Ready); the next pass does
    /// if nobody did.
    pub async fn settle_events(&mut self) {
        let Some(until) = self.own_events_until.take() else { return };
        if let Some(events) = &self.events {
            tokio::time::sleep_until(until).await;
            self.events_baseline = events.get();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_periodic_audit_waits_for_a_pass_without_a_change() {
        let last = FULL_PASS_EVERY - 1;
        assert!(!audit_due(last - 1, Some(7), 7), "not due yet");
        assert!(audit_due(last, Some(7), 7), "due, nothing changed");
        assert!(!audit_due(last, Some(7), 8), "due, but this pass realizes a change");
        assert!(!audit_due(last, None, 1), "the first pass of a change");
        assert!(audit_due(last + 1, Some(8), 8), "the pass after the change");
        assert!(audit_due(2 * FULL_PASS_EVERY - 1, Some(8), 9), "changes that keep coming delay it only so long");
    }
}
