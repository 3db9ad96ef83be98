//! Import of real Docker output: `tests/fixtures/docker/*.json` were made
//! by dockerd 20.10 (Debian's docker.io) with `make-fixtures.sh` beside
//! them; the overlay sample follows the shape of Docker's documentation.

use super::*;
use crate::api::Protocol;

const NETWORKS: &str = include_str!("../../../tests/fixtures/docker/networks.json");
const CONTAINERS: &str = include_str!("../../../tests/fixtures/docker/containers.json");

fn both() -> Imported {
    // Two arrays concatenated, as `docker network inspect ...; docker inspect ...` prints them.
    import(&format!("{NETWORKS}\n{CONTAINERS}")).unwrap()
}

fn network<'a>(i: &'a Imported, name: &str) -> &'a NetworkSpec {
    &i.networks.iter().find(|n| n.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("network {name}")).spec
}

fn attachment<'a>(i: &'a Imported, name: &str) -> &'a crate::api::AttachmentSpec {
    &i.attachments.iter().find(|a| a.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("attachment {name}")).spec
}

fn dropped(i: &Imported, object: &str) -> Vec<String> {
    i.dropped.iter().filter(|d| d.object == object).map(|d| format!("{}: {}", d.field, d.reason)).collect()
}

#[test]
fn user_networks_keep_ipam_options_and_labels() {
    let i = both();
    let names: Vec<_> = i.networks.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["isolated_nw", "sealed", "quiet6", "mv"], "Docker's bridge, host and none are netlet's defaults");
    let iso = network(&i, "isolated_nw");
    assert_eq!(iso.driver, Driver::Bridge);
    let c = &iso.ipam.config[0];
    assert_eq!(
        (c.subnet.as_str(), c.gateway.as_deref(), c.ip_range.as_deref()),
        ("172.25.0.0/16", Some("172.25.0.1"), Some("172.25.5.0/24"))
    );
    assert_eq!(c.aux_addresses["my-router"], "172.25.1.5");
    assert_eq!(iso.bridge.as_ref().unwrap().name.as_deref(), Some("docker1"));
    let labels = i.networks[0].metadata.labels.clone().unwrap();
    assert_eq!(labels["tier"], "front");
    assert!(network(&i, "sealed").internal);
    let q = network(&i, "quiet6");
    assert!(q.enable_ipv6);
    assert_eq!(q.ipam.config.iter().map(|c| c.subnet.as_str()).collect::<Vec<_>>(), ["10.45.0.0/24", "fd00:45::/64"]);
    let bridge = q.bridge.as_ref().unwrap();
    assert_eq!((bridge.icc, bridge.ip_masquerade), (Some(false), Some(false)));
    assert_eq!(q.mtu, Some(1400));
    let mv = network(&i, "mv");
    assert_eq!(mv.driver, Driver::Macvlan);
    assert_eq!(mv.macvlan.as_ref().unwrap().parent, "uplink0");
    assert_eq!(mv.macvlan.as_ref().unwrap().mode, MacvlanMode::Bridge);
}

#[test]
fn containers_become_attachments_with_docker_addresses() {
    let i = both();
    let c3 = attachment(&i, "container3");
    assert_eq!(c3.network, "isolated_nw");
    assert_eq!(c3.sandbox.netns.as_deref(), Some("container3"));
    assert_eq!(c3.ipv4_address.as_deref(), Some("172.25.3.3"));
    assert_eq!(c3.mac_address, None, "Docker's MAC is the one netlet derives");
    assert_eq!(c3.aliases, ["app1"], "the short ID and the hostname are not aliases");
    assert_eq!(c3.hostname.as_deref(), Some("zxr"));
    let dns = c3.dns.as_ref().unwrap();
    assert_eq!(
        (dns.nameservers.as_slice(), dns.searches.as_slice(), dns.options.as_slice()),
        (&["10.0.0.53".to_string()][..], &["example.org".to_string()][..], &["ndots:2".to_string()][..])
    );
    assert_eq!(c3.extra_hosts, ["www.zxr.com:1.1.1.1"]);
    assert_eq!(c3.default_route, None);

    // container2: dynamic address from the ip-range, and a second network.
    let c2 = attachment(&i, "container2");
    assert_eq!(c2.ipv4_address.as_deref(), Some("172.25.5.0"));
    let db = attachment(&i, "container2-sealed");
    assert_eq!((db.network.as_str(), db.sandbox.netns.as_deref()), ("sealed", Some("container2")));
    assert_eq!(db.aliases, ["db"]);
    assert_eq!(db.default_route, Some(false), "the default route stays on NetworkMode's network");

    let v6 = attachment(&i, "v6");
    assert_eq!((v6.ipv4_address.as_deref(), v6.ipv6_address.as_deref()), (Some("10.45.0.10"), Some("fd00:45::10")));
    assert_eq!(v6.mac_address, None, "--mac-address equal to the derived one");

    assert_eq!(attachment(&i, "sidecar").sandbox.attachment.as_deref(), Some("container3"));
    let hosted = attachment(&i, "hosted");
    assert_eq!((hosted.network.as_str(), hosted.sandbox.host), ("host", Some(true)));
    let nonet = attachment(&i, "nonet");
    assert_eq!((nonet.network.as_str(), nonet.ipv4_address.as_deref()), ("none", None));
    let plain = attachment(&i, "plain");
    assert_eq!(plain.network, "bridge", "NetworkMode default is netlet's bridge");
    assert_eq!(attachment(&i, "mvc").ipv4_address.as_deref(), Some("192.168.77.10"));
}

