use super::*;
use crate::api::{AttachmentSpec, AttachmentStatus, PortBinding, PortMappingSpec, PortMappingStatus, Protocol, Sandbox};

#[test]
fn allocations_are_rebuilt_from_status() {
    let mut a = Attachment::new(
        "c1",
        AttachmentSpec { network: "n".into(), sandbox: Sandbox { netns: Some("c1".into()), ..Default::default() }, ..Default::default() },
    );
    a.metadata.namespace = Some("ns".into());
    a.status = Some(AttachmentStatus { ipv4_address: Some("10.0.0.7/24".into()), interface: Some("eth0".into()), ..Default::default() });
    let mut p = PortMapping::new("web", PortMappingSpec { attachment: "c1".into(), ..Default::default() });
    p.metadata.namespace = Some("ns".into());
    p.status = Some(PortMappingStatus {
        bindings: vec![PortBinding { protocol: Protocol::Tcp, host_ip: "0.0.0.0".into(), host_port: 32800, container_port: 80 }],
        ..Default::default()
    });
    let held = allocations_from_status(&[Arc::new(a)], &[Arc::new(p)]);
    assert_eq!(held.endpoints["ns/c1"].ipv4, Some("10.0.0.7".parse().unwrap()));
    assert_eq!(held.endpoints["ns/c1"].interface.as_deref(), Some("eth0"));
    assert_eq!(held.ports[&"ns/web|tcp|80|0.0.0.0".parse().unwrap()], 32800);
}

#[test]
fn vteps_come_from_the_annotation_else_the_internal_ip() {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    node.status = Some(NodeStatus {
        addresses: Some(vec![
            NodeAddress { type_: "Hostname".into(), address: "n1".into() },
            NodeAddress { type_: "InternalIP".into(), address: "fd00::1".into() },
            NodeAddress { type_: "InternalIP".into(), address: "192.0.2.10".into() },
        ]),
        ..Default::default()
    });
    assert_eq!(vtep_address(&node).as_deref(), Some("192.0.2.10"), "the IPv4 InternalIP");
    node.metadata.annotations = Some(BTreeMap::from([(VTEP_ANNOTATION.to_string(), "10.9.9.9".to_string())]));
    assert_eq!(vtep_address(&node).as_deref(), Some("10.9.9.9"), "the annotation wins");
    let mut net = Network::new("ov", Default::default());
    net.spec.driver = Driver::Overlay;
    net.spec.overlay = Some(crate::api::OverlayOptions { vni: 7, ..Default::default() });
    let filled = with_node_peers(Arc::new(net), &[Arc::new(node)]);
    assert_eq!(filled.spec.overlay.as_ref().unwrap().peers, [OverlayPeer { node: "n1".into(), address: "10.9.9.9".into() }]);
}

#[test]
fn node_selectors_match_labels() {
    let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    assert!(selector_matches(&BTreeMap::new(), &labels));
    assert!(selector_matches(&BTreeMap::from([("zone".into(), "a".into())]), &labels));
    assert!(!selector_matches(&BTreeMap::from([("zone".into(), "b".into())]), &labels));
}
