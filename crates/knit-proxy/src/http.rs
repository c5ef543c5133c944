//! HTTP proxying. A detected HTTP connection is served by hyper; each request then passes through
//! named stages in order: [`route`](Ctx::route) (which endpoint), [`forward`](forward::forward)
//! (which client and which header rewrites), and the response's metrics and access log.

pub(crate) mod authorize;
pub mod body;
pub mod client;
mod forward;
pub mod headers;
pub mod l5d;
mod logical;
pub mod normalize;
mod outcome;
mod park;

use crate::{
    discovery::Target,
    drain,
    error::ProxyError,
    metrics::{
        route::{Bounded, PolicyLabels},
        Direction, Metrics,
    },
    outbound::Logical,
    resolve::Resolver,
};
use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use knit_core::destination::{Authority, Endpoint};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};
use tokio::io::{AsyncRead, AsyncWrite};

pub use client::Clients;

pub type Body = BoxBody<Bytes, BoxError>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies on their way upstream: the client's stream, or a buffered copy that a retry
/// replays.
pub type ReqBody = BoxBody<Bytes, BoxError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// What every request on one side of the proxy shares.
pub struct Side {
    pub direction: Direction,
    pub dialer: crate::tcp::Dialer,
    pub clients: Clients,
    pub metrics: Metrics,
    pub resolver: Arc<Resolver>,
    pub discovery: Arc<crate::discovery::Discovery>,
    pub taps: Arc<crate::tap::Taps>,
    pub config: Arc<crate::config::Config>,
    /// This proxy's listeners; forwarding to one of them would loop.
    pub own: crate::loops::OwnListeners,
    /// Inbound, on a multicluster gateway: the outbound side its peers' connections continue on.
    pub gateway: Option<Arc<Side>>,
    /// Requests in flight on this side, bounded (`KNIT_PROXY_MAX_IN_FLIGHT_REQUESTS`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Label values the traffic chooses (`hostname`, a local-mode request's `authority`, an SNI
    /// passed through), bounded.
    pub hostnames: Bounded,
    /// Span export, when a trace collector is configured (`trace.rs`).
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl Side {
    /// Whether `addr` reaches one of this proxy's own listeners, on any local address.
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.contains(addr)
    }

    /// A meshed endpoint whose proxy is this one (the workload calling its own Service) is
    /// reached at its application address directly, as Linkerd treats a local endpoint: no mesh
    /// TLS to itself, no loop.
    pub fn localize(&self, endpoint: Endpoint) -> Endpoint {
        if endpoint.meshed.is_some() && self.own.is_inbound(endpoint.connect_addr()) {
            return Endpoint { meshed: None, ..endpoint };
        }
        endpoint
    }

    /// The `hostname` label of a route's metrics for `host`: empty unless
    /// `KNIT_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS` is on.
    pub fn hostname_label(&self, host: &str) -> String {
        if self.config.outbound.metrics_hostname_labels {
            self.hostnames.get(host)
        } else {
            String::new()
        }
    }
}

