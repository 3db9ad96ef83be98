//! One-shot reads of every netlet object from the API server, for the
//! commands that show them (`netlet inspect` in Kubernetes mode).

use std::path::PathBuf;

use kube::api::{Api, ListParams};

use crate::api::{Attachment, Network, PortMapping};
use crate::docker::inspect::Objects;

/// Every Network, and the Attachments and PortMappings of `namespace`
/// (all namespaces when None), with their status.
pub async fn list_objects(kubeconfig: Option<&PathBuf>, namespace: Option<&str>) -> anyhow::Result<Objects> {
    let client = super::kube::client(kubeconfig).await?;
    let params = ListParams::default();
    let networks = Api::<Network>::all(client.clone()).list(&params).await?.items;
    let (attachments, port_mappings) = match namespace {
        Some(ns) => (
            Api::<Attachment>::namespaced(client.clone(), ns).list(&params).await?.items,
            Api::<PortMapping>::namespaced(client, ns).list(&params).await?.items,
        ),
        None => {
            (Api::<Attachment>::all(client.clone()).list(&params).await?.items, Api::<PortMapping>::all(client).list(&params).await?.items)
        }
    };
    Ok(Objects { networks, attachments, port_mappings })
}
