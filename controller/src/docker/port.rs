//! `netlet port ATTACHMENT [PRIVATE_PORT[/PROTO]]` lists published ports
//! as `docker port` does; with `-p` / `-P` it publishes them (Docker's
//! `run -p` syntax) as the PortMapping `ATTACHMENT` in its own file, and
//! `--unpublish` removes that file.

use super::store::{key, wait_gone, ManifestDir};
use super::verbs::{write_and_wait, Place, Refused};
use crate::api::{Kind, PortBinding, PortMapping, PortMappingSpec, PortSpec, Protocol};
use crate::state::StateDir;

#[derive(clap::Args)]
pub struct PortArgs {
    /// The attachment (Docker's container).
    pub attachment: String,
    /// PRIVATE_PORT[/PROTO]: show only where this one is published.
    pub port: Option<String>,
    /// [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO], ranges as 8000-8002:80-82;
    /// replaces what `netlet port` published for this attachment before.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Like `docker run -P`: every port the attachment exposes.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Remove what `netlet port -p` published for this attachment.
    #[arg(long, conflicts_with_all = ["publish", "publish_all"])]
    pub unpublish: bool,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

fn range(text: &str, what: &str) -> Result<(u16, Option<u16>), Refused> {
    let bad = || Refused(format!("Invalid {what}: {text}"));
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if b < a {
                return Err(bad());
            }
            Ok((a, Some(b).filter(|b| *b != a)))
        }
        None => Ok((text.parse().map_err(|_| bad())?, None)),
    }
}

/// Docker's `-p` syntax as a port spec.
pub fn parse_publish(text: &str) -> Result<PortSpec, Refused> {
    let (rest, proto) = text.rsplit_once('/').unwrap_or((text, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return Err(Refused(format!("Invalid proto: {proto}"))),
    };
    // [::1]:8080:80 keeps its brackets apart from the colons.
    let (host_ip, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (ip, tail) = r.split_once("]:").ok_or_else(|| Refused(format!("Invalid ip address: {rest}")))?;
            (Some(ip.to_string()), tail)
        }
        None => (None, rest),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, "", *c),
        (None, [h, c]) => (None, *h, *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), *h, *c),
        (Some(ip), [h, c]) => (Some(ip), *h, *c),
        _ => return Err(Refused(format!("Invalid port specification: {text:?}"))),
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| Refused(format!("Invalid ip address: {ip}")))?;
    }
    let (container_port, container_port_end) = range(container, "containerPort")?;
    let (host_port, host_port_end) = if host.is_empty() { (None, None) } else { range(host, "hostPort").map(|(a, b)| (Some(a), b))? };
    let span = |start: u16, end: Option<u16>| end.map_or(0, |e| e - start);
    if host_port.is_some() && span(container_port, container_port_end) != span(host_port.unwrap_or(0), host_port_end) {
        return Err(Refused(format!("Invalid ranges specified for container and host Ports: {container} and {host}")));
    }
    let host_ip = host_ip.filter(|ip| !ip.is_empty());
    Ok(PortSpec { container_port, container_port_end, protocol, host_port, host_port_end, host_ip })
}

/// `80/tcp -> 0.0.0.0:8080`, as `docker port` prints a binding.
fn show(b: &PortBinding, with_private: bool) -> String {
    let host = if b.host_ip.contains(':') { format!("[{}]", b.host_ip) } else { b.host_ip.clone() };
    match with_private {
        true => format!("{}/{} -> {host}:{}", b.container_port, b.protocol.as_str(), b.host_port),
        false => format!("{host}:{}", b.host_port),
    }
}

