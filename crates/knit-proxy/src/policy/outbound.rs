//! Outbound client policy: what the control plane says about a destination (LINKERD-WIRE.md
//! §4.2), as plain data the request path decides on.
//!
//! An [`OutboundPolicy`] names the destination's resource ([`Meta`]) and its [`Protocol`]: HTTP
//! routes ([`HttpPolicy`]: routes → rules → filters and weighted backends) or opaque/TLS routes
//! ([`OpaquePolicy`]). A backend ([`Backend`]) is a load-balanced service discovered by path, a
//! single forwarded endpoint, or a failure.
//!
//! Conversion from `linkerd2_proxy_api::outbound::OutboundPolicy` (in `convert`) validates as
//! Linkerd's proxy does (`ClientPolicy::try_from`), and rejects the message with an
//! [`InvalidPolicy`] naming the offending field's path, so the whole destination fails loudly
//! rather than half-working. [`endpoint`] is the one conversion of a discovered address.

mod convert;

pub use convert::endpoint;
pub(in crate::policy) use convert::{each, header_modifier, hosts, meta, path_prefixes, ratio, redirect, status};

use crate::{
    retry::{Backoff, RetryPolicy},
    route::{self, HostMatch, RouteMatch},
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use knit_core::destination::Endpoint;
use std::{sync::Arc, time::Duration};

#[cfg(test)]
mod tests;

#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    /// The destination's resource, e.g. a Service's port.
    pub meta: Arc<Meta>,
    pub protocol: Protocol,
    /// A Service's logical `name.ns.svc.DOMAIN:port`: the `authority` label of traffic sent to
    /// it by address, as LINKERD-WIRE.md §5 has it (the name the request used wins).
    pub authority: Option<knit_core::destination::Authority>,
}

/// What a policy object is: a default the control plane made up, or a (Kubernetes) resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Meta {
    Default(String),
    /// `port` 0 and empty strings mean unset, as on the wire.
    Resource {
        group: String,
        kind: String,
        name: String,
        namespace: String,
        section: String,
        port: u16,
    },
}

/// How the destination's traffic is handled.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// Detect HTTP within `timeout`; what is not HTTP is opaque.
    Detect {
        timeout: Duration,
        opaque: OpaquePolicy,
        http1: HttpPolicy,
        http2: HttpPolicy,
    },
    Http1(HttpPolicy),
    Http2(HttpPolicy),
    Grpc(HttpPolicy),
    Opaque(OpaquePolicy),
    Tls(OpaquePolicy),
}

#[derive(Clone, Debug)]
pub struct HttpPolicy {
    /// Shared, so a request path can hold the routes while the policy is replaced.
    pub routes: Arc<[HttpRoute]>,
    /// `None`: endpoints are never ejected.
    pub failure_accrual: Option<FailureAccrual>,
}

/// An HTTPRoute or GRPCRoute (whose matches are converted to path matches).
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub meta: Arc<Meta>,
    /// Empty: any host.
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<Rule>,
    /// Its metric handles, resolved on its first request.
    pub metrics: crate::metrics::route::Handles,
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// Empty: every request.
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Distribution,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    /// Whether `l5d-retry-*` and `l5d-*-timeout` request headers may override retries and timeouts.
    pub allow_l5d_request_headers: bool,
}

/// A zero duration on the wire means unset, and is `None` here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries included. Falls back to the deprecated `requestTimeout`.
    pub request: Option<Duration>,
    /// From the end of the request to the end of the response, per attempt.
    pub response: Option<Duration>,
    /// A stream with no frames for this long is cancelled.
    pub idle: Option<Duration>,
}

