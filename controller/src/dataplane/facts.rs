//! Facts about the node the plan needs: listening sockets, the ephemeral
//! port range, the node's addresses.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use super::dump::dump;
use crate::api::Protocol;

/// Sockets bound in this namespace that a published port would collide
/// with: TCP in LISTEN, UDP unconnected. Asked of sock_diag, which filters
/// by state in the kernel; /proc/net walks the whole socket hash (a few ms
/// on a big machine) and is only the fallback.
pub fn bound_ports() -> Vec<(Protocol, IpAddr, u16)> {
    let mut out = match sock_diag_ports() {
        Ok(ports) => ports,
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag unavailable; reading /proc/net");
            proc_net_ports()
        }
    };
    out.sort();
    out.dedup();
    out
}

/// Listening TCP and unconnected UDP sockets, by sock_diag dump requests.
fn sock_diag_ports() -> std::io::Result<Vec<(Protocol, IpAddr, u16)>> {
    let mut out = Vec::new();
    for (protocol, ipproto, states) in [(Protocol::Tcp, IPPROTO_TCP, StateFlags::LISTEN), (Protocol::Udp, IPPROTO_UDP, StateFlags::CLOSE)] {
        for (family, socket_id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
            let request = InetRequest { family, protocol: ipproto, extensions: ExtensionFlags::empty(), states: states.clone(), socket_id };
            dump(NETLINK_SOCK_DIAG, SockDiagMessage::InetRequest(request), |reply| {
                if let SockDiagMessage::InetResponse(r) = reply {
                    out.push((protocol, r.header.socket_id.source_address, r.header.socket_id.source_port));
                }
            })?;
        }
    }
    Ok(out)
}

/// The same, from the /proc/net tables of this namespace.
fn proc_net_ports() -> Vec<(Protocol, IpAddr, u16)> {
    let mut out = Vec::new();
    for (file, protocol, wanted_state) in
        [("tcp", Protocol::Tcp, "0A"), ("tcp6", Protocol::Tcp, "0A"), ("udp", Protocol::Udp, "07"), ("udp6", Protocol::Udp, "07")]
    {
        let Ok(text) = fs::read_to_string(format!("/proc/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != wanted_state {
                continue;
            }
            if let Some((ip, port)) = parse_socket(fields[1]) {
                out.push((protocol, ip, port));
            }
        }
    }
    out
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form: each 32-bit
/// word is in host (little-endian) byte order.
fn parse_socket(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if addr.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for i in 0..addr.len() / 8 {
        let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    match bytes.len() {
        4 => Some((IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])), port)),
        16 => Some((IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)), port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both readings agree on a socket this test binds (in whatever
    /// namespace the test runs; no root needed).
    #[test]
    fn sock_diag_and_proc_net_see_the_same_listeners() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let mine = [
            (Protocol::Tcp, tcp.local_addr().unwrap().ip(), tcp.local_addr().unwrap().port()),
            (Protocol::Udp, udp.local_addr().unwrap().ip(), udp.local_addr().unwrap().port()),
        ];
        let diag = sock_diag_ports().expect("sock_diag answers");
        let proc = proc_net_ports();
        for socket in mine {
            assert!(diag.contains(&socket), "sock_diag misses {socket:?}");
            assert!(proc.contains(&socket), "/proc/net misses {socket:?}");
        }
    }

    #[test]
    fn proc_net_sockets_parse() {
        assert_eq!(parse_socket("0100007F:1F90"), Some(("127.0.0.1".parse().unwrap(), 8080)));
        assert_eq!(parse_socket("00000000000000000000000001000000:0050"), Some(("::1".parse().unwrap(), 80)));
        assert_eq!(parse_socket("00000000000000000000000000000000:0016"), Some(("::".parse().unwrap(), 22)));
    }
}
