//! The benchmark backend: answers every request with a small body, as fast as it can, or, for
//! the load-balancing benchmark, late (`--delay-ms`) or rate-limited (`--status-429-every`).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Also write the bound address here.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
    /// Wait this long before answering (a slow endpoint).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer every Nth request with 429 Too Many Requests (1: all of them).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    status_429_every: Option<u64>,
    /// The Retry-After seconds sent with each 429.
    #[arg(long, default_value_t = 1, requires = "status_429_every")]
    retry_after: u64,
}

/// How this backend misbehaves; the default answers at once, always 200.
#[derive(Default)]
struct Behaviour {
    delay: Duration,
    status_429_every: Option<u64>,
    retry_after: u64,
    requests: AtomicU64,
}

impl Behaviour {
    /// The rate limiter's verdict on the next request: the Nth, 2Nth, ... are refused.
    fn refuse_next(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.status_429_every.is_some_and(|every| n.is_multiple_of(every))
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let behaviour = Arc::new(Behaviour {
        delay: Duration::from_millis(args.delay_ms),
        status_429_every: args.status_429_every,
        retry_after: args.retry_after,
        requests: AtomicU64::new(0),
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        let addr = listener.local_addr()?;
        println!("{addr}");
        std::io::stdout().flush()?;
        if let Some(f) = args.port_file {
            std::fs::write(f, addr.to_string())?;
        }
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let service = hyper::service::service_fn(move |req| answer(req, behaviour.clone()));
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    })
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, behaviour: Arc<Behaviour>) -> Result<Response<Body>, Infallible> {
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Drain the request body so the connection can be reused.
    let _ = req.into_body().collect().await;
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if behaviour.refuse_next() {
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"rate limited\n")).boxed());
        *rsp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        rsp.headers_mut().insert("retry-after", http::HeaderValue::from(behaviour.retry_after));
        return Ok(rsp);
    }
    if !grpc {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed()));
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = GrpcBody { message: Some(Bytes::from_static(&[0, 0, 0, 0, 0])), trailers: Some(trailers) };
    let mut rsp = Response::new(body.boxed());
    rsp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    Ok(rsp)
}

/// One empty, length-prefixed gRPC message followed by `grpc-status: 0` trailers.
struct GrpcBody {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(m) = self.message.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(m))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_is_refused() {
        let b = Behaviour { status_429_every: Some(3), ..Default::default() };
        let verdicts: Vec<bool> = (0..6).map(|_| b.refuse_next()).collect();
        assert_eq!(verdicts, [false, false, true, false, false, true]);
        let all = Behaviour { status_429_every: Some(1), ..Default::default() };
        assert!((0..3).all(|_| all.refuse_next()));
        let none = Behaviour::default();
        assert!((0..3).all(|_| !none.refuse_next()));
    }
}
