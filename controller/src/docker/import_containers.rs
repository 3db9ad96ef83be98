//! Containers of `docker inspect` (and the `Containers` lists of `docker
//! network inspect`) as Attachments and PortMappings.
//!
//! A container becomes one Attachment per network, all in one sandbox (a
//! named netns called like the container). The Attachment on the network
//! of its `NetworkMode` is named like the container and holds the default
//! route, the hostname, DNS settings, extra hosts and exposed ports; the
//! others are `NAME-NETWORK` with `defaultRoute: false`. Addresses are the
//! ones Docker assigned, made static; the MAC is kept when it is not the
//! one netlet derives from the IPv4 address anyway. `--network
//! container:X` shares X's sandbox; `host` and `none` use netlet's
//! networks of those names.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::import::{is_set, str_of, Imported, Networks, DEFAULT_NETWORKS};
use crate::api::{Attachment, AttachmentSpec, DnsConfig, ExposedPort, PortMapping, PortMappingSpec, PortSpec, Protocol, Sandbox};
use crate::naming::{format_mac, mac_from_ipv4};

/// Converts the containers, then the network members no container of the
/// input describes (those get what a network listing knows: name,
/// addresses, MAC).
pub(super) fn containers(ctrs: &[&Value], nets: &[&Value], known: &Networks, out: &mut Imported) {
    // Container ID and name -> name, for `container:` network modes.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for c in ctrs {
        let name = container_name(c);
        names.insert(str_of(c, "Id").to_string(), name.clone());
        names.insert(name.clone(), name);
    }
    if !ctrs.is_empty() {
        out.drop_field(
            "containers",
            "Image, Config.Cmd, Mounts, State, ...",
            "a container runtime's business: only a container's networking is imported",
        );
    }
    let mut missing_networks = BTreeSet::new();
    for c in ctrs {
        container(c, &names, known, &mut missing_networks, out);
    }
    let described: BTreeSet<&str> = ctrs.iter().map(|c| str_of(c, "Id")).collect();
    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    for net in nets {
        let network = str_of(net, "Name");
        if known.carried.get(network) != Some(&true) {
            continue;
        }
        for (id, member) in net.get("Containers").and_then(Value::as_object).into_iter().flatten() {
            if described.contains(id.as_str()) || id.starts_with("ep-") {
                continue;
            }
            let name = str_of(member, "Name").to_string();
            let seen = listed.entry(name.clone()).or_default();
            let attachment = if *seen == 0 { name.clone() } else { format!("{name}-{network}") };
            *seen += 1;
            let endpoint = Endpoint {
                ipv4: str_of(member, "IPv4Address").split('/').next().unwrap_or_default(),
                ipv6: str_of(member, "IPv6Address").split('/').next().unwrap_or_default(),
                mac: str_of(member, "MacAddress"),
            };
            let mut spec = attachment_spec(network, &name, &endpoint);
            spec.default_route = (*seen > 1).then_some(false);
            out.attachments.push(Attachment::new(&attachment, spec));
            out.drop_field(
                &format!("container {name}"),
                "(everything but its address on {network})",
                format!("only listed by `docker network inspect {network}`: import `docker inspect {name}` for its aliases, DNS and ports"),
            );
        }
    }
    for network in missing_networks {
        out.drop_field(
            &format!("network {network}"),
            "(whole network)",
            format!("used by containers but not in the input: import `docker network inspect {network}` as well"),
        );
    }
}

fn container_name(c: &Value) -> String {
    str_of(c, "Name").trim_start_matches('/').to_string()
}

/// What a network endpoint says about an interface.
struct Endpoint<'a> {
    ipv4: &'a str,
    ipv6: &'a str,
    mac: &'a str,
}

