//! Kernel change notifications, each tied to what it is about.
//!
//! One rtnetlink socket in the node namespace hears links, addresses and
//! routes there and, with NETLINK_LISTEN_ALL_NSID, in every namespace that
//! has an id here (the dataplane gives each sandbox one), tagged with that
//! id; one netfilter socket hears ruleset changes. A thread of their own
//! reads them into the [`EventLog`]: every event advances the epoch and
//! stamps the [`Scope`] it is about with it. Whether an event was the
//! agent's own or someone else's is never guessed: a scope stamped after
//! an item was observed makes that item stale (see `realized`), and a
//! change of the agent's own costs a second look at what it changed.
//! Events that can mean drift (something removed, a link down) also wake
//! the agent at once. A bridge port's notice that only repeats the last
//! one (a bridge timer expired) is about nothing and stamps nothing.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage, LinkProtoInfoBridge};
use netlink_packet_route::nsid::NsidAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use netlink_sys::Socket;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::sync::Notify;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A link of the node namespace, by index.
    NodeLink(u32),
    /// Any address of the node namespace.
    NodeAddresses,
    /// Anything in another namespace, by its id in the node namespace.
    Namespace(i32),
    /// netlet's (or any) nftables ruleset.
    Ruleset,
}

/// Every scope's latest event, by epoch. Epochs count events from 1; an
/// observation made when the epoch was `e` has seen every event up to `e`.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    epoch: u64,
    /// Events were lost (a receive buffer overrun) at this epoch: nothing
    /// observed before it can be trusted.
    lost: u64,
    /// The watch ended: nothing can be trusted any more.
    dead: bool,
    node_links: HashMap<u32, u64>,
    node_addresses: u64,
    namespaces: HashMap<i32, u64>,
    ruleset: u64,
    /// Bridge port notices heard that only repeated the last one.
    repeats: u64,
}

impl Log {
    fn stamp(&mut self, scope: Scope) {
        self.epoch += 1;
        let epoch = self.epoch;
        match scope {
            Scope::NodeLink(index) => {
                self.node_links.insert(index, epoch);
            }
            Scope::NodeAddresses => self.node_addresses = epoch,
            Scope::Namespace(nsid) => {
                self.namespaces.insert(nsid, epoch);
            }
            Scope::Ruleset => self.ruleset = epoch,
        }
    }

    fn latest(&self, scope: Scope) -> u64 {
        match scope {
            Scope::NodeLink(index) => self.node_links.get(&index).copied().unwrap_or(0),
            Scope::NodeAddresses => self.node_addresses,
            Scope::Namespace(nsid) => self.namespaces.get(&nsid).copied().unwrap_or(0),
            Scope::Ruleset => self.ruleset,
        }
    }

    /// Whether what was observed at `epoch` may have changed in `scope`.
    fn stale(&self, scope: Scope, epoch: u64) -> bool {
        self.dead || self.lost > epoch || self.latest(scope) > epoch
    }
}

impl EventLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch now: read it before reading an item from the kernel.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether anything at all happened since `epoch` (or events were lost).
    pub fn any_since(&self, epoch: u64) -> bool {
        let log = self.lock();
        log.dead || log.lost > epoch || log.epoch > epoch
    }

    /// Whether any of `scopes` may have changed since `epoch`.
    pub fn stale(&self, scopes: &[Scope], epoch: u64) -> bool {
        let log = self.lock();
        scopes.iter().any(|s| log.stale(*s, epoch))
    }

    /// The node links with events since `epoch`; None when that cannot be
    /// told (events lost, the watch gone).
    pub fn node_links_since(&self, epoch: u64) -> Option<Vec<u32>> {
        let log = self.lock();
        if log.dead || log.lost > epoch {
            return None;
        }
        Some(log.node_links.iter().filter(|(_, e)| **e > epoch).map(|(index, _)| *index).collect())
    }

    /// Whether the log can no longer be trusted at all (the watch ended).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Records an event about `scope`.
    pub fn record(&self, scope: Scope) {
        self.lock().stamp(scope);
    }

    /// How many bridge port notices were heard that only repeated the
    /// port's last one (and stamped nothing).
    pub fn repeats_ignored(&self) -> u64 {
        self.lock().repeats
    }

    /// Records a bridge port notice that only repeated the last one.
    fn record_repeat(&self) {
        self.lock().repeats += 1;
    }

    /// Records that events may have been lost.
    pub(super) fn record_loss(&self) {
        let mut log = self.lock();
        log.epoch += 1;
        log.lost = log.epoch;
    }

    pub(super) fn record_death(&self) {
        self.lock().dead = true;
    }

    /// Drops what no observation made at `epoch` or later can need: the
    /// scopes whose last event came before it.
    pub fn forget_before(&self, epoch: u64) {
        let mut log = self.lock();
        log.node_links.retain(|_, e| *e > epoch);
        log.namespaces.retain(|_, e| *e > epoch);
    }
}

