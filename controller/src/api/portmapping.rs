use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// `docker run -p / -P`: publish ports of an Attachment on the node.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "netlet.io",
    version = "v1alpha1",
    kind = "PortMapping",
    namespaced,
    status = "PortMappingStatus",
    shortname = "pm",
    category = "netlet",
    printcolumn(name = "Attachment", type_ = "string", json_path = ".spec.attachment"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PortMappingSpec {
    /// The Attachment (same namespace) whose ports are published.
    pub attachment: String,
    /// Like `-P`: every `expose` port of the attachment to an ephemeral host port.
    #[serde(default)]
    pub publish_all: bool,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port_end: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// 0 or absent: a free ephemeral port, kept stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    /// Default: the network's hostBindingIPv4, else every address.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The protocol [`Protocol::as_str`] names.
    pub fn parse(text: &str) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.as_str() == text)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMappingStatus {
    #[serde(default)]
    pub bindings: Vec<PortBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortBinding {
    pub protocol: Protocol,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}
