//! Pods on netlet networks, on the real one-node cluster
//! (e2e/local-cluster.sh: kubelet over containerd and runc, the Debian
//! bridge plugin as the primary network 10.88.0.0/16, netlet installed by
//! its chart with netlet-cni chained after it).
//!
//! Two busybox pods annotated onto a user-defined bridge network: their
//! application container's first command already sees `net1` with its
//! address (it exits otherwise, and the pod never gets Ready); they reach
//! each other by address and by pod name through netlet's DNS; their
//! primary network (eth0, its default route, pod to pod) keeps working;
//! a PortMapping publishes one's port to a remote host; a restarted agent
//! finds them again and remakes nothing. A pod named by a
//! hand-written Attachment: deleted, its interfaces go and the attachment
//! says PodNotFound; recreated (a new UID and sandbox), it gets the same
//! address.

mod harness;

use std::time::Duration;

use harness::cluster::{LocalCluster, SYSTEM};
use harness::*;
use serde_json::Value;

const ROLLOUT: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(60);
const AGENT: &str = "app.kubernetes.io/name=netlet";
const NS: &str = "team";

/// A busybox pod whose first command checks `net1` has an IPv4 address,
/// then serves `hello from NAME` over HTTP on port 80.
fn pod(name: &str, networks: Option<&str>) -> String {
    let annotation = networks.map(|n| format!("  annotations: {{netlet.io/networks: \"{n}\"}}\n")).unwrap_or_default();
    let command =
        format!("ip -4 addr show net1 | grep -q inet || exit 1; echo hello from {name} > /tmp/index.html; exec httpd -f -p 80 -h /tmp");
    [
        "apiVersion: v1".to_string(),
        "kind: Pod".into(),
        format!("metadata:\n  name: {name}\n  namespace: {NS}\n{annotation}spec:"),
        "  terminationGracePeriodSeconds: 0".into(),
        "  restartPolicy: Never".into(),
        "  containers:".into(),
        "  - name: app".into(),
        "    image: docker.io/library/busybox:1.35".into(),
        "    imagePullPolicy: Never".into(),
        format!("    command: [sh, -c, '{command}']"),
        "    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}".into(),
    ]
    .join("\n")
}

fn wait_pod_ready(c: &LocalCluster, name: &str) -> Value {
    let mut pod = Value::Null;
    wait_until(&format!("pod {name} Ready"), ROLLOUT, || {
        pod = c.get("pod", &format!("{NS}/{name}"));
        assert_ne!(pod["status"]["phase"], "Failed", "pod {name} failed (its first command did not see net1): {pod}");
        kubectl::ready_of(&pod).0 == "True"
    });
    pod
}

fn attachment(c: &LocalCluster, name: &str) -> Value {
    c.get("attachment", &format!("{NS}/{name}"))
}

