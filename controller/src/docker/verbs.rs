//! `netlet network create|connect|disconnect|rm|ls`: Docker's verbs and
//! flags over the declarative store. Each checks what Docker's daemon
//! would refuse (with Docker's wording), writes or removes one YAML file in
//! the manifest directory, and, when an agent runs on that directory,
//! waits until the agent realized it (a create or connect the agent
//! refuses is rolled back, as Docker leaves nothing behind on an error).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::inspect::id_of;
use super::store::{key, wait_for, wait_gone, ManifestDir, Outcome};
use crate::api::{Attachment, AttachmentSpec, Driver, IpamConfig, Kind, MacvlanMode, MacvlanOptions, Network, NetworkSpec, Sandbox};
use crate::objects::ObjectKey;
use crate::state::DEFAULT_STATE_DIR;

/// Where the verbs read and write, and whom they wait for.
#[derive(clap::Args, Clone)]
pub struct Place {
    /// The manifest directory (default: the one the agent of --state-dir
    /// reads, else /etc/netlet/manifests).
    #[arg(long, global = true)]
    pub manifests: Option<PathBuf>,
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Seconds to wait for the agent to realize a change.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
}

pub const DEFAULT_MANIFESTS: &str = "/etc/netlet/manifests";

impl Place {
    /// The manifest directory, and whether an agent reads it.
    pub fn resolve(&self) -> (PathBuf, bool) {
        let agent = crate::running::running(&self.state_dir);
        let dir =
            self.manifests.clone().or_else(|| agent.as_ref().map(|a| a.manifests.clone())).unwrap_or_else(|| DEFAULT_MANIFESTS.into());
        let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let watched = agent.is_some_and(|a| a.manifests == canonical);
        (dir, watched)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// A refusal, printed as Docker prints its daemon's.
#[derive(Debug)]
pub struct Refused(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(message.into()))
}

impl From<anyhow::Error> for Refused {
    fn from(e: anyhow::Error) -> Self {
        Refused(format!("{e:#}"))
    }
}

/// Writes `object` as `key` and, when an agent reads the directory, waits
/// until it realized this version of it (`same` tells the version). A
/// refusal rolls the file back (as Docker leaves nothing behind), unless
/// `keep` says why it stays.
pub fn write_and_wait<T: serde::Serialize + serde::de::DeserializeOwned>(
    store: &ManifestDir,
    key: &ObjectKey,
    object: &T,
    place: &Place,
    same: impl Fn(&T) -> bool,
    keep: Option<&str>,
) -> Result<(), Refused> {
    let (dir, watched) = (&store.dir, place.resolve().1);
    let file = store.write(key, object)?;
    if !watched {
        eprintln!("wrote {} (no agent reads {}: `netlet run --manifests {}` realizes it)", file.display(), dir.display(), dir.display());
        return Ok(());
    }
    match wait_for(&place.state_dir, key, place.timeout(), same)? {
        Outcome::Ready(_) => Ok(()),
        Outcome::Failed { reason, message } => match keep {
            Some(why) => refuse(format!("{message} ({reason}); {} is kept: {why}", file.display())),
            None => {
                std::fs::remove_file(&file).map_err(anyhow::Error::from)?;
                refuse(format!("{message} ({reason}); {} removed again", file.display()))
            }
        },
    }
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// bridge, macvlan, overlay, host or null.
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    #[arg(long)]
    pub subnet: Vec<String>,
    #[arg(long)]
    pub gateway: Vec<String>,
    #[arg(long)]
    pub ip_range: Vec<String>,
    /// name=address, never handed out.
    #[arg(long)]
    pub aux_address: Vec<String>,
    #[arg(long)]
    pub internal: bool,
    #[arg(long)]
    pub ipv6: bool,
    /// Driver options (com.docker.network.*, parent, macvlan_mode).
    #[arg(short = 'o', long = "opt")]
    pub opt: Vec<String>,
    #[arg(long)]
    pub label: Vec<String>,
    pub name: String,
}

fn key_value(text: &str, what: &str) -> Result<(String, String), Refused> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => refuse(format!("invalid {what} {text:?}: expected KEY=VALUE")),
    }
}

