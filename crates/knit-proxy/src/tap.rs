//! Tap (4190): `io.linkerd.proxy.tap.Tap/Observe`, a live stream of the HTTP requests this proxy
//! forwards, for the viz component.
//!
//! - Served over mesh TLS only, and only to the identity `KNIT_PROXY_TAP_SVC_NAME` names; any
//!   other client gets `Unauthenticated` (LINKERD-WIRE.md §9).
//! - When nobody taps, a request costs one relaxed atomic load ([`Taps::active`]); built without
//!   the `tap` feature (on by default), nothing (bench/RESULTS.md's tap A/B measures the two).
//! - Requests the proxy answers itself (a 403 from inbound policy, a 429 from a rate limit, a
//!   filter's response, a 503 without endpoints) are tapped too, request to end at once.
//! - Outbound events carry the endpoint's discovered labels in `destination_meta`, and
//!   `DestinationLabel` matches them; `RouteLabel` matches nothing, and headers are not
//!   extracted.
//! - Each subscriber sees at most `KNIT_PROXY_TAP_MAX_RPS` requests per second and at most
//!   `ObserveRequest.limit` in all; its events go through a bounded queue, and when the queue is
//!   full events are dropped: a slow subscriber never slows traffic.

use crate::metrics::Direction;
use knit_core::destination::MetricLabels;
use linkerd2_proxy_api::{
    http_types,
    net::TcpAddress,
    tap::{
        eos,
        observe_request::r#match::{self as m, Match as M},
        tap_event::{
            self,
            http::{Event as HttpEvent, RequestInit, ResponseEnd, ResponseInit, StreamId},
            EndpointMeta, Http, ProxyDirection,
        },
        tap_server::{Tap, TapServer},
        Eos, ObserveRequest, TapEvent,
    },
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Events queued per subscriber before new ones are dropped.
const QUEUE: usize = 1_000;

/// What a tap match and event say about a request.
pub struct Meta<'a> {
    pub direction: Direction,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The client's mesh identity (inbound) or this proxy's (outbound).
    pub source_id: Option<&'a str>,
    /// The server's mesh identity: the peer proxy's (outbound) or this proxy's (inbound).
    pub destination_id: Option<&'a str>,
    /// What discovery says of the endpoint (outbound): `namespace`, `deployment`, `pod`, ...
    pub destination_labels: Option<&'a MetricLabels>,
    pub method: &'a http::Method,
    pub scheme: Option<&'a str>,
    pub authority: &'a str,
    pub path: &'a str,
}

struct Subscriber {
    matcher: Option<M>,
    tx: mpsc::Sender<Result<TapEvent, Status>>,
    /// Requests this subscriber may still see (`ObserveRequest.limit`).
    remaining: AtomicU32,
    /// Token bucket: (tokens, last refill).
    bucket: Mutex<(f64, Instant)>,
    max_rps: f64,
}

impl Subscriber {
    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.max_rps).min(self.max_rps);
        b.1 = now;
        if b.0 < 1.0 {
            return false;
        }
        let taken = self.remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if taken {
            b.0 -= 1.0;
        }
        taken
    }

    fn send(&self, event: TapEvent) {
        // Full or gone: the event is dropped, the request goes on.
        let _ = self.tx.try_send(Ok(event));
    }
}

/// The live subscriptions, shared by the inbound and outbound sides.
pub struct Taps {
    active: AtomicUsize,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    /// Stream ids: `base` is fixed per process, `stream` counts.
    base: u32,
    next: AtomicU64,
    max_rps: u32,
}

impl Taps {
    pub fn new(max_rps: u32) -> Arc<Self> {
        let base = std::process::id();
        Arc::new(Self { active: AtomicUsize::new(0), subscribers: Mutex::new(Vec::new()), base, next: AtomicU64::new(0), max_rps })
    }

    /// Whether anyone taps: the whole cost of tap on a request when nobody does. Built without
    /// the `tap` feature, the constant false, so the request path has no tap code.
    #[inline]
    pub fn active(&self) -> bool {
        cfg!(feature = "tap") && self.active.load(Ordering::Relaxed) > 0
    }

