//! HTTP route matching shared by outbound and inbound policy: which (route, rule) of a policy
//! serves a request, by the Gateway API's precedence rules.
//!
//! Matching is a pure function over plain data. A policy converts its routes' matches once
//! ([`HostMatch`], [`RouteMatch`], from `linkerd2-proxy-api` messages), exposes them through
//! [`Routes`], and every request is summarised once as a [`RequestInfo`]. [`select`] scores each
//! candidate and keeps the best; the score is a plain tuple ([`HostScore`], [`MatchScore`]) so the
//! precedence is visible in the derive order of two small types rather than in branching code.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};
use linkerd2_proxy_api::{grpc_route as grpc_api, http_route as api};
use std::borrow::Cow;

#[cfg(test)]
mod tests;

/// What route matching reads from a request.
#[derive(Clone, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// Lower-case host without port and without trailing dot, from the URI authority, else `Host`.
    pub host: Option<Cow<'a, str>>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestInfo<'a> {
    pub fn new<B>(req: &'a http::Request<B>) -> Self {
        let uri = req.uri();
        let host = match uri.host() {
            Some(h) => Some(h),
            None => req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(strip_port),
        };
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        Self { method: req.method(), host: host.and_then(normalize_host), path, query: uri.query(), headers: req.headers() }
    }
}

/// `host[:port]` or `[v6]:port` → the host alone (brackets kept, as `Uri::host` keeps them).
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) })
}

/// A route's `hostnames` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case, without trailing dot.
    Exact(String),
    /// `*.example.com` as reverse labels `["com", "example"]`, lower-case. The wildcard stands for
    /// one or more labels, so `example.com` itself does not match.
    Suffix { reverse_labels: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct RouteMatch {
    /// `None` matches every path, as the Gateway API's default `PathPrefix /` does.
    pub path: Option<PathMatch>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// All must match.
    pub query_params: Vec<QueryParamMatch>,
    pub method: Option<Method>,
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Gateway API `PathPrefix`: whole path segments, so `/foo` matches `/foo`, `/foo/` and
    /// `/foo/bar` but not `/foobar`. Stored without a trailing `/` (`/` itself is stored as "").
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(regex_lite::Regex),
}

#[derive(Clone, Debug)]
pub enum ValueMatch<T> {
    Exact(T),
    /// Anchored: the whole value must match.
    Regex(regex_lite::Regex),
}

/// Matches when any value of the (case-insensitive) header matches.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch<Bytes>,
}

/// Matches when any occurrence of the parameter in the raw query matches; names and values are
/// compared raw, without percent-decoding.
#[derive(Clone, Debug)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: ValueMatch<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRoute {
    #[error("host match: expected an exact host or a suffix, found neither")]
    MissingHostMatch,
    #[error("host match {0:?}: expected a DNS name (letters, digits, '-', '.'), found an invalid one")]
    InvalidHost(String),
    #[error("path match: expected exact, prefix or regex, found none")]
    MissingPathKind,
    #[error("path match {0:?}: expected an absolute path starting with '/'")]
    RelativePath(String),
    #[error("regex {pattern:?}: {reason}; fix the route's match expression")]
    Regex { pattern: String, reason: String },
    #[error("header match {0:?}: expected a valid HTTP header name")]
    HeaderName(String),
    #[error("header match {0:?}: expected an exact value or a regex, found neither")]
    MissingHeaderValue(String),
    #[error("query parameter match {0:?}: expected a non-empty name with an exact value or a regex")]
    QueryParam(String),
    #[error("method match: {0}")]
    Method(String),
    #[error("gRPC match: a method ({0:?}) needs its service; expected service, or service and method")]
    GrpcMethodWithoutService(String),
}

impl TryFrom<&api::HostMatch> for HostMatch {
    type Error = InvalidRoute;

    fn try_from(m: &api::HostMatch) -> Result<Self, InvalidRoute> {
        let valid_label = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match &m.r#match {
            Some(api::host_match::Match::Exact(h)) => {
                let host = h.trim_end_matches('.').to_ascii_lowercase();
                if !host.split('.').all(valid_label) {
                    return Err(InvalidRoute::InvalidHost(h.clone()));
                }
                Ok(Self::Exact(host))
            }
            Some(api::host_match::Match::Suffix(s)) => {
                if s.reverse_labels.is_empty() || !s.reverse_labels.iter().all(|l| valid_label(l)) {
                    return Err(InvalidRoute::InvalidHost(format!("*.{}", s.reverse_labels.iter().rev().cloned().collect::<Vec<_>>().join("."))));
                }
                Ok(Self::Suffix { reverse_labels: s.reverse_labels.iter().map(|l| l.to_ascii_lowercase()).collect() })
            }
            None => Err(InvalidRoute::MissingHostMatch),
        }
    }
}