/// The published ports of an attachment from the agent's status.
fn bindings(place: &Place, namespace: &str, attachment: &str) -> Result<Option<Vec<PortBinding>>, Refused> {
    let store = StateDir::open(&place.state_dir).map_err(anyhow::Error::from)?.load_status();
    let objects = super::inspect::Objects::from_store(&store);
    let known = objects
        .attachments
        .iter()
        .any(|a| a.metadata.name.as_deref() == Some(attachment) && a.metadata.namespace.as_deref().unwrap_or("default") == namespace);
    if !known {
        return Ok(None);
    }
    let mut out: Vec<PortBinding> = objects
        .port_mappings
        .iter()
        .filter(|p| p.spec.attachment == attachment && p.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .flat_map(|p| p.status.iter().flat_map(|s| s.bindings.clone()))
        .collect();
    out.sort_by(|a, b| (a.container_port, a.protocol, &a.host_ip).cmp(&(b.container_port, b.protocol, &b.host_ip)));
    Ok(Some(out))
}

pub fn port(args: &PortArgs, place: &Place) -> Result<(), Refused> {
    if args.unpublish || !args.publish.is_empty() || args.publish_all {
        publish(args, place)?;
    }
    let Some(all) = bindings(place, &args.namespace, &args.attachment)? else {
        return Err(Refused(format!("No such container: {}", args.attachment)));
    };
    match &args.port {
        None => all.iter().for_each(|b| println!("{}", show(b, true))),
        Some(private) => {
            let (port, proto) = private.split_once('/').unwrap_or((private, "tcp"));
            let wanted: Vec<&PortBinding> =
                all.iter().filter(|b| b.container_port.to_string() == port && b.protocol.as_str() == proto).collect();
            if wanted.is_empty() {
                return Err(Refused(format!("No public port '{port}/{proto}' published for {}", args.attachment)));
            }
            wanted.iter().for_each(|b| println!("{}", show(b, false)));
        }
    }
    Ok(())
}

fn publish(args: &PortArgs, place: &Place) -> Result<(), Refused> {
    let (dir, watched) = place.resolve();
    let store = ManifestDir::open(&dir)?;
    let key = key(Kind::PortMapping, Some(&args.namespace), &args.attachment);
    if args.unpublish {
        store.remove(&key)?;
        if watched {
            wait_gone(&place.state_dir, &key, place.timeout())?;
        }
        return Ok(());
    }
    let ports = args.publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>, _>>()?;
    let spec = PortMappingSpec { attachment: args.attachment.clone(), publish_all: args.publish_all, ports };
    let mut mapping = PortMapping::new(&args.attachment, spec);
    if args.namespace != "default" {
        mapping.metadata.namespace = Some(args.namespace.clone());
    }
    let same = |p: &PortMapping| p.spec == mapping.spec;
    write_and_wait(&store, &key, &mapping, place, same, Some("fix it, or --unpublish"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HOST_IP HOST_PORT[-END] -> CONTAINER_PORT[-END]/PROTO`, `*` for none.
    fn spec(text: &str) -> String {
        let p = parse_publish(text).unwrap();
        let end = |e: Option<u16>| e.map_or(String::new(), |e| format!("-{e}"));
        let host = p.host_port.map_or("*".to_string(), |h| format!("{h}{}", end(p.host_port_end)));
        let ip = p.host_ip.as_deref().unwrap_or("*");
        format!("{ip} {host} -> {}{}/{}", p.container_port, end(p.container_port_end), p.protocol.as_str())
    }

    #[test]
    fn docker_publish_syntax() {
        assert_eq!(spec("80"), "* * -> 80/tcp");
        assert_eq!(spec("8080:80"), "* 8080 -> 80/tcp");
        assert_eq!(spec("127.0.0.1:9090:90/udp"), "127.0.0.1 9090 -> 90/udp");
        assert_eq!(spec("127.0.0.1::90"), "127.0.0.1 * -> 90/tcp");
        assert_eq!(spec("[::1]:8080:80"), "::1 8080 -> 80/tcp");
        assert_eq!(spec("7000-7002:7000-7002/sctp"), "* 7000-7002 -> 7000-7002/sctp");
    }

    #[test]
    fn bad_publish_specs_get_dockers_errors() {
        let err = |t: &str| parse_publish(t).unwrap_err().0;
        assert_eq!(err("80/icmp"), "Invalid proto: icmp");
        assert_eq!(err("x:80"), "Invalid hostPort: x");
        assert_eq!(err("8080:99999"), "Invalid containerPort: 99999");
        assert_eq!(err("8000-8001:80"), "Invalid ranges specified for container and host Ports: 80 and 8000-8001");
        assert_eq!(err("1.2.3:8080:80"), "Invalid ip address: 1.2.3");
    }
}
