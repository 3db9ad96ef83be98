//! Embedded DNS with real queries from inside sandboxes: Docker's classic
//! network-scoped alias scenario, live changes, upstream forwarding to a
//! stub resolver in a namespace of the test's own.

mod harness;

use std::time::Duration;

use harness::*;

const SCENARIO: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: isolated_nw}
spec: {ipam: {config: [{subnet: 172.25.0.0/16}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: local_alias}
spec: {ipam: {config: [{subnet: 172.26.0.0/16}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container2}
spec: {network: isolated_nw, sandbox: {netns: "{T}c2"}, aliases: [app1]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container2-la}
spec: {network: local_alias, sandbox: {netns: "{T}c2"}, aliases: [app3]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container3}
spec: {network: local_alias, sandbox: {netns: "{T}c3"}, aliases: [app2]}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: container4}
spec: {network: isolated_nw, sandbox: {netns: "{T}c4"}, aliases: [app1]}
"#;

#[test]
fn names_resolve_only_on_shared_networks_and_follow_changes() {
    let mut node = Node::new();
    node.write("s.yaml", SCENARIO);
    node.spawn(&["--metrics-addr", "off"]);
    let (c2, c3, c4) = (node.ns("c2"), node.ns("c3"), node.ns("c4"));
    wait_until("container4", Duration::from_secs(10), || !addresses(&c4, "eth0").is_empty());
    wait_until("the resolver", Duration::from_secs(10), || !resolve(&c2, "container4").is_empty());

    // resolv.conf points at the embedded server on the first network's gateway.
    let resolv = std::fs::read_to_string(format!("/etc/netns/{c2}/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 172.25.0.1"), "{resolv}");

    // app1 is on isolated_nw: two containers share it; container3 (only on
    // local_alias) cannot see it.
    let mut app1 = resolve(&c2, "app1");
    app1.sort();
    assert_eq!(app1, ["172.25.0.2", "172.25.0.3"]);
    assert!(resolve(&c3, "app1").is_empty(), "app1 is not visible from local_alias");
    assert_eq!(resolve(&c2, "app2"), ["172.26.0.3"], "container2 is on local_alias too");
    assert_eq!(resolve(&c3, "app3"), ["172.26.0.2"]);
    assert_eq!(resolve(&c2, "container3"), ["172.26.0.3"]);
    assert_eq!(resolve(&c4, c3.as_str()), Vec::<String>::new(), "netns names are network-scoped too");
    assert_eq!(resolve(&c3, c2.as_str()), ["172.26.0.2"], "netns name of container2 from local_alias");

    // Removal and addition while running, live within a second or so.
    let without_c4 = SCENARIO.split("---").filter(|d| !d.contains("name: container4}")).collect::<Vec<_>>().join("---");
    node.write("s.yaml", &without_c4);
    wait_until("app1 to lose container4", Duration::from_secs(5), || resolve(&c2, "app1") == ["172.25.0.2"]);
    node.write("s.yaml", SCENARIO);
    wait_until("app1 to get container4 back", Duration::from_secs(5), || resolve(&c2, "app1").len() == 2);
}

#[test]
fn unknown_names_go_upstream_and_a_dead_upstream_fails_fast() {
    let mut node = Node::new();
    // A stub resolver on a remote host: answers every A query with 192.0.2.99.
    let remote = node.add_remote("dns", "10.250.0.1", "10.250.0.2");
    let stub = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',53))\nwhile True:\n  q,a=s.recvfrom(512)\n  end=12\n  while q[end]!=0: end+=q[end]+1\n  qd=q[12:end+5]\n  r=q[:2]+b'\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00'+qd+b'\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x05\\x00\\x04\\xc0\\x00\\x02\\x63'\n  s.sendto(r,a)\n";
    let mut stub_process = std::process::Command::new("ip").args(["netns", "exec", &remote, "python3", "-c", stub]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    node.write(
        "s.yaml",
        r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: n}
spec: {ipam: {config: [{subnet: 10.81.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: asks}
spec: {network: n, sandbox: {netns: "{T}asks"}, dns: {nameservers: [10.250.0.2]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: stranded}
spec: {network: n, sandbox: {netns: "{T}stranded"}, dns: {nameservers: [10.250.0.77]}}
"#,
    );
    node.spawn(&["--metrics-addr", "127.0.0.1:9464"]);
    let (asks, stranded) = (node.ns("asks"), node.ns("stranded"));
    wait_until("local names", Duration::from_secs(10), || resolve(&asks, "stranded") == ["10.81.0.3"]);
    assert_eq!(resolve(&asks, "www.example.org"), ["192.0.2.99"], "forwarded to the attachment's nameserver");
    // A dead upstream: SERVFAIL quickly, no hang.
    let started = std::time::Instant::now();
    assert!(resolve(&stranded, "www.example.org").is_empty());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    // Every outcome is counted on /metrics.
    let metrics = String::from_utf8_lossy(
        &node
            .in_node("python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())\"")
            .stdout,
    )
    .into_owned();
    let count = |result: &str| -> u64 {
        let prefix = format!("netlet_dns_queries_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(count("local") >= 1 && count("forwarded") >= 1 && count("failed") >= 1, "{metrics}");
    let _ = stub_process.kill();
    let _ = stub_process.wait();
}

/// `tc=<truncated> an=<answer count>` for an A query of `name` sent to
/// `server` from `ns`: over UDP without EDNS0, over UDP advertising 4096
/// bytes, and over TCP.
fn raw_query(ns: &str, server: &str, name: &str) -> String {
    let script = format!(
        r#"import socket,struct
def q(edns):
    h=struct.pack('>HHHHHH',7,0x0100,1,0,0,1 if edns else 0)
    b=b''.join(bytes([len(p)])+p.encode() for p in '{name}'.split('.'))+b'\0'+struct.pack('>HH',1,1)
    return h+b+(b'\0'+struct.pack('>HHIH',41,edns,0,0) if edns else b'')
def show(r): return 'tc=%d an=%d' % ((r[2]>>1)&1, struct.unpack('>H',r[6:8])[0])
out=[]
for edns in (0,4096):
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q(edns),('{server}',53)); out.append(show(s.recvfrom(65535)[0]))
t=socket.create_connection(('{server}',53),timeout=3); m=q(0); t.sendall(struct.pack('>H',len(m))+m)
n=struct.unpack('>H',t.recv(2))[0]; r=b''
while len(r)<n: r+=t.recv(n-len(r))
out.append(show(r)); print(' / '.join(out))
"#
    );
    String::from_utf8_lossy(&sh(&format!("ip netns exec {ns} python3 -c \"{}\"", script.replace('"', "\\\""))).stdout).trim().to_string()
}

#[test]
fn an_alias_of_fifty_containers_resolves_completely_over_tcp() {
    let mut node = Node::new();
    let mut yaml = String::from(
        "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: wide}\nspec: {ipam: {config: [{subnet: 10.82.0.0/24}]}}\n",
    );
    for i in 1..=50 {
        yaml.push_str(&format!(
            "---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {{name: m{i}}}\nspec: {{network: wide, sandbox: {{netns: \"{{T}}m{i}\"}}, aliases: [many]}}\n"
        ));
    }
    yaml.push_str("---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: asker}\nspec: {network: wide, sandbox: {netns: \"{T}asker\"}}\n");
    node.write("s.yaml", &yaml);
    node.spawn(&["--metrics-addr", "off"]);
    let asker = node.ns("asker");
    wait_until("the resolver", Duration::from_secs(30), || resolve(&asker, "m1") == ["10.82.0.2"]);
    wait_until("all fifty", Duration::from_secs(30), || node.items("attachments").iter().all(|a| ready_in(&a["status"]).0 == "True"));

    // 50 A records do not fit 512 bytes: truncated without EDNS0, whole
    // with a 4096-byte EDNS0 buffer, whole over TCP.
    assert_eq!(raw_query(&asker, "10.82.0.1", "many"), "tc=1 an=0 / tc=0 an=50 / tc=0 an=50");
    // The C library retries over TCP on its own and sees every address.
    let mut all = resolve(&asker, "many");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 50, "{all:?}");
}
