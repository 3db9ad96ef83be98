//! The CNI dispatch: the runtime's environment and stdin in, what to print
//! and the exit status out. VERSION is answered here; ADD, DEL and CHECK
//! are checked as the spec asks (required variables, names, versions) and
//! handed to the agent.
//!
//! DEL when no agent listens (socket missing or refusing) succeeds: the
//! spec asks DEL to tolerate missing resources, and an agent that is down
//! has nothing it could release now. The agent's side of that bargain: it
//! keeps the sandboxes it was told of and, when it starts, checks them
//! against the kernel, dropping those that are gone.
//! An agent that is up but does not answer in time, or answers with an
//! error, fails the DEL (code 11 or its own), so the runtime retries it.
//! ADD and CHECK always need the agent: without it, code 11 (try again).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::client::{Agent, CallError};
use crate::protocol::{CniError, Command, NetworkConfig, Pod, Request, MAX_MESSAGE_BYTES};
use crate::result;
use crate::{DEFAULT_SOCKET, DEFAULT_TIMEOUT};

/// What the plugin prints and how it exits.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    /// Unstructured notes for the runtime's log.
    pub stderr: String,
    pub success: bool,
}

impl Outcome {
    fn printed(json: serde_json::Value) -> Outcome {
        Outcome { stdout: format!("{json}\n"), stderr: String::new(), success: true }
    }
    fn silent() -> Outcome {
        Outcome { success: true, ..Outcome::default() }
    }
    fn failed(version: &str, error: &CniError) -> Outcome {
        Outcome { stdout: format!("{}\n", result::error_json(version, error)), stderr: String::new(), success: false }
    }
}

/// Runs one invocation: `env` looks up the runtime's environment, `stdin`
/// is the network configuration (read only for ADD, DEL and CHECK).
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read, agent: &dyn Agent) -> Outcome {
    let Some(command) = env("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        // Someone ran it by hand: say what it is, as the reference plugins do.
        let about =
            format!("netlet-cni: hands pod sandboxes to the netlet agent; CNI versions {}\n", result::SUPPORTED_VERSIONS.join(", "));
        return Outcome { stderr: about, ..Outcome::silent() };
    };
    let command = match command.as_str() {
        "VERSION" => return Outcome::printed(result::version_info()),
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        other => {
            return Outcome::failed(
                result::LATEST_VERSION,
                &CniError::new(CniError::INVALID_ENVIRONMENT, format!("unknown CNI_COMMAND: {other}")),
            )
        }
    };
    let (request, socket, timeout) = match prepare(command, env, stdin) {
        Ok(prepared) => prepared,
        Err((version, error)) => return Outcome::failed(&version, &error),
    };
    let version = request.config.cni_version.clone();
    match agent.call(Path::new(&socket), &request, timeout) {
        Ok(Ok(added)) if command == Command::Add => match result::chained(&version, request.config.prev_result.as_ref(), &added) {
            Ok(json) => Outcome::printed(json),
            Err(error) => Outcome::failed(&version, &error),
        },
        Ok(Ok(_)) => Outcome::silent(),
        Ok(Err(error)) => Outcome::failed(&version, &error),
        Err(CallError::Unreachable(e)) if command == Command::Del => Outcome {
            stderr: format!(
                "netlet-cni: DEL {}: no netlet agent at {socket} ({e}); nothing to release until it runs\n",
                request.container_id
            ),
            ..Outcome::silent()
        },
        Err(e) => {
            let code = match e {
                CallError::Unreachable(_) | CallError::TimedOut(_) => CniError::TRY_AGAIN_LATER,
                CallError::Io(_) => CniError::IO_FAILURE,
                CallError::Malformed(_) => CniError::DECODING_FAILURE,
            };
            Outcome::failed(&version, &CniError::new(code, e.to_string()).with_details(format!("socket {socket}")))
        }
    }
}

