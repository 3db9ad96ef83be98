//! The Docker user's door, end to end in a throwaway node namespace:
//! real `docker inspect` output imported and applied reproduces Docker's
//! addresses, names and published ports; `netlet network ...` and `netlet
//! port` against a running agent; `netlet inspect` read by `jq`-style paths.

mod harness;

use std::process::{Command, Output};
use std::time::Duration;

use harness::*;
use serde_json::Value;

const NETWORKS: &str = include_str!("fixtures/docker/networks.json");
const CONTAINERS: &str = include_str!("fixtures/docker/containers.json");
const DEFAULT_NETWORKS: &str = include_str!("../manifests/default-networks.yaml");

fn netlet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("netlet runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn imported_docker_output_reproduces_addresses_names_and_published_ports() {
    let mut node = Node::new();
    // The macvlan network's parent, as on the Docker host.
    node.in_node("ip link add uplink0 type veth peer name uplink1 && ip link set uplink0 up && ip link set uplink1 up");
    let out = netlet(&["import", "docker", "-"], Some(&format!("{NETWORKS}{CONTAINERS}")));
    let (yaml, dropped) = text(&out);
    assert!(out.status.success(), "{dropped}");
    assert!(dropped.contains("network bridge: (whole network): Docker's default network is netlet's default `bridge`"), "{dropped}");
    // Sandboxes are named like the containers: make them this test's own.
    node.write("imported.yaml", &yaml.replace("netns: ", "netns: {T}"));
    node.write("defaults.yaml", DEFAULT_NETWORKS);
    node.converge();

    // Every address Docker assigned is the attachment's.
    let containers: Vec<Value> = serde_json::from_str(CONTAINERS).unwrap();
    let mut checked = 0;
    for c in &containers {
        let name = c["Name"].as_str().unwrap().trim_start_matches('/');
        let mode = c["HostConfig"]["NetworkMode"].as_str().unwrap();
        for (network, ep) in c["NetworkSettings"]["Networks"].as_object().unwrap() {
            let ip = ep["IPAddress"].as_str().unwrap();
            if ip.is_empty() {
                continue;
            }
            let attachment =
                if network == mode || (mode == "default" && network == "bridge") { name.to_string() } else { format!("{name}-{network}") };
            let status = node.status("attachments", &attachment);
            assert_eq!(ready_in(&status).0, "True", "{attachment}: {status}");
            assert_eq!(status["ipv4Address"].as_str().unwrap().split('/').next(), Some(ip), "{attachment}");
            assert_eq!(status["macAddress"].as_str(), ep["MacAddress"].as_str(), "{attachment}");
            let v6 = ep["GlobalIPv6Address"].as_str().unwrap();
            if !v6.is_empty() {
                assert_eq!(status["ipv6Address"].as_str().unwrap().split('/').next(), Some(v6), "{attachment}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "container3, container2 (on two networks), v6, plain (default bridge), mvc (macvlan)");
    // The same published ports: Docker's NetworkSettings.Ports, binding by binding.
    for c in &containers {
        let name = c["Name"].as_str().unwrap().trim_start_matches('/');
        let mut want: Vec<String> = c["NetworkSettings"]["Ports"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(key, list)| {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .map(move |b| format!("{}:{}->{key}", b["HostIp"].as_str().unwrap(), b["HostPort"].as_str().unwrap()))
            })
            .collect();
        let mut have: Vec<String> = node.status("portmappings", name)["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!("{}:{}->{}/{}", b["hostIP"].as_str().unwrap(), b["hostPort"], b["containerPort"], b["protocol"].as_str().unwrap())
            })
            .collect();
        want.sort();
        have.sort();
        assert_eq!(have, want, "{name}");
    }
    // The same names: the alias, from a neighbour on the network (the
    // embedded DNS runs in a long-running agent).
    node.spawn(&["--metrics-addr", "off"]);
    wait_until("the alias app1", Duration::from_secs(10), || resolve(&node.ns("container2"), "app1") == ["172.25.3.3"]);
    assert_eq!(resolve(&node.ns("container3"), "db"), Vec::<String>::new(), "db is an alias on sealed only");
    // container: sharing, host and none.
    assert_eq!(node.ready("attachments", "sidecar").0, "True");
    assert_eq!(node.status("attachments", "sidecar")["sandboxPath"], node.status("attachments", "container3")["sandboxPath"]);
    assert_eq!(node.ready("attachments", "hosted").0, "True");
    let links: Vec<String> =
        ip_json(&node.ns("nonet"), "link show").iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect();
    assert_eq!(links, ["lo"], "--network none: only loopback");
    node.stop_agents();
    node.converge_empty();
}

#[test]
fn network_verbs_write_yaml_and_wait_for_the_agent() {
    let mut node = Node::new();
    node.write("defaults.yaml", DEFAULT_NETWORKS);
    node.spawn(&["--metrics-addr", "off"]);
    let state = node.state_dir();
    let state = state.to_str().unwrap();
    wait_until("the agent's record", Duration::from_secs(10), || state_has(&node, "agent.json"));
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--state-dir", state]);
        let out = netlet(&all, None);
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, id, err) = run(&[
        "network",
        "create",
        "--subnet",
        "10.61.0.0/24",
        "--gateway",
        "10.61.0.1",
        "--ip-range",
        "10.61.0.128/25",
        "--label",
        "team=a",
        "front",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(id.trim().len(), 64, "prints the network's ID like Docker");
    // It waited: the bridge exists as soon as the command returns.
    assert_eq!(node.ready("networks", "front").0, "True");
    let yaml = std::fs::read_to_string(node.manifests().join("network-front.yaml")).unwrap();
    assert!(yaml.contains("subnet: 10.61.0.0/24") && yaml.contains("team: a"), "{yaml}");

    let (c1, c2) = (node.ns("c1"), node.ns("c2"));
    let (code, _, err) = run(&["network", "connect", "--ip", "10.61.0.10", "--alias", "api", "front", &c1]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(run(&["network", "connect", "front", &c2]).0, Some(0));
    assert_eq!(addresses(&c1, "eth0"), ["10.61.0.10/24"], "realized before the command returned");
    assert!(ping(&c2, "10.61.0.10"), "connected sandboxes talk");
    assert_eq!(resolve(&c2, "api"), ["10.61.0.10"]);

    // Docker's refusals, Docker's words, nothing written.
    let (code, _, err) = run(&["network", "create", "--subnet", "10.61.0.0/16", "back"]);
    assert_eq!((code, err.trim()), (Some(1), "Error response from daemon: Pool overlaps with other one on this address space"));
    let (code, _, err) = run(&["network", "connect", "front", &c1]);
    assert_eq!(
        (code, err.trim().to_string()),
        (Some(1), format!("Error response from daemon: endpoint with name {c1} already exists in network front"))
    );
    let (code, _, err) = run(&["network", "rm", "front"]);
    assert!(code == Some(1) && err.contains("has active endpoints"), "{err}");
    assert!(!node.manifests().join("network-back.yaml").exists());

    // Publishing, docker port's listing, and inspect for scripts.
    let (code, listing, err) = run(&["port", &c1, "-p", "8080:80", "-p", "127.0.0.1:9053:53/udp"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(listing, "53/udp -> 127.0.0.1:9053\n80/tcp -> 0.0.0.0:8080\n");
    let _web = Server::start(&c1, 80, false, false);
    assert!(connect(&node.name, "127.0.0.1", 8080, false).is_some(), "published through the agent");
    let (_, members, _) = run(&["inspect", "network", "front", "-f", "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}"]);
    let mut members: Vec<&str> = members.split_whitespace().collect();
    members.sort();
    assert_eq!(members, [format!("{c1}=10.61.0.10/24"), format!("{c2}=10.61.0.128/24")]);
    let (_, gateway, _) = run(&["inspect", "network", "front", "-o", "jsonpath={[0].IPAM.Config[0].Gateway}"]);
    assert_eq!(gateway, "10.61.0.1");
    let (_, ls, _) = run(&["network", "ls"]);
    assert!(ls.starts_with("NETWORK ID") && ls.contains(&format!("{}   front", &id.trim()[..12])), "{ls}");

    // Taking it all down again, each step waited for.
    assert_eq!(run(&["port", &c1, "--unpublish"]).0, Some(0));
    assert!(connect(&node.name, "127.0.0.1", 8080, false).is_none(), "unpublished");
    assert_eq!(run(&["network", "disconnect", "front", &c1]).0, Some(0));
    assert_eq!(run(&["network", "disconnect", "front", &c2]).0, Some(0));
    assert!(!netns_exists(&c1), "the agent removed the sandbox before the command returned");
    let (code, out, err) = run(&["network", "rm", "front", "bridge"]);
    assert_eq!((code, out.as_str()), (Some(1), "front\n"), "{err}");
    assert_eq!(err.trim(), "Error response from daemon: bridge is a pre-defined network and cannot be removed");
    assert!(node.items("networks").iter().all(|n| n["metadata"]["name"] != "front"));
}

fn state_has(node: &Node, file: &str) -> bool {
    node.state_dir().join(file).exists()
}

#[test]
fn inspect_reads_kubernetes_mode_objects_from_the_api_server() {
    let mut k = harness::kube::KubeCluster::start(&["n1"]);
    k.start_agent(0);
    k.apply(
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: web}\nspec: {ipam: {config: [{subnet: 172.30.0.0/24}]}, allowedSandboxes: [netns]}\n---\n\
         apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: c1, namespace: default}\n\
         spec: {network: web, nodeName: n1, sandbox: {netns: \"{T}c1\"}}\n",
    );
    k.wait_ready("attachment", "default/c1", Duration::from_secs(30));
    // The usual kubeconfig flag; run where the API server's address is.
    let kubeconfig = k.dir.join("kubeconfig");
    let inspect = |args: &str| {
        let out = sh(&format!("ip netns exec {} {BIN} inspect {args} --kubeconfig {}", k.cp, kubeconfig.display()));
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, json, err) = inspect("network web");
    assert_eq!(code, Some(0), "{err}");
    let networks: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(networks[0]["IPAM"]["Config"][0]["Subnet"], "172.30.0.0/24");
    let members: Vec<&Value> = networks[0]["Containers"].as_object().unwrap().values().collect();
    assert_eq!((members[0]["Name"].as_str(), members[0]["IPv4Address"].as_str()), (Some("c1"), Some("172.30.0.2/24")));
    assert_ne!(networks[0]["Created"], "0001-01-01T00:00:00Z", "the API server's creation time");
    let (_, ip, _) = inspect("attachment c1 -o jsonpath={[0].NetworkSettings.Networks.web.IPAddress}");
    assert_eq!(ip, "172.30.0.2");
    let (code, _, err) = inspect("attachment c1 -n elsewhere");
    assert_eq!((code, err.trim()), (Some(1), "Error: No such attachment: c1"));
}
