//! Integration-test support: a throwaway "node" network namespace with the
//! netlet agent running inside it, plus helpers that look at real kernel
//! state and send real packets.
//!
//! Use from a test file with `mod support;` (the file must be a `[[test]]`
//! target of the controller package so `CARGO_BIN_EXE_netlet` exists).
//!
//! Rules this module keeps:
//! - Every name a test creates starts with its node's unique tag
//!   (`nlt<pid>x<counter>`): the node namespace, sandboxes (through
//!   [`TestNode::sandbox_name`]), helper namespaces.
//! - Drop of a [`TestNode`] kills only the agent processes it started (by
//!   PID), deletes the namespaces it created or that the test registered (and
//!   any other namespace carrying its tag), their `/etc/netns/<name>` name
//!   files, and its temp dirs.
//! - Nothing here changes the host's own namespace, interfaces or firewall;
//!   commands that touch the kernel run with `ip -n`/`ip netns exec` in a
//!   namespace of the test.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The agent binary under test.
pub const NETLET: &str = env!("CARGO_BIN_EXE_netlet");

/// Prefix of every name the harness creates.
pub const TAG_PREFIX: &str = "nlt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Integration tests need root. They are never skipped silently: as a
/// normal user they fail with this message.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests need root: run as root or see README (they build throwaway network namespaces)"
    );
}

// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

/// Runs a program with arguments; never panics on a non-zero exit.
pub fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

/// stdout + stderr of an Output, as text.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `ip ARGS...` and panics when it fails; returns stdout.
pub fn ip_ok(args: &[&str]) -> String {
    let out = run("ip", args);
    assert!(out.status.success(), "`ip {}` failed: {}", args.join(" "), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns
/// whether it became true (assert on it with your own message).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A token nobody else sends: tag-like prefix, pid, counter, nanoseconds.
fn unique_token() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("netlet-token-{}-{n}-{nanos}", std::process::id())
}

/// Kills a child by its PID (SIGKILL through std) and reaps it; harmless if
/// it already exited.
fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Namespaces and kernel state (read-only helpers, always inside a test ns)
// ---------------------------------------------------------------------------

/// Names of every named network namespace (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    let out = run("ip", ["netns", "list"]);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists() || netns_list().iter().any(|n| n == name)
}

/// Runs `cmd` inside namespace `ns` (`ip netns exec`).
pub fn exec_in(ns: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    run("ip", args)
}

/// Runs a shell snippet inside namespace `ns`.
pub fn sh_in(ns: &str, script: &str) -> Output {
    exec_in(ns, &["sh", "-c", script])
}

/// `ip -n NS -j ARGS...`, parsed. Empty when the command fails or prints
/// nothing (e.g. the link does not exist).
pub fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-n", ns, "-j"];
    full.extend_from_slice(args);
    let out = run("ip", full);
    if !out.status.success() {
        return Vec::new();
    }
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// `ip -d link show dev NAME` in `ns`, or None.
pub fn link(ns: &str, name: &str) -> Option<Value> {
    ip_json(ns, &["-d", "link", "show", "dev", name]).into_iter().next()
}

pub fn link_exists(ns: &str, name: &str) -> bool {
    link(ns, name).is_some()
}

/// Whether the link has the UP flag (administratively up).
pub fn link_is_up(ns: &str, name: &str) -> bool {
    link(ns, name).map(|l| l["flags"].as_array().map(|f| f.iter().any(|f| f == "UP")).unwrap_or(false)).unwrap_or(false)
}

pub fn mac(ns: &str, name: &str) -> Option<String> {
    link(ns, name).and_then(|l| l["address"].as_str().map(String::from))
}

/// The bridge (or other master) a link is enslaved to.
pub fn master(ns: &str, name: &str) -> Option<String> {
    link(ns, name).and_then(|l| l["master"].as_str().map(String::from))
}

