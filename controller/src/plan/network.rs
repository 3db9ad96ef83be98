//! Network objects resolved into what the node needs: device name, subnets
//! with gateways and reserved addresses, and the bridge policy flags.

use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;

use super::outcome::Failure;
use super::tenancy::NetworkTenancy;
use crate::api::{docker_options as opt, Driver, MacvlanMode, Network};
use crate::naming;

pub const DEFAULT_MTU: u32 = 1500;
/// The network Docker users know as `bridge`: no embedded DNS on it.
pub const DEFAULT_BRIDGE_NETWORK: &str = "bridge";

#[derive(Clone, Debug, PartialEq)]
pub struct Subnet {
    pub net: IpNet,
    pub gateway: IpAddr,
    /// Dynamic addresses come only from here.
    pub range: IpNet,
    /// Never handed out.
    pub aux: Vec<IpAddr>,
}

impl Subnet {
    /// Addresses no attachment may have: network, broadcast (IPv4),
    /// gateway and aux addresses.
    pub fn reserved_reason(&self, ip: IpAddr) -> Option<&'static str> {
        if ip == self.net.network() {
            Some("the subnet's network address")
        } else if ip.is_ipv4() && ip == self.net.broadcast() {
            Some("the subnet's broadcast address")
        } else if ip == self.gateway {
            Some("the gateway")
        } else if self.aux.contains(&ip) {
            Some("an auxiliary (reserved) address")
        } else {
            None
        }
    }

    /// The gateway with the subnet's prefix length, as put on the bridge.
    pub fn gateway_cidr(&self) -> IpNet {
        IpNet::new(self.gateway, self.net.prefix_len()).expect("prefix from a valid subnet")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedNetwork {
    pub name: String,
    pub driver: Driver,
    /// Bridge device (bridge driver only).
    pub bridge: String,
    pub mtu: u32,
    pub icc: bool,
    pub masquerade: bool,
    pub internal: bool,
    pub enable_ipv6: bool,
    pub host_binding_ipv4: Option<IpAddr>,
    pub subnets: Vec<Subnet>,
    pub macvlan: Option<(String, MacvlanMode)>,
    pub overlay: Option<OverlaySpec>,
    /// The MTU was given (else overlays derive it from the underlay).
    pub mtu_explicit: bool,
    /// Who may attach to it, and what they may publish.
    pub tenancy: NetworkTenancy,
}

/// A VXLAN overlay: VNI, UDP port and every node's VTEP address.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlaySpec {
    pub vni: u32,
    pub port: u16,
    pub peers: Vec<(String, IpAddr)>,
    /// overlay.blockPrefixLength, if given.
    pub block_prefix_length: Option<u8>,
}

pub const VXLAN_PORT: u16 = 4789;
/// VXLAN over IPv4 costs 50 bytes of the underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

impl ResolvedNetwork {
    pub fn subnet_v4(&self) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.net.addr().is_ipv4())
    }
    pub fn subnet_v6(&self) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.net.addr().is_ipv6())
    }
    pub fn subnet_for(&self, ip: IpAddr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.net.contains(&ip))
    }
    /// Bridge and overlay networks both put their containers on a bridge.
    pub fn has_bridge(&self) -> bool {
        matches!(self.driver, Driver::Bridge | Driver::Overlay)
    }
}

fn parse_net(text: &str, what: &str) -> Result<IpNet, Failure> {
    let net: IpNet =
        text.trim().parse().map_err(|_| Failure::invalid(format!("{what} {text:?} is not a valid CIDR (expected e.g. 172.25.0.0/16)")))?;
    if net != net.trunc() {
        return Err(Failure::invalid(format!("{what} {text:?} has host bits set; did you mean {}?", net.trunc())));
    }
    Ok(net)
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, Failure> {
    text.trim().parse().map_err(|_| Failure::invalid(format!("{what} {text:?} is not a valid IP address")))
}

fn parse_bool_option(key: &str, value: &str) -> Result<bool, Failure> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Failure::invalid(format!("option {key} must be true or false, not {value:?}"))),
    }
}

