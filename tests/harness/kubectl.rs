//! kubectl against a test cluster, as the tests use it: apply YAML, read
//! objects and their Ready condition, wait for them.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{ok, sh, wait_until};

pub struct Kubectl {
    /// The command line up to the arguments (namespace, binary, kubeconfig).
    prefix: String,
    /// What `{T}` in applied YAML becomes (the test's unique tag).
    tag: String,
}

impl Kubectl {
    pub fn new(prefix: String, tag: &str) -> Kubectl {
        Kubectl { prefix, tag: tag.into() }
    }

    /// The kubectl command line (for threads of a test).
    pub fn kubectl_prefix(&self) -> String {
        self.prefix.clone()
    }

    pub fn kubectl(&self, args: &str) -> Output {
        sh(&format!("{} {args}", self.prefix))
    }

    pub fn kubectl_ok(&self, args: &str) -> String {
        ok(&format!("{} {args}", self.prefix))
    }

    /// `kubectl apply -f -` of `yaml`; `{T}` becomes the test's tag.
    pub fn apply(&self, yaml: &str) {
        let yaml = yaml.replace("{T}", &self.tag);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{} apply -f -", self.prefix))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
    }

    /// One object as JSON, or Null if it does not exist.
    pub fn get(&self, kind: &str, namespaced_name: &str) -> Value {
        let (ns, name) = namespaced_name.split_once('/').map(|(n, m)| (format!("-n {n}"), m)).unwrap_or((String::new(), namespaced_name));
        let out = self.kubectl(&format!("get {kind} {name} {ns} -o json"));
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The items of `kubectl get KIND ARGS -o json`.
    pub fn list(&self, kind: &str, args: &str) -> Vec<Value> {
        let list: Value = serde_json::from_str(&self.kubectl_ok(&format!("get {kind} {args} -o json"))).expect("kubectl prints JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// (status, reason) of an object's Ready condition.
    pub fn ready(&self, kind: &str, namespaced_name: &str) -> (String, String) {
        ready_of(&self.get(kind, namespaced_name))
    }

    pub fn wait_ready(&self, kind: &str, namespaced_name: &str, timeout: Duration) {
        wait_until(&format!("{kind} {namespaced_name} Ready"), timeout, || self.ready(kind, namespaced_name).0 == "True");
    }
}

/// (status, reason) of an API object's Ready condition.
pub fn ready_of(obj: &Value) -> (String, String) {
    super::ready_in(&obj["status"])
}