/// The address of an attachment, without its prefix length.
fn address_of(att: &Value) -> String {
    att["status"]["ipv4Address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string()
}

/// A command in the network namespace of a sandbox (its path on the node).
fn in_sandbox(sandbox: &str, cmd: &str) -> std::process::Output {
    sh(&format!("nsenter --net={sandbox} {cmd}"))
}

#[test]
fn pods_on_a_user_defined_network_reach_each_other_by_address_and_name_and_keep_their_primary_network() {
    require_root();
    let c = LocalCluster::up();
    c.load_agent_image();
    c.kubectl_ok(&format!("create namespace {SYSTEM}"));
    c.kubectl_ok(&format!("create namespace {NS}"));
    c.helm_install("--set defaultNetworks.enabled=false");
    let agent = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    c.apply(
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: blue}\n\
         spec: {ipam: {config: [{subnet: 172.30.0.0/24, gateway: 172.30.0.1}]}}\n",
    );

    // Two annotated pods: the agent made their Attachments (owned by the
    // pods), and their containers started with net1 in place.
    c.apply(&pod("pa", Some("blue")));
    c.apply(&pod("pb", Some("blue")));
    let (pa, pb) = (wait_pod_ready(&c, "pa"), wait_pod_ready(&c, "pb"));
    let (a, b) = (attachment(&c, "pa-net1"), attachment(&c, "pb-net1"));
    for (att, pod) in [(&a, &pa), (&b, &pb)] {
        assert_eq!(ready_in(&att["status"]).0, "True", "{att}");
        assert_eq!(att["metadata"]["ownerReferences"][0]["uid"], pod["metadata"]["uid"], "owned by its pod");
        assert_eq!(att["status"]["pod"]["uid"], pod["metadata"]["uid"], "status names the pod");
        assert_eq!(att["status"]["interface"], "net1");
        // Labeled for the pod's node: no other node's agent hears of it.
        assert_eq!(att["metadata"]["labels"]["netlet.io/node"], pod["spec"]["nodeName"], "{att}");
        assert_eq!(att["metadata"]["labels"]["netlet.io/network"], "blue", "{att}");
    }
    let (addr_a, addr_b) = (address_of(&a), address_of(&b));
    let sandbox_a = a["status"]["sandboxPath"].as_str().unwrap().to_string();
    assert!(addr_a.starts_with("172.30.0.") && addr_b.starts_with("172.30.0."), "{addr_a} {addr_b}");

    // By address and by pod name through netlet's DNS (on the gateway).
    assert!(in_sandbox(&sandbox_a, &format!("ping -c1 -W2 {addr_b}")).status.success(), "pa -> pb over blue");
    let answer = String::from_utf8_lossy(&in_sandbox(&sandbox_a, "busybox nslookup pb 172.30.0.1").stdout).to_string();
    assert!(answer.contains(&addr_b), "pb by name from pa:\n{answer}");

    // The per-pod status annotation.
    wait_until("pa's netlet.io/network-status", CONVERGE, || {
        let status = c.get("pod", &format!("{NS}/pa"))["metadata"]["annotations"]["netlet.io/network-status"].clone();
        let status: Value = serde_json::from_str(status.as_str().unwrap_or("null")).unwrap_or_default();
        status[0]["name"] == "blue"
            && status[0]["interface"] == "net1"
            && status[0]["ips"][0] == addr_a.as_str()
            && status[0]["ready"] == true
    });

    // A pod start is no warning: its attachments waited for the sandbox
    // (PodNotStarted) in the normal course.
    let events = c.kubectl_ok(&format!("get events -n {NS} -o json"));
    let events: Value = serde_json::from_str(&events).unwrap();
    let warned: Vec<&Value> = events["items"].as_array().unwrap().iter().filter(|e| e["reason"] == "PodNotStarted").collect();
    assert!(warned.is_empty(), "no Warning for a pod being started: {warned:?}");

    // The primary network: eth0 keeps the default route and pods reach
    // each other over it.
    let primary_b = pb["status"]["podIP"].as_str().unwrap().to_string();
    assert!(primary_b.starts_with("10.88."), "{primary_b}");
    let routes = String::from_utf8_lossy(&in_sandbox(&sandbox_a, "ip route show default").stdout).to_string();
    assert!(routes.contains("dev eth0") && !routes.contains("net1"), "pa's default route stays the primary network's: {routes}");
    assert!(in_sandbox(&sandbox_a, &format!("ping -c1 -W2 {primary_b}")).status.success(), "pa -> pb over the primary network");

    // A PortMapping publishes pb's port 80 to a remote host.
    c.apply(&format!(
        "apiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: pb-web, namespace: {NS}}}\n\
         spec: {{attachment: pb-net1, ports: [{{containerPort: 80, hostPort: 8080}}]}}\n"
    ));
    c.wait_ready("portmapping", &format!("{NS}/pb-web"), CONVERGE);
    let remote = c.node.add_remote("rem", "192.0.2.1", "192.0.2.2");
    let page = ok(&format!("ip netns exec {remote} curl -sf --max-time 5 http://192.0.2.1:8080/"));
    assert_eq!(page.trim(), "hello from pb", "remote host -> node:8080 -> pb:80");

    // A restarted agent finds the running pods again (what netlet-cni told
    // it, kept in the state dir, checked against the kernel): nothing of
    // theirs is remade, and they stay Ready.
    let book = std::fs::read_to_string(c.node.state_dir().join("pod-sandboxes.json")).unwrap();
    assert!(book.contains("team/pa") && book.contains(&sandbox_a), "{book}");
    let host_a = a["status"]["hostInterface"].as_str().unwrap().to_string();
    let index_a = ifindex(&c.node.name, &host_a);
    let pid = c.container_pid(&agent, "netlet");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let agent = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| p["status"]["containerStatuses"][0]["restartCount"] == 1);
    let log = || c.container_log(&agent, "netlet", 1);
    wait_until("the restarted agent's first passes", CONVERGE, || log().contains("reconciled"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready_in(&attachment(&c, "pa-net1")["status"]).0, "True");
    assert_eq!(ifindex(&c.node.name, &host_a), index_a, "pa's veth was not remade");
    assert!(in_sandbox(&sandbox_a, &format!("ping -c1 -W2 {addr_b}")).status.success(), "pa -> pb after the restart");

    // A pod named by a hand-written Attachment: deleted and recreated, it
    // gets the same address again; meanwhile the attachment holds it and
    // says why nothing is realized.
    c.apply(&format!(
        "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: pc-blue, namespace: {NS}}}\n\
         spec: {{network: blue, interface: net1, sandbox: {{pod: pc}}}}\n"
    ));
    wait_until("pc-blue PodNotFound", CONVERGE, || {
        ready_in(&attachment(&c, "pc-blue")["status"]) == ("False".into(), "PodNotFound".into())
    });
    c.apply(&pod("pc", None));
    let first = wait_pod_ready(&c, "pc");
    let before = attachment(&c, "pc-blue");
    let (addr_c, host_if) = (address_of(&before), before["status"]["hostInterface"].as_str().unwrap().to_string());
    assert_eq!(before["status"]["pod"]["uid"], first["metadata"]["uid"]);
    assert!(in_sandbox(&sandbox_a, &format!("ping -c1 -W2 {addr_c}")).status.success(), "pa -> pc");
    c.kubectl_ok(&format!("delete pod pc -n {NS} --wait --timeout=60s"));
    wait_until("pc-blue PodNotFound again", CONVERGE, || ready_in(&attachment(&c, "pc-blue")["status"]).1 == "PodNotFound");
    assert!(link(&c.node.name, &host_if).is_none(), "the deleted pod's veth is gone from the node");
    c.apply(&pod("pc", None));
    let second = wait_pod_ready(&c, "pc");
    let after = attachment(&c, "pc-blue");
    assert_ne!(second["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(after["status"]["pod"]["uid"], second["metadata"]["uid"], "realized in the new pod");
    assert_eq!(address_of(&after), addr_c, "the recreated pod has the same address");
    assert!(in_sandbox(&sandbox_a, &format!("ping -c1 -W2 {addr_c}")).status.success(), "pa -> the new pc");

    // No attachment failed an ADD (a kubelet may still set up a sandbox for
    // a pod deleted a moment before: that ADD is told to try again, 11).
    let log = c.container_log(&agent, "netlet", 0) + &c.container_log(&agent, "netlet", 1);
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("CNI call failed") && l.contains("CNI error 100")).collect();
    assert!(failed.is_empty(), "{failed:#?}");

    for p in ["pa", "pb", "pc"] {
        c.kubectl_ok(&format!("delete pod {p} -n {NS} --wait --timeout=60s"));
    }
    // The annotation's attachments go with their pods (Kubernetes' garbage collector).
    wait_until("pa-net1 and pb-net1 gone", CONVERGE, || {
        c.kubectl(&format!("get attachment pa-net1 pb-net1 -n {NS} --ignore-not-found -o name")).stdout.is_empty()
    });
    c.helm(&format!("uninstall netlet -n {SYSTEM} --wait --timeout 120s"));
    c.down();
}
