//! Fuzz-style robustness: thousands of mutated manifests through the loader
//! and the plan, none may panic. Deterministic (seeded), so a failure
//! reproduces; `NETLET_FUZZ_ITERATIONS` runs it longer.
//!
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do
//! not have; this covers the same entry points with structure-aware
//! mutations of a valid corpus.)

use std::path::Path;

use crate::plan::{plan, Allocations, NodeFacts};
use crate::source::manifests;

const CORPUS: &str = r#"
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: isolated_nw}
spec:
  driver: bridge
  bridge: {name: docker1, icc: false, ipMasquerade: true, hostBindingIPv4: 127.0.0.1}
  enableIPv6: true
  ipam:
    config:
    - {subnet: 172.25.0.0/16, gateway: 172.25.0.1, ipRange: 172.25.5.0/24, auxAddresses: {r: 172.25.1.5}}
    - {subnet: "fd00::/64"}
  options: {com.docker.network.driver.mtu: "1400"}
---
apiVersion: netlet.io/v1alpha1
kind: Network
metadata: {name: ov}
spec: {driver: overlay, overlay: {vni: 7, peers: [{node: n, address: 10.0.0.1}]}, ipam: {config: [{subnet: 10.9.0.0/24}]}}
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: c3, namespace: ns1}
spec:
  network: isolated_nw
  sandbox: {netns: c3}
  interface: eth0
  ipv4Address: 172.25.3.3
  ipv6Address: "fd00::3"
  macAddress: "02:42:ac:19:03:03"
  aliases: [app1]
  hostname: zxr
  dns: {nameservers: [1.1.1.1], searches: [x.y], options: [ndots:1]}
  extraHosts: ["www.zxr.com:1.1.1.1"]
  defaultRoute: true
  expose: [{port: 80, protocol: tcp}]
---
apiVersion: netlet.io/v1alpha1
kind: Attachment
metadata: {name: c4, namespace: ns1}
spec: {network: ov, nodeName: n, sandbox: {attachment: c3}}
---
apiVersion: netlet.io/v1alpha1
kind: PortMapping
metadata: {name: web, namespace: ns1}
spec:
  attachment: c3
  publishAll: true
  ports: [{containerPort: 80, containerPortEnd: 82, protocol: udp, hostPort: 8080, hostPortEnd: 8082, hostIP: 0.0.0.0}]
"#;

struct Rng(u64);
impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "null",
    "~",
    "-1",
    "0",
    "65536",
    "4294967296",
    "\"\"",
    "[]",
    "{}",
    "/",
    "::",
    "0.0.0.0/0",
    "::/0",
    "255.255.255.255",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ": ",
    "\n- ",
    "---\n",
    "&a",
    "*a",
    "!!binary",
    "\t",
    "\u{0}",
    "é",
    "eth0",
    "fe80::1%eth0",
];

fn mutate(rng: &mut Rng, input: &str) -> String {
    let mut s: Vec<char> = input.chars().collect();
    for _ in 0..1 + rng.next(6) {
        let at = rng.next(s.len() + 1);
        match rng.next(5) {
            0 => {
                s.truncate(at);
            }
            1 if at < s.len() => {
                s.remove(at);
            }
            2 => {
                let t = TOKENS[rng.next(TOKENS.len())];
                for (i, c) in t.chars().enumerate() {
                    s.insert(at + i, c);
                }
            }
            3 if at < s.len() => {
                // Replace a value-ish span with another token.
                let end = (at + 1 + rng.next(12)).min(s.len());
                let t: Vec<char> = TOKENS[rng.next(TOKENS.len())].chars().collect();
                s.splice(at..end, t);
            }
            _ => {
                let c = char::from_u32(rng.next(0x250) as u32).unwrap_or('?');
                s.insert(at, c);
            }
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_manifests_never_panic_the_loader_or_the_plan() {
    let iterations: usize = std::env::var("NETLET_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let facts = NodeFacts { node_name: "n".into(), ephemeral_ports: (32768, 60999), ..Default::default() };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut parsed_objects = 0;
    for _ in 0..iterations {
        let text = mutate(&mut rng, CORPUS);
        let loaded = manifests::parse(Path::new("fuzz.yaml"), &text);
        parsed_objects += loaded.objects.len();
        let p = plan(&loaded.objects, &facts, &Allocations::default());
        // Replanning from the plan's own allocations is stable.
        let again = plan(&loaded.objects, &facts, &p.allocations);
        assert_eq!(again.allocations, p.allocations, "allocations must be a fixed point for:\n{text}");
    }
    assert!(parsed_objects > iterations, "the mutations should still leave many objects parseable");
}
