//! The embedded DNS server: what Docker's 127.0.0.11 and Podman's
//! aardvark-dns do. It listens on each user-defined network's gateway in
//! the node namespace, answers A/AAAA/PTR for the names of the networks the
//! *asking container* is attached to (found by its source address), and
//! forwards everything else to that container's `dns.nameservers`, else the
//! node's resolvers, with a bounded timeout (SERVFAIL, never a hang).
//!
//! `answer` is pure (table + packet -> reply), so the wire handling is
//! unit-tested and fuzzed without sockets; `DnsServer` only moves bytes.

mod answer;
mod server;

pub use answer::{answer, Reply};
pub use server::{DnsServer, DnsStats};
