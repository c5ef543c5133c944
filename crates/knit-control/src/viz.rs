//! Viz: golden metrics for `knit viz` and the dashboard (port 8084).
//!
//! By default knit-control scrapes the proxies of the workloads it knows (those with a
//! `knit.dev/proxy-admin-port`) into a bounded in-memory window ([`store`]); with
//! `--prometheus-url` the same queries go to a real Prometheus ([`query`]).
//!
//! HTTP API (JSON):
//! - `GET /api/stat?kind=deployment&namespace=NS&window=30s&to=KIND/NAME&from=KIND/NAME`
//!   (`to_namespace`, `from_namespace`: where that resource is, `namespace` by default;
//!   `deployment=NAME` with `kind=pod`: that deployment's pods). Every row says how many of
//!   the resource's pods are meshed (`pods`). Paging for large meshes: `limit`, `offset`, `sort=name|rps|success_rate|latency_ms_p99`
//!   (names ascending, numbers descending), `order=asc|desc`, `filter=SUBSTRING` (of the
//!   namespace or name); the answer says `total`.
//! - `GET /api/edges?kind=deployment|pod&namespace=NS&window=30s`: deployment-to-deployment
//!   (or pod-to-pod) edges, mTLS and identities; paged as stat is (`sort=name|requests|bytes`).
//!   `nodes`: the resources the edges join.
//! - `GET /api/routes?namespace=NS&deployment=NAME&window=30s`: the HTTP routes a deployment
//!   calls, with success rate, rps and latency after retries.
//! - `GET /api/authz?namespace=NS&deployment=NAME&window=30s`: its inbound authorization
//!   decisions per server, route and authorization.
//! - `GET /api/egress?namespace=NS&deployment=NAME&window=30s`: what it sent outside the
//!   cluster, per EgressNetwork (or the fallback), route and hostname, allowed or denied.
//! - `GET /api/certificates?namespace=NS&deployment=NAME&expiring_within=6h`: each proxy's
//!   identity and certificate expiry; paged as stat is (`sort=name|expires_at`, soonest first).
//!   `proxies` and `without_expiry` count the namespace and deployment's proxies before paging.
//!
//! - `GET /api/identity`: the issuer and the trust anchors, their expiry, where an anchor
//!   rotation stands, and the leaves this control plane signed under each anchor ([`trust`]).
//!
//! Answers computed from metrics say `as_of`: when the data was last scraped (Unix seconds).
//! - `GET /api/tap?namespace=NS&resource=KIND/NAME&method=GET&path=PREFIX&authority=PREFIX&max_rps=100&limit=N`:
//!   a live stream of requests (newline-delimited JSON, one object per completed request, or
//!   `{"error": ...}` for a proxy that cannot be tapped) until the client goes away.
//! - `GET /api/targets`: the scrape targets in Prometheus' HTTP service discovery format, with
//!   the `namespace`, `deployment` and `pod` labels (what `viz/prometheus.yml` uses).
//! - `GET /api/scrapes`: each target's last scrape (up, error, series).

pub mod apiservice;
pub mod edges;
pub mod page;
pub mod prom;
pub mod query;
pub mod routes;
pub mod stat;
pub mod store;
pub mod tap;
pub mod trust;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// What the API answers from.
#[derive(Clone)]
pub struct Viz {
    /// Where the workloads (the proxies to scrape and tap) come from.
    pub index: Arc<crate::index::Index>,
    pub store: Arc<store::Store>,
    pub source: query::Source,
    pub tap: Arc<tap::Client>,
    /// The issuer and its trust anchors, for `/api/identity`.
    pub identity: Arc<crate::identity::Service>,
    /// Answers by query, with the scrape round they were computed in: pages and refreshes of the
    /// same view within a round cost only the paging.
    cache: Arc<std::sync::Mutex<Cache>>,
}

/// By the query's text: the scrape round and the answer.
type Cache = std::collections::HashMap<String, (u64, Cached)>;

#[derive(Clone)]
enum Cached {
    Rows(Arc<Vec<stat::Row>>),
    Edges(Arc<Vec<edges::Edge>>),
}

