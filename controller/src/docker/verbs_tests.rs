//! What `netlet network create|connect` would write, and Docker's refusals.

use super::*;

fn create(args: &[&str]) -> CreateArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }
    <Cli as clap::Parser>::try_parse_from(std::iter::once("create").chain(args.iter().copied())).unwrap().args
}

#[test]
fn create_pairs_gateways_ranges_and_aux_addresses_with_their_subnets() {
    let args = create(&[
        "--subnet",
        "172.25.0.0/16",
        "--subnet",
        "fd00:25::/64",
        "--gateway",
        "fd00:25::1",
        "--gateway",
        "172.25.0.1",
        "--ip-range",
        "172.25.5.0/24",
        "--aux-address",
        "my-router=172.25.1.5",
        "--ipv6",
        "--internal",
        "-o",
        "com.docker.network.bridge.name=docker1",
        "--label",
        "tier=front",
        "isolated_nw",
    ]);
    let n = network_spec(&args, &[]).unwrap();
    let c = &n.spec.ipam.config;
    assert_eq!((c[0].gateway.as_deref(), c[0].ip_range.as_deref()), (Some("172.25.0.1"), Some("172.25.5.0/24")));
    assert_eq!(c[0].aux_addresses["my-router"], "172.25.1.5");
    assert_eq!((c[1].subnet.as_str(), c[1].gateway.as_deref()), ("fd00:25::/64", Some("fd00:25::1")));
    assert!(n.spec.enable_ipv6 && n.spec.internal);
    assert_eq!(n.spec.options["com.docker.network.bridge.name"], "docker1");
    assert_eq!(n.metadata.labels.unwrap()["tier"], "front");
    let mv =
        network_spec(&create(&["-d", "macvlan", "--subnet", "10.9.0.0/24", "-o", "parent=eth0", "-o", "macvlan_mode=private", "mv"]), &[])
            .unwrap();
    assert_eq!(mv.spec.macvlan.as_ref().map(|m| (m.parent.as_str(), m.mode)), Some(("eth0", MacvlanMode::Private)));
}

#[test]
fn create_refuses_what_docker_refuses() {
    let err = |args: &[&str], others: &[&Network]| network_spec(&create(args), others).unwrap_err().0;
    assert_eq!(err(&["-d", "weave", "n"], &[]), "plugin \"weave\" not found");
    assert_eq!(err(&["--subnet", "10.0.0.0/33", "n"], &[]), "invalid subnet 10.0.0.0/33 : invalid CIDR address: 10.0.0.0/33");
    assert_eq!(err(&["--gateway", "10.0.0.1", "n"], &[]), "every ip-range or gateway must have a corresponding subnet");
    assert_eq!(err(&["--subnet", "10.0.0.0/24", "--gateway", "10.1.0.1", "n"], &[]), "no matching subnet for gateway 10.1.0.1");
    assert_eq!(err(&["--subnet", "10.0.0.0/24", "--ip-range", "10.2.0.0/25", "n"], &[]), "no matching subnet for range 10.2.0.0/25");
    let other = network_spec(&create(&["--subnet", "10.0.0.0/16", "o"]), &[]).unwrap();
    assert_eq!(err(&["--subnet", "10.0.3.0/24", "n"], &[&other]), "Pool overlaps with other one on this address space");
    assert!(err(&["-d", "macvlan", "--subnet", "10.9.0.0/24", "n"], &[]).contains("-o parent=IFACE"));
}

fn store_with(yaml: &str) -> (ManifestDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("netlet-verbs-{}-{}", std::process::id(), yaml.len()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), yaml).unwrap();
    (ManifestDir::open(&dir).unwrap(), dir)
}

const WORLD: &str = "apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: front}\nspec: {ipam: {config: [{subnet: 10.41.0.0/24}]}}\n---\n\
apiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: host}\nspec: {driver: host}\n---\n\
apiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: web}\nspec: {network: front, sandbox: {netns: web}, ipv4Address: 10.41.0.9}\n";

fn connect_args(network: &str, sandbox: &str, ip: Option<&str>) -> ConnectArgs {
    ConnectArgs { ip: ip.map(String::from), ip6: None, alias: vec!["db".into()], network: network.into(), sandbox: sandbox.into() }
}

#[test]
fn connect_names_the_attachment_after_its_sandbox_and_keeps_the_first_default_route() {
    let (store, dir) = store_with(WORLD);
    let a = attachment_for(&connect_args("front", "api", Some("10.41.0.7")), &store).unwrap();
    assert_eq!(a.metadata.name.as_deref(), Some("api"));
    assert_eq!(
        (a.spec.sandbox.netns.as_deref(), a.spec.ipv4_address.as_deref(), a.spec.default_route),
        (Some("api"), Some("10.41.0.7"), None)
    );
    assert_eq!(a.spec.aliases, ["db"]);
    let err = |args: ConnectArgs| attachment_for(&args, &store).unwrap_err().0;
    assert_eq!(err(connect_args("back", "api", None)), "network back not found");
    assert_eq!(err(connect_args("front", "web", None)), "endpoint with name web already exists in network front");
    assert_eq!(
        err(connect_args("front", "api", Some("10.9.9.9"))),
        "Invalid address 10.9.9.9: It does not belong to any of this network's subnets"
    );
    assert_eq!(err(connect_args("front", "api", Some("10.41.0.9"))), "Address already in use (by attachment web)");
    assert!(err(connect_args("host", "api", None)).contains("host network"));
    // Writing lands in its own file, which the loader reads back; the
    // user's file is never taken over.
    let key = key(Kind::Attachment, None, "api");
    let file = store.write(&key, &a).unwrap();
    assert_eq!(file.file_name().unwrap(), "attachment-api.yaml");
    let again = ManifestDir::open(&dir).unwrap();
    assert_eq!(again.defined_in(&key), Some(file.as_path()));
    assert!(again.write(&super::super::store::key(Kind::Attachment, None, "web"), &a).unwrap_err().to_string().contains("all.yaml"));
    assert!(again.remove(&super::super::store::key(Kind::Attachment, None, "web")).unwrap_err().to_string().contains("one of 3 objects"));
    again.remove(&key).unwrap();
    assert!(!file.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
