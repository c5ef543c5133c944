//! `OutboundPolicies.Watch`: the policy for a Service port, or for an address outside the
//! cluster, filled the way Linkerd's policy controller fills it (LINKERD-WIRE.md §4.2, §13), so
//! that linkerd2-proxy accepts it as well as Knit's.
//!
//! A Service port's routes are those whose parent it is, of one kind, by the Gateway API's
//! precedence: GRPCRoutes, else HTTPRoutes, else TLSRoutes, else the oldest TCPRoute. Routes are
//! ordered by creation time then name; without any, one default route sends everything to the
//! Service itself, or to the backends of a TrafficSplit whose apex it is. Retries and timeouts
//! come from the Service's annotations, which a route's own annotations override. An opaque port
//! (`config.linkerd.io/opaque-ports`, `appProtocol: linkerd.io/opaque`, or one of the control
//! plane's default opaque ports) is never detected. Egress is in `egress.rs`.

use super::{IndexConfig, Model, SvcPort};
use crate::resources::{Accrual, BackendRef, HeaderModifier, Kind, MethodMatch, Resource, Route, RouteFilter, RouteMatch, Service, ServiceConfig};
use linkerd2_proxy_api::{
    grpc_route as grpc_api, http_route as http_api, http_types,
    meta::{metadata, Metadata, Resource as MetaResource},
    outbound::{self as api, backend, failure_accrual, proxy_protocol},
    tls_route as tls_api,
};
use std::time::Duration;

pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE_CAPACITY: u32 = 100;
const FAILFAST: Duration = Duration::from_secs(3);
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY: Duration = Duration::from_secs(10);
const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// What an outbound lookup names, once resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OutboundKey {
    Service(SvcPort),
    /// An address that is no Service's: egress (an EgressNetwork's, or the fallback), answered
    /// for the namespace of the proxy that asks.
    Addr {
        source_ns: String,
        addr: std::net::SocketAddr,
    },
}

pub fn compute(model: &Model, cfg: &IndexConfig, key: &OutboundKey) -> Option<api::OutboundPolicy> {
    match key {
        OutboundKey::Service(svc) => service(model, cfg, svc),
        OutboundKey::Addr { source_ns, addr } => super::egress::compute(model, cfg, source_ns, *addr),
    }
}

/// What routes attach to and inherit from: a Service port or an EgressNetwork port.
pub(super) struct Parent<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub ns: &'a str,
    pub port: u16,
    /// The retry and timeout annotations routes inherit.
    pub config: &'a ServiceConfig,
    /// Where a rule without backendRefs sends its traffic, and what a backendRef naming the
    /// parent itself becomes (an EgressNetwork's: the original destination).
    pub default_backend: api::Backend,
}

impl Parent<'_> {
    fn is(&self, r: &Route, p: &crate::resources::Ref) -> bool {
        let group_ok = match self.kind {
            "Service" => p.group.as_deref().is_none_or(|g| g.is_empty() || g == "core"),
            _ => p.group.as_deref() == Some(self.group),
        };
        let kind_ok = match self.kind {
            "Service" => p.kind.is_none() || p.kind_is("Service"),
            kind => p.kind_is(kind),
        };
        group_ok
            && kind_ok
            && p.name == self.name
            && p.namespace.as_deref().unwrap_or(&r.metadata.namespace) == self.ns
            && p.port.is_none_or(|port| port == self.port)
    }

    /// The routes of these kinds attached to this parent, in Linkerd's order (creation time,
    /// then name).
    pub fn routes<'m>(&self, model: &'m Model, kinds: &[Kind]) -> Vec<(Kind, &'m Route)> {
        let mut out: Vec<(Kind, &Route)> = Vec::new();
        for kind in kinds {
            out.extend(model.of_kind(*kind, None).filter_map(|res| match res {
                Resource::Route(k, r) if r.spec.parent_refs.iter().any(|p| self.is(r, p)) => Some((*k, &**r)),
                _ => None,
            }));
        }
        out.sort_by_key(|(_, r)| (r.metadata.creation_timestamp.clone().unwrap_or_default(), r.metadata.name.clone()));
        out
    }

    pub fn metadata(&self) -> Option<Metadata> {
        Some(resource(self.group, self.kind, self.name, self.ns, self.port))
    }
}

