//! The deployment files, checked without a cluster or a Helm binary:
//! `manifests/` (namespace, RBAC, DaemonSet, default networks, examples) and
//! the Helm chart `charts/netlet`.
//!
//! - the chart's CRDs (and its copy of the default networks) are byte-for-byte
//!   the top-level files;
//! - every YAML file under `manifests/` parses, and every netlet object there
//!   loads with the agent's own loader and plans without a failure;
//! - `values.yaml` satisfies `values.schema.json` (`deploy/values_schema.rs`:
//!   a small validator of the JSON Schema subset the schema uses; python3's
//!   jsonschema as a second opinion when it happens to be installed);
//! - the ClusterRole grants exactly the verbs the agent uses, in manifests/
//!   and in the chart;
//! - the DaemonSet runs on the host network, gets NODE_NAME from
//!   spec.nodeName, mounts /run/netns with Bidirectional propagation, keeps
//!   its state in the /var/lib/netlet hostPath and probes /healthz, /readyz.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a multi-document YAML text, empty ones dropped.
fn documents(text: &str, what: &str) -> Vec<Yaml> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <Yaml as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{what}: document {}: {e}", i + 1));
        if !value.is_null() {
            out.push(value);
        }
    }
    out
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

fn find<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| str_at(d, &["kind"]) == Some(kind)).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

fn seq<'a>(v: &'a Yaml, key: &str) -> &'a [Yaml] {
    v.get(key).and_then(Yaml::as_sequence).map(Vec::as_slice).unwrap_or_else(|| panic!("{key} is not a list in {v:?}"))
}

// ---------------------------------------------------------------- (a) copies

