//! Which standalone agent runs on which manifest set: the agent records
//! its PID and its manifest path in its state directory, so that the
//! Docker-style verbs (`netlet network create`, ...) find the directory to
//! write to and know whether to wait for the agent to realize a change.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "agent.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub pid: u32,
    /// Absolute path of the manifest file or directory it reads.
    pub manifests: PathBuf,
}

/// Records the calling process as the agent of `state_dir` reading `manifests`.
pub fn record(state_dir: &Path, manifests: &Path) -> io::Result<()> {
    let manifests = fs::canonicalize(manifests).unwrap_or_else(|_| manifests.to_path_buf());
    let record = AgentRecord { pid: std::process::id(), manifests };
    fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    fs::write(&tmp, serde_json::to_vec(&record).map_err(io::Error::other)?)?;
    fs::rename(tmp, state_dir.join(FILE))
}

/// The agent recorded in `state_dir`, if that process still runs netlet
/// (a stale record, or a PID reused by another program, is no agent).
pub fn running(state_dir: &Path) -> Option<AgentRecord> {
    let record: AgentRecord = serde_json::from_slice(&fs::read(state_dir.join(FILE)).ok()?).ok()?;
    let exe = fs::read_link(format!("/proc/{}/exe", record.pid)).ok()?;
    let ours = fs::read_link("/proc/self/exe").ok();
    let is_netlet = exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("netlet")) || Some(&exe) == ours.as_ref();
    is_netlet.then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_agent_is_found_while_it_runs() {
        let dir = std::env::temp_dir().join(format!("netlet-running-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(running(&dir), None);
        record(&dir, &dir).unwrap();
        // The test binary stands in for the agent: it is this process.
        let found = running(&dir).unwrap();
        assert_eq!((found.pid, found.manifests), (std::process::id(), fs::canonicalize(&dir).unwrap()));
        // A PID that runs something else is no agent.
        fs::write(dir.join(FILE), serde_json::to_vec(&AgentRecord { pid: 1, manifests: dir.clone() }).unwrap()).unwrap();
        assert_eq!(running(&dir), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
