//! What the dataplane last converged, per item, and the event epoch it was
//! observed at: the one rule every skip of a pass follows.
//!
//! **The rule.** A pass takes an item (the whole node; a sandbox with its
//! endpoints; the ruleset; the name files) to still hold what it was last
//! converged to, and does not read it back, only when all of these hold:
//!
//! 1. what is desired of it now equals what was converged (by value);
//! 2. the kernel reported no event in any [`Scope`] the item depends on
//!    since the epoch at which it was observed; that epoch is read *before*
//!    the item is read, so an event that lands while a pass works on it
//!    makes it stale for the next pass, however the two interleave;
//! 3. no events were lost since then, the watch is alive, and the pass is
//!    not the periodic audit (which also covers what no event reports:
//!    /etc/netns files, sockets).
//!
//! An item is recorded only when it converged without error: a failure is
//! retried by the next pass from scratch. The ruleset's epoch is the
//! kernel's own: nf_tables counts committed transactions (its generation),
//! so it is recorded at the generation its own transaction made, read
//! after it, and holds while that is still the generation: exact, whoever
//! changed it, and the agent's own changes cost no second look. The node's links and addresses
//! (`node_view`) follow the same rule link by link. What the reconciler
//! reuses besides (a plan, a status entry) is a pure function of inputs
//! compared by value: see `reconcile` and `status`.

use foldhash::HashMap;
use std::sync::Arc;

use super::events::{EventLog, Scope};
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{Endpoint, FirewallPlan};
use crate::plan::names::SandboxFiles;

/// Every this-many passes, one is an audit: it trusts nothing.
pub const AUDIT_EVERY: u32 = 10;

/// One converged item: what it was converged to, when it was observed,
/// and what it depends on.
#[derive(Clone, Debug)]
pub struct Record<T> {
    pub desired: T,
    pub observed: u64,
    pub scopes: Vec<Scope>,
}

/// How one pass judges freshness: the event log (None: no events are
/// heard, so nothing is fresh) and whether it is an audit.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    events: Option<&'a EventLog>,
    audit: bool,
}

impl<'a> Judge<'a> {
    pub fn new(events: Option<&'a EventLog>, audit: bool) -> Self {
        Judge { events, audit }
    }

    /// Trusts nothing (an audit, or a pass without events).
    pub fn trusts_nothing(&self) -> bool {
        self.audit || self.events.is_none_or(EventLog::is_dead)
    }

    /// Whether events are heard at all: without them no record is ever
    /// trusted, so none is worth making.
    pub fn hears_events(&self) -> bool {
        self.events.is_some()
    }

    /// The epoch to stamp an observation that starts now with.
    pub fn epoch(&self) -> u64 {
        self.events.map(EventLog::epoch).unwrap_or(0)
    }

    /// The rule (see the module comment).
    pub fn holds<T: PartialEq>(&self, record: Option<&Record<T>>, desired: &T) -> bool {
        self.holds_by(record, |d| d == desired)
    }

    /// The rule, with what is desired compared by `same`.
    pub fn holds_by<T>(&self, record: Option<&Record<T>>, same: impl FnOnce(&T) -> bool) -> bool {
        let Some(record) = record else { return false };
        let Some(events) = self.events.filter(|_| !self.audit) else { return false };
        same(&record.desired) && !events.stale(&record.scopes, record.observed)
    }

    /// The rule for an item whose epoch is its own counter (the ruleset's
    /// generation, `current`) rather than the event log's.
    pub fn holds_at<T: PartialEq>(&self, record: Option<&Record<T>>, desired: &T, current: Option<u64>) -> bool {
        let Some(record) = record else { return false };
        !self.trusts_nothing() && record.desired == *desired && current == Some(record.observed)
    }

    /// The rule for the whole node: nothing happened at all since it was
    /// observed converged to `desired`.
    pub fn node_holds(&self, record: Option<&Record<u64>>, generation: u64) -> bool {
        let Some(record) = record.filter(|r| r.desired == generation) else { return false };
        let Some(events) = self.events.filter(|_| !self.audit) else { return false };
        !events.any_since(record.observed)
    }
}

/// A sandbox's record: its endpoints as converged.
pub type SandboxRecord = Record<Vec<Endpoint>>;

/// Everything converged, by item.
#[derive(Default)]
pub struct Realized {
    /// The whole node, by desired-state generation, when a pass converged
    /// all of it without error.
    pub node: Option<Record<u64>>,
    pub sandboxes: HashMap<SandboxRef, SandboxRecord>,
    /// Namespace ids of sandboxes, by the identity (device, inode) of
    /// their namespace: what their events are tagged with.
    pub nsids: HashMap<(u64, u64), i32>,
    pub ruleset: Option<Record<FirewallPlan>>,
    pub files: Option<Record<Arc<Vec<SandboxFiles>>>>,
}

