//! The plugin alone, as a pod's start pays for it: exec of `netlet-cni`
//! plus one round trip over the agent's socket (the agent's own server,
//! with a consumer that answers at once). 1,000 chained ADDs, each a fresh
//! process as the runtime makes it, against 1,000 VERSIONs (exec alone, no
//! socket). No root needed. `cargo bench --bench cni` prints a table and
//! writes target/bench-cni.json.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlet::cni::{pass_through, CniSocket};
use serde_json::json;
use tokio::sync::mpsc;

const PLUGIN: &str = env!("CARGO_BIN_EXE_netlet-cni");
const RUNS: usize = 1000;

/// One invocation, timed from spawn to exit, its output checked.
fn invoke(command: &str, config: &[u8]) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "5f1e0c0ffee"),
            ("CNI_NETNS", "/var/run/netns/cni-bench"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=web-0;K8S_POD_UID=9d1f"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // VERSION exits without reading: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(config);
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success() && !out.stdout.is_empty(), "{command}: {}", String::from_utf8_lossy(&out.stdout));
    took
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: *samples.last().unwrap() }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn target_dir() -> PathBuf {
    // target/release/deps/cni-HASH -> target
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("netlet-cni-bench-{}", std::process::id()));
    let socket_path = dir.join("run/cni.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let socket = CniSocket::bind(&socket_path).unwrap();
    let (calls, consumer) = mpsc::channel(netlet::cni::CALL_QUEUE);
    runtime.spawn(socket.serve(calls));
    runtime.spawn(pass_through(consumer));

    let prev = json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0", "mac": "6e:2b:00:00:00:01"}, {"name": "veth0a", "mac": "6e:2b:00:00:00:02"},
                       {"name": "eth0", "mac": "6e:2b:00:00:00:03", "sandbox": "/var/run/netns/cni-bench"}],
        "ips": [{"version": "4", "interface": 2, "address": "10.88.0.7/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
    let config = json!({"cniVersion": "0.4.0", "name": "primary", "type": "netlet-cni", "socket": socket_path, "prevResult": prev});
    let config = serde_json::to_vec(&config).unwrap();

    for _ in 0..20 {
        invoke("ADD", &config);
    }
    let version: Vec<Duration> = (0..RUNS).map(|_| invoke("VERSION", b"{\"cniVersion\":\"0.4.0\"}")).collect();
    let add: Vec<Duration> = (0..RUNS).map(|_| invoke("ADD", &config)).collect();
    let (version, add) = (stats(version), stats(add));
    let size = std::fs::metadata(PLUGIN).unwrap().len();

    println!("netlet-cni {PLUGIN} ({:.0} KiB), {RUNS} runs each, ms", size as f64 / 1024.0);
    println!("{:<34} {:>7} {:>7} {:>7} {:>7}", "", "p50", "p90", "p99", "max");
    for (what, s) in [("VERSION (exec only)", &version), ("ADD (exec + agent round trip)", &add)] {
        println!("{what:<34} {:>7.2} {:>7.2} {:>7.2} {:>7.2}", ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max));
    }
    let report = json!({
        "binary_bytes": size,
        "runs": RUNS,
        "version_ms": {"p50": ms(version.p50), "p90": ms(version.p90), "p99": ms(version.p99), "max": ms(version.max)},
        "add_ms": {"p50": ms(add.p50), "p90": ms(add.p90), "p99": ms(add.p99), "max": ms(add.max)},
    });
    let out = target_dir().join("bench-cni.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", out.display());
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}