#[derive(Clone, Debug)]
pub enum Filter {
    /// Answers `numerator / denominator` of requests with `status` (and `message` in
    /// `l5d-proxy-error`) instead of sending them.
    FailureInjector {
        status: StatusCode,
        message: String,
        numerator: u32,
        denominator: u32,
    },
    /// As `FailureInjector`, for gRPC routes: an HTTP 200 with `grpc-status: code`.
    GrpcFailureInjector {
        code: u32,
        message: String,
        numerator: u32,
        denominator: u32,
    },
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    /// Answers with a redirect; unset parts of `location` come from the request.
    Redirect {
        scheme: Option<http::uri::Scheme>,
        host: Option<String>,
        path: Option<PathModifier>,
        port: Option<u16>,
        status: StatusCode,
    },
    /// The control plane marked the route invalid (opaque `Invalid`), or this proxy cannot honour
    /// a filter (a prefix rewrite on a rule without prefix matches): requests fail with this reason.
    InternalError(String),
    /// Traffic to this destination is not allowed (an undefined Service port).
    Forbidden,
}

/// Header changes, applied in order: additions, then sets, then removals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderModifier {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A redirect's new path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    /// Gateway API `ReplacePrefixMatch`: the part of the path that the rule's prefix match matched
    /// is replaced. `matched` holds the rule's path prefixes (as [`route::PathMatch::Prefix`]
    /// stores them), so the request's own match is the longest of them that matches its path.
    Prefix {
        replacement: String,
        matched: Vec<String>,
    },
}

impl PathModifier {
    /// The redirect's path for a request's `path`. A path that none of the rule's prefixes
    /// matches (the rule matched it some other way) is kept as it is.
    pub fn apply(&self, path: &str) -> String {
        let (replacement, matched) = match self {
            Self::Full(p) => return p.clone(),
            Self::Prefix { replacement, matched } => (replacement, matched),
        };
        let prefix = matched.iter().filter(|p| route::PathMatch::Prefix(p.to_string()).score(path).is_some()).max_by_key(|p| p.len());
        let Some(prefix) = prefix else { return path.to_string() };
        // A matching prefix is a leading part of `path` ending at a segment boundary.
        let rest = path.get(prefix.len()..).unwrap_or_default();
        let new = format!("{}{rest}", replacement.trim_end_matches('/'));
        if new.is_empty() {
            "/".to_string()
        } else {
            new
        }
    }
}

/// How a rule spreads requests over its backends.
#[derive(Clone, Debug)]
pub enum Distribution {
    /// No backends: requests fail.
    Empty,
    FirstAvailable(Vec<RouteBackend>),
    /// Weighted random; a zero weight is never picked.
    RandomAvailable(Vec<(RouteBackend, u32)>),
}

impl Distribution {
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<&RouteBackend> {
        match self {
            Self::Empty => None,
            // This proxy cannot tell which backends are available before sending, so the first.
            Self::FirstAvailable(backends) => backends.first(),
            Self::RandomAvailable(backends) => {
                let total: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
                if total == 0 {
                    return None;
                }
                let mut point = rng.u64(0..total);
                for (backend, weight) in backends {
                    match point.checked_sub(u64::from(*weight)) {
                        Some(rest) => point = rest,
                        None => return Some(backend),
                    }
                }
                None
            }
        }
    }

    pub fn backends(&self) -> impl Iterator<Item = &RouteBackend> {
        let (first, random): (&[RouteBackend], &[(RouteBackend, u32)]) = match self {
            Self::Empty => (&[], &[]),
            Self::FirstAvailable(b) => (b, &[]),
            Self::RandomAvailable(b) => (&[], b),
        };
        first.iter().chain(random.iter().map(|(b, _)| b))
    }
}

#[derive(Clone, Debug)]
pub struct RouteBackend {
    pub backend: Backend,
    /// Applied after the rule's filters, for requests sent to this backend.
    pub filters: Vec<Filter>,
    /// Its metric handles, resolved on its first request.
    pub metrics: crate::metrics::route::Handles,
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub meta: Arc<Meta>,
    /// Requests that may wait for an endpoint to become ready.
    pub queue_capacity: usize,
    /// How long the backend may have no ready endpoint before waiting requests fail.
    pub failfast: Duration,
    pub kind: BackendKind,
}

#[derive(Clone, Debug)]
pub enum BackendKind {
    /// Endpoints discovered with `Destination.Get(path)`, balanced by P2C over `load`.
    Balancer { path: String, load: Load },
    /// One endpoint.
    Forward(Endpoint),
    /// The endpoints the static destination table (`KNIT_PROXY_OUTBOUND_ENDPOINTS`) gives this
    /// authority, balanced by P2C.
    Static(knit_core::destination::Authority),
    /// A backend the control plane could not resolve: requests fail with `message`.
    Fail { message: String },
}

