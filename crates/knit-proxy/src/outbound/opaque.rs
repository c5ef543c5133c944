//! Opaque TCP and TLS through a logical destination's policy, in the order a connection takes
//! it: the route (the policy's opaque route, or the TLS route whose SNIs match the ClientHello's)
//! → its filters (`Forbidden`: traffic not allowed; `Invalid`) → a backend by weight → an
//! endpoint ([`backend::endpoint`]: balanced, through the backend's queue) → the dial (mTLS to
//! the endpoint's proxy with a transport header that names the target port and no session
//! protocol when it is meshed, plain otherwise) → bytes copied both ways, half-close included.
//!
//! Each connection is counted in `outbound_{tcp,tls}_route_open_total` when it enters its route
//! and in `..._close_total{error}` when it ends, with the route's `parent_*`/`route_*` labels.

use super::{backend, logical::Logical};
use crate::{
    balance::{self, Picked},
    error::ProxyError,
    http::Side,
    io::{CountingIo, PrefixedIo},
    metrics::{
        route::{CloseLabels, Resource, RouteLabels, RouteMetrics},
        HttpLabels, Peer, TcpLabels,
    },
    policy::outbound::{Filter, Meta, OpaquePolicy},
    record::{serving, Setup},
    tcp::ClientIo,
};
use bytes::Bytes;
use knit_core::destination::Endpoint;
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::{sync::Arc, time::Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An opaque route (TCPRoute, or the default route).
    Tcp,
    /// A TLS route, chosen by SNI.
    Tls,
}

/// A connection to the endpoint its route chose, not yet carrying bytes.
pub struct Opened {
    pub server: ClientIo,
    endpoint: Endpoint,
    /// Holds the endpoint's load in the balancer for as long as the connection is open.
    _picked: Option<Picked<Endpoint>>,
    route: RouteConn,
}

/// Picks the route of `policy` (the opaque or TLS part of the destination's policy, whose
/// resource is `parent`), its backend and an endpoint, and connects to it.
pub async fn open(logical: &Logical, parent: &Arc<Meta>, policy: &OpaquePolicy, sni: Option<&str>, kind: Kind, side: &Side) -> Result<Opened, ProxyError> {
    let target = logical.target.to_string();
    let Some(route) = policy.route(sni) else {
        return Err(ProxyError::NoTcpRoute { target, sni: sni.map(str::to_string) });
    };
    let parent = Resource::of(parent);
    let hostname = match (kind, sni) {
        (Kind::Tls, Some(s)) => side.hostname_label(s),
        _ => String::new(),
    };
    let labels = RouteLabels::new(&parent, &Resource::of(&route.meta), hostname);
    let conn = RouteConn::new(&side.metrics.route, kind, labels);
    for f in &route.filters {
        match f {
            Filter::Forbidden => return Err(conn.refuse("forbidden", ProxyError::Forbidden { target })),
            Filter::InternalError(reason) => return Err(conn.refuse("invalid_policy", ProxyError::InvalidPolicy(format!("route filter: {reason}").into()))),
            // HTTP filters never reach an opaque route (the policy conversion refuses them).
            _ => {}
        }
    }
    let Some(b) = route.backends.pick(&mut fastrand::Rng::new()) else {
        let e = ProxyError::BackendFailed { backend: route.meta.name().to_string(), message: "the route has no backends".into() };
        return Err(conn.refuse("invalid_backend", e));
    };
    if let Some(Filter::InternalError(reason)) = b.filters.iter().find(|f| matches!(f, Filter::InternalError(_))) {
        let e = ProxyError::BackendFailed { backend: b.backend.meta.name().to_string(), message: reason.clone() };
        return Err(conn.refuse("invalid_backend", e));
    }
    let mut chosen = match backend::endpoint(&b.backend, None, side).await {
        Ok(c) => c,
        Err(e @ ProxyError::BackendFailed { .. }) => return Err(conn.refuse("invalid_backend", e)),
        Err(e) => return Err(conn.refuse("unexpected", e)),
    };
    let endpoint = chosen.endpoint.clone();
    if side.is_own(endpoint.connect_addr()) {
        return Err(conn.refuse("unexpected", ProxyError::Loop(endpoint.connect_addr())));
    }
    let started = Instant::now();
    let dialed = side.dialer.dial(&endpoint, None, logical.authority.as_ref().map(|a| side.hostnames.get(&a.to_string()))).await;
    if let Some(p) = chosen.picked.as_mut() {
        let outcome = if dialed.is_ok() { balance::Outcome::Success } else { balance::Outcome::Failure { rate_limited: false, retry_after: None } };
        p.record(outcome, started.elapsed(), Instant::now());
    }
    crate::record::note(|r| {
        r.protocol = Some(if kind == Kind::Tls { "tls" } else { "opaque" });
        r.route = Some(format!("{}/{}", conn.labels.parent.name(), conn.labels.route.name()));
        r.endpoint = Some(endpoint.addr);
        r.server_id = side.dialer.peer_identity(&endpoint).map(str::to_string);
    });
    match dialed {
        Ok(server) => Ok(Opened { server, endpoint, _picked: chosen.picked, route: conn }),
        Err(e) => Err(conn.refuse("unexpected", e)),
    }
}

