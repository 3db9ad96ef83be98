//! Living beside other firewalls: Docker, kube-proxy, firewalld.
//!
//! A packet is accepted only if every base chain of its hook accepts it, so
//! netlet's own table cannot overrule another table's drop. Docker sets the
//! iptables filter FORWARD policy to DROP (and loads br_netfilter, so even
//! bridged traffic meets it); firewalld rejects forwarding between zones.
//! Like flannel's forward rules and Docker's DOCKER-USER convention, netlet
//! then adds the minimum it needs, in places it owns:
//!
//! - iptables (nft and legacy backends, IPv4 and IPv6), wherever a filter
//!   table already exists: a chain `NETLET-FORWARD`, jumped to last from
//!   FORWARD, accepting what leaves a netlet bridge and what enters one
//!   as a reply or a published port (DNAT). Last, so that the rules before
//!   it keep their say: DOCKER-USER (the admin's), and Docker's own, which
//!   still keep other hosts' traffic, ours included, off its containers.
//!   Isolation, `internal` and `icc: false` stay enforced by netlet's own
//!   table, which still drops.
//! - firewalld, when it runs: each netlet bridge in its `trusted` zone
//!   (runtime only: its permanent configuration is the admin's). What is
//!   bound is read from firewalld's nftables table; `firewall-cmd` (D-Bus)
//!   is called only to change it.
//!
//! Each sync compares what is there with what should be and writes only
//! a difference (one `*-restore --noflush` per table, atomic); everything
//! goes with the last network. Nothing else in those firewalls is touched.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use super::firewall::{FirewallError, SyncOutcome};

/// netlet's chain in the iptables filter tables.
pub const CHAIN: &str = "NETLET-FORWARD";
/// The firewalld zone netlet's bridges join.
const FIREWALLD_ZONE: &str = "trusted";

/// One iptables backend and family.
#[derive(Clone, Copy, Debug)]
struct Iptables {
    save: &'static str,
    restore: &'static str,
    /// How `nft list tables` shows its filter table (nft backend), or the
    /// /proc file listing the legacy tables of this namespace.
    present_as: Presence,
}

