//! `OutboundPolicies.Watch`: the policy for a Service port, filled the way Linkerd's policy
//! controller fills it (LINKERD-WIRE.md §4.2), so that linkerd2-proxy accepts it as well as Knit's.
//!
//! Routes are the HTTPRoutes (and GRPCRoutes) whose parent is the Service, ordered by creation
//! time then name; without any, one default route sends everything to the Service itself, or to
//! the backends of a TrafficSplit whose apex it is. Retries and timeouts come from the Service's
//! annotations, which a route's own annotations override.

use super::{IndexConfig, Model, SvcPort};
use crate::resources::{Accrual, BackendRef, HeaderModifier, Kind, MethodMatch, Resource, Route, RouteFilter, RouteMatch, Service, ServiceConfig};
use linkerd2_proxy_api::{
    grpc_route as grpc_api, http_route as http_api, http_types,
    meta::{metadata, Metadata, Resource as MetaResource},
    outbound::{self as api, backend, failure_accrual, proxy_protocol},
};
use std::time::Duration;

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE_CAPACITY: u32 = 100;
const FAILFAST: Duration = Duration::from_secs(3);
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY: Duration = Duration::from_secs(10);
const MAX_REQUEST_BYTES: u32 = 64 * 1024;

pub fn compute(model: &Model, cfg: &IndexConfig, key: &SvcPort) -> Option<api::OutboundPolicy> {
    let svc = model.service(&key.ns, &key.name)?;
    let metadata = Some(resource("core", "Service", &key.name, &key.ns, key.port));
    let Some(port) = svc.spec.ports.iter().find(|p| p.port == key.port) else {
        // Linkerd: a port the Service does not define is refused, opaquely.
        return Some(api::OutboundPolicy {
            metadata,
            protocol: Some(opaque(vec![api::opaque_route::Filter { kind: Some(api::opaque_route::filter::Kind::Forbidden(Default::default())) }], None)),
        });
    };
    let app_protocol = port.app_protocol.as_deref().unwrap_or("");
    let opaque_port = svc.config.opaque_ports.contains(&key.port) || matches!(app_protocol, "linkerd.io/opaque" | "linkerd.io/tcp");
    let default_backend = service_backend(model, cfg, &key.ns, &key.name, key.port, opaque_port);
    if opaque_port {
        return Some(api::OutboundPolicy { metadata, protocol: Some(opaque(Vec::new(), Some(default_backend))) });
    }

    let (http_routes, grpc_routes) = routes(model, key);
    let accrual = svc.config.accrual.as_ref().map(failure_accrual);
    let http: Vec<api::HttpRoute> = if http_routes.is_empty() {
        vec![default_route(model, cfg, svc, key, default_backend.clone())]
    } else {
        http_routes.iter().map(|(kind, r)| http_route(model, cfg, svc, key, *kind, r, &default_backend)).collect()
    };
    let kind = match app_protocol {
        "http" => proxy_protocol::Kind::Http1(proxy_protocol::Http1 { routes: http, failure_accrual: accrual }),
        "kubernetes.io/h2c" if grpc_routes.is_empty() => proxy_protocol::Kind::Http2(proxy_protocol::Http2 { routes: http, failure_accrual: accrual }),
        _ if !grpc_routes.is_empty() => {
            let routes = grpc_routes.iter().map(|r| grpc_route(model, cfg, svc, key, r, &default_backend)).collect();
            proxy_protocol::Kind::Grpc(proxy_protocol::Grpc { routes, failure_accrual: accrual })
        }
        _ => proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(duration(DETECT_TIMEOUT)),
            opaque: Some(proxy_protocol::Opaque { routes: vec![opaque_route(Vec::new(), Some(default_backend))] }),
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

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// The routes attached to the Service port, HTTP and gRPC, in Linkerd's order.
fn routes<'m>(model: &'m Model, key: &SvcPort) -> (Vec<(Kind, &'m Route)>, Vec<&'m Route>) {
    let attached = |r: &Route| {
        r.spec.parent_refs.iter().any(|p| {
            (p.kind.is_none() || p.kind_is("Service"))
                && p.group.as_deref().is_none_or(|g| g.is_empty() || g == "core")
                && p.name == key.name
                && p.namespace.as_deref().unwrap_or(&r.metadata.namespace) == key.ns
                && p.port.is_none_or(|port| port == key.port)
        })
    };
    let order = |r: &Route| (r.metadata.creation_timestamp.clone().unwrap_or_default(), r.metadata.name.clone());
    let mut http: Vec<(Kind, &Route)> = Vec::new();
    for kind in [Kind::HttpRoute, Kind::PolicyHttpRoute] {
        http.extend(model.of_kind(kind, None).filter_map(|res| match res {
            Resource::Route(k, r) if attached(r) => Some((*k, &**r)),
            _ => None,
        }));
    }
    http.sort_by_key(|(_, r)| order(r));
    let mut grpc: Vec<&Route> = model
        .of_kind(Kind::GrpcRoute, None)
        .filter_map(|res| match res {
            Resource::Route(_, r) if attached(r) => Some(&**r),
            _ => None,
        })
        .collect();
    grpc.sort_by_key(|r| order(r));
    (http, grpc)
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
    api::HttpRoute { metadata: Some(Metadata { kind: Some(metadata::Kind::Default("http".into())) }), hosts: Vec::new(), rules: vec![rule] }
}

fn http_route(model: &Model, cfg: &IndexConfig, svc: &Service, key: &SvcPort, kind: Kind, r: &Route, default_backend: &api::Backend) -> api::HttpRoute {
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
                backends: Some(backends(model, cfg, &r.metadata.namespace, key, &rule.backend_refs, default_backend)),
                timeouts: Some(timeouts(&svc.config, &r.config, request)),
                retry: retry(&svc.config, &r.config),
                ..Default::default()
            }
        })
        .collect();
    api::HttpRoute { metadata: Some(resource(kind.group(), "HTTPRoute", &r.metadata.name, &r.metadata.namespace, 0)), hosts: hosts(&r.spec.hostnames), rules }
}

