//! Pure query handling: a packet, the asking address and the name table in;
//! a reply (or "forward upstream") out. Never panics on any input.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::plan::names::NameTable;

/// What to do with a query.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a local name: forward the query as is to these upstreams (empty:
    /// the node's resolvers).
    Forward(Vec<IpAddr>),
    /// Not even a parsable DNS message: drop it.
    Drop,
}

/// Local answers change with the objects: never cached for long.
const TTL: u32 = 0;

fn respond(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Reply {
    let mut msg = Message::response(query.metadata.id, query.metadata.op_code);
    msg.metadata.recursion_desired = query.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.authoritative = true;
    msg.metadata.response_code = code;
    msg.add_queries(query.queries.iter().cloned());
    msg.add_answers(answers);
    match msg.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

/// Answers `packet` from `client`. `rotation` varies the order of several
/// addresses for one name (load sharing across an alias).
pub fn answer(table: &NameTable, client: IpAddr, packet: &[u8], rotation: usize) -> Reply {
    let Ok(query) = Message::from_vec(packet) else { return Reply::Drop };
    if query.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
        return respond(&query, ResponseCode::NotImp, Vec::new());
    }
    let q = &query.queries[0];
    let who = table.clients.get(&client);
    let upstreams = who.map(|c| c.upstreams.clone()).unwrap_or_default();
    let Some(who) = who else { return Reply::Forward(upstreams) };
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
                    respond(&query, ResponseCode::NoError, vec![Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target)))])
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
    respond(&query, ResponseCode::NoError, records)
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
        t
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
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
        assert_eq!(addresses(answer(&t, me, &query("APP1.", RecordType::A), 0)), ["172.25.5.0", "172.25.5.1"]);
        assert_eq!(addresses(answer(&t, me, &query("container2", RecordType::AAAA), 0)), ["fd00::2"]);
        // app2 lives on local_alias only: forwarded (not answered) for this client.
        assert_eq!(answer(&t, me, &query("app2.", RecordType::A), 0), Reply::Forward(vec![]));
        // The other client forwards to its own nameservers.
        let other = "172.26.0.3".parse().unwrap();
        assert_eq!(answer(&t, other, &query("app1.", RecordType::A), 0), Reply::Forward(vec!["10.0.0.53".parse().unwrap()]));
    }

    #[test]
    fn shared_aliases_rotate() {
        let t = table();
        let me = "172.25.5.0".parse().unwrap();
        assert_eq!(addresses(answer(&t, me, &query("app1.", RecordType::A), 1)), ["172.25.5.1", "172.25.5.0"]);
    }

    #[test]
    fn known_name_without_that_type_is_empty_not_forwarded() {
        let t = table();
        assert!(addresses(answer(&t, "172.25.5.0".parse().unwrap(), &query("app1.", RecordType::AAAA), 0)).is_empty());
    }

    #[test]
    fn reverse_lookups_name_the_attachment() {
        let t = table();
        let ans = addresses(answer(&t, "172.25.5.0".parse().unwrap(), &query("0.5.25.172.in-addr.arpa.", RecordType::PTR), 0));
        assert_eq!(ans, ["container2."]);
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
            let _ = answer(&t, me, &p, i);
        }
    }
}
