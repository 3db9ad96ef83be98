//! Pure query handling: a packet, the asking address and the name table in;
//! a reply (or "forward upstream") out. Never panics on any input.
//!
//! Over UDP an answer must fit the client's buffer: 512 bytes, or the
//! payload size its EDNS0 OPT record advertises. One that does not fit is
//! sent truncated (TC set, no records), and the client asks again over TCP,
//! where the whole answer goes (an alias shared by many containers).

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::plan::names::NameTable;

/// What to do with a query.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Send these bytes back: REFUSED, to an address that is not a client
    /// of the network served at the address asked.
    Refused(Vec<u8>),
    /// Not a local name: forward the query as is to these upstreams (empty:
    /// the node's resolvers).
    Forward(Vec<IpAddr>),
    /// Not even a parsable DNS message: drop it.
    Drop,
}

/// Local answers change with the objects: never cached for long.
const TTL: u32 = 0;

/// The UDP payload size this server advertises in its own OPT record.
const EDNS_PAYLOAD: u16 = 4096;

/// How the query came, which bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

fn respond(query: &Message, code: ResponseCode, answers: Vec<Record>, transport: Transport) -> Reply {
    let mut msg = Message::response(query.metadata.id, query.metadata.op_code);
    msg.metadata.recursion_desired = query.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.authoritative = true;
    msg.metadata.response_code = code;
    msg.add_queries(query.queries.iter().cloned());
    msg.add_answers(answers);
    // A query with OPT gets OPT back (RFC 6891), with our own size.
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
    }
    let Ok(bytes) = msg.to_vec() else { return Reply::Drop };
    // The client's buffer: 512 bytes unless its OPT says more.
    if transport == Transport::Udp && bytes.len() > usize::from(query.max_payload()) {
        return match msg.truncate().to_vec() {
            Ok(bytes) => Reply::Answer(bytes),
            Err(_) => Reply::Drop,
        };
    }
    Reply::Answer(bytes)
}

