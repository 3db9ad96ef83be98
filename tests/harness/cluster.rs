//! A real one-node cluster for tests: `e2e/local-cluster.sh` (API server,
//! controller-manager, scheduler, containerd + runc and a kubelet, each in
//! the test's own network namespaces), with the test's tag as the prefix of
//! every namespace it makes. The node namespace is `node.name`, so the
//! usual helpers (addresses, ping, remote hosts) work on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

pub use super::kubectl::Kubectl;
use super::{ok, wait_until, Node};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/local-cluster.sh");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/netlet");
pub const NODE_NAME: &str = "node-1";
/// The namespace the tests install the chart into.
pub const SYSTEM: &str = "netlet-system";

pub struct LocalCluster {
    /// The node: its namespace, tag and directory (the cluster's state is
    /// under `dir/cluster`).
    pub node: Node,
    pub dir: PathBuf,
    kubectl: Kubectl,
    /// The API server as the node reaches it.
    pub api_host: String,
    pub api_port: u16,
    /// `down` already ran.
    down: bool,
}

impl LocalCluster {
    /// Brings the cluster up; the node is Ready and can run pods.
    pub fn up() -> LocalCluster {
        let node = Node::unmade(NODE_NAME);
        let dir = node.dir.join("cluster");
        let out = Command::new(SCRIPT)
            .arg("up")
            .arg(&dir)
            .env("NETLET_CLUSTER_PREFIX", &node.tag)
            .env("NETLET_CLUSTER_NODE", NODE_NAME)
            .output()
            .expect("local-cluster.sh runs");
        let env = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
        let var = |k: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(String::from);
        let cluster = LocalCluster {
            kubectl: Kubectl::new(
                format!(
                    "ip netns exec {} {} --kubeconfig {}",
                    var("CP_NS").unwrap_or_default(),
                    var("KUBECTL").unwrap_or_default(),
                    var("KUBECONFIG").unwrap_or_default()
                ),
                &node.tag,
            ),
            api_host: var("API_HOST").unwrap_or_default(),
            api_port: var("API_PORT").and_then(|p| p.parse().ok()).unwrap_or(0),
            node,
            dir,
            down: false,
        };
        // Dropped on failure too: the script's own rollback already ran.
        assert!(out.status.success(), "local-cluster.sh up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    /// `helm ARGS` as cluster admin; returns stdout, fails the test on error.
    pub fn helm(&self, args: &str) -> String {
        ok(&format!("{SCRIPT} helm {} {args}", self.dir.display()))
    }

    /// `helm install` of the chart into [`SYSTEM`] (which must exist), set
    /// up for this node: the test's state dir, the API server's own address
    /// (no kube-proxy here), a 5 s resync, and netlet-cni in the cluster's
    /// CNI directories with a socket of the test's own, never the host's
    /// /opt/cni/bin, /etc/cni/net.d or /run/netlet/cni.sock. `extra` is
    /// appended (e.g. `--set defaultNetworks.enabled=false`).
    pub fn helm_install(&self, extra: &str) -> String {
        self.helm(&format!(
            "install netlet {CHART} -n {SYSTEM} --wait --timeout 120s --set stateDir={},apiServer.host={},apiServer.port={},resyncPeriod=5s \
             --set cni.binDir={},cni.confDir={},cni.socket={},cni.netnsDir={} {extra}",
            self.node.state_dir().display(),
            self.api_host,
            self.api_port,
            self.cni_bin_dir().display(),
            self.cni_conf_dir().display(),
            self.cni_socket().display(),
            self.pod_netns_dir().display()
        ))
    }

    /// The container runtime's CNI bin dir (e2e/local-cluster.sh's).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni/bin")
    }

    /// Where containerd makes pods' network namespaces (a shared mount).
    pub fn pod_netns_dir(&self) -> PathBuf {
        self.dir.join("containerd/state/io.containerd.grpc.v1.cri/netns")
    }

    /// The container runtime's CNI conf dir, with the primary conflist.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// The agent's CNI socket: under the node's /run/netlet, which the
    /// chart and the manifests mount, in a directory of this test's own.
    pub fn cni_socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/netlet/{}/cni.sock", self.node.tag))
    }

