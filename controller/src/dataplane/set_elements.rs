//! Set and map element updates sent straight to nf_tables over netlink.
//!
//! Publishing or unpublishing a port changes one map element. Through
//! `nft -f -` that costs a process start (about 5 ms here, most of it nft's
//! own start-up), and a delete costs 10-20 ms more: nf_tables flushes its
//! release of deleted elements (an RCU grace period) when a netfilter
//! socket closes, so the nft process waits for it on exit. One long-lived
//! socket of our own sends the same single transaction in well under a
//! millisecond and never waits for the release.
//!
//! Elements are encoded from the text the ruleset is rendered in, by the
//! set's declared type, for the fixed-size types netlet's sets use.
//! Interval sets (subnets) are not encoded here: nft turns their prefixes
//! into ranges, and they change only with networks.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLA_F_NESTED,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

use super::firewall::TABLE;

// linux/netfilter/nfnetlink.h and nf_tables.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// Well below a netlink socket's default send buffer (208 KiB); a bigger
/// change goes through nft.
const MAX_BATCH: usize = 128 * 1024;

/// One set's (or map's) change, in the ruleset's own text.
#[derive(Debug)]
pub struct SetChange<'a> {
    /// `inet` or `bridge`.
    pub family: &'static str,
    pub set: &'static str,
    /// The declared type: `ifname . ifname`, or for a map
    /// `inet_proto . inet_service : ipv4_addr . inet_service`.
    pub ty: &'a str,
    /// An interval set: its elements are ranges, not encoded here.
    pub interval: bool,
    /// Keys to delete.
    pub gone: Vec<&'a str>,
    /// Elements to add: a key, or for a map `key : value`.
    pub new: Vec<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// Not something this encoder handles: the caller uses nft instead.
    #[error("cannot encode {0:?} as {1}")]
    Unsupported(String, String),
    #[error("netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nf_tables refused the update: {0}")]
    Refused(#[source] io::Error),
}

/// A netfilter netlink socket kept open for element updates, in the
/// network namespace of the thread that opened it.
pub struct ElementSocket {
    socket: Socket,
    seq: u32,
}

