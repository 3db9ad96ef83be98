//! `netlet inspect network|attachment NAME...`: netlet's objects and their
//! status in the shape `docker network inspect` and `docker inspect` print,
//! so that scripts and `jq` paths written for Docker keep working
//! (`.[0].IPAM.Config[0].Subnet`, `.[0].Containers[].IPv4Address`,
//! `.[0].NetworkSettings.Networks.NET.IPAddress`).
//!
//! IDs are stable hashes of the object's kind and name (netlet objects
//! have no Docker IDs); a container is an Attachment, known by its name.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::api::{ready_condition, Attachment, Driver, Network, PortMapping};
use crate::naming::stable_hash;

/// What the inspector reads: every object with its status.
#[derive(Debug, Default)]
pub struct Objects {
    pub networks: Vec<Network>,
    pub attachments: Vec<Attachment>,
    pub port_mappings: Vec<PortMapping>,
}

impl Objects {
    /// From the standalone status store (objects with their status).
    pub fn from_store(store: &[Value]) -> Objects {
        let mut out = Objects::default();
        for item in store {
            let parsed = match item.get("kind").and_then(Value::as_str) {
                Some("Network") => serde_json::from_value(item.clone()).map(|n| out.networks.push(n)),
                Some("Attachment") => serde_json::from_value(item.clone()).map(|a| out.attachments.push(a)),
                Some("PortMapping") => serde_json::from_value(item.clone()).map(|p| out.port_mappings.push(p)),
                _ => Ok(()),
            };
            if let Err(e) = parsed {
                tracing::warn!(error = %e, "status store entry not understood; left out");
            }
        }
        out
    }
}

/// What `inspect` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Subject {
    Network,
    Attachment,
}

/// The Docker-shaped entry of every name found, in the order asked, and
/// the names not found (Docker prints what it found and fails on the rest).
pub fn inspect(objects: &Objects, subject: Subject, names: &[String], namespace: &str) -> (Vec<Value>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let entry = match subject {
            Subject::Network => objects.networks.iter().find(|n| n.metadata.name.as_ref() == Some(name)).map(|n| network(n, objects)),
            Subject::Attachment => objects
                .attachments
                .iter()
                .find(|a| a.metadata.name.as_ref() == Some(name) && namespace_of(&a.metadata) == namespace)
                .map(|a| attachment(a, objects)),
        };
        match entry {
            Some(e) => found.push(e),
            None => missing.push(name.clone()),
        }
    }
    (found, missing)
}

