//! The ruleset's text, rendered from a [`FirewallPlan`]: fixed chains,
//! and the sets and maps that carry everything the plan varies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use super::{FirewallError, Ruleset, TABLE};
use crate::plan::desired::FirewallPlan;

/// One set's or map's declared type and elements, as rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SetContent {
    /// `ifname . ifname`; for a map `key type : value type`.
    pub(super) ty: String,
    pub(super) interval: bool,
    pub(super) elements: BTreeSet<String>,
}

/// Builds one table's text, its skeleton and its elements together.
struct TableWriter {
    family: &'static str,
    text: String,
    skeleton: String,
    sets: BTreeMap<(&'static str, &'static str), SetContent>,
}

impl TableWriter {
    fn new(family: &'static str) -> Self {
        let head = format!("table {family} {TABLE} {{\n");
        TableWriter { family, text: head.clone(), skeleton: head, sets: BTreeMap::new() }
    }

    fn push_str(&mut self, s: &str) {
        self.text.push_str(s);
        self.skeleton.push_str(s);
    }

    /// `set|map NAME { type ...; [flags ...;] [elements = {...}] }`.
    fn set(&mut self, kind: &str, name: &'static str, ty: &str, flags: &[&str], elems: BTreeSet<String>) {
        let mut head = format!("\t{kind} {name} {{\n\t\ttype {ty}\n");
        for f in flags {
            let _ = writeln!(head, "\t\t{f}");
        }
        self.text.push_str(&head);
        self.skeleton.push_str(&head);
        if !elems.is_empty() {
            let body: Vec<&str> = elems.iter().map(String::as_str).collect();
            let _ = writeln!(self.text, "\t\telements = {{ {} }}", body.join(",\n\t\t\t     "));
        }
        self.push_str("\t}\n");
        let content = SetContent { ty: ty.to_string(), interval: flags.contains(&"flags interval"), elements: elems };
        self.sets.insert((self.family, name), content);
    }
}

// The fixed chains of `table inet netlet`. Sets they use:
//   bridges, internal_bridges, icc_off_bridges : ifname
//   same_bridge        : ifname . ifname ("brX" . "brX" for every bridge)
//   masq_v4/v6         : subnets of masquerading networks
//   subnet_bridge_v4/6 : subnet . its bridge
//   ports_v4/v6        : l4proto . port -> container addr . port (any host address)
//   ports_v4_ip/v6_ip  : host addr . l4proto . port -> container addr . port
const INET_CHAINS: &str = "\
	chain guard {
		type filter hook prerouting priority raw; policy accept;
		iifname @bridges ip daddr 127.0.0.0/8 drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname @internal_bridges iifname . oifname != @same_bridge drop
		oifname @internal_bridges iifname . oifname != @same_bridge drop
		ct status dnat accept
		iifname @bridges oifname @bridges iifname . oifname != @same_bridge drop
		iifname @icc_off_bridges iifname . oifname @same_bridge drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 127.0.0.0/8 return
		dnat ip to ip daddr . meta l4proto . th dport map @ports_v4_ip
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_v6_ip
		fib daddr type local dnat ip to meta l4proto . th dport map @ports_v4
		fib daddr type local dnat ip6 to meta l4proto . th dport map @ports_v6
	}
	chain output {
		type nat hook output priority -100; policy accept;
		ip6 daddr ::1 return
		dnat ip to ip daddr . meta l4proto . th dport map @ports_v4_ip
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_v6_ip
		fib daddr type local dnat ip to meta l4proto . th dport map @ports_v4
		fib daddr type local dnat ip6 to meta l4proto . th dport map @ports_v6
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname @bridges ip saddr 127.0.0.0/8 masquerade
		ct status dnat ip saddr . oifname @subnet_bridge_v4 masquerade
		ct status dnat ip6 saddr . oifname @subnet_bridge_v6 masquerade
		ip saddr . oifname @subnet_bridge_v4 return
		ip6 saddr . oifname @subnet_bridge_v6 return
		ip saddr @masq_v4 masquerade
		ip6 saddr @masq_v6 masquerade
	}
}
";
// What each rule is for:
// guard: bridges have route_localnet=1 (for ports published on 127.0.0.1);
//   without this a container could reach the node's loopback services.
// forward: internal bridges talk only to themselves; DNATed (published)
//   traffic is allowed otherwise; different netlet bridges are isolated;
//   icc: false drops bridge -> same bridge (seen here with br_netfilter).
// prerouting: a 127/8 destination from outside is never DNATed (it would
//   turn a martian into a valid packet); host-IP mappings first, then
//   wildcard mappings for packets addressed to this node.
// output: the same for connections from the node itself (incl. 127.0.0.1);
//   ::1 is left to the agent's userland relay (crate::proxy): a packet
//   from ::1 cannot be DNATed out of the node.
// postrouting: 127/8 sources going to a container (route_localnet) and
//   hairpin (DNATed from a bridge's subnet back out that bridge) are
//   masqueraded; a subnet leaving through another interface is masqueraded
//   when its network asks for it. A remote client of a published port keeps
//   its address (it is in no subnet).

