//! Standalone mode's source: the same YAML `kubectl apply -f` takes, from a
//! file or a directory (not recursive, like kubectl), multi-document files
//! and `List` objects included.
//!
//! One bad document never hides the others: every problem becomes a
//! [`LoadError`], tied to an object when its kind and name can be read.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_yaml::Value;

use crate::api::{Attachment, Kind, Network, PortMapping, API_VERSION};
use crate::objects::{ObjectKey, ObjectName, ObjectSet};

#[derive(Clone, Debug, PartialEq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// The object, when its kind and name could be read.
    pub key: Option<ObjectKey>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)?;
        if let Some(key) = &self.key {
            write!(f, " {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: ObjectSet,
    pub errors: Vec<LoadError>,
}

/// Whether a file in a manifest directory is read (by its extension).
pub fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// The manifest files under `path`, sorted.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_manifest(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        Ok(files)
    } else {
        fs::metadata(path)?;
        Ok(vec![path.to_path_buf()])
    }
}

/// Each manifest file with its modification time and size.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// A cheap fingerprint of the manifest set: changes when a file is added,
/// removed or modified. Used to decide when to reload.
pub fn fingerprint(path: &Path) -> Fingerprint {
    manifest_files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, modified, len)
        })
        .collect()
}

/// The files added, removed or modified between two fingerprints (hashed:
/// a directory may hold a manifest per object).
pub fn changed_files<'a>(before: &'a Fingerprint, after: &'a Fingerprint) -> impl Iterator<Item = &'a Path> {
    let files_after: foldhash::HashSet<&PathBuf> = after.iter().map(|(file, ..)| file).collect();
    let entries_before: foldhash::HashSet<_> = before.iter().collect();
    let gone = before.iter().filter(move |(file, ..)| !files_after.contains(file));
    let new_or_modified = after.iter().filter(move |entry| !entries_before.contains(entry));
    gone.chain(new_or_modified).map(|(file, ..)| file.as_path())
}

/// Loads every object under `path`; problems are collected, not fatal.
pub fn load(path: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let files = match manifest_files(path) {
        Ok(files) => files,
        Err(e) => {
            loaded.errors.push(LoadError { file: path.into(), document: 0, key: None, message: format!("cannot read manifests: {e}") });
            return loaded;
        }
    };
    let mut seen = BTreeSet::new();
    for file in files {
        load_file(&file, &mut loaded, &mut seen);
    }
    loaded
}

/// The running agent's view of the manifest set: files re-parsed only when
/// they change, and a file that stops parsing (half-written by an editor,
/// a typo) keeps its last good objects: nothing already working is torn
/// down because its file is momentarily unreadable.
#[derive(Default)]
pub struct ManifestCache {
    files: std::collections::BTreeMap<PathBuf, CachedFile>,
}

struct CachedFile {
    stamp: (Option<SystemTime>, u64),
    good: Option<ObjectSet>,
    /// The keys of `good`'s objects (networks, attachments, port
    /// mappings, in order), made once per version of the file.
    keys: Vec<ObjectKey>,
    errors: Vec<LoadError>,
}