/// The routes of a parent, of the one kind that applies.
pub(super) enum Routes<'m> {
    Grpc(Vec<&'m Route>),
    Http(Vec<(Kind, &'m Route)>),
    Tls(Vec<&'m Route>),
    Tcp(&'m Route),
    None,
}

impl<'m> Routes<'m> {
    /// gRPC beats HTTP beats TLS beats TCP; of TCPRoutes, the oldest.
    pub fn of(model: &'m Model, parent: &Parent<'_>) -> Self {
        let only = |kinds: &[Kind]| parent.routes(model, kinds).into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        let grpc = only(&[Kind::GrpcRoute]);
        if !grpc.is_empty() {
            return Self::Grpc(grpc);
        }
        let http = parent.routes(model, &[Kind::HttpRoute, Kind::PolicyHttpRoute]);
        if !http.is_empty() {
            return Self::Http(http);
        }
        let tls = only(&[Kind::TlsRoute]);
        if !tls.is_empty() {
            return Self::Tls(tls);
        }
        match only(&[Kind::TcpRoute]).first() {
            Some(tcp) => Self::Tcp(tcp),
            None => Self::None,
        }
    }
}

fn service(model: &Model, cfg: &IndexConfig, key: &SvcPort) -> Option<api::OutboundPolicy> {
    let svc = model.service(&key.ns, &key.name)?;
    let metadata = Some(resource("core", "Service", &key.name, &key.ns, key.port));
    let Some(port) = svc.spec.ports.iter().find(|p| p.port == key.port) else {
        // Linkerd: a port the Service does not define is refused, opaquely.
        let forbidden = api::opaque_route::Filter { kind: Some(api::opaque_route::filter::Kind::Forbidden(Default::default())) };
        return Some(api::OutboundPolicy { metadata, protocol: Some(opaque(opaque_route(default_meta("opaq"), vec![forbidden], None))) });
    };
    let app_protocol = port.app_protocol.as_deref().unwrap_or("");
    let opaque_port = cfg.is_opaque(svc, key.port);
    let default_backend = service_backend(model, cfg, &key.ns, &key.name, key.port, opaque_port);
    let parent =
        Parent { group: "core", kind: "Service", name: &key.name, ns: &key.ns, port: key.port, config: &svc.config, default_backend: default_backend.clone() };
    let routes = Routes::of(model, &parent);
    if opaque_port {
        let route = match routes {
            Routes::Tcp(r) => tcp_route(model, cfg, &parent, r),
            _ => opaque_route(default_meta("opaq"), Vec::new(), Some(default_backend)),
        };
        return Some(api::OutboundPolicy { metadata, protocol: Some(opaque(route)) });
    }
    let accrual = svc.config.accrual.as_ref().map(failure_accrual);
    let http: Vec<api::HttpRoute> = match &routes {
        Routes::Http(http_routes) => http_routes.iter().map(|(kind, r)| http_route(model, cfg, &parent, *kind, r)).collect(),
        _ => vec![default_route(model, cfg, svc, key, default_backend.clone())],
    };
    let kind = match (routes, app_protocol) {
        (Routes::Grpc(grpc), _) => {
            let routes = grpc.iter().map(|r| grpc_route(model, cfg, &parent, r)).collect();
            proxy_protocol::Kind::Grpc(proxy_protocol::Grpc { routes, failure_accrual: accrual })
        }
        (Routes::Tls(tls), _) => proxy_protocol::Kind::Tls(proxy_protocol::Tls { routes: tls.iter().map(|r| tls_route(model, cfg, &parent, r)).collect() }),
        (Routes::Tcp(tcp), _) => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque { routes: vec![tcp_route(model, cfg, &parent, tcp)] }),
        (_, "http") => proxy_protocol::Kind::Http1(proxy_protocol::Http1 { routes: http, failure_accrual: accrual }),
        (_, "kubernetes.io/h2c") => proxy_protocol::Kind::Http2(proxy_protocol::Http2 { routes: http, failure_accrual: accrual }),
        _ => proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(duration(DETECT_TIMEOUT)),
            opaque: Some(proxy_protocol::Opaque { routes: vec![opaque_route(default_meta("opaq"), Vec::new(), Some(default_backend))] }),
            http1: Some(proxy_protocol::Http1 { routes: http.clone(), failure_accrual: accrual }),
            http2: Some(proxy_protocol::Http2 { routes: http, failure_accrual: accrual }),
        }),
    };
    Some(api::OutboundPolicy { metadata, protocol: Some(api::ProxyProtocol { kind: Some(kind) }) })
}

pub fn resource(group: &str, kind: &str, name: &str, ns: &str, port: u16) -> Metadata {
    let r = MetaResource { group: group.into(), kind: kind.into(), name: name.into(), namespace: ns.into(), section: String::new(), port: port.into() };
    Metadata { kind: Some(metadata::Kind::Resource(r)) }
}

pub(super) fn default_meta(name: &str) -> Option<Metadata> {
    Some(Metadata { kind: Some(metadata::Kind::Default(name.into())) })
}

pub(super) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// Linkerd's `Default("http")` route, matching every path, with the Service's retries and
/// timeouts; its backends are a TrafficSplit's when the Service is one's apex.
fn default_route(model: &Model, cfg: &IndexConfig, svc: &Service, key: &SvcPort, default_backend: api::Backend) -> api::HttpRoute {
    let split = model.of_kind(Kind::TrafficSplit, Some(&key.ns)).find_map(|r| match r {
        Resource::TrafficSplit(t) if t.spec.service == key.name => Some(t),
        _ => None,
    });
    let backends = match split {
        Some(t) => random(t.spec.backends.iter().map(|b| (route_backend(model, cfg, &key.ns, &b.service, key.port, &[]), b.weight)).collect()),
        None => first_available(default_backend),
    };
    let rule = api::http_route::Rule {
        matches: vec![prefix_match("/")],
        backends: Some(backends),
        timeouts: Some(timeouts(&svc.config, &ServiceConfig::default(), None)),
        retry: retry(&svc.config, &ServiceConfig::default()),
        ..Default::default()
    };
    api::HttpRoute { metadata: default_meta("http"), hosts: Vec::new(), rules: vec![rule] }
}

pub(super) fn http_route(model: &Model, cfg: &IndexConfig, parent: &Parent<'_>, kind: Kind, r: &Route) -> api::HttpRoute {
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            let matches = if rule.matches.is_empty() { vec![prefix_match("/")] } else { rule.matches.iter().map(http_match).collect() };
            let request = rule.timeouts.as_ref().and_then(|t| t.request.as_deref()).and_then(|t| knit_core::parse::duration(t).ok()).filter(|d| !d.is_zero());
            api::http_route::Rule {
                matches,
                filters: rule.filters.iter().filter_map(http_filter).map(|k| api::http_route::Filter { kind: Some(k) }).collect(),
                backends: Some(backends(model, cfg, &r.metadata.namespace, parent, &rule.backend_refs)),
                timeouts: Some(timeouts(parent.config, &r.config, request)),
                retry: retry(parent.config, &r.config),
                ..Default::default()
            }
        })
        .collect();
    api::HttpRoute { metadata: Some(resource(kind.group(), "HTTPRoute", &r.metadata.name, &r.metadata.namespace, 0)), hosts: hosts(&r.spec.hostnames), rules }
}