fn namespace_of(meta: &kube::api::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// A 64-hex-digit ID, like Docker's, stable for one object.
pub(super) fn id_of(kind: &str, namespace: &str, name: &str) -> String {
    let mut id = String::with_capacity(64);
    let mut chunk = stable_hash(&format!("{kind}/{namespace}/{name}"));
    for _ in 0..4 {
        id.push_str(&format!("{chunk:016x}"));
        // Each part hashes the ID so far: parts look unrelated.
        chunk = stable_hash(&id);
    }
    id
}

/// Creation time as Docker prints it; Go's zero time when unknown
/// (standalone objects have none).
fn created(meta: &kube::api::ObjectMeta) -> String {
    meta.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

fn ready(conditions: Option<&Vec<crate::api::Condition>>) -> Value {
    match conditions.and_then(|c| ready_condition(c)) {
        Some(c) => json!({"Ready": c.is_true(), "Reason": c.reason, "Message": c.message}),
        None => json!({"Ready": false, "Reason": "Pending", "Message": "not reconciled yet"}),
    }
}

fn network_name(att: &Attachment) -> &str {
    &att.spec.network
}

fn network(net: &Network, objects: &Objects) -> Value {
    let name = net.metadata.name.clone().unwrap_or_default();
    let spec = &net.spec;
    let status = net.status.as_ref();
    let gateways: Vec<IpNet> = status.map(|s| s.gateways.iter().filter_map(|g| g.parse().ok()).collect()).unwrap_or_default();
    let config: Vec<Value> = spec
        .ipam
        .config
        .iter()
        .map(|c| {
            let mut entry = Map::new();
            entry.insert("Subnet".into(), json!(c.subnet));
            let subnet: Option<IpNet> = c.subnet.parse().ok();
            let gateway = c
                .gateway
                .clone()
                .or_else(|| gateways.iter().find(|g| subnet.is_some_and(|s| s.contains(&g.addr()))).map(|g| g.addr().to_string()));
            if let Some(ip_range) = &c.ip_range {
                entry.insert("IPRange".into(), json!(ip_range));
            }
            if let Some(gateway) = gateway {
                entry.insert("Gateway".into(), json!(gateway));
            }
            if !c.aux_addresses.is_empty() {
                entry.insert("AuxiliaryAddresses".into(), json!(c.aux_addresses));
            }
            Value::Object(entry)
        })
        .collect();
    let containers: Map<String, Value> = objects
        .attachments
        .iter()
        .filter(|a| network_name(a) == name && a.spec.sandbox.attachment.is_none())
        .map(|a| {
            let (ns, att) = (namespace_of(&a.metadata), a.metadata.name.clone().unwrap_or_default());
            let s = a.status.clone().unwrap_or_default();
            let entry = json!({
                "Name": att,
                "EndpointID": id_of("Endpoint", ns, &att),
                "MacAddress": s.mac_address.unwrap_or_default(),
                "IPv4Address": s.ipv4_address.unwrap_or_default(),
                "IPv6Address": s.ipv6_address.unwrap_or_default(),
            });
            (id_of("Attachment", ns, &att), entry)
        })
        .collect();
    json!({
        "Name": name,
        "Id": id_of("Network", "", &name),
        "Created": created(&net.metadata),
        "Scope": if spec.driver == Driver::Overlay { "global" } else { "local" },
        "Driver": spec.driver.as_str(),
        "EnableIPv4": true,
        "EnableIPv6": spec.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": spec.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options(net),
        "Labels": net.metadata.labels.clone().unwrap_or_default(),
        "Status": ready(status.map(|s| &s.conditions)),
    })
}

/// Docker's `Options` of a network: its typed fields under Docker's keys,
/// with what the agent realized (bridge device, MTU) where it reports it.
fn options(net: &Network) -> BTreeMap<String, String> {
    use crate::api::docker_options as key;
    let spec = &net.spec;
    let mut out = spec.options.clone();
    let status = net.status.as_ref();
    match spec.driver {
        Driver::Bridge => {
            let bridge = spec.bridge.clone().unwrap_or_default();
            let device = status.and_then(|s| s.bridge.clone()).or(bridge.name);
            if let Some(device) = device {
                out.insert(key::BRIDGE_NAME.into(), device);
            }
            out.entry(key::ENABLE_ICC.into()).or_insert_with(|| bridge.icc.unwrap_or(true).to_string());
            out.entry(key::ENABLE_IP_MASQUERADE.into()).or_insert_with(|| bridge.ip_masquerade.unwrap_or(true).to_string());
            if let Some(ip) = bridge.host_binding_ipv4 {
                out.insert(key::HOST_BINDING_IPV4.into(), ip);
            }
        }
        Driver::Macvlan => {
            if let Some(m) = &spec.macvlan {
                out.insert("parent".into(), m.parent.clone());
                out.insert(
                    "macvlan_mode".into(),
                    serde_json::to_value(m.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                );
            }
        }
        Driver::Overlay => {
            if let Some(o) = &spec.overlay {
                out.insert("com.docker.network.driver.overlay.vxlanid_list".into(), o.vni.to_string());
            }
        }
        Driver::Host | Driver::Null => {}
    }
    if let Some(mtu) = status.and_then(|s| s.mtu).or(spec.mtu) {
        out.insert(key::MTU.into(), mtu.to_string());
    }
    out
}

/// `docker inspect CONTAINER`'s networking parts for one Attachment.
fn attachment(att: &Attachment, objects: &Objects) -> Value {
    let (ns, name) = (namespace_of(&att.metadata), att.metadata.name.clone().unwrap_or_default());
    let spec = &att.spec;
    let s = att.status.clone().unwrap_or_default();
    let mode = match (&spec.sandbox.attachment, spec.sandbox.host) {
        (Some(shared), _) => format!("container:{shared}"),
        (None, Some(true)) => "host".into(),
        _ => spec.network.clone(),
    };
    let split = |cidr: &Option<String>| -> (String, u8) {
        match cidr.as_deref().and_then(|c| c.parse::<IpNet>().ok()) {
            Some(net) => (net.addr().to_string(), net.prefix_len()),
            None => (cidr.clone().unwrap_or_default(), 0),
        }
    };
    let (ip, prefix) = split(&s.ipv4_address);
    let (ip6, prefix6) = split(&s.ipv6_address);
    let mut dns_names = vec![name.clone()];
    dns_names.extend(spec.aliases.iter().cloned());
    dns_names.extend(spec.hostname.iter().cloned());
    let mut networks = Map::new();
    if spec.sandbox.attachment.is_none() {
        let ipam_config = match (&spec.ipv4_address, &spec.ipv6_address) {
            (None, None) => Value::Null,
            (v4, v6) => json!({"IPv4Address": v4.clone().unwrap_or_default(), "IPv6Address": v6.clone().unwrap_or_default()}),
        };
        networks.insert(
            spec.network.clone(),
            json!({
                "IPAMConfig": ipam_config,
                "Links": null,
                "Aliases": spec.aliases,
                "NetworkID": id_of("Network", "", &spec.network),
                "EndpointID": id_of("Endpoint", ns, &name),
                "Gateway": s.gateway.clone().unwrap_or_default(),
                "IPAddress": ip,
                "IPPrefixLen": prefix,
                "IPv6Gateway": s.ipv6_gateway.clone().unwrap_or_default(),
                "GlobalIPv6Address": ip6,
                "GlobalIPv6PrefixLen": prefix6,
                "MacAddress": s.mac_address.clone().unwrap_or_default(),
                "DriverOpts": null,
                "DNSNames": dns_names,
            }),
        );
    }
    let mappings: Vec<&PortMapping> =
        objects.port_mappings.iter().filter(|p| p.spec.attachment == name && namespace_of(&p.metadata) == ns).collect();
    let mut port_bindings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ports: BTreeMap<String, Value> = BTreeMap::new();
    for e in &spec.expose {
        ports.insert(format!("{}/{}", e.port, e.protocol.as_str()), Value::Null);
    }
    for pm in &mappings {
        for p in &pm.spec.ports {
            let count = p.container_port_end.map_or(0, |end| end.saturating_sub(p.container_port));
            for i in 0..=count {
                let host_port = p.host_port.filter(|h| *h != 0).map_or(String::new(), |h| (h + i).to_string());
                let key = format!("{}/{}", p.container_port + i, p.protocol.as_str());
                port_bindings.entry(key).or_default().push(json!({"HostIp": p.host_ip.clone().unwrap_or_default(), "HostPort": host_port}));
            }
        }
        for b in pm.status.iter().flat_map(|s| &s.bindings) {
            let key = format!("{}/{}", b.container_port, b.protocol.as_str());
            let list = ports.entry(key).or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            list.as_array_mut().expect("array").push(json!({"HostIp": b.host_ip, "HostPort": b.host_port.to_string()}));
        }
    }
    let dns = spec.dns.clone().unwrap_or_default();
    let exposed: Map<String, Value> = spec.expose.iter().map(|e| (format!("{}/{}", e.port, e.protocol.as_str()), json!({}))).collect();
    json!({
        "Id": id_of("Attachment", ns, &name),
        "Name": name,
        "Namespace": ns,
        "State": ready(Some(&s.conditions)),
        "Config": {"Hostname": spec.hostname.clone().unwrap_or_default(), "ExposedPorts": exposed},
        "HostConfig": {
            "NetworkMode": mode,
            "PortBindings": port_bindings,
            "PublishAllPorts": mappings.iter().any(|p| p.spec.publish_all),
            "Dns": dns.nameservers,
            "DnsSearch": dns.searches,
            "DnsOptions": dns.options,
            "ExtraHosts": spec.extra_hosts,
        },
        "NetworkSettings": {
            "SandboxKey": s.sandbox_path.unwrap_or_default(),
            "Ports": ports,
            "Networks": networks,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status store of the quickstart after an agent realized it.
    fn store() -> Vec<Value> {
        let ready = json!([{"type": "Ready", "status": "True", "reason": "Ready", "message": "realized on the node"}]);
        vec![
            json!({"apiVersion": "netlet.io/v1alpha1", "kind": "Network", "metadata": {"name": "isolated_nw", "labels": {"tier": "front"}},
                "spec": {"driver": "bridge", "ipam": {"config": [{"subnet": "172.25.0.0/16", "ipRange": "172.25.5.0/24", "auxAddresses": {"my-router": "172.25.1.5"}}]},
                         "options": {"com.docker.network.bridge.name": "docker1"}},
                "status": {"attachments": 2, "bridge": "docker1", "gateways": ["172.25.0.1/16"], "mtu": 1500, "conditions": ready}}),
            json!({"apiVersion": "netlet.io/v1alpha1", "kind": "Attachment", "metadata": {"name": "container2", "namespace": "default"},
                "spec": {"network": "isolated_nw", "sandbox": {"netns": "container2"}, "aliases": ["app1"], "expose": [{"port": 80, "protocol": "tcp"}]},
                "status": {"gateway": "172.25.0.1", "interface": "eth0", "ipv4Address": "172.25.5.0/16", "macAddress": "02:42:ac:19:05:00",
                           "sandboxPath": "/run/netns/container2", "conditions": ready}}),
            json!({"apiVersion": "netlet.io/v1alpha1", "kind": "Attachment", "metadata": {"name": "side", "namespace": "default"},
                "spec": {"sandbox": {"attachment": "container2"}}, "status": {"conditions": ready}}),
            json!({"apiVersion": "netlet.io/v1alpha1", "kind": "PortMapping", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"attachment": "container2", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 7000, "containerPortEnd": 7001, "protocol": "udp"}]},
                "status": {"bindings": [{"protocol": "tcp", "hostIP": "0.0.0.0", "hostPort": 8080, "containerPort": 80},
                                        {"protocol": "udp", "hostIP": "0.0.0.0", "hostPort": 40000, "containerPort": 7000},
                                        {"protocol": "udp", "hostIP": "0.0.0.0", "hostPort": 40001, "containerPort": 7001}], "conditions": ready}}),
        ]
    }

    #[test]
    fn a_network_reads_like_docker_network_inspect() {
        let objects = Objects::from_store(&store());
        let (found, missing) = inspect(&objects, Subject::Network, &["isolated_nw".into(), "nope".into()], "default");
        assert_eq!(missing, ["nope"]);
        let n = &found[0];
        assert_eq!(n["Name"], "isolated_nw");
        assert_eq!(n["Id"].as_str().unwrap().len(), 64);
        assert_eq!((n["Driver"].as_str(), n["Scope"].as_str()), (Some("bridge"), Some("local")));
        assert_eq!(
            n["IPAM"]["Config"],
            json!([{"Subnet": "172.25.0.0/16", "IPRange": "172.25.5.0/24", "Gateway": "172.25.0.1", "AuxiliaryAddresses": {"my-router": "172.25.1.5"}}])
        );
        let members: Vec<&Value> = n["Containers"].as_object().unwrap().values().collect();
        assert_eq!(members.len(), 1, "a namespace shared with `container:` is no endpoint of its own");
        assert_eq!(members[0]["Name"], "container2");
        assert_eq!(members[0]["IPv4Address"], "172.25.5.0/16");
        assert_eq!(members[0]["MacAddress"], "02:42:ac:19:05:00");
        assert_eq!(n["Options"]["com.docker.network.bridge.name"], "docker1");
        assert_eq!(n["Options"]["com.docker.network.bridge.enable_icc"], "true");
        assert_eq!(n["Options"]["com.docker.network.driver.mtu"], "1500");
        assert_eq!(n["Labels"]["tier"], "front");
        assert_eq!(n["Status"]["Ready"], true);
    }

    #[test]
    fn an_attachment_reads_like_docker_inspect() {
        let objects = Objects::from_store(&store());
        let (found, _) = inspect(&objects, Subject::Attachment, &["container2".into(), "side".into()], "default");
        let a = &found[0];
        let net = &a["NetworkSettings"]["Networks"]["isolated_nw"];
        assert_eq!((net["IPAddress"].as_str(), net["IPPrefixLen"].as_u64()), (Some("172.25.5.0"), Some(16)));
        assert_eq!(net["Gateway"], "172.25.0.1");
        assert_eq!(net["Aliases"], json!(["app1"]));
        assert_eq!(a["NetworkSettings"]["Ports"]["80/tcp"], json!([{"HostIp": "0.0.0.0", "HostPort": "8080"}]));
        assert_eq!(a["NetworkSettings"]["Ports"]["7001/udp"], json!([{"HostIp": "0.0.0.0", "HostPort": "40001"}]));
        assert_eq!(a["HostConfig"]["PortBindings"]["7001/udp"], json!([{"HostIp": "", "HostPort": ""}]));
        assert_eq!(a["HostConfig"]["NetworkMode"], "isolated_nw");
        assert_eq!(a["Config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(found[1]["HostConfig"]["NetworkMode"], "container:container2");
        assert_eq!(found[1]["NetworkSettings"]["Networks"], json!({}));
        // Another namespace: not found.
        assert_eq!(inspect(&objects, Subject::Attachment, &["container2".into()], "other").1, ["container2"]);
    }
}
