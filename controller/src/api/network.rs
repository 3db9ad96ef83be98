use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// `docker network create`: a network realized on the nodes it selects.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "netlet.io",
    version = "v1alpha1",
    kind = "Network",
    status = "NetworkStatus",
    shortname = "net",
    category = "netlet",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver"),
    printcolumn(name = "Subnet", type_ = "string", json_path = ".spec.ipam.config[0].subnet"),
    printcolumn(name = "Bridge", type_ = "string", json_path = ".status.bridge"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// bridge (default) | macvlan | overlay | host | null. An unquoted YAML
    /// `null` also means the null driver (what a user writing it means).
    #[serde(default, deserialize_with = "driver_or_null")]
    pub driver: Driver,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// No traffic between this network and anything outside it.
    #[serde(default)]
    pub internal: bool,
    #[serde(default, rename = "enableIPv6")]
    pub enable_ipv6: bool,
    #[serde(default)]
    pub ipam: Ipam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MacvlanOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayOptions>,
    /// Kubernetes mode: labels a node must carry to realize this network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes mode: the Namespaces whose Attachments may use this
    /// network (a label selector on Namespaces; absent: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The sandbox kinds its Attachments may use. Kubernetes mode default:
    /// `[pod, attachment]` (a tenant's own); standalone mode: every kind.
    /// A `netns` or `path` sandbox that is the node's own namespace is
    /// refused whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sandboxes: Option<Vec<SandboxKind>>,
    /// The host ports and addresses its attachments' PortMappings may
    /// publish. Kubernetes mode default: ports 1024-65535 on any address;
    /// standalone mode: any port (the operator is root, as with Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ports: Option<HostPorts>,
    /// Docker option keys accepted as aliases (`com.docker.network.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The kinds of sandbox an Attachment can name (`spec.sandbox.<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// A Pod of the Attachment's own namespace.
    Pod,
    /// Another Attachment of the same namespace (`--network container:NAME`).
    Attachment,
    /// A named namespace in /run/netns.
    Netns,
    /// Any namespace file on the node.
    Path,
    /// The node's own namespace (`--network host`).
    Host,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Pod => "pod",
            SandboxKind::Attachment => "attachment",
            SandboxKind::Netns => "netns",
            SandboxKind::Path => "path",
            SandboxKind::Host => "host",
        }
    }
}

/// Which host ports (inclusive) and host addresses PortMappings of a
/// network's attachments may publish.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPorts {
    /// Lowest host port (Kubernetes mode default 1024, standalone 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u16>,
    /// Highest host port (default 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u16>,
    /// Host addresses a port may be published on; empty: any. When set, a
    /// mapping must name one (`hostIP`, or the network's hostBindingIPv4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Bridge,
    Macvlan,
    Overlay,
    Host,
    Null,
}

fn driver_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Driver, D::Error> {
    Ok(Option::<Driver>::deserialize(d)?.unwrap_or(Driver::Null))
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Macvlan => "macvlan",
            Driver::Overlay => "overlay",
            Driver::Host => "host",
            Driver::Null => "null",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeOptions {
    /// Host bridge device (at most 15 characters); derived from the network when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Containers on this bridge may talk to each other (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icc: Option<bool>,
    /// SNAT traffic that leaves the node (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_masquerade: Option<bool>,
    /// Default host address for port mappings.
    #[serde(default, rename = "hostBindingIPv4", skip_serializing_if = "Option::is_none")]
    pub host_binding_ipv4: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipam {
    /// One entry per subnet, IPv4 and IPv6.
    #[serde(default)]
    pub config: Vec<IpamConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    pub subnet: String,
    /// Default: the first usable address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Dynamic addresses come only from this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Addresses never handed out, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacvlanOptions {
    pub parent: String,
    #[serde(default)]
    pub mode: MacvlanMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverlayOptions {
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Every node's VTEP address. Kubernetes mode: may be left empty, then
    /// every Node the network selects is a peer, at its
    /// `netlet.io/vtep-address` annotation or else its InternalIP.
    #[serde(default)]
    pub peers: Vec<OverlayPeer>,
    /// Prefix length of the IPv4 address blocks each node allocates from
    /// and is routed to: claimed in status.addressBlocks in Kubernetes mode,
    /// the i-th block of the range for the i-th peer in standalone mode.
    /// Default 26, or the subnet's prefix + 2 when that is longer. With
    /// enableIPv6, the node holding the k-th IPv4 block also holds the k-th
    /// IPv6 block (prefix: the IPv6 subnet's plus as many bits as the IPv4
    /// blocks add), which must be /124 or shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_prefix_length: Option<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverlayPeer {
    pub node: String,
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Host bridge device realizing this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Gateway address of every subnet, in CIDR form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Standalone mode: attachments realized on this network. Absent in
    /// Kubernetes mode: a count would make every attachment's change a
    /// write of this object, which every node watches (count the
    /// Attachments instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<u32>,
    /// MTU of its links (overlays: the underlay's minus 50 unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Overlay peers (`node (VTEP)`) this node cannot reach on the
    /// underlay: their ARP failed when traffic was sent to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Per-node details (Kubernetes mode: one entry per node realizing it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NetworkNodeStatus>,
    /// Overlay, Kubernetes mode: the IPv4 blocks nodes claimed; each node
    /// hands out dynamic addresses only from its own, so agents allocating
    /// at the same moment never collide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address_blocks: Vec<AddressBlock>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressBlock {
    pub node: String,
    pub cidr: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkNodeStatus {
    pub node: String,
    /// Changes with the node's realization of the network (ready, MTU,
    /// peers), never with its attachments: an attachment's change writes
    /// only its own status.
    #[serde(default)]
    pub ready: bool,
    /// This node's links' MTU (overlay MTUs follow each node's underlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Overlay peers this node cannot reach on the underlay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_peers: Vec<String>,
    /// Overlay: this node's attachments' IPv4 addresses outside its
    /// address blocks (static ones). Agents watch only their own node's
    /// attachments; the other nodes route each of these to this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses_outside_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Docker's `-o` option keys that alias our typed fields.
pub mod docker_options {
    pub const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
    pub const ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";
    pub const ENABLE_IP_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
    pub const HOST_BINDING_IPV4: &str = "com.docker.network.bridge.host_binding_ipv4";
    pub const MTU: &str = "com.docker.network.driver.mtu";
    pub const ALL: [&str; 5] = [BRIDGE_NAME, ENABLE_ICC, ENABLE_IP_MASQUERADE, HOST_BINDING_IPV4, MTU];
}
