//! The shipped artefacts on a real node: the agent image built offline
//! (image/build.sh), installed by a real Helm 3 as a DaemonSet pod beside a
//! real kubelet over containerd and runc (e2e/local-cluster.sh), running as
//! the chart's ServiceAccount. Docker's scenarios from manifests/examples,
//! applied with kubectl, are realized on the node and reported in status;
//! `/metrics` answers on the node; an upgrade, a killed container and a
//! deleted pod each bring the agent back without changing the dataplane;
//! `helm uninstall` does what the chart's README says; `kubectl apply -f
//! manifests/` gives the same result as the chart; the README's way of
//! removing everything leaves nothing of netlet's on the node.

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use harness::cluster::{LocalCluster, NODE_NAME, SYSTEM};
use harness::*;
use serde_json::Value;

const ROLLOUT: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(60);
const AGENT: &str = "app.kubernetes.io/name=netlet";
/// The Docker scenarios that can share one node (default-bridge.yaml
/// reuses user-defined-bridge.yaml's container names).
const EXAMPLES: &[&str] = &[
    "quickstart",
    "published-port",
    "internal-network",
    "icc-disabled",
    "container-sharing",
    "user-defined-bridge",
    "macvlan",
    "host-network",
];

fn repo(rel: &str) -> String {
    format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// The examples as a Kubernetes user applies them to this node: each
/// Attachment with `spec.nodeName` (Kubernetes mode realizes an attachment
/// on the node it names), every named sandbox prefixed with the test's
/// tag, so that the node's /run/netns stays ours to clean, and each Network
/// granting the Docker-style sandboxes the examples use (Kubernetes mode
/// allows only `pod` and `attachment` by default).
fn examples(tag: &str) -> (String, Vec<String>) {
    let mut docs = Vec::new();
    let mut sandboxes = Vec::new();
    for name in EXAMPLES {
        let text = std::fs::read_to_string(repo(&format!("manifests/examples/{name}.yaml"))).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut doc = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if doc.is_null() {
                continue;
            }
            if doc["kind"] == "Network" {
                let spec = doc.get_mut("spec").and_then(|s| s.as_mapping_mut()).unwrap();
                spec.insert("allowedSandboxes".into(), serde_yaml::from_str("[netns, attachment]").unwrap());
            }
            if doc["kind"] == "Attachment" {
                let spec = doc.get_mut("spec").and_then(|s| s.as_mapping_mut()).unwrap();
                spec.insert("nodeName".into(), NODE_NAME.into());
                if let Some(netns) = spec.get_mut("sandbox").and_then(|s| s.get_mut("netns")) {
                    let prefixed = format!("{tag}{}", netns.as_str().unwrap());
                    sandboxes.push(prefixed.clone());
                    *netns = prefixed.into();
                }
            }
            docs.push(serde_yaml::to_string(&doc).unwrap());
        }
    }
    (docs.join("---\n"), sandboxes)
}

/// The node's dataplane (see [`harness::dataplane::snapshot`]), its nft
/// tables read on the node.
fn dataplane(c: &LocalCluster, sandboxes: &[String]) -> String {
    dataplane::snapshot(&c.node.name, sandboxes, CONVERGE, |cmd| c.on_node(cmd))
}

/// Mutations of the first reconcile in an agent's log (`None`: none yet).
fn first_pass_mutations(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("reconciled mutations="))?;
    line.split("reconciled mutations=").nth(1)?.split_whitespace().next()?.parse().ok()
}

fn agent_first_pass_changed_nothing(c: &LocalCluster, pod: &Value, restart: u64) {
    let mut log = String::new();
    wait_until("the new agent's first reconcile", CONVERGE, || {
        log = c.container_log(pod, "netlet", restart);
        first_pass_mutations(&log).is_some()
    });
    assert_eq!(first_pass_mutations(&log), Some(0), "a new agent changed the node it took over:\n{log}");
}

