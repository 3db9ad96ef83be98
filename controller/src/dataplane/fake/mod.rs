//! An in-memory kernel for unit tests without root: namespaces with their
//! links, addresses and default routes, behind the same traits as Linux
//! (`kernel`). It records every change applied and every sandbox read,
//! reports events to an [`EventLog`] the way the kernel does (tagged with
//! the namespace's id, once it has one), fails the changes it is told to,
//! and lets a test act behind the agent's back.
//!
//! Modelled where the dataplane's logic depends on it: a veth pair spans
//! two namespaces and goes as one; deleting a link takes its addresses and
//! routes; deleting an IPv4 address that is primary takes the secondary
//! ones of its subnet unless `promote_secondaries` is set, as Linux does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use super::events::{EventLog, Scope};
use super::kernel::{Change, Result, System};
use super::netlink::{Address, Link, NetlinkError, Route};
use crate::naming::OWNER_LINK_GROUP;
use crate::plan::desired::FirewallPlan;

mod behind_traits;
use behind_traits::FakeSystem;

/// The node's namespace.
const NODE: u64 = 0;

#[derive(Default)]
struct Ns {
    links: BTreeMap<u32, Link>,
    /// In the order added: the first IPv4 address of a subnet is primary.
    addresses: Vec<Address>,
    routes: Vec<Route>,
    /// Interfaces with promote_secondaries on.
    promote: BTreeSet<String>,
}

impl Ns {
    /// A link left without IPv4 addresses loses its IPv4 routes, as Linux
    /// disables IP on it.
    fn without_ipv4_routes_if_unaddressed(&mut self, index: u32) {
        if !self.addresses.iter().any(|a| a.index == index && a.net.addr().is_ipv4()) {
            self.routes.retain(|r| !(r.oif == Some(index) && r.gateway.is_some_and(|g| g.is_ipv4())));
        }
    }
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<u64, Ns>,
    paths: BTreeMap<String, u64>,
    next_ns: u64,
    next_index: u32,
    /// Ids of namespaces in the node's.
    nsids: BTreeMap<u64, i32>,
    next_nsid: i32,
    events: Option<Arc<EventLog>>,
    /// Every change applied, described.
    changes: Vec<String>,
    /// Every read of a sandbox (`path: what`).
    reads: Vec<String>,
    /// Changes to fail: (a word of the description, how many more times).
    failures: Vec<(String, usize)>,
    sysctls: BTreeMap<String, String>,
    files: BTreeMap<String, (String, String)>,
    ruleset: Option<FirewallPlan>,
    /// Bumped by every ruleset change, as nf_tables' generation is.
    ruleset_generation: u64,
    /// Someone else's deletion of a link (namespace path, link name) right
    /// after the first change whose description contains the word.
    deletions_when: Vec<(String, String, String)>,
}

impl State {
    fn name_of(&self, ns: u64) -> String {
        match ns {
            NODE => "node".into(),
            id => self.paths.iter().find(|(_, v)| **v == id).map(|(p, _)| p.clone()).unwrap_or_else(|| format!("ns{id}")),
        }
    }

    /// What the kernel reports for a change in `ns` about link `index`.
    fn event(&self, ns: u64, index: Option<u32>) {
        let Some(events) = &self.events else { return };
        match (ns, index) {
            (NODE, Some(index)) => events.record(Scope::NodeLink(index)),
            (NODE, None) => events.record(Scope::NodeAddresses),
            (ns, _) => {
                if let Some(nsid) = self.nsids.get(&ns) {
                    events.record(Scope::Namespace(*nsid));
                }
            }
        }
    }

    fn ns(&mut self, ns: u64) -> Result<&mut Ns> {
        self.namespaces.get_mut(&ns).ok_or_else(|| NetlinkError { op: "reach namespace".into(), message: "gone".into(), errno: Some(2) })
    }

    fn new_namespace(&mut self) -> u64 {
        self.next_ns += 1;
        let mut ns = Ns::default();
        ns.links.insert(1, Link { index: 1, name: "lo".into(), kind: None, mtu: 65536, ..Default::default() });
        self.namespaces.insert(self.next_ns, ns);
        self.next_ns
    }

    fn new_index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn fail(&mut self, description: &str) -> Result<()> {
        if let Some(f) = self.failures.iter_mut().find(|(word, times)| *times > 0 && description.contains(word.as_str())) {
            f.1 -= 1;
            return Err(NetlinkError { op: description.into(), message: "failed on purpose".into(), errno: Some(5) });
        }
        Ok(())
    }

    /// Removes the namespace at `path` and its links (their veth peers too).
    fn delete_namespace(&mut self, path: &str) -> bool {
        let Some(id) = self.paths.remove(path) else { return false };
        let links: Vec<u32> = self.namespaces[&id].links.keys().copied().collect();
        links.into_iter().for_each(|index| self.remove_link(id, index));
        // Its id goes (RTM_DELNSID), heard as an event about it.
        self.event(id, None);
        self.nsids.remove(&id);
        self.namespaces.remove(&id);
        true
    }

