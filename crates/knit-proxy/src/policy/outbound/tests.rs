use super::*;
use crate::{retry::Conditions, route::RequestInfo};
use linkerd2_proxy_api::{
    destination::{self as dst, protocol_hint, tls_identity},
    grpc_route as grpc_api, http_route as http_api, http_types, meta as meta_api, net,
    outbound::{self as api, backend, proxy_protocol},
};
use std::net::{IpAddr, Ipv6Addr};

/// A protobuf duration, its type inferred from the field it fills.
fn pb<T>(d: Duration) -> Option<T>
where
    Duration: TryInto<T>,
    <Duration as TryInto<T>>::Error: std::fmt::Debug,
{
    Some(d.try_into().unwrap())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn resource(group: &str, kind: &str, name: &str, port: u32) -> Option<meta_api::Metadata> {
    Some(meta_api::Metadata {
        kind: Some(meta_api::metadata::Kind::Resource(meta_api::Resource {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "books".into(),
            section: String::new(),
            port,
        })),
    })
}

fn default_meta(name: &str) -> Option<meta_api::Metadata> {
    Some(meta_api::Metadata { kind: Some(meta_api::metadata::Kind::Default(name.into())) })
}

/// The backend Linkerd's controller makes for a Service: P2C over `Destination.Get`, PeakEwma
/// 30ms/10s, queue 100 with 3s failfast.
fn service_backend(name: &str) -> api::Backend {
    api::Backend {
        metadata: resource("core", "Service", name, 8080),
        queue: Some(api::Queue { capacity: 100, failfast_timeout: pb(Duration::from_secs(3)) }),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(backend::endpoint_discovery::DestinationGet {
                    path: format!("{name}.books.svc.cluster.local:8080"),
                })),
            }),
            load: Some(backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma { default_rtt: pb(ms(30)), decay: pb(Duration::from_secs(10)) })),
        })),
    }
}

fn first_available(b: api::Backend) -> Option<api::http_route::Distribution> {
    use api::http_route::distribution;
    let rb = api::http_route::RouteBackend { backend: Some(b), ..Default::default() };
    Some(api::http_route::Distribution { kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable { backends: vec![rb] })) })
}

fn prefix_match(p: &str) -> http_api::HttpRouteMatch {
    http_api::HttpRouteMatch { path: Some(http_api::PathMatch { kind: Some(http_api::path_match::Kind::Prefix(p.into())) }), ..Default::default() }
}

/// The route Linkerd's controller makes for a Service without HTTPRoutes.
fn default_http_route() -> api::HttpRoute {
    api::HttpRoute {
        metadata: default_meta("http"),
        hosts: vec![],
        rules: vec![api::http_route::Rule { matches: vec![prefix_match("/")], backends: first_available(service_backend("web")), ..Default::default() }],
    }
}

fn opaque_route() -> api::OpaqueRoute {
    use api::opaque_route::distribution;
    let rb = api::opaque_route::RouteBackend { backend: Some(service_backend("web")), filters: vec![] };
    api::OpaqueRoute {
        metadata: default_meta("opaq"),
        rules: vec![api::opaque_route::Rule {
            backends: Some(api::opaque_route::Distribution {
                kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable { backends: vec![rb] })),
            }),
            filters: vec![],
        }],
    }
}

/// What Linkerd's controller sends for a Service port without `appProtocol` (LINKERD-WIRE.md §4.2).
fn service_policy() -> api::OutboundPolicy {
    let http1 = proxy_protocol::Http1 { routes: vec![default_http_route()], failure_accrual: None };
    let http2 = proxy_protocol::Http2 { routes: vec![default_http_route()], failure_accrual: None };
    api::OutboundPolicy {
        metadata: resource("core", "Service", "web", 8080),
        protocol: Some(api::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: pb(Duration::from_secs(10)),
                opaque: Some(proxy_protocol::Opaque { routes: vec![opaque_route()] }),
                http1: Some(http1),
                http2: Some(http2),
            })),
        }),
    }
}

fn http1(p: &OutboundPolicy) -> &HttpPolicy {
    p.protocol.http(Version::HTTP_11).unwrap()
}

#[test]
fn converts_the_default_service_policy() {
    let p = OutboundPolicy::try_from(service_policy()).unwrap();
    assert_eq!(
        *p.meta,
        Meta::Resource { group: "core".into(), kind: "Service".into(), name: "web".into(), namespace: "books".into(), section: "".into(), port: 8080 }
    );
    let Protocol::Detect { timeout, opaque, http1, http2 } = &p.protocol else { panic!("expected detect: {:?}", p.protocol) };
    assert_eq!(*timeout, Duration::from_secs(10));
    assert_eq!(opaque.routes.len(), 1);
    assert_eq!(http2.routes.len(), 1);
    let route = &http1.routes[0];
    assert_eq!(*route.meta, Meta::Default("http".into()));
    let rule = &route.rules[0];
    assert!(matches!(&rule.matches[0].path, Some(route::PathMatch::Prefix(p)) if p.is_empty()));
    assert_eq!((rule.timeouts.clone(), rule.retry.is_none(), rule.allow_l5d_request_headers), (Timeouts::default(), true, false));
    let Distribution::FirstAvailable(backends) = &rule.backends else { panic!("{:?}", rule.backends) };
    let b = &backends[0].backend;
    assert_eq!((b.queue_capacity, b.failfast), (100, Duration::from_secs(3)));
    let BackendKind::Balancer { path, load } = &b.kind else { panic!("{:?}", b.kind) };
    assert_eq!(path, "web.books.svc.cluster.local:8080");
    assert_eq!(*load, Load::PeakEwma { default_rtt: ms(30), decay: Duration::from_secs(10) });
    assert_eq!((b.meta.kind(), b.meta.name(), b.meta.namespace(), b.meta.group()), ("Service", "web", "books", "core"));
}