/// Where the requests of a connection go.
pub enum Dest {
    /// Inbound: the application's address.
    Inbound(SocketAddr),
    /// Outbound: the logical destination the connection was resolved to when it was accepted.
    Logical(Arc<Logical>),
    /// Outbound in local mode, with no original destination: each request names its own with
    /// its authority.
    PerRequest,
    /// A gateway asked for a name outside its suffixes: every request is answered 404 (gRPC
    /// `NotFound`), as Linkerd's gateway answers `GatewayDomainInvalid`.
    GatewayDomain { target: String, reason: &'static str },
}

/// One accepted connection's context, handed to every request on it.
pub struct Ctx {
    pub side: Arc<Side>,
    pub client: SocketAddr,
    pub dest: Dest,
    /// Inbound: the mesh identity the client proved, sent to the application as `l5d-client-id`.
    pub client_id: Option<String>,
    /// The connection's TLS labels (inbound); outbound labels follow each request's endpoint.
    pub tls: crate::metrics::Tls,
    /// Inbound: the connection came from a peer proxy over the mesh protocol (mesh TLS, or a
    /// transport header), so its requests may carry the proxies' own headers (`l5d-orig-proto`).
    pub from_peer: bool,
    /// The connection's requests in flight and the tunnels (WebSocket, CONNECT) spliced from
    /// them: the connection stays counted (its listener's permit, its drain watch) until all end.
    pub activity: Arc<Activity>,
    /// The golden-metric handles of the connection's last request.
    pub golden: crate::metrics::GoldenCache,
    /// Outbound: the connection is a peer's through this multicluster gateway (`gateway.rs`).
    pub gateway: Option<Arc<crate::gateway::Hop>>,
}

/// The endpoint a request goes to, the logical name it was addressed by, and inbound, the
/// server, route and authorization it was checked against (its golden metrics' `srv_*`,
/// `route_*` and `authz_*` labels).
#[derive(Clone)]
pub struct Routed {
    pub endpoint: Endpoint,
    pub authority: Option<Authority>,
    pub policy: Option<Arc<PolicyLabels>>,
}

impl Routed {
    pub fn to(endpoint: Endpoint) -> Self {
        Self { endpoint, authority: None, policy: None }
    }
}

/// What happens to a request, decided before anything is sent.
pub enum Plan {
    /// Inbound: straight to the application.
    Endpoint(Routed),
    /// Outbound: through the routes, backends and balancers of the destination's policy.
    Logical(logical::Routing),
    /// The proxy answers by itself (an inbound route's redirect or injected failure).
    Respond { rsp: Response<Body>, target: Option<Routed> },
}

/// A request refused before it was sent, with the endpoint it was meant for when known.
pub type Refused = (ProxyError, Option<Routed>);

impl Ctx {
    /// Outbound: the destination's policy, as the connection was resolved or, in local mode,
    /// as the request's authority names it.
    async fn plan<B>(&self, req: &Request<B>) -> Result<Plan, Refused> {
        let logical = match &self.dest {
            Dest::Logical(l) => l.clone(),
            Dest::PerRequest => {
                let a = request_authority(req).map_err(|e| (e, None))?;
                Arc::new(Logical::resolve(&self.side, Target::Authority(a.clone()), Some(a)).await.map_err(|e| (e, None))?)
            }
            Dest::Inbound(_) => return Err((ProxyError::NoDestination, None)),
            Dest::GatewayDomain { target, reason } => return Err((ProxyError::GatewayDomain { target: target.clone(), reason }, None)),
        };
        let policy = logical.policy(&self.side).await.map_err(|e| (e, None))?;
        Ok(Plan::Logical(logical::Routing { logical, policy }))
    }
}

/// The authority a request names: `:authority` / the absolute URI's, else `Host`; port 80 when
/// absent.
fn request_authority<B>(req: &Request<B>) -> Result<Authority, ProxyError> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).ok_or(ProxyError::NoAuthority)?.to_string(),
    };
    Authority::parse(&raw, Some(80)).map_err(|_| ProxyError::BadAuthority(raw))
}

/// [`serve`], as what serves a connection once it is set up.
pub fn serving<I>(io: I, version: HttpVersion, ctx: Ctx, drain: drain::Watch) -> crate::record::Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    Box::pin(async move {
        serve(io, version, ctx, drain).await;
        Ok(())
    })
}