/// Copies bytes between the client and the opened connection until both sides are done;
/// `greeting` is what the server already said (a server-speaks-first protocol), written first.
/// Its labels are made here; what is returned holds only what the copy needs, and `drain`, so
/// that the proxy's drain waits for the connection, and the logical target, whose discovery
/// is followed while the connection lives.
pub fn copy<C>(client: PrefixedIo<C>, mut opened: Opened, greeting: Bytes, logical: &Arc<Logical>, side: &Side, drain: crate::drain::Watch) -> Setup
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = HttpLabels {
        direction: side.direction,
        authority: logical.authority.as_ref().map(|a| side.hostnames.get(&a.to_string())),
        target_addr: opened.endpoint.addr,
        tls: side.dialer.tls_label(&opened.endpoint),
        dst: opened.endpoint.labels.clone(),
        policy: None,
    };
    let mut client = CountingIo::metered(client, &side.metrics.tcp, TcpLabels { target, peer: Peer::Src });
    opened.route.begin();
    let held = (logical.clone(), drain);
    serving(async move {
        let _held = held;
        if !greeting.is_empty() {
            client.write_all(&greeting).await.map_err(|e| ProxyError::Upstream { addr: opened.endpoint.addr, source: e.into() })?;
        }
        match crate::tcp::forward(&mut client, &mut opened.server).await {
            Ok(bytes) => crate::record::note(|r| r.bytes = Some(bytes)),
            Err(e) => {
                client.set_errno(e.raw_os_error());
                tracing::debug!(endpoint = %opened.endpoint, error = %e, "opaque connection ended with an error");
            }
        }
        Ok(())
    })
}

/// One connection of a route, counted open once and closed once.
struct RouteConn {
    open: Family<RouteLabels, Counter>,
    close: Family<CloseLabels, Counter>,
    labels: RouteLabels,
    begun: bool,
}

impl RouteConn {
    fn new(m: &RouteMetrics, kind: Kind, labels: RouteLabels) -> Self {
        let (open, close) = match kind {
            Kind::Tcp => (m.tcp_route_open.clone(), m.tcp_route_close.clone()),
            Kind::Tls => (m.tls_route_open.clone(), m.tls_route_close.clone()),
        };
        Self { open, close, labels, begun: false }
    }

    /// The connection starts carrying bytes; its close is counted when it ends.
    fn begin(&mut self) {
        self.open.get_or_create(&self.labels).inc();
        self.begun = true;
    }

    /// The route refused the connection, or could not carry it: open and closed with `error`.
    fn refuse(mut self, error: &'static str, e: ProxyError) -> ProxyError {
        self.open.get_or_create(&self.labels).inc();
        self.close.get_or_create(&CloseLabels { error: error.to_string(), route: self.labels.clone() }).inc();
        self.begun = false;
        tracing::info!(route = %self.labels.route.name(), parent = %self.labels.parent.name(), error = %e, "connection refused");
        e
    }
}

impl Drop for RouteConn {
    fn drop(&mut self) {
        if self.begun {
            self.close.get_or_create(&CloseLabels { error: String::new(), route: self.labels.clone() }).inc();
        }
    }
}