/// An HTTPRoute with two weighted backendRefs, a header filter, a redirect rule, timeouts and
/// Linkerd's retry annotations.
fn httproute() -> api::HttpRoute {
    use api::http_route::{distribution, filter, Distribution as D, Filter as F, RouteBackend, WeightedRouteBackend};
    let weighted =
        |name: &str, weight| WeightedRouteBackend { backend: Some(RouteBackend { backend: Some(service_backend(name)), ..Default::default() }), weight };
    let headers = |pairs: &[(&str, &str)]| {
        Some(http_types::Headers {
            headers: pairs.iter().map(|(n, v)| http_types::headers::Header { name: n.to_string(), value: v.as_bytes().to_vec() }).collect(),
        })
    };
    let split = api::http_route::Rule {
        matches: vec![prefix_match("/api")],
        filters: vec![F {
            kind: Some(filter::Kind::RequestHeaderModifier(http_api::RequestHeaderModifier {
                add: headers(&[("x-canary", "1")]),
                set: headers(&[("x-env", "prod")]),
                remove: vec!["x-debug".into()],
            })),
        }],
        backends: Some(D {
            kind: Some(distribution::Kind::RandomAvailable(distribution::RandomAvailable { backends: vec![weighted("web-v1", 90), weighted("web-v2", 10)] })),
        }),
        timeouts: Some(http_api::Timeouts { request: pb(Duration::from_secs(5)), response: pb(Duration::from_secs(1)), idle: None }),
        retry: Some(api::http_route::Retry {
            max_retries: 3,
            max_request_bytes: 65_536,
            conditions: Some(api::http_route::retry::Conditions {
                status_ranges: vec![api::http_route::retry::conditions::StatusRange { start: 500, end: 599 }],
            }),
            timeout: None,
            backoff: Some(api::ExponentialBackoff { min_backoff: pb(ms(25)), max_backoff: pb(ms(250)), jitter_ratio: 1.0, respect_retry_after_hint: false }),
        }),
        allow_l5d_request_headers: true,
        ..Default::default()
    };
    let redirect = api::http_route::Rule {
        matches: vec![prefix_match("/old/")],
        filters: vec![F {
            kind: Some(filter::Kind::Redirect(http_api::RequestRedirect {
                scheme: Some(http_types::Scheme::from("https")),
                host: "new.example.com".into(),
                path: Some(http_api::PathModifier { replace: Some(http_api::path_modifier::Replace::Prefix("/new".into())) }),
                port: 8443,
                status: 302,
            })),
        }],
        backends: first_available(service_backend("web")),
        ..Default::default()
    };
    api::HttpRoute {
        metadata: resource("gateway.networking.k8s.io", "HTTPRoute", "web-split", 0),
        hosts: vec![http_api::HostMatch { r#match: Some(http_api::host_match::Match::Exact("web.books.svc.cluster.local".into())) }],
        rules: vec![split, redirect],
    }
}

fn with_http1_routes(routes: Vec<api::HttpRoute>) -> api::OutboundPolicy {
    api::OutboundPolicy {
        metadata: resource("core", "Service", "web", 8080),
        protocol: Some(api::ProxyProtocol { kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 { routes, failure_accrual: None })) }),
    }
}

#[test]
fn converts_an_httproute() {
    let p = OutboundPolicy::try_from(with_http1_routes(vec![httproute(), default_http_route()])).unwrap();
    let http = http1(&p);
    assert!(p.protocol.http(Version::HTTP_2).is_some(), "an http1 policy serves any HTTP version");
    let route = &http.routes[0];
    assert_eq!((route.meta.kind(), route.meta.name()), ("HTTPRoute", "web-split"));
    assert_eq!(route.hosts, vec![HostMatch::Exact("web.books.svc.cluster.local".into())]);
    let split = &route.rules[0];
    let Filter::RequestHeaders(m) = &split.filters[0] else { panic!("{:?}", split.filters) };
    assert_eq!(m.add, vec![(HeaderName::from_static("x-canary"), HeaderValue::from_static("1"))]);
    assert_eq!(m.remove, vec![HeaderName::from_static("x-debug")]);
    let Distribution::RandomAvailable(b) = &split.backends else { panic!("{:?}", split.backends) };
    assert_eq!(b.iter().map(|(b, w)| (b.backend.meta.name(), *w)).collect::<Vec<_>>(), [("web-v1", 90), ("web-v2", 10)]);
    assert_eq!(split.timeouts, Timeouts { request: Some(Duration::from_secs(5)), response: Some(Duration::from_secs(1)), idle: None });
    let retry = split.retry.as_ref().unwrap();
    assert_eq!((retry.max_retries, retry.max_request_bytes, &retry.conditions), (3, 65_536, &Conditions::Http(vec![500..=599])));
    assert!(split.allow_l5d_request_headers);

    let Filter::Redirect { scheme, host, path, port, status } = &route.rules[1].filters[0] else { panic!("{:?}", route.rules[1].filters) };
    assert_eq!((scheme.as_ref().map(|s| s.as_str()), host.as_deref(), *port, *status), (Some("https"), Some("new.example.com"), Some(8443), StatusCode::FOUND));
    assert_eq!(path.as_ref().unwrap().apply("/old/page"), "/new/page");

    // Routing over the converted routes: the HTTPRoute for its host, the default route otherwise.
    let req = |uri: &str| http::Request::get(uri).body(()).unwrap();
    let select = |uri: &str| route::select(&*http.routes, &RequestInfo::new(&req(uri)));
    assert_eq!(select("http://web.books.svc.cluster.local/api/books"), Some((0, 0)));
    assert_eq!(select("http://web.books.svc.cluster.local/old/x"), Some((0, 1)));
    assert_eq!(select("http://web.books.svc.cluster.local/other"), Some((1, 0)));
    assert_eq!(select("http://10.0.0.1:8080/api/books"), Some((1, 0)));
}