/// A balancer's load estimate (LINKERD-WIRE.md §8).
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    PeakEwma {
        default_rtt: Duration,
        decay: Duration,
    },
    /// PeakEwma that records `penalty` (or the server's `Retry-After`, capped at
    /// `max_retry_after`) as the latency of a failed or rate-limited response.
    PenaltyPeakEwma {
        default_rtt: Duration,
        decay: Duration,
        penalty: Duration,
        max_retry_after: Duration,
        penalty_decay: Duration,
    },
}

/// Circuit breaking per endpoint (LINKERD-WIRE.md §8.2).
#[derive(Clone, Debug, PartialEq)]
pub enum FailureAccrual {
    /// Ejects after `max_failures` consecutive failures (0: never).
    Consecutive { max_failures: u32, backoff: Backoff },
    /// Ejects after `max_consecutive_failures` consecutive 5xx (0: never), or when the success
    /// rate over `window` falls below `success_rate_threshold` (0: never) once `min_requests`
    /// responses are in.
    Unified { success_rate_threshold: f64, window: Duration, min_requests: u32, max_consecutive_failures: u32, backoff: Backoff },
}

#[derive(Clone, Debug)]
pub struct OpaquePolicy {
    /// Opaque: at most one route, as Linkerd's proxy requires. TLS: any number, chosen by SNI.
    pub routes: Vec<OpaqueRoute>,
}

impl OpaquePolicy {
    /// How an HTTP request to an opaque destination is served when it arrives as HTTP (local
    /// mode, where each request names its destination): by the opaque route's filters and
    /// backends, over one route that matches every request. `None` without a route.
    pub fn as_http(&self) -> Option<HttpPolicy> {
        let route = self.routes.first()?;
        let rule = Rule {
            matches: Vec::new(),
            filters: route.filters.clone(),
            backends: route.backends.clone(),
            timeouts: Timeouts::default(),
            retry: None,
            allow_l5d_request_headers: false,
        };
        let http = HttpRoute { meta: route.meta.clone(), hosts: Vec::new(), rules: vec![rule], metrics: Default::default() };
        Some(HttpPolicy { routes: Arc::from(vec![http]), failure_accrual: None })
    }

    /// The route for a connection whose ClientHello named `sni` (TLS), or for any connection
    /// (opaque): among routes whose SNI matches (a route without SNIs matches any), the most
    /// specific, the earlier on a tie. `None`: no route, and the connection is refused.
    pub fn route(&self, sni: Option<&str>) -> Option<&OpaqueRoute> {
        let sni = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let mut best: Option<(route::HostScore, &OpaqueRoute)> = None;
        for r in &self.routes {
            let score =
                if r.snis.is_empty() { Some(route::HostScore::Any) } else { sni.as_deref().and_then(|s| r.snis.iter().filter_map(|m| m.score(s)).max()) };
            if let Some(score) = score {
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, r));
                }
            }
        }
        best.map(|(_, r)| r)
    }
}

/// An opaque (TCPRoute) or TLS (TLSRoute) route: one rule's filters and backends.
#[derive(Clone, Debug)]
pub struct OpaqueRoute {
    pub meta: Arc<Meta>,
    /// TLS routes: the SNIs this route serves (empty: any). Always empty for opaque routes.
    pub snis: Vec<HostMatch>,
    /// Only `InternalError` and `Forbidden`.
    pub filters: Vec<Filter>,
    pub backends: Distribution,
}

/// Why a policy message was rejected: the field's path from the message root and the reason,
/// e.g. `protocol.http1.routes[0].rules[1].backends.random_available[0].backend.queue: missing`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InvalidPolicy {
    pub path: String,
    pub reason: String,
}

impl InvalidPolicy {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: field.into(), reason: reason.into() }
    }

    pub fn missing(field: impl Into<String>) -> Self {
        Self::new(field, "missing")
    }

    /// Puts the error under `parent` (a field name, possibly indexed, like `routes[2]`).
    pub fn at(mut self, parent: impl std::fmt::Display) -> Self {
        self.path = if self.path.is_empty() { parent.to_string() } else { format!("{parent}.{}", self.path) };
        self
    }
}

