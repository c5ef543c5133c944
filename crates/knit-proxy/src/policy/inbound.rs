//! Inbound server policy (LINKERD-WIRE.md §4.1): who may reach a local port, over which routes,
//! and how fast. Converted from `linkerd2_proxy_api::inbound::Server`, or synthesized from a
//! default policy name until the control plane answers.
//!
//! The decision is pure: [`ServerPolicy::authorize_http`] picks the route (crate::route), then
//! the first authorization whose networks hold the client's address and whose authentication the
//! client meets; a refusal says which server and route refused and what the proxy saw.

use super::outbound::{self as out, Filter, InvalidPolicy};
use crate::{
    ratelimit::RateLimit,
    route::{self, HostMatch, RequestInfo, RouteMatch},
};
use ipnet::IpNet;
use linkerd2_proxy_api::inbound as api;
use std::{fmt, net::IpAddr, str::FromStr, sync::Arc, time::Duration};

#[cfg(test)]
mod tests;

/// A policy object as metric labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub group: String,
    pub kind: String,
    pub name: String,
}

impl Labels {
    fn default_named(name: &str) -> Self {
        Self { group: String::new(), kind: "default".into(), name: name.into() }
    }

    fn from_meta(m: &out::Meta) -> Self {
        match m {
            out::Meta::Default(name) => Self::default_named(name),
            out::Meta::Resource { group, kind, name, .. } => Self { group: group.clone(), kind: kind.clone(), name: name.clone() },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Detect { timeout: Duration },
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    Unauthenticated,
    /// Mesh TLS with any of these identities or identity suffixes (an empty suffix: any identity).
    MeshTls {
        identities: Vec<String>,
        suffixes: Vec<Vec<String>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

#[derive(Clone, Debug)]
pub struct Authorization {
    pub networks: Vec<Network>,
    pub authentication: Authentication,
    pub labels: Labels,
}

#[derive(Clone, Debug)]
pub struct InboundRoute {
    pub labels: Labels,
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<InboundRule>,
    /// Added to the server's authorizations for this route.
    pub authorizations: Vec<Authorization>,
}

#[derive(Clone, Debug)]
pub struct InboundRule {
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
}

impl route::Routes for [InboundRoute] {
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

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: IpAddr,
    /// The identity proven with mesh TLS.
    pub identity: Option<String>,
    pub tls: bool,
}

#[derive(Clone, Debug)]
pub struct ServerPolicy {
    labels: Labels,
    pub protocol: Protocol,
    authorizations: Vec<Authorization>,
    routes: Vec<InboundRoute>,
    rate_limit: Option<Arc<RateLimit>>,
    /// Set when the control plane's message was unusable: everything is refused with this.
    pub(crate) invalid: Option<String>,
}

pub struct HttpPermit<'p> {
    pub route: Labels,
    pub authz: Labels,
    pub filters: &'p [Filter],
}

pub struct TcpPermit {
    pub authz: Labels,
}

#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("no route matches the request")]
    NoRoute,
    /// `message` is what the client is told: the policy that refused and the identity seen.
    /// `allowed` (what would have been allowed) goes to the log only: a refusal must not hand a
    /// caller the list of identities to impersonate.
    #[error("{message}")]
    Unauthorized { message: String, route: Labels, allowed: String },
}

/// The inbound default policies (`KNIT_PROXY_INBOUND_DEFAULT_POLICY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    Deny,
    AllAuthenticated,
    AllUnauthenticated,
    ClusterAuthenticated,
    ClusterUnauthenticated,
    Audit,
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::AllAuthenticated => "all-authenticated",
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::Audit => "audit",
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [Self::Deny, Self::AllAuthenticated, Self::AllUnauthenticated, Self::ClusterAuthenticated, Self::ClusterUnauthenticated, Self::Audit];
        all.into_iter().find(|p| p.as_str() == s.trim()).ok_or_else(|| format!("expected one of {}", all.map(|p| p.as_str()).join(", ")))
    }
}

impl serde::Serialize for DefaultPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn everywhere() -> Vec<Network> {
    ["0.0.0.0/0", "::/0"].iter().filter_map(|n| n.parse().ok()).map(|net| Network { net, except: vec![] }).collect()
}