#[test]
fn deprecated_request_timeout_is_a_fallback() {
    let mut r = default_http_route();
    #[allow(deprecated)]
    {
        r.rules[0].request_timeout = pb(Duration::from_secs(7));
    }
    let p = OutboundPolicy::try_from(with_http1_routes(vec![r.clone()])).unwrap();
    assert_eq!(http1(&p).routes[0].rules[0].timeouts.request, Some(Duration::from_secs(7)));
    r.rules[0].timeouts = Some(http_api::Timeouts { request: pb(Duration::from_secs(2)), response: pb(Duration::ZERO), idle: None });
    let p = OutboundPolicy::try_from(with_http1_routes(vec![r])).unwrap();
    assert_eq!(http1(&p).routes[0].rules[0].timeouts, Timeouts { request: Some(Duration::from_secs(2)), response: None, idle: None }, "zero is unset");
}

#[test]
fn converts_grpc_routes() {
    use api::grpc_route::{distribution, filter};
    let rule = api::grpc_route::Rule {
        matches: vec![grpc_api::GrpcRouteMatch {
            rpc: Some(grpc_api::GrpcRpcMatch { service: "books.Library".into(), method: "Get".into() }),
            headers: vec![],
        }],
        filters: vec![api::grpc_route::Filter {
            kind: Some(filter::Kind::FailureInjector(grpc_api::GrpcFailureInjector {
                code: 14,
                message: "chaos".into(),
                ratio: Some(http_api::Ratio { numerator: 1, denominator: 10 }),
            })),
        }],
        backends: Some(api::grpc_route::Distribution {
            kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                backends: vec![api::grpc_route::RouteBackend { backend: Some(service_backend("library")), ..Default::default() }],
            })),
        }),
        retry: Some(api::grpc_route::Retry {
            max_retries: 2,
            conditions: Some(api::grpc_route::retry::Conditions { unavailable: true, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let policy = api::OutboundPolicy {
        metadata: resource("core", "Service", "library", 9090),
        protocol: Some(api::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                routes: vec![api::GrpcRoute { metadata: resource("gateway.networking.k8s.io", "GRPCRoute", "library", 0), hosts: vec![], rules: vec![rule] }],
                failure_accrual: None,
            })),
        }),
    };
    let p = OutboundPolicy::try_from(&policy).unwrap();
    let Protocol::Grpc(g) = &p.protocol else { panic!("{:?}", p.protocol) };
    let rule = &g.routes[0].rules[0];
    assert!(matches!(&rule.matches[0].path, Some(route::PathMatch::Exact(p)) if p == "/books.Library/Get"));
    assert!(matches!(&rule.filters[0], Filter::GrpcFailureInjector { code: 14, numerator: 1, denominator: 10, message } if message == "chaos"));
    let retry = rule.retry.as_ref().unwrap();
    assert!(retry.retryable(StatusCode::OK, Some(14)) && !retry.retryable(StatusCode::OK, Some(13)));
}

fn with_load(load: backend::balance_p2c::Load) -> api::OutboundPolicy {
    let mut p = service_policy();
    let mut b = service_backend("web");
    let Some(backend::Kind::Balancer(p2c)) = &mut b.kind else { unreachable!() };
    p2c.load = Some(load);
    let Some(proxy_protocol::Kind::Detect(d)) = &mut p.protocol.as_mut().unwrap().kind else { unreachable!() };
    d.http1.as_mut().unwrap().routes[0].rules[0].backends = first_available(b);
    p
}

fn first_backend(p: &OutboundPolicy) -> &Backend {
    &http1(p).routes[0].rules[0].backends.backends().next().unwrap().backend
}

#[test]
fn penalty_peak_ewma_defaults_unset_fields() {
    use backend::balance_p2c::{Load as L, PenaltyPeakEwma};
    let p = OutboundPolicy::try_from(with_load(L::PenaltyPeakEwma(PenaltyPeakEwma::default()))).unwrap();
    let defaults =
        Load::PenaltyPeakEwma { default_rtt: ms(30), decay: ms(10_000), penalty: ms(5_000), max_retry_after: ms(300_000), penalty_decay: ms(10_000) };
    assert!(matches!(&first_backend(&p).kind, BackendKind::Balancer { load, .. } if *load == defaults));
    let set = PenaltyPeakEwma { default_rtt: pb(ms(1)), decay: pb(ms(2)), penalty: pb(ms(3)), max_retry_after: pb(ms(4)), penalty_decay: pb(ms(5)) };
    let p = OutboundPolicy::try_from(with_load(L::PenaltyPeakEwma(set))).unwrap();
    let want = Load::PenaltyPeakEwma { default_rtt: ms(1), decay: ms(2), penalty: ms(3), max_retry_after: ms(4), penalty_decay: ms(5) };
    assert!(matches!(&first_backend(&p).kind, BackendKind::Balancer { load, .. } if *load == want));
}