// `table bridge netlet`, for icc: false without br_netfilter: IP frames
// bridged between two ports of such a bridge are dropped, by port (host
// veth names) and, for ports not yet known, by addresses. Per family:
//   ether type ip iifname @icc_off_ports oifname @icc_off_ports drop
//   ip saddr . ip daddr @icc_off_v4 drop
// (and the same for ip6). A family that br_netfilter hands to the inet
// hooks is left to the inet forward chain instead: there, a neighbour's
// published port is reached by bridging after DNAT, which only the inet
// chain can tell apart (`ct` is not available in the bridge family here).

/// Whether bridged IPv4 / IPv6 traffic also traverses the inet hooks
/// (br_netfilter's bridge-nf-call-iptables / -ip6tables, per namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrNetfilter {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl BrNetfilter {
    /// Reads the sysctls of the current namespace; absent means off.
    pub fn detect() -> Self {
        let on = |key: &str| std::fs::read_to_string(format!("/proc/sys/net/bridge/{key}")).is_ok_and(|v| v.trim() == "1");
        BrNetfilter { ipv4: on("bridge-nf-call-iptables"), ipv6: on("bridge-nf-call-ip6tables") }
    }
}

/// Interface names we are willing to quote into a script.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

fn ifname(name: &str) -> Result<String, FirewallError> {
    if valid_ifname(name) {
        Ok(format!("\"{name}\""))
    } else {
        Err(FirewallError::Invalid(format!("interface name {name:?} is not a valid Linux interface name")))
    }
}

