//! TCP: connecting with a timeout, connection metrics, and opaque forwarding with half-close.

use crate::{
    error::ProxyError,
    identity::Identity,
    io::CountingIo,
    metrics::{labels_close, plaintext_tls, Direction, HttpLabels, Metrics, Peer, TcpLabels, TcpMetrics, Tls},
    tls::LogOnce,
};
use knit_core::{
    destination::Endpoint,
    transport_header::{SessionProtocol, TransportHeader},
};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

/// Counts a connection in `tcp_open_total` and `tcp_open_connections` while it lives, and in
/// `tcp_close_total` when it is dropped.
pub struct TcpGuard {
    metrics: TcpMetrics,
    labels: TcpLabels,
    pub errno: Option<i32>,
}

impl TcpGuard {
    pub fn open(metrics: &TcpMetrics, labels: TcpLabels) -> Self {
        metrics.open_total.get_or_create(&labels).inc();
        metrics.open_connections.get_or_create(&labels).inc();
        Self { metrics: metrics.clone(), labels, errno: None }
    }
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.metrics.open_connections.get_or_create(&self.labels).dec();
        self.metrics.close_total.get_or_create(&labels_close(self.labels.clone(), self.errno)).inc();
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
        Err(_) => return Err(ProxyError::ConnectTimeout { addr, timeout }),
    };
    // Proxied requests are small writes whose latency matters (no Nagle); a peer that vanished
    // is noticed by keep-alive.
    crate::accept::tune(&stream);
    Ok(stream)
}

/// Opens connections to endpoints, meters them (`peer="dst"`) and, towards a meshed endpoint
/// that names an identity, wraps them in mesh TLS before the transport header.
#[derive(Clone)]
pub struct Dialer {
    pub direction: Direction,
    pub timeout: Duration,
    pub metrics: Metrics,
    pub identity: Option<Identity>,
    pub log: Arc<LogOnce>,
}

impl Dialer {
    /// The identity a connection to `endpoint` must prove, when mesh TLS applies to it.
    pub fn peer_identity<'a>(&self, endpoint: &'a Endpoint) -> Option<&'a str> {
        self.identity.as_ref()?;
        endpoint.meshed.as_ref()?.identity.as_deref()
    }

    pub fn tls_label(&self, endpoint: &Endpoint) -> Tls {
        match self.peer_identity(endpoint) {
            Some(id) => Tls::Outbound { server_id: id.to_string() },
            None => plaintext_tls(self.direction),
        }
    }

    pub async fn dial(&self, endpoint: &Endpoint, protocol: Option<SessionProtocol>, authority: Option<String>) -> Result<ClientIo, ProxyError> {
        let addr = endpoint.connect_addr();
        let stream = connect(addr, self.timeout).await?;
        let labels = TcpLabels {
            target: HttpLabels {
                direction: self.direction,
                authority,
                target_addr: endpoint.addr,
                tls: self.tls_label(endpoint),
                dst: endpoint.labels.clone(),
                policy: None,
            },
            peer: Peer::Dst,
        };
        let io = CountingIo::metered(stream, &self.metrics.tcp, labels);
        let mut io = match (self.peer_identity(endpoint), &self.identity) {
            (Some(expected), Some(identity)) => {
                ClientIo::Tls(Box::new(crate::tls::connect(io, identity, expected, addr, &self.metrics.identity, &self.log).await?))
            }
            _ => ClientIo::Plain(io),
        };
        if let Some(meshed) = &endpoint.meshed {
            // A gateway is told the authority in its cluster; a peer proxy, the port behind it.
            let header = match &meshed.gateway_target {
                Some(t) => TransportHeader { port: t.port, name: Some(t.host.clone()), protocol },
                None => TransportHeader { port: endpoint.addr.port(), name: None, protocol },
            }
            .encode();
            io.write_all(&header).await.map_err(|e| ProxyError::Upstream { addr, source: e.into() })?;
        }
        Ok(io)
    }
}

/// A connection the proxy opened: plain, or mesh TLS over the metered TCP stream.
// The TLS stream (about 1 KiB of rustls state) is boxed; the plain one stays inline so a
// plaintext connection costs no extra allocation.
#[allow(clippy::large_enum_variant)]
pub enum ClientIo {
    Plain(CountingIo<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<CountingIo<TcpStream>>>),
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ClientIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ClientIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ClientIo::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(io) => io.is_write_vectored(),
            ClientIo::Tls(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ClientIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ClientIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Copies bytes both ways until both sides have finished. When one side half-closes, the other
/// side's write half is shut down and the reverse direction keeps flowing, so request/response
/// protocols that signal the end of a request with FIN keep working.
pub async fn forward<C, S>(client: &mut C, server: &mut S) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(client, server).await
}
