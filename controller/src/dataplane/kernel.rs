//! The dataplane's side effects, behind two narrow traits, so that what a
//! pass decides to do (and to skip) is tested without root:
//!
//! - [`Rtnl`]: one namespace's netlink. Reads, and one door for every
//!   change: [`Rtnl::apply`] of a [`Change`].
//! - [`System`]: the rest. Namespaces (made, opened, deleted), sysctls,
//!   /etc/netns files, the nftables ruleset.
//!
//! `linux` implements them on the kernel, `fake` in memory (recording every
//! change, failing on demand). Whatever the implementation, every change
//! goes through [`Kernel`], which counts it by kind: a pass reports what it
//! applied, not what its call sites remembered to count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use ipnet::IpNet;

use super::netlink::{Address, Link, LinkChange, Neighbour, NetlinkError, Route};
use super::netns::Created;
use crate::api::MacvlanMode;
use crate::plan::desired::FirewallPlan;
use crate::plan::names::SandboxFiles;

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// One change to one namespace's links, addresses, routes or neighbours.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    CreateBridge {
        name: &'a str,
        mtu: u32,
        mac: [u8; 6],
        alias: &'a str,
    },
    /// A veth pair: `host` in this namespace on `controller`, up, and
    /// `peer` made straight inside `peer_ns`, down.
    CreateVeth {
        host: &'a str,
        alias: &'a str,
        controller: u32,
        peer: &'a str,
        peer_ns: &'a Namespace,
        mac: [u8; 6],
        mtu: u32,
    },
    /// A macvlan on `parent` (here), made straight inside `ns`, up.
    CreateMacvlan {
        name: &'a str,
        parent: u32,
        mode: MacvlanMode,
        ns: &'a Namespace,
        mac: [u8; 6],
        mtu: u32,
    },
    CreateVxlan {
        name: &'a str,
        vni: u32,
        port: u16,
        local: Ipv4Addr,
        mtu: u32,
        mac: [u8; 6],
        alias: &'a str,
    },
    SetLink {
        index: u32,
        name: &'a str,
        change: LinkChange,
    },
    /// Hairpin mode on for a bridge port: a frame may leave by the port it
    /// came in (a container reaching its own published port, DNATed while
    /// bridged with br_netfilter).
    SetHairpin {
        index: u32,
        name: &'a str,
    },
    DeleteLink {
        index: u32,
        name: &'a str,
    },
    /// Many links in one kernel transaction: moved to `group`, which is
    /// then deleted (the caller knows no other link is in it).
    DeleteLinks {
        links: &'a [(u32, String)],
        group: u32,
    },
    AddAddress {
        index: u32,
        net: IpNet,
        ifname: &'a str,
    },
    DeleteAddress {
        index: u32,
        net: IpNet,
        ifname: &'a str,
    },
    ReplaceDefaultRoute {
        index: u32,
        gateway: IpAddr,
    },
    /// A route of netlet's (overlays; containers on them): via `gateway`
    /// (of `dst`'s family) on the link (onlink), or without one on the
    /// link; at `metric`, or the kernel's default.
    ReplaceRoute {
        dst: IpNet,
        index: u32,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    },
    DeleteRoute {
        route: &'a Route,
    },
    AddFdb {
        index: u32,
        mac: [u8; 6],
        vtep: IpAddr,
    },
    AddNeighbour {
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    },
    /// A proxy entry: the node answers neighbour solicitations for `ip`
    /// on the link (with proxy_ndp on).
    AddProxy {
        index: u32,
        ip: IpAddr,
    },
    DeleteNeighbour {
        neighbour: &'a Neighbour,
    },
}

impl Change<'_> {
    /// The kind it is counted as (the `kind` label of kernel_mutations_total).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::AddAddress { .. } | Change::DeleteAddress { .. } => "address",
            Change::ReplaceDefaultRoute { .. } | Change::ReplaceRoute { .. } | Change::DeleteRoute { .. } => "route",
            Change::AddFdb { .. } | Change::AddNeighbour { .. } | Change::AddProxy { .. } | Change::DeleteNeighbour { .. } => "neighbour",
            _ => "link",
        }
    }

    /// How many kernel objects it changes.
    fn count(&self) -> u32 {
        match self {
            Change::DeleteLinks { links, .. } => links.len() as u32,
            _ => 1,
        }
    }
}

