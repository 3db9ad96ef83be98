//! `allocations.json` and its journal. A pass that changes a few
//! allocations among thousands appends one line of what changed to
//! `allocations.<N>.log` and fsyncs it: the status of the change waits for
//! that write, and rewriting the whole file (two fsyncs) took several
//! milliseconds while the pass's kernel work ran. A large change, or a
//! journal grown long, folds everything into a new `allocations.json`
//! instead, which names the next journal (`"journal": N+1`): a journal of
//! another number is never read, so a crash between the fold and the old
//! journal's removal cannot replay it over newer state.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{StateDir, StateError};
use crate::plan::{Allocations, HeldEndpoint, PortKey};

const FILE: &str = "allocations.json";
/// Lines a journal takes before the next write folds it.
const MAX_LINES: usize = 256;
/// Entries one line takes; a larger change is written as a fold.
const MAX_CHANGES: usize = 64;

/// The file: the allocations, and the number of the journal that follows them.
#[derive(Default, Serialize, Deserialize)]
struct AllocationsFile {
    #[serde(flatten)]
    allocations: Allocations,
    #[serde(default, skip_serializing_if = "is_zero")]
    journal: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One journal line: each entry set to a value, or removed (null).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Changes {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    endpoints: BTreeMap<crate::objects::ObjectName, Option<HeldEndpoint>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ports: BTreeMap<PortKey, Option<u16>>,
}

impl Changes {
    fn between(before: &Allocations, after: &Allocations) -> Changes {
        Changes { endpoints: changed(&before.endpoints, &after.endpoints), ports: changed(&before.ports, &after.ports) }
    }
    fn len(&self) -> usize {
        self.endpoints.len() + self.ports.len()
    }
    fn apply_to(self, a: &mut Allocations) {
        apply(&mut a.endpoints, self.endpoints);
        apply(&mut a.ports, self.ports);
    }
}

fn changed<K: Ord + Clone, V: PartialEq + Clone>(before: &BTreeMap<K, V>, after: &BTreeMap<K, V>) -> BTreeMap<K, Option<V>> {
    let mut out: BTreeMap<K, Option<V>> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    out.extend(before.keys().filter(|k| !after.contains_key(*k)).map(|k| (k.clone(), None)));
    out
}

fn apply<K: Ord, V>(map: &mut BTreeMap<K, V>, changes: BTreeMap<K, Option<V>>) {
    for (k, v) in changes {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}

/// What the files hold, as this process last read or wrote them.
#[derive(Debug, Default)]
pub(super) struct Journal {
    on_disk: Allocations,
    number: u64,
    lines: usize,
    /// Whether the next write may be a line. Not until the files were read,
    /// nor when there is no file yet for a journal to follow (an operator
    /// looking at the state dir finds allocations.json), nor when the
    /// journal may end in a partial line (a crash or a failed write): that
    /// write folds.
    appendable: bool,
}

fn journal_name(number: u64) -> String {
    format!("allocations.{number}.log")
}

impl StateDir {
    /// The allocations: the file, then its journal's whole lines in order.
    pub fn load_allocations(&self) -> Allocations {
        let file: AllocationsFile = self.load(FILE);
        let mut allocations = file.allocations;
        let path = self.dir.join(journal_name(file.journal));
        let text = fs::read_to_string(&path).unwrap_or_default();
        let appendable = self.dir.join(FILE).exists() && (text.is_empty() || text.ends_with('\n'));
        let mut journal = Journal { number: file.journal, appendable, ..Default::default() };
        for line in super::whole_lines(&text) {
            match serde_json::from_str::<Changes>(line) {
                Ok(changes) => {
                    changes.apply_to(&mut allocations);
                    journal.lines += 1;
                }
                Err(e) => {
                    let aside = path.with_extension("log.corrupt");
                    tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(),
                        "allocations journal is corrupt from here on; it is set aside, and what it held is read back from the kernel");
                    let _ = fs::rename(&path, &aside);
                    journal.appendable = false;
                    break;
                }
            }
        }
        // Left by a crash between a fold and the removal of its journal.
        if let Some(older) = file.journal.checked_sub(1) {
            let _ = fs::remove_file(self.dir.join(journal_name(older)));
        }
        journal.on_disk = allocations.clone();
        *self.journal.lock().expect("not poisoned") = journal;
        allocations
    }

    /// Makes `a` durable: a line of what changed since the files were last
    /// read or written, or a fold (see the module's doc).
    pub fn store_allocations(&self, a: &Allocations) -> Result<(), StateError> {
        let mut journal = self.journal.lock().expect("not poisoned");
        let appended = match journal.appendable && journal.lines < MAX_LINES {
            true => {
                let changes = Changes::between(&journal.on_disk, a);
                match changes.len() {
                    0 => return Ok(()),
                    n if n > MAX_CHANGES => None,
                    _ => Some(self.append(journal.number, &changes).map(|()| changes)),
                }
            }
            false => None,
        };
        match appended {
            Some(Ok(changes)) => {
                changes.apply_to(&mut journal.on_disk);
                journal.lines += 1;
                Ok(())
            }
            Some(Err(source)) => {
                journal.appendable = false;
                Err(StateError::Io { dir: self.dir.clone(), source })
            }
            None => {
                let file = AllocationsFile { allocations: a.clone(), journal: journal.number + 1 };
                if let Err(e) = self.store(FILE, &file, true) {
                    // The new file may be in place: appending to the journal
                    // it does not name would be lost. Fold again next time.
                    journal.appendable = false;
                    return Err(e);
                }
                let _ = fs::remove_file(self.dir.join(journal_name(journal.number)));
                *journal = Journal { on_disk: file.allocations, number: file.journal, lines: 0, appendable: true };
                Ok(())
            }
        }
    }

    /// One line, written whole and fsynced (and the directory, when the
    /// journal is new).
    fn append(&self, number: u64, changes: &Changes) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(changes).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let path = self.dir.join(journal_name(number));
        let mut f = fs::OpenOptions::new().append(true).create(true).open(&path)?;
        let new = f.metadata()?.len() == 0;
        f.write_all(&line)?;
        f.sync_data()?;
        if new {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::temp_dir as dir;

    fn journal_lines(dir: &std::path::Path, number: u64) -> usize {
        fs::read_to_string(dir.join(journal_name(number))).map(|t| t.lines().count()).unwrap_or(0)
    }

    fn held(ip: &str) -> HeldEndpoint {
        HeldEndpoint { network: "n".into(), ipv4: ip.parse().ok(), ..Default::default() }
    }

    fn with(entries: &[(&str, &str)]) -> Allocations {
        Allocations { endpoints: entries.iter().map(|(k, ip)| ((*k).into(), held(ip))).collect(), ..Default::default() }
    }

    #[test]
    fn a_small_change_is_a_journal_line_read_back_over_the_file() {
        let d = dir("journal-line");
        let state = StateDir::open(&d).unwrap();
        state.load_allocations();
        let first = with(&[("ns/a", "10.0.0.2"), ("ns/b", "10.0.0.3")]);
        state.store_allocations(&first).unwrap();
        assert!(d.join(FILE).exists() && !d.join(journal_name(1)).exists(), "the first write makes the file");
        let mut second = with(&[("ns/a", "10.0.0.2"), ("ns/c", "10.0.0.4")]);
        second.ports.insert("ns/p|tcp|80|0.0.0.0".parse().unwrap(), 32768);
        state.store_allocations(&second).unwrap();
        assert_eq!(journal_lines(&d, 1), 1, "then a line in the journal the file names");
        let line = fs::read_to_string(d.join(journal_name(1))).unwrap();
        assert!(line.contains("\"ns/b\":null") && line.contains("\"ns/c\"") && !line.contains("ns/a"), "only what changed: {line}");
        state.store_allocations(&second).unwrap();
        assert_eq!(journal_lines(&d, 1), 1, "nothing changed, nothing written");
        // Another process (a restart) reads the same.
        assert_eq!(StateDir::open(&d).unwrap().load_allocations(), second);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_large_change_or_a_long_journal_is_folded_into_the_file() {
        let d = dir("journal-fold");
        let state = StateDir::open(&d).unwrap();
        state.load_allocations();
        state.store_allocations(&with(&[("ns/a", "10.0.0.2")])).unwrap();
        let many: Vec<(String, String)> = (0..=MAX_CHANGES).map(|i| (format!("ns/m{i}"), format!("10.0.1.{i}"))).collect();
        let many = Allocations { endpoints: many.iter().map(|(k, ip)| (k.as_str().into(), held(ip))).collect(), ..Default::default() };
        state.store_allocations(&many).unwrap();
        assert!(!d.join(journal_name(1)).exists(), "a large change is a fold");
        let text = fs::read_to_string(d.join(FILE)).unwrap();
        assert!(text.contains("\"journal\": 2"), "the file names the next journal: {text}");
        let mut now = many.clone();
        for i in 0..MAX_LINES {
            now.endpoints.insert(format!("ns/b{i}").as_str().into(), held("10.0.2.1"));
            state.store_allocations(&now).unwrap();
        }
        assert_eq!(journal_lines(&d, 2), MAX_LINES);
        now.endpoints.remove(&crate::objects::ObjectName::from("ns/m0"));
        state.store_allocations(&now).unwrap();
        assert!(!d.join(journal_name(2)).exists(), "the full journal was folded and removed");
        assert_eq!(StateDir::open(&d).unwrap().load_allocations(), now);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_journal_the_file_does_not_name_is_never_replayed() {
        let d = dir("journal-stale");
        let state = StateDir::open(&d).unwrap();
        state.load_allocations();
        state.store_allocations(&with(&[("ns/a", "10.0.0.2")])).unwrap();
        state.store_allocations(&with(&[("ns/a", "10.0.0.2"), ("ns/b", "10.0.0.3")])).unwrap();
        assert_eq!(journal_lines(&d, 1), 1);
        // A crash after a fold to journal 2, before journal 1 was removed:
        // journal 1 says ns/b holds .3, the file (newer) that it is gone.
        let folded = AllocationsFile { allocations: with(&[("ns/c", "10.0.0.4")]), journal: 2 };
        state.store(FILE, &folded, true).unwrap();
        let state = StateDir::open(&d).unwrap();
        assert_eq!(state.load_allocations(), with(&[("ns/c", "10.0.0.4")]));
        assert!(!d.join(journal_name(1)).exists(), "the stale journal is removed");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_cut_or_corrupt_line_ends_the_replay_and_the_next_write_folds() {
        let d = dir("journal-cut");
        let state = StateDir::open(&d).unwrap();
        state.load_allocations();
        let a = with(&[("ns/a", "10.0.0.2")]);
        state.store_allocations(&a).unwrap();
        let append = |number: u64, bytes: &[u8]| {
            let path = d.join(journal_name(number));
            fs::OpenOptions::new().append(true).create(true).open(path).unwrap().write_all(bytes).unwrap();
        };
        // A crash in the middle of the first line of journal 1.
        append(1, b"{\"endpoints\":{\"ns/b");
        let state = StateDir::open(&d).unwrap();
        assert_eq!(state.load_allocations(), a, "the cut line is not read");
        let b = with(&[("ns/a", "10.0.0.2"), ("ns/b", "10.0.0.3")]);
        state.store_allocations(&b).unwrap();
        assert!(!d.join(journal_name(1)).exists(), "nothing is appended after a cut line: the write folded");
        assert_eq!(StateDir::open(&d).unwrap().load_allocations(), b);
        // A whole line that is not JSON: set aside, what came before it kept.
        let c = with(&[("ns/c", "10.0.0.4")]);
        state.store_allocations(&c).unwrap();
        assert_eq!(journal_lines(&d, 2), 1);
        append(2, b"not json\n");
        assert_eq!(StateDir::open(&d).unwrap().load_allocations(), c);
        assert!(d.join("allocations.2.log.corrupt").exists());
        fs::remove_dir_all(d).unwrap();
    }
}