impl Viz {
    pub fn new(
        config: &crate::config::VizConfig,
        index: Arc<crate::index::Index>,
        identity: Arc<crate::identity::Service>,
        tap: Arc<tap::Client>,
    ) -> Result<Self, query::QueryError> {
        let store = Arc::new(store::Store::new(config.viz_retention));
        let source = match &config.prometheus_url {
            Some(url) => query::Source::Prometheus(Arc::new(query::Prometheus::new(url)?)),
            None => query::Source::Store(store.clone()),
        };
        Ok(Self { index, store, source, tap, identity, cache: Default::default() })
    }

    /// The meshed workloads' proxies, as the index knows them now.
    pub fn targets(&self) -> Vec<store::Target> {
        store::targets(&self.index)
    }

    /// The resources of `kind` the index knows (only the pods of `deployment`, when given), with
    /// how many of their pods run a proxy (have an admin port to scrape). Workloads made of
    /// EndpointSlices are not pods and are not counted.
    pub fn inventory(&self, kind: stat::Kind, deployment: Option<&str>) -> stat::Inventory {
        let mut out = stat::Inventory::new();
        if !kind.is_workload() {
            return out;
        }
        for w in self.index.workloads_all() {
            if w.metadata.labels.contains_key(crate::index::ENDPOINT_SLICE_LABEL) || deployment.is_some_and(|d| d != w.deployment()) {
                continue;
            }
            let ns = &w.metadata.namespace;
            let name = match kind {
                stat::Kind::Namespace => ns,
                stat::Kind::Deployment => w.deployment(),
                _ => &w.metadata.name,
            };
            let pods = out.entry((ns.clone(), name.to_string())).or_default();
            pods.total += 1;
            pods.meshed += u32::from(store::Target::of(&w).is_some());
        }
        out
    }