/// The Attachment of sandbox `sandbox` on `network` with the endpoint's
/// addresses; `host` and `none` take no addresses.
fn attachment_spec(network: &str, sandbox: &str, endpoint: &Endpoint<'_>) -> AttachmentSpec {
    let mut spec = AttachmentSpec { network: network.to_string(), ..Default::default() };
    if network == "host" {
        spec.sandbox = Sandbox { host: Some(true), ..Default::default() };
        return spec;
    }
    spec.sandbox = Sandbox { netns: Some(sandbox.to_string()), ..Default::default() };
    if network == "none" {
        return spec;
    }
    let present = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    spec.ipv4_address = present(endpoint.ipv4);
    spec.ipv6_address = present(endpoint.ipv6);
    let derived = endpoint.ipv4.parse().ok().map(|ip| format_mac(&mac_from_ipv4(ip)));
    spec.mac_address = present(endpoint.mac).filter(|mac| derived.as_deref() != Some(mac.to_ascii_lowercase().as_str()));
    spec
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

fn container(c: &Value, names: &BTreeMap<String, String>, known: &Networks, missing_networks: &mut BTreeSet<String>, out: &mut Imported) {
    let name = container_name(c);
    let object = format!("container {name}");
    let id = str_of(c, "Id");
    let short_id = &id[..id.len().min(12)];
    let (config, host) = (&c["Config"], &c["HostConfig"]);
    let mode = match str_of(host, "NetworkMode") {
        "default" | "" => "bridge",
        mode => mode,
    };
    if let Some(target) = mode.strip_prefix("container:") {
        match names.get(target) {
            Some(shared) => {
                let sandbox = Sandbox { attachment: Some(shared.clone()), ..Default::default() };
                out.attachments.push(Attachment::new(&name, AttachmentSpec { sandbox, ..Default::default() }));
            }
            None => out.drop_field(
                &object,
                "HostConfig.NetworkMode",
                format!("shares the network of container {target}, which is not in the input: import it as well"),
            ),
        }
        if host.get("PortBindings").is_some_and(is_set) {
            out.drop_field(&object, "HostConfig.PortBindings", "ignored by Docker too: the container shares another's network");
        }
        return;
    }
    for (field, reason) in [
        ("HostConfig.Links", "legacy --link: on a user-defined network the names resolve without it"),
        ("Config.Domainname", "netlet sets no domain name in the sandbox"),
    ] {
        let (section, key) = field.split_once('.').expect("dotted");
        if c[section].get(key).is_some_and(is_set) {
            out.drop_field(&object, field, reason);
        }
    }
    let endpoints: Vec<(&String, &Value)> =
        c.pointer("/NetworkSettings/Networks").and_then(Value::as_object).into_iter().flatten().collect();
    // The network of NetworkMode holds the default route (Docker's gateway
    // priority, when set, overrules it).
    let priority = |ep: &Value| ep.get("GwPriority").and_then(Value::as_i64).unwrap_or(0);
    let primary = endpoints
        .iter()
        .max_by_key(|(net, ep)| (priority(ep), net.as_str() == mode))
        .map(|(net, _)| net.as_str())
        .unwrap_or(mode)
        .to_string();
    let hostname = Some(str_of(config, "Hostname")).filter(|h| !h.is_empty() && *h != short_id);
    let mut primary_attachment = None;
    for (network, ep) in &endpoints {
        let network = network.as_str();
        match known.carried.get(network) {
            Some(false) => {
                let field = format!("NetworkSettings.Networks.{network}");
                out.drop_field(&object, &field, "its network's driver has no netlet counterpart");
                continue;
            }
            None if !DEFAULT_NETWORKS.contains(&network) => {
                missing_networks.insert(network.to_string());
            }
            _ => {}
        }
        let is_primary = network == primary;
        let attachment = if is_primary { name.clone() } else { format!("{name}-{network}") };
        let endpoint = Endpoint { ipv4: str_of(ep, "IPAddress"), ipv6: str_of(ep, "GlobalIPv6Address"), mac: str_of(ep, "MacAddress") };
        let mut spec = attachment_spec(network, &name, &endpoint);
        let field = |k: &str| format!("NetworkSettings.Networks.{network}.{k}");
        // Docker adds the short ID (and 20.10 the hostname) to the aliases;
        // netlet finds an attachment by its name and hostname already.
        spec.aliases =
            strings(ep.get("Aliases")).into_iter().filter(|a| a != short_id && *a != name && Some(a.as_str()) != hostname).collect();
        if ep.get("Links").is_some_and(is_set) {
            out.drop_field(&object, &field("Links"), "legacy --link: on a user-defined network the names resolve without it");
        }
        if ep.pointer("/IPAMConfig/LinkLocalIPs").is_some_and(is_set) {
            out.drop_field(&object, &field("IPAMConfig.LinkLocalIPs"), "netlet assigns no extra link-local addresses");
        }
        if ep.get("DriverOpts").is_some_and(is_set) {
            out.drop_field(&object, &field("DriverOpts"), "per-endpoint driver options have no netlet counterpart");
        }
        if is_primary && network != "host" {
            sandbox_settings(&mut spec, c, hostname, &object, out);
            primary_attachment = Some(attachment.clone());
        } else if !is_primary {
            spec.default_route = Some(false);
        }
        out.attachments.push(Attachment::new(&attachment, spec));
    }
    match primary_attachment {
        Some(attachment) if primary != "none" => port_mapping(c, &name, &attachment, &object, out),
        _ if host.get("PortBindings").is_some_and(is_set) => out.drop_field(
            &object,
            "HostConfig.PortBindings",
            format!("ignored by Docker too on the {primary} network: nothing is published"),
        ),
        _ => {}
    }
}

/// What belongs to the sandbox rather than one network: hostname, DNS,
/// extra hosts, exposed ports. Carried on the primary Attachment.
fn sandbox_settings(spec: &mut AttachmentSpec, c: &Value, hostname: Option<&str>, object: &str, out: &mut Imported) {
    let host = &c["HostConfig"];
    spec.hostname = hostname.map(str::to_string);
    let dns = DnsConfig {
        nameservers: strings(host.get("Dns")),
        searches: strings(host.get("DnsSearch")),
        options: strings(host.get("DnsOptions")),
    };
    if dns != DnsConfig::default() {
        spec.dns = Some(dns);
    }
    for entry in strings(host.get("ExtraHosts")) {
        if entry.ends_with(":host-gateway") || entry.ends_with("=host-gateway") {
            out.drop_field(object, "HostConfig.ExtraHosts", format!("{entry}: name the node's address instead of host-gateway"));
        } else {
            // Docker 28 also writes `name=address`.
            spec.extra_hosts.push(entry.replacen('=', ":", 1));
        }
    }
    let exposed = c.pointer("/Config/ExposedPorts").and_then(Value::as_object);
    spec.expose = exposed
        .into_iter()
        .flatten()
        .filter_map(|(key, _)| parse_port_key(key))
        .map(|(port, protocol)| ExposedPort { port, protocol })
        .collect();
}

/// `80/tcp` -> (80, tcp).
fn parse_port_key(key: &str) -> Option<(u16, Protocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    Some((port.parse().ok()?, protocol))
}

/// `HostConfig.PortBindings` (and `-P`) as one PortMapping. A port Docker
/// chose (ephemeral, or from a host port range) is pinned to the one it
/// holds now, from `NetworkSettings.Ports`, so the published ports stay.
fn port_mapping(c: &Value, name: &str, attachment: &str, object: &str, out: &mut Imported) {
    let host = &c["HostConfig"];
    let actual = |key: &str, host_ip: &str| -> Option<u16> {
        let list = c.pointer("/NetworkSettings/Ports")?.get(key)?.as_array()?;
        let wanted = |b: &&Value| host_ip.is_empty() || str_of(b, "HostIp") == host_ip;
        list.iter().find(wanted).and_then(|b| str_of(b, "HostPort").parse().ok())
    };
    let mut ports = Vec::new();
    let bindings = host.get("PortBindings").and_then(Value::as_object);
    for (key, list) in bindings.into_iter().flatten() {
        let Some((container_port, protocol)) = parse_port_key(key) else {
            out.drop_field(object, &format!("HostConfig.PortBindings.{key}"), "not a port/protocol netlet knows (tcp, udp, sctp)");
            continue;
        };
        for b in list.as_array().into_iter().flatten() {
            let host_ip = str_of(b, "HostIp");
            let host_port = match str_of(b, "HostPort") {
                "" | "0" => actual(key, host_ip),
                p => p.parse().ok().or_else(|| {
                    let chosen = actual(key, host_ip);
                    let kept = chosen.map_or("an ephemeral port".to_string(), |p| format!("{p}, the one Docker chose"));
                    out.drop_field(
                        object,
                        &format!("HostConfig.PortBindings.{key}"),
                        format!("host port range {p}: netlet publishes {kept}"),
                    );
                    chosen
                }),
            };
            let host_ip = Some(host_ip.to_string()).filter(|ip| !ip.is_empty());
            ports.push(PortSpec { container_port, protocol, host_port, host_ip, ..Default::default() });
        }
    }
    let mut publish_all = false;
    if host.get("PublishAllPorts").and_then(Value::as_bool) == Some(true) {
        let exposed = c.pointer("/Config/ExposedPorts").and_then(Value::as_object);
        for key in exposed.into_iter().flatten().map(|(k, _)| k).filter(|k| bindings.is_none_or(|b| !b.contains_key(*k))) {
            let Some((container_port, protocol)) = parse_port_key(key) else { continue };
            match actual(key, "") {
                Some(port) => ports.push(PortSpec { container_port, protocol, host_port: Some(port), ..Default::default() }),
                // Not running: no port to pin, -P picks again.
                None => publish_all = true,
            }
        }
    }
    if ports.is_empty() && !publish_all {
        return;
    }
    let spec = PortMappingSpec { attachment: attachment.to_string(), publish_all, ports: collapse_ranges(ports) };
    out.port_mappings.push(PortMapping::new(name, spec));
}

/// Consecutive ports published one to one (Docker lists `-p 7000-7002:7000-7002`
/// port by port) become one range.
fn collapse_ranges(mut ports: Vec<PortSpec>) -> Vec<PortSpec> {
    ports.sort_by(|a, b| (a.protocol, &a.host_ip, a.container_port).cmp(&(b.protocol, &b.host_ip, b.container_port)));
    let mut out: Vec<PortSpec> = Vec::with_capacity(ports.len());
    for p in ports {
        if let Some(last) = out.last_mut() {
            let end = last.container_port_end.unwrap_or(last.container_port);
            let host_end = last.host_port_end.or(last.host_port);
            let follows = last.protocol == p.protocol
                && last.host_ip == p.host_ip
                && end.checked_add(1) == Some(p.container_port)
                && host_end.and_then(|h| h.checked_add(1)).is_some_and(|h| Some(h) == p.host_port);
            if follows {
                last.container_port_end = Some(p.container_port);
                last.host_port_end = p.host_port;
                continue;
            }
        }
        out.push(p);
    }
    out
}
