//! What serde cannot check: the values each field may take, so that a resource that reaches the
//! index always translates into a policy the proxies accept. Errors are `(field, reason)`.

use super::{annotations, HeaderModifier, Kind, Resource, Route, RouteFilter, RouteMatch, Service};
use std::sync::Arc;

type Invalid = (String, String);

pub fn validate(resource: Resource) -> Result<Resource, Invalid> {
    if resource.meta().name.is_empty() {
        return Err(("metadata.name".into(), "must not be empty".into()));
    }
    Ok(match resource {
        Resource::Service(s) => {
            let mut s = Arc::unwrap_or_clone(s);
            s.config = annotations::parse(&s.metadata.annotations)?;
            service(&s)?;
            Resource::Service(Arc::new(s))
        }
        Resource::Route(kind, r) => {
            let mut r = Arc::unwrap_or_clone(r);
            r.config = annotations::parse(&r.metadata.annotations)?;
            route(&r)?;
            if matches!(kind, Kind::TcpRoute | Kind::TlsRoute) {
                opaque_route(kind, &r)?;
            }
            Resource::Route(kind, Arc::new(r))
        }
        Resource::Link(l) => {
            crate::multicluster::LinkSettings::of(&l)?;
            Resource::Link(l)
        }
        Resource::EgressNetwork(e) => {
            if e.spec.networks.as_ref().is_some_and(Vec::is_empty) {
                return Err(("spec.networks".into(), "must list at least one network, or be left out for everything outside the cluster".into()));
            }
            Resource::EgressNetwork(e)
        }
        Resource::Server(s) => {
            let spec = &s.spec;
            if spec.pod_selector.is_some() == spec.external_workload_selector.is_some() {
                return Err(("spec".into(), "exactly one of podSelector and externalWorkloadSelector is required".into()));
            }
            if let Some(p) = &spec.proxy_protocol {
                one_of("spec.proxyProtocol", p, &["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"])?;
            }
            if let Some(p) = &spec.access_policy {
                one_of("spec.accessPolicy", p, &DEFAULT_POLICIES)?;
            }
            Resource::Server(s)
        }
        Resource::AuthorizationPolicy(a) => {
            let t = &a.spec.target_ref;
            one_of("spec.targetRef.kind", t.kind.as_deref().unwrap_or(""), &["Server", "HTTPRoute", "GRPCRoute", "Namespace"])?;
            for (i, r) in a.spec.required_authentication_refs.iter().enumerate() {
                let field = format!("spec.requiredAuthenticationRefs[{i}].kind");
                one_of(&field, r.kind.as_deref().unwrap_or(""), &["MeshTLSAuthentication", "NetworkAuthentication", "ServiceAccount"])?;
            }
            Resource::AuthorizationPolicy(a)
        }
        Resource::MeshTlsAuthentication(m) => {
            if m.spec.identities.is_empty() && m.spec.identity_refs.is_empty() {
                return Err(("spec".into(), "identities or identityRefs must list at least one identity".into()));
            }
            for (i, id) in m.spec.identities.iter().enumerate() {
                if id.is_empty() || (id.contains('*') && id != "*" && id.strip_prefix("*.").is_none_or(|s| s.contains('*'))) {
                    return Err((format!("spec.identities[{i}]"), format!("expected an identity, \"*\" or \"*.SUFFIX\", found {id:?}")));
                }
            }
            for (i, r) in m.spec.identity_refs.iter().enumerate() {
                one_of(&format!("spec.identityRefs[{i}].kind"), r.kind.as_deref().unwrap_or(""), &["ServiceAccount"])?;
            }
            Resource::MeshTlsAuthentication(m)
        }
        Resource::NetworkAuthentication(n) => {
            if n.spec.networks.is_empty() {
                return Err(("spec.networks".into(), "must list at least one network".into()));
            }
            Resource::NetworkAuthentication(n)
        }
        Resource::RateLimitPolicy(r) => {
            one_of("spec.targetRef.kind", r.spec.target_ref.kind.as_deref().unwrap_or(""), &["Server"])?;
            Resource::RateLimitPolicy(r)
        }
        Resource::TrafficSplit(t) => {
            if t.spec.backends.is_empty() {
                return Err(("spec.backends".into(), "must list at least one backend".into()));
            }
            Resource::TrafficSplit(t)
        }
        r @ Resource::ExternalWorkload(_) => r,
    })
}

/// The default inbound policies (LINKERD-WIRE.md §4.1).
pub const DEFAULT_POLICIES: [&str; 7] =
    ["all-unauthenticated", "all-authenticated", "cluster-unauthenticated", "cluster-authenticated", "deny", "audit", "all-authenticated-cluster"];

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), Invalid> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err((field.to_string(), format!("expected one of {}, found {value:?}", allowed.join(", "))))
    }
}

fn service(s: &Service) -> Result<(), Invalid> {
    for (i, p) in s.spec.ports.iter().enumerate() {
        if p.port == 0 {
            return Err((format!("spec.ports[{i}].port"), "must be from 1 to 65535".into()));
        }
        if s.spec.ports[..i].iter().any(|q| q.port == p.port) {
            return Err((format!("spec.ports[{i}].port"), format!("port {} is listed twice", p.port)));
        }
    }
    if let Some(ip) = &s.spec.cluster_ip {
        if ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
            return Err(("spec.clusterIP".into(), format!("expected an IP address or None, found {ip:?}")));
        }
    }
    Ok(())
}

