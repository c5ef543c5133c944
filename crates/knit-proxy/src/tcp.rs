//! TCP: connecting with a timeout, connection metrics, and opaque forwarding with half-close.

use crate::{
    error::ProxyError,
    io::CountingIo,
    metrics::{labels_close, TcpLabels, TcpMetrics},
};
use knit_core::{destination::Endpoint, transport_header::{SessionProtocol, TransportHeader}};
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
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
    // Proxied requests are small writes whose latency matters; Nagle only adds delay here.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens a connection to `endpoint`: directly, or to the peer proxy's inbound port followed by a
/// transport header naming the application port and `protocol`. Mesh TLS will wrap the stream
/// here, before the header, without changing callers.
pub async fn connect_endpoint(
    endpoint: Endpoint,
    protocol: Option<SessionProtocol>,
    timeout: Duration,
    metrics: &TcpMetrics,
    labels: TcpLabels,
) -> Result<CountingIo<TcpStream>, ProxyError> {
    let addr = endpoint.connect_addr();
    let stream = connect(addr, timeout).await?;
    let mut io = CountingIo::metered(stream, metrics, labels);
    if endpoint.meshed.is_some() {
        let header = TransportHeader { port: endpoint.addr.port(), name: None, protocol }.encode();
        io.write_all(&header).await.map_err(|e| ProxyError::Upstream { addr, source: e.into() })?;
    }
    Ok(io)
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