    /// Emits `RequestInit` to every subscriber that wants this request, and returns the handle
    /// that reports its response.
    pub fn request(&self, meta: &Meta<'_>) -> Option<TapRequest> {
        let subscribers: Vec<Arc<Subscriber>> = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            let chosen = subs.iter().filter(|s| s.matcher.as_ref().is_none_or(|m| matches(m, meta)) && s.admit()).cloned().collect();
            // A subscriber that reached its limit is done: once its last requests end, its
            // stream ends.
            let before = subs.len();
            subs.retain(|s| s.remaining.load(Ordering::Acquire) > 0);
            self.active.fetch_sub(before - subs.len(), Ordering::Relaxed);
            chosen
        };
        if subscribers.is_empty() {
            return None;
        }
        let id = StreamId { base: self.base, stream: self.next.fetch_add(1, Ordering::Relaxed) };
        let source_labels = tls_labels("client_id", meta.source_id);
        let mut destination_labels = tls_labels("server_id", meta.destination_id);
        destination_labels.extend(meta.destination_labels.into_iter().flat_map(MetricLabels::iter).map(|(k, v)| (k.to_string(), v.to_string())));
        let template = TapEvent {
            source: Some(tcp(meta.source)),
            source_meta: Some(EndpointMeta { labels: source_labels }),
            route_meta: None,
            destination: Some(tcp(meta.destination)),
            destination_meta: Some(EndpointMeta { labels: destination_labels }),
            proxy_direction: match meta.direction {
                Direction::Inbound => ProxyDirection::Inbound,
                Direction::Outbound => ProxyDirection::Outbound,
            } as i32,
            event: None,
        };
        let init = HttpEvent::RequestInit(RequestInit {
            id: Some(id),
            method: Some(meta.method.clone().into()),
            scheme: meta.scheme.map(http_types::Scheme::from),
            authority: meta.authority.to_string(),
            path: meta.path.to_string(),
            headers: None,
        });
        let tap = TapRequest { subscribers, template, id, started: Instant::now(), responded: None, ended: false };
        tap.emit(init);
        Some(tap)
    }

    fn subscribe(&self, req: ObserveRequest) -> Observed {
        let (tx, rx) = mpsc::channel(QUEUE);
        let limit = if req.limit == 0 { u32::MAX } else { req.limit };
        let sub = Arc::new(Subscriber {
            matcher: req.r#match.and_then(|m| m.r#match),
            tx,
            remaining: AtomicU32::new(limit),
            bucket: Mutex::new((f64::from(self.max_rps), Instant::now())),
            max_rps: f64::from(self.max_rps),
        });
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(sub.clone());
        self.active.fetch_add(1, Ordering::Relaxed);
        Observed { rx, registry: None, sub: Arc::downgrade(&sub) }
    }

    fn unsubscribe(&self, sub: &std::sync::Weak<Subscriber>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = subs.iter().position(|s| std::ptr::eq(Arc::as_ptr(s), sub.as_ptr())) {
            subs.swap_remove(i);
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn tls_labels(key: &str, id: Option<&str>) -> HashMap<String, String> {
    match id {
        Some(id) => HashMap::from([("tls".to_string(), "true".to_string()), (key.to_string(), id.to_string())]),
        None => HashMap::from([("tls".to_string(), "no_identity".to_string())]),
    }
}

fn tcp(addr: SocketAddr) -> TcpAddress {
    TcpAddress { ip: Some(addr.ip().into()), port: u32::from(addr.port()) }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// One tapped request: reports its response head and its end. Dropped before its end (a
/// timeout cancelled it), it reports a reset, so no subscriber waits for an end that never comes.
pub struct TapRequest {
    subscribers: Vec<Arc<Subscriber>>,
    template: TapEvent,
    id: StreamId,
    started: Instant,
    responded: Option<Instant>,
    ended: bool,
}

impl TapRequest {
    fn emit(&self, event: HttpEvent) {
        let mut e = self.template.clone();
        e.event = Some(tap_event::Event::Http(Http { event: Some(event) }));
        for s in &self.subscribers {
            s.send(e.clone());
        }
    }

    pub fn response(&mut self, status: u16) {
        self.responded = Some(Instant::now());
        self.emit(HttpEvent::ResponseInit(ResponseInit {
            id: Some(self.id),
            since_request_init: Some(duration(self.started.elapsed())),
            http_status: u32::from(status),
            headers: None,
        }));
    }

    /// The response's end: its body size, its gRPC status, or a reset when it did not end well.
    pub fn end(mut self, response_bytes: u64, grpc_status: Option<u32>, reset: bool) {
        self.finish(response_bytes, grpc_status, reset);
    }

    fn finish(&mut self, response_bytes: u64, grpc_status: Option<u32>, reset: bool) {
        self.ended = true;
        let now = Instant::now();
        let eos = match (reset, grpc_status) {
            // h2's INTERNAL_ERROR: the stream did not end cleanly.
            (true, _) => Some(Eos { end: Some(eos::End::ResetErrorCode(2)) }),
            (false, Some(code)) => Some(Eos::from_grpc_status(code)),
            (false, None) => None,
        };
        self.emit(HttpEvent::ResponseEnd(ResponseEnd {
            id: Some(self.id),
            since_request_init: Some(duration(now - self.started)),
            since_response_init: Some(duration(now - self.responded.unwrap_or(now))),
            response_bytes,
            eos,
            trailers: None,
        }));
    }
}

impl Drop for TapRequest {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(0, None, true);
        }
    }
}

fn matches(m: &M, meta: &Meta<'_>) -> bool {
    let string = |s: &m::http::StringMatch, value: &str| match &s.r#match {
        Some(m::http::string_match::Match::Exact(e)) => value == e,
        Some(m::http::string_match::Match::Prefix(p)) => value.starts_with(p.as_str()),
        None => true,
    };
    let tcp = |t: &m::Tcp, addr: SocketAddr| match &t.r#match {
        Some(m::tcp::Match::Netmask(n)) => {
            let Some(ip) = n.ip.and_then(|ip| std::net::IpAddr::try_from(ip).ok()) else { return false };
            ipnet::IpNet::new(ip, n.mask as u8).is_ok_and(|net| net.contains(&addr.ip()))
        }
        Some(m::tcp::Match::Ports(p)) => (p.min..=p.max.max(p.min)).contains(&u32::from(addr.port())),
        None => true,
    };
    let sub = |m: &Option<M>| m.as_ref().is_none_or(|m| matches(m, meta));
    match m {
        M::All(seq) => seq.matches.iter().all(|x| sub(&x.r#match)),
        M::Any(seq) => seq.matches.iter().any(|x| sub(&x.r#match)),
        M::Not(x) => x.r#match.as_ref().is_some_and(|m| !matches(m, meta)),
        M::Source(t) => tcp(t, meta.source),
        M::Destination(t) => tcp(t, meta.destination),
        M::Http(h) => match &h.r#match {
            Some(m::http::Match::Method(want)) => http::Method::try_from(want.clone()).is_ok_and(|w| w == *meta.method),
            Some(m::http::Match::Scheme(want)) => meta.scheme.is_some_and(|s| http_types::Scheme::from(s) == *want),
            Some(m::http::Match::Authority(s)) => string(s, meta.authority),
            Some(m::http::Match::Path(s)) => string(s, meta.path),
            None => true,
        },
        M::DestinationLabel(l) => meta.destination_labels.is_some_and(|labels| labels.iter().any(|(k, v)| k == l.key && v == l.value)),
        // Knit's proxy keeps no route labels to match on.
        M::RouteLabel(_) => false,
    }
}

/// A subscriber's event stream; dropping it (the client went away) unsubscribes. It ends once
/// the subscriber reached its limit and its last tapped requests ended (the senders are gone).
pub struct Observed {
    rx: mpsc::Receiver<Result<TapEvent, Status>>,
    registry: Option<Arc<Taps>>,
    sub: std::sync::Weak<Subscriber>,
}

impl futures_util::Stream for Observed {
    type Item = Result<TapEvent, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.unsubscribe(&self.sub);
        }
    }
}

