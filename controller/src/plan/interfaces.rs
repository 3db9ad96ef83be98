//! Interface names and default routes, decided per sandbox.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use super::attachment::{SandboxChoice, SandboxRef};
use super::network::ResolvedNetwork;
use super::outcome::{reason, Failure};
use super::{Allocations, Local, Plan};
use crate::api::Driver;

/// Names interfaces per sandbox: names held before, then explicit names, then eth0, eth1, ...
/// for the rest in creation order, keeping names assigned earlier. The
/// answer is by position in `local`; failed attachments have none.
pub(super) fn assign_interfaces(local: &[Local<'_>], held: &Allocations, out: &mut Plan) -> Vec<Option<String>> {
    // Each sandbox is named apart from the others: hashed, in no order.
    let mut by_sandbox: HashMap<&SandboxRef, Vec<usize>> = HashMap::with_capacity(local.len());
    for (position, entry) in local.iter().enumerate() {
        if let SandboxChoice::Namespace(sandbox) = &entry.2.sandbox {
            by_sandbox.entry(sandbox).or_default().push(position);
        }
    }
    let mut names: Vec<Option<String>> = vec![None; local.len()];
    for members in by_sandbox.values() {
        // interface name -> attachment holding it, within this sandbox
        let mut taken: HashMap<String, &str> = HashMap::new();
        // Names held from earlier reconciles come first: a running
        // container's interface is never renamed because of a newcomer.
        for &i in members {
            let (key, att, _) = &local[i];
            let Some(ifname) = held.endpoints.get(key).and_then(|h| h.interface.as_ref()) else {
                continue;
            };
            if att.spec.interface.as_ref().is_none_or(|wanted| wanted == ifname) && !taken.contains_key(ifname) {
                taken.insert(ifname.clone(), key.as_str());
                names[i] = Some(ifname.clone());
            }
        }
        // Then explicit names, in creation order.
        for &i in members {
            let (key, att, _) = &local[i];
            let Some(ifname) = &att.spec.interface else {
                continue;
            };
            if names[i].is_some() {
                continue;
            }
            match taken.get(ifname) {
                Some(holder) => {
                    out.attachments.entry(key.clone()).or_insert(Err(Failure::new(
                        reason::INTERFACE_CONFLICT,
                        format!("interface {ifname} in this sandbox is already used by attachment {holder}"),
                    )));
                }
                None => {
                    taken.insert(ifname.clone(), key.as_str());
                    names[i] = Some(ifname.clone());
                }
            }
        }
        // The rest: the lowest free ethN, in creation order.
        let mut next = 0;
        for &i in members {
            let key = &local[i].0;
            if names[i].is_some() || out.attachments.contains_key(key) {
                continue;
            }
            while taken.contains_key(&format!("eth{next}")) {
                next += 1;
            }
            let ifname = format!("eth{next}");
            taken.insert(ifname.clone(), key.as_str());
            names[i] = Some(ifname);
        }
    }
    names
}

/// One default route per sandbox: an explicit `defaultRoute: true` wins over
/// the default; ties go to the earliest created. Internal and null networks
/// never carry it. The answer is a position in `local`.
pub(super) fn choose_default_routes<'a>(
    local: &'a [Local<'_>],
    networks: &BTreeMap<String, Result<ResolvedNetwork, Failure>>,
    out: &Plan,
) -> HashMap<&'a SandboxRef, usize> {
    let mut chosen: HashMap<&SandboxRef, (bool, usize)> = HashMap::new();
    for (position, (key, att, checked)) in local.iter().enumerate() {
        let SandboxChoice::Namespace(sandbox) = &checked.sandbox else {
            continue;
        };
        if out.attachments.contains_key(key) || att.spec.default_route == Some(false) {
            continue;
        }
        // A pod's default route is its primary network's: taken only when asked.
        if checked.pod.is_some() && att.spec.default_route != Some(true) {
            continue;
        }
        let Some(Ok(net)) = networks.get(&att.spec.network) else {
            continue;
        };
        if net.internal || net.driver == Driver::Null {
            continue;
        }
        let explicit = att.spec.default_route == Some(true);
        match chosen.get(sandbox) {
            Some((true, _)) => {}
            Some((false, _)) if !explicit => {}
            _ => {
                chosen.insert(sandbox, (explicit, position));
            }
        }
    }
    chosen.into_iter().map(|(s, (_, i))| (s, i)).collect()
}