fn with_accrual(accrual: api::failure_accrual::Kind) -> api::OutboundPolicy {
    let mut p = with_http1_routes(vec![default_http_route()]);
    let Some(proxy_protocol::Kind::Http1(h)) = &mut p.protocol.as_mut().unwrap().kind else { unreachable!() };
    h.failure_accrual = Some(api::FailureAccrual { kind: Some(accrual), ejection: Some(api::EjectionConfig { min_ready_endpoints: 1 }) });
    p
}

fn accrual_backoff() -> Option<api::ExponentialBackoff> {
    Some(api::ExponentialBackoff {
        min_backoff: pb(Duration::from_secs(1)),
        max_backoff: pb(Duration::from_secs(60)),
        jitter_ratio: 0.5,
        respect_retry_after_hint: true,
    })
}

#[test]
fn converts_failure_accrual() {
    use api::failure_accrual::{ConsecutiveFailures, Kind, Unified};
    let backoff = Backoff { min: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.5, respect_retry_after: true };
    let p = OutboundPolicy::try_from(with_accrual(Kind::ConsecutiveFailures(ConsecutiveFailures { max_failures: 7, backoff: accrual_backoff() }))).unwrap();
    assert_eq!(http1(&p).failure_accrual, Some(FailureAccrual::Consecutive { max_failures: 7, backoff: backoff.clone() }));
    let unified = Unified { success_rate_threshold: 0.8, decay: None, min_requests: 5, max_consecutive_failures: 7, backoff: accrual_backoff() };
    let p = OutboundPolicy::try_from(with_accrual(Kind::Unified(unified))).unwrap();
    let want = FailureAccrual::Unified { success_rate_threshold: 0.8, window: Duration::from_secs(10), min_requests: 5, max_consecutive_failures: 7, backoff };
    assert_eq!(http1(&p).failure_accrual, Some(want), "the window defaults to 10s");
    let mut none = with_http1_routes(vec![default_http_route()]);
    let Some(proxy_protocol::Kind::Http1(h)) = &mut none.protocol.as_mut().unwrap().kind else { unreachable!() };
    h.failure_accrual = Some(api::FailureAccrual::default());
    assert_eq!(http1(&OutboundPolicy::try_from(none).unwrap()).failure_accrual, None, "no kind: no circuit breaking");
}

#[test]
fn opaque_and_tls_routes() {
    let p = OutboundPolicy::try_from(service_policy()).unwrap();
    let Protocol::Detect { opaque, .. } = &p.protocol else { unreachable!() };
    assert_eq!(*opaque.routes[0].meta, Meta::Default("opaq".into()));
    assert!(matches!(&opaque.routes[0].backends, Distribution::FirstAvailable(b) if b.len() == 1));

    use api::tls_route::{distribution, filter};
    let tls = api::TlsRoute {
        metadata: resource("gateway.networking.k8s.io", "TLSRoute", "secure", 0),
        snis: vec![linkerd2_proxy_api::tls_route::SniMatch {
            r#match: Some(linkerd2_proxy_api::tls_route::sni_match::Match::Suffix(linkerd2_proxy_api::tls_route::sni_match::Suffix {
                reverse_labels: vec!["com".into(), "Example".into()],
            })),
        }],
        rules: vec![api::tls_route::Rule {
            backends: Some(api::tls_route::Distribution { kind: Some(distribution::Kind::Empty(distribution::Empty {})) }),
            filters: vec![api::tls_route::Filter { kind: Some(filter::Kind::Forbidden(Default::default())) }],
        }],
    };
    let msg = api::OutboundPolicy {
        metadata: resource("core", "Service", "web", 443),
        protocol: Some(api::ProxyProtocol { kind: Some(proxy_protocol::Kind::Tls(proxy_protocol::Tls { routes: vec![tls] })) }),
    };
    let p = OutboundPolicy::try_from(msg).unwrap();
    assert!(p.protocol.http(Version::HTTP_11).is_none(), "TLS is not HTTP");
    let Protocol::Tls(t) = &p.protocol else { panic!("{:?}", p.protocol) };
    assert_eq!(t.routes[0].snis, vec![HostMatch::Suffix { reverse_labels: vec!["com".into(), "example".into()] }]);
    assert!(matches!(t.routes[0].filters[..], [Filter::Forbidden]));
    assert!(matches!(t.routes[0].backends, Distribution::Empty));
    assert!(t.routes[0].backends.pick(&mut fastrand::Rng::with_seed(1)).is_none());
}

