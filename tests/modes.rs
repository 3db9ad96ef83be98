//! Docker's network modes other than bridge: none, host, container:NAME,
//! macvlan, and IPv6 dual stack.

mod harness;

use harness::*;

#[test]
fn none_host_and_container_modes() {
    let node = Node::new();
    node.in_node("ip addr add 192.0.2.10/24 dev lo");
    node.write(
        "modes.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: none}
spec: {driver: "null"}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: host}
spec: {driver: host}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n}
spec: {ipam: {config: [{subnet: 10.51.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: closed}
spec: {network: none, sandbox: {netns: "{T}closed"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: hosty}
spec: {network: host, sandbox: {host: true}}
---
apiVersion: netlet.io/v1alpha1
kind: PortMapping
metadata: {name: hosty-web}
spec: {attachment: hosty, ports: [{containerPort: 80}]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: owner}
spec: {network: n, sandbox: {netns: "{T}owner"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: sharer}
spec: {sandbox: {attachment: owner}}
"#,
    );
    let out = node.once();
    // The port mapping on a host-mode attachment is the one expected failure.
    assert!(!out.status.success());
    assert_eq!(node.ready("portmappings", "hosty-web"), ("False".into(), "NotApplicable".into()));

    // none: lo only, up.
    let closed = node.ns("closed");
    let links: Vec<String> = ip_json(&closed, "link show").iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect();
    assert_eq!(links, ["lo"]);
    assert!(link(&closed, "lo").unwrap()["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(node.ready("attachments", "closed"), ("True".into(), "Ready".into()));

    // host: nothing created; status reports the node's addresses.
    assert_eq!(node.ready("attachments", "hosty").0, "True");
    let hosty = node.status("attachments", "hosty");
    assert!(hosty["nodeAddresses"].as_array().unwrap().iter().any(|a| a == "192.0.2.10/24"), "{hosty}");

    // container mode: same namespace, the owner's addresses, lo shared.
    let sharer = node.status("attachments", "sharer");
    assert_eq!(sharer["sandboxPath"], format!("/run/netns/{}", node.ns("owner")));
    assert_eq!(sharer["ipv4Address"], "10.51.0.2/24");
    assert_eq!(node.ready("attachments", "sharer"), ("True".into(), "Ready".into()));
    let _server = Server::start(&node.ns("owner"), 7777, false, false);
    assert_eq!(
        connect(&node.ns("owner"), "127.0.0.1", 7777, false).as_deref(),
        Some("hello 127.0.0.1"),
        "processes sharing the namespace meet on 127.0.0.1"
    );

    // The owner goes: the sharer says so, and recovers when it returns.
    let without_owner: String = std::fs::read_to_string(node.manifests().join("modes.yaml"))
        .unwrap()
        .split("---")
        .filter(|d| !d.contains("name: owner}"))
        .collect::<Vec<_>>()
        .join("---");
    let with_owner = std::fs::read_to_string(node.manifests().join("modes.yaml")).unwrap();
    std::fs::write(node.manifests().join("modes.yaml"), without_owner).unwrap();
    node.once();
    assert_eq!(node.ready("attachments", "sharer"), ("False".into(), "SandboxOwnerGone".into()));
    std::fs::write(node.manifests().join("modes.yaml"), with_owner).unwrap();
    node.once();
    assert_eq!(node.ready("attachments", "sharer").0, "True");
}

#[test]
fn macvlan_attachments_talk_over_their_parent() {
    let node = Node::new();
    // A veth pair stands in for a physical NIC (no dummy links here).
    node.in_node("ip link add uplink0 type veth peer name uplink0p && ip link set uplink0 up && ip link set uplink0p up");
    node.write(
        "mv.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: mv}
spec:
  driver: macvlan
  macvlan: {parent: uplink0, mode: bridge}
  ipam: {config: [{subnet: 192.168.77.0/24, gateway: 192.168.77.1}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: orphan}
spec:
  driver: macvlan
  macvlan: {parent: nosuchnic}
  ipam: {config: [{subnet: 192.168.78.0/24}]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: m1}
spec: {network: mv, sandbox: {netns: "{T}m1"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: m2}
spec: {network: mv, sandbox: {netns: "{T}m2"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: lost}
spec: {network: orphan, sandbox: {netns: "{T}lost"}}
"#,
    );
    node.once();
    let m1 = link(&node.ns("m1"), "eth0").expect("macvlan in the sandbox");
    assert_eq!(m1["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(m1["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(addresses(&node.ns("m1"), "eth0"), ["192.168.77.2/24"]);
    assert_eq!(default_route(&node.ns("m1")), Some(("192.168.77.1".into(), "eth0".into())));
    assert!(ping(&node.ns("m1"), "192.168.77.3"));
    let _s = Server::start(&node.ns("m2"), 80, false, false);
    assert_eq!(connect(&node.ns("m1"), "192.168.77.3", 80, false).as_deref(), Some("hello 192.168.77.2"));
    let (status, reason) = node.ready("attachments", "lost");
    assert_eq!(status, "False");
    let msg = node.status("attachments", "lost")["conditions"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("nosuchnic"), "{reason}: {msg}");
    // Removing one attachment removes its macvlan and nothing else.
    let yaml = std::fs::read_to_string(node.manifests().join("mv.yaml")).unwrap();
    node.write("mv.yaml", &yaml.split("---").filter(|d| !d.contains("name: m2}")).collect::<Vec<_>>().join("---"));
    node.once();
    assert!(!netns_exists(&node.ns("m2")));
    assert!(link(&node.ns("m1"), "eth0").is_some());
}

#[test]
fn dual_stack_addresses_routes_and_published_ports() {
    let node = Node::new();
    let remote = node.add_remote("rem", "10.250.0.1", "10.250.0.2");
    node.in_node(&format!("ip addr add fd99::1/64 dev {}up nodad", node.tag));
    ok(&format!("ip -n {remote} addr add fd99::2/64 dev eth0 nodad"));
    node.write(
        "v6.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: dual}
spec:
  enableIPv6: true
  ipam: {config: [{subnet: 10.61.0.0/24}, {subnet: "fd00:61::/64"}]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: d1}
spec: {network: dual, sandbox: {netns: "{T}d1"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: d2}
spec: {network: dual, sandbox: {netns: "{T}d2"}, ipv6Address: "fd00:61::99"}
---
apiVersion: netlet.io/v1alpha1
kind: PortMapping
metadata: {name: d2web}
spec: {attachment: d2, ports: [{containerPort: 80, hostPort: 8080}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: plain}
spec: {ipam: {config: [{subnet: 10.62.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: p1}
spec: {network: plain, sandbox: {netns: "{T}p1"}}
"#,
    );
    node.converge();
    let (d1, d2) = (node.ns("d1"), node.ns("d2"));
    // IPv6 stays on where the network has it, and is off on an IPv4-only
    // container and on every bridge port (as Docker does).
    let ipv6_off = |ns: &str, dev: &str| ok(&format!("ip netns exec {ns} cat /proc/sys/net/ipv6/conf/{dev}/disable_ipv6")).trim() == "1";
    assert!(!ipv6_off(&d1, "eth0"));
    assert!(ipv6_off(&node.ns("p1"), "eth0"));
    let port = node.status("attachments", "d1")["hostInterface"].as_str().unwrap().to_string();
    assert!(ipv6_off(&node.name, &port));
    assert_eq!(addresses(&d1, "eth0"), ["10.61.0.2/24", "fd00:61::2/64"]);
    assert_eq!(addresses(&d2, "eth0"), ["10.61.0.3/24", "fd00:61::99/64"]);
    assert!(addresses(&node.name, "nl-dual").contains(&"fd00:61::1/64".to_string()));
    let v6_default = ip_json(&d2, "-6 route show default");
    assert_eq!(v6_default[0]["gateway"], "fd00:61::1");
    assert_eq!(ok(&format!("ip netns exec {} cat /proc/sys/net/ipv6/conf/all/forwarding", node.name)).trim(), "1");
    // No DAD left tentative: TCP over IPv6 right away.
    let _s6 = Server::start(&d2, 80, false, true);
    assert_eq!(connect(&d1, "fd00:61::99", 80, false).as_deref(), Some("hello fd00:61::2"));
    // Published on IPv6 too, keeping the client's address.
    // The uplink's IPv6 neighbours may still be resolving: a few tries.
    let got = (0..5).find_map(|_| connect(&remote, "fd99::1", 8080, false));
    assert_eq!(got.as_deref(), Some("hello fd99::2"));
    let bindings = node.status("portmappings", "d2web")["bindings"].as_array().unwrap().clone();
    assert!(bindings.iter().any(|b| b["hostIP"] == "::"), "{bindings:?}");
}

#[test]
fn hosts_and_resolv_conf_are_written_for_managed_sandboxes() {
    let node = Node::new();
    node.write(
        "names.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n}
spec: {ipam: {config: [{subnet: 10.52.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: named}
spec:
  network: n
  sandbox: {netns: "{T}named"}
  hostname: zxr
  extraHosts: ["www.zxr.com:1.1.1.1"]
  dns: {nameservers: [10.52.0.53], searches: [corp.example], options: ["ndots:2"]}
"#,
    );
    node.converge();
    let sandbox = node.ns("named");
    let hosts = std::fs::read_to_string(format!("/etc/netns/{sandbox}/hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost"));
    assert!(hosts.contains("10.52.0.2\tzxr"), "{hosts}");
    assert!(hosts.contains("1.1.1.1\twww.zxr.com"), "{hosts}");
    let resolv = std::fs::read_to_string(format!("/etc/netns/{sandbox}/resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.52.0.53\n") && resolv.contains("search corp.example\n") && resolv.contains("options ndots:2\n"),
        "{resolv}"
    );
    // `ip netns exec` shows them as /etc/hosts: names resolve inside.
    assert_eq!(ok(&format!("ip netns exec {sandbox} getent ahostsv4 zxr")).split_whitespace().next(), Some("10.52.0.2"));
    assert_eq!(ok(&format!("ip netns exec {sandbox} getent ahostsv4 www.zxr.com")).split_whitespace().next(), Some("1.1.1.1"));
    // In sync: nothing rewritten; removed with the namespace.
    assert!(node.converge().contains("0 kernel mutations"));
    node.converge_empty();
    assert!(!std::path::Path::new(&format!("/etc/netns/{sandbox}")).exists());
}
