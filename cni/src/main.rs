//! `netlet-cni`: run by the container runtime with the CNI environment and
//! the network configuration on stdin (see the library's docs).

use std::io::Write;
use std::process::ExitCode;

use netlet_cni::client::SocketAgent;
use netlet_cni::skel;

fn main() -> ExitCode {
    let outcome = skel::run(&|name| std::env::var(name).ok(), &mut std::io::stdin().lock(), &SocketAgent);
    // Nothing more can be reported if stdout or stderr is gone.
    let _ = std::io::stdout().lock().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().lock().write_all(outcome.stderr.as_bytes());
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