/// Serves one HTTP connection until the client closes it or draining ends it gracefully: HTTP/1
/// finishes the request in flight, HTTP/2 sends GOAWAY and finishes open streams.
pub async fn serve<I>(io: I, version: HttpVersion, ctx: Arc<Ctx>, mut drain: drain::Watch)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = &ctx.side.config.http;
    crate::record::note(|r| {
        r.protocol = Some(match version {
            HttpVersion::Http1 => "http/1",
            HttpVersion::Http2 => "http/2",
        })
    });
    let resets = Arc::new(ResetBudget::new());
    let activity = ctx.activity.clone();
    let svc = {
        let (ctx, resets, activity) = (ctx.clone(), resets.clone(), activity.clone());
        service_fn(move |req: Request<hyper::body::Incoming>| {
            let ctx = ctx.clone();
            let guard = CancelGuard { budget: resets.clone(), finished: false };
            let busy = activity.start();
            async move {
                let mut guard = guard;
                // The proxy's requests in flight are bounded: past the limit it sheds load at once.
                let rsp = match ctx.side.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let rsp = forward::handle(req, ctx).await;
                        drop(permit);
                        rsp
                    }
                    Err(_) => {
                        let mut req = req;
                        let outcome = outcome::Outcome::open(&mut req, &ctx);
                        let e = ProxyError::Overloaded { max: ctx.side.config.http.max_in_flight_requests };
                        outcome.failed(&e);
                        outcome.close(error_response(&e, is_grpc(req.headers())), &ctx)
                    }
                };
                guard.finished = true;
                drop(busy);
                Ok::<_, Infallible>(rsp)
            }
        })
    };
    // Runs a hyper connection to its end, asking it to finish gracefully when draining starts or
    // when it has been idle (no request in flight) for the idle timeout, and dropping it (which
    // resets its streams) when the client spends its cancellation budget.
    macro_rules! drive {
        ($conn:expr) => {{
            // Boxed, as HTTP/1's: the connection task keeps no room for it.
            let mut conn = Box::pin($conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = activity.idle(http.idle_timeout) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = resets.exhausted() => {
                    tracing::warn!(client = %ctx.client, "closing a connection that cancels requests faster than {RESET_RATE}/s (rapid reset)");
                    ctx.side.metrics.http.errors.get_or_create(&crate::metrics::error_labels(ctx.side.direction, "rapid_reset", crate::error::Blame::Client)).inc();
                    return;
                }
            }
        }};
    }
    let result = match version {
        HttpVersion::Http1 => {
            // An idle HTTP/1 connection is closed when it has waited for a request head for the
            // header timeout (hyper's timer runs between requests too), or for the idle timeout:
            // parked, it keeps that deadline. Parking applies while it comes before.
            let idle_close = http.idle_timeout.min(http.header_read_timeout);
            let park_after = Some(http.park_after).filter(|p| !p.is_zero() && *p < idle_close);
            let mut io = park::ParkIo::new(io);
            loop {
                let parking = io.parking();
                // Boxed: a parked connection holds none of hyper's state.
                let mut conn = Box::pin(
                    hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(http.header_read_timeout)
                        .max_buf_size(http.max_header_bytes.max(8192))
                        .serve_connection(TokioIo::new(io), svc.clone())
                        .with_upgrades(),
                );
                let parked = tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    () = activity.idle(http.idle_timeout) => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    () = activity.idle(park_after.unwrap_or_default()), if park_after.is_some() => {
                        parking.store(true, std::sync::atomic::Ordering::Relaxed);
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                    () = resets.exhausted() => {
                        tracing::warn!(client = %ctx.client, "closing a connection that cancels requests faster than {RESET_RATE}/s (rapid reset)");
                        ctx.side.metrics.http.errors.get_or_create(&crate::metrics::error_labels(ctx.side.direction, "rapid_reset", crate::error::Blame::Client)).inc();
                        return;
                    }
                };
                if parked.is_err() {
                    break parked;
                }
                // Upgraded meanwhile (hyper handed the socket to the tunnel): nothing to park.
                let Some(parts) = std::pin::Pin::into_inner(conn).into_parts() else { break Ok(()) };
                let remaining = idle_close.saturating_sub(park_after.unwrap_or_default());
                let resumed = tokio::select! {
                    r = parts.io.into_inner().park(parts.read_buf) => r,
                    _ = drain.signaled() => None,
                    () = activity.idle(remaining) => None,
                };
                match resumed {
                    Some(next) => io = next,
                    None => break Ok(()),
                }
            }
        }
        HttpVersion::Http2 => drive!(hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(http.h2_keep_alive_interval)
            .keep_alive_timeout(http.h2_keep_alive_timeout)
            .max_concurrent_streams(http.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(http.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .max_header_list_size(u32::try_from(http.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), svc)),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
    // Upgraded connections outlive the HTTP connection that carried them.
    activity.finished().await;
}

/// Streams the server resets because the client broke the protocol on them, before the
/// connection is closed (the "MadeYouReset" attack makes the server reset streams for it).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// How many requests a connection has in flight (requests, and tunnels spliced from them) and
/// when its last one ended: it is idle with none for the idle timeout. Nothing is signalled as
/// requests come and go, which is every request: an idle timer, when it fires, reads when the
/// connection was last busy and sleeps again for what is left. Only [`Activity::finished`]
/// waits to be woken, once, as the connection ends.
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `base` to the end of the last request.
    last_end: std::sync::atomic::AtomicU64,
    base: tokio::time::Instant,
    /// Set while `finished` waits: the last request to end wakes it.
    waiting: std::sync::atomic::AtomicBool,
    drained: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            last_end: Default::default(),
            base: tokio::time::Instant::now(),
            waiting: Default::default(),
            drained: Default::default(),
        }
    }
}

