//! `InboundServerPolicies.WatchPort`: the policy of one workload port (LINKERD-WIRE.md §4.1).
//!
//! The Server in the workload's namespace that selects it on that port decides: its protocol, the
//! AuthorizationPolicies that target it (or its namespace) with their MeshTLS and Network
//! authentications, the HTTPRoutes whose parent it is (with route-level authorizations), and its
//! HTTPLocalRateLimitPolicy. A port no Server selects gets the default policy: the workload's
//! `config.linkerd.io/default-inbound-policy` annotation, else the control plane's flag.

use super::{outbound, Change, IndexConfig, Model, WorkloadPort};
use crate::resources::{AuthorizationPolicy, ExternalWorkload, Kind, PortRef, Resource, Route, Server};
use linkerd2_proxy_api::{
    http_route as http_api,
    inbound::{self as api, authn, proxy_protocol},
    meta::{metadata, Metadata},
};
use std::{collections::HashMap, time::Duration};

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";

/// A workload's own changes and every policy kind can change its inbound policy; Services and
/// splits cannot.
pub fn affects(change: &Change, key: &WorkloadPort) -> bool {
    match change.key.kind {
        Kind::ExternalWorkload => change.key.namespace == key.ns && change.key.name == key.workload,
        Kind::Service | Kind::TrafficSplit | Kind::GrpcRoute => false,
        _ => true,
    }
}

pub fn compute(model: &Model, cfg: &IndexConfig, key: &WorkloadPort) -> Option<api::Server> {
    let w = model.workload(&key.ns, &key.workload)?;
    let server = model.of_kind(Kind::Server, Some(&key.ns)).find_map(|r| match r {
        Resource::Server(s) if selects(s, w, key.port) => Some(s),
        _ => None,
    });
    Some(match server {
        Some(s) => server_policy(model, cfg, s),
        None => {
            let name = w.metadata.annotations.get(DEFAULT_POLICY_ANNOTATION).unwrap_or(&cfg.default_inbound_policy);
            let mut policy = default_policy(cfg, name);
            // An opaque port is never detected: the default opaque ports, or the workload's own.
            if cfg.workload_port_opaque(w, key.port) {
                policy.protocol = Some(api::ProxyProtocol { kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})) });
            }
            policy
        }
    })
}

fn selects(s: &Server, w: &ExternalWorkload, port: u16) -> bool {
    let selector = s.spec.external_workload_selector.as_ref().or(s.spec.pod_selector.as_ref());
    selector.is_some_and(|sel| sel.matches(&w.metadata.labels))
        && match &s.spec.port {
            PortRef::Number(n) => *n == port,
            PortRef::Name(name) => w.spec.ports.iter().any(|p| p.name.as_deref() == Some(name) && p.port == port),
        }
}

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([("group".into(), group.into()), ("kind".into(), kind.into()), ("name".into(), name.into())])
}

fn networks(nets: &[ipnet::IpNet]) -> Vec<api::Network> {
    nets.iter().map(|n| api::Network { net: Some((*n).into()), except: vec![] }).collect()
}

fn all_networks() -> Vec<api::Network> {
    let all: Vec<ipnet::IpNet> = ["0.0.0.0/0", "::/0"].iter().filter_map(|n| n.parse().ok()).collect();
    networks(&all)
}

fn unauthenticated() -> api::Authn {
    api::Authn { permit: Some(authn::Permit::Unauthenticated(authn::PermitUnauthenticated {})) }
}

fn any_identity() -> api::Authn {
    mesh_tls(Vec::new(), vec![api::IdentitySuffix { parts: vec![] }])
}

fn mesh_tls(identities: Vec<String>, suffixes: Vec<api::IdentitySuffix>) -> api::Authn {
    let identities = identities.into_iter().map(|name| api::Identity { name }).collect();
    let clients = authn::permit_mesh_tls::Clients::Identities(authn::permit_mesh_tls::PermitClientIdentities { identities, suffixes });
    api::Authn { permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls { clients: Some(clients) })) }
}

/// The authorizations a default policy name stands for.
fn default_authorizations(cfg: &IndexConfig, name: &str) -> Vec<api::Authz> {
    let (networks, authentication) = match name {
        "deny" => return Vec::new(),
        "all-authenticated" => (all_networks(), any_identity()),
        "cluster-unauthenticated" => (networks(&cfg.cluster_networks), unauthenticated()),
        "cluster-authenticated" | "all-authenticated-cluster" => (networks(&cfg.cluster_networks), any_identity()),
        // all-unauthenticated and audit (which allows and lets the proxy report it).
        _ => (all_networks(), unauthenticated()),
    };
    let meta = Metadata { kind: Some(metadata::Kind::Default(name.to_string())) };
    vec![api::Authz { networks, authentication: Some(authentication), labels: labels("", "default", name), metadata: Some(meta) }]
}

