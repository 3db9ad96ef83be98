//! netlet-cni's calls, answered from passes (Kubernetes mode).
//!
//! ADD records the pod's sandbox (durably, in the [`SandboxBook`]) and is
//! answered by the first pass that had it in its snapshot and realized
//! every attachment of the pod: what they added (interfaces, addresses,
//! routes), or the CNI error saying which attachment failed and why. A pod
//! with no netlet attachment (none names it, its annotation asks for none)
//! is answered at once, without a pass. DEL forgets the sandbox and is
//! answered once a pass has removed the pod's interfaces (a DEL of an
//! unknown sandbox at once: DEL is repeated). CHECK is answered by the next
//! pass: the pod's attachments Ready in this sandbox, or why not.
//!
//! The source owns this: it takes calls while it waits for changes
//! ([`PodCalls::next`], [`PodCalls::drain`]), marks them seen when it makes a
//! snapshot ([`PodCalls::snapshot_taken`]) and answers them when it gets
//! the outcome ([`PodCalls::answer`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::{PodSandbox, SandboxBook};
use crate::api::AttachmentStatus;
use crate::cni::{Added, CniCall, CniError, Command, Interface, IpConfig, Request, Route};
use crate::objects::{Kind, ObjectKey, ObjectName};
use crate::plan::outcome::reason;
use crate::reconcile::Outcome;
use crate::status::ObjectStatus;

/// How long an ADD waits for its pod's attachments before it fails with
/// their last reason (netlet-cni itself waits 60 s by default).
pub const ADD_PATIENCE: Duration = Duration::from_secs(30);

/// How long an ADD waits for a pod the agent's watch has not delivered.
/// The watch is milliseconds behind the runtime; a pod still unknown after
/// this was deleted (a kubelet may set up a sandbox of a pod deleted a
/// moment before) or the watch is stuck: the runtime is told to try again.
pub const UNKNOWN_POD_PATIENCE: Duration = Duration::from_secs(3);

/// One attachment a pod should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    pub name: ObjectName,
    pub network: String,
    /// `defaultRoute: true`: the ADD result carries its default route.
    pub default_route: bool,
}

/// What the source knows of a pod's attachments: those naming it, and
/// those its annotation stands for (which may not exist yet). None: no
/// attachment names the pod and the pod itself is not in the agent's view
/// (its watch is behind the runtime), so its annotation is not known.
pub trait PodAttachments {
    fn attachments_of(&self, pod: &ObjectName) -> Option<Vec<PodAttachment>>;
}

struct Waiting {
    call: CniCall,
    pod: ObjectName,
    /// A snapshot was made after the call was taken.
    seen: bool,
    since: Instant,
}

pub struct PodCalls {
    calls: mpsc::Receiver<CniCall>,
    book: SandboxBook,
    waiting: Vec<Waiting>,
}

impl PodCalls {
    pub fn new(calls: mpsc::Receiver<CniCall>, book: SandboxBook) -> PodCalls {
        PodCalls { calls, book, waiting: Vec::new() }
    }

    pub fn book(&self) -> &SandboxBook {
        &self.book
    }