/// rtnetlink multicast groups: links, IPv4/IPv6 addresses and routes,
/// namespace ids.
const RTNL_GROUPS: [u32; 6] = [1, 5, 7, 9, 11, 28];
/// The nf_tables multicast group: every ruleset change, as `nft monitor`
/// shows them.
const NFNLGRP_NFTABLES: u32 = 7;
/// SOL_NETLINK and its NETLINK_LISTEN_ALL_NSID control message.
const SOL_NETLINK: i32 = 270;
const NETLINK_LISTEN_ALL_NSID: i32 = 8;
/// Room for a burst (a thousand namespaces made in one pass send some ten
/// thousand events); set with SO_RCVBUFFORCE, as root may.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Starts reading kernel events into `log` on threads of their own, and
/// wakes `wake` on what may be drift. Without the ruleset's events, its
/// drift is found by the periodic audit.
pub fn watch(log: Arc<EventLog>, wake: Arc<Notify>) -> std::io::Result<()> {
    let mut rtnl = Socket::new(NETLINK_ROUTE)?;
    rtnl.bind_auto()?;
    for group in RTNL_GROUPS {
        rtnl.add_membership(group)?;
    }
    rtnl.set_listen_all_namespaces(true)?;
    force_receive_buffer(&rtnl);
    // Read once subscribed, before any pass observes the node: a change
    // the reading already holds is one the first pass sees.
    let ports = BridgePorts::as_they_are();
    let (l, w) = (log.clone(), wake.clone());
    std::thread::Builder::new().name("kernel-events".into()).spawn(move || read_rtnl(rtnl, ports, &l, &w))?;
    let nft = Socket::new(NETLINK_NETFILTER).and_then(|mut s| {
        s.bind_auto()?;
        s.add_membership(NFNLGRP_NFTABLES)?;
        Ok(s)
    });
    match nft {
        Ok(nft) => {
            force_receive_buffer(&nft);
            std::thread::Builder::new().name("ruleset-events".into()).spawn(move || read_nft(nft, &log, &wake))?;
        }
        Err(e) => tracing::warn!(error = %e, "no nftables events; ruleset drift is found by the periodic audit"),
    }
    Ok(())
}

fn force_receive_buffer(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
}

/// One receive: the namespace id it came from (None: the node's own), and
/// how many bytes; Err(None) when events were lost.
fn receive(socket: &Socket, buffer: &mut [u8], control: &mut [u8]) -> Result<(Option<i32>, usize), Option<nix::errno::Errno>> {
    let mut iov = [IoSliceMut::new(buffer)];
    match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(control), MsgFlags::empty()) {
        Ok(message) => {
            let nsid = message.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::Unknown(u)
                        if u.cmsg_header.cmsg_level == SOL_NETLINK && u.cmsg_header.cmsg_type == NETLINK_LISTEN_ALL_NSID =>
                    {
                        Some(i32::from_ne_bytes(u.data_bytes.get(..4)?.try_into().ok()?))
                    }
                    _ => None,
                })
            });
            Ok((nsid, message.bytes))
        }
        Err(nix::errno::Errno::ENOBUFS) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