fn detect(http_routes: Vec<api::HttpRoute>, rate_limit: Option<api::HttpLocalRateLimit>) -> api::ProxyProtocol {
    let kind = proxy_protocol::Kind::Detect(proxy_protocol::Detect {
        timeout: prost_types::Duration::try_from(DETECT_TIMEOUT).ok(),
        http_routes,
        http_local_rate_limit: rate_limit,
    });
    api::ProxyProtocol { kind: Some(kind) }
}

pub fn default_policy(cfg: &IndexConfig, name: &str) -> api::Server {
    let route = api::HttpRoute {
        metadata: Some(Metadata { kind: Some(metadata::Kind::Default("default".into())) }),
        hosts: vec![],
        authorizations: vec![],
        rules: vec![api::http_route::Rule { matches: vec![prefix_all()], filters: vec![] }],
    };
    api::Server {
        protocol: Some(detect(vec![route], None)),
        server_ips: vec![],
        authorizations: default_authorizations(cfg, name),
        labels: labels("", "default", name),
    }
}

fn prefix_all() -> http_api::HttpRouteMatch {
    http_api::HttpRouteMatch { path: Some(http_api::PathMatch { kind: Some(http_api::path_match::Kind::Prefix("/".into())) }), ..Default::default() }
}

fn server_policy(model: &Model, cfg: &IndexConfig, s: &Server) -> api::Server {
    let ns = &s.metadata.namespace;
    let targets = |a: &AuthorizationPolicy, kind: &str, name: &str| a.spec.target_ref.kind_is(kind) && a.spec.target_ref.name == name;
    let policies: Vec<&AuthorizationPolicy> = model
        .of_kind(Kind::AuthorizationPolicy, Some(ns))
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(a) => Some(&**a),
            _ => None,
        })
        .collect();
    let mut authorizations: Vec<api::Authz> =
        policies.iter().filter(|a| targets(a, "Server", &s.metadata.name) || targets(a, "Namespace", ns)).filter_map(|a| authz(model, cfg, a)).collect();
    if let Some(access) = s.spec.access_policy.as_deref().filter(|p| *p != "deny") {
        authorizations.extend(default_authorizations(cfg, access));
    }

    let routes: Vec<api::HttpRoute> = [Kind::PolicyHttpRoute, Kind::HttpRoute]
        .into_iter()
        .flat_map(|k| model.of_kind(k, Some(ns)))
        .filter_map(|r| match r {
            Resource::Route(kind, route) if route.spec.parent_refs.iter().any(|p| p.kind_is("Server") && p.name == s.metadata.name) => Some((*kind, &**route)),
            _ => None,
        })
        .map(|(kind, route)| {
            let authorizations = policies.iter().filter(|a| targets(a, "HTTPRoute", &route.metadata.name)).filter_map(|a| authz(model, cfg, a)).collect();
            http_route(kind, route, authorizations)
        })
        .collect();

    let rate_limit = model.of_kind(Kind::RateLimitPolicy, Some(ns)).find_map(|r| match r {
        Resource::RateLimitPolicy(l) if l.spec.target_ref.name == s.metadata.name => Some(api::HttpLocalRateLimit {
            metadata: Some(outbound::resource("policy.linkerd.io", "HTTPLocalRateLimitPolicy", &l.metadata.name, ns, 0)),
            total: l.spec.total.as_ref().map(|t| api::http_local_rate_limit::Limit { requests_per_second: t.requests_per_second }),
            identity: l.spec.identity.as_ref().map(|t| api::http_local_rate_limit::Limit { requests_per_second: t.requests_per_second }),
            overrides: l
                .spec
                .overrides
                .iter()
                .map(|o| api::http_local_rate_limit::Override {
                    limit: Some(api::http_local_rate_limit::Limit { requests_per_second: o.requests_per_second }),
                    clients: Some(api::http_local_rate_limit::r#override::ClientIdentities {
                        identities: o.client_refs.iter().map(|c| api::Identity { name: cfg.identity(&c.name, c.namespace.as_deref().unwrap_or(ns)) }).collect(),
                    }),
                })
                .collect(),
        }),
        _ => None,
    });

    let kind = match s.spec.proxy_protocol.as_deref() {
        Some("HTTP/1") => proxy_protocol::Kind::Http1(proxy_protocol::Http1 { routes, local_rate_limit: rate_limit }),
        Some("HTTP/2") => proxy_protocol::Kind::Http2(proxy_protocol::Http2 { routes, local_rate_limit: rate_limit }),
        Some("gRPC") => proxy_protocol::Kind::Grpc(proxy_protocol::Grpc { routes: vec![] }),
        Some("opaque") => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {}),
        Some("TLS") => proxy_protocol::Kind::Tls(proxy_protocol::Tls {}),
        _ => {
            return api::Server {
                protocol: Some(detect(routes, rate_limit)),
                server_ips: vec![],
                authorizations,
                labels: labels("policy.linkerd.io", "server", &s.metadata.name),
            }
        }
    };
    api::Server {
        protocol: Some(api::ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations,
        labels: labels("policy.linkerd.io", "server", &s.metadata.name),
    }
}

