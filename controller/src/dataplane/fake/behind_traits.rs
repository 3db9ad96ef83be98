//! The fake kernel behind the dataplane's traits (`kernel`): the system,
//! each namespace's netlink, and the ruleset, all acting on the one
//! [`FakeKernel`] state.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{FakeKernel, Ns, NODE};
use crate::dataplane::kernel::{Change, DeleteNamespaces, DeletedNamespace, LinkId, Namespace, Neighbours, Result, Rtnl, Ruleset, System};
use crate::dataplane::netlink::{self, Address, Link, Neighbour, NetlinkError, Route};
use crate::dataplane::netns::Created;
use crate::plan::attachment::NETNS_DIR;
use crate::plan::desired::FirewallPlan;
use crate::plan::names::SandboxFiles;

/// One namespace's netlink.
struct FakeRtnl {
    kernel: FakeKernel,
    ns: u64,
}

impl FakeRtnl {
    fn read<T>(&self, what: &str, f: impl FnOnce(&Ns) -> T) -> Result<T> {
        let mut state = self.kernel.lock();
        if self.ns != NODE {
            let read = format!("{}: {what}", state.name_of(self.ns));
            state.reads.push(read);
        }
        let ns = state.namespaces.get(&self.ns).ok_or_else(|| NetlinkError {
            op: what.into(),
            message: "namespace gone".into(),
            errno: Some(2),
        })?;
        Ok(f(ns))
    }
}

impl Rtnl for FakeRtnl {
    fn links(&self) -> BoxFuture<'_, Result<Vec<Link>>> {
        let links = self.read("links", |ns| ns.links.values().cloned().collect());
        Box::pin(async move { links })
    }

    fn link<'a>(&'a self, which: LinkId<'a>) -> BoxFuture<'a, Result<Option<Link>>> {
        let link = self.read("link", |ns| {
            ns.links
                .values()
                .find(|l| match which {
                    LinkId::Name(name) => l.name == name,
                    LinkId::Index(index) => l.index == index,
                })
                .cloned()
        });
        Box::pin(async move { link })
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<Address>>> {
        let addresses = self.read("addresses", |ns| ns.addresses.clone());
        Box::pin(async move { addresses })
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>>> {
        let routes = self.read("routes", |ns| ns.routes.clone());
        Box::pin(async move { routes })
    }

    fn owned_routes(&self) -> BoxFuture<'_, Result<Vec<Route>>> {
        let ours = |r: &&Route| r.message.header.protocol == netlink::ROUTE_PROTOCOL;
        let routes = self.read("routes", |ns| ns.routes.iter().filter(ours).cloned().collect());
        Box::pin(async move { routes })
    }

    fn neighbours(&self, _which: Neighbours) -> BoxFuture<'_, Result<Vec<Neighbour>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn nsid<'a>(&'a self, other: &'a Namespace) -> BoxFuture<'a, Result<i32>> {
        let mut state = self.kernel.lock();
        let next = state.next_nsid;
        let id = *state.nsids.entry(other.identity.1).or_insert(next);
        state.next_nsid = state.next_nsid.max(id + 1);
        Box::pin(async move { Ok(id) })
    }

    fn apply<'a>(&'a self, change: Change<'a>) -> BoxFuture<'a, Result<()>> {
        let result = self.kernel.lock().apply(self.ns, change);
        Box::pin(async move { result })
    }
}

struct FakeRuleset(FakeKernel);

impl Ruleset for FakeRuleset {
    fn sync(&mut self, plan: &FirewallPlan) -> std::result::Result<bool, String> {
        let mut state = self.0.lock();
        state.fail("ruleset").map_err(|e| e.to_string())?;
        let changed = state.ruleset.as_ref() != Some(plan);
        if changed {
            state.ruleset = Some(plan.clone());
            state.ruleset_generation += 1;
            state.changes.push("ruleset".into());
        }
        Ok(changed)
    }
}

pub(super) struct FakeSystem(pub(super) FakeKernel);

impl System for FakeSystem {
    fn node(&self) -> Arc<dyn Rtnl> {
        Arc::new(FakeRtnl { kernel: self.0.clone(), ns: NODE })
    }

    fn unhurried(&self) -> Option<Arc<dyn Rtnl>> {
        None
    }

    fn namespace_at(&self, path: &str) -> Option<(u64, u64)> {
        if path == "/proc/self/ns/net" {
            return Some((0, NODE)); // the agent's own
        }
        self.0.lock().paths.get(path).map(|id| (0, *id))
    }

    fn open(&self, path: &str) -> std::io::Result<Namespace> {
        let id = self.namespace_at(path).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        Ok(Namespace { rtnl: Arc::new(FakeRtnl { kernel: self.0.clone(), ns: id.1 }), identity: id, file: None })
    }

    fn create_namespace(&mut self, name: &str) -> std::io::Result<Created> {
        let path = format!("{NETNS_DIR}/{name}");
        let mut state = self.0.lock();
        if !state.paths.contains_key(&path) {
            let id = state.new_namespace();
            state.paths.insert(path.clone(), id);
            state.changes.push(format!("create namespace {path}"));
        }
        Ok(Created::default())
    }

    fn namespace_deleter(&self) -> DeleteNamespaces {
        let kernel = self.0.clone();
        Box::new(move |names| {
            let mut state = kernel.lock();
            names
                .into_iter()
                .map(|name| {
                    let path = format!("{NETNS_DIR}/{name}");
                    let existed = state.delete_namespace(&path);
                    if existed {
                        state.changes.push(format!("delete namespace {path}"));
                    }
                    state.files.remove(&name);
                    DeletedNamespace { name, existed, files_error: None, result: Ok(()) }
                })
                .collect()
        })
    }

    fn keep_spare_namespace(&mut self) {}

    fn refill_spare_namespace(&mut self) {}

    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<bool> {
        Ok(self.0.lock().sysctls.insert(key.into(), value.into()).as_deref() != Some(value))
    }

    fn disable_ipv6_on_node(&self, _ifname: &str) {}

    fn disable_ipv6_in(&self, _ns: &Namespace, _created: Option<&Created>, _ifname: &str) {}

    fn sysctl_in(&self, ns: &Namespace, key: &str, value: &str) -> std::io::Result<bool> {
        let mut state = self.0.lock();
        state.fail(&format!("sysctl {key}")).map_err(std::io::Error::other)?;
        let n = state.namespaces.get_mut(&ns.identity.1).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        // Only promote_secondaries changes what the fake does.
        match key.strip_prefix("net/ipv4/conf/").and_then(|k| k.strip_suffix("/promote_secondaries")) {
            Some(ifname) if value == "1" => Ok(n.promote.insert(ifname.into())),
            Some(ifname) => Ok(n.promote.remove(ifname)),
            None => Ok(false),
        }
    }

    fn write_files(&self, files: &SandboxFiles) -> std::io::Result<u32> {
        let mut state = self.0.lock();
        let content = (files.hosts.clone(), files.resolv_conf.clone());
        let before = state.files.insert(files.netns.clone(), content.clone());
        Ok(match before {
            None => 2,
            Some((hosts, resolv)) => u32::from(hosts != content.0) + u32::from(resolv != content.1),
        })
    }

    fn ruleset_generation(&self) -> Option<u64> {
        Some(self.0.lock().ruleset_generation)
    }

    fn take_ruleset(&mut self) -> Box<dyn Ruleset> {
        Box::new(FakeRuleset(self.0.clone()))
    }

    fn put_ruleset(&mut self, _ruleset: Box<dyn Ruleset>) {}
}