pub(super) fn grpc_route(model: &Model, cfg: &IndexConfig, parent: &Parent<'_>, r: &Route) -> api::GrpcRoute {
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            let matches = rule
                .matches
                .iter()
                .map(|m| grpc_api::GrpcRouteMatch {
                    rpc: match &m.method {
                        Some(MethodMatch::Grpc(g)) => {
                            Some(grpc_api::GrpcRpcMatch { service: g.service.clone().unwrap_or_default(), method: g.method.clone().unwrap_or_default() })
                        }
                        _ => None,
                    },
                    headers: m.headers.iter().map(header_match).collect(),
                })
                .collect();
            let filters = rule
                .filters
                .iter()
                .filter_map(|f| match (f.kind.as_str(), &f.request_header_modifier) {
                    ("RequestHeaderModifier", Some(m)) => {
                        Some(api::grpc_route::Filter { kind: Some(api::grpc_route::filter::Kind::RequestHeaderModifier(request_headers(m))) })
                    }
                    _ => None,
                })
                .collect();
            let backends = grpc_backends(backends(model, cfg, &r.metadata.namespace, parent, &rule.backend_refs));
            let t = timeouts(parent.config, &r.config, None);
            let retry = r.config.retry.as_ref().or(parent.config.retry.as_ref()).filter(|c| !c.grpc.is_empty()).map(|c| api::grpc_route::Retry {
                max_retries: c.limit,
                max_request_bytes: MAX_REQUEST_BYTES,
                conditions: Some(api::grpc_route::retry::Conditions {
                    cancelled: c.grpc.contains("cancelled"),
                    deadine_exceeded: c.grpc.contains("deadline-exceeded"),
                    resource_exhausted: c.grpc.contains("resource-exhausted"),
                    internal: c.grpc.contains("internal"),
                    unavailable: c.grpc.contains("unavailable"),
                }),
                timeout: c.timeout.map(duration),
                backoff: Some(retry_backoff()),
            });
            api::grpc_route::Rule { matches, filters, backends: Some(backends), timeouts: Some(t), retry, ..Default::default() }
        })
        .collect();
    api::GrpcRoute {
        metadata: Some(resource(Kind::GrpcRoute.group(), "GRPCRoute", &r.metadata.name, &r.metadata.namespace, 0)),
        hosts: hosts(&r.spec.hostnames),
        rules,
    }
}

