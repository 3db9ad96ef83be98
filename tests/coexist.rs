//! Side by side with Docker (and firewalld): iptables rules set up the way
//! Docker 28 sets them (FORWARD policy DROP, DOCKER-USER, DOCKER-FORWARD,
//! isolation chains, a docker0 bridge with a container), with the nft and
//! the legacy iptables backends, all inside the test's node namespace.
//! Publishing, egress, isolation, intra-network and hairpin traffic keep
//! working; Docker's rules and its container are left as they were; netlet's
//! own rules are repaired on drift and go with the last network.

mod harness;

use harness::*;

const WORLD: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: front}
spec: {ipam: {config: [{subnet: 10.51.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: back}
spec: {ipam: {config: [{subnet: 10.52.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: web}
spec: {network: front, sandbox: {netns: "{T}web"}, ipv4Address: 10.51.0.10}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: peer}
spec: {network: front, sandbox: {netns: "{T}peer"}, ipv4Address: 10.51.0.11}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: other}
spec: {network: back, sandbox: {netns: "{T}other"}, ipv4Address: 10.52.0.10}
---
apiVersion: netlet.io/v1alpha1
kind: PortMapping
metadata: {name: web}
spec: {attachment: web, ports: [{containerPort: 80, hostPort: 8080}]}
"#;

/// Docker 28's filter and nat rules for docker0 (`iptables-save` of a
/// fresh dockerd with one bridge), for `iptables-restore`.
const DOCKER_FILTER: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-BRIDGE -o docker0 -j DOCKER
-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
";

/// `iptables-save` of the node without counters, comments or netlet's lines.
fn foreign_rules(node: &Node, save: &str) -> String {
    let out = ok(&format!("ip netns exec {} {save}", node.name));
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("NETLET"))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ours(node: &Node, save: &str) -> Vec<String> {
    ok(&format!("ip netns exec {} {save} -t filter", node.name)).lines().filter(|l| l.contains("NETLET")).map(String::from).collect()
}

fn beside_docker(backend: &str) {
    let node = Node::new();
    let remote = node.add_remote("rem", "10.250.0.1", "10.250.0.2");
    let (save, restore) = (format!("iptables-{backend}-save"), format!("iptables-{backend}-restore"));
    // Docker's bridge, a container on it, and its rules.
    node.in_node("ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up");
    let dk = node.ns("dk");
    ok(&format!(
        "ip netns add {dk} && ip -n {dk} link set lo up && ip link add {t}dk netns {n} type veth peer name eth0 netns {dk} && \
         ip -n {n} link set {t}dk master docker0 up && ip -n {dk} addr add 172.17.0.2/16 dev eth0 && ip -n {dk} link set eth0 up && \
         ip -n {dk} route add default via 172.17.0.1",
        t = node.tag,
        n = node.name
    ));
    let restore_cmd = format!("ip netns exec {} {restore}", node.name);
    let mut child = std::process::Command::new("sh").arg("-c").arg(&restore_cmd).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), DOCKER_FILTER.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    node.in_node("sysctl -qw net.ipv4.ip_forward=1");
    let docker_before = foreign_rules(&node, &save);
    let _remote_server = Server::start(&remote, 9000, false, false);
    assert!(connect(&dk, "10.250.0.2", 9000, false).is_some(), "Docker's container reaches out before netlet");

    node.write("w.yaml", WORLD);
    node.converge();
    assert_eq!(ours(&node, &save).len(), 2 + 2 * 3, "chain, jump, three rules per bridge: {:?}", ours(&node, &save));
    let (web, peer, other) = (node.ns("web"), node.ns("peer"), node.ns("other"));
    let _web_server = Server::start(&web, 80, false, false);
    // Publishing from another host, the node itself, and hairpin.
    assert_eq!(
        connect(&remote, "10.250.0.1", 8080, false).as_deref(),
        Some("hello 10.250.0.2"),
        "{backend}: published port from a remote host"
    );
    assert!(connect(&node.name, "127.0.0.1", 8080, false).is_some(), "{backend}: from the node");
    assert!(connect(&peer, "10.250.0.1", 8080, false).is_some(), "{backend}: hairpin from a neighbour");
    assert!(connect(&web, "10.250.0.1", 8080, false).is_some(), "{backend}: hairpin to itself");
    // Egress, intra-network (bridged through FORWARD by br_netfilter), isolation.
    assert_eq!(connect(&web, "10.250.0.2", 9000, false).as_deref(), Some("hello 10.250.0.1"), "{backend}: egress, masqueraded");
    assert!(ping(&peer, "10.51.0.10"), "{backend}: intra-network");
    assert!(!ping(&other, "10.51.0.10"), "{backend}: networks stay isolated");
    // Docker's container: still out, still closed to others' traffic.
    assert!(connect(&dk, "10.250.0.2", 9000, false).is_some(), "{backend}: Docker's container reaches out");
    assert!(!ping(&web, "172.17.0.2"), "{backend}: Docker still keeps netlet's containers off its own");
    assert_eq!(foreign_rules(&node, &save), docker_before, "{backend}: Docker's rules untouched");

    // Drift: our chain flushed behind our back is rebuilt, then nothing to do.
    node.in_node(&format!("iptables-{backend} -F NETLET-FORWARD"));
    assert!(connect(&remote, "10.250.0.1", 8080, false).is_none(), "{backend}: the drift matters");
    let out = node.converge();
    assert!(out.contains(", 1 kernel mutations"), "{out}");
    assert!(connect(&remote, "10.250.0.1", 8080, false).is_some(), "{backend}: repaired");
    assert!(node.converge().contains("0 kernel mutations"), "{backend}: in sync");

    // Gone with the last network, and nothing else with it.
    node.converge_empty();
    assert_eq!(ours(&node, &save), Vec::<String>::new(), "{backend}: nothing of netlet's left");
    assert_eq!(foreign_rules(&node, &save), docker_before, "{backend}: Docker's rules as they were");
    assert!(connect(&dk, "10.250.0.2", 9000, false).is_some());
}

#[test]
fn beside_docker_with_iptables_nft() {
    beside_docker("nft");
}

#[test]
fn beside_docker_with_iptables_legacy() {
    beside_docker("legacy");
}

/// firewalld running in the node namespace on a private D-Bus (this
/// machine has no systemd; the bus and the daemon are the test's own
/// processes, killed by PID). Its nftables backend rejects forwarding
/// between zones, so netlet's bridges join its `trusted` zone.
struct Firewalld {
    bus: String,
    dbus: std::process::Child,
    daemon: std::process::Child,
}

impl Firewalld {
    fn start(node: &Node) -> Firewalld {
        let socket = node.dir.join("bus");
        let bus = format!("unix:path={}", socket.display());
        let dbus = std::process::Command::new("dbus-daemon")
            .args(["--config-file=/usr/share/dbus-1/system.conf", "--nofork", "--nopidfile", &format!("--address={bus}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon runs (package dbus)");
        wait_until("the private bus", std::time::Duration::from_secs(10), || socket.exists());
        let daemon = std::process::Command::new("nsenter")
            .args([&format!("--net=/run/netns/{}", node.name), "firewalld", "--nofork", "--nopid"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("firewalld runs (package firewalld)");
        let fw = Firewalld { bus, dbus, daemon };
        wait_until("firewalld", std::time::Duration::from_secs(30), || fw.cmd("--state").trim() == "running");
        fw
    }

    fn cmd(&self, args: &str) -> String {
        String::from_utf8_lossy(&sh(&format!("DBUS_SYSTEM_BUS_ADDRESS={} firewall-cmd {args} 2>/dev/null", self.bus)).stdout).into_owned()
    }

    fn trusted(&self) -> Vec<String> {
        self.cmd("--zone trusted --list-interfaces").split_whitespace().map(String::from).collect()
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        for child in [&mut self.daemon, &mut self.dbus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn beside_firewalld() {
    let mut node = Node::new();
    let remote = node.add_remote("rem", "10.250.0.1", "10.250.0.2");
    node.in_node("sysctl -qw net.ipv4.ip_forward=1");
    let fw = Firewalld::start(&node);
    node.agent_env.push(("DBUS_SYSTEM_BUS_ADDRESS".into(), fw.bus.clone()));
    let _remote_server = Server::start(&remote, 9000, false, false);
    node.write("w.yaml", &WORLD.replace("{name: back}\nspec: {", "{name: back}\nspec: {bridge: {name: fwback}, "));
    // A firewalld busy reloading does not answer: the binding is retried
    // at the next resync, made short here.
    node.spawn(&["--metrics-addr", "off", "--resync-period", "3s"]);
    wait_until("the port mapping", std::time::Duration::from_secs(15), || node.ready("portmappings", "web").0 == "True");
    let front = node.status("networks", "front")["bridge"].as_str().unwrap().to_string();
    let mut both = vec![front.clone(), "fwback".to_string()];
    both.sort();
    wait_until("netlet's bridges in the trusted zone", std::time::Duration::from_secs(10), || {
        let mut t = fw.trusted();
        t.sort();
        t == both
    });
    let (web, peer, other) = (node.ns("web"), node.ns("peer"), node.ns("other"));
    let _web_server = Server::start(&web, 80, false, false);
    assert_eq!(connect(&remote, "10.250.0.1", 8080, false).as_deref(), Some("hello 10.250.0.2"), "published port from a remote host");
    assert!(connect(&peer, "10.250.0.1", 8080, false).is_some(), "hairpin from a neighbour");
    assert!(connect(&web, "10.250.0.1", 8080, false).is_some(), "hairpin to itself");
    assert_eq!(connect(&web, "10.250.0.2", 9000, false).as_deref(), Some("hello 10.250.0.1"), "egress");
    assert!(ping(&peer, "10.51.0.10"), "intra-network");
    assert!(!ping(&other, "10.51.0.10"), "networks stay isolated");

    // A reload drops runtime bindings: the agent binds its bridges again
    // (at the rewrite of firewalld's table, or the next resync).
    fw.cmd("--reload");
    wait_until("the bindings back after a reload", std::time::Duration::from_secs(30), || fw.trusted().len() == 2);
    assert!(ping(&peer, "10.51.0.10"), "intra-network after the reload");

    // One network removed while the agent runs: its bridge leaves the zone.
    node.write("w.yaml", &WORLD.split("---").filter(|d| !d.contains("back")).collect::<Vec<_>>().join("---"));
    wait_until("fwback out of the zone", std::time::Duration::from_secs(15), || fw.trusted() == [front.clone()]);
    node.stop_agents();
}
