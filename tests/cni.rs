//! netlet-cni with the agent. The agent serves the socket `--cni-socket`
//! names (root-only, gone when it stops). On the real one-node cluster
//! (e2e/local-cluster.sh: kubelet over containerd 1.6 and runc, the Debian
//! bridge as the primary CNI network), the chart's init container chains
//! netlet-cni into the node's conflist; a plain pod starts on the primary
//! network through the chain, and containerd's ADD and DEL reach the
//! agent; `cni.enabled=false` takes netlet-cni off the node again.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use harness::cluster::{LocalCluster, SYSTEM};
use harness::*;
use netlet::cni::{Added, Command, NetworkConfig, Request};
use serde_json::{json, Value};

const ROLLOUT: Duration = Duration::from_secs(120);
const AGENT: &str = "app.kubernetes.io/name=netlet";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn request(container: &str) -> Request {
    Request {
        command: Command::Add,
        container_id: container.into(),
        netns: "/run/netns/none".into(),
        ifname: "eth0".into(),
        pod: None,
        config: NetworkConfig { cni_version: "1.0.0".into(), name: "primary".into(), ..NetworkConfig::default() },
    }
}

#[test]
fn the_agent_serves_the_cni_socket_it_is_given_and_removes_it_when_it_stops() {
    let mut node = Node::new();
    let socket = node.dir.join("run/cni.sock");
    let pid = node.spawn(&["--metrics-addr", "off", "--cni-socket", socket.to_str().unwrap()]);
    wait_until("the CNI socket", Duration::from_secs(10), || socket.exists());
    assert_eq!((mode(&socket), mode(socket.parent().unwrap())), (0o600, 0o700));
    let reply = netlet_cni::client::call(&socket, &request("c0ffee"), Duration::from_secs(5)).expect("the agent answers");
    assert_eq!(reply, Ok(Added::default()), "no pod has netlet attachments: nothing added");
    wait_until("the call in the agent's log", Duration::from_secs(5), || node.agent_log(0).contains("container=c0ffee"));

    // A second agent cannot take the socket over.
    let second = node.spawn(&["--metrics-addr", "off", "--cni-socket", socket.to_str().unwrap()]);
    wait_until("the second agent's refusal", Duration::from_secs(10), || node.agent_log(1).contains("another agent is serving it"));
    node.kill_agent(second, nix::sys::signal::Signal::SIGKILL);
    assert!(netlet_cni::client::call(&socket, &request("c0ffee"), Duration::from_secs(5)).is_ok(), "the first agent still serves");

    node.kill_agent(pid, nix::sys::signal::Signal::SIGTERM);
    assert!(!socket.exists(), "the socket outlived its agent");
}

/// The primary conflist local-cluster.sh writes, as JSON.
fn conflist(c: &LocalCluster) -> Value {
    serde_json::from_str(&std::fs::read_to_string(c.cni_conf_dir().join("10-primary.conflist")).unwrap()).unwrap()
}

/// The CNI calls the agent logged for pod `default/NAME`: its commands.
fn calls_for(log: &str, pod: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("CNI call") && l.contains(&format!("pod=default/{pod} ")))
        .filter_map(|l| l.split("command=").nth(1)?.split_whitespace().next().map(String::from))
        .collect()
}

fn plain_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: pause, image: \"k8s.gcr.io/pause:3.2\", imagePullPolicy: Never}}\n"
    )
}

/// Waits for pod `default/NAME` Ready; returns its IP.
fn pod_ip_when_ready(c: &LocalCluster, name: &str) -> String {
    let mut pod = Value::Null;
    wait_until(&format!("pod {name} Ready"), ROLLOUT, || {
        pod = c.get("pod", &format!("default/{name}"));
        kubectl::ready_of(&pod).0 == "True"
    });
    pod["status"]["podIP"].as_str().unwrap_or_default().to_string()
}

