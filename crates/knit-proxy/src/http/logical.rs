//! The outbound path of a destination the control plane has a policy for (LINKERD-WIRE.md §4.2,
//! §8), in the order a request takes it:
//! `serve` (route → the rule's filters → request timeout) → `attempts` (body buffering, retries
//! within the budget) → `send_once` (backend by weight → its filters → balancer → endpoint,
//! per-attempt timeout, load and breaker feedback) → [`call_endpoint`](super::forward::call_endpoint).

use super::{body::grpc_status, forward::call_endpoint, full, l5d, outcome::Outcome, Body, Ctx, ReqBody, Routed};
use crate::{
    balance,
    discovery::Target,
    error::ProxyError,
    metrics::route::{BackendLabels, Resource, RouteLabels},
    outbound::{backend, Logical},
    policy::outbound::{Filter, HttpPolicy, OutboundPolicy, Rule, Timeouts},
    retry::{self, RetryPolicy},
    route::{self, RequestInfo},
};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// A request bound for a logical destination, with the policy it had when the request arrived.
pub struct Routing {
    pub logical: Arc<Logical>,
    pub policy: Arc<OutboundPolicy>,
}

/// What one request's rule says, after the `l5d-*` overrides it allows.
struct Plan<'p> {
    rule: &'p Rule,
    http: &'p HttpPolicy,
    timeouts: Timeouts,
    retry: Option<RetryPolicy>,
}

pub async fn serve(mut req: Request<ReqBody>, r: Routing, ctx: &Ctx, o: &Outcome) -> Result<Response<Body>, ProxyError> {
    // The application's `l5d-*` headers are read (for a rule that allows them) and removed.
    let overrides = l5d::take(req.headers_mut());
    let http = http_policy(&req, &r)?;
    let (ri, rule_i) = route_request(&req, &r, &http)?;
    let rule = &http.routes[ri].rules[rule_i];
    if let (true, Some(dst)) = (rule.allow_l5d_request_headers, overrides.dst.clone()) {
        // The rule lets the request name another destination: routed by that one's policy.
        let logical = Arc::new(Logical::resolve(&ctx.side, Target::Authority(dst.clone()), Some(dst)).await?);
        let policy = logical.policy(&ctx.side).await?;
        let over = Routing { logical, policy };
        let http = http_policy(&req, &over)?;
        let (ri, rule_i) = route_request(&req, &over, &http)?;
        let plan = plan(&http.routes[ri].rules[rule_i], &http, &overrides);
        return serve_rule(req, &over, ri, plan, ctx, o).await;
    }
    let plan = plan(rule, &http, &overrides);
    serve_rule(req, &r, ri, plan, ctx, o).await
}

/// The policy's HTTP routes for the request; for an opaque destination, how it serves a request
/// that arrived as HTTP anyway (local mode). A TLS destination takes no plaintext HTTP.
fn http_policy<'p>(req: &Request<ReqBody>, r: &'p Routing) -> Result<std::borrow::Cow<'p, HttpPolicy>, ProxyError> {
    use crate::policy::outbound::Protocol;
    if let Some(http) = r.policy.protocol.http(req.version()) {
        return Ok(std::borrow::Cow::Borrowed(http));
    }
    match &r.policy.protocol {
        Protocol::Opaque(o) => {
            o.as_http().map(std::borrow::Cow::Owned).ok_or_else(|| ProxyError::NoTcpRoute { target: r.logical.target.to_string(), sni: None })
        }
        _ => Err(ProxyError::InvalidPolicy(format!("the policy of {} routes TLS by SNI, but a plaintext HTTP request arrived", r.logical.target).into())),
    }
}

/// The (route, rule) of the policy that serves `req`.
fn route_request(req: &Request<ReqBody>, r: &Routing, http: &HttpPolicy) -> Result<(usize, usize), ProxyError> {
    route::select(&*http.routes, &RequestInfo::new(req)).ok_or_else(|| ProxyError::RouteNotFound {
        target: r.logical.target.to_string(),
        method: req.method().clone(),
        path: req.uri().path().to_string(),
    })
}