#[test]
fn port_bindings_ranges_host_ips_and_publish_all() {
    let i = both();
    let pm = |name: &str| i.port_mappings.iter().find(|p| p.metadata.name.as_deref() == Some(name)).unwrap().spec.clone();
    let c3 = pm("container3");
    assert_eq!(c3.attachment, "container3");
    let ports: Vec<String> = c3
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}-{}->{}-{}/{}",
                p.host_ip.as_deref().unwrap_or("*"),
                p.host_port.unwrap_or(0),
                p.host_port_end.unwrap_or(0),
                p.container_port,
                p.container_port_end.unwrap_or(0),
                p.protocol.as_str()
            )
        })
        .collect();
    assert_eq!(ports, ["*:8080-0->80-0/tcp", "*:7000-7002->7000-7002/tcp", "127.0.0.1:9090-0->90-0/udp"]);
    // -P: the ephemeral port Docker chose is pinned.
    let c2 = pm("container2");
    assert!(!c2.publish_all);
    assert_eq!(c2.ports.len(), 1);
    assert_eq!((c2.ports[0].container_port, c2.ports[0].protocol), (5000, Protocol::Tcp));
    assert!(c2.ports[0].host_port.unwrap() >= 32768);
    assert_eq!(attachment(&i, "container2").expose.len(), 1);
    assert_eq!(pm("plain").attachment, "plain");
    assert_eq!(i.port_mappings.len(), 3);
}

#[test]
fn everything_not_carried_is_named_with_a_reason() {
    let i = both();
    assert!(dropped(&i, "network bridge")[0].contains("netlet's default `bridge`"));
    assert!(dropped(&i, "network isolated_nw").iter().any(|d| d.starts_with("Id, Created:")));
    assert!(dropped(&i, "container container3").is_empty(), "{:?}", dropped(&i, "container container3"));
    assert!(dropped(&i, "containers")[0].contains("only a container's networking"));
    for d in &i.dropped {
        assert!(!d.reason.is_empty() && !d.field.is_empty(), "{d}");
    }
}

#[test]
fn network_listing_alone_yields_its_members() {
    let i = import(NETWORKS).unwrap();
    let c3 = attachment(&i, "container3");
    assert_eq!((c3.network.as_str(), c3.ipv4_address.as_deref()), ("isolated_nw", Some("172.25.3.3")));
    assert!(dropped(&i, "container container3")[0].contains("import `docker inspect container3`"));
    // container2 is on two networks: one default route.
    let routes: Vec<_> =
        i.attachments.iter().filter(|a| a.spec.sandbox.netns.as_deref() == Some("container2")).map(|a| a.spec.default_route).collect();
    assert_eq!(routes.iter().filter(|r| r.is_none()).count(), 1, "{routes:?}");
}

#[test]
fn containers_alone_name_the_networks_to_import() {
    let i = import(CONTAINERS).unwrap();
    assert!(i.networks.is_empty());
    assert!(dropped(&i, "network isolated_nw")[0].contains("docker network inspect isolated_nw"));
    assert!(dropped(&i, "network bridge").is_empty(), "the default networks need no import");
}

#[test]
fn overlay_swarm_and_unknown_drivers() {
    let sample = r#"[{"Name": "dsc_net", "Id": "tsrtjyvcnda9", "Created": "2019-08-14T09:53:44Z", "Scope": "swarm",
        "Driver": "overlay", "EnableIPv6": false, "IPAM": {"Driver": "default", "Options": null,
        "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]}, "Internal": false, "Attachable": true,
        "Ingress": false, "ConfigFrom": {"Network": ""}, "ConfigOnly": false, "Containers": null,
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"}, "Labels": null},
        {"Name": "iv", "Driver": "ipvlan", "IPAM": {"Config": []}, "Containers": {}}]"#;
    let i = import(sample).unwrap();
    let o = network(&i, "dsc_net");
    assert_eq!(o.overlay.as_ref().unwrap().vni, 4097);
    let notes = dropped(&i, "network dsc_net");
    assert!(notes.iter().any(|d| d.starts_with("Attachable:")), "{notes:?}");
    assert!(notes.iter().any(|d| d.starts_with("Scope:")), "{notes:?}");
    assert!(notes.iter().any(|d| d.starts_with("Peers:")), "{notes:?}");
    assert!(!notes.iter().any(|d| d.starts_with("ConfigFrom")), "an empty ConfigFrom is no loss");
    assert!(dropped(&i, "network iv")[0].contains("no \"ipvlan\" driver"));
    assert_eq!(i.networks.len(), 1);
}

#[test]
fn bad_input_is_a_clear_error() {
    assert!(matches!(import("[{\"Name\": 1}"), Err(ImportError::Json(_))));
    assert!(matches!(import(""), Err(ImportError::Empty)));
    let i = import("[{\"Hello\": 1}, {\"Name\": \"n\", \"Driver\": \"bridge\", \"IPAM\": {}, \"Containers\": {}, \"Shiny\": 3}]").unwrap();
    assert_eq!(dropped(&i, "item 1"), ["(whole object): neither a network nor a container"]);
    assert_eq!(dropped(&i, "network n"), ["Shiny: not understood by this netlet"]);
}

#[test]
fn output_is_yaml_the_manifest_loader_reads_back() {
    let i = both();
    let yaml = i.to_yaml();
    let dir = std::env::temp_dir().join(format!("netlet-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("imported.yaml"), &yaml).unwrap();
    let loaded = crate::source::manifests::load(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.objects.networks.len(), i.networks.len());
    assert_eq!(loaded.objects.attachments.len(), i.attachments.len());
    assert_eq!(loaded.objects.port_mappings.len(), i.port_mappings.len());
    assert!(!yaml.contains("status"), "no status in written manifests");
}
