//! The admin server (port 4191): `/metrics`, `/ready`, `/live`, `/config_dump`, `/log-level`
//! (also at Linkerd's `/proxy-log-level`) and `/shutdown`. Endpoints that change the process,
//! and the configuration dump, answer only loopback clients.

use crate::{
    config::Config,
    http::{full, is_loopback, Body},
    log::LogLevel,
    metrics::Metrics,
};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};
use tokio::{net::TcpListener, sync::mpsc};

pub struct Admin {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub log: Option<LogLevel>,
    /// Ready once the listeners serve traffic; not ready again while draining.
    pub ready: Arc<AtomicBool>,
    /// `/shutdown` asks the proxy to drain through this.
    pub shutdown: mpsc::Sender<()>,
}

/// Admin connections open at once: enough for probes, scrapers and a person; its own limit, so
/// that a flood of data connections never keeps `/live` from answering. At most 8 from one
/// address (the kubelet's probes and a scraper need one or two each), so that one client
/// holding connections open cannot keep the probes waiting.
const CONNECTIONS: usize = 256;
const CONNECTIONS_PER_CLIENT: usize = 8;

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let header_read_timeout = admin.config.http.header_read_timeout;
    crate::accept::accept_loop(listener, crate::accept::Limit::per_source(CONNECTIONS, CONNECTIONS_PER_CLIENT), None, "admin", move |tcp, client, permit, _| {
        let admin = admin.clone();
        async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, client).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        }
    })
    .await
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    rsp
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut rsp = text(StatusCode::OK, self.metrics.encode());
                rsp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
                rsp
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            // The whole configuration (addresses, file paths, the destination table) is for the
            // pod itself, not for whoever reaches the admin port.
            (&Method::GET, "/config_dump") if !is_loopback(&client) => text(StatusCode::FORBIDDEN, "the configuration is only served to localhost\n"),
            (&Method::GET, "/config_dump") => match serde_json::to_string_pretty(&*self.config) {
                Ok(json) => {
                    let mut rsp = text(StatusCode::OK, json + "\n");
                    rsp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                    rsp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            (_, "/log-level" | "/proxy-log-level") => self.log_level(req, client).await,
            (&Method::POST, "/shutdown") if self.config.admin.shutdown_endpoint_enabled => {
                if !is_loopback(&client) {
                    return text(StatusCode::FORBIDDEN, "shutdown is only accepted from localhost\n");
                }
                let _ = self.shutdown.try_send(());
                text(StatusCode::OK, "shutdown\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn log_level(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        if !is_loopback(&client) {
            return text(StatusCode::FORBIDDEN, "the log level is only changed from localhost\n");
        }
        let Some(log) = &self.log else {
            return text(StatusCode::NOT_FOUND, "this proxy does not own the process's logger\n");
        };
        match *req.method() {
            Method::GET => text(StatusCode::OK, log.get() + "\n"),
            Method::PUT => {
                // Log directives are short; anything longer than this is not one.
                let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("could not read the body: {e}\n")),
                };
                let directives = String::from_utf8_lossy(&body);
                match log.set(&directives) {
                    Ok(()) => text(StatusCode::NO_CONTENT, ""),
                    Err(e) => text(StatusCode::BAD_REQUEST, e + "\n"),
                }
            }
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT\n"),
        }
    }
}
