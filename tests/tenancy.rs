//! The tenant boundary (issue 21): a hostile tenant tries every way into
//! the node and into another tenant's sandbox, in standalone mode and in
//! Kubernetes mode against a real API server (the agent as its
//! least-privilege ServiceAccount). Each hostile object is refused with
//! its reason while the node's links, addresses, routes and nft tables stay
//! byte for byte as they were, and the embedded DNS answers only the
//! containers of its network: REFUSED to a remote host on the node's
//! underlay and to the node itself.

mod harness;

use std::process::{Child, Command};
use std::time::Duration;

use harness::kube::KubeCluster;
use harness::*;
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);
/// The healthy network's subnet and gateway (where its DNS listens).
const SUBNET: &str = "10.88.0.0/24";
const GATEWAY: &str = "10.88.0.1";
/// DNS response codes.
const NOERROR: u8 = 0;
const REFUSED: u8 = 5;

/// A process of the test's node namespace: its /proc/PID/ns/net is the
/// node's namespace by another path. Killed (by PID) when dropped.
struct NodeProcess(Child);

impl NodeProcess {
    fn start(node: &str) -> NodeProcess {
        // `ip netns exec` execs the command: the child is the sleep itself.
        NodeProcess(Command::new("ip").args(["netns", "exec", node, "sleep", "600"]).spawn().expect("sleep starts"))
    }

