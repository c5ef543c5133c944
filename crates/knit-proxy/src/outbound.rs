//! The outbound side: connections from the application to anywhere, discovered before their
//! protocol is chosen (linkerd2-proxy's order).
//!
//! 1. `accept`: the target is a port forward's name, else the original destination (iptables
//!    `REDIRECT`, `SO_ORIGINAL_DST`); a target that is one of this proxy's own listeners is
//!    refused as a loop. In local mode, with neither, only HTTP says where it goes: each request
//!    is routed by its authority ([`http_by_host`]).
//! 2. [`Logical::resolve`]: the static destination table, else `OutboundPolicies.Watch(target)`
//!    (followed while the connection lives), else the fallback to the original destination.
//! 3. The protocol the policy names:
//!    - `Detect`: HTTP detection with the policy's timeout; a client that says nothing lets the
//!      first speaker decide (server-speaks-first protocols are never stalled, see `detect`);
//!    - `Http1`, `Http2`, `Grpc`: HTTP without detection (only the version is read);
//!    - `Opaque`: no detection at all;
//!    - `Tls`: the ClientHello's SNI picks the TLS route.
//! 4. HTTP goes to [`http::serve`] (route → backend → balancer → endpoint, per request, in
//!    `http/logical.rs`); opaque and TLS bytes to [`opaque`] (route → backend → balancer →
//!    endpoint, per connection). Both dial through `tcp::Dialer`: mTLS with the endpoint's
//!    identity and a transport header when it is meshed (with `session_protocol` for HTTP, none
//!    for opaque bytes), plain otherwise.

pub mod backend;
pub mod logical;
pub mod opaque;

use crate::{
    detect::{self, Outcome, Speaker, Timeouts},
    discovery::Target,
    drain,
    error::ProxyError,
    http::{self, Ctx, Dest, HttpVersion, Side},
    io::{CountingIo, PrefixedIo},
    metrics::{plaintext_tls, HttpLabels, Peer, TcpLabels},
    orig_dst,
    policy::outbound::{OpaquePolicy, OutboundPolicy, Protocol},
    record::{Serving, Setup},
};
use bytes::Bytes;
use knit_core::{destination::Authority, detect::Protocol as Detected, transport_header::SessionProtocol};
pub use logical::Logical;
use opaque::Kind;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::Instrument;

type Io = PrefixedIo<TcpStream>;

// The larger steps of a connection (resolving, detecting, opening, copying, serving HTTP) are
// boxed where they are awaited: a connection's task is as large as its largest step, and an
// idle HTTP connection should not carry room for an opaque copy or a detection it is done with.