impl ServerPolicy {
    /// The policy a default name stands for. `cluster-*` allow `cluster_networks`.
    pub fn default_for(policy: DefaultPolicy, cluster_networks: &[IpNet]) -> Self {
        let cluster = || cluster_networks.iter().map(|net| Network { net: *net, except: vec![] }).collect::<Vec<_>>();
        let any_identity = Authentication::MeshTls { identities: vec![], suffixes: vec![vec![]] };
        let authz = |networks, authentication| Authorization { networks, authentication, labels: Labels::default_named(policy.as_str()) };
        let authorizations = match policy {
            DefaultPolicy::Deny => vec![],
            DefaultPolicy::AllAuthenticated => vec![authz(everywhere(), any_identity)],
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => vec![authz(everywhere(), Authentication::Unauthenticated)],
            DefaultPolicy::ClusterAuthenticated => vec![authz(cluster(), any_identity)],
            DefaultPolicy::ClusterUnauthenticated => vec![authz(cluster(), Authentication::Unauthenticated)],
        };
        Self {
            labels: Labels::default_named(policy.as_str()),
            protocol: Protocol::Detect { timeout: Duration::from_secs(10) },
            authorizations,
            routes: vec![],
            rate_limit: None,
            invalid: None,
        }
    }

    /// A policy that refuses everything with `reason` (an unusable message from the control plane).
    pub fn invalid(reason: &str) -> Self {
        Self {
            labels: Labels::default_named("invalid"),
            protocol: Protocol::Detect { timeout: Duration::from_secs(10) },
            authorizations: vec![],
            routes: vec![],
            rate_limit: None,
            invalid: Some(reason.to_string()),
        }
    }

    /// Lets the local host in, whatever the policy says, as Linkerd's proxy always does: in a
    /// pod, loopback is the pod itself. Not where workloads share the host's loopback (local
    /// mode), where it would let every workload past every policy
    /// (`KNIT_PROXY_INBOUND_TRUST_LOOPBACK=false`).
    pub fn with_localhost(mut self) -> Self {
        let localhost = ["127.0.0.1/32", "::1/128"].iter().filter_map(|n| n.parse().ok()).map(|net| Network { net, except: vec![] }).collect();
        self.authorizations.push(Authorization {
            networks: localhost,
            authentication: Authentication::Unauthenticated,
            labels: Labels::default_named("localhost"),
        });
        self
    }

    /// The same policy for a port that is never detected (`KNIT_PROXY_OPAQUE_PORTS`).
    pub fn opaque(self) -> Self {
        Self { protocol: Protocol::Opaque, ..self }
    }

    pub fn meta(&self) -> &Labels {
        &self.labels
    }

    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.rate_limit.as_deref()
    }

    pub fn authorize_http(&self, req: &RequestInfo<'_>, client: &Client) -> Result<HttpPermit<'_>, Denied> {
        if let Some(reason) = &self.invalid {
            return Err(Denied::Unauthorized { message: format!("the inbound policy is invalid: {reason}"), route: Labels::default(), allowed: String::new() });
        }
        if self.routes.is_empty() {
            // No routes: one default route matching everything, under the server's authorizations.
            let route = Labels::default_named("default");
            return self.find(self.authorizations.iter(), client, &route).map(|authz| HttpPermit { route, authz, filters: &[] });
        }
        let (ri, rule) = route::select(&self.routes[..], req).ok_or(Denied::NoRoute)?;
        let r = &self.routes[ri];
        let authz = self.find(self.authorizations.iter().chain(&r.authorizations), client, &r.labels)?;
        Ok(HttpPermit { route: r.labels.clone(), authz, filters: &r.rules[rule].filters })
    }

    pub fn authorize_tcp(&self, client: &Client) -> Result<TcpPermit, Denied> {
        if let Some(reason) = &self.invalid {
            return Err(Denied::Unauthorized { message: format!("the inbound policy is invalid: {reason}"), route: Labels::default(), allowed: String::new() });
        }
        self.find(self.authorizations.iter(), client, &Labels::default()).map(|authz| TcpPermit { authz })
    }

    fn find<'a>(&self, mut authzs: impl Iterator<Item = &'a Authorization> + Clone, client: &Client, route: &Labels) -> Result<Labels, Denied> {
        if let Some(a) = authzs.clone().find(|a| permits(a, client)) {
            return Ok(a.labels.clone());
        }
        let allowed: Vec<String> = authzs.by_ref().filter(|a| a.labels.name != "localhost").map(describe).collect();
        let seen = match &client.identity {
            Some(id) => format!("with identity {id}"),
            None if client.tls => "with TLS but no client certificate".to_string(),
            None => "without mesh TLS (no identity)".to_string(),
        };
        let route_part = if route.name.is_empty() { String::new() } else { format!(" (route {})", route.name) };
        let allowed = if allowed.is_empty() { "nothing (no authorization targets it)".to_string() } else { allowed.join("; ") };
        let message = format!("{} {}{route_part}: client {} {seen} is not authorized", self.labels.kind, self.labels.name, client.addr);
        Err(Denied::Unauthorized { message, route: route.clone(), allowed })
    }
}

