//! Kernel change notifications in the node namespace: a link or address
//! that disappears (or a link that goes down) wakes the reconciler at once
//! instead of at the next resync. Our own changes wake it too; the pass
//! that follows finds the node in sync and changes nothing.

use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;

/// Subscribes to link and address events; pokes `wake` on the ones that
/// can mean drift. Needs a tokio runtime context.
pub fn watch(wake: Arc<Notify>) -> std::io::Result<()> {
    let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr, MulticastGroup::Ipv4Route];
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let drift = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => !link.header.flags.contains(LinkFlags::Up),
                _ => false,
            };
            if drift {
                wake.notify_one();
            }
        }
    });
    Ok(())
}