fn subnets_of(spec: &NetworkSpec) -> Vec<IpNet> {
    spec.ipam.config.iter().filter_map(|c| c.subnet.parse().ok()).collect()
}

/// The network spec `docker network create` would make, or Docker's refusal.
pub fn network_spec(args: &CreateArgs, others: &[&Network]) -> Result<Network, Refused> {
    let driver = match args.driver.as_str() {
        "bridge" => Driver::Bridge,
        "macvlan" => Driver::Macvlan,
        "overlay" => Driver::Overlay,
        "host" => Driver::Host,
        "null" => Driver::Null,
        other => return refuse(format!("plugin {other:?} not found")),
    };
    let mut spec = NetworkSpec { driver, internal: args.internal, enable_ipv6: args.ipv6, ..Default::default() };
    let mut config: Vec<(IpNet, IpamConfig)> = Vec::new();
    for s in &args.subnet {
        let Ok(net) = s.parse::<IpNet>() else { return refuse(format!("invalid subnet {s} : invalid CIDR address: {s}")) };
        for other in others {
            if subnets_of(&other.spec).iter().any(|o| o.contains(&net.network()) || net.contains(&o.network())) {
                return refuse("Pool overlaps with other one on this address space");
            }
        }
        config.push((net, IpamConfig { subnet: s.clone(), ..Default::default() }));
    }
    if config.is_empty() && !(args.gateway.is_empty() && args.ip_range.is_empty() && args.aux_address.is_empty()) {
        return refuse("every ip-range or gateway must have a corresponding subnet");
    }
    let owner = |ip: IpAddr, config: &mut Vec<(IpNet, IpamConfig)>| config.iter_mut().position(|(net, _)| net.contains(&ip));
    for g in &args.gateway {
        let ip: IpAddr = g.parse().map_err(|_| Refused(format!("invalid gateway address {g}")))?;
        let Some(i) = owner(ip, &mut config) else { return refuse(format!("no matching subnet for gateway {g}")) };
        config[i].1.gateway = Some(g.clone());
    }
    for r in &args.ip_range {
        let range: IpNet = r.parse().map_err(|_| Refused(format!("invalid CIDR address: {r}")))?;
        let Some(i) = owner(range.network(), &mut config) else { return refuse(format!("no matching subnet for range {r}")) };
        config[i].1.ip_range = Some(r.clone());
    }
    for a in &args.aux_address {
        let (name, addr) = key_value(a, "aux-address")?;
        let ip: IpAddr = addr.parse().map_err(|_| Refused(format!("invalid aux-address {a}")))?;
        let Some(i) = owner(ip, &mut config) else { return refuse(format!("no matching subnet for aux-address {addr}")) };
        config[i].1.aux_addresses.insert(name, addr);
    }
    spec.ipam.config = config.into_iter().map(|(_, c)| c).collect();
    for o in &args.opt {
        let (k, v) = key_value(o, "option")?;
        match (k.as_str(), driver) {
            ("parent", Driver::Macvlan) => spec.macvlan.get_or_insert_with(MacvlanOptions::default).parent = v,
            ("macvlan_mode", Driver::Macvlan) => {
                let mode: MacvlanMode = serde_json::from_value(serde_json::Value::String(v.clone())).map_err(|_| {
                    Refused(format!("requested macvlan mode '{v}' is not valid, 'bridge' mode is the macvlan driver default"))
                })?;
                spec.macvlan.get_or_insert_with(MacvlanOptions::default).mode = mode;
            }
            _ => {
                spec.options.insert(k, v);
            }
        }
    }
    if driver == Driver::Macvlan && spec.macvlan.is_none() {
        return refuse("netlet's macvlan networks need a parent: -o parent=IFACE");
    }
    let mut network = Network::new(&args.name, spec);
    let labels: BTreeMap<String, String> = args.label.iter().map(|l| key_value(l, "label")).collect::<Result<_, _>>()?;
    network.metadata.labels = Some(labels).filter(|l| !l.is_empty());
    Ok(network)
}

