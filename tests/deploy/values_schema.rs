//! (c) The chart's `values.yaml` against its `values.schema.json`: a
//! validator of exactly the JSON Schema subset the schema uses (anything
//! more fails), bad values it must reject, and python3's jsonschema as a
//! second opinion when it happens to be installed.

use serde_json::Value as Json;

use super::{read, root};

const SCHEMA_KEYWORDS: &[&str] =
    &["$schema", "title", "description", "type", "properties", "required", "additionalProperties", "enum", "items", "minimum", "maximum"];

fn type_matches(ty: &str, v: &Json) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("schema uses the unsupported type {other:?}"),
    }
}

/// A validator for exactly the JSON Schema subset in [`SCHEMA_KEYWORDS`]; a
/// schema using anything else fails, so the subset cannot silently grow.
fn validate(schema: &Json, v: &Json, at: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        panic!("{at}: a schema must be an object");
    };
    for key in schema.keys() {
        assert!(SCHEMA_KEYWORDS.contains(&key.as_str()), "{at}: schema keyword {key:?} is outside the subset this validator checks");
    }
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Json::String(s) => vec![s.as_str()],
            Json::Array(a) => a.iter().map(|t| t.as_str().expect("type names are strings")).collect(),
            _ => panic!("{at}: bad type"),
        };
        if !types.iter().any(|t| type_matches(t, v)) {
            errors.push(format!("{at}: expected {}, got {v}", types.join(" or ")));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Json::as_array) {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Json::as_f64) {
            if n < min {
                errors.push(format!("{at}: {n} < minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Json::as_f64) {
            if n > max {
                errors.push(format!("{at}: {n} > maximum {max}"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Json::as_object);
        for req in schema.get("required").and_then(Json::as_array).into_iter().flatten() {
            let req = req.as_str().expect("required names are strings");
            if !obj.contains_key(req) {
                errors.push(format!("{at}: required property {req:?} is missing"));
            }
        }
        for (key, value) in obj {
            let here = format!("{at}.{key}");
            match (props.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(sub), _) => validate(sub, value, &here, errors),
                (None, Some(Json::Bool(false))) => errors.push(format!("{here}: property not allowed by the schema")),
                (None, Some(sub @ Json::Object(_))) => validate(sub, value, &here, errors),
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

fn schema_and_values() -> (Json, Json) {
    let schema: Json = serde_json::from_str(&read("charts/netlet/values.schema.json")).expect("values.schema.json is valid JSON");
    let values: Json = serde_yaml::from_str(&read("charts/netlet/values.yaml")).expect("values.yaml parses");
    (schema, values)
}

fn errors_of(schema: &Json, values: &Json) -> Vec<String> {
    let mut errors = Vec::new();
    validate(schema, values, "values", &mut errors);
    errors
}

#[test]
fn values_yaml_satisfies_values_schema_json() {
    let (schema, values) = schema_and_values();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false, "unknown top-level values are rejected");
    let errors = errors_of(&schema, &values);
    assert!(errors.is_empty(), "values.yaml does not satisfy values.schema.json:\n{}", errors.join("\n"));
    // Everything the brief asks for is a value.
    for path in [
        "/image/repository",
        "/image/tag",
        "/image/pullPolicy",
        "/resources",
        "/tolerations",
        "/nodeSelector",
        "/extraArgs",
        "/logLevel",
        "/metrics/port",
        "/serviceMonitor/enabled",
        "/resyncPeriod",
        "/stateDir",
        "/defaultNetworks/enabled",
        "/cni/enabled",
        "/cni/binDir",
        "/cni/confDir",
        "/cni/socket",
    ] {
        assert!(values.pointer(path).is_some(), "values.yaml has no {path}");
    }
    assert_eq!(values.pointer("/image/tag"), Some(&Json::from("")), "the tag defaults to the chart's appVersion");
    assert_eq!(values.pointer("/serviceMonitor/enabled"), Some(&Json::Bool(false)), "the ServiceMonitor is off by default");
    assert_eq!(
        values["cni"],
        serde_json::json!({"enabled": true, "binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d", "socket": "/run/netlet/cni.sock", "netnsDir": ""})
    );
}

/// A change that makes values.yaml invalid.
type Mutation = fn(&mut Json);

#[test]
fn values_schema_rejects_bad_values() {
    let (schema, values) = schema_and_values();
    let bad: [(&str, Mutation); 11] = [
        ("unknown top-level key", |v| v["imagee"] = Json::from("x")),
        ("unknown nested key", |v| v["image"]["digest"] = Json::from("sha256:0")),
        ("pullPolicy outside its enum", |v| v["image"]["pullPolicy"] = Json::from("Sometimes")),
        ("port as a string", |v| v["metrics"]["port"] = Json::from("9464")),
        ("port out of range", |v| v["metrics"]["port"] = Json::from(70000)),
        ("tolerations not a list", |v| v["tolerations"] = Json::from("all")),
        ("extraArgs not strings", |v| v["extraArgs"] = serde_json::json!([1])),
        ("required key missing", |v| drop(v["defaultNetworks"].as_object_mut().unwrap().remove("enabled"))),
        ("boolean as a string", |v| v["serviceMonitor"]["enabled"] = Json::from("yes")),
        ("cni.enabled as a string", |v| v["cni"]["enabled"] = Json::from("true")),
        ("cni without its socket", |v| drop(v["cni"].as_object_mut().unwrap().remove("socket"))),
    ];
    for (what, mutate) in bad {
        let mut v = values.clone();
        mutate(&mut v);
        assert!(!errors_of(&schema, &v).is_empty(), "the schema accepts values with {what}");
    }
    // And the things users do set pass.
    let mut v = values.clone();
    v["image"]["tag"] = Json::from("dev");
    v["extraArgs"] = serde_json::json!(["-v"]);
    v["logLevel"] = Json::from("netlet=debug,kube=info");
    v["serviceMonitor"]["enabled"] = Json::Bool(true);
    v["serviceMonitor"]["labels"] = serde_json::json!({"release": "prometheus"});
    v["nodeSelector"] = serde_json::json!({"netlet.io/agent": "true"});
    let errors = errors_of(&schema, &v);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A second opinion from a full JSON Schema implementation, when python3 has
/// jsonschema and PyYAML; the check above does not depend on it.
#[test]
fn values_schema_with_python_jsonschema_when_available() {
    let probe = std::process::Command::new("python3").args(["-c", "import jsonschema, yaml"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("note: python3 with jsonschema and yaml not found; the built-in subset validator covers this");
        return;
    }
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
values = yaml.safe_load(open(sys.argv[2]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
errors = [e.message for e in cls(schema).iter_errors(values)]
print("\n".join(errors))
sys.exit(1 if errors else 0)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(root().join("charts/netlet/values.schema.json"))
        .arg(root().join("charts/netlet/values.yaml"))
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "jsonschema: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