/// Every validation: a mutation of the default service policy and the error it must produce.
#[test]
fn invalid_policies_name_the_field_and_why() {
    type Mutation = Box<dyn Fn(&mut api::OutboundPolicy)>;
    fn detect(p: &mut api::OutboundPolicy) -> &mut proxy_protocol::Detect {
        let Some(proxy_protocol::Kind::Detect(d)) = &mut p.protocol.as_mut().unwrap().kind else { unreachable!() };
        d
    }
    fn rule(p: &mut api::OutboundPolicy) -> &mut api::http_route::Rule {
        &mut detect(p).http1.as_mut().unwrap().routes[0].rules[0]
    }
    fn backend(p: &mut api::OutboundPolicy) -> &mut api::Backend {
        let Some(api::http_route::Distribution { kind: Some(api::http_route::distribution::Kind::FirstAvailable(f)) }) = &mut rule(p).backends else {
            unreachable!()
        };
        f.backends[0].backend.as_mut().unwrap()
    }
    fn p2c(p: &mut api::OutboundPolicy) -> &mut backend::BalanceP2c {
        let Some(backend::Kind::Balancer(b)) = &mut backend(p).kind else { unreachable!() };
        b
    }
    const RULE: &str = "protocol.detect.http1.routes[0].rules[0]";
    const BACKEND: &str = "protocol.detect.http1.routes[0].rules[0].backends.first_available[0].backend";
    let cases: Vec<(Mutation, String, &str)> = vec![
        (Box::new(|p| p.metadata = None), "metadata".into(), "missing"),
        (Box::new(|p| p.metadata = resource("core", "Service", "web", 70_000)), "metadata.resource.port".into(), "expected a port number up to 65535"),
        (Box::new(|p| p.protocol = None), "protocol".into(), "missing"),
        (Box::new(|p| detect(p).timeout = None), "protocol.detect.timeout".into(), "missing"),
        (Box::new(|p| detect(p).opaque = None), "protocol.detect.opaque".into(), "missing"),
        (Box::new(|p| detect(p).http1 = None), "protocol.detect.http1".into(), "missing"),
        (Box::new(|p| detect(p).http2 = None), "protocol.detect.http2".into(), "missing"),
        (Box::new(|p| detect(p).http1.as_mut().unwrap().routes[0].metadata = None), "protocol.detect.http1.routes[0].metadata".into(), "missing"),
        (
            Box::new(|p| detect(p).http1.as_mut().unwrap().routes[0].hosts = vec![http_api::HostMatch { r#match: None }]),
            "protocol.detect.http1.routes[0].hosts[0]".into(),
            "host match: expected",
        ),
        (Box::new(|p| rule(p).matches = vec![prefix_match("api")]), format!("{RULE}.matches[0]"), "path match \"api\": expected an absolute path"),
        (Box::new(|p| rule(p).backends = None), format!("{RULE}.backends"), "missing"),
        (
            Box::new(|p| {
                rule(p).backends = Some(api::http_route::Distribution { kind: Some(api::http_route::distribution::Kind::FirstAvailable(Default::default())) })
            }),
            format!("{RULE}.backends.first_available"),
            "expected at least one backend",
        ),
        (
            Box::new(|p| {
                rule(p).backends = Some(api::http_route::Distribution { kind: Some(api::http_route::distribution::Kind::RandomAvailable(Default::default())) })
            }),
            format!("{RULE}.backends.random_available"),
            "expected at least one backend",
        ),
        (Box::new(|p| backend(p).metadata = None), format!("{BACKEND}.metadata"), "missing"),
        (Box::new(|p| backend(p).queue = None), format!("{BACKEND}.queue"), "missing"),
        (Box::new(|p| backend(p).queue.as_mut().unwrap().failfast_timeout = None), format!("{BACKEND}.queue.failfast_timeout"), "missing"),
        (Box::new(|p| p2c(p).discovery = None), format!("{BACKEND}.balancer.discovery"), "missing"),
        (Box::new(|p| p2c(p).load = None), format!("{BACKEND}.balancer.load"), "missing"),
        (
            Box::new(|p| p2c(p).load = Some(backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma { default_rtt: pb(ms(30)), decay: None }))),
            format!("{BACKEND}.balancer.peak_ewma.decay"),
            "missing",
        ),
        (
            Box::new(|p| p2c(p).load = Some(backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma { default_rtt: None, decay: pb(ms(1)) }))),
            format!("{BACKEND}.balancer.peak_ewma.default_rtt"),
            "missing",
        ),
        (Box::new(|p| rule(p).retry = Some(api::http_route::Retry { conditions: None, ..Default::default() })), format!("{RULE}.retry"), "conditions: missing"),
        (
            Box::new(|p| {
                let ranges = vec![api::http_route::retry::conditions::StatusRange { start: 500, end: 600 }];
                rule(p).retry =
                    Some(api::http_route::Retry { conditions: Some(api::http_route::retry::Conditions { status_ranges: ranges }), ..Default::default() })
            }),
            format!("{RULE}.retry"),
            "conditions.status_ranges[0]: expected 1 <= start <= end <= 599, found 500..=600",
        ),
        (Box::new(|p| rule(p).filters = vec![api::http_route::Filter { kind: None }]), format!("{RULE}.filters[0].kind"), "missing"),
        (
            Box::new(|p| {
                let fi = http_api::HttpFailureInjector { status: 1_000, ..Default::default() };
                rule(p).filters = vec![api::http_route::Filter { kind: Some(api::http_route::filter::Kind::FailureInjector(fi)) }]
            }),
            format!("{RULE}.filters[0].failure_injector.status"),
            "expected an HTTP status code",
        ),
        (
            Box::new(|p| {
                let fi = http_api::HttpFailureInjector { status: 503, ratio: Some(http_api::Ratio { numerator: 1, denominator: 0 }), ..Default::default() };
                rule(p).filters = vec![api::http_route::Filter { kind: Some(api::http_route::filter::Kind::FailureInjector(fi)) }]
            }),
            format!("{RULE}.filters[0].failure_injector.ratio"),
            "expected numerator <= denominator and denominator > 0, found 1/0",
        ),
        (
            Box::new(|p| {
                let r = http_api::RequestRedirect { status: 200, ..Default::default() };
                rule(p).filters = vec![api::http_route::Filter { kind: Some(api::http_route::filter::Kind::Redirect(r)) }]
            }),
            format!("{RULE}.filters[0].redirect.status"),
            "expected a redirection status (3xx), found 200",
        ),
        (
            Box::new(|p| {
                let h = http_types::Headers { headers: vec![http_types::headers::Header { name: "bad name".into(), value: vec![] }] };
                let m = http_api::RequestHeaderModifier { set: Some(h), ..Default::default() };
                rule(p).filters = vec![api::http_route::Filter { kind: Some(api::http_route::filter::Kind::RequestHeaderModifier(m)) }]
            }),
            format!("{RULE}.filters[0].request_header_modifier.set.headers[0].name"),
            "expected a valid header name, found \"bad name\"",
        ),
        (
            Box::new(|p| {
                let m = http_api::ResponseHeaderModifier { remove: vec!["ok".into(), "".into()], ..Default::default() };
                rule(p).filters = vec![api::http_route::Filter { kind: Some(api::http_route::filter::Kind::ResponseHeaderModifier(m)) }]
            }),
            format!("{RULE}.filters[0].response_header_modifier.remove[1].name"),
            "expected a valid header name",
        ),
        (
            Box::new(|p| detect(p).opaque.as_mut().unwrap().routes.push(opaque_route())),
            "protocol.detect.opaque.routes".into(),
            "expected at most one route, found 2",
        ),
        (
            Box::new(|p| detect(p).opaque.as_mut().unwrap().routes[0].rules.clear()),
            "protocol.detect.opaque.routes[0].rules".into(),
            "expected exactly one rule, found 0",
        ),
        (
            Box::new(|p| detect(p).opaque.as_mut().unwrap().routes[0].rules[0].filters = vec![Default::default()]),
            "protocol.detect.opaque.routes[0].rules[0].filters[0].kind".into(),
            "missing",
        ),
    ];
    for (mutate, path, reason) in cases {
        let mut p = service_policy();
        mutate(&mut p);
        let err = OutboundPolicy::try_from(p).expect_err(&path);
        assert_eq!(err.path, path, "{err}");
        assert!(err.reason.starts_with(reason), "{path}: expected {reason:?}, got {:?}", err.reason);
        assert_eq!(err.to_string(), format!("{path}: {}", err.reason));
    }
}

#[test]
fn invalid_failure_accrual() {
    use api::failure_accrual::{ConsecutiveFailures, Kind, Unified};
    let base = || Unified { success_rate_threshold: 0.8, decay: None, min_requests: 5, max_consecutive_failures: 7, backoff: accrual_backoff() };
    let cases = [
        (Kind::ConsecutiveFailures(ConsecutiveFailures { max_failures: 7, backoff: None }), "consecutive_failures.backoff", "missing"),
        (
            Kind::ConsecutiveFailures(ConsecutiveFailures {
                max_failures: 7,
                backoff: Some(api::ExponentialBackoff { min_backoff: pb(ms(2)), max_backoff: pb(ms(1)), ..Default::default() }),
            }),
            "consecutive_failures.backoff",
            "max_backoff: expected at least min_backoff",
        ),
        (Kind::Unified(Unified { backoff: None, ..base() }), "unified.backoff", "missing"),
        (Kind::Unified(Unified { success_rate_threshold: 1.5, ..base() }), "unified.success_rate_threshold", "expected a ratio from 0.0 to 1.0, found 1.5"),
        (Kind::Unified(Unified { success_rate_threshold: f64::NAN, ..base() }), "unified.success_rate_threshold", "expected a ratio"),
        (Kind::Unified(Unified { min_requests: 1_000_001, ..base() }), "unified.min_requests", "expected at most 1000000, found 1000001"),
        (Kind::Unified(Unified { decay: pb(ms(5)), ..base() }), "unified.decay", "expected at least 10ms"),
    ];
    for (kind, field, reason) in cases {
        let err = OutboundPolicy::try_from(with_accrual(kind)).unwrap_err();
        assert_eq!(err.path, format!("protocol.http1.failure_accrual.{field}"), "{err}");
        assert!(err.reason.starts_with(reason), "{err}");
    }
    let ok = Unified { success_rate_threshold: 0.0, decay: pb(ms(5)), min_requests: 1_000_000, ..base() };
    assert!(OutboundPolicy::try_from(with_accrual(Kind::Unified(ok))).is_ok(), "a disabled success rate needs no window");
}

fn weighted_addr(ip: IpAddr, port: u32) -> dst::WeightedAddr {
    dst::WeightedAddr { addr: Some(net::TcpAddress { ip: Some(ip.into()), port }), weight: 10_000, ..Default::default() }
}

#[test]
fn endpoints_from_weighted_addrs() {
    let mut a = weighted_addr("10.1.2.3".parse().unwrap(), 8080);
    a.metric_labels = [("pod", "web-0"), ("zone", "a")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let set = [("namespace", "demo"), ("zone", "set-level")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let ep = endpoint(&a, &set).unwrap();
    assert_eq!(ep.addr, "10.1.2.3:8080".parse().unwrap());
    assert_eq!(ep.meshed, None);
    assert_eq!(ep.labels.iter().collect::<Vec<_>>(), [("namespace", "demo"), ("pod", "web-0"), ("zone", "a")], "the address's labels win over the set's");

    let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x42);
    let mut a = weighted_addr(IpAddr::V6(v6), 443);
    a.protocol_hint = Some(dst::ProtocolHint {
        opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4143 }),
        protocol: Some(protocol_hint::Protocol::H2(Default::default())),
    });
    a.tls_identity = Some(dst::TlsIdentity {
        strategy: Some(tls_identity::Strategy::DnsLikeIdentity(tls_identity::DnsLikeIdentity {
            name: "web.books.serviceaccount.identity.linkerd.cluster.local".into(),
        })),
        server_name: None,
    });
    let ep = endpoint(&a, &Default::default()).unwrap();
    assert_eq!(ep.addr, "[fd00::42]:443".parse().unwrap());
    let meshed = ep.meshed.as_ref().unwrap();
    assert_eq!((meshed.inbound_port, meshed.identity.as_deref()), (4143, Some("web.books.serviceaccount.identity.linkerd.cluster.local")));
    assert_eq!(ep.connect_addr(), "[fd00::42]:4143".parse().unwrap());

    a.tls_identity = None;
    assert_eq!(endpoint(&a, &Default::default()).unwrap().meshed.unwrap().identity, None, "meshed without identity: plaintext to the inbound port");
    let mut plain = a.clone();
    plain.protocol_hint = Some(dst::ProtocolHint { opaque_transport: None, protocol: Some(protocol_hint::Protocol::H2(Default::default())) });
    assert_eq!(endpoint(&plain, &Default::default()).unwrap().meshed, None);
}

