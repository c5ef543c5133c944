//! The demo's applications: small HTTP servers that answer like a web front end, a books
//! service and an authors service would, with latency and failures to make the metrics move.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};
use tokio::net::TcpListener;

/// How a demo application answers.
#[derive(Clone, Copy)]
pub enum App {
    Web { outbound: SocketAddr },
    Books { min_ms: u64, max_ms: u64, fail_per_mille: u64 },
    Authors { limited_per_mille: u64 },
}

pub async fn serve_app(app: App) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(accept_app(listener, app));
    Ok(addr)
}

pub async fn accept_app(listener: TcpListener, app: App) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Ok((tcp, _)) = listener.accept().await {
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(app, req, client.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// A cheap pseudo-random number in 0..n (xorshift): the demo needs variety, not statistics.
fn rand_below(n: u64) -> u64 {
    let mut x = SEED.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    SEED.store(x, Ordering::Relaxed);
    x % n.max(1)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn answer(
    app: App,
    req: Request<Incoming>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match app {
        App::Books { min_ms, max_ms, fail_per_mille } => {
            tokio::time::sleep(Duration::from_millis(min_ms + rand_below(max_ms - min_ms + 1))).await;
            if rand_below(1000) < fail_per_mille {
                text(StatusCode::INTERNAL_SERVER_ERROR, "books failed\n")
            } else {
                text(StatusCode::OK, "[books]\n")
            }
        }
        App::Authors { limited_per_mille } => {
            if rand_below(1000) < limited_per_mille {
                let mut r = text(StatusCode::TOO_MANY_REQUESTS, "slow down\n");
                r.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
                r
            } else {
                text(StatusCode::OK, "[authors]\n")
            }
        }
        App::Web { outbound } => {
            // As an application instrumented with OpenTelemetry would, web passes the trace
            // context it was called with on to its own calls.
            let traceparent = req.headers().get("traceparent").cloned();
            let call = |host: &'static str, path: &'static str| {
                let client = client.clone();
                let traceparent = traceparent.clone();
                async move {
                    let mut req = Request::get(format!("http://{outbound}{path}")).header("host", host).body(Empty::new()).expect("valid request");
                    if let Some(t) = traceparent {
                        req.headers_mut().insert("traceparent", t);
                    }
                    match client.request(req).await {
                        Ok(rsp) => {
                            let ok = rsp.status().is_success();
                            let _ = rsp.into_body().collect().await;
                            ok
                        }
                        Err(_) => false,
                    }
                }
            };
            let (books, authors) = tokio::join!(call("books:8080", "/books"), call("authors:8080", "/authors"));
            if books && authors {
                text(StatusCode::OK, "web page\n")
            } else {
                text(StatusCode::BAD_GATEWAY, "a dependency failed\n")
            }
        }
    })
}