pub fn create(args: &CreateArgs, place: &Place) -> Result<(), Refused> {
    let (dir, _) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let networks: Vec<&Network> = store.loaded.objects.networks.iter().map(|n| n.as_ref()).collect();
    if networks.iter().any(|n| n.metadata.name.as_deref() == Some(args.name.as_str())) {
        return refuse(format!("network with name {} already exists", args.name));
    }
    let network = network_spec(args, &networks)?;
    let key = key(Kind::Network, None, &args.name);
    write_and_wait(&store, &key, &network, place, |n: &Network| n.spec == network.spec, None)?;
    println!("{}", id_of("Network", "", &args.name));
    Ok(())
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub ip6: Option<String>,
    #[arg(long)]
    pub alias: Vec<String>,
    pub network: String,
    /// The sandbox: a named network namespace (Docker's container).
    pub sandbox: String,
}

fn sandbox_of(a: &Attachment) -> Option<&str> {
    a.spec.sandbox.netns.as_deref()
}

pub fn attachment_for(args: &ConnectArgs, store: &ManifestDir) -> Result<Attachment, Refused> {
    let objects = &store.loaded.objects;
    let Some(network) = objects.networks.iter().find(|n| n.metadata.name.as_deref() == Some(args.network.as_str())) else {
        return refuse(format!("network {} not found", args.network));
    };
    if matches!(network.spec.driver, Driver::Host | Driver::Null) {
        return refuse("container cannot be disconnected from host network or connected to host network");
    }
    let mine: Vec<&Attachment> =
        objects.attachments.iter().map(|a| a.as_ref()).filter(|a| sandbox_of(a) == Some(args.sandbox.as_str())).collect();
    if mine.iter().any(|a| a.spec.network == args.network) {
        return refuse(format!("endpoint with name {} already exists in network {}", args.sandbox, args.network));
    }
    let subnets = subnets_of(&network.spec);
    for ip in [&args.ip, &args.ip6].into_iter().flatten() {
        if args.network == "bridge" {
            return refuse("user specified IP address is supported on user defined networks only");
        }
        let addr: IpAddr = ip.parse().map_err(|_| Refused(format!("invalid IP address {ip}")))?;
        if !subnets.iter().any(|s| s.contains(&addr)) {
            return refuse(format!("Invalid address {ip}: It does not belong to any of this network's subnets"));
        }
        let holder = objects
            .attachments
            .iter()
            .find(|a| a.spec.network == args.network && [&a.spec.ipv4_address, &a.spec.ipv6_address].contains(&&Some(ip.clone())));
        if let Some(holder) = holder {
            return refuse(format!("Address already in use (by attachment {})", holder.metadata.name.as_deref().unwrap_or_default()));
        }
    }
    let taken = |name: &str| objects.attachments.iter().any(|a| a.metadata.name.as_deref() == Some(name));
    let name = if taken(&args.sandbox) { format!("{}-{}", args.sandbox, args.network) } else { args.sandbox.clone() };
    if taken(&name) {
        return refuse(format!("an attachment named {name} already exists"));
    }
    let spec = AttachmentSpec {
        network: args.network.clone(),
        sandbox: Sandbox { netns: Some(args.sandbox.clone()), ..Default::default() },
        ipv4_address: args.ip.clone(),
        ipv6_address: args.ip6.clone(),
        aliases: args.alias.clone(),
        // Like Docker, a later network does not take the default route.
        default_route: (!mine.is_empty()).then_some(false),
        ..Default::default()
    };
    Ok(Attachment::new(&name, spec))
}

