//! The tenant boundary in the plan: Kubernetes-mode defaults, what a
//! Network grants, namespaces it admits, other tenants' sandboxes, host
//! ports; and what standalone mode allows.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::outcome::{reason, Failure};
use super::tenancy::Tenancy;
use super::{plan, Allocations, NodeFacts, Plan};
use crate::source::manifests;

fn objects(yaml: &str) -> crate::objects::ObjectSet {
    let loaded = manifests::parse(std::path::Path::new("t.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.objects
}

fn network(name: &str, extra: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{ipam: {{config: [{{subnet: 10.40.0.0/24}}]}}{extra}}}\n")
}

fn attachment(namespace: &str, name: &str, network: &str, sandbox: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{network: {network}, sandbox: {sandbox}}}\n"
    )
}

fn port_mapping(namespace: &str, name: &str, attachment: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{attachment: {attachment}, ports: [{ports}]}}\n"
    )
}

fn kubernetes(labels: &[(&str, &[(&str, &str)])]) -> NodeFacts {
    let namespace_labels = labels
        .iter()
        .map(|(ns, l)| (ns.to_string(), l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        .collect::<BTreeMap<_, BTreeMap<_, _>>>();
    NodeFacts {
        node_name: "n1".into(),
        ephemeral_ports: (32768, 60999),
        tenancy: Tenancy { kubernetes: true, namespace_labels: Arc::new(namespace_labels) },
        ..Default::default()
    }
}

fn standalone() -> NodeFacts {
    NodeFacts { node_name: "n1".into(), ephemeral_ports: (32768, 60999), ..Default::default() }
}

fn attachment_failure(p: &Plan, key: &str) -> Option<Failure> {
    p.attachments.get(key).unwrap_or_else(|| panic!("{key} was not planned")).clone().err()
}

fn port_mapping_failure(p: &Plan, key: &str) -> Option<Failure> {
    p.port_mappings.get(key).unwrap_or_else(|| panic!("{key} was not planned")).clone().err()
}

fn forbidden(failure: Option<Failure>, text: &str) {
    let failure = failure.expect("refused");
    assert_eq!(failure.reason, reason::FORBIDDEN, "{}", failure.message);
    assert!(failure.message.contains(text), "{:?} lacks {text:?}", failure.message);
}

#[test]
fn kubernetes_mode_allows_only_a_tenants_own_sandboxes_unless_the_network_grants_more() {
    let mut yaml = network("plain", "");
    yaml += &attachment("a", "by-netns", "plain", "{netns: a1}");
    yaml += &attachment("a", "by-path", "plain", "{path: /run/netns/a1}");
    yaml += "---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: hostnet}\nspec: {driver: host}\n";
    yaml += &attachment("a", "by-host", "hostnet", "{host: true}");
    yaml += &attachment("a", "shared", "plain", "{attachment: by-netns}");
    let p = plan(&objects(&yaml), &kubernetes(&[]), &Allocations::default());
    forbidden(
        attachment_failure(&p, "a/by-netns"),
        "does not allow netns sandboxes (spec.allowedSandboxes: [pod, attachment], the Kubernetes-mode default)",
    );
    forbidden(attachment_failure(&p, "a/by-path"), "does not allow path sandboxes");
    forbidden(attachment_failure(&p, "a/by-host"), "does not allow host sandboxes");
    assert_eq!(attachment_failure(&p, "a/shared").unwrap().reason, reason::SANDBOX_OWNER_GONE, "allowed, its owner refused");
    assert!(p.desired.endpoints.is_empty() && p.desired.sandboxes.is_empty(), "nothing is made for a refused attachment");

    // The same objects on networks that grant the kinds.
    let yaml = yaml
        .replace(
            "spec: {ipam: {config: [{subnet: 10.40.0.0/24}]}}",
            "spec: {ipam: {config: [{subnet: 10.40.0.0/24}]}, allowedSandboxes: [netns, path, attachment]}",
        )
        .replace("spec: {driver: host}", "spec: {driver: host, allowedSandboxes: [host]}");
    let p = plan(&objects(&yaml), &kubernetes(&[]), &Allocations::default());
    for key in ["a/by-netns", "a/by-path", "a/by-host", "a/shared"] {
        assert_eq!(attachment_failure(&p, key), None, "{key}");
    }
    let granted = yaml;
    // Standalone mode: the operator is root, every kind goes by default...
    let mut yaml = network("plain", "");
    yaml += &attachment("a", "by-netns", "plain", "{netns: a1}");
    yaml += &attachment("a", "by-path", "plain", "{path: /run/netns/a1}");
    let p = plan(&objects(&yaml), &standalone(), &Allocations::default());
    assert!(p.attachments.values().all(|a| a.is_ok()), "{:?}", p.attachments);
    // ... and a list the network gives holds there too.
    let p = plan(&objects(&granted.replace("[netns, path, attachment]", "[netns]")), &standalone(), &Allocations::default());
    assert_eq!(attachment_failure(&p, "a/by-netns"), None);
    forbidden(attachment_failure(&p, "a/by-path"), "does not allow path sandboxes (spec.allowedSandboxes: [netns])");
}

#[test]
fn a_netns_made_for_another_namespace_is_not_a_tenants_to_use() {
    let mut yaml = network("open", ", allowedSandboxes: [netns]");
    yaml += &attachment("tenant-b", "pod", "open", "{netns: b-pod}");
    yaml += &attachment("tenant-a", "intruder", "open", "{netns: b-pod}");
    yaml += &attachment("tenant-b", "second", "open", "{netns: b-pod}");
    let p = plan(&objects(&yaml), &kubernetes(&[]), &Allocations::default());
    forbidden(attachment_failure(&p, "tenant-a/intruder"), "sandbox.netns \"b-pod\" is the sandbox of an attachment of namespace tenant-b");
    assert_eq!(attachment_failure(&p, "tenant-b/second"), None, "the owner's namespace shares it");
    assert_eq!(p.desired.endpoints.iter().filter(|e| e.sandbox.path() == "/run/netns/b-pod").count(), 2);
    // Standalone mode has no tenants: the root operator names what it likes.
    let p = plan(&objects(&yaml), &standalone(), &Allocations::default());
    assert_eq!(attachment_failure(&p, "tenant-a/intruder"), None);
}

#[test]
fn a_netns_on_the_node_that_netlet_did_not_make_is_no_tenants_unless_its_status_says_netlet_realized_it() {
    let mut yaml = network("open", ", allowedSandboxes: [netns]");
    yaml += &attachment("tenant-a", "into-a-pod", "open", "{netns: cni-1234}");
    yaml += &attachment("tenant-b", "after-a-wipe", "open", "{netns: b-pod}");
    let mut objects = objects(&yaml);
    // tenant-b's attachment was realized by this node's agent before its
    // state dir was lost: its status (only the agent writes it) says so.
    let mut realized = (*objects.attachments[1]).clone();
    realized.status =
        Some(crate::api::AttachmentStatus { node: Some("n1".into()), sandbox_path: Some("/run/netns/b-pod".into()), ..Default::default() });
    objects.attachments[1] = Arc::new(realized);
    let mut facts = kubernetes(&[]);
    facts.unowned_netns = ["cni-1234".to_string(), "b-pod".to_string()].into();
    let p = plan(&objects, &facts, &Allocations::default());
    forbidden(
        attachment_failure(&p, "tenant-a/into-a-pod"),
        "sandbox.netns \"cni-1234\" is a namespace on the node that netlet did not make",
    );
    assert_eq!(attachment_failure(&p, "tenant-b/after-a-wipe"), None);
    // Standalone: the root operator may name a namespace made by `ip netns add`.
    facts.tenancy = Tenancy::default();
    let p = plan(&objects, &facts, &Allocations::default());
    assert_eq!(attachment_failure(&p, "tenant-a/into-a-pod"), None);
}

#[test]
fn a_namespace_selector_admits_only_the_namespaces_it_matches() {
    let selector = ", allowedSandboxes: [netns], namespaceSelector: {matchLabels: {team: blue}, matchExpressions: [{key: tier, operator: NotIn, values: [untrusted]}]}";
    let mut yaml = network("blue", selector);
    yaml += &attachment("blue-1", "ok", "blue", "{netns: x1}");
    yaml += &attachment("blue-2", "untrusted", "blue", "{netns: x2}");
    yaml += &attachment("red", "other", "blue", "{netns: x3}");
    yaml += &attachment("unlabelled", "none", "blue", "{netns: x4}");
    let facts =
        kubernetes(&[("blue-1", &[("team", "blue")]), ("blue-2", &[("team", "blue"), ("tier", "untrusted")]), ("red", &[("team", "red")])]);
    let p = plan(&objects(&yaml), &facts, &Allocations::default());
    assert_eq!(attachment_failure(&p, "blue-1/ok"), None);
    forbidden(
        attachment_failure(&p, "blue-2/untrusted"),
        "does not admit namespace blue-2: its labels do not match spec.namespaceSelector (team=blue,tier notin (untrusted))",
    );
    forbidden(attachment_failure(&p, "red/other"), "does not admit namespace red");
    forbidden(attachment_failure(&p, "unlabelled/none"), "does not admit namespace unlabelled");

    let bad = network("bad", ", namespaceSelector: {matchExpressions: [{key: team, operator: Like}]}");
    let p = plan(&objects(&bad), &facts, &Allocations::default());
    let failure = p.networks["bad"].clone().unwrap_err();
    assert_eq!(failure.reason, reason::INVALID_SPEC);
    assert!(failure.message.contains("namespaceSelector: Invalid expression operator"), "{}", failure.message);
}

#[test]
fn host_ports_stay_within_what_the_network_allows() {
    let mut yaml = network("web", ", allowedSandboxes: [netns]");
    yaml += &attachment("a", "c", "web", "{netns: c}");
    yaml += &port_mapping("a", "privileged", "c", "{containerPort: 80, hostPort: 80}");
    yaml += &port_mapping("a", "high", "c", "{containerPort: 81, hostPort: 8080}");
    yaml += &port_mapping("a", "ephemeral", "c", "{containerPort: 82}");
    let p = plan(&objects(&yaml), &kubernetes(&[]), &Allocations::default());
    forbidden(
        port_mapping_failure(&p, "a/privileged"),
        "host port 80 is outside the ports network \"web\" lets its attachments publish (1024-65535, spec.hostPorts)",
    );
    assert_eq!(port_mapping_failure(&p, "a/high"), None);
    assert!(!p.desired.firewall.ports.iter().any(|port| port.host_port == 80), "nothing published for a refused mapping");
    // Standalone: below 1024 is the root operator's to publish, as with Docker.
    let p = plan(&objects(&yaml), &standalone(), &Allocations::default());
    assert_eq!(port_mapping_failure(&p, "a/privileged"), None);

    // A network's own limits: a port range (ephemeral ports come from it)
    // and host addresses.
    let limits = ", allowedSandboxes: [netns], hostPorts: {min: 8000, max: 8100, addresses: [127.0.0.1]}";
    let mut yaml = network("web", limits);
    yaml += &attachment("a", "c", "web", "{netns: c}");
    yaml += &port_mapping("a", "in-range", "c", "{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}");
    yaml += &port_mapping("a", "above", "c", "{containerPort: 81, hostPort: 9000, hostIP: 127.0.0.1}");
    yaml += &port_mapping("a", "every-address", "c", "{containerPort: 82, hostPort: 8082}");
    yaml += &port_mapping("a", "other-address", "c", "{containerPort: 83, hostPort: 8083, hostIP: 10.0.0.1}");
    yaml += &port_mapping("a", "ephemeral", "c", "{containerPort: 84, hostIP: 127.0.0.1}");
    for facts in [kubernetes(&[]), standalone()] {
        let p = plan(&objects(&yaml), &facts, &Allocations::default());
        assert_eq!(port_mapping_failure(&p, "a/in-range"), None);
        forbidden(
            port_mapping_failure(&p, "a/above"),
            "host port 9000 is outside the ports network \"web\" lets its attachments publish (8000-8100",
        );
        forbidden(port_mapping_failure(&p, "a/every-address"), "host address 0.0.0.0 (every address) is not one network \"web\" lets its attachments publish on (spec.hostPorts.addresses: 127.0.0.1)");
        forbidden(port_mapping_failure(&p, "a/other-address"), "host address 10.0.0.1 is not one");
        let ephemeral = p.port_mappings["a/ephemeral"].as_ref().expect("an ephemeral port from the network's range");
        assert_eq!(ephemeral[0].host_port, 8000, "the lowest free port of 8000-8100");
    }
}

#[test]
fn references_into_another_namespace_are_refused_in_every_mode() {
    let mut yaml = network("web", ", allowedSandboxes: [netns, attachment]");
    yaml += &attachment("tenant-b", "web", "web", "{netns: b-web}");
    yaml += &attachment("tenant-a", "sidecar", "web", "{attachment: tenant-b/web}");
    yaml += &port_mapping("tenant-a", "steal", "tenant-b/web", "{containerPort: 80, hostPort: 8080}");
    yaml += &port_mapping("tenant-a", "by-name", "web", "{containerPort: 80, hostPort: 8081}");
    for facts in [kubernetes(&[]), standalone()] {
        let p = plan(&objects(&yaml), &facts, &Allocations::default());
        forbidden(attachment_failure(&p, "tenant-a/sidecar"), "reaches outside the attachment's namespace");
        forbidden(port_mapping_failure(&p, "tenant-a/steal"), "reaches outside the port mapping's namespace");
        // A bare name is looked up in the mapping's own namespace only.
        assert_eq!(port_mapping_failure(&p, "tenant-a/by-name").unwrap().reason, reason::ATTACHMENT_NOT_FOUND);
        assert!(p.desired.firewall.ports.is_empty());
    }
}

#[test]
fn the_nodes_own_namespace_is_refused_by_path_and_by_name_in_every_mode() {
    let mut yaml = network("web", ", allowedSandboxes: [netns, path]");
    yaml += &attachment("a", "by-path", "web", "{path: /proc/4242/ns/net}");
    yaml += &attachment("a", "by-name", "web", "{netns: node-alias}");
    yaml += &attachment("a", "fine", "web", "{netns: c}");
    for mut facts in [kubernetes(&[]), standalone()] {
        facts.node_namespace_at = BTreeMap::from([
            ("/proc/4242/ns/net".to_string(), "net:[4026531840]".to_string()),
            ("/run/netns/node-alias".to_string(), "net:[4026531840]".to_string()),
        ]);
        let p = plan(&objects(&yaml), &facts, &Allocations::default());
        forbidden(
            attachment_failure(&p, "a/by-path"),
            "sandbox.path /proc/4242/ns/net is the node's own network namespace (net:[4026531840])",
        );
        forbidden(
            attachment_failure(&p, "a/by-name"),
            "sandbox.netns \"node-alias\" (/run/netns/node-alias) is the node's own network namespace",
        );
        assert_eq!(attachment_failure(&p, "a/fine"), None);
        assert!(p.desired.endpoints.iter().all(|e| e.sandbox.path() == "/run/netns/c"), "only the fine one is made");
    }
}
