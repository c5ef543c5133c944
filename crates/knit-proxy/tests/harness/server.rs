//! A test application: HTTP/1 and HTTP/2 on one port, with routes that exercise the proxy.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpListener};

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n: Infallible| match n {}).boxed()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let rsp = match path.as_str() {
        "/hello" => Response::new(full("hello\n")),
        "/headers" => {
            let mut lines: Vec<String> = req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
            lines.insert(0, format!("version: {:?}", req.version()));
            Response::new(full(lines.join("\n") + "\n"))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(500))).await;
            Response::new(full("slow\n"))
        }
        p if p.starts_with("/status/") => {
            let code = p[8..].parse().unwrap_or(500);
            let mut r = Response::new(full(format!("status {code}\n")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/count" => {
            // Counts the body as it streams; nothing is buffered.
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(format!("{n}\n")))
        }
        "/big" => {
            let total = query(&req, "bytes").unwrap_or(1 << 20);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let left = total / chunk.len() as u64;
            Response::new(Frames { left, chunk, trailers: None }.boxed())
        }
        "/trailers" => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let mut r = Response::new(Frames { left: 1, chunk: Bytes::from_static(b"body\n"), trailers: Some(trailers) }.boxed());
            r.headers_mut().insert("trailer", "x-checksum".parse().unwrap());
            r
        }
        _ if req.method() == http::Method::CONNECT || path == "/ws" => {
            let connect = req.method() == http::Method::CONNECT;
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
            if connect {
                return Ok(Response::new(full("")));
            }
            Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).header("upgrade", "websocket").header("connection", "upgrade").body(full("")).unwrap()
        }
        _ => {
            let mut r = Response::new(full("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(rsp)
}

/// A body of frames produced lazily: `n` copies of a chunk, then optional trailers.
struct Frames {
    left: u64,
    chunk: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left > 0 {
            self.left -= 1;
            return std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Starts the test application on 127.0.0.1:0.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection_with_upgrades(TokioIo::new(tcp), hyper::service::service_fn(handle)).await;
            });
        }
    });
    addr
}
