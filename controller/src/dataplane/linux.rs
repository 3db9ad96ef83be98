//! The dataplane's side effects on the Linux kernel: [`Rtnl`] on a
//! namespace's rtnetlink handle ([`Netlink`]), [`System`] for the rest.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::files;
use super::firewall::NftFirewall;
use super::kernel::{Change, DeleteNamespaces, DeletedNamespace, LinkId, Namespace, Neighbours, Result, Rtnl, Ruleset, System};
use super::netlink::{Address, Link, Neighbour, Netlink, NetlinkError, Route};
use super::netns::{self, Created};
use super::sysctl;
use crate::plan::desired::FirewallPlan;
use crate::plan::names::SandboxFiles;

/// The namespace's file, which Linux needs to make links inside it.
fn file_of(ns: &Namespace) -> Result<&File> {
    ns.file.as_ref().ok_or_else(|| NetlinkError { op: "reach namespace".into(), message: "it is not held open".into(), errno: None })
}

impl Rtnl for Netlink {
    fn links(&self) -> BoxFuture<'_, Result<Vec<Link>>> {
        Box::pin(Netlink::links(self))
    }

    fn link<'a>(&'a self, which: LinkId<'a>) -> BoxFuture<'a, Result<Option<Link>>> {
        Box::pin(async move {
            match which {
                LinkId::Name(name) => self.link_by_name(name).await,
                LinkId::Index(index) => self.link_by_index(index).await,
            }
        })
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<Address>>> {
        Box::pin(Netlink::addresses(self))
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>>> {
        Box::pin(Netlink::main_routes(self))
    }

    fn owned_routes(&self) -> BoxFuture<'_, Result<Vec<Route>>> {
        Box::pin(Netlink::owned_routes(self))
    }

    fn neighbours(&self, which: Neighbours) -> BoxFuture<'_, Result<Vec<Neighbour>>> {
        Box::pin(async move {
            match which {
                Neighbours::OnDevice(index) => Netlink::neighbours(self, index).await,
                Neighbours::Ipv4 => self.ipv4_neighbours().await,
                Neighbours::Proxies(index) => self.proxy_neighbours(index).await,
            }
        })
    }

    fn nsid<'a>(&'a self, other: &'a Namespace) -> BoxFuture<'a, Result<i32>> {
        Box::pin(async move { self.nsid_of(file_of(other)?).await })
    }

    fn apply<'a>(&'a self, change: Change<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match change {
                Change::CreateBridge { name, mtu, mac, alias } => self.create_bridge(name, mtu, mac, alias).await,
                Change::CreateVeth { host, alias, controller, peer, peer_ns, mac, mtu } => {
                    self.create_veth(host, alias, controller, peer, file_of(peer_ns)?, mac, mtu).await
                }
                Change::CreateMacvlan { name, parent, mode, ns, mac, mtu } => {
                    self.create_macvlan(name, parent, mode, file_of(ns)?, mac, mtu).await
                }
                Change::CreateVxlan { name, vni, port, local, mtu, mac, alias } => {
                    self.create_vxlan(name, vni, port, local, mtu, mac, alias).await
                }
                Change::SetLink { index, name, change } => self.set_link(index, name, change).await,
                Change::SetHairpin { index, name } => self.set_hairpin(index, name).await,
                Change::DeleteLink { index, name } => self.delete_link(index, name).await,
                Change::DeleteLinks { links, group } => self.delete_links_batched(links, group).await,
                Change::AddAddress { index, net, ifname } => self.add_address(index, net, ifname).await,
                Change::DeleteAddress { index, net, ifname } => self.delete_address(index, net, ifname).await,
                Change::ReplaceDefaultRoute { index, gateway } => self.replace_default_route(index, gateway).await,
                Change::ReplaceRoute { dst, index, gateway, metric } => self.replace_route(dst, index, gateway, metric).await,
                Change::DeleteRoute { route } => self.delete_route(route).await,
                Change::AddFdb { index, mac, vtep } => self.add_fdb(index, mac, vtep).await,
                Change::AddNeighbour { index, ip, mac } => self.add_neighbour(index, ip, mac).await,
                Change::AddProxy { index, ip } => self.add_proxy(index, ip).await,
                Change::DeleteNeighbour { neighbour } => self.delete_neighbour(neighbour).await,
            }
        })
    }
}

