//! The inbound side: connections from outside the workload to its application.
//!
//! `accept` → original destination (iptables) or the local-mode target → opaque-port check →
//! detection → mesh TLS for this proxy's own name is terminated (the client's identity is taken
//! from its certificate) and the inner stream dispatched again → a peer proxy's transport header
//! (the target port comes from it), HTTP/1 or HTTP/2 (proxied per request), TLS for someone else
//! (passed through), or opaque TCP.

use crate::{
    detect::{self, Outcome},
    drain,
    error::ProxyError,
    http::{self, Ctx, HttpVersion, Side},
    io::{CountingIo, PrefixedIo},
    metrics::{HttpLabels, NoTlsReason, Peer, TcpLabels, Tls},
    orig_dst,
};
use bytes::BytesMut;
use knit_core::{
    destination::Endpoint,
    detect::Protocol,
    transport_header::{self, Decoded, HeaderError, SessionProtocol, TransportHeader},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};
use tracing::Instrument;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One span per connection.
pub async fn serve_connection(tcp: TcpStream, client: SocketAddr, side: Arc<Side>, drain: drain::Watch) {
    let span = tracing::info_span!("inbound", %client);
    async move {
        if let Err(e) = accept(tcp, client, &side, drain).await {
            tracing::info!(error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

/// What the connection carries once TLS (if any) is off: where it goes and who sent it.
struct Conn {
    client: SocketAddr,
    /// This connection's local address: transport headers name ports on it.
    local: SocketAddr,
    target: Option<SocketAddr>,
    tls: Tls,
    client_id: Option<String>,
}

async fn accept(tcp: TcpStream, client: SocketAddr, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError> {
    let local = tcp.local_addr().map_err(|source| ProxyError::Connect { addr: client, source })?;
    let cfg = &side.config;
    let target = orig_dst::redirected_dst(&tcp).or(cfg.inbound.target_addr);
    if let Some(t) = target.filter(|t| cfg.detect.opaque_ports.contains(&t.port())) {
        let io = PrefixedIo::new(Default::default(), tcp);
        let conn = Conn { client, local, target: Some(t), tls: Tls::NoIdentity(NoTlsReason::PortSkipped), client_id: None };
        return opaque(io, &conn, side).await;
    }
    let detected = match detect::detect(tcp, &cfg.detect, &side.metrics.detect, side.direction).await {
        Ok(Outcome::Detected(d)) => d,
        Ok(Outcome::Closed) => return Ok(()),
        Err(source) => return Err(ProxyError::Connect { addr: client, source }),
    };
    let mut conn = Conn { client, local, target, tls: Tls::NoIdentity(NoTlsReason::NoTlsFromRemote), client_id: None };
    match detected.protocol {
        Protocol::Tls { sni } => {
            // TLS for this proxy's name is terminated. So is TLS for another mesh identity: this
            // proxy answers with its own certificate, and the client's check of the presented
            // identity fails with both names in its error, instead of the TLS reaching the app.
            let for_mesh = |id: &crate::identity::Identity| sni.as_deref().is_some_and(|s| s == &*id.name || knit_identity::is_mesh_identity(s));
            let ours = side.dialer.identity.as_ref().filter(|id| for_mesh(id)).and_then(|id| id.current());
            let Some(creds) = ours else {
                conn.tls = Tls::Opaque { sni };
                return opaque(detected.io, &conn, side).await;
            };
            let log = side.dialer.log.clone();
            let (tls, client_id, transport) = crate::tls::accept(detected.io, creds, client, &side.metrics.identity, &log).await?;
            conn.tls = Tls::Inbound { client_id: client_id.clone() };
            conn.client_id = client_id;
            if transport {
                return direct(tls, conn, side, drain).await;
            }
            dispatch(tls, conn, side, drain).await
        }
        // As in Linkerd, a transport header (which names any local port) is only honoured from
        // an authenticated peer once this proxy has an identity.
        Protocol::TransportHeader if side.dialer.identity.is_some() => {
            side.metrics.identity.handshake_failed(side.direction, "direct_without_tls");
            Err(ProxyError::DirectWithoutTls)
        }
        Protocol::TransportHeader => direct(detected.io, conn, side, drain).await,
        Protocol::Http1 => serve_http(detected.io, HttpVersion::Http1, &conn, side, drain).await,
        Protocol::Http2 => serve_http(detected.io, HttpVersion::Http2, &conn, side, drain).await,
        Protocol::Opaque => opaque(detected.io, &conn, side).await,
    }
}

/// After TLS termination without the transport header: detect again on the plaintext.
async fn dispatch<I>(io: I, conn: Conn, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let detected = match detect::detect(io, &side.config.detect, &side.metrics.detect, side.direction).await {
        Ok(Outcome::Detected(d)) => d,
        Ok(Outcome::Closed) => return Ok(()),
        Err(source) => return Err(ProxyError::Connect { addr: conn.client, source }),
    };
    match detected.protocol {
        Protocol::Http1 => serve_http(detected.io, HttpVersion::Http1, &conn, side, drain).await,
        Protocol::Http2 => serve_http(detected.io, HttpVersion::Http2, &conn, side, drain).await,
        // A transport header must be negotiated with ALPN inside TLS; anything else is opaque.
        _ => opaque(detected.io, &conn, side).await,
    }
}

/// A peer proxy's direct connection: the transport header names the port on this workload and
/// the session protocol, so no detection is needed.
async fn direct<I>(io: I, mut conn: Conn, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header, io) = read_header(PrefixedIo::new(Default::default(), io), conn.client).await?;
    conn.target = Some(SocketAddr::new(conn.local.ip(), header.port));
    match header.protocol {
        Some(SessionProtocol::Http1) => serve_http(io, HttpVersion::Http1, &conn, side, drain).await,
        Some(SessionProtocol::Http2) => serve_http(io, HttpVersion::Http2, &conn, side, drain).await,
        None => opaque(io, &conn, side).await,
    }
}

fn target(conn: &Conn, side: &Side) -> Result<SocketAddr, ProxyError> {
    let t = conn.target.ok_or(ProxyError::NoTarget)?;
    if side.own_addrs.contains(&t) {
        return Err(ProxyError::Loop(t));
    }
    Ok(t)
}

fn src_labels(side: &Side, target: SocketAddr, tls: Tls) -> TcpLabels {
    TcpLabels {
        target: HttpLabels { direction: side.direction, authority: None, target_addr: target, tls, dst: Default::default(), policy: None },
        peer: Peer::Src,
    }
}

async fn serve_http<I>(io: PrefixedIo<I>, version: HttpVersion, conn: &Conn, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = target(conn, side)?;
    let io = CountingIo::metered(io, &side.metrics.tcp, src_labels(side, target, conn.tls.clone()));
    let ctx = Ctx {
        side: side.clone(),
        client: conn.client,
        dest: crate::resolve::Dest::Endpoint(Endpoint::plain(target)),
        client_id: conn.client_id.clone(),
        tls: conn.tls.clone(),
    };
    http::serve(io, version, Arc::new(ctx), drain).await;
    Ok(())
}

/// Forwards the connection byte for byte to the application.
async fn opaque<I>(io: PrefixedIo<I>, conn: &Conn, side: &Arc<Side>) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let target = target(conn, side)?;
    authorize_tcp(conn, target.port(), side)?;
    let mut client_io = CountingIo::metered(io, &side.metrics.tcp, src_labels(side, target, conn.tls.clone()));
    let mut server = side.dialer.dial(&Endpoint::plain(target), None, None).await?;
    if let Err(e) = crate::tcp::forward(&mut client_io, &mut server).await {
        client_io.set_errno(e.raw_os_error());
        tracing::debug!(client = %conn.client, %target, error = %e, "opaque connection ended with an error");
    }
    Ok(())
}

/// An opaque connection is authorized once, as a whole; a refused one is closed.
fn authorize_tcp(conn: &Conn, port: u16, side: &Side) -> Result<(), ProxyError> {
    use crate::metrics::route::{AuthzLabels, PolicyLabels};
    let policy = side.discovery.inbound(port);
    let client = crate::policy::inbound::Client { addr: conn.client.ip(), identity: conn.client_id.clone(), tls: matches!(conn.tls, Tls::Inbound { .. }) };
    let server = crate::http::authorize::server_labels(&policy, port);
    let client_id = client.identity.clone().unwrap_or_default();
    match policy.authorize_tcp(&client) {
        Ok(permit) => {
            let authz = &permit.authz;
            let labels = AuthzLabels { client_id, policy: PolicyLabels::new(server, ["", "", ""], [&authz.group, &authz.kind, &authz.name]) };
            side.metrics.route.tcp_authz_allow.get_or_create(&labels).inc();
            Ok(())
        }
        Err(denied) => {
            let labels = AuthzLabels { client_id, policy: PolicyLabels::new(server, ["", "", ""], ["", "", ""]) };
            side.metrics.route.tcp_authz_deny.get_or_create(&labels).inc();
            let message = denied.to_string();
            tracing::info!(client = %conn.client, identity = conn.client_id.as_deref().unwrap_or("-"), %message, "connection denied by inbound policy");
            Err(ProxyError::Unauthorized(message))
        }
    }
}

/// Reads a complete transport header; the bytes after it stay in front of the stream.
async fn read_header<I>(io: PrefixedIo<I>, peer: SocketAddr) -> Result<(TransportHeader, PrefixedIo<I>), ProxyError>
where
    I: AsyncRead + Unpin,
{
    let (prefix, mut inner) = io.into_parts();
    let mut buf = BytesMut::from(&prefix[..]);
    loop {
        match transport_header::decode(&buf)? {
            Decoded::Complete(header, used) => {
                let rest = buf.split_off(used).freeze();
                return Ok((header, PrefixedIo::new(rest, inner)));
            }
            Decoded::Incomplete => {
                // A peer proxy writes the whole header at once; waiting long means it is not one.
                match tokio::time::timeout(HEADER_TIMEOUT, inner.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => return Err(HeaderError::Malformed("connection ended inside the header").into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(source)) => return Err(ProxyError::Connect { addr: peer, source }),
                    Err(_) => return Err(HeaderError::Malformed("timed out inside the header").into()),
                }
            }
        }
    }
}
