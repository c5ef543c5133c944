//! Parking idle HTTP/1 connections. hyper keeps an HTTP/1 connection's buffers (8 KiB to read,
//! 8 KiB for response heads) and its state for the connection's whole life, so each idle
//! keep-alive client cost the proxy about 36 kB. An HTTP/1 connection with nothing in flight for
//! [`HttpConfig::park_after`] is taken back from hyper without a byte on the wire: hyper is asked
//! to stop while it is idle (it writes nothing then), its shutdown of the socket is not passed
//! on, and whatever it had read but not parsed is kept. What remains is the socket and a small
//! task waiting for the client's next bytes; when they come, a new hyper connection serves them.
//!
//! hyper only stops at once when it is idle. In the rare race where a request starts just as the
//! connection parks, hyper finishes that exchange with `Connection: close`, as HTTP/1 allows a
//! server to do; the client opens a new connection for its next request.
//!
//! [`HttpConfig::park_after`]: crate::config::HttpConfig

use crate::io::PrefixedIo;
use bytes::Bytes;
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How many bytes a parked connection reads to learn that the client is back (handed to hyper
/// first when it resumes; hyper reads the rest itself).
const WAKE_READ: usize = 64;

pin_project_lite::pin_project! {
    /// The I/O hyper serves while a connection is not parked: bytes kept from before come first
    /// (a [`PrefixedIo`]), and a shutdown is not passed on while parking.
    pub struct ParkIo<I> {
        #[pin]
        inner: PrefixedIo<I>,
        parking: Arc<AtomicBool>,
    }
}

impl<I: AsyncRead + Unpin> ParkIo<I> {
    pub fn new(inner: I) -> Self {
        Self { inner: PrefixedIo::new(Bytes::new(), inner), parking: Arc::default() }
    }

    /// The flag that, once set, keeps hyper's shutdown from reaching the socket.
    pub fn parking(&self) -> Arc<AtomicBool> {
        self.parking.clone()
    }

    /// Taken back from hyper, with the bytes it had read and not parsed: parks until the client
    /// sends more. `None` when the client closed the connection (or it failed) meanwhile.
    pub async fn park(self, unparsed: Bytes) -> Option<Self> {
        self.parking.store(false, Ordering::Relaxed);
        // What hyper read and did not parse comes before what it never read of the last prefix.
        let (left, mut inner) = self.inner.into_parts();
        let unparsed = match (unparsed.is_empty(), left.is_empty()) {
            (_, true) => unparsed,
            (true, false) => left,
            (false, false) => [unparsed, left].concat().into(),
        };
        let prefix = if unparsed.is_empty() {
            // Nothing of a request is here yet: wait for it, holding no buffer of hyper's. Even
            // empty, `unparsed` is a slice of hyper's read buffer and would keep all of it.
            drop(unparsed);
            crate::memory::released();
            let mut buf = [0u8; WAKE_READ];
            let n = inner.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            Bytes::copy_from_slice(&buf[..n])
        } else {
            unparsed
        };
        Some(Self { inner: PrefixedIo::new(prefix, inner), parking: self.parking })
    }
}

impl<I: AsyncRead> AsyncRead for ParkIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for ParkIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.parking.load(Ordering::Relaxed) {
            // Parking: flushed, and the socket stays open for the client's next request.
            return this.inner.poll_flush(cx);
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use tokio::io::AsyncWriteExt;

    /// hyper's read buffer, as `into_parts` hands it back: every byte parsed, the allocation kept.
    struct ReadBuffer(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for ReadBuffer {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for ReadBuffer {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_parked_connection_lets_go_of_hyper_s_read_buffer() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut unparsed = Bytes::from_owner(ReadBuffer(vec![b'x'; 8192], dropped.clone()));
        unparsed.advance(8192);
        let (mut client, server) = tokio::io::duplex(1024);
        let parked = tokio::spawn(ParkIo::new(server).park(unparsed));
        for _ in 0..100 {
            if dropped.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(dropped.load(Ordering::Relaxed), "the parked connection still holds the read buffer");
        assert!(!parked.is_finished(), "parked until the client sends");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let resumed = parked.await.unwrap().expect("resumed");
        assert_eq!(resumed.inner.prefix(), b"GET / HTTP/1.1\r\n");
    }
}
