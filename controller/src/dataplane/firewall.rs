//! netlet's nftables ruleset: rendered from a [`FirewallPlan`], applied as
//! ONE atomic `nft -f -` transaction, and checked for drift without any
//! mutation.
//!
//! Everything lives in `table inet netlet`, plus `table bridge netlet` while
//! some network has `icc: false` and br_netfilter does not already hand
//! bridged traffic to the inet hooks; nothing outside them is touched.
//! The rules are fixed text: what varies with the plan is only set and map
//! elements, so the per-packet cost does not grow with the number of
//! networks or port mappings.
//!
//! An empty plan (no networks, no ports) means no tables at all: [`render`]
//! yields nothing and [`NftFirewall::sync`] deletes them.
//!
//! Replacement is `add table` + `delete table` + the full table in one
//! transaction, so the table is never momentarily absent or half-built.
//! A change of elements only (a port published, a container joining an
//! `icc: false` bridge) is one small transaction of element deletions and
//! additions instead, sent over netlink by [`super::set_elements`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::set_elements::{ElementSocket, SetChange};
use crate::plan::desired::FirewallPlan;

/// Name of netlet's tables (`inet`, and `bridge` for icc: false).
pub const TABLE: &str = "netlet";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall plan: {0}")]
    Invalid(String),
    #[error("cannot run {program}: {source}{}", install_hint(program, source))]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Another firewall's tool (iptables, firewall-cmd) refused netlet's rules.
    #[error("{program} failed: {stderr}")]
    Foreign { program: String, stderr: String },
    #[error("nft {action} failed: {}{}", first_error(.stderr), at_line(*.line_number, .line.as_deref()))]
    Nft {
        action: &'static str,
        /// nft's complete stderr.
        stderr: String,
        /// 1-based line of our script nft complained about, and its text.
        line_number: Option<usize>,
        line: Option<String>,
    },
}

/// ` (install the nftables package)` when the program is missing.
fn install_hint(program: &str, error: &io::Error) -> String {
    match crate::host_tools::package_of(program) {
        Some(package) if error.kind() == io::ErrorKind::NotFound => format!(" (install the {package} package)"),
        _ => String::new(),
    }
}

fn first_error(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.find("Error:").map(|i| l[i..].trim()))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no message)")
}

fn at_line(n: Option<usize>, line: Option<&str>) -> String {
    match (n, line) {
        (Some(n), Some(l)) => format!(" (script line {n}: `{}`)", l.trim()),
        (Some(n), None) => format!(" (script line {n})"),
        _ => String::new(),
    }
}

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The kernel already matched: nothing was written.
    InSync,
    /// One nft transaction was applied.
    Applied,
}

impl SyncOutcome {
    pub fn mutated(self) -> bool {
        self == SyncOutcome::Applied
    }
}

/// The rendered tables; `None` means the table must not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub inet: Option<String>,
    pub bridge: Option<String>,
    /// The tables with every set and map left empty: two rulesets with the
    /// same skeleton differ only in elements.
    skeleton: String,
    /// Every set and map by (family, name).
    sets: BTreeMap<(&'static str, &'static str), SetContent>,
}

/// One set's or map's declared type and elements, as rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SetContent {
    /// `ifname . ifname`; for a map `key type : value type`.
    ty: String,
    interval: bool,
    elements: BTreeSet<String>,
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

/// What turns `from`'s elements into `to`'s (same skeleton), set by set.
fn element_changes<'a>(from: &'a Ruleset, to: &'a Ruleset) -> Vec<SetChange<'a>> {
    static NONE: BTreeSet<String> = BTreeSet::new();
    let mut changes = Vec::new();
    for (&(family, set), want) in &to.sets {
        let have = from.sets.get(&(family, set)).map_or(&NONE, |s| &s.elements);
        // A map element is deleted by its key alone ("k : v" -> "k").
        let gone: Vec<&str> = have.difference(&want.elements).map(|e| e.split(" : ").next().unwrap_or(e)).collect();
        let new: Vec<&str> = want.elements.difference(have).map(String::as_str).collect();
        if !gone.is_empty() || !new.is_empty() {
            changes.push(SetChange { family, set, ty: &want.ty, interval: want.interval, gone, new });
        }
    }
    changes
}

