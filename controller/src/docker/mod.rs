//! The Docker user's door: what lets someone who knows `docker network`
//! move to netlet without translating by hand.
//!
//! - [`import`]: `docker network inspect` / `docker inspect` JSON in,
//!   netlet objects out, with every field that cannot be carried listed;
//! - [`inspect`]: netlet objects and their status shown the way
//!   `docker network inspect` shows networks, for scripts and `jq` paths;
//! - [`jsonpath`]: kubectl's `-o jsonpath` templates over that JSON;
//! - [`verbs`]: `netlet network create|connect|...` and `netlet port`,
//!   which only ever write or remove YAML in the manifest directory
//!   ([`store`]) and wait for the agent that reads it.
//!
//! Nothing here touches the kernel: the YAML stays the source of truth.

pub mod commands;
pub mod import;
mod import_containers;
pub mod inspect;
pub mod jsonpath;
pub mod port;
pub mod store;
pub mod verbs;
