//! A real Kubernetes API server for Kubernetes-mode tests, and simulated
//! nodes that reach it over the network.
//!
//! `e2e/kube-apiserver.sh` (kube-apiserver 1.20 + etcd, built offline and
//! cached) runs inside a throwaway "control-plane" namespace, listening on
//! all of that namespace's addresses. The control plane holds a bridge that
//! every node namespace joins with a veth (10.97.0.N/24; the API server is
//! 10.97.0.254): the agents reach the API server as on a real cluster, and
//! the same bridge is the underlay between nodes for overlay networks.
//! kubectl runs inside the control-plane namespace against 127.0.0.1, as
//! cluster admin; the agents run as netlet's ServiceAccount, with exactly
//! the rights manifests/rbac.yaml gives it, and verify the server's
//! certificate.

use std::path::PathBuf;
use std::process::Command;

use super::kubectl::Kubectl;
use super::{ok, Node};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/kube-apiserver.sh");
pub const API_ADDRESS: &str = "10.97.0.254";
/// The user the agents run as: the shipped ServiceAccount's (a static
/// token for its user name and groups), so the shipped ClusterRoleBinding
/// in manifests/rbac.yaml, and nothing else, says what they may do.
const AGENT_USER: &str = "system:serviceaccount:netlet-system:netlet=system:serviceaccounts,system:serviceaccounts:netlet-system";

fn repo_root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

pub struct KubeCluster {
    /// The control-plane namespace (named with node 0's tag, so dropping the
    /// nodes removes it too).
    pub cp: String,
    /// The API server's state dir: kubeconfig, env, logs.
    pub dir: PathBuf,
    kubectl: Kubectl,
    /// The kubeconfig agents use: the API server's underlay address.
    pub node_kubeconfig: PathBuf,
    pub nodes: Vec<Node>,
}

/// The underlay address of node `i`.
pub fn node_address(i: usize) -> String {
    format!("10.97.0.{}", i + 1)
}

impl KubeCluster {
    /// Starts an API server, applies the CRDs and creates one Node object
    /// (and node namespace) per name. No agent runs yet.
    pub fn start(node_names: &[&str]) -> KubeCluster {
        let nodes: Vec<Node> = node_names.iter().map(|n| Node::named(n)).collect();
        let cp = nodes[0].ns("cp");
        ok(&format!(
            "ip netns add {cp} && ip -n {cp} link set lo up && ip -n {cp} link add br0 type bridge && \
             ip -n {cp} addr add {API_ADDRESS}/24 dev br0 && ip -n {cp} link set br0 up"
        ));
        for (i, node) in nodes.iter().enumerate() {
            let port = format!("{}p{i}", nodes[0].tag);
            ok(&format!(
                "ip link add {port} netns {cp} type veth peer name ul0 netns {n} && ip -n {cp} link set {port} master br0 up && \
                 ip -n {n} addr add {addr}/24 dev ul0 && ip -n {n} link set ul0 up",
                n = node.name,
                addr = node_address(i)
            ));
        }
        let dir = nodes[0].dir.join("apiserver");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &cp, SCRIPT, "start"])
            .arg(&dir)
            .env("NETLET_KUBE_BIND_ADDRESS", "0.0.0.0")
            .env("NETLET_KUBE_SANS", API_ADDRESS)
            .env("NETLET_KUBE_USERS", AGENT_USER)
            .output()
            .expect("kube-apiserver.sh runs");
        assert!(out.status.success(), "API server did not start: {}", String::from_utf8_lossy(&out.stderr));
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let var = |k: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("{k} in env")).to_string();
        // Agents reach the API server over the underlay, as the agent's
        // ServiceAccount: only the shipped ClusterRole lets them do anything.
        let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig")).unwrap();
        let agent_token =
            std::fs::read_to_string(dir.join("tokens").join(AGENT_USER.split('=').next().unwrap().replace(':', "_"))).unwrap();
        let node_kubeconfig = dir.join("kubeconfig-nodes");
        let node_config = kubeconfig
            .replace("https://127.0.0.1:", &format!("https://{API_ADDRESS}:"))
            .replace(&format!("token: {}", var("TOKEN")), &format!("token: {}", agent_token.trim()));
        assert!(node_config.contains(agent_token.trim()), "the agent's kubeconfig has the agent's token");
        std::fs::write(&node_kubeconfig, node_config).unwrap();
        let kubectl =
            Kubectl::new(format!("ip netns exec {cp} {} --kubeconfig {}/kubeconfig", var("KUBECTL"), dir.display()), &nodes[0].tag);
        let cluster = KubeCluster { cp, dir, kubectl, node_kubeconfig, nodes };
        cluster.kubectl_ok(&format!("apply -f {}/../crds/netlet.io.yaml", env!("CARGO_MANIFEST_DIR")));
        cluster.kubectl_ok(
            "wait --for condition=established --timeout=30s crd/networks.netlet.io crd/attachments.netlet.io crd/portmappings.netlet.io",
        );
        cluster.kubectl_ok(&format!("apply -f {root}/manifests/namespace.yaml -f {root}/manifests/rbac.yaml", root = repo_root()));
        for (i, name) in node_names.iter().enumerate() {
            cluster.apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}, zone: z{i}}}\n  annotations: {{netlet.io/vtep-address: \"{}\"}}\n",
                node_address(i)
            ));
        }
        cluster
    }

    /// Starts node `i`'s agent against the API server.
    pub fn start_agent(&mut self, i: usize) -> u32 {
        let kubeconfig = self.node_kubeconfig.clone();
        self.nodes[i].spawn_kube(&kubeconfig, &["--metrics-addr", "127.0.0.1:9464", "--resync-period", "5s"])
    }

    /// kube-apiserver's PID (for SIGSTOP/SIGCONT).
    pub fn apiserver_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("apiserver.pid")).unwrap().trim().parse().unwrap()
    }

    /// Kills and restarts the API server (same port, same etcd).
    pub fn restart_apiserver(&self) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.cp, SCRIPT, "restart-apiserver"])
            .arg(&self.dir)
            .env("NETLET_KUBE_BIND_ADDRESS", "0.0.0.0")
            .output()
            .unwrap();
        assert!(out.status.success(), "restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/kube-apiserver.log")).unwrap_or_default()
    }
}

impl std::ops::Deref for KubeCluster {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.kubectl
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // Agents first (they would log the outage), then the API server.
        for node in &mut self.nodes {
            node.stop_agents();
        }
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).output();
        if std::thread::panicking() || std::env::var_os("NETLET_TEST_KEEP_LOGS").is_some() {
            for node in &self.nodes {
                for i in 0..4 {
                    let log = node.agent_log(i);
                    if !log.is_empty() {
                        eprintln!("---- agent log {} #{i} (last 60 lines) ----", node.node_name);
                        let lines: Vec<&str> = log.lines().collect();
                        eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
                    }
                }
            }
        }
    }
}