#[test]
fn invalid_endpoints() {
    let err = |a: dst::WeightedAddr| endpoint(&a, &Default::default()).unwrap_err().to_string();
    assert_eq!(err(dst::WeightedAddr::default()), "addr: missing");
    assert_eq!(err(dst::WeightedAddr { addr: Some(net::TcpAddress { ip: None, port: 80 }), ..Default::default() }), "addr.ip: missing");
    assert!(err(weighted_addr("10.0.0.1".parse().unwrap(), 0)).starts_with("addr.port: expected a port from 1"));
    assert!(err(weighted_addr("10.0.0.1".parse().unwrap(), 70_000)).starts_with("addr.port: expected a port number up to 65535"));
    let mut a = weighted_addr("10.0.0.1".parse().unwrap(), 80);
    a.protocol_hint = Some(dst::ProtocolHint { opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 0 }), protocol: None });
    assert!(err(a.clone()).starts_with("protocol_hint.opaque_transport.inbound_port: expected a port from 1"));
    a.protocol_hint = Some(dst::ProtocolHint { opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4143 }), protocol: None });
    a.tls_identity = Some(dst::TlsIdentity {
        strategy: Some(tls_identity::Strategy::UriLikeIdentity(tls_identity::UriLikeIdentity { uri: "spiffe://td/web".into() })),
        server_name: None,
    });
    assert!(err(a).starts_with("tls_identity.uri_like_identity: expected a DNS-like identity"));

    // A forward backend's address is checked in place.
    let mut p = service_policy();
    let Some(proxy_protocol::Kind::Detect(d)) = &mut p.protocol.as_mut().unwrap().kind else { unreachable!() };
    let mut b = service_backend("web");
    b.kind = Some(backend::Kind::Forward(dst::WeightedAddr::default()));
    d.http2.as_mut().unwrap().routes[0].rules[0].backends = first_available(b);
    assert_eq!(
        OutboundPolicy::try_from(p).unwrap_err().to_string(),
        "protocol.detect.http2.routes[0].rules[0].backends.first_available[0].backend.forward.addr: missing"
    );
}

