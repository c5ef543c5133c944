//! `linkerd2_proxy_api::outbound::OutboundPolicy` → [`OutboundPolicy`], validated as Linkerd's
//! proxy validates it (`linkerd/proxy/client-policy`). Every function returns errors relative to
//! the message it converts; callers prefix the field they passed in with [`InvalidPolicy::at`],
//! so the final error carries the full path.

use super::*;
use crate::retry::{self, InvalidBackoff};
use knit_core::destination::{Authority, MetricLabels};
use linkerd2_proxy_api::{destination, http_route as http_api, meta as meta_api, outbound as api};
use std::{collections::HashMap, net::SocketAddr};

/// Converts a rule's `Distribution` (each route kind has its own generated types of the same
/// shape), returning from the enclosing function on error.
macro_rules! distribution {
    ($dist:expr, $proto:ident, $filter:expr) => {{
        use api::$proto::distribution::Kind;
        let filter = $filter;
        let converted = match $dist.and_then(|d| d.kind.as_ref()) {
            None => Err(InvalidPolicy::missing("backends")),
            Some(Kind::Empty(_)) => Ok(Distribution::Empty),
            Some(Kind::FirstAvailable(f)) if f.backends.is_empty() => {
                Err(InvalidPolicy::new("backends.first_available", "expected at least one backend (use `empty` for none)"))
            }
            Some(Kind::FirstAvailable(f)) => each(&f.backends, "first_available", |rb| route_backend(rb.backend.as_ref(), &rb.filters, &filter))
                .map(Distribution::FirstAvailable)
                .map_err(|e| e.at("backends")),
            Some(Kind::RandomAvailable(r)) if r.backends.is_empty() => {
                Err(InvalidPolicy::new("backends.random_available", "expected at least one backend (use `empty` for none)"))
            }
            Some(Kind::RandomAvailable(r)) => each(&r.backends, "random_available", |w| {
                let rb = w.backend.as_ref().ok_or_else(|| InvalidPolicy::missing("backend"))?;
                Ok((route_backend(rb.backend.as_ref(), &rb.filters, &filter)?, w.weight))
            })
            .map(Distribution::RandomAvailable)
            .map_err(|e| e.at("backends")),
        };
        converted?
    }};
}

impl TryFrom<api::OutboundPolicy> for OutboundPolicy {
    type Error = InvalidPolicy;

    fn try_from(p: api::OutboundPolicy) -> Result<Self, InvalidPolicy> {
        Self::try_from(&p)
    }
}

impl TryFrom<&api::OutboundPolicy> for OutboundPolicy {
    type Error = InvalidPolicy;

