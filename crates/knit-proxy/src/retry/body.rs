//! Holding a request body so a retry can send it again. A body that ends within the limit is kept
//! whole ([`Buffered::Complete`]) and replayed as often as needed; a larger one is sent once, as
//! the bytes already read followed by the rest of the stream ([`Buffered::Partial`]).
//!
//! The whole (small) body is read before the first attempt, so this suits requests that end
//! without waiting for a response; a caller must not buffer a stream whose client waits for the
//! response before it finishes sending (bidirectional gRPC streams).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

pub enum Buffered<B> {
    /// The whole body (possibly empty) and its trailers: replayable.
    Complete { data: Bytes, trailers: Option<HeaderMap> },
    /// The body outgrew the limit after `prefix`; `rest` has not been read.
    Partial { prefix: Bytes, rest: B },
}

impl<B> std::fmt::Debug for Buffered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete { data, trailers } => f.debug_struct("Complete").field("len", &data.len()).field("trailers", trailers).finish(),
            Self::Partial { prefix, .. } => f.debug_struct("Partial").field("prefix_len", &prefix.len()).finish_non_exhaustive(),
        }
    }
}

/// Reads `body` until it ends or has yielded more than `limit` bytes. An empty body (one that
/// says it is at its end) is not polled at all, and one whose size hint already exceeds the limit
/// is returned unread.
pub async fn buffer_body<B>(mut body: B, limit: usize) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(Buffered::Complete { data: Bytes::new(), trailers: None });
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::Partial { prefix: Bytes::new(), rest: body });
    }
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    return Ok(Buffered::Partial { prefix: data.freeze(), rest: body });
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok(Buffered::Complete { data: data.freeze(), trailers })
}

impl<B> Buffered<B> {
    /// A fresh copy of a complete body; `None` for a partial one, which cannot be sent again.
    pub fn replay(&self) -> Option<ReplayBody> {
        match self {
            Self::Complete { data, trailers } => Some(ReplayBody { data: Some(data.clone()).filter(|d| !d.is_empty()), trailers: trailers.clone() }),
            Self::Partial { .. } => None,
        }
    }

    pub fn is_complete(&self) -> bool {
        matches!(self, Self::Complete { .. })
    }

    /// The body to send once, whichever kind this is.
    pub fn stream(self) -> Streamed<B> {
        match self {
            Self::Complete { .. } => Streamed::Replay(self.replay().unwrap_or_default()),
            Self::Partial { prefix, rest } => Streamed::Prefixed { prefix: Some(prefix).filter(|p| !p.is_empty()), rest },
        }
    }
}

/// A buffered body's data, then its trailers.
#[derive(Clone, Debug, Default)]
pub struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A body sent once: a complete one replayed, or a partial one's prefix followed by the rest.
#[derive(Debug)]
pub enum Streamed<B> {
    Replay(ReplayBody),
    Prefixed { prefix: Option<Bytes>, rest: B },
}

impl<B> Body for Streamed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            Self::Replay(r) => Pin::new(r).poll_frame(cx).map(|f| f.map(|r| r.map_err(|never| match never {}))),
            Self::Prefixed { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Replay(r) => r.is_end_stream(),
            Self::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Replay(r) => r.size_hint(),
            Self::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + extra);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests;