impl Meta {
    pub fn group(&self) -> &str {
        match self {
            Self::Default(_) => "",
            Self::Resource { group, .. } => group,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            Self::Default(_) => "default",
            Self::Resource { kind, .. } => kind,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Default(name) | Self::Resource { name, .. } => name,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Self::Default(_) => "",
            Self::Resource { namespace, .. } => namespace,
        }
    }

    /// 0 when unset.
    pub fn port(&self) -> u16 {
        match self {
            Self::Default(_) => 0,
            Self::Resource { port, .. } => *port,
        }
    }
}

impl Protocol {
    /// The HTTP policy for a request of `version`: under `Detect`, HTTP/2 requests get the
    /// `http2` policy and the rest `http1`. `None` when the destination is not HTTP.
    pub fn http(&self, version: Version) -> Option<&HttpPolicy> {
        match self {
            Self::Detect { http2, .. } if version == Version::HTTP_2 => Some(http2),
            Self::Detect { http1, .. } => Some(http1),
            Self::Http1(p) | Self::Http2(p) | Self::Grpc(p) => Some(p),
            Self::Opaque(_) | Self::Tls(_) => None,
        }
    }
}

/// Defaults of Linkerd's proxy for a destination the control plane does not know.
const FORWARD_QUEUE_CAPACITY: usize = 100;
const FORWARD_FAILFAST: Duration = Duration::from_secs(3);

impl OutboundPolicy {
    /// The policy for a destination the control plane answered `NotFound` for (or that no control
    /// plane serves): everything goes to `endpoint`, over one route that matches every request.
    /// `detect`: how long detection may wait for an HTTP preamble; `None` for an opaque port.
    pub fn forward_to(endpoint: Endpoint, detect: Option<Duration>) -> Self {
        Self::synthesized("forward", BackendKind::Forward(endpoint), detect)
    }

    /// The policy of a destination named in the static destination table: its endpoints,
    /// balanced.
    pub fn static_to(authority: knit_core::destination::Authority, detect: Option<Duration>) -> Self {
        Self::synthesized("static", BackendKind::Static(authority), detect)
    }

    fn synthesized(name: &str, kind: BackendKind, detect: Option<Duration>) -> Self {
        let meta = Arc::new(Meta::Default(name.into()));
        let backend = RouteBackend {
            backend: Backend { meta: meta.clone(), queue_capacity: FORWARD_QUEUE_CAPACITY, failfast: FORWARD_FAILFAST, kind },
            filters: Vec::new(),
            metrics: Default::default(),
        };
        let opaque = OpaquePolicy {
            routes: vec![OpaqueRoute {
                meta: meta.clone(),
                snis: Vec::new(),
                filters: Vec::new(),
                backends: Distribution::FirstAvailable(vec![backend.clone()]),
            }],
        };
        let Some(timeout) = detect else { return Self { meta, protocol: Protocol::Opaque(opaque), authority: None } };
        let rule = Rule {
            matches: Vec::new(),
            filters: Vec::new(),
            backends: Distribution::FirstAvailable(vec![backend]),
            timeouts: Timeouts::default(),
            retry: None,
            allow_l5d_request_headers: false,
        };
        let route = HttpRoute { meta: meta.clone(), hosts: Vec::new(), rules: vec![rule], metrics: Default::default() };
        let http = HttpPolicy { routes: Arc::from(vec![route]), failure_accrual: None };
        Self { meta, protocol: Protocol::Detect { timeout, opaque, http1: http.clone(), http2: http }, authority: None }
    }
}

impl route::Routes for [HttpRoute] {
    fn route_count(&self) -> usize {
        self.len()
    }

    fn hosts(&self, route: usize) -> &[HostMatch] {
        &self[route].hosts
    }

    fn rule_count(&self, route: usize) -> usize {
        self[route].rules.len()
    }

    fn matches(&self, route: usize, rule: usize) -> &[RouteMatch] {
        &self[route].rules[rule].matches
    }
}
