//! Addresses for this node's attachments, network by network: each
//! subnet's IPAM (`ipam`) over the attachments that ask in it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::network::ResolvedNetwork;
use super::outcome::Failure;
use super::{ipam, Allocations, Local, Plan};
use crate::api::Driver;

/// Runs IPAM for every subnet of every ready network; the answer is by
/// position in `local` (failures go to `out`).
pub(super) fn allocate_addresses(
    local: &[Local<'_>],
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    held: &Allocations,
    out: &mut Plan,
) -> Vec<AddressPair> {
    let mut addresses: Vec<AddressPair> = vec![(None, None); local.len()];
    for (name, net) in networks {
        let Ok(net) = net else { continue };
        if !matches!(net.driver, Driver::Bridge | Driver::Macvlan) {
            continue;
        }
        let members: Vec<usize> = (0..local.len())
            .filter(|i| {
                let (_, att, checked) = &local[*i];
                &att.spec.network == name && checked.holds_addresses()
            })
            .collect();
        let requests: Vec<Member<'_>> = members.iter().map(|i| (local[*i].0.as_str(), local[*i].2.ipv4, local[*i].2.ipv6)).collect();
        for (i, result) in members.into_iter().zip(allocate_network(name, net, &requests, held)) {
            match result {
                Some(Ok(pair)) => addresses[i] = pair,
                Some(Err(f)) => {
                    out.attachments.entry(local[i].0.clone()).or_insert(Err(f));
                }
                None => {}
            }
        }
    }
    addresses
}

/// An attachment's IPv4 and IPv6 address on one network.
pub(crate) type AddressPair = (Option<IpAddr>, Option<IpAddr>);

/// An attachment asking for addresses on a network: its key, static IPv4, static IPv6.
pub(crate) type Member<'a> = (&'a str, Option<IpAddr>, Option<IpAddr>);

/// One network's IPAM over `members`: in each family, statics go to the
/// subnet holding them and dynamic addresses come from the family's first
/// subnet; what `held` records is kept. The answer is by position in
/// `members`; None for a member no subnet took.
pub(crate) fn allocate_network(
    name: &str,
    net: &ResolvedNetwork,
    members: &[Member<'_>],
    held: &Allocations,
) -> Vec<Option<Result<AddressPair, Failure>>> {
    let mut out: Vec<Option<Result<AddressPair, Failure>>> = vec![None; members.len()];
    for (v4, first) in [(true, net.subnet_v4()), (false, net.subnet_v6())] {
        let Some(first) = first else { continue };
        for subnet in net.subnets.iter().filter(|s| s.net.addr().is_ipv4() == v4) {
            let mut positions = Vec::new();
            let mut requests: Vec<ipam::Request> = Vec::new();
            for (i, (key, ipv4, ipv6)) in members.iter().enumerate() {
                let static_ip = if v4 { *ipv4 } else { *ipv6 };
                let wanted = match static_ip {
                    Some(ip) => match net.subnet_for(ip) {
                        Some(s) => s,
                        None => continue,
                    },
                    None => first,
                };
                if wanted != subnet {
                    continue;
                }
                let previous = held
                    .endpoints
                    .get(*key)
                    .filter(|h| h.network == name)
                    .and_then(|h| if v4 { h.ipv4 } else { h.ipv6 })
                    .filter(|ip| subnet.net.contains(ip));
                positions.push(i);
                requests.push(ipam::Request { owner: key, static_ip, previous });
            }
            for (i, result) in positions.into_iter().zip(ipam::allocate(subnet, &requests)) {
                let entry = out[i].get_or_insert(Ok((None, None)));
                match (result, entry.as_mut()) {
                    (Ok(ip), Ok(pair)) if v4 => pair.0 = Some(ip),
                    (Ok(ip), Ok(pair)) => pair.1 = Some(ip),
                    (Err(f), Ok(_)) => *entry = Err(f),
                    (_, Err(_)) => {}
                }
            }
        }
    }
    out
}