fn grpc_route(model: &Model, cfg: &IndexConfig, svc: &Service, key: &SvcPort, r: &Route, default_backend: &api::Backend) -> api::GrpcRoute {
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
            let backends = grpc_backends(backends(model, cfg, &r.metadata.namespace, key, &rule.backend_refs, default_backend));
            let t = timeouts(&svc.config, &r.config, None);
            let retry = r.config.retry.as_ref().or(svc.config.retry.as_ref()).filter(|c| !c.grpc.is_empty()).map(|c| api::grpc_route::Retry {
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

fn backends(
    model: &Model,
    cfg: &IndexConfig,
    route_ns: &str,
    key: &SvcPort,
    refs: &[BackendRef],
    default_backend: &api::Backend,
) -> api::http_route::Distribution {
    if refs.is_empty() {
        return first_available(default_backend.clone());
    }
    random(
        refs.iter()
            .map(|b| {
                let ns = b.namespace.as_deref().unwrap_or(route_ns);
                (route_backend(model, cfg, ns, &b.name, b.port.unwrap_or(key.port), &b.filters), b.weight)
            })
            .collect(),
    )
}

fn first_available(b: api::Backend) -> api::http_route::Distribution {
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
        let fi = http_api::HttpFailureInjector {
            status: 500,
            message: format!("Service {ns}/{name} not found"),
            ratio: Some(http_api::Ratio { numerator: 1, denominator: 1 }),
        };
        filters.push(api::http_route::Filter { kind: Some(api::http_route::filter::Kind::FailureInjector(fi)) });
    }
    api::http_route::RouteBackend { backend: Some(backend), filters, ..Default::default() }
}

fn service_backend(model: &Model, cfg: &IndexConfig, ns: &str, name: &str, port: u16, opaque: bool) -> api::Backend {
    let metadata = Some(resource("core", "Service", name, ns, port));
    let queue = Some(api::Queue { capacity: QUEUE_CAPACITY, failfast_timeout: Some(duration(FAILFAST)) });
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

fn opaque(filters: Vec<api::opaque_route::Filter>, backend: Option<api::Backend>) -> api::ProxyProtocol {
    api::ProxyProtocol { kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque { routes: vec![opaque_route(filters, backend)] })) }
}

fn opaque_route(filters: Vec<api::opaque_route::Filter>, backend: Option<api::Backend>) -> api::OpaqueRoute {
    use api::opaque_route::{distribution, Distribution, RouteBackend};
    let backends = match backend {
        Some(b) => distribution::Kind::FirstAvailable(distribution::FirstAvailable { backends: vec![RouteBackend { backend: Some(b), filters: Vec::new() }] }),
        None => distribution::Kind::Empty(distribution::Empty {}),
    };
    let rule = api::opaque_route::Rule { backends: Some(Distribution { kind: Some(backends) }), filters };
    api::OpaqueRoute { metadata: Some(Metadata { kind: Some(metadata::Kind::Default("opaq".into())) }), rules: vec![rule] }
}

fn timeouts(svc: &ServiceConfig, route: &ServiceConfig, rule_request: Option<Duration>) -> http_api::Timeouts {
    let t = |r: Option<Duration>, s: Option<Duration>| r.or(s).map(duration);
    http_api::Timeouts {
        request: t(route.timeouts.request, rule_request.or(svc.timeouts.request)),
        response: t(route.timeouts.response, svc.timeouts.response),
        idle: t(route.timeouts.idle, svc.timeouts.idle),
    }
}

fn retry(svc: &ServiceConfig, route: &ServiceConfig) -> Option<api::http_route::Retry> {
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

fn prefix_match(prefix: &str) -> http_api::HttpRouteMatch {
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

fn http_filter(f: &RouteFilter) -> Option<api::http_route::filter::Kind> {
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
