//! `netlet cni-install`: puts `netlet-cni` on the node, as the chart's init
//! container runs it (the image has no shell), and takes it off again.
//!
//! Install: the binary is copied into the CNI bin dir, then the plugin is
//! appended to the `plugins` of the node's primary configuration, the
//! lexically first `*.conf`, `*.conflist` or `*.json` in the conf dir (the
//! one containerd and CRI-O load). It chains only into a `.conflist`; a
//! single-plugin `.conf` is reported, not converted. Before the first
//! change to a conflist its content is kept beside it as
//! `NAME.netlet-backup` (an extension runtimes do not load). Removal takes
//! the plugin out of every conflist, deletes the backups and the binary.
//!
//! Both are idempotent: a node already as wanted is not written to (the
//! runtime reloads its configuration on every change of the directory).
//! Files are replaced by rename, so the runtime never reads half a file or
//! runs half a binary.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::PLUGIN_TYPE;

const BACKUP_SUFFIX: &str = ".netlet-backup";
/// Extensions the runtimes load (libcni's list).
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI network configuration in {dir} yet: netlet-cni chains after the node's primary plugin, whose installer writes one")]
    NoConfig { dir: PathBuf },
    #[error("{file} is a single-plugin configuration: netlet-cni chains only into a .conflist (make its plugin the first of a conflist's \"plugins\")")]
    NotAList { file: PathBuf },
    #[error("{file}: {why}")]
    Invalid { file: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.into(), source }
}

/// Where the plugin goes and what its entry says.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The `netlet-cni` binary to copy (in the image).
    pub binary: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The agent's socket, written into the plugin's entry.
    pub socket: PathBuf,
}

/// What a run changed, file by file, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub unchanged: Vec<PathBuf>,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |paths: &[PathBuf]| {
            if paths.is_empty() {
                "-".into()
            } else {
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        };
        write!(f, "written: {}; removed: {}; unchanged: {}", list(&self.written), list(&self.removed), list(&self.unchanged))
    }
}

/// The plugin's entry in a conflist.
pub fn plugin_entry(socket: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "socket": socket})
}

/// Copies the binary in, then chains the plugin into the primary conflist
/// (checked first: a node it cannot chain into gets nothing).
pub fn install(place: &Placement) -> Result<Changes, InstallError> {
    let mut changes = Changes::default();
    if !place.socket.is_absolute() {
        return Err(InstallError::Invalid { file: place.socket.clone(), why: "the socket must be an absolute path".into() });
    }
    let file = primary_config(&place.conf_dir)?;
    if file.extension().and_then(|e| e.to_str()) != Some("conflist") {
        return Err(InstallError::NotAList { file });
    }
    let (text, conflist) = read_conflist(&file)?;
    let chained = chain(&conflist, plugin_entry(&place.socket)).map_err(|why| InstallError::Invalid { file: file.clone(), why })?;

    let binary = fs::read(&place.binary).map_err(io_error(&place.binary))?;
    let target = place.bin_dir.join(PLUGIN_TYPE);
    if fs::read(&target).is_ok_and(|have| have == binary) {
        changes.unchanged.push(target);
    } else {
        replace(&target, &binary, 0o755)?;
        changes.written.push(target);
    }

    match chained {
        None => changes.unchanged.push(file),
        Some(chained) => {
            // The backup is the primary plugin's own version, without us.
            if unchain(&conflist).is_none() {
                let backup = with_suffix(&file, BACKUP_SUFFIX);
                replace(&backup, text.as_bytes(), 0o600)?;
                changes.written.push(backup);
            }
            write_conflist(&file, &chained)?;
            changes.written.push(file);
        }
    }
    Ok(changes)
}

/// Takes the plugin out of every conflist in the conf dir, then removes
/// the backups and the binary.
pub fn remove(place: &Placement) -> Result<Changes, InstallError> {
    let mut changes = Changes::default();
    for file in config_files(&place.conf_dir)? {
        if file.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let (_, conflist) = read_conflist(&file)?;
        if let Some(unchained) = unchain(&conflist) {
            write_conflist(&file, &unchained)?;
            changes.written.push(file);
        }
    }
    for file in files_in(&place.conf_dir)? {
        if file.to_string_lossy().ends_with(BACKUP_SUFFIX) {
            remove_file(&file, &mut changes)?;
        }
    }
    remove_file(&place.bin_dir.join(PLUGIN_TYPE), &mut changes)?;
    Ok(changes)
}

/// `conflist` with `entry` as its last plugin and no other of ours;
/// `None` if it is so already.
pub fn chain(conflist: &Value, entry: Value) -> Result<Option<Value>, String> {
    let plugins = plugins_of(conflist)?;
    let mut wanted: Vec<Value> = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    wanted.push(entry);
    if *plugins == wanted {
        return Ok(None);
    }
    let mut out = conflist.clone();
    out["plugins"] = Value::Array(wanted);
    Ok(Some(out))
}

