//! Kubernetes mode against a real API server (kube-apiserver 1.20 + etcd,
//! see e2e/kube-apiserver.sh): objects applied with kubectl, the real agent
//! in a node namespace, kernel state and status checked, deletion through
//! finalizers, an API server restart, a second writer provoking 409s, and
//! two agents for two nodes.

mod harness;

use std::time::Duration;

use harness::kube::KubeCluster;
use harness::kubectl::ready_of;
use harness::*;
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);

fn network(name: &str, subnet: &str, extra: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec:\n  ipam: {{config: [{{subnet: {subnet}}}]}}\n  allowedSandboxes: [netns, attachment]\n{extra}")
}

fn attachment(name: &str, network: &str, node: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}, namespace: default}}\nspec: {{network: {network}, nodeName: {node}, sandbox: {{netns: \"{{T}}{name}\"}}}}\n"
    )
}

fn port_mapping(name: &str, attachment: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}, namespace: default}}\nspec: {{attachment: {attachment}, ports: [{ports}]}}\n"
    )
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"].as_array().map(|f| f.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn address(obj: &Value) -> String {
    obj["status"]["ipv4Address"].as_str().unwrap_or("").to_string()
}

#[test]
fn agent_realizes_objects_reports_status_and_tears_down_through_finalizers() {
    let mut k = KubeCluster::start(&["n1"]);
    k.start_agent(0);
    let node = k.nodes[0].name.clone();
    let sandbox = |s: &str| k.nodes[0].ns(s);

    let mut yaml = network("web", "172.30.0.0/24", "");
    yaml += &network("elsewhere", "172.31.0.0/24", "  nodeSelector: {zone: somewhere-else}\n");
    yaml += &attachment("c1", "web", "n1");
    yaml += &attachment("c2", "web", "n1");
    yaml += &attachment("remote", "web", "n2");
    yaml += &attachment("lost", "missing", "n1");
    yaml += &port_mapping("c1-http", "c1", "{containerPort: 80, hostPort: 8080}");
    k.apply(&yaml);
    for name in ["default/c1", "default/c2"] {
        k.wait_ready("attachment", name, CONVERGE);
    }
    k.wait_ready("portmapping", "default/c1-http", CONVERGE);
    k.wait_ready("network", "web", CONVERGE);

    // Status: what DESIGN.md promises, matching the kernel.
    let c1 = k.get("attachment", "default/c1");
    assert_eq!(c1["status"]["node"], "n1");
    assert_eq!(c1["status"]["interface"], "eth0");
    assert_eq!(c1["status"]["gateway"], "172.30.0.1");
    assert_eq!(c1["status"]["observedGeneration"], c1["metadata"]["generation"]);
    assert_eq!(addresses(&sandbox("c1"), "eth0"), [address(&c1)]);
    assert_eq!(finalizers(&c1), ["netlet.io/teardown"]);
    let c2_ip = address(&k.get("attachment", "default/c2"));
    assert!(ping(&sandbox("c1"), c2_ip.split('/').next().unwrap()));
    let web = k.get("network", "web");
    assert_eq!(web["status"]["bridge"], "nl-web");
    assert_eq!(web["status"]["nodes"][0]["node"], "n1");
    assert_eq!(web["status"]["nodes"][0]["ready"], true);
    assert!(web["status"]["attachments"].is_null(), "no count that every attachment's change would rewrite");
    assert_eq!(finalizers(&web), ["netlet.io/in-use"]);
    // Printer columns: address and readiness at a glance.
    let table = k.kubectl_ok("get attachments -n default");
    assert!(table.lines().any(|l| l.starts_with("c1 ") && l.contains(address(&c1).as_str()) && l.contains("True")), "{table}");

    // A published port answers through the node.
    let _server = Server::start(&sandbox("c1"), 80, false, false);
    assert!(connect(&node, "127.0.0.1", 8080, false).is_some_and(|r| r.starts_with("hello ")), "node -> 127.0.0.1:8080");

    // Another node's attachment and a network not selected for this node
    // are left alone: no status, no finalizer, nothing in the kernel.
    let remote = k.get("attachment", "default/remote");
    assert!(remote["status"].is_null() && finalizers(&remote).is_empty(), "{remote}");
    assert!(!netns_exists(&sandbox("remote")));
    let elsewhere = k.get("network", "elsewhere");
    assert!(finalizers(&elsewhere).is_empty() && link(&node, "nl-elsewhere").is_none());

    // Bad input: a specific reason in status, and an Event.
    wait_until("lost NetworkNotFound", CONVERGE, || k.ready("attachment", "default/lost") == ("False".into(), "NetworkNotFound".into()));
    wait_until("an Event for lost", CONVERGE, || {
        let events: Value = serde_json::from_str(&k.kubectl_ok("get events -n default -o json")).unwrap();
        events["items"].as_array().unwrap().iter().any(|e| e["involvedObject"]["name"] == "lost" && e["reason"] == "NetworkNotFound")
    });

    // A network deleted while referenced stays, and says why.
    k.kubectl_ok("delete network web --wait=false");
    wait_until("web DeletionPending", CONVERGE, || k.ready("network", "web").1 == "DeletionPending");
    assert!(link(&node, "nl-web").is_some());
    assert!(ping(&sandbox("c1"), c2_ip.split('/').next().unwrap()), "deleting the network broke its attachments");

    // `kubectl delete` returns once the object is gone, which the finalizer
    // holds until the agent tore it down: nothing is left at that moment.
    k.kubectl_ok("delete attachment c2 -n default --timeout=30s");
    assert!(!netns_exists(&sandbox("c2")), "c2's sandbox outlived its object");
    assert!(k.get("attachment", "default/c2").is_null());

    // The attachment goes first, then its port mapping: neither hangs.
    k.kubectl_ok("delete attachment c1 -n default --timeout=30s");
    assert!(!netns_exists(&sandbox("c1")));
    k.kubectl_ok("delete portmapping c1-http -n default --timeout=30s");
    k.kubectl_ok("delete attachment remote -n default --timeout=30s");
    // The last reference is gone: so is the network, bridge and all.
    wait_until("web deleted", CONVERGE, || k.get("network", "web").is_null());
    wait_until("nl-web removed", CONVERGE, || link(&node, "nl-web").is_none());
    let ruleset = k.nodes[0].in_node("nft list table inet netlet");
    assert!(!String::from_utf8_lossy(&ruleset.stdout).contains("8080"), "published port left behind");
}