/// A subnet as nft lists it: host bits cleared, a host route as a bare address.
fn net(n: &IpNet) -> String {
    let n = n.trunc();
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// Renders the plan. Same plan, byte-identical text, whatever the order of
/// its vectors. Port mappings whose host and container address families
/// differ are skipped (no cross-family NAT); on a duplicate key the first
/// mapping in sorted order wins.
pub fn render(plan: &FirewallPlan, brnf: BrNetfilter) -> Result<Ruleset, FirewallError> {
    if plan.networks.is_empty() && plan.ports.is_empty() {
        return Ok(Ruleset::default());
    }
    let mut bridges = BTreeSet::new();
    let mut internal = BTreeSet::new();
    let mut icc_off = BTreeSet::new();
    let mut same = BTreeSet::new();
    let (mut masq4, mut masq6) = (BTreeSet::new(), BTreeSet::new());
    let (mut own4, mut own6) = (BTreeSet::new(), BTreeSet::new());
    let (mut icc4, mut icc6) = (BTreeSet::new(), BTreeSet::new());
    let mut icc_ports = BTreeSet::new();
    for n in &plan.networks {
        let br = ifname(&n.bridge)?;
        // An overlay's VXLAN device is part of its network: routed between
        // the two is staying on it.
        let devices = match &n.overlay_device {
            Some(vx) => vec![br.clone(), ifname(vx)?],
            None => vec![br.clone()],
        };
        for a in &devices {
            bridges.insert(a.clone());
            same.extend(devices.iter().map(|b| format!("{a} . {b}")));
            if n.internal {
                internal.insert(a.clone());
            }
            if !n.icc {
                icc_off.insert(a.clone());
            }
        }
        if !n.icc {
            for port in plan.bridge_ports.get(&n.bridge).into_iter().flatten() {
                icc_ports.insert(ifname(port)?);
            }
        }
        // Overlapping subnets of one network would be refused by nft.
        for s in &IpNet::aggregate(&n.subnets) {
            let v4 = matches!(s, IpNet::V4(_));
            if n.masquerade && !n.internal {
                if v4 { &mut masq4 } else { &mut masq6 }.insert(s.trunc());
            }
            let s = net(s);
            let own = if v4 { &mut own4 } else { &mut own6 };
            own.extend(devices.iter().map(|d| format!("{s} . {d}")));
            if !n.icc {
                if v4 { &mut icc4 } else { &mut icc6 }.insert(format!("{s} . {s}"));
            }
        }
    }
    // nft lists adjacent intervals merged: render them merged (and without
    // overlaps, which nft would refuse) so the listing compares equal.
    let [masq4, masq6] = [masq4, masq6].map(|m| {
        let nets: Vec<IpNet> = m.into_iter().collect();
        IpNet::aggregate(&nets).iter().map(net).collect::<BTreeSet<_>>()
    });
    // Key -> value, first (in sorted order) wins on a duplicate key.
    let mut maps: [BTreeMap<String, String>; 4] = Default::default();
    let mut ports = plan.ports.clone();
    ports.sort();
    for p in &ports {
        let proto = p.protocol.as_str();
        let value = format!("{} . {}", p.container_ip, p.container_port);
        let v4 = p.container_ip.is_ipv4();
        let (slot, key) = match p.host_ip {
            None => (if v4 { 0 } else { 2 }, format!("{proto} . {}", p.host_port)),
            Some(h) if h.is_ipv4() != v4 => continue,
            Some(h) if h.is_unspecified() => (if v4 { 0 } else { 2 }, format!("{proto} . {}", p.host_port)),
            Some(h) => (if v4 { 1 } else { 3 }, format!("{h} . {proto} . {}", p.host_port)),
        };
        maps[slot].entry(key).or_insert(value);
    }
    let [any4, ip4, any6, ip6] = maps.map(|m| m.into_iter().map(|(k, v)| format!("{k} : {v}")).collect::<BTreeSet<_>>());

    let mut t = TableWriter::new("inet");
    let none: &[&str] = &[];
    let interval: &[&str] = &["flags interval"];
    let icc_off_present = !icc_off.is_empty();
    t.set("set", "bridges", "ifname", none, bridges);
    t.set("set", "internal_bridges", "ifname", none, internal);
    t.set("set", "icc_off_bridges", "ifname", none, icc_off);
    // "br1" . "br1"
    t.set("set", "same_bridge", "ifname . ifname", none, same);
    // 172.25.0.0/16
    t.set("set", "masq_v4", "ipv4_addr", interval, masq4);
    t.set("set", "masq_v6", "ipv6_addr", interval, masq6);
    // 172.25.0.0/16 . "br1"
    t.set("set", "subnet_bridge_v4", "ipv4_addr . ifname", interval, own4);
    t.set("set", "subnet_bridge_v6", "ipv6_addr . ifname", interval, own6);
    // tcp . 8080 : 172.25.0.2 . 80
    let any = "inet_proto . inet_service";
    t.set("map", "ports_v4", &format!("{any} : ipv4_addr . inet_service"), none, any4);
    t.set("map", "ports_v6", &format!("{any} : ipv6_addr . inet_service"), none, any6);
    // 127.0.0.1 . tcp . 8080 : 172.25.0.2 . 80
    let ty4 = "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service";
    let ty6 = "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service";
    t.set("map", "ports_v4_ip", ty4, none, ip4);
    t.set("map", "ports_v6_ip", ty6, none, ip6);
    t.push_str(INET_CHAINS);

    let families = [("ip", "v4", brnf.ipv4), ("ip6", "v6", brnf.ipv6)];
    let bridge_needed = families.iter().any(|(_, _, brnf)| !brnf);
    let bridge = (icc_off_present && bridge_needed).then(|| {
        let mut b = TableWriter::new("bridge");
        // "veth1a2b3c"
        b.set("set", "icc_off_ports", "ifname", none, icc_ports);
        // 172.25.0.0/16 . 172.25.0.0/16
        b.set("set", "icc_off_v4", "ipv4_addr . ipv4_addr", interval, icc4);
        b.set("set", "icc_off_v6", "ipv6_addr . ipv6_addr", interval, icc6);
        b.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
        for (fam, v, _) in families.iter().filter(|f| !f.2) {
            b.push_str(&format!("\t\tether type {fam} iifname @icc_off_ports oifname @icc_off_ports drop\n"));
            b.push_str(&format!("\t\t{fam} saddr . {fam} daddr @icc_off_{v} drop\n"));
        }
        b.push_str("\t}\n}\n");
        b
    });
    let TableWriter { text: inet, mut skeleton, mut sets, .. } = t;
    let bridge = bridge.map(|b| {
        skeleton.push_str(&b.skeleton);
        sets.extend(b.sets);
        b.text
    });
    Ok(Ruleset { inet: Some(inet), bridge, skeleton, sets })
}