pub fn ifindex(ns: &str, name: &str) -> Option<u64> {
    link(ns, name).and_then(|l| l["ifindex"].as_u64())
}

/// Every link of `ns` as (name, ifindex), sorted by name.
pub fn links(ns: &str) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = ip_json(ns, &["link", "show"])
        .into_iter()
        .filter_map(|l| Some((l["ifname"].as_str()?.to_string(), l["ifindex"].as_u64()?)))
        .collect();
    all.sort();
    all
}

/// Global-scope addresses (IPv4 and IPv6) of a link, as CIDR strings.
pub fn addresses(ns: &str, ifname: &str) -> Vec<String> {
    ip_json(ns, &["addr", "show", "dev", ifname])
        .into_iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect()
}

/// (gateway, device) of the IPv4 default route in `ns`.
pub fn default_route(ns: &str) -> Option<(String, String)> {
    ip_json(ns, &["-4", "route", "show", "default"])
        .into_iter()
        .next()
        .map(|r| (r["gateway"].as_str().unwrap_or("").to_string(), r["dev"].as_str().unwrap_or("").to_string()))
}

/// Reads a sysctl inside `ns` (e.g. `net.ipv4.ip_forward`).
pub fn sysctl(ns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    String::from_utf8_lossy(&exec_in(ns, &["cat", &path]).stdout).trim().to_string()
}

/// Pings `addr` from `from_ns`: up to two single-packet attempts with a
/// 2 s reply timeout each.
pub fn ping(from_ns: &str, addr: &str) -> bool {
    let family = if addr.contains(':') { "-6" } else { "-4" };
    (0..2).any(|_| exec_in(from_ns, &["ping", family, "-n", "-q", "-c", "1", "-W", "2", addr]).status.success())
}

// ---------------------------------------------------------------------------
// TCP: a one-shot server and a client, both bounded by timeouts
// ---------------------------------------------------------------------------

/// A one-shot TCP server (python3) in a namespace: accepts one connection
/// within `accept_timeout` and prints what it received. Killed by PID on drop.
pub struct TcpServer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl TcpServer {
    /// Listens on every address of `ns` (IPv4, or IPv6 with `v6`) on `port`.
    pub fn start(ns: &str, port: u16, v6: bool) -> TcpServer {
        let (family, any) = if v6 { ("AF_INET6", "::") } else { ("AF_INET", "0.0.0.0") };
        let script = format!(
            "import socket,sys\n\
             s=socket.socket(socket.{family},socket.SOCK_STREAM)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{any}',{port}))\n\
             s.listen(4)\n\
             s.settimeout(8)\n\
             print('ready',flush=True)\n\
             c,a=s.accept()\n\
             c.settimeout(3)\n\
             data=b''\n\
             while True:\n  \
               b=c.recv(4096)\n  \
               if not b: break\n  \
               data+=b\n\
             print('got '+data.decode(errors='replace'),flush=True)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server = TcpServer { child, lines: rx };
        match server.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(l) if l == "ready" => {}
            other => panic!("TCP server in {ns} on port {port} did not start: {other:?}"),
        }
        server
    }

