//! Published ports at `[::1]`, the node's IPv6 loopback, as at 127.0.0.1.
//!
//! NAT cannot do it: IPv6 has no `route_localnet`, so a packet from ::1
//! DNATed to a container is dropped before it leaves the node (checked on
//! this kernel), and an IPv4-only container cannot be reached from an
//! IPv6 address by NAT at all. Docker serves these with its userland
//! proxy; so does the running agent: for every port published on all
//! addresses (or on `::1` itself), it listens on `[::1]:PORT` in the node
//! namespace and relays TCP connections and UDP flows to the container.
//! The nft output chain leaves `::1` alone so that these sockets see it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::api::Protocol;
use crate::plan::desired::PublishedPort;

/// A UDP flow without traffic this long is forgotten (conntrack's UDP
/// stream timeout is 120 s, a single exchange's 30 s).
const UDP_IDLE: Duration = Duration::from_secs(30);

/// What one listener relays: protocol and port on ::1 -> container.
type Route = (Protocol, u16, SocketAddr);

/// The relays, run on the agent's runtime: they keep relaying while a pass
/// holds the reconciler's thread.
pub struct LoopbackProxy {
    runtime: tokio::runtime::Handle,
    listeners: BTreeMap<Route, JoinHandle<()>>,
}

/// The relays the plan's published ports ask for, sorted.
fn routes(ports: &[PublishedPort]) -> Vec<Route> {
    let mut routes: Vec<Route> = ports
        .iter()
        .filter(|p| p.protocol != Protocol::Sctp)
        .filter(|p| p.host_ip.is_none_or(|ip| ip.is_unspecified() || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)))
        .map(|p| (p.protocol, p.host_port, SocketAddr::new(p.container_ip, p.container_port)))
        .collect();
    routes.sort();
    // One listener per protocol and port, as nft keeps the first mapping.
    routes.dedup_by_key(|(proto, port, _)| (*proto, *port));
    routes
}

impl LoopbackProxy {
    /// Relays on `runtime` (the agent's).
    pub fn new(runtime: tokio::runtime::Handle) -> LoopbackProxy {
        LoopbackProxy { runtime, listeners: BTreeMap::new() }
    }