#[test]
fn chart_crds_are_a_byte_identical_copy_of_the_top_level_crds() {
    let top = fs::read(root().join("crds/netlet.io.yaml")).expect("crds/netlet.io.yaml");
    let chart = fs::read(root().join("charts/netlet/crds/netlet.io.yaml")).expect("charts/netlet/crds/netlet.io.yaml");
    assert!(
        top == chart,
        "charts/netlet/crds/netlet.io.yaml differs from crds/netlet.io.yaml; refresh it with \
         `cp crds/netlet.io.yaml charts/netlet/crds/netlet.io.yaml`"
    );
    let chart_crds: Vec<PathBuf> = fs::read_dir(root().join("charts/netlet/crds")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(chart_crds.len(), 1, "the chart's crds/ holds only netlet.io.yaml: {chart_crds:?}");
}

#[test]
fn chart_default_networks_are_a_byte_identical_copy_of_the_manifest() {
    let top = fs::read(root().join("manifests/default-networks.yaml")).unwrap();
    let chart = fs::read(root().join("charts/netlet/files/default-networks.yaml")).unwrap();
    assert!(
        top == chart,
        "charts/netlet/files/default-networks.yaml differs from manifests/default-networks.yaml; \
         refresh it with `cp manifests/default-networks.yaml charts/netlet/files/`"
    );
    let template = read("charts/netlet/templates/default-networks.yaml");
    assert!(template.contains(".Files.Get \"files/default-networks.yaml\""), "the template renders the copy");
    assert!(template.contains(".Values.defaultNetworks.enabled"), "the template honours defaultNetworks.enabled");
}

#[test]
fn chart_tenant_roles_are_a_byte_identical_copy_aggregated_into_view_and_edit() {
    let top = read("manifests/tenant-roles.yaml");
    assert_eq!(top, read("charts/netlet/files/tenant-roles.yaml"), "refresh with `cp manifests/tenant-roles.yaml charts/netlet/files/`");
    let template = read("charts/netlet/templates/tenant-roles.yaml");
    assert!(template.contains(".Files.Get \"files/tenant-roles.yaml\"") && template.contains(".Values.tenantRoles.enabled"));
    let docs = documents(&top, "tenant-roles.yaml");
    let role = |name: &str| docs.iter().find(|d| str_at(d, &["metadata", "name"]) == Some(name)).unwrap_or_else(|| panic!("{name}"));
    let label = |r: &Yaml, l: &str| str_at(r, &["metadata", "labels", l]).map(String::from);
    assert_eq!(label(role("netlet-view"), "rbac.authorization.k8s.io/aggregate-to-view").as_deref(), Some("true"));
    assert_eq!(label(role("netlet-edit"), "rbac.authorization.k8s.io/aggregate-to-edit").as_deref(), Some("true"));
    // Tenants never write Networks (the admin's) nor status (the agent's).
    let edit = grants(seq(role("netlet-edit"), "rules"));
    assert!(edit.iter().all(|(_, resource, _)| resource == "attachments" || resource == "portmappings"), "{edit:?}");
    let view = grants(seq(role("netlet-view"), "rules"));
    assert!(view.iter().all(|(_, _, verb)| ["get", "list", "watch"].contains(&verb.as_str())), "{view:?}");
}

#[test]
fn versions_agree_between_the_crate_the_chart_and_the_manifests() {
    let version = env!("CARGO_PKG_VERSION");
    let chart: Yaml = serde_yaml::from_str(&read("charts/netlet/Chart.yaml")).unwrap();
    assert_eq!(str_at(&chart, &["apiVersion"]), Some("v2"));
    assert_eq!(str_at(&chart, &["name"]), Some("netlet"));
    assert_eq!(str_at(&chart, &["appVersion"]), Some(version), "Chart.yaml appVersion (the default image tag) is the agent's version");
    let ds = find(&documents(&read("manifests/daemonset.yaml"), "daemonset.yaml"), "DaemonSet").clone();
    let image = str_at(&seq(&ds["spec"]["template"]["spec"], "containers")[0], &["image"]).unwrap().to_string();
    assert!(image.ends_with(&format!(":{version}")), "manifests/daemonset.yaml image {image} is tagged with the agent's version {version}");
    let values: Yaml = serde_yaml::from_str(&read("charts/netlet/values.yaml")).unwrap();
    let repo = str_at(&values, &["image", "repository"]).unwrap();
    assert_eq!(format!("{repo}:{version}"), image, "chart default image = manifests image");
}

// ----------------------------------------------------------- (b) manifests/

#[test]
fn every_yaml_under_manifests_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("manifests"), &mut files);
    assert!(files.len() >= 5, "manifests/ holds the deployment files and examples: {files:?}");
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let docs = documents(&text, &file.display().to_string());
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in &docs {
            assert!(str_at(doc, &["apiVersion"]).is_some(), "{}: a document without apiVersion", file.display());
            assert!(str_at(doc, &["kind"]).is_some(), "{}: a document without kind", file.display());
            assert!(str_at(doc, &["metadata", "name"]).is_some(), "{}: a document without metadata.name", file.display());
        }
    }
    for required in ["namespace.yaml", "rbac.yaml", "daemonset.yaml", "default-networks.yaml"] {
        assert!(files.iter().any(|f| f.ends_with(required)), "manifests/{required} is missing");
    }
}

fn netlet_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("manifests/default-networks.yaml")];
    yaml_files(&root().join("manifests/examples"), &mut files);
    files
}

#[test]
fn every_netlet_object_loads_with_the_agents_own_loader() {
    let mut total = 0;
    for file in netlet_files() {
        let loaded = netlet::source::manifests::load(&file);
        let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}:\n{}", file.display(), errors.join("\n"));
        assert!(!loaded.objects.is_empty(), "{}: no netlet object", file.display());
        total += loaded.objects.len();
        // Nothing else may hide in these files: every document is a netlet object.
        let docs = documents(&fs::read_to_string(&file).unwrap(), &file.display().to_string());
        assert_eq!(docs.len(), loaded.objects.len(), "{}: every document is a netlet object", file.display());
    }
    let defaults = netlet::source::manifests::load(&root().join("manifests/default-networks.yaml")).objects;
    let names: BTreeSet<String> = defaults.networks.iter().map(|n| n.metadata.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["bridge", "host", "none"].iter().map(|s| s.to_string()).collect(), "Docker's three default networks");
    assert!(total > 20, "the examples cover the Docker scenarios ({total} objects)");
}

