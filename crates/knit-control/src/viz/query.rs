//! The three query shapes the views need, answered by the built-in store or by a real
//! Prometheus with the PromQL of Linkerd's viz (LINKERD-WIRE.md §5.4):
//!
//! - `sum(increase(M{matchers}[w])) by (G)`
//! - `histogram_quantile(q, sum(rate(M_bucket{matchers}[w])) by (le, G))`
//! - `sum(M{matchers}) by (G)` for gauges.
//!
//! Linkerd takes latency quantiles over `irate` (the last two samples); Knit takes them over the
//! whole window, which is steadier and what the built-in store can answer the same way.

use super::{
    prom,
    store::{Label, Store, View},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

/// Values by the group's label values (in the order of `by`).
pub type Grouped = BTreeMap<Vec<String>, f64>;

#[derive(Clone)]
pub enum Source {
    Store(Arc<Store>),
    Prometheus(Arc<Prometheus>),
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("querying Prometheus at {url}: {message}")]
    Prometheus { url: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl QueryError {
    /// A query the caller got wrong is theirs (400); a Prometheus that failed is upstream (502).
    pub fn status(&self) -> http::StatusCode {
        match self {
            QueryError::Prometheus { .. } => http::StatusCode::BAD_GATEWAY,
            QueryError::Invalid(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// One moment every query of a view is answered as of, so that its numbers agree with each other
/// even when a scrape lands between two of its queries.
#[derive(Clone, Copy)]
struct At {
    instant: Instant,
    /// Unix seconds, for Prometheus' `time` parameter.
    unix: f64,
}

/// A [`Source`] fixed at one moment.
pub struct Snapshot<'a> {
    source: &'a Source,
    at: At,
}

impl Source {
    /// The source as of now, for the several queries of one view.
    pub fn snapshot(&self) -> Snapshot<'_> {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Snapshot { source: self, at: At { instant: Instant::now(), unix } }
    }
}

impl Snapshot<'_> {
    pub async fn increase(&self, metric: &str, matchers: &[(&str, &str)], by: &[&str], window: Duration) -> Result<Grouped, QueryError> {
        match self.source {
            Source::Store(store) => {
                let now = self.at.instant;
                let by = labels(by);
                let mut out = HashMap::new();
                store.each(metric, matchers, |v| *out.entry(group(&v, &by)).or_default() += v.increase(now, window));
                Ok(owned(out))
            }
            Source::Prometheus(p) => {
                p.query(&format!("sum(increase({metric}{}[{}s])) by ({})", selector(matchers), window.as_secs(), by.join(", ")), by, self.at.unix).await
            }
        }
    }

    pub async fn quantile(&self, q: f64, histogram: &str, matchers: &[(&str, &str)], by: &[&str], window: Duration) -> Result<Grouped, QueryError> {
        let bucket = format!("{histogram}_bucket");
        match self.source {
            Source::Store(store) => {
                let now = self.at.instant;
                // Keyed by the bound's bits, which sort as the bounds do (they are never negative).
                let (by, le) = (labels(by), Label::of("le"));
                let mut buckets: HashMap<Vec<Arc<str>>, BTreeMap<u64, f64>> = HashMap::new();
                store.each(&bucket, matchers, |v| {
                    let le = v.value(le).and_then(|l| l.parse::<f64>().ok()).unwrap_or(f64::INFINITY);
                    *buckets.entry(group(&v, &by)).or_default().entry(le.to_bits()).or_default() += v.increase(now, window);
                });
                Ok(buckets
                    .into_iter()
                    .filter_map(|(g, b)| {
                        let b: Vec<(f64, f64)> = b.into_iter().map(|(le, n)| (f64::from_bits(le), n)).collect();
                        prom::quantile(q, &b).map(|v| (g.iter().map(|s| s.to_string()).collect(), v))
                    })
                    .collect())
            }
            Source::Prometheus(p) => {
                let query = format!("histogram_quantile({q}, sum(rate({bucket}{}[{}s])) by (le, {}))", selector(matchers), window.as_secs(), by.join(", "));
                p.query(&query, by, self.at.unix).await
            }
        }
    }

    pub async fn gauge(&self, metric: &str, matchers: &[(&str, &str)], by: &[&str]) -> Result<Grouped, QueryError> {
        match self.source {
            Source::Store(store) => {
                let now = self.at.instant;
                let by = labels(by);
                let mut out = HashMap::new();
                store.each(metric, matchers, |v| *out.entry(group(&v, &by)).or_default() += v.latest(now));
                Ok(owned(out))
            }
            Source::Prometheus(p) => p.query(&format!("sum({metric}{}) by ({})", selector(matchers), by.join(", ")), by, self.at.unix).await,
        }
    }
}

fn labels(by: &[&str]) -> Vec<Label> {
    by.iter().map(|k| Label::of(k)).collect()
}

/// A series' group: its values of `by`, shared with the store (no copies per series).
fn group(v: &View<'_>, by: &[Label]) -> Vec<Arc<str>> {
    by.iter().map(|k| v.shared(*k)).collect()
}

fn owned(grouped: HashMap<Vec<Arc<str>>, f64>) -> Grouped {
    grouped.into_iter().map(|(g, v)| (g.iter().map(|s| s.to_string()).collect(), v)).collect()
}

fn selector(matchers: &[(&str, &str)]) -> String {
    let inner: Vec<String> = matchers.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", inner.join(","))
}

/// A Prometheus server's instant-query API.
#[derive(Clone)]
pub struct Prometheus {
    url: String,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Empty<bytes::Bytes>>,
}

impl Prometheus {
    /// `url`: `http://HOST:PORT` (a path prefix is kept).
    pub fn new(url: &str) -> Result<Self, QueryError> {
        let url = url.trim_end_matches('/').to_string();
        if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
            return Err(QueryError::Invalid(format!("--prometheus {url:?}: expected http://HOST:PORT")));
        }
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Ok(Self { url, client })
    }

    /// An instant query evaluated at `time` (unix seconds).
    pub async fn query(&self, promql: &str, by: &[&str], time: f64) -> Result<Grouped, QueryError> {
        use http_body_util::BodyExt;
        let err = |message: String| QueryError::Prometheus { url: self.url.clone(), message };
        let encoded: String = form_encode(promql);
        let req = http::Request::get(format!("{}/api/v1/query?query={encoded}&time={time:.3}", self.url))
            .body(http_body_util::Empty::new())
            .map_err(|e| err(e.to_string()))?;
        let rsp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| err("timed out after 10s".into()))?
            .map_err(|e| err(e.to_string()))?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await.map_err(|e| err(e.to_string()))?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(format!("HTTP {status}, not JSON: {e}")))?;
        if json["status"] != "success" {
            return Err(err(format!("{}: {} (query: {promql})", json["errorType"].as_str().unwrap_or("error"), json["error"].as_str().unwrap_or("?"))));
        }
        let mut out = Grouped::new();
        for r in json["data"]["result"].as_array().into_iter().flatten() {
            let value: f64 = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            if value.is_nan() {
                continue;
            }
            out.insert(by.iter().map(|k| r["metric"][*k].as_str().unwrap_or_default().to_string()).collect(), value);
        }
        Ok(out)
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986's unreserved characters).
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