/// `conflist` without our plugin; `None` if it has none.
pub fn unchain(conflist: &Value) -> Option<Value> {
    let plugins = plugins_of(conflist).ok()?;
    if !plugins.iter().any(is_ours) {
        return None;
    }
    let mut out = conflist.clone();
    out["plugins"] = Value::Array(plugins.iter().filter(|p| !is_ours(p)).cloned().collect());
    Some(out)
}

fn plugins_of(conflist: &Value) -> Result<&Vec<Value>, String> {
    match conflist.get("plugins") {
        Some(Value::Array(plugins)) if !plugins.is_empty() => Ok(plugins),
        Some(Value::Array(_)) => Err("\"plugins\" is empty: there is no primary plugin to chain after".into()),
        _ => Err("no \"plugins\" list".into()),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The files (not directories) in `dir`; none if it does not exist.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(InstallError::Io { path: dir.into(), source }),
    };
    Ok(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| !t.is_dir())).map(|e| e.path()).collect())
}

/// The configuration files the runtime considers, in the order it does.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files = files_in(dir)?;
    files.retain(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| CONFIG_EXTENSIONS.contains(&e)));
    // Byte order of the full path, as Go's sort.Strings in libcni.
    files.sort();
    Ok(files)
}

/// The file the runtime loads: the first of [`config_files`].
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    config_files(dir)?.into_iter().next().ok_or_else(|| InstallError::NoConfig { dir: dir.into() })
}

fn read_conflist(file: &Path) -> Result<(String, Value), InstallError> {
    let text = fs::read_to_string(file).map_err(io_error(file))?;
    let value = serde_json::from_str(&text).map_err(|e| InstallError::Invalid { file: file.into(), why: format!("not JSON: {e}") })?;
    Ok((text, value))
}

/// Rewrites a conflist (keys in serde_json's order), keeping its mode.
fn write_conflist(file: &Path, conflist: &Value) -> Result<(), InstallError> {
    let mode = fs::metadata(file).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let mut text = serde_json::to_vec_pretty(conflist).expect("JSON values serialize");
    text.push(b'\n');
    replace(file, &text, mode)
}

/// Writes `path` whole or not at all: a hidden temporary beside it (an
/// extension no runtime loads), then a rename over it.
fn replace(path: &Path, content: &[u8], mode: u32) -> Result<(), InstallError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.netlet-tmp"));
    let written = fs::write(&temp, content)
        .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&temp, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(InstallError::Io { path: path.into(), source });
    }
    Ok(())
}

