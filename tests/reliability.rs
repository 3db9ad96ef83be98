//! Reliability: SIGKILL at random moments while manifests change, drift
//! repair, a corrupt state dir, graceful shutdown.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

const BASE: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n}
spec: {ipam: {config: [{subnet: 10.71.0.0/24}]}}
"#;

fn att(name: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: {name}}}\nspec: {{network: n, sandbox: {{netns: \"{{T}}{name}\"}}}}\n")
}
fn pm(name: &str, port: Option<u16>) -> String {
    let host = port.map(|p| format!(", hostPort: {p}")).unwrap_or_default();
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: {name}}}\nspec: {{attachment: {name}, ports: [{{containerPort: 80{host}}}]}}\n")
}

/// Attachment name -> address, and port mapping -> host port, from status.
fn held(node: &Node) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let addrs = node
        .items("attachments")
        .into_iter()
        .filter_map(|a| Some((a["metadata"]["name"].as_str()?.to_string(), a["status"]["ipv4Address"].as_str()?.to_string())))
        .collect();
    let ports = node
        .items("portmappings")
        .into_iter()
        .filter_map(|p| Some((p["metadata"]["name"].as_str()?.to_string(), p["status"]["bindings"][0]["hostPort"].as_u64()?)))
        .collect();
    (addrs, ports)
}

#[test]
fn sigkill_at_random_moments_never_leaks_or_moves_anything() {
    let mut node = Node::new();
    // "keep*" live through every variant; "churn*" come and go.
    let keep: Vec<String> = (0..4).map(|i| format!("keep{i}")).collect();
    let churn: Vec<String> = (0..6).map(|i| format!("churn{i}")).collect();
    let variant = |mask: u64| -> String {
        let mut y = BASE.to_string();
        for (i, k) in keep.iter().enumerate() {
            y += &att(k);
            y += &pm(k, if i % 2 == 0 { Some(18000 + i as u16) } else { None });
        }
        for (i, c) in churn.iter().enumerate() {
            if mask & (1 << i) != 0 {
                y += &att(c);
                y += &pm(c, None);
            }
        }
        y
    };
    node.write("m.yaml", &variant(0));
    node.converge();
    let (first_addrs, first_ports) = held(&node);
    assert_eq!(first_addrs.len(), 4);

    let mut rng = Lcg(0x6e65746c6574);
    for round in 0..50 {
        node.write("m.yaml", &variant(rng.next(64)));
        let pid = node.spawn(&["--metrics-addr", "off", "--resync-period", "1s"]);
        std::thread::sleep(Duration::from_millis(rng.next(400)));
        node.kill_agent(pid, Signal::SIGKILL);
        if round % 10 == 9 {
            // Now and then, a clean pass in between, as an operator would.
            node.converge();
        }
    }
    let final_mask = 0b101010;
    node.write("m.yaml", &variant(final_mask));
    node.converge();
    assert!(node.converge().contains("0 kernel mutations"), "the node converged");

    // Addresses and ports of what lived throughout never moved.
    let (addrs, ports) = held(&node);
    for k in &keep {
        assert_eq!(addrs.get(k), first_addrs.get(k), "{k}'s address moved");
        assert_eq!(ports.get(k), first_ports.get(k), "{k}'s host port moved");
    }
    // No address or port handed out twice.
    let unique: BTreeSet<&String> = addrs.values().collect();
    assert_eq!(unique.len(), addrs.len(), "duplicate address: {addrs:?}");
    let unique_ports: BTreeSet<&u64> = ports.values().collect();
    assert_eq!(unique_ports.len(), ports.len(), "duplicate port: {ports:?}");

    // The kernel holds exactly the desired state: no leaked link, netns,
    // route or rule.
    let wanted: BTreeSet<String> =
        keep.iter().cloned().chain(churn.iter().enumerate().filter(|(i, _)| final_mask & (1 << i) != 0).map(|(_, c)| c.clone())).collect();
    let netns: BTreeSet<String> = String::from_utf8_lossy(&sh("ip netns list").stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&node.tag) && *n != node.name)
        .map(|n| n.trim_start_matches(&node.tag).to_string())
        .collect();
    assert_eq!(netns, wanted, "managed namespaces");
    assert_eq!(links_with_prefix(&node.name, "nlv").len(), wanted.len(), "host veths");
    let map = String::from_utf8_lossy(&node.in_node("nft list map inet netlet ports_v4").stdout).into_owned();
    assert_eq!(map.matches(" : 10.71.0.").count(), wanted.len(), "one DNAT entry per mapping:\n{map}");
    for name in &wanted {
        let sandbox = node.ns(name);
        assert_eq!(addresses(&sandbox, "eth0"), [addrs[name].clone()], "{name}");
        assert!(default_route(&sandbox).is_some());
    }
}