    fn namespace_path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The node's namespace mounted under a second name in /run/netns (what
/// `ip netns attach NAME PID` does); the node's Drop removes it by its tag.
fn node_namespace_alias(node: &Node) -> String {
    let alias = node.ns("nodealias");
    ok(&format!("touch /run/netns/{alias} && mount --bind /run/netns/{} /run/netns/{alias}", node.name));
    alias
}

/// The node namespace as the kernel names it (`readlink /proc/PID/ns/net`).
fn namespace_id(node: &Node) -> String {
    format!("net:[{}]", ok(&format!("stat -L -c %i /run/netns/{}", node.name)).trim())
}

/// The response code of a DNS query (A, `name`) sent over UDP from
/// namespace `ns` to `server`:53; None when nothing answers.
fn dns_rcode(ns: &str, server: &str, name: &str) -> Option<u8> {
    let script = "import socket,struct,sys\n\
        q=struct.pack(\">HHHHHH\",0x1234,0x0100,1,0,0,0)+b\"\".join(bytes([len(p)])+p.encode() for p in sys.argv[2].split(\".\"))+b\"\\0\"+struct.pack(\">HH\",1,1)\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.sendto(q,(sys.argv[1],53))\n\
        r=s.recv(4096)\nprint(r[3]&15)\n";
    let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", script, server, name]).output().expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// One hostile object and the refusal it must get.
struct Hostile {
    kind: &'static str,
    namespace: &'static str,
    name: &'static str,
    /// The object's spec, as flow YAML (`{T}` is the test's tag).
    spec: String,
    /// What the Ready condition's message must say.
    message: String,
}

impl Hostile {
    fn yaml(&self) -> String {
        format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: {}\nmetadata: {{name: {}, namespace: {}}}\nspec: {}\n",
            self.kind, self.name, self.namespace, self.spec
        )
    }
}

fn hostile(kind: &'static str, namespace: &'static str, name: &'static str, spec: String, message: String) -> Hostile {
    Hostile { kind, namespace, name, spec, message }
}

/// What a tenant (`tenant-a`, and `tenant-b` on its own attachment) tries in
/// every mode: the node's namespace by a process's path, by the agent's
/// own /proc/self and by a name, another namespace's attachment as a
/// sandbox and as a port mapping's target, and a privileged host port.
/// `node_name` is the `nodeName` field (Kubernetes mode).
fn hostile_in_every_mode(node: &Node, process: &NodeProcess, alias: &str, node_name: &str) -> Vec<Hostile> {
    let id = namespace_id(node);
    let own = "is the node's own network namespace";
    let att = |sandbox: String| format!("{{network: web, {node_name}sandbox: {sandbox}}}");
    let path = process.namespace_path();
    vec![
        hostile("Attachment", "tenant-a", "by-pid", att(format!("{{path: {path}}}")), format!("sandbox.path {path} {own} ({id})")),
        hostile(
            "Attachment",
            "tenant-a",
            "by-self",
            att("{path: /proc/self/ns/net}".into()),
            format!("sandbox.path /proc/self/ns/net {own} ({id})"),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "by-name",
            att(format!("{{netns: {alias}}}")),
            format!("sandbox.netns \"{alias}\" (/run/netns/{alias}) {own} ({id})"),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "sidecar",
            att("{attachment: tenant-b/b-pod}".into()),
            "sandbox.attachment \"tenant-b/b-pod\" reaches outside the attachment's namespace".into(),
        ),
        hostile(
            "PortMapping",
            "tenant-a",
            "steal",
            "{attachment: tenant-b/b-pod, ports: [{containerPort: 80, hostPort: 8090}]}".into(),
            "spec.attachment \"tenant-b/b-pod\" reaches outside the port mapping's namespace".into(),
        ),
        hostile(
            "PortMapping",
            "tenant-b",
            "low",
            "{attachment: b-pod, ports: [{containerPort: 80, hostPort: 80}]}".into(),
            "host port 80 is outside the ports network \"web\" lets its attachments publish".into(),
        ),
    ]
}

fn network(name: &str, spec: &str) -> String {
    format!("---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// tenant-b's healthy pod on `web`, with a published port.
fn healthy_tenant(node_name: &str) -> String {
    format!(
        "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: b-pod, namespace: tenant-b}}\nspec: {{network: web, {node_name}sandbox: {{netns: \"{{T}}bpod\"}}}}\n\
         ---\napiVersion: netlet.io/v1alpha1\nkind: PortMapping\nmetadata: {{name: b-web, namespace: tenant-b}}\nspec: {{attachment: b-pod, ports: [{{containerPort: 80, hostPort: 8080}}]}}\n"
    )
}

/// The node's links, addresses, routes and nft tables, and the sandboxes'.
fn node_snapshot(node: &Node, sandboxes: &[String]) -> String {
    harness::dataplane::snapshot(&node.name, sandboxes, CONVERGE, |cmd| String::from_utf8_lossy(&node.in_node(cmd).stdout).into_owned())
}

/// (status, reason, message) of the Ready condition in an object's status.
fn condition(status: &Value) -> (String, String, String) {
    let ready = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned().unwrap_or_default();
    let text = |k: &str| ready[k].as_str().unwrap_or("").to_string();
    (text("status"), text("reason"), text("message"))
}

/// Waits until every hostile object is refused with `Forbidden` and its
/// message; `status_of(kind, namespace, name)` reads its status.
fn wait_all_refused(hostiles: &[Hostile], tag: &str, status_of: impl Fn(&str, &str, &str) -> Value) {
    for h in hostiles {
        let mut seen = (String::new(), String::new(), String::new());
        wait_until(&format!("{} {}/{} refused", h.kind, h.namespace, h.name), CONVERGE, || {
            seen = condition(&status_of(h.kind, h.namespace, h.name));
            seen.0 == "False"
        });
        assert_eq!(seen.1, "Forbidden", "{}/{}: {}", h.namespace, h.name, seen.2);
        let message = h.message.replace("{T}", tag);
        assert!(seen.2.contains(&message), "{}/{}: {:?} does not say {message:?}", h.namespace, h.name, seen.2);
    }
}

/// The embedded DNS answers the network's own container, and refuses a
/// remote host (`remote`, routed to the node at `via`) and the node.
fn dns_serves_only_its_network(node: &Node, sandbox: &str, remote: &str, via: &str) {
    assert_eq!(dns_rcode(sandbox, GATEWAY, "b-pod"), Some(NOERROR), "the network's own container is answered");
    ok(&format!("ip -n {remote} route replace {SUBNET} via {via}"));
    for name in ["b-pod", "example.com"] {
        assert_eq!(dns_rcode(remote, GATEWAY, name), Some(REFUSED), "{name} asked by a remote host on the underlay");
        assert_eq!(dns_rcode(&node.name, GATEWAY, name), Some(REFUSED), "{name} asked by the node");
    }
}

#[test]
fn standalone_a_hostile_tenant_is_refused_and_the_node_is_unchanged() {
    let mut node = Node::new();
    let (process, alias) = (NodeProcess::start(&node.name), node_namespace_alias(&node));
    // Standalone allows every sandbox kind (the operator is root); the
    // network's own hostPorts limit what may be published.
    node.write(
        "a-healthy.yaml",
        &(network("web", &format!("{{ipam: {{config: [{{subnet: {SUBNET}}}]}}, hostPorts: {{min: 8000, max: 8100}}}}"))
            + &healthy_tenant("")),
    );
    node.spawn(&["--metrics-addr", "off"]);
    let sandbox = node.ns("bpod");
    for (kind, name) in [("attachments", "b-pod"), ("portmappings", "b-web")] {
        wait_until(&format!("{name} Ready"), CONVERGE, || node.ready(kind, name).0 == "True");
    }
    let remote = node.add_remote("remote", "192.168.77.1", "192.168.77.2");
    let before = node_snapshot(&node, std::slice::from_ref(&sandbox));

    let mut hostiles = hostile_in_every_mode(&node, &process, &alias, "");
    hostiles.push(hostile(
        "PortMapping",
        "tenant-b",
        "high",
        "{attachment: b-pod, ports: [{containerPort: 81, hostPort: 9000}]}".into(),
        "host port 9000 is outside the ports network \"web\" lets its attachments publish (8000-8100, spec.hostPorts)".into(),
    ));
    node.write("b-hostile.yaml", &hostiles.iter().map(Hostile::yaml).collect::<String>());
    let plural = |kind: &str| format!("{}s", kind.to_ascii_lowercase());
    wait_all_refused(&hostiles, &node.tag, |kind, _, name| node.status(&plural(kind), name));
    harness::dataplane::assert_unchanged(&before, &node_snapshot(&node, std::slice::from_ref(&sandbox)), "hostile objects");
    let log = node.agent_log(0);
    for h in &hostiles {
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(&format!("{}/{}: Forbidden", h.namespace, h.name))),
            "no log line for {}",
            h.name
        );
    }
    assert!(
        node.ready("attachments", "b-pod").0 == "True" && node.ready("portmappings", "b-web").0 == "True",
        "the healthy tenant stays Ready"
    );
    dns_serves_only_its_network(&node, &sandbox, &remote, "192.168.77.1");
}

#[test]
fn kubernetes_mode_a_hostile_tenant_is_refused_with_events_and_the_node_is_unchanged() {
    let mut k = KubeCluster::start(&["n1"]);
    k.start_agent(0);
    let node = &k.nodes[0];
    let (process, alias) = (NodeProcess::start(&node.name), node_namespace_alias(node));
    let on_n1 = "nodeName: n1, ";
    let mut yaml = String::new();
    for (namespace, labels) in [("tenant-a", "{tenants: \"yes\"}"), ("tenant-b", "{tenants: \"yes\"}"), ("outsider", "{}")] {
        yaml += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {labels}}}\n");
    }
    // `web` grants netns and path sandboxes to labelled namespaces; `strict`
    // and `hostnet` keep the Kubernetes-mode defaults.
    yaml += &network(
        "web",
        &format!("{{ipam: {{config: [{{subnet: {SUBNET}}}]}}, allowedSandboxes: [netns, path, attachment], namespaceSelector: {{matchLabels: {{tenants: \"yes\"}}}}}}"),
    );
    yaml += &network("strict", "{ipam: {config: [{subnet: 10.89.0.0/24}]}}");
    yaml += &network("hostnet", "{driver: host}");
    yaml += &healthy_tenant(on_n1);
    k.apply(&yaml);
    k.wait_ready("attachment", "tenant-b/b-pod", CONVERGE);
    k.wait_ready("portmapping", "tenant-b/b-web", CONVERGE);
    let sandbox = node.ns("bpod");
    // A pod's namespace made by the container runtime (containerd's cni-<uuid>).
    let pod_namespace = node.ns("cnipod");
    ok(&format!("ip netns add {pod_namespace}"));
    let sandboxes = [sandbox.clone(), pod_namespace];
    let before = node_snapshot(node, &sandboxes);

    let mut hostiles = hostile_in_every_mode(node, &process, &alias, on_n1);
    let att = |network: &str, sandbox: &str| format!("{{network: {network}, {on_n1}sandbox: {sandbox}}}");
    hostiles.extend([
        hostile(
            "Attachment",
            "tenant-a",
            "intruder",
            att("web", "{netns: \"{T}bpod\"}"),
            "sandbox.netns \"{T}bpod\" is the sandbox of an attachment of namespace tenant-b".into(),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "into-a-pod",
            att("web", "{netns: \"{T}cnipod\"}"),
            "sandbox.netns \"{T}cnipod\" is a namespace on the node that netlet did not make".into(),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "strict-netns",
            att("strict", "{netns: \"{T}mine\"}"),
            "network \"strict\" does not allow netns sandboxes (spec.allowedSandboxes: [pod, attachment], the Kubernetes-mode default)"
                .into(),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "strict-path",
            att("strict", "{path: \"/run/netns/{T}bpod\"}"),
            "network \"strict\" does not allow path sandboxes".into(),
        ),
        hostile(
            "Attachment",
            "tenant-a",
            "on-host",
            att("hostnet", "{host: true}"),
            "network \"hostnet\" does not allow host sandboxes".into(),
        ),
        hostile(
            "Attachment",
            "outsider",
            "outside",
            att("web", "{netns: \"{T}out\"}"),
            "network \"web\" does not admit namespace outsider: its labels do not match spec.namespaceSelector (tenants=yes)".into(),
        ),
    ]);
    k.apply(&hostiles.iter().map(Hostile::yaml).collect::<String>());
    wait_all_refused(&hostiles, &node.tag, |kind, namespace, name| k.get(kind, &format!("{namespace}/{name}"))["status"].clone());
    // An Event for each, in its own namespace.
    for h in &hostiles {
        wait_until(&format!("an Event for {}/{}", h.namespace, h.name), CONVERGE, || {
            let events: Value = serde_json::from_str(&k.kubectl_ok(&format!("get events -n {} -o json", h.namespace))).unwrap();
            events["items"].as_array().unwrap().iter().any(|e| e["involvedObject"]["name"] == h.name && e["reason"] == "Forbidden")
        });
    }
    harness::dataplane::assert_unchanged(&before, &node_snapshot(node, &sandboxes), "hostile objects");
    assert!(!netns_exists(&node.ns("mine")) && !netns_exists(&node.ns("out")), "no sandbox made for a refused attachment");
    assert_eq!(k.ready("attachment", "tenant-b/b-pod").0, "True", "the healthy tenant stays Ready");
    // The control plane sits on the node's underlay: a remote host.
    dns_serves_only_its_network(node, &sandbox, &k.cp, &harness::kube::node_address(0));
}