#[test]
fn backends_without_kind_fail_and_forward_backends_forward() {
    let mut p = service_policy();
    let Some(proxy_protocol::Kind::Detect(d)) = &mut p.protocol.as_mut().unwrap().kind else { unreachable!() };
    let mut b = service_backend("gone");
    b.kind = None;
    d.http1.as_mut().unwrap().routes[0].rules[0].backends = first_available(b);
    let mut f = service_backend("ext");
    f.kind = Some(backend::Kind::Forward(weighted_addr("192.0.2.1".parse().unwrap(), 443)));
    d.http2.as_mut().unwrap().routes[0].rules[0].backends = first_available(f);
    let p = OutboundPolicy::try_from(p).unwrap();
    assert!(matches!(&first_backend(&p).kind, BackendKind::Fail { message } if message.contains("gone")));
    let b = &p.protocol.http(Version::HTTP_2).unwrap().routes[0].rules[0].backends;
    assert!(matches!(&b.pick(&mut fastrand::Rng::with_seed(1)).unwrap().backend.kind, BackendKind::Forward(e) if e.addr == "192.0.2.1:443".parse().unwrap()));
}

#[test]
fn forward_to_sends_everything_to_the_original_destination() {
    let ep = Endpoint::plain("10.0.0.9:8080".parse().unwrap());
    let p = OutboundPolicy::forward_to(ep.clone(), Some(Duration::from_secs(10)));
    assert_eq!(*p.meta, Meta::Default("forward".into()));
    for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
        let http = p.protocol.http(version).unwrap();
        let req = http::Request::post("/any/path?x=1").body(()).unwrap();
        let (r, rule) = route::select(&*http.routes, &RequestInfo::new(&req)).unwrap();
        let backend = http.routes[r].rules[rule].backends.pick(&mut fastrand::Rng::with_seed(3)).unwrap();
        assert!(matches!(&backend.backend.kind, BackendKind::Forward(e) if *e == ep));
    }
    let Protocol::Detect { opaque, .. } = &p.protocol else { panic!("{:?}", p.protocol) };
    assert!(matches!(&opaque.routes[0].backends.pick(&mut fastrand::Rng::with_seed(3)).unwrap().backend.kind, BackendKind::Forward(e) if *e == ep));
    // An opaque port is not detected at all.
    let p = OutboundPolicy::forward_to(ep.clone(), None);
    let Protocol::Opaque(opaque) = &p.protocol else { panic!("{:?}", p.protocol) };
    assert!(matches!(&opaque.routes[0].backends.pick(&mut fastrand::Rng::with_seed(3)).unwrap().backend.kind, BackendKind::Forward(e) if *e == ep));
}

