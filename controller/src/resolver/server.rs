//! Sockets: one UDP listener per gateway address, answers from the current
//! table, forwarding with a bounded timeout.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::answer::{answer, Reply};
use crate::plan::names::NameTable;

/// Per upstream try; with two upstreams a client waits at most ~2 s.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(900);

/// Query counters, for metrics.
#[derive(Default, Debug)]
pub struct DnsStats {
    pub local: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct DnsServer {
    table: Arc<RwLock<Arc<NameTable>>>,
    node_resolvers: Arc<RwLock<Vec<IpAddr>>>,
    listeners: BTreeMap<IpAddr, JoinHandle<()>>,
    port: u16,
    rotation: Arc<AtomicUsize>,
    pub stats: Arc<DnsStats>,
}

impl DnsServer {
    /// A server that listens on `port` (53) of the addresses it is given.
    pub fn new(port: u16) -> Self {
        DnsServer {
            table: Arc::default(),
            node_resolvers: Arc::default(),
            listeners: BTreeMap::new(),
            port,
            rotation: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Swaps in a new table (live at once) and listens exactly on its
    /// addresses; an address that cannot be bound yet is retried next time.
    pub async fn update(&mut self, table: &Arc<NameTable>, node_resolvers: Vec<IpAddr>) {
        *self.node_resolvers.write().expect("not poisoned") = node_resolvers;
        let current = self.table.read().expect("not poisoned").clone();
        if !Arc::ptr_eq(&current, table) && *current != **table {
            // The replaced table is freed here, outside the lock.
            let _replaced = std::mem::replace(&mut *self.table.write().expect("not poisoned"), table.clone());
        }
        self.listeners.retain(|addr, task| {
            let keep = table.listen.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in &table.listen {
            if self.listeners.contains_key(addr) {
                continue;
            }
            match UdpSocket::bind(SocketAddr::new(*addr, self.port)).await {
                Ok(socket) => {
                    tracing::info!(%addr, port = self.port, "embedded DNS listening");
                    let task = tokio::spawn(serve(
                        Arc::new(socket),
                        self.table.clone(),
                        self.node_resolvers.clone(),
                        self.rotation.clone(),
                        self.stats.clone(),
                    ));
                    self.listeners.insert(*addr, task);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "embedded DNS cannot listen yet"),
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

async fn serve(
    socket: Arc<UdpSocket>,
    table: Arc<RwLock<Arc<NameTable>>>,
    resolvers: Arc<RwLock<Vec<IpAddr>>>,
    rotation: Arc<AtomicUsize>,
    stats: Arc<DnsStats>,
) {
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
        let reply = {
            let table = table.read().expect("not poisoned").clone();
            answer(&table, peer.ip(), &packet, rotation.fetch_add(1, Ordering::Relaxed))
        };
        match reply {
            Reply::Answer(bytes) => {
                stats.local.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Forward(mut upstreams) => {
                if upstreams.is_empty() {
                    upstreams = resolvers.read().expect("not poisoned").clone();
                }
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

/// Tries each upstream in turn, each with a bounded timeout.
async fn forward(packet: &[u8], upstreams: &[IpAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams.iter().take(2) {
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
        if sock.send_to(packet, SocketAddr::new(*upstream, 53)).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
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