#[test]
fn on_a_real_node_pods_start_through_netlet_cni_and_their_calls_reach_the_agent() {
    let c = LocalCluster::up();
    let primary = conflist(&c);
    let primary_text = std::fs::read_to_string(c.cni_conf_dir().join("10-primary.conflist")).unwrap();
    c.load_agent_image();
    c.kubectl_ok(&format!("create namespace {SYSTEM}"));
    c.helm_install("--set defaultNetworks.enabled=false");
    let agent = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    let socket = c.cni_socket();
    assert!(agent["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| *a == json!(format!("--cni-socket={}", socket.display()))));

    // The init container chained netlet-cni last into the conflist the
    // runtime loads, kept the original, and put the binary in the bin dir.
    let chained = conflist(&c);
    let mut expected = primary.clone();
    expected["plugins"].as_array_mut().unwrap().push(json!({"type": "netlet-cni", "socket": socket}));
    assert_eq!(chained, expected);
    assert_eq!(std::fs::read_to_string(c.cni_conf_dir().join("10-primary.conflist.netlet-backup")).unwrap(), primary_text);
    let installed = c.cni_bin_dir().join("netlet-cni");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(Path::new(BIN).with_file_name("netlet-cni")).unwrap());
    assert_eq!(mode(&installed), 0o755);
    assert_eq!((mode(&socket), mode(socket.parent().unwrap())), (0o600, 0o700));

    // A plain pod starts on the primary network through the chain: its IP
    // is the bridge plugin's, which containerd reads from the chain's
    // final result, netlet-cni's.
    c.apply(&plain_pod("plain"));
    let ip = pod_ip_when_ready(&c, "plain");
    assert!(ip.starts_with("10.88."), "pod IP {ip:?} is not from the primary network");
    let log = || c.container_log(&agent, "netlet", 0);
    assert_eq!(calls_for(&log(), "plain"), ["ADD"], "containerd's ADD reached the agent:\n{}", log());
    // containerd 1.6 names the pod with its UID (K8S_POD_UID).
    let uid = c.get("pod", "default/plain")["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(log().contains(&format!("pod=default/plain uid={uid} ")), "{}", log());
    c.kubectl_ok("delete pod plain -n default --wait --timeout=60s");
    wait_until("the pod's DEL at the agent", ROLLOUT, || calls_for(&log(), "plain").contains(&"DEL".to_string()));

    // A restarted agent takes the socket over (the old one was killed
    // without removing it), and pods start as before.
    let pid = c.container_pid(&agent, "netlet");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| p["status"]["containerStatuses"][0]["restartCount"] == 1);
    c.apply(&plain_pod("after-restart"));
    assert!(pod_ip_when_ready(&c, "after-restart").starts_with("10.88."));
    assert_eq!(calls_for(&c.container_log(&restarted, "netlet", 1), "after-restart"), ["ADD"]);
    c.kubectl_ok("delete pod after-restart -n default --wait --timeout=60s");

    // cni.enabled=false takes it off the node: the conflist as it was, no
    // backup, no binary, no socket; pods still start on the primary network.
    c.helm(&format!(
        "upgrade netlet {}/../charts/netlet -n {SYSTEM} --reuse-values --set cni.enabled=false --wait --timeout 120s",
        env!("CARGO_MANIFEST_DIR")
    ));
    let without = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| p["metadata"]["uid"] != restarted["metadata"]["uid"]);
    assert!(!without["spec"]["containers"][0]["args"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().starts_with("--cni-socket")));
    assert_eq!(conflist(&c), primary);
    assert!(!c.cni_conf_dir().join("10-primary.conflist.netlet-backup").exists());
    assert!(!installed.exists());
    assert!(!socket.exists());
    c.apply(&plain_pod("unchained"));
    assert!(pod_ip_when_ready(&c, "unchained").starts_with("10.88."));
    c.kubectl_ok("delete pod unchained -n default --wait --timeout=60s");

    c.helm(&format!("uninstall netlet -n {SYSTEM} --wait --timeout 120s"));
    c.down();
}