fn permits(a: &Authorization, client: &Client) -> bool {
    let in_networks = a.networks.iter().any(|n| n.net.contains(&client.addr) && !n.except.iter().any(|e| e.contains(&client.addr)));
    in_networks
        && match &a.authentication {
            Authentication::Unauthenticated => true,
            Authentication::MeshTls { identities, suffixes } => {
                client.identity.as_deref().is_some_and(|id| identities.iter().any(|i| i == id) || suffixes.iter().any(|s| identity_has_suffix(id, s)))
            }
        }
}

fn identity_has_suffix(id: &str, suffix: &[String]) -> bool {
    let labels: Vec<&str> = id.split('.').collect();
    suffix.len() <= labels.len() && labels[labels.len() - suffix.len()..].iter().zip(suffix).all(|(a, b)| *a == b)
}

fn describe(a: &Authorization) -> String {
    let nets: Vec<String> = a.networks.iter().map(|n| n.net.to_string()).collect();
    let who = match &a.authentication {
        Authentication::Unauthenticated => "any client".to_string(),
        Authentication::MeshTls { identities, suffixes } if identities.is_empty() && suffixes.iter().any(Vec::is_empty) => "any mesh identity".to_string(),
        Authentication::MeshTls { identities, suffixes } => {
            let mut all: Vec<String> = identities.clone();
            all.extend(suffixes.iter().map(|s| format!("*.{}", s.join("."))));
            format!("mesh identities [{}]", all.join(", "))
        }
    };
    format!("{} {} ({who} from {})", a.labels.kind, a.labels.name, nets.join(","))
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

// === Conversion from the control plane's message ===

impl TryFrom<api::Server> for ServerPolicy {
    type Error = InvalidPolicy;
    fn try_from(s: api::Server) -> Result<Self, InvalidPolicy> {
        let name = s.labels.get("name").cloned().ok_or_else(|| InvalidPolicy::missing("labels.name"))?;
        let labels = Labels { group: s.labels.get("group").cloned().unwrap_or_default(), kind: s.labels.get("kind").cloned().unwrap_or_default(), name };
        use api::proxy_protocol::Kind;
        let kind = s.protocol.as_ref().and_then(|p| p.kind.as_ref()).ok_or_else(|| InvalidPolicy::missing("protocol"))?;
        let (protocol, routes, limit) = match kind {
            Kind::Detect(d) => {
                let timeout = d.timeout.ok_or_else(|| InvalidPolicy::missing("protocol.detect.timeout"))?;
                let timeout = Duration::try_from(timeout).map_err(|e| InvalidPolicy::new("protocol.detect.timeout", e.to_string()))?;
                (Protocol::Detect { timeout }, &d.http_routes[..], d.http_local_rate_limit.as_ref())
            }
            Kind::Http1(h) => (Protocol::Http1, &h.routes[..], h.local_rate_limit.as_ref()),
            Kind::Http2(h) => (Protocol::Http2, &h.routes[..], h.local_rate_limit.as_ref()),
            Kind::Grpc(_) => (Protocol::Grpc, &[][..], None),
            Kind::Opaque(_) => (Protocol::Opaque, &[][..], None),
            Kind::Tls(_) => (Protocol::Tls, &[][..], None),
        };
        let authorizations = out::each(&s.authorizations, "authorizations", authorization)?;
        let routes = out::each(routes, "protocol.routes", inbound_route)?;
        let rate_limit = limit.map(rate_limit).map(Arc::new);
        Ok(Self { labels, protocol, authorizations, routes, rate_limit, invalid: None })
    }
}

fn authorization(a: &api::Authz) -> Result<Authorization, InvalidPolicy> {
    if a.networks.is_empty() {
        return Err(InvalidPolicy::new("networks", "expected at least one network"));
    }
    let net = |n: &linkerd2_proxy_api::net::IpNetwork| IpNet::try_from(*n).map_err(|e| InvalidPolicy::new("net", e.to_string()));
    let networks = out::each(&a.networks, "networks", |n| {
        let main = net(n.net.as_ref().ok_or_else(|| InvalidPolicy::missing("net"))?)?;
        Ok(Network { net: main, except: out::each(&n.except, "except", net)? })
    })?;
    use api::authn::{permit_mesh_tls::Clients, Permit};
    let authentication = match a.authentication.as_ref().and_then(|a| a.permit.as_ref()).ok_or_else(|| InvalidPolicy::missing("authentication.permit"))? {
        Permit::Unauthenticated(_) => Authentication::Unauthenticated,
        Permit::MeshTls(m) => match m.clients.as_ref().ok_or_else(|| InvalidPolicy::missing("authentication.meshTLS.clients"))? {
            // Mesh TLS without a client identity requirement: any mesh identity.
            Clients::Unauthenticated(_) => Authentication::MeshTls { identities: vec![], suffixes: vec![vec![]] },
            Clients::Identities(ids) => Authentication::MeshTls {
                identities: ids.identities.iter().map(|i| i.name.clone()).collect(),
                suffixes: ids.suffixes.iter().map(|s| s.parts.clone()).collect(),
            },
        },
    };
    let labels = match &a.metadata {
        Some(m) => Labels::from_meta(&out::meta(Some(m)).map_err(|e| e.at("metadata"))?),
        None => Labels {
            group: a.labels.get("group").cloned().unwrap_or_default(),
            kind: a.labels.get("kind").cloned().unwrap_or_default(),
            name: a.labels.get("name").cloned().unwrap_or_default(),
        },
    };
    Ok(Authorization { networks, authentication, labels })
}

fn inbound_route(r: &api::HttpRoute) -> Result<InboundRoute, InvalidPolicy> {
    let labels = Labels::from_meta(&out::meta(r.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
    let hosts = out::hosts(&r.hosts)?;
    let rules = out::each(&r.rules, "rules", |rule| {
        let matches = out::each(&rule.matches, "matches", |m| RouteMatch::try_from(m).map_err(|e| InvalidPolicy::new("", e.to_string())))?;
        let prefixes = out::path_prefixes(&matches);
        let filters = out::each(&rule.filters, "filters", |f| inbound_filter(f, &prefixes))?;
        Ok(InboundRule { matches, filters })
    })?;
    let authorizations = out::each(&r.authorizations, "authorizations", authorization)?;
    Ok(InboundRoute { labels, hosts, rules, authorizations })
}

fn inbound_filter(f: &api::http_route::Filter, prefixes: &[String]) -> Result<Filter, InvalidPolicy> {
    use api::http_route::filter::Kind;
    match f.kind.as_ref().ok_or_else(|| InvalidPolicy::missing("kind"))? {
        Kind::FailureInjector(fi) => {
            let (numerator, denominator) = out::ratio(fi.ratio.as_ref()).map_err(|e| e.at("failure_injector"))?;
            let status = out::status(fi.status, "failure_injector.status")?;
            Ok(Filter::FailureInjector { status, message: fi.message.clone(), numerator, denominator })
        }
        Kind::RequestHeaderModifier(m) => {
            Ok(Filter::RequestHeaders(out::header_modifier(m.add.as_ref(), m.set.as_ref(), &m.remove).map_err(|e| e.at("request_header_modifier"))?))
        }
        Kind::Redirect(r) => out::redirect(r, prefixes).map_err(|e| e.at("redirect")),
    }
}

fn rate_limit(l: &api::HttpLocalRateLimit) -> RateLimit {
    let rps = |l: &Option<api::http_local_rate_limit::Limit>| l.as_ref().map(|l| l.requests_per_second);
    let overrides = l
        .overrides
        .iter()
        .filter_map(|o| Some((o.clients.as_ref()?.identities.iter().map(|i| i.name.clone()).collect(), o.limit.as_ref()?.requests_per_second)))
        .collect();
    RateLimit::new(rps(&l.total), rps(&l.identity), overrides)
}