#[test]
fn allocations_survive_an_empty_state_dir_and_deletions_while_down_are_collected() {
    let mut k = KubeCluster::start(&["n1"]);
    let agent = k.start_agent(0);
    let mut yaml = network("web", "172.30.0.0/24", "");
    for name in ["c1", "c2", "c3"] {
        yaml += &attachment(name, "web", "n1");
    }
    yaml += &port_mapping("c3-any", "c3", "{containerPort: 80}");
    k.apply(&yaml);
    for name in ["default/c1", "default/c2", "default/c3"] {
        k.wait_ready("attachment", name, CONVERGE);
    }
    k.wait_ready("portmapping", "default/c3-any", CONVERGE);
    let before: Vec<String> = ["c1", "c2", "c3"].iter().map(|n| address(&k.get("attachment", &format!("default/{n}")))).collect();
    let host_port = k.get("portmapping", "default/c3-any")["status"]["bindings"][0]["hostPort"].clone();
    assert!(host_port.as_u64().is_some_and(|p| p > 0), "ephemeral host port: {host_port}");
    let c3_veth = k.get("attachment", "default/c3")["status"]["hostInterface"].as_str().unwrap().to_string();
    let c3_ifindex = ifindex(&k.nodes[0].name, &c3_veth);

    // The agent dies and its disk is wiped; meanwhile c4 is created, with
    // c1's name sorting before it.
    k.nodes[0].kill_agent(agent, nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_dir_all(k.nodes[0].state_dir()).unwrap();
    k.apply(&attachment("c4", "web", "n1"));
    let agent = k.start_agent(0);
    k.wait_ready("attachment", "default/c4", CONVERGE);
    // Status was the source of truth: same addresses, same host port, and
    // c3's link was not even recreated.
    assert_eq!(address(&k.get("attachment", "default/c1")), before[0]);
    assert_eq!(address(&k.get("attachment", "default/c2")), before[1]);
    assert_eq!(address(&k.get("attachment", "default/c3")), before[2]);
    assert_eq!(addresses(&k.nodes[0].ns("c3"), "eth0"), [before[2].clone()]);
    assert_eq!(k.get("portmapping", "default/c3-any")["status"]["bindings"][0]["hostPort"], host_port);
    assert_eq!(ifindex(&k.nodes[0].name, &c3_veth), c3_ifindex);
    let c4 = address(&k.get("attachment", "default/c4"));
    assert!(!before.contains(&c4), "c4 got an address in use: {c4}");

    // Deleted while the agent is down: the finalizer keeps c1 until the
    // agent is back and has torn it down.
    let c1_veth = k.get("attachment", "default/c1")["status"]["hostInterface"].as_str().unwrap().to_string();
    k.nodes[0].kill_agent(agent, nix::sys::signal::Signal::SIGKILL);
    k.kubectl_ok("delete attachment c1 -n default --wait=false");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!k.get("attachment", "default/c1").is_null(), "c1 went without its teardown");
    assert!(netns_exists(&k.nodes[0].ns("c1")));
    k.start_agent(0);
    wait_until("c1 collected", CONVERGE, || k.get("attachment", "default/c1").is_null());
    assert!(!netns_exists(&k.nodes[0].ns("c1")));
    assert!(link(&k.nodes[0].name, &c1_veth).is_none());
    assert_eq!(ifindex(&k.nodes[0].name, &c3_veth), c3_ifindex);
}

