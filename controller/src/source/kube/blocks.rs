//! Overlay address blocks (Kubernetes mode): each node hands out dynamic
//! addresses only from blocks it claimed in the Network's status, so agents
//! allocating at the same moment never collide.

use std::collections::BTreeMap;

use ipnet::IpNet;
use kube::api::Api;
use kube::runtime::reflector;
use kube::ResourceExt;

use super::publish::post_params;
use super::{note_api, scheduled_on, Cluster};
use crate::api::{AddressBlock, Driver, Network, NetworkStatus};
use crate::objects::ObjectSet;
use crate::plan::overlay::{self, NodeBlocks};

impl Cluster {
    /// Every node's IPv4 address blocks on every overlay network this node
    /// realizes (other nodes' blocks are routed to them), claiming another
    /// one for this node (the lowest free block, recorded in the
    /// Network's status.addressBlocks) while its own attachments outnumber
    /// them. The claim is a replace with the resourceVersion just read, so
    /// two nodes claiming at once cannot both win the same block: the loser
    /// gets a 409, reads again and takes the next one.
    pub(super) async fn overlay_blocks(&self, objects: &ObjectSet) -> BTreeMap<String, NodeBlocks> {
        let mut out = BTreeMap::new();
        for net in objects.networks.iter().filter(|n| n.spec.driver == Driver::Overlay) {
            let name = net.name_any();
            let Ok(resolved) = crate::plan::network::resolve(net) else { continue };
            let Some(subnet) = resolved.subnet_v4().cloned() else { continue };
            let prefix = overlay::block_prefix(subnet.net, net.spec.overlay.as_ref().and_then(|o| o.block_prefix_length));
            // A dynamic IPv6 address needs a block too (its mirror).
            let dynamic =
                |a: &crate::api::Attachment| a.spec.ipv4_address.is_none() || (resolved.enable_ipv6 && a.spec.ipv6_address.is_none());
            let need =
                objects.attachments.iter().filter(|a| a.spec.network == name && scheduled_on(a, &self.node) && dynamic(a)).count() as u64;
            let by_node = |status: &Option<NetworkStatus>| -> NodeBlocks {
                let mut out = NodeBlocks::new();
                let Some(status) = status else { return out };
                for b in &status.address_blocks {
                    if let Ok(cidr) = b.cidr.parse::<IpNet>() {
                        out.entry(b.node.clone()).or_default().blocks.push(cidr);
                    }
                }
                for n in &status.nodes {
                    let outside = n.addresses_outside_blocks.iter().filter_map(|ip| ip.parse::<std::net::IpAddr>().ok());
                    out.entry(n.node.clone()).or_default().outside.extend(outside);
                }
                out
            };
            let mine = |all: &NodeBlocks| all.get(&self.node).map(|r| r.blocks.clone()).unwrap_or_default();
            let capacity = |blocks: &[IpNet]| blocks.iter().map(|b| overlay::block_capacity(&subnet, *b)).sum::<u64>();
            // The cached copy usually shows enough: no API call.
            let mut all = self.networks.get(&reflector::ObjectRef::new(&name)).map(|n| by_node(&n.status)).unwrap_or_default();
            if capacity(&mine(&all)) >= need {
                out.insert(name, all);
                continue;
            }
            let api: Api<Network> = Api::all(self.client.clone());
            for _ in 0..10 {
                let current = api.get_status(&name).await;
                note_api(&self.metrics, "get networks/status", current.as_ref().err());
                let current = match current {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(network = %name, error = %e, "cannot read the network to claim an address block; will retry");
                        break;
                    }
                };
                all = by_node(&current.status);
                if capacity(&mine(&all)) >= need {
                    break;
                }
                let mut status = current.status.clone().unwrap_or_default();
                let claimed: Vec<IpNet> = status.address_blocks.iter().filter_map(|b| b.cidr.parse().ok()).collect();
                let Some(block) = overlay::free_block(subnet.net, prefix, &claimed) else {
                    tracing::warn!(network = %name, "every address block of the subnet is claimed; this node allocates from what it has");
                    break;
                };
                status.address_blocks.push(AddressBlock { node: self.node.clone(), cidr: block.to_string() });
                let mut updated = current.clone();
                updated.status = Some(status);
                let result = api.replace_status(&name, &post_params(), &updated).await;
                note_api(&self.metrics, "update networks/status", result.as_ref().err());
                match result {
                    Ok(_) => {
                        tracing::info!(network = %name, %block, "claimed an address block");
                        all.entry(self.node.clone()).or_default().blocks.push(block);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        tracing::info!(network = %name, "address block claim raced another writer (409); reading again")
                    }
                    Err(e) => {
                        tracing::warn!(network = %name, error = %e, "claiming an address block failed; will retry");
                        break;
                    }
                }
            }
            out.insert(name, all);
        }
        out
    }
}
