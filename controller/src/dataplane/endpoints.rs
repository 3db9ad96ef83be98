//! Attachments' interfaces inside their sandboxes: links, addresses,
//! default routes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::events::Scope;
use super::kernel::{Change, LinkId};
use super::netlink::{Link, LinkChange, NetlinkError};
use super::realized::{Judge, Record};
use super::report::SyncReport;
use super::sandboxes::SandboxHandle;
use super::{is_link_local, is_ours, netns, Dataplane, LOOPBACK_INDEX};
use crate::naming::OWNER_ALIAS_PREFIX;
use crate::plan::attachment::SandboxRef;
use crate::plan::desired::{Endpoint, EndpointKind, EndpointRoute};
use crate::plan::outcome::{reason, Failure};

impl Dataplane {
    /// Converges each of the `stale` sandboxes and records it once it
    /// converged without error, with what its record depends on: its
    /// namespace (by the id its events are tagged with) and the host ends
    /// of its veths.
    pub(super) async fn sync_endpoints(
        &mut self,
        stale: &[(&SandboxRef, Vec<&Endpoint>)],
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        fresh: &BTreeMap<String, netns::Created>,
        judge: &Judge<'_>,
        report: &mut SyncReport,
    ) {
        for (sandbox, endpoints) in stale {
            self.realized.sandboxes.remove(*sandbox);
            let path = sandbox.path();
            // One socket at a time: a thousand open ones cost a receive buffer each.
            let handle = match self.take_sandbox(sandbox) {
                Ok(h) => h,
                Err(f) => {
                    for ep in endpoints {
                        report.endpoint_errors.insert(ep.owner.clone(), f.clone());
                    }
                    continue;
                }
            };
            // Its events are heard tagged with its id here: known before
            // it is observed, so none after the observation is missed.
            let nsid = match judge.hears_events().then(|| self.node.nsid(&handle.ns)) {
                None => None,
                Some(asked) => match asked.await {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::debug!(sandbox = %path, error = %e, "no namespace id: its events are not heard");
                        None
                    }
                },
            };
            let observed = judge.epoch();
            let host_links = match self.sync_sandbox(&handle, endpoints, node_links, bridges, fresh.get(&path), report).await {
                Ok(host_links) => host_links,
                Err(e) => {
                    for ep in endpoints {
                        report.endpoint_errors.entry(ep.owner.clone()).or_insert_with(|| SyncReport::kernel(&e));
                    }
                    Vec::new()
                }
            };
            if let Some(p) = &self.progress {
                p.step();
            }
            let converged = endpoints.iter().all(|ep| !report.endpoint_errors.contains_key(&ep.owner));
            if let (true, Some(nsid)) = (converged, nsid) {
                let scopes = std::iter::once(Scope::Namespace(nsid)).chain(host_links.into_iter().map(Scope::NodeLink)).collect();
                let desired = endpoints.iter().map(|e| (*e).clone()).collect();
                self.realized.sandboxes.insert((*sandbox).clone(), Record { desired, observed, scopes });
            }
        }
    }

    /// Converges one sandbox: lo, its endpoints' links, addresses, routes.
    /// A namespace created in this very pass holds only lo, down: nothing
    /// in it is read back but the links we add (each dump would wait for
    /// the RTNL lock the kernel's own link-up work keeps taking).
    pub(super) async fn sync_sandbox(
        &mut self,
        handle: &SandboxHandle,
        endpoints: &[&Endpoint],
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        created_now: Option<&netns::Created>,
        report: &mut SyncReport,
    ) -> Result<Vec<u32>, NetlinkError> {
        let sb = &handle.netlink;
        let fresh = created_now.is_some();
        let mut links = Vec::new();
        if let Some(created) = created_now {
            // A namespace made ahead had lo brought up then: the change is
            // still this pass's.
            match created.loopback_up {
                true => self.journal.count("link", 1),
                false => {
                    sb.apply(Change::SetLink { index: LOOPBACK_INDEX, name: "lo", change: LinkChange { up: true, ..Default::default() } })
                        .await?
                }
            }
        } else {
            links = sb.links().await?;
            if let Some(lo) = links.iter().find(|l| l.name == "lo") {
                if !lo.up {
                    sb.apply(Change::SetLink { index: lo.index, name: "lo", change: LinkChange { up: true, ..Default::default() } })
                        .await?;
                }
            }
        }
        let mut created = false;
        for ep in endpoints {
            if let Err(f) = self.ensure_link(handle, created_now, ep, &links, node_links, bridges, &mut created).await {
                report.endpoint_errors.insert(ep.owner.clone(), f);
            }
        }
        if created && fresh {
            for ep in endpoints {
                links.extend(sb.link(LinkId::Name(&ep.ifname)).await?);
            }
        } else if created {
            links = sb.links().await?;
        }
        let (addresses, routes) = if fresh { (Vec::new(), Vec::new()) } else { (sb.addresses().await?, sb.routes().await?) };
        let mut default_v4 = None;
        let mut default_v6 = None;
        let mut our_indexes = BTreeSet::new();
        // The host ends of the sandbox's veths (their peers' indexes).
        let mut host_links = Vec::new();
        for ep in endpoints {
            if report.endpoint_errors.contains_key(&ep.owner) {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.name == ep.ifname) else {
                report.endpoint_errors.insert(
                    ep.owner.clone(),
                    Failure::new(reason::KERNEL_ERROR, format!("interface {} missing after creation", ep.ifname)),
                );
                continue;
            };
            our_indexes.insert(link.index);
            if let (EndpointKind::Veth { .. }, Some(peer)) = (&ep.kind, link.link) {
                host_links.push(peer);
            }
            let result = self.converge_interface(handle, ep, link, &addresses, fresh).await;
            if let Err(e) = result {
                report.endpoint_errors.insert(ep.owner.clone(), SyncReport::kernel(&e));
                continue;
            }
            if let Some(gw) = ep.gateway_v4 {
                default_v4 = Some((link.index, IpAddr::V4(gw), ep.owner.clone()));
            }
            if let Some(gw) = ep.gateway_v6 {
                default_v6 = Some((link.index, IpAddr::V6(gw), ep.owner.clone()));
            }
        }
        self.sync_endpoint_routes(sb, endpoints, &links, &routes, &our_indexes, report).await?;
        for (want, v4) in [(default_v4, true), (default_v6, false)] {
            let current: Vec<_> = routes
                .iter()
                .filter(|r| r.dst.prefix_len() == 0)
                .filter(|r| {
                    r.message.header.address_family
                        == if v4 { netlink_packet_route::AddressFamily::Inet } else { netlink_packet_route::AddressFamily::Inet6 }
                })
                .collect();
            match want {
                Some((index, gw, owner)) => {
                    let in_place = current.iter().any(|r| r.oif == Some(index) && r.gateway == Some(gw));
                    if !in_place {
                        if let Err(e) = sb.apply(Change::ReplaceDefaultRoute { index, gateway: gw }).await {
                            report.endpoint_errors.insert(owner, SyncReport::kernel(&e));
                        }
                    }
                    // Another default route through one of our interfaces is stale.
                    for r in current.iter().filter(|r| r.oif != Some(index) && r.oif.is_some_and(|o| our_indexes.contains(&o))) {
                        sb.apply(Change::DeleteRoute { route: r }).await?;
                    }
                }
                None => {
                    for r in current.iter().filter(|r| r.oif.is_some_and(|o| our_indexes.contains(&o))) {
                        sb.apply(Change::DeleteRoute { route: r }).await?;
                    }
                }
            }
        }
        Ok(host_links)
    }

    /// The endpoints' own routes (IPv6 on overlays), marked as netlet's:
    /// added where missing, netlet's on their interfaces that no endpoint
    /// wants removed. Runs once the interfaces are up (Linux refuses an
    /// IPv6 route on a device that is down).
    async fn sync_endpoint_routes(
        &self,
        sb: &super::kernel::Recorded,
        endpoints: &[&Endpoint],
        links: &[Link],
        routes: &[super::netlink::Route],
        our_indexes: &BTreeSet<u32>,
        report: &mut SyncReport,
    ) -> Result<(), NetlinkError> {
        let mut want = Vec::new();
        for ep in endpoints.iter().filter(|ep| !report.endpoint_errors.contains_key(&ep.owner)) {
            let Some(link) = links.iter().find(|l| l.name == ep.ifname) else { continue };
            want.extend(ep.routes.iter().map(|r| (link.index, *r, &ep.owner)));
        }
        let matches = |r: &super::netlink::Route, index: u32, w: &EndpointRoute| {
            r.oif == Some(index) && r.dst == w.dst && r.gateway == w.gateway && r.metric == Some(w.metric)
        };
        let ours: Vec<_> = routes
            .iter()
            .filter(|r| r.message.header.protocol == super::netlink::ROUTE_PROTOCOL && r.oif.is_some_and(|o| our_indexes.contains(&o)))
            .collect();
        for (index, route, owner) in &want {
            if ours.iter().any(|r| matches(r, *index, route)) {
                continue;
            }
            let change = Change::ReplaceRoute { dst: route.dst, index: *index, gateway: route.gateway, metric: Some(route.metric) };
            if let Err(e) = sb.apply(change).await {
                report.endpoint_errors.insert((*owner).clone(), SyncReport::kernel(&e));
            }
        }
        for r in ours.iter().filter(|r| !want.iter().any(|(index, w, _)| matches(r, *index, w))) {
            sb.apply(Change::DeleteRoute { route: r }).await?;
        }
        Ok(())
    }

    /// One interface of a sandbox: its MTU and MAC, then its addresses,
    /// then up. New addresses go on before old ones go (the container is
    /// never without one), and what the kernel then holds is read back.
    /// In a sandbox that was there before, the kernel is asked to announce
    /// a new MAC, or an interface coming up with its addresses (a
    /// gratuitous ARP), so neighbours do not keep sending to a MAC gone.
    async fn converge_interface(
        &self,
        handle: &SandboxHandle,
        ep: &Endpoint,
        link: &Link,
        addresses: &[super::netlink::Address],
        fresh: bool,
    ) -> Result<(), NetlinkError> {
        let sb = &handle.netlink;
        let set = |change: LinkChange| Change::SetLink { index: link.index, name: &ep.ifname, change };
        let change =
            LinkChange { mtu: (link.mtu != ep.mtu).then_some(ep.mtu), mac: (link.mac != ep.mac).then_some(ep.mac), ..Default::default() };
        if !fresh && (change.mac.is_some() || !link.up) {
            self.sandbox_sysctl(handle, &format!("net/ipv4/conf/{}/arp_notify", ep.ifname))?;
        }
        if !change.is_empty() {
            sb.apply(set(change)).await?;
        }
        let have: BTreeSet<IpNet> = addresses.iter().filter(|a| a.index == link.index && !is_link_local(&a.net)).map(|a| a.net).collect();
        let want: BTreeSet<IpNet> = ep.addresses.iter().copied().collect();
        for net in want.difference(&have) {
            sb.apply(Change::AddAddress { index: link.index, net: *net, ifname: &ep.ifname }).await?;
        }
        let stale: Vec<&IpNet> = have.difference(&want).collect();
        if !stale.is_empty() {
            // Linux deletes the secondary IPv4 addresses of a primary with
            // it: the one just added (a secondary, in the same subnet) is
            // promoted instead.
            if stale.iter().any(|n| n.addr().is_ipv4()) && want.iter().any(|n| n.addr().is_ipv4()) {
                self.sandbox_sysctl(handle, &format!("net/ipv4/conf/{}/promote_secondaries", ep.ifname))?;
            }
            for net in stale {
                sb.apply(Change::DeleteAddress { index: link.index, net: *net, ifname: &ep.ifname }).await?;
            }
            // Status says what the kernel holds: read it back.
            let held = sb.addresses().await?;
            if let Some(missing) = want.iter().find(|n| !held.iter().any(|a| a.index == link.index && a.net == **n)) {
                return Err(NetlinkError {
                    op: format!("change the addresses of {}", ep.ifname),
                    message: format!("{missing} is not on it afterwards"),
                    errno: None,
                });
            }
        }
        if !link.up {
            sb.apply(set(LinkChange { up: true, ..Default::default() })).await?;
        }
        Ok(())
    }

    /// Sets the sandbox's sysctl `key` to 1 (counted when it wrote).
    fn sandbox_sysctl(&self, handle: &SandboxHandle, key: &str) -> Result<(), NetlinkError> {
        let wrote = self.system.sysctl_in(&handle.ns, key, "1").map_err(|e| NetlinkError {
            op: format!("set {key} in {}", handle.path()),
            message: e.to_string(),
            errno: e.raw_os_error(),
        })?;
        self.journal.count("sysctl", u32::from(wrote));
        Ok(())
    }

    /// Makes the endpoint's link exist: for a veth, the host end on its
    /// bridge with the right peer in the sandbox; for macvlan, the link in
    /// the sandbox.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ensure_link(
        &mut self,
        handle: &SandboxHandle,
        created_now: Option<&netns::Created>,
        ep: &Endpoint,
        sb_links: &[Link],
        node_links: &[Link],
        bridges: &HashMap<String, u32>,
        created: &mut bool,
    ) -> Result<(), Failure> {
        let inner = sb_links.iter().find(|l| l.name == ep.ifname);
        match &ep.kind {
            EndpointKind::Veth { host_name, bridge } => {
                let Some(&bridge_index) = bridges.get(bridge) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("bridge {bridge} is not ready")));
                };
                let host = node_links.iter().find(|l| &l.name == host_name);
                let paired = match (host, inner) {
                    (Some(h), Some(i)) => i.kind.as_deref() == Some("veth") && i.link == Some(h.index) && h.link == Some(i.index),
                    _ => false,
                };
                if let (Some(h), true) = (host, paired) {
                    let change = LinkChange {
                        up: !h.up,
                        mtu: (h.mtu != ep.mtu).then_some(ep.mtu),
                        controller: (h.controller != Some(bridge_index)).then_some(bridge_index),
                        mac: None,
                    };
                    if !change.is_empty() {
                        self.node
                            .apply(Change::SetLink { index: h.index, name: host_name, change })
                            .await
                            .map_err(|e| SyncReport::kernel(&e))?;
                    }
                    if h.hairpin != Some(true) {
                        self.node
                            .apply(Change::SetHairpin { index: h.index, name: host_name })
                            .await
                            .map_err(|e| SyncReport::kernel(&e))?;
                    }
                    return Ok(());
                }
                if let Some(i) = inner {
                    // The name is taken in the sandbox by a link that is not our peer.
                    return Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!(
                            "interface {} already exists in sandbox {} (index {}) and is not netlet's",
                            ep.ifname,
                            ep.sandbox.path(),
                            i.index
                        ),
                    ));
                }
                if let Some(h) = host {
                    // Our host end lost its peer (sandbox replaced): start over.
                    if !is_ours(h) {
                        return Err(Failure::new(
                            reason::INTERFACE_CONFLICT,
                            format!("a link named {host_name} exists on the node and is not netlet's"),
                        ));
                    }
                    self.node.apply(Change::DeleteLink { index: h.index, name: host_name }).await.map_err(|e| SyncReport::kernel(&e))?;
                }
                let alias = format!("{OWNER_ALIAS_PREFIX}attachment/{}", ep.owner);
                let veth = Change::CreateVeth {
                    host: host_name,
                    alias: &alias,
                    controller: bridge_index,
                    peer: &ep.ifname,
                    peer_ns: &handle.ns,
                    mac: ep.mac,
                    mtu: ep.mtu,
                };
                self.node.apply(veth).await.map_err(|e| SyncReport::kernel(&e))?;
                // A bridge port needs no IPv6 of its own; nor does a
                // container on an IPv4-only network (Docker does the same).
                // Otherwise each new port's DAD and MLD multicast is flooded
                // to every other port of the bridge: quadratic work at scale.
                self.system.disable_ipv6_on_node(host_name);
                if !ep.addresses.iter().any(|a| a.addr().is_ipv6()) {
                    self.system.disable_ipv6_in(&handle.ns, created_now, &ep.ifname);
                }
                *created = true;
                Ok(())
            }
            EndpointKind::Macvlan { parent, mode } => {
                if inner.is_some_and(|i| i.kind.as_deref() == Some("macvlan")) {
                    return Ok(());
                }
                if inner.is_some() {
                    return Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!("interface {} already exists in sandbox {} and is not a macvlan", ep.ifname, ep.sandbox.path()),
                    ));
                }
                let Some(parent_link) = node_links.iter().find(|l| &l.name == parent) else {
                    return Err(Failure::new(reason::NETWORK_NOT_READY, format!("macvlan parent {parent} does not exist on the node")));
                };
                let macvlan = Change::CreateMacvlan {
                    name: &ep.ifname,
                    parent: parent_link.index,
                    mode: *mode,
                    ns: &handle.ns,
                    mac: ep.mac,
                    mtu: ep.mtu,
                };
                self.node.apply(macvlan).await.map_err(|e| SyncReport::kernel(&e))?;
                *created = true;
                Ok(())
            }
        }
    }
}