fn plan<'p>(rule: &'p Rule, http: &'p HttpPolicy, overrides: &l5d::Overrides) -> Plan<'p> {
    let (timeouts, retry) = if rule.allow_l5d_request_headers { overrides.apply(rule) } else { (rule.timeouts.clone(), rule.retry.clone()) };
    Plan { rule, http, timeouts, retry }
}

/// The rule's filters, then its attempts within the request timeout.
async fn serve_rule(mut req: Request<ReqBody>, r: &Routing, route_i: usize, plan: Plan<'_>, ctx: &Ctx, o: &Outcome) -> Result<Response<Body>, ProxyError> {
    let route = &plan.http.routes[route_i];
    o.route(|| format!("{}/{}", r.policy.meta.name(), route.meta.name()));
    let host = RequestInfo::new(&req).host.map(|h| ctx.side.hostname_label(&h)).unwrap_or_default();
    let labels = RouteLabels::new(&Resource::of(&r.policy.meta), &Resource::of(&route.meta), host);
    // The route's metrics are the request's: its outcome record writes them with its answer.
    o.route_metrics(ctx.side.metrics.route.route_record(&route.metrics, labels.clone()));
    let mut response_headers = Vec::new();
    if let Some(rsp) = apply_filters(&plan.rule.filters, &mut req, &mut response_headers).map_err(|e| forbidden_target(e, r))? {
        return Ok(rsp);
    }
    let name = route.meta.name().to_string();
    let result = match plan.timeouts.request {
        Some(t) => match tokio::time::timeout(t, attempts(req, &plan, r, ctx, &labels, o)).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::RequestTimeout { route: name, which: "request", timeout: t }),
        },
        None => attempts(req, &plan, r, ctx, &labels, o).await,
    };
    result.map(|mut rsp| {
        for m in response_headers {
            m.apply(rsp.headers_mut());
        }
        rsp
    })
}

/// A `Forbidden` filter names the destination it guards.
fn forbidden_target(e: ProxyError, r: &Routing) -> ProxyError {
    match e {
        ProxyError::Forbidden { .. } => ProxyError::Forbidden { target: r.logical.target.to_string() },
        e => e,
    }
}

/// Applies a rule's (or a backend's) filters to the request. A filter that answers by itself
/// (an injected failure, a redirect) returns the response.
pub(super) fn apply_filters<'f, B>(
    filters: &'f [Filter],
    req: &mut Request<B>,
    response_headers: &mut Vec<&'f crate::policy::outbound::HeaderModifier>,
) -> Result<Option<Response<Body>>, ProxyError> {
    for f in filters {
        match f {
            Filter::FailureInjector { status, message, numerator, denominator } => {
                if *denominator > 0 && fastrand::u32(0..*denominator) < *numerator {
                    let mut rsp = Response::new(full(format!("{message}\n")));
                    *rsp.status_mut() = *status;
                    if let Ok(v) = HeaderValue::from_str(message) {
                        rsp.headers_mut().insert(super::headers::L5D_PROXY_ERROR, v);
                    }
                    return Ok(Some(rsp));
                }
            }
            Filter::GrpcFailureInjector { code, message, numerator, denominator } => {
                if *denominator > 0 && fastrand::u32(0..*denominator) < *numerator {
                    let mut rsp = Response::new(full(""));
                    rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    rsp.headers_mut().insert("grpc-status", HeaderValue::from(*code));
                    if let Ok(v) = HeaderValue::from_str(message) {
                        rsp.headers_mut().insert("grpc-message", v);
                    }
                    return Ok(Some(rsp));
                }
            }
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaders(m) => response_headers.push(m),
            Filter::Redirect { scheme, host, path, port, status } => {
                return Ok(Some(redirect(req, scheme.as_ref(), host.as_deref(), path.as_ref(), *port, *status)));
            }
            Filter::InternalError(reason) => return Err(ProxyError::InvalidPolicy(format!("route filter: {reason}").into())),
            Filter::Forbidden => return Err(ProxyError::Forbidden { target: String::new() }),
        }
    }
    Ok(None)
}

