//! Output templates over JSON: kubectl's `-o jsonpath=...` and the common
//! cases of Docker's `--format` (Go templates), one engine for both.
//!
//! kubectl: `{.a.b[0]}`, `{[*].Name}`, `{range [*]}{.Name}{"\n"}{end}`.
//! Docker: `{{.IPAM.Config}}`, `{{range .Containers}}{{.Name}} {{end}}`,
//! `{{json .Options}}`. The paths themselves are JSONPath (RFC 9535, via
//! jsonpath-rust), so filters like `[?(@.type=="Ready")]` work too.
//! Objects and lists print as JSON (Go's text/template would print its
//! own `map[...]` notation), strings bare, a missing value as nothing.

use jsonpath_rust::JsonPath;
use serde_json::Value;

/// Which template language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// kubectl's `{...}`.
    Kubectl,
    /// Docker's `{{...}}`.
    GoTemplate,
}

#[derive(Debug, PartialEq)]
enum Node {
    Text(String),
    Value { path: String, json: bool },
    Range { path: String, body: Vec<Node> },
}

/// A parsed template.
#[derive(Debug)]
pub struct Template(Vec<Node>);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template: unclosed action in {0:?}")]
    Unclosed(String),
    #[error("template: {{{{end}}}} without {{{{range}}}}")]
    StrayEnd,
    #[error("template: {{{{range}}}} without {{{{end}}}}")]
    OpenRange,
    #[error("template: bad path {path:?}: {message}")]
    Path { path: String, message: String },
}

impl Template {
    pub fn parse(text: &str, syntax: Syntax) -> Result<Template, TemplateError> {
        let (open, close) = match syntax {
            Syntax::Kubectl => ("{", "}"),
            Syntax::GoTemplate => ("{{", "}}"),
        };
        // A stack of bodies: the innermost open range is last.
        let mut stack: Vec<(String, Vec<Node>)> = vec![(String::new(), Vec::new())];
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            if start > 0 {
                stack.last_mut().expect("root").1.push(Node::Text(rest[..start].to_string()));
            }
            let after = &rest[start + open.len()..];
            let end = action_end(after, close).ok_or_else(|| TemplateError::Unclosed(rest[start..].to_string()))?;
            let action = after[..end].trim();
            rest = &after[end + close.len()..];
            if action == "end" {
                let (path, body) = stack.pop().filter(|_| !stack.is_empty()).ok_or(TemplateError::StrayEnd)?;
                stack.last_mut().ok_or(TemplateError::StrayEnd)?.1.push(Node::Range { path, body });
            } else if let Some(path) = action.strip_prefix("range ") {
                stack.push((json_path(path.trim())?, Vec::new()));
            } else if let Some(literal) = action.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                let text = serde_json::from_str::<String>(&format!("\"{literal}\"")).unwrap_or_else(|_| literal.to_string());
                stack.last_mut().expect("root").1.push(Node::Text(text));
            } else if let Some(path) = action.strip_prefix("json ") {
                stack.last_mut().expect("root").1.push(Node::Value { path: json_path(path.trim())?, json: true });
            } else {
                stack.last_mut().expect("root").1.push(Node::Value { path: json_path(action)?, json: false });
            }
        }
        if !rest.is_empty() {
            stack.last_mut().expect("root").1.push(Node::Text(rest.to_string()));
        }
        match stack.len() {
            1 => Ok(Template(stack.pop().expect("root").1)),
            _ => Err(TemplateError::OpenRange),
        }
    }

    /// Renders against `root`.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.0, root, &mut out);
        out
    }
}

/// Where the action closes, skipping a quoted `"}"`.
fn action_end(text: &str, close: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted && text[i..].starts_with(close) => return Some(i),
            _ => {}
        }
    }
    None
}

/// `.a.b`, `[0].x`, `a.b`, `.`, `$.a` -> a JSONPath query from the current node.
fn json_path(path: &str) -> Result<String, TemplateError> {
    let query = match path {
        "." | "@" | "$" => "$".to_string(),
        p if p.starts_with('$') => p.to_string(),
        p if p.starts_with(".[") => format!("${}", &p[1..]),
        p if p.starts_with('.') || p.starts_with('[') => format!("${p}"),
        p => format!("$.{p}"),
    };
    // Parse once now, so a typo fails before anything is printed.
    Value::Null.query(&query).map_err(|e| TemplateError::Path { path: path.to_string(), message: e.to_string() })?;
    Ok(query)
}

