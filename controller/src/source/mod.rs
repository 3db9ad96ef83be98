//! Where desired objects come from: manifest files (standalone mode) or the
//! Kubernetes API. Either way the rest of the agent sees an [`ObjectSet`].
//!
//! [`ObjectSet`]: crate::objects::ObjectSet

pub mod file_watch;
pub mod kube;
pub mod kube_list;
pub mod manifests;