fn route(r: &Route) -> Result<(), Invalid> {
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            route_match(&format!("{at}.matches[{j}]"), m)?;
        }
        for (j, f) in rule.filters.iter().enumerate() {
            filter(&format!("{at}.filters[{j}]"), f)?;
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            for (k, f) in b.filters.iter().enumerate() {
                filter(&format!("{at}.backendRefs[{j}].filters[{k}]"), f)?;
            }
        }
        if let Some(t) = &rule.timeouts {
            for (name, v) in [("request", &t.request), ("backendRequest", &t.backend_request)] {
                if let Some(v) = v {
                    knit_core::parse::duration(v).map_err(|e| (format!("{at}.timeouts.{name}"), e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

/// TCP and TLS routes: one rule of weighted backends, no HTTP matches or filters (Linkerd's proxy
/// takes exactly one rule per opaque or TLS route).
fn opaque_route(kind: Kind, r: &Route) -> Result<(), Invalid> {
    if r.spec.rules.len() != 1 {
        return Err(("spec.rules".into(), format!("a {} takes exactly one rule, found {}", kind.name(), r.spec.rules.len())));
    }
    let rule = &r.spec.rules[0];
    if !rule.matches.is_empty() || !rule.filters.is_empty() {
        return Err(("spec.rules[0]".into(), format!("a {} rule has backendRefs only: matches and filters are HTTP's", kind.name())));
    }
    if kind == Kind::TcpRoute && !r.spec.hostnames.is_empty() {
        return Err(("spec.hostnames".into(), "a TCPRoute has no hostnames (a TLSRoute matches by SNI)".into()));
    }
    for (i, h) in r.spec.hostnames.iter().enumerate() {
        let name = h.strip_prefix("*.").unwrap_or(h);
        if name.is_empty() || !name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
            return Err((format!("spec.hostnames[{i}]"), format!("expected a host name or *.SUFFIX, found {h:?}")));
        }
    }
    Ok(())
}

fn route_match(at: &str, m: &RouteMatch) -> Result<(), Invalid> {
    if let Some(p) = &m.path {
        one_of(&format!("{at}.path.type"), &p.kind, &["Exact", "PathPrefix", "RegularExpression"])?;
        match p.kind.as_str() {
            "RegularExpression" => regex(&format!("{at}.path.value"), &p.value)?,
            _ if !p.value.starts_with('/') => return Err((format!("{at}.path.value"), format!("a path starts with '/', found {:?}", p.value))),
            _ => {}
        }
    }
    for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (k, h) in list.iter().enumerate() {
            one_of(&format!("{at}.{what}[{k}].type"), &h.kind, &["Exact", "RegularExpression"])?;
            if h.kind == "RegularExpression" {
                regex(&format!("{at}.{what}[{k}].value"), &h.value)?;
            }
            if what == "headers" && http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err((format!("{at}.headers[{k}].name"), format!("not a valid header name: {:?}", h.name)));
            }
        }
    }
    if let Some(super::MethodMatch::Http(method)) = &m.method {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err((format!("{at}.method"), format!("not an HTTP method: {method:?}")));
        }
    }
    Ok(())
}

fn regex(field: &str, value: &str) -> Result<(), Invalid> {
    regex_lite::Regex::new(value).map(drop).map_err(|e| (field.to_string(), format!("invalid regular expression: {e}")))
}

fn filter(at: &str, f: &RouteFilter) -> Result<(), Invalid> {
    let headers = |field: &str, m: &Option<HeaderModifier>| -> Result<(), Invalid> {
        let m = m.as_ref().ok_or_else(|| (format!("{at}.{field}"), format!("required for a {} filter", f.kind)))?;
        for h in m.set.iter().chain(&m.add) {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() || http::HeaderValue::from_str(&h.value).is_err() {
                return Err((format!("{at}.{field}"), format!("invalid header {}: {:?}", h.name, h.value)));
            }
        }
        Ok(())
    };
    match f.kind.as_str() {
        "RequestHeaderModifier" => headers("requestHeaderModifier", &f.request_header_modifier),
        "ResponseHeaderModifier" => headers("responseHeaderModifier", &f.response_header_modifier),
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref().ok_or_else(|| (format!("{at}.requestRedirect"), "required for a RequestRedirect filter".to_string()))?;
            if let Some(code) = r.status_code {
                one_of(&format!("{at}.requestRedirect.statusCode"), &code.to_string(), &["301", "302"])?;
            }
            if let Some(s) = &r.scheme {
                one_of(&format!("{at}.requestRedirect.scheme"), s, &["http", "https"])?;
            }
            if let Some(p) = &r.path {
                one_of(&format!("{at}.requestRedirect.path.type"), &p.kind, &["ReplaceFullPath", "ReplacePrefixMatch"])?;
            }
            Ok(())
        }
        other => Err((format!("{at}.type"), format!("expected RequestHeaderModifier, ResponseHeaderModifier or RequestRedirect, found {other:?}"))),
    }
}
