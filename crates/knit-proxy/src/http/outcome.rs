//! One record per HTTP request (ztunnel's `ConnectionResult` is the model): opened when the
//! request arrives (its server span started), filled in as the request passes its stages (the
//! route, the inbound policy decision, each attempt sent to an endpoint, the error it failed
//! with), and finished once. When the response head is ready it writes the request-level
//! metrics: the route's (outbound), the golden metrics of an answer the proxy gave itself (no endpoint was tried: a
//! refusal, a filter's answer, a failure before any endpoint; an endpoint's answers are counted
//! per attempt by `call_endpoint`), and `http_errors_total` for the error the request failed
//! with. When the response body ends (or is dropped), it writes the span and the access-log
//! event, so both carry the whole duration and the bytes sent. Every outcome goes through
//! here: the endpoint's answers, the proxy's own, refusals and failures.

use super::{
    body::{grpc_status, OnEnd, RecordBody, Recorder},
    forward::labels,
    Body, Ctx, Routed, Side,
};
use crate::{
    error::{Blame, ProxyError},
    metrics::{
        route::{PolicyLabels, RouteRecord},
        Direction,
    },
    trace::{self, context::Context},
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

pub struct Outcome {
    pub started: Instant,
    span: Option<trace::Started>,
    /// What the access log says of the request itself; copied only while it is on.
    facts: Option<Box<Facts>>,
    state: Mutex<State>,
}

struct Facts {
    client: SocketAddr,
    /// Inbound: the identity the client proved.
    client_id: Option<String>,
    method: Method,
    authority: String,
    uri: String,
    version: Version,
    /// The trace the request is part of, as this proxy forwards it.
    trace: Option<Context>,
    /// The connection's span, which the event is logged under wherever the body ends.
    span: tracing::Span,
}

#[derive(Default)]
struct State {
    /// Attempts sent to an endpoint.
    attempts: u32,
    /// The last endpoint tried, and the identity it proved (or had to).
    endpoint: Option<(SocketAddr, Option<String>)>,
    /// Outbound: the route that served the request.
    route: Option<String>,
    /// Outbound: its metrics, written with the answer.
    route_metrics: Option<RouteRecord>,
    /// The endpoint an answer of the proxy's own was meant for (its metric labels), and
    /// inbound, the server, route and authorization it was checked against.
    target: Option<Routed>,
    /// The error the request failed with.
    error: Option<Failure>,
}

#[derive(Clone)]
struct Failure {
    kind: &'static str,
    blame: Blame,
    message: String,
}

impl Outcome {
    /// Opens the record of a request that just arrived: its server span (which gives the
    /// request's trace context a new span id) and, with the access log on, its facts.
    pub fn open<B>(req: &mut Request<B>, ctx: &Ctx) -> Self {
        let side = &ctx.side;
        // A trace may start (when sampling asks) where a request enters the mesh: from the
        // application, or inbound from a client without a proxy.
        let may_start = side.direction == Direction::Outbound || !ctx.from_peer;
        let span = side.tracer.as_deref().and_then(|t| {
            let peer = trace::Peer { addr: ctx.client, identity: ctx.client_id.as_deref() };
            t.server(req, side.direction, peer, may_start)
        });
        let facts = side.config.log.access_log.then(|| {
            Box::new(Facts {
                client: ctx.client,
                client_id: ctx.client_id.clone(),
                method: req.method().clone(),
                authority: super::forward::authority(req).to_string(),
                uri: req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
                version: req.version(),
                trace: side.tracer.as_ref().and_then(|_| Context::extract(req.headers())),
                span: tracing::Span::current(),
            })
        });
        Self { started: Instant::now(), span, facts, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An attempt is being sent to `routed`'s endpoint (which must prove `identity`).
    pub fn attempt(&self, routed: &Routed, identity: Option<&str>) {
        let mut s = self.state();
        s.attempts += 1;
        s.endpoint = Some((routed.endpoint.addr, identity.map(str::to_string)));
    }

    /// Outbound: the route that serves the request.
    pub fn route(&self, name: impl FnOnce() -> String) {
        if self.facts.is_some() {
            self.state().route = Some(name());
        }
    }

    /// Outbound: the route's metrics, written when the request's answer is known.
    pub fn route_metrics(&self, record: RouteRecord) {
        self.state().route_metrics = Some(record);
    }

    /// Whether the access log will write this record.
    pub fn logged(&self) -> bool {
        self.facts.is_some()
    }

    /// Where an answer of the proxy's own was headed, for its metric labels.
    pub fn target(&self, target: Option<&Routed>) {
        if let Some(t) = target {
            self.state().target = Some(t.clone());
        }
    }

    /// The request failed with `e` (its answer is the error's).
    pub fn failed(&self, e: &ProxyError) {
        let c = e.class();
        self.state().error = Some(Failure { kind: c.kind, blame: c.blame, message: e.to_string() });
    }

    /// Writes the request-level metrics now that the response head is known, and hands the
    /// response on with a body that finishes the record when it ends.
    pub fn close(self, rsp: Response<Body>, ctx: &Ctx) -> Response<Body> {
        let status = rsp.status();
        let side = &ctx.side;
        {
            let s = self.state();
            let error = s.error.as_ref();
            if let Some(e) = error {
                side.metrics.http.errors.get_or_create(&crate::metrics::error_labels(side.direction, e.kind, e.blame)).inc();
            }
            if let Some(r) = &s.route_metrics {
                side.metrics.route.record(r, self.started.elapsed(), &error.map_or(Ok(status), |e| Err(e.kind)));
            }
            if s.attempts == 0 {
                // Answered by the proxy itself: counted as a request to where it was headed.
                let golden = side.metrics.http.golden(&ctx.golden, labels(ctx, s.target.as_ref()));
                golden.request();
                let status_code = Some(status.as_u16());
                golden.latency(status_code, self.started.elapsed().as_secs_f64() * 1e3);
                let grpc_status = grpc_status(rsp.headers());
                Recorder { golden, status_code, grpc_status, tap: None, span: None }.record(error.map(|e| e.kind));
            }
        }
        if self.span.is_none() && self.facts.is_none() {
            return rsp;
        }
        let grpc_status = grpc_status(rsp.headers());
        let end = End { outcome: self, side: side.clone(), status, grpc_status, bytes: 0 };
        rsp.map(|b| RecordBody::new(b, end).boxed())
    }
}

/// The record waiting for the end of the response body.
struct End {
    outcome: Outcome,
    side: Arc<Side>,
    status: StatusCode,
    grpc_status: Option<u32>,
    bytes: u64,
}

impl OnEnd for End {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        self.grpc_status = grpc_status(trailers).or(self.grpc_status);
    }

    fn data(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    fn end(self, stream_error: Option<&'static str>) {
        let End { outcome: o, side, status, grpc_status, bytes } = self;
        let state = o.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let kind = state.error.as_ref().map(|e| e.kind).or(stream_error);
        if let (Some(tracer), Some(span)) = (side.tracer.as_deref(), o.span) {
            tracer.finish(span, Some(status), kind);
        }
        let Some(f) = o.facts else { return };
        let (endpoint, server_id) = match &state.endpoint {
            Some((addr, id)) => (addr.to_string(), id.clone()),
            None => ("-".to_string(), None),
        };
        let (client_id, server_id) = crate::record::identities(&side, f.client_id.clone(), server_id);
        let policy: Option<&PolicyLabels> = state.target.as_ref().and_then(|t| t.policy.as_deref());
        let dash = |s: Option<&str>| s.unwrap_or("-").to_string();
        let (trace_id, span_id) = match f.trace {
            Some(c) => (trace::context::hex(&c.trace_id), trace::context::hex(&c.span_id)),
            None => ("-".into(), "-".into()),
        };
        tracing::info!(
            target: "access",
            parent: &f.span,
            direction = side.direction.as_str(),
            client = %f.client,
            client_id,
            method = %f.method,
            authority = f.authority,
            uri = f.uri,
            version = ?f.version,
            status = status.as_u16(),
            grpc_status = grpc_status.map_or_else(|| "-".into(), |s| s.to_string()),
            route = dash(state.route.as_deref().or(policy.map(|p| p.route_name.as_str()).filter(|n| !n.is_empty()))),
            server = dash(policy.map(|p| p.server.srv_name.as_str())),
            authz = dash(policy.map(|p| p.authz_name.as_str()).filter(|n| !n.is_empty())),
            endpoint,
            server_id,
            attempts = state.attempts,
            error = dash(kind),
            blame = dash(state.error.as_ref().map(|e| e.blame.as_str())),
            reason = dash(state.error.as_ref().map(|e| e.message.as_str())),
            duration_ms = o.started.elapsed().as_secs_f64() * 1e3,
            response_bytes = bytes,
            trace_id,
            span_id,
            "request"
        );
    }
}