#[test]
fn api_server_outage_and_restart_leave_the_dataplane_alone_and_the_agent_catches_up() {
    let mut k = KubeCluster::start(&["n1"]);
    k.start_agent(0);
    k.apply(&(network("web", "172.30.0.0/24", "") + &attachment("c1", "web", "n1")));
    k.wait_ready("attachment", "default/c1", CONVERGE);
    let c1 = k.get("attachment", "default/c1");
    let veth = c1["status"]["hostInterface"].as_str().unwrap().to_string();
    let index = ifindex(&k.nodes[0].name, &veth);

    // Frozen API server: requests hang, watches stall. Nothing changes.
    let pid = nix::unistd::Pid::from_raw(k.apiserver_pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let frozen_index = ifindex(&k.nodes[0].name, &veth);
    let frozen_addresses = addresses(&k.nodes[0].ns("c1"), "eth0");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(frozen_index, index);
    assert_eq!(frozen_addresses, [address(&c1)]);

    // Restarted API server (its watch cache starts over: 410 Gone on old
    // resource versions): the agent relists and catches up.
    k.restart_apiserver();
    assert_eq!(ifindex(&k.nodes[0].name, &veth), index);
    k.apply(&attachment("c2", "web", "n1"));
    k.wait_ready("attachment", "default/c2", Duration::from_secs(90));
    assert_eq!(ifindex(&k.nodes[0].name, &veth), index, "c1 was recreated");
    assert_eq!(k.get("attachment", "default/c1")["status"], c1["status"], "c1's status changed");
    assert!(ping(&k.nodes[0].ns("c2"), address(&c1).split('/').next().unwrap()));
}

#[test]
fn two_agents_on_two_nodes_share_a_network_despite_a_second_writer() {
    let mut k = KubeCluster::start(&["n1", "n2"]);
    k.start_agent(0);
    k.start_agent(1);
    let mut yaml = network("web", "172.30.0.0/24", "");
    yaml += &attachment("a1", "web", "n1");
    yaml += &attachment("b1", "web", "n2");
    k.apply(&yaml);
    k.wait_ready("attachment", "default/a1", CONVERGE);
    k.wait_ready("attachment", "default/b1", CONVERGE);

    // Each node realizes only its own attachment.
    assert!(link(&k.nodes[0].name, "nl-web").is_some() && link(&k.nodes[1].name, "nl-web").is_some());
    let a1 = k.get("attachment", "default/a1");
    let b1 = k.get("attachment", "default/b1");
    assert_eq!((a1["status"]["node"].as_str(), b1["status"]["node"].as_str()), (Some("n1"), Some("n2")));
    let host_ifaces = |i: usize| links_with_prefix(&k.nodes[i].name, "nlv");
    assert_eq!(host_ifaces(0), [a1["status"]["hostInterface"].as_str().unwrap()]);
    assert_eq!(host_ifaces(1), [b1["status"]["hostInterface"].as_str().unwrap()]);

    // A second writer keeps bumping the Network's resourceVersion while
    // both agents rewrite their entries of its status (its MTU changes
    // each round; attachments come and go on both nodes, which writes no
    // Network status): their conditional writes meet 409s and retry.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let cmd = k.kubectl_prefix();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let _ = sh(&format!("{cmd} annotate network web writer={i} --overwrite"));
            }
            i
        })
    };
    for round in 0..4 {
        k.kubectl_ok(&format!("patch network web --type merge -p '{{\"spec\":{{\"mtu\":{}}}}}'", 1400 - round * 10));
        let mut churn = String::new();
        for (node, prefix) in [("n1", "a"), ("n2", "b")] {
            churn += &attachment(&format!("{prefix}x{round}"), "web", node);
        }
        k.apply(&churn);
        for prefix in ["a", "b"] {
            k.wait_ready("attachment", &format!("default/{prefix}x{round}"), CONVERGE);
        }
        if round % 2 == 1 {
            k.kubectl_ok(&format!("delete attachment ax{round} bx{round} -n default --timeout=30s"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 5, "the second writer barely ran ({writes} writes)");

    // Both nodes' entries survive, each with the last MTU it realized.
    let expect = [("n1", 1370), ("n2", 1370)];
    wait_until("network status with both nodes", CONVERGE, || {
        let web = k.get("network", "web");
        let nodes = web["status"]["nodes"].as_array().cloned().unwrap_or_default();
        let got: Vec<(String, u64)> =
            nodes.iter().map(|n| (n["node"].as_str().unwrap_or("").to_string(), n["mtu"].as_u64().unwrap_or(0))).collect();
        got == expect.map(|(n, c)| (n.to_string(), c))
            && web["status"]["observedGeneration"] == web["metadata"]["generation"]
            && ready_of(&web).0 == "True"
    });
    let conflicts: usize = (0..2).map(|i| k.nodes[i].agent_log(0).matches("(409)").count()).sum();
    assert!(conflicts > 0, "the second writer provoked no conflict; the test proves nothing");
    // Addresses are per node on a bridge network, but never duplicated within one node.
    for (i, prefix) in [(0, "a"), (1, "b")] {
        let mut seen = std::collections::BTreeSet::new();
        for name in [format!("{prefix}1"), format!("{prefix}x0"), format!("{prefix}x2")] {
            let ip = address(&k.get("attachment", &format!("default/{name}")));
            assert!(seen.insert(ip.clone()), "duplicate {ip} on node {i}");
        }
    }
}

#[test]
fn overlay_across_three_nodes_racing_agents_never_duplicate_an_address() {
    let mut k = KubeCluster::start(&["n1", "n2", "n3"]);
    for i in 0..3 {
        k.start_agent(i);
    }
    // No `peers`: VTEPs come from the Nodes (their netlet.io/vtep-address
    // annotation). Small blocks (/28, 14 addresses) so every node needs two
    // and the agents race for them.
    let ov = "---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: ov}\nspec:\n  driver: overlay\n  overlay: {vni: 4096, blockPrefixLength: 28}\n  ipam: {config: [{subnet: 10.77.0.0/24}]}\n  allowedSandboxes: [netns]\n";
    k.apply(ov);
    // 20 attachments per node in one apply, while all three agents run.
    let mut yaml = String::new();
    let names: Vec<(String, usize)> = (0..20).flat_map(|j| (0..3).map(move |i| (format!("c{}x{j}", i + 1), i))).collect();
    for (name, i) in &names {
        yaml += &attachment(name, "ov", &format!("n{}", i + 1));
    }
    k.apply(&yaml);
    wait_until("60 overlay attachments Ready", Duration::from_secs(120), || {
        let list: Value = serde_json::from_str(&k.kubectl_ok("get attachments -n default -o json")).unwrap();
        list["items"].as_array().unwrap().iter().filter(|a| ready_of(a).0 == "True").count() == names.len()
    });

    // Every address is unique, and inside a block its node claimed.
    let net = k.get("network", "ov");
    let blocks: Vec<(String, ipnet::Ipv4Net)> = net["status"]["addressBlocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["node"].as_str().unwrap().to_string(), b["cidr"].as_str().unwrap().parse().unwrap()))
        .collect();
    let distinct: std::collections::BTreeSet<_> = blocks.iter().map(|(_, b)| *b).collect();
    assert_eq!(distinct.len(), blocks.len(), "a block claimed twice: {blocks:?}");
    for node in ["n1", "n2", "n3"] {
        assert!(blocks.iter().filter(|(n, _)| n == node).count() >= 2, "{node} needs two /28 blocks: {blocks:?}");
    }
    let mut seen = std::collections::BTreeMap::new();
    for (name, i) in &names {
        let a = k.get("attachment", &format!("default/{name}"));
        let ip: std::net::Ipv4Addr = address(&a).split('/').next().unwrap().parse().unwrap();
        if let Some(other) = seen.insert(ip, name.clone()) {
            panic!("{ip} is held by both {other} and {name}");
        }
        let node = format!("n{}", i + 1);
        assert!(
            blocks.iter().any(|(n, b)| n == &node && b.contains(&ip)),
            "{name} on {node} has {ip}, outside its node's blocks {blocks:?}"
        );
        assert_eq!(addresses(&k.nodes[0].ns(name), "eth0"), [address(&a)], "{name}: status and kernel disagree");
    }

    // Reachability across nodes, over VXLAN with VTEPs from the Nodes.
    let ip_of = |name: &str| address(&k.get("attachment", &format!("default/{name}"))).split('/').next().unwrap().to_string();
    for (from, to) in [("c1x0", "c2x0"), ("c2x0", "c3x0"), ("c3x0", "c1x19")] {
        assert!(ping(&k.nodes[0].ns(from), &ip_of(to)), "{from} -> {to}");
    }
    let vx = link(&k.nodes[0].name, "nlx4096").expect("vxlan device on n1");
    assert_eq!(vx["linkinfo"]["info_data"]["learning"], false);
    assert_eq!(vx["mtu"], 1450);
    let fdb = ok(&format!("bridge -n {} fdb show dev nlx4096", k.nodes[0].name));
    // Routed per node: one FDB and one neighbour entry per other node
    // (not per attachment), one route per block it claimed.
    assert_eq!(fdb.lines().filter(|l| l.contains("dst 10.97.0.")).count(), 2, "one static entry per remote node:\n{fdb}");
    let neigh = ok(&format!("ip -n {} neigh show dev nlx4096 nud permanent", k.nodes[0].name));
    assert_eq!(neigh.lines().count(), 2, "{neigh}");
    let routes = ok(&format!("ip -n {} route show proto 78 dev nlx4096", k.nodes[0].name));
    let remote_blocks: Vec<String> = blocks.iter().filter(|(n, _)| n != "n1").map(|(_, b)| b.to_string()).collect();
    assert_eq!(routes.lines().count(), remote_blocks.len(), "{routes}");
    assert!(remote_blocks.iter().all(|b| routes.contains(&format!("{b} via 10.97.0."))), "{routes}");

    // Egress leaves through the container's own node, masqueraded: the
    // control plane (outside the overlay) sees node 2's underlay address.
    let _server = Server::start(&k.cp, 7000, false, false);
    assert_eq!(connect(&k.nodes[0].ns("c2x0"), harness::kube::API_ADDRESS, 7000, false).as_deref(), Some("hello 10.97.0.2"));
    // Publishing on an overlay attachment: reachable at its node's address.
    k.apply(&port_mapping("c3-web", "c3x0", "{containerPort: 80, hostPort: 8080}"));
    k.wait_ready("portmapping", "default/c3-web", CONVERGE);
    let _web = Server::start(&k.nodes[0].ns("c3x0"), 80, false, false);
    assert!(connect(&k.cp, "10.97.0.3", 8080, false).is_some_and(|r| r.starts_with("hello ")), "published overlay port");

    // An attachment leaves: its address stops answering; the other nodes keep
    // their entries, which follow nodes, not attachments.
    let gone_ip = ip_of("c2x5");
    k.kubectl_ok("delete attachment c2x5 -n default --timeout=30s");
    wait_until("c2x5's sandbox gone", CONVERGE, || !netns_exists(&k.nodes[0].ns("c2x5")));
    assert!(!ping(&k.nodes[0].ns("c1x0"), &gone_ip), "{gone_ip} no longer answers");
    assert_eq!(ok(&format!("ip -n {} route show proto 78 dev nlx4096", k.nodes[0].name)), routes, "n2's blocks stay routed");
    // Nobody else moved.
    assert_eq!(ip_of("c1x0"), addresses(&k.nodes[0].ns("c1x0"), "eth0")[0].split('/').next().unwrap());
}

/// The kernel state a test can compare across moments: the node's links
/// (with their indexes) and addresses, a sandbox's, and netlet's nft table.
fn kernel_snapshot(node: &Node, sandbox: &str) -> String {
    let links = ip_json(&node.name, "link show").iter().map(|l| format!("{}:{}", l["ifindex"], l["ifname"])).collect::<Vec<_>>().join(" ");
    // Global addresses: link-local ones settle (DAD) on their own.
    let node_addrs = ip_json(&node.name, "link show")
        .iter()
        .map(|l| format!("{:?}", addresses(&node.name, l["ifname"].as_str().unwrap())))
        .collect::<Vec<_>>()
        .join(" ");
    let nft = String::from_utf8_lossy(&node.in_node("nft list table inet netlet").stdout).into_owned();
    format!("{links}\n{node_addrs}\n{:?}\n{nft}", addresses(sandbox, "eth0"))
}

#[test]
fn an_agent_whose_role_lacks_a_rule_says_which_and_changes_nothing() {
    let mut k = KubeCluster::start(&["n1"]);
    let agent = k.start_agent(0);
    k.apply(&(network("web", "172.30.0.0/24", "") + &attachment("c1", "web", "n1")));
    k.wait_ready("attachment", "default/c1", CONVERGE);
    let sandbox = k.nodes[0].ns("c1");
    let before = kernel_snapshot(&k.nodes[0], &sandbox);
    let readyz = |k: &KubeCluster| String::from_utf8_lossy(&k.nodes[0].in_node("curl -s http://127.0.0.1:9464/readyz").stdout).into_owned();

    // The operator's copy of the ClusterRole lost `attachments` from the
    // rule the agent lists and watches with, and the agent restarts.
    k.nodes[0].kill_agent(agent, nix::sys::signal::Signal::SIGTERM);
    let rbac = std::fs::read_to_string(format!("{}/../manifests/rbac.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let full_rule = "resources: [\"networks\", \"attachments\", \"portmappings\"]";
    assert!(rbac.contains(full_rule), "manifests/rbac.yaml's first rule moved; update this test");
    k.apply(&rbac.replace(full_rule, "resources: [\"networks\", \"portmappings\"]"));
    let agent = k.start_agent(0);
    wait_until("/readyz naming the refused call", CONVERGE, || readyz(&k).contains("list/watch attachments: "));
    let why = readyz(&k);
    assert!(why.contains("forbidden") && why.contains("system:serviceaccount:netlet-system:netlet"), "{why}");
    let log = k.nodes[0].agent_log(1);
    assert!(log.contains("ERROR") && log.contains("API refused a call the agent needs") && log.contains("attachments"), "{log}");
    assert_eq!(log.matches("API refused a call").count(), 1, "logged once, not at every retry:\n{log}");
    // It stays up and answers liveness (a restart would not fix RBAC), and
    // it reconciles nothing from a partial view: the kernel is as it was.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        String::from_utf8_lossy(&k.nodes[0].in_node("curl -s -o /dev/null -w %{http_code} http://127.0.0.1:9464/healthz").stdout) == "200"
    );
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), None).is_ok(), "the agent exited");
    assert!(!log.contains("reconciled"), "a pass ran without the attachments:\n{log}");
    assert_eq!(kernel_snapshot(&k.nodes[0], &sandbox), before);

    // The rule comes back: the agent carries on by itself, still without
    // changing what was right.
    k.apply(&rbac);
    wait_until("/readyz ok", Duration::from_secs(90), || readyz(&k).trim() == "ok");
    assert!(k.nodes[0].agent_log(1).contains("API allows the call again"));
    assert_eq!(kernel_snapshot(&k.nodes[0], &sandbox), before);
    k.wait_ready("attachment", "default/c1", CONVERGE);

    // Status writes refused: the dataplane follows the objects, the
    // readiness says what the agent cannot report.
    k.apply(&rbac.replace("resources: [\"attachments/status\", \"portmappings/status\"]", "resources: [\"portmappings/status\"]"));
    k.apply(&attachment("c2", "web", "n1"));
    wait_until("/readyz naming the status patch", CONVERGE, || readyz(&k).contains("patch attachments/status: "));
    assert!(netns_exists(&k.nodes[0].ns("c2")), "c2 is realized all the same");
    assert!(k.get("attachment", "default/c2")["status"].is_null());
    k.apply(&rbac);
    k.wait_ready("attachment", "default/c2", CONVERGE);
    wait_until("/readyz ok again", CONVERGE, || readyz(&k).trim() == "ok");
}

/// Issue 24: `kubectl patch` of a static address on a running agent. The
/// moment the agent's status says Ready with the new address, the
/// container holds it (the old one was primary: the new one must not go
/// with it) and traffic flows.
#[test]
fn an_address_patched_while_running_is_in_the_kernel_when_status_says_ready() {
    let mut k = KubeCluster::start(&["n1"]);
    k.start_agent(0);
    let with_address = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}, namespace: default}}\nspec: {{network: re, nodeName: n1, sandbox: {{netns: \"{{T}}{name}\"}}, ipv4Address: {ip}}}\n"
        )
    };
    k.apply(&(network("re", "172.38.0.0/24", "") + &with_address("moved", "172.38.0.10") + &with_address("peer", "172.38.0.5")));
    k.wait_ready("attachment", "default/moved", CONVERGE);
    k.wait_ready("attachment", "default/peer", CONVERGE);
    let (moved, peer) = (k.nodes[0].ns("moved"), k.nodes[0].ns("peer"));
    assert_eq!(addresses(&moved, "eth0"), ["172.38.0.10/24"]);

    k.kubectl_ok(r#"patch attachment moved -n default --type merge -p '{"spec":{"ipv4Address":"172.38.0.20"}}'"#);
    wait_until("status with the new address", CONVERGE, || {
        let a = k.get("attachment", "default/moved");
        address(&a) == "172.38.0.20/24" && ready_of(&a).0 == "True" && a["status"]["observedGeneration"] == a["metadata"]["generation"]
    });
    assert_eq!(addresses(&moved, "eth0"), ["172.38.0.20/24"], "the kernel holds what status says");
    assert!(ping(&peer, "172.38.0.20"), "peer -> new address");
    assert!(ping(&moved, "172.38.0.1"), "new address -> gateway");
}

#[test]
fn each_agent_labels_its_own_nodes_objects_and_a_network_waits_for_every_nodes_attachments() {
    let mut k = KubeCluster::start(&["n1", "n2"]);
    k.start_agent(0);
    k.start_agent(1);
    // Applied without labels, as any tool would.
    let yaml = network("web", "172.30.0.0/24", "")
        + &attachment("a1", "web", "n1")
        + &attachment("b1", "web", "n2")
        + &port_mapping("b1-web", "b1", "{containerPort: 80, hostPort: 8080}");
    k.apply(&yaml);
    for (kind, name) in [("attachment", "default/a1"), ("attachment", "default/b1"), ("portmapping", "default/b1-web")] {
        k.wait_ready(kind, name, CONVERGE);
    }
    // Each node's agent labels its own; what an agent watches is what its
    // node's label selects.
    let label = |kind: &str, name: &str, key: &str| k.get(kind, &format!("default/{name}"))["metadata"]["labels"][key].clone();
    wait_until("labels", CONVERGE, || {
        label("attachment", "a1", "netlet.io/node") == "n1" && label("portmapping", "b1-web", "netlet.io/node") == "n2"
    });
    assert_eq!(label("attachment", "b1", "netlet.io/node"), "n2");
    assert_eq!(label("attachment", "a1", "netlet.io/network"), "web");
    let selected = |node: &str| k.kubectl_ok(&format!("get attachments -n default -l netlet.io/node={node} -o name"));
    assert_eq!(selected("n1").trim(), "attachment.netlet.io/a1");
    assert_eq!(selected("n2").trim(), "attachment.netlet.io/b1");

    // The Network, deleted while b1 on n2 uses it: n1 (whose a1 is gone)
    // tears it down, but the finalizer stays for n2's attachment, which n1
    // does not watch.
    k.kubectl_ok("delete attachment a1 -n default --timeout=30s");
    k.kubectl_ok("delete network web --wait=false");
    wait_until("n1's bridge gone", CONVERGE, || link(&k.nodes[0].name, "nl-web").is_none());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(finalizers(&k.get("network", "web")), ["netlet.io/in-use"], "b1 still uses it");
    assert!(link(&k.nodes[1].name, "nl-web").is_some());
    k.kubectl_ok("delete portmapping b1-web -n default --timeout=30s");
    k.kubectl_ok("delete attachment b1 -n default --timeout=30s");
    wait_until("the network gone", CONVERGE, || k.kubectl("get network web").status.code() == Some(1));
}

#[test]
fn an_overlay_address_outside_its_nodes_blocks_is_summarized_and_routed_to_it() {
    let mut k = KubeCluster::start(&["n1", "n2"]);
    k.start_agent(0);
    k.start_agent(1);
    // Dual-stack: the IPv6 blocks mirror the claimed /28s (/64 + 4 bits: /68s).
    let ov = "---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: ov}\nspec:\n  driver: overlay\n  overlay: {vni: 4097, blockPrefixLength: 28}\n  enableIPv6: true\n  ipam: {config: [{subnet: 10.77.0.0/24}, {subnet: \"fd00:77::/64\"}]}\n  allowedSandboxes: [netns]\n";
    k.apply(&(ov.to_string() + &attachment("c1", "ov", "n1")));
    k.wait_ready("attachment", "default/c1", CONVERGE);
    assert_eq!(address(&k.get("attachment", "default/c1")), "10.77.0.2/24", "n1's block is the lowest");
    assert_eq!(k.get("attachment", "default/c1")["status"]["ipv6Address"], "fd00:77::2/64", "from its block's mirror");
    // n2's static addresses lie in n1's blocks; n1 does not watch n2's attachments.
    let pinned =
        attachment("pinned", "ov", "n2").replace("nodeName: n2,", "nodeName: n2, ipv4Address: 10.77.0.5, ipv6Address: \"fd00:77::5\",");
    k.apply(&pinned);
    k.wait_ready("attachment", "default/pinned", CONVERGE);
    wait_until("n2's summary in the Network's status", CONVERGE, || {
        let nodes = k.get("network", "ov")["status"]["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().any(|n| n["node"] == "n2" && n["addressesOutsideBlocks"] == serde_json::json!(["10.77.0.5", "fd00:77::5"]))
    });
    wait_until("n1's host routes to it", CONVERGE, || {
        let routes = ok(&format!("ip -n {} route show proto 78 dev nlx4097", k.nodes[0].name));
        let routes6 = ok(&format!("ip -n {} -6 route show proto 78 dev nlx4097", k.nodes[0].name));
        routes.contains("10.77.0.5 via 10.97.0.2") && routes6.contains("fd00:77::5 via fe80::")
    });
    let n2_routes = ok(&format!("ip -n {} route show proto 78", k.nodes[1].name));
    assert!(n2_routes.lines().any(|l| l.starts_with("10.77.0.5 dev ")), "n2 keeps it from the route to n1's block: {n2_routes}");
    // c1 takes fd00:77::5 for on-link (its node's block): n1's bridge answers for it.
    let proxies = ok(&format!("ip -n {} -6 neigh show proxy", k.nodes[0].name));
    assert!(proxies.contains("fd00:77::5 dev "), "{proxies}");
    assert!(ping(&k.nodes[0].ns("c1"), "10.77.0.5"), "c1 -> pinned");
    assert!(ping(&k.nodes[0].ns("pinned"), "10.77.0.2"), "pinned -> c1");
    assert!(ping(&k.nodes[0].ns("c1"), "fd00:77::5"), "c1 -> pinned over IPv6");
    assert!(ping(&k.nodes[0].ns("pinned"), "fd00:77::2"), "pinned -> c1 over IPv6");
}
