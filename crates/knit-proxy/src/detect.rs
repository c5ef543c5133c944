//! Reading the first bytes of a connection to decide its protocol, and what to do when the
//! client says nothing.
//!
//! Detection runs only where the policy asks for it (`Detect`); a port the policy declares HTTP,
//! gRPC, opaque or TLS is never detected, so a slow client cannot turn an HTTP port into raw TCP.
//! A client that has sent *some* bytes gets the policy's detect timeout to finish its preamble.
//!
//! A client that sends *nothing* for `silent` (150 ms by default) may be waiting for a
//! server-speaks-first protocol (MySQL, SMTP, a Redis replica): Linkerd waits out its whole 10 s
//! detect timeout there. Knit instead returns [`Outcome::Silent`]; the caller then connects
//! upstream and lets [`first_speaker`] decide. If the server speaks first, its greeting reaches the
//! client at once and the connection is opaque; if the client speaks first, however late, its
//! bytes are detected as if it had spoken at once, so a slow HTTP client still gets routes,
//! authorization, rate limits and `l5d-client-id` rewriting. The price of the choice: an upstream
//! connection opened for a slow HTTP client and then dropped unused.

use crate::{
    io::PrefixedIo,
    metrics::{labels_detect, DetectMetrics, Direction},
};
use bytes::{Bytes, BytesMut};
use knit_core::detect::{self, Detection, Protocol};
use std::{io, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
    time::Instant,
};

/// The most bytes read before deciding: enough for any request line we care about and for a
/// ClientHello with post-quantum key shares.
const MAX_PEEK: usize = 8 * 1024;

pub struct Detected<I = TcpStream> {
    pub protocol: Protocol,
    pub io: PrefixedIo<I>,
}

pub enum Outcome<I = TcpStream> {
    Detected(Detected<I>),
    /// Nothing arrived within the silent timeout: see [`first_speaker`].
    Silent(PrefixedIo<I>),
    /// The client closed the connection before sending a byte.
    Closed,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a client may stay silent before it counts as waiting for the server; `None`:
    /// wait for its bytes up to `total` (a port whose protocol is known).
    pub silent: Option<Duration>,
    /// How long the whole preamble may take.
    pub total: Duration,
}

/// Detects the protocol of `io`, whose prefix (bytes read before, possibly none) counts as
/// already received.
pub async fn detect<I: AsyncRead + Unpin>(io: PrefixedIo<I>, t: Timeouts, metrics: &DetectMetrics, direction: Direction) -> io::Result<Outcome<I>> {
    let started = Instant::now();
    let (prefix, mut io) = io.into_parts();
    let mut buf = BytesMut::with_capacity(1024.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    let protocol = loop {
        if !buf.is_empty() {
            match detect::detect(&buf) {
                Detection::Done(p) => break p,
                Detection::NeedMore if buf.len() >= MAX_PEEK => break detect::give_up(&buf, true),
                Detection::NeedMore => {}
            }
        }
        let deadline = match t.silent {
            Some(silent) if buf.is_empty() => started + silent,
            _ => started + t.total,
        };
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Outcome::Closed),
            Ok(Ok(0)) => break detect::give_up(&buf, false),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) if buf.is_empty() && t.silent.is_some() => {
                metrics.timeouts.get_or_create(&labels_detect(direction, "silent_client")).inc();
                return Ok(Outcome::Silent(PrefixedIo::new(Bytes::new(), io)));
            }
            Err(_elapsed) => {
                metrics.timeouts.get_or_create(&labels_detect(direction, if buf.is_empty() { "silent_client" } else { "incomplete" })).inc();
                break detect::give_up(&buf, false);
            }
        }
    };
    metrics.protocols.get_or_create(&crate::metrics::labels_protocol(direction, &protocol)).inc();
    Ok(Outcome::Detected(Detected { protocol, io: PrefixedIo::new(buf.freeze(), io) }))
}

/// Who spoke first on a connection whose client was silent, once the upstream connection is
/// open.
pub enum Speaker {
    /// The server's first bytes, to be written to the client before anything else.
    Server(Bytes),
    /// The client's first bytes: detect them.
    Client(Bytes),
    /// Either side closed before anyone spoke.
    Closed,
}

/// Waits, with no deadline of its own, for the first bytes from either side. Both reads are
/// cancel-safe, so the side that loses the race loses no byte.
pub async fn first_speaker<C, S>(client: &mut C, server: &mut S) -> io::Result<Speaker>
where
    C: AsyncRead + Unpin,
    S: AsyncRead + Unpin,
{
    let (mut from_client, mut from_server) = (BytesMut::with_capacity(1024), BytesMut::with_capacity(1024));
    tokio::select! {
        read = client.read_buf(&mut from_client) => Ok(if read? == 0 { Speaker::Closed } else { Speaker::Client(from_client.freeze()) }),
        read = server.read_buf(&mut from_server) => Ok(if read? == 0 { Speaker::Closed } else { Speaker::Server(from_server.freeze()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn metrics() -> DetectMetrics {
        crate::metrics::Metrics::new().detect
    }

    const T: Timeouts = Timeouts { silent: Some(Duration::from_millis(150)), total: Duration::from_secs(10) };

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_reported_not_guessed() {
        let (a, _b) = tokio::io::duplex(64);
        let out = detect(PrefixedIo::new(Bytes::new(), a), T, &metrics(), Direction::Inbound).await.unwrap();
        assert!(matches!(out, Outcome::Silent(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_protocol_port_waits_for_the_client() {
        let (a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            std::future::pending::<()>().await;
        });
        let t = Timeouts { silent: None, total: Duration::from_secs(10) };
        let Outcome::Detected(d) = detect(PrefixedIo::new(Bytes::new(), a), t, &metrics(), Direction::Inbound).await.unwrap() else { panic!("not detected") };
        assert_eq!(d.protocol, Protocol::Http1);
    }

    #[tokio::test]
    async fn bytes_read_before_count_and_are_replayed() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let io = PrefixedIo::new(Bytes::from_static(b"GET / HTTP"), a);
        let Outcome::Detected(d) = detect(io, T, &metrics(), Direction::Inbound).await.unwrap() else { panic!("not detected") };
        assert_eq!(d.protocol, Protocol::Http1);
        assert!(d.io.prefix().starts_with(b"GET / HTTP"));
    }

    #[tokio::test]
    async fn the_first_speaker_wins_and_keeps_its_bytes() {
        let (mut client, mut client_peer) = tokio::io::duplex(64);
        let (mut server, mut server_peer) = tokio::io::duplex(64);
        server_peer.write_all(b"220 smtp ready\r\n").await.unwrap();
        let Speaker::Server(greeting) = first_speaker(&mut client, &mut server).await.unwrap() else { panic!("server spoke first") };
        assert_eq!(&greeting[..], b"220 smtp ready\r\n");
        client_peer.write_all(b"GET /").await.unwrap();
        let Speaker::Client(first) = first_speaker(&mut client, &mut server).await.unwrap() else { panic!("client spoke") };
        assert_eq!(&first[..], b"GET /");
    }
}