#[test]
fn every_example_plans_without_a_failure_next_to_the_default_networks() {
    let defaults = netlet::source::manifests::load(&root().join("manifests/default-networks.yaml")).objects;
    let facts = netlet::plan::NodeFacts { node_name: "node-a".into(), ephemeral_ports: (32768, 60999), ..Default::default() };
    for file in netlet_files().into_iter().skip(1) {
        let mut objects = defaults.clone();
        let example = netlet::source::manifests::load(&file).objects;
        objects.networks.extend(example.networks);
        objects.attachments.extend(example.attachments);
        objects.port_mappings.extend(example.port_mappings);
        let plan = netlet::plan::plan(&objects, &facts, &Default::default());
        let mut failures = Vec::new();
        for (name, r) in &plan.networks {
            if let Err(f) = r {
                failures.push(format!("network {name}: {f:?}"));
            }
        }
        for (name, r) in &plan.attachments {
            if let Err(f) = r {
                failures.push(format!("attachment {name}: {f:?}"));
            }
        }
        for (name, r) in &plan.port_mappings {
            if let Err(f) = r {
                failures.push(format!("portmapping {name}: {f:?}"));
            }
        }
        assert!(failures.is_empty(), "{}:\n{}", file.display(), failures.join("\n"));
        assert_eq!(plan.attachments.len(), objects.attachments.len(), "{}: every attachment planned", file.display());
        assert_eq!(plan.port_mappings.len(), objects.port_mappings.len(), "{}: every port mapping planned", file.display());
    }
}

#[test]
fn the_examples_cover_the_docker_scenarios() {
    let mut all = netlet::objects::ObjectSet::default();
    for file in netlet_files() {
        let o = netlet::source::manifests::load(&file).objects;
        all.networks.extend(o.networks);
        all.attachments.extend(o.attachments);
        all.port_mappings.extend(o.port_mappings);
    }
    let net = |name: &str| all.networks.iter().find(|n| n.metadata.name.as_deref() == Some(name));
    let att = |name: &str| all.attachments.iter().filter(|a| a.metadata.name.as_deref() == Some(name)).collect::<Vec<_>>();
    // Default bridge: alpine1, alpine2 on `bridge`.
    assert!(att("alpine1").iter().any(|a| a.spec.network == "bridge"));
    // User-defined bridge alpine-net; alpine4 on it and on bridge, one namespace.
    assert!(net("alpine-net").is_some());
    let alpine4: Vec<_> = all.attachments.iter().filter(|a| a.spec.sandbox.netns.as_deref() == Some("alpine4")).collect();
    let networks: BTreeSet<&str> = alpine4.iter().map(|a| a.spec.network.as_str()).collect();
    assert_eq!(networks, ["alpine-net", "bridge"].into_iter().collect());
    // Container sharing, a published port, macvlan, internal, icc disabled.
    assert!(all.attachments.iter().any(|a| a.spec.sandbox.attachment.is_some()), "a --network container:NAME example");
    assert!(!all.port_mappings.is_empty(), "a published port example");
    assert!(all.networks.iter().any(|n| n.spec.macvlan.is_some()), "a macvlan example");
    assert!(all.networks.iter().any(|n| n.spec.internal), "an internal network example");
    assert!(all.networks.iter().any(|n| n.spec.bridge.as_ref().and_then(|b| b.icc) == Some(false)), "an icc-disabled example");
}

// ------------------------------------------------------- (c) values schema

#[path = "deploy/values_schema.rs"]
mod values_schema;

// --------------------------------------------------------------- (d) RBAC