fn remove_file(path: &Path, changes: &mut Changes) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => changes.removed.push(path.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(InstallError::Io { path: path.into(), source }),
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A node's CNI dirs and the image's binary, in a throwaway directory.
    struct Node {
        root: PathBuf,
        place: Placement,
    }

    impl Node {
        fn new() -> Node {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let root = std::env::temp_dir().join(format!("netlet-cni-install-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in ["image", "bin", "net.d"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::write(root.join("image/netlet-cni"), b"\x7fELF v1").unwrap();
            let place = Placement {
                binary: root.join("image/netlet-cni"),
                bin_dir: root.join("bin"),
                conf_dir: root.join("net.d"),
                socket: "/run/netlet/cni.sock".into(),
            };
            Node { root, place }
        }
        fn conf(&self, name: &str) -> PathBuf {
            self.place.conf_dir.join(name)
        }
        fn write(&self, name: &str, text: &str) {
            fs::write(self.conf(name), text).unwrap();
        }
        fn json(&self, name: &str) -> Value {
            serde_json::from_str(&fs::read_to_string(self.conf(name)).unwrap()).unwrap()
        }
        /// Every file under the node's dirs with its content.
        fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
            let mut files = Vec::new();
            for dir in [&self.place.bin_dir, &self.place.conf_dir] {
                for e in fs::read_dir(dir).unwrap().flatten() {
                    files.push((e.path(), fs::read(e.path()).unwrap()));
                }
            }
            files.sort();
            files
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const PRIMARY: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "primary",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    fn types(conflist: &Value) -> Vec<&str> {
        conflist["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn install_copies_the_binary_and_chains_into_the_first_conflist_with_a_backup() {
        let node = Node::new();
        node.write("10-primary.conflist", PRIMARY);
        node.write("20-other.conflist", PRIMARY);
        node.write("05-notes.txt", "not a config");
        let changes = install(&node.place).unwrap();
        assert_eq!(fs::read(node.place.bin_dir.join("netlet-cni")).unwrap(), b"\x7fELF v1");
        assert_eq!(fs::metadata(node.place.bin_dir.join("netlet-cni")).unwrap().permissions().mode() & 0o777, 0o755);
        let chained = node.json("10-primary.conflist");
        assert_eq!(types(&chained), ["bridge", "portmap", "netlet-cni"]);
        assert_eq!(chained["plugins"][2], json!({"type": "netlet-cni", "socket": "/run/netlet/cni.sock"}));
        assert_eq!(
            chained["plugins"][0],
            serde_json::from_str::<Value>(PRIMARY).unwrap()["plugins"][0],
            "the primary's entries as they were"
        );
        assert_eq!(fs::read_to_string(node.conf("10-primary.conflist.netlet-backup")).unwrap(), PRIMARY);
        assert_eq!(fs::read_to_string(node.conf("20-other.conflist")).unwrap(), PRIMARY, "only the file the runtime loads");
        assert_eq!(changes.written.len(), 3, "{changes}");
        assert!(!node.snapshot().iter().any(|(p, _)| p.to_string_lossy().contains("netlet-tmp")), "no temporary left");
    }

    #[test]
    fn install_on_an_installed_node_writes_nothing() {
        let node = Node::new();
        node.write("10-primary.conflist", PRIMARY);
        install(&node.place).unwrap();
        let before = node.snapshot();
        let changes = install(&node.place).unwrap();
        assert!(changes.written.is_empty() && changes.removed.is_empty(), "{changes}");
        assert_eq!(node.snapshot(), before);
    }

    #[test]
    fn install_follows_the_primary_when_it_rewrites_its_conflist_and_moves_us_last() {
        let node = Node::new();
        node.write("10-primary.conflist", PRIMARY);
        install(&node.place).unwrap();
        // The primary's installer writes its own version again, without us.
        let newer = PRIMARY.replace("10.88.0.0/16", "10.89.0.0/16");
        node.write("10-primary.conflist", &newer);
        install(&node.place).unwrap();
        assert_eq!(types(&node.json("10-primary.conflist")), ["bridge", "portmap", "netlet-cni"]);
        assert_eq!(
            fs::read_to_string(node.conf("10-primary.conflist.netlet-backup")).unwrap(),
            newer,
            "the backup is the primary's latest"
        );
        // Someone chained after us: we go last again, the backup stays.
        let mut list = node.json("10-primary.conflist");
        list["plugins"].as_array_mut().unwrap().push(json!({"type": "tuning"}));
        node.write("10-primary.conflist", &list.to_string());
        install(&node.place).unwrap();
        assert_eq!(types(&node.json("10-primary.conflist")), ["bridge", "portmap", "tuning", "netlet-cni"]);
        assert_eq!(fs::read_to_string(node.conf("10-primary.conflist.netlet-backup")).unwrap(), newer);
    }

    #[test]
    fn a_new_socket_rewrites_only_our_entry() {
        let node = Node::new();
        node.write("10-primary.conflist", PRIMARY);
        install(&node.place).unwrap();
        let place = Placement { socket: "/var/run/other/cni.sock".into(), ..node.place.clone() };
        let changes = install(&place).unwrap();
        assert_eq!(changes.written, [node.conf("10-primary.conflist")], "{changes}");
        assert_eq!(node.json("10-primary.conflist")["plugins"][2]["socket"], "/var/run/other/cni.sock");
        assert_eq!(node.json("10-primary.conflist")["plugins"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn what_it_cannot_chain_into_is_reported_and_left_alone() {
        let node = Node::new();
        assert!(matches!(install(&node.place), Err(InstallError::NoConfig { .. })), "no config yet");
        // The runtime loads 00-single.conf, not the conflist after it.
        node.write("00-single.conf", r#"{"cniVersion": "0.4.0", "name": "x", "type": "bridge"}"#);
        node.write("10-primary.conflist", PRIMARY);
        let e = install(&node.place).unwrap_err();
        assert!(matches!(&e, InstallError::NotAList { file } if file.ends_with("00-single.conf")), "{e}");
        fs::remove_file(node.conf("00-single.conf")).unwrap();
        for (text, why) in [("{not json", "not JSON"), (r#"{"name": "x"}"#, "no \"plugins\""), (r#"{"plugins": []}"#, "empty")] {
            node.write("10-primary.conflist", text);
            let e = install(&node.place).unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        assert!(!node.place.bin_dir.join("netlet-cni").exists(), "nothing installed where it cannot be chained");
        let relative = Placement { socket: "cni.sock".into(), ..node.place.clone() };
        assert!(install(&relative).unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn remove_puts_the_node_back_and_is_idempotent() {
        let node = Node::new();
        node.write("10-primary.conflist", PRIMARY);
        install(&node.place).unwrap();
        let changes = remove(&node.place).unwrap();
        assert_eq!(node.json("10-primary.conflist"), serde_json::from_str::<Value>(PRIMARY).unwrap());
        assert!(!node.conf("10-primary.conflist.netlet-backup").exists());
        assert!(!node.place.bin_dir.join("netlet-cni").exists());
        assert_eq!((changes.written.len(), changes.removed.len()), (1, 2), "{changes}");
        let before = node.snapshot();
        assert_eq!(remove(&node.place).unwrap(), Changes::default());
        assert_eq!(node.snapshot(), before);
    }

    #[test]
    fn remove_on_a_node_without_cni_dirs_does_nothing() {
        let node = Node::new();
        let place = Placement { conf_dir: node.root.join("missing"), bin_dir: node.root.join("missing-bin"), ..node.place.clone() };
        assert_eq!(remove(&place).unwrap(), Changes::default());
    }
}