/// Everything checked before the agent is asked: the request, the socket
/// and the timeout, or the error with the version to print it in.
fn prepare(
    command: Command,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<(Request, String, Duration), (String, CniError)> {
    let latest = |e: CniError| (result::LATEST_VERSION.to_string(), e);
    let var = |name: &str| env(name).unwrap_or_default();
    let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"];
    if command != Command::Del {
        required.insert(1, "CNI_NETNS");
    }
    let missing: Vec<&str> = required.into_iter().filter(|name| var(name).is_empty()).collect();
    if !missing.is_empty() {
        return Err(latest(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("required env variables [{}] missing", missing.join(",")),
        )));
    }

    let mut raw = Vec::new();
    if let Err(e) = stdin.take(MAX_MESSAGE_BYTES + 1).read_to_end(&mut raw) {
        return Err(latest(CniError::new(CniError::IO_FAILURE, format!("reading the network configuration from stdin: {e}"))));
    }
    if raw.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(latest(CniError::new(
            CniError::DECODING_FAILURE,
            format!("network configuration longer than {MAX_MESSAGE_BYTES} bytes"),
        )));
    }
    let config: NetworkConfig = serde_json::from_slice(&raw)
        .map_err(|e| latest(CniError::new(CniError::DECODING_FAILURE, format!("decoding the network configuration: {e}"))))?;
    result::check_version(&config.cni_version).map_err(latest)?;
    let version = config.cni_version.clone();
    let fail = |e: CniError| (version.clone(), e);

    validate_network_name(&config.name).map_err(fail)?;
    let container_id = var("CNI_CONTAINERID");
    validate_container_id(&container_id).map_err(fail)?;
    let ifname = var("CNI_IFNAME");
    validate_interface_name(&ifname).map_err(fail)?;
    let pod = pod_of(&var("CNI_ARGS")).map_err(fail)?;
    let netns = var("CNI_NETNS");
    if is_own_namespace(&netns) {
        return Err(fail(
            CniError::new(CniError::INVALID_NETNS, "CNI_NETNS is the plugin's own network namespace (the node's), not a sandbox's")
                .with_details(netns),
        ));
    }
    if command == Command::Check {
        if !result::allows_check(&version) {
            return Err(fail(CniError::new(CniError::INCOMPATIBLE_VERSION, format!("config version {version} does not allow CHECK"))));
        }
        if config.prev_result.is_none() {
            return Err(fail(CniError::new(
                CniError::INVALID_NETWORK_CONFIG,
                "CHECK without prevResult: the runtime must pass the last ADD's result",
            )));
        }
    }
    let socket = config.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    if !socket.starts_with('/') {
        return Err(fail(CniError::new(CniError::INVALID_NETWORK_CONFIG, format!("socket {socket:?} is not an absolute path"))));
    }
    let timeout = match config.timeout_seconds {
        None => DEFAULT_TIMEOUT,
        Some(0) => return Err(fail(CniError::new(CniError::INVALID_NETWORK_CONFIG, "timeoutSeconds must be at least 1"))),
        Some(seconds) => Duration::from_secs(seconds),
    };
    let request = Request { command, container_id, netns, ifname, pod, config };
    Ok((request, socket, timeout))
}

/// The pod named by CNI_ARGS (`K=V;K=V`, the `K8S_POD_*` keys Kubernetes
/// runtimes send); other keys are the runtime's business and ignored.
pub fn pod_of(args: &str) -> Result<Option<Pod>, CniError> {
    let (mut namespace, mut name, mut uid) = (None, None, None);
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_ARGS: {pair:?} is not KEY=VALUE")));
        };
        match key {
            "K8S_POD_NAMESPACE" => namespace = Some(value),
            "K8S_POD_NAME" => name = Some(value),
            "K8S_POD_UID" => uid = Some(value),
            _ => {}
        }
    }
    match (namespace.filter(|v| !v.is_empty()), name.filter(|v| !v.is_empty())) {
        (Some(namespace), Some(name)) => {
            Ok(Some(Pod { namespace: namespace.into(), name: name.into(), uid: uid.filter(|u| !u.is_empty()).map(String::from) }))
        }
        (None, None) => Ok(None),
        _ => Err(CniError::new(CniError::INVALID_ENVIRONMENT, "CNI_ARGS names a pod without both K8S_POD_NAMESPACE and K8S_POD_NAME")
            .with_details(args.to_string())),
    }
}

/// Whether `netns` names the namespace this process runs in: the same
/// nsfs inode as /proc/self/ns/net. A path that cannot be read is no
/// match (DEL may name one already gone; the agent checks the rest).
fn is_own_namespace(netns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    !netns.is_empty() && id(netns).is_some_and(|ns| Some(ns) == id("/proc/self/ns/net"))
}

/// An alphanumeric, then alphanumerics, `_`, `.` and `-` (the spec's rule
/// for container IDs and network names).
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::new(CniError::INVALID_NETWORK_CONFIG, "missing network name"));
    }
    if !is_identifier(name) {
        return Err(
            CniError::new(CniError::INVALID_NETWORK_CONFIG, "invalid characters found in network name").with_details(name.to_string())
        );
    }
    Ok(())
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if !is_identifier(id) {
        return Err(CniError::new(CniError::INVALID_ENVIRONMENT, "invalid characters in CNI_CONTAINERID").with_details(id.to_string()));
    }
    Ok(())
}