    /// Listens exactly for `ports`; a port that cannot be bound yet (held
    /// by a process of the node) is retried at the next update.
    pub fn update(&mut self, ports: &[PublishedPort]) {
        let wanted = routes(ports);
        self.listeners.retain(|route, task| {
            // `wanted` is sorted: a lookup per relay, not a scan (a thousand
            // relays made this a million comparisons on every pass).
            let keep = wanted.binary_search(route).is_ok() && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for route in wanted {
            if self.listeners.contains_key(&route) {
                continue;
            }
            let (protocol, port, target) = route;
            let at = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
            // Bound here, so that a port in use is known at once; served there.
            let task = match protocol {
                Protocol::Tcp => std::net::TcpListener::bind(at).and_then(|l| l.set_nonblocking(true).map(|()| l)).map(|l| {
                    self.runtime.spawn(async move {
                        match TcpListener::from_std(l) {
                            Ok(l) => relay_tcp(l, target).await,
                            Err(e) => tracing::warn!(%at, error = %e, "cannot relay [::1]"),
                        }
                    })
                }),
                Protocol::Udp => std::net::UdpSocket::bind(at).and_then(|s| s.set_nonblocking(true).map(|()| s)).map(|s| {
                    self.runtime.spawn(async move {
                        match UdpSocket::from_std(s) {
                            Ok(s) => relay_udp(Arc::new(s), target).await,
                            Err(e) => tracing::warn!(%at, error = %e, "cannot relay [::1]"),
                        }
                    })
                }),
                Protocol::Sctp => continue,
            };
            match task {
                Ok(task) => {
                    tracing::debug!(%at, %target, protocol = protocol.as_str(), "relaying [::1]");
                    self.listeners.insert(route, task);
                }
                Err(e) => tracing::warn!(%at, error = %e, "cannot publish on [::1] yet"),
            }
        }
    }
}

impl LoopbackProxy {
    /// Whether a socket the node lists is one of these relays (the agent's
    /// own: no process stands in a published port's way there).
    pub fn holds(&self, (protocol, ip, port): &(Protocol, IpAddr, u16)) -> bool {
        // One listener per protocol and port: the first route at or after
        // the lowest target of that port (a lookup: the node lists them all).
        let lowest = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        *ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
            && self.listeners.range((*protocol, *port, lowest)..).next().is_some_and(|((p, hp, _), _)| p == protocol && hp == port)
    }
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        self.listeners.values().for_each(JoinHandle::abort);
    }
}

async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

/// One socket towards the container per client address, replies relayed
/// back until the flow idles.
async fn relay_udp(socket: Arc<UdpSocket>, target: SocketAddr) {
    let mut flows: BTreeMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = BTreeMap::new();
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else { continue };
        flows.retain(|_, (_, task)| !task.is_finished());
        let upstream = match flows.entry(client) {
            std::collections::btree_map::Entry::Occupied(flow) => flow.get().0.clone(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let bind: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
                let Ok(upstream) = UdpSocket::bind(bind).await else { continue };
                if upstream.connect(target).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                let task = tokio::spawn(replies(upstream.clone(), socket.clone(), client));
                slot.insert((upstream.clone(), task));
                upstream
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}

async fn replies(upstream: Arc<UdpSocket>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    while let Ok(Ok(len)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = socket.send_to(&buf[..len], client).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(protocol: Protocol, host_ip: Option<&str>, host_port: u16, container: &str) -> PublishedPort {
        PublishedPort {
            protocol,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            host_port,
            container_ip: container.parse().unwrap(),
            container_port: 80,
            bridge: "br1".into(),
        }
    }

    #[test]
    fn only_ports_published_on_every_address_or_on_loopback6_are_relayed() {
        let ports = [
            port(Protocol::Tcp, None, 8080, "172.25.0.2"),
            port(Protocol::Udp, Some("0.0.0.0"), 8053, "172.25.0.2"),
            port(Protocol::Tcp, Some("::1"), 8081, "fd00::2"),
            port(Protocol::Tcp, Some("127.0.0.1"), 8082, "172.25.0.2"),
            port(Protocol::Tcp, Some("10.0.0.1"), 8083, "172.25.0.2"),
            port(Protocol::Sctp, None, 3868, "172.25.0.2"),
            // The same port on another address: one listener.
            port(Protocol::Tcp, Some("::"), 8080, "172.25.0.3"),
        ];
        let got: Vec<String> = routes(&ports).iter().map(|(p, port, t)| format!("{} {port} {t}", p.as_str())).collect();
        assert_eq!(got, ["tcp 8080 172.25.0.2:80", "tcp 8081 [fd00::2]:80", "udp 8053 172.25.0.2:80"]);
    }

    #[tokio::test]
    async fn an_update_keeps_the_relays_still_published_and_stops_the_others() {
        let mut proxy = LoopbackProxy::new(tokio::runtime::Handle::current());
        let protocol = |i: u16| if i.is_multiple_of(2) { Protocol::Tcp } else { Protocol::Udp };
        let published: Vec<PublishedPort> = (0..40).rev().map(|i| port(protocol(i), None, 9000 + i, "10.0.0.2")).collect();
        let mut relays = Vec::new();
        for route in routes(&published) {
            let task = tokio::spawn(std::future::pending::<()>());
            relays.push((route.1, task.abort_handle()));
            proxy.listeners.insert(route, task);
        }
        // Every third port is unpublished. The rest are relayed already,
        // so nothing is bound here.
        let kept: Vec<PublishedPort> = published.iter().filter(|p| !p.host_port.is_multiple_of(3)).cloned().collect();
        proxy.update(&kept);
        tokio::task::yield_now().await;
        for (port, relay) in &relays {
            let held = proxy.listeners.keys().any(|(_, p, _)| p == port);
            assert_eq!(held, !port.is_multiple_of(3), "port {port}");
            assert_eq!(relay.is_finished(), !held, "port {port}: a relay kept runs on, one dropped is stopped");
        }
    }

    #[tokio::test]
    async fn the_agents_own_relays_are_found_by_protocol_and_port() {
        let mut proxy = LoopbackProxy::new(tokio::runtime::Handle::current());
        for (protocol, port, target) in
            [(Protocol::Tcp, 8080, "10.0.0.2:80"), (Protocol::Tcp, 8081, "[fd00::2]:80"), (Protocol::Udp, 8080, "10.0.0.3:53")]
        {
            proxy.listeners.insert((protocol, port, target.parse().unwrap()), tokio::spawn(async {}));
        }
        let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(proxy.holds(&(Protocol::Tcp, lo6, 8080)));
        assert!(proxy.holds(&(Protocol::Tcp, lo6, 8081)));
        assert!(proxy.holds(&(Protocol::Udp, lo6, 8080)));
        assert!(!proxy.holds(&(Protocol::Udp, lo6, 8081)));
        assert!(!proxy.holds(&(Protocol::Tcp, lo6, 8079)));
        assert!(!proxy.holds(&(Protocol::Tcp, "127.0.0.1".parse().unwrap(), 8080)), "relays listen at [::1] only");
    }
}
