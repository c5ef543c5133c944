//! The access-log record of one TCP connection, as `http/outcome.rs` is one request's: opened
//! when the connection is accepted, filled in by the steps it passes (its target, the identity
//! its client proved, the protocol it turned out to carry, the route and endpoint, the
//! authorization, the bytes copied) and written once when the connection ends, refused and
//! failed connections included. Only while the access log is on: the record lives in a
//! task-local of the connection's task, and [`note`] is a no-op elsewhere (an HTTP/2 stream's
//! task, or with the log off).

use crate::{error::ProxyError, http::Side};
use std::{cell::RefCell, future::Future, net::SocketAddr, pin::Pin, time::Instant};

tokio::task_local! {
    static RECORD: RefCell<Record>;
}

#[derive(Default)]
pub struct Record {
    /// Where the connection was going: its original destination, the port a transport header
    /// named, or a port forward's destination.
    pub target: Option<String>,
    /// Inbound: the identity the client proved with mesh TLS.
    pub client_id: Option<String>,
    /// `http/1`, `http/2` (each request has its own line too), `opaque` or `tls`.
    pub protocol: Option<&'static str>,
    /// Outbound: the opaque or TLS route that carried it.
    pub route: Option<String>,
    /// Inbound: the authorization that allowed an opaque connection.
    pub authz: Option<String>,
    pub endpoint: Option<SocketAddr>,
    /// Outbound: the identity the endpoint's proxy proved.
    pub server_id: Option<String>,
    /// Bytes from the client to the endpoint, and back.
    pub bytes: Option<(u64, u64)>,
}

/// The access log's `client_id` and `server_id` (`-` when unknown): inbound, the peer is the
/// client and this proxy the server; outbound, the reverse.
pub(crate) fn identities(side: &Side, peer_client: Option<String>, peer_server: Option<String>) -> (String, String) {
    let own = side.dialer.identity.as_ref().map(|i| i.name.to_string());
    let (client, server) = match side.direction {
        crate::metrics::Direction::Inbound => (peer_client, own),
        crate::metrics::Direction::Outbound => (own, peer_server),
    };
    (client.unwrap_or_else(|| "-".into()), server.unwrap_or_else(|| "-".into()))
}

/// The long part of a connection: serving its HTTP or copying its bytes, until it ends.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send>>;

/// What setting a connection up (finding its target, detecting its protocol, TLS, opening the
/// upstream) ends with: the [`Serving`] that takes over, or nothing left to do. The setup
/// returns it instead of awaiting it, so that its own state is freed before the long part
/// starts: a future is as large as the largest one it awaits inline, and an idle connection
/// would otherwise carry room for a detection or a handshake it is long done with.
pub type Setup = Result<Option<Serving>, ProxyError>;

/// A setup's end: `f` serves the connection from here on.
pub fn serving(f: impl Future<Output = Result<(), ProxyError>> + Send + 'static) -> Setup {
    Ok(Some(Box::pin(f)))
}

/// A connection's setup, on the heap: its box is freed before the connection is served.
pub type SetupFuture<'a> = Pin<Box<dyn Future<Output = Setup> + Send + 'a>>;

async fn set_up_then_serve(setup: SetupFuture<'_>) -> Result<(), ProxyError> {
    match setup.await? {
        Some(serving) => serving.await,
        None => Ok(()),
    }
}

/// Adds to the current connection's record, if it has one.
pub fn note(f: impl FnOnce(&mut Record)) {
    let _ = RECORD.try_with(|r| f(&mut r.borrow_mut()));
}

/// Sets a connection up, serves it and, with the access log on, writes its record when it ends.
/// The setup comes boxed: a future passed by value to an async fn is kept once as the argument
/// and again as what is awaited (twice more inside the task-local's scope), and a connection's
/// task is as large as that.
pub async fn recorded(side: &Side, client: SocketAddr, setup: SetupFuture<'_>) -> Result<(), ProxyError> {
    if !side.config.log.access_log {
        return set_up_then_serve(setup).await;
    }
    let started = Instant::now();
    let (result, r) = RECORD
        .scope(RefCell::new(Record::default()), async {
            let result = set_up_then_serve(setup).await;
            (result, RECORD.with(|r| r.take()))
        })
        .await;
    let dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    let class = result.as_ref().err().map(ProxyError::class);
    let (client_id, server_id) = identities(side, r.client_id, r.server_id);
    let (sent, received) = r.bytes.unwrap_or_default();
    tracing::info!(
        target: "access",
        direction = side.direction.as_str(),
        client = %client,
        client_id,
        target_addr = dash(r.target.as_deref()),
        protocol = r.protocol.unwrap_or("-"),
        route = dash(r.route.as_deref()),
        authz = dash(r.authz.as_deref()),
        endpoint = r.endpoint.map_or_else(|| "-".to_string(), |e| e.to_string()),
        server_id,
        error = class.map_or("-", |c| c.kind),
        blame = class.map_or("-", |c| c.blame.as_str()),
        reason = result.as_ref().err().map_or_else(|| "-".to_string(), |e| e.to_string()),
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
        bytes_sent = sent,
        bytes_received = received,
        "connection"
    );
    result
}
