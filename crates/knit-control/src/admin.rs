//! The control plane's admin server (9990): `/metrics`, `/ready`, `/live`.

use crate::identity::Service;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc};
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, service: Arc<Service>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let service = service.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics(&service)),
                        "/ready" => (StatusCode::OK, "ready\n".to_string()),
                        "/live" => (StatusCode::OK, "live\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut rsp = Response::new(Full::new(Bytes::from(body)));
                    *rsp.status_mut() = status;
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn metrics(service: &Service) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &service.registry);
    out
}