/// The gRPC service, for one connection whose client proved `peer` (if anything).
pub struct TapService {
    taps: Arc<Taps>,
    peer: Option<String>,
    allowed: Arc<str>,
}

#[tonic::async_trait]
impl Tap for TapService {
    type ObserveStream = Observed;

    async fn observe(&self, req: Request<ObserveRequest>) -> Result<Response<Observed>, Status> {
        if self.peer.as_deref() != Some(&*self.allowed) {
            let seen = self.peer.as_deref().unwrap_or("no client certificate");
            tracing::info!(peer = seen, allowed = %self.allowed, "tap refused");
            return Err(Status::unauthenticated(format!("tap is only for {}; the client proved {seen}", self.allowed)));
        }
        let mut observed = self.taps.subscribe(req.into_inner());
        observed.registry = Some(self.taps.clone());
        Ok(Response::new(observed))
    }
}

/// Tap connections open at once: one per knit-control replica, and room to spare; a few from
/// any one address.
const CONNECTIONS: usize = 16;
const CONNECTIONS_PER_CLIENT: usize = 4;
/// How long a connection from any other identity may stay open.
const REFUSED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5);
/// An `ObserveRequest` is a match expression and a limit: a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Serves tap on `listener` until the task is dropped: mesh TLS with the proxy's current
/// certificate, then gRPC over HTTP/2. A client that did not prove the allowed identity gets
/// `Unauthenticated` from its request's headers: its body is never read.
pub async fn serve(
    listener: tokio::net::TcpListener,
    taps: Arc<Taps>,
    identity: crate::identity::Identity,
    allowed: String,
    metrics: crate::metrics::IdentityMetrics,
) {
    let allowed: Arc<str> = allowed.into();
    let log = Arc::new(crate::tls::LogOnce::default());
    crate::accept::accept_loop(listener, crate::accept::Limit::per_source(CONNECTIONS, CONNECTIONS_PER_CLIENT), None, "tap", move |tcp, peer, permit, _| {
        let (taps, allowed, metrics, log, identity) = (taps.clone(), allowed.clone(), metrics.clone(), log.clone(), identity.clone());
        async move {
            let Some(creds) = identity.current() else { return };
            let Ok((tls, client_id, _)) = crate::tls::accept(tcp, creds, peer, &metrics, &log).await else { return };
            let authorized = client_id.as_deref() == Some(&*allowed);
            if !authorized {
                let seen = client_id.as_deref().unwrap_or("no client certificate");
                tracing::info!(%peer, peer_identity = seen, allowed = %allowed, "tap refused");
            }
            let tonic = TapServer::new(TapService { taps, peer: client_id.clone(), allowed: allowed.clone() }).max_decoding_message_size(MAX_REQUEST_BYTES);
            let io = hyper_util::rt::TokioIo::new(tls);
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                use tower_service::Service;
                let refused = (!authorized).then(|| {
                    let seen = client_id.as_deref().unwrap_or("no client certificate");
                    Status::unauthenticated(format!("tap is only for {allowed}; the client proved {seen}")).into_http::<tonic::body::Body>()
                });
                let mut tonic = tonic.clone();
                async move {
                    match refused {
                        Some(rsp) => Ok(rsp),
                        None => tonic.call(req).await,
                    }
                }
            });
            let mut h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            h2.max_concurrent_streams(16).max_header_list_size(16 * 1024).max_pending_accept_reset_streams(16);
            h2.timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(std::time::Duration::from_secs(10)))
                .keep_alive_timeout(std::time::Duration::from_secs(5));
            let conn = h2.serve_connection(io, svc);
            // A client that did not prove the allowed identity gets its answer and a few seconds:
            // it must not keep one of the few tap connections (or stall in the preface) for ever.
            let ended = if authorized { Ok(conn.await) } else { tokio::time::timeout(REFUSED_LIFETIME, conn).await };
            match ended {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tap connection ended"),
                Err(_) => tracing::debug!(%peer, "refused tap client closed after {REFUSED_LIFETIME:?}"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_labels_match_what_discovery_said() {
        let (labels, _) = MetricLabels::new([("deployment".to_string(), "books".to_string())]);
        let method = http::Method::GET;
        let meta = Meta {
            direction: Direction::Outbound,
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
            source_id: None,
            destination_id: None,
            destination_labels: Some(&labels),
            method: &method,
            scheme: None,
            authority: "books:80",
            path: "/",
        };
        let label = |k: &str, v: &str| M::DestinationLabel(m::Label { key: k.into(), value: v.into() });
        assert!(matches(&label("deployment", "books"), &meta));
        assert!(!matches(&label("deployment", "web"), &meta));
        assert!(!matches(&label("pod", "books"), &meta));
        assert!(!matches(&label("deployment", "books"), &Meta { destination_labels: None, ..meta }), "no endpoint, no labels");
    }

    #[test]
    fn a_request_dropped_before_its_end_ends_as_a_reset() {
        let taps = Taps::new(100);
        let mut observed = taps.subscribe(ObserveRequest::default());
        let method = http::Method::GET;
        let addr = "127.0.0.1:1".parse().unwrap();
        let meta = Meta {
            direction: Direction::Inbound,
            source: addr,
            destination: addr,
            source_id: None,
            destination_id: None,
            destination_labels: None,
            method: &method,
            scheme: None,
            authority: "a",
            path: "/",
        };
        // A timeout cancels the request after its response head.
        let mut tapped = taps.request(&meta).expect("a subscriber");
        tapped.response(200);
        drop(tapped);
        let kinds: Vec<_> = std::iter::from_fn(|| observed.rx.try_recv().ok())
            .map(|e| match e.unwrap().event {
                Some(tap_event::Event::Http(Http { event: Some(HttpEvent::ResponseEnd(end)) })) => format!("end {:?}", end.eos.and_then(|e| e.end)),
                Some(tap_event::Event::Http(Http { event: Some(e) })) => format!("{e:?}").split('(').next().unwrap().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["RequestInit", "ResponseInit", "end Some(ResetErrorCode(2))"]);
    }
}
