//! The `netlet` binary: agent (standalone or Kubernetes), `get`, `crds`,
//! and the Docker user's commands (`import`, `inspect`, `network`, `port`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use netlet::api::Kind;
use netlet::docker::commands::{self, ImportArgs, InspectArgs, NetworkArgs, PortCommand};
use netlet::get::{self, OutputFormat, Query};
use netlet::runner;
use netlet::source::kube::{KubeOptions, KubeSource};
use netlet::source::standalone::ManifestSource;
use netlet::state::{StateDir, DEFAULT_STATE_DIR};

/// Every pass builds and drops its plan and status as many small maps and
/// strings; glibc's allocator spent ~40% of a churn pass's CPU on them
/// (consolidating and unlinking free chunks), mimalloc a fraction of that.
/// Built without transparent huge pages, which made a 1,000-attachment
/// agent's resident memory 2 MiB pages of mostly nothing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` (the header's option number; the crate keeps
/// it unnamed). Memory a pass frees is returned to the OS only after this
/// delay (1 s by default), so passes in quick succession (cold start, a
/// burst of changes) kept each other's garbage resident: a 1,000-attachment
/// agent peaked at 54 MiB with the default, 42 MiB with no delay.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn tune_allocator() {
    // mimalloc's own variable, when set, is the operator's choice and wins
    // (a delay trades resident memory for ~0.5 ms per pass at 1,000).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: called first thing in main, before any other thread exists
    // (the setter is not thread-safe); the option takes a plain integer.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[derive(Parser)]
#[command(name = "netlet", version, about = "Docker-style container networking as a declarative, self-healing node agent")]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: standalone with --manifests, else Kubernetes mode.
    Run(RunArgs),
    /// Show standalone status, kubectl-style.
    Get(GetArgs),
    /// Print the CustomResourceDefinitions.
    Crds,
    /// Turn another tool's description into netlet YAML (stdout).
    Import(ImportArgs),
    /// Show networks or attachments the way `docker network inspect` does.
    Inspect(InspectArgs),
    /// Docker's network verbs over the manifest directory.
    Network(NetworkArgs),
    /// List (or with -p publish) an attachment's ports, like `docker port`.
    Port(PortCommand),
    /// Put netlet-cni on this node: into the CNI bin dir, chained into the
    /// primary conflist (the chart's init container runs this).
    CniInstall(CniInstallArgs),
}