    /// Removes a link and what goes with it (its peer, addresses, routes).
    fn remove_link(&mut self, ns: u64, index: u32) {
        let Some(link) = self.namespaces.get_mut(&ns).and_then(|n| n.links.remove(&index)) else { return };
        if let Some(n) = self.namespaces.get_mut(&ns) {
            n.addresses.retain(|a| a.index != index);
            n.routes.retain(|r| r.oif != Some(index));
        }
        self.event(ns, Some(index));
        if link.kind.as_deref() == Some("veth") {
            let peer = self.namespaces.iter().find_map(|(id, n)| {
                n.links
                    .values()
                    .find(|l| l.kind.as_deref() == Some("veth") && l.link == Some(index) && link.link == Some(l.index))
                    .map(|l| (*id, l.index))
            });
            if let Some((peer_ns, peer_index)) = peer {
                self.remove_link(peer_ns, peer_index);
            }
        }
    }

    fn apply(&mut self, ns: u64, change: Change<'_>) -> Result<()> {
        let description = format!("{}: {}", self.name_of(ns), describe(&change));
        self.fail(&description)?;
        match change {
            Change::CreateBridge { name, mtu, mac, alias } => {
                let index = self.new_index();
                let link = Link {
                    index,
                    group: OWNER_LINK_GROUP,
                    name: name.into(),
                    kind: Some("bridge".into()),
                    mtu,
                    mac: mac.to_vec(),
                    up: true,
                    alias: Some(alias.into()),
                    ..Default::default()
                };
                self.ns(ns)?.links.insert(index, link);
                self.event(ns, Some(index));
            }
            Change::CreateVeth { host, alias, controller, peer, peer_ns, mac, mtu } => {
                let peer_id = peer_ns.identity.1;
                if self.ns(peer_id)?.links.values().any(|l| l.name == peer) {
                    return Err(NetlinkError { op: description, message: "exists".into(), errno: Some(17) });
                }
                let (h, p) = (self.new_index(), self.new_index());
                let host_link = Link {
                    index: h,
                    group: OWNER_LINK_GROUP,
                    name: host.into(),
                    kind: Some("veth".into()),
                    controller: Some(controller),
                    mtu,
                    up: true,
                    alias: Some(alias.into()),
                    link: Some(p),
                    hairpin: Some(true),
                    ..Default::default()
                };
                let peer_link = Link {
                    index: p,
                    name: peer.into(),
                    kind: Some("veth".into()),
                    mtu,
                    mac: mac.to_vec(),
                    link: Some(h),
                    ..Default::default()
                };
                self.ns(ns)?.links.insert(h, host_link);
                self.ns(peer_id)?.links.insert(p, peer_link);
                self.event(ns, Some(h));
                self.event(peer_id, Some(p));
            }
            Change::CreateMacvlan { name, parent, ns: target, mac, mtu, .. } => {
                let index = self.new_index();
                let link = Link {
                    index,
                    name: name.into(),
                    kind: Some("macvlan".into()),
                    mtu,
                    mac: mac.to_vec(),
                    up: true,
                    link: Some(parent),
                    ..Default::default()
                };
                self.ns(target.identity.1)?.links.insert(index, link);
                self.event(target.identity.1, Some(index));
            }
            Change::CreateVxlan { name, vni, port, local, mtu, mac, alias } => {
                let index = self.new_index();
                let vxlan = Some((vni, port, Some(IpAddr::V4(local))));
                let link = Link {
                    index,
                    group: OWNER_LINK_GROUP,
                    name: name.into(),
                    kind: Some("vxlan".into()),
                    mac: mac.to_vec(),
                    mtu,
                    up: true,
                    alias: Some(alias.into()),
                    vxlan,
                    ..Default::default()
                };
                self.ns(ns)?.links.insert(index, link);
                self.event(ns, Some(index));
            }
            Change::SetLink { index, change, .. } => {
                let link = self.ns(ns)?.links.get_mut(&index).ok_or_else(|| NetlinkError {
                    op: description.clone(),
                    message: "no such device".into(),
                    errno: Some(19),
                })?;
                link.up |= change.up;
                link.mtu = change.mtu.unwrap_or(link.mtu);
                if let Some(mac) = change.mac {
                    link.mac = mac.to_vec();
                }
                link.controller = change.controller.or(link.controller);
                self.event(ns, Some(index));
            }
            Change::SetHairpin { index, .. } => {
                if let Some(link) = self.ns(ns)?.links.get_mut(&index) {
                    link.hairpin = Some(true);
                }
                self.event(ns, Some(index));
            }
            Change::DeleteLink { index, .. } => self.remove_link(ns, index),
            Change::DeleteLinks { links, .. } => links.iter().for_each(|(index, _)| self.remove_link(ns, *index)),
            Change::AddAddress { index, net, .. } => {
                let n = self.ns(ns)?;
                if !n.addresses.iter().any(|a| a.index == index && a.net == net) {
                    n.addresses.push(Address { index, net });
                }
                self.event(ns, None);
            }
            Change::DeleteAddress { index, net, ifname } => {
                let n = self.ns(ns)?;
                let same_subnet = |a: &Address| a.index == index && a.net.addr().is_ipv4() && a.net.trunc() == net.trunc();
                let primary = n.addresses.iter().find(|a| same_subnet(a)).is_some_and(|a| a.net == net);
                n.addresses.retain(|a| !(a.index == index && a.net == net));
                if primary && !n.promote.contains(ifname) {
                    // Linux takes the secondaries of a primary with it.
                    n.addresses.retain(|a| !same_subnet(a));
                }
                n.without_ipv4_routes_if_unaddressed(index);
                self.event(ns, None);
            }
            Change::ReplaceDefaultRoute { index, gateway } => {
                let n = self.ns(ns)?;
                n.routes.retain(|r| r.dst.prefix_len() != 0 || r.gateway.is_some_and(|g| g.is_ipv4()) != gateway.is_ipv4());
                let mut message = netlink_packet_route::route::RouteMessage::default();
                message.header.address_family =
                    if gateway.is_ipv4() { netlink_packet_route::AddressFamily::Inet } else { netlink_packet_route::AddressFamily::Inet6 };
                let dst = if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.parse().expect("a default destination");
                n.routes.push(Route { dst, oif: Some(index), gateway: Some(gateway), metric: None, message });
                self.event(ns, None);
            }
            Change::ReplaceRoute { dst, index, gateway, metric } => {
                let n = self.ns(ns)?;
                // Linux replaces the route of the same destination and metric.
                n.routes.retain(|r| !(r.dst == dst && r.metric == metric));
                let mut message = netlink_packet_route::route::RouteMessage::default();
                message.header.protocol = super::netlink::ROUTE_PROTOCOL;
                message.header.address_family = if dst.addr().is_ipv4() {
                    netlink_packet_route::AddressFamily::Inet
                } else {
                    netlink_packet_route::AddressFamily::Inet6
                };
                n.routes.push(Route { dst, oif: Some(index), gateway, metric, message });
                self.event(ns, None);
            }
            Change::DeleteRoute { route } => {
                self.ns(ns)?.routes.retain(|r| r != route);
                self.event(ns, None);
            }
            Change::AddFdb { .. } | Change::AddNeighbour { .. } | Change::AddProxy { .. } | Change::DeleteNeighbour { .. } => {}
        }
        if let Some(i) = self.deletions_when.iter().position(|(word, _, _)| description.contains(word.as_str())) {
            let (_, path, name) = self.deletions_when.remove(i);
            let ns = if path == "node" { NODE } else { self.paths[&path] };
            let index = self.namespaces[&ns].links.values().find(|l| l.name == name).map(|l| l.index).expect("the link exists");
            self.remove_link(ns, index);
        }
        self.changes.push(description);
        Ok(())
    }
}

