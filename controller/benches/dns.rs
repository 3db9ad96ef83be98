//! Embedded DNS throughput: queries per second answered locally, over
//! loopback (no root needed). `cargo bench --bench dns`.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use netlet::plan::names::{NameClient, NameTable};
use netlet::resolver::DnsServer;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let port = 25353;
    let mut table = NameTable::default();
    let records = table.records.entry("bench".into()).or_default();
    for i in 0..1000u32 {
        records.insert(format!("c{i}"), vec![IpAddr::from([10, 90, (i / 250) as u8, (i % 250) as u8 + 2])]);
    }
    records.insert("app".into(), (0..8).map(|i| IpAddr::from([10, 91, 0, i + 2])).collect());
    table.clients.insert("127.0.0.1".parse().unwrap(), NameClient { networks: vec!["bench".into()], upstreams: vec![] });
    table.listen.insert("127.0.0.1".parse().unwrap(), "bench".into());
    let mut server = DnsServer::new(port);
    rt.block_on(server.update(&std::sync::Arc::new(table), vec![]));
    // Clients in threads; the server runs on this thread's runtime.
    let duration = Duration::from_secs(3);
    let clients: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                sock.connect(("127.0.0.1", port)).unwrap();
                let mut buf = [0u8; 512];
                let (mut answered, mut i) = (0u64, 0u32);
                let started = Instant::now();
                while started.elapsed() < duration {
                    let mut m = Message::new((i % 65535) as u16, MessageType::Query, OpCode::Query);
                    let name = if i % 10 == 0 { "app.".to_string() } else { format!("c{}.", (i * 7 + t) % 1000) };
                    m.add_query(Query::query(Name::from_ascii(&name).unwrap(), RecordType::A));
                    sock.send(&m.to_vec().unwrap()).unwrap();
                    if sock.recv(&mut buf).is_ok() {
                        answered += 1;
                    }
                    i += 1;
                }
                answered
            })
        })
        .collect();
    rt.block_on(async { tokio::time::sleep(duration + Duration::from_millis(500)).await });
    let total: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let stats = &server.stats;
    println!(
        "embedded DNS: {:.0} queries/s answered (4 clients, 3 s; {} local answers, {} dropped)",
        total as f64 / duration.as_secs_f64(),
        stats.local.load(std::sync::atomic::Ordering::Relaxed),
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
    );
    // Its sockets belong to the runtime: drop it there.
    rt.block_on(async move { drop(server) });
}