fn read_rtnl(socket: Socket, mut ports: BridgePorts, log: &EventLog, wake: &Notify) {
    let mut buffer = vec![0u8; 1 << 16];
    let mut control = nix::cmsg_space!(i32);
    loop {
        match receive(&socket, &mut buffer, &mut control) {
            Ok((nsid, len)) => {
                let mut drift = false;
                let mut offset = 0;
                while offset < len {
                    let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..len]) else {
                        // Not understood: about anything.
                        log.record_loss();
                        ports.forget();
                        drift = true;
                        break;
                    };
                    let length = message.header.length as usize;
                    if let NetlinkPayload::InnerMessage(m) = &message.payload {
                        tracing::trace!(event = ?EventSummary(m), ?nsid, "kernel event");
                        if nsid.is_none() && ports.repeats(m) {
                            log.record_repeat();
                        } else {
                            log.record(scope_of(m, nsid));
                            drift |= may_be_drift(m);
                        }
                    }
                    if length == 0 {
                        break;
                    }
                    offset += length;
                }
                if drift {
                    wake.notify_one();
                }
            }
            Err(None) => {
                tracing::debug!("kernel events were lost (receive buffer overrun); the next pass looks at everything");
                log.record_loss();
                ports.forget();
                wake.notify_one();
            }
            Err(Some(nix::errno::Errno::EINTR)) => {}
            Err(Some(e)) => {
                tracing::warn!(error = %e, "kernel event watch ended; every pass looks at everything from now on");
                log.record_death();
                wake.notify_one();
                return;
            }
        }
    }
}

/// The node's bridge ports, by link index, as their last bridge-family
/// notice described them, running state aside. A bridge sends a port's
/// notice again whenever one of its timers expires, changed or not: with
/// STP off, 15 s (the forward delay) after every port joined. Heard as
/// events, those would make every container's sandbox be read again for
/// nothing (a thousand at once, 15 s after a cold start). A real change
/// (hairpin, master, flags, MTU, any port setting) differs from the last
/// notice; one that only repeats it says nothing new. Each is kept as its
/// bytes (a few hundred, a parsed message takes kilobytes).
#[derive(Default)]
struct BridgePorts(HashMap<u32, Vec<u8>>);

/// What a port's notice reports of the bridge's own running state, which
/// no one sets: what spanning tree computes (designated root, bridge, port
/// and cost, IFLA_BRPORT_ROOT_ID to _DESIGNATED_COST; its topology change
/// flags, _TOPOLOGY_CHANGE_ACK and _CONFIG_PENDING; what is left of its
/// timers, _MESSAGE_AGE_TIMER to _HOLD_TIMER), and what multicast snooping
/// counts (_MCAST_EHT_HOSTS_CNT, _MCAST_N_GROUPS). Each can change without
/// a notice of its own: the bridge's id follows its lowest port MAC unless
/// set, a container joining a group changes the counts.
const PORT_RUNNING_STATE: [u16; 11] = [13, 14, 15, 16, 19, 20, 21, 22, 23, 38, 41];

impl BridgePorts {
    /// Every port's notice as the bridge would send it now (a dump of the
    /// bridge family, with the notices' VLAN filter): the timers of ports
    /// made before the watch began expire while it runs too. Unread, every
    /// port's first notice is news.
    fn as_they_are() -> Self {
        let started = std::time::Instant::now();
        let mut ports = BridgePorts::default();
        let mut request = LinkMessage::default();
        request.header.interface_family = AddressFamily::Bridge;
        request.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::BrvlanCompressed]));
        let read = super::dump::dump(NETLINK_ROUTE, RouteNetlinkMessage::GetLink(request), |reply| {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                ports.0.insert(link.header.index, without_running_state(&link));
            }
        });
        match read {
            Ok(()) => tracing::debug!(ports = ports.0.len(), took = ?started.elapsed(), "bridge ports read"),
            Err(e) => {
                tracing::debug!(error = %e, "bridge ports unread: each one's first notice counts as a change");
                ports.forget();
            }
        }
        ports
    }

    /// Whether `message`, heard in the node namespace, only repeats the
    /// last notice of its port; remembers it as the last one. Nothing else
    /// is a repeat.
    fn repeats(&mut self, message: &RouteNetlinkMessage) -> bool {
        match message {
            RouteNetlinkMessage::NewLink(link) if link.header.interface_family == AddressFamily::Bridge => {
                let last = self.0.insert(link.header.index, without_running_state(link));
                last.is_some_and(|last| self.0.get(&link.header.index) == Some(&last))
            }
            // Gone, or no longer a port: the next notice is news.
            RouteNetlinkMessage::DelLink(link) => {
                self.0.remove(&link.header.index);
                false
            }
            _ => false,
        }
    }

    /// Events were lost: any notice may be news.
    fn forget(&mut self) {
        self.0.clear();
    }
}