/// Which link to read.
#[derive(Clone, Copy, Debug)]
pub enum LinkId<'a> {
    Name(&'a str),
    Index(u32),
}

/// Which neighbour entries to read.
#[derive(Clone, Copy, Debug)]
pub enum Neighbours {
    /// FDB, ARP and ND entries on one device.
    OnDevice(u32),
    /// IPv4 entries on every device.
    Ipv4,
    /// IPv6 proxy entries on one device.
    Proxies(u32),
}

/// One network namespace's netlink.
pub trait Rtnl: Send + Sync {
    fn links(&self) -> BoxFuture<'_, Result<Vec<Link>>>;
    /// One link (a get, not a dump); None if there is none.
    fn link<'a>(&'a self, which: LinkId<'a>) -> BoxFuture<'a, Result<Option<Link>>>;
    fn addresses(&self) -> BoxFuture<'_, Result<Vec<Address>>>;
    /// Every route of the main table, both families.
    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>>>;
    /// Routes of the main table that netlet added, both families.
    fn owned_routes(&self) -> BoxFuture<'_, Result<Vec<Route>>>;
    fn neighbours(&self, which: Neighbours) -> BoxFuture<'_, Result<Vec<Neighbour>>>;
    /// The id this namespace knows `other` by, given one if it has none:
    /// events from there are heard here tagged with it.
    fn nsid<'a>(&'a self, other: &'a Namespace) -> BoxFuture<'a, Result<i32>>;
    fn apply<'a>(&'a self, change: Change<'a>) -> BoxFuture<'a, Result<()>>;
}

/// A namespace held open for a pass.
pub struct Namespace {
    /// Its netlink (not counted: the dataplane wraps it in [`Recorded`]).
    pub rtnl: Arc<dyn Rtnl>,
    /// Device and inode of the namespace: a namespace replaced at the same
    /// path is another one.
    pub identity: (u64, u64),
    /// On Linux, the namespace itself (veth peers are made in it through
    /// it, and its sysctls reached).
    pub file: Option<File>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Namespace{:?}", self.identity)
    }
}

/// What deleting one namespace we made came to.
pub struct DeletedNamespace {
    pub name: String,
    pub existed: bool,
    /// Removing its /etc/netns files failed (the namespace still goes).
    pub files_error: Option<String>,
    pub result: std::io::Result<()>,
}

/// Deletes namespaces (and their /etc/netns files); blocking, run on a
/// thread of its own.
pub type DeleteNamespaces = Box<dyn FnOnce(Vec<String>) -> Vec<DeletedNamespace> + Send>;

/// The nftables ruleset; its sync blocks (nft processes), on a thread of its own.
pub trait Ruleset: Send {
    /// Converges the ruleset to `plan`; whether it changed anything.
    fn sync(&mut self, plan: &FirewallPlan) -> std::result::Result<bool, String>;
}