    fn try_from(p: &api::OutboundPolicy) -> Result<Self, InvalidPolicy> {
        let meta = Arc::new(meta(p.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
        let kind = p.protocol.as_ref().and_then(|p| p.kind.as_ref()).ok_or_else(|| InvalidPolicy::missing("protocol"))?;
        let protocol = protocol(kind).map_err(|e| e.at("protocol"))?;
        let authority = service_authority(&meta, &protocol);
        Ok(Self { meta, protocol, authority })
    }
}

/// A Service policy's logical name: the discovery path of the backend that is the Service itself
/// (`NAME.NS.svc.DOMAIN:PORT`, which only the control plane knows the domain of).
fn service_authority(meta: &Meta, protocol: &Protocol) -> Option<Authority> {
    let Meta::Resource { kind, name, namespace, port, .. } = meta else { return None };
    if kind != "Service" || *port == 0 {
        return None;
    }
    let (prefix, suffix) = (format!("{name}.{namespace}.svc."), format!(":{port}"));
    let routes: Vec<&Distribution> = match protocol {
        Protocol::Detect { opaque, http1, http2, .. } => {
            let http = http1.routes.iter().chain(http2.routes.iter()).flat_map(|r| r.rules.iter().map(|rule| &rule.backends));
            http.chain(opaque.routes.iter().map(|r| &r.backends)).collect()
        }
        Protocol::Http1(p) | Protocol::Http2(p) | Protocol::Grpc(p) => p.routes.iter().flat_map(|r| r.rules.iter().map(|rule| &rule.backends)).collect(),
        Protocol::Opaque(p) | Protocol::Tls(p) => p.routes.iter().map(|r| &r.backends).collect(),
    };
    routes.into_iter().flat_map(Distribution::backends).find_map(|b| match &b.backend.kind {
        BackendKind::Balancer { path, .. } if path.starts_with(&prefix) && path.ends_with(&suffix) => path.parse().ok(),
        _ => None,
    })
}

fn protocol(kind: &api::proxy_protocol::Kind) -> Result<Protocol, InvalidPolicy> {
    use api::proxy_protocol::Kind;
    Ok(match kind {
        Kind::Detect(d) => {
            let inner = || -> Result<Protocol, InvalidPolicy> {
                let timeout = required_duration(d.timeout.as_ref(), "timeout")?;
                let opaque = d.opaque.as_ref().ok_or_else(|| InvalidPolicy::missing("opaque"))?;
                let http1 = d.http1.as_ref().ok_or_else(|| InvalidPolicy::missing("http1"))?;
                let http2 = d.http2.as_ref().ok_or_else(|| InvalidPolicy::missing("http2"))?;
                Ok(Protocol::Detect {
                    timeout,
                    opaque: opaque_policy(&opaque.routes).map_err(|e| e.at("opaque"))?,
                    http1: http_policy(&http1.routes, http1.failure_accrual.as_ref()).map_err(|e| e.at("http1"))?,
                    http2: http_policy(&http2.routes, http2.failure_accrual.as_ref()).map_err(|e| e.at("http2"))?,
                })
            };
            inner().map_err(|e| e.at("detect"))?
        }
        Kind::Http1(p) => Protocol::Http1(http_policy(&p.routes, p.failure_accrual.as_ref()).map_err(|e| e.at("http1"))?),
        Kind::Http2(p) => Protocol::Http2(http_policy(&p.routes, p.failure_accrual.as_ref()).map_err(|e| e.at("http2"))?),
        Kind::Grpc(p) => Protocol::Grpc(grpc_policy(&p.routes, p.failure_accrual.as_ref()).map_err(|e| e.at("grpc"))?),
        Kind::Opaque(p) => Protocol::Opaque(opaque_policy(&p.routes).map_err(|e| e.at("opaque"))?),
        Kind::Tls(p) => Protocol::Tls(tls_policy(&p.routes).map_err(|e| e.at("tls"))?),
    })
}

pub(in crate::policy) fn meta(m: Option<&meta_api::Metadata>) -> Result<Meta, InvalidPolicy> {
    match m.and_then(|m| m.kind.as_ref()) {
        None => Err(InvalidPolicy::missing("")),
        Some(meta_api::metadata::Kind::Default(name)) => Ok(Meta::Default(name.clone())),
        Some(meta_api::metadata::Kind::Resource(r)) => Ok(Meta::Resource {
            group: r.group.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            section: r.section.clone(),
            port: port(r.port, "resource.port")?,
        }),
    }
}

fn port(p: u32, field: &str) -> Result<u16, InvalidPolicy> {
    u16::try_from(p).map_err(|_| InvalidPolicy::new(field, format!("expected a port number up to 65535, found {p}")))
}

fn required_duration<D>(d: Option<&D>, field: &str) -> Result<Duration, InvalidPolicy>
where
    D: Clone + std::fmt::Debug,
    Duration: TryFrom<D>,
    <Duration as TryFrom<D>>::Error: std::fmt::Display,
{
    let d = d.ok_or_else(|| InvalidPolicy::missing(field))?;
    retry::duration(d).map_err(|reason| InvalidPolicy::new(field, reason))
}

/// An optional duration where zero, like absence, means unset.
fn optional_duration<D>(d: Option<&D>, field: &str) -> Result<Option<Duration>, InvalidPolicy>
where
    D: Clone + std::fmt::Debug,
    Duration: TryFrom<D>,
    <Duration as TryFrom<D>>::Error: std::fmt::Display,
{
    Ok(d.map(|d| retry::duration(d).map_err(|reason| InvalidPolicy::new(field, reason))).transpose()?.filter(|d| !d.is_zero()))
}

/// Converts a list, prefixing errors with `field[index]`.
pub(in crate::policy) fn each<T, U>(items: &[T], field: &str, f: impl Fn(&T) -> Result<U, InvalidPolicy>) -> Result<Vec<U>, InvalidPolicy> {
    items.iter().enumerate().map(|(i, t)| f(t).map_err(|e| e.at(format!("{field}[{i}]")))).collect()
}

// === HTTP and gRPC ===

fn http_policy(routes: &[api::HttpRoute], accrual: Option<&api::FailureAccrual>) -> Result<HttpPolicy, InvalidPolicy> {
    let routes = each(routes, "routes", http_route)?;
    let failure_accrual = failure_accrual(accrual).map_err(|e| e.at("failure_accrual"))?;
    Ok(HttpPolicy { routes: routes.into(), failure_accrual })
}

fn grpc_policy(routes: &[api::GrpcRoute], accrual: Option<&api::FailureAccrual>) -> Result<HttpPolicy, InvalidPolicy> {
    let routes = each(routes, "routes", grpc_route)?;
    let failure_accrual = failure_accrual(accrual).map_err(|e| e.at("failure_accrual"))?;
    Ok(HttpPolicy { routes: routes.into(), failure_accrual })
}

pub(in crate::policy) fn hosts(hosts: &[http_api::HostMatch]) -> Result<Vec<HostMatch>, InvalidPolicy> {
    each(hosts, "hosts", |h| HostMatch::try_from(h).map_err(|e| InvalidPolicy::new("", e.to_string())))
}

fn http_route(r: &api::HttpRoute) -> Result<HttpRoute, InvalidPolicy> {
    let meta = Arc::new(meta(r.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
    let hosts = hosts(&r.hosts)?;
    let rules = each(&r.rules, "rules", |rule| {
        let matches = each(&rule.matches, "matches", |m| RouteMatch::try_from(m).map_err(|e| InvalidPolicy::new("", e.to_string())))?;
        let prefixes = path_prefixes(&matches);
        let filters = each(&rule.filters, "filters", |f| http_filter(f, &prefixes))?;
        let backends = distribution!(rule.backends.as_ref(), http_route, |f: &api::http_route::Filter| http_filter(f, &prefixes));
        #[allow(deprecated)] // The deprecated field is still honoured, as Linkerd's proxy does.
        let timeouts = timeouts(rule.timeouts.as_ref(), optional_duration(rule.request_timeout.as_ref(), "requestTimeout")?)?;
        let retry = rule.retry.as_ref().map(|r| RetryPolicy::try_from(r).map_err(|e| InvalidPolicy::new("retry", e.to_string()))).transpose()?;
        Ok(Rule { matches, filters, backends, timeouts, retry, allow_l5d_request_headers: rule.allow_l5d_request_headers })
    })?;
    Ok(HttpRoute { meta, hosts, rules, metrics: Default::default() })
}

fn grpc_route(r: &api::GrpcRoute) -> Result<HttpRoute, InvalidPolicy> {
    let meta = Arc::new(meta(r.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
    let hosts = hosts(&r.hosts)?;
    let rules = each(&r.rules, "rules", |rule| {
        let matches = each(&rule.matches, "matches", |m| RouteMatch::try_from(m).map_err(|e| InvalidPolicy::new("", e.to_string())))?;
        let filters = each(&rule.filters, "filters", grpc_filter)?;
        let backends = distribution!(rule.backends.as_ref(), grpc_route, grpc_filter);
        #[allow(deprecated)] // The deprecated field is still honoured, as Linkerd's proxy does.
        let timeouts = timeouts(rule.timeouts.as_ref(), optional_duration(rule.request_timeout.as_ref(), "requestTimeout")?)?;
        let retry = rule.retry.as_ref().map(|r| RetryPolicy::try_from(r).map_err(|e| InvalidPolicy::new("retry", e.to_string()))).transpose()?;
        Ok(Rule { matches, filters, backends, timeouts, retry, allow_l5d_request_headers: rule.allow_l5d_request_headers })
    })?;
    Ok(HttpRoute { meta, hosts, rules, metrics: Default::default() })
}

/// The path prefixes a rule's matches match, for `ReplacePrefixMatch` redirects. A rule without
/// matches, or a match without a path, matches the prefix `/` (stored as "").
pub(in crate::policy) fn path_prefixes(matches: &[RouteMatch]) -> Vec<String> {
    if matches.is_empty() {
        return vec![String::new()];
    }
    matches
        .iter()
        .filter_map(|m| match &m.path {
            None => Some(String::new()),
            Some(route::PathMatch::Prefix(p)) => Some(p.clone()),
            Some(_) => None,
        })
        .collect()
}

/// `fallback` is the deprecated `requestTimeout`, used when `timeouts.request` is unset.
fn timeouts(t: Option<&http_api::Timeouts>, fallback: Option<Duration>) -> Result<Timeouts, InvalidPolicy> {
    let Some(t) = t else { return Ok(Timeouts { request: fallback, ..Timeouts::default() }) };
    let at = |e: InvalidPolicy| e.at("timeouts");
    Ok(Timeouts {
        request: optional_duration(t.request.as_ref(), "request").map_err(at)?.or(fallback),
        response: optional_duration(t.response.as_ref(), "response").map_err(at)?,
        idle: optional_duration(t.idle.as_ref(), "idle").map_err(at)?,
    })
}

pub(in crate::policy) fn ratio(r: Option<&http_api::Ratio>) -> Result<(u32, u32), InvalidPolicy> {
    match r {
        None => Ok((1, 1)),
        Some(r) if r.denominator == 0 || r.numerator > r.denominator => {
            Err(InvalidPolicy::new("ratio", format!("expected numerator <= denominator and denominator > 0, found {}/{}", r.numerator, r.denominator)))
        }
        Some(r) => Ok((r.numerator, r.denominator)),
    }
}

pub(in crate::policy) fn status(code: u32, field: &str) -> Result<StatusCode, InvalidPolicy> {
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| InvalidPolicy::new(field, format!("expected an HTTP status code (100-999), found {code}")))
}

fn http_filter(f: &api::http_route::Filter, prefixes: &[String]) -> Result<Filter, InvalidPolicy> {
    use api::http_route::filter::Kind;
    match f.kind.as_ref().ok_or_else(|| InvalidPolicy::missing("kind"))? {
        Kind::FailureInjector(fi) => {
            let at = |e: InvalidPolicy| e.at("failure_injector");
            let (numerator, denominator) = ratio(fi.ratio.as_ref()).map_err(at)?;
            Ok(Filter::FailureInjector { status: status(fi.status, "status").map_err(at)?, message: fi.message.clone(), numerator, denominator })
        }
        Kind::RequestHeaderModifier(m) => {
            Ok(Filter::RequestHeaders(header_modifier(m.add.as_ref(), m.set.as_ref(), &m.remove).map_err(|e| e.at("request_header_modifier"))?))
        }
        Kind::ResponseHeaderModifier(m) => {
            Ok(Filter::ResponseHeaders(header_modifier(m.add.as_ref(), m.set.as_ref(), &m.remove).map_err(|e| e.at("response_header_modifier"))?))
        }
        Kind::Redirect(r) => redirect(r, prefixes).map_err(|e| e.at("redirect")),
    }
}

fn grpc_filter(f: &api::grpc_route::Filter) -> Result<Filter, InvalidPolicy> {
    use api::grpc_route::filter::Kind;
    match f.kind.as_ref().ok_or_else(|| InvalidPolicy::missing("kind"))? {
        Kind::FailureInjector(fi) => {
            let (numerator, denominator) = ratio(fi.ratio.as_ref()).map_err(|e| e.at("failure_injector"))?;
            Ok(Filter::GrpcFailureInjector { code: fi.code, message: fi.message.clone(), numerator, denominator })
        }
        Kind::RequestHeaderModifier(m) => {
            Ok(Filter::RequestHeaders(header_modifier(m.add.as_ref(), m.set.as_ref(), &m.remove).map_err(|e| e.at("request_header_modifier"))?))
        }
    }
}

pub(in crate::policy) fn header_modifier(
    add: Option<&linkerd2_proxy_api::http_types::Headers>,
    set: Option<&linkerd2_proxy_api::http_types::Headers>,
    remove: &[String],
) -> Result<HeaderModifier, InvalidPolicy> {
    let pairs = |h: Option<&linkerd2_proxy_api::http_types::Headers>, field: &str| {
        let headers = h.map_or(&[][..], |h| &h.headers[..]);
        each(headers, &format!("{field}.headers"), |h| {
            let name = header_name(&h.name)?;
            let value = HeaderValue::from_bytes(&h.value).map_err(|_| InvalidPolicy::new("value", format!("expected a valid value for header {name}")))?;
            Ok((name, value))
        })
    };
    Ok(HeaderModifier { add: pairs(add, "add")?, set: pairs(set, "set")?, remove: each(remove, "remove", |n| header_name(n))? })
}

fn header_name(name: &str) -> Result<HeaderName, InvalidPolicy> {
    HeaderName::try_from(name).map_err(|_| InvalidPolicy::new("name", format!("expected a valid header name, found {name:?}")))
}

pub(in crate::policy) fn redirect(r: &http_api::RequestRedirect, prefixes: &[String]) -> Result<Filter, InvalidPolicy> {
    let scheme = r
        .scheme
        .clone()
        .map(|s| http::uri::Scheme::try_from(s).map_err(|e| InvalidPolicy::new("scheme", format!("expected http, https or a valid scheme: {e}"))))
        .transpose()?;
    let status = match r.status {
        0 => StatusCode::MOVED_PERMANENTLY,
        s => status(s, "status")?,
    };
    if !status.is_redirection() {
        return Err(InvalidPolicy::new("status", format!("expected a redirection status (3xx), found {}", status.as_u16())));
    }
    let port = match r.port {
        0 => None,
        p => Some(port(p, "port")?),
    };
    use http_api::path_modifier::Replace;
    let path = match r.path.as_ref().map(|p| p.replace.as_ref().ok_or_else(|| InvalidPolicy::missing("path.replace"))).transpose()? {
        None => None,
        Some(Replace::Full(p)) => Some(PathModifier::Full(p.clone())),
        // Gateway API: proxies must not serve a prefix rewrite on a rule without prefix matches.
        Some(Replace::Prefix(_)) if prefixes.is_empty() => {
            return Ok(Filter::InternalError("the route redirects with a path prefix replacement, but its rule has no path prefix match".into()));
        }
        Some(Replace::Prefix(p)) => Some(PathModifier::Prefix { replacement: p.clone(), matched: prefixes.to_vec() }),
    };
    Ok(Filter::Redirect { scheme, host: Some(r.host.clone()).filter(|h| !h.is_empty()), path, port, status })
}

// === Distributions and backends ===

fn route_backend<F>(
    backend: Option<&api::Backend>,
    filters: &[F],
    filter: impl Fn(&F) -> Result<Filter, InvalidPolicy>,
) -> Result<RouteBackend, InvalidPolicy> {
    let backend = self::backend(backend.ok_or_else(|| InvalidPolicy::missing("backend"))?).map_err(|e| e.at("backend"))?;
    Ok(RouteBackend { backend, filters: each(filters, "filters", filter)?, metrics: Default::default() })
}

fn backend(b: &api::Backend) -> Result<Backend, InvalidPolicy> {
    use api::backend::{balance_p2c, endpoint_discovery, Kind};
    let meta = Arc::new(meta(b.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
    let queue = b.queue.as_ref().ok_or_else(|| InvalidPolicy::missing("queue"))?;
    let failfast = required_duration(queue.failfast_timeout.as_ref(), "failfast_timeout").map_err(|e| e.at("queue"))?;
    let queue_capacity = usize::try_from(queue.capacity).unwrap_or(usize::MAX);
    let kind = match &b.kind {
        // The controller sends a backend without a kind for a backendRef it could not resolve.
        None => BackendKind::Fail { message: format!("backend {} could not be resolved by the control plane", meta.name()) },
        Some(Kind::Forward(addr)) => BackendKind::Forward(endpoint(addr, &HashMap::new()).map_err(|e| e.at("forward"))?),
        Some(Kind::Balancer(p2c)) => {
            let at = |e: InvalidPolicy| e.at("balancer");
            let path = match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                None => return Err(at(InvalidPolicy::missing("discovery"))),
                Some(endpoint_discovery::Kind::Dst(d)) if d.path.is_empty() => {
                    return Err(at(InvalidPolicy::new("discovery.dst.path", "expected a name:port to discover, found nothing")))
                }
                Some(endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
            };
            let load = match p2c.load.as_ref() {
                None => return Err(at(InvalidPolicy::missing("load"))),
                Some(balance_p2c::Load::PeakEwma(p)) => {
                    let at = |e: InvalidPolicy| at(e.at("peak_ewma"));
                    Load::PeakEwma {
                        default_rtt: required_duration(p.default_rtt.as_ref(), "default_rtt").map_err(at)?,
                        decay: required_duration(p.decay.as_ref(), "decay").map_err(at)?,
                    }
                }
                Some(balance_p2c::Load::PenaltyPeakEwma(p)) => penalty_peak_ewma(p).map_err(|e| at(e.at("penalty_peak_ewma")))?,
            };
            BackendKind::Balancer { path, load }
        }
    };
    Ok(Backend { meta, queue_capacity, failfast, kind })
}

/// Linkerd's proxy defaults for unset `PenaltyPeakEwma` fields (`client-policy/src/lib.rs`).
const PENALTY_DEFAULT_RTT: Duration = Duration::from_millis(30);
const PENALTY_DECAY: Duration = Duration::from_secs(10);
const PENALTY: Duration = Duration::from_secs(5);
const PENALTY_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const PENALTY_PENALTY_DECAY: Duration = Duration::from_secs(10);

fn penalty_peak_ewma(p: &api::backend::balance_p2c::PenaltyPeakEwma) -> Result<Load, InvalidPolicy> {
    let or = |d, field, default| optional_duration(d, field).map(|d| d.unwrap_or(default));
    Ok(Load::PenaltyPeakEwma {
        default_rtt: or(p.default_rtt.as_ref(), "default_rtt", PENALTY_DEFAULT_RTT)?,
        decay: or(p.decay.as_ref(), "decay", PENALTY_DECAY)?,
        penalty: or(p.penalty.as_ref(), "penalty", PENALTY)?,
        max_retry_after: or(p.max_retry_after.as_ref(), "max_retry_after", PENALTY_MAX_RETRY_AFTER)?,
        penalty_decay: or(p.penalty_decay.as_ref(), "penalty_decay", PENALTY_PENALTY_DECAY)?,
    })
}

const UNIFIED_DEFAULT_WINDOW: Duration = Duration::from_secs(10);
const UNIFIED_MIN_WINDOW: Duration = Duration::from_millis(10);
const UNIFIED_MAX_MIN_REQUESTS: u32 = 1_000_000;

fn failure_accrual(a: Option<&api::FailureAccrual>) -> Result<Option<FailureAccrual>, InvalidPolicy> {
    use api::failure_accrual::Kind;
    let backoff = |b: Option<&api::ExponentialBackoff>| -> Result<Backoff, InvalidPolicy> {
        let b = b.ok_or_else(|| InvalidPolicy::missing("backoff"))?;
        Backoff::try_from(b).map_err(|e: InvalidBackoff| InvalidPolicy::new("backoff", e.to_string()))
    };
    // `ejection` is ignored, as Linkerd's proxy ignores it.
    Ok(match a.and_then(|a| a.kind.as_ref()) {
        None => None,
        Some(Kind::ConsecutiveFailures(c)) => {
            Some(FailureAccrual::Consecutive { max_failures: c.max_failures, backoff: backoff(c.backoff.as_ref()).map_err(|e| e.at("consecutive_failures"))? })
        }
        Some(Kind::Unified(u)) => Some(unified(u, backoff(u.backoff.as_ref())).map_err(|e| e.at("unified"))?),
    })
}

fn unified(u: &api::failure_accrual::Unified, backoff: Result<Backoff, InvalidPolicy>) -> Result<FailureAccrual, InvalidPolicy> {
    let threshold = u.success_rate_threshold;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(InvalidPolicy::new("success_rate_threshold", format!("expected a ratio from 0.0 to 1.0, found {threshold}")));
    }
    let window = optional_duration(u.decay.as_ref(), "decay")?.unwrap_or(UNIFIED_DEFAULT_WINDOW);
    if threshold > 0.0 && window < UNIFIED_MIN_WINDOW {
        return Err(InvalidPolicy::new("decay", format!("expected at least {UNIFIED_MIN_WINDOW:?} for a success-rate window, found {window:?}")));
    }
    if u.min_requests > UNIFIED_MAX_MIN_REQUESTS {
        return Err(InvalidPolicy::new("min_requests", format!("expected at most {UNIFIED_MAX_MIN_REQUESTS}, found {}", u.min_requests)));
    }
    Ok(FailureAccrual::Unified {
        success_rate_threshold: threshold,
        window,
        min_requests: u.min_requests,
        max_consecutive_failures: u.max_consecutive_failures,
        backoff: backoff?,
    })
}

// === Opaque and TLS ===

/// Linkerd's proxy serves at most one opaque/TLS route, with exactly one rule (`opaq.rs`).
fn single_route<'a, R, T>(routes: &'a [R], rules: impl Fn(&'a R) -> &'a [T]) -> Result<Option<(&'a R, &'a T)>, InvalidPolicy> {
    match routes {
        [] => Ok(None),
        [route] => match rules(route) {
            [rule] => Ok(Some((route, rule))),
            rules => Err(InvalidPolicy::new("routes[0].rules", format!("expected exactly one rule, found {}", rules.len()))),
        },
        _ => Err(InvalidPolicy::new("routes", format!("expected at most one route, found {}", routes.len()))),
    }
}

fn opaque_policy(routes: &[api::OpaqueRoute]) -> Result<OpaquePolicy, InvalidPolicy> {
    let Some((route, rule)) = single_route(routes, |r| &r.rules)? else { return Ok(OpaquePolicy { routes: Vec::new() }) };
    let convert = || -> Result<OpaqueRoute, InvalidPolicy> {
        let meta = Arc::new(meta(route.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
        let inner = || -> Result<(Vec<Filter>, Distribution), InvalidPolicy> {
            let filters = each(&rule.filters, "filters", opaque_filter)?;
            Ok((filters, distribution!(rule.backends.as_ref(), opaque_route, opaque_filter)))
        };
        let (filters, backends) = inner().map_err(|e| e.at("rules[0]"))?;
        Ok(OpaqueRoute { meta, snis: Vec::new(), filters, backends })
    };
    Ok(OpaquePolicy { routes: vec![convert().map_err(|e| e.at("routes[0]"))?] })
}

/// Several TLS routes, each with exactly one rule, matched by SNI (LINKERD-WIRE.md §13, the
/// correction to §4.2).
fn tls_policy(routes: &[api::TlsRoute]) -> Result<OpaquePolicy, InvalidPolicy> {
    let routes = each(routes, "routes", |route| {
        let meta = Arc::new(meta(route.metadata.as_ref()).map_err(|e| e.at("metadata"))?);
        let snis = each(&route.snis, "snis", |s| {
            use linkerd2_proxy_api::tls_route::sni_match::Match;
            // An SNI match has the shape of a host match; convert it as one, validation included.
            let host = match s.r#match.as_ref().ok_or_else(|| InvalidPolicy::missing("match"))? {
                Match::Exact(h) => http_api::host_match::Match::Exact(h.clone()),
                Match::Suffix(x) => http_api::host_match::Match::Suffix(http_api::host_match::Suffix { reverse_labels: x.reverse_labels.clone() }),
            };
            HostMatch::try_from(&http_api::HostMatch { r#match: Some(host) }).map_err(|e| InvalidPolicy::new("", e.to_string()))
        })?;
        let [rule] = &route.rules[..] else {
            return Err(InvalidPolicy::new("rules", format!("expected exactly one rule, found {}", route.rules.len())));
        };
        let inner = || -> Result<(Vec<Filter>, Distribution), InvalidPolicy> {
            let filters = each(&rule.filters, "filters", tls_filter)?;
            Ok((filters, distribution!(rule.backends.as_ref(), tls_route, tls_filter)))
        };
        let (filters, backends) = inner().map_err(|e| e.at("rules[0]"))?;
        Ok(OpaqueRoute { meta, snis, filters, backends })
    })?;
    Ok(OpaquePolicy { routes })
}

fn opaque_filter(f: &api::opaque_route::Filter) -> Result<Filter, InvalidPolicy> {
    use api::opaque_route::filter::Kind;
    match f.kind.as_ref().ok_or_else(|| InvalidPolicy::missing("kind"))? {
        Kind::Invalid(i) => Ok(Filter::InternalError(i.message.clone())),
        Kind::Forbidden(_) => Ok(Filter::Forbidden),
    }
}

fn tls_filter(f: &api::tls_route::Filter) -> Result<Filter, InvalidPolicy> {
    use api::tls_route::filter::Kind;
    match f.kind.as_ref().ok_or_else(|| InvalidPolicy::missing("kind"))? {
        Kind::Invalid(i) => Ok(Filter::InternalError(i.message.clone())),
        Kind::Forbidden(_) => Ok(Filter::Forbidden),
    }
}

// === Endpoints ===

/// The one conversion of a discovered address (a `Destination.Get` update's or a `Forward`
/// backend's) to an [`Endpoint`], with its metric labels: the address's own over its set's
/// (`set_labels`), as Linkerd merges them.
///
/// The endpoint is meshed only with an `opaque_transport` hint: Knit's dialer reaches a meshed
/// peer through the peer proxy's inbound port with a transport header, and only that hint names
/// the port. Without it the endpoint is dialled directly, in plaintext, even when the control
/// plane gives a TLS identity (Linkerd's proxy would do mesh TLS to the application port, which
/// the peer's iptables rules redirect; Knit does not rely on interception at the peer).
///
/// An `authority_override` makes the address a multicluster gateway's (LINKERD-WIRE.md §12.1):
/// it is dialled as it is (no `opaque_transport` port), with mesh TLS to its identity, and the
/// transport header names the override's `host:port`, which must be a DNS name with a port.
pub fn endpoint(addr: &destination::WeightedAddr, set_labels: &HashMap<String, String>) -> Result<Endpoint, InvalidPolicy> {
    let tcp = addr.addr.as_ref().ok_or_else(|| InvalidPolicy::missing("addr"))?;
    let ip = tcp.ip.ok_or_else(|| InvalidPolicy::missing("addr.ip"))?;
    let ip = std::net::IpAddr::try_from(ip).map_err(|e| InvalidPolicy::new("addr.ip", format!("expected an IPv4 or IPv6 address: {e}")))?;
    let app_port = match port(tcp.port, "addr.port")? {
        0 => return Err(InvalidPolicy::new("addr.port", "expected a port from 1 to 65535, found 0")),
        p => p,
    };
    let gateway_target = addr.authority_override.as_ref().map(|o| gateway_target(&o.authority_override)).transpose()?;
    let meshed = match addr.protocol_hint.as_ref().and_then(|h| h.opaque_transport.as_ref()) {
        _ if gateway_target.is_some() => {
            Some(knit_core::destination::Meshed { inbound_port: app_port, identity: identity(addr.tls_identity.as_ref())?, gateway_target })
        }
        None => None,
        Some(ot) => {
            let inbound_port = match port(ot.inbound_port, "protocol_hint.opaque_transport.inbound_port")? {
                0 => return Err(InvalidPolicy::new("protocol_hint.opaque_transport.inbound_port", "expected a port from 1 to 65535, found 0")),
                p => p,
            };
            Some(knit_core::destination::Meshed { inbound_port, identity: identity(addr.tls_identity.as_ref())?, gateway_target: None })
        }
    };
    let merged = set_labels.iter().filter(|(k, _)| !addr.metric_labels.contains_key(*k)).chain(&addr.metric_labels);
    let (labels, refused) = MetricLabels::new(merged.map(|(k, v)| (k.clone(), v.clone())));
    if !refused.is_empty() {
        tracing::debug!(?refused, "metric labels that are not Prometheus label names are not exported");
    }
    Ok(Endpoint { addr: SocketAddr::new(ip, app_port), meshed, labels })
}

/// A gateway's `authority_override`: `name:port` in the remote cluster, where the name is a DNS
/// name (an address there would be another cluster's, meaningless here).
fn gateway_target(raw: &str) -> Result<Arc<Authority>, InvalidPolicy> {
    const FIELD: &str = "authority_override.authority_override";
    let a = Authority::parse(raw, None).map_err(|_| InvalidPolicy::new(FIELD, format!("expected name:port, found {raw:?}")))?;
    if a.host.parse::<std::net::IpAddr>().is_ok() || a.host.contains(':') {
        return Err(InvalidPolicy::new(FIELD, format!("expected a DNS name, found the address {raw:?}")));
    }
    Ok(Arc::new(a))
}

fn identity(id: Option<&destination::TlsIdentity>) -> Result<Option<Arc<str>>, InvalidPolicy> {
    use destination::tls_identity::Strategy;
    match id.and_then(|id| id.strategy.as_ref()) {
        None => Ok(None),
        Some(Strategy::DnsLikeIdentity(d)) if d.name.is_empty() => {
            Err(InvalidPolicy::new("tls_identity.dns_like_identity.name", "expected an identity name, found nothing"))
        }
        Some(Strategy::DnsLikeIdentity(d)) => Ok(Some(Arc::from(d.name.as_str()))),
        // Sending in plaintext to a peer that expects TLS would be worse than not sending.
        Some(Strategy::UriLikeIdentity(u)) => {
            Err(InvalidPolicy::new("tls_identity.uri_like_identity", format!("expected a DNS-like identity; URI identities ({}) are not supported", u.uri)))
        }
    }
}
