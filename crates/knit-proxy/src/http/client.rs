//! Upstream HTTP clients, one per direction:
//! - HTTP/1 to applications: hyper-util's pooled client (keep-alive, idle expiry);
//! - HTTP/2, to applications that speak it and to peer proxies (which carry HTTP/1 upgraded):
//!   one multiplexed connection per endpoint;
//! - tunnels (`Upgrade`, `CONNECT`): a dedicated HTTP/1 connection each.
//!
//! HTTP/1 requests in flight to one endpoint are capped (each holds a connection until its
//! response body ends), so that one HTTP/2 client with a thousand streams cannot fan out into a
//! thousand upstream sockets: past the cap, requests wait for a connection to free up. Idle
//! per-endpoint state (the cap's counter, a closed HTTP/2 connection's slot) is dropped.

use super::ReqBody;
use crate::{
    config::HttpConfig,
    error::ProxyError,
    tcp::{ClientIo, Dialer},
};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        self,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use knit_core::{destination::Endpoint, transport_header::SessionProtocol};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

type H2Sender = hyper::client::conn::http2::SendRequest<ReqBody>;

#[derive(Clone)]
pub struct Clients {
    http1: legacy::Client<Connector, ReqBody>,
    h2: Arc<H2Pool>,
    connector: Connector,
    limits: Arc<EndpointLimits>,
}

/// How long a request waits for a free HTTP/1 connection to a busy endpoint before 503.
const HTTP1_WAIT: Duration = Duration::from_secs(10);
/// Per-endpoint entries kept before the idle ones are swept.
const SWEEP_AT: usize = 1024;

/// The cap on HTTP/1 requests in flight per endpoint.
struct EndpointLimits {
    max: usize,
    map: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Semaphore>>>,
}

impl EndpointLimits {
    async fn acquire(&self, addr: SocketAddr) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= SWEEP_AT {
                // An entry nobody holds a permit of, or waits on, is idle.
                map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.max);
            }
            map.entry(addr).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.max))).clone()
        };
        match tokio::time::timeout(HTTP1_WAIT, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ProxyError::UpstreamBusy { addr, max: self.max, waited: HTTP1_WAIT }),
        }
    }
}

/// The pooled HTTP/1 client's connector: a [`Dialer`] for plain endpoints named by socket address.
/// Shared: hyper-util clones the connector for every request, pooled connection or not, and a
/// `Dialer` holds every metric family (a profile showed those clones and drops at 1.5% of the
/// proxy's CPU).
#[derive(Clone)]
struct Connector(Arc<Dialer>);

impl Connector {
    async fn connect(&self, endpoint: &Endpoint, protocol: Option<SessionProtocol>) -> Result<ClientIo, ProxyError> {
        self.0.dial(endpoint, protocol, None).await
    }
}

/// The pooled client's connect error, carried through hyper-util's error whole: [`send_error`]
/// takes the `ProxyError` back out (hyper-util lends it only by reference).
#[derive(Debug)]
struct ConnectFailed(Mutex<Option<ProxyError>>);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => e.fmt(f),
            None => f.write_str("connecting failed"),
        }
    }
}

impl std::error::Error for ConnectFailed {}

/// The pooled HTTP/1 client is handed URIs whose authority is the endpoint's socket address.
impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = ConnectFailed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectFailed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectFailed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let dialed = match authority.parse::<SocketAddr>() {
                Ok(addr) => this.connect(&Endpoint::plain(addr), None).await,
                Err(_) => Err(ProxyError::BadAuthority(authority.to_string())),
            };
            dialed.map(TokioIo::new).map_err(|e| ConnectFailed(Mutex::new(Some(e))))
        })
    }
}

/// What a failed send says, from the error's causes rather than its text: the connector's own
/// error (refused, timed out, TLS) as it was; the client's body failing (`ClientBody`: the
/// client's fault, not the upstream's); a request the peer never read (an HTTP/2
/// `REFUSED_STREAM`, or hyper giving the request back unsent: `Unsent`, safe to send again);
/// anything else an upstream failure.
fn send_error(addr: SocketAddr, e: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
    let mut unsent = false;
    while let Some(c) = cause {
        if let Some(failed) = c.downcast_ref::<ConnectFailed>() {
            if let Some(p) = failed.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return p;
            }
        }
        if c.downcast_ref::<super::body::ClientBodyError>().is_some() {
            return ProxyError::ClientBody(e);
        }
        unsent |= c.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)
            || c.downcast_ref::<h2::Error>().is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
        cause = c.source();
    }
    if unsent {
        ProxyError::Unsent { addr, source: e }
    } else {
        ProxyError::Upstream { addr, source: e }
    }
}

