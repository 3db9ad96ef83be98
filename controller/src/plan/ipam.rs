//! Address management for one subnet: pure, deterministic, stable.
//!
//! Order of precedence, so that a running container never changes address
//! and a manifest set always yields the same addresses:
//! 1. addresses already held (persisted from earlier reconciles) stay,
//! 2. static addresses are claimed in creation order,
//! 3. dynamic addresses are handed out lowest-free-first from the range,
//!    in creation order.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use super::network::Subnet;
use super::outcome::{reason, Failure};

/// One attachment asking for an address in this subnet.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// `namespace/name` of the attachment.
    pub owner: &'a str,
    pub static_ip: Option<IpAddr>,
    /// The address it held before, if any.
    pub previous: Option<IpAddr>,
}

/// Allocates every request; the answer is by position in `requests` (an
/// owner listed twice shares its first request's answer).
pub fn allocate(subnet: &Subnet, requests: &[Request<'_>]) -> Vec<Result<IpAddr, Failure>> {
    // Address -> position of the request holding it.
    let mut used: HashMap<IpAddr, usize> = HashMap::with_capacity(requests.len());
    let mut out: Vec<Option<Result<IpAddr, Failure>>> = vec![None; requests.len()];
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(requests.len());
    let firsts: Vec<usize> = requests.iter().enumerate().map(|(i, r)| *first.entry(r.owner).or_insert(i)).collect();
    let originals = || (0..requests.len()).filter(|i| firsts[*i] == *i);

    // 1. Keep what is held, when it still fits the request.
    for i in originals() {
        let req = &requests[i];
        let Some(prev) = req.previous else { continue };
        let fits = match req.static_ip {
            Some(ip) => ip == prev,
            None => subnet.net.contains(&prev) && subnet.reserved_reason(prev).is_none(),
        };
        if fits && !used.contains_key(&prev) {
            used.insert(prev, i);
            out[i] = Some(Ok(prev));
        }
    }
    // 2. Static addresses.
    for i in originals() {
        let req = &requests[i];
        let Some(ip) = req.static_ip else { continue };
        if out[i].is_some() {
            continue;
        }
        let result = check_static(subnet, ip).and_then(|()| match used.get(&ip) {
            Some(holder) => Err(Failure::new(
                reason::ADDRESS_IN_USE,
                format!("address {ip} is already assigned to attachment {}", requests[*holder].owner),
            )),
            None => Ok(ip),
        });
        if result.is_ok() {
            used.insert(ip, i);
        }
        out[i] = Some(result);
    }
    // 3. Dynamic addresses, lowest free first. The cursor only moves
    // forward: nothing is freed during one pass.
    let (mut cursor, last) = (to_u128(subnet.range.network()), to_u128(subnet.range.broadcast()));
    let v4 = subnet.net.addr().is_ipv4();
    for i in originals() {
        if out[i].is_some() {
            continue;
        }
        let mut found = None;
        while cursor <= last {
            let candidate = from_u128(cursor, v4);
            cursor += 1;
            if subnet.reserved_reason(candidate).is_none() && !used.contains_key(&candidate) {
                found = Some(candidate);
                break;
            }
        }
        let result = match found {
            Some(ip) => {
                used.insert(ip, i);
                Ok(ip)
            }
            None => Err(Failure::new(reason::POOL_EXHAUSTED, format!("no free address left in {} (subnet {})", subnet.range, subnet.net))),
        };
        out[i] = Some(result);
    }
    (0..requests.len()).map(|i| out[firsts[i]].clone().expect("every first request is answered")).collect()
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(value: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((value as u32).into())
    } else {
        IpAddr::V6(value.into())
    }
}

/// How many addresses the subnet's range can hand out.
pub fn capacity(subnet: &Subnet) -> u64 {
    let (first, last) = (to_u128(subnet.range.network()), to_u128(subnet.range.broadcast()));
    let size = last - first + 1;
    let v4 = subnet.net.addr().is_ipv4();
    let reserved = [subnet.net.network(), subnet.net.broadcast(), subnet.gateway]
        .into_iter()
        .chain(subnet.aux.iter().copied())
        .filter(|ip| subnet.range.contains(ip) && (v4 || *ip != subnet.net.broadcast()))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u128;
    u64::try_from(size.saturating_sub(reserved)).unwrap_or(u64::MAX)
}

/// A static address must lie in the subnet and not be reserved.
pub fn check_static(subnet: &Subnet, ip: IpAddr) -> Result<(), Failure> {
    if !subnet.net.contains(&ip) {
        return Err(Failure::invalid(format!("address {ip} is outside the subnet {}", subnet.net)));
    }
    if let Some(what) = subnet.reserved_reason(ip) {
        return Err(Failure::invalid(format!("address {ip} is {what} of {} and cannot be assigned", subnet.net)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(net: &str, gw: &str, range: Option<&str>, aux: &[&str]) -> Subnet {
        let net = net.parse().unwrap();
        Subnet {
            net,
            gateway: gw.parse().unwrap(),
            range: range.map(|r| r.parse().unwrap()).unwrap_or(net),
            aux: aux.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }
    /// The answers by owner.
    fn allocated<'a>(s: &Subnet, reqs: &[Request<'a>]) -> std::collections::BTreeMap<&'a str, Result<IpAddr, Failure>> {
        reqs.iter().map(|r| r.owner).zip(allocate(s, reqs)).collect()
    }
    fn dynamic(owner: &str) -> Request<'_> {
        Request { owner, static_ip: None, previous: None }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn dynamic_addresses_skip_network_gateway_and_aux() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", None, &["10.0.0.3"]);
        let got = allocated(&s, &[dynamic("a"), dynamic("b"), dynamic("c")]);
        assert_eq!(got["a"], Ok(ip("10.0.0.2")));
        assert_eq!(got["b"], Ok(ip("10.0.0.4")));
        assert_eq!(got["c"], Ok(ip("10.0.0.5")));
    }

    #[test]
    fn dynamic_addresses_come_only_from_the_ip_range() {
        let s = subnet("172.25.0.0/16", "172.25.0.1", Some("172.25.5.0/24"), &[]);
        let got = allocated(&s, &[dynamic("a"), dynamic("b")]);
        assert_eq!(got["a"], Ok(ip("172.25.5.0")));
        assert_eq!(got["b"], Ok(ip("172.25.5.1")));
    }

    #[test]
    fn statics_are_claimed_before_dynamics_regardless_of_order() {
        let s = subnet("10.0.0.0/29", "10.0.0.1", None, &[]);
        let reqs = [dynamic("a"), Request { owner: "b", static_ip: Some(ip("10.0.0.2")), previous: None }];
        let got = allocated(&s, &reqs);
        assert_eq!(got["b"], Ok(ip("10.0.0.2")));
        assert_eq!(got["a"], Ok(ip("10.0.0.3")));
    }

    #[test]
    fn held_addresses_are_kept_even_when_lower_ones_are_free() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", None, &[]);
        let reqs = [dynamic("a"), Request { owner: "b", static_ip: None, previous: Some(ip("10.0.0.9")) }];
        let got = allocated(&s, &reqs);
        assert_eq!(got["b"], Ok(ip("10.0.0.9")));
        assert_eq!(got["a"], Ok(ip("10.0.0.2")));
    }

    #[test]
    fn a_static_address_already_held_is_a_conflict_for_the_later_one() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", None, &[]);
        let reqs = [
            Request { owner: "old", static_ip: None, previous: Some(ip("10.0.0.7")) },
            Request { owner: "new", static_ip: Some(ip("10.0.0.7")), previous: None },
        ];
        let got = allocated(&s, &reqs);
        let err = got["new"].clone().unwrap_err();
        assert_eq!(err.reason, reason::ADDRESS_IN_USE);
        assert!(err.message.contains("old"));
    }

    #[test]
    fn exhaustion_fails_only_the_attachment_that_did_not_fit() {
        // /30: network .0, gateway .1, one host .2, broadcast .3
        let s = subnet("10.0.0.0/30", "10.0.0.1", None, &[]);
        let got = allocated(&s, &[dynamic("a"), dynamic("b")]);
        assert_eq!(got["a"], Ok(ip("10.0.0.2")));
        assert_eq!(got["b"].clone().unwrap_err().reason, reason::POOL_EXHAUSTED);
    }

    #[test]
    fn range_ending_at_the_top_of_the_address_space_terminates() {
        let s = subnet("255.255.255.248/29", "255.255.255.249", None, &[]);
        let owners: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
        let reqs: Vec<_> = owners.iter().map(|o| dynamic(o)).collect();
        let got = allocated(&s, &reqs);
        assert_eq!(got.values().filter(|r| r.is_ok()).count(), 5);
    }

    #[test]
    fn an_owner_listed_twice_gets_one_address() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", None, &[]);
        let got = allocate(&s, &[dynamic("a"), dynamic("a"), dynamic("b")]);
        assert_eq!(got, vec![Ok(ip("10.0.0.2")), Ok(ip("10.0.0.2")), Ok(ip("10.0.0.3"))]);
    }

    #[test]
    fn static_addresses_are_validated() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", None, &["10.0.0.5"]);
        assert!(check_static(&s, ip("10.0.1.1")).unwrap_err().message.contains("outside"));
        assert!(check_static(&s, ip("10.0.0.1")).unwrap_err().message.contains("gateway"));
        assert!(check_static(&s, ip("10.0.0.0")).unwrap_err().message.contains("network address"));
        assert!(check_static(&s, ip("10.0.0.255")).unwrap_err().message.contains("broadcast"));
        assert!(check_static(&s, ip("10.0.0.5")).unwrap_err().message.contains("auxiliary"));
        assert!(check_static(&s, ip("10.0.0.6")).is_ok());
    }

    #[test]
    fn capacity_excludes_reserved_addresses() {
        assert_eq!(capacity(&subnet("10.0.0.0/24", "10.0.0.1", None, &["10.0.0.9"])), 252);
        assert_eq!(capacity(&subnet("172.25.0.0/16", "172.25.0.1", Some("172.25.5.0/24"), &[])), 256);
        assert_eq!(capacity(&subnet("fd00::/64", "fd00::1", None, &[])), u64::MAX - 1);
        assert_eq!(capacity(&subnet("fd00::/48", "fd00::1", None, &[])), u64::MAX, "saturates");
    }

    #[test]
    fn ipv6_allocation_works_the_same_way() {
        let s = subnet("fd00::/64", "fd00::1", None, &[]);
        let got = allocated(&s, &[dynamic("a")]);
        assert_eq!(got["a"], Ok(ip("fd00::2")));
    }
}
