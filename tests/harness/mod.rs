//! The integration-test harness: a throwaway "node" network namespace with
//! the agent running inside it, and helpers to look at kernel state and
//! send real packets.
//!
//! Every name a test creates (node, sandboxes, remote hosts) starts with the
//! node's unique tag, and Drop removes everything with that tag: agents it
//! started (by PID), namespaces, /etc/netns entries, temp dirs. Nothing
//! touches the host's own namespace, interfaces or firewall.
#![allow(dead_code)]

pub mod cluster;
pub mod dataplane;
pub mod kube;
pub mod kubectl;
pub mod sim;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_netlet");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Integration tests need root: fail loudly instead of skipping silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests need root (they build throwaway network namespaces); run `sudo cargo test` or see README"
    );
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(out.status.success(), "`{cmd}` failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Node {
    /// Unique prefix of every name this test creates.
    pub tag: String,
    /// The node namespace.
    pub name: String,
    pub node_name: String,
    pub dir: PathBuf,
    agents: Vec<Child>,
    /// Agents started so far: agent-N.log is the log of the N-th.
    spawned: usize,
    /// Extra environment of the agents it starts (a private D-Bus, ...).
    pub agent_env: Vec<(String, String)>,
}

impl Node {
    pub fn new() -> Node {
        Self::named("node-a")
    }

    /// A node namespace for the agent that calls itself `node_name`.
    pub fn named(node_name: &str) -> Node {
        let node = Self::unmade(node_name);
        ok(&format!("ip netns add {name} && ip -n {name} link set lo up", name = node.name));
        node
    }

    /// A node whose namespace (`name`) someone else makes, such as
    /// e2e/local-cluster.sh with the tag as its prefix; dropping it still
    /// removes every namespace with the tag.
    pub fn unmade(node_name: &str) -> Node {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Ends in a letter: `t1x1y` is no prefix of `t1x10y` (cleanup matches prefixes).
        let tag = format!("t{}x{n}y", std::process::id() % 100_000);
        let name = format!("{tag}node");
        let dir = std::env::temp_dir().join(format!("netlet-it-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("manifests")).unwrap();
        fs::create_dir_all(dir.join("empty")).unwrap();
        Node { tag, name, node_name: node_name.into(), dir, agents: Vec::new(), spawned: 0, agent_env: Vec::new() }
    }

    /// A name unique to this test (sandboxes, remote hosts).
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.tag)
    }