    /// What the server received, if its connection completed within `timeout`.
    pub fn received(&self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l.strip_prefix("got ").map(String::from),
            Err(_) => None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Connects from `client_ns` to addr:port and sends `payload`; true when the
/// connection was made and the payload written (3 s timeout).
pub fn tcp_send(client_ns: &str, addr: &str, port: u16, payload: &str) -> bool {
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{addr}',{port}),timeout=3)\n\
         s.sendall(b'{payload}')\n\
         s.shutdown(socket.SHUT_WR)\n\
         s.close()\n"
    );
    exec_in(client_ns, &["timeout", "5", "python3", "-c", &script]).status.success()
}

/// A TCP server listening on `server_port` in `server_ns`; a client in
/// `client_ns` connects to addr:port (which may differ, e.g. a published
/// port) and sends a unique token; true when the server got exactly it.
pub fn tcp_check_via(server_ns: &str, server_port: u16, client_ns: &str, addr: &str, port: u16) -> bool {
    let server = TcpServer::start(server_ns, server_port, addr.contains(':'));
    let token = unique_token();
    if !tcp_send(client_ns, addr, port, &token) {
        return false;
    }
    server.received(Duration::from_secs(5)).as_deref() == Some(token.as_str())
}

/// TCP from `client_ns` to addr:port served in `server_ns` on the same port.
pub fn tcp_check(server_ns: &str, addr: &str, port: u16, client_ns: &str) -> bool {
    tcp_check_via(server_ns, port, client_ns, addr, port)
}

// ---------------------------------------------------------------------------
// Leftover detection
// ---------------------------------------------------------------------------

/// Everything carrying `tag` that still exists: named namespaces,
/// `/etc/netns` entries, links in the host namespace (read only), temp
/// dirs. Empty means clean.
pub fn leftovers(tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ns in netns_list() {
        if ns.contains(tag) {
            found.push(format!("netns {ns}"));
        }
    }
    for dir in ["/run/netns", "/etc/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(tag) {
                    found.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    // Reading the host's link list changes nothing; a link with our tag
    // there would mean something escaped a test namespace.
    if let Ok(out) = Command::new("ip").args(["-j", "link", "show"]).output() {
        if let Ok(Value::Array(ls)) = serde_json::from_slice::<Value>(&out.stdout) {
            for l in ls {
                if let Some(name) = l["ifname"].as_str() {
                    if name.contains(tag) {
                        found.push(format!("host link {name}"));
                    }
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(tag) {
                found.push(format!("temp {}", e.path().display()));
            }
        }
    }
    found
}

pub fn assert_no_leftovers(tag: &str) {
    let found = leftovers(tag);
    assert!(found.is_empty(), "leftovers of {tag}: {found:?}");
}

/// Whether a process with this PID still exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the ")" that closes comm
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Agent processes
// ---------------------------------------------------------------------------

type SharedChild = Arc<Mutex<Child>>;

/// A long-running agent (`netlet run` without `--once`) inside a node
/// namespace. Its stdout and stderr go to a log file; Drop kills it by PID.
pub struct Agent {
    child: SharedChild,
    pid: u32,
    log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the agent printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if the agent has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends a signal to the agent (by PID) unless it was already reaped.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let mut child = self.child.lock().unwrap();
        if let Ok(None) = child.try_wait() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit; SIGKILL after.
    pub fn stop(&self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if wait_until(timeout, || !self.is_running()) {
            return self.try_wait();
        }
        let mut child = self.child.lock().unwrap();
        kill_child(&mut child);
        None
    }

    /// Kills (SIGKILL) and reaps the agent now.
    pub fn kill(&self) {
        kill_child(&mut self.child.lock().unwrap());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            kill_child(&mut child);
        }
    }
}

// ---------------------------------------------------------------------------
// TestNode
// ---------------------------------------------------------------------------

/// A throwaway node: a network namespace with `lo` up, its own manifest and
/// state dirs, and the agents started in it.
pub struct TestNode {
    /// Unique prefix of every name this node's test creates.
    pub tag: String,
    /// The node's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// `--node-name` passed to the agent.
    pub node_name: String,
    /// Root of this node's temp files (removed on drop).
    pub dir: PathBuf,
    pub manifest_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Namespaces to delete on drop (the node's own, sandboxes, helpers).
    registered: Mutex<BTreeSet<String>>,
    /// Agents started here, shared with their `Agent` handles so that a
    /// leaked handle is still killed by the node's drop.
    agents: Mutex<Vec<SharedChild>>,
    agent_count: AtomicU32,
}

impl TestNode {
    /// A node whose agent calls itself `node-a`.
    pub fn new() -> TestNode {
        Self::with_node_name("node-a")
    }

    pub fn with_node_name(node_name: &str) -> TestNode {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{TAG_PREFIX}{}x{n}", std::process::id());
        let netns = format!("{tag}n");
        // A stale namespace from a crashed run that had the same PID.
        if netns_exists(&netns) {
            let _ = run("ip", ["netns", "del", netns.as_str()]);
        }
        ip_ok(&["netns", "add", &netns]);
        let dir = std::env::temp_dir().join(format!("netlet-it-{tag}"));
        let node = TestNode {
            tag,
            netns: netns.clone(),
            node_name: node_name.to_string(),
            manifest_dir: dir.join("manifests"),
            state_dir: dir.join("state"),
            dir,
            registered: Mutex::new(BTreeSet::from([netns.clone()])),
            agents: Mutex::new(Vec::new()),
            agent_count: AtomicU32::new(0),
        };
        // From here on Drop cleans up, even if a step below fails.
        ip_ok(&["-n", &netns, "link", "set", "lo", "up"]);
        let _ = fs::remove_dir_all(&node.dir);
        fs::create_dir_all(&node.manifest_dir).expect("manifest dir");
        fs::create_dir_all(&node.state_dir).expect("state dir");
        node
    }

    /// A namespace name unique to this test (`<tag><short>`), registered for
    /// deletion on drop. Use it for `sandbox.netns` in manifests.
    pub fn sandbox_name(&self, short: &str) -> String {
        let name = format!("{}{short}", self.tag);
        self.register_netns(&name);
        name
    }

    /// Deletes namespace `name` on drop (whoever creates it).
    pub fn register_netns(&self, name: &str) {
        self.registered.lock().unwrap().insert(name.to_string());
    }

    /// Creates a helper namespace of this test (lo up), deleted on drop.
    pub fn add_netns(&self, short: &str) -> String {
        let name = self.sandbox_name(short);
        ip_ok(&["netns", "add", &name]);
        ip_ok(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    // ---- manifests ----

    /// Writes `<manifest_dir>/<name>` verbatim.
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        let path = self.manifest_dir.join(name);
        // Write then rename, so a watching agent never reads half a file.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, yaml).expect("write manifest");
        fs::rename(&tmp, &path).expect("rename manifest");
    }

    pub fn remove_manifest(&self, name: &str) {
        fs::remove_file(self.manifest_dir.join(name)).unwrap_or_else(|e| panic!("remove manifest {name}: {e}"));
    }

    /// Removes every manifest (the next reconcile tears everything down).
    pub fn clear_manifests(&self) {
        for e in fs::read_dir(&self.manifest_dir).unwrap().flatten() {
            let _ = fs::remove_file(e.path());
        }
    }

    // ---- the agent ----

    /// `nsenter --net=/run/netns/<node> netlet run --manifests ... --state-dir
    /// ... --node-name ... EXTRA...`. (`nsenter --net` rather than `ip netns
    /// exec`: the latter gives the command a private mount namespace, and
    /// the agent's /run/netns bind mounts would vanish with it.)
    pub fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(NETLET)
            .arg("run")
            .arg("--manifests")
            .arg(&self.manifest_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--node-name")
            .arg(&self.node_name)
            .args(extra)
            .env("RUST_LOG", std::env::var("NETLET_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("NODE_NAME")
            .stdin(Stdio::null());
        cmd
    }

    /// `netlet run --once` in the node namespace.
    pub fn run_once(&self) -> Output {
        self.run_once_with(&[])
    }

    pub fn run_once_with(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        // A hung --once must fail the test, not hang it.
        let mut cmd = self.agent_command(&args);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("agent starts");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for agent") {
                break status;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                panic!("netlet run --once did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
    }

    /// `run_once` that must exit 0; returns its stdout + stderr.
    pub fn converge(&self) -> String {
        let out = self.run_once();
        let log = text(&out);
        assert!(out.status.success(), "netlet run --once failed ({}):\n{log}", out.status);
        log
    }

    /// A long-running agent (no `--once`), killed by PID when the returned
    /// handle or this node drops.
    pub fn spawn_agent(&self, extra: &[&str]) -> Agent {
        let i = self.agent_count.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("agent-{i}.log"));
        let file = fs::File::create(&log).expect("agent log");
        let child = self
            .agent_command(extra)
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("agent starts");
        let pid = child.id();
        let shared = Arc::new(Mutex::new(child));
        self.agents.lock().unwrap().push(shared.clone());
        Agent { child: shared, pid, log }
    }

    // ---- status through `netlet get` ----

    /// `netlet get KIND ARGS... --state-dir <state>` (no namespace needed).
    pub fn get_output(&self, kind: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(NETLET);
        cmd.arg("get").arg(kind).args(args).arg("--state-dir").arg(&self.state_dir).stdin(Stdio::null());
        cmd.output().expect("netlet get runs")
    }

    /// stdout of `netlet get`, which must succeed.
    pub fn get(&self, kind: &str, args: &[&str]) -> String {
        let out = self.get_output(kind, args);
        assert!(out.status.success(), "netlet get {kind} {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `netlet get KIND -A -o json`: a List.
    pub fn get_json(&self, kind: &str) -> Value {
        let out = self.get(kind, &["-A", "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("netlet get {kind} -o json is not JSON ({e}):\n{out}"))
    }

    /// The items of `get_json(kind)`.
    pub fn items(&self, kind: &str) -> Vec<Value> {
        self.get_json(kind)["items"].as_array().cloned().unwrap_or_default()
    }

    /// One object by name (any namespace), or Null.
    pub fn object(&self, kind: &str, name: &str) -> Value {
        self.items(kind).into_iter().find(|i| i["metadata"]["name"] == name).unwrap_or(Value::Null)
    }

    /// The status of one object, or Null.
    pub fn status(&self, kind: &str, name: &str) -> Value {
        self.object(kind, name)["status"].clone()
    }

    /// (status, reason) of an object's Ready condition; empty strings when
    /// there is none.
    pub fn ready(&self, kind: &str, name: &str) -> (String, String) {
        condition(&self.status(kind, name), "Ready")
    }

    // ---- the node namespace ----

    pub fn exec(&self, cmd: &[&str]) -> Output {
        exec_in(&self.netns, cmd)
    }

    /// (name, ifindex) of every link in the node and the given namespaces.
    pub fn link_snapshot(&self, sandboxes: &[&str]) -> Vec<(String, Vec<(String, u64)>)> {
        std::iter::once(self.netns.as_str()).chain(sandboxes.iter().copied()).map(|ns| (ns.to_string(), links(ns))).collect()
    }

    /// What of this node still exists (see [`leftovers`]).
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(&self.tag)
    }

    fn cleanup(&mut self) {
        for agent in self.agents.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default() {
            if let Ok(mut child) = agent.lock() {
                kill_child(&mut child);
            }
        }
        let mut names: BTreeSet<String> = self.registered.lock().map(|r| r.clone()).unwrap_or_default();
        names.extend(netns_list().into_iter().filter(|n| n.starts_with(&self.tag)));
        // Sandboxes first, the node last (no ordering need, but tidy).
        let node = self.netns.clone();
        for name in names.iter().filter(|n| **n != node).chain(std::iter::once(&node)) {
            if netns_exists(name) {
                let _ = run("ip", ["netns", "del", name.as_str()]);
            }
            // Name files the agent wrote for a managed sandbox
            // (/etc/netns/NAME); only names this test owns.
            if name.starts_with(&self.tag) {
                let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Default for TestNode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// (status, reason) of the condition `kind` in a status object.
pub fn condition(status: &Value, kind: &str) -> (String, String) {
    let c = status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind)).cloned().unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string())
}
