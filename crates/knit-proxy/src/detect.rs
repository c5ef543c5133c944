//! Reading the first bytes of a connection to decide its protocol, under two clocks.
//!
//! Server-speaks-first protocols (MySQL, SMTP, PostgreSQL's SSL probe aside) send nothing from the
//! client until the server greets it. Linkerd waits its full 10 s detect timeout before it gives
//! up on such connections; Knit waits only `silent_timeout` (150 ms by default) for the *first*
//! byte. A client that wants to speak HTTP writes its request right after `connect()`, in
//! microseconds on a healthy host, so 150 ms leaves a wide margin for a loaded host while keeping
//! the greeting delay below what a person notices. A misjudged slow HTTP client is not broken: it
//! is forwarded as opaque TCP and only loses per-request metrics. A client that has sent *some*
//! bytes gets the full `timeout` to finish its preamble. Configured opaque ports skip all of this.

use crate::{
    config::DetectConfig,
    io::PrefixedIo,
    metrics::{labels_detect, DetectMetrics, Direction},
};
use bytes::BytesMut;
use knit_core::detect::{self, Detection, Protocol};
use std::io;
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
    /// The client closed the connection before sending a byte.
    Closed,
}

pub async fn detect<I: AsyncRead + Unpin>(mut io: I, cfg: &DetectConfig, metrics: &DetectMetrics, direction: Direction) -> io::Result<Outcome<I>> {
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(1024);
    let protocol = loop {
        let deadline = if buf.is_empty() { started + cfg.silent_timeout } else { started + cfg.timeout };
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Outcome::Closed),
            Ok(Ok(0)) => break detect::give_up(&buf, false),
            Ok(Ok(_)) => match detect::detect(&buf) {
                Detection::Done(p) => break p,
                Detection::NeedMore if buf.len() >= MAX_PEEK => break detect::give_up(&buf, true),
                Detection::NeedMore => continue,
            },
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => {
                let reason = if buf.is_empty() { "silent_client" } else { "incomplete" };
                metrics.timeouts.get_or_create(&labels_detect(direction, reason)).inc();
                break detect::give_up(&buf, false);
            }
        }
    };
    metrics.protocols.get_or_create(&crate::metrics::labels_protocol(direction, &protocol)).inc();
    Ok(Outcome::Detected(Detected { protocol, io: PrefixedIo::new(buf.freeze(), io) }))
}
