//! Scale benchmark: netlet against the kernel floor, on a throwaway node
//! namespace. Run as root: `cargo bench --bench scale` (NETLET_BENCH_N sets
//! the sizes, default "10,100,1000"). Prints a table and writes
//! target/bench-scale.json.
//!
//! For each N (attachments on one bridge, one published port each):
//! - cold start: `netlet run --once` from an empty node to every object Ready
//! - no-op resync: a running agent's reconcile of an in-sync node: wall
//!   time, CPU time (schedstat) and kernel mutations (from its metrics),
//!   for quick passes and, apart, for full ones (every 10th, an audit that
//!   re-reads every sandbox)
//! - churn: add one attachment + mapping (and remove one) with N in place,
//!   nine times: the reconcile pass that realizes it, file-write-to-Ready,
//!   and file-removal-to-gone (out of the status and its namespace
//!   deleted), each up to the rename of the status version that showed
//!   it into place, seen through inotify (the bench's own reading is not
//!   counted); medians
//! - peak RSS of the agent
//! - teardown: everything removed (`--once` on an empty manifest set)
//! - the floor: the same kernel work by a straight-line program in one
//!   process (one `ip -batch` for namespaces, one for veths and bridge
//!   ports, setns + raw netlink requests per sandbox, one `nft -f` with a
//!   map), and a batched teardown floor
//!   (`ip link del group`, `ip -batch netns del`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};

const BIN: &str = env!("CARGO_BIN_EXE_netlet");

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_batch(lines: &str, netns: Option<&str>) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd.args(["-batch", "-"]).stdin(Stdio::piped()).spawn().expect("ip runs");
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

struct Node {
    name: String,
    dir: PathBuf,
    tag: String,
    n: usize,
}

