//! The node namespace's links and addresses, as last read. A pass reads
//! again only what may have changed since (the `realized` rule, link by
//! link): the links kernel events were about, and those the dataplane
//! itself changed (noted as each change was sent, so none is missed
//! however late its event comes). With a thousand veths a full dump costs
//! ~17 ms (the kernel looks up each peer's namespace id); reading a few
//! links by index costs microseconds.

use std::sync::Arc;

use super::events::Scope;
use super::kernel::{LinkId, Touched};
use super::netlink::{Address, Link, NetlinkError};
use super::Dataplane;

/// The node namespace's links and addresses.
pub type NodeView = Arc<(Vec<Link>, Vec<Address>)>;

/// Read link by link up to this many changed; beyond, a dump is cheaper.
const READ_ONE_BY_ONE: usize = 64;

impl Dataplane {
    /// The node's links and addresses: the previous view brought up to date
    /// (see the module comment), or a fresh dump.
    pub async fn node_view(&mut self) -> Result<NodeView, NetlinkError> {
        let epoch = self.events.as_ref().map(|e| e.epoch()).unwrap_or(0);
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()));
        let previous = self.node_view.take();
        let view = match (previous, &self.events) {
            (Some((view, observed)), Some(events)) => match events.node_links_since(observed) {
                Some(changed) if changed.len() + touched.names.len() + touched.indexes.len() <= READ_ONE_BY_ONE => {
                    let addresses_changed = touched.addresses || events.stale(&[Scope::NodeAddresses], observed);
                    if changed.is_empty() && touched.is_empty() && !addresses_changed {
                        // Nothing to read again: the view as it was.
                        self.node_view = Some((view.clone(), epoch));
                        return Ok(view);
                    }
                    match self.read_again(view, &changed, &touched, addresses_changed).await {
                        #[cfg(debug_assertions)]
                        Ok(view) => self.checked(view, epoch).await,
                        #[cfg(not(debug_assertions))]
                        Ok(view) => view,
                        Err(e) => {
                            // What was touched is read again next time.
                            *self.touched.lock().unwrap_or_else(|e| e.into_inner()) = touched;
                            return Err(e);
                        }
                    }
                }
                _ => self.dump().await?,
            },
            _ => self.dump().await?,
        };
        self.node_view = Some((view.clone(), epoch));
        Ok(view)
    }

    /// Forgets the view: the next one is dumped.
    pub(super) fn forget_node_view(&mut self) {
        self.node_view = None;
    }

    async fn dump(&self) -> Result<NodeView, NetlinkError> {
        Ok(Arc::new((self.node.links().await?, self.node.addresses().await?)))
    }

    /// `view` with the links `changed` (by index) and `touched` read again,
    /// and the addresses if they changed.
    async fn read_again(
        &self,
        mut view: NodeView,
        changed: &[u32],
        touched: &Touched,
        addresses_changed: bool,
    ) -> Result<NodeView, NetlinkError> {
        let addresses = match addresses_changed {
            true => Some(self.node.addresses().await?),
            false => None,
        };
        // Updated in place unless a caller still holds the view (a thousand
        // links are not copied for the few that changed).
        let (links, held_addresses) = Arc::make_mut(&mut view);
        let mut fresh: Vec<Link> = Vec::new();
        for index in changed.iter().chain(&touched.indexes) {
            links.retain(|l| l.index != *index);
            fresh.extend(self.node.link(LinkId::Index(*index)).await?);
        }
        for name in &touched.names {
            links.retain(|l| &l.name != name);
            fresh.extend(self.node.link(LinkId::Name(name)).await?);
        }
        for link in fresh {
            // A link read twice (by index and by name) is kept once.
            links.retain(|l| l.index != link.index && l.name != link.name);
            links.push(link);
        }
        if let Some(addresses) = addresses {
            *held_addresses = addresses;
        }
        Ok(view)
    }

    /// Debug builds (the tests' agents) check a view read link by link
    /// against a dump, when no event came between the two.
    #[cfg(debug_assertions)]
    async fn checked(&self, view: NodeView, epoch: u64) -> NodeView {
        let Some(events) = &self.events else { return view };
        let Ok(dumped) = self.node.links().await else { return view };
        if events.any_since(epoch) {
            return view;
        }
        let sorted = |links: &[Link]| {
            let mut links = links.to_vec();
            links.sort_by_key(|l| l.index);
            links
        };
        if sorted(&view.0) != sorted(&dumped) {
            tracing::warn!(kept = ?sorted(&view.0), dumped = ?sorted(&dumped), "node view brought up to date differs from the kernel's links");
            return Arc::new((dumped, view.1.clone()));
        }
        view
    }
}