fn named_backend(name: &str) -> RouteBackend {
    let meta = Arc::new(Meta::Default(name.into()));
    RouteBackend {
        backend: Backend { meta, queue_capacity: 1, failfast: ms(1), kind: BackendKind::Fail { message: String::new() } },
        filters: vec![],
        metrics: Default::default(),
    }
}

#[test]
fn random_available_follows_the_weights() {
    let d = Distribution::RandomAvailable(vec![(named_backend("a"), 70), (named_backend("never"), 0), (named_backend("b"), 20), (named_backend("c"), 10)]);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..10_000 {
        *counts.entry(d.pick(&mut rng).unwrap().backend.meta.name().to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("never"), None, "a zero weight is never picked");
    for (name, want) in [("a", 7_000), ("b", 2_000), ("c", 1_000)] {
        let got = counts[name];
        assert!((want - 250..=want + 250).contains(&got), "{name}: {got} of 10000, expected about {want}");
    }
    let zero = Distribution::RandomAvailable(vec![(named_backend("a"), 0)]);
    assert!(zero.pick(&mut rng).is_none());
    let first = Distribution::FirstAvailable(vec![named_backend("x"), named_backend("y")]);
    assert!((0..100).all(|_| first.pick(&mut rng).unwrap().backend.meta.name() == "x"));
    assert!(Distribution::Empty.pick(&mut rng).is_none());
}

#[test]
fn header_modifier_adds_then_sets_then_removes() {
    let h = |s: &'static str| HeaderName::from_static(s);
    let v = HeaderValue::from_static;
    let m = HeaderModifier { add: vec![(h("x-a"), v("2")), (h("x-gone"), v("1"))], set: vec![(h("x-b"), v("new"))], remove: vec![h("x-gone"), h("x-c")] };
    let mut headers = HeaderMap::new();
    headers.insert("x-a", v("1"));
    headers.append("x-b", v("old1"));
    headers.append("x-b", v("old2"));
    headers.insert("x-c", v("1"));
    m.apply(&mut headers);
    assert_eq!(headers.get_all("x-a").iter().collect::<Vec<_>>(), [v("1"), v("2")]);
    assert_eq!(headers.get_all("x-b").iter().collect::<Vec<_>>(), [v("new")]);
    assert!(!headers.contains_key("x-c") && !headers.contains_key("x-gone"));
}

#[test]
fn path_modifiers_follow_gateway_api() {
    assert_eq!(PathModifier::Full("/fixed".into()).apply("/any/thing"), "/fixed");
    let p = |replacement: &str, matched: &[&str]| PathModifier::Prefix {
        replacement: replacement.into(),
        matched: matched.iter().map(|s| s.to_string()).collect(),
    };
    let m = p("/v2", &["/v1"]);
    for (path, want) in [("/v1", "/v2"), ("/v1/", "/v2/"), ("/v1/users", "/v2/users"), ("/v10", "/v10"), ("/other", "/other")] {
        assert_eq!(m.apply(path), want, "{path}");
    }
    assert_eq!(p("/", &["/v1"]).apply("/v1/users"), "/users");
    assert_eq!(p("/", &["/v1"]).apply("/v1"), "/");
    assert_eq!(p("/v2/", &["/v1"]).apply("/v1/users"), "/v2/users");
    assert_eq!(p("/api", &[""]).apply("/users"), "/api/users", "a `/` prefix match prefixes the whole path");
    assert_eq!(p("/x", &["/a", "/a/b"]).apply("/a/b/c"), "/x/c", "the longest matching prefix is the one replaced");

    // A prefix rewrite on a rule without prefix matches cannot be honoured.
    let mut route = httproute();
    route.rules[1].matches = vec![http_api::HttpRouteMatch {
        path: Some(http_api::PathMatch { kind: Some(http_api::path_match::Kind::Exact("/old".into())) }),
        ..Default::default()
    }];
    let p = OutboundPolicy::try_from(with_http1_routes(vec![route])).unwrap();
    assert!(matches!(&http1(&p).routes[0].rules[1].filters[0], Filter::InternalError(reason) if reason.contains("prefix")));
}