impl Node {
    fn new(n: usize, tag: &str) -> Node {
        let tag = format!("nlb{}{tag}{n}", std::process::id() % 10000);
        let name = format!("{tag}-node");
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        let dir = std::env::temp_dir().join(format!("{tag}-{n}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("manifests")).unwrap();
        fs::create_dir_all(dir.join("empty")).unwrap();
        Node { name, dir, tag, n }
    }

    fn sandbox(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn attachment_yaml(&self, i: usize) -> String {
        format!(
            "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: a{i}}}\nspec: {{network: bench, sandbox: {{netns: {}}}}}\n---\n\
             apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: p{i}}}\nspec: {{attachment: a{i}, ports: [{{containerPort: 80, hostPort: {}}}]}}\n",
            self.sandbox(i),
            20000 + i
        )
    }

    fn write_manifests(&self) {
        let mut yaml = String::from(
            "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: bench}\nspec:\n  bridge: {name: nlbench0}\n  ipam: {config: [{subnet: 10.240.0.0/16}]}\n",
        );
        for i in 0..self.n {
            yaml.push_str("---\n");
            yaml.push_str(&self.attachment_yaml(i));
        }
        fs::write(self.dir.join("manifests/bench.yaml"), yaml).unwrap();
    }

    fn agent(&self, manifests: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(BIN)
            .args(["run", "--manifests"])
            .arg(self.dir.join(manifests))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--node-name", "bench"])
            .args(extra)
            .env("RUST_LOG", std::env::var("NETLET_BENCH_LOG").unwrap_or_else(|_| "warn".into()));
        cmd
    }

    /// Runs `--once`; returns (wall time, mutations printed).
    fn once(&self, manifests: &str) -> (Duration, u64) {
        let started = Instant::now();
        let out = self.agent(manifests, &["--once", "--metrics-addr", "off"]).output().expect("agent runs");
        let took = started.elapsed();
        if std::env::var_os("NETLET_BENCH_LOG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "agent --once failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let mutations = stdout.split_whitespace().rev().nth(2).and_then(|w| w.parse().ok()).unwrap_or(u64::MAX);
        (took, mutations)
    }

    fn netns_left(&self) -> usize {
        sh("ip netns list").lines().filter(|l| l.starts_with(&format!("{}-", self.tag)) && !l.starts_with(&self.name)).count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let names: Vec<String> = sh("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.tag))
            .map(String::from)
            .collect();
        let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        if !batch.is_empty() {
            let _ = Command::new("ip").args(["-force", "-batch", "-"]).stdin(Stdio::piped()).spawn().map(|mut c| {
                let _ = c.stdin.take().unwrap().write_all(batch.as_bytes());
                let _ = c.wait();
            });
        }
        for n in &names {
            let _ = fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// CPU time of every thread of `pid`, to the nanosecond (schedstat; the
/// tick counts of /proc/PID/stat are 10 ms coarse).
fn cpu_of(pid: u32) -> Duration {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn scrape(node: &Node) -> String {
    // From a thread of this process that entered the node's namespace:
    // spawning `ip netns exec curl` before each timed step (a mount
    // namespace made and torn down, a process started) slowed the very
    // step it preceded by up to ~10 ms. Not up yet (or busy) reads as
    // empty; callers wait for values to move.
    let path = format!("/run/netns/{}", node.name);
    let fetch = move || -> Option<String> {
        use std::io::Read as _;
        let ns = fs::File::open(path).ok()?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9464));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response.split_once("\r\n\r\n")?.1.to_string())
    };
    std::thread::spawn(fetch).join().ok().flatten().unwrap_or_default()
}

/// Sum of the samples of `name` (every label set) in a scrape.
fn value(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn metric(node: &Node, name: &str) -> f64 {
    value(&scrape(node), name)
}

/// The agent's pass counters and CPU at one moment.
struct Snapshot {
    passes: f64,
    seconds: f64,
    full_passes: f64,
    mutations: f64,
    cpu: Duration,
}

impl Snapshot {
    fn take(node: &Node, pid: u32) -> Snapshot {
        let text = scrape(node);
        Snapshot {
            passes: value(&text, "netlet_reconcile_duration_seconds_count"),
            seconds: value(&text, "netlet_reconcile_duration_seconds_sum"),
            full_passes: value(&text, "netlet_full_reconcile_duration_seconds_count"),
            mutations: value(&text, "netlet_kernel_mutations_total"),
            cpu: cpu_of(pid),
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

/// Each new version of the status file, as the agent renames it into
/// place, with the wall-clock time the rename was seen (inotify wakes this
/// thread at once) and what it says of one attachment: `Some(ready)` while
/// listed, `None` once not. File modification times are not used: a new
/// file's can be a coarse clock tick (4 ms here) behind its write. Each
/// version is read after its time is taken, so the bench's reading and
/// parsing are not counted.
struct StatusWatch {
    versions: std::sync::mpsc::Receiver<(std::time::SystemTime, Option<bool>)>,
}

impl StatusWatch {
    fn start(node: &Node, attachment: String) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
        inotify.add_watch(&node.dir.join("state"), AddWatchFlags::IN_MOVED_TO).expect("watch the state directory");
        let path = node.dir.join("state/status.json");
        let (tx, versions) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let Ok(events) = inotify.read_events() else { return };
            if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                return; // the node's directory is gone
            }
            if !events.iter().any(|e| e.name.as_deref() == Some(std::ffi::OsStr::new("status.json"))) {
                continue;
            }
            let at = std::time::SystemTime::now();
            // Typed, reading only what is needed: parsing a megabyte into
            // `serde_json::Value`s takes longer than the change being timed.
            let Some(items) = fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str::<Vec<Entry>>(&text).ok()) else {
                continue;
            };
            let state = items
                .iter()
                .find(|e| e.kind == "Attachment" && e.metadata.name == attachment)
                .map(|e| e.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")));
            if tx.send((at, state)).is_err() {
                return;
            }
        });
        StatusWatch { versions }
    }

    /// The next version written after `since`, waiting up to `timeout`.
    fn next_after(&self, since: std::time::SystemTime, timeout: Duration) -> Option<(std::time::SystemTime, Option<bool>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.versions.recv_timeout(left) {
                Ok((at, state)) if at > since => return Some((at, state)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Milliseconds from `since` to `at` (wall clock).
fn ms_between(since: std::time::SystemTime, at: std::time::SystemTime) -> f64 {
    at.duration_since(since).unwrap_or_default().as_secs_f64() * 1e3
}

#[derive(serde::Deserialize)]
struct Entry {
    kind: String,
    metadata: EntryMeta,
    status: Option<EntryStatus>,
}

#[derive(serde::Deserialize)]
struct EntryMeta {
    name: String,
}

#[derive(serde::Deserialize)]
struct EntryStatus {
    #[serde(default)]
    conditions: Vec<EntryCondition>,
}

#[derive(serde::Deserialize)]
struct EntryCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Mean reconcile pass time since the snapshot `since`.
/// A pass is counted when it ends, which can be after the status write
/// that the churn is timed to (a removal's link deletions finish after
/// it): waits for one.
fn mean_pass_ms(node: &Node, pid: u32, since: &Snapshot) -> f64 {
    let mut now = Snapshot::take(node, pid);
    wait_for("a pass to be counted", Duration::from_secs(10), || {
        now = Snapshot::take(node, pid);
        now.passes > since.passes
    });
    (now.seconds - since.seconds) / (now.passes - since.passes) * 1e3
}

/// Churn is measured this many times (add, then remove), medians reported.
const CHURN_ROUNDS: usize = 9;

#[derive(Default, serde::Serialize)]
struct Row {
    n: usize,
    cold_start_ms: f64,
    cold_start_mutations: u64,
    floor_ms: f64,
    cold_ratio: f64,
    noop_resync_ms: f64,
    noop_resync_cpu_ms: f64,
    noop_mutations: f64,
    full_resync_ms: f64,
    full_resync_cpu_ms: f64,
    churn_add_reconcile_ms: f64,
    churn_add_to_ready_ms: f64,
    churn_remove_reconcile_ms: f64,
    churn_remove_to_done_ms: f64,
    peak_rss_mib: f64,
    teardown_ms: f64,
    teardown_floor_ms: f64,
    teardown_ratio: f64,
}

/// The same kernel work, straight-line: netns, veths, bridge ports, in one
/// `ip -batch` each; per sandbox setns + netlink from this process; one
/// `nft -f` with a map.
fn floor(n: usize) -> (Duration, Duration) {
    let node = Node::new(n, "f");
    let ns = &node.name;
    let started = Instant::now();
    let mut host = String::from("link add nlbench0 type bridge\nlink set nlbench0 up\naddr add 10.240.0.1/16 dev nlbench0\n");
    let mut netns = String::new();
    for i in 0..n {
        netns.push_str(&format!("netns add {}\n", node.sandbox(i)));
    }
    ip_batch(&netns, None);
    for i in 0..n {
        host.push_str(&format!("link add nlbf{i} group 77 master nlbench0 up type veth peer name eth0 netns {}\n", node.sandbox(i)));
    }
    ip_batch(&host, Some(ns));
    // Inside each sandbox, from this one process: setns, open a netlink
    // socket there, return; then lo up, address, eth0 up, default route.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for i in 0..n {
            let addr = 2 + i;
            inside_sandbox(&node.sandbox(i), std::net::Ipv4Addr::new(10, 240, (addr / 256) as u8, (addr % 256) as u8)).await;
        }
    });
    let mut elements = Vec::new();
    for i in 0..n {
        let addr = 2 + i;
        elements.push(format!("tcp . {} : 10.240.{}.{} . 80", 20000 + i, addr / 256, addr % 256));
    }
    let script = format!(
        "table inet nlbfloor {{\n map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; elements = {{ {} }} }}\n chain pre {{ type nat hook prerouting priority dstnat; dnat ip to meta l4proto . th dport map @ports; }}\n}}\n",
        elements.join(", ")
    );
    let mut nft = Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    nft.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());
    let cold = started.elapsed();
    let started = Instant::now();
    sh(&format!("ip -n {ns} link del group 77; ip -n {ns} link del nlbench0; ip netns exec {ns} nft delete table inet nlbfloor"));
    let batch: String = (0..n).map(|i| format!("netns del {}\n", node.sandbox(i))).collect();
    ip_batch(&batch, None);
    let teardown = started.elapsed();
    (cold, teardown)
}

/// The floor's per-sandbox work: raw netlink requests, no reads beyond
/// eth0's index, nothing compared.
async fn inside_sandbox(sandbox: &str, addr: std::net::Ipv4Addr) {
    use futures::TryStreamExt;
    use nix::sched::{setns, CloneFlags};
    let home = fs::File::open("/proc/thread-self/ns/net").unwrap();
    let target = fs::File::open(format!("/run/netns/{sandbox}")).unwrap();
    setns(&target, CloneFlags::CLONE_NEWNET).unwrap();
    let opened = rtnetlink::new_connection();
    setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
    let (conn, handle, _) = opened.unwrap();
    let task = tokio::spawn(conn);
    handle.link().set(rtnetlink::LinkUnspec::new_with_index(1).up().build()).execute().await.unwrap();
    let eth0 = handle.link().get().match_name("eth0").execute().try_next().await.unwrap().unwrap().header.index;
    handle.address().add(eth0, addr.into(), 16).execute().await.unwrap();
    handle.link().set(rtnetlink::LinkUnspec::new_with_index(eth0).up().build()).execute().await.unwrap();
    let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().gateway(std::net::Ipv4Addr::new(10, 240, 0, 1)).build();
    handle.route().add(route).execute().await.unwrap();
    task.abort();
}

/// The kernel finishes deleting namespaces (and the links in them) in a
/// worker after `netns del` returns, holding the RTNL lock: let it finish so
/// neither side is timed while paying for the other's cleanup.
fn settle(n: usize) {
    std::thread::sleep(Duration::from_millis(1000 + 3 * n as u64));
}

fn measure(n: usize) -> Row {
    let mut row = Row { n, ..Default::default() };
    let (floor_cold, floor_teardown) = floor(n);
    row.floor_ms = floor_cold.as_secs_f64() * 1e3;
    row.teardown_floor_ms = floor_teardown.as_secs_f64() * 1e3;
    settle(n);

    let node = Node::new(n, "a");
    node.write_manifests();
    let (cold, mutations) = node.once("manifests");
    let rusage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    row.cold_start_ms = cold.as_secs_f64() * 1e3;
    row.cold_start_mutations = mutations;
    row.cold_ratio = row.cold_start_ms / row.floor_ms;

    // A running agent: no-op resyncs, then churn.
    let mut agent: Child =
        node.agent("manifests", &["--resync-period", "500ms"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = agent.id();
    wait_for("first reconcile", Duration::from_secs(120), || metric(&node, "netlet_reconciles_total") >= 1.0);
    // The first passes of a new agent look at everything (it has verified
    // nothing yet, and the kernel still reports the cold start's changes):
    // a resync of a settled node is what is measured.
    wait_for("settling", Duration::from_secs(60), || metric(&node, "netlet_reconcile_duration_seconds_count") >= 4.0);
    // No-op resyncs of the settled node, pass by pass: quick passes apart
    // from full ones (every 10th, an audit that trusts nothing).
    // Scrapes cost the agent CPU too: one every 250 ms, not a tight loop.
    let (mut quick, mut full) = ((0.0, 0.0, Duration::ZERO), (0.0, 0.0, Duration::ZERO)); // passes, seconds, CPU
    let mut before = Snapshot::take(&node, pid);
    let started = Instant::now();
    while quick.0 < 10.0 || full.0 < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(120), "timed out waiting for resyncs");
        std::thread::sleep(Duration::from_millis(250));
        let now = Snapshot::take(&node, pid);
        let (passes, fulls) = (now.passes - before.passes, now.full_passes - before.full_passes);
        row.noop_mutations += now.mutations - before.mutations;
        let group = if fulls == 0.0 { &mut quick } else { &mut full };
        if passes > 0.0 && (fulls == 0.0 || fulls == passes) {
            group.0 += passes;
            group.1 += now.seconds - before.seconds;
            group.2 += now.cpu - before.cpu;
        }
        before = now;
    }
    row.noop_resync_ms = quick.1 / quick.0 * 1e3;
    row.noop_resync_cpu_ms = quick.2.as_secs_f64() * 1e3 / quick.0;
    row.full_resync_ms = full.1 / full.0 * 1e3;
    row.full_resync_cpu_ms = full.2.as_secs_f64() * 1e3 / full.0;

    // Churn: one more attachment + mapping, in a file of its own, added
    // and removed CHURN_ROUNDS times; medians.
    let extra = node.dir.join("manifests/churn.yaml");
    let status = StatusWatch::start(&node, format!("a{n}"));
    let (mut add_pass, mut add_ready, mut del_pass, mut del_done) = (vec![], vec![], vec![], vec![]);
    for _ in 0..CHURN_ROUNDS {
        let since = Snapshot::take(&node, pid);
        let written = std::time::SystemTime::now();
        fs::write(&extra, node.attachment_yaml(n)).unwrap();
        let ready_at = loop {
            match status.next_after(written, Duration::from_secs(30)).expect("the attachment becomes Ready") {
                (at, Some(true)) => break at,
                _ => continue,
            }
        };
        add_ready.push(ms_between(written, ready_at));
        add_pass.push(mean_pass_ms(&node, pid, &since));
        // Let the pass that follows our own kernel events run before the next step.
        std::thread::sleep(Duration::from_millis(300));
        let since = Snapshot::take(&node, pid);
        let removed = std::time::SystemTime::now();
        fs::remove_file(&extra).unwrap();
        let gone = format!("/run/netns/{}", node.sandbox(n));
        // Done when the status no longer lists it and its namespace is
        // gone: at the version that dropped it when the namespace was gone
        // by then (a pass deletes before it writes status), else when the
        // namespace is seen gone.
        let dropped_at = loop {
            match status.next_after(removed, Duration::from_secs(30)).expect("the attachment leaves the status") {
                (at, None) => break at,
                _ => continue,
            }
        };
        let done_at = if Path::new(&gone).exists() {
            wait_for("the namespace to go", Duration::from_secs(30), || !Path::new(&gone).exists());
            std::time::SystemTime::now()
        } else {
            dropped_at
        };
        del_done.push(ms_between(removed, done_at));
        del_pass.push(mean_pass_ms(&node, pid, &since));
        std::thread::sleep(Duration::from_millis(300));
    }
    row.churn_add_reconcile_ms = median(&mut add_pass);
    row.churn_add_to_ready_ms = median(&mut add_ready);
    row.churn_remove_reconcile_ms = median(&mut del_pass);
    row.churn_remove_to_done_ms = median(&mut del_done);
    let hwm = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let running_rss_kib: f64 =
        hwm.lines().find(|l| l.starts_with("VmHWM")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait();
    row.peak_rss_mib = (rusage.max_rss() as f64).max(running_rss_kib) / 1024.0;

    settle(n);
    let (teardown, _) = node.once("empty");
    row.teardown_ms = teardown.as_secs_f64() * 1e3;
    row.teardown_ratio = row.teardown_ms / row.teardown_floor_ms;
    assert_eq!(node.netns_left(), 0, "teardown left namespaces");
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list; nothing to list
    }
    assert!(nix::unistd::geteuid().is_root(), "the scale benchmark needs root (it builds throwaway network namespaces)");
    let sizes: Vec<usize> =
        std::env::var("NETLET_BENCH_N").unwrap_or_else(|_| "10,100,1000".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let mut rows = Vec::new();
    println!(
        "{:>5} {:>10} {:>9} {:>6} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>6}",
        "N",
        "cold ms",
        "floor ms",
        "ratio",
        "noop ms",
        "noop cpu",
        "noop mu",
        "audit ms",
        "audit cpu",
        "add ms",
        "add>rdy",
        "del ms",
        "del>gone",
        "RSS MiB",
        "down ms",
        "dn floor",
        "ratio"
    );
    for n in sizes {
        let r = measure(n);
        println!(
            "{:>5} {:>10.1} {:>9.1} {:>6.2} {:>9.2} {:>8.2} {:>7} {:>9.1} {:>9.1} {:>9.2} {:>9.1} {:>9.2} {:>9.1} {:>7.1} {:>9.1} {:>9.1} {:>6.2}",
            r.n,
            r.cold_start_ms,
            r.floor_ms,
            r.cold_ratio,
            r.noop_resync_ms,
            r.noop_resync_cpu_ms,
            r.noop_mutations,
            r.full_resync_ms,
            r.full_resync_cpu_ms,
            r.churn_add_reconcile_ms,
            r.churn_add_to_ready_ms,
            r.churn_remove_reconcile_ms,
            r.churn_remove_to_done_ms,
            r.peak_rss_mib,
            r.teardown_ms,
            r.teardown_floor_ms,
            r.teardown_ratio
        );
        rows.push(r);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scale.json");
    fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("results: {}", out.display());
}