/// (apiGroup, resource, verb): exactly the calls `netlet run` makes.
fn expected_grants() -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    let mut add = |group: &str, resources: &[&str], verbs: &[&str]| {
        for r in resources {
            for v in verbs {
                set.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    };
    // Watches (reflectors), and finalizers by merge patch.
    add("netlet.io", &["networks", "attachments", "portmappings"], &["list", "watch", "patch"]);
    // Network status: read, merge this node's entry, replace.
    add("netlet.io", &["networks/status"], &["get", "update"]);
    add("netlet.io", &["attachments/status", "portmappings/status"], &["patch"]);
    // The Attachments of pods' netlet.io/networks annotations.
    add("netlet.io", &["attachments"], &["create", "delete"]);
    // This node's pods (pod sandboxes, annotations) and their netlet.io/network-status.
    add("", &["pods"], &["get", "list", "watch", "patch"]);
    // Nodes: its own labels (Network.spec.nodeSelector), the others' VTEP addresses (overlays).
    add("", &["nodes"], &["get", "list", "watch"]);
    // Namespaces' labels (metadata only): Network.spec.namespaceSelector.
    add("", &["namespaces"], &["list", "watch"]);
    // events.k8s.io/v1 Events through kube's Recorder.
    add("events.k8s.io", &["events"], &["create", "patch"]);
    set
}

fn grants(rules: &[Yaml]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for rule in rules {
        let strings = |key: &str| -> Vec<String> {
            rule.get(key)
                .and_then(Yaml::as_sequence)
                .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(), "unexpected rule shape: {rule:?}");
        for g in strings("apiGroups") {
            for r in strings("resources") {
                for v in strings("verbs") {
                    assert!(g != "*" && r != "*" && v != "*", "wildcards are not least privilege: {rule:?}");
                    assert!(set.insert((g.clone(), r.clone(), v.clone())), "({g}, {r}, {v}) granted twice");
                }
            }
        }
    }
    set
}

#[test]
fn the_cluster_role_grants_exactly_the_verbs_the_agent_uses() {
    let docs = documents(&read("manifests/rbac.yaml"), "rbac.yaml");
    let role = find(&docs, "ClusterRole");
    let have = grants(seq(role, "rules"));
    let want = expected_grants();
    let extra: Vec<_> = have.difference(&want).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(extra.is_empty() && missing.is_empty(), "ClusterRole: extra grants {extra:?}, missing grants {missing:?}");

    // The binding ties that role to the DaemonSet's ServiceAccount.
    let sa = find(&docs, "ServiceAccount");
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(str_at(binding, &["roleRef", "kind"]), Some("ClusterRole"));
    assert_eq!(str_at(binding, &["roleRef", "name"]), str_at(role, &["metadata", "name"]));
    let subject = &seq(binding, "subjects")[0];
    assert_eq!(str_at(subject, &["kind"]), Some("ServiceAccount"));
    assert_eq!(str_at(subject, &["name"]), str_at(sa, &["metadata", "name"]));
    assert_eq!(str_at(subject, &["namespace"]), str_at(sa, &["metadata", "namespace"]));
    let ns = find(&documents(&read("manifests/namespace.yaml"), "namespace.yaml"), "Namespace").clone();
    assert_eq!(str_at(sa, &["metadata", "namespace"]), str_at(&ns, &["metadata", "name"]));
    assert_eq!(
        str_at(&ns, &["metadata", "labels", "pod-security.kubernetes.io/enforce"]),
        Some("privileged"),
        "Pod Security Admission must admit the privileged agent in its namespace"
    );
    let ds = find(&documents(&read("manifests/daemonset.yaml"), "daemonset.yaml"), "DaemonSet").clone();
    assert_eq!(str_at(&ds, &["spec", "template", "spec", "serviceAccountName"]), str_at(sa, &["metadata", "name"]));
    assert_eq!(str_at(&ds, &["metadata", "namespace"]), str_at(sa, &["metadata", "namespace"]));
}

#[test]
fn the_chart_cluster_role_has_the_same_rules() {
    // The template's rules are plain YAML after `rules:` (no templating), so
    // they can be read without Helm.
    let template = read("charts/netlet/templates/clusterrole.yaml");
    let start = template.find("\nrules:\n").expect("clusterrole.yaml has a top-level rules: block");
    let rules_text = &template[start + 1..];
    assert!(!rules_text.contains("{{"), "the chart's ClusterRole rules must stay free of templating");
    let parsed: Yaml = serde_yaml::from_str(rules_text).expect("the rules block parses");
    let have = grants(seq(&parsed, "rules"));
    assert_eq!(have, expected_grants(), "charts/netlet/templates/clusterrole.yaml");
}

// ---------------------------------------------------------- (d) DaemonSet

#[test]
fn the_daemonset_runs_the_agent_as_the_design_needs() {
    let ds = find(&documents(&read("manifests/daemonset.yaml"), "daemonset.yaml"), "DaemonSet").clone();
    assert_eq!(str_at(&ds, &["apiVersion"]), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Yaml::Bool(true), "hostNetwork: true");
    assert_eq!(str_at(pod, &["dnsPolicy"]), Some("Default"), "the node's resolvers are the containers' upstreams");
    // Every node, whatever its taints.
    assert!(
        seq(pod, "tolerations")
            .iter()
            .any(|t| str_at(t, &["operator"]) == Some("Exists") && t.get("key").is_none() && t.get("effect").is_none()),
        "a toleration for every taint"
    );

    let containers = seq(pod, "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = seq(c, "args").iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args.first(), Some(&"run"), "netlet run");
    assert!(!args.iter().any(|a| a.starts_with("--manifests")), "Kubernetes mode: no --manifests");
    assert!(args.contains(&"--state-dir=/var/lib/netlet"));
    assert!(args.contains(&"--resync-period=30s"));
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9464"));

    let env = seq(c, "env");
    let node_name = env.iter().find(|e| str_at(e, &["name"]) == Some("NODE_NAME")).expect("NODE_NAME is set");
    assert_eq!(str_at(node_name, &["valueFrom", "fieldRef", "fieldPath"]), Some("spec.nodeName"), "NODE_NAME from the downward API");
    assert!(env.iter().any(|e| str_at(e, &["name"]) == Some("RUST_LOG")));

    let port = seq(c, "ports").iter().find(|p| str_at(p, &["name"]) == Some("metrics")).expect("a metrics port");
    assert_eq!(port["containerPort"].as_u64(), Some(9464));
    assert_eq!(str_at(c, &["livenessProbe", "httpGet", "path"]), Some("/healthz"));
    assert_eq!(str_at(c, &["readinessProbe", "httpGet", "path"]), Some("/readyz"));
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(c["resources"][kind].get(res).is_some(), "resources.{kind}.{res}");
        }
    }
    // Bidirectional propagation is accepted only in a privileged container.
    assert_eq!(c["securityContext"]["privileged"], Yaml::Bool(true));

    let volumes = seq(pod, "volumes");
    let host_path_of = |mount_name: &str| -> String {
        let v = volumes.iter().find(|v| str_at(v, &["name"]) == Some(mount_name)).unwrap_or_else(|| panic!("volume {mount_name}"));
        str_at(v, &["hostPath", "path"]).unwrap_or_else(|| panic!("volume {mount_name} is a hostPath")).to_string()
    };
    let mounts = seq(c, "volumeMounts");
    let mount = |path: &str| mounts.iter().find(|m| str_at(m, &["mountPath"]) == Some(path)).unwrap_or_else(|| panic!("{path} is mounted"));
    let netns = mount("/run/netns");
    assert_eq!(str_at(netns, &["mountPropagation"]), Some("Bidirectional"), "/run/netns with Bidirectional propagation");
    assert_eq!(host_path_of(str_at(netns, &["name"]).unwrap()), "/run/netns");
    let state = mount("/var/lib/netlet");
    assert_eq!(host_path_of(str_at(state, &["name"]).unwrap()), "/var/lib/netlet", "the state dir is the node's");
    let etc = mount("/etc/netns");
    assert_eq!(host_path_of(str_at(etc, &["name"]).unwrap()), "/etc/netns");
    // The record of the namespaces made lives as long as they do; the
    // container's own /run is read-only.
    let run = mount("/run/netlet");
    assert_eq!(host_path_of(str_at(run, &["name"]).unwrap()), "/run/netlet");

    // netlet-cni: the init container puts it on the node, the agent serves
    // the socket its conflist entry names, under the /run/netlet mount.
    assert!(args.contains(&"--cni-socket=/run/netlet/cni.sock"));
    let inits = seq(pod, "initContainers");
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(str_at(init, &["image"]), str_at(c, &["image"]), "the init container runs the agent's image");
    let init_args: Vec<&str> = seq(init, "args").iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        init_args,
        [
            "cni-install",
            "--binary=/usr/local/bin/netlet-cni",
            "--bin-dir=/host/cni/bin",
            "--conf-dir=/host/cni/net.d",
            "--socket=/run/netlet/cni.sock"
        ]
    );
    assert!(init.get("securityContext").and_then(|s| s.get("privileged")).is_none(), "the installer needs no privilege");
    for (mount_path, host) in [("/host/cni/bin", "/opt/cni/bin"), ("/host/cni/net.d", "/etc/cni/net.d")] {
        let m = seq(init, "volumeMounts").iter().find(|m| str_at(m, &["mountPath"]) == Some(mount_path)).expect(mount_path);
        assert_eq!(host_path_of(str_at(m, &["name"]).unwrap()), host);
    }
}

