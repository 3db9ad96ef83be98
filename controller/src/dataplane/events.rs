//! Kernel change notifications: what lets an in-sync node be left alone.
//!
//! One rtnetlink multicast socket in the node namespace, with
//! NETLINK_LISTEN_ALL_NSID so it also hears every sandbox that has a
//! namespace id here (each veth or macvlan peer gives its sandbox one), and
//! one netfilter netlink socket for ruleset changes. Every event bumps a
//! counter; events that can mean drift (a link, address or route removed,
//! a link down) also wake the reconciler at once. A pass that sees the
//! counter unchanged since the end of the previous pass, with the same
//! desired state, can skip observing what it verified before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;

/// Counts kernel events seen so far.
#[derive(Clone, Default)]
pub struct EventCounter(Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>);

impl EventCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    /// The link watcher stopped: no quiet period can be trusted any more.
    pub fn is_dead(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }
    fn died(&self) {
        self.1.store(true, Ordering::SeqCst);
    }
}

/// Starts both watchers. Needs a tokio runtime context. The nft watcher is
/// best effort: without it, ruleset drift is found by the periodic full pass.
pub fn watch(wake: Arc<Notify>) -> std::io::Result<EventCounter> {
    let counter = EventCounter::default();
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    conn.socket_mut().socket_mut().set_listen_all_namespaces(true)?;
    tokio::spawn(conn);
    let (c, w) = (counter.clone(), wake.clone());
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            c.bump();
            if let NetlinkPayload::InnerMessage(m) = &msg.payload {
                tracing::trace!(event = ?EventSummary(m), "kernel event");
            }
            let drift = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => !link.header.flags.contains(LinkFlags::Up),
                _ => false,
            };
            if drift {
                w.notify_one();
            }
        }
        tracing::warn!("kernel event watch ended; every pass is a full one from now on");
        c.died();
        w.notify_one();
    });
    if let Err(e) = watch_nftables(counter.clone(), wake) {
        tracing::warn!(error = %e, "no nftables events; ruleset drift is found by the periodic full pass");
    }
    Ok(counter)
}

/// The nf_tables multicast group: every ruleset change, as `nft monitor`
/// shows them.
const NFNLGRP_NFTABLES: u32 = 7;

/// Counts nf_tables changes on a netlink socket of our own, not through an
/// `nft monitor` child, which would outlive an agent killed with SIGKILL
/// and keep its namespace alive. Messages are not parsed: any one is a
/// change, and a receive buffer overrun (ENOBUFS) is many.
fn watch_nftables(counter: EventCounter, wake: Arc<Notify>) -> std::io::Result<()> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_mut().add_membership(NFNLGRP_NFTABLES)?;
    tokio::spawn(async move {
        loop {
            match socket.recv_from_full().await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "nftables event watch ended; ruleset drift is found by the periodic full pass");
                    return;
                }
            }
            counter.bump();
            wake.notify_one();
        }
    });
    Ok(())
}

/// One line of an event for trace logs: its kind and the object it is about.
struct EventSummary<'a>(&'a RouteNetlinkMessage);

impl std::fmt::Debug for EventSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                let name = l.attributes.iter().find_map(|a| match a {
                    netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.as_str()),
                    _ => None,
                });
                write!(f, "{} index {} {:?} flags {:?}", self.kind(), l.header.index, name.unwrap_or("?"), l.header.flags)
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                write!(f, "{} on index {}", self.kind(), a.header.index)
            }
            other => write!(f, "{}", EventSummary(other).kind()),
        }
    }
}

impl EventSummary<'_> {
    fn kind(&self) -> &'static str {
        match self.0 {
            RouteNetlinkMessage::NewLink(_) => "new link",
            RouteNetlinkMessage::DelLink(_) => "deleted link",
            RouteNetlinkMessage::NewAddress(_) => "new address",
            RouteNetlinkMessage::DelAddress(_) => "deleted address",
            RouteNetlinkMessage::NewRoute(_) => "new route",
            RouteNetlinkMessage::DelRoute(_) => "deleted route",
            _ => "other",
        }
    }
}