/// A request being handled, or a tunnel open; ends when dropped.
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Completes once nothing is in flight.
    async fn finished(&self) {
        let drained = self.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        self.waiting.store(true, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            drained.as_mut().await;
            drained.set(self.drained.notified());
            drained.as_mut().enable();
        }
    }

    /// Completes once no request has been in flight for `timeout`, counted from the end of the
    /// last one, or from now if that was earlier.
    async fn idle(&self, timeout: std::time::Duration) {
        let from = self.now_ms();
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let left = if self.in_flight.load(Ordering::SeqCst) == 0 {
                let quiet = self.now_ms().saturating_sub(self.last_end.load(Ordering::SeqCst).max(from));
                match timeout.checked_sub(std::time::Duration::from_millis(quiet)) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            } else {
                timeout
            };
            sleep.as_mut().reset(tokio::time::Instant::now() + left);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_end.store(a.now_ms(), Ordering::SeqCst);
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && a.waiting.load(Ordering::SeqCst) {
            a.drained.notify_waiters();
        }
    }
}

/// Cancelled requests a connection may have per second, on average, and at once.
const RESET_RATE: f64 = 100.0;
const RESET_BURST: f64 = 200.0;

/// A token bucket of request cancellations per connection. HTTP/2's concurrency limit does not
/// bound a client that opens and cancels streams as fast as it can (CVE-2023-44487, "rapid reset"):
/// each stream still costs the proxy a route and an upstream request. h2's own limit covers only
/// streams reset before the server accepts them, so the proxy counts the requests it was working
/// on when the client cancelled them, and closes the connection when the budget runs out.
struct ResetBudget {
    bucket: std::sync::Mutex<(f64, tokio::time::Instant)>,
    /// Spent: the connection's task, woken through `waker`, closes it. (A flag and a waker,
    /// not a `Notify`: the connection polls this at every wake-up, and a `Notify` takes a lock.)
    spent: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl ResetBudget {
    fn new() -> Self {
        Self { bucket: std::sync::Mutex::new((RESET_BURST, tokio::time::Instant::now())), spent: Default::default(), waker: Default::default() }
    }

    /// Completes once the budget is spent.
    fn exhausted(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.spent.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    fn cancelled(&self) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * RESET_RATE).min(RESET_BURST) - 1.0;
        b.1 = now;
        if b.0 < 0.0 {
            self.spent.store(true, Ordering::Release);
            self.waker.wake();
        }
    }
}

/// Dropped before the response was produced: the client cancelled the request.
struct CancelGuard {
    budget: Arc<ResetBudget>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.budget.cancelled();
        }
    }
}

/// The response a client gets when the proxy itself fails the request: the status is the
/// error's class, and the reason is in the body and in `l5d-proxy-error`. A gRPC client gets
/// what Linkerd's proxy gives it: HTTP 200 with `grpc-status` and `grpc-message` and no body (a
/// trailers-only response), which gRPC libraries read as the call's status.
pub fn error_response(e: &ProxyError, grpc: bool) -> Response<Body> {
    let msg = e.to_string();
    let class = e.class();
    let mut rsp = if grpc {
        let mut rsp = Response::new(full(""));
        let h = rsp.headers_mut();
        h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", http::HeaderValue::from(class.grpc as i32));
        // grpc-message is percent-encoded (gRPC's HTTP/2 mapping).
        if let Ok(v) = http::HeaderValue::from_str(&grpc_percent_encode(&msg)) {
            h.insert("grpc-message", v);
        }
        rsp
    } else {
        let mut rsp = Response::new(full(format!("{msg}\n")));
        *rsp.status_mut() = class.http;
        rsp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        rsp
    };
    let h = rsp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&msg) {
        h.insert(headers::L5D_PROXY_ERROR, v);
    }
    if let Some(after) = e.retry_after() {
        h.insert(header::RETRY_AFTER, http::HeaderValue::from(after.as_secs().max(1)));
    }
    rsp
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|;...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII but `%` as is, the rest `%XX`.
fn grpc_percent_encode(msg: &str) -> String {
    use std::fmt::Write;
    msg.bytes().fold(String::with_capacity(msg.len()), |mut out, b| {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// Whether a request came from the same host (admin endpoints that change state require it).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}