/// The bytes of a port's notice without its running state.
fn without_running_state(link: &LinkMessage) -> Vec<u8> {
    let mut notice = link.clone();
    for attribute in &mut notice.attributes {
        if let LinkAttribute::ProtoInfoBridge(port) = attribute {
            port.retain(|a| !matches!(a, LinkProtoInfoBridge::Other(nla) if PORT_RUNNING_STATE.contains(&nla.kind())));
        }
    }
    let mut bytes = vec![0; notice.buffer_len()];
    notice.emit(&mut bytes);
    bytes
}

/// Counts nf_tables changes on a netlink socket of our own, not through an
/// `nft monitor` child, which would outlive an agent killed with SIGKILL
/// and keep its namespace alive. Messages are not parsed: any one is a
/// change, and an overrun is many.
fn read_nft(socket: Socket, log: &EventLog, wake: &Notify) {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match socket.recv(&mut &mut buffer[..], 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "nftables event watch ended; ruleset drift is found by the periodic audit");
                return;
            }
        }
        log.record(Scope::Ruleset);
        wake.notify_one();
    }
}

/// The scope of one rtnetlink event heard in the namespace `nsid` (None:
/// the node's own).
fn scope_of(message: &RouteNetlinkMessage, nsid: Option<i32>) -> Scope {
    if let Some(nsid) = nsid {
        return Scope::Namespace(nsid);
    }
    match message {
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => Scope::NodeLink(l.header.index),
        // A namespace got or lost its id here (lost: it is gone).
        RouteNetlinkMessage::NewNsId(m) | RouteNetlinkMessage::DelNsId(m) => {
            let nsid = m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            });
            nsid.map(Scope::Namespace).unwrap_or(Scope::NodeAddresses)
        }
        // Addresses, and routes (which follow addresses and links, and
        // overlays' routes, checked with the node).
        _ => Scope::NodeAddresses,
    }
}

/// Something removed, or a link down: what drift looks like.
fn may_be_drift(message: &RouteNetlinkMessage) -> bool {
    match message {
        RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::DelAddress(_)
        | RouteNetlinkMessage::DelRoute(_)
        | RouteNetlinkMessage::DelNsId(_) => true,
        RouteNetlinkMessage::NewLink(link) => !link.header.flags.contains(LinkFlags::Up),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use netlink_packet_core::DefaultNla;

    use super::*;

    /// A bridge-family notice of port `index`: hairpin on or off, with
    /// `forward_delay` left on its timer (and as many multicast groups).
    fn port_notice(index: u32, hairpin: bool, forward_delay: u64) -> RouteNetlinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.interface_family = AddressFamily::Bridge;
        link.attributes = vec![
            LinkAttribute::IfName("nlv0".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::ProtoInfoBridge(vec![
                LinkProtoInfoBridge::Other(DefaultNla::new(4, vec![u8::from(hairpin)])),
                LinkProtoInfoBridge::Other(DefaultNla::new(22, forward_delay.to_ne_bytes().to_vec())),
                LinkProtoInfoBridge::Other(DefaultNla::new(41, (forward_delay as u32).to_ne_bytes().to_vec())),
            ]),
        ];
        RouteNetlinkMessage::NewLink(link)
    }

    #[test]
    fn a_port_notice_that_only_repeats_the_last_one_is_a_repeat() {
        let mut ports = BridgePorts::default();
        assert!(!ports.repeats(&port_notice(7, false, 1500)), "the first notice of a port is news");
        assert!(ports.repeats(&port_notice(7, false, 0)), "the same port, its timer run out, its group count changed");
        assert!(!ports.repeats(&port_notice(7, true, 0)), "hairpin turned on");
        assert!(!ports.repeats(&port_notice(7, false, 0)), "and off again");
        assert!(!ports.repeats(&port_notice(8, false, 0)), "another port's first notice");

        let RouteNetlinkMessage::NewLink(link) = port_notice(7, false, 0) else { unreachable!() };
        assert!(!ports.repeats(&RouteNetlinkMessage::DelLink(link.clone())), "a deletion is never a repeat");
        assert!(!ports.repeats(&port_notice(7, false, 0)), "after the deletion, the port is new");

        let mut unspec = link;
        unspec.header.interface_family = AddressFamily::Unspec;
        let unspec = RouteNetlinkMessage::NewLink(unspec);
        assert!(!ports.repeats(&unspec) && !ports.repeats(&unspec), "only bridge-family notices repeat");

        ports.forget();
        assert!(!ports.repeats(&port_notice(8, false, 0)), "after a loss, every notice is news");
    }
}
