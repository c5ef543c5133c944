//! One request, top to bottom: route it, rewrite it for the next hop, send it with the right
//! client, then record the response.

use super::{
    body::{grpc_status, RecordBody, Recorder},
    error_response,
    headers::{self, L5D_CLIENT_ID, L5D_ORIG_PROTO},
    outcome::Outcome,
    Body, BoxError, Ctx, Plan, ReqBody, Routed,
};
use crate::{
    error::ProxyError,
    metrics::{Direction, HttpLabels},
};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, sync::Arc, time::Instant};

pub async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<Body> {
    let outcome = Outcome::open(&mut req, &ctx);
    let rsp = respond(req, &ctx, &outcome).await;
    outcome.close(rsp, &ctx)
}

/// The server side of one request: every answer, the endpoint's or the proxy's own, noted in
/// its outcome record.
async fn respond(req: Request<Incoming>, ctx: &Arc<Ctx>, o: &Outcome) -> Response<Body> {
    let grpc = super::is_grpc(req.headers());
    // Errors of the client's body are marked as the client's before they meet any upstream.
    let mut req = req.map(|b| b.map_err(|e| BoxError::from(super::body::ClientBodyError(e))).boxed());
    // Through a gateway: the request the client's application sent, to the Service it named.
    if let Some(hop) = &ctx.gateway {
        if let Err(e) = hop.prepare(&mut req) {
            o.failed(&e);
            tracing::info!(client = %ctx.client, uri = %req.uri(), error = %e, "request refused by the gateway");
            return error_response(&e, grpc);
        }
    }
    // Routes and policy match what the application will read: one authority, one path spelling.
    if let Err(e) = super::normalize::check_authority(&req).and_then(|()| super::normalize::normalize(&mut req)) {
        o.failed(&e);
        tracing::info!(client = %ctx.client, uri = %req.uri(), error = %e, "request refused");
        return error_response(&e, grpc);
    }
    let (method, uri) = (req.method().clone(), req.uri().clone());
    // Only while someone taps: what a tap of an answer the proxy gives itself reports.
    let authority = ctx.side.taps.active().then(|| authority(&req).to_string());
    let planned = match ctx.side.direction {
        Direction::Outbound => ctx.plan(&req).await,
        Direction::Inbound => super::authorize::plan(&mut req, ctx),
    };
    let own_answer = |target: Option<&Routed>, status: StatusCode| {
        if let Some(authority) = &authority {
            tap_own_answer(ctx, &method, &uri, authority, target, status);
        }
    };
    let result = match planned {
        Ok(Plan::Endpoint(routed)) => {
            // Only the access log needs to know which policy allowed an endpoint's answer.
            if o.logged() {
                o.target(Some(&routed));
            }
            call_endpoint(req, &routed, ctx, o.started, o).await
        }
        Ok(Plan::Logical(logical)) => {
            let result = super::logical::serve(req, logical, ctx, o).await;
            // Answers given before any endpoint was called; an endpoint's are tapped with it.
            if let Err(e) = &result {
                if e.before_endpoint() {
                    own_answer(None, e.http_status());
                }
            }
            result
        }
        Ok(Plan::Respond { rsp, target }) => {
            o.target(target.as_ref());
            own_answer(target.as_ref(), rsp.status());
            Ok(rsp)
        }
        Err((e, target)) => {
            o.target(target.as_ref());
            own_answer(target.as_ref(), e.http_status());
            Err(e)
        }
    };
    result.unwrap_or_else(|e| {
        o.failed(&e);
        tracing::info!(client = %ctx.client, %method, %uri, error = %e, "request failed");
        error_response(&e, grpc)
    })
}

/// The golden-metric labels of a request to `target` (the unspecified address when no endpoint
/// was chosen: a client address would add a series per ephemeral port).
pub(super) fn labels(ctx: &Ctx, target: Option<&Routed>) -> HttpLabels {
    let side = &ctx.side;
    HttpLabels {
        direction: side.direction,
        authority: match (target, side.direction) {
            // In local mode a request's `Host` names its destination: a bounded label.
            (Some(Routed { authority: Some(a), .. }), Direction::Outbound) => Some(side.hostnames.get(&a.to_string())),
            _ => None,
        },
        target_addr: target.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |r| r.endpoint.addr),
        tls: match (target, side.direction) {
            (Some(r), Direction::Outbound) => side.dialer.tls_label(&r.endpoint),
            _ => ctx.tls.clone(),
        },
        dst: target.map(|r| r.endpoint.labels.clone()).unwrap_or_default(),
        policy: target.and_then(|r| r.policy.clone()),
    }
}