#[test]
fn the_chart_daemonset_template_keeps_the_essentials() {
    // Without Helm the template cannot be rendered; its fixed parts can be read.
    let t = read("charts/netlet/templates/daemonset.yaml");
    for needle in [
        "hostNetwork: true",
        "fieldPath: spec.nodeName",
        "name: NODE_NAME",
        "mountPath: /run/netns\n          mountPropagation: Bidirectional",
        "path: /run/netns",
        "privileged: true",
        "path: /healthz",
        "path: /readyz",
        "- run\n",
        "--metrics-addr=0.0.0.0:{{ .Values.metrics.port }}",
        "--state-dir={{ .Values.stateDir }}",
        "--resync-period={{ .Values.resyncPeriod }}",
        "value: {{ .Values.logLevel | quote }}",
        "range .Values.extraArgs",
        ".Values.tolerations",
        ".Values.nodeSelector",
        ".Values.resources",
        "path: {{ .Values.stateDir }}",
        "mountPath: /run/netlet",
        "path: /run/netlet",
        "name: KUBERNETES_SERVICE_HOST",
        "include \"netlet.image\"",
        "initContainers:",
        "- cni-install\n        {{- if not .Values.cni.enabled }}\n        - --remove",
        "--binary=/usr/local/bin/netlet-cni",
        "--socket={{ .Values.cni.socket }}",
        "{{- if .Values.cni.enabled }}\n        - --cni-socket={{ .Values.cni.socket }}",
        "path: {{ .Values.cni.binDir }}",
        "path: {{ .Values.cni.confDir }}",
    ] {
        assert!(t.contains(needle), "charts/netlet/templates/daemonset.yaml lacks {needle:?}");
    }
    let helpers = read("charts/netlet/templates/_helpers.tpl");
    assert!(helpers.contains("default .Chart.AppVersion .Values.image.tag"), "the image tag defaults to appVersion");
    for template in
        ["serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml", "service.yaml", "servicemonitor.yaml", "NOTES.txt"]
    {
        assert!(root().join("charts/netlet/templates").join(template).is_file(), "templates/{template}");
    }
    let sm = read("charts/netlet/templates/servicemonitor.yaml");
    assert!(sm.starts_with("{{- if .Values.serviceMonitor.enabled }}"), "the ServiceMonitor is optional");
    assert!(sm.contains("apiVersion: monitoring.coreos.com/v1"));
}