pub async fn serve_connection(tcp: TcpStream, client: SocketAddr, forward: Option<Authority>, side: Arc<Side>, drain: drain::Watch) {
    let span = tracing::info_span!("outbound", %client);
    async move {
        if let Err(e) = crate::record::recorded(&side, client, Box::pin(accept(tcp, client, forward, &side, drain))).await {
            side.metrics.http.errors.get_or_create(&crate::metrics::labels_error(side.direction, &e)).inc();
            tracing::info!(error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

async fn accept(tcp: TcpStream, client: SocketAddr, forward: Option<Authority>, side: &Arc<Side>, drain: drain::Watch) -> Setup {
    let orig_dst = orig_dst::redirected_dst(&tcp);
    let (target, authority) = match (forward, orig_dst) {
        // A port forward to an address is that address, as an original destination would be.
        (Some(name), _) => match name.host.parse::<std::net::IpAddr>() {
            Ok(ip) => (Target::Addr(SocketAddr::new(ip, name.port)), Some(name)),
            Err(_) => (Target::Authority(name.clone()), Some(name)),
        },
        (None, Some(dst)) => (Target::Addr(dst), None),
        (None, None) => return http_by_host(tcp, client, side, drain).await,
    };
    crate::record::note(|r| r.target = Some(target.to_string()));
    if let Target::Addr(dst) = target {
        if side.is_own(dst) {
            return Err(ProxyError::Loop(dst));
        }
    }
    let logical = Arc::new(Box::pin(Logical::resolve(side, target, authority)).await?);
    let conn = Conn { client, orig_dst, logical, side: side.clone(), drain };
    let io = PrefixedIo::new(Bytes::new(), tcp);
    let policy = match conn.logical.policy(side).await {
        Ok(p) => p,
        // No usable policy (the control plane's was invalid, or it has not answered): HTTP
        // clients are told why, request by request; other connections are closed.
        Err(e) => return conn.without_policy(io, e).await,
    };
    match &policy.protocol {
        Protocol::Detect { timeout, opaque, .. } => conn.detected(io, &policy, opaque, *timeout).await,
        Protocol::Http1(_) | Protocol::Http2(_) | Protocol::Grpc(_) => conn.http_known(io).await,
        Protocol::Opaque(opaque) => {
            let opened = Box::pin(opaque::open(&conn.logical, &policy.meta, opaque, None, Kind::Tcp, side)).await?;
            conn.copy(io, opened, Bytes::new())
        }
        Protocol::Tls(routes) => conn.tls(io, &policy, routes).await,
    }
}

/// An accepted connection and what it was resolved to.
struct Conn {
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    logical: Arc<Logical>,
    side: Arc<Side>,
    drain: drain::Watch,
}

impl Conn {
    /// `Detect`: HTTP is served by its routes; anything else takes the opaque route. A silent
    /// client lets the first speaker decide.
    async fn detected(self, io: Io, policy: &OutboundPolicy, opaque: &OpaquePolicy, timeout: Duration) -> Setup {
        let side = self.side.clone();
        let t = Timeouts { silent: Some(side.config.detect.silent_timeout), total: timeout };
        let silent = match self.detect(io, t).await? {
            Outcome::Closed => return Ok(None),
            Outcome::Detected(d) => return self.http_or_opaque(d, policy, opaque, None).await,
            Outcome::Silent(io) => io,
        };
        // Open the opaque route's connection and see who speaks first. If the route refuses (an
        // egress policy that allows only HTTP, say), wait for the client instead.
        let mut opened = match Box::pin(opaque::open(&self.logical, &policy.meta, opaque, None, Kind::Tcp, &side)).await {
            Ok(o) => o,
            Err(refused) => {
                return match self.detect(silent, Timeouts { silent: None, total: timeout }).await? {
                    Outcome::Detected(d) if is_http(&d.protocol) => self.http_or_opaque(d, policy, opaque, None).await,
                    _ => Err(refused),
                };
            }
        };
        let mut io = silent;
        let speaker = Box::pin(detect::first_speaker(&mut io, &mut opened.server)).await.map_err(|source| ProxyError::Connect { addr: self.client, source })?;
        match speaker {
            Speaker::Closed => Ok(None),
            Speaker::Server(greeting) => self.copy(io, opened, greeting),
            Speaker::Client(first) => {
                let io = PrefixedIo::new(first, io.into_parts().1);
                match self.detect(io, Timeouts { silent: None, total: timeout }).await? {
                    Outcome::Detected(d) => self.http_or_opaque(d, policy, opaque, Some(opened)).await,
                    Outcome::Closed | Outcome::Silent(_) => Ok(None),
                }
            }
        }
    }

    /// A detected connection: HTTP is routed per request (an upstream connection opened for the
    /// silent client is dropped unused); anything else takes the opaque route.
    async fn http_or_opaque(self, d: detect::Detected, policy: &OutboundPolicy, opaque: &OpaquePolicy, opened: Option<opaque::Opened>) -> Setup {
        match d.protocol {
            Detected::Http1 => self.http(d.io, HttpVersion::Http1),
            Detected::Http2 => self.http(d.io, HttpVersion::Http2),
            _ => {
                let opened = match opened {
                    Some(o) => o,
                    None => Box::pin(opaque::open(&self.logical, &policy.meta, opaque, None, Kind::Tcp, &self.side)).await?,
                };
                self.copy(d.io, opened, Bytes::new())
            }
        }
    }

    /// `Http1`, `Http2`, `Grpc`: HTTP whatever the client does; only the version is read from
    /// its first bytes (the HTTP/2 preface, else HTTP/1).
    async fn http_known(self, io: Io) -> Setup {
        let t = Timeouts { silent: None, total: self.side.config.detect.timeout };
        match self.detect(io, t).await? {
            Outcome::Detected(d) if d.protocol == Detected::Http2 => self.http(d.io, HttpVersion::Http2),
            Outcome::Detected(d) => self.http(d.io, HttpVersion::Http1),
            Outcome::Closed | Outcome::Silent(_) => Ok(None),
        }
    }

    /// `Tls`: the ClientHello's SNI chooses the route; a client that does not start TLS is refused.
    async fn tls(self, io: Io, policy: &OutboundPolicy, routes: &OpaquePolicy) -> Setup {
        let side = &self.side;
        let t = Timeouts { silent: None, total: side.config.detect.timeout };
        match self.detect(io, t).await? {
            Outcome::Detected(detect::Detected { protocol: Detected::Tls { sni }, io }) => {
                let opened = Box::pin(opaque::open(&self.logical, &policy.meta, routes, sni.as_deref(), Kind::Tls, side)).await?;
                self.copy(io, opened, Bytes::new())
            }
            Outcome::Detected(_) => Err(ProxyError::NotTls { target: self.logical.target.to_string() }),
            Outcome::Closed | Outcome::Silent(_) => Ok(None),
        }
    }

    /// No usable policy: HTTP requests are answered with the reason; other bytes are refused.
    async fn without_policy(self, io: Io, e: ProxyError) -> Setup {
        let t = Timeouts { silent: None, total: self.side.config.detect.timeout };
        match self.detect(io, t).await? {
            Outcome::Detected(d) if d.protocol == Detected::Http1 => self.http(d.io, HttpVersion::Http1),
            Outcome::Detected(d) if d.protocol == Detected::Http2 => self.http(d.io, HttpVersion::Http2),
            Outcome::Closed => Ok(None),
            _ => Err(e),
        }
    }

    async fn detect(&self, io: Io, t: Timeouts) -> Result<Outcome, ProxyError> {
        let side = &self.side;
        Box::pin(detect::detect(io, t, &side.metrics.detect, side.direction)).await.map_err(|source| ProxyError::Connect { addr: self.client, source })
    }

    fn http(self, io: Io, version: HttpVersion) -> Setup {
        let target_addr = self.orig_dst.unwrap_or(self.side.config.outbound.listen_addr);
        Ok(Some(serve_http(io, version, self.client, target_addr, Dest::Logical(self.logical), &self.side, self.drain)))
    }

    /// Copies the connection's bytes to the opened upstream, `greeting` (the server's first
    /// bytes) first.
    fn copy(self, io: Io, opened: opaque::Opened, greeting: Bytes) -> Setup {
        opaque::copy(io, opened, greeting, &self.logical, &self.side, self.drain)
    }
}

/// Local mode without a port forward or an original destination: each HTTP request names its
/// destination (`Host`, `:authority`) and is routed by that name's policy. Nothing else can be
/// forwarded, so a client that stays silent (one waiting for a server to speak first) is closed
/// at once rather than after the whole detect timeout.
async fn http_by_host(tcp: TcpStream, client: SocketAddr, side: &Arc<Side>, drain: drain::Watch) -> Setup {
    let t = Timeouts { silent: Some(side.config.detect.silent_timeout), total: side.config.detect.timeout };
    match Box::pin(detect::detect(PrefixedIo::new(Bytes::new(), tcp), t, &side.metrics.detect, side.direction)).await {
        Ok(Outcome::Detected(d)) if is_http(&d.protocol) => {
            let version = if d.protocol == Detected::Http2 { HttpVersion::Http2 } else { HttpVersion::Http1 };
            Ok(Some(serve_http(d.io, version, client, side.config.outbound.listen_addr, Dest::PerRequest, side, drain)))
        }
        Ok(Outcome::Closed) => Ok(None),
        Ok(_) => Err(ProxyError::NoDestination),
        Err(source) => Err(ProxyError::Connect { addr: client, source }),
    }
}

/// A multicluster gateway's connection (`gateway.rs`): the peer's transport header named
/// `hop.target`, and the connection is served as the application's call to it would be: HTTP
/// by its routes (each request checked for a loop and readdressed by the hop), opaque bytes by
/// its opaque route.
pub async fn gateway<I>(
    io: CountingIo<PrefixedIo<I>>,
    client: SocketAddr,
    protocol: Option<SessionProtocol>,
    hop: crate::gateway::Hop,
    side: &Arc<Side>,
    drain: drain::Watch,
) -> Setup
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let logical = Arc::new(Box::pin(Logical::resolve_gateway(side, hop.target.clone())).await?);
    let version = match protocol {
        Some(SessionProtocol::Http1) => HttpVersion::Http1,
        Some(SessionProtocol::Http2) => HttpVersion::Http2,
        None => {
            if hop.from_self() {
                return Err(ProxyError::GatewayLoop("the client's identity is this gateway's own"));
            }
            let policy = logical.policy(side).await?;
            let routes = match &policy.protocol {
                Protocol::Opaque(o) | Protocol::Tls(o) | Protocol::Detect { opaque: o, .. } => o,
                Protocol::Http1(_) | Protocol::Http2(_) | Protocol::Grpc(_) => {
                    return Err(ProxyError::NoTcpRoute { target: logical.target.to_string(), sni: None });
                }
            };
            let opened = Box::pin(opaque::open(&logical, &policy.meta, routes, None, Kind::Tcp, side)).await?;
            return opaque::copy(PrefixedIo::new(Bytes::new(), io), opened, Bytes::new(), &logical, side, drain);
        }
    };
    Ok(Some(serve_outbound(io, version, client, Dest::Logical(logical), Some(Arc::new(hop)), side, drain)))
}

/// A gateway's HTTP connection whose transport header named a target outside its suffixes:
/// served, with every request answered 404 (gRPC `NotFound`) and the reason.
pub fn gateway_refused<I>(
    io: CountingIo<PrefixedIo<I>>,
    client: SocketAddr,
    protocol: Option<SessionProtocol>,
    (target, reason): (String, &'static str),
    side: &Arc<Side>,
    drain: drain::Watch,
) -> Setup
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = match protocol {
        Some(SessionProtocol::Http2) => HttpVersion::Http2,
        Some(SessionProtocol::Http1) => HttpVersion::Http1,
        None => return Err(ProxyError::GatewayDomain { target, reason }),
    };
    Ok(Some(serve_outbound(io, version, client, Dest::GatewayDomain { target, reason }, None, side, drain)))
}

fn serve_http(io: Io, version: HttpVersion, client: SocketAddr, target_addr: SocketAddr, dest: Dest, side: &Arc<Side>, drain: drain::Watch) -> Serving {
    let tls = plaintext_tls(side.direction);
    let labels = TcpLabels {
        target: HttpLabels { direction: side.direction, authority: None, target_addr, tls: tls.clone(), dst: Default::default(), policy: None },
        peer: Peer::Src,
    };
    let io = CountingIo::metered(io, &side.metrics.tcp, labels);
    serve_outbound(io, version, client, dest, None, side, drain)
}

/// Serves one accepted connection's HTTP on the outbound side: each request planned for `dest`
/// (through a multicluster gateway's `hop` when there is one).
fn serve_outbound<I>(
    io: I,
    version: HttpVersion,
    client: SocketAddr,
    dest: Dest,
    gateway: Option<Arc<crate::gateway::Hop>>,
    side: &Arc<Side>,
    drain: drain::Watch,
) -> Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Ctx {
        side: side.clone(),
        client,
        dest,
        client_id: None,
        tls: plaintext_tls(side.direction),
        from_peer: false,
        activity: Default::default(),
        golden: Default::default(),
        gateway,
    };
    http::serving(io, version, ctx, drain)
}

fn is_http(p: &Detected) -> bool {
    matches!(p, Detected::Http1 | Detected::Http2)
}
