//! Egress: the outbound policy of an address that is no Service's (LINKERD-WIRE.md §13).
//!
//! - An address an EgressNetwork covers gets that network's policy. The client's namespace's
//!   EgressNetworks are considered, or, when it has none at all, those of the global egress
//!   namespace; among those covering the address, the most specific CIDR wins, then the oldest,
//!   then namespace and name. An EgressNetwork whose networks overlap the cluster's is ignored
//!   (and refused when its manifest is read).
//! - Any other address outside the cluster networks gets `egress-fallback`: everything to the
//!   original destination.
//! - An address inside the cluster networks that is no Service's is not ours to answer
//!   (`NotFound`: the proxy falls back to the endpoint `GetProfile` names).
//!
//! An egress policy's default backend forwards to the original destination. Routes attach to an
//! EgressNetwork with `parentRefs` of its kind; their backends may be Services (sending external
//! traffic into the cluster) or the EgressNetwork itself (the original destination). After the
//! user's HTTP, gRPC and TLS routes comes the default route of the network's `trafficPolicy`
//! (`*-egress-allow`, or `*-egress-deny`: HTTP 403 "traffic not allowed", gRPC PERMISSION_DENIED,
//! TLS and TCP refused); TCP gets the default only when no TCPRoute attaches.

use super::{
    outbound::{self as ob, Parent, Routes},
    IndexConfig, Model,
};
use crate::resources::{EgressNetwork, Kind, Resource, ServiceConfig, TrafficPolicy};
use linkerd2_proxy_api::{
    destination::WeightedAddr,
    grpc_route as grpc_api, http_route as http_api,
    outbound::{self as api, backend, proxy_protocol},
};
use std::net::{IpAddr, SocketAddr};

pub fn compute(model: &Model, cfg: &IndexConfig, source_ns: &str, addr: SocketAddr) -> Option<api::OutboundPolicy> {
    if let Some(net) = network_for(model, cfg, source_ns, addr.ip()) {
        return Some(policy(model, cfg, net, addr));
    }
    if cfg.cluster_networks.iter().any(|n| n.contains(&addr.ip())) {
        return None;
    }
    Some(fallback(addr))
}

/// The EgressNetwork that covers `ip` for clients in `source_ns`.
pub fn network_for<'m>(model: &'m Model, cfg: &IndexConfig, source_ns: &str, ip: IpAddr) -> Option<&'m EgressNetwork> {
    let of_ns = |ns: &str| -> Vec<&'m EgressNetwork> {
        let ns = ns.to_string();
        model
            .of_kind(Kind::EgressNetwork, None)
            .filter(move |r| r.meta().namespace == ns)
            .filter_map(|r| match r {
                Resource::EgressNetwork(e) if e.overlap(&cfg.cluster_networks).is_none() => Some(&**e),
                _ => None,
            })
            .collect()
    };
    let mut candidates = of_ns(source_ns);
    if candidates.is_empty() && source_ns != cfg.global_egress_namespace {
        candidates = of_ns(&cfg.global_egress_namespace);
    }
    candidates
        .into_iter()
        .filter_map(|e| {
            let prefix = e
                .networks(&cfg.cluster_networks)
                .iter()
                .filter(|n| n.cidr.contains(&ip) && !n.except.iter().any(|x| x.contains(&ip)))
                .map(|n| n.cidr.prefix_len())
                .max()?;
            Some((prefix, e))
        })
        // Most specific first, then the oldest, then by namespace and name.
        .min_by(|(pa, a), (pb, b)| {
            pb.cmp(pa)
                .then_with(|| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp))
                .then_with(|| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)))
        })
        .map(|(_, e)| e)
}

/// Forwards to the original destination, with no identity (it is outside the mesh).
fn forward(metadata: Option<linkerd2_proxy_api::meta::Metadata>, addr: SocketAddr) -> api::Backend {
    let addr = WeightedAddr { addr: Some(addr.into()), weight: 1, ..Default::default() };
    api::Backend { metadata, queue: Some(ob::queue()), kind: Some(backend::Kind::Forward(addr)) }
}

/// `egress-fallback`: an address outside the cluster that no EgressNetwork covers.
fn fallback(addr: SocketAddr) -> api::OutboundPolicy {
    let meta = ob::default_meta("egress-fallback");
    let backend = forward(meta.clone(), addr);
    let route = api::HttpRoute {
        metadata: meta.clone(),
        hosts: Vec::new(),
        rules: vec![api::http_route::Rule { matches: vec![ob::prefix_match("/")], backends: Some(ob::first_available(backend.clone())), ..Default::default() }],
    };
    let kind = proxy_protocol::Kind::Detect(proxy_protocol::Detect {
        timeout: Some(ob::duration(ob::DETECT_TIMEOUT)),
        opaque: Some(proxy_protocol::Opaque { routes: vec![ob::opaque_route(meta.clone(), Vec::new(), Some(backend))] }),
        http1: Some(proxy_protocol::Http1 { routes: vec![route.clone()], failure_accrual: None }),
        http2: Some(proxy_protocol::Http2 { routes: vec![route], failure_accrual: None }),
    });
    api::OutboundPolicy { metadata: meta, protocol: Some(api::ProxyProtocol { kind: Some(kind) }) }
}

const DENIED: &str = "traffic not allowed";

