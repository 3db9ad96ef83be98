//! netlet's nftables ruleset: rendered from a [`FirewallPlan`], applied as
//! ONE atomic `nft -f -` transaction, and checked for drift without any
//! mutation.
//!
//! Everything lives in `table inet netlet`, plus `table bridge netlet` while
//! some network has `icc: false` and br_netfilter does not already hand
//! bridged traffic to the inet hooks; nothing outside them is touched.
//! The rules are fixed text: what varies with the plan is only set and map
//! elements, so the per-packet cost does not grow with the number of
//! networks or port mappings.
//!
//! An empty plan (no networks, no ports) means no tables at all: [`render`]
//! yields nothing and [`NftFirewall::sync`] deletes them.
//!
//! Replacement is `add table` + `delete table` + the full table in one
//! transaction, so the table is never momentarily absent or half-built.
//! A change of elements only (a port published, a container joining an
//! `icc: false` bridge) is one small transaction of element deletions and
//! additions instead, sent over netlink by [`super::set_elements`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::set_elements::{ElementSocket, SetChange};
use crate::plan::desired::FirewallPlan;

mod render;
use render::SetContent;
pub use render::{render, BrNetfilter};

/// Name of netlet's tables (`inet`, and `bridge` for icc: false).
pub const TABLE: &str = "netlet";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall plan: {0}")]
    Invalid(String),
    #[error("cannot run {program}: {source}{}", install_hint(program, source))]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Another firewall's tool (iptables, firewall-cmd) refused netlet's rules.
    #[error("{program} failed: {stderr}")]
    Foreign { program: String, stderr: String },
    #[error("nft {action} failed: {}{}", first_error(.stderr), at_line(*.line_number, .line.as_deref()))]
    Nft {
        action: &'static str,
        /// nft's complete stderr.
        stderr: String,
        /// 1-based line of our script nft complained about, and its text.
        line_number: Option<usize>,
        line: Option<String>,
    },
}

/// ` (install the nftables package)` when the program is missing.
fn install_hint(program: &str, error: &io::Error) -> String {
    match crate::host_tools::package_of(program) {
        Some(package) if error.kind() == io::ErrorKind::NotFound => format!(" (install the {package} package)"),
        _ => String::new(),
    }
}

fn first_error(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.find("Error:").map(|i| l[i..].trim()))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no message)")
}

fn at_line(n: Option<usize>, line: Option<&str>) -> String {
    match (n, line) {
        (Some(n), Some(l)) => format!(" (script line {n}: `{}`)", l.trim()),
        (Some(n), None) => format!(" (script line {n})"),
        _ => String::new(),
    }
}

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The kernel already matched: nothing was written.
    InSync,
    /// One nft transaction was applied.
    Applied,
}

impl SyncOutcome {
    pub fn mutated(self) -> bool {
        self == SyncOutcome::Applied
    }
}

/// The rendered tables; `None` means the table must not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub inet: Option<String>,
    pub bridge: Option<String>,
    /// The tables with every set and map left empty: two rulesets with the
    /// same skeleton differ only in elements.
    skeleton: String,
    /// Every set and map by (family, name).
    sets: BTreeMap<(&'static str, &'static str), SetContent>,
}

/// What turns `from`'s elements into `to`'s (same skeleton), set by set.
fn element_changes<'a>(from: &'a Ruleset, to: &'a Ruleset) -> Vec<SetChange<'a>> {
    static NONE: BTreeSet<String> = BTreeSet::new();
    let mut changes = Vec::new();
    for (&(family, set), want) in &to.sets {
        let have = from.sets.get(&(family, set)).map_or(&NONE, |s| &s.elements);
        // A map element is deleted by its key alone ("k : v" -> "k").
        let gone: Vec<&str> = have.difference(&want.elements).map(|e| e.split(" : ").next().unwrap_or(e)).collect();
        let new: Vec<&str> = want.elements.difference(have).map(String::as_str).collect();
        if !gone.is_empty() || !new.is_empty() {
            changes.push(SetChange { family, set, ty: &want.ty, interval: want.interval, gone, new });
        }
    }
    changes
}