pub fn connect(args: &ConnectArgs, place: &Place) -> Result<(), Refused> {
    let (dir, _) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let attachment = attachment_for(args, &store)?;
    let name = attachment.metadata.name.clone().unwrap_or_default();
    let key = key(Kind::Attachment, None, &name);
    write_and_wait(&store, &key, &attachment, place, |a: &Attachment| a.spec == attachment.spec, None)
}

#[derive(clap::Args)]
pub struct DisconnectArgs {
    /// Accepted for Docker's sake; nothing to force.
    #[arg(short, long)]
    pub force: bool,
    pub network: String,
    pub sandbox: String,
}

pub fn disconnect(args: &DisconnectArgs, place: &Place) -> Result<(), Refused> {
    let (dir, watched) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let found = store.loaded.objects.attachments.iter().find(|a| {
        a.spec.network == args.network
            && (sandbox_of(a) == Some(args.sandbox.as_str()) || a.metadata.name.as_deref() == Some(args.sandbox.as_str()))
    });
    let Some(att) = found else {
        return refuse(format!("container {} is not connected to network {}", args.sandbox, args.network));
    };
    let key = key(Kind::Attachment, att.metadata.namespace.as_deref(), att.metadata.name.as_deref().unwrap_or_default());
    store.remove(&key)?;
    if watched {
        wait_gone(&place.state_dir, &key, place.timeout())?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Removes each network; like Docker, goes on past one that fails.
pub fn rm(args: &RmArgs, place: &Place) -> Result<(), Refused> {
    let (dir, watched) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let objects = &store.loaded.objects;
    let mut failed = Vec::new();
    for name in &args.names {
        let result = (|| {
            if !objects.networks.iter().any(|n| n.metadata.name.as_deref() == Some(name.as_str())) {
                return refuse(format!("No such network: {name}"));
            }
            if super::import::DEFAULT_NETWORKS.contains(&name.as_str()) {
                return refuse(format!("{name} is a pre-defined network and cannot be removed"));
            }
            if objects.attachments.iter().any(|a| &a.spec.network == name) {
                return refuse(format!(
                    "error while removing network: network {name} id {} has active endpoints",
                    id_of("Network", "", name)
                ));
            }
            let key = key(Kind::Network, None, name);
            store.remove(&key)?;
            if watched {
                wait_gone(&place.state_dir, &key, place.timeout())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => println!("{name}"),
            Err(Refused(message)) => failed.push(message),
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(Refused(failed.join("\n"))),
    }
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn ls(args: &LsArgs, place: &Place) -> Result<(), Refused> {
    let (dir, _) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let mut networks: Vec<&Network> = store.loaded.objects.networks.iter().map(|n| n.as_ref()).collect();
    networks.sort_by_key(|n| n.metadata.name.clone());
    let id = |name: &str| {
        let id = id_of("Network", "", name);
        if args.no_trunc {
            id
        } else {
            id[..12].to_string()
        }
    };
    if args.quiet {
        networks.iter().for_each(|n| println!("{}", id(n.metadata.name.as_deref().unwrap_or_default())));
        return Ok(());
    }
    let width = if args.no_trunc { 64 } else { 12 };
    let name_width = networks.iter().map(|n| n.metadata.name.as_deref().unwrap_or_default().len()).max().unwrap_or(0).max(4);
    println!("{:<width$}   {:<name_width$}   {:<9} SCOPE", "NETWORK ID", "NAME", "DRIVER");
    for n in networks {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        let scope = if n.spec.driver == Driver::Overlay { "global" } else { "local" };
        println!("{:<width$}   {name:<name_width$}   {:<9} {scope}", id(name), n.spec.driver.as_str());
    }
    Ok(())
}

#[cfg(test)]
#[path = "verbs_tests.rs"]
mod tests;
