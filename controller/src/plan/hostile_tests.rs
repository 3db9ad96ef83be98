//! The bad-input matrix: each case adds one hostile object (or file) next
//! to a healthy network and attachment, and checks that the hostile one
//! fails with its specific reason and message while the healthy ones stay
//! Ready and unchanged.

use std::path::PathBuf;

use super::outcome::reason;
use super::{plan, Allocations, NodeFacts};
use crate::api::Protocol;
use crate::source::manifests;

const HEALTHY: &str = "
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: good}
spec:
  ipam: {config: [{subnet: 10.10.0.0/24}]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: good-att}
spec: {network: good, sandbox: {netns: good-ns}, ipv4Address: 10.10.0.50, macAddress: '02:42:0a:0a:00:32'}
";

fn net(name: &str, spec: &str) -> String {
    format!("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}
fn att(name: &str, spec: &str) -> String {
    format!("apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}
fn pm(name: &str, spec: &str) -> String {
    format!("apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// Where the failure must show up.
enum Expect {
    /// A load error whose message contains the text.
    Load(&'static str),
    Network(&'static str, &'static str, &'static str),
    Attachment(&'static str, &'static str, &'static str),
    PortMapping(&'static str, &'static str, &'static str),
}
use Expect::*;

fn cases() -> Vec<(&'static str, String, Expect)> {
    let t = |s: &str| s.to_string();
    vec![
        ("malformed yaml", t("kind: [unclosed\n  - x: {"), Load("malformed YAML")),
        ("unknown kind", t("apiVersion: netlet.io/v1alpha1\nkind: Router\nmetadata: {name: r}\n"), Load("unknown kind \"Router\"")),
        ("wrong apiVersion", t("apiVersion: netlet.io/v2\nkind: Network\nmetadata: {name: n2}\n"), Load("unsupported apiVersion")),
        ("no name", t("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {}\n"), Load("has no metadata.name")),
        ("field of wrong type", net("typed", "{mtu: lots}"), Load("invalid Network")),
        ("unknown driver", net("drv", "{driver: weave}"), Load("invalid Network")),
        (
            "cidr prefix too long",
            net("n", "{ipam: {config: [{subnet: 10.0.0.0/33}]}}"),
            Network("n", reason::INVALID_SPEC, "not a valid CIDR"),
        ),
        ("cidr garbage", net("n", "{ipam: {config: [{subnet: banana}]}}"), Network("n", reason::INVALID_SPEC, "not a valid CIDR")),
        ("cidr host bits", net("n", "{ipam: {config: [{subnet: 10.0.0.1/24}]}}"), Network("n", reason::INVALID_SPEC, "host bits set")),
        (
            "gateway outside subnet",
            net("n", "{ipam: {config: [{subnet: 10.0.0.0/24, gateway: 10.0.1.1}]}}"),
            Network("n", reason::INVALID_SPEC, "outside the subnet"),
        ),
        (
            "gateway is network address",
            net("n", "{ipam: {config: [{subnet: 10.0.0.0/24, gateway: 10.0.0.0}]}}"),
            Network("n", reason::INVALID_SPEC, "network or broadcast"),
        ),
        (
            "ipRange outside subnet",
            net("n", "{ipam: {config: [{subnet: 10.0.0.0/24, ipRange: 10.0.5.0/28}]}}"),
            Network("n", reason::INVALID_SPEC, "not inside the subnet"),
        ),
        (
            "aux outside subnet",
            net("n", "{ipam: {config: [{subnet: 10.0.0.0/24, auxAddresses: {r: 10.9.9.9}}]}}"),
            Network("n", reason::INVALID_SPEC, "outside the subnet"),
        ),
        (
            "subnet overlaps another network",
            net("n", "{ipam: {config: [{subnet: 10.10.0.128/25}]}}"),
            Network("n", reason::SUBNET_OVERLAP, "network good"),
        ),
        (
            "bridge name too long",
            net("n", "{bridge: {name: this-is-far-too-long}, ipam: {config: [{subnet: 10.0.0.0/24}]}}"),
            Network("n", reason::INVALID_SPEC, "at most 15"),
        ),
        (
            "bridge name invalid",
            net("n", "{bridge: {name: 'br/0'}, ipam: {config: [{subnet: 10.0.0.0/24}]}}"),
            Network("n", reason::INVALID_SPEC, "invalid character"),
        ),
        (
            "bridge name taken",
            net("n", "{bridge: {name: nl-good}, ipam: {config: [{subnet: 10.0.0.0/24}]}}"),
            Network("n", reason::BRIDGE_NAME_CONFLICT, "network good"),
        ),
        ("mtu out of range", net("n", "{mtu: 20, ipam: {config: [{subnet: 10.0.0.0/24}]}}"), Network("n", reason::INVALID_SPEC, "mtu 20")),
        (
            "ipv6 subnet without enableIPv6",
            net("n", "{ipam: {config: [{subnet: 'fd00::/64'}]}}"),
            Network("n", reason::INVALID_SPEC, "enableIPv6 is false"),
        ),
        (
            "bad docker option value",
            net("n", "{options: {com.docker.network.bridge.enable_icc: maybe}, ipam: {config: [{subnet: 10.0.0.0/24}]}}"),
            Network("n", reason::INVALID_SPEC, "true or false"),
        ),
        (
            "macvlan without parent",
            net("n", "{driver: macvlan, ipam: {config: [{subnet: 10.0.0.0/24}]}}"),
            Network("n", reason::INVALID_SPEC, "macvlan.parent"),
        ),
        ("bridge without subnet", net("n", "{driver: bridge}"), Network("n", reason::INVALID_SPEC, "at least one subnet")),
        (
            "unknown network",
            att("a", "{network: nope, sandbox: {netns: a}}"),
            Attachment("a", reason::NETWORK_NOT_FOUND, "\"nope\" does not exist"),
        ),
        (
            "static outside subnet",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.99.0.1}"),
            Attachment("a", reason::INVALID_SPEC, "outside every subnet"),
        ),
        (
            "static is gateway",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.10.0.1}"),
            Attachment("a", reason::INVALID_SPEC, "the gateway"),
        ),
        (
            "static is network address",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.10.0.0}"),
            Attachment("a", reason::INVALID_SPEC, "network address"),
        ),
        (
            "static is broadcast",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.10.0.255}"),
            Attachment("a", reason::INVALID_SPEC, "broadcast"),
        ),
        (
            "static in use",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.10.0.50}"),
            Attachment("a", reason::ADDRESS_IN_USE, "default/good-att"),
        ),
        (
            "static not an address",
            att("a", "{network: good, sandbox: {netns: a}, ipv4Address: 10.10.0.300}"),
            Attachment("a", reason::INVALID_SPEC, "not a valid IPv4"),
        ),
        (
            "ipv6 on an IPv4 network",
            att("a", "{network: good, sandbox: {netns: a}, ipv6Address: 'fd00::5'}"),
            Attachment("a", reason::INVALID_SPEC, ""),
        ),
        (
            "duplicate MAC",
            att("a", "{network: good, sandbox: {netns: a}, macAddress: '02:42:0a:0a:00:32'}"),
            Attachment("a", reason::DUPLICATE_MAC, "default/good-att"),
        ),
        (
            "malformed MAC",
            att("a", "{network: good, sandbox: {netns: a}, macAddress: '02:42:zz:00:00:01'}"),
            Attachment("a", reason::INVALID_SPEC, "non-hex"),
        ),
        (
            "multicast MAC",
            att("a", "{network: good, sandbox: {netns: a}, macAddress: '01:00:5e:00:00:01'}"),
            Attachment("a", reason::INVALID_SPEC, "multicast"),
        ),
        (
            "interface name too long",
            att("a", "{network: good, sandbox: {netns: a}, interface: eth0123456789abcdef}"),
            Attachment("a", reason::INVALID_SPEC, "at most 15"),
        ),
        (
            "interface name invalid",
            att("a", "{network: good, sandbox: {netns: a}, interface: 'eth:0'}"),
            Attachment("a", reason::INVALID_SPEC, "invalid character"),
        ),
        (
            "interface name taken in sandbox",
            att("a", "{network: good, sandbox: {netns: good-ns}, interface: eth0}"),
            Attachment("a", reason::INTERFACE_CONFLICT, ""),
        ),
        (
            "two sandbox variants",
            att("a", "{network: good, sandbox: {netns: a, host: true}}"),
            Attachment("a", reason::INVALID_SPEC, "netns, host are all set"),
        ),
        ("no sandbox variant", att("a", "{network: good, sandbox: {}}"), Attachment("a", reason::INVALID_SPEC, "none is set")),
        (
            "relative sandbox path",
            att("a", "{network: good, sandbox: {path: proc/1/ns/net}}"),
            Attachment("a", reason::INVALID_SPEC, "absolute path"),
        ),
        (
            "netns name with slash",
            att("a", "{network: good, sandbox: {netns: ../etc}}"),
            Attachment("a", reason::INVALID_SPEC, "not a valid namespace name"),
        ),
        (
            "host sandbox on a bridge network",
            att("a", "{network: good, sandbox: {host: true}}"),
            Attachment("a", reason::INVALID_SPEC, "driver host"),
        ),
        (
            "malformed extraHosts",
            att("a", "{network: good, sandbox: {netns: a}, extraHosts: [nocolon]}"),
            Attachment("a", reason::INVALID_SPEC, "name:address"),
        ),
        (
            "bad nameserver",
            att("a", "{network: good, sandbox: {netns: a}, dns: {nameservers: [dns.google]}}"),
            Attachment("a", reason::INVALID_SPEC, "not an IP"),
        ),
        (
            "bad alias",
            att("a", "{network: good, sandbox: {netns: a}, aliases: ['-bad-']}"),
            Attachment("a", reason::INVALID_SPEC, "not a valid DNS name"),
        ),
        (
            "port mapping to missing attachment",
            pm("p", "{attachment: ghost, ports: [{containerPort: 80}]}"),
            PortMapping("p", reason::ATTACHMENT_NOT_FOUND, "default/ghost"),
        ),
        (
            "container port zero",
            pm("p", "{attachment: good-att, ports: [{containerPort: 0}]}"),
            PortMapping("p", reason::INVALID_SPEC, "between 1 and 65535"),
        ),
        ("port out of range", pm("p", "{attachment: good-att, ports: [{containerPort: 70000}]}"), Load("invalid PortMapping")),
        (
            "port range size mismatch",
            pm("p", "{attachment: good-att, ports: [{containerPort: 80, containerPortEnd: 82, hostPort: 8080, hostPortEnd: 8090}]}"),
            PortMapping("p", reason::INVALID_SPEC, "differ in size"),
        ),
        (
            "hostIP not an address",
            pm("p", "{attachment: good-att, ports: [{containerPort: 80, hostIP: localhost}]}"),
            PortMapping("p", reason::INVALID_SPEC, "not an IP"),
        ),
        ("nothing to publish", pm("p", "{attachment: good-att}"), PortMapping("p", reason::INVALID_SPEC, "nothing to publish")),
        (
            "host port bound by a process",
            pm("p", "{attachment: good-att, ports: [{containerPort: 80, hostPort: 22}]}"),
            PortMapping("p", reason::PORT_IN_USE, "already bound"),
        ),
    ]
}

fn temp_dir(tag: usize) -> PathBuf {
    let d = std::env::temp_dir().join(format!("netlet-hostile-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_hostile_input_fails_alone_with_a_specific_reason() {
    let facts = NodeFacts {
        node_name: "node-a".into(),
        ephemeral_ports: (32768, 60999),
        bound_ports: vec![(Protocol::Tcp, "0.0.0.0".parse().unwrap(), 22)],
        ..Default::default()
    };
    let cases = cases();
    assert!(cases.len() >= 30, "the matrix must cover at least 30 cases");
    for (i, (name, hostile, expect)) in cases.into_iter().enumerate() {
        let dir = temp_dir(i);
        // First the healthy objects alone: they are running when the
        // hostile one arrives.
        std::fs::write(dir.join("a-healthy.yaml"), HEALTHY).unwrap();
        let before = plan(&manifests::load(&dir).objects, &facts, &Allocations::default());
        let healthy_interface = before.attachments["default/good-att"].as_ref().unwrap().interface.clone();
        std::fs::write(dir.join("b-hostile.yaml"), &hostile).unwrap();
        let loaded = manifests::load(&dir);
        let mut objects = loaded.objects.clone();
        objects.sort_by_creation();
        let p = plan(&objects, &facts, &before.allocations);

        // The healthy objects are untouched by the hostile one.
        assert!(p.networks["good"].is_ok(), "{name}: healthy network broke: {:?}", p.networks["good"]);
        let good = p.attachments["default/good-att"].as_ref().unwrap_or_else(|f| panic!("{name}: healthy attachment broke: {f}"));
        assert_eq!(good.ipv4.unwrap().to_string(), "10.10.0.50/24", "{name}");
        assert_eq!(good.interface, healthy_interface, "{name}: healthy interface renamed");

        let check = |what: &str, got: Option<&super::outcome::Failure>, reason: &str, text: &str| {
            let f = got.unwrap_or_else(|| panic!("{name}: {what} did not fail"));
            assert_eq!(f.reason, reason, "{name}: {}", f.message);
            assert!(f.message.contains(text), "{name}: message {:?} lacks {text:?}", f.message);
        };
        match expect {
            Load(text) => {
                assert!(loaded.errors.iter().any(|e| e.message.contains(text)), "{name}: no load error with {text:?}: {:?}", loaded.errors);
            }
            Network(n, reason, text) => check("network", p.networks.get(n).and_then(|r| r.as_ref().err()), reason, text),
            Attachment(a, reason, text) => {
                check("attachment", p.attachments.get(format!("default/{a}").as_str()).and_then(|r| r.as_ref().err()), reason, text)
            }
            PortMapping(m, reason, text) => {
                check("port mapping", p.port_mappings.get(format!("default/{m}").as_str()).and_then(|r| r.as_ref().err()), reason, text)
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn an_exhausted_pool_fails_only_the_attachments_that_did_not_fit() {
    let dir = temp_dir(1000);
    let mut yaml = net("tiny", "{ipam: {config: [{subnet: 10.20.0.0/29}]}}");
    for i in 0..7 {
        yaml.push_str("---\n");
        yaml.push_str(&att(&format!("c{i}"), &format!("{{network: tiny, sandbox: {{netns: c{i}}}}}")));
    }
    std::fs::write(dir.join("x.yaml"), yaml).unwrap();
    let loaded = manifests::load(&dir);
    let p = plan(
        &loaded.objects,
        &NodeFacts { node_name: "n".into(), ephemeral_ports: (32768, 60999), ..Default::default() },
        &Allocations::default(),
    );
    // /29: .0 network, .1 gateway, .7 broadcast -> 5 usable
    let ok = p.attachments.values().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5);
    let mut failed: Vec<_> = p.attachments.iter().filter_map(|(k, r)| r.as_ref().err().map(|f| (k.clone(), f.reason))).collect();
    failed.sort();
    assert_eq!(failed, vec![("default/c5".into(), reason::POOL_EXHAUSTED), ("default/c6".into(), reason::POOL_EXHAUSTED)]);
    std::fs::remove_dir_all(dir).unwrap();
}
