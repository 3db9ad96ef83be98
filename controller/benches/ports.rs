//! Published-port benchmark (root): TCP connection rate through a published
//! port with 1 and with 1,000 mappings installed, and the time to apply the
//! ruleset for 1,000 mappings and for one more (or one less) on top.
//! `cargo bench --bench ports`; writes target/bench-ports.json.

use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlet::api::Protocol;
use netlet::dataplane::firewall::NftFirewall;
use netlet::plan::desired::{FirewallNetwork, FirewallPlan, PublishedPort};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn plan(mappings: usize) -> FirewallPlan {
    let mut p = FirewallPlan::default();
    p.networks.push(FirewallNetwork {
        overlay_device: None,
        name: "bench".into(),
        bridge: "nlbp0".into(),
        subnets: vec!["10.242.0.0/24".parse().unwrap()],
        icc: true,
        masquerade: true,
        internal: false,
    });
    for i in 0..mappings {
        let (host_port, container_port) = if i == 0 { (8080, 80) } else { (20000 + i as u16, 10000 + i as u16) };
        p.ports.push(PublishedPort {
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port,
            container_ip: "10.242.0.2".parse::<IpAddr>().unwrap(),
            container_port,
            bridge: "nlbp0".into(),
        });
    }
    p
}

/// Connections per second from the remote host through node:8080.
fn rate(remote: &str) -> f64 {
    let script = "import socket,time\nn=3000\nt=time.time()\nfor i in range(n):\n  s=socket.create_connection(('10.251.0.1',8080),timeout=2)\n  s.recv(16)\n  s.close()\nprint(n/(time.time()-t))\n";
    sh(&format!("ip netns exec {remote} python3 -c \"{script}\"")).trim().parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the ports benchmark needs root");
    let tag = format!("nlp{}", std::process::id() % 10000);
    let (node, remote, c) = (format!("{tag}node"), format!("{tag}rem"), format!("{tag}c"));
    sh(&format!(
        "ip netns add {node} && ip netns add {remote} && ip netns add {c} && ip -n {node} link set lo up && \
         ip -n {node} link add nlbp0 type bridge && ip -n {node} addr add 10.242.0.1/24 dev nlbp0 && ip -n {node} link set nlbp0 up && \
         ip link add {tag}v netns {node} type veth peer name eth0 netns {c} && ip -n {node} link set {tag}v master nlbp0 up && \
         ip -n {c} addr add 10.242.0.2/24 dev eth0 && ip -n {c} link set eth0 up && ip -n {c} link set lo up && ip -n {c} route add default via 10.242.0.1 && \
         ip link add {tag}u netns {node} type veth peer name eth0 netns {remote} && ip -n {node} addr add 10.251.0.1/24 dev {tag}u && ip -n {node} link set {tag}u up && \
         ip -n {remote} addr add 10.251.0.2/24 dev eth0 && ip -n {remote} link set eth0 up && ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1"
    ));
    let server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',80))\ns.listen(512)\nwhile True:\n  c,a=s.accept()\n  c.sendall(b'ok')\n  c.close()\n";
    let mut srv = Command::new("ip").args(["netns", "exec", &c, "python3", "-c", server]).stdout(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The firewall runs in the node namespace: enter it for the rest.
    let ns = File::open(format!("/run/netns/{node}")).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let mut fw = NftFirewall::new();
    // Ruleset costs.
    fw.sync(&plan(1)).unwrap();
    let started = Instant::now();
    fw.sync(&plan(1000)).unwrap();
    let apply_1000 = started.elapsed();
    // One mapping added, then removed, with 1,000 in place: medians of 21.
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let started = Instant::now();
        fw.sync(&plan(1001)).unwrap();
        adds.push(started.elapsed());
        let started = Instant::now();
        fw.sync(&plan(1000)).unwrap();
        removes.push(started.elapsed());
    }
    adds.sort();
    removes.sort();
    let (apply_one_more, apply_one_less) = (adds[10], removes[10]);
    fw.sync(&plan(1001)).unwrap();
    let started = Instant::now();
    let in_sync = fw.sync(&plan(1001)).unwrap();
    let check_in_sync = started.elapsed();
    // Connection rates, alternating the two rulesets (1000 first, so any
    // slowdown from connections piling up in TIME_WAIT/conntrack hits the
    // single-mapping runs, not the ones under test), best of each.
    let (mut rate_1, mut rate_1000) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        fw.sync(&plan(1001)).unwrap();
        rate_1000 = rate_1000.max(rate(&remote));
        fw.sync(&plan(1)).unwrap();
        rate_1 = rate_1.max(rate(&remote));
    }

    let _ = srv.kill();
    let _ = srv.wait();
    let _ = fw.remove();
    for n in [&node, &remote, &c] {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let diff = (rate_1000 - rate_1) / rate_1 * 100.0;
    println!("connections/s through a published port: 1 mapping {rate_1:.0}, 1000 mappings {rate_1000:.0} ({diff:+.1}%)");
    println!(
        "apply 1000 mappings: {:.1} ms; one more on 1000: {:.1} ms, one less: {:.1} ms (medians of 21); in-sync check: {:.1} ms ({in_sync:?})",
        apply_1000.as_secs_f64() * 1e3,
        apply_one_more.as_secs_f64() * 1e3,
        apply_one_less.as_secs_f64() * 1e3,
        check_in_sync.as_secs_f64() * 1e3
    );
    let json = format!(
        "{{\"rate_1\": {rate_1:.1}, \"rate_1000\": {rate_1000:.1}, \"rate_diff_percent\": {diff:.2}, \"apply_1000_ms\": {:.2}, \"apply_one_more_ms\": {:.2}, \"apply_one_less_ms\": {:.2}, \"in_sync_check_ms\": {:.2}}}\n",
        apply_1000.as_secs_f64() * 1e3,
        apply_one_more.as_secs_f64() * 1e3,
        apply_one_less.as_secs_f64() * 1e3,
        check_in_sync.as_secs_f64() * 1e3
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-ports.json");
    File::create(&out).unwrap().write_all(json.as_bytes()).unwrap();
}