impl ManifestCache {
    pub fn load(&mut self, path: &Path) -> Loaded {
        let files = match manifest_files(path) {
            Ok(files) => files,
            Err(e) => {
                let mut loaded = Loaded::default();
                loaded.errors.push(LoadError { file: path.into(), document: 0, key: None, message: format!("cannot read manifests: {e}") });
                return loaded;
            }
        };
        self.files.retain(|f, _| files.contains(f));
        for file in &files {
            let meta = fs::metadata(file).ok();
            let stamp = (meta.as_ref().and_then(|m| m.modified().ok()), meta.map(|m| m.len()).unwrap_or(0));
            if self.files.get(file).is_some_and(|c| c.stamp == stamp) {
                continue;
            }
            let fresh = match fs::read_to_string(file) {
                Ok(text) => parse(file, &text),
                Err(e) => Loaded {
                    errors: vec![LoadError { file: file.clone(), document: 0, key: None, message: format!("cannot read: {e}") }],
                    ..Default::default()
                },
            };
            let broken = fresh
                .errors
                .iter()
                .any(|e| e.key.is_none() && (e.message.starts_with("malformed YAML") || e.message.starts_with("cannot read")));
            let entry = self.files.entry(file.clone()).or_insert(CachedFile { stamp, good: None, keys: Vec::new(), errors: Vec::new() });
            entry.stamp = stamp;
            entry.errors = fresh.errors;
            if broken && entry.good.is_some() {
                for e in &mut entry.errors {
                    e.message.push_str("; keeping the objects of the last version of this file that parsed");
                }
            } else {
                let o = &fresh.objects;
                entry.keys = (o.networks.iter().map(|n| crate::objects::network_key(n)))
                    .chain(o.attachments.iter().map(|a| crate::objects::attachment_key(a)))
                    .chain(o.port_mappings.iter().map(|p| crate::objects::port_mapping_key(p)))
                    .collect();
                entry.good = Some(fresh.objects);
            }
        }
        // Merge in file order; a key defined twice keeps its first definition.
        let mut loaded = Loaded::default();
        let goods = || self.files.values().filter_map(|e| e.good.as_ref());
        let objects = &mut loaded.objects;
        objects.networks.reserve(goods().map(|g| g.networks.len()).sum());
        objects.attachments.reserve(goods().map(|g| g.attachments.len()).sum());
        objects.port_mappings.reserve(goods().map(|g| g.port_mappings.len()).sum());
        let count = goods().map(ObjectSet::len).sum();
        let mut seen: foldhash::HashSet<&ObjectKey> = foldhash::HashSet::with_capacity_and_hasher(count, Default::default());
        for (file, entry) in &self.files {
            loaded.errors.extend(entry.errors.iter().cloned());
            let Some(good) = &entry.good else { continue };
            let mut keys = entry.keys.iter();
            let mut first = |loaded: &mut Loaded| {
                let key = keys.next().expect("a key for every object of the file");
                if seen.insert(key) {
                    return true;
                }
                loaded.errors.push(LoadError {
                    file: file.clone(),
                    document: 0,
                    key: Some(key.clone()),
                    message: "defined more than once; the first definition is used".into(),
                });
                false
            };
            for n in &good.networks {
                if first(&mut loaded) {
                    loaded.objects.networks.push(n.clone());
                }
            }
            for a in &good.attachments {
                if first(&mut loaded) {
                    loaded.objects.attachments.push(a.clone());
                }
            }
            for p in &good.port_mappings {
                if first(&mut loaded) {
                    loaded.objects.port_mappings.push(p.clone());
                }
            }
        }
        loaded
    }
}

fn load_file(file: &Path, loaded: &mut Loaded, seen: &mut BTreeSet<ObjectKey>) {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            loaded.errors.push(LoadError { file: file.into(), document: 0, key: None, message: format!("cannot read: {e}") });
            return;
        }
    };
    parse_into(file, &text, loaded, seen);
}

/// Parses one manifest text (as if read from `file`). Never panics, whatever
/// the input: the fuzz tests below hold it to that.
pub fn parse(file: &Path, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    parse_into(file, text, &mut loaded, &mut BTreeSet::new());
    loaded
}

fn parse_into(file: &Path, text: &str, loaded: &mut Loaded, seen: &mut BTreeSet<ObjectKey>) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                loaded.errors.push(LoadError { file: file.into(), document, key: None, message: format!("malformed YAML: {e}") });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let items = match value.get("kind").and_then(Value::as_str) {
            Some("List") => value.get("items").and_then(Value::as_sequence).cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            if let Err(e) = add_object(item, loaded, seen) {
                loaded.errors.push(LoadError { file: file.into(), document, key: e.0, message: e.1 });
            }
        }
    }
}

type ObjectError = (Option<ObjectKey>, String);