impl Realized {
    /// Forgets every record: nothing is trusted until observed again.
    pub fn forget(&mut self) {
        self.node = None;
        self.sandboxes.clear();
        self.ruleset = None;
        self.files = None;
    }
}

/// Whether this pass is the audit. One that realizes a change (its
/// generation is not the previous pass's) leaves it to the next one: a
/// change among thousands of objects should not wait for every sandbox to
/// be re-read. Changes that keep coming delay it at most another
/// AUDIT_EVERY passes.
pub fn audit_due(passes_since_audit: u32, last_generation: Option<u64>, generation: u64) -> bool {
    let due = passes_since_audit + 1 >= AUDIT_EVERY;
    let overdue = passes_since_audit + 1 >= 2 * AUDIT_EVERY;
    due && (overdue || last_generation == Some(generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_periodic_audit_waits_for_a_pass_without_a_change() {
        let last = AUDIT_EVERY - 1;
        assert!(!audit_due(last - 1, Some(7), 7), "not due yet");
        assert!(audit_due(last, Some(7), 7), "due, nothing changed");
        assert!(!audit_due(last, Some(7), 8), "due, but this pass realizes a change");
        assert!(!audit_due(last, None, 1), "the first pass of a change");
        assert!(audit_due(last + 1, Some(8), 8), "the pass after the change");
        assert!(audit_due(2 * AUDIT_EVERY - 1, Some(8), 9), "changes that keep coming delay it only so long");
    }

    fn record(desired: u32, observed: u64, scopes: &[Scope]) -> Option<Record<u32>> {
        Some(Record { desired, observed, scopes: scopes.to_vec() })
    }

    #[test]
    fn an_item_holds_while_what_it_depends_on_is_quiet() {
        let log = EventLog::default();
        log.record(Scope::NodeLink(3));
        let observed = log.epoch();
        let judge = Judge::new(Some(&log), false);
        let sandbox = record(1, observed, &[Scope::Namespace(7), Scope::NodeLink(4)]);
        assert!(judge.holds(sandbox.as_ref(), &1), "nothing since");
        assert!(!judge.holds(sandbox.as_ref(), &2), "something else is desired");
        // Another namespace, another link: not this item's business.
        log.record(Scope::Namespace(8));
        log.record(Scope::NodeLink(5));
        assert!(judge.holds(sandbox.as_ref(), &1));
        // Its own link.
        log.record(Scope::NodeLink(4));
        assert!(!judge.holds(sandbox.as_ref(), &1));
    }

    #[test]
    fn an_event_that_lands_while_an_item_is_read_makes_it_stale() {
        let log = EventLog::default();
        // The pass reads the epoch, then the item; the event lands between.
        let observed = log.epoch();
        log.record(Scope::Namespace(7));
        let judge = Judge::new(Some(&log), false);
        assert!(!judge.holds(record(1, observed, &[Scope::Namespace(7)]).as_ref(), &1));
        // The whole node: anything at all since.
        let node = Some(Record { desired: 9u64, observed, scopes: Vec::new() });
        assert!(!judge.node_holds(node.as_ref(), 9));
        let now = Some(Record { desired: 9u64, observed: log.epoch(), scopes: Vec::new() });
        assert!(judge.node_holds(now.as_ref(), 9));
        assert!(!judge.node_holds(now.as_ref(), 10), "another generation");
    }

    #[test]
    fn lost_events_an_ended_watch_an_audit_or_no_events_trust_nothing() {
        let log = EventLog::default();
        let item = record(1, log.epoch(), &[Scope::Ruleset]);
        assert!(Judge::new(Some(&log), false).holds(item.as_ref(), &1));
        assert!(!Judge::new(Some(&log), true).holds(item.as_ref(), &1), "an audit");
        assert!(!Judge::new(None, false).holds(item.as_ref(), &1), "no events heard");
        log.record_loss();
        assert!(!Judge::new(Some(&log), false).holds(item.as_ref(), &1), "events were lost");
        assert_eq!(log.node_links_since(0), None, "which links changed cannot be told");
        let later = record(1, log.epoch(), &[Scope::Ruleset]);
        assert!(Judge::new(Some(&log), false).holds(later.as_ref(), &1), "observed after the loss");
        log.record_death();
        assert!(!Judge::new(Some(&log), false).holds(later.as_ref(), &1), "the watch ended");
        assert!(Judge::new(Some(&log), false).trusts_nothing());
    }

    #[test]
    fn scopes_no_observation_needs_are_forgotten() {
        let log = EventLog::default();
        log.record(Scope::NodeLink(1));
        log.record(Scope::Namespace(2));
        let audit = log.epoch();
        log.record(Scope::NodeLink(3));
        log.forget_before(audit);
        assert_eq!(log.node_links_since(0), Some(vec![3]));
        assert!(!log.stale(&[Scope::Namespace(2)], 0), "forgotten: older than every observation");
    }
}
