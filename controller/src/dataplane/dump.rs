//! Netlink dumps read one message at a time, on a plain blocking socket.
//!
//! rtnetlink's connection task decodes a whole dump into its channel
//! before the caller sees the first message: a link dump of a node with
//! 1,000 veths held about 18 MB of parsed messages at once, a third of the
//! agent's peak memory. Here each message is decoded, handed to the caller
//! and dropped, so a dump costs one receive buffer however big it is.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// Twice the largest batch Linux sends in a dump (32 KiB less overhead).
const DUMP_BUFFER: usize = 64 * 1024;

/// Sends `request` as a dump on a new socket of `protocol`, in the calling
/// thread's network namespace, and passes every reply to `each`.
pub fn dump<M>(protocol: isize, request: M, mut each: impl FnMut(M)) -> io::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    // One buffer for the whole dump, big enough for any batch: the kernel
    // sizes each batch of a dump to the buffer the last read offered (up
    // to 32 KiB), so a large buffer also means few batches. (Peeking at
    // each batch's size first kept them at one page: two reads per 28
    // sockets in a sock_diag dump.)
    let mut buf: Vec<u8> = Vec::with_capacity(DUMP_BUFFER);
    loop {
        buf.clear();
        let length = socket.recv(&mut buf, nix::libc::MSG_TRUNC)?;
        if length > buf.len() {
            return Err(io::Error::other(format!("netlink reply of {length} bytes does not fit a {DUMP_BUFFER}-byte buffer")));
        }
        let mut offset = 0;
        while offset < buf.len() {
            let message = NetlinkMessage::<M>::deserialize(&buf[offset..]).map_err(|e| io::Error::other(format!("netlink reply: {e}")))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(m) => each(m),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(match e.code {
                        Some(code) => io::Error::from_raw_os_error(-code.get()),
                        None => io::Error::other(format!("netlink error: {e}")),
                    })
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}