impl TryFrom<&api::HttpRouteMatch> for RouteMatch {
    type Error = InvalidRoute;

    fn try_from(m: &api::HttpRouteMatch) -> Result<Self, InvalidRoute> {
        let path = m.path.as_ref().map(path_match).transpose()?;
        let headers = m.headers.iter().map(header_match).collect::<Result<_, _>>()?;
        let query_params = m.query_params.iter().map(query_match).collect::<Result<_, _>>()?;
        let method =
            m.method.clone().map(|method| Method::try_from(method).map_err(|e| InvalidRoute::Method(format!("expected an HTTP method: {e}")))).transpose()?;
        Ok(Self { path, headers, query_params, method })
    }
}

/// A gRPC route match is an HTTP match on the request path `/{service}/{method}`: service and
/// method give an exact path, service alone the prefix `/{service}`, neither any path.
impl TryFrom<&grpc_api::GrpcRouteMatch> for RouteMatch {
    type Error = InvalidRoute;

    fn try_from(m: &grpc_api::GrpcRouteMatch) -> Result<Self, InvalidRoute> {
        let path = match m.rpc.as_ref().map(|r| (r.service.as_str(), r.method.as_str())) {
            None | Some(("", "")) => None,
            Some(("", method)) => return Err(InvalidRoute::GrpcMethodWithoutService(method.to_string())),
            Some((service, "")) => Some(PathMatch::Prefix(format!("/{service}"))),
            Some((service, method)) => Some(PathMatch::Exact(format!("/{service}/{method}"))),
        };
        let headers = m.headers.iter().map(header_match).collect::<Result<_, _>>()?;
        Ok(Self { path, headers, query_params: Vec::new(), method: None })
    }
}

fn anchored(pattern: &str) -> Result<regex_lite::Regex, InvalidRoute> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| InvalidRoute::Regex { pattern: pattern.to_string(), reason: e.to_string() })
}

fn path_match(m: &api::PathMatch) -> Result<PathMatch, InvalidRoute> {
    use api::path_match::Kind;
    match &m.kind {
        Some(Kind::Exact(p)) if p.starts_with('/') => Ok(PathMatch::Exact(p.clone())),
        Some(Kind::Prefix(p)) if p.starts_with('/') => Ok(PathMatch::Prefix(p.trim_end_matches('/').to_string())),
        Some(Kind::Exact(p) | Kind::Prefix(p)) => Err(InvalidRoute::RelativePath(p.clone())),
        Some(Kind::Regex(r)) => Ok(PathMatch::Regex(anchored(r)?)),
        None => Err(InvalidRoute::MissingPathKind),
    }
}

fn header_match(m: &api::HeaderMatch) -> Result<HeaderMatch, InvalidRoute> {
    use api::header_match::Value;
    let name = HeaderName::try_from(m.name.as_str()).map_err(|_| InvalidRoute::HeaderName(m.name.clone()))?;
    let value = match &m.value {
        Some(Value::Exact(v)) => ValueMatch::Exact(Bytes::copy_from_slice(v)),
        Some(Value::Regex(r)) => ValueMatch::Regex(anchored(r)?),
        None => return Err(InvalidRoute::MissingHeaderValue(m.name.clone())),
    };
    Ok(HeaderMatch { name, value })
}

fn query_match(m: &api::QueryParamMatch) -> Result<QueryParamMatch, InvalidRoute> {
    use api::query_param_match::Value;
    let value = match &m.value {
        _ if m.name.is_empty() => return Err(InvalidRoute::QueryParam(m.name.clone())),
        Some(Value::Exact(v)) => ValueMatch::Exact(v.clone()),
        Some(Value::Regex(r)) => ValueMatch::Regex(anchored(r)?),
        None => return Err(InvalidRoute::QueryParam(m.name.clone())),
    };
    Ok(QueryParamMatch { name: m.name.clone(), value })
}

/// Something with hosts and rules, each rule with a list of matches (an empty list matches
/// every request, as a Gateway API rule without matches does).
pub trait Routes {
    fn route_count(&self) -> usize;
    fn hosts(&self, route: usize) -> &[HostMatch];
    fn rule_count(&self, route: usize) -> usize;
    fn matches(&self, route: usize, rule: usize) -> &[RouteMatch];
}

/// How well a route's hostnames match; larger is better. A route without hostnames matches any
/// host, below any route that names the request's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostScore {
    Any,
    /// The number of labels the wildcard's suffix has: `*.a.example.com` beats `*.example.com`.
    Suffix(usize),
    Exact,
}

