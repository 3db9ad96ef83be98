//! The three custom resources of group `netlet.io/v1alpha1`.
//!
//! Types only: no I/O, no kernel. Field names are the contract of
//! `shared/DESIGN.md`; everything else in the agent reads these types.

mod attachment;
mod condition;
mod network;
mod portmapping;

pub use attachment::*;
pub use condition::*;
pub use network::*;
pub use portmapping::*;

use kube::CustomResourceExt;

pub const GROUP: &str = "netlet.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "netlet.io/v1alpha1";

/// The three CRDs as one multi-document YAML stream, as `netlet crds` prints
/// it and as `crds/` holds it.
pub fn crds_yaml() -> String {
    let crds = [Network::crd(), Attachment::crd(), PortMapping::crd()];
    crds.iter()
        .map(|crd| serde_yaml::to_string(crd).expect("CRDs always serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Which of the three kinds an object is; used by the manifest loader and
/// `netlet get` to resolve what users type (`att`, `attachments`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Network,
    Attachment,
    PortMapping,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Network, Kind::Attachment, Kind::PortMapping];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "Network",
            Kind::Attachment => "Attachment",
            Kind::PortMapping => "PortMapping",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Attachment => "attachments",
            Kind::PortMapping => "portmappings",
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Network => "net",
            Kind::Attachment => "att",
            Kind::PortMapping => "pm",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Network)
    }

    /// Resolves a kind the way kubectl does: kind, plural, singular or short
    /// name, any case, optionally qualified with `.netlet.io`.
    pub fn parse(word: &str) -> Option<Kind> {
        let word = word.to_ascii_lowercase();
        let word = word.strip_suffix(".netlet.io").unwrap_or(&word);
        Kind::ALL.into_iter().find(|k| {
            word == k.as_str().to_ascii_lowercase() || word == k.plural() || word == k.short_name()
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_like_kubectl() {
        for word in [
            "att",
            "attachment",
            "attachments",
            "Attachment",
            "attachments.netlet.io",
        ] {
            assert_eq!(Kind::parse(word), Some(Kind::Attachment), "{word}");
        }
        assert_eq!(Kind::parse("pm"), Some(Kind::PortMapping));
        assert_eq!(Kind::parse("networks"), Some(Kind::Network));
        assert_eq!(Kind::parse("pods"), None);
    }

    #[test]
    fn crds_name_all_three_kinds_with_status_subresource() {
        let yaml = crds_yaml();
        for name in [
            "networks.netlet.io",
            "attachments.netlet.io",
            "portmappings.netlet.io",
        ] {
            assert!(yaml.contains(name), "{name} missing");
        }
        assert_eq!(yaml.matches("status: {}").count(), 3);
    }
}
