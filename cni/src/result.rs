//! The CNI formats the plugin prints: VERSION's answer, the ADD result
//! (the previous plugin's, with what the agent added appended), errors.
//! Results are written in the configuration's `cniVersion`, as the spec
//! requires; 0.3.x and 0.4.0 results carry `ips[].version`, 1.0.0 not.

use serde_json::{json, Map, Value};

use crate::protocol::{Added, CniError};

/// The spec versions this plugin speaks: from 0.3.0, where configuration
/// lists and `prevResult` began, to 1.0.0. A runtime passes every plugin of
/// a list the list's own version (containerd 1.6 with libcni 1.1 included).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version of our own VERSION answer, and of errors whose
/// configuration could not be read.
pub const LATEST_VERSION: &str = "1.0.0";

fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

/// Fails with code 1 (incompatible version) unless `version` is supported.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    let shown = if version.is_empty() { "none (0.1.0)" } else { version };
    Err(CniError::new(CniError::INCOMPATIBLE_VERSION, "incompatible CNI versions")
        .with_details(format!("config is {shown}, netlet-cni supports {}", SUPPORTED_VERSIONS.join(", "))))
}

/// CHECK exists from 0.4.0 on.
pub fn allows_check(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= (0, 4, 0))
}

/// VERSION's answer.
pub fn version_info() -> Value {
    json!({"cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// An error as printed on stdout.
pub fn error_json(version: &str, error: &CniError) -> Value {
    let mut out = json!({"cniVersion": version, "code": error.code, "msg": error.msg});
    if !error.details.is_empty() {
        out["details"] = error.details.clone().into();
    }
    out
}

/// The ADD result: `prev` (the previous plugin's result, if chained) with
/// `added` appended, in `version`'s format. Whatever `prev` holds besides
/// the three lists (dns, fields of newer versions) is passed on untouched.
pub fn chained(version: &str, prev: Option<&Value>, added: &Added) -> Result<Value, CniError> {
    let mut result = match prev {
        // Not chained: a result of its own (ips is not optional).
        None | Some(Value::Null) => json!({"interfaces": [], "ips": []}).as_object().expect("an object").clone(),
        Some(Value::Object(prev)) => prev.clone(),
        Some(other) => return Err(invalid_prev(format!("prevResult is not an object but {other}"))),
    };
    result.insert("cniVersion".into(), version.into());
    let versioned_ips = parse_version(version).is_some_and(|(major, ..)| major == 0);

    let offset = match result.get("interfaces") {
        None => 0,
        Some(Value::Array(interfaces)) => interfaces.len(),
        Some(other) => return Err(invalid_prev(format!("prevResult.interfaces is not a list but {other}"))),
    };
    if !added.interfaces.is_empty() {
        list(&mut result, "interfaces")?.extend(added.interfaces.iter().map(|i| serde_json::to_value(i).expect("plain struct")));
    }
    for ip in &added.ips {
        let mut entry = json!({"address": format!("{}/{}", ip.address, ip.prefix_len), "interface": offset + ip.interface});
        if let Some(gateway) = ip.gateway {
            entry["gateway"] = gateway.to_string().into();
        }
        if versioned_ips {
            entry["version"] = if ip.address.is_ipv4() { "4" } else { "6" }.into();
        }
        list(&mut result, "ips")?.push(entry);
    }
    for route in &added.routes {
        let mut entry = json!({"dst": format!("{}/{}", route.dst, route.dst_prefix_len)});
        if let Some(gw) = route.gw {
            entry["gw"] = gw.to_string().into();
        }
        list(&mut result, "routes")?.push(entry);
    }
    Ok(Value::Object(result))
}

/// `result[key]` as a list, made empty if absent (only when something is
/// appended: a result passed on unchanged keeps its exact keys).
fn list<'a>(result: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, CniError> {
    match result.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(items) => Ok(items),
        other => Err(invalid_prev(format!("prevResult.{key} is not a list but {other}"))),
    }
}

fn invalid_prev(msg: String) -> CniError {
    CniError::new(CniError::INVALID_NETWORK_CONFIG, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Interface, IpConfig, Route};

    /// The Debian bridge plugin's ADD result, as containerd passes it on.
    fn bridge_result(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "ae:1f:00:00:00:01"},
                {"name": "veth1234", "mac": "ae:1f:00:00:00:02"},
                {"name": "eth0", "mac": "ae:1f:00:00:00:03", "sandbox": "/run/netns/cni-1"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.88.0.1"]}
        })
    }

    fn net1() -> Added {
        Added {
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: Some("02:42:ac:19:00:05".into()),
                sandbox: Some("/run/netns/cni-1".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "172.25.0.5".parse().unwrap(),
                    prefix_len: 16,
                    gateway: Some("172.25.0.1".parse().unwrap()),
                    interface: 0,
                },
                IpConfig { address: "fd00::5".parse().unwrap(), prefix_len: 64, gateway: None, interface: 0 },
            ],
            routes: vec![Route { dst: "172.30.0.0".parse().unwrap(), dst_prefix_len: 16, gw: Some("172.25.0.1".parse().unwrap()) }],
        }
    }

    #[test]
    fn nothing_added_passes_the_previous_result_on_unchanged() {
        for version in SUPPORTED_VERSIONS {
            let prev = bridge_result(version);
            assert_eq!(chained(version, Some(&prev), &Added::default()).unwrap(), prev);
        }
    }

    #[test]
    fn added_interfaces_follow_the_previous_ones_and_addresses_point_at_them() {
        let out = chained("0.4.0", Some(&bridge_result("0.4.0")), &net1()).unwrap();
        assert_eq!(out["interfaces"][3], json!({"name": "net1", "mac": "02:42:ac:19:00:05", "sandbox": "/run/netns/cni-1"}));
        assert_eq!(out["ips"][0], bridge_result("0.4.0")["ips"][0], "the previous plugin's address stays first");
        assert_eq!(out["ips"][1], json!({"version": "4", "address": "172.25.0.5/16", "gateway": "172.25.0.1", "interface": 3}));
        assert_eq!(out["ips"][2], json!({"version": "6", "address": "fd00::5/64", "interface": 3}));
        assert_eq!(out["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "172.30.0.0/16", "gw": "172.25.0.1"}]));
        assert_eq!(out["dns"], json!({"nameservers": ["10.88.0.1"]}));
    }

    #[test]
    fn version_1_0_addresses_have_no_version_field() {
        let out = chained("1.0.0", Some(&bridge_result("1.0.0")), &net1()).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["ips"][1], json!({"address": "172.25.0.5/16", "gateway": "172.25.0.1", "interface": 3}));
    }

    #[test]
    fn without_a_previous_result_the_result_is_what_was_added() {
        let out = chained("1.0.0", None, &net1()).unwrap();
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 1);
        assert_eq!(out["ips"][0]["interface"], 0);
        let empty = chained("0.3.1", None, &Added::default()).unwrap();
        assert_eq!(empty, json!({"cniVersion": "0.3.1", "interfaces": [], "ips": []}));
    }

    #[test]
    fn a_malformed_previous_result_is_an_invalid_config() {
        for prev in [json!("text"), json!({"interfaces": {"name": "eth0"}}), json!({"ips": 3}), json!({"routes": "none"})] {
            let e = chained("0.4.0", Some(&prev), &net1()).unwrap_err();
            assert_eq!(e.code, CniError::INVALID_NETWORK_CONFIG, "{prev}: {e}");
        }
    }

    #[test]
    fn only_the_supported_versions_are_accepted() {
        for v in SUPPORTED_VERSIONS {
            assert!(check_version(v).is_ok());
        }
        for v in ["", "0.2.0", "1.1.0", "0.4", "banana"] {
            let e = check_version(v).unwrap_err();
            assert_eq!(e.code, CniError::INCOMPATIBLE_VERSION);
            assert!(e.details.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0"), "{e}");
        }
        assert!(!allows_check("0.3.1") && allows_check("0.4.0") && allows_check("1.0.0"));
    }

    #[test]
    fn version_and_error_answers_have_the_specs_shape() {
        assert_eq!(version_info(), json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}));
        let e = CniError::new(CniError::TRY_AGAIN_LATER, "no agent").with_details("socket /x");
        assert_eq!(error_json("0.4.0", &e), json!({"cniVersion": "0.4.0", "code": 11, "msg": "no agent", "details": "socket /x"}));
        assert_eq!(error_json("1.0.0", &CniError::new(4, "x")), json!({"cniVersion": "1.0.0", "code": 4, "msg": "x"}));
    }
}
