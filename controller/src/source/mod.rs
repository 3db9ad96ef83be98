//! Where desired objects come from and status goes to: manifest files and
//! the state dir (standalone mode), or the Kubernetes API. Both are a
//! [`Source`](crate::runner::Source) the one runner drives.

pub mod file_watch;
pub mod kube;
pub mod kube_list;
pub mod manifests;
pub mod standalone;