impl Ruleset for NftFirewall {
    fn sync(&mut self, plan: &FirewallPlan) -> std::result::Result<bool, String> {
        NftFirewall::sync(self, plan).map(|outcome| outcome.mutated()).map_err(|e| e.to_string())
    }
}

/// The Linux kernel, from the agent's own (the node's) namespace.
pub struct Linux {
    node: Arc<Netlink>,
    unhurried: Option<Arc<Netlink>>,
    /// The next managed namespace, made between passes (long-running agents).
    spare: netns::Spare,
    /// The node namespace's IPv6 interface settings, held open.
    node_ipv6_conf: sysctl::Ipv6Conf,
    ruleset: Option<Box<dyn Ruleset>>,
}

impl Linux {
    /// Needs a tokio runtime context, on the thread that will use it.
    pub fn new() -> std::result::Result<Self, NetlinkError> {
        Ok(Linux {
            node: Arc::new(Netlink::connect()?),
            unhurried: Netlink::connect_on_own_thread()
                .inspect_err(|e| tracing::warn!(error = %e, "link deletions will hold up status writes"))
                .ok()
                .map(Arc::new),
            spare: netns::Spare::default(),
            node_ipv6_conf: sysctl::Ipv6Conf::open(),
            ruleset: Some(Box::new(NftFirewall::new())),
        })
    }
}

fn identity(file: &File) -> std::io::Result<(u64, u64)> {
    file.metadata().map(|m| (m.dev(), m.ino()))
}

impl System for Linux {
    fn node(&self) -> Arc<dyn Rtnl> {
        self.node.clone()
    }

    fn unhurried(&self) -> Option<Arc<dyn Rtnl>> {
        self.unhurried.clone().map(|n| n as Arc<dyn Rtnl>)
    }

    fn namespace_at(&self, path: &str) -> Option<(u64, u64)> {
        let path = Path::new(path);
        if !netns::is_namespace(path) {
            return None;
        }
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    fn open(&self, path: &str) -> std::io::Result<Namespace> {
        let file = File::open(path)?;
        let identity = identity(&file)?;
        let netlink = Netlink::connect_in(&file).map_err(std::io::Error::other)?;
        Ok(Namespace { rtnl: Arc::new(netlink), identity, file: Some(file) })
    }

    fn create_namespace(&mut self, name: &str) -> std::io::Result<Created> {
        netns::create(name, &mut self.spare)
    }

    fn namespace_deleter(&self) -> DeleteNamespaces {
        Box::new(|names| {
            names
                .into_iter()
                .map(|name| DeletedNamespace {
                    existed: Path::new(crate::plan::attachment::NETNS_DIR).join(&name).exists(),
                    files_error: files::remove(&name).err().map(|e| e.to_string()),
                    result: netns::delete(&name),
                    name,
                })
                .collect()
        })
    }

    fn keep_spare_namespace(&mut self) {
        self.spare = netns::Spare::wanted();
        self.spare.refill();
    }

    fn refill_spare_namespace(&mut self) {
        self.spare.refill();
    }

    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<bool> {
        sysctl::ensure(key, value)
    }

    fn disable_ipv6_on_node(&self, ifname: &str) {
        self.node_ipv6_conf.disable_on(ifname);
    }

    fn disable_ipv6_in(&self, ns: &Namespace, created: Option<&Created>, ifname: &str) {
        let Some(file) = &ns.file else { return };
        let _ = netns::with_netns(file, || match created.and_then(|c| c.ipv6_conf.as_ref()) {
            Some(conf) => conf.disable_on(ifname),
            None => sysctl::disable_ipv6_on(ifname),
        });
    }

    fn sysctl_in(&self, ns: &Namespace, key: &str, value: &str) -> std::io::Result<bool> {
        let Some(file) = &ns.file else { return Ok(false) };
        netns::with_netns(file, || sysctl::ensure(key, value))?
    }

    fn write_files(&self, files: &SandboxFiles) -> std::io::Result<u32> {
        files::ensure(files)
    }

    fn ruleset_generation(&self) -> Option<u64> {
        super::nft_generation::generation().inspect_err(|e| tracing::debug!(error = %e, "no ruleset generation")).ok().map(u64::from)
    }

    fn take_ruleset(&mut self) -> Box<dyn Ruleset> {
        self.ruleset.take().unwrap_or_else(|| Box::new(NftFirewall::new()))
    }

    fn put_ruleset(&mut self, ruleset: Box<dyn Ruleset>) {
        self.ruleset = Some(ruleset);
    }
}