/// Metric names the agent registers (metrics.rs), with a histogram's series.
fn exported_metrics() -> BTreeSet<String> {
    let source = read("controller/src/metrics.rs");
    let mut names = BTreeSet::new();
    for (marker, histogram) in [("HistogramOpts::new(", true), ("Opts::new(", false)] {
        for piece in source.split(marker).skip(1) {
            let Some(quoted) = piece.trim_start().strip_prefix('"') else { continue };
            let name = format!("netlet_{}", quoted.split('"').next().unwrap());
            if histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_the_agent_exports() {
    let dashboard: Json = serde_json::from_str(&read("charts/netlet/dashboards/netlet.json")).expect("the dashboard is JSON");
    let exported = exported_metrics();
    assert!(exported.contains("netlet_reconcile_duration_seconds_bucket") && exported.contains("netlet_dns_queries_total"));
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "one panel per metric family");
    let mut used = BTreeSet::new();
    for panel in panels {
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|t| t.starts_with("netlet_")) {
                assert!(exported.contains(token), "panel {}: {token} is not a metric the agent exports", panel["title"]);
                used.insert(token.to_string());
            }
        }
    }
    // Every family the agent exports is on the dashboard.
    for family in exported.iter().filter(|n| !n.ends_with("_sum") && !n.ends_with("_count") && !n.ends_with("_seconds")) {
        assert!(used.contains(family), "{family} is on no panel");
    }
    let template = read("charts/netlet/templates/grafana-dashboard.yaml");
    assert!(template.starts_with("{{- if .Values.grafanaDashboard.enabled }}"), "the dashboard ConfigMap is optional");
    assert!(template.contains("kind: ConfigMap") && template.contains(".Files.Get \"dashboards/netlet.json\""));
}

