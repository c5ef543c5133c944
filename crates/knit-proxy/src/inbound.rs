//! The inbound side: connections from outside the workload to its application.
//!
//! `accept` → original destination (iptables) or the local-mode target → opaque-port check →
//! detection → one of: a peer proxy's transport header (the target port comes from it), HTTP/1 or
//! HTTP/2 (proxied per request), TLS not meant for us (passed through), opaque TCP.

use crate::{
    detect::{self, Outcome},
    drain,
    error::ProxyError,
    http::{self, Ctx, HttpVersion, Side},
    io::{CountingIo, PrefixedIo},
    metrics::{HttpLabels, NoTlsReason, Peer, TcpLabels, Tls},
    orig_dst, tcp,
};
use bytes::BytesMut;
use knit_core::{
    destination::Endpoint,
    detect::Protocol,
    transport_header::{self, Decoded, HeaderError, SessionProtocol, TransportHeader},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
use tokio::{io::AsyncReadExt, net::TcpStream};
use tracing::Instrument;

/// Connections accepted and the first step of each, as one span per connection.
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

async fn accept(tcp: TcpStream, client: SocketAddr, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError> {
    let local = tcp.local_addr().map_err(|source| ProxyError::Connect { addr: client, source })?;
    let cfg = &side.config;
    let target = orig_dst::redirected_dst(&tcp).or(cfg.inbound.target_addr);
    if let Some(t) = target.filter(|t| cfg.detect.opaque_ports.contains(&t.port())) {
        let io = PrefixedIo::new(Default::default(), tcp);
        return opaque(io, client, t, Tls::NoIdentity(NoTlsReason::PortSkipped), side).await;
    }
    let detected = match detect::detect(tcp, &cfg.detect, &side.metrics.detect, side.direction).await {
        Ok(Outcome::Detected(d)) => d,
        Ok(Outcome::Closed) => return Ok(()),
        Err(source) => return Err(ProxyError::Connect { addr: client, source }),
    };
    let tls = Tls::NoIdentity(NoTlsReason::NoTlsFromRemote);
    match detected.protocol {
        Protocol::TransportHeader => {
            let (header, io) = read_header(detected.io).await?;
            // The header names a port on this workload: the address the peer dialed.
            let target = SocketAddr::new(local.ip(), header.port);
            match header.protocol {
                Some(SessionProtocol::Http1) => serve_http(io, HttpVersion::Http1, client, target, tls, side, drain).await,
                Some(SessionProtocol::Http2) => serve_http(io, HttpVersion::Http2, client, target, tls, side, drain).await,
                None => opaque(io, client, target, tls, side).await,
            }
        }
        Protocol::Http1 | Protocol::Http2 => {
            let version = if detected.protocol == Protocol::Http2 { HttpVersion::Http2 } else { HttpVersion::Http1 };
            let target = target.ok_or(ProxyError::NoTarget)?;
            serve_http(detected.io, version, client, target, tls, side, drain).await
        }
        Protocol::Tls { sni } => opaque(detected.io, client, target.ok_or(ProxyError::NoTarget)?, Tls::Opaque { sni }, side).await,
        Protocol::Opaque => opaque(detected.io, client, target.ok_or(ProxyError::NoTarget)?, tls, side).await,
    }
}

async fn serve_http(
    io: PrefixedIo<TcpStream>,
    version: HttpVersion,
    client: SocketAddr,
    target: SocketAddr,
    tls: Tls,
    side: &Arc<Side>,
    drain: drain::Watch,
) -> Result<(), ProxyError> {
    if side.own_addrs.contains(&target) {
        return Err(ProxyError::Loop(target));
    }
    let io = CountingIo::metered(io, &side.metrics.tcp, src_labels(side, target, tls));
    let ctx = Arc::new(Ctx { side: side.clone(), client, dest: crate::resolve::Dest::Endpoint(Endpoint::plain(target)) });
    http::serve(io, version, ctx, drain).await;
    Ok(())
}

/// Forwards the connection byte for byte to the application.
async fn opaque(io: PrefixedIo<TcpStream>, client: SocketAddr, target: SocketAddr, tls: Tls, side: &Arc<Side>) -> Result<(), ProxyError> {
    if side.own_addrs.contains(&target) {
        return Err(ProxyError::Loop(target));
    }
    let mut client_io = CountingIo::metered(io, &side.metrics.tcp, src_labels(side, target, tls.clone()));
    let labels = TcpLabels { target: HttpLabels { direction: side.direction, authority: None, target_addr: target, tls }, peer: Peer::Dst };
    let mut server = tcp::connect_endpoint(Endpoint::plain(target), None, side.config.inbound.connect_timeout, &side.metrics.tcp, labels).await?;
    if let Err(e) = tcp::forward(&mut client_io, &mut server).await {
        client_io.set_errno(e.raw_os_error());
        tracing::debug!(%client, %target, error = %e, "opaque connection ended with an error");
    }
    Ok(())
}

fn src_labels(side: &Side, target: SocketAddr, tls: Tls) -> TcpLabels {
    TcpLabels { target: HttpLabels { direction: side.direction, authority: None, target_addr: target, tls }, peer: Peer::Src }
}

/// Reads a complete transport header; the bytes after it stay in front of the stream.
async fn read_header(io: PrefixedIo<TcpStream>) -> Result<(TransportHeader, PrefixedIo<TcpStream>), ProxyError> {
    let (prefix, mut tcp) = io.into_parts();
    let mut buf = BytesMut::from(&prefix[..]);
    let peer = tcp.peer_addr().map_err(|source| ProxyError::Connect { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
    loop {
        match transport_header::decode(&buf)? {
            Decoded::Complete(header, used) => {
                let rest = buf.split_off(used).freeze();
                return Ok((header, PrefixedIo::new(rest, tcp)));
            }
            Decoded::Incomplete => {
                // A peer proxy writes the whole header at once; waiting long means it is not one.
                let read = tokio::time::timeout(HEADER_TIMEOUT, tcp.read_buf(&mut buf)).await;
                match read {
                    Ok(Ok(0)) => return Err(HeaderError::Malformed("connection ended inside the header").into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(source)) => return Err(ProxyError::Connect { addr: peer, source }),
                    Err(_) => return Err(HeaderError::Malformed("timed out inside the header").into()),
                }
            }
        }
    }
}