    /// Forgets sandboxes whose namespace is gone (a DEL missed while the
    /// agent was away); true if any was.
    pub fn forget_gone(&mut self) -> bool {
        self.book.forget_gone().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot record the pod sandboxes that are gone");
            true
        })
    }

    /// Waits for a call that needs a pass, taking (and answering) those
    /// that do not on the way. Never resolves once the socket is gone.
    pub async fn next(&mut self, pods: &impl PodAttachments) {
        loop {
            match self.calls.recv().await {
                Some(call) => {
                    if self.take(call, pods) {
                        return;
                    }
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Takes the calls already queued; true if any needs a pass.
    pub fn drain(&mut self, pods: &impl PodAttachments) -> bool {
        let mut needs_pass = false;
        while let Ok(call) = self.calls.try_recv() {
            needs_pass |= self.take(call, pods);
        }
        needs_pass
    }

    /// When a waiting call runs out of patience (a pass then answers it),
    /// if any does.
    pub fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let now = Instant::now();
        let deadlines = self.waiting.iter().flat_map(|w| [w.since + UNKNOWN_POD_PATIENCE, w.since + ADD_PATIENCE]);
        // Just past the deadline: `answer` compares with `>`.
        deadlines.filter(|d| *d >= now).min().map(|d| tokio::time::Instant::from_std(d + Duration::from_millis(1)))
    }

    /// The snapshot now being made covers every call taken so far.
    pub fn snapshot_taken(&mut self) {
        self.waiting.iter_mut().for_each(|w| w.seen = true);
    }

    /// Takes one call: the sandbox recorded (ADD) or forgotten (DEL); the
    /// call answered now, or kept for a pass (true).
    fn take(&mut self, call: CniCall, pods: &impl PodAttachments) -> bool {
        let r = &call.request;
        let Some(pod) = &r.pod else {
            tracing::info!(command = %r.command.as_str(), container = %r.container_id, "CNI call for no Kubernetes pod: nothing of netlet's");
            call.reply(Ok(Added::default()));
            return false;
        };
        let key = ObjectName::namespaced(&pod.namespace, &pod.name);
        tracing::info!(command = %r.command.as_str(), pod = %key, uid = %pod.uid.as_deref().unwrap_or_default(), container = %r.container_id, netns = %r.netns, "CNI call");
        let attachments = pods.attachments_of(&key);
        // An ADD for a pod the agent has not seen yet waits for it: its
        // annotation may ask for networks.
        let none = attachments.as_ref().is_some_and(Vec::is_empty) || (attachments.is_none() && r.command != Command::Add);
        let recorded = match r.command {
            Command::Add => {
                let sandbox = PodSandbox { uid: pod.uid.clone(), sandbox_id: r.container_id.clone(), netns: r.netns.clone() };
                self.book.record(key.clone(), sandbox).map(|()| true)
            }
            Command::Del => self.book.remove(&key, &r.container_id),
            Command::Check => Ok(true),
        };
        match recorded {
            Err(e) => {
                call.reply(Err(CniError::new(CniError::IO_FAILURE, format!("recording pod {key}'s sandbox: {e}"))));
                false
            }
            Ok(false) | Ok(true) if none => {
                call.reply(Ok(Added::default()));
                false
            }
            Ok(false) => {
                call.reply(Ok(Added::default())); // a DEL of a sandbox already forgotten
                false
            }
            Ok(true) => {
                self.waiting.push(Waiting { call, pod: key, seen: false, since: Instant::now() });
                true
            }
        }
    }

    /// Answers the calls a pass with this outcome covered; the others wait.
    pub fn answer(&mut self, outcome: &Outcome, pods: &impl PodAttachments) {
        if !self.waiting.iter().any(|w| w.seen) {
            return;
        }
        let status = attachment_statuses(outcome);
        for w in std::mem::take(&mut self.waiting) {
            if !w.seen {
                self.waiting.push(w);
                continue;
            }
            let request = &w.call.request;
            let verdict = match request.command {
                Command::Del => Verdict::Done(Added::default()),
                command => match pods.attachments_of(&w.pod) {
                    Some(wanted) => verdict(request, &wanted, &status),
                    None if command == Command::Add && w.since.elapsed() > UNKNOWN_POD_PATIENCE => Verdict::Failed(CniError::new(
                        CniError::TRY_AGAIN_LATER,
                        format!("pod {} is not in the agent's view (deleted, or the agent's watch is behind)", w.pod),
                    )),
                    None if command == Command::Add => Verdict::Wait(format!("pod {} is not in the agent's view yet", w.pod)),
                    None => Verdict::Done(Added::default()),
                },
            };
            match verdict {
                Verdict::Done(added) => {
                    let elapsed_ms = w.since.elapsed().as_secs_f64() * 1e3;
                    tracing::info!(pod = %w.pod, command = %request.command.as_str(), container = %request.container_id, interfaces = added.interfaces.len(), elapsed_ms, "CNI call answered");
                    w.call.reply(Ok(added))
                }
                Verdict::Failed(e) => {
                    tracing::warn!(pod = %w.pod, command = %request.command.as_str(), error = %e, "CNI call failed");
                    w.call.reply(Err(e))
                }
                Verdict::Wait(why) if w.since.elapsed() > ADD_PATIENCE => {
                    let e = CniError::new(
                        CniError::ATTACHMENT_FAILED,
                        format!("pod {}: not realized within {} s: {why}", w.pod, ADD_PATIENCE.as_secs()),
                    );
                    tracing::warn!(pod = %w.pod, error = %e, "CNI call failed");
                    w.call.reply(Err(e))
                }
                Verdict::Wait(_) => self.waiting.push(w),
            }
        }
    }
}

/// Each attachment's status as a pass computed it.
pub fn attachment_statuses(outcome: &Outcome) -> HashMap<&ObjectKey, &AttachmentStatus> {
    fn attachment(status: &ObjectStatus) -> Option<&AttachmentStatus> {
        match status {
            ObjectStatus::Attachment(status, _) => Some(status),
            _ => None,
        }
    }
    outcome.status.entries.iter().filter_map(|e| Some((&e.key, attachment(&e.status)?))).collect()
}

enum Verdict {
    Done(Added),
    Failed(CniError),
    /// Not yet: the pod's attachments are not all in the pass (the
    /// annotation's are being created, the pod watch is behind), why.
    Wait(String),
}

/// An ADD's or CHECK's answer from the status of the pod's attachments.
fn verdict(request: &Request, wanted: &[PodAttachment], status: &HashMap<&ObjectKey, &AttachmentStatus>) -> Verdict {
    let (command, sandbox_id) = (request.command, &request.container_id);
    let mut added = Added::default();
    for a in wanted {
        let key = ObjectKey { kind: Kind::Attachment, name: a.name.clone() };
        let Some(s) = status.get(&key) else { return Verdict::Wait(format!("attachment {} is not known to this node yet", a.name)) };
        let Some(ready) = s.conditions.iter().find(|c| c.type_ == "Ready") else {
            return Verdict::Wait(format!("attachment {} has no status yet", a.name));
        };
        if ready.status != "True" {
            let why = format!("attachment {}: {}: {}", a.name, ready.reason, ready.message);
            return match ready.reason.as_str() {
                reason::POD_NOT_STARTED | reason::POD_NOT_FOUND if command == Command::Add => Verdict::Wait(why),
                _ => Verdict::Failed(CniError::new(CniError::ATTACHMENT_FAILED, why)),
            };
        }
        if s.pod.as_ref().is_none_or(|p| &p.sandbox_id != sandbox_id) {
            let why = format!("attachment {} is realized in another sandbox of the pod", a.name);
            return match command {
                Command::Add => Verdict::Wait(why),
                _ => Verdict::Failed(CniError::new(CniError::ATTACHMENT_FAILED, why)),
            };
        }
        add_interface(&mut added, s, a.default_route, &request.netns);
    }
    Verdict::Done(added)
}

/// One Ready attachment's part of the ADD result.
fn add_interface(added: &mut Added, s: &AttachmentStatus, default_route: bool, netns: &str) {
    let index = added.interfaces.len();
    added.interfaces.push(Interface {
        name: s.interface.clone().unwrap_or_default(),
        mac: s.mac_address.clone(),
        sandbox: Some(netns.into()),
    });
    let families = [(&s.ipv4_address, &s.gateway, IpAddr::from([0u8; 4])), (&s.ipv6_address, &s.ipv6_gateway, IpAddr::from([0u16; 8]))];
    for (cidr, gateway, any) in families {
        let Some(net) = cidr.as_deref().and_then(|c| c.parse::<IpNet>().ok()) else { continue };
        let gateway = gateway.as_deref().and_then(|g| g.parse::<IpAddr>().ok());
        added.ips.push(IpConfig { address: net.addr(), prefix_len: net.prefix_len(), gateway, interface: index });
        if let (true, Some(gw)) = (default_route, gateway) {
            added.routes.push(Route { dst: any, dst_prefix_len: 0, gw: Some(gw) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Condition, PodSandboxStatus};
    use crate::cni::NetworkConfig;

    fn request(command: Command, sandbox: &str) -> Request {
        Request {
            command,
            container_id: sandbox.into(),
            netns: format!("/run/netns/cni-{sandbox}"),
            ifname: "eth0".into(),
            pod: Some(crate::cni::Pod { namespace: "team".into(), name: "web".into(), uid: Some("u1".into()) }),
            config: NetworkConfig::default(),
        }
    }

    fn status(ready: bool, reason: &str, sandbox: &str) -> AttachmentStatus {
        AttachmentStatus {
            interface: Some("net1".into()),
            ipv4_address: Some("172.30.0.5/24".into()),
            gateway: Some("172.30.0.1".into()),
            mac_address: Some("02:42:ac:1e:00:05".into()),
            pod: Some(PodSandboxStatus { name: "web".into(), uid: Some("u1".into()), sandbox_id: sandbox.into() }),
            conditions: vec![Condition::ready(ready, reason, "why")],
            ..AttachmentStatus::default()
        }
    }

    fn wanted(default_route: bool) -> Vec<PodAttachment> {
        vec![PodAttachment { name: "team/web-net1".into(), network: "blue".into(), default_route }]
    }

    /// The status the pass gave the pod's one attachment.
    fn pass(s: &AttachmentStatus) -> HashMap<&'static ObjectKey, &AttachmentStatus> {
        static KEY: std::sync::LazyLock<ObjectKey> = std::sync::LazyLock::new(|| ObjectKey::attachment("team", "web-net1"));
        HashMap::from([(&*KEY, s)])
    }

    #[test]
    fn an_add_is_answered_with_the_interfaces_of_the_pods_ready_attachments() {
        let s = status(true, "Ready", "s1");
        let book = pass(&s);
        let Verdict::Done(added) = verdict(&request(Command::Add, "s1"), &wanted(false), &book) else { panic!("not done") };
        assert_eq!(
            added.interfaces,
            [Interface { name: "net1".into(), mac: Some("02:42:ac:1e:00:05".into()), sandbox: Some("/run/netns/cni-s1".into()) }]
        );
        assert_eq!(
            added.ips,
            [IpConfig {
                address: "172.30.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("172.30.0.1".parse().unwrap()),
                interface: 0
            }]
        );
        assert!(added.routes.is_empty(), "the pod's default route is its primary network's");
        let Verdict::Done(added) = verdict(&request(Command::Add, "s1"), &wanted(true), &book) else { panic!("not done") };
        assert_eq!(added.routes, [Route { dst: "0.0.0.0".parse().unwrap(), dst_prefix_len: 0, gw: Some("172.30.0.1".parse().unwrap()) }]);
    }

    #[test]
    fn an_add_waits_for_attachments_not_yet_there_or_realized_elsewhere_and_fails_with_a_real_reason() {
        let none = HashMap::new();
        assert!(
            matches!(verdict(&request(Command::Add, "s1"), &wanted(false), &none), Verdict::Wait(_)),
            "the annotation's attachment is on its way"
        );
        let waiting = status(false, reason::POD_NOT_STARTED, "s1");
        let book = pass(&waiting);
        assert!(matches!(verdict(&request(Command::Add, "s1"), &wanted(false), &book), Verdict::Wait(_)), "the pod watch is behind");
        let older = status(true, "Ready", "s0");
        let book = pass(&older);
        assert!(matches!(verdict(&request(Command::Add, "s1"), &wanted(false), &book), Verdict::Wait(_)), "still in the earlier sandbox");
        let failed = status(false, reason::ADDRESS_IN_USE, "s1");
        let book = pass(&failed);
        match verdict(&request(Command::Add, "s1"), &wanted(false), &book) {
            Verdict::Failed(e) => {
                assert_eq!(e.code, CniError::ATTACHMENT_FAILED);
                assert!(e.msg.contains("team/web-net1") && e.msg.contains("AddressInUse"), "{e}");
            }
            _ => panic!("an attachment that cannot be realized fails the ADD"),
        }
    }

    #[test]
    fn a_check_fails_unless_the_attachments_are_ready_in_this_sandbox() {
        let ready = status(true, "Ready", "s1");
        let book = pass(&ready);
        assert!(matches!(verdict(&request(Command::Check, "s1"), &wanted(false), &book), Verdict::Done(_)));
        assert!(matches!(verdict(&request(Command::Check, "s2"), &wanted(false), &book), Verdict::Failed(_)));
        let waiting = status(false, reason::POD_NOT_STARTED, "s1");
        let book = pass(&waiting);
        assert!(matches!(verdict(&request(Command::Check, "s1"), &wanted(false), &book), Verdict::Failed(_)));
    }
}