/// The one rule (validation guarantees one) of a TCPRoute or a TLSRoute: its backends by weight,
/// or the parent's own backend when it names none. The two APIs' types are alike but distinct,
/// so `$api` names the module (`opaque_route` or `tls_route`).
macro_rules! single_rule {
    ($api:ident, $model:expr, $cfg:expr, $parent:expr, $r:expr) => {{
        use api::$api::{distribution, filter, Distribution, Filter, RouteBackend, Rule, WeightedRouteBackend};
        let (model, cfg, parent, r): (&Model, &IndexConfig, &Parent<'_>, &Route) = ($model, $cfg, $parent, $r);
        let refs = r.spec.rules.first().map_or(&[][..], |rule| &rule.backend_refs[..]);
        let invalid = |message: String| Filter { kind: Some(filter::Kind::Invalid(linkerd2_proxy_api::opaque_route::Invalid { message })) };
        let kind = if refs.is_empty() {
            distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                backends: vec![RouteBackend { backend: Some(parent.default_backend.clone()), filters: Vec::new() }],
            })
        } else {
            let backends = refs
                .iter()
                .map(|b| {
                    let (backend, problem) = opaque_backend(model, cfg, &r.metadata.namespace, parent, b);
                    WeightedRouteBackend {
                        backend: Some(RouteBackend { backend: Some(backend), filters: problem.into_iter().map(invalid).collect() }),
                        weight: b.weight,
                    }
                })
                .collect();
            distribution::Kind::RandomAvailable(distribution::RandomAvailable { backends })
        };
        Rule { backends: Some(Distribution { kind: Some(kind) }), filters: Vec::new() }
    }};
}

/// A TCPRoute: its one rule's backends by weight.
pub(super) fn tcp_route(model: &Model, cfg: &IndexConfig, parent: &Parent<'_>, r: &Route) -> api::OpaqueRoute {
    api::OpaqueRoute {
        metadata: Some(resource(Kind::TcpRoute.group(), "TCPRoute", &r.metadata.name, &r.metadata.namespace, 0)),
        rules: vec![single_rule!(opaque_route, model, cfg, parent, r)],
    }
}

/// A TLSRoute: its hostnames are the SNIs it serves; its one rule's backends by weight.
pub(super) fn tls_route(model: &Model, cfg: &IndexConfig, parent: &Parent<'_>, r: &Route) -> api::TlsRoute {
    api::TlsRoute {
        metadata: Some(resource(Kind::TlsRoute.group(), "TLSRoute", &r.metadata.name, &r.metadata.namespace, 0)),
        snis: snis(&r.spec.hostnames),
        rules: vec![single_rule!(tls_route, model, cfg, parent, r)],
    }
}

