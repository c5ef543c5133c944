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

/// Copies bytes both ways until both sides have finished; returns the bytes copied from the
/// client and from the server. When one side half-closes, the other side's write half is shut
/// down and the reverse direction keeps flowing, so request/response protocols that signal the
/// end of a request with FIN keep working.
///
/// A connection holds no buffer while it is quiet: each read goes into the thread's scratch
/// buffer and is written on at once, and only what the other side cannot take yet is kept, until
/// it can. (`tokio::io::copy_bidirectional` keeps two 8 KiB buffers for a connection's whole
/// life: 16 KiB for each idle Redis or database client.)
pub async fn forward<C, S>(client: &mut C, server: &mut S) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut up, mut down) = (Half::default(), Half::default());
    std::future::poll_fn(|cx| {
        let sent = up.poll_copy(cx, Pin::new(&mut *client), Pin::new(&mut *server))?;
        let received = down.poll_copy(cx, Pin::new(&mut *server), Pin::new(&mut *client))?;
        match (sent, received) {
            (Poll::Ready(a), Poll::Ready(b)) => Poll::Ready(Ok((a, b))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// How much one read moves: a TLS record's worth.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One direction of [`forward`].
#[derive(Default)]
struct Half {
    /// Read and not yet taken by the writer.
    unwritten: Option<(Box<[u8]>, usize)>,
    read_done: bool,
    needs_flush: bool,
    done: bool,
    copied: u64,
}

impl Half {
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, mut reader: Pin<&mut R>, mut writer: Pin<&mut W>) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if let Some((buf, at)) = &mut self.unwritten {
                while *at < buf.len() {
                    let n = std::task::ready!(writer.as_mut().poll_write(cx, &buf[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *at += n;
                    self.copied += n as u64;
                    self.needs_flush = true;
                }
                self.unwritten = None;
            }
            if self.read_done {
                // Shutting down flushes what the writer holds.
                std::task::ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
            let read = SCRATCH_BUF.with(|scratch| {
                // Borrowed only within this call: no await happens while it is held.
                let mut scratch = scratch.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..]);
                std::task::ready!(reader.as_mut().poll_read(cx, &mut rb))?;
                let filled = rb.filled();
                if filled.is_empty() {
                    self.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                let mut at = 0;
                while at < filled.len() {
                    match writer.as_mut().poll_write(cx, &filled[at..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => at += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.unwritten = Some((filled[at..].into(), 0));
                            break;
                        }
                    }
                }
                self.copied += at as u64;
                self.needs_flush |= at > 0;
                Poll::Ready(Ok(()))
            });
            match read {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // Nothing more to read for now: what was written must reach the peer.
                    if self.needs_flush {
                        std::task::ready!(writer.as_mut().poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    /// Both directions at once through pipes far smaller than what crosses them: every byte
    /// arrives in order, the counts are right, and each side's FIN reaches the other.
    #[tokio::test]
    async fn forward_copies_both_ways_under_back_pressure_and_passes_half_closes_on() {
        let (app, mut client) = duplex(1000);
        let (mut server, mut upstream) = duplex(700);
        let forwarding = tokio::spawn(async move { forward(&mut client, &mut server).await });
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let response: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (req, rsp) = (request.clone(), response.clone());
        let app_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(app);
            let writing = async {
                w.write_all(&req).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            tokio::join!(writing, async { r.read_to_end(&mut got).await.unwrap() });
            got
        });
        let upstream_side = tokio::spawn(async move {
            // Reads the whole request (to its FIN), then answers and closes.
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            upstream.write_all(&rsp).await.unwrap();
            upstream.shutdown().await.unwrap();
            got
        });
        assert_eq!(upstream_side.await.unwrap(), request);
        assert_eq!(app_side.await.unwrap(), response);
        assert_eq!(forwarding.await.unwrap().unwrap(), (300_000, 200_000));
    }

    /// A reader that says nothing and a writer that never takes anything: the copy holds the
    /// bytes it could not write, and none while nothing is waiting.
    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffer() {
        let mut half = Half::default();
        let (mut a, mut b) = duplex(64);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sink = tokio::io::sink();
        assert!(half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut sink)).is_pending());
        assert!(half.unwritten.is_none());
        b.write_all(b"hello").await.unwrap();
        // A writer that is full: what was read waits in a buffer of its own.
        let (mut full, _reader) = duplex(1);
        full.write_all(b"x").await.unwrap();
        assert!(half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut full)).is_pending());
        assert_eq!(half.unwritten.as_ref().map(|(buf, at)| &buf[*at..]), Some(&b"hello"[..]));
    }
}
