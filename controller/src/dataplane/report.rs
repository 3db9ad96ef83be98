//! What one sync did: kernel changes by kind, and what went wrong, per
//! object and node-wide.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::netlink::NetlinkError;
use crate::objects::ObjectName;
use crate::plan::outcome::{reason, Failure};

/// What one sync did and what went wrong, per object.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Kernel changes by kind (link, address, route, netns, sysctl, nft).
    pub mutations: BTreeMap<&'static str, u32>,
    /// By attachment.
    pub endpoint_errors: BTreeMap<ObjectName, Failure>,
    /// By network name.
    pub network_errors: BTreeMap<String, Failure>,
    /// Node-wide problems (sysctls, pruning) that belong to no one object.
    pub node_errors: Vec<String>,
    /// The nftables transaction failed: every published port is affected.
    pub firewall_error: Option<String>,
    /// Overlay network -> remote VTEPs the underlay failed to resolve (ARP
    /// FAILED after traffic was sent their way).
    pub unreachable_vteps: BTreeMap<String, Vec<IpAddr>>,
    /// Everything was re-read from the kernel (not only what events or
    /// changes pointed at).
    pub full: bool,
    /// Deleted namespaces were dropped from `owned` but not recorded: the
    /// caller records it once the pass has reported (a crash before that
    /// only leaves names of namespaces already gone, which the next prune
    /// drops).
    pub owned_to_record: bool,
}

impl SyncReport {
    pub fn total_mutations(&self) -> u32 {
        self.mutations.values().sum()
    }
    pub(super) fn kernel(op: &NetlinkError) -> Failure {
        Failure::new(reason::KERNEL_ERROR, op.to_string())
    }
}

/// What deleting stale node links came to: one outcome per link.
pub(super) type LinkDeletions = Vec<Result<(), NetlinkError>>;

/// What finishing a pass's link deletions did: the changes counted since
/// the pass reported, and what failed.
#[derive(Debug, Default)]
pub struct FinishedDeletions {
    pub mutations: BTreeMap<&'static str, u32>,
    pub errors: Vec<String>,
}

impl FinishedDeletions {
    /// Adds these to a pass's mutations by kind and its errors.
    pub fn record(self, mutations: &mut BTreeMap<&'static str, u32>, errors: &mut Vec<String>) {
        for (kind, n) in self.mutations {
            *mutations.entry(kind).or_default() += n;
        }
        errors.extend(self.errors);
    }
}
