//! The real `netlet-cni` binary, run as a container runtime runs it (CNI
//! environment, configuration on stdin), against the agent's own socket
//! server with a test consumer. Root: the socket is root-only, and a
//! caller of another user must be refused. Every socket lives in a
//! throwaway directory of the test's own.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlet::cni::{Added, CniError, CniSocket, CniSocketError, Interface, IpConfig, Reply, Request};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const PLUGIN: &str = env!("CARGO_BIN_EXE_netlet-cni");
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (the CNI socket is root-only); run them as root, see README");
}

/// A throwaway directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("netlet-cni-shim-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Answer = Box<dyn Fn(&Request) -> Option<Reply> + Send>;

/// The agent's socket server with a consumer that records every request
/// and answers with `answer` (`None`: holds the call unanswered).
struct TestAgent {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    _runtime: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl TestAgent {
    fn start(answer: impl Fn(&Request) -> Option<Reply> + Send + 'static) -> TestAgent {
        let dir = TempDir::new();
        let socket = dir.0.join("run/netlet/cni.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let bound = CniSocket::bind(&socket).unwrap();
        let (calls, mut consumer) = mpsc::channel::<netlet::cni::CniCall>(64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, answer): (_, Answer) = (seen.clone(), Box::new(answer));
        runtime.spawn(bound.serve(calls));
        runtime.spawn(async move {
            let mut held = Vec::new();
            while let Some(call) = consumer.recv().await {
                record.lock().unwrap().push(call.request.clone());
                match answer(&call.request) {
                    Some(reply) => call.reply(reply),
                    None => held.push(call),
                }
            }
        });
        TestAgent { socket, seen, _runtime: runtime, _dir: dir }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?} (stderr {:?})", self.stdout, self.stderr))
    }
    /// The printed CNI error, checked to be one with `code`.
    fn error(&self, code: u32) -> Value {
        let out = self.json();
        assert!(!self.success, "an error exits non-zero: {out}");
        assert_eq!(out["code"], code, "{out}");
        out
    }
}

/// The environment containerd 1.6 gives a plugin for a pod sandbox.
fn pod_env(command: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "5f1e0c0ffee".to_string()),
        ("CNI_NETNS", "/var/run/netns/cni-8e6c2b0a".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
        (
            "CNI_ARGS",
            "K8S_POD_INFRA_CONTAINER_ID=5f1e0c0ffee;K8S_POD_UID=9d1f;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0".to_string(),
        ),
    ])
}

/// The bridge plugin's result, as containerd hands it to the next plugin.
fn bridge_result() -> Value {
    json!({"cniVersion": "0.4.0",
           "interfaces": [{"name": "cni0", "mac": "6e:2b:00:00:00:01"}, {"name": "veth0a", "mac": "6e:2b:00:00:00:02"},
                          {"name": "eth0", "mac": "6e:2b:00:00:00:03", "sandbox": "/var/run/netns/cni-8e6c2b0a"}],
           "ips": [{"version": "4", "interface": 2, "address": "10.88.0.7/16", "gateway": "10.88.0.1"}],
           "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
}

fn config(socket: &Path) -> Value {
    json!({"cniVersion": "0.4.0", "name": "primary", "type": "netlet-cni", "socket": socket, "prevResult": bridge_result()})
}

fn run(env: &BTreeMap<&str, String>, stdin: &Value) -> Ran {
    run_as(env, stdin, None)
}

fn run_as(env: &BTreeMap<&str, String>, stdin: &Value, uid: Option<u32>) -> Ran {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear().envs(env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    }
    let mut child = cmd.spawn().expect("netlet-cni runs");
    // VERSION exits without reading stdin: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn version_is_answered_by_the_plugin_alone() {
    let agent = TestAgent::start(|_| Some(Ok(Added::default())));
    let ran = run(&BTreeMap::from([("CNI_COMMAND", "VERSION".to_string())]), &json!({"cniVersion": "0.4.0"}));
    assert!(ran.success, "{}", ran.stderr);
    assert_eq!(ran.json(), json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}));
    assert!(agent.seen().is_empty());
}

#[test]
fn add_hands_the_agent_the_pod_and_passes_the_primary_result_on() {
    let agent = TestAgent::start(|_| Some(Ok(Added::default())));
    let ran = run(&pod_env("ADD"), &config(&agent.socket));
    assert!(ran.success, "{} {}", ran.stdout, ran.stderr);
    assert_eq!(ran.json(), bridge_result(), "nothing of netlet's: the primary plugin's result, unchanged");
    let seen = agent.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.command.as_str(), r.container_id.as_str(), r.netns.as_str(), r.ifname.as_str()),
        ("ADD", "5f1e0c0ffee", "/var/run/netns/cni-8e6c2b0a", "eth0")
    );
    let pod = r.pod.as_ref().expect("the pod from CNI_ARGS");
    assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_deref()), ("shop", "web-0", Some("9d1f")));
    assert_eq!(r.config.prev_result.as_ref(), Some(&bridge_result()));
}

