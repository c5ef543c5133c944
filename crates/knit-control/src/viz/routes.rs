//! `routes` and `authz`: a workload's traffic per HTTP route it calls (outbound route families),
//! and its inbound authorization decisions per server and authorization (LINKERD-WIRE.md §5.3).

use super::query::{QueryError, Snapshot, Source};
use std::{collections::BTreeMap, time::Duration};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteRow {
    /// The parent (usually a Service) the route is attached to: `namespace/name:port`.
    pub parent: String,
    /// `KIND/NAME` of the route; `default` for a parent's default route.
    pub route: String,
    #[serde(flatten)]
    pub golden: Golden,
}

/// Requests through a route in a window, after retries, and how they went.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Golden {
    pub requests: f64,
    /// Of the requests, those neither answered 5xx nor by the proxy itself (`error`).
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

/// The routes `deployment` in `namespace` called in `window`, with their outcome after retries.
pub async fn routes(source: &Source, namespace: &str, deployment: &str, window: Duration) -> Result<Vec<RouteRow>, QueryError> {
    let m = [("namespace", namespace), ("deployment", deployment)];
    let by = ["parent_namespace", "parent_name", "parent_port", "route_kind", "route_name"];
    Ok(outcomes(&source.snapshot(), &m, &by, window)
        .await?
        .into_iter()
        .map(|(k, golden)| RouteRow {
            parent: format!("{}/{}:{}", k[0], k[1], k[2]),
            route: if k[4].is_empty() { "default".to_string() } else { format!("{}/{}", k[3], k[4]) },
            golden,
        })
        .collect())
}

/// The outbound route families' requests matching `m` in `window`, grouped by `by`.
pub(super) async fn outcomes(source: &Snapshot<'_>, m: &[(&str, &str)], by: &[&str], window: Duration) -> Result<BTreeMap<Vec<String>, Golden>, QueryError> {
    let mut by_status = by.to_vec();
    by_status.extend(["http_status", "error"]);
    let statuses = source.increase("outbound_http_route_request_statuses_total", m, &by_status, window).await?;
    let q = |q| source.quantile(q, "outbound_http_route_request_duration_seconds", m, by, window);
    let [p50, p95, p99] = [q(0.5).await?, q(0.95).await?, q(0.99).await?];
    let mut counts: BTreeMap<Vec<String>, (f64, f64)> = BTreeMap::new();
    for (g, n) in statuses {
        let (key, outcome) = g.split_at(by.len());
        // A response the proxy produced (`error`) or a 5xx is a failure, as for response_total.
        let failed = !outcome[1].is_empty() || outcome[0].parse::<u16>().is_ok_and(|s| s >= 500) || outcome[0].is_empty();
        let e = counts.entry(key.to_vec()).or_default();
        e.0 += n;
        if !failed {
            e.1 += n;
        }
    }
    let secs = window.as_secs_f64().max(1e-3);
    let ms = |q: &super::query::Grouped, k: &Vec<String>| q.get(k).map(|s| s * 1e3);
    Ok(counts
        .into_iter()
        .map(|(k, (requests, ok))| {
            let golden = Golden {
                requests,
                success_rate: (requests > 0.0).then(|| ok / requests),
                rps: requests / secs,
                latency_ms_p50: ms(&p50, &k),
                latency_ms_p95: ms(&p95, &k),
                latency_ms_p99: ms(&p99, &k),
            };
            (k, golden)
        })
        .collect())
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuthzRow {
    /// `KIND/NAME` of the server (policy) that applied.
    pub server: String,
    /// `KIND/NAME` of the authorization that allowed the requests; `denied` for refusals.
    pub authorization: String,
    pub route: String,
    pub allowed_rps: f64,
    pub denied_rps: f64,
}

/// `deployment`'s inbound authorization decisions in `window`.
pub async fn authz(source: &Source, namespace: &str, deployment: &str, window: Duration) -> Result<Vec<AuthzRow>, QueryError> {
    let source = source.snapshot();
    let m = [("namespace", namespace), ("deployment", deployment)];
    let by = ["srv_kind", "srv_name", "route_name", "authz_kind", "authz_name"];
    let allowed = source.increase("inbound_http_authz_allow_total", &m, &by, window).await?;
    let denied = source.increase("inbound_http_authz_deny_total", &m, &by, window).await?;
    let secs = window.as_secs_f64().max(1e-3);
    let mut rows: BTreeMap<Vec<String>, AuthzRow> = BTreeMap::new();
    for (grouped, is_allow) in [(allowed, true), (denied, false)] {
        for (g, n) in grouped {
            let authorization = if !is_allow {
                "denied".to_string()
            } else if g[4].is_empty() {
                "default".to_string()
            } else {
                format!("{}/{}", g[3], g[4])
            };
            let key = vec![g[0].clone(), g[1].clone(), g[2].clone(), authorization.clone()];
            let row = rows.entry(key).or_insert_with(|| AuthzRow {
                server: if g[1].is_empty() { "default".into() } else { format!("{}/{}", g[0], g[1]) },
                authorization,
                route: if g[2].is_empty() { "default".into() } else { g[2].clone() },
                allowed_rps: 0.0,
                denied_rps: 0.0,
            });
            if is_allow {
                row.allowed_rps += n / secs;
            } else {
                row.denied_rps += n / secs;
            }
        }
    }
    Ok(rows.into_values().collect())
}
