use super::*;
use tokio::sync::mpsc;

/// A body fed through a channel, as a client's request body arrives; counts its polls.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, &'static str>>,
    polls: usize,
    hint: SizeHint,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        let this = self.get_mut();
        this.polls += 1;
        this.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn channel() -> (mpsc::Sender<Result<Frame<Bytes>, &'static str>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx, polls: 0, hint: SizeHint::new() })
}

fn data(s: &'static str) -> Result<Frame<Bytes>, &'static str> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

fn trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static("0"));
    t
}

async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
where
    B::Error: std::fmt::Debug,
{
    let c = body.collect().await.unwrap();
    let t = c.trailers().cloned();
    (c.to_bytes(), t)
}

#[tokio::test]
async fn an_empty_body_is_complete_without_polling() {
    let b = buffer_body(http_body_util::Empty::<Bytes>::new(), 10).await.unwrap();
    assert!(matches!(&b, Buffered::Complete { data, trailers: None } if data.is_empty()));
    let replay = b.replay().unwrap();
    assert!(replay.is_end_stream(), "an empty replay ends at once");
    assert_eq!(collect(replay).await, (Bytes::new(), None));
}

#[tokio::test]
async fn a_small_body_with_trailers_replays_any_number_of_times() {
    let (tx, body) = channel();
    let sender = tokio::spawn(async move {
        tx.send(data("hello ")).await.unwrap();
        tokio::task::yield_now().await;
        tx.send(data("world")).await.unwrap();
        tx.send(Ok(Frame::trailers(trailers()))).await.unwrap();
    });
    let b = buffer_body(body, 11).await.unwrap();
    sender.await.unwrap();
    assert!(b.is_complete(), "exactly the limit is still complete: {b:?}");
    for _ in 0..3 {
        let replay = b.replay().unwrap();
        assert_eq!(replay.size_hint().exact(), Some(11));
        assert_eq!(collect(replay).await, (Bytes::from_static(b"hello world"), Some(trailers())));
    }
    assert_eq!(collect(b.stream()).await, (Bytes::from_static(b"hello world"), Some(trailers())));
}

#[tokio::test]
async fn a_large_body_streams_its_prefix_then_the_rest() {
    let (tx, body) = channel();
    tx.send(data("abc")).await.unwrap();
    tx.send(data("def")).await.unwrap();
    tx.send(data("ghi")).await.unwrap();
    let b = buffer_body(body, 4).await.unwrap();
    let Buffered::Partial { prefix, rest } = &b else { panic!("expected partial, got {b:?}") };
    assert_eq!(prefix.as_ref(), b"abcdef", "reading stops at the first chunk past the limit");
    assert_eq!(rest.polls, 2);
    assert!(b.replay().is_none(), "a partial body cannot be sent again");
    tx.send(data("jkl")).await.unwrap();
    drop(tx);
    assert_eq!(collect(b.stream()).await, (Bytes::from_static(b"abcdefghijkl"), None));
}

#[tokio::test]
async fn a_body_announcing_more_than_the_limit_is_not_read() {
    let (tx, mut body) = channel();
    body.hint = SizeHint::with_exact(1_000);
    tx.send(data("x")).await.unwrap();
    let b = buffer_body(body, 10).await.unwrap();
    let Buffered::Partial { prefix, rest } = &b else { panic!("expected partial, got {b:?}") };
    assert!(prefix.is_empty());
    assert_eq!(rest.polls, 0);
    let streamed = b.stream();
    assert_eq!(streamed.size_hint().exact(), Some(1_000));
    drop(tx);
    assert_eq!(collect(streamed).await.0, Bytes::from_static(b"x"));
}

#[tokio::test]
async fn read_errors_are_returned() {
    let (tx, body) = channel();
    tx.send(data("a")).await.unwrap();
    tx.send(Err("connection reset")).await.unwrap();
    assert_eq!(buffer_body(body, 10).await.unwrap_err(), "connection reset");
}

#[tokio::test]
async fn buffering_waits_for_the_end_of_the_stream() {
    let (tx, body) = channel();
    tx.send(data("a")).await.unwrap();
    let buffering = tokio::spawn(buffer_body(body, 10));
    tokio::task::yield_now().await;
    assert!(!buffering.is_finished(), "the body has not ended yet");
    drop(tx);
    let b = buffering.await.unwrap().unwrap();
    assert_eq!(collect(b.replay().unwrap()).await.0, Bytes::from_static(b"a"));
}
