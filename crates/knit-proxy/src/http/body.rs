//! Bodies on their way through: a response body that records `response_total` when its stream
//! ends, so that gRPC statuses in trailers classify the response and streamed responses are
//! counted when they finish; and a body that fails when it stalls (a route's idle timeout).

use crate::metrics::{Classification, Golden};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// An error of the client's own request body (it stopped sending, reset the stream, broke
/// framing), marked as such where the request body enters the proxy, so that the upstream
/// client's failure to send it is blamed on the client (`ProxyError::ClientBody`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

pub struct Recorder {
    pub golden: Arc<Golden>,
    pub status_code: Option<u16>,
    /// grpc-status from the response headers (a trailers-only response), if any.
    pub grpc_status: Option<u32>,
    /// Set while someone taps this request: told of its end, with the bytes counted for it.
    pub tap: Option<(crate::tap::TapRequest, u64)>,
    /// The attempt's client span, ended with the response body.
    pub span: Option<(Arc<crate::trace::Tracer>, crate::trace::Started)>,
}

impl Recorder {
    pub fn record(self, error: Option<&'static str>) {
        if let Some((tap, bytes)) = self.tap {
            tap.end(bytes, self.grpc_status, error.is_some());
        }
        if let Some((tracer, span)) = self.span {
            tracer.finish(span, self.status_code.and_then(|s| http::StatusCode::from_u16(s).ok()), error);
        }
        let http_failed = self.status_code.is_none_or(|s| s >= 500);
        let grpc_failed = self.grpc_status.is_some_and(|s| s != 0);
        let classification = if error.is_some() || http_failed || grpc_failed { Classification::Failure } else { Classification::Success };
        self.golden.response(self.status_code, classification, self.grpc_status, error);
    }
}

/// What a [`RecordBody`] tells when its stream passes: the trailers and data it carries, and its
/// end, once (`error`: `stream_error`, or `stream_cancelled` when dropped unfinished).
pub trait OnEnd: Send + 'static {
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    fn data(&mut self, _bytes: usize) {}
    fn end(self, error: Option<&'static str>);
}

impl OnEnd for Recorder {
    fn trailers(&mut self, trailers: &HeaderMap) {
        self.grpc_status = grpc_status(trailers).or(self.grpc_status);
    }
    fn data(&mut self, bytes: usize) {
        if let Some((_, n)) = self.tap.as_mut() {
            *n += bytes as u64;
        }
    }
    fn end(self, error: Option<&'static str>) {
        self.record(error);
    }
}

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pin_project_lite::pin_project! {
    /// A response body that tells `R` of its frames and, once, of its end.
    pub struct RecordBody<B: Body, R: OnEnd> {
        #[pin]
        inner: B,
        recorder: Option<R>,
    }

    impl<B: Body, R: OnEnd> PinnedDrop for RecordBody<B, R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.recorder.take() {
                // An empty body may never be polled; anything else dropped early means the client
                // went away or the stream was reset.
                let ended = this.inner.as_ref().get_ref().is_end_stream();
                r.end(if ended { None } else { Some("stream_cancelled") });
            }
        }
    }
}

impl<B: Body, R: OnEnd> RecordBody<B, R> {
    pub fn new(inner: B, recorder: R) -> Self {
        Self { inner, recorder: Some(recorder) }
    }
}

impl<B: Body<Data = Bytes>, R: OnEnd> Body for RecordBody<B, R> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(r) = this.recorder.as_mut() {
                    if let Some(trailers) = frame.trailers_ref() {
                        r.trailers(trailers);
                    }
                    if let Some(data) = frame.data_ref() {
                        r.data(data.len());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.recorder.take() {
                    r.end(Some("stream_error"));
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.recorder.take() {
                    r.end(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Holds a permit (an upstream HTTP/1 connection's place under its endpoint's cap) until the
    /// body ends or is dropped.
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    }
}

impl<B> PermitBody<B> {
    pub fn new(inner: B, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self { inner, permit: Some(permit) }
    }
}

impl<B: Body<Data = Bytes>> Body for PermitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.permit.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that sent no frame for the route's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?} (the route's idle timeout): the stream is cancelled")]
pub struct IdleTimeout(pub std::time::Duration);

pin_project_lite::pin_project! {
    /// Fails with [`IdleTimeout`] once no frame has arrived for `idle` (`timeouts.idle` of a
    /// route, LINKERD-WIRE.md §4.2): a stalled stream is cancelled rather than held open.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        idle: std::time::Duration,
        #[pin]
        timer: tokio::time::Sleep,
    }
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Self { inner, idle, timer: tokio::time::sleep(idle) }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes, Error = crate::http::BoxError>,
{
    type Data = Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.as_mut().reset(tokio::time::Instant::now() + *this.idle);
                Poll::Ready(frame)
            }
            Poll::Pending if std::future::Future::poll(this.timer, cx).is_ready() => Poll::Ready(Some(Err(IdleTimeout(*this.idle).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_its_idle_timeout_and_a_flowing_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, crate::http::BoxError>(Frame::data(b)), rx)) });
        let mut body = Box::pin(IdleBody::new(http_body_util::StreamBody::new(frames), Duration::from_secs(1)));
        for _ in 0..5 {
            // Each frame comes within the idle timeout, though all of them take longer.
            tokio::time::advance(Duration::from_millis(600)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            assert!(body.frame().await.unwrap().unwrap().is_data());
        }
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.downcast_ref::<IdleTimeout>().is_some(), "{e}");
    }
}
