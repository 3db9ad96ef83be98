//! The command line of the Docker user's commands: `import`, `inspect`,
//! `network ...`, `port`. Each returns the process exit code; errors are
//! printed the way Docker prints them (`Error response from daemon: ...`
//! where Docker's daemon would have refused).

use std::io::Read;
use std::path::PathBuf;

use super::inspect::{inspect, Objects, Subject};
use super::jsonpath::{Syntax, Template};
use super::port::{port, PortArgs};
use super::verbs::{self, Place, Refused};
use crate::state::{StateDir, DEFAULT_STATE_DIR};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Where the input comes from: `docker` (what `docker network inspect`
    /// and `docker inspect` print).
    #[arg(value_parser = ["docker"])]
    from: String,
    /// A file of their JSON, or - for stdin.
    #[arg(default_value = "-")]
    file: PathBuf,
}

/// `netlet import docker`: YAML on stdout, every dropped field on stderr.
pub fn import(args: &ImportArgs) -> u8 {
    let mut text = String::new();
    let read = if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&args.file).map(|t| text = t)
    };
    if let Err(e) = read {
        eprintln!("error: reading {}: {e}", args.file.display());
        return 1;
    }
    match super::import::import(&text) {
        Ok(imported) => {
            print!("{}", imported.to_yaml());
            if !imported.dropped.is_empty() {
                eprintln!("netlet import: not carried over ({}):", imported.dropped.len());
                for d in &imported.dropped {
                    eprintln!("  {d}");
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// network or attachment.
    #[arg(value_enum)]
    subject: Subject,
    #[arg(required = true)]
    names: Vec<String>,
    /// Attachments: their namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Docker's --format, for the common cases: `{{.Name}}`,
    /// `{{range .Containers}}{{.IPv4Address}} {{end}}`, `{{json .IPAM}}`;
    /// applied to each object, one line each.
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// `json` (default) or kubectl's `jsonpath=TEMPLATE`, applied to the array.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Standalone: the agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Kubernetes mode: read from the API server with this kubeconfig.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode with the usual kubeconfig ($KUBECONFIG,
    /// ~/.kube/config, or the pod's service account).
    #[arg(long)]
    kubernetes: bool,
}

pub fn inspect_command(args: &InspectArgs) -> u8 {
    let template = match (&args.format, args.output.as_deref()) {
        (Some(_), Some(_)) => return usage("--format and -o cannot be used together"),
        (Some(f), None) => Some((Template::parse(f, Syntax::GoTemplate), true)),
        (None, Some("json")) | (None, None) => None,
        (None, Some(o)) => match o.strip_prefix("jsonpath=") {
            Some(t) => Some((Template::parse(t, Syntax::Kubectl), false)),
            None => return usage(&format!("unknown output format {o:?} (json or jsonpath=TEMPLATE)")),
        },
    };
    let template = match template {
        Some((Ok(t), per_item)) => Some((t, per_item)),
        Some((Err(e), _)) => return usage(&e.to_string()),
        None => None,
    };
    let objects = if args.kubernetes || args.kubeconfig.is_some() {
        let namespace = (args.subject == Subject::Attachment).then_some(args.namespace.as_str());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime starts");
        match runtime.block_on(crate::source::kube_list::list_objects(args.kubeconfig.as_ref(), namespace)) {
            Ok(objects) => objects,
            Err(e) => {
                eprintln!("error: reading from the API server: {e:#}");
                return 1;
            }
        }
    } else {
        match StateDir::open(&args.state_dir) {
            Ok(state) => Objects::from_store(&state.load_status()),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    };
    let (found, missing) = inspect(&objects, args.subject, &args.names, &args.namespace);
    match template {
        None => println!("{}", serde_json::to_string_pretty(&found).expect("JSON values serialize")),
        Some((t, true)) => found.iter().for_each(|item| println!("{}", t.render(item))),
        Some((t, false)) => print!("{}", t.render(&serde_json::Value::Array(found))),
    }
    for name in &missing {
        let what = match args.subject {
            Subject::Network => "network",
            Subject::Attachment => "attachment",
        };
        eprintln!("Error: No such {what}: {name}");
    }
    u8::from(!missing.is_empty())
}

fn usage(message: &str) -> u8 {
    eprintln!("error: {message}");
    2
}

#[derive(clap::Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
    #[command(flatten)]
    place: Place,
}

#[derive(clap::Subcommand)]
enum NetworkCommand {
    /// Write a Network (docker network create).
    Create(verbs::CreateArgs),
    /// Write an Attachment of a sandbox to a network (docker network connect).
    Connect(verbs::ConnectArgs),
    /// Remove that Attachment (docker network disconnect).
    Disconnect(verbs::DisconnectArgs),
    /// Remove Networks no Attachment uses (docker network rm).
    #[command(alias = "remove")]
    Rm(verbs::RmArgs),
    /// List the Networks of the manifest directory (docker network ls).
    #[command(alias = "list")]
    Ls(verbs::LsArgs),
}

pub fn network(args: &NetworkArgs) -> u8 {
    let result = match &args.command {
        NetworkCommand::Create(a) => verbs::create(a, &args.place),
        NetworkCommand::Connect(a) => verbs::connect(a, &args.place),
        NetworkCommand::Disconnect(a) => verbs::disconnect(a, &args.place),
        NetworkCommand::Rm(a) => verbs::rm(a, &args.place),
        NetworkCommand::Ls(a) => verbs::ls(a, &args.place),
    };
    refused(result)
}

#[derive(clap::Args)]
pub struct PortCommand {
    #[command(flatten)]
    args: PortArgs,
    #[command(flatten)]
    place: Place,
}

pub fn port_command(cmd: &PortCommand) -> u8 {
    refused(port(&cmd.args, &cmd.place))
}

fn refused(result: Result<(), Refused>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(Refused(message)) => {
            for line in message.lines() {
                match line.strip_prefix("No ") {
                    Some(_) => eprintln!("Error: {line}"),
                    None => eprintln!("Error response from daemon: {line}"),
                }
            }
            1
        }
    }
}