// ---------------------------------------------------------------- image and versions

/// The packages image/contents lists, in order.
fn image_packages() -> Vec<String> {
    read("image/contents")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn the_dockerfile_and_the_offline_build_install_the_same_list() {
    let packages = image_packages();
    for needed in ["nftables", "netbase"] {
        assert!(packages.iter().any(|p| p == needed), "image/contents lacks {needed}");
    }
    for line in read("image/contents").lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()) {
        assert!(line.split_whitespace().skip(1).all(|f| f.starts_with('/')), "image/contents: {line:?} lists a package and absolute paths");
        assert!(line.split_whitespace().count() > 1, "image/contents: {line:?} lists no file");
    }
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("COPY image/contents /tmp/image-contents"), "the Dockerfile reads image/contents");
    let installs: Vec<&str> = dockerfile.lines().filter(|l| l.contains("apt-get install")).collect();
    assert_eq!(installs.len(), 1, "one install, from the list: {installs:?}");
    assert!(installs[0].contains("/tmp/image-contents"), "{}", installs[0]);
    for p in &packages {
        assert!(!dockerfile.contains(p.as_str()), "the Dockerfile names {p} itself instead of reading image/contents");
    }
    assert!(read("image/build.sh").contains("$here/contents"), "image/build.sh reads image/contents");
    // netlet's own two binaries, built from this repository by both;
    // netlet-cni, which runs on the node, statically linked by both.
    let static_cni = "cargo rustc --release --locked -p netlet-cni --bin netlet-cni -- -C target-feature=+crt-static";
    assert!(dockerfile.contains(static_cni) && read("image/build.sh").contains(static_cni), "both build netlet-cni with {static_cni:?}");
    for binary in ["netlet", "netlet-cni"] {
        let path = format!("/usr/local/bin/{binary}");
        assert!(dockerfile.contains(&format!("/src/target/release/{binary} {path}\n")), "the Dockerfile installs {path}");
        assert!(read("image/build.sh").contains(&format!("/usr/local/bin/{binary}\n")), "image/build.sh installs {path}");
    }
}

#[test]
fn every_example_object_has_a_name_kubernetes_accepts() {
    // RFC 1123 subdomain, as the API server validates metadata.name.
    let valid = |n: &str| {
        n.len() <= 253
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    let mut files = Vec::new();
    yaml_files(&root().join("manifests"), &mut files);
    for file in files {
        for doc in documents(&fs::read_to_string(&file).unwrap(), &file.display().to_string()) {
            if let Some(name) = str_at(&doc, &["metadata", "name"]) {
                assert!(valid(name), "{}: {name:?} is not a name Kubernetes accepts", file.display());
            }
        }
    }
}

#[test]
fn the_chart_admits_the_kubernetes_version_it_is_tested_on() {
    let chart: Yaml = serde_yaml::from_str(&read("charts/netlet/Chart.yaml")).unwrap();
    let constraint = str_at(&chart, &["kubeVersion"]).expect("Chart.yaml states kubeVersion");
    let minimum = constraint.strip_prefix(">=").and_then(|v| v.strip_suffix("-0")).expect("kubeVersion is a lower bound \">=X.Y.Z-0\"");
    let tested = read("e2e/kube-apiserver.sh")
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_VERSION=v"))
        .expect("KUBE_VERSION in kube-apiserver.sh")
        .to_string();
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(parse(minimum) <= parse(&tested), "kubeVersion {constraint} refuses {tested}, the version tests/node.rs installs on");
    assert!(read("charts/netlet/README.md").contains(&format!("Kubernetes {tested}")), "the chart's README names the tested version");
}