#[test]
fn add_prints_what_the_agent_added_after_the_primary_interfaces() {
    let agent = TestAgent::start(|r| {
        Some(Ok(Added {
            interfaces: vec![Interface { name: "net1".into(), mac: Some("02:42:ac:19:00:07".into()), sandbox: Some(r.netns.clone()) }],
            ips: vec![IpConfig {
                address: "172.25.0.7".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("172.25.0.1".parse().unwrap()),
                interface: 0,
            }],
            routes: vec![],
        }))
    });
    let mut cfg = config(&agent.socket);
    for (version, versioned) in [("0.4.0", true), ("1.0.0", false)] {
        cfg["cniVersion"] = version.into();
        cfg["prevResult"]["cniVersion"] = version.into();
        let out = run(&pod_env("ADD"), &cfg).json();
        assert_eq!(out["cniVersion"], version);
        assert_eq!(out["interfaces"][3], json!({"name": "net1", "mac": "02:42:ac:19:00:07", "sandbox": "/var/run/netns/cni-8e6c2b0a"}));
        assert_eq!(out["ips"][1]["address"], "172.25.0.7/16");
        assert_eq!(out["ips"][1]["interface"], 3);
        assert_eq!(out["ips"][1].get("version").is_some(), versioned, "{version}: {}", out["ips"][1]);
        assert_eq!(out["ips"][0], bridge_result()["ips"][0]);
    }
}

#[test]
fn del_and_check_succeed_silently_and_reach_the_agent() {
    let agent = TestAgent::start(|_| Some(Ok(Added::default())));
    for command in ["CHECK", "DEL"] {
        let ran = run(&pod_env(command), &config(&agent.socket));
        assert!(ran.success && ran.stdout.is_empty(), "{command}: {} {}", ran.stdout, ran.stderr);
    }
    let commands: Vec<&str> = agent.seen().iter().map(|r| r.command.as_str()).collect();
    assert_eq!(commands, ["CHECK", "DEL"]);
}

#[test]
fn the_agents_refusal_is_the_cni_error_the_runtime_shows() {
    let agent = TestAgent::start(|_| {
        Some(Err(CniError::new(CniError::ATTACHMENT_FAILED, "attachment shop/web-0-blue: network blue does not exist")))
    });
    let out = run(&pod_env("ADD"), &config(&agent.socket)).error(CniError::ATTACHMENT_FAILED);
    assert_eq!(out, json!({"cniVersion": "0.4.0", "code": 100, "msg": "attachment shop/web-0-blue: network blue does not exist"}));
}

#[test]
fn without_an_agent_add_is_retried_later_and_del_succeeds() {
    let dir = TempDir::new();
    let socket = dir.0.join("cni.sock");
    let out = run(&pod_env("ADD"), &config(&socket)).error(CniError::TRY_AGAIN_LATER);
    assert_eq!(out["details"], format!("socket {}", socket.display()));
    let del = run(&pod_env("DEL"), &config(&socket));
    assert!(del.success && del.stdout.is_empty(), "{} {}", del.stdout, del.stderr);
    assert!(del.stderr.contains("no netlet agent"), "{}", del.stderr);
}

#[test]
fn an_agent_that_does_not_answer_in_time_fails_even_del() {
    let agent = TestAgent::start(|_| None);
    let mut cfg = config(&agent.socket);
    cfg["timeoutSeconds"] = 1.into();
    for command in ["ADD", "DEL"] {
        let started = Instant::now();
        let out = run(&pod_env(command), &cfg).error(CniError::TRY_AGAIN_LATER);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{command} gave up after {took:?}");
        assert!(out["msg"].as_str().unwrap().contains("within 1 s"), "{out}");
    }
}

#[test]
fn only_root_reaches_the_socket() {
    let agent = TestAgent::start(|_| Some(Ok(Added::default())));
    let nobody = 65534;
    for command in ["ADD", "DEL"] {
        let out = run_as(&pod_env(command), &config(&agent.socket), Some(nobody)).error(CniError::IO_FAILURE);
        assert!(out["msg"].as_str().unwrap().contains("ermission denied"), "{out}");
    }
    assert!(agent.seen().is_empty(), "a non-root caller got through");
}

#[test]
fn the_agent_refuses_a_socket_directory_of_another_user() {
    let dir = TempDir::new();
    let theirs = dir.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = CniSocket::bind(&theirs.join("cni.sock")).err().expect("refused");
    assert!(matches!(e, CniSocketError::ForeignDirectory { owner: 65534, .. }), "{e}");
    assert!(!theirs.join("cni.sock").exists());
}

#[test]
fn pods_starting_together_each_get_their_own_answer() {
    let agent = TestAgent::start(|r| {
        let name = r.pod.as_ref().unwrap().name.clone();
        Some(Ok(Added { interfaces: vec![Interface { name, mac: None, sandbox: Some(r.netns.clone()) }], ..Added::default() }))
    });
    let runs: Vec<_> = (0..20)
        .map(|i| {
            let mut env = pod_env("ADD");
            env.insert("CNI_ARGS", format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-{i}"));
            env.insert("CNI_NETNS", format!("/var/run/netns/cni-{i}"));
            let cfg = config(&agent.socket);
            std::thread::spawn(move || run(&env, &cfg))
        })
        .collect();
    for (i, ran) in runs.into_iter().enumerate() {
        let out = ran.join().unwrap().json();
        assert_eq!(out["interfaces"][3], json!({"name": format!("web-{i}"), "sandbox": format!("/var/run/netns/cni-{i}")}));
    }
    assert_eq!(agent.seen().len(), 20);
}
