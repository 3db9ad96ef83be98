//! Every mutable field of a running attachment changed on a running agent:
//! the moment status says Ready with the new value, the kernel holds it and
//! traffic flows (no later pass needed, no moment without an address).

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

const NETWORKS: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n1}
spec:
  enableIPv6: true
  ipam: {config: [{subnet: 10.61.0.0/24}, {subnet: "fd61::/64"}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n2}
spec: {ipam: {config: [{subnet: 10.62.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: peer1}
spec: {network: n1, sandbox: {netns: "{T}p1"}, ipv4Address: 10.61.0.5}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: peer2}
spec: {network: n2, sandbox: {netns: "{T}p2"}, ipv4Address: 10.62.0.5}
"#;

/// The attachment under test, `web`, with `spec` (YAML flow fields), and,
/// when `extra` says whether it carries the default route, a second one in
/// its sandbox on n2.
fn web(spec: &str, extra: Option<bool>) -> String {
    let mut yaml = format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: web}}\nspec: {{sandbox: {{netns: \"{{T}}web\"}}, {spec}}}\n");
    if let Some(default_route) = extra {
        yaml += &format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: extra}}\nspec: {{network: n2, sandbox: {{netns: \"{{T}}web\"}}, interface: eth9, ipv4Address: 10.62.0.9, defaultRoute: {default_route}}}\n");
    }
    yaml
}

/// An attachment's entry (object and status) among `items`.
fn item<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items.iter().find(|i| i["metadata"]["name"] == name).unwrap_or(&Value::Null)
}

/// Writes the manifest and returns once every attachment listed is Ready
/// and `says` holds of the entries (object and status): polled every
/// 10 ms, so what follows runs right after status says so.
fn apply(node: &Node, yaml: &str, says: impl Fn(&[Value]) -> bool) {
    node.write("m.yaml", &format!("{NETWORKS}{yaml}"));
    let started = Instant::now();
    loop {
        let items = node.items("attachments");
        if items.iter().all(|i| ready_in(&i["status"]).0 == "True") && says(&items) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not Ready as asked: {items:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_mutable_field_of_a_running_attachment_is_in_the_kernel_when_status_says_ready() {
    let mut node = Node::new();
    node.write("m.yaml", &format!("{NETWORKS}{}", web("network: n1, ipv4Address: 10.61.0.10, aliases: [alpha]", Some(false))));
    node.spawn(&["--metrics-addr", "off"]);
    let (sandbox, peer1, peer2) = (node.ns("web"), node.ns("p1"), node.ns("p2"));
    wait_until("web Ready", Duration::from_secs(15), || node.ready("attachments", "web").0 == "True");
    let v4 = |ifname: &str| addresses(&sandbox, ifname).into_iter().filter(|a| !a.contains(':')).collect::<Vec<_>>();
    assert_eq!(v4("eth0"), ["10.61.0.10/24"]);
    assert!(ping(&peer1, "10.61.0.10"));
    let web_says = |field: &'static str, value: &'static str| move |items: &[Value]| item(items, "web")["status"][field] == value;

    // IPv4 address, within the subnet: the old one was primary.
    apply(&node, &web("network: n1, ipv4Address: 10.61.0.20, aliases: [alpha]", Some(false)), web_says("ipv4Address", "10.61.0.20/24"));
    assert_eq!(v4("eth0"), ["10.61.0.20/24"], "the kernel holds what status says");
    assert!(ping(&peer1, "10.61.0.20"), "peer -> new address");
    assert!(ping(&sandbox, "10.61.0.1"), "new address -> gateway");
    assert_eq!(default_route(&sandbox), Some(("10.61.0.1".into(), "eth0".into())));

    // IPv6 address, added then changed.
    let yaml = web("network: n1, ipv4Address: 10.61.0.20, ipv6Address: \"fd61::20\", aliases: [alpha]", Some(false));
    apply(&node, &yaml, web_says("ipv6Address", "fd61::20/64"));
    assert!(addresses(&sandbox, "eth0").contains(&"fd61::20/64".to_string()));
    let yaml = web("network: n1, ipv4Address: 10.61.0.20, ipv6Address: \"fd61::21\", aliases: [alpha]", Some(false));
    apply(&node, &yaml, web_says("ipv6Address", "fd61::21/64"));
    let v6: Vec<String> = addresses(&sandbox, "eth0").into_iter().filter(|a| a.contains(':')).collect();
    assert_eq!(v6, ["fd61::21/64"]);
    assert!(ping(&peer1, "fd61::21"), "peer -> new IPv6 address");

    // MAC address: neighbours are told (a gratuitous ARP), traffic goes on.
    // A neighbour entry confirmed less than a second ago (locktime) keeps
    // its address whatever it hears: the peer last spoke to it above.
    std::thread::sleep(Duration::from_millis(1100));
    let yaml = web("network: n1, ipv4Address: 10.61.0.20, macAddress: \"02:42:0a:3d:00:99\", aliases: [alpha]", Some(false));
    apply(&node, &yaml, web_says("macAddress", "02:42:0a:3d:00:99"));
    assert_eq!(link(&sandbox, "eth0").unwrap()["address"], "02:42:0a:3d:00:99");
    assert!(ping(&sandbox, "10.61.0.1"), "the gateway answers the new MAC");
    assert!(ping(&peer1, "10.61.0.20"));

    // Interface name.
    apply(
        &node,
        &web("network: n1, ipv4Address: 10.61.0.20, interface: net0, aliases: [alpha]", Some(false)),
        web_says("interface", "net0"),
    );
    assert!(link(&sandbox, "eth0").is_none(), "the old name is gone");
    assert_eq!(v4("net0"), ["10.61.0.20/24"]);
    assert_eq!(default_route(&sandbox), Some(("10.61.0.1".into(), "net0".into())));
    assert!(ping(&peer1, "10.61.0.20"));

    // Aliases: the new name answers at once, the old one no longer.
    let yaml = web("network: n1, ipv4Address: 10.61.0.20, interface: net0, aliases: [beta]", Some(false));
    apply(&node, &yaml, |items| item(items, "web")["spec"]["aliases"][0] == "beta");
    assert_eq!(resolve(&peer1, "beta"), ["10.61.0.20"]);
    assert!(resolve(&peer1, "alpha").is_empty());

    // Default route: to the other attachment of the sandbox.
    let yaml = web("network: n1, ipv4Address: 10.61.0.20, interface: net0, aliases: [beta], defaultRoute: false", Some(true));
    apply(&node, &yaml, |items| {
        item(items, "extra")["spec"]["defaultRoute"] == true && item(items, "web")["spec"]["defaultRoute"] == false
    });
    assert_eq!(default_route(&sandbox), Some(("10.62.0.1".into(), "eth9".into())));
    assert!(ping(&peer2, "10.62.0.9"));

    // Network: n1 -> n2, with an address there (its n2 neighbour gone);
    // n1's peer loses it.
    apply(&node, &web("network: n2, ipv4Address: 10.62.0.30, interface: net0", None), web_says("ipv4Address", "10.62.0.30/24"));
    let host = node.status("attachments", "web")["hostInterface"].as_str().unwrap().to_string();
    assert_eq!(link(&node.name, &host).unwrap()["master"], "nl-n2", "the veth moved to n2's bridge");
    assert_eq!(v4("net0"), ["10.62.0.30/24"]);
    assert_eq!(default_route(&sandbox), Some(("10.62.0.1".into(), "net0".into())));
    assert!(ping(&peer2, "10.62.0.30"), "n2's peer reaches it");
    assert!(!ping(&peer1, "10.62.0.30"), "n1's does not (networks are isolated)");
}
