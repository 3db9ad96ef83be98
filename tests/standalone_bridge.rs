//! Bridge networks end to end, standalone mode, real kernel state and
//! packets in throwaway node namespaces (see harness/).

mod harness;

use std::time::Duration;

use harness::*;

/// Docker's classic scenario: the default bridge, a user-defined
/// `isolated_nw` with its own bridge name, ip-range and aux address,
/// container2 on both, container3 with a static address.
const DOCKER_SCENARIO: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: bridge}
spec:
  bridge: {name: netlet0}
  ipam: {config: [{subnet: 172.17.0.0/16, gateway: 172.17.0.1}]}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: isolated_nw}
spec:
  driver: bridge
  ipam:
    config:
    - subnet: 172.25.0.0/16
      gateway: 172.25.0.1
      ipRange: 172.25.5.0/24
      auxAddresses: {my-router: 172.25.1.5}
  options: {com.docker.network.bridge.name: docker1}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container2-bridge}
spec: {network: bridge, sandbox: {netns: "{T}c2"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container2}
spec: {network: isolated_nw, sandbox: {netns: "{T}c2"}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container3}
spec: {network: isolated_nw, sandbox: {netns: "{T}c3"}, ipv4Address: 172.25.3.3}
"#;

#[test]
fn docker_scenario_builds_bridges_sandboxes_and_addresses_that_carry_traffic() {
    let node = Node::new();
    node.write("scenario.yaml", DOCKER_SCENARIO);
    let out = node.converge();
    assert!(out.contains("5/5 objects ready"), "{out}");

    // Bridges: derived from options, with the gateway, up.
    let docker1 = link(&node.name, "docker1").expect("docker1 exists");
    assert!(docker1["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(docker1["linkinfo"]["info_kind"], "bridge");
    assert_eq!(addresses(&node.name, "docker1"), ["172.25.0.1/16"]);
    assert_eq!(addresses(&node.name, "netlet0"), ["172.17.0.1/16"]);
    assert_eq!(ok(&format!("ip netns exec {} cat /proc/sys/net/ipv4/ip_forward", node.name)).trim(), "1");

    // container3: static address, Docker's MAC, lo up, default route.
    let c3 = node.ns("c3");
    assert_eq!(addresses(&c3, "eth0"), ["172.25.3.3/16"]);
    assert_eq!(link(&c3, "eth0").unwrap()["address"], "02:42:ac:19:03:03");
    assert!(link(&c3, "lo").unwrap()["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(default_route(&c3), Some(("172.25.0.1".into(), "eth0".into())));

    // container2: eth0 on the default bridge, eth1 on isolated_nw with the
    // lowest free address of the ip-range; only eth0 carries the default route.
    let c2 = node.ns("c2");
    assert_eq!(addresses(&c2, "eth0"), ["172.17.0.2/16"]);
    assert_eq!(addresses(&c2, "eth1"), ["172.25.5.0/16"]);
    assert_eq!(default_route(&c2), Some(("172.17.0.1".into(), "eth0".into())));

    // Host ends are on the right bridges.
    let c3_status = node.status("attachments", "container3");
    let host_if = c3_status["hostInterface"].as_str().unwrap();
    assert_eq!(link(&node.name, host_if).unwrap()["master"], "docker1");

    // Traffic between containers on the same network.
    assert!(ping(&c2, "172.25.3.3"), "container2 -> container3 over isolated_nw");
    assert!(ping(&c3, "172.25.5.0"), "container3 -> container2");
    assert!(ping(&c3, "172.25.0.1"), "container3 -> its gateway");

    // Status as `netlet get` shows it.
    assert_eq!(node.ready("attachments", "container3"), ("True".into(), "Ready".into()));
    assert_eq!(c3_status["ipv4Address"], "172.25.3.3/16");
    assert_eq!(c3_status["macAddress"], "02:42:ac:19:03:03");
    assert_eq!(c3_status["gateway"], "172.25.0.1");
    assert_eq!(c3_status["interface"], "eth0");
    assert_eq!(c3_status["sandboxPath"], format!("/run/netns/{c3}"));
    assert_eq!(node.status("attachments", "container2")["interface"], "eth1");
    let nw = node.status("networks", "isolated_nw");
    assert_eq!(nw["bridge"], "docker1");
    assert_eq!(nw["attachments"], 2);
    assert_eq!(nw["observedGeneration"], 1);
}

#[test]
fn rerunning_on_an_in_sync_node_changes_nothing() {
    let node = Node::new();
    node.write("scenario.yaml", DOCKER_SCENARIO);
    node.converge();
    let (c2, c3) = (node.ns("c2"), node.ns("c3"));
    let snapshot = |ns: &str| -> Vec<(String, u64)> {
        ip_json(ns, "link show").into_iter().map(|l| (l["ifname"].as_str().unwrap().to_string(), l["ifindex"].as_u64().unwrap())).collect()
    };
    let before = (snapshot(&node.name), snapshot(&c2), snapshot(&c3));
    let out = node.converge();
    assert!(out.contains("mutations=0"), "an in-sync pass logs zero mutations:\n{out}");
    assert!(out.contains("5/5 objects ready, 0 kernel mutations"), "{out}");
    assert_eq!((snapshot(&node.name), snapshot(&c2), snapshot(&c3)), before, "no link was recreated");
}

#[test]
fn removing_objects_removes_exactly_what_they_created() {
    let node = Node::new();
    node.write("scenario.yaml", DOCKER_SCENARIO);
    node.converge();
    let c3_host = node.status("attachments", "container3")["hostInterface"].as_str().unwrap().to_string();
    let c2_host = node.status("attachments", "container2")["hostInterface"].as_str().unwrap().to_string();

    // container3 goes: its veth and its namespace go; nothing else moves.
    let without_c3 = DOCKER_SCENARIO.split("---").filter(|d| !d.contains("name: container3}")).collect::<Vec<_>>().join("---");
    node.write("scenario.yaml", &without_c3);
    let c2_index = ifindex(&node.name, &c2_host);
    node.converge();
    assert!(link(&node.name, &c3_host).is_none(), "container3's host veth is gone");
    assert!(!netns_exists(&node.ns("c3")), "container3's managed namespace is gone");
    assert_eq!(ifindex(&node.name, &c2_host), c2_index, "container2 untouched");

    // isolated_nw goes while container2 still points at it.
    let without_nw =
        without_c3.split("---").filter(|d| !d.contains("kind: Network\nmetadata: {name: isolated_nw}")).collect::<Vec<_>>().join("---");
    node.write("scenario.yaml", &without_nw);
    let out = node.once();
    assert!(!out.status.success(), "a NetworkNotFound attachment makes --once fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NetworkNotFound"));
    assert!(link(&node.name, "docker1").is_none(), "the bridge is gone");
    assert!(link(&node.name, &c2_host).is_none(), "the stranded attachment's interface is removed");
    assert!(link(&node.ns("c2"), "eth1").is_none());
    assert_eq!(node.ready("attachments", "container2"), ("False".into(), "NetworkNotFound".into()));
    assert_eq!(node.ready("attachments", "container2-bridge"), ("True".into(), "Ready".into()), "nothing else moved");
    assert_eq!(addresses(&node.ns("c2"), "eth0"), ["172.17.0.2/16"]);

    // Everything goes: no link or namespace of ours is left.
    node.converge_empty();
    assert!(links_with_prefix(&node.name, "nlv").is_empty());
    assert!(link(&node.name, "netlet0").is_none());
    assert!(!netns_exists(&node.ns("c2")));
}

#[test]
fn a_restart_with_the_same_state_dir_keeps_every_address() {
    let node = Node::new();
    node.write(
        "a.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n}
spec: {ipam: {config: [{subnet: 10.30.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: second}
spec: {network: n, sandbox: {netns: "{T}s"}}
"#,
    );
    node.converge();
    assert_eq!(addresses(&node.ns("s"), "eth0"), ["10.30.0.2/24"]);
    // A new attachment listed *before* the old one: the old one keeps .2.
    node.write(
        "0-first.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: first}
spec: {network: n, sandbox: {netns: "{T}f"}}
"#,
    );
    node.converge();
    assert_eq!(addresses(&node.ns("s"), "eth0"), ["10.30.0.2/24"]);
    assert_eq!(addresses(&node.ns("f"), "eth0"), ["10.30.0.3/24"]);
    assert_eq!(node.status("attachments", "second")["ipv4Address"], "10.30.0.2/24");
}

/// A running agent whose manifests hold one bridge network `n` on
/// `subnet`, once its bridge is up.
fn agent_on_network_n(subnet: &str) -> Node {
    let mut node = Node::new();
    node.write(
        "net.yaml",
        &format!(
            "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: n}}\nspec: {{ipam: {{config: [{{subnet: {subnet}}}]}}}}\n"
        ),
    );
    node.spawn(&["--metrics-addr", "off"]);
    wait_until("the bridge", Duration::from_secs(10), || link(&node.name, "nl-n").is_some());
    node
}

#[test]
fn a_running_agent_follows_manifest_changes() {
    let node = agent_on_network_n("10.31.0.0/24");
    node.write(
        "att.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: late}\nspec: {network: n, sandbox: {netns: \"{T}late\"}}\n",
    );
    let sandbox = node.ns("late");
    wait_until("the new attachment's address", Duration::from_secs(10), || addresses(&sandbox, "eth0") == ["10.31.0.2/24"]);
    let ports = || {
        ip_json(&node.name, "link show master nl-n").into_iter().map(|l| l["ifname"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>()
    };
    let host_end = ports().pop().expect("the attachment's veth is a port of the bridge");
    node.remove("att.yaml");
    wait_until("the attachment's namespace to go", Duration::from_secs(10), || !netns_exists(&sandbox));
    // Its host end is deleted by the same pass, after that pass's status
    // write (the kernel takes ~30 ms to release it): well before a resync.
    wait_until("its host veth to go", Duration::from_secs(2), || link(&node.name, &host_end).is_none());
    assert!(ports().is_empty());
}

/// A running agent makes the next namespace ahead of need (see
/// `netns::Spare`): each attachment added later still gets a namespace of
/// its own, new, and not the node's, and nothing unnamed is left in
/// /run/netns.
#[test]
fn namespaces_made_ahead_are_each_new_and_their_own() {
    let mut node = agent_on_network_n("10.32.0.0/24");
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        node.write(
            &format!("{name}.yaml"),
            &format!("apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: \"{{T}}{name}\"}}}}\n"),
        );
        let want = [format!("10.32.0.{}/24", i + 2)];
        wait_until("the new attachment's address", Duration::from_secs(10), || addresses(&node.ns(name), "eth0") == want);
        // Its IPv6 settings were opened when it was made: they are its own.
        let ipv6 = ok(&format!("ip netns exec {} cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6", node.ns(name)));
        assert_eq!(ipv6.trim(), "1", "IPv6 is off in {name}, on an IPv4-only network");
        let lo = ip_json(&node.ns(name), "link show lo");
        assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "lo is up in {name}: {lo:?}");
    }
    let inode = |path: &str| ok(&format!("stat -L -c %i {path}")).trim().to_string();
    let mut seen: Vec<String> = ["one", "two", "three"].iter().map(|n| inode(&format!("/run/netns/{}", node.ns(n)))).collect();
    seen.push(inode(&format!("/run/netns/{}", node.name)));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "three sandboxes and the node are four namespaces");
    assert!(ping(&node.ns("one"), "10.32.0.4"), "one reaches three over the bridge");
    assert!(ping(&node.ns("three"), "10.32.0.3"), "three reaches two over the bridge");
    node.stop_agents();
    let named = ok("ls /run/netns");
    let ours = named.lines().filter(|l| l.starts_with(&node.tag)).count();
    assert_eq!(ours, 4, "the node and its three sandboxes, nothing more: {named}");
}

/// A running agent keeps its view of the node's links up to date with the
/// changes of its own passes instead of dumping every link again. The
/// agents of the tests are debug builds, which compare that view with a
/// dump after every pass and log any difference.
#[test]
fn the_link_view_a_running_agent_keeps_matches_the_kernel() {
    let node = agent_on_network_n("10.33.0.0/24");
    let attach = |node: &Node, name: &str, port: u16| {
        node.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: \"{{T}}{name}\"}}}}\n---\n\
                 apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}}}\nspec: {{attachment: {name}, ports: [{{containerPort: 80, hostPort: {port}}}]}}\n"
            ),
        );
    };
    let address_of = |node: &Node, name: &str| addresses(&node.ns(name), "eth0");
    attach(&node, "a", 18081);
    wait_until("a's address", Duration::from_secs(10), || address_of(&node, "a") == ["10.33.0.2/24"]);
    attach(&node, "b", 18082);
    wait_until("b's address", Duration::from_secs(10), || address_of(&node, "b") == ["10.33.0.3/24"]);
    node.remove("a.yaml");
    wait_until("a's namespace to go", Duration::from_secs(10), || !netns_exists(&node.ns("a")));
    attach(&node, "c", 18083);
    wait_until("c's address", Duration::from_secs(10), || address_of(&node, "c") == ["10.33.0.2/24"]);
    assert!(ping(&node.ns("b"), "10.33.0.2"), "b reaches c over the bridge");
    // The passes that follow our own kernel events, then a resync.
    std::thread::sleep(Duration::from_millis(400));
    let log = node.agent_log(0);
    assert!(log.contains("reconciled"), "the agent logged its passes: {log}");
    assert!(!log.contains("differs from the kernel"), "{log}");
}

#[test]
fn a_bad_object_fails_alone_with_a_clear_reason() {
    let node = Node::new();
    node.write(
        "good.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.32.0.0/24}]}}\n---\n\
         apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: good}\nspec: {network: n, sandbox: {netns: \"{T}g\"}}\n",
    );
    node.write(
        "bad.yaml",
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: broken}\nspec: {ipam: {config: [{subnet: 10.33.0.0/33}]}}\n---\n\
         apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: outside}\nspec: {network: n, sandbox: {netns: \"{T}o\"}, ipv4Address: 10.99.0.5}\n",
    );
    node.write("garbage.yaml", "kind: [this is not yaml\n");
    let out = node.once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a valid CIDR"), "{stderr}");
    assert!(stderr.contains("outside every subnet"), "{stderr}");
    assert!(stderr.contains("malformed YAML"), "{stderr}");
    assert_eq!(node.ready("networks", "broken"), ("False".into(), "InvalidSpec".into()));
    assert_eq!(node.ready("attachments", "outside").0, "False");
    assert_eq!(node.ready("attachments", "good"), ("True".into(), "Ready".into()));
    assert_eq!(addresses(&node.ns("g"), "eth0"), ["10.32.0.2/24"]);
    assert!(!netns_exists(&node.ns("o")), "a failed attachment creates nothing");
}

#[test]
fn netlet_get_speaks_kubectl() {
    let node = Node::new();
    node.write("scenario.yaml", DOCKER_SCENARIO);
    node.converge();
    let get = |args: &str| ok(&format!("{BIN} get {args} --state-dir {}", node.state_dir().display()));
    let table = get("att");
    assert!(table.lines().next().unwrap().starts_with("NAMESPACE   NAME"), "{table}");
    assert!(table.contains("172.25.3.3/16"));
    assert!(get("attachments container3 -o wide").contains("02:42:ac:19:03:03"));
    assert!(get("networks").contains("docker1"));
    let yaml = get("attachment container3 -n default -o yaml");
    assert!(yaml.contains("ipv4Address: 172.25.3.3/16"), "{yaml}");
    let missing = sh(&format!("{BIN} get att nope --state-dir {}", node.state_dir().display()));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn once_on_a_terminal_shows_progress_and_clears_it() {
    let node = Node::new();
    let mut yaml = String::from(
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: p}\nspec: {ipam: {config: [{subnet: 10.64.0.0/24}]}}\n",
    );
    for i in 0..40 {
        yaml += &format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: a{i}}}\nspec: {{network: p, sandbox: {{netns: \"{{T}}a{i}\"}}}}\n");
    }
    node.write("many.yaml", &yaml);
    // `script` gives the agent a terminal; what it draws lands in stdout.
    let cmd = format!(
        "nsenter --net=/run/netns/{} {BIN} run --manifests {} --state-dir {} --node-name node-a --once --metrics-addr off",
        node.name,
        node.manifests().display(),
        node.state_dir().display()
    );
    let out = sh(&format!("RUST_LOG=warn script -qec '{cmd}' /dev/null"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\r\x1b[2Knetlet: "), "no progress line drawn: {text:?}");
    assert!(text.contains("41/41 objects ready"), "{text:?}");
    // Without a terminal (every other test), no progress line.
    assert!(!node.converge().contains("netlet: "));
}

#[test]
fn a_manifest_still_being_written_is_not_read_half_done() {
    use std::io::Write;
    let mut node = Node::new();
    let net = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.32.0.0/24}]}}\n";
    let att = |name: &str| {
        format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: \"{{T}}{name}\"}}}}\n")
    };
    node.write("all.yaml", &format!("{net}{}{}", att("first"), att("second")));
    node.spawn(&["--metrics-addr", "off"]);
    let (first, second) = (node.ns("first"), node.ns("second"));
    wait_until("both attachments", Duration::from_secs(10), || {
        addresses(&second, "eth0").len() == 1 && addresses(&first, "eth0").len() == 1
    });
    // Rewritten in place, slowly: the first part alone is valid YAML that
    // no longer holds `second`. Read half-done, it would be torn down.
    let path = node.manifests().join("all.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.rfind("---").unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&text.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(netns_exists(&second), "the agent acted on a half-written manifest");
    file.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(file);
    std::thread::sleep(Duration::from_millis(500));
    assert!(netns_exists(&second) && addresses(&second, "eth0").len() == 1, "second lost its network");
    // A real change is still followed at once.
    node.write("all.yaml", &format!("{net}{}", att("first")));
    wait_until("second to go", Duration::from_secs(10), || !netns_exists(&second));
    assert_eq!(addresses(&first, "eth0").len(), 1);
}

#[test]
fn a_missing_nft_is_named_with_its_package() {
    let node = Node::new();
    let out = std::process::Command::new(BIN)
        .args(["run", "--once", "--metrics-addr", "off", "--manifests"])
        .arg(node.manifests())
        .arg("--state-dir")
        .arg(node.state_dir())
        .env("PATH", node.dir.join("empty"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`nft` is not in PATH: install the nftables package"), "{stderr}");
}