impl Connection for ClientIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Clients {
    pub fn new(dialer: Dialer, cfg: &HttpConfig) -> Self {
        let connector = Connector(Arc::new(dialer));
        let http1 = legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_endpoint)
            .set_host(false)
            .build(connector.clone());
        let limits = Arc::new(EndpointLimits { max: cfg.max_http1_per_endpoint, map: Mutex::default() });
        Self { http1, h2: Arc::new(H2Pool::default()), connector, limits }
    }

    /// Sends an HTTP/1 request to a plain endpoint over a pooled connection. The URI must be
    /// origin-form or absolute; its authority is replaced by the endpoint address for dialing, and
    /// the `Host` header goes through unchanged.
    pub async fn http1(&self, endpoint: SocketAddr, mut req: Request<ReqBody>) -> Result<Response<super::Body>, ProxyError> {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *req.uri_mut() = Uri::try_from(format!("http://{endpoint}{pq}")).map_err(|e| ProxyError::Upstream { addr: endpoint, source: e.into() })?;
        let permit = self.limits.acquire(endpoint).await?;
        let rsp = self.http1.request(req).await.map_err(|e| send_error(endpoint, e.into()))?;
        // The connection is busy until the response body ends: so is the permit.
        Ok(rsp.map(|b| super::body::PermitBody::new(b.map_err(super::BoxError::from), permit).boxed()))
    }

    /// Sends a request over the endpoint's shared HTTP/2 connection, dialing it when needed.
    pub async fn http2(&self, endpoint: Endpoint, req: Request<ReqBody>) -> Result<Response<Incoming>, ProxyError> {
        let addr = endpoint.connect_addr();
        let mut sender = self.h2.sender(&endpoint, &self.connector).await?;
        sender.ready().await.map_err(|e| send_error(addr, e.into()))?;
        sender.send_request(req).await.map_err(|e| send_error(addr, e.into()))
    }

    /// Sends a tunnel request (`Upgrade` or `CONNECT`) on a connection of its own, which becomes
    /// the tunnel when the upstream agrees.
    pub async fn tunnel(&self, endpoint: Endpoint, req: Request<ReqBody>) -> Result<Response<Incoming>, ProxyError> {
        let addr = endpoint.connect_addr();
        let io = self.connector.connect(&endpoint, Some(SessionProtocol::Http1)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| ProxyError::Upstream { addr, source: e.into() })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "tunnel connection ended");
            }
        });
        sender.send_request(req).await.map_err(|e| send_error(addr, e.into()))
    }
}

/// One HTTP/2 connection per endpoint, shared by its requests. A slot's async lock makes
/// concurrent first requests wait for one dial instead of each opening a connection. A
/// connection unused for [`H2_IDLE`] is let go (hyper closes it once its last sender is
/// dropped), so endpoints that left discovery do not keep connections open for ever.
#[derive(Default)]
struct H2Pool {
    slots: Mutex<H2Slots>,
}

#[derive(Default)]
struct H2Slots {
    /// Each endpoint's connection (behind the lock its first dial holds) and when it was last used.
    map: HashMap<Endpoint, (H2Slot, Instant)>,
    swept: Option<Instant>,
}

type H2Slot = Arc<tokio::sync::Mutex<Option<H2Sender>>>;

/// How long an unused HTTP/2 upstream connection is kept.
const H2_IDLE: Duration = Duration::from_secs(60);

impl H2Pool {
    async fn sender(&self, endpoint: &Endpoint, connector: &Connector) -> Result<H2Sender, ProxyError> {
        let slot = {
            // A poisoned lock means a panic while inserting into a map; the map is still valid.
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if slots.map.len() >= SWEEP_AT || slots.swept.is_none_or(|t| now.duration_since(t) > H2_IDLE / 6) {
                slots.swept = Some(now);
                // Slots nobody is using or dialling go when their connection closed or idled.
                slots.map.retain(|_, (s, used)| {
                    Arc::strong_count(s) > 1 || s.try_lock().map_or(true, |g| g.as_ref().is_some_and(|s| !s.is_closed()) && now.duration_since(*used) < H2_IDLE)
                });
            }
            let entry = slots.map.entry(endpoint.clone()).or_insert_with(|| (Arc::default(), now));
            entry.1 = now;
            entry.0.clone()
        };
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let addr = endpoint.connect_addr();
        let io = connector.connect(endpoint, Some(SessionProtocol::Http2)).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::Upstream { addr, source: e.into() })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}