fn describe(change: &Change<'_>) -> String {
    match change {
        Change::CreateBridge { name, .. } => format!("create bridge {name}"),
        Change::CreateVeth { host, peer, .. } => format!("create veth {host} peer {peer}"),
        Change::CreateMacvlan { name, .. } => format!("create macvlan {name}"),
        Change::CreateVxlan { name, .. } => format!("create vxlan {name}"),
        Change::SetLink { name, change, .. } => format!("set link {name} {change:?}"),
        Change::SetHairpin { name, .. } => format!("set hairpin on {name}"),
        Change::DeleteLink { name, .. } => format!("delete link {name}"),
        Change::DeleteLinks { links, .. } => format!("delete links {links:?}"),
        Change::AddAddress { net, ifname, .. } => format!("add address {net} to {ifname}"),
        Change::DeleteAddress { net, ifname, .. } => format!("delete address {net} from {ifname}"),
        Change::ReplaceDefaultRoute { gateway, .. } => format!("replace default route via {gateway}"),
        Change::ReplaceRoute { dst, gateway, metric, .. } => format!("replace route {dst} via {gateway:?} metric {metric:?}"),
        Change::DeleteRoute { route } => format!("delete route {} via {:?}", route.dst, route.gateway),
        Change::AddFdb { .. } | Change::AddNeighbour { .. } | Change::AddProxy { .. } | Change::DeleteNeighbour { .. } => {
            "neighbour".into()
        }
    }
}

/// The fake kernel; clones are the same kernel (a test keeps one).
#[derive(Clone, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
}

