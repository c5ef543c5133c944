//! The route-level families of Linkerd's newer metrics (LINKERD-WIRE.md §5.3): outbound routes,
//! backends and retries, and inbound authorization, route-not-found and local rate limits.
//! Label names follow Linkerd's (`parent_*`, `route_*`, `backend_*`, `srv_*`, `authz_*`).

use crate::policy::outbound::Meta;
use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::sync::{Arc, Mutex, OnceLock};

/// A policy object as metric labels (`group`, `kind`, `namespace`, `name`, `port`; empty when
/// unknown, kind `default` for a default the control plane or the proxy made up), sharing the
/// policy's own metadata: a request's series is found by comparing pointers, not strings, and
/// nothing is copied per request.
#[derive(Clone, Debug)]
pub struct Resource(Arc<Meta>);

impl Resource {
    pub fn of(meta: &Arc<Meta>) -> Self {
        Self(meta.clone())
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// (group, kind, namespace, name, port), as labelled.
    fn parts(&self) -> (&str, &str, &str, &str, u16) {
        let m = &*self.0;
        (m.group(), m.kind(), m.namespace(), m.name(), m.port())
    }

    /// The labels `{prefix}_group`, `_kind`, `_namespace`, `_name` and `_port`.
    fn encode(&self, prefix: &str, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (group, kind, namespace, name, port) = self.parts();
        let port = if port == 0 { String::new() } else { port.to_string() };
        for (key, value) in [("group", group), ("kind", kind), ("namespace", namespace), ("name", name), ("port", &port)] {
            (format!("{prefix}_{key}"), value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.parts() == other.parts()
    }
}

impl Eq for Resource {}

impl std::hash::Hash for Resource {
    /// The name alone: equal label sets have equal names, and names are short.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().3.hash(state);
    }
}

/// An outbound route's labels: its parent (`parent_*`), the route (`route_*`), and `hostname`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabels {
    pub parent: Resource,
    pub route: Resource,
    /// The host the request (`Host`) or connection (SNI) named; empty unless
    /// `KNIT_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS` turns it on, and bounded (see [`Bounded`]).
    pub hostname: String,
}

impl RouteLabels {
    pub fn new(parent: &Resource, route: &Resource, hostname: String) -> Self {
        Self { parent: parent.clone(), route: route.clone(), hostname }
    }
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.parent.encode("parent", &mut encoder)?;
        // A route has no port of its own: `route_port` is not a label.
        let (group, kind, namespace, name, _) = self.route.parts();
        for (key, value) in [("route_group", group), ("route_kind", kind), ("route_namespace", namespace), ("route_name", name), ("hostname", &self.hostname)] {
            (key, value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// An opaque or TLS route's connection as it ended: `error` is empty when it closed normally,
/// else `forbidden`, `invalid_backend`, `invalid_policy` or `unexpected`, as Linkerd's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub error: String,
    #[prometheus(flatten)]
    pub route: RouteLabels,
}

/// Label values an attacker may choose (a request's `Host`, a ClientHello's SNI): at most
/// `limit` distinct ones become series; the rest (and any longer than a DNS name) share the
/// value `overflow`, so 10,000 made-up names cost 10,000 lookups, not 10,000 series. The first
/// `limit` stay for the process's life: a flood before the real names arrive pushes those into
/// `overflow` (counted, just not by name).
/// The longest value [`Bounded`] keeps as itself: a DNS name's longest, with a port.
const MAX_VALUE_LEN: usize = 253 + 6;

pub struct Bounded {
    limit: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Bounded {
    pub fn new(limit: usize) -> Self {
        Self { limit, seen: Default::default() }
    }

    pub fn get(&self, value: &str) -> String {
        // No DNS name is longer; a longer value is not a name worth a series of its own.
        if value.len() > MAX_VALUE_LEN {
            return "overflow".to_string();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= self.limit {
            return "overflow".to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub http_status: String,
    pub error: String,
    #[prometheus(flatten)]
    pub route: RouteLabels,
}

/// A route's backend: `backend_*`, then the route's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BackendLabels {
    pub backend: Resource,
    pub route: RouteLabels,
}

impl BackendLabels {
    pub fn new(route: RouteLabels, backend: &Resource) -> Self {
        Self { route, backend: backend.clone() }
    }
}

impl EncodeLabelSet for BackendLabels {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.backend.encode("backend", &mut encoder)?;
        EncodeLabelSet::encode(&self.route, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendStatusLabels {
    pub http_status: String,
    pub error: String,
    #[prometheus(flatten)]
    pub backend: BackendLabels,
}

/// Inbound: the server (and route) a request or connection was checked against.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub srv_group: String,
    pub srv_kind: String,
    pub srv_name: String,
    pub srv_port: String,
}

/// Inbound: the server, route and authorization a request was checked against (the
/// authorization empty when it was denied). Also on the inbound golden families (§5.2).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub route_group: String,
    pub route_kind: String,
    pub route_name: String,
    pub authz_group: String,
    pub authz_kind: String,
    pub authz_name: String,
    #[prometheus(flatten)]
    pub server: ServerLabels,
}

impl PolicyLabels {
    /// `route` and `authz` as (group, kind, name); empty when unknown.
    pub fn new(server: ServerLabels, route: [&str; 3], authz: [&str; 3]) -> Self {
        let [route_group, route_kind, route_name] = route.map(String::from);
        let [authz_group, authz_kind, authz_name] = authz.map(String::from);
        Self { route_group, route_kind, route_name, authz_group, authz_kind, authz_name, server }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The client's mesh identity, empty when unauthenticated.
    pub client_id: String,
    #[prometheus(flatten)]
    pub policy: PolicyLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// Which limit refused the request: `total`, `identity` or `override`.
    pub rate_limit: String,
    #[prometheus(flatten)]
    pub server: ServerLabels,
}

/// The metric handles of one policy object (an HTTP route, or a route's backend), resolved on
/// its first request and kept with the object: later requests increment atomics instead of
/// hashing and comparing their label set in each family (the proxy's top user-space cost in
/// bench/profiles/knit-proxy-netns.md). The handles keep the metadata they were resolved for and
/// are used only when a request's labels name the same objects (compared by pointer): an object
/// reached under another parent, or with a `hostname` label, takes the families' lookup. A
/// clone starts empty, since it may be placed under another parent.
#[derive(Default)]
pub struct Handles(OnceLock<Arc<Resolved>>);

impl Clone for Handles {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Handles(resolved)" } else { "Handles" })
    }
}

/// Handles of a route (`requests` is `None`) or of a backend.
struct Resolved {
    parent: Arc<Meta>,
    route: Arc<Meta>,
    backend: Option<Arc<Meta>>,
    requests: Option<Counter>,
    duration: Histogram,
    /// The counters of the response statuses seen, a few at most (`metrics::kept`); errors and
    /// further statuses take the family's lookup.
    statuses: Mutex<Vec<(u16, Counter)>>,
}

impl Resolved {
    fn matches(&self, route: &RouteLabels, backend: Option<&Resource>) -> bool {
        Arc::ptr_eq(&self.parent, &route.parent.0)
            && Arc::ptr_eq(&self.route, &route.route.0)
            && match (&self.backend, backend) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, &b.0),
                (None, None) => true,
                _ => false,
            }
    }
}

/// A request's route and its resolved handles, recorded once when the request's outcome is known.
pub struct RouteRecord {
    resolved: Option<Arc<Resolved>>,
    labels: RouteLabels,
}

/// A finished request or attempt: the response status, or the error's metric label.
pub type Outcome<'a> = Result<http::StatusCode, &'a str>;

fn outcome_labels(result: &Outcome<'_>) -> (String, String) {
    match result {
        Ok(s) => (s.as_str().to_string(), String::new()),
        Err(e) => (String::new(), (*e).to_string()),
    }
}

impl RouteMetrics {
    fn resolved<'h>(&self, handles: &'h Handles, route: &RouteLabels, backend: Option<&Resource>) -> Option<&'h Arc<Resolved>> {
        if !route.hostname.is_empty() {
            return None;
        }
        let r = handles.0.get_or_init(|| {
            let (requests, duration) = match backend {
                Some(b) => {
                    let labels = BackendLabels::new(route.clone(), b);
                    (Some(self.backend_requests.get_or_create(&labels).clone()), self.backend_duration.get_or_create(&labels).clone())
                }
                None => (None, self.request_duration.get_or_create(route).clone()),
            };
            Arc::new(Resolved {
                parent: route.parent.0.clone(),
                route: route.route.0.clone(),
                backend: backend.map(|b| b.0.clone()),
                requests,
                duration,
                statuses: Mutex::default(),
            })
        });
        r.matches(route, backend).then_some(r)
    }

    /// A request's route, to be recorded when the request's outcome is known (`http/outcome.rs`).
    pub fn route_record(&self, handles: &Handles, labels: RouteLabels) -> RouteRecord {
        RouteRecord { resolved: self.resolved(handles, &labels, None).cloned(), labels }
    }

    /// Records a route's request (after retries): its duration and status.
    pub fn record_route(&self, handles: &Handles, labels: &RouteLabels, elapsed: std::time::Duration, result: &Outcome<'_>) {
        self.record_route_as(self.resolved(handles, labels, None).map(|r| &**r), labels, elapsed, result);
    }

    /// Records the request of a [`RouteRecord`].
    pub fn record(&self, r: &RouteRecord, elapsed: std::time::Duration, result: &Outcome<'_>) {
        self.record_route_as(r.resolved.as_deref(), &r.labels, elapsed, result);
    }

    fn record_route_as(&self, resolved: Option<&Resolved>, labels: &RouteLabels, elapsed: std::time::Duration, result: &Outcome<'_>) {
        match resolved {
            Some(r) => r.duration.observe(elapsed.as_secs_f64()),
            None => self.request_duration.get_or_create(labels).observe(elapsed.as_secs_f64()),
        }
        let family = || {
            let (http_status, error) = outcome_labels(result);
            self.request_statuses.get_or_create(&StatusLabels { route: labels.clone(), http_status, error }).clone()
        };
        match (resolved, result) {
            (Some(r), Ok(s)) => super::kept(&r.statuses, s.as_u16(), family).inc(),
            _ => family().inc(),
        };
    }

    /// Counts an attempt sent to a route's backend.
    pub fn backend_request(&self, handles: &Handles, labels: &BackendLabels) {
        match self.resolved(handles, &labels.route, Some(&labels.backend)).and_then(|r| r.requests.as_ref()) {
            Some(c) => c.inc(),
            None => self.backend_requests.get_or_create(labels).inc(),
        };
    }

    /// Records a backend attempt's response: its duration and status.
    pub fn record_backend(&self, handles: &Handles, labels: &BackendLabels, elapsed: std::time::Duration, result: &Outcome<'_>) {
        let resolved = self.resolved(handles, &labels.route, Some(&labels.backend));
        match resolved {
            Some(r) => r.duration.observe(elapsed.as_secs_f64()),
            None => self.backend_duration.get_or_create(labels).observe(elapsed.as_secs_f64()),
        }
        let family = || {
            let (http_status, error) = outcome_labels(result);
            self.backend_statuses.get_or_create(&BackendStatusLabels { backend: labels.clone(), http_status, error }).clone()
        };
        match (resolved, result) {
            (Some(r), Ok(s)) => super::kept(&r.statuses, s.as_u16(), family).inc(),
            _ => family().inc(),
        };
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.05, 0.5, 1.0, 10.0])
}

fn backend_duration_histogram() -> Histogram {
    Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0])
}