#[derive(clap::Args)]
struct CniInstallArgs {
    /// The netlet-cni binary to copy.
    #[arg(long, default_value = "/usr/local/bin/netlet-cni")]
    binary: PathBuf,
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The agent's CNI socket (netlet run --cni-socket), for the plugin's entry.
    #[arg(long, default_value = netlet::cni::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Take netlet-cni off the node instead.
    #[arg(long)]
    remove: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// File or directory of Network/Attachment/PortMapping YAML (standalone mode).
    #[arg(long)]
    manifests: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Default: $NODE_NAME, else the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Reconcile once; exit 0 only if every object is Ready.
    #[arg(long)]
    once: bool,
    /// Full reconcile at least this often, repairing drift (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resync_period: Duration,
    /// Address for /metrics, /healthz, /readyz (default 127.0.0.1:9464
    /// standalone, 0.0.0.0:9464 in Kubernetes mode; "off" disables).
    #[arg(long)]
    metrics_addr: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve netlet-cni (the CNI plugin) on this unix socket.
    #[arg(long)]
    cni_socket: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GetArgs {
    /// networks, attachments (att), portmappings (pm), ...
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'o', long, value_enum)]
    output: Option<OutputFormat>,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {text:?} (use ms, s, m or h)")),
    };
    if secs <= 0.0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: logs piped to files or journald stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn node_name(given: Option<String>) -> String {
    given
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into()))
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", netlet::api::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Import(args) => ExitCode::from(commands::import(&args)),
        Command::Inspect(args) => ExitCode::from(commands::inspect_command(&args)),
        Command::Network(args) => ExitCode::from(commands::network(&args)),
        Command::Port(args) => ExitCode::from(commands::port_command(&args)),
        Command::CniInstall(args) => {
            let place = netlet::cni::install::Placement {
                binary: args.binary,
                bin_dir: args.bin_dir,
                conf_dir: args.conf_dir,
                socket: args.socket,
            };
            let (verb, done) = if args.remove {
                ("remove", netlet::cni::install::remove(&place))
            } else {
                ("install", netlet::cni::install::install(&place))
            };
            match done {
                Ok(changes) => {
                    println!("netlet-cni {verb}: {changes}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: netlet-cni {verb}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Get(args) => {
            let Some(kind) = Kind::parse(&args.kind) else {
                eprintln!(
                    "error: the server doesn't have a resource type \"{}\" (netlet has networks, attachments, portmappings)",
                    args.kind
                );
                return ExitCode::from(1);
            };
            let store = match StateDir::open(&args.state_dir) {
                Ok(state) => state.load_status(),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let namespace =
                if args.all_namespaces { None } else { args.namespace.or_else(|| args.name.as_ref().map(|_| "default".into())) };
            let query = Query { kind, name: args.name, namespace, output: args.output };
            match get::run(&store, &query, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error from server (NotFound): {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => {
            init_logging(cli.verbose);
            let missing = netlet::host_tools::missing_required();
            if !missing.is_empty() {
                missing.iter().for_each(|m| eprintln!("error: {m}"));
                return ExitCode::from(1);
            }
            // The agent's runtime: the runner, sources' watches, the admin and
            // DNS servers. Two workers, so that no one task (a large manifest
            // set parsed, a Kubernetes list) holds up the others; the
            // reconciler has a thread of its own (see reconcile_thread).
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            // Issue 21 hook: the CNI socket, answered by a pass-through
            // consumer until the reconciler takes pod sandboxes.
            if let Some(socket) = &args.cni_socket {
                if let Err(e) = netlet::cni::serve_pass_through(runtime.handle(), socket) {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
            let kubernetes = args.manifests.is_none();
            let default_metrics = if kubernetes { "0.0.0.0:9464" } else { "127.0.0.1:9464" };
            let metrics_addr = match args.metrics_addr.as_deref().unwrap_or(default_metrics) {
                "" | "0" | "off" => None,
                text => match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        eprintln!("error: --metrics-addr {text:?} is not an address:port");
                        return ExitCode::from(2);
                    }
                },
            };
            let node_name = node_name(args.node_name);
            let opts = runner::Options {
                state_dir: args.state_dir,
                node_name: node_name.clone(),
                once: args.once,
                resync_period: args.resync_period,
                metrics_addr,
                metrics: netlet::metrics::Metrics::new(),
            };
            let result = runtime.block_on(async move {
                match args.manifests {
                    None => {
                        let kube = KubeOptions { node_name, kubeconfig: args.kubeconfig };
                        runner::run(KubeSource::connect(&kube, opts.metrics.clone()).await?, opts).await
                    }
                    Some(manifests) => {
                        // For `netlet network ...`: where to write, and that someone reads it.
                        if !opts.once {
                            if let Err(e) = netlet::running::record(&opts.state_dir, &manifests) {
                                tracing::warn!(error = %e, "cannot record the agent in the state dir; `netlet network` will not wait for it");
                            }
                        }
                        runner::run(ManifestSource::new(&manifests, !opts.once), opts).await
                    }
                }
            });
            match result {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is this mimalloc's: it and its neighbours have
    /// their defaults (purge delay 1000 ms, all NUMA nodes, OS tag 100,
    /// 32 errors shown), so a renumbering upstream fails here, not silently.
    #[test]
    fn purge_delay_option_number_matches_the_linked_mimalloc() {
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 1000);
        assert_eq!(get(MI_OPTION_PURGE_DELAY + 1), 0);
        assert_eq!(get(MI_OPTION_PURGE_DELAY + 3), 100);
        assert_eq!(get(MI_OPTION_PURGE_DELAY + 4), 32);
    }
}