fn wait_all_ready(c: &LocalCluster) {
    for kind in ["networks", "attachments", "portmappings"] {
        wait_until(&format!("every {kind} Ready"), CONVERGE, || {
            let items = c.list(kind, "-A");
            !items.is_empty() && items.iter().all(|i| kubectl::ready_of(i).0 == "True")
        });
    }
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_agent_runs_on_a_real_node_as_a_daemonset_pod_installed_by_helm() {
    let c = LocalCluster::up();
    let tag = c.node.tag.clone();
    let node = c.node.name.clone();

    // The image, built offline from this repository and loaded into the
    // node's containerd under the chart's default name and tag.
    c.load_agent_image();

    // helm install: the pod turns Ready through its probes.
    c.helm(&format!("lint --strict {}", repo("charts/netlet")));
    c.kubectl_ok(&format!("create namespace {SYSTEM}"));
    c.helm_install("");
    let pod = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    assert_eq!(pod["spec"]["nodeName"], NODE_NAME);
    assert_eq!(pod["spec"]["hostNetwork"], true);

    // It runs as the chart's ServiceAccount, bound to the chart's
    // ClusterRole and nothing else.
    assert_eq!(pod["spec"]["serviceAccountName"], "netlet");
    let is_agent = |s: &Value| s["kind"] == "ServiceAccount" && s["name"] == "netlet" && s["namespace"] == SYSTEM;
    let bindings: Vec<Value> = ["clusterrolebindings", "rolebindings"]
        .iter()
        .flat_map(|kind| c.list(kind, "-A"))
        .filter(|b| b["subjects"].as_array().is_some_and(|s| s.iter().any(is_agent)))
        .collect();
    assert_eq!(bindings.len(), 1, "the agent's bindings: {bindings:?}");
    assert_eq!((bindings[0]["kind"].as_str(), bindings[0]["roleRef"]["name"].as_str()), (Some("ClusterRoleBinding"), Some("netlet")));
    let can = |what: &str| c.kubectl(&format!("auth can-i {what} --as=system:serviceaccount:{SYSTEM}:netlet")).status.success();
    assert!(can("patch attachments.netlet.io --subresource=status -A") && can("watch nodes"));
    // Pods: their sandboxes and annotations; the annotation's Attachments.
    assert!(can("watch pods -A") && can("create attachments.netlet.io -A"));
    assert!(!can("get secrets -A") && !can("create networks.netlet.io") && !can("delete pods -A"), "more than the role");

    // Tenants: the chart's netlet-view and netlet-edit aggregate into
    // Kubernetes' view and edit (the controller-manager does that).
    c.kubectl_ok("create namespace team-a");
    c.kubectl_ok("create rolebinding alice --clusterrole=edit --user=alice -n team-a");
    c.kubectl_ok("create rolebinding bob --clusterrole=view --user=bob -n team-a");
    let can_as = |who: &str, what: &str| c.kubectl(&format!("auth can-i {what} --as={who}")).status.success();
    wait_until("netlet-edit aggregated into edit", CONVERGE, || can_as("alice", "create attachments.netlet.io -n team-a"));
    assert!(can_as("alice", "delete portmappings.netlet.io -n team-a") && can_as("bob", "list attachments.netlet.io -n team-a"));
    assert!(!can_as("alice", "create attachments.netlet.io -n default"), "edit in team-a only");
    assert!(
        !can_as("alice", "create networks.netlet.io") && !can_as("alice", "patch attachments.netlet.io --subresource=status -n team-a")
    );
    assert!(!can_as("bob", "create attachments.netlet.io -n team-a"), "view reads only");

    // Docker's scenarios, applied with kubectl: realized and reported.
    let (yaml, sandboxes) = examples(&tag);
    // The chart's default networks, as the admin grants them to Docker's scenarios.
    c.kubectl_ok(r#"patch network bridge --type merge -p '{"spec":{"allowedSandboxes":["netns","attachment"]}}'"#);
    c.kubectl_ok(r#"patch network host --type merge -p '{"spec":{"allowedSandboxes":["host"]}}'"#);
    c.apply(&yaml);
    wait_all_ready(&c);
    for a in c.list("attachments", "-A") {
        let Some(sandbox) = a["spec"]["sandbox"]["netns"].as_str() else { continue };
        let want = a["status"]["ipv4Address"].as_str().unwrap_or_default();
        let interface = a["status"]["interface"].as_str().unwrap();
        assert!(addresses(sandbox, interface).iter().any(|have| have == want), "{sandbox} {interface} holds {want}");
    }
    let c3 = format!("{tag}container3");
    let c2 = format!("{tag}container2");
    let c2_ip = c.get("attachment", "default/container2")["status"]["ipv4Address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(ping(&c3, &c2_ip), "container3 -> container2 over isolated-nw");
    let _web = Server::start(&c2, 80, false, false);
    assert!(connect(&node, "127.0.0.1", 8080, false).is_some_and(|r| r.starts_with("hello ")), "node -> 127.0.0.1:8080 -> container2:80");
    let remote = c.node.add_remote("rem", "192.0.2.1", "192.0.2.2");
    // Its IPv6 link-local address would still be settling (DAD) when the
    // dataplane is first compared.
    c.on_node(&format!("sysctl -qw net.ipv6.conf.{tag}up.disable_ipv6=1"));
    assert!(connect(&remote, "192.0.2.1", 8080, false).is_some_and(|r| r.starts_with("hello ")), "remote host -> node:8080");

    // /metrics on the node (the pod shares the node's network).
    let attachments = c.list("attachments", "-A").len();
    let metrics = c.on_node("curl -sf http://127.0.0.1:9464/metrics");
    assert!(metrics.contains(&format!("netlet_objects{{kind=\"Attachment\",ready=\"true\"}} {attachments}")), "{metrics}");
    assert_eq!(c.on_node("curl -sf http://127.0.0.1:9464/readyz").trim(), "ok");

    let before = dataplane(&c, &sandboxes);
    let allocations = std::fs::read_to_string(c.node.state_dir().join("allocations.json")).expect("state where the chart put it");

    // helm upgrade with a changed value rolls the pod; the dataplane stays.
    c.helm(&format!("upgrade netlet {} -n {SYSTEM} --reuse-values --set resyncPeriod=7s --wait --timeout 120s", repo("charts/netlet")));
    let upgraded = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| uid(p) != uid(&pod));
    assert!(upgraded["spec"]["containers"][0]["args"].as_array().unwrap().iter().any(|a| a == "--resync-period=7s"));
    agent_first_pass_changed_nothing(&c, &upgraded, 0);
    dataplane::assert_unchanged(&before, &dataplane(&c, &sandboxes), "the upgrade");

    // The agent's container killed: the kubelet restarts it, nothing moves.
    let pid = c.container_pid(&upgraded, "netlet");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| p["status"]["containerStatuses"][0]["restartCount"] == 1);
    agent_first_pass_changed_nothing(&c, &restarted, 1);
    dataplane::assert_unchanged(&before, &dataplane(&c, &sandboxes), "a restarted agent");

    // The pod deleted: the DaemonSet brings a new one, nothing moves, and
    // the state is still where the chart put it.
    c.kubectl_ok(&format!("delete pod -n {SYSTEM} {} --wait=false", restarted["metadata"]["name"].as_str().unwrap()));
    let recreated = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |p| uid(p) != uid(&restarted));
    agent_first_pass_changed_nothing(&c, &recreated, 0);
    dataplane::assert_unchanged(&before, &dataplane(&c, &sandboxes), "a recreated agent");
    assert_eq!(std::fs::read_to_string(c.node.state_dir().join("allocations.json")).unwrap(), allocations);
    assert!(connect(&remote, "192.0.2.1", 8080, false).is_some(), "the published port after all that");

    // helm uninstall, as the chart's README says: the agent and its RBAC
    // go; the node's networking, the objects (default networks included)
    // and the CRDs stay.
    c.helm(&format!("uninstall netlet -n {SYSTEM} --wait --timeout 120s"));
    wait_until("the agent's pod gone", ROLLOUT, || c.pods(SYSTEM, AGENT).is_empty());
    for (kind, name) in [
        ("daemonset", "-n netlet-system netlet"),
        ("serviceaccount", "-n netlet-system netlet"),
        ("clusterrole", "netlet"),
        ("clusterrolebinding", "netlet"),
    ] {
        assert!(!c.kubectl(&format!("get {kind} {name}")).status.success(), "{kind} {name} outlived helm uninstall");
    }
    let networks: BTreeSet<String> = c.list("networks", "").iter().map(|n| n["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert!(["bridge", "host", "none", "isolated-nw"].iter().all(|n| networks.contains(*n)), "{networks:?}");
    assert_eq!(c.list("attachments", "-A").len(), attachments);
    dataplane::assert_unchanged(&before, &dataplane(&c, &sandboxes), "helm uninstall");
    assert!(connect(&remote, "192.0.2.1", 8080, false).is_some(), "containers keep their published port without an agent");

    // `kubectl apply -f manifests/` gives the same result as the chart: the
    // same agent, role and networks take the node over without a change.
    // Edits, as a user of this cluster makes them with kustomize or
    // sed: the state dir (the test's, not the machine's /var/lib/netlet)
    // and the API server's address (no kube-proxy here; the chart's
    // apiServer.host); and the CNI directories and socket, as the chart's
    // cni values.
    let daemonset = std::fs::read_to_string(repo("manifests/daemonset.yaml"))
        .unwrap()
        .replace("/var/lib/netlet", &c.node.state_dir().display().to_string())
        .replace("/opt/cni/bin", &c.cni_bin_dir().display().to_string())
        .replace("/etc/cni/net.d", &c.cni_conf_dir().display().to_string())
        .replace("/run/netlet/cni.sock", &c.cni_socket().display().to_string())
        .replace(
        "        env:\n",
        &format!("        env:\n        - {{name: KUBERNETES_SERVICE_HOST, value: \"{}\"}}\n        - {{name: KUBERNETES_SERVICE_PORT, value: \"{}\"}}\n", c.api_host, c.api_port),
    );
    std::fs::write(c.dir.join("daemonset.yaml"), daemonset).unwrap();
    let manifests = format!(
        "-f {} -f {} -f {} -f {}",
        repo("manifests/namespace.yaml"),
        repo("manifests/rbac.yaml"),
        c.dir.join("daemonset.yaml").display(),
        repo("manifests/default-networks.yaml")
    );
    c.kubectl_ok(&format!("apply -f {} {manifests}", repo("crds/netlet.io.yaml")));
    let applied = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    assert_eq!(applied["spec"]["serviceAccountName"], "netlet");
    agent_first_pass_changed_nothing(&c, &applied, 0);
    wait_all_ready(&c);
    dataplane::assert_unchanged(&before, &dataplane(&c, &sandboxes), "the manifests' agent");

    // Back to Helm (the manifests' objects go first; the default networks
    // exist, so the chart must not create them), then the README's way of
    // removing everything.
    c.kubectl_ok(&format!("delete -f {} -f {} --wait", c.dir.join("daemonset.yaml").display(), repo("manifests/rbac.yaml")));
    wait_until("the manifests' agent gone", ROLLOUT, || c.pods(SYSTEM, AGENT).is_empty());
    c.helm_install("--set defaultNetworks.enabled=false");
    let reinstalled = c.wait_one_ready_pod(SYSTEM, AGENT, ROLLOUT, |_| true);
    agent_first_pass_changed_nothing(&c, &reinstalled, 0);
    c.kubectl_ok("delete portmappings,attachments --all -A --wait --timeout=60s");
    c.kubectl_ok("delete networks --all --wait --timeout=60s");
    c.helm(&format!("uninstall netlet -n {SYSTEM} --wait --timeout 120s"));
    c.kubectl_ok(&format!("delete -f {} --wait --timeout=60s", repo("charts/netlet/crds/netlet.io.yaml")));
    for s in &sandboxes {
        assert!(!netns_exists(s), "{s} outlived its attachment");
    }
    let links: Vec<String> = ip_json(&node, "link show").iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect();
    let ours: Vec<&String> = links.iter().filter(|l| !["lo", "eth0", "cni0"].contains(&l.as_str()) && !l.starts_with(&tag)).collect();
    assert!(ours.is_empty(), "links left on the node: {ours:?}");
    assert_eq!(c.on_node("nft list tables").lines().filter(|l| l.contains("netlet")).count(), 0, "netlet's nft tables outlived it");
    c.down();
}