/// The same changes as an nft script, deletions first so a map key whose
/// value changed is replaced.
fn element_script(changes: &[SetChange<'_>]) -> String {
    let mut deletes = String::new();
    let mut adds = String::new();
    for SetChange { family, set, gone, new, .. } in changes {
        if !gone.is_empty() {
            let _ = writeln!(deletes, "delete element {family} {TABLE} {set} {{ {} }}", gone.join(", "));
        }
        if !new.is_empty() {
            let _ = writeln!(adds, "add element {family} {TABLE} {set} {{ {} }}", new.join(", "));
        }
    }
    deletes + &adds
}

impl Ruleset {
    /// The tables as `nft list` would show them (before normalization).
    pub fn tables(&self) -> String {
        [&self.inet, &self.bridge].into_iter().flatten().map(String::as_str).collect()
    }

    /// The atomic apply script: each table is ensured, deleted and rebuilt
    /// (or just deleted) in one transaction.
    pub fn script(&self) -> String {
        let mut s = String::new();
        for (family, body) in [("inet", &self.inet), ("bridge", &self.bridge)] {
            let _ = writeln!(s, "add table {family} {TABLE}");
            let _ = writeln!(s, "delete table {family} {TABLE}");
            if let Some(body) = body {
                s.push_str(body);
            }
        }
        s
    }
}

/// A listing reduced to compare equal however nft wraps lines, spaces
/// tokens or orders set elements.
pub fn normalize(text: &str) -> String {
    const OPEN: &str = "elements = {";
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    while let Some(i) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(i + OPEN.len());
        out.push_str(head);
        let Some(end) = tail.find('}') else {
            rest = tail;
            break;
        };
        let mut items: Vec<&str> = tail[..end].split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        items.sort_unstable();
        let _ = write!(out, " {} }}", items.join(", "));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses `/dev/stdin:LINE:COL...: Error: ...` into the script line.
fn error_line(stderr: &str, script: &str) -> (Option<usize>, Option<String>) {
    let n = stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("/dev/stdin:")?;
        rest.split(':').next()?.parse::<usize>().ok()
    });
    let line = n.and_then(|n| script.lines().nth(n.checked_sub(1)?).map(str::to_string));
    (n, line)
}

struct Applied {
    rendered: Ruleset,
    /// Normalized listing captured right after our last full apply (none
    /// after an element update, which is not listed back: the next check
    /// compares the live listing with the rendering itself).
    listing: Option<String>,
}

/// netlet's firewall in the current network namespace.
pub struct NftFirewall {
    /// netlet's rules in the other firewalls there (see `coexist`), and
    /// the bridges they were last made for.
    foreign: super::coexist::ForeignFirewalls,
    foreign_bridges: Option<Vec<String>>,
    nft: PathBuf,
    last: Option<Applied>,
    /// Opened on the first element update, in the calling thread's namespace.
    elements: Option<ElementSocket>,
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl NftFirewall {
    /// Uses `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_binary("nft")
    }

    pub fn with_binary(nft: impl Into<PathBuf>) -> Self {
        NftFirewall { foreign: Default::default(), foreign_bridges: None, nft: nft.into(), last: None, elements: None }
    }

    /// Converges our tables to `plan`. In sync (zero writes) when the live
    /// tables list the same as the rendering, or as they did right after our
    /// last apply of this same rendering; otherwise replaces them in one
    /// transaction. A table deleted or flushed behind our back is rebuilt.
    pub fn sync(&mut self, plan: &FirewallPlan) -> Result<SyncOutcome, FirewallError> {
        let own = self.sync_own(plan)?;
        // Then what other firewalls need from netlet to let its traffic by:
        // checked when the bridges change and on the passes that found our
        // own table in sync (drift checks), not on every published port.
        let bridges: Vec<String> =
            plan.networks.iter().flat_map(|n| std::iter::once(n.bridge.clone()).chain(n.overlay_device.clone())).collect();
        if own.mutated() && self.foreign_bridges.as_ref() == Some(&bridges) {
            return Ok(own);
        }
        self.foreign_bridges = None;
        let foreign = self.foreign.sync(&bridges)?;
        self.foreign_bridges = Some(bridges);
        Ok(if foreign.mutated() { foreign } else { own })
    }

