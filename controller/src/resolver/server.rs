//! Sockets: a UDP and a TCP listener per gateway address, answers from the
//! current table, forwarding with a bounded timeout (over TCP to the
//! upstream when the client asked over TCP, so a big answer stays whole).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::answer::{answer, Reply, Transport};
use crate::plan::names::NameTable;

/// Per upstream try; with two upstreams a client waits at most ~2 s.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(900);
/// A TCP client that sends nothing for this long is hung up on (RFC 7766
/// suggests seconds); it bounds what idle connections can hold.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Query counters, for metrics.
#[derive(Default, Debug)]
pub struct DnsStats {
    pub local: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Asked by an address that is not a client of the network served there.
    pub refused: AtomicU64,
}

/// What every listener shares.
#[derive(Clone, Default)]
struct Shared {
    table: Arc<RwLock<Arc<NameTable>>>,
    node_resolvers: Arc<RwLock<Vec<IpAddr>>>,
    rotation: Arc<AtomicUsize>,
    stats: Arc<DnsStats>,
}

impl Shared {
    fn answer(&self, server: IpAddr, peer: IpAddr, packet: &[u8], transport: Transport) -> Reply {
        let table = self.table.read().expect("not poisoned").clone();
        answer(&table, server, peer, packet, self.rotation.fetch_add(1, Ordering::Relaxed), transport)
    }

    fn upstreams(&self, mut given: Vec<IpAddr>) -> Vec<IpAddr> {
        if given.is_empty() {
            given = self.node_resolvers.read().expect("not poisoned").clone();
        }
        given
    }
}

/// One address's UDP and TCP listeners.
struct Listener {
    udp: JoinHandle<()>,
    tcp: Option<JoinHandle<()>>,
}

impl Listener {
    fn abort(&self) {
        self.udp.abort();
        if let Some(tcp) = &self.tcp {
            tcp.abort();
        }
    }
}

pub struct DnsServer {
    shared: Shared,
    listeners: BTreeMap<IpAddr, Listener>,
    port: u16,
    pub stats: Arc<DnsStats>,
}

impl DnsServer {
    /// A server that listens on `port` (53) of the addresses it is given.
    pub fn new(port: u16) -> Self {
        let shared = Shared::default();
        DnsServer { stats: shared.stats.clone(), shared, listeners: BTreeMap::new(), port }
    }

    /// Swaps in a new table (live at once) and listens exactly on its
    /// addresses; an address that cannot be bound yet is retried next time.
    pub async fn update(&mut self, table: &Arc<NameTable>, node_resolvers: Vec<IpAddr>) {
        *self.shared.node_resolvers.write().expect("not poisoned") = node_resolvers;
        let current = self.shared.table.read().expect("not poisoned").clone();
        if !Arc::ptr_eq(&current, table) && *current != **table {
            // The replaced table is freed here, outside the lock.
            let _replaced = std::mem::replace(&mut *self.shared.table.write().expect("not poisoned"), table.clone());
        }
        self.listeners.retain(|addr, listener| {
            let keep = table.listen.contains_key(addr) && !listener.udp.is_finished();
            if !keep {
                listener.abort();
            }
            keep
        });
        for (addr, listener) in &mut self.listeners {
            if listener.tcp.as_ref().is_none_or(|t| t.is_finished()) {
                listener.tcp = listen_tcp(SocketAddr::new(*addr, self.port), &self.shared).await;
            }
        }
        for addr in table.listen.keys() {
            if self.listeners.contains_key(addr) {
                continue;
            }
            let at = SocketAddr::new(*addr, self.port);
            match UdpSocket::bind(at).await {
                Ok(socket) => {
                    // TCP is retried with the next update if it cannot bind
                    // yet: UDP, what most queries use, is not held back.
                    let tcp = listen_tcp(at, &self.shared).await;
                    tracing::info!(%addr, port = self.port, tcp = tcp.is_some(), "embedded DNS listening");
                    let udp = tokio::spawn(serve(Arc::new(socket), *addr, self.shared.clone()));
                    self.listeners.insert(*addr, Listener { udp, tcp });
                }
                Err(e) => tracing::warn!(%addr, error = %e, "embedded DNS cannot listen yet"),
            }
        }
    }
}