/// Validates a Network and resolves defaults and Docker option aliases.
pub fn resolve(net: &Network) -> Result<ResolvedNetwork, Failure> {
    let name = net.name_any();
    let spec = &net.spec;
    let options = &spec.options;
    let bridge_opts = spec.bridge.clone().unwrap_or_default();

    let bridge =
        bridge_opts.name.clone().or_else(|| options.get(opt::BRIDGE_NAME).cloned()).unwrap_or_else(|| naming::default_bridge_name(&name));
    naming::check_ifname(&bridge).map_err(|e| Failure::invalid(format!("bridge name: {e}")))?;

    let icc = match (bridge_opts.icc, options.get(opt::ENABLE_ICC)) {
        (Some(v), _) => v,
        (None, Some(v)) => parse_bool_option(opt::ENABLE_ICC, v)?,
        (None, None) => true,
    };
    let masquerade = match (bridge_opts.ip_masquerade, options.get(opt::ENABLE_IP_MASQUERADE)) {
        (Some(v), _) => v,
        (None, Some(v)) => parse_bool_option(opt::ENABLE_IP_MASQUERADE, v)?,
        (None, None) => true,
    };
    let host_binding_ipv4 = match bridge_opts.host_binding_ipv4.as_deref().or(options.get(opt::HOST_BINDING_IPV4).map(String::as_str)) {
        Some(text) => {
            let ip = parse_ip(text, "hostBindingIPv4")?;
            if !ip.is_ipv4() {
                return Err(Failure::invalid(format!("hostBindingIPv4 {text:?} is not an IPv4 address")));
            }
            // 0.0.0.0 means "every address", the same as leaving it unset.
            (!ip.is_unspecified()).then_some(ip)
        }
        None => None,
    };
    let mtu_explicit = spec.mtu.is_some() || options.contains_key(opt::MTU);
    let mtu = match (spec.mtu, options.get(opt::MTU)) {
        (Some(v), _) => v,
        (None, Some(v)) => v.parse().map_err(|_| Failure::invalid(format!("option {} must be a number, not {v:?}", opt::MTU)))?,
        (None, None) => DEFAULT_MTU,
    };
    if !(68..=65535).contains(&mtu) {
        return Err(Failure::invalid(format!("mtu {mtu} is out of range (68-65535)")));
    }

    let mut subnets = Vec::new();
    for (i, cfg) in spec.ipam.config.iter().enumerate() {
        let what = format!("ipam.config[{i}]");
        let net = parse_net(&cfg.subnet, &format!("{what}.subnet"))?;
        let usable_hosts_exist = match net {
            IpNet::V4(n) => n.prefix_len() <= 30,
            IpNet::V6(n) => n.prefix_len() <= 126,
        };
        if !usable_hosts_exist {
            return Err(Failure::invalid(format!("{what}.subnet {net} is too small for a gateway and an attachment")));
        }
        if net.addr().is_ipv6() && !spec.enable_ipv6 {
            return Err(Failure::invalid(format!("{what}.subnet {net} is IPv6 but enableIPv6 is false")));
        }
        let first_usable = next_ip(net.network());
        let gateway = match &cfg.gateway {
            Some(g) => parse_ip(g, &format!("{what}.gateway"))?,
            None => first_usable,
        };
        if !net.contains(&gateway) {
            return Err(Failure::invalid(format!("{what}.gateway {gateway} is outside the subnet {net}")));
        }
        if gateway == net.network() || (gateway.is_ipv4() && gateway == net.broadcast()) {
            return Err(Failure::invalid(format!("{what}.gateway {gateway} is the network or broadcast address of {net}")));
        }
        let range = match &cfg.ip_range {
            Some(r) => {
                let range = parse_net(r, &format!("{what}.ipRange"))?;
                if !(net.contains(&range.network()) && net.contains(&range.broadcast())) {
                    return Err(Failure::invalid(format!("{what}.ipRange {range} is not inside the subnet {net}")));
                }
                range
            }
            None => net,
        };
        let mut aux = Vec::new();
        for (aux_name, text) in &cfg.aux_addresses {
            let ip = parse_ip(text, &format!("{what}.auxAddresses.{aux_name}"))?;
            if !net.contains(&ip) {
                return Err(Failure::invalid(format!("{what}.auxAddresses.{aux_name} {ip} is outside the subnet {net}")));
            }
            aux.push(ip);
        }
        for earlier in &subnets {
            let earlier: &Subnet = earlier;
            if earlier.net.contains(&net.network()) || net.contains(&earlier.net.network()) {
                return Err(Failure::invalid(format!("{what}.subnet {net} overlaps {} of the same network", earlier.net)));
            }
        }
        subnets.push(Subnet { net, gateway, range, aux });
    }
    if spec.enable_ipv6 && !subnets.iter().any(|s| s.net.addr().is_ipv6()) && spec.driver != Driver::Host && spec.driver != Driver::Null {
        return Err(Failure::invalid("enableIPv6 is true but ipam.config has no IPv6 subnet"));
    }

    let macvlan = match spec.driver {
        Driver::Macvlan => {
            let m = spec.macvlan.as_ref().ok_or_else(|| Failure::invalid("driver macvlan needs macvlan.parent"))?;
            naming::check_ifname(&m.parent).map_err(|e| Failure::invalid(format!("macvlan.parent: {e}")))?;
            Some((m.parent.clone(), m.mode))
        }
        _ => None,
    };
    let overlay = match spec.driver {
        Driver::Overlay => {
            let o = spec.overlay.as_ref().ok_or_else(|| Failure::invalid("driver overlay needs overlay.vni and overlay.peers"))?;
            if o.vni == 0 || o.vni > 0x00ff_ffff {
                return Err(Failure::invalid(format!("overlay.vni {} is out of range (1-16777215)", o.vni)));
            }
            let mut peers: Vec<(String, IpAddr)> = Vec::new();
            for (i, peer) in o.peers.iter().enumerate() {
                let ip = parse_ip(&peer.address, &format!("overlay.peers[{i}].address"))?;
                if !ip.is_ipv4() {
                    return Err(Failure::invalid(format!("overlay.peers[{i}].address {ip}: only IPv4 underlays are supported")));
                }
                if peers.iter().any(|(n, _)| n == &peer.node) {
                    return Err(Failure::invalid(format!("overlay.peers lists node {} twice", peer.node)));
                }
                peers.push((peer.node.clone(), ip));
            }
            super::overlay::check_ipv6_blocks(&subnets, o.block_prefix_length)?;
            Some(OverlaySpec { vni: o.vni, port: o.port.unwrap_or(VXLAN_PORT), peers, block_prefix_length: o.block_prefix_length })
        }
        _ => None,
    };
    if matches!(spec.driver, Driver::Bridge | Driver::Macvlan | Driver::Overlay) && subnets.is_empty() {
        return Err(Failure::invalid(format!("driver {} needs at least one subnet in ipam.config", spec.driver.as_str())));
    }

    Ok(ResolvedNetwork {
        name,
        driver: spec.driver,
        bridge,
        mtu,
        icc,
        masquerade,
        internal: spec.internal,
        enable_ipv6: spec.enable_ipv6,
        host_binding_ipv4,
        subnets,
        macvlan,
        overlay,
        mtu_explicit,
        tenancy: NetworkTenancy::resolve(spec)?,
    })
}

/// The address after `ip` (wrapping is impossible for the callers: they
/// never ask past a subnet's end).
pub fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(u32::from(v4).wrapping_add(1).into()),
        IpAddr::V6(v6) => IpAddr::V6(u128::from(v6).wrapping_add(1).into()),
    }
}

/// Do two networks' subnets overlap? Returns the first overlapping pair.
pub fn overlap(a: &ResolvedNetwork, b: &ResolvedNetwork) -> Option<(IpNet, IpNet)> {
    for x in &a.subnets {
        for y in &b.subnets {
            if x.net.contains(&y.net.network()) || y.net.contains(&x.net.network()) {
                return Some((x.net, y.net));
            }
        }
    }
    None
}
