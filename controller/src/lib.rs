//! netlet: Docker-style container networking as a declarative node agent.
#![forbid(unsafe_code)]

pub mod api;
pub mod cni;
pub mod dataplane;
pub mod docker;
pub mod get;
pub mod host_tools;
pub mod metrics;
pub mod naming;
pub mod objects;
pub mod plan;
pub mod progress;
pub mod proxy;
pub mod reconcile;
pub mod reconcile_thread;
pub mod runner;
pub mod running;
pub mod source;
pub mod state;
pub mod status;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod reconcile_tests;
pub mod resolver;
