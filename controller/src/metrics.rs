//! Prometheus metrics and the admin endpoint (`/metrics`, `/healthz`,
//! `/readyz`). One struct registers every metric; the reconciler records
//! into it after each pass.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::reconcile::Outcome;

pub struct Metrics {
    pub registry: Registry,
    reconcile_duration: HistogramVec,
    full_reconcile_duration: HistogramVec,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    objects: IntGaugeVec,
    mutations: IntCounterVec,
    drift_repairs: IntCounterVec,
    addresses_in_use: IntGaugeVec,
    address_capacity: IntGaugeVec,
    published_ports: IntGaugeVec,
    dns_queries: IntCounterVec,
    watch_events: IntCounterVec,
    /// The embedded DNS server's own counters, copied in at each scrape.
    dns: std::sync::Mutex<Option<Arc<crate::resolver::DnsStats>>>,
    /// Set after the first complete reconcile: `/readyz` answers 200.
    ready: AtomicBool,
    /// What keeps the agent from doing its job, by what it was doing (an
    /// API call the agent's role does not allow, say): while any is set,
    /// `/readyz` answers 503 with them. Liveness is not affected: a
    /// restart would not fix any of them.
    problems: std::sync::Mutex<BTreeMap<String, String>>,
}

/// Per-network address usage, computed by the reconciler.
#[derive(Clone, Debug, Default)]
pub struct AddressUsage {
    pub in_use: u64,
    pub capacity: u64,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("netlet".into()), None).expect("valid prefix");
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let reconcile_duration = must(HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time of one reconcile of the node").buckets(buckets.clone()),
            &[],
        ));
        let full_reconcile_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "full_reconcile_duration_seconds",
                "Time of the reconciles that trust nothing an earlier one verified (every 10th, an audit; every one when no kernel events are heard); also counted in reconcile_duration_seconds",
            )
            .buckets(buckets),
            &[],
        ));
        // Shown from the start (zero until the first full pass).
        full_reconcile_duration.with_label_values::<&str>(&[]);
        let reconciles =
            must(IntCounterVec::new(Opts::new("reconciles_total", "Reconciles by result (ready: every object Ready)"), &["result"]));
        let errors = must(IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Objects found not Ready, by reason, summed over reconciles"),
            &["reason"],
        ));
        let objects =
            must(IntGaugeVec::new(Opts::new("objects", "Objects handled by this agent, by kind and readiness"), &["kind", "ready"]));
        let mutations = must(IntCounterVec::new(Opts::new("kernel_mutations_total", "Changes made to the kernel, by kind"), &["kind"]));
        let drift_repairs = must(IntCounterVec::new(
            Opts::new("drift_repairs_total", "Kernel changes made while the desired state was unchanged (someone else changed the node)"),
            &["kind"],
        ));
        let addresses_in_use = must(IntGaugeVec::new(Opts::new("addresses_in_use", "Addresses assigned on a network"), &["network"]));
        let address_capacity = must(IntGaugeVec::new(Opts::new("address_capacity", "Addresses a network can hand out"), &["network"]));
        let published_ports = must(IntGaugeVec::new(Opts::new("published_ports", "Host ports published through nftables"), &["protocol"]));
        let dns_queries = must(IntCounterVec::new(
            Opts::new(
                "dns_queries_total",
                "Queries to the embedded DNS server by outcome: local (answered from container names), forwarded (answered by an upstream), failed (SERVFAIL), dropped (unparseable), refused (not from a container of the network asked)",
            ),
            &["result"],
        ));
        let watch_events = must(IntCounterVec::new(
            Opts::new(
                "watch_events_total",
                "Objects received from the API server (Kubernetes mode), by resource and event: apply and delete from watches, list from (re)lists; a node's count follows its own objects, not the cluster's",
            ),
            &["resource", "event"],
        ));
        for c in [
            Box::new(reconcile_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(full_reconcile_duration.clone()),
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(objects.clone()),
            Box::new(mutations.clone()),
            Box::new(drift_repairs.clone()),
            Box::new(addresses_in_use.clone()),
            Box::new(address_capacity.clone()),
            Box::new(published_ports.clone()),
            Box::new(dns_queries.clone()),
            Box::new(watch_events.clone()),
        ] {
            must(registry.register(c));
        }
        Arc::new(Metrics {
            registry,
            reconcile_duration,
            full_reconcile_duration,
            reconciles,
            errors,
            objects,
            mutations,
            drift_repairs,
            addresses_in_use,
            address_capacity,
            published_ports,
            dns_queries,
            watch_events,
            dns: std::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
            problems: Default::default(),
        })
    }

    /// Records one reconcile. `drift` is true when the desired state did not
    /// change since the previous pass, so every mutation was a repair.
    pub fn record(&self, outcome: &Outcome, drift: bool, usage: &BTreeMap<String, AddressUsage>, ports: &BTreeMap<&'static str, i64>) {
        self.reconcile_duration.with_label_values::<&str>(&[]).observe(outcome.duration.as_secs_f64());
        if outcome.full {
            self.full_reconcile_duration.with_label_values::<&str>(&[]).observe(outcome.duration.as_secs_f64());
        }
        self.reconciles.with_label_values(&[if outcome.all_ready() { "ready" } else { "not_ready" }]).inc();
        for v in outcome.verdicts.iter().filter(|v| !v.ready) {
            self.errors.with_label_values(&[v.reason.as_str()]).inc();
        }
        // Counted here first: a label lookup per object is thousands a pass.
        let mut counts: BTreeMap<(&str, bool), i64> = BTreeMap::new();
        for v in outcome.verdicts.iter() {
            *counts.entry((v.key.kind.as_str(), v.ready)).or_default() += 1;
        }
        self.objects.reset();
        for ((kind, ready), n) in counts {
            self.objects.with_label_values(&[kind, if ready { "true" } else { "false" }]).set(n);
        }
        for (kind, n) in &outcome.mutations_by_kind {
            self.mutations.with_label_values(&[kind]).inc_by(u64::from(*n));
            if drift {
                self.drift_repairs.with_label_values(&[kind]).inc_by(u64::from(*n));
            }
        }
        self.addresses_in_use.reset();
        self.address_capacity.reset();
        for (network, u) in usage {
            self.addresses_in_use.with_label_values(&[network.as_str()]).set(u.in_use as i64);
            self.address_capacity.with_label_values(&[network.as_str()]).set(u.capacity as i64);
        }
        self.published_ports.reset();
        for (protocol, n) in ports {
            self.published_ports.with_label_values(&[protocol]).set(*n);
        }
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.problems().is_empty()
    }

    /// Sets (Some) or clears (None) the problem of `what`; true when that
    /// changed it (for logging a problem once, not at every retry).
    pub fn set_problem(&self, what: &str, problem: Option<String>) -> bool {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(p) => problems.insert(what.to_string(), p.clone()).as_ref() != Some(&p),
            None => problems.remove(what).is_some(),
        }
    }

    /// The problems set now, one "what: problem" line each.
    pub fn problems(&self) -> Vec<String> {
        let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        problems.iter().map(|(what, p)| format!("{what}: {p}")).collect()
    }

    /// Counts one object received on a list or watch of `resource`.
    pub fn watch_event(&self, resource: &str, event: &str) {
        self.watch_events.with_label_values(&[resource, event]).inc();
    }

    /// Reports the DNS server's counters from now on.
    pub fn attach_dns(&self, stats: Arc<crate::resolver::DnsStats>) {
        *self.dns.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Brings the DNS counters up to the server's (they only grow).
    fn sync_dns(&self) {
        let Some(stats) = self.dns.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        for (result, value) in [
            ("local", &stats.local),
            ("forwarded", &stats.forwarded),
            ("failed", &stats.failed),
            ("dropped", &stats.dropped),
            ("refused", &stats.refused),
        ] {
            let counter = self.dns_queries.with_label_values(&[result]);
            let now = value.load(Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    pub fn render(&self) -> String {
        self.sync_dns();
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics.render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" => {
            let mut why = metrics.problems();
            if !metrics.ready.load(Ordering::Relaxed) {
                why.push("first reconcile not finished".into());
            }
            (StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n")
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Serves the admin endpoints on `addr` until the runtime stops.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, req.uri().path())) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectKey;
    use crate::status::Verdict;

    fn outcome(ready: bool) -> Outcome {
        let verdict = Verdict {
            key: ObjectKey::network("n"),
            ready,
            reason: if ready { "Ready" } else { "InvalidSpec" }.into(),
            message: String::new(),
        };
        let mut o = Outcome { verdicts: Arc::from([verdict]), ..Default::default() };
        o.mutations_by_kind.insert("link", 3);
        o
    }

    #[test]
    fn readiness_follows_the_first_reconcile() {
        let m = Metrics::new();
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&m, "/healthz").status(), StatusCode::OK);
        m.record(&outcome(true), false, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::OK);
        assert_eq!(respond(&m, "/nope").status(), StatusCode::NOT_FOUND);
    }

    fn body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = futures::executor::block_on(response.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_problem_makes_the_agent_unready_and_says_why_until_it_is_cleared() {
        let m = Metrics::new();
        m.record(&outcome(true), false, &BTreeMap::new(), &BTreeMap::new());
        assert!(m.set_problem("list attachments", Some("forbidden".into())), "a new problem is news");
        assert!(!m.set_problem("list attachments", Some("forbidden".into())), "the same one again is not");
        let readyz = respond(&m, "/readyz");
        assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(readyz), "list attachments: forbidden\n");
        assert_eq!(respond(&m, "/healthz").status(), StatusCode::OK, "liveness does not follow problems");
        assert!(m.set_problem("list attachments", None));
        assert!(!m.set_problem("list attachments", None));
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::OK);
    }

    #[test]
    fn dns_queries_follow_the_servers_counters() {
        let m = Metrics::new();
        let stats = Arc::new(crate::resolver::DnsStats::default());
        m.attach_dns(stats.clone());
        stats.local.fetch_add(3, Ordering::Relaxed);
        stats.failed.fetch_add(1, Ordering::Relaxed);
        assert!(m.render().contains("netlet_dns_queries_total{result=\"local\"} 3"));
        stats.local.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("netlet_dns_queries_total{result=\"local\"} 5"), "{text}");
        assert!(text.contains("netlet_dns_queries_total{result=\"failed\"} 1"));
    }

    #[test]
    fn counters_move_with_reconciles() {
        let m = Metrics::new();
        let mut usage = BTreeMap::new();
        usage.insert("n".to_string(), AddressUsage { in_use: 2, capacity: 253 });
        m.record(&outcome(false), true, &usage, &BTreeMap::from([("tcp", 4)]));
        let text = m.render();
        assert!(text.contains("netlet_reconciles_total{result=\"not_ready\"} 1"), "{text}");
        assert!(text.contains("netlet_reconcile_errors_total{reason=\"InvalidSpec\"} 1"));
        assert!(text.contains("netlet_kernel_mutations_total{kind=\"link\"} 3"));
        assert!(text.contains("netlet_drift_repairs_total{kind=\"link\"} 3"));
        assert!(text.contains("netlet_objects{kind=\"Network\",ready=\"false\"} 1"));
        assert!(text.contains("netlet_addresses_in_use{network=\"n\"} 2"));
        assert!(text.contains("netlet_address_capacity{network=\"n\"} 253"));
        assert!(text.contains("netlet_published_ports{protocol=\"tcp\"} 4"));
        m.watch_event("attachments", "apply");
        m.watch_event("attachments", "apply");
        let text = m.render();
        assert!(text.contains("netlet_watch_events_total{event=\"apply\",resource=\"attachments\"} 2"), "{text}");
        assert!(text.contains("netlet_reconcile_duration_seconds_count 1"));
        assert!(text.contains("netlet_full_reconcile_duration_seconds_count 0"), "a quick pass is not a full one");
        let mut full = outcome(true);
        full.full = true;
        m.record(&full, false, &usage, &BTreeMap::new());
        let text = m.render();
        assert!(text.contains("netlet_reconcile_duration_seconds_count 2"));
        assert!(text.contains("netlet_full_reconcile_duration_seconds_count 1"), "{text}");
    }
}