#[test]
fn drift_is_repaired_while_the_agent_runs() {
    let mut node = Node::new();
    node.write("m.yaml", &format!("{BASE}{}{}", att("a"), pm("a", Some(18080))));
    node.converge();
    node.spawn(&["--metrics-addr", "off", "--resync-period", "2s"]);
    std::thread::sleep(Duration::from_millis(500));
    let sandbox = node.ns("a");
    let host = node.status("attachments", "a")["hostInterface"].as_str().unwrap().to_string();
    let in_sb = |cmd: &str| ok(&format!("ip -n {sandbox} {cmd}"));
    let repaired = |what: &str, check: &dyn Fn() -> bool| wait_until(what, Duration::from_secs(10), check);

    node.in_node("ip link del nl-n");
    repaired("bridge", &|| addresses(&node.name, "nl-n") == ["10.71.0.1/24"]);
    repaired("veth back on the bridge", &|| link(&node.name, &host).is_some_and(|l| l["master"] == "nl-n"));
    node.in_node(&format!("ip link del {host}"));
    repaired("veth", &|| addresses(&sandbox, "eth0") == ["10.71.0.2/24"]);
    in_sb("addr flush dev eth0");
    repaired("address", &|| addresses(&sandbox, "eth0") == ["10.71.0.2/24"]);
    in_sb("route del default");
    repaired("default route", &|| default_route(&sandbox).is_some());
    in_sb("link del eth0");
    repaired("container interface", &|| addresses(&sandbox, "eth0") == ["10.71.0.2/24"]);
    node.in_node("nft delete table inet netlet");
    repaired("nft table", &|| node.in_node("nft list table inet netlet").status.success());
    node.in_node("nft flush table inet netlet");
    repaired("flushed nft table", &|| String::from_utf8_lossy(&node.in_node("nft list map inet netlet ports_v4").stdout).contains("18080"));
    // `ip netns del` unmounts the namespace, then unlinks its file: an
    // agent pass landing between the two mounts a fresh namespace there
    // (the repair, early) and the unlink fails with EBUSY. Deleted again
    // then, until one deletion is whole; any other failure fails the test.
    wait_until("ip netns del to succeed", Duration::from_secs(5), || {
        let out = sh(&format!("ip netns del {sandbox}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || stderr.contains("Device or resource busy"), "`ip netns del {sandbox}` failed: {stderr}");
        out.status.success()
    });
    repaired("managed namespace", &|| netns_exists(&sandbox) && addresses(&sandbox, "eth0") == ["10.71.0.2/24"]);

    // Repairs are counted.
    let log = node.agent_log(0);
    assert!(log.contains("mutations="), "{log}");
}

#[test]
fn a_corrupt_state_dir_is_reported_and_rebuilt_without_moving_addresses() {
    let node = Node::new();
    node.write("m.yaml", &format!("{BASE}{}{}{}", att("a"), att("b"), att("c")));
    node.converge();
    // b goes, so c's address is no longer what a fresh allocation would give.
    node.write("m.yaml", &format!("{BASE}{}{}", att("a"), att("c")));
    node.converge();
    let before = held(&node).0;
    assert_eq!(before["c"], "10.71.0.4/24");
    std::fs::write(node.state_dir().join("allocations.json"), b"{\"endpoints\": {\"trunc").unwrap();
    let out = node.converge();
    assert!(out.contains("corrupt"), "reported loudly: {out}");
    assert!(node.state_dir().join("allocations.json.corrupt").exists());
    assert_eq!(held(&node).0, before, "addresses recovered from the kernel");
    assert_eq!(addresses(&node.ns("c"), "eth0"), ["10.71.0.4/24"]);
    // A newcomer does not get an address already in use.
    node.write("m.yaml", &format!("{BASE}{}{}{}", att("a"), att("c"), att("d")));
    node.converge();
    assert_eq!(held(&node).0["d"], "10.71.0.3/24");
}

#[test]
fn sigterm_stops_the_agent_and_leaves_the_dataplane_in_place() {
    let mut node = Node::new();
    node.write("m.yaml", &format!("{BASE}{}", att("a")));
    let pid = node.spawn(&["--metrics-addr", "off"]);
    let sandbox = node.ns("a");
    wait_until("the attachment", Duration::from_secs(10), || addresses(&sandbox, "eth0") == ["10.71.0.2/24"]);
    node.kill_agent(pid, Signal::SIGTERM);
    assert!(node.agent_log(0).contains("dataplane left in place"));
    assert!(ping(&sandbox, "10.71.0.1"), "the container still has its network");
}

#[test]
fn an_agent_killed_with_sigkill_leaves_no_process_behind() {
    let mut node = Node::new();
    node.write("m.yaml", &format!("{BASE}{}{}", att("a"), pm("a", Some(18080))));
    let pid = node.spawn(&["--metrics-addr", "off"]);
    wait_until("the first pass", Duration::from_secs(10), || node.agent_log(0).contains("reconciled"));
    node.kill_agent(pid, Signal::SIGKILL);
    // A helper the agent started (an `nft monitor` child did) would live on
    // in the node namespace, and keep it alive after the node is deleted.
    wait_until("no process left in the node namespace", Duration::from_secs(5), || {
        String::from_utf8_lossy(&sh(&format!("ip netns pids {}", node.name)).stdout).trim().is_empty()
    });
}

/// GET http://127.0.0.1:9464/PATH inside the node namespace.
fn scrape(node: &Node, path: &str) -> (u16, String) {
    let script = format!(
        "import urllib.request,urllib.error\ntry:\n  r=urllib.request.urlopen('http://127.0.0.1:9464{path}',timeout=2)\n  print(r.status);print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n  print(e.code)\n"
    );
    let out = sh(&format!("ip netns exec {} python3 -c \"{}\"", node.name, script.replace('"', "\\\"")));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn value(metrics: &str, line_start: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(line_start)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn metrics_health_and_readiness_move_with_the_agent() {
    let mut node = Node::new();
    node.write("m.yaml", &format!("{BASE}{}{}", att("a"), pm("a", Some(18081))));
    node.spawn(&["--metrics-addr", "127.0.0.1:9464", "--resync-period", "1s"]);
    wait_until("/readyz", Duration::from_secs(10), || scrape(&node, "/readyz").0 == 200);
    assert_eq!(scrape(&node, "/healthz").0, 200);
    let (_, first) = scrape(&node, "/metrics");
    assert!(value(&first, "netlet_kernel_mutations_total") > 0.0, "{first}");
    assert_eq!(value(&first, "netlet_objects{kind=\"Attachment\",ready=\"true\"}"), 1.0, "{first}");
    assert_eq!(value(&first, "netlet_addresses_in_use{network=\"n\"}"), 1.0);
    assert_eq!(value(&first, "netlet_published_ports{protocol=\"tcp\"}"), 1.0);
    // A repair shows up as drift, and reconciles keep being counted.
    let reconciles = value(&first, "netlet_reconciles_total");
    node.in_node("ip link del nl-n");
    wait_until("a drift repair", Duration::from_secs(10), || value(&scrape(&node, "/metrics").1, "netlet_drift_repairs_total") > 0.0);
    wait_until("more reconciles", Duration::from_secs(10), || value(&scrape(&node, "/metrics").1, "netlet_reconciles_total") > reconciles);
    let (_, after) = scrape(&node, "/metrics");
    assert!(value(&after, "netlet_reconcile_duration_seconds_count") >= 2.0);
}

#[test]
fn foreign_links_namespaces_and_names_are_never_touched() {
    let node = Node::new();
    // A bridge and a veth of someone else's, one even named like ours, and
    // a namespace the agent did not create but is told to use.
    node.in_node("ip link add foreignbr type bridge && ip link add nlvforeign0000 type veth peer name foreignpeer && ip link set nlvforeign0000 master foreignbr");
    let theirs = node.ns("theirs");
    ok(&format!("ip netns add {theirs}"));
    node.write("m.yaml", &format!("{BASE}{}---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: guest}}\nspec: {{network: n, sandbox: {{path: /run/netns/{theirs}}}}}\n", att("a")));
    node.converge();
    assert_eq!(addresses(&theirs, "eth0"), ["10.71.0.3/24"], "configured in the existing namespace");
    node.converge_empty();
    for l in ["foreignbr", "nlvforeign0000", "foreignpeer"] {
        assert!(link(&node.name, l).is_some(), "{l} survived");
    }
    assert!(netns_exists(&theirs), "a namespace given by path is configured, never deleted");
    assert!(link(&theirs, "eth0").is_none(), "but what netlet put in it is gone");
    assert!(!netns_exists(&node.ns("a")));
}