pub(super) fn snis(hostnames: &[String]) -> Vec<tls_api::SniMatch> {
    use tls_api::sni_match::{Match, Suffix};
    hostnames
        .iter()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            let m = match h.strip_prefix("*.") {
                Some(suffix) => Match::Suffix(Suffix { reverse_labels: suffix.split('.').rev().map(str::to_string).collect() }),
                None => Match::Exact(h),
            };
            tls_api::SniMatch { r#match: Some(m) }
        })
        .collect()
}

/// The backend a backendRef of an opaque or TLS route names, and why it cannot be used, if so.
fn opaque_backend(model: &Model, cfg: &IndexConfig, route_ns: &str, parent: &Parent<'_>, b: &BackendRef) -> (api::Backend, Option<String>) {
    match BackendTarget::of(b, route_ns, parent) {
        BackendTarget::Parent => (parent.default_backend.clone(), None),
        BackendTarget::Service(ns) => {
            let backend = service_backend(model, cfg, ns, &b.name, b.port.unwrap_or(parent.port), true);
            let problem = backend.kind.is_none().then(|| format!("Service {ns}/{} not found", b.name));
            (backend, problem)
        }
        BackendTarget::Invalid(why) => (api::Backend { metadata: parent.metadata(), queue: Some(queue()), kind: None }, Some(why)),
    }
}

/// What a backendRef names.
enum BackendTarget<'a> {
    /// A Service, in this namespace.
    Service(&'a str),
    /// The parent EgressNetwork itself: the connection's original destination.
    Parent,
    Invalid(String),
}

impl<'a> BackendTarget<'a> {
    fn of(b: &'a BackendRef, route_ns: &'a str, parent: &Parent<'_>) -> Self {
        let ns = b.namespace.as_deref().unwrap_or(route_ns);
        let kind = b.kind.as_deref().unwrap_or("Service");
        match kind {
            "Service" if b.group.as_deref().is_none_or(|g| g.is_empty() || g == "core") => Self::Service(ns),
            "EgressNetwork" if parent.kind == "EgressNetwork" && b.name == parent.name && ns == parent.ns => Self::Parent,
            "EgressNetwork" => {
                Self::Invalid(format!("backend EgressNetwork {ns}/{}: a route may send traffic only to its own EgressNetwork, or to a Service", b.name))
            }
            other => Self::Invalid(format!("backend {other} {ns}/{}: expected a Service or the route's EgressNetwork", b.name)),
        }
    }
}

/// HTTP distributions and gRPC ones have the same shape in different message types.
fn grpc_backends(d: api::http_route::Distribution) -> api::grpc_route::Distribution {
    use api::{grpc_route as g, http_route::distribution::Kind as H};
    let rb = |b: api::http_route::RouteBackend| g::RouteBackend {
        backend: b.backend,
        filters: b
            .filters
            .into_iter()
            .filter_map(|f| match f.kind {
                Some(api::http_route::filter::Kind::FailureInjector(fi)) => Some(g::Filter {
                    kind: Some(g::filter::Kind::FailureInjector(grpc_api::GrpcFailureInjector { code: 14, message: fi.message, ratio: fi.ratio })),
                }),
                _ => None,
            })
            .collect(),
        ..Default::default()
    };
    let kind = match d.kind {
        Some(H::FirstAvailable(f)) => {
            g::distribution::Kind::FirstAvailable(g::distribution::FirstAvailable { backends: f.backends.into_iter().map(rb).collect() })
        }
        Some(H::RandomAvailable(r)) => g::distribution::Kind::RandomAvailable(g::distribution::RandomAvailable {
            backends: r.backends.into_iter().map(|w| g::WeightedRouteBackend { backend: w.backend.map(rb), weight: w.weight }).collect(),
        }),
        _ => g::distribution::Kind::Empty(g::distribution::Empty {}),
    };
    g::Distribution { kind: Some(kind) }
}

