//! Namespace ids: the number the node's namespace knows a sandbox by, which
//! its kernel events are tagged with (NETLINK_LISTEN_ALL_NSID).

use std::fs::File;

use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::{Netlink, NetlinkError};

type Result<T> = std::result::Result<T, NetlinkError>;

impl Netlink {
    /// The id this namespace knows the namespace `other` by, given one
    /// (the kernel picks it) if it has none.
    pub async fn nsid_of(&self, other: &File) -> Result<i32> {
        use std::os::fd::AsRawFd;
        let fd = other.as_raw_fd() as u32;
        if let Some(id) = self.nsid_request(fd, false).await?.filter(|id| *id >= 0) {
            return Ok(id);
        }
        match self.nsid_request(fd, true).await {
            // EEXIST: it got one meanwhile.
            Ok(_) => {}
            Err(e) if e.errno == Some(17) => {}
            Err(e) => return Err(e),
        }
        self.nsid_request(fd, false).await?.filter(|id| *id >= 0).ok_or_else(|| NetlinkError {
            op: "get namespace id".into(),
            message: "none was assigned".into(),
            errno: None,
        })
    }

    /// RTM_GETNSID (the id, -1 if none) or RTM_NEWNSID (assign any) for
    /// the namespace of `fd`.
    async fn nsid_request(&self, fd: u32, assign: bool) -> Result<Option<i32>> {
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
        use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
        let op = if assign { "assign a namespace id" } else { "get a namespace id" };
        let mut message = NsidMessage::default();
        message.attributes.push(NsidAttribute::Fd(fd));
        let payload = if assign {
            message.attributes.push(NsidAttribute::Id(-1));
            RouteNetlinkMessage::NewNsId(message)
        } else {
            RouteNetlinkMessage::GetNsId(message)
        };
        let mut request = NetlinkMessage::from(payload);
        request.header.flags = NLM_F_REQUEST | if assign { NLM_F_ACK } else { 0 };
        let mut answers = self.handle.clone().request(request).map_err(|e| NetlinkError::from_rtnetlink(op, e))?;
        while let Some(answer) = futures::StreamExt::next(&mut answers).await {
            match answer.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    return Ok(m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    }))
                }
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => {
                        let errno = -code.get();
                        return Err(NetlinkError {
                            op: op.into(),
                            message: std::io::Error::from_raw_os_error(errno).to_string(),
                            errno: Some(errno),
                        });
                    }
                    None => return Ok(None),
                },
                _ => {}
            }
        }
        Ok(None)
    }
}