impl FakeKernel {
    pub fn new() -> Self {
        let kernel = FakeKernel::default();
        kernel.lock().namespaces.insert(NODE, Ns::default());
        kernel
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports events to `events` from now on.
    pub fn with_events(self, events: Arc<EventLog>) -> Self {
        self.lock().events = Some(events);
        self
    }

    pub fn system(&self) -> Box<dyn System> {
        Box::new(FakeSystem(self.clone()))
    }

    /// Fails the next `times` changes whose description contains `word`.
    pub fn fail(&self, word: &str, times: usize) {
        self.lock().failures.push((word.into(), times));
    }

    /// Someone else deletes link `name` in `path` right after the first
    /// change whose description contains `word` (while a pass runs).
    pub fn delete_link_when(&self, word: &str, path: &str, name: &str) {
        self.lock().deletions_when.push((word.into(), path.into(), name.into()));
    }

    /// Someone else deletes the namespace at `path` (its links go with it).
    pub fn delete_namespace(&self, path: &str) {
        assert!(self.lock().delete_namespace(path), "{path} exists");
    }

    /// The changes applied since the last call, described.
    pub fn changes(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().changes)
    }

    /// The sandbox reads since the last call.
    pub fn reads(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().reads)
    }

    /// A namespace's id by path (the node's: "node").
    fn id(&self, path: &str) -> u64 {
        if path == "node" {
            return NODE;
        }
        *self.lock().paths.get(path).unwrap_or_else(|| panic!("no namespace {path}"))
    }

    /// Someone else deletes a link (by name) in `path` ("node" for the node).
    pub fn delete_link(&self, path: &str, name: &str) {
        let ns = self.id(path);
        let mut state = self.lock();
        let index = state.namespaces[&ns].links.values().find(|l| l.name == name).map(|l| l.index).expect("the link exists");
        state.remove_link(ns, index);
    }

    /// Someone else flushes the addresses of `ifname` in `path`.
    pub fn flush_addresses(&self, path: &str, ifname: &str) {
        let ns = self.id(path);
        let mut state = self.lock();
        let index = state.namespaces[&ns].links.values().find(|l| l.name == ifname).map(|l| l.index).expect("the link exists");
        let n = state.namespaces.get_mut(&ns).expect("exists");
        n.addresses.retain(|a| a.index != index);
        n.without_ipv4_routes_if_unaddressed(index);
        state.event(ns, None);
    }

    /// Someone else deletes the routes to `dst` in `path`.
    pub fn delete_routes_to(&self, path: &str, dst: IpNet) {
        let ns = self.id(path);
        let mut state = self.lock();
        state.namespaces.get_mut(&ns).expect("exists").routes.retain(|r| r.dst != dst);
        state.event(ns, None);
    }

    pub fn link(&self, path: &str, name: &str) -> Option<Link> {
        let ns = self.id(path);
        self.lock().namespaces[&ns].links.values().find(|l| l.name == name).cloned()
    }

    pub fn addresses(&self, path: &str, ifname: &str) -> Vec<IpNet> {
        let ns = self.id(path);
        let state = self.lock();
        let n = &state.namespaces[&ns];
        let Some(index) = n.links.values().find(|l| l.name == ifname).map(|l| l.index) else { return Vec::new() };
        n.addresses.iter().filter(|a| a.index == index).map(|a| a.net).collect()
    }

    pub fn default_gateways(&self, path: &str) -> Vec<IpAddr> {
        let ns = self.id(path);
        self.lock().namespaces[&ns].routes.iter().filter(|r| r.dst.prefix_len() == 0).filter_map(|r| r.gateway).collect()
    }

    /// netlet's routes in the namespace at `path`: (destination, gateway, metric).
    pub fn owned_routes(&self, path: &str) -> Vec<(IpNet, Option<IpAddr>, Option<u32>)> {
        let ns = self.id(path);
        let state = self.lock();
        let ours = state.namespaces[&ns].routes.iter().filter(|r| r.message.header.protocol == super::netlink::ROUTE_PROTOCOL);
        ours.map(|r| (r.dst, r.gateway, r.metric)).collect()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.lock().paths.keys().cloned().collect()
    }

    /// Someone mounts the node's own namespace at `path` (`ip netns
    /// attach NAME 1`, a bind mount).
    pub fn mount_node_namespace(&self, path: &str) {
        self.lock().paths.insert(path.to_string(), NODE);
    }

    /// Someone else changes the ruleset (flushes it, say).
    pub fn flush_ruleset(&self) {
        let mut state = self.lock();
        state.ruleset = None;
        state.ruleset_generation += 1;
        if let Some(events) = &state.events {
            events.record(Scope::Ruleset);
        }
    }

    /// The ruleset as last applied.
    pub fn ruleset(&self) -> Option<FirewallPlan> {
        self.lock().ruleset.clone()
    }
}