fn redirect<B>(
    req: &Request<B>,
    scheme: Option<&http::uri::Scheme>,
    host: Option<&str>,
    path: Option<&crate::policy::outbound::PathModifier>,
    port: Option<u16>,
    status: StatusCode,
) -> Response<Body> {
    let req_host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| h.split(':').next().unwrap_or(h).to_string()));
    let scheme = scheme.map_or("http", |s| s.as_str());
    let host = host.map(str::to_string).or(req_host).unwrap_or_default();
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = match path {
        Some(m) => m.apply(req.uri().path()),
        None => req.uri().path().to_string(),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut rsp = Response::new(full(""));
    *rsp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{port}{path}{query}")) {
        rsp.headers_mut().insert(header::LOCATION, v);
    }
    rsp
}

/// What a retry needs to send the request again: the head, and the whole body (buffered up to
/// the policy's limit; a larger body is sent once and never retried).
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: retry::Buffered<ReqBody>,
}

impl Replay {
    fn request(&self) -> Option<Request<ReqBody>> {
        let mut req = Request::new(self.body.replay()?.map_err(|never| match never {}).boxed());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

/// Sends the request, and again while the rule's retry policy, the retry budget and the
/// buffered body allow. Tunnels (`Upgrade`, `CONNECT`) are never retried.
async fn attempts(req: Request<ReqBody>, plan: &Plan<'_>, r: &Routing, ctx: &Ctx, labels: &RouteLabels, o: &Outcome) -> Result<Response<Body>, ProxyError> {
    let Some(policy) = plan.retry.as_ref().filter(|p| p.max_retries > 0 && !super::headers::is_tunnel(&req)) else {
        return send_once(req, plan, r, ctx, labels, None, o).await;
    };
    let budget = &r.logical.budget;
    budget.deposit(Instant::now());
    // Only a body whose length is known up front (Content-Length, or none) is buffered for
    // replays: waiting for the end of an open-ended stream could wait for ever on a client that
    // expects the response first (bidirectional streams).
    let known = http_body::Body::size_hint(req.body()).exact().is_some_and(|n| n <= policy.max_request_bytes as u64);
    if !known {
        ctx.side.metrics.route.retry_overflow.get_or_create(labels).inc();
        return send_once(req, plan, r, ctx, labels, None, o).await;
    }
    let (parts, body) = req.into_parts();
    let buffered = retry::buffer_body(body, policy.max_request_bytes).await.map_err(ProxyError::ClientBody)?;
    // The first attempt keeps the client's request head (and its extensions); replays copy it.
    let (first, replay) = match buffered.replay() {
        Some(body) => {
            let replay =
                Replay { method: parts.method.clone(), uri: parts.uri.clone(), version: parts.version, headers: parts.headers.clone(), body: buffered };
            (Request::from_parts(parts, body.map_err(|never| match never {}).boxed()), Some(replay))
        }
        None => (Request::from_parts(parts, buffered.stream().boxed()), None),
    };
    let m = &ctx.side.metrics.route;
    let mut rsp = send_once(first, plan, r, ctx, labels, Some(policy), o).await;
    let mut attempt = 0;
    loop {
        if !should_retry(policy, &rsp) {
            if attempt > 0 && rsp.as_ref().is_ok_and(|r| !policy.retryable(r.status(), grpc(r.headers()))) {
                m.retry_successes.get_or_create(labels).inc();
            }
            return rsp;
        }
        if attempt >= policy.max_retries {
            m.retry_limit_exceeded.get_or_create(labels).inc();
            return rsp;
        }
        let Some(next) = replay.as_ref().and_then(Replay::request) else {
            // The body was larger than the buffer allows: it cannot be sent again.
            m.retry_overflow.get_or_create(labels).inc();
            return rsp;
        };
        if !budget.withdraw(Instant::now()) {
            m.retry_overflow.get_or_create(labels).inc();
            return rsp;
        }
        let hint = rsp.as_ref().ok().and_then(|r| retry::parse_retry_after(r.headers(), SystemTime::now()));
        let delay = policy.backoff.as_ref().map_or(Duration::ZERO, |b| b.delay(attempt, hint, &mut fastrand::Rng::new()));
        // The response being retried is dropped unread; its connection stays usable.
        drop(rsp);
        tokio::time::sleep(delay).await;
        m.retry_requests.get_or_create(labels).inc();
        attempt += 1;
        rsp = send_once(next, plan, r, ctx, labels, Some(policy), o).await;
    }
}

fn grpc(headers: &HeaderMap) -> Option<i32> {
    grpc_status(headers).and_then(|s| i32::try_from(s).ok())
}

fn should_retry(policy: &RetryPolicy, rsp: &Result<Response<Body>, ProxyError>) -> bool {
    match rsp {
        Ok(r) => policy.retryable(r.status(), grpc(r.headers())),
        Err(e) => {
            let c = e.class();
            match c.retry {
                crate::error::Retry::No => false,
                crate::error::Retry::IfUnsent => true,
                crate::error::Retry::Yes => policy.retryable(c.http, Some(c.grpc as i32)),
            }
        }
    }
}

/// One attempt: a backend by weight, its filters, an endpoint from its balancer (through the
/// backend's queue), and the endpoint's answer fed back into the balancer's load and breaker.
async fn send_once(
    mut req: Request<ReqBody>,
    plan: &Plan<'_>,
    r: &Routing,
    ctx: &Ctx,
    labels: &RouteLabels,
    retry: Option<&RetryPolicy>,
    o: &Outcome,
) -> Result<Response<Body>, ProxyError> {
    let backend = plan
        .rule
        .backends
        .pick(&mut fastrand::Rng::new())
        .ok_or_else(|| ProxyError::BackendFailed { backend: r.policy.meta.name().to_string(), message: "the route has no backends".into() })?;
    let backend_labels = BackendLabels::new(labels.clone(), &Resource::of(&backend.backend.meta));
    let m = &ctx.side.metrics.route;
    m.backend_request(&backend.metrics, &backend_labels);
    let mut response_headers = Vec::new();
    if let Some(rsp) = apply_filters(&backend.filters, &mut req, &mut response_headers).map_err(|e| forbidden_target(e, r))? {
        return Ok(rsp);
    }
    if let Some(idle) = plan.timeouts.idle {
        req = req.map(|b| super::body::IdleBody::new(b, idle).boxed());
    }
    let chosen = backend::endpoint(&backend.backend, plan.http.failure_accrual.as_ref(), &ctx.side).await?;
    let authority = r.logical.authority.clone().or_else(|| r.policy.authority.clone());
    let routed = Routed { endpoint: chosen.endpoint, authority, policy: None };
    let started = Instant::now();
    let per_attempt = retry.and_then(|r| r.timeout).or(plan.timeouts.response);
    let result = match per_attempt {
        Some(t) => match tokio::time::timeout(t, call_endpoint(req, &routed, ctx, started, o)).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::RequestTimeout { route: backend.backend.meta.name().to_string(), which: "response", timeout: t }),
        },
        None => call_endpoint(req, &routed, ctx, started, o).await,
    };
    let elapsed = started.elapsed();
    if let Some(picked) = chosen.picked {
        let outcome = match &result {
            Ok(r) => {
                let mut o = balance::classify(r.status(), grpc(r.headers()));
                if let balance::Outcome::Failure { retry_after, .. } = &mut o {
                    *retry_after = retry::parse_retry_after(r.headers(), SystemTime::now());
                }
                Some(o)
            }
            // Only the endpoint's own failures count against it: a client that broke its body,
            // or a policy that refused the request, says nothing about the endpoint.
            Err(e) if e.blame() == crate::error::Blame::Upstream => {
                Some(balance::Outcome::Failure { rate_limited: e.http_status() == StatusCode::SERVICE_UNAVAILABLE, retry_after: None })
            }
            Err(_) => None,
        };
        if let Some(o) = outcome {
            picked.finish(o, elapsed, Instant::now());
        }
    }
    m.record_backend(&backend.metrics, &backend_labels, elapsed, &result.as_ref().map(|r| r.status()).map_err(|e| e.metric_label()));
    result.map(|mut rsp| {
        for h in response_headers {
            h.apply(rsp.headers_mut());
        }
        match plan.timeouts.idle {
            Some(idle) => rsp.map(|b| super::body::IdleBody::new(b, idle).boxed()),
            None => rsp,
        }
    })
}