    fn sync_own(&mut self, plan: &FirewallPlan) -> Result<SyncOutcome, FirewallError> {
        let rendered = render(plan, BrNetfilter::detect())?;
        // What we want changed since our last apply: the kernel cannot hold
        // it yet, so skip the listing and apply straight away.
        let changed = self.last.as_ref().is_some_and(|l| l.rendered != rendered);
        if !changed {
            let current = normalize(&self.list()?);
            if current == normalize(&rendered.tables()) {
                self.last = Some(Applied { rendered, listing: Some(current) });
                return Ok(SyncOutcome::InSync);
            }
            if self.last.as_ref().is_some_and(|l| l.rendered == rendered && l.listing.as_ref() == Some(&current)) {
                return Ok(SyncOutcome::InSync);
            }
        }
        // Only elements changed (a mapping, a network's subnet): update
        // them in place, one small transaction, instead of a rewrite. A
        // table changed behind our back is caught by the next full check,
        // which every nft event triggers.
        if let Some(last) = self.last.take().filter(|l| changed && l.rendered.skeleton == rendered.skeleton) {
            match self.update_elements(&element_changes(&last.rendered, &rendered)) {
                Ok(()) => {
                    self.last = Some(Applied { rendered, listing: None });
                    return Ok(SyncOutcome::Applied);
                }
                Err(e) => tracing::warn!(error = %e, "element update failed; replacing the tables"),
            }
        }
        self.last = None;
        self.run(&rendered.script(), "apply")?;
        let listing = normalize(&self.list()?);
        self.last = Some(Applied { rendered, listing: Some(listing) });
        Ok(SyncOutcome::Applied)
    }

    /// One transaction of element changes: over our netlink socket, or
    /// through nft for what the socket does not encode (interval sets,
    /// whose subnets nft splits into ranges) or if it fails. A socket that
    /// failed is reopened next time.
    fn update_elements(&mut self, changes: &[SetChange<'_>]) -> Result<(), FirewallError> {
        let socket = match self.elements.take() {
            Some(s) => Ok(s),
            None => ElementSocket::open(),
        };
        match socket.and_then(|mut s| s.apply(changes).map(|()| s)) {
            Ok(s) => {
                self.elements = Some(s);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "element update over netlink failed; trying nft");
                self.run(&element_script(changes), "update")
            }
        }
    }

    /// Deletes our tables; in sync (nothing done) if they are absent.
    pub fn remove(&mut self) -> Result<SyncOutcome, FirewallError> {
        self.last = None;
        self.foreign_bridges = None;
        let foreign = self.foreign.sync(&[])?;
        if self.list()?.is_empty() {
            return Ok(foreign);
        }
        self.run(&Ruleset::default().script(), "remove")?;
        Ok(SyncOutcome::Applied)
    }

    /// The live listing of our tables (inet, then bridge); empty if absent.
    pub fn list(&self) -> Result<String, FirewallError> {
        let mut out = String::new();
        for family in ["inet", "bridge"] {
            let o = Command::new(&self.nft)
                .args(["list", "table", family, TABLE])
                .stdin(Stdio::null())
                .output()
                .map_err(|source| self.spawn_error(source))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            if o.status.success() {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            } else if !stderr.contains("No such file or directory") {
                return Err(FirewallError::Nft { action: "list", stderr: stderr.into_owned(), line_number: None, line: None });
            }
        }
        Ok(out)
    }

    fn spawn_error(&self, source: io::Error) -> FirewallError {
        FirewallError::Spawn { program: self.nft.display().to_string(), source }
    }

    /// `nft -f -` with `script` on stdin: one atomic transaction.
    fn run(&self, script: &str, action: &'static str) -> Result<(), FirewallError> {
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let stdin = child.stdin.take();
        // Feed stdin from a thread so a chatty nft cannot deadlock us.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(script.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let (line_number, line) = error_line(&stderr, script);
        Err(FirewallError::Nft { action, stderr, line_number, line })
    }
}

#[cfg(test)]
mod tests;