    /// The agent's image, built offline from this build's binaries
    /// (image/build.sh) and loaded into the node's containerd under the
    /// chart's default name and tag.
    pub fn load_agent_image(&self) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let chart: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap()).unwrap();
        let app_version = chart["appVersion"].as_str().unwrap();
        // netlet-cni is another package's binary: built beside netlet by
        // `cargo build --workspace` or `cargo test --workspace`.
        let cni = Path::new(super::BIN).with_file_name("netlet-cni");
        assert!(cni.exists(), "{} is missing: build it first (cargo build -p netlet-cni)", cni.display());
        let archive = self.dir.join("netlet.tar");
        ok(&format!(
            "{root}/image/build.sh --binary {} --cni-binary {} --tag {app_version} {}",
            super::BIN,
            cni.display(),
            archive.display()
        ));
        self.load_image(&archive, "ghcr.io/netlet/netlet");
    }

    /// Imports an OCI image archive into the node's containerd as REPO:TAG.
    pub fn load_image(&self, archive: &Path, repository: &str) {
        ok(&format!("{SCRIPT} load {} {} {repository}", self.dir.display(), archive.display()));
    }

    /// A shell command in the node's network namespace (the host's mounts).
    pub fn on_node(&self, cmd: &str) -> String {
        ok(&format!("nsenter --net=/run/netns/{} sh -c '{}'", self.node.name, cmd.replace('\'', "'\\''")))
    }

    /// The pods matching `selector` in `namespace`.
    pub fn pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        self.list("pods", &format!("-n {namespace} -l {selector}"))
    }

    /// Waits for exactly one pod matching `selector` to be Ready, none other
    /// left (a rollout finished), and `accept` to hold for it; returns it.
    pub fn wait_one_ready_pod(&self, namespace: &str, selector: &str, timeout: Duration, accept: impl Fn(&Value) -> bool) -> Value {
        let mut found = Value::Null;
        wait_until(&format!("one Ready pod {selector} in {namespace}"), timeout, || {
            let pods = self.pods(namespace, selector);
            let ready = |p: &Value| super::kubectl::ready_of(p).0 == "True" && p["metadata"]["deletionTimestamp"].is_null();
            match pods.as_slice() {
                [p] if ready(p) && accept(p) => {
                    found = p.clone();
                    true
                }
                _ => false,
            }
        });
        found
    }

    /// A container's log, read where the kubelet writes it on the node
    /// (`kubectl logs` reads the same file through the kubelet).
    pub fn container_log(&self, pod: &Value, container: &str, restart: u64) -> String {
        let dir = format!(
            "/var/log/pods/{}_{}_{}/{container}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            pod["metadata"]["uid"].as_str().unwrap_or_default()
        );
        std::fs::read_to_string(format!("{dir}/{restart}.log")).unwrap_or_default()
    }

    /// The PID, on this machine, of a pod's container (through containerd).
    pub fn container_pid(&self, pod: &Value, container: &str) -> i32 {
        let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
        let status = statuses.iter().find(|s| s["name"] == container).expect("the container has a status");
        let id = status["containerID"].as_str().and_then(|i| i.strip_prefix("containerd://")).expect("a containerd container ID");
        let tasks = ok(&format!("ctr --address {}/containerd/containerd.sock --namespace k8s.io tasks list", self.dir.display()));
        tasks
            .lines()
            .find_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next() == Some(id)).then(|| fields.next()?.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no task {id} in containerd:\n{tasks}"))
    }

    /// Takes the cluster down and checks it undid everything it did on the
    /// machine: no process of its own, cgroup or namespace left.
    pub fn down(mut self) {
        self.down = true;
        let out = Command::new(SCRIPT).arg("down").arg(&self.dir).output().expect("local-cluster.sh runs");
        assert!(out.status.success(), "local-cluster.sh down: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(self.cni_socket().parent().unwrap());
        let cgroups = ok(&format!("ls -d /sys/fs/cgroup/*/{}-kubepods 2>/dev/null || true", self.node.tag));
        assert!(cgroups.trim().is_empty(), "cgroups left: {cgroups}");
        for ns in ["cp", "node"] {
            assert!(!super::netns_exists(&self.node.ns(ns)), "namespace {ns} left");
        }
        // "[/]..." matches the directory but not this shell's own command line.
        let ours = ok(&format!("pgrep -f '[{}/' || true", self.dir.display().to_string().replacen('/', "/]", 1)));
        assert!(ours.trim().is_empty(), "processes of the cluster left: {ours}");
    }

    /// The last lines of every component's log (for a failed test).
    fn dump_logs(&self) {
        for name in ["kubelet", "containerd", "controller-manager", "scheduler"] {
            let log = std::fs::read_to_string(self.dir.join(format!("logs/{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- {name} log (last 30 lines) ----\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
}

impl std::ops::Deref for LocalCluster {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.kubectl
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        match Command::new(SCRIPT).arg("down").arg(&self.dir).output() {
            Ok(out) if !out.status.success() => eprintln!("local-cluster.sh down failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("local-cluster.sh down did not run: {e}"),
            Ok(_) => {}
        }
        let _ = std::fs::remove_dir_all(self.cni_socket().parent().unwrap());
        // Then the node: every namespace and file with the tag.
    }
}
