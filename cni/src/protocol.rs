//! What travels over the agent's socket: one [`Request`] from the plugin,
//! one [`Reply`] from the agent, as JSON, one exchange per connection (the
//! plugin shuts its side for writing after the request, the agent closes
//! after the reply).
//!
//! The agent answers in CNI terms it does not need to version: what it
//! [`Added`] (interfaces, addresses, routes) or a [`CniError`]. The plugin
//! turns that into the result of the configuration's `cniVersion`,
//! chained after the previous plugin's (see [`crate::result`]).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most either side reads of one message: a request carries the
/// network configuration and the previous result, a few KiB.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// The CNI operations the agent takes part in (VERSION is answered by the
/// plugin itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// One CNI call, as the runtime made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    /// CNI_CONTAINERID: the pod sandbox's ID.
    pub container_id: String,
    /// CNI_NETNS: the sandbox's network namespace path; empty on a DEL
    /// whose namespace is already gone.
    pub netns: String,
    /// CNI_IFNAME: the primary plugin's interface in the sandbox.
    pub ifname: String,
    /// From CNI_ARGS; `None` when the runtime named no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The plugin's network configuration from stdin, `prevResult` included.
    pub config: NetworkConfig,
}

/// The Kubernetes pod a sandbox belongs to (CNI_ARGS `K8S_POD_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`; runtimes older than containerd 1.6 / CRI-O 1.21 do
    /// not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The network configuration a runtime passes a plugin of a list: the
/// list's `cniVersion` and `name`, this plugin's entry, and `prevResult`.
/// Keys the plugin does not know are kept in `other` and passed on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The agent's socket (default [`crate::DEFAULT_SOCKET`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// How long the plugin waits for the agent's reply (default
    /// [`crate::DEFAULT_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// The previous plugin's result (ADD), or the list's last ADD result
    /// (CHECK, DEL), in `cni_version`'s format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// What the agent added to a sandbox, for the ADD result. `ips[].interface`
/// indexes `interfaces` of this value; the plugin shifts it past the
/// previous plugin's interfaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Added {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl Added {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.ips.is_empty() && self.routes.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The network namespace path for an interface in the sandbox; `None`
    /// for one on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`Added::interfaces`].
    pub interface: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpAddr,
    pub dst_prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The agent's answer: what it added (empty for DEL and CHECK), or why not.
pub type Reply = Result<Added, CniError>;

/// A CNI error as the spec prints it: `code` 1-99 are the spec's own
/// (constants below), 100 and up the plugin's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// netlet's own: the agent could not realize or verify the pod's
    /// attachments (the message says which and why).
    pub const ATTACHMENT_FAILED: u32 = 100;

    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_round_trips_with_the_keys_the_plugin_does_not_know() {
        let config: NetworkConfig = serde_json::from_value(json!({
            "cniVersion": "0.4.0", "name": "primary", "type": "netlet-cni",
            "socket": "/run/x.sock", "runtimeConfig": {"portMappings": []},
            "prevResult": {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}]}
        }))
        .unwrap();
        assert_eq!(config.socket.as_deref(), Some("/run/x.sock"));
        assert_eq!(config.other.keys().collect::<Vec<_>>(), ["runtimeConfig"]);
        let request = Request {
            command: Command::Add,
            container_id: "abc".into(),
            netns: "/run/netns/cni-1".into(),
            ifname: "eth0".into(),
            pod: Some(Pod { namespace: "default".into(), name: "web".into(), uid: Some("u-1".into()) }),
            config,
        };
        let wire = serde_json::to_string(&request).unwrap();
        assert!(wire.contains(r#""command":"ADD""#) && wire.contains(r#""runtimeConfig""#), "{wire}");
        assert_eq!(serde_json::from_str::<Request>(&wire).unwrap(), request);
    }

    #[test]
    fn a_reply_is_either_what_was_added_or_a_cni_error() {
        let added: Reply = Ok(Added {
            interfaces: vec![Interface { name: "net1".into(), mac: None, sandbox: Some("/ns".into()) }],
            ips: vec![IpConfig { address: "10.1.0.5".parse().unwrap(), prefix_len: 24, gateway: None, interface: 0 }],
            routes: vec![],
        });
        let failed: Reply = Err(CniError::new(CniError::ATTACHMENT_FAILED, "attachment web-net1: no such network"));
        for reply in [added, failed] {
            let wire = serde_json::to_vec(&reply).unwrap();
            assert_eq!(serde_json::from_slice::<Reply>(&wire).unwrap(), reply);
        }
    }

    #[test]
    fn an_error_prints_its_code_message_and_details() {
        let e = CniError::new(CniError::TRY_AGAIN_LATER, "agent busy").with_details("3 calls queued");
        assert_eq!(e.to_string(), "CNI error 11: agent busy (3 calls queued)");
        assert_eq!(serde_json::to_value(CniError::new(7, "bad")).unwrap(), serde_json::json!({"code": 7, "msg": "bad"}));
    }
}