    /// `/api/tap`: the targets it selects are tapped until the response body is dropped.
    pub(crate) fn tap(&self, params: &BTreeMap<String, String>) -> Result<Response<Body>, (StatusCode, serde_json::Value)> {
        let bad = |e: String| (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e }));
        let namespace = params.get("namespace").filter(|n| !n.is_empty());
        let resource =
            params.get("resource").filter(|r| !r.is_empty()).map(|r| r.parse::<stat::Resource>()).transpose().map_err(|e| bad(format!("resource: {e}")))?;
        if resource.as_ref().is_some_and(|r| !r.kind.is_workload()) {
            return Err(bad("resource: tap a deployment, pod or namespace (a service's traffic is in its callers' and its pods' proxies)".into()));
        }
        let max_rps = params.get("max_rps").map_or(Ok(100), |v| v.parse::<u32>().map_err(|_| bad(format!("max_rps: {v:?} is not a number"))))?;
        let targets: Vec<store::Target> = self
            .targets()
            .into_iter()
            .filter(|t| namespace.is_none_or(|n| *n == t.namespace))
            .filter(|t| resource.as_ref().is_none_or(|r| t.name(r.kind) == Some(r.name.as_str())))
            .collect();
        if targets.is_empty() {
            return Err((StatusCode::NOT_FOUND, serde_json::json!({ "error": "no meshed workload matches; see /api/targets" })));
        }
        let filter = tap::Filter {
            method: params.get("method").filter(|m| !m.is_empty()).cloned(),
            path_prefix: params.get("path").filter(|p| !p.is_empty()).cloned(),
            authority_prefix: params.get("authority").filter(|a| !a.is_empty()).cloned(),
            limit: params.get("limit").map_or(Ok(0), |v| v.parse::<u32>().map_err(|_| bad(format!("limit: {v:?} is not a number"))))?,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.tap.clone().run(targets, filter, max_rps, tx));
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            let json = match item {
                Ok(t) => serde_json::to_value(t).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            };
            Some((Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!("{json}\n")))), rx))
        });
        let mut rsp = Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(lines)));
        rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        Ok(rsp)
    }

    async fn answer(&self, path: &str, params: &BTreeMap<String, String>) -> (StatusCode, serde_json::Value) {
        match path {
            "/api/stat" => match self.stat_query(params) {
                Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                Ok(q) => match self.stat_rows(&q).await {
                    Ok(rows) => match page::page(&rows, params, |r, f| r.name.contains(f) || r.namespace.contains(f), &STAT_SORTS) {
                        Ok((total, rows)) => {
                            (StatusCode::OK, serde_json::json!({ "window_secs": q.window.as_secs_f64(), "as_of": self.as_of(), "total": total, "rows": rows }))
                        }
                        Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                    },
                    Err(e) => (e.status(), serde_json::json!({ "error": e.to_string() })),
                },
            },
            "/api/edges" => match window(params, self).and_then(|w| Ok((w, edges::By::parse(params.get("kind").map_or("deployment", String::as_str))?))) {
                Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                Ok((w, by)) => match self.edges(by, params.get("namespace").map(String::as_str).filter(|n| !n.is_empty()), w).await {
                    Ok(edges) => {
                        let matches = |e: &edges::Edge, f: &str| [&e.src_namespace, &e.src, &e.dst_namespace, &e.dst].iter().any(|s| s.contains(f));
                        // How many deployments the edges join: whether a graph of them can be drawn.
                        let nodes: std::collections::HashSet<(&str, &str)> =
                            edges.iter().flat_map(|e| [(&*e.src_namespace, &*e.src), (&*e.dst_namespace, &*e.dst)]).collect();
                        match page::page(&edges, params, matches, &EDGE_SORTS) {
                            Ok((total, page)) => (
                                StatusCode::OK,
                                serde_json::json!({ "window_secs": w.as_secs_f64(), "as_of": self.as_of(), "nodes": nodes.len(), "total": total, "edges": page }),
                            ),
                            Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                        }
                    }
                    Err(e) => (e.status(), serde_json::json!({ "error": e.to_string() })),
                },
            },
            "/api/routes" | "/api/authz" | "/api/egress" => {
                let (Some(ns), Some(deployment)) = (params.get("namespace").filter(|n| !n.is_empty()), params.get("deployment").filter(|d| !d.is_empty()))
                else {
                    return (StatusCode::BAD_REQUEST, serde_json::json!({ "error": "namespace and deployment are required" }));
                };
                let w = match window(params, self) {
                    Ok(w) => w,
                    Err(e) => return (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                };
                let rows = match path {
                    "/api/routes" => routes::routes(&self.source, ns, deployment, w).await.map(|r| serde_json::json!(r)),
                    "/api/authz" => routes::authz(&self.source, ns, deployment, w).await.map(|r| serde_json::json!(r)),
                    _ => routes::egress(&self.source, ns, deployment, w).await.map(|r| serde_json::json!(r)),
                };
                match rows {
                    Ok(rows) => (StatusCode::OK, serde_json::json!({ "window_secs": w.as_secs_f64(), "as_of": self.as_of(), "rows": rows })),
                    Err(e) => (e.status(), serde_json::json!({ "error": e.to_string() })),
                }
            }
            "/api/certificates" => {
                let mut certificates = self.certificates(params.get("namespace").filter(|n| !n.is_empty()), params.get("deployment").filter(|d| !d.is_empty()));
                let proxies = certificates.len();
                let without_expiry = certificates.iter().filter(|c| c.expires_at.is_none()).count();
                if let Some(within) = params.get("expiring_within").filter(|v| !v.is_empty()) {
                    let Ok(within) = knit_core::parse::duration(within) else {
                        return (StatusCode::BAD_REQUEST, serde_json::json!({ "error": format!("expiring_within: {within:?} is not a duration (e.g. 6h)") }));
                    };
                    let horizon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + within.as_secs_f64();
                    certificates.retain(|c| c.expires_at.is_some_and(|e| e < horizon));
                }
                let matches = |c: &Certificate, f: &str| {
                    [&c.namespace, &c.deployment, &c.pod].iter().any(|s| s.contains(f)) || c.identity.as_ref().is_some_and(|i| i.contains(f))
                };
                match page::page(&certificates, params, matches, &CERTIFICATE_SORTS) {
                    Ok((total, page)) => (
                        StatusCode::OK,
                        serde_json::json!({ "as_of": self.as_of(), "proxies": proxies, "without_expiry": without_expiry, "total": total, "certificates": page }),
                    ),
                    Err(e) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
                }
            }
            "/api/identity" => (StatusCode::OK, serde_json::json!(trust::report(&self.identity))),
            "/api/targets" => {
                let groups: Vec<serde_json::Value> = self
                    .targets()
                    .into_iter()
                    .map(|t| serde_json::json!({"targets": [t.admin.to_string()], "labels": {"namespace": t.namespace, "deployment": t.deployment, "pod": t.pod}}))
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

    /// How fresh the answers are (Unix seconds): the last scrape round's end, or now when
    /// Prometheus answers.
    fn as_of(&self) -> Option<f64> {
        match &self.source {
            query::Source::Store(store) => store.as_of(),
            query::Source::Prometheus(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64()),
        }
    }

    /// Every meshed proxy of `namespace` and `deployment` (all when `None`), with the expiry of
    /// its certificate from its last scrape.
    fn certificates(&self, namespace: Option<&String>, deployment: Option<&String>) -> Vec<Certificate> {
        let mut expiry = BTreeMap::new();
        let matchers: Vec<(&str, &str)> =
            [("namespace", namespace), ("deployment", deployment)].into_iter().filter_map(|(k, v)| Some((k, v?.as_str()))).collect();
        let now = std::time::Instant::now();
        self.store.each("identity_cert_expiration_timestamp_seconds", &matchers, |v| {
            expiry.insert((v.shared(store::Label::Namespace).to_string(), v.shared(store::Label::Pod).to_string()), v.latest(now));
        });
        self.targets()
            .into_iter()
            .filter(|t| namespace.is_none_or(|n| *n == t.namespace) && deployment.is_none_or(|d| *d == t.deployment))
            .map(|t| {
                let expires_at = expiry.get(&(t.namespace.clone(), t.pod.clone())).copied().filter(|e| *e > 0.0);
                Certificate { namespace: t.namespace, deployment: t.deployment, pod: t.pod, identity: t.identity, expires_at }
            })
            .collect()
    }

    /// What this scrape round's cache holds for `key`; nothing when Prometheus answers.
    fn cached(&self, key: &str) -> Option<Cached> {
        let query::Source::Store(store) = &self.source else { return None };
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|(r, _)| *r == store.round()).map(|(_, c)| c.clone())
    }

    fn remember(&self, key: String, answer: Cached) {
        let query::Source::Store(store) = &self.source else { return };
        let round = store.round();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Views no longer asked for are dropped with the round they belong to.
        cache.retain(|_, (r, _)| *r == round);
        cache.insert(key, (round, answer));
    }

    /// The rows of `q`, from this scrape round's cache when the built-in store answers.
    async fn stat_rows(&self, q: &stat::Query) -> Result<Arc<Vec<stat::Row>>, query::QueryError> {
        let key = format!("stat {q:?}");
        if let Some(Cached::Rows(rows)) = self.cached(&key) {
            return Ok(rows);
        }
        let rows = Arc::new(stat::stat(&self.source, q, &self.inventory(q.kind, q.deployment.as_deref())).await?);
        self.remember(key, Cached::Rows(rows.clone()));
        Ok(rows)
    }

    /// The edges touching `namespace` in `window`, cached as stat rows are.
    async fn edges(&self, by: edges::By, namespace: Option<&str>, window: Duration) -> Result<Arc<Vec<edges::Edge>>, query::QueryError> {
        let key = format!("edges {by:?} {namespace:?} {window:?}");
        if let Some(Cached::Edges(e)) = self.cached(&key) {
            return Ok(e);
        }
        let identities = self.targets().into_iter().filter_map(|t| Some(((t.namespace, t.deployment), t.identity?))).collect();
        let found = Arc::new(edges::edges(&self.source, by, namespace, window, &identities).await?);
        self.remember(key, Cached::Edges(found.clone()));
        Ok(found)
    }

    fn stat_query(&self, p: &BTreeMap<String, String>) -> Result<stat::Query, String> {
        let kind = stat::Kind::parse(p.get("kind").map_or("deployment", String::as_str))?;
        let window = window(p, self)?;
        let resource = |k: &str| p.get(k).filter(|v| !v.is_empty()).map(|v| v.parse::<stat::Resource>().map_err(|e| format!("{k}: {e}"))).transpose();
        let text = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(stat::Query {
            to: resource("to")?,
            from: resource("from")?,
            to_namespace: text("to_namespace"),
            from_namespace: text("from_namespace"),
            deployment: text("deployment"),
            ..stat::Query::new(kind, text("namespace"), window)
        })
    }
}

/// The `window` parameter (30 s by default), no longer than the store keeps.
fn window(p: &BTreeMap<String, String>, viz: &Viz) -> Result<Duration, String> {
    let window = match p.get("window") {
        Some(w) => knit_core::parse::duration(w).map_err(|e| format!("window: {e}"))?,
        None => Duration::from_secs(30),
    };
    if window.is_zero() {
        return Err("window: must be more than zero".into());
    }
    if let query::Source::Store(store) = &viz.source {
        if window > store.retention() {
            return Err(format!("window: {window:?} is longer than the store keeps ({:?}, --viz-retention)", store.retention()));
        }
    }
    Ok(window)
}

const STAT_SORTS: [page::SortKey<stat::Row>; 4] = [
    page::SortKey { name: "name", cmp: |a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)), descending: false },
    page::SortKey { name: "rps", cmp: |a, b| a.rps.total_cmp(&b.rps), descending: true },
    page::SortKey { name: "success_rate", cmp: |a, b| page::cmp_opt(a.success_rate, b.success_rate), descending: true },
    page::SortKey { name: "latency_ms_p99", cmp: |a, b| page::cmp_opt(a.latency_ms_p99, b.latency_ms_p99), descending: true },
];

