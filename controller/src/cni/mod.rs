//! The agent's end of `netlet-cni` (the CNI plugin in `cni/`, chained
//! after the node's primary plugin): the container runtime runs the plugin
//! while it sets a pod sandbox up or tears it down, and the plugin forwards
//! the call here over a unix socket.
//!
//! How the agent consumes calls: [`CniSocket::bind`] the socket, spawn
//! [`CniSocket::serve`] with the sending half of an `mpsc` channel, and
//! receive [`CniCall`]s on the other half. Each holds the typed
//! [`Request`] (command, container ID, netns path, interface, the pod's
//! namespace/name/UID, the network configuration with `prevResult`) and
//! must be answered once with [`CniCall::reply`]:
//!
//! - ADD: `Ok(Added)` once the pod's attachments are realized in the
//!   sandbox (interfaces with the sandbox path, addresses, routes; empty
//!   if the pod has none), or `Err(CniError)` saying why not (code
//!   [`CniError::ATTACHMENT_FAILED`], or 11 to make the runtime retry).
//!   The plugin appends `Added` to the primary plugin's result.
//! - DEL: `Ok(Added::default())` once the sandbox's attachments are gone
//!   (tolerating what is already missing: DEL is repeated).
//! - CHECK: `Ok(Added::default())` if the sandbox holds what ADD made.
//!
//! The call may be held while the reconciler works (the plugin waits up
//! to its `timeoutSeconds`, 60 s by default); a call dropped unanswered
//! answers code 11. Calls come concurrently, from many connections.
//!
//! In Kubernetes mode the calls go to the source, which answers them from
//! passes (`pods::cni`); standalone mode, which has no pods, serves the
//! socket with [`pass_through`]: nothing of netlet's in any sandbox.

pub mod install;
mod server;

pub use netlet_cni::{
    Added, CniError, Command, Interface, IpConfig, NetworkConfig, Pod, Reply, Request, Route, DEFAULT_SOCKET, PLUGIN_TYPE,
};
pub use server::{CniCall, CniSocket, CniSocketError};

use std::path::Path;

use tokio::sync::mpsc;

/// Calls waiting for the consumer before connections wait to be read.
pub const CALL_QUEUE: usize = 256;

/// A consumer for a node where no pod has netlet attachments: ADD adds
/// nothing (the plugin passes the primary plugin's result on unchanged),
/// DEL and CHECK succeed. Logs every call.
pub async fn pass_through(mut calls: mpsc::Receiver<CniCall>) {
    while let Some(call) = calls.recv().await {
        let r = &call.request;
        let pod = r.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
        let uid = r.pod.as_ref().and_then(|p| p.uid.as_deref()).unwrap_or_default();
        tracing::info!(command = %r.command.as_str(), %pod, %uid, container = %r.container_id, netns = %r.netns, "CNI call: nothing of netlet's in this sandbox");
        call.reply(Ok(Added::default()));
    }
}

/// Binds `path` and serves it on `runtime`; the calls come out of the
/// returned receiver.
pub fn serve(runtime: &tokio::runtime::Handle, path: &Path) -> Result<mpsc::Receiver<CniCall>, CniSocketError> {
    let socket = CniSocket::bind(path)?;
    let (calls, consumer) = mpsc::channel(CALL_QUEUE);
    runtime.spawn(socket.serve(calls));
    Ok(consumer)
}

/// Binds `path` and serves it with [`pass_through`] on `runtime`.
pub fn serve_pass_through(runtime: &tokio::runtime::Handle, path: &Path) -> Result<(), CniSocketError> {
    let consumer = serve(runtime, path)?;
    runtime.spawn(pass_through(consumer));
    Ok(())
}