/// The same changes as an nft script, deletions first so a map key whose
/// value changed is replaced.
fn element_script(changes: &[SetChange<'_>]) -> String {
    let mut deletes = String::new();
    let mut adds = String::new();
    for SetChange { family, set, gone, new, .. } in changes {
        if !gone.is_empty() {
            let _ = writeln!(deletes, "delete element {family} {TABLE} {set} {{ {} }}", gone.join(", "));
        }
        if !new.is_empty() {
            let _ = writeln!(adds, "add element {family} {TABLE} {set} {{ {} }}", new.join(", "));
        }
    }
    deletes + &adds
}

impl Ruleset {
    /// The tables as `nft list` would show them (before normalization).
    pub fn tables(&self) -> String {
        [&self.inet, &self.bridge].into_iter().flatten().map(String::as_str).collect()
    }

    /// The atomic apply script: each table is ensured, deleted and rebuilt
    /// (or just deleted) in one transaction.
    pub fn script(&self) -> String {
        let mut s = String::new();
        for (family, body) in [("inet", &self.inet), ("bridge", &self.bridge)] {
            let _ = writeln!(s, "add table {family} {TABLE}");
            let _ = writeln!(s, "delete table {family} {TABLE}");
            if let Some(body) = body {
                s.push_str(body);
            }
        }
        s
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

/// A listing reduced to compare equal however nft wraps lines, spaces
/// tokens or orders set elements.
pub fn normalize(text: &str) -> String {
    const OPEN: &str = "elements = {";
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    while let Some(i) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(i + OPEN.len());
        out.push_str(head);
        let Some(end) = tail.find('}') else {
            rest = tail;
            break;
        };
        let mut items: Vec<&str> = tail[..end].split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        items.sort_unstable();
        let _ = write!(out, " {} }}", items.join(", "));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses `/dev/stdin:LINE:COL...: Error: ...` into the script line.
fn error_line(stderr: &str, script: &str) -> (Option<usize>, Option<String>) {
    let n = stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("/dev/stdin:")?;
        rest.split(':').next()?.parse::<usize>().ok()
    });
    let line = n.and_then(|n| script.lines().nth(n.checked_sub(1)?).map(str::to_string));
    (n, line)
}

struct Applied {
    rendered: Ruleset,
    /// Normalized listing captured right after our last full apply (none
    /// after an element update, which is not listed back: the next check
    /// compares the live listing with the rendering itself).
    listing: Option<String>,
}

/// netlet's firewall in the current network namespace.
pub struct NftFirewall {
    /// netlet's rules in the other firewalls there (see `coexist`), and
    /// the bridges they were last made for.
    foreign: super::coexist::ForeignFirewalls,
    foreign_bridges: Option<Vec<String>>,
    nft: PathBuf,
    last: Option<Applied>,
    /// Opened on the first element update, in the calling thread's namespace.
    elements: Option<ElementSocket>,
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl NftFirewall {
    /// Uses `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_binary("nft")
    }

    pub fn with_binary(nft: impl Into<PathBuf>) -> Self {
        NftFirewall { foreign: Default::default(), foreign_bridges: None, nft: nft.into(), last: None, elements: None }
    }

    /// Converges our tables to `plan`. In sync (zero writes) when the live
    /// tables list the same as the rendering, or as they did right after our
    /// last apply of this same rendering; otherwise replaces them in one
    /// transaction. A table deleted or flushed behind our back is rebuilt.
    pub fn sync(&mut self, plan: &FirewallPlan) -> Result<SyncOutcome, FirewallError> {
        let own = self.sync_own(plan)?;
        // Then what other firewalls need from netlet to let its traffic by:
        // checked when the bridges change and on the passes that found our
        // own table in sync (drift checks), not on every published port.
        let bridges: Vec<String> =
            plan.networks.iter().flat_map(|n| std::iter::once(n.bridge.clone()).chain(n.overlay_device.clone())).collect();
        if own.mutated() && self.foreign_bridges.as_ref() == Some(&bridges) {
            return Ok(own);
        }
        self.foreign_bridges = None;
        let foreign = self.foreign.sync(&bridges)?;
        self.foreign_bridges = Some(bridges);
        Ok(if foreign.mutated() { foreign } else { own })
    }

    fn sync_own(&mut self, plan: &FirewallPlan) -> Result<SyncOutcome, FirewallError> {
        let rendered = render(plan, BrNetfilter::detect())?;
        // What we want changed since our last apply: the kernel cannot hold
        // it yet, so skip the listing and apply straight away.
        let changed = self.last.as_ref().is_some_and(|l| l.rendered != rendered);
        if !changed {
            let current = normalize(&self.list()?);
            if current == normalize(&rendered.tables()) {
                self.last = Some(Applied { rendered, listing: Some(current) });
                return Ok(SyncOutcome::InSync);
            }
            if self.last.as_ref().is_some_and(|l| l.rendered == rendered && l.listing.as_ref() == Some(&current)) {
                return Ok(SyncOutcome::InSync);
            }
        }
        // Only elements changed (a mapping, a network's subnet): update
        // them in place, one small transaction, instead of a rewrite. A
        // table changed behind our back is caught by the next full check,
        // which every nft event triggers.
        if let Some(last) = self.last.take().filter(|l| changed && l.rendered.skeleton == rendered.skeleton) {
            match self.update_elements(&element_changes(&last.rendered, &rendered)) {
                Ok(()) => {
                    self.last = Some(Applied { rendered, listing: None });
                    return Ok(SyncOutcome::Applied);
                }
                Err(e) => tracing::warn!(error = %e, "element update failed; replacing the tables"),
            }
        }
        self.last = None;
        self.run(&rendered.script(), "apply")?;
        let listing = normalize(&self.list()?);
        self.last = Some(Applied { rendered, listing: Some(listing) });
        Ok(SyncOutcome::Applied)
    }

    /// One transaction of element changes: over our netlink socket, or
    /// through nft for what the socket does not encode (interval sets,
    /// whose subnets nft splits into ranges) or if it fails. A socket that
    /// failed is reopened next time.
    fn update_elements(&mut self, changes: &[SetChange<'_>]) -> Result<(), FirewallError> {
        let socket = match self.elements.take() {
            Some(s) => Ok(s),
            None => ElementSocket::open(),
        };
        match socket.and_then(|mut s| s.apply(changes).map(|()| s)) {
            Ok(s) => {
                self.elements = Some(s);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "element update over netlink failed; trying nft");
                self.run(&element_script(changes), "update")
            }
        }
    }

    /// Deletes our tables; in sync (nothing done) if they are absent.
    pub fn remove(&mut self) -> Result<SyncOutcome, FirewallError> {
        self.last = None;
        self.foreign_bridges = None;
        let foreign = self.foreign.sync(&[])?;
        if self.list()?.is_empty() {
            return Ok(foreign);
        }
        self.run(&Ruleset::default().script(), "remove")?;
        Ok(SyncOutcome::Applied)
    }

    /// The live listing of our tables (inet, then bridge); empty if absent.
    pub fn list(&self) -> Result<String, FirewallError> {
        let mut out = String::new();
        for family in ["inet", "bridge"] {
            let o = Command::new(&self.nft)
                .args(["list", "table", family, TABLE])
                .stdin(Stdio::null())
                .output()
                .map_err(|source| self.spawn_error(source))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            if o.status.success() {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            } else if !stderr.contains("No such file or directory") {
                return Err(FirewallError::Nft { action: "list", stderr: stderr.into_owned(), line_number: None, line: None });
            }
        }
        Ok(out)
    }

    fn spawn_error(&self, source: io::Error) -> FirewallError {
        FirewallError::Spawn { program: self.nft.display().to_string(), source }
    }

    /// `nft -f -` with `script` on stdin: one atomic transaction.
    fn run(&self, script: &str, action: &'static str) -> Result<(), FirewallError> {
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let stdin = child.stdin.take();
        // Feed stdin from a thread so a chatty nft cannot deadlock us.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(script.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let (line_number, line) = error_line(&stderr, script);
        Err(FirewallError::Nft { action, stderr, line_number, line })
    }
}

#[cfg(test)]
#[path = "firewall_tests.rs"]
mod tests;
