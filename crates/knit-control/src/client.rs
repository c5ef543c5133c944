//! One HTTP/1 `GET` on a connection of its own, for what knit-control fetches from proxies and
//! gateways (the viz scraper, the multicluster gateway probe): no pool, so nothing is held
//! between calls, and the connection is driven beside the exchange and dropped with it, so
//! nothing outlives a call that failed or whose caller gave up (the callers bound the time).

use bytes::Bytes;
use futures_util::future::{select, Either};
use http_body_util::{BodyExt, Empty, Limited};
use std::net::SocketAddr;

/// `GET path` from `addr` with `Connection: close`: the status, and the body read up to
/// `max_body` bytes (a longer one is an error); with `max_body` 0 the body is not read.
pub async fn get(addr: SocketAddr, path: &str, max_body: usize) -> Result<(http::StatusCode, Bytes), String> {
    let failed = |e: hyper::Error| format!("GET {path} from {addr}: {e}");
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(failed)?;
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path} from {addr}: {e}"))?;
    let exchange = async move {
        let rsp = send.send_request(req).await.map_err(failed)?;
        let status = rsp.status();
        if max_body == 0 {
            return Ok((status, Bytes::new()));
        }
        let body = Limited::new(rsp.into_body(), max_body).collect().await.map_err(|e| format!("GET {path} from {addr}: {e}"))?;
        Ok((status, body.to_bytes()))
    };
    match select(std::pin::pin!(exchange), conn).await {
        Either::Left((result, _)) => result,
        // The connection ended (the peer closed it after the response, or it broke): the
        // exchange now finishes, with the whole body or with the error.
        Either::Right((_, exchange)) => exchange.await,
    }
}