fn add_object(value: Value, loaded: &mut Loaded, seen: &mut BTreeSet<ObjectKey>) -> Result<(), ObjectError> {
    let kind_text = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(String::from);
    let namespace = value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(String::from);
    let kind = match Kind::parse(&kind_text) {
        Some(k) if k.as_str() == kind_text => k,
        _ if kind_text.is_empty() => return Err((None, "document has no kind".into())),
        _ => return Err((None, format!("unknown kind {kind_text:?} (netlet reads Network, Attachment and PortMapping)"))),
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err((None, format!("{kind} has no metadata.name")));
    };
    let namespace = kind.namespaced().then(|| namespace.unwrap_or_else(|| "default".into()));
    let key = ObjectKey {
        kind,
        name: match &namespace {
            Some(ns) => ObjectName::namespaced(ns, &name),
            None => ObjectName::cluster(&name),
        },
    };
    if api_version != API_VERSION {
        return Err((Some(key), format!("unsupported apiVersion {api_version:?} for {kind}; expected {API_VERSION}")));
    }
    if !seen.insert(key.clone()) {
        return Err((Some(key), "defined more than once; the first definition is used".into()));
    }
    let invalid = |e: serde_yaml::Error| (Some(key.clone()), format!("invalid {kind}: {e}"));
    match kind {
        Kind::Network => {
            let net: Network = serde_yaml::from_value(value).map_err(invalid)?;
            loaded.objects.networks.push(Arc::new(net));
        }
        Kind::Attachment => {
            let mut att: Attachment = serde_yaml::from_value(value).map_err(invalid)?;
            att.metadata.namespace = namespace;
            loaded.objects.attachments.push(Arc::new(att));
        }
        Kind::PortMapping => {
            let mut pm: PortMapping = serde_yaml::from_value(value).map_err(invalid)?;
            pm.metadata.namespace = namespace;
            loaded.objects.port_mappings.push(Arc::new(pm));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netlet-manifests-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_changed_files_are_those_added_removed_or_modified() {
        let at = |secs: u64| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let entry = |file: &str, secs: u64, len: u64| (PathBuf::from(file), at(secs), len);
        let before = vec![entry("a.yaml", 1, 10), entry("b.yaml", 1, 10), entry("c.yaml", 1, 10), entry("e.yaml", 1, 10)];
        let after = vec![entry("a.yaml", 1, 10), entry("b.yaml", 2, 10), entry("d.yaml", 1, 10), entry("e.yaml", 1, 0)];
        let mut changed: Vec<&Path> = changed_files(&before, &after).collect();
        changed.sort();
        assert_eq!(changed, [Path::new("b.yaml"), Path::new("c.yaml"), Path::new("d.yaml"), Path::new("e.yaml")]);
        assert_eq!(changed_files(&after, &after).count(), 0);
    }

    #[test]
    fn loads_multi_document_files_and_reports_bad_ones_without_losing_others() {
        let dir = temp_dir("mixed");
        write(
            &dir,
            "a.yaml",
            "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec:\n  ipam: {config: [{subnet: 10.0.0.0/24}]}\n---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: c1}\nspec: {network: n, sandbox: {netns: c1}}\n",
        );
        write(&dir, "b.yaml", "this: is: not: yaml: [\n");
        write(
            &dir,
            "c.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: netlet.io/v1\nkind: Network\nmetadata: {name: old}\n",
        );
        write(&dir, "d.yaml", "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: typed}\nspec: {mtu: lots}\n");
        write(&dir, "notes.txt", "ignored");
        let loaded = load(&dir);
        assert_eq!(loaded.objects.networks.len(), 1);
        assert_eq!(loaded.objects.attachments.len(), 1);
        assert_eq!(loaded.objects.attachments[0].metadata.namespace.as_deref(), Some("default"));
        let messages: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(loaded.errors.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("malformed YAML"));
        assert!(messages[1].contains("unknown kind \"Pod\""));
        assert!(messages[2].contains("unsupported apiVersion"));
        assert!(messages[3].contains("invalid Network"));
        assert_eq!(loaded.errors[3].key, Some(ObjectKey::network("typed")));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_that_stops_parsing_keeps_its_last_good_objects() {
        let dir = temp_dir("cache");
        let net = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {driver: host}\n";
        write(&dir, "a.yaml", net);
        let mut cache = ManifestCache::default();
        assert_eq!(cache.load(&dir).objects.networks.len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&dir, "a.yaml", "apiVersion: [half written");
        let loaded = cache.load(&dir);
        assert_eq!(loaded.objects.networks.len(), 1, "last good objects kept");
        assert!(loaded.errors[0].message.contains("keeping the objects"), "{:?}", loaded.errors);
        fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(cache.load(&dir).objects.is_empty(), "a removed file removes its objects");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_in_two_files_keeps_the_first_file_until_it_goes() {
        let dir = temp_dir("dup-files");
        let net =
            |driver: &str| format!("apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {{name: n}}\nspec: {{driver: {driver}}}\n");
        let att = "apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: x}\nspec: {network: n, sandbox: {netns: x}}\n";
        write(&dir, "a.yaml", &net("host"));
        write(&dir, "b.yaml", &format!("{}---\n{att}", net("null")));
        let mut cache = ManifestCache::default();
        for _ in 0..2 {
            let loaded = cache.load(&dir);
            assert_eq!(loaded.objects.networks.len(), 1);
            assert_eq!(loaded.objects.networks[0].spec.driver, crate::api::Driver::Host, "a.yaml's comes first");
            assert_eq!(loaded.objects.attachments.len(), 1, "b.yaml's other objects stay");
            assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
            assert!(loaded.errors[0].file.ends_with("b.yaml") && loaded.errors[0].key == Some(ObjectKey::network("n")));
        }
        fs::remove_file(dir.join("a.yaml")).unwrap();
        let loaded = cache.load(&dir);
        assert_eq!(loaded.objects.networks[0].spec.driver, crate::api::Driver::Null, "b.yaml's, once a.yaml is gone");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn duplicate_objects_keep_the_first() {
        let dir = temp_dir("dup");
        let net = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: n}\nspec: {driver: null}\n";
        write(&dir, "a.yaml", &format!("{net}---\n{net}"));
        let loaded = load(&dir);
        assert_eq!(loaded.objects.networks.len(), 1);
        assert!(loaded.errors[0].message.contains("more than once"));
        fs::remove_dir_all(dir).unwrap();
    }
}