/// Sends one request (one attempt, when retrying) to one endpoint and records its golden
/// metrics; `response_total` is recorded when the response body ends. The attempt is noted in
/// the request's outcome record, its failure counted there.
pub(super) async fn call_endpoint(mut req: Request<ReqBody>, routed: &Routed, ctx: &Ctx, started: Instant, o: &Outcome) -> Result<Response<Body>, ProxyError> {
    let side = &ctx.side;
    let golden = side.metrics.http.golden(&ctx.golden, labels(ctx, Some(routed)));
    golden.request();
    let peer_identity = side.dialer.peer_identity(&routed.endpoint);
    o.attempt(routed, peer_identity);
    let mut tap = if side.taps.active() { start_tap(&req, routed, ctx) } else { None };
    // The attempt's client span ends with the response body, as the request's server span does.
    let span = side.tracer.as_ref().and_then(|t| {
        let peer = crate::trace::Peer { addr: routed.endpoint.addr, identity: peer_identity };
        Some((t.clone(), t.client(&mut req, side.direction, peer)?))
    });
    let rsp = match forward(req, routed, ctx).await {
        Ok(rsp) => rsp,
        Err(e) => {
            if let Some((t, s)) = span {
                t.finish(s, None, Some(e.metric_label()));
            }
            let status_code = Some(e.http_status().as_u16());
            golden.latency(status_code, elapsed_ms(started));
            if let Some(t) = tap.as_mut() {
                t.response(e.http_status().as_u16());
            }
            let tap = tap.map(|t| (t, 0));
            Recorder { golden, status_code, grpc_status: None, tap, span: None }.record(Some(e.metric_label()));
            return Err(e);
        }
    };
    if let Some(t) = tap.as_mut() {
        t.response(rsp.status().as_u16());
    }
    let status_code = Some(rsp.status().as_u16());
    golden.latency(status_code, elapsed_ms(started));
    let recorder = Recorder { golden, status_code, grpc_status: grpc_status(rsp.headers()), tap: tap.map(|t| (t, 0)), span };
    Ok(rsp.map(|b| RecordBody::new(b, recorder).boxed()))
}

/// The request's authority: its URI's, or its `Host` header.
pub(super) fn authority<B>(req: &Request<B>) -> &str {
    req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("")
}

/// Offers a request to the tap subscribers (only called while someone taps). `target`: the
/// endpoint it goes to, if one was chosen.
fn offer_tap(ctx: &Ctx, method: &http::Method, uri: &Uri, authority: &str, target: Option<&Routed>) -> Option<crate::tap::TapRequest> {
    let side = &ctx.side;
    let own = side.dialer.identity.as_ref().map(|i| &*i.name);
    let endpoint = target.map(|r| &r.endpoint);
    let (source_id, destination_id) = match side.direction {
        Direction::Inbound => (ctx.client_id.as_deref(), own),
        Direction::Outbound => (own, endpoint.and_then(|e| e.meshed.as_ref()?.identity.as_deref())),
    };
    // Without an endpoint, where the connection was going (its original destination), if known.
    let destination = endpoint.map(|e| e.addr).or(match &ctx.dest {
        super::Dest::Inbound(addr) => Some(*addr),
        super::Dest::Logical(l) => l.addr(),
        super::Dest::PerRequest | super::Dest::GatewayDomain { .. } => None,
    });
    side.taps.request(&crate::tap::Meta {
        direction: side.direction,
        source: ctx.client,
        destination: destination.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        source_id,
        destination_id,
        destination_labels: endpoint.map(|e| &e.labels),
        method,
        scheme: uri.scheme_str(),
        authority,
        path: uri.path(),
    })
}

fn start_tap(req: &Request<ReqBody>, routed: &Routed, ctx: &Ctx) -> Option<crate::tap::TapRequest> {
    offer_tap(ctx, req.method(), req.uri(), authority(req), Some(routed))
}

/// Reports an answer the proxy gave itself (a refusal, a rate limit, a filter's response, no
/// endpoint) to the tap subscribers: its request, response and end at once.
fn tap_own_answer(ctx: &Ctx, method: &http::Method, uri: &Uri, authority: &str, target: Option<&Routed>, status: StatusCode) {
    if let Some(mut t) = offer_tap(ctx, method, uri, authority, target) {
        t.response(status.as_u16());
        t.end(0, None, false);
    }
}

