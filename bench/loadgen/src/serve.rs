//! The benchmark backend: answers every request with a small body, as fast as it can.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{convert::Infallible, io::Write, net::SocketAddr};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Also write the bound address here.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer)).await;
            });
        }
    })
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Drain the request body so the connection can be reused.
    let _ = req.into_body().collect().await;
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