/// Everything else the dataplane changes or reads.
pub trait System: Send {
    /// The node namespace's netlink.
    fn node(&self) -> Arc<dyn Rtnl>;
    /// A handle to send slow node requests with (a link deletion waits for
    /// the kernel ~20-30 ms) without holding up the pass; None: there is
    /// none, they go through `node`.
    fn unhurried(&self) -> Option<Arc<dyn Rtnl>>;
    /// The namespace at `path`, if one is there: its identity.
    fn namespace_at(&self, path: &str) -> Option<(u64, u64)>;
    /// Opens the namespace at `path` (known to be one, or given by path).
    fn open(&self, path: &str) -> std::io::Result<Namespace>;
    /// Makes the managed namespace `name` (`/run/netns/<name>`); succeeds
    /// if it exists.
    fn create_namespace(&mut self, name: &str) -> std::io::Result<Created>;
    /// Deletes managed namespaces and their /etc/netns files; blocking.
    fn namespace_deleter(&self) -> DeleteNamespaces;
    /// Keeps a namespace made ahead from now on (long-running agents).
    fn keep_spare_namespace(&mut self);
    /// Makes the next one once the last was used.
    fn refill_spare_namespace(&mut self);
    /// Sets a sysctl of the node namespace (`net/ipv4/ip_forward`) if it
    /// differs; whether it wrote.
    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<bool>;
    /// Turns IPv6 off on `ifname` in the node namespace.
    fn disable_ipv6_on_node(&self, ifname: &str);
    /// Turns IPv6 off on `ifname` in `ns` (`created`: what is known of it
    /// if this pass made it).
    fn disable_ipv6_in(&self, ns: &Namespace, created: Option<&Created>, ifname: &str);
    /// Sets a sysctl of `ns` (`net/ipv4/conf/eth0/promote_secondaries`)
    /// if it differs; whether it wrote.
    fn sysctl_in(&self, ns: &Namespace, key: &str, value: &str) -> std::io::Result<bool>;
    /// Writes a sandbox's /etc/netns files where they differ; how many.
    fn write_files(&self, files: &SandboxFiles) -> std::io::Result<u32>;
    /// nf_tables' generation: bumped by every ruleset transaction
    /// committed, anyone's (None: it cannot be read).
    fn ruleset_generation(&self) -> Option<u64>;
    /// The ruleset, to sync on a thread of its own (and give back).
    fn take_ruleset(&mut self) -> Box<dyn Ruleset>;
    fn put_ruleset(&mut self, ruleset: Box<dyn Ruleset>);
}

/// Changes by kind, as applied.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<BTreeMap<&'static str, u32>>>);

impl Journal {
    pub fn count(&self, kind: &'static str, n: u32) {
        if n > 0 {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += n;
        }
    }

    /// What was counted since the last take.
    pub fn take(&self) -> BTreeMap<&'static str, u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The node's links and addresses a pass changed (or tried to): read again
/// before the node's view is trusted, however late their events come.
#[derive(Debug, Default)]
pub struct Touched {
    pub names: BTreeSet<String>,
    pub indexes: BTreeSet<u32>,
    pub addresses: bool,
}

impl Touched {
    fn note(&mut self, change: &Change<'_>) {
        match *change {
            Change::CreateBridge { name, .. } | Change::CreateVxlan { name, .. } => {
                self.names.insert(name.to_string());
            }
            Change::CreateVeth { host, .. } => {
                self.names.insert(host.to_string());
            }
            Change::SetLink { index, .. } | Change::SetHairpin { index, .. } | Change::DeleteLink { index, .. } => {
                self.indexes.insert(index);
            }
            Change::DeleteLinks { links, .. } => self.indexes.extend(links.iter().map(|(index, _)| *index)),
            Change::AddAddress { index, .. } | Change::DeleteAddress { index, .. } => {
                self.indexes.insert(index);
                self.addresses = true;
            }
            // Made in a sandbox, or not in the view (routes, neighbours).
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.indexes.is_empty() && !self.addresses
    }
}

/// A namespace's netlink that counts every change it applies in a
/// [`Journal`] (and, for the node's, notes the links it touches); reads go
/// straight through.
#[derive(Clone)]
pub struct Recorded {
    rtnl: Arc<dyn Rtnl>,
    journal: Journal,
    touched: Option<Arc<Mutex<Touched>>>,
}

impl Recorded {
    pub fn new(rtnl: Arc<dyn Rtnl>, journal: Journal) -> Self {
        Recorded { rtnl, journal, touched: None }
    }

    /// The node's, noting in `touched` what each change is about before it
    /// is sent (a failed change is looked at again too).
    pub fn node(rtnl: Arc<dyn Rtnl>, journal: Journal, touched: Arc<Mutex<Touched>>) -> Self {
        Recorded { rtnl, journal, touched: Some(touched) }
    }

    /// Applies `change`, counting it once applied.
    pub async fn apply(&self, change: Change<'_>) -> Result<()> {
        if let Some(touched) = &self.touched {
            touched.lock().unwrap_or_else(|e| e.into_inner()).note(&change);
        }
        let (kind, n) = (change.kind(), change.count());
        self.rtnl.apply(change).await?;
        self.journal.count(kind, n);
        Ok(())
    }
}

impl std::ops::Deref for Recorded {
    type Target = dyn Rtnl;
    fn deref(&self) -> &Self::Target {
        &*self.rtnl
    }
}
