//! Deterministic names and MAC addresses for what netlet creates.
//!
//! Names are derived (never random) so that every reconcile, on every
//! restart, maps an object to the same kernel link; that is what lets the
//! agent find, compare and prune its own state without a lookup table.

use std::net::Ipv4Addr;

/// Linux IFNAMSIZ - 1.
pub const MAX_IFNAME: usize = 15;

/// Prefix of host-side veth names: `nlv` + 12 hex digits.
pub const HOST_VETH_PREFIX: &str = "nlv";

/// Link group (IFLA_GROUP) every link netlet creates in the node namespace
/// is created in. Unlike the alias, the kernel takes the group in the
/// creating request itself, so a link is marked from its first instant and
/// a crash between two requests cannot leave an unmarked link behind.
pub const OWNER_LINK_GROUP: u32 = 0x6e6c_7401;

/// Marker written as the link alias (IFLA_IFALIAS) of every link netlet
/// creates in the node namespace; garbage collection only ever touches links
/// whose alias starts with it.
pub const OWNER_ALIAS_PREFIX: &str = "netlet:";

/// FNV-1a, 64 bit: tiny, stable across releases and platforms (unlike
/// `DefaultHasher`), which matters because names derived from it are
/// persisted in the kernel.
pub fn stable_hash(data: &str) -> u64 {
    stable_hash_of(&[data])
}

/// [`stable_hash`] of the parts written one after the other (without
/// building the joined string: a plan names a thousand veths per pass).
fn stable_hash_of(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn hex12(data: &str) -> String {
    format!("{:012x}", stable_hash(data) & 0xffff_ffff_ffff)
}

/// Checks a Linux interface name: 1..=15 bytes, no '/', ':', whitespace,
/// and not "." or "..".
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > MAX_IFNAME {
        return Err(format!("interface name {name:?} is {} characters long; Linux allows at most {MAX_IFNAME}", name.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is reserved"));
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control() || !c.is_ascii()) {
        return Err(format!("interface name {name:?} contains the invalid character {bad:?}"));
    }
    Ok(())
}

/// Default bridge device name for a network: `nl-<name>` when that is a
/// valid interface name, else `nl-` and a hash of the name.
pub fn default_bridge_name(network: &str) -> String {
    let candidate = format!("nl-{network}");
    if check_ifname(&candidate).is_ok() {
        candidate
    } else {
        format!("nl-{}", hex12(network))
    }
}

/// Host end of an attachment's veth pair.
pub fn host_veth_name(namespace: &str, name: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(MAX_IFNAME);
    out.push_str(HOST_VETH_PREFIX);
    let _ = write!(out, "{:012x}", stable_hash_of(&[namespace, "/", name]) & 0xffff_ffff_ffff);
    out
}

/// [`host_veth_name`] of an Attachment (its namespace "default" when unset).
pub fn host_veth_name_of(att: &crate::api::Attachment) -> String {
    let meta = &att.metadata;
    let name = meta.name.as_deref().or(meta.generate_name.as_deref()).unwrap_or_default();
    host_veth_name(meta.namespace.as_deref().unwrap_or("default"), name)
}

/// Docker's MAC for an IPv4 endpoint: 02:42 followed by the four address bytes.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A stable locally administered unicast MAC for endpoints without IPv4.
pub fn mac_from_key(key: &str) -> [u8; 6] {
    let h = stable_hash(key).to_be_bytes();
    [0x02, 0x42, h[0], h[1], h[2], h[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    text
}

/// Parses `aa:bb:cc:dd:ee:ff`; rejects multicast addresses, which no
/// interface can use as its own.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(format!("MAC address {text:?} is not of the form aa:bb:cc:dd:ee:ff"));
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16).map_err(|_| format!("MAC address {text:?} has a non-hex byte {part:?}"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC address {text:?} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("MAC address {text:?} is all zeros"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_follows_docker_convention() {
        assert_eq!(format_mac(&mac_from_ipv4("172.25.3.3".parse().unwrap())), "02:42:ac:19:03:03");
    }

    #[test]
    fn derived_names_fit_ifnamsiz_and_are_stable() {
        let veth = host_veth_name("default", "container3");
        assert_eq!(veth.len(), 15);
        assert_eq!(veth, host_veth_name("default", "container3"));
        assert_ne!(veth, host_veth_name("default", "container4"));
        // Links already made carry these names: the hash of the joined
        // `namespace/name`, whatever way it is computed.
        assert_eq!(veth, format!("{HOST_VETH_PREFIX}{}", hex12("default/container3")));
        assert_eq!(default_bridge_name("isolated_nw"), "nl-isolated_nw");
        let long = default_bridge_name("a-very-long-network-name");
        assert!(long.len() <= 15 && long.starts_with("nl-"));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("abcdefghijklmnop").unwrap_err().contains("at most 15"));
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn macs_are_parsed_strictly() {
        assert_eq!(parse_mac("02:42:AC:19:03:03").unwrap(), [2, 0x42, 0xac, 0x19, 3, 3]);
        assert!(parse_mac("02:42:ac:19:03").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
        assert!(parse_mac("zz:42:ac:19:03:03").is_err());
    }
}