fn backends(model: &Model, cfg: &IndexConfig, route_ns: &str, parent: &Parent<'_>, refs: &[BackendRef]) -> api::http_route::Distribution {
    if refs.is_empty() {
        return first_available(parent.default_backend.clone());
    }
    random(
        refs.iter()
            .map(|b| {
                let rb = match BackendTarget::of(b, route_ns, parent) {
                    BackendTarget::Service(ns) => route_backend(model, cfg, ns, &b.name, b.port.unwrap_or(parent.port), &b.filters),
                    BackendTarget::Parent => {
                        let filters = b.filters.iter().filter_map(http_filter).map(|k| api::http_route::Filter { kind: Some(k) }).collect();
                        api::http_route::RouteBackend { backend: Some(parent.default_backend.clone()), filters, ..Default::default() }
                    }
                    BackendTarget::Invalid(message) => {
                        let backend = api::Backend { metadata: parent.metadata(), queue: Some(queue()), kind: None };
                        api::http_route::RouteBackend { backend: Some(backend), filters: vec![failure_500(message)], ..Default::default() }
                    }
                };
                (rb, b.weight)
            })
            .collect(),
    )
}

fn failure_500(message: String) -> api::http_route::Filter {
    let fi = http_api::HttpFailureInjector { status: 500, message, ratio: Some(http_api::Ratio { numerator: 1, denominator: 1 }) };
    api::http_route::Filter { kind: Some(api::http_route::filter::Kind::FailureInjector(fi)) }
}

pub(super) fn first_available(b: api::Backend) -> api::http_route::Distribution {
    let rb = api::http_route::RouteBackend { backend: Some(b), ..Default::default() };
    api::http_route::Distribution {
        kind: Some(api::http_route::distribution::Kind::FirstAvailable(api::http_route::distribution::FirstAvailable { backends: vec![rb] })),
    }
}

fn random(backends: Vec<(api::http_route::RouteBackend, u32)>) -> api::http_route::Distribution {
    let backends = backends.into_iter().map(|(b, weight)| api::http_route::WeightedRouteBackend { backend: Some(b), weight }).collect();
    api::http_route::Distribution {
        kind: Some(api::http_route::distribution::Kind::RandomAvailable(api::http_route::distribution::RandomAvailable { backends })),
    }
}

/// A backend Service; one that does not exist fails its requests with 500, as Linkerd does.
fn route_backend(model: &Model, cfg: &IndexConfig, ns: &str, name: &str, port: u16, filters: &[RouteFilter]) -> api::http_route::RouteBackend {
    let backend = service_backend(model, cfg, ns, name, port, false);
    let mut filters: Vec<api::http_route::Filter> = filters.iter().filter_map(http_filter).map(|k| api::http_route::Filter { kind: Some(k) }).collect();
    if backend.kind.is_none() {
        filters.push(failure_500(format!("Service {ns}/{name} not found")));
    }
    api::http_route::RouteBackend { backend: Some(backend), filters, ..Default::default() }
}

pub(super) fn queue() -> api::Queue {
    api::Queue { capacity: QUEUE_CAPACITY, failfast_timeout: Some(duration(FAILFAST)) }
}

fn service_backend(model: &Model, cfg: &IndexConfig, ns: &str, name: &str, port: u16, opaque: bool) -> api::Backend {
    let metadata = Some(resource("core", "Service", name, ns, port));
    let queue = Some(queue());
    let Some(svc) = model.service(ns, name) else { return api::Backend { metadata, queue, kind: None } };
    let load = match &svc.config.penalty {
        // Opaque balancers cannot see responses, so they keep plain PeakEWMA (§8.2).
        Some(p) if !opaque => backend::balance_p2c::Load::PenaltyPeakEwma(backend::balance_p2c::PenaltyPeakEwma {
            default_rtt: Some(duration(DEFAULT_RTT)),
            decay: Some(duration(DECAY)),
            penalty: Some(duration(p.penalty)),
            max_retry_after: Some(duration(p.max_retry_after)),
            penalty_decay: Some(duration(DECAY)),
        }),
        _ => backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma { default_rtt: Some(duration(DEFAULT_RTT)), decay: Some(duration(DECAY)) }),
    };
    let path = cfg.authority(&SvcPort { ns: ns.into(), name: name.into(), port });
    let discovery = backend::EndpointDiscovery { kind: Some(backend::endpoint_discovery::Kind::Dst(backend::endpoint_discovery::DestinationGet { path })) };
    api::Backend { metadata, queue, kind: Some(backend::Kind::Balancer(backend::BalanceP2c { discovery: Some(discovery), load: Some(load) })) }
}