#[derive(Clone, Copy, Debug)]
enum Presence {
    NftTable(&'static str),
    LegacyNames(&'static str),
}

const IPTABLES: [Iptables; 4] = [
    Iptables { save: "iptables-nft-save", restore: "iptables-nft-restore", present_as: Presence::NftTable("table ip filter") },
    Iptables { save: "ip6tables-nft-save", restore: "ip6tables-nft-restore", present_as: Presence::NftTable("table ip6 filter") },
    Iptables {
        save: "iptables-legacy-save",
        restore: "iptables-legacy-restore",
        present_as: Presence::LegacyNames("/proc/net/ip_tables_names"),
    },
    Iptables {
        save: "ip6tables-legacy-save",
        restore: "ip6tables-legacy-restore",
        present_as: Presence::LegacyNames("/proc/net/ip6_tables_names"),
    },
];

/// The rules of `NETLET-FORWARD` for these bridges, as `iptables-save`
/// prints them (so what is there compares as text).
pub fn chain_rules(bridges: &[String]) -> Vec<String> {
    let mut rules = Vec::with_capacity(bridges.len() * 3);
    for br in bridges {
        // Leaving the bridge (egress, intra-network with br_netfilter,
        // hairpin); netlet's own table drops what isolation forbids.
        rules.push(format!("-A {CHAIN} -i {br} -j ACCEPT"));
        // Entering it: replies, and published ports.
        rules.push(format!("-A {CHAIN} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
        rules.push(format!("-A {CHAIN} -o {br} -m conntrack --ctstate DNAT -j ACCEPT"));
    }
    rules
}

const JUMP: &str = "-A FORWARD -j NETLET-FORWARD";

/// What an `iptables-save -t filter` listing holds of ours.
#[derive(Debug, Default, PartialEq)]
struct Ours {
    chain: bool,
    jump: bool,
    rules: Vec<String>,
}

fn ours_in(listing: &str) -> Ours {
    let mut ours = Ours::default();
    for line in listing.lines() {
        if line.starts_with(&format!(":{CHAIN} ")) {
            ours.chain = true;
        } else if line == JUMP {
            ours.jump = true;
        } else if line.starts_with(&format!("-A {CHAIN} ")) {
            ours.rules.push(line.to_string());
        }
    }
    ours
}

/// The `*-restore --noflush` script taking `have` to `want` (None: ours
/// removed); None when nothing is to change. Declaring the chain flushes it.
fn restore_script(have: &Ours, want: Option<&[String]>) -> Option<String> {
    let mut script = String::from("*filter\n");
    match want {
        Some(rules) => {
            if have.chain && have.jump && have.rules == rules {
                return None;
            }
            script.push_str(&format!(":{CHAIN} - [0:0]\n"));
            rules.iter().for_each(|r| script.push_str(&format!("{r}\n")));
            if !have.jump {
                script.push_str(&format!("{JUMP}\n"));
            }
        }
        None => {
            if !have.chain && !have.jump {
                return None;
            }
            if have.jump {
                script.push_str(&format!("-D FORWARD -j {CHAIN}\n"));
            }
            if have.chain {
                script.push_str(&format!(":{CHAIN} - [0:0]\n-X {CHAIN}\n"));
            }
        }
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// netlet's rules in the other firewalls of the current namespace.
#[derive(Debug, Default)]
pub struct ForeignFirewalls {
    /// Bridges this agent put in firewalld's zone.
    firewalld_added: BTreeSet<String>,
}

impl ForeignFirewalls {
    /// Converges netlet's rules in every other firewall present to
    /// `bridges` (empty: none of ours left).
    pub fn sync(&mut self, bridges: &[String]) -> Result<SyncOutcome, FirewallError> {
        let tables = run("nft", &["list", "tables"], None)?;
        let mut outcome = SyncOutcome::InSync;
        let want = chain_rules(bridges);
        for ipt in IPTABLES {
            let present = match ipt.present_as {
                Presence::NftTable(line) => tables.lines().any(|l| l.trim() == line),
                Presence::LegacyNames(file) => std::fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l == "filter")),
            };
            if !present {
                continue;
            }
            let have = ours_in(&run(ipt.save, &["-t", "filter"], None)?);
            if let Some(script) = restore_script(&have, (!bridges.is_empty()).then_some(want.as_slice())) {
                run(ipt.restore, &["-w", "--noflush"], Some(&script))?;
                tracing::info!(tool = ipt.restore, bridges = bridges.len(), "netlet's forward rules updated beside another firewall");
                outcome = SyncOutcome::Applied;
            }
        }
        if tables.lines().any(|l| l.trim() == "table inet firewalld") && firewalld_sync(bridges, &mut self.firewalld_added)? {
            outcome = SyncOutcome::Applied;
        }
        Ok(outcome)
    }
}

/// The interfaces firewalld dispatches to the trusted zone, read from its
/// own nftables table: one quick listing instead of a `firewall-cmd`
/// (a second of Python each) on every check.
fn trusted_interfaces() -> Result<Vec<String>, FirewallError> {
    Ok(trusted_in(&run("nft", &["list", "chain", "inet", "firewalld", "filter_FORWARD_ZONES"], None)?))
}

/// `iifname "docker1" goto filter_FWD_trusted` -> docker1.
fn trusted_in(chain: &str) -> Vec<String> {
    let target = format!("goto filter_FWD_{FIREWALLD_ZONE}");
    chain
        .lines()
        .filter(|l| l.trim().ends_with(&target))
        .filter_map(|l| l.trim().strip_prefix("iifname \"")?.split('"').next().map(String::from))
        .collect()
}

/// Each bridge in the trusted zone, and the bridges netlet put there and
/// no longer has taken out again. firewalld does not record who added an
/// interface, so only those this agent added are ever removed (a binding
/// left by an agent that stopped names a bridge that is gone: harmless).
fn firewalld_sync(bridges: &[String], added: &mut BTreeSet<String>) -> Result<bool, FirewallError> {
    let listed = trusted_interfaces()?;
    let have: Vec<&str> = listed.iter().map(String::as_str).collect();
    let mut changed = false;
    for br in bridges.iter().filter(|b| !have.contains(&b.as_str())) {
        run("firewall-cmd", &["--zone", FIREWALLD_ZONE, "--add-interface", br], None)?;
        changed = true;
    }
    added.extend(bridges.iter().cloned());
    let gone: Vec<String> = added.iter().filter(|a| !bridges.contains(a)).cloned().collect();
    for br in gone {
        if have.contains(&br.as_str()) {
            run("firewall-cmd", &["--zone", FIREWALLD_ZONE, "--remove-interface", &br], None)?;
            changed = true;
        }
        added.remove(&br);
    }
    Ok(changed)
}

/// How long `firewall-cmd` may take: firewalld answers nothing while it
/// reloads (20 s and more here), and the pass must not wait on it; the
/// next pass tries again.
const FIREWALL_CMD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a tool (with `stdin` fed), returning its stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { program: program.to_string(), source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|source| FirewallError::Spawn { program: program.to_string(), source })?;
    }
    if program == "firewall-cmd" {
        let started = std::time::Instant::now();
        while child.try_wait().map_err(|source| FirewallError::Spawn { program: program.to_string(), source })?.is_none() {
            if started.elapsed() > FIREWALL_CMD_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FirewallError::Foreign {
                    program: program.into(),
                    stderr: format!("no answer in {FIREWALL_CMD_TIMEOUT:?} (firewalld busy?)"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { program: program.to_string(), source })?;
    if !out.status.success() {
        return Err(FirewallError::Foreign {
            program: program.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_28: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
COMMIT
";

    #[test]
    fn trusted_bindings_are_read_from_firewallds_zone_dispatch() {
        let chain = "table inet firewalld {\n\tchain filter_FORWARD_ZONES {\n\t\tiifname \"docker1\" goto filter_FWD_trusted\n\t\t\
                     iifname \"eth0\" goto filter_FWD_public\n\t\tgoto filter_FWD_public\n\t}\n}\n";
        assert_eq!(trusted_in(chain), ["docker1"]);
    }

    #[test]
    fn rules_accept_what_leaves_a_bridge_and_replies_or_published_traffic_entering_it() {
        assert_eq!(
            chain_rules(&["nl0".into()]),
            [
                "-A NETLET-FORWARD -i nl0 -j ACCEPT",
                "-A NETLET-FORWARD -o nl0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A NETLET-FORWARD -o nl0 -m conntrack --ctstate DNAT -j ACCEPT",
            ]
        );
    }

    #[test]
    fn only_a_difference_is_written_and_nothing_but_ours() {
        let want = chain_rules(&["nl0".into()]);
        // Beside Docker's ruleset: our chain, filled, and the jump after Docker's.
        let script = restore_script(&ours_in(DOCKER_28), Some(&want)).unwrap();
        assert_eq!(script, format!("*filter\n:NETLET-FORWARD - [0:0]\n{}\n-A FORWARD -j NETLET-FORWARD\nCOMMIT\n", want.join("\n")));
        assert!(!script.contains("DOCKER"), "Docker's chains are not named, so not touched");
        // In place: nothing to do.
        let synced = format!("{DOCKER_28}:NETLET-FORWARD - [0:0]\n{JUMP}\n{}\n", want.join("\n"));
        assert_eq!(restore_script(&ours_in(&synced), Some(&want)), None);
        // A rule deleted behind our back: the chain is rewritten, the jump kept.
        let drifted = synced.replace(&format!("{}\n", want[2]), "");
        let script = restore_script(&ours_in(&drifted), Some(&want)).unwrap();
        assert!(script.contains(&want[2]) && !script.contains("FORWARD -j"));
        // The last network gone: jump and chain removed.
        assert_eq!(
            restore_script(&ours_in(&synced), None).unwrap(),
            "*filter\n-D FORWARD -j NETLET-FORWARD\n:NETLET-FORWARD - [0:0]\n-X NETLET-FORWARD\nCOMMIT\n"
        );
        assert_eq!(restore_script(&ours_in(DOCKER_28), None), None);
    }
}
