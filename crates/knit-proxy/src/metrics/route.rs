//! The route-level families of Linkerd's newer metrics (LINKERD-WIRE.md §5.3): outbound routes,
//! backends and retries, and inbound authorization, route-not-found and local rate limits.
//! Label names follow Linkerd's (`parent_*`, `route_*`, `backend_*`, `srv_*`, `authz_*`).

use crate::policy::outbound::Meta;
use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;

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