pub(super) fn opaque(route: api::OpaqueRoute) -> api::ProxyProtocol {
    api::ProxyProtocol { kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque { routes: vec![route] })) }
}

/// A route of one rule: `backend` (none: no backends) and `filters`.
pub(super) fn opaque_route(metadata: Option<Metadata>, filters: Vec<api::opaque_route::Filter>, backend: Option<api::Backend>) -> api::OpaqueRoute {
    use api::opaque_route::{distribution, Distribution, RouteBackend};
    let backends = match backend {
        Some(b) => distribution::Kind::FirstAvailable(distribution::FirstAvailable { backends: vec![RouteBackend { backend: Some(b), filters: Vec::new() }] }),
        None => distribution::Kind::Empty(distribution::Empty {}),
    };
    let rule = api::opaque_route::Rule { backends: Some(Distribution { kind: Some(backends) }), filters };
    api::OpaqueRoute { metadata, rules: vec![rule] }
}

pub(super) fn timeouts(svc: &ServiceConfig, route: &ServiceConfig, rule_request: Option<Duration>) -> http_api::Timeouts {
    let t = |r: Option<Duration>, s: Option<Duration>| r.or(s).map(duration);
    http_api::Timeouts {
        request: t(route.timeouts.request, rule_request.or(svc.timeouts.request)),
        response: t(route.timeouts.response, svc.timeouts.response),
        idle: t(route.timeouts.idle, svc.timeouts.idle),
    }
}

pub(super) fn retry(svc: &ServiceConfig, route: &ServiceConfig) -> Option<api::http_route::Retry> {
    let c = route.retry.as_ref().or(svc.retry.as_ref()).filter(|c| !c.http.is_empty())?;
    let status_ranges =
        c.http.iter().map(|(start, end)| api::http_route::retry::conditions::StatusRange { start: (*start).into(), end: (*end).into() }).collect();
    Some(api::http_route::Retry {
        max_retries: c.limit,
        max_request_bytes: MAX_REQUEST_BYTES,
        conditions: Some(api::http_route::retry::Conditions { status_ranges }),
        timeout: c.timeout.map(duration),
        backoff: Some(retry_backoff()),
    })
}

/// Linkerd always sends 25 ms to 250 ms with full jitter.
fn retry_backoff() -> api::ExponentialBackoff {
    api::ExponentialBackoff {
        min_backoff: Some(duration(Duration::from_millis(25))),
        max_backoff: Some(duration(Duration::from_millis(250))),
        jitter_ratio: 1.0,
        respect_retry_after_hint: false,
    }
}

fn failure_accrual(a: &Accrual) -> api::FailureAccrual {
    let backoff = |min: Duration, max: Duration, jitter: f32| {
        Some(api::ExponentialBackoff {
            min_backoff: Some(duration(min)),
            max_backoff: Some(duration(max)),
            jitter_ratio: jitter,
            respect_retry_after_hint: false,
        })
    };
    let kind = match a {
        Accrual::Consecutive { max_failures, min_penalty, max_penalty, jitter } => {
            failure_accrual::Kind::ConsecutiveFailures(failure_accrual::ConsecutiveFailures {
                max_failures: *max_failures,
                backoff: backoff(*min_penalty, *max_penalty, *jitter),
            })
        }
        Accrual::Unified { threshold, window, min_requests, max_failures, min_penalty, max_penalty, jitter } => {
            failure_accrual::Kind::Unified(failure_accrual::Unified {
                success_rate_threshold: *threshold,
                decay: Some(duration(*window)),
                min_requests: *min_requests,
                max_consecutive_failures: *max_failures,
                backoff: backoff(*min_penalty, *max_penalty, *jitter),
            })
        }
    };
    api::FailureAccrual { ejection: None, kind: Some(kind) }
}

pub fn hosts(hostnames: &[String]) -> Vec<http_api::HostMatch> {
    use http_api::host_match::{Match, Suffix};
    hostnames
        .iter()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            let m = match h.strip_prefix("*.") {
                Some(suffix) => Match::Suffix(Suffix { reverse_labels: suffix.split('.').rev().map(str::to_string).collect() }),
                None => Match::Exact(h),
            };
            http_api::HostMatch { r#match: Some(m) }
        })
        .collect()
}

