//! Node-wide state: forwarding sysctls and the networks' bridges.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use super::kernel::{Change, LinkId};
use super::netlink::{self, Link, LinkChange};
use super::report::SyncReport;
use super::{is_link_local, is_ours, Dataplane};
use crate::naming::OWNER_ALIAS_PREFIX;
use crate::plan::desired::DesiredState;
use crate::plan::outcome::{reason, Failure};

impl Dataplane {
    /// Sets the node's sysctl `key` to `value` (counted when it wrote).
    pub(super) fn node_sysctl(&self, key: &str, value: &str) -> std::io::Result<()> {
        let wrote = self.system.sysctl(key, value)?;
        self.journal.count("sysctl", u32::from(wrote));
        Ok(())
    }

    pub(super) fn sync_sysctls(&self, desired: &DesiredState, report: &mut SyncReport) {
        let mut wanted: Vec<(String, &str)> = Vec::new();
        if desired.ipv4_forwarding {
            wanted.push(("net/ipv4/ip_forward".into(), "1"));
        }
        if desired.ipv6_forwarding {
            wanted.push(("net/ipv6/conf/all/forwarding".into(), "1"));
        }
        for (key, value) in wanted {
            if let Err(e) = self.node_sysctl(&key, value) {
                report.node_errors.push(format!("sysctl {key}: {e}"));
            }
        }
    }

    /// Ensures every bridge; returns name -> index of the ready ones.
    pub(super) async fn sync_bridges(
        &mut self,
        desired: &DesiredState,
        node_links: &[Link],
        node_addresses: &[netlink::Address],
        report: &mut SyncReport,
    ) -> HashMap<String, u32> {
        let mut ready = HashMap::new();
        let addresses = node_addresses;
        for bridge in &desired.bridges {
            let alias = format!("{OWNER_ALIAS_PREFIX}network/{}", bridge.network);
            let existing = node_links.iter().find(|l| l.name == bridge.name);
            let result: Result<u32, Failure> = async {
                let link =
                    match existing {
                        Some(l) if l.kind.as_deref() == Some("bridge") && is_ours(l) => l.clone(),
                        Some(_) => {
                            return Err(Failure::new(
                                reason::BRIDGE_NAME_CONFLICT,
                                format!("a link named {} already exists on the node and was not created by netlet", bridge.name),
                            ))
                        }
                        None => {
                            let create = Change::CreateBridge { name: &bridge.name, mtu: bridge.mtu, mac: bridge.mac, alias: &alias };
                            self.node.apply(create).await.map_err(|e| SyncReport::kernel(&e))?;
                            self.node.link(LinkId::Name(&bridge.name)).await.map_err(|e| SyncReport::kernel(&e))?.ok_or_else(|| {
                                Failure::new(reason::KERNEL_ERROR, format!("bridge {} vanished after creation", bridge.name))
                            })?
                        }
                    };
                // Its addresses skip DAD, set before it comes up and before
                // any is added (an older bridge keeps what it has, its next
                // addresses skip it): Linux solicits no neighbour for a
                // forwarded IPv6 packet while the bridge's link-local address
                // is tentative, so routed IPv6 to its containers would wait
                // ~1-2 s.
                if bridge.addresses.iter().any(|a| a.addr().is_ipv6()) {
                    if let Err(e) = self.node_sysctl(&format!("net/ipv6/conf/{}/accept_dad", bridge.name), "0") {
                        tracing::warn!(bridge = %bridge.name, error = %e, "cannot turn DAD off on the bridge");
                    }
                }
                let change = LinkChange {
                    up: !link.up,
                    mtu: (link.mtu != bridge.mtu).then_some(bridge.mtu),
                    mac: (link.mac != bridge.mac).then_some(bridge.mac),
                    controller: None,
                };
                if !change.is_empty() {
                    let change = Change::SetLink { index: link.index, name: &bridge.name, change };
                    self.node.apply(change).await.map_err(|e| SyncReport::kernel(&e))?;
                }
                let have: BTreeSet<IpNet> =
                    addresses.iter().filter(|a| a.index == link.index && !is_link_local(&a.net)).map(|a| a.net).collect();
                let want: BTreeSet<IpNet> = bridge.addresses.iter().copied().collect();
                for net in want.difference(&have) {
                    let add = Change::AddAddress { index: link.index, net: *net, ifname: &bridge.name };
                    self.node.apply(add).await.map_err(|e| SyncReport::kernel(&e))?;
                }
                for net in have.difference(&want) {
                    let delete = Change::DeleteAddress { index: link.index, net: *net, ifname: &bridge.name };
                    self.node.apply(delete).await.map_err(|e| SyncReport::kernel(&e))?;
                }
                // Published ports on 127.0.0.1 are DNATed out through the bridge.
                self.node_sysctl(&format!("net/ipv4/conf/{}/route_localnet", bridge.name), "1")
                    .map_err(|e| Failure::new(reason::KERNEL_ERROR, format!("route_localnet on {}: {e}", bridge.name)))?;
                Ok(link.index)
            }
            .await;
            match result {
                Ok(index) => {
                    ready.insert(bridge.name.clone(), index);
                }
                Err(f) => {
                    tracing::warn!(network = %bridge.network, bridge = %bridge.name, error = %f, "bridge not ready");
                    report.network_errors.insert(bridge.network.clone(), f);
                }
            }
        }
        ready
    }
}