#[derive(Clone)]
pub struct RouteMetrics {
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub request_statuses: Family<StatusLabels, Counter>,
    pub backend_requests: Family<BackendLabels, Counter>,
    pub backend_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub backend_statuses: Family<BackendStatusLabels, Counter>,
    pub retry_requests: Family<RouteLabels, Counter>,
    pub retry_successes: Family<RouteLabels, Counter>,
    pub retry_limit_exceeded: Family<RouteLabels, Counter>,
    pub retry_overflow: Family<RouteLabels, Counter>,
    pub authz_allow: Family<AuthzLabels, Counter>,
    pub authz_deny: Family<AuthzLabels, Counter>,
    pub tcp_authz_allow: Family<AuthzLabels, Counter>,
    pub tcp_authz_deny: Family<AuthzLabels, Counter>,
    pub route_not_found: Family<ServerLabels, Counter>,
    pub local_ratelimit: Family<RateLimitLabels, Counter>,
    pub tcp_route_open: Family<RouteLabels, Counter>,
    pub tcp_route_close: Family<CloseLabels, Counter>,
    pub tls_route_open: Family<RouteLabels, Counter>,
    pub tls_route_close: Family<CloseLabels, Counter>,
}

impl RouteMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            request_duration: Family::new_with_constructor(duration_histogram),
            request_statuses: Family::default(),
            backend_requests: Family::default(),
            backend_duration: Family::new_with_constructor(backend_duration_histogram),
            backend_statuses: Family::default(),
            retry_requests: Family::default(),
            retry_successes: Family::default(),
            retry_limit_exceeded: Family::default(),
            retry_overflow: Family::default(),
            authz_allow: Family::default(),
            authz_deny: Family::default(),
            tcp_authz_allow: Family::default(),
            tcp_authz_deny: Family::default(),
            route_not_found: Family::default(),
            local_ratelimit: Family::default(),
            tcp_route_open: Family::default(),
            tcp_route_close: Family::default(),
            tls_route_open: Family::default(),
            tls_route_close: Family::default(),
        };
        let out = registry.sub_registry_with_prefix("outbound_http_route");
        out.register("request_duration_seconds", "Time from a route's request to its response headers, across retries", m.request_duration.clone());
        out.register("request_statuses", "Responses of a route's requests, after retries", m.request_statuses.clone());
        out.register("backend_requests", "Requests a route sent to each backend (each attempt)", m.backend_requests.clone());
        out.register("backend_response_duration_seconds", "Time from a backend attempt to its response headers", m.backend_duration.clone());
        out.register("backend_response_statuses", "Responses of each backend attempt", m.backend_statuses.clone());
        out.register("retry_requests", "Retries sent", m.retry_requests.clone());
        out.register("retry_successes", "Requests that succeeded after a retry", m.retry_successes.clone());
        out.register("retry_limit_exceeded", "Requests that failed after spending every retry the route allows", m.retry_limit_exceeded.clone());
        out.register("retry_overflow", "Retries not sent because the retry budget or the body buffer ran out", m.retry_overflow.clone());
        let tcp = registry.sub_registry_with_prefix("outbound_tcp_route");
        tcp.register("open", "Opaque connections that entered a TCP route", m.tcp_route_open.clone());
        tcp.register("close", "Opaque connections of a TCP route that ended, by error (empty: closed normally)", m.tcp_route_close.clone());
        let tls = registry.sub_registry_with_prefix("outbound_tls_route");
        tls.register("open", "TLS connections that entered a TLS route (chosen by SNI)", m.tls_route_open.clone());
        tls.register("close", "TLS connections of a TLS route that ended, by error (empty: closed normally)", m.tls_route_close.clone());
        let inbound = registry.sub_registry_with_prefix("inbound");
        inbound.register("http_authz_allow", "HTTP requests an authorization allowed", m.authz_allow.clone());
        inbound.register("http_authz_deny", "HTTP requests no authorization allowed", m.authz_deny.clone());
        inbound.register("tcp_authz_allow", "Connections an authorization allowed", m.tcp_authz_allow.clone());
        inbound.register("tcp_authz_deny", "Connections no authorization allowed (closed)", m.tcp_authz_deny.clone());
        inbound.register("http_route_not_found", "HTTP requests that matched no route of the server", m.route_not_found.clone());
        inbound.register("http_local_ratelimit", "HTTP requests refused by a local rate limit", m.local_ratelimit.clone());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::time::Duration;

    fn meta(name: &str) -> Arc<Meta> {
        Arc::new(Meta::Resource { group: "".into(), kind: "Service".into(), name: name.into(), namespace: "ns".into(), section: "".into(), port: 80 })
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn sample(text: &str, prefix: &str, parts: &[&str]) -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn cached_handles_count_into_the_series_a_lookup_would() {
        let mut registry = Registry::default();
        let m = RouteMetrics::register(&mut registry);
        let (parent, other_parent, route) = (meta("a"), meta("b"), meta("r"));
        let handles = Handles::default();
        let labels = RouteLabels::new(&Resource::of(&parent), &Resource::of(&route), String::new());
        // More statuses than are kept, an error, and the same route under another parent.
        let statuses = (200..200 + crate::metrics::OUTCOMES as u16 + 3).map(|c| StatusCode::from_u16(c).unwrap());
        for s in statuses.clone() {
            m.record_route(&handles, &labels, Duration::from_millis(1), &Ok(s));
            m.record_route(&handles, &labels, Duration::from_millis(1), &Ok(s));
        }
        m.record_route(&handles, &labels, Duration::from_millis(1), &Err("unexpected"));
        let elsewhere = RouteLabels::new(&Resource::of(&other_parent), &Resource::of(&route), String::new());
        m.record_route(&handles, &elsewhere, Duration::from_millis(1), &Ok(StatusCode::OK));
        let with_host = RouteLabels::new(&Resource::of(&parent), &Resource::of(&route), "h.example".into());
        m.record_route(&handles, &with_host, Duration::from_millis(1), &Ok(StatusCode::OK));

        let t = text(&registry);
        let statuses_metric = "outbound_http_route_request_statuses_total{";
        for s in statuses {
            let code = format!("http_status=\"{}\"", s.as_u16());
            assert_eq!(sample(&t, statuses_metric, &[&code, "parent_name=\"a\"", "hostname=\"\""]), 2, "{code}\n{t}");
        }
        assert_eq!(sample(&t, statuses_metric, &["error=\"unexpected\"", "parent_name=\"a\""]), 1);
        assert_eq!(sample(&t, statuses_metric, &["http_status=\"200\"", "parent_name=\"b\""]), 1);
        assert_eq!(sample(&t, statuses_metric, &["http_status=\"200\"", "hostname=\"h.example\""]), 1);
        let count = "outbound_http_route_request_duration_seconds_count{";
        assert_eq!(sample(&t, count, &["parent_name=\"a\"", "hostname=\"\""]), 2 * (crate::metrics::OUTCOMES as u64 + 3) + 1);
        assert_eq!(sample(&t, count, &["parent_name=\"b\""]), 1);

        // A backend's handles: requests, durations and statuses, and another backend's labels.
        let (backend, other) = (meta("be"), meta("other"));
        let bh = Handles::default();
        let bl = BackendLabels::new(labels.clone(), &Resource::of(&backend));
        for _ in 0..3 {
            m.backend_request(&bh, &bl);
            m.record_backend(&bh, &bl, Duration::from_millis(1), &Ok(StatusCode::OK));
        }
        let ol = BackendLabels::new(labels, &Resource::of(&other));
        m.backend_request(&bh, &ol);
        m.record_backend(&bh, &ol, Duration::from_millis(1), &Err("unexpected"));
        let t = text(&registry);
        assert_eq!(sample(&t, "outbound_http_route_backend_requests_total{", &["backend_name=\"be\""]), 3);
        assert_eq!(sample(&t, "outbound_http_route_backend_requests_total{", &["backend_name=\"other\""]), 1);
        assert_eq!(sample(&t, "outbound_http_route_backend_response_statuses_total{", &["backend_name=\"be\"", "http_status=\"200\""]), 3);
        assert_eq!(sample(&t, "outbound_http_route_backend_response_statuses_total{", &["backend_name=\"other\"", "error=\"unexpected\""]), 1);
        // A clone (placed under another parent, say) starts without handles.
        assert_eq!(format!("{:?}", bh.clone()), "Handles");
    }
}