const EDGE_SORTS: [page::SortKey<edges::Edge>; 3] = [
    page::SortKey {
        name: "name",
        cmp: |a, b| (&a.src_namespace, &a.src, &a.dst_namespace, &a.dst).cmp(&(&b.src_namespace, &b.src, &b.dst_namespace, &b.dst)),
        descending: false,
    },
    page::SortKey { name: "requests", cmp: |a, b| a.requests.total_cmp(&b.requests), descending: true },
    page::SortKey { name: "bytes", cmp: |a, b| a.bytes.total_cmp(&b.bytes), descending: true },
];

const CERTIFICATE_SORTS: [page::SortKey<Certificate>; 2] = [
    page::SortKey { name: "name", cmp: |a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)), descending: false },
    // Soonest first; proxies that have not reported an expiry last.
    page::SortKey {
        name: "expires_at",
        cmp: |a, b| a.expires_at.unwrap_or(f64::INFINITY).total_cmp(&b.expires_at.unwrap_or(f64::INFINITY)),
        descending: false,
    },
];

/// A proxy's identity and when its certificate expires (Unix seconds), as it last reported.
#[derive(Clone, Debug, serde::Serialize)]
struct Certificate {
    namespace: String,
    deployment: String,
    pod: String,
    identity: Option<String>,
    expires_at: Option<f64>,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The dashboard's files, built into the binary (no build step: plain HTML, CSS and JavaScript).
fn dashboard(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", include_str!("viz/dashboard/index.html"))),
        "/app.js" => Some(("text/javascript; charset=utf-8", include_str!("viz/dashboard/app.js"))),
        "/app.css" => Some(("text/css; charset=utf-8", include_str!("viz/dashboard/app.css"))),
        _ => None,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut rsp = Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::from(body.to_string()))));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    rsp
}

pub async fn serve(listener: TcpListener, viz: Viz) {
    crate::accept::accept_loop(listener, crate::accept::Caps { total: 1024, per_source: None }, "viz", move |tcp, _| {
        let viz = viz.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let viz = viz.clone();
                async move {
                    let path = req.uri().path();
                    if let Some((content_type, body)) = dashboard(path) {
                        let mut rsp = Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::from_static(body.as_bytes()))));
                        rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                        return Ok::<_, Infallible>(rsp);
                    }
                    if req.method() != http::Method::GET {
                        return Ok(json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({ "error": "only GET" })));
                    }
                    let params = params(req.uri().query().unwrap_or(""));
                    if path == "/api/tap" {
                        return Ok(viz.tap(&params).unwrap_or_else(|(status, body)| json(status, body)));
                    }
                    let (status, body) = viz.answer(path, &params).await;
                    Ok(json(status, body))
                }
            });
            let _ = crate::accept::http1().serve_connection(TokioIo::new(tcp), svc).await;
        }
    })
    .await
}
