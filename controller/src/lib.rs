//! netlet: Docker-style container networking as a declarative node agent.
#![forbid(unsafe_code)]

pub mod api;
pub mod naming;
pub mod objects;
pub mod plan;
