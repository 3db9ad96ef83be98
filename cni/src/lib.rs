//! netlet's CNI plugin, `netlet-cni`, and the protocol it shares with the
//! agent.
//!
//! The plugin is a thin shim, chained after the node's primary plugin in
//! its conflist: the container runtime runs it while a pod sandbox is set
//! up or torn down, it checks the call as the CNI spec asks ([`skel`]),
//! forwards ADD, DEL and CHECK to the agent over a unix socket ([`client`],
//! [`protocol`]) and prints the agent's answer as a CNI result or error
//! ([`result`]). The agent holds all state; the plugin keeps none.
//!
//! Its entry in the conflist (`netlet cni-install` writes it):
//!
//! ```json
//! {"type": "netlet-cni", "socket": "/run/netlet/cni.sock", "timeoutSeconds": 60}
//! ```
//!
//! `socket` and `timeoutSeconds` are optional (these are the defaults).

pub mod client;
pub mod protocol;
pub mod result;
pub mod skel;

use std::time::Duration;

pub use protocol::{Added, CniError, Command, Interface, IpConfig, NetworkConfig, Pod, Reply, Request, Route};

/// The plugin's `type` in a conflist, and its file name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "netlet-cni";
/// Where the agent listens unless the plugin's config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/netlet/cni.sock";
/// How long the plugin waits for the agent unless its config says
/// otherwise: an ADD waits until the pod's attachments are realized.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