/// How specifically a rule's match matches; larger is better. Field order is precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchScore {
    pub path: PathScore,
    pub method: bool,
    pub headers: usize,
    pub query_params: usize,
}

/// Exact beats any prefix, a longer prefix beats a shorter one, and any prefix beats a regex
/// (longer regexes first, as Linkerd orders them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathScore {
    Regex(usize),
    Prefix(usize),
    Exact(usize),
}

impl HostMatch {
    pub fn score(&self, host: &str) -> Option<HostScore> {
        match self {
            Self::Exact(h) => (h == host).then_some(HostScore::Exact),
            Self::Suffix { reverse_labels } => {
                let mut labels = host.rsplit('.');
                let suffix_matches = reverse_labels.iter().all(|want| labels.next() == Some(want.as_str()));
                // The wildcard needs at least one label of its own.
                (suffix_matches && labels.next().is_some_and(|l| !l.is_empty())).then_some(HostScore::Suffix(reverse_labels.len()))
            }
        }
    }
}

impl PathMatch {
    pub fn score(&self, path: &str) -> Option<PathScore> {
        match self {
            Self::Exact(p) => (p == path).then_some(PathScore::Exact(p.len())),
            // `/` (stored as "") matches every path, even `*` of `OPTIONS *`.
            Self::Prefix(p) if p.is_empty() => Some(PathScore::Prefix(1)),
            Self::Prefix(p) => {
                let rest = path.strip_prefix(p.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some(PathScore::Prefix(p.len() + 1))
            }
            Self::Regex(r) => r.is_match(path).then_some(PathScore::Regex(r.as_str().len())),
        }
    }
}

impl ValueMatch<Bytes> {
    fn matches(&self, value: &http::HeaderValue) -> bool {
        match self {
            Self::Exact(v) => value.as_bytes() == v.as_ref(),
            Self::Regex(r) => value.to_str().is_ok_and(|v| r.is_match(v)),
        }
    }
}

impl ValueMatch<String> {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => value == v,
            Self::Regex(r) => r.is_match(value),
        }
    }
}

impl RouteMatch {
    /// `None` when the request does not match; else how specifically it does.
    pub fn score(&self, req: &RequestInfo<'_>) -> Option<MatchScore> {
        let path = match &self.path {
            Some(p) => p.score(req.path)?,
            None => PathScore::Prefix(1),
        };
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return None;
        }
        for h in &self.headers {
            if !req.headers.get_all(&h.name).iter().any(|v| h.value.matches(v)) {
                return None;
            }
        }
        for q in &self.query_params {
            let mut pairs = req.query.unwrap_or_default().split('&').map(|kv| kv.split_once('=').unwrap_or((kv, "")));
            if !pairs.any(|(k, v)| k == q.name && q.value.matches(v)) {
                return None;
            }
        }
        Some(MatchScore { path, method: self.method.is_some(), headers: self.headers.len(), query_params: self.query_params.len() })
    }
}

/// What a rule without matches scores: the Gateway API's default match, `PathPrefix /`.
const MATCH_ALL: MatchScore = MatchScore { path: PathScore::Prefix(1), method: false, headers: 0, query_params: 0 };

/// The (route index, rule index) that serves `req`, by Gateway API precedence: among routes whose
/// hosts match (an empty host list matches any host; exact beats the longest suffix), the rule
/// match with: exact path > longest prefix > regex; then method present; then most headers; then
/// most query params; ties go to the earlier route, then the earlier rule (the control plane sends
/// routes already ordered by creation time and name). None: no route matches.
pub fn select<R: Routes + ?Sized>(routes: &R, req: &RequestInfo<'_>) -> Option<(usize, usize)> {
    let mut best: Option<((HostScore, MatchScore), (usize, usize))> = None;
    for route in 0..routes.route_count() {
        let hosts = routes.hosts(route);
        let host = if hosts.is_empty() {
            HostScore::Any
        } else {
            let Some(h) = req.host.as_deref() else { continue };
            match hosts.iter().filter_map(|m| m.score(h)).max() {
                Some(s) => s,
                None => continue,
            }
        };
        for rule in 0..routes.rule_count(route) {
            let matches = routes.matches(route, rule);
            let score = if matches.is_empty() { Some(MATCH_ALL) } else { matches.iter().filter_map(|m| m.score(req)).max() };
            let Some(score) = score else { continue };
            // Strictly greater: on a tie the earlier (route, rule) stays.
            if best.as_ref().is_none_or(|(b, _)| (host, score) > *b) {
                best = Some(((host, score), (route, rule)));
            }
        }
    }
    best.map(|(_, at)| at)
}