    /// Writes a manifest file; `{T}` in the YAML becomes the tag, so
    /// sandbox names stay unique (`netns: "{T}c1"`).
    pub fn write(&self, file: &str, yaml: &str) {
        fs::write(self.dir.join("manifests").join(file), yaml.replace("{T}", &self.tag)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        fs::remove_file(self.dir.join("manifests").join(file)).unwrap();
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn agent_cmd(&self, manifests: &PathBuf, args: &[&str]) -> Command {
        let mut cmd = self.run_cmd();
        cmd.arg("--manifests").arg(manifests).args(args);
        cmd
    }

    /// `netlet run` in the node namespace with its state dir and node name.
    fn run_cmd(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(BIN)
            .arg("run")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--node-name", &self.node_name])
            .env("RUST_LOG", std::env::var("NETLET_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `netlet run --once` in the node namespace.
    pub fn once(&self) -> Output {
        self.agent_cmd(&self.manifests(), &["--once", "--metrics-addr", "off"]).output().expect("agent runs")
    }

    /// `--once` that must succeed; returns stdout + stderr.
    pub fn converge(&self) -> String {
        let out = self.once();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "agent --once failed:\n{text}");
        text
    }

    /// Tears everything down through the agent (empty manifest set).
    pub fn converge_empty(&self) -> String {
        let out = self.agent_cmd(&self.dir.join("empty"), &["--once", "--metrics-addr", "off"]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// A long-running agent; killed by PID when the node drops.
    pub fn spawn(&mut self, args: &[&str]) -> u32 {
        let cmd = self.agent_cmd(&self.manifests(), args);
        self.spawn_cmd(cmd)
    }

    /// A long-running agent in Kubernetes mode (no --manifests).
    pub fn spawn_kube(&mut self, kubeconfig: &std::path::Path, args: &[&str]) -> u32 {
        let mut cmd = self.run_cmd();
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        self.spawn_cmd(cmd)
    }

    fn spawn_cmd(&mut self, mut cmd: Command) -> u32 {
        let log = fs::File::create(self.dir.join(format!("agent-{}.log", self.spawned))).unwrap();
        self.spawned += 1;
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("agent starts");
        let pid = child.id();
        self.agents.push(child);
        pid
    }

    pub fn agent_log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.join(format!("agent-{i}.log"))).unwrap_or_default()
    }

    /// Kills one running agent with `signal` and reaps it.
    pub fn kill_agent(&mut self, pid: u32, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        if let Some(i) = self.agents.iter().position(|c| c.id() == pid) {
            let mut child = self.agents.remove(i);
            let _ = child.wait();
        }
    }

    /// Kills every agent this node started.
    pub fn stop_agents(&mut self) {
        for mut child in self.agents.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `netlet get KIND -o json` items.
    pub fn items(&self, kind: &str) -> Vec<Value> {
        let out = Command::new(BIN).args(["get", kind, "-A", "-o", "json", "--state-dir"]).arg(self.state_dir()).output().unwrap();
        assert!(out.status.success(), "netlet get failed: {}", String::from_utf8_lossy(&out.stderr));
        let list: Value = serde_json::from_slice(&out.stdout).expect("get -o json prints JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The status of one object (by name), or Null.
    pub fn status(&self, kind: &str, name: &str) -> Value {
        self.items(kind).into_iter().find(|i| i["metadata"]["name"] == name).map(|i| i["status"].clone()).unwrap_or(Value::Null)
    }

    /// (status, reason) of an object's Ready condition.
    pub fn ready(&self, kind: &str, name: &str) -> (String, String) {
        ready_in(&self.status(kind, name))
    }

    /// Runs a shell command inside the node namespace.
    pub fn in_node(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmd.replace('\'', "'\\''")))
    }

    /// A second namespace acting as a remote host on an uplink to the node:
    /// node side `addr_node`, remote side `addr_remote` (same /24).
    pub fn add_remote(&self, short: &str, addr_node: &str, addr_remote: &str) -> String {
        let remote = self.ns(short);
        let up = format!("{}up", self.tag);
        ok(&format!(
            "ip netns add {remote} && ip -n {remote} link set lo up && \
             ip link add {up} netns {node} type veth peer name eth0 netns {remote} && \
             ip -n {node} addr add {addr_node}/24 dev {up} && ip -n {node} link set {up} up && \
             ip -n {remote} addr add {addr_remote}/24 dev eth0 && ip -n {remote} link set eth0 up",
            node = self.name
        ));
        remote
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agents();
        let names: Vec<String> = String::from_utf8_lossy(&sh("ip netns list").stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|n| n.starts_with(&self.tag))
            .collect();
        for n in &names {
            let _ = sh(&format!("ip netns del {n}"));
            let _ = fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
        if let Some(runtime) = netlet::state::StateDir::open(self.state_dir()).ok().and_then(|s| s.runtime_path()) {
            let _ = fs::remove_dir_all(runtime);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// (status, reason) of the Ready condition in an object's `status`.
pub fn ready_in(status: &Value) -> (String, String) {
    let c = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned().unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("").into(), c["reason"].as_str().unwrap_or("").into())
}

// ---- kernel state, via `ip -j` ----

pub fn ip_json(ns: &str, args: &str) -> Vec<Value> {
    let out = sh(&format!("ip -n {ns} -j {args}"));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

pub fn link(ns: &str, name: &str) -> Option<Value> {
    ip_json(ns, &format!("-d link show dev {name}")).into_iter().next()
}

pub fn ifindex(ns: &str, name: &str) -> Option<u64> {
    link(ns, name).and_then(|l| l["ifindex"].as_u64())
}

/// Global addresses on a link, as CIDR strings.
pub fn addresses(ns: &str, name: &str) -> Vec<String> {
    ip_json(ns, &format!("addr show dev {name}"))
        .into_iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

pub fn default_route(ns: &str) -> Option<(String, String)> {
    ip_json(ns, "route show default")
        .into_iter()
        .next()
        .map(|r| (r["gateway"].as_str().unwrap_or("").to_string(), r["dev"].as_str().unwrap_or("").to_string()))
}

pub fn netns_exists(name: &str) -> bool {
    String::from_utf8_lossy(&sh("ip netns list").stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

/// Links in `ns` whose names start with `prefix`.
pub fn links_with_prefix(ns: &str, prefix: &str) -> Vec<String> {
    ip_json(ns, "link show").into_iter().filter_map(|l| l["ifname"].as_str().map(String::from)).filter(|n| n.starts_with(prefix)).collect()
}

// ---- traffic ----

/// IPv4 addresses `name` resolves to inside `ns` (through its resolv.conf).
pub fn resolve(ns: &str, name: &str) -> Vec<String> {
    let out = sh(&format!("ip netns exec {ns} getent ahostsv4 {name}"));
    let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("STREAM"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    addrs.dedup();
    addrs
}

pub fn ping(from_ns: &str, addr: &str) -> bool {
    let flag = if addr.contains(':') { "-6" } else { "-4" };
    sh(&format!("ip netns exec {from_ns} ping {flag} -c1 -W2 {addr}")).status.success()
}

/// A one-shot server in `ns` on `port` (tcp or udp) that answers each
/// client with `hello <client address>` and records it.
pub struct Server {
    child: Child,
    pub ns: String,
}

impl Server {
    pub fn start(ns: &str, port: u16, udp: bool, v6: bool) -> Server {
        let (family, kind) = (if v6 { "AF_INET6" } else { "AF_INET" }, if udp { "SOCK_DGRAM" } else { "SOCK_STREAM" });
        let any = if v6 { "::" } else { "0.0.0.0" };
        let script = if udp {
            format!(
                "import socket\ns=socket.socket(socket.{family},socket.{kind})\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{any}',{port}))\nwhile True:\n  d,a=s.recvfrom(100)\n  s.sendto(('hello '+a[0]).encode(),a)\n"
            )
        } else {
            format!(
                "import socket\ns=socket.socket(socket.{family},socket.{kind})\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{any}',{port}))\ns.listen(16)\nwhile True:\n  c,a=s.accept()\n  c.sendall(('hello '+a[0]).encode())\n  c.close()\n"
            )
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Listening once `ss` lists the socket (python takes a while to
        // start on a busy machine; a fixed pause raced it).
        let (flag, family) = (if udp { "u" } else { "t" }, if v6 { "-6" } else { "-4" });
        wait_until(&format!("a server on {ns} port {port}"), Duration::from_secs(10), || {
            !sh(&format!("ip netns exec {ns} ss -Hln{flag} {family} sport = :{port}")).stdout.is_empty()
        });
        Server { child, ns: ns.into() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from `ns` to addr:port; returns what the server answered
/// (`hello <the client address the server saw>`), or None.
pub fn connect(ns: &str, addr: &str, port: u16, udp: bool) -> Option<String> {
    let v6 = addr.contains(':');
    let family = if v6 { "AF_INET6" } else { "AF_INET" };
    let script = if udp {
        format!("import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.settimeout(2)\ns.sendto(b'x',('{addr}',{port}))\nprint(s.recvfrom(100)[0].decode())\n")
    } else {
        format!("import socket\ns=socket.create_connection(('{addr}',{port}),timeout=2)\ns.settimeout(2)\nprint(s.recv(100).decode())\n")
    };
    let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &script]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Deterministic pseudo-random numbers (no extra crate, repeatable runs).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}
