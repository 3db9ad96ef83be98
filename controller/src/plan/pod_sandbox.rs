//! `sandbox.pod`: the pod's sandbox, as the pass knows it. Running: the
//! namespace the runtime made for it. Not there (yet, or any more): the
//! attachment holds its addresses and says why it is not realized.

use super::attachment::{CheckedAttachment, SandboxChoice, SandboxRef};
use super::outcome::{reason, Failure};
use crate::api::PodSandboxStatus;
use crate::objects::ObjectName;
use crate::pods::{PodState, Pods};

/// Resolves a checked attachment's `pod` sandbox (others pass unchanged).
/// `pods` is None in standalone mode, which has no pods.
pub fn resolve(key: &ObjectName, mut checked: CheckedAttachment, pods: Option<&Pods>) -> Result<CheckedAttachment, Failure> {
    let SandboxChoice::Pod(name) = &checked.sandbox else { return Ok(checked) };
    let Some(pods) = pods else {
        return Err(Failure::new(
            reason::UNSUPPORTED,
            "sandbox.pod names a Kubernetes Pod: standalone mode has no pods (use sandbox.netns or sandbox.path)",
        ));
    };
    let pod = key.sibling(name);
    checked.sandbox = match pods.get(&pod) {
        Some(PodState::Running(sandbox)) => {
            checked.pod = Some(PodSandboxStatus { name: name.clone(), uid: sandbox.uid.clone(), sandbox_id: sandbox.sandbox_id.clone() });
            SandboxChoice::Namespace(SandboxRef::Path(sandbox.netns.clone()))
        }
        Some(PodState::NotStarted) => SandboxChoice::PodWaiting(Failure::new(
            reason::POD_NOT_STARTED,
            format!("pod {pod} has no network sandbox yet (netlet-cni has not reported it)"),
        )),
        None => SandboxChoice::PodWaiting(Failure::new(reason::POD_NOT_FOUND, format!("no pod {pod} runs on this node"))),
    };
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::api::{Attachment, AttachmentSpec, IpamConfig, Network, NetworkSpec, Sandbox};
    use crate::objects::ObjectSet;
    use crate::plan::outcome::reason;
    use crate::plan::{plan, Allocations, NodeFacts, Plan};
    use crate::pods::{PodSandbox, PodState, Pods};

    fn objects(pods: Option<Pods>, attachments: &[(&str, &str)]) -> ObjectSet {
        let mut net = Network::new("blue", NetworkSpec::default());
        net.spec.ipam.config.push(IpamConfig { subnet: "10.7.0.0/24".into(), ..Default::default() });
        let attachments = attachments
            .iter()
            .map(|(name, pod)| {
                let sandbox = Sandbox { pod: Some(pod.to_string()), ..Default::default() };
                let mut a = Attachment::new(name, AttachmentSpec { network: "blue".into(), sandbox, ..Default::default() });
                a.metadata.namespace = Some("team".into());
                Arc::new(a)
            })
            .collect();
        ObjectSet { networks: vec![Arc::new(net)], attachments, port_mappings: vec![], pods: pods.map(Arc::new) }
    }

    fn running(id: &str) -> PodState {
        PodState::Running(PodSandbox { uid: Some(format!("uid-{id}")), sandbox_id: id.into(), netns: format!("/run/netns/cni-{id}") })
    }

    fn facts() -> NodeFacts {
        NodeFacts { node_name: "node-a".into(), embedded_dns: true, ..Default::default() }
    }

    fn pass(objects: &ObjectSet, held: &Allocations) -> Plan {
        plan(objects, &facts(), held)
    }

    #[test]
    fn a_running_pod_is_realized_in_its_sandbox_without_taking_its_default_route() {
        let pods = Pods::from([("team/web".into(), running("s1"))]);
        let p = pass(&objects(Some(pods), &[("web-net1", "web")]), &Allocations::default());
        let info = p.attachments["team/web-net1"].as_ref().unwrap();
        assert_eq!(info.sandbox_path.as_deref(), Some("/run/netns/cni-s1"));
        let pod = info.pod.as_ref().unwrap();
        assert_eq!((pod.name.as_str(), pod.uid.as_deref(), pod.sandbox_id.as_str()), ("web", Some("uid-s1"), "s1"));
        let ep = &p.desired.endpoints[0];
        assert_eq!(ep.sandbox.path(), "/run/netns/cni-s1");
        assert_eq!((ep.gateway_v4, ep.gateway_v6), (None, None), "the pod's default route stays its primary network's");
        assert!(p.desired.names.records["blue"].contains_key("web"), "found by its pod's name");
    }

    #[test]
    fn a_pod_not_started_or_gone_holds_its_address_and_says_why() {
        let started = Pods::from([("team/web".into(), running("s1"))]);
        let first = pass(&objects(Some(started), &[("web-net1", "web")]), &Allocations::default());
        let address = first.attachments["team/web-net1"].as_ref().unwrap().ipv4;

        for (pods, why) in
            [(Pods::from([("team/web".into(), PodState::NotStarted)]), reason::POD_NOT_STARTED), (Pods::new(), reason::POD_NOT_FOUND)]
        {
            // A newcomer created later must not get the held address.
            let p = pass(&objects(Some(pods.clone()), &[("web-net1", "web"), ("late", "other")]), &first.allocations);
            assert_eq!(p.attachments["team/web-net1"].as_ref().unwrap_err().reason, why);
            assert!(p.desired.endpoints.is_empty(), "nothing realized");
            assert_eq!(p.allocations.endpoints["team/web-net1"].ipv4, address.map(|a| a.addr()), "{why}: the address stays held");
            assert_eq!(p.allocations.endpoints["team/web-net1"].interface.as_deref(), Some("eth0"));
            assert_eq!(p.attachments["team/late"].as_ref().unwrap_err().reason, reason::POD_NOT_FOUND);
            assert_ne!(p.allocations.endpoints["team/late"].ipv4, address.map(|a| a.addr()));

            // The pod back (recreated: a new UID and sandbox): the same address.
            let back = Pods::from([("team/web".into(), running("s2"))]);
            let again = pass(&objects(Some(back), &[("web-net1", "web")]), &p.allocations);
            let info = again.attachments["team/web-net1"].as_ref().unwrap();
            assert_eq!((info.ipv4, info.sandbox_path.as_deref()), (address, Some("/run/netns/cni-s2")));
        }
    }

    #[test]
    fn in_kubernetes_mode_a_found_pod_sandbox_is_of_kind_pod_not_path() {
        let kubernetes = NodeFacts { tenancy: crate::plan::tenancy::Tenancy { kubernetes: true, ..Default::default() }, ..facts() };
        let pods = Pods::from([("team/web".into(), running("s1"))]);
        let mut set = objects(Some(pods), &[("web-net1", "web")]);
        let p = plan(&set, &kubernetes, &Allocations::default());
        assert!(p.attachments["team/web-net1"].is_ok(), "the default [pod, attachment] admits it: {:?}", p.attachments["team/web-net1"]);
        // The same namespace given by path is a path sandbox, which the default refuses.
        let mut by_path = (*set.attachments[0]).clone();
        by_path.spec.sandbox = Sandbox { path: Some("/run/netns/cni-s1".into()), ..Default::default() };
        set.attachments[0] = Arc::new(by_path);
        let p = plan(&set, &kubernetes, &Allocations::default());
        assert_eq!(p.attachments["team/web-net1"].as_ref().unwrap_err().reason, reason::FORBIDDEN);
    }

    #[test]
    fn standalone_mode_refuses_a_pod_sandbox() {
        let p = pass(&objects(None, &[("web-net1", "web")]), &Allocations::default());
        let failure = p.attachments["team/web-net1"].as_ref().unwrap_err();
        assert_eq!(failure.reason, reason::UNSUPPORTED);
        assert!(failure.message.contains("standalone mode has no pods"), "{failure}");
        assert!(p.allocations.endpoints.is_empty(), "nothing held for it");
    }
}