impl ElementSocket {
    pub fn open() -> Result<Self, ElementError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ElementError::Socket)?;
        socket.bind_auto().map_err(ElementError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(ElementError::Socket)?;
        // nf_tables answers a batch while it is being sent: every reply is
        // queued by the time send returns, so reads never need to wait.
        socket.set_non_blocking(true).map_err(ElementError::Socket)?;
        Ok(ElementSocket { socket, seq: 0 })
    }

    /// Applies every change as ONE transaction: all deletions, then all
    /// additions (so a map key whose value changed is replaced). Nothing is
    /// applied if any part is refused.
    pub fn apply(&mut self, changes: &[SetChange<'_>]) -> Result<(), ElementError> {
        let mut messages = Vec::new();
        for c in changes.iter().filter(|c| !c.gone.is_empty()) {
            messages.push((set_message(NFT_MSG_DELSETELEM, c, &c.gone)?, NLM_F_REQUEST | NLM_F_ACK));
        }
        for c in changes.iter().filter(|c| !c.new.is_empty()) {
            messages.push((set_message(NFT_MSG_NEWSETELEM, c, &c.new)?, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE));
        }
        if messages.is_empty() {
            return Ok(());
        }
        let expected = messages.len();
        let first = self.seq.wrapping_add(1);
        let mut batch = Vec::new();
        self.push(&mut batch, batch_marker(NFNL_MSG_BATCH_BEGIN), NLM_F_REQUEST);
        for (message, flags) in messages {
            self.push(&mut batch, message, flags);
        }
        self.push(&mut batch, batch_marker(NFNL_MSG_BATCH_END), NLM_F_REQUEST);
        if batch.len() > MAX_BATCH {
            return Err(ElementError::Unsupported(format!("{} bytes of elements", batch.len()), "one netlink batch".into()));
        }
        self.socket.send(&batch, 0).map_err(ElementError::Socket)?;
        self.read_acks(first, expected)
    }

    fn push(&mut self, batch: &mut Vec<u8>, message: NfMessage, flags: u16) {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let start = batch.len();
        batch.resize(start + packet.buffer_len(), 0);
        packet.serialize(&mut batch[start..]);
    }

    /// One ack per element message, or the first error. Replies to an
    /// earlier, failed batch (sequence numbers before `first`) are skipped.
    fn read_acks(&mut self, first: u32, expected: usize) -> Result<(), ElementError> {
        let mut acked = 0;
        while acked < expected {
            let (buf, _) = match self.socket.recv_from_full() {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(ElementError::Socket(io::Error::other(format!("nf_tables answered {acked} of {expected} messages"))))
                }
                Err(e) => return Err(ElementError::Socket(e)),
            };
            let mut offset = 0;
            while offset < buf.len() {
                let reply = NetlinkMessage::<Unparsed>::deserialize(&buf[offset..])
                    .map_err(|e| ElementError::Socket(io::Error::other(format!("netlink reply: {e}"))))?;
                let length = reply.header.length as usize;
                // Ours: the batch's begin, its element messages, its end.
                if reply.header.sequence_number.wrapping_sub(first) <= expected as u32 + 1 {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        match e.code {
                            None => acked += 1,
                            Some(code) => return Err(ElementError::Refused(io::Error::from_raw_os_error(-code.get()))),
                        }
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
        Ok(())
    }
}

/// A netfilter netlink message: `struct nfgenmsg` and attributes.
struct NfMessage {
    message_type: u16,
    family: u8,
    res_id: u16,
    attributes: Vec<DefaultNla>,
}

impl NetlinkSerializable for NfMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }
    fn buffer_len(&self) -> usize {
        4 + self.attributes.as_slice().buffer_len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0; // NFNETLINK_V0
        buffer[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        self.attributes.as_slice().emit(&mut buffer[4..]);
    }
}

/// Replies are read for their header and error code only.
#[derive(Debug)]
struct Unparsed;

impl NetlinkDeserializable for Unparsed {
    type Error = io::Error;
    fn deserialize(_: &NetlinkHeader, _: &[u8]) -> Result<Self, io::Error> {
        Ok(Unparsed)
    }
}

fn batch_marker(message_type: u16) -> NfMessage {
    NfMessage { message_type, family: 0, res_id: NFNL_SUBSYS_NFTABLES, attributes: Vec::new() }
}

fn nested(kind: u16, children: &[DefaultNla]) -> DefaultNla {
    let mut value = vec![0; children.buffer_len()];
    children.emit(&mut value);
    DefaultNla::new(kind | NLA_F_NESTED, value)
}

fn string(kind: u16, s: &str) -> DefaultNla {
    let mut value = s.as_bytes().to_vec();
    value.push(0);
    DefaultNla::new(kind, value)
}

fn data(kind: u16, bytes: Vec<u8>) -> DefaultNla {
    nested(kind, &[DefaultNla::new(NFTA_DATA_VALUE, bytes)])
}

/// NEWSETELEM or DELSETELEM of `elements` (a delete sends keys only).
fn set_message(kind: u16, change: &SetChange<'_>, elements: &[&str]) -> Result<NfMessage, ElementError> {
    let keys_only = kind == NFT_MSG_DELSETELEM;
    if change.interval {
        return Err(ElementError::Unsupported(format!("set {}", change.set), "fixed-size elements (it is an interval set)".into()));
    }
    let family = match change.family {
        "inet" => NFPROTO_INET,
        "bridge" => NFPROTO_BRIDGE,
        other => return Err(ElementError::Unsupported(other.into(), "a table family".into())),
    };
    let (key_ty, value_ty) = match change.ty.split_once(" : ") {
        Some((k, v)) => (k, Some(v)),
        None => (change.ty, None),
    };
    let mut list = Vec::with_capacity(elements.len());
    for text in elements {
        let (key, value) = match (text.split_once(" : "), value_ty) {
            (Some((k, v)), Some(vt)) if !keys_only => (k, Some((v, vt))),
            (Some((k, _)), _) => (k, None),
            (None, Some(_)) if !keys_only => return Err(ElementError::Unsupported((*text).into(), change.ty.into())),
            (None, _) => (*text, None),
        };
        let mut attributes = vec![data(NFTA_SET_ELEM_KEY, encode(key_ty, key)?)];
        if let Some((value, value_ty)) = value {
            attributes.push(data(NFTA_SET_ELEM_DATA, encode(value_ty, value)?));
        }
        list.push(nested(NFTA_LIST_ELEM, &attributes));
    }
    let attributes = vec![
        string(NFTA_SET_ELEM_LIST_TABLE, TABLE),
        string(NFTA_SET_ELEM_LIST_SET, change.set),
        nested(NFTA_SET_ELEM_LIST_ELEMENTS, &list),
    ];
    Ok(NfMessage { message_type: (NFNL_SUBSYS_NFTABLES << 8) | kind, family, res_id: 0, attributes })
}

/// The kernel's bytes for `text` of type `ty`: a single field as is, each
/// field of a concatenation padded to whole 32-bit registers.
pub fn encode(ty: &str, text: &str) -> Result<Vec<u8>, ElementError> {
    let unsupported = || ElementError::Unsupported(text.into(), ty.into());
    let kinds: Vec<&str> = ty.split(" . ").collect();
    let fields: Vec<&str> = text.split(" . ").collect();
    if kinds.len() != fields.len() {
        return Err(unsupported());
    }
    let mut out = Vec::with_capacity(16 * kinds.len());
    for (kind, field) in kinds.iter().zip(&fields) {
        encode_field(kind.trim(), field.trim(), &mut out).ok_or_else(unsupported)?;
        if kinds.len() > 1 {
            out.resize(out.len().next_multiple_of(4), 0);
        }
    }
    Ok(out)
}

fn encode_field(kind: &str, text: &str, out: &mut Vec<u8>) -> Option<()> {
    match kind {
        // IFNAMSIZ bytes, NUL-padded.
        "ifname" => {
            let name = text.strip_prefix('"')?.strip_suffix('"')?;
            if name.len() >= 16 {
                return None;
            }
            let mut bytes = [0u8; 16];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            out.extend_from_slice(&bytes);
        }
        "ipv4_addr" => out.extend_from_slice(&text.parse::<Ipv4Addr>().ok()?.octets()),
        "ipv6_addr" => out.extend_from_slice(&text.parse::<Ipv6Addr>().ok()?.octets()),
        "inet_proto" => out.push(match text {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            n => n.parse().ok()?,
        }),
        "inet_service" => out.extend_from_slice(&text.parse::<u16>().ok()?.to_be_bytes()),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_pad_each_field_to_registers() {
        let key = encode("inet_proto . inet_service", "tcp . 8080").unwrap();
        assert_eq!(key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let value = encode("ipv4_addr . inet_service", "172.25.0.2 . 80").unwrap();
        assert_eq!(value, [172, 25, 0, 2, 0, 80, 0, 0]);
        let key = encode("ipv6_addr . inet_proto . inet_service", "fd00::1 . udp . 53").unwrap();
        assert_eq!(key.len(), 24);
        assert_eq!(&key[16..], [17, 0, 0, 0, 0, 53, 0, 0]);
    }

    #[test]
    fn interface_names_are_ifnamsiz_bytes() {
        let mut want = b"br0".to_vec();
        want.resize(16, 0);
        assert_eq!(encode("ifname", "\"br0\"").unwrap(), want);
        assert_eq!(encode("ifname . ifname", "\"br0\" . \"br0\"").unwrap().len(), 32);
    }

    #[test]
    fn what_it_cannot_encode_is_refused_not_guessed() {
        for (ty, text) in [
            ("ipv4_addr", "10.0.0.0/8"),
            ("ifname", "br0"),
            ("ifname", "\"sixteen-chars-xx\""),
            ("inet_proto . inet_service", "tcp"),
            ("inet_service", "70000"),
            ("ether_addr", "aa:bb:cc:dd:ee:ff"),
        ] {
            assert!(matches!(encode(ty, text), Err(ElementError::Unsupported(..))), "{ty} {text}");
        }
    }

    #[test]
    fn a_map_element_without_a_value_is_refused() {
        let change = SetChange {
            family: "inet",
            set: "ports_v4",
            ty: "inet_proto . inet_service : ipv4_addr . inet_service",
            interval: false,
            gone: vec![],
            new: vec!["tcp . 80"],
        };
        assert!(set_message(NFT_MSG_NEWSETELEM, &change, &change.new).is_err());
        // A delete needs the key only.
        assert!(set_message(NFT_MSG_DELSETELEM, &change, &["tcp . 80 : 10.0.0.2 . 80"]).is_ok());
    }

    #[test]
    fn interval_sets_are_left_to_nft() {
        // A host route is listed as a bare address, but in an interval set
        // it is a range: encoding it as a key would be wrong, not just slow.
        let change = SetChange { family: "inet", set: "masq_v4", ty: "ipv4_addr", interval: true, gone: vec![], new: vec!["10.0.0.5"] };
        assert!(matches!(set_message(NFT_MSG_NEWSETELEM, &change, &change.new), Err(ElementError::Unsupported(..))));
    }
}
