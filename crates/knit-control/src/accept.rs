//! knit-control's one accept loop, used by every listener: the gRPC ports (identity,
//! destination, policy, as a stream of connections for tonic), admin, viz and the webhook.
//! - Each listener has a cap on open connections; at the cap it stops accepting, so new clients
//!   wait in the kernel's backlog. Each connection holds its permit until it closes.
//! - A failed accept (EMFILE: out of file descriptors) backs off, 10 ms doubling to 1 s, rather
//!   than spinning on a listener that stays readable.
//! - Accepted sockets get `TCP_NODELAY` and TCP keep-alive; a TLS handshake has 10 s, in a task
//!   of its own so that a client stalling in one holds up nobody, and the HTTP/2 preface 10 s more.
//! - HTTP/1 servers (admin, viz, webhook) give a client 10 s to send a request's head.

use futures_util::Stream;
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take to send an HTTP/1 request's head, or to finish a TLS handshake.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(10);

/// How many connections a listener takes: in all, and from one non-loopback address.
#[derive(Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_source: Option<usize>,
}

/// Accepts connections into `on_conn` (spawned) until the task is dropped; each holds its place
/// under `caps` until its task ends. A client over its per-source cap is closed at once.
pub async fn accept_loop<F, Fut>(listener: TcpListener, caps: Caps, what: &'static str, mut on_conn: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(caps.total));
    let per_source = caps.per_source.map(knit_core::per_source::PerSource::new);
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(10);
                let source = match &per_source {
                    Some(p) => match p.admit(peer.ip()) {
                        Some(guard) => Some(guard),
                        None => {
                            tracing::debug!(listener = what, %peer, "too many connections from one client; closed");
                            continue;
                        }
                    },
                    None => None,
                };
                tune(&tcp);
                let conn = on_conn(tcp, peer);
                tokio::spawn(async move {
                    conn.await;
                    drop((permit, source));
                });
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, retry_in = ?backoff, "accept failed");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE).with_interval(KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// An HTTP/1 server connection with the limits every knit-control HTTP server has.
pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(64 * 1024);
    b
}

/// A connection accepted for tonic: plain or TLS. Its place under its listener's cap is held
/// until it is dropped (closed), which `_closed` tells the accept loop.
pub struct Conn {
    io: Io,
    peer: TcpConnectInfo,
    preface: Option<Preface>,
    _closed: tokio::sync::oneshot::Sender<()>,
}

/// The HTTP/2 connection preface still to come, and when it must have come by: h2 has no
/// handshake timeout of its own, so a client that connects and sends nothing (or a few bytes)
/// would hold its connection for ever.
struct Preface {
    remaining: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Preface {
    /// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
    const LEN: usize = 24;

    fn due() -> Option<Self> {
        Some(Self { remaining: Self::LEN, deadline: Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)) })
    }
}

// The TLS stream (about 1 KiB of rustls state) is boxed; plain connections stay small.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(preface) = &mut this.preface {
            if preface.deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = ?this.peer.remote_addr, "a gRPC client did not send the HTTP/2 preface within {HANDSHAKE_TIMEOUT:?}; closed");
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP/2 preface timed out")));
            }
        }
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        };
        if let (Poll::Ready(Ok(())), Some(preface)) = (&read, &mut this.preface) {
            preface.remaining = preface.remaining.saturating_sub(buf.filled().len() - before);
            if preface.remaining == 0 {
                this.preface = None;
            }
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of a gRPC port, for tonic's `serve_with_incoming`: at most `caps` open, TLS
/// terminated first when `tls` is given. The listener closes once the server stops taking them.
pub fn incoming(
    listener: TcpListener,
    caps: Caps,
    tls: Option<Arc<rustls::ServerConfig>>,
    what: &'static str,
) -> impl Stream<Item = Result<Conn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Conn, std::io::Error>>(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let closed = tx.clone();
    let serve = accept_loop(listener, caps, what, move |tcp, peer| {
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        async move {
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let io = match acceptor {
                None => Io::Plain(tcp),
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "control-plane TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "control-plane TLS handshake timed out"),
                },
            };
            // This task (and so the connection's permit) lives until tonic drops the connection.
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
            if tx.send(Ok(Conn { io, peer: info, preface: Preface::due(), _closed: closed_tx })).await.is_ok() {
                let _ = closed_rx.await;
            }
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            () = serve => {}
            () = closed.closed() => {}
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}