/// Chooses the next hop's protocol:
/// - tunnels (`Upgrade`, `CONNECT`) get a connection of their own and are then spliced;
/// - inbound requests that a peer proxy upgraded (`l5d-orig-proto`, honoured only on a
///   connection from a peer proxy) go back to HTTP/1;
/// - requests to a meshed endpoint travel over the shared HTTP/2 connection to its proxy,
///   HTTP/1 ones upgraded with `l5d-orig-proto`;
/// - everything else keeps the protocol the client spoke.
///
/// No `l5d-*` request header the client sent goes further (`l5d.rs`): inbound, this proxy sets
/// `l5d-client-id` itself.
async fn forward(mut req: Request<ReqBody>, routed: &Routed, ctx: &Ctx) -> Result<Response<Body>, ProxyError> {
    if ctx.side.is_own(routed.endpoint.connect_addr()) {
        return Err(ProxyError::Loop(routed.endpoint.connect_addr()));
    }
    let clients = &ctx.side.clients;
    let endpoint = routed.endpoint.clone();
    let tunnel = headers::is_tunnel(&req);
    headers::strip_hop_by_hop(req.headers_mut(), tunnel);
    let downgrade_to = match ctx.side.direction {
        Direction::Inbound if ctx.from_peer => req.headers().get(L5D_ORIG_PROTO).map(|v| (headers::parse_orig_proto(v).unwrap_or(Version::HTTP_11), v.clone())),
        _ => None,
    };
    super::l5d::strip(req.headers_mut());
    if ctx.side.direction == Direction::Inbound {
        if let Some(v) = ctx.client_id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
            req.headers_mut().insert(L5D_CLIENT_ID, v);
        }
    }
    // Through a multicluster gateway: addressed to the Service in the gateway's cluster.
    if let Some(target) = endpoint.meshed.as_ref().and_then(|m| m.gateway_target.as_deref()) {
        crate::gateway::address_to(&mut req, target)?;
    }
    if tunnel {
        return self::tunnel(req, routed, ctx).await.map(boxed);
    }
    if let Some((version, marker)) = downgrade_to {
        downgrade(&mut req, version);
        let mut rsp = clients.http1(endpoint.addr, req).await?;
        headers::strip_hop_by_hop(rsp.headers_mut(), false);
        rsp.headers_mut().insert(L5D_ORIG_PROTO, marker);
        return Ok(rsp);
    }
    let rsp = match (&endpoint.meshed, req.version()) {
        (Some(_), Version::HTTP_2) => boxed(clients.http2(endpoint, req).await?),
        (Some(_), version) => {
            upgrade(&mut req, version, routed);
            let mut rsp = clients.http2(endpoint, req).await?;
            rsp.headers_mut().remove(L5D_ORIG_PROTO);
            *rsp.version_mut() = version;
            boxed(rsp)
        }
        (None, Version::HTTP_2) => boxed(clients.http2(endpoint, req).await?),
        (None, _) => clients.http1(endpoint.addr, req).await?,
    };
    let mut rsp = rsp;
    headers::strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(rsp)
}

fn boxed(rsp: Response<Incoming>) -> Response<Body> {
    rsp.map(|b| b.map_err(BoxError::from).boxed())
}

/// HTTP/1 → HTTP/2 for the hop between proxies, as Linkerd's proxy does it (LINKERD-WIRE.md
/// §6.3): the URI becomes absolute (HTTP/2 carries the authority in `:authority`), the `Host`
/// header stays, so that a peer that downgrades by the book (Linkerd's) hands the application
/// the header it sent; `transfer-encoding` goes (HTTP/2 forbids it), and the original version
/// travels in `l5d-orig-proto` (`; absolute-form` when the client sent an absolute URI).
fn upgrade(req: &mut Request<ReqBody>, version: Version, routed: &Routed) {
    let absolute = req.uri().scheme().is_some();
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or(host)
        .or_else(|| routed.authority.as_ref().map(|a| a.to_string()))
        .unwrap_or_else(|| routed.endpoint.addr.to_string());
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(uri) = Uri::try_from(format!("http://{authority}{pq}")) {
        *req.uri_mut() = uri;
    }
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    req.headers_mut().insert(L5D_ORIG_PROTO, headers::orig_proto_value(version, absolute));
    *req.version_mut() = Version::HTTP_2;
}

/// HTTP/2 → HTTP/1 on the inbound side of an upgraded request: `Host` comes back from the URI's
/// authority when the peer did not keep it.
fn downgrade(req: &mut Request<ReqBody>, version: Version) {
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    *req.version_mut() = version;
}

/// Sends a tunnel request on its own connection; when the upstream switches protocols (or accepts
/// the CONNECT), the client's and the upstream's upgraded connections are spliced byte for byte.
async fn tunnel(mut req: Request<ReqBody>, routed: &Routed, ctx: &Ctx) -> Result<Response<Incoming>, ProxyError> {
    let is_connect = req.method() == http::Method::CONNECT;
    let client_side = hyper::upgrade::on(&mut req);
    let mut rsp = ctx.side.clients.tunnel(routed.endpoint.clone(), req).await?;
    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS || (is_connect && rsp.status().is_success());
    if switched {
        let upstream_side = hyper::upgrade::on(&mut rsp);
        let client = ctx.client;
        // The tunnel keeps its connection counted (http::serve waits for it).
        let busy = ctx.activity.start();
        tokio::spawn(async move {
            let _busy = busy;
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = crate::tcp::forward(&mut c, &mut u).await {
                        tracing::debug!(%client, error = %e, "tunnel ended with an error");
                    }
                }
                Err(e) => tracing::info!(%client, error = %e, "upgrade failed"),
            }
        });
    } else {
        headers::strip_hop_by_hop(rsp.headers_mut(), false);
    }
    Ok(rsp)
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}
