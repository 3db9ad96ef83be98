//! nf_tables' generation: a counter the kernel bumps with every ruleset
//! transaction committed, by anyone. Read before and after a transaction of
//! our own, it tells whether someone else changed the ruleset since, which
//! events alone cannot (they do not say whose a change was).

use std::io;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

// linux/netlink.h, linux/netfilter/nfnetlink.h and nf_tables.h
const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NFGENMSG: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The generation of the ruleset of the calling thread's namespace.
pub fn generation() -> io::Result<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = [0u8; NLMSG_HEADER + NFGENMSG];
    request[0..4].copy_from_slice(&((NLMSG_HEADER + NFGENMSG) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    socket.send(&request, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    parse(&reply)
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

/// The generation in a reply: NFT_MSG_NEWGEN's NFTA_GEN_ID (big-endian).
fn parse(reply: &[u8]) -> io::Result<u32> {
    let bad = || io::Error::other("nf_tables answered no generation");
    let length = u32::from_ne_bytes(reply.get(0..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let message = reply.get(..length).ok_or_else(bad)?;
    match u16_at(message, 4).ok_or_else(bad)? {
        NLMSG_ERROR => {
            let code = i32::from_ne_bytes(message.get(16..20).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            Err(io::Error::from_raw_os_error(-code))
        }
        t if t == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN => {
            let mut at = NLMSG_HEADER + NFGENMSG;
            while let (Some(len), Some(kind)) = (u16_at(message, at), u16_at(message, at + 2)) {
                let len = len as usize;
                if kind & NLA_TYPE_MASK == NFTA_GEN_ID {
                    let value = message.get(at + 4..at + 8).ok_or_else(bad)?;
                    return Ok(u32::from_be_bytes(value.try_into().map_err(|_| bad())?));
                }
                if len < 4 {
                    break;
                }
                at += (len + 3) & !3;
            }
            Err(bad())
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_is_read_from_a_newgen_reply() {
        let mut reply = Vec::new();
        let body = [&[0u8, 0, 0, 0][..], &8u16.to_ne_bytes(), &NFTA_GEN_ID.to_ne_bytes(), &41u32.to_be_bytes()].concat();
        reply.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
        reply.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN).to_ne_bytes());
        reply.extend_from_slice(&[0; 10]);
        reply.extend_from_slice(&body);
        assert_eq!(parse(&reply).unwrap(), 41);
        assert!(parse(&reply[..10]).is_err(), "a cut reply is no generation");
    }
}
