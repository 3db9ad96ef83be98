//! `netlet get`: the standalone status store shown the way kubectl shows it.

use std::io::Write;

use serde_json::{json, Value};

use crate::api::{ready_condition, Condition, Kind};
use crate::status::key_of;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Wide,
    Json,
    Yaml,
}

pub struct Query {
    pub kind: Kind,
    pub name: Option<String>,
    /// None: every namespace.
    pub namespace: Option<String>,
    pub output: Option<OutputFormat>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

fn ready_of(v: &Value) -> (String, String) {
    let conditions: Vec<Condition> =
        v.get("status").and_then(|s| s.get("conditions")).and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    match ready_condition(&conditions) {
        Some(c) => (c.status.clone(), c.reason.clone()),
        None => ("Unknown".into(), String::new()),
    }
}

fn cell(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// Selects and prints; errors when a named object does not exist.
pub fn run(store: &[Value], q: &Query, out: &mut dyn Write) -> anyhow::Result<()> {
    let items: Vec<&Value> = store
        .iter()
        .filter(|v| {
            let Some(key) = key_of(v) else { return false };
            key.kind == q.kind
                && q.name.as_ref().is_none_or(|n| n == key.name.name())
                && (!q.kind.namespaced() || q.namespace.as_deref().is_none_or(|ns| Some(ns) == key.name.namespace()))
        })
        .collect();
    if let Some(name) = &q.name {
        if items.is_empty() {
            anyhow::bail!("{}.netlet.io \"{name}\" not found", q.kind.plural());
        }
    }
    match q.output {
        Some(OutputFormat::Json) | Some(OutputFormat::Yaml) => {
            let value = if q.name.is_some() {
                items[0].clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
            };
            if q.output == Some(OutputFormat::Json) {
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write!(out, "{}", serde_yaml::to_string(&value)?)?;
            }
        }
        format => print_table(&items, q, format == Some(OutputFormat::Wide), out)?,
    }
    Ok(())
}

fn print_table(items: &[&Value], q: &Query, wide: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if items.is_empty() {
        writeln!(out, "No resources found")?;
        return Ok(());
    }
    let all_ns = q.kind.namespaced() && q.namespace.is_none();
    let mut header: Vec<&str> = Vec::new();
    if all_ns {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    let extra: &[&str] = match (q.kind, wide) {
        (Kind::Network, false) => &["DRIVER", "SUBNET", "BRIDGE", "ATTACHMENTS", "READY"],
        (Kind::Network, true) => &["DRIVER", "SUBNET", "GATEWAY", "BRIDGE", "ATTACHMENTS", "READY", "REASON"],
        (Kind::Attachment, false) => &["NETWORK", "INTERFACE", "ADDRESS", "READY"],
        (Kind::Attachment, true) => &["NETWORK", "INTERFACE", "ADDRESS", "IPV6", "MAC", "HOST-IF", "SANDBOX", "READY", "REASON"],
        (Kind::PortMapping, false) => &["ATTACHMENT", "PORTS", "READY"],
        (Kind::PortMapping, true) => &["ATTACHMENT", "PORTS", "READY", "REASON"],
    };
    header.extend_from_slice(extra);
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for v in items {
        let key = key_of(v).expect("filtered");
        let mut row = Vec::new();
        if all_ns {
            row.push(key.name.namespace().unwrap_or_default().to_string());
        }
        row.push(key.name.name().to_string());
        let (ready, reason) = ready_of(v);
        match q.kind {
            Kind::Network => {
                let driver = match str_at(v, &["spec", "driver"]) {
                    "" => "bridge",
                    d => d,
                };
                let subnets: Vec<&str> = v
                    .pointer("/spec/ipam/config")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|c| c.get("subnet").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                row.push(driver.into());
                row.push(cell(&subnets.join(",")));
                if wide {
                    let gws: Vec<&str> = v
                        .pointer("/status/gateways")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    row.push(cell(&gws.join(",")));
                }
                row.push(cell(str_at(v, &["status", "bridge"])));
                row.push(v.pointer("/status/attachments").and_then(Value::as_u64).unwrap_or(0).to_string());
            }
            Kind::Attachment => {
                row.push(match str_at(v, &["spec", "network"]) {
                    "" => "bridge".into(),
                    n => n.into(),
                });
                row.push(cell(str_at(v, &["status", "interface"])));
                row.push(cell(str_at(v, &["status", "ipv4Address"])));
                if wide {
                    row.push(cell(str_at(v, &["status", "ipv6Address"])));
                    row.push(cell(str_at(v, &["status", "macAddress"])));
                    row.push(cell(str_at(v, &["status", "hostInterface"])));
                    row.push(cell(str_at(v, &["status", "sandboxPath"])));
                }
            }
            Kind::PortMapping => {
                row.push(str_at(v, &["spec", "attachment"]).into());
                let ports: Vec<String> = v
                    .pointer("/status/bindings")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|b| {
                                format!(
                                    "{}:{}->{}/{}",
                                    str_at(b, &["hostIP"]),
                                    b.get("hostPort").and_then(Value::as_u64).unwrap_or(0),
                                    b.get("containerPort").and_then(Value::as_u64).unwrap_or(0),
                                    str_at(b, &["protocol"])
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                row.push(cell(&ports.join(",")));
            }
        }
        row.push(ready);
        if wide {
            row.push(cell(&reason));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}