pub(super) fn prefix_match(prefix: &str) -> http_api::HttpRouteMatch {
    http_api::HttpRouteMatch { path: Some(http_api::PathMatch { kind: Some(http_api::path_match::Kind::Prefix(prefix.into())) }), ..Default::default() }
}

pub fn http_match(m: &RouteMatch) -> http_api::HttpRouteMatch {
    use http_api::path_match::Kind as P;
    let path = m.path.as_ref().map(|p| {
        let kind = match p.kind.as_str() {
            "Exact" => P::Exact(p.value.clone()),
            "RegularExpression" => P::Regex(p.value.clone()),
            _ => P::Prefix(p.value.clone()),
        };
        http_api::PathMatch { kind: Some(kind) }
    });
    let query_params = m
        .query_params
        .iter()
        .map(|q| {
            use http_api::query_param_match::Value;
            let value = if q.kind == "RegularExpression" { Value::Regex(q.value.clone()) } else { Value::Exact(q.value.clone()) };
            http_api::QueryParamMatch { name: q.name.clone(), value: Some(value) }
        })
        .collect();
    let method = match &m.method {
        Some(MethodMatch::Http(name)) => http::Method::from_bytes(name.as_bytes()).ok().map(http_types::HttpMethod::from),
        _ => None,
    };
    http_api::HttpRouteMatch { path, headers: m.headers.iter().map(header_match).collect(), query_params, method }
}

fn header_match(h: &crate::resources::ValueMatch) -> http_api::HeaderMatch {
    use http_api::header_match::Value;
    let value = if h.kind == "RegularExpression" { Value::Regex(h.value.clone()) } else { Value::Exact(h.value.clone().into_bytes()) };
    http_api::HeaderMatch { name: h.name.to_ascii_lowercase(), value: Some(value) }
}

fn headers(list: &[crate::resources::Header]) -> Option<http_types::Headers> {
    let headers = list.iter().map(|h| http_types::headers::Header { name: h.name.to_ascii_lowercase(), value: h.value.clone().into_bytes() }).collect();
    Some(http_types::Headers { headers })
}

pub fn request_headers(m: &HeaderModifier) -> http_api::RequestHeaderModifier {
    http_api::RequestHeaderModifier { add: headers(&m.add), set: headers(&m.set), remove: m.remove.clone() }
}

pub fn redirect(f: &RouteFilter) -> Option<http_api::RequestRedirect> {
    let r = f.request_redirect.as_ref()?;
    let scheme = r.scheme.as_deref().map(|s| {
        let registered = if s == "https" { http_types::scheme::Registered::Https } else { http_types::scheme::Registered::Http };
        http_types::Scheme { r#type: Some(http_types::scheme::Type::Registered(registered as i32)) }
    });
    let path = r.path.as_ref().and_then(|p| {
        use http_api::path_modifier::Replace;
        let replace = match p.kind.as_str() {
            "ReplaceFullPath" => Replace::Full(p.replace_full_path.clone()?),
            _ => Replace::Prefix(p.replace_prefix_match.clone()?),
        };
        Some(http_api::PathModifier { replace: Some(replace) })
    });
    Some(http_api::RequestRedirect {
        scheme,
        host: r.hostname.clone().unwrap_or_default(),
        path,
        port: r.port.map_or(0, u32::from),
        status: u32::from(r.status_code.unwrap_or(302)),
    })
}

pub(super) fn http_filter(f: &RouteFilter) -> Option<api::http_route::filter::Kind> {
    use api::http_route::filter::Kind as F;
    match f.kind.as_str() {
        "RequestHeaderModifier" => f.request_header_modifier.as_ref().map(|m| F::RequestHeaderModifier(request_headers(m))),
        "ResponseHeaderModifier" => f
            .response_header_modifier
            .as_ref()
            .map(|m| F::ResponseHeaderModifier(http_api::ResponseHeaderModifier { add: headers(&m.add), set: headers(&m.set), remove: m.remove.clone() })),
        "RequestRedirect" => redirect(f).map(F::Redirect),
        _ => None,
    }
}