fn policy(model: &Model, cfg: &IndexConfig, net: &EgressNetwork, addr: SocketAddr) -> api::OutboundPolicy {
    let (name, ns) = (net.metadata.name.as_str(), net.metadata.namespace.as_str());
    let metadata = Some(ob::resource("policy.linkerd.io", "EgressNetwork", name, ns, addr.port()));
    let config = ServiceConfig::default();
    let parent = Parent {
        group: "policy.linkerd.io",
        kind: "EgressNetwork",
        name,
        ns,
        port: addr.port(),
        config: &config,
        default_backend: forward(metadata.clone(), addr),
    };
    let allow = net.spec.traffic_policy == TrafficPolicy::Allow;
    let verdict = if allow { "allow" } else { "deny" };
    let tcp_default = || {
        let forbidden = api::opaque_route::Filter { kind: Some(api::opaque_route::filter::Kind::Forbidden(Default::default())) };
        let filters = if allow { Vec::new() } else { vec![forbidden] };
        ob::opaque_route(ob::default_meta(&format!("tcp-egress-{verdict}")), filters, Some(parent.default_backend.clone()))
    };
    let http_default = || {
        let mut rule = api::http_route::Rule {
            matches: vec![ob::prefix_match("/")],
            backends: Some(ob::first_available(parent.default_backend.clone())),
            ..Default::default()
        };
        if !allow {
            let fi = http_api::HttpFailureInjector { status: 403, message: DENIED.into(), ratio: Some(http_api::Ratio { numerator: 1, denominator: 1 }) };
            rule.filters.push(api::http_route::Filter { kind: Some(api::http_route::filter::Kind::FailureInjector(fi)) });
        }
        api::HttpRoute { metadata: ob::default_meta(&format!("http-egress-{verdict}")), hosts: Vec::new(), rules: vec![rule] }
    };
    let kind = match Routes::of(model, &parent) {
        Routes::Grpc(grpc) => {
            let mut routes: Vec<api::GrpcRoute> = grpc.iter().map(|r| ob::grpc_route(model, cfg, &parent, r)).collect();
            routes.push(grpc_default(&parent, allow));
            proxy_protocol::Kind::Grpc(proxy_protocol::Grpc { routes, failure_accrual: None })
        }
        Routes::Tls(tls) => {
            let mut routes: Vec<api::TlsRoute> = tls.iter().map(|r| ob::tls_route(model, cfg, &parent, r)).collect();
            routes.push(tls_default(&parent, allow));
            proxy_protocol::Kind::Tls(proxy_protocol::Tls { routes })
        }
        Routes::Tcp(tcp) => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque { routes: vec![ob::tcp_route(model, cfg, &parent, tcp)] }),
        routes => {
            let mut http: Vec<api::HttpRoute> = match routes {
                Routes::Http(http) => http.iter().map(|(kind, r)| ob::http_route(model, cfg, &parent, *kind, r)).collect(),
                _ => Vec::new(),
            };
            http.push(http_default());
            proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: Some(ob::duration(ob::DETECT_TIMEOUT)),
                opaque: Some(proxy_protocol::Opaque { routes: vec![tcp_default()] }),
                http1: Some(proxy_protocol::Http1 { routes: http.clone(), failure_accrual: None }),
                http2: Some(proxy_protocol::Http2 { routes: http, failure_accrual: None }),
            })
        }
    };
    api::OutboundPolicy { metadata, protocol: Some(api::ProxyProtocol { kind: Some(kind) }) }
}

fn grpc_default(parent: &Parent<'_>, allow: bool) -> api::GrpcRoute {
    use api::grpc_route::{distribution, Distribution, Filter, RouteBackend, Rule};
    let verdict = if allow { "allow" } else { "deny" };
    let mut filters = Vec::new();
    if !allow {
        let fi = grpc_api::GrpcFailureInjector { code: 7, message: DENIED.into(), ratio: Some(http_api::Ratio { numerator: 1, denominator: 1 }) };
        filters.push(Filter { kind: Some(api::grpc_route::filter::Kind::FailureInjector(fi)) });
    }
    let backends = distribution::Kind::FirstAvailable(distribution::FirstAvailable {
        backends: vec![RouteBackend { backend: Some(parent.default_backend.clone()), ..Default::default() }],
    });
    let rule = Rule { matches: Vec::new(), filters, backends: Some(Distribution { kind: Some(backends) }), ..Default::default() };
    api::GrpcRoute { metadata: ob::default_meta(&format!("grpc-egress-{verdict}")), hosts: Vec::new(), rules: vec![rule] }
}

fn tls_default(parent: &Parent<'_>, allow: bool) -> api::TlsRoute {
    use api::tls_route::{distribution, filter, Distribution, Filter, RouteBackend, Rule};
    let verdict = if allow { "allow" } else { "deny" };
    let filters = if allow { Vec::new() } else { vec![Filter { kind: Some(filter::Kind::Forbidden(Default::default())) }] };
    let backends = distribution::Kind::FirstAvailable(distribution::FirstAvailable {
        backends: vec![RouteBackend { backend: Some(parent.default_backend.clone()), filters: Vec::new() }],
    });
    let rule = Rule { backends: Some(Distribution { kind: Some(backends) }), filters };
    api::TlsRoute { metadata: ob::default_meta(&format!("tls-egress-{verdict}")), snis: Vec::new(), rules: vec![rule] }
}
