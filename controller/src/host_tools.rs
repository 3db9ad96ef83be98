//! The programs the agent runs on the host, and the packages that bring
//! them: a missing one is named with its package when the agent starts,
//! not found out as `No such file or directory` at the first port.

use std::path::Path;

pub struct Tool {
    pub program: &'static str,
    /// Debian/Ubuntu and Fedora package names (the same for these).
    pub package: &'static str,
    pub needed_for: &'static str,
    /// The agent cannot work without it (else only beside that firewall).
    pub required: bool,
}

pub const TOOLS: &[Tool] = &[
    Tool { program: "nft", package: "nftables", needed_for: "published ports, masquerade and isolation", required: true },
    Tool { program: "iptables-nft-restore", package: "iptables", needed_for: "living beside Docker or kube-proxy rules", required: false },
    Tool { program: "iptables-legacy-restore", package: "iptables", needed_for: "living beside legacy iptables rules", required: false },
    Tool { program: "firewall-cmd", package: "firewalld", needed_for: "living beside firewalld", required: false },
];

/// The package of `program`, for an error message.
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    let base = name.replace("ip6tables", "iptables").replace("-save", "-restore");
    TOOLS.iter().find(|t| t.program == base).map(|t| t.package)
}

fn in_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| dir.join(program).metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The required tools that are not in PATH, each as a sentence.
pub fn missing_required() -> Vec<String> {
    TOOLS
        .iter()
        .filter(|t| t.required && !in_path(t.program))
        .map(|t| {
            format!(
                "`{}` is not in PATH: install the {} package (apt-get install {} / dnf install {}); netlet needs it for {}",
                t.program, t.package, t.package, t.package, t.needed_for
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_the_agent_runs_names_its_package() {
        assert_eq!(package_of("nft"), Some("nftables"));
        assert_eq!(package_of("/usr/sbin/nft"), Some("nftables"));
        assert_eq!(package_of("ip6tables-legacy-save"), Some("iptables"));
        assert_eq!(package_of("iptables-nft-save"), Some("iptables"));
        assert_eq!(package_of("firewall-cmd"), Some("firewalld"));
        assert_eq!(package_of("frobnicate"), None);
    }
}