fn select<'a>(value: &'a Value, path: &str) -> Vec<&'a Value> {
    if path == "$" {
        return vec![value];
    }
    value.query(path).unwrap_or_default()
}

fn render_nodes(nodes: &[Node], current: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Value { path, json } => {
                let values: Vec<String> = select(current, path).into_iter().map(|v| show(v, *json)).collect();
                out.push_str(&values.join(" "));
            }
            Node::Range { path, body } => {
                let found = select(current, path);
                let items: Vec<&Value> = match found.as_slice() {
                    [Value::Array(list)] => list.iter().collect(),
                    [Value::Object(map)] => map.values().collect(),
                    _ => found,
                };
                for item in items {
                    render_nodes(body, item, out);
                }
            }
        }
    }
}

fn show(value: &Value, json: bool) -> String {
    match value {
        Value::String(s) if !json => s.clone(),
        Value::Null if !json => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn networks() -> Value {
        json!([{
            "Name": "isolated_nw",
            "IPAM": {"Config": [{"Subnet": "172.25.0.0/16", "Gateway": "172.25.0.1"}]},
            "Containers": {"b": {"Name": "container3", "IPv4Address": "172.25.3.3/16"}, "a": {"Name": "container2", "IPv4Address": "172.25.5.0/16"}},
            "Options": {"com.docker.network.bridge.name": "docker1"}
        }])
    }

    fn kubectl(t: &str, v: &Value) -> String {
        Template::parse(t, Syntax::Kubectl).unwrap().render(v)
    }

    fn go(t: &str, v: &Value) -> String {
        Template::parse(t, Syntax::GoTemplate).unwrap().render(v)
    }

    #[test]
    fn kubectl_paths_ranges_and_literals() {
        let v = networks();
        assert_eq!(kubectl("{[0].IPAM.Config[0].Subnet}", &v), "172.25.0.0/16");
        assert_eq!(kubectl("{.[0].Name}", &v), "isolated_nw");
        assert_eq!(kubectl("{[*].Name}", &v), "isolated_nw");
        assert_eq!(
            kubectl("{range [0].Containers}{.Name}={.IPv4Address}{\"\\n\"}{end}", &v),
            "container2=172.25.5.0/16\ncontainer3=172.25.3.3/16\n"
        );
        assert_eq!(kubectl("{[0].Containers[?(@.Name=='container3')].IPv4Address}", &v), "172.25.3.3/16");
        assert_eq!(kubectl("name: {[0].Nope}!", &v), "name: !", "a missing value prints nothing");
    }

    #[test]
    fn docker_format_common_cases() {
        let net = &networks()[0];
        assert_eq!(go("{{.IPAM.Config}}", net), r#"[{"Gateway":"172.25.0.1","Subnet":"172.25.0.0/16"}]"#);
        assert_eq!(go("{{range .Containers}}{{.Name}} {{end}}", net), "container2 container3 ");
        assert_eq!(go("{{json .Options}}", net), r#"{"com.docker.network.bridge.name":"docker1"}"#);
        assert_eq!(go("{{ .Name }}: {{range .IPAM.Config}}{{.Gateway}}{{end}}", net), "isolated_nw: 172.25.0.1");
        assert_eq!(go("{{json .Name}}", net), "\"isolated_nw\"");
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(matches!(Template::parse("{{.Name", Syntax::GoTemplate), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("{{end}}", Syntax::GoTemplate), Err(TemplateError::StrayEnd)));
        assert!(matches!(Template::parse("{range .a}x", Syntax::Kubectl), Err(TemplateError::OpenRange)));
        assert!(matches!(Template::parse("{.a[}", Syntax::Kubectl), Err(TemplateError::Path { .. })));
        assert_eq!(kubectl("{\"}\"}", &json!({})), "}", "a quoted brace does not close the action");
    }
}
