//! Responsiveness while a big pass runs (root): `cargo bench --bench
//! applying`. A running agent serves DNS to one container and /healthz to
//! the node; then 1,000 attachments (NETLET_BENCH_N) are written at once.
//! Until every one is Ready in the status file, a client in the container
//! asks the embedded DNS for a name every 5 ms and a prober asks /healthz
//! every 20 ms, each waiting up to a second for the answer. Prints the
//! latency distributions (a query unanswered within a second counts as a
//! second) and writes target/bench-applying.json. NETLET_BENCH_AGENT runs
//! another build of the agent (an earlier one, to compare).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn agent_binary() -> String {
    std::env::var("NETLET_BENCH_AGENT").unwrap_or_else(|_| env!("CARGO_BIN_EXE_netlet").into())
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn attachment(name: &str, netns: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: bench, sandbox: {{netns: {netns}}}}}\n")
}

/// Runs `f` on a thread of its own switched into the namespace `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = fs::File::open(path).expect("the namespace exists");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Latencies in ms, every `every` until `stop`, of `probe` (None: no
/// answer within its timeout).
fn probe_until(stop: &AtomicBool, every: Duration, mut probe: impl FnMut() -> Option<Duration>) -> Vec<f64> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        out.push(probe().map(|d| d.as_secs_f64() * 1e3).unwrap_or(1000.0));
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
    out
}

#[derive(serde::Serialize)]
struct Distribution {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    unanswered: usize,
}

fn distribution(mut ms: Vec<f64>) -> Distribution {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    Distribution {
        count: ms.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        unanswered: ms.iter().filter(|m| **m >= 1000.0).count(),
    }
}

/// How many attachments the status file lists Ready.
fn ready_attachments(status: &PathBuf) -> usize {
    #[derive(serde::Deserialize)]
    struct Entry {
        kind: String,
        status: Option<EntryStatus>,
    }
    #[derive(serde::Deserialize)]
    struct EntryStatus {
        #[serde(default)]
        phase: String,
    }
    let Some(entries) = fs::read_to_string(status).ok().and_then(|t| serde_json::from_str::<Vec<Entry>>(&t).ok()) else { return 0 };
    entries.iter().filter(|e| e.kind == "Attachment" && e.status.as_ref().is_some_and(|s| s.phase == "Ready")).count()
}

#[derive(serde::Serialize)]
struct Result {
    attachments: usize,
    apply_to_ready_ms: f64,
    dns: Distribution,
    healthz: Distribution,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the applying benchmark needs root (it builds throwaway network namespaces)");
    let n: usize = std::env::var("NETLET_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let tag = format!("nlap{}", std::process::id() % 10000);
    let node = format!("{tag}-node");
    let dir = std::env::temp_dir().join(&tag);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("manifests")).unwrap();
    sh(&format!("ip netns add {node} && ip -n {node} link set lo up"));
    let client = format!("{tag}-client");
    fs::write(
        dir.join("manifests/base.yaml"),
        format!(
            "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: bench}}\nspec:\n  bridge: {{name: nlap0}}\n  ipam: {{config: [{{subnet: 10.241.0.0/16}}]}}\n{}",
            attachment("client", &client)
        ),
    )
    .unwrap();
    let mut agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg(agent_binary())
        .args(["run", "--manifests"])
        .arg(dir.join("manifests"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--node-name", "bench", "--metrics-addr", "127.0.0.1:9464"])
        .env("RUST_LOG", std::env::var("NETLET_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let status = dir.join("state/status.json");
    let started = Instant::now();
    while ready_attachments(&status) < 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "the client never became Ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));

    let stop = Arc::new(AtomicBool::new(false));
    let dns = {
        let stop = stop.clone();
        in_netns(&client, move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            socket.connect("10.241.0.1:53").unwrap();
            let mut id = 0u16;
            probe_until(&stop, Duration::from_millis(5), || {
                id = id.wrapping_add(1);
                let mut m = Message::new(id, MessageType::Query, OpCode::Query);
                m.add_query(Query::query(Name::from_ascii("client.").unwrap(), RecordType::A));
                let started = Instant::now();
                socket.send(&m.to_vec().unwrap()).ok()?;
                let mut buf = [0u8; 512];
                // An answer to an earlier, timed-out query is not this one's.
                loop {
                    let len = socket.recv(&mut buf).ok()?;
                    if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        return Some(started.elapsed());
                    }
                }
            })
        })
    };
    let healthz = {
        let stop = stop.clone();
        in_netns(&node, move || {
            let addr = SocketAddr::from(([127, 0, 0, 1], 9464));
            probe_until(&stop, Duration::from_millis(20), || {
                let started = Instant::now();
                let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
                let mut response = String::new();
                stream.read_to_string(&mut response).ok()?;
                response.starts_with("HTTP/1.0 200").then(|| started.elapsed())
            })
        })
    };
    // Let the probes run a moment on an idle agent first.
    std::thread::sleep(Duration::from_millis(300));
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&attachment(&format!("a{i}"), &format!("{tag}-{i}")));
    }
    let written = Instant::now();
    fs::write(dir.join("manifests/many.yaml"), yaml).unwrap();
    while ready_attachments(&status) < n + 1 {
        assert!(written.elapsed() < Duration::from_secs(600), "the attachments never became Ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let apply = written.elapsed();
    stop.store(true, Ordering::Relaxed);
    let result = Result {
        attachments: n,
        apply_to_ready_ms: apply.as_secs_f64() * 1e3,
        dns: distribution(dns.join().unwrap()),
        healthz: distribution(healthz.join().unwrap()),
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait();
    println!("{n} attachments applied to Ready in {:.0} ms while probing", result.apply_to_ready_ms);
    for (what, d) in [("DNS (every 5 ms)", &result.dns), ("/healthz (every 20 ms)", &result.healthz)] {
        println!(
            "  {what:<24} {:>6} answers  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  unanswered {}",
            d.count, d.p50_ms, d.p99_ms, d.max_ms, d.unanswered
        );
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-applying.json");
    fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("results: {}", out.display());

    // Clean up: through the agent (an empty manifest set), then our namespaces.
    fs::remove_file(dir.join("manifests/many.yaml")).unwrap();
    fs::remove_file(dir.join("manifests/base.yaml")).unwrap();
    let _ = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg(agent_binary())
        .args(["run", "--once", "--metrics-addr", "off", "--manifests"])
        .arg(dir.join("manifests"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--node-name", "bench"])
        .output();
    let leftovers: Vec<String> =
        sh("ip netns list").lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(&tag)).map(String::from).collect();
    for ns in leftovers {
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = fs::remove_dir_all(format!("/etc/netns/{ns}"));
    }
    let _ = fs::remove_dir_all(&dir);
}
