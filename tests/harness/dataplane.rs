//! The dataplane of a node, in a form two moments can be compared by:
//! every link (with its index: a recreated link has a new one), address
//! and route of the node and of its sandboxes, and netlet's nft tables.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{ip_json, wait_until};

/// The snapshot of `node` and `sandboxes` (namespace names); `on_node` runs
/// a shell command on the node (nft). Taken once the kernel's own duplicate
/// address detection is over: until then an IPv6 address is `tentative`
/// and its local route is still to come.
pub fn snapshot(node: &str, sandboxes: &[String], timeout: Duration, on_node: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    wait_until("IPv6 duplicate address detection to end", timeout, || {
        let settled;
        (out, settled) = snapshot_now(node, sandboxes, &on_node);
        settled
    });
    out
}

/// The snapshot, and whether no link with a carrier has an address still in
/// duplicate address detection (one without a carrier waits for it forever).
fn snapshot_now(node: &str, sandboxes: &[String], on_node: &impl Fn(&str) -> String) -> (String, bool) {
    let (mut out, mut settled) = (String::new(), true);
    for ns in std::iter::once(node).chain(sandboxes.iter().map(String::as_str)) {
        for what in ["-d link show", "addr show", "route show table all"] {
            for mut item in ip_json(ns, what) {
                settled &= !in_dad(&item);
                strip_moving_parts(&mut item);
                out += &format!("{ns} {what}: {item}\n");
            }
        }
    }
    for family in ["inet", "bridge"] {
        out += &on_node(&format!("nft list table {family} netlet 2>/dev/null || true"));
    }
    (out, settled)
}

fn in_dad(link: &Value) -> bool {
    let has_carrier = link["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "LOWER_UP"));
    let addrs = link["addr_info"].as_array().map(Vec::as_slice).unwrap_or_default();
    has_carrier && addrs.iter().any(|a| a["tentative"] == true && a["dadfailed"] != true)
}

/// Drops what moves on its own (counters, timers, address lifetimes); the
/// rest of the kernel's view must not change.
fn strip_moving_parts(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|k, _| !(k == "stats64" || k.ends_with("_timer") || k.ends_with("_life_time")));
            o.values_mut().for_each(strip_moving_parts);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_moving_parts),
        _ => {}
    }
}

/// Fails with the lines that differ between two snapshots.
pub fn assert_unchanged(before: &str, after: &str, what: &str) {
    let (b, a): (BTreeSet<&str>, BTreeSet<&str>) = (before.lines().collect(), after.lines().collect());
    let gone: Vec<&&str> = b.difference(&a).collect();
    let new: Vec<&&str> = a.difference(&b).collect();
    assert!(gone.is_empty() && new.is_empty(), "{what} changed the dataplane:\n--- before only:\n{gone:#?}\n+++ after only:\n{new:#?}");
}