async fn listen_tcp(at: SocketAddr, shared: &Shared) -> Option<JoinHandle<()>> {
    match TcpListener::bind(at).await {
        Ok(listener) => Some(tokio::spawn(serve_tcp(listener, shared.clone()))),
        Err(e) => {
            tracing::warn!(addr = %at.ip(), error = %e, "embedded DNS cannot listen on TCP yet");
            None
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for listener in self.listeners.values() {
            listener.abort();
        }
    }
}

/// Answers on `socket`, bound to `server` (one network's gateway).
async fn serve(socket: Arc<UdpSocket>, server: IpAddr, shared: Shared) {
    let stats = &shared.stats;
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // e.g. ECONNREFUSED left by an ICMP error for an earlier reply.
                tracing::debug!(error = %e, "dns receive error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let packet = buf[..len].to_vec();
        let reply = shared.answer(server, peer.ip(), &packet, Transport::Udp);
        match reply {
            Reply::Answer(bytes) => {
                stats.local.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Refused(bytes) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Forward(upstreams) => {
                let upstreams = shared.upstreams(upstreams);
                let (socket, stats) = (socket.clone(), stats.clone());
                // Forwarding waits on the network: never block other queries.
                tokio::spawn(async move {
                    match forward(&packet, &upstreams).await {
                        Some(bytes) => {
                            stats.forwarded.fetch_add(1, Ordering::Relaxed);
                            let _ = socket.send_to(&bytes, peer).await;
                        }
                        None => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            if let Some(bytes) = servfail(&packet) {
                                let _ = socket.send_to(&bytes, peer).await;
                            }
                        }
                    }
                });
            }
        }
    }
}

/// One TCP client: length-prefixed queries (RFC 1035 4.2.2), answered in
/// order until it hangs up or idles.
async fn serve_tcp(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(server) = stream.local_addr() else { continue };
                tokio::spawn(serve_tcp_client(stream, server.ip(), peer.ip(), shared.clone()));
            }
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                tracing::debug!(error = %e, "dns accept error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_tcp_client(mut stream: TcpStream, server: IpAddr, peer: IpAddr, shared: Shared) {
    let stats = &shared.stats;
    while let Ok(Some(packet)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
        let bytes = match shared.answer(server, peer, &packet, Transport::Tcp) {
            Reply::Answer(bytes) => {
                stats.local.fetch_add(1, Ordering::Relaxed);
                bytes
            }
            Reply::Refused(bytes) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                bytes
            }
            Reply::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Reply::Forward(upstreams) => match forward_tcp(&packet, &shared.upstreams(upstreams)).await {
                Some(bytes) => {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    bytes
                }
                None => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    match servfail(&packet) {
                        Some(bytes) => bytes,
                        None => return,
                    }
                }
            },
        };
        if write_framed(&mut stream, &bytes).await.is_err() {
            return;
        }
    }
}

/// One length-prefixed message; None at a clean end of the stream.
async fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()?;
    let mut packet = vec![0u8; usize::from(len)];
    stream.read_exact(&mut packet).await.ok()?;
    Some(packet)
}

async fn write_framed(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(bytes.len()).map_err(|_| std::io::Error::other("a DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await
}

/// The query over TCP to each upstream in turn, each try bounded.
async fn forward_tcp(packet: &[u8], upstreams: &[IpAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams.iter().take(2) {
        let exchange = async {
            let mut stream = TcpStream::connect(SocketAddr::new(*upstream, 53)).await.ok()?;
            write_framed(&mut stream, packet).await.ok()?;
            read_framed(&mut stream).await
        };
        if let Ok(Some(bytes)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(bytes);
        }
    }
    None
}

/// Tries each upstream in turn, each with a bounded timeout.
async fn forward(packet: &[u8], upstreams: &[IpAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams.iter().take(2) {
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
        if sock.send_to(packet, SocketAddr::new(*upstream, 53)).await.is_err() {
            continue;
        }
        // As big as the client's EDNS0 size may let the upstream answer.
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        if let Ok(Ok((len, _))) = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv_from(&mut buf)).await {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let query = hickory_proto::op::Message::from_vec(packet).ok()?;
    let mut msg =
        hickory_proto::op::Message::error_msg(query.metadata.id, query.metadata.op_code, hickory_proto::op::ResponseCode::ServFail);
    msg.add_queries(query.queries.iter().cloned());
    msg.to_vec().ok()
}
