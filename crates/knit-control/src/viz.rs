//! Viz: golden metrics for `knit viz` and the dashboard (port 8084).
//!
//! By default knit-control scrapes the proxies of the workloads it knows (those with a
//! `knit.dev/proxy-admin-port`) into a bounded in-memory window ([`store`]); with
//! `--prometheus-url` the same queries go to a real Prometheus ([`query`]).
//!
//! HTTP API (JSON):
//! - `GET /api/stat?kind=deployment&namespace=NS&window=30s&to=KIND/NAME&from=KIND/NAME`
//! - `GET /api/targets`: the scrape targets in Prometheus' HTTP service discovery format, with
//!   the `namespace`, `deployment` and `pod` labels (what `viz/prometheus.yml` uses).
//! - `GET /api/scrapes`: each target's last scrape (up, error, series).

pub mod prom;
pub mod query;
pub mod stat;
pub mod store;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// What the API answers from.
#[derive(Clone)]
pub struct Viz {
    pub store: Arc<store::Store>,
    pub source: query::Source,
}

impl Viz {
    pub fn new(config: &crate::config::VizConfig) -> Result<Self, query::QueryError> {
        let store = Arc::new(store::Store::new(config.viz_retention));
        let source = match &config.prometheus_url {
            Some(url) => query::Source::Prometheus(Arc::new(query::Prometheus::new(url)?)),
            None => query::Source::Store(store.clone()),
        };
        Ok(Self { store, source })
    }

    /// The resources a stat of `kind` lists even without traffic: one per scrape target.
    pub fn known(&self, kind: stat::Kind) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .store
            .targets()
            .into_iter()
            .map(|(t, _)| {
                let name = match kind {
                    stat::Kind::Namespace => t.namespace.clone(),
                    stat::Kind::Deployment => t.deployment,
                    stat::Kind::Pod => t.pod,
                };
                (t.namespace, name)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    async fn answer(&self, path: &str, query: &str) -> (StatusCode, serde_json::Value) {
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        match path {
            "/api/stat" => match self.stat_query(&params) {
                Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                Ok(q) => match stat::stat(&self.source, &q, &self.known(q.kind)).await {
                    Ok(rows) => (StatusCode::OK, serde_json::json!({ "window_secs": q.window.as_secs_f64(), "rows": rows })),
                    Err(e) => (StatusCode::BAD_GATEWAY, serde_json::json!({ "error": e.to_string() })),
                },
            },
            "/api/targets" => {
                let groups: Vec<serde_json::Value> = self
                    .store
                    .targets()
                    .into_iter()
                    .map(|(t, _)| serde_json::json!({"targets": [t.admin.to_string()], "labels": {"namespace": t.namespace, "deployment": t.deployment, "pod": t.pod}}))
                    .collect();
                (StatusCode::OK, serde_json::Value::Array(groups))
            }
            "/api/scrapes" => {
                let all: Vec<serde_json::Value> = self.store.targets().into_iter().map(|(t, h)| serde_json::json!({"target": t, "health": h})).collect();
                (StatusCode::OK, serde_json::json!({ "series": self.store.series_count(), "targets": all }))
            }
            _ => (StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("no such endpoint {path}; try /api/stat, /api/targets or /api/scrapes") })),
        }
    }

    fn stat_query(&self, p: &BTreeMap<String, String>) -> Result<stat::Query, String> {
        let kind = stat::Kind::parse(p.get("kind").map_or("deployment", String::as_str))?;
        let window = match p.get("window") {
            Some(w) => knit_core::parse::duration(w).map_err(|e| format!("window: {e}"))?,
            None => Duration::from_secs(30),
        };
        if window.is_zero() {
            return Err("window: must be more than zero".into());
        }
        if let query::Source::Store(store) = &self.source {
            if window > store.retention() {
                return Err(format!("window: {window:?} is longer than the store keeps ({:?}, --viz-retention)", store.retention()));
            }
        }
        let resource = |k: &str| p.get(k).filter(|v| !v.is_empty()).map(|v| v.parse::<stat::Resource>().map_err(|e| format!("{k}: {e}"))).transpose();
        Ok(stat::Query { kind, namespace: p.get("namespace").filter(|n| !n.is_empty()).cloned(), window, to: resource("to")?, from: resource("from")? })
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn serve(listener: TcpListener, viz: Viz) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let viz = viz.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let viz = viz.clone();
                async move {
                    let (status, body) = if req.method() == http::Method::GET {
                        viz.answer(req.uri().path(), req.uri().query().unwrap_or("")).await
                    } else {
                        (StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({ "error": "only GET" }))
                    };
                    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
                    *rsp.status_mut() = status;
                    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