/// Linux's rule: 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_interface_name(name: &str) -> Result<(), CniError> {
    let why = if name.len() > 15 {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not an interface name"
    } else if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_IFNAME {name:?} {why}")))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::{Added, Interface, IpConfig, Reply};

    /// An agent that answers with a fixed reply (or transport failure) and
    /// remembers what it was asked.
    struct FakeAgent {
        answer: Box<dyn Fn() -> Result<Reply, CallError>>,
        asked: RefCell<Vec<(String, Request, Duration)>>,
    }

    impl FakeAgent {
        fn answering(answer: impl Fn() -> Result<Reply, CallError> + 'static) -> FakeAgent {
            FakeAgent { answer: Box::new(answer), asked: RefCell::default() }
        }
        fn nothing_to_add() -> FakeAgent {
            Self::answering(|| Ok(Ok(Added::default())))
        }
        fn only_request(&self) -> (String, Request, Duration) {
            let asked = self.asked.borrow();
            assert_eq!(asked.len(), 1, "the agent was asked {} times", asked.len());
            asked[0].clone()
        }
    }

    impl Agent for FakeAgent {
        fn call(&self, socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
            self.asked.borrow_mut().push((socket.display().to_string(), request.clone(), timeout));
            (self.answer)()
        }
    }

    /// containerd's environment for a pod sandbox.
    fn pod_env(command: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "0123abcd"),
            ("CNI_NETNS", "/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=u-42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn bridge_result() -> Value {
        json!({"cniVersion": "0.4.0",
               "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/cni-1"}],
               "ips": [{"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}],
               "dns": {}})
    }

    /// The conflist entry as containerd passes it, chained after the bridge.
    fn chained_config() -> Value {
        json!({"cniVersion": "0.4.0", "name": "primary", "type": "netlet-cni", "socket": "/run/test/cni.sock",
               "prevResult": bridge_result()})
    }

    fn run_with(env: &HashMap<String, String>, stdin: &Value, agent: &FakeAgent) -> Outcome {
        let bytes = stdin.to_string();
        run(&|k| env.get(k).cloned(), &mut bytes.as_bytes(), agent)
    }

    fn printed(outcome: &Outcome) -> Value {
        serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", outcome.stdout))
    }

    /// Fails unless the outcome is a CNI error with `code`; returns its JSON.
    fn error_of(outcome: &Outcome, code: u32) -> Value {
        let out = printed(outcome);
        assert!(!outcome.success, "an error exits non-zero: {outcome:?}");
        assert_eq!(out["code"], code, "{out}");
        assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()) && out["cniVersion"].is_string(), "{out}");
        out
    }

    #[test]
    fn version_is_answered_without_the_agent_or_stdin() {
        let agent = FakeAgent::nothing_to_add();
        let env: HashMap<_, _> = [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
        let mut stdin = std::io::repeat(b'x'); // never read: it would not end
        let outcome = run(&|k| env.get(k).cloned(), &mut stdin, &agent);
        assert!(outcome.success);
        assert_eq!(printed(&outcome), json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}));
        assert!(agent.asked.borrow().is_empty());
    }

    #[test]
    fn add_forwards_the_pod_and_config_and_passes_the_previous_result_on() {
        let agent = FakeAgent::nothing_to_add();
        let outcome = run_with(&pod_env("ADD"), &chained_config(), &agent);
        assert!(outcome.success, "{outcome:?}");
        assert_eq!(printed(&outcome), bridge_result(), "nothing added: prevResult unchanged");
        let (socket, request, timeout) = agent.only_request();
        assert_eq!((socket.as_str(), timeout), ("/run/test/cni.sock", DEFAULT_TIMEOUT));
        assert_eq!(request.command, Command::Add);
        assert_eq!(
            (request.container_id.as_str(), request.netns.as_str(), request.ifname.as_str()),
            ("0123abcd", "/run/netns/cni-1", "eth0")
        );
        assert_eq!(request.pod, Some(Pod { namespace: "shop".into(), name: "web-0".into(), uid: Some("u-42".into()) }));
        assert_eq!(request.config.prev_result, Some(bridge_result()));
        assert_eq!(request.config.name, "primary");
    }

    #[test]
    fn add_appends_what_the_agent_added() {
        let agent = FakeAgent::answering(|| {
            Ok(Ok(Added {
                interfaces: vec![Interface { name: "net1".into(), mac: None, sandbox: Some("/run/netns/cni-1".into()) }],
                ips: vec![IpConfig { address: "172.25.0.9".parse().unwrap(), prefix_len: 16, gateway: None, interface: 0 }],
                routes: vec![],
            }))
        });
        let out = printed(&run_with(&pod_env("ADD"), &chained_config(), &agent));
        assert_eq!(out["interfaces"][3]["name"], "net1");
        assert_eq!(out["ips"][1], json!({"version": "4", "address": "172.25.0.9/16", "interface": 3}));
    }

    #[test]
    fn the_agents_error_is_printed_in_the_configs_version() {
        let agent = FakeAgent::answering(|| {
            Ok(Err(CniError::new(CniError::ATTACHMENT_FAILED, "attachment shop/web-net1: network blue does not exist")))
        });
        let out = error_of(&run_with(&pod_env("ADD"), &chained_config(), &agent), CniError::ATTACHMENT_FAILED);
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["msg"], "attachment shop/web-net1: network blue does not exist");
    }

    #[test]
    fn del_and_check_print_nothing_on_success() {
        for command in ["DEL", "CHECK"] {
            let agent = FakeAgent::nothing_to_add();
            let outcome = run_with(&pod_env(command), &chained_config(), &agent);
            assert_eq!(outcome, Outcome::silent(), "{command}");
            assert_eq!(agent.only_request().1.command.as_str(), command);
        }
    }

    #[test]
    fn del_succeeds_without_an_agent_but_add_and_check_ask_to_try_again() {
        let unreachable = || Err(CallError::Unreachable(std::io::Error::from(std::io::ErrorKind::NotFound)));
        let del = run_with(&pod_env("DEL"), &chained_config(), &FakeAgent::answering(unreachable));
        assert!(del.success && del.stdout.is_empty(), "{del:?}");
        assert!(del.stderr.contains("no netlet agent at /run/test/cni.sock"), "{}", del.stderr);
        for command in ["ADD", "CHECK"] {
            let out =
                error_of(&run_with(&pod_env(command), &chained_config(), &FakeAgent::answering(unreachable)), CniError::TRY_AGAIN_LATER);
            assert_eq!(out["details"], "socket /run/test/cni.sock");
        }
    }

    #[test]
    fn an_agent_that_is_up_but_silent_or_garbled_fails_every_command() {
        for command in ["ADD", "DEL", "CHECK"] {
            let slow = FakeAgent::answering(|| Err(CallError::TimedOut(Duration::from_secs(5))));
            let out = error_of(&run_with(&pod_env(command), &chained_config(), &slow), CniError::TRY_AGAIN_LATER);
            assert!(out["msg"].as_str().unwrap().contains("within 5 s"), "{out}");
            let garbled = FakeAgent::answering(|| Err(CallError::Malformed("expected value".into())));
            error_of(&run_with(&pod_env(command), &chained_config(), &garbled), CniError::DECODING_FAILURE);
            let cut = FakeAgent::answering(|| Err(CallError::Io(std::io::ErrorKind::BrokenPipe.into())));
            error_of(&run_with(&pod_env(command), &chained_config(), &cut), CniError::IO_FAILURE);
        }
    }

    #[test]
    fn missing_variables_are_named() {
        let mut env = pod_env("ADD");
        env.remove("CNI_NETNS");
        env.remove("CNI_PATH");
        let agent = FakeAgent::nothing_to_add();
        let out = error_of(&run_with(&env, &chained_config(), &agent), CniError::INVALID_ENVIRONMENT);
        assert_eq!(out["msg"], "required env variables [CNI_NETNS,CNI_PATH] missing");
        // DEL may come after the namespace is gone.
        let mut env = pod_env("DEL");
        env.remove("CNI_NETNS");
        assert!(run_with(&env, &chained_config(), &agent).success);
        assert_eq!(agent.asked.borrow()[0].1.netns, "");
    }

    #[test]
    fn without_a_command_it_describes_itself_and_with_an_unknown_one_it_fails() {
        let agent = FakeAgent::nothing_to_add();
        let outcome = run(&|_| None, &mut "".as_bytes(), &agent);
        assert!(outcome.success && outcome.stdout.is_empty() && outcome.stderr.contains("netlet-cni"), "{outcome:?}");
        let out = error_of(&run_with(&pod_env("GC"), &chained_config(), &agent), CniError::INVALID_ENVIRONMENT);
        assert_eq!(out["msg"], "unknown CNI_COMMAND: GC");
        assert!(agent.asked.borrow().is_empty());
    }

    #[test]
    fn bad_input_gets_the_specs_error_code_and_never_reaches_the_agent() {
        let with = |key: &str, value: Value| {
            let mut c = chained_config();
            c[key] = value;
            c
        };
        let env_with = |key: &str, value: &str| {
            let mut e = pod_env("ADD");
            e.insert(key.into(), value.into());
            e
        };
        let cases: Vec<(&str, HashMap<String, String>, Value, u32)> = vec![
            ("unsupported version", pod_env("ADD"), with("cniVersion", json!("1.1.0")), CniError::INCOMPATIBLE_VERSION),
            ("no version", pod_env("ADD"), with("cniVersion", json!("")), CniError::INCOMPATIBLE_VERSION),
            ("CHECK before 0.4.0", pod_env("CHECK"), with("cniVersion", json!("0.3.1")), CniError::INCOMPATIBLE_VERSION),
            ("CHECK without prevResult", pod_env("CHECK"), with("prevResult", Value::Null), CniError::INVALID_NETWORK_CONFIG),
            ("no network name", pod_env("ADD"), with("name", json!("")), CniError::INVALID_NETWORK_CONFIG),
            ("bad network name", pod_env("ADD"), with("name", json!("-x")), CniError::INVALID_NETWORK_CONFIG),
            ("relative socket", pod_env("ADD"), with("socket", json!("cni.sock")), CniError::INVALID_NETWORK_CONFIG),
            ("zero timeout", pod_env("ADD"), with("timeoutSeconds", json!(0)), CniError::INVALID_NETWORK_CONFIG),
            ("socket not a string", pod_env("ADD"), with("socket", json!(5)), CniError::DECODING_FAILURE),
            ("prevResult not an object", pod_env("ADD"), with("prevResult", json!([1])), CniError::INVALID_NETWORK_CONFIG),
            ("bad container ID", env_with("CNI_CONTAINERID", "../etc"), chained_config(), CniError::INVALID_ENVIRONMENT),
            ("long ifname", env_with("CNI_IFNAME", "a-very-long-ifname"), chained_config(), CniError::INVALID_ENVIRONMENT),
            ("ifname with a slash", env_with("CNI_IFNAME", "eth/0"), chained_config(), CniError::INVALID_ENVIRONMENT),
            ("CNI_ARGS without =", env_with("CNI_ARGS", "K8S_POD_NAME"), chained_config(), CniError::INVALID_ENVIRONMENT),
            ("pod without namespace", env_with("CNI_ARGS", "K8S_POD_NAME=web"), chained_config(), CniError::INVALID_ENVIRONMENT),
            ("the node's own namespace", env_with("CNI_NETNS", "/proc/self/ns/net"), chained_config(), CniError::INVALID_NETNS),
            (
                "the node's own namespace by PID",
                env_with("CNI_NETNS", &format!("/proc/{}/ns/net", std::process::id())),
                chained_config(),
                CniError::INVALID_NETNS,
            ),
        ];
        for (what, env, config, code) in cases {
            let agent = FakeAgent::nothing_to_add();
            let outcome = run_with(&env, &config, &agent);
            let out = printed(&outcome);
            assert!(!outcome.success && out["code"] == code, "{what}: {out}");
            // The prevResult case fails after the agent answered (it is
            // only read when the result is built); all others before.
            if what != "prevResult not an object" {
                assert!(agent.asked.borrow().is_empty(), "{what} reached the agent");
            }
        }
        let agent = FakeAgent::nothing_to_add();
        let garbage = run(&|k| pod_env("ADD").get(k).cloned(), &mut "{not json".as_bytes(), &agent);
        assert_eq!(error_of(&garbage, CniError::DECODING_FAILURE)["cniVersion"], "1.0.0", "no config: the latest version");
    }

    #[test]
    fn cni_args_without_a_pod_or_with_extra_keys_are_fine() {
        assert_eq!(pod_of("").unwrap(), None);
        assert_eq!(pod_of("IgnoreUnknown=1;FOO=bar").unwrap(), None);
        let pod = pod_of("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;;").unwrap().unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.uid), ("a", "b", None));
    }

    #[test]
    fn the_timeout_comes_from_the_config() {
        let agent = FakeAgent::nothing_to_add();
        let mut config = chained_config();
        config["timeoutSeconds"] = json!(7);
        assert!(run_with(&pod_env("ADD"), &config, &agent).success);
        assert_eq!(agent.only_request().2, Duration::from_secs(7));
    }
}
