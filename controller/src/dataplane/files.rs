//! /etc/netns/<name>/{hosts,resolv.conf}: written only when the content
//! differs (an in-sync node writes nothing), atomically (temp + rename), and
//! removed with the namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::plan::names::SandboxFiles;

pub const ETC_NETNS: &str = "/etc/netns";

fn dir_of(netns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns)
}

fn write_if_changed(path: &Path, content: &str) -> io::Result<bool> {
    if fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    let tmp = path.with_extension("netlet-tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// Writes the files of one sandbox; returns how many changed.
pub fn ensure(files: &SandboxFiles) -> io::Result<u32> {
    let dir = dir_of(&files.netns);
    fs::create_dir_all(&dir)?;
    let mut changed = 0;
    changed += u32::from(write_if_changed(&dir.join("hosts"), &files.hosts)?);
    changed += u32::from(write_if_changed(&dir.join("resolv.conf"), &files.resolv_conf)?);
    Ok(changed)
}

/// Removes the files netlet writes for `netns`, and the directory if that
/// leaves it empty (anything else in it is not ours and stays).
pub fn remove(netns: &str) -> io::Result<bool> {
    let dir = dir_of(netns);
    let mut removed = false;
    for name in ["hosts", "resolv.conf"] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let _ = fs::remove_dir(&dir); // only succeeds when empty
    Ok(removed)
}

/// Nameservers of the node's /etc/resolv.conf.
pub fn node_resolvers() -> Vec<std::net::IpAddr> {
    fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}
