//! What attachments and port mappings hold across passes and restarts:
//! addresses, interface names and ephemeral host ports (allocations.json).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::api::Protocol;
use crate::objects::ObjectName;

/// Resources held by attachments and port mappings, persisted in the state
/// directory so they survive restarts.
#[derive(Clone, Debug, Default, PartialEq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocations {
    #[serde(default)]
    pub endpoints: BTreeMap<ObjectName, HeldEndpoint>,
    /// Ephemeral host ports, by the port of the mapping they publish.
    #[serde(default)]
    pub ports: BTreeMap<PortKey, u16>,
}

impl Allocations {
    /// Whether this is `before` with entries taken away, and none added or
    /// changed.
    pub fn only_forgets(&self, before: &Allocations) -> bool {
        // Both maps are sorted: one walk of `before` finds every entry.
        super::taken_from(&self.endpoints, &before.endpoints) && super::taken_from(&self.ports, &before.ports)
    }
}

/// One port of one PortMapping that holds an ephemeral host port:
/// `namespace/name|protocol|containerPort|hostIP` in allocations.json.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub mapping: ObjectName,
    pub protocol: Protocol,
    pub container_port: u16,
    /// The host address asked for; 0.0.0.0 for every address (of either family).
    pub host_ip: IpAddr,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}|{}|{}", self.mapping, self.protocol.as_str(), self.container_port, self.host_ip)
    }
}

impl std::str::FromStr for PortKey {
    type Err = String;
    /// Read from the right: what precedes the protocol is the mapping's name.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not namespace/name|protocol|containerPort|hostIP");
        let mut fields = text.rsplitn(4, '|');
        let (Some(host_ip), Some(port), Some(protocol), Some(mapping)) = (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        Ok(PortKey {
            mapping: ObjectName::from(mapping),
            protocol: Protocol::parse(protocol).ok_or_else(bad)?,
            container_port: port.parse().map_err(|_| bad())?,
            host_ip: host_ip.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for PortKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldEndpoint {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(endpoints: &[(&str, &str)], ports: &[(&str, u16)]) -> Allocations {
        Allocations {
            endpoints: endpoints
                .iter()
                .map(|(k, ip)| (ObjectName::from(*k), HeldEndpoint { ipv4: ip.parse().ok(), ..Default::default() }))
                .collect(),
            ports: ports.iter().map(|(k, p)| (k.parse().unwrap(), *p)).collect(),
        }
    }

    #[test]
    fn forgetting_is_taking_away_without_adding_or_changing() {
        let before = held(&[("ns/a", "10.0.0.2"), ("ns/b", "10.0.0.3"), ("ns/c", "10.0.0.4")], &[("ns/p|tcp|80|0.0.0.0", 32768)]);
        assert!(held(&[("ns/a", "10.0.0.2"), ("ns/c", "10.0.0.4")], &[("ns/p|tcp|80|0.0.0.0", 32768)]).only_forgets(&before));
        assert!(held(&[], &[]).only_forgets(&before));
        assert!(before.only_forgets(&before), "forgetting nothing");
        assert!(!held(&[("ns/a", "10.0.0.2"), ("ns/d", "10.0.0.5")], &[]).only_forgets(&before), "an entry added");
        assert!(!held(&[("ns/a", "10.0.0.9")], &[]).only_forgets(&before), "an address changed");
        assert!(!held(&[], &[("ns/p|tcp|80|0.0.0.0", 32769)]).only_forgets(&before), "a port changed");
    }
}