/// One AuthorizationPolicy as an `Authz`; `None` when an authentication it requires does not
/// exist (Linkerd ignores such a policy, so nothing is allowed by it until the reference resolves).
fn authz(model: &Model, cfg: &IndexConfig, a: &AuthorizationPolicy) -> Option<api::Authz> {
    let ns = &a.metadata.namespace;
    let mut nets: Vec<api::Network> = Vec::new();
    let mut identities: Vec<String> = Vec::new();
    let mut suffixes: Vec<api::IdentitySuffix> = Vec::new();
    let mut mesh = false;
    for r in &a.spec.required_authentication_refs {
        let rns = r.namespace.as_deref().unwrap_or(ns);
        if r.kind_is("ServiceAccount") {
            mesh = true;
            identities.push(cfg.identity(&r.name, rns));
        } else if r.kind_is("MeshTLSAuthentication") {
            let Some(Resource::MeshTlsAuthentication(m)) = model.get(Kind::MeshTlsAuthentication, rns, &r.name) else { return None };
            mesh = true;
            for id in &m.spec.identities {
                match id.strip_prefix('*') {
                    Some(rest) => suffixes
                        .push(api::IdentitySuffix { parts: rest.trim_start_matches('.').split('.').filter(|p| !p.is_empty()).map(str::to_string).collect() }),
                    None => identities.push(id.clone()),
                }
            }
            for sa in &m.spec.identity_refs {
                identities.push(cfg.identity(&sa.name, sa.namespace.as_deref().unwrap_or(rns)));
            }
        } else if r.kind_is("NetworkAuthentication") {
            let Some(Resource::NetworkAuthentication(n)) = model.get(Kind::NetworkAuthentication, rns, &r.name) else { return None };
            nets.extend(n.spec.networks.iter().map(|n| api::Network { net: Some(n.cidr.into()), except: n.except.iter().map(|e| (*e).into()).collect() }));
        }
    }
    if nets.is_empty() {
        nets = networks(&cfg.cluster_networks);
    }
    let authentication = if mesh { mesh_tls(identities, suffixes) } else { unauthenticated() };
    Some(api::Authz {
        networks: nets,
        authentication: Some(authentication),
        labels: labels("policy.linkerd.io", "authorizationpolicy", &a.metadata.name),
        metadata: Some(outbound::resource("policy.linkerd.io", "authorizationpolicy", &a.metadata.name, ns, 0)),
    })
}

fn http_route(kind: Kind, r: &Route, authorizations: Vec<api::Authz>) -> api::HttpRoute {
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| api::http_route::Rule {
            matches: if rule.matches.is_empty() { vec![prefix_all()] } else { rule.matches.iter().map(outbound::http_match).collect() },
            filters: rule
                .filters
                .iter()
                .filter_map(|f| match f.kind.as_str() {
                    "RequestHeaderModifier" => {
                        f.request_header_modifier.as_ref().map(|m| api::http_route::filter::Kind::RequestHeaderModifier(outbound::request_headers(m)))
                    }
                    "RequestRedirect" => outbound::redirect(f).map(api::http_route::filter::Kind::Redirect),
                    _ => None,
                })
                .map(|k| api::http_route::Filter { kind: Some(k) })
                .collect(),
        })
        .collect();
    api::HttpRoute {
        metadata: Some(outbound::resource(kind.group(), "HTTPRoute", &r.metadata.name, &r.metadata.namespace, 0)),
        hosts: outbound::hosts(&r.spec.hostnames),
        authorizations,
        rules,
    }
}
