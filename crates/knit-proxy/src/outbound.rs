//! The outbound side: connections from the application to anywhere.
//!
//! `accept` → the destination: a port forward's name, the original destination (iptables; looked
//! up in the destination table), or, in local mode, each HTTP request's authority → opaque-port
//! check → detection → HTTP/1 or HTTP/2 (routed per request), or opaque TCP to the endpoint
//! (through its proxy when it is meshed).

use crate::{
    detect::{self, Outcome},
    drain,
    error::ProxyError,
    http::{self, Ctx, HttpVersion, Side},
    io::{CountingIo, PrefixedIo},
    metrics::{plaintext_tls, HttpLabels, Peer, TcpLabels},
    orig_dst,
    resolve::Dest,
};
use knit_core::{
    destination::{Authority, Endpoint},
    detect::Protocol,
};
use std::{net::SocketAddr, sync::Arc};
use tokio::net::TcpStream;
use tracing::Instrument;

pub async fn serve_connection(tcp: TcpStream, client: SocketAddr, forward: Option<Authority>, side: Arc<Side>, drain: drain::Watch) {
    let span = tracing::info_span!("outbound", %client);
    async move {
        if let Err(e) = accept(tcp, client, forward, &side, drain).await {
            side.metrics.http.errors.get_or_create(&crate::metrics::labels_error(side.direction, e.metric_label())).inc();
            tracing::info!(error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

async fn accept(tcp: TcpStream, client: SocketAddr, forward: Option<Authority>, side: &Arc<Side>, drain: drain::Watch) -> Result<(), ProxyError> {
    let dest = match (forward, orig_dst::redirected_dst(&tcp)) {
        (Some(name), _) => Dest::Named(name),
        (None, Some(dst)) => {
            let key = Authority::from_addr(dst);
            if side.resolver.has(&key) {
                Dest::Named(key)
            } else {
                Dest::Endpoint(Endpoint::plain(dst))
            }
        }
        (None, None) => Dest::FromRequest,
    };
    let target_port = match &dest {
        Dest::Endpoint(e) => Some(e.addr.port()),
        Dest::Named(a) => Some(a.port),
        Dest::FromRequest => None,
    };
    if target_port.is_some_and(|p| side.config.detect.opaque_ports.contains(&p)) {
        return opaque(PrefixedIo::new(Default::default(), tcp), client, &dest, side).await;
    }
    let detected = match detect::detect(tcp, &side.config.detect, &side.metrics.detect, side.direction).await {
        Ok(Outcome::Detected(d)) => d,
        Ok(Outcome::Closed) => return Ok(()),
        Err(source) => return Err(ProxyError::Connect { addr: client, source }),
    };
    match detected.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let version = if detected.protocol == Protocol::Http2 { HttpVersion::Http2 } else { HttpVersion::Http1 };
            let target_addr = match &dest {
                Dest::Endpoint(e) => e.addr,
                _ => side.config.outbound.listen_addr,
            };
            let labels = TcpLabels {
                target: HttpLabels {
                    direction: side.direction,
                    authority: None,
                    target_addr,
                    tls: plaintext_tls(side.direction),
                    dst: Default::default(),
                    policy: None,
                },
                peer: Peer::Src,
            };
            let io = CountingIo::metered(detected.io, &side.metrics.tcp, labels);
            let ctx = Ctx { side: side.clone(), client, dest, client_id: None, tls: plaintext_tls(side.direction) };
            http::serve(io, version, Arc::new(ctx), drain).await;
            Ok(())
        }
        Protocol::Tls { .. } | Protocol::Opaque | Protocol::TransportHeader => opaque(detected.io, client, &dest, side).await,
    }
}

/// Forwards a connection byte for byte; a meshed endpoint is reached through its proxy with a
/// transport header that carries no session protocol.
async fn opaque(io: PrefixedIo<TcpStream>, client: SocketAddr, dest: &Dest, side: &Arc<Side>) -> Result<(), ProxyError> {
    let (endpoint, authority) = match dest {
        Dest::Endpoint(e) => (e.clone(), None),
        Dest::Named(a) => (side.resolver.resolve(a).await?, Some(a.to_string())),
        // Without NAT or a port forward, only HTTP says where it is going.
        Dest::FromRequest => return Err(ProxyError::NoDestination),
    };
    if side.own_addrs.contains(&endpoint.connect_addr()) {
        return Err(ProxyError::Loop(endpoint.connect_addr()));
    }
    let target = HttpLabels {
        direction: side.direction,
        authority: authority.clone(),
        target_addr: endpoint.addr,
        tls: side.dialer.tls_label(&endpoint),
        dst: endpoint.labels.clone(),
        policy: None,
    };
    let mut client_io = CountingIo::metered(io, &side.metrics.tcp, TcpLabels { target, peer: Peer::Src });
    let mut server = side.dialer.dial(&endpoint, None, authority).await?;
    if let Err(e) = crate::tcp::forward(&mut client_io, &mut server).await {
        client_io.set_errno(e.raw_os_error());
        tracing::debug!(%client, endpoint = %endpoint, error = %e, "opaque connection ended with an error");
    }
    Ok(())
}