/// Answers `packet` from `client`, asked at `server` (a network's
/// gateway). Only the sandboxes of that network are served: anyone else
/// (another network's container, the node, a remote host) is REFUSED,
/// names and forwarding alike, so the server is no open resolver.
/// `rotation` varies the order of several addresses for one name (load
/// sharing across an alias).
pub fn answer(table: &NameTable, server: IpAddr, client: IpAddr, packet: &[u8], rotation: usize, transport: Transport) -> Reply {
    let Ok(query) = Message::from_vec(packet) else { return Reply::Drop };
    if query.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
        return respond(&query, ResponseCode::NotImp, Vec::new(), transport);
    }
    let q = &query.queries[0];
    let served = table.listen.get(&server);
    let Some(who) = table.clients.get(&client).filter(|who| served.is_some_and(|net| who.networks.contains(net))) else {
        return match respond(&query, ResponseCode::Refused, Vec::new(), transport) {
            Reply::Answer(bytes) => Reply::Refused(bytes),
            other => other,
        };
    };
    let upstreams = who.upstreams.clone();
    let networks: BTreeSet<&String> = who.networks.iter().collect();
    let qname = q.name().to_lowercase();
    let text = qname.to_ascii();
    let text = text.trim_end_matches('.');

    if q.query_type() == RecordType::PTR {
        if let Ok(net) = q.name().parse_arpa_name() {
            let ip = net.addr();
            let name = networks.iter().find_map(|n| table.reverse.get(*n)?.get(&ip));
            return match name.and_then(|n| Name::from_ascii(format!("{n}.")).ok()) {
                Some(target) => {
                    let ptr = Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target)));
                    respond(&query, ResponseCode::NoError, vec![ptr], transport)
                }
                None => Reply::Forward(upstreams),
            };
        }
        return Reply::Forward(upstreams);
    }

    // Every address of the name on the networks the client shares.
    let mut addrs: Vec<IpAddr> = Vec::new();
    let mut known = false;
    for n in &networks {
        if let Some(list) = table.records.get(*n).and_then(|r| r.get(text)) {
            known = true;
            for a in list {
                if !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
    }
    if !known {
        return Reply::Forward(upstreams);
    }
    let wanted: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| match q.query_type() {
            RecordType::A => a.is_ipv4(),
            RecordType::AAAA => a.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        })
        .collect();
    let mut records: Vec<Record> = wanted
        .iter()
        .map(|a| {
            let rdata = match a {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Record::from_rdata(q.name().clone(), TTL, rdata)
        })
        .collect();
    if !records.is_empty() {
        let by = rotation % records.len();
        records.rotate_left(by);
    }
    // A known name without records of this type: NOERROR, no data.
    respond(&query, ResponseCode::NoError, records, transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::names::NameClient;
    use hickory_proto::op::Query;

    fn table() -> NameTable {
        let mut t = NameTable::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        t.records.entry("isolated_nw".into()).or_default().insert("app1".into(), vec![ip("172.25.5.0"), ip("172.25.5.1")]);
        t.records.entry("isolated_nw".into()).or_default().insert("container2".into(), vec![ip("172.25.5.0"), ip("fd00::2")]);
        t.records.entry("local_alias".into()).or_default().insert("app2".into(), vec![ip("172.26.0.3")]);
        t.reverse.entry("isolated_nw".into()).or_default().insert(ip("172.25.5.0"), "container2".into());
        t.clients.insert(ip("172.25.5.0"), NameClient { networks: vec!["isolated_nw".into()], upstreams: vec![] });
        t.clients.insert(ip("172.26.0.3"), NameClient { networks: vec!["local_alias".into()], upstreams: vec![ip("10.0.0.53")] });
        t.listen.insert(ip(GATEWAY), "isolated_nw".into());
        t.listen.insert(ip(OTHER_GATEWAY), "local_alias".into());
        t
    }

    /// Where isolated_nw's and local_alias's clients ask.
    const GATEWAY: &str = "172.25.0.1";
    const OTHER_GATEWAY: &str = "172.26.0.1";

    fn at(server: &str) -> IpAddr {
        server.parse().unwrap()
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    /// Asked at the gateway of the client's network.
    fn answer_udp(t: &NameTable, client: IpAddr, packet: &[u8], rotation: usize) -> Reply {
        let server = t.listen.iter().find(|(_, net)| t.clients.get(&client).is_some_and(|c| c.networks.contains(net)));
        answer(t, server.map(|(ip, _)| *ip).unwrap_or(at(GATEWAY)), client, packet, rotation, Transport::Udp)
    }

    fn refused(reply: Reply) -> bool {
        let Reply::Refused(bytes) = reply else { return false };
        let m = Message::from_vec(&bytes).unwrap();
        m.metadata.response_code == ResponseCode::Refused && m.answers.is_empty()
    }

    #[test]
    fn only_the_served_networks_clients_are_answered_or_forwarded_for() {
        let t = table();
        let member: IpAddr = "172.25.5.0".parse().unwrap();
        let other_network: IpAddr = "172.26.0.3".parse().unwrap();
        let stranger: IpAddr = "192.0.2.7".parse().unwrap();
        for name in ["app1.", "example.com."] {
            let q = query(name, RecordType::A);
            assert!(refused(answer(&t, at(GATEWAY), stranger, &q, 0, Transport::Udp)), "{name}: a remote host");
            assert!(refused(answer(&t, at(GATEWAY), stranger, &q, 0, Transport::Tcp)), "{name}: a remote host over TCP");
            assert!(refused(answer(&t, at(GATEWAY), other_network, &q, 0, Transport::Udp)), "{name}: another network's container");
            assert!(refused(answer(&t, at("10.9.9.9"), member, &q, 0, Transport::Udp)), "{name}: at an address serving nothing");
        }
        assert!(matches!(answer(&t, at(GATEWAY), member, &query("app1.", RecordType::A), 0, Transport::Udp), Reply::Answer(_)));
        assert_eq!(answer(&t, at(GATEWAY), member, &query("example.com.", RecordType::A), 0, Transport::Udp), Reply::Forward(vec![]));
    }

    fn addresses(reply: Reply) -> Vec<String> {
        let Reply::Answer(bytes) = reply else { panic!("expected an answer, got {reply:?}") };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 7);
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn names_resolve_only_for_clients_on_the_network() {
        let t = table();
        let me = "172.25.5.0".parse().unwrap();
        assert_eq!(addresses(answer_udp(&t, me, &query("APP1.", RecordType::A), 0)), ["172.25.5.0", "172.25.5.1"]);
        assert_eq!(addresses(answer_udp(&t, me, &query("container2", RecordType::AAAA), 0)), ["fd00::2"]);
        // app2 lives on local_alias only: forwarded (not answered) for this client.
        assert_eq!(answer_udp(&t, me, &query("app2.", RecordType::A), 0), Reply::Forward(vec![]));
        // The other client forwards to its own nameservers.
        let other = "172.26.0.3".parse().unwrap();
        assert_eq!(answer_udp(&t, other, &query("app1.", RecordType::A), 0), Reply::Forward(vec!["10.0.0.53".parse().unwrap()]));
    }

    #[test]
    fn shared_aliases_rotate() {
        let t = table();
        let me = "172.25.5.0".parse().unwrap();
        assert_eq!(addresses(answer_udp(&t, me, &query("app1.", RecordType::A), 1)), ["172.25.5.1", "172.25.5.0"]);
    }

    #[test]
    fn known_name_without_that_type_is_empty_not_forwarded() {
        let t = table();
        assert!(addresses(answer_udp(&t, "172.25.5.0".parse().unwrap(), &query("app1.", RecordType::AAAA), 0)).is_empty());
    }

    #[test]
    fn reverse_lookups_name_the_attachment() {
        let t = table();
        let ans = addresses(answer_udp(&t, "172.25.5.0".parse().unwrap(), &query("0.5.25.172.in-addr.arpa.", RecordType::PTR), 0));
        assert_eq!(ans, ["container2."]);
    }

    /// A query for `many` (50 addresses), with an OPT record of `edns` bytes if given.
    fn many(edns: Option<u16>) -> (NameTable, Vec<u8>) {
        let mut t = table();
        let all: Vec<IpAddr> = (1..=50).map(|i| IpAddr::from([172, 25, 6, i])).collect();
        t.records.get_mut("isolated_nw").unwrap().insert("many".into(), all);
        let mut m = Message::from_vec(&query("many.", RecordType::A)).unwrap();
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        (t, m.to_vec().unwrap())
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated_and_complete_over_tcp() {
        let me: IpAddr = "172.25.5.0".parse().unwrap();
        // 50 A records: 28 + 50 * 16 bytes, more than 512.
        let (t, plain) = many(None);
        let Reply::Answer(bytes) = answer(&t, at(GATEWAY), me, &plain, 0, Transport::Udp) else { panic!() };
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty(), "TC, no partial answer");
        assert!(bytes.len() <= 512);
        assert_eq!(m.queries.len(), 1, "the question stays for the retry");
        let Reply::Answer(bytes) = answer(&t, at(GATEWAY), me, &plain, 0, Transport::Tcp) else { panic!() };
        let m = Message::from_vec(&bytes).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 50);
        // EDNS0: the client's advertised size is honoured, and OPT answered.
        let (t, big) = many(Some(1232));
        let Reply::Answer(bytes) = answer(&t, at(GATEWAY), me, &big, 0, Transport::Udp) else { panic!() };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.metadata.truncation, m.answers.len()), (false, 50));
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        // An advertised size below 512 still means 512.
        let (t, tiny) = many(Some(100));
        let Reply::Answer(bytes) = answer(&t, at(GATEWAY), me, &tiny, 0, Transport::Udp) else { panic!() };
        assert!(Message::from_vec(&bytes).unwrap().metadata.truncation);
        assert!(bytes.len() <= 512);
    }

    #[test]
    fn garbage_never_panics() {
        let t = table();
        let me: IpAddr = "172.25.5.0".parse().unwrap();
        let good = query("app1.", RecordType::A);
        let mut state = 0x1234_5678_u64;
        for i in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut p = if i % 2 == 0 { good.clone() } else { vec![0u8; (state % 600) as usize] };
            for _ in 0..(state % 8) {
                if p.is_empty() {
                    break;
                }
                let at = (state as usize) % p.len();
                p[at] = (state >> 11) as u8;
                state = state.rotate_left(7);
            }
            p.truncate((state % 700) as usize);
            let _ = answer(&t, at(GATEWAY), me, &p, i, Transport::Udp);
            let _ = answer(&t, at(GATEWAY), me, &p, i, Transport::Tcp);
            let _ = answer(&t, at(GATEWAY), "192.0.2.7".parse().unwrap(), &p, i, Transport::Udp);
        }
    }
}
