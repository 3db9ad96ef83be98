//! The node namespace's links and addresses, as last read: dumped when
//! kernel events say they changed, else brought up to date from the
//! links a pass itself touched.

use std::collections::BTreeSet;

use super::kernel::LinkId;
use super::netlink::{self, Link, NetlinkError};
use super::Dataplane;

/// The node namespace's links and addresses as last dumped.
pub type NodeView = std::sync::Arc<(Vec<Link>, Vec<netlink::Address>)>;

/// The node links a pass touched (created, changed, or whose addresses
/// changed) by name, and deleted by index. Recorded before each change is
/// sent, so a failed one is only looked at again.
#[derive(Default)]
pub(super) struct ViewChanges {
    pub(super) touched: BTreeSet<String>,
    pub(super) gone: BTreeSet<u32>,
}

impl ViewChanges {
    pub(super) fn is_empty(&self) -> bool {
        self.touched.is_empty() && self.gone.is_empty()
    }

    pub(super) fn touch(&mut self, name: &str) {
        if !self.touched.contains(name) {
            self.touched.insert(name.to_string());
        }
    }
}

impl Dataplane {
    /// The node's links and addresses: dumped, or the previous dump while
    /// no kernel event has arrived since the last pass.
    pub async fn node_view(&mut self) -> Result<NodeView, NetlinkError> {
        self.settle_events().await;
        let quiet = self.events.as_ref().is_some_and(|e| e.get() == self.events_baseline);
        if let (true, Some(view)) = (quiet, &self.node_view) {
            return Ok(view.clone());
        }
        let view: NodeView = std::sync::Arc::new((self.node.links().await?, self.node.addresses().await?));
        self.node_view = Some(view.clone());
        Ok(view)
    }

    /// Brings the node view up to date with this pass's own changes: the
    /// links it touched are read back one by one (a get each) and the
    /// addresses dumped (a handful), instead of dumping every link again,
    /// which with a thousand veths costs ~17 ms (the kernel looks up each
    /// peer's namespace id) and made every change cost a second pass that
    /// did it. Anything that cannot be read leaves no view: the next pass
    /// dumps.
    pub(super) async fn update_node_view(&mut self) {
        let changes = std::mem::take(&mut self.view_changes);
        if changes.is_empty() {
            return;
        }
        let Some(view) = self.node_view.take() else { return };
        let mut links: Vec<Link> =
            view.0.iter().filter(|l| !changes.gone.contains(&l.index) && !changes.touched.contains(&l.name)).cloned().collect();
        for name in &changes.touched {
            match self.node.link(LinkId::Name(name)).await {
                Ok(Some(link)) => {
                    links.retain(|l| l.index != link.index);
                    links.push(link);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the node's links will be dumped again");
                    return;
                }
            }
        }
        match self.node.addresses().await {
            Ok(addresses) => self.node_view = Some(std::sync::Arc::new((links, addresses))),
            Err(e) => tracing::debug!(error = %e, "the node's links will be dumped again"),
        }
        // Debug builds (the tests' agents) check the result against a dump
        // (links being deleted may still be listed: a deletion of several
        // finishes after the status write).
        #[cfg(debug_assertions)]
        if let (Some(view), Ok(mut dumped)) = (&self.node_view, self.node.links().await) {
            let mut patched = view.0.clone();
            patched.sort_by_key(|l| l.index);
            dumped.retain(|l| !changes.gone.contains(&l.index));
            dumped.sort_by_key(|l| l.index);
            if patched != dumped {
                tracing::warn!(?patched, ?dumped, "node view brought up to date differs from the kernel's links");
                self.node_view = None;
            }
        }
    }
}
