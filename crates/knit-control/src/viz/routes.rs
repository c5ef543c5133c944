//! `routes`, `authz` and `egress`: a workload's traffic per HTTP route it calls (outbound route
//! families), its inbound authorization decisions per server and authorization
//! (LINKERD-WIRE.md §5.3), and its traffic leaving the cluster with the egress policy's
//! decision (§13).

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

/// Traffic a workload sent outside the cluster, per egress policy, route and outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EgressRow {
    /// `EgressNetwork NS/NAME:PORT`, or `egress-fallback :PORT` for an address no EgressNetwork
    /// covers.
    pub destination: String,
    /// The host the requests (`Host`) or connections (SNI) named, when the proxies export it
    /// (`KNIT_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS`); empty otherwise.
    pub hostname: String,
    /// `http`, `tls` or `tcp`.
    pub protocol: String,
    /// `KIND/NAME` of the route; `default/...-egress-allow|deny` for the network's own.
    pub route: String,
    /// `allowed` or `denied`.
    pub decision: String,
    /// Requests (HTTP) or connections (TCP, TLS) per second.
    pub rate: f64,
}

/// What `deployment` in `namespace` sent outside the cluster in `window`.
pub async fn egress(source: &Source, namespace: &str, deployment: &str, window: Duration) -> Result<Vec<EgressRow>, QueryError> {
    let source = source.snapshot();
    let secs = window.as_secs_f64().max(1e-3);
    let by = ["parent_kind", "parent_namespace", "parent_name", "parent_port", "route_kind", "route_name", "hostname"];
    let mut rows: BTreeMap<(Vec<String>, &'static str, bool), f64> = BTreeMap::new();
    // Egress is either an EgressNetwork's policy or the control plane's fallback.
    for parent in [[("parent_kind", "EgressNetwork"), ("parent_name", "")], [("parent_kind", "default"), ("parent_name", "egress-fallback")]] {
        let mut m = vec![("namespace", namespace), ("deployment", deployment), parent[0]];
        if !parent[1].1.is_empty() {
            m.push(parent[1]);
        }
        let mut with_status = by.to_vec();
        with_status.push("http_status");
        for (g, n) in source.increase("outbound_http_route_request_statuses_total", &m, &with_status, window).await? {
            let denied = g[5].ends_with("-egress-deny") || g[7] == "403" && g[4] == "default";
            *rows.entry((g[..by.len()].to_vec(), "http", denied)).or_default() += n;
        }
        for (protocol, open, close) in [
            ("tcp", "outbound_tcp_route_open_total", "outbound_tcp_route_close_total"),
            ("tls", "outbound_tls_route_open_total", "outbound_tls_route_close_total"),
        ] {
            let opened = source.increase(open, &m, &by, window).await?;
            let mut with_error = by.to_vec();
            with_error.push("error");
            let mut refused: BTreeMap<Vec<String>, f64> = BTreeMap::new();
            for (g, n) in source.increase(close, &m, &with_error, window).await? {
                if g[by.len()] == "forbidden" {
                    *refused.entry(g[..by.len()].to_vec()).or_default() += n;
                }
            }
            for (g, n) in opened {
                let denied = refused.get(&g).copied().unwrap_or(0.0);
                if denied > 0.0 {
                    *rows.entry((g.clone(), protocol, true)).or_default() += denied;
                }
                if n - denied > 0.0 {
                    *rows.entry((g, protocol, false)).or_default() += n - denied;
                }
            }
        }
    }
    Ok(rows
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|((g, protocol, denied), n)| EgressRow {
            destination: if g[0] == "EgressNetwork" { format!("EgressNetwork {}/{}:{}", g[1], g[2], g[3]) } else { format!("egress-fallback :{}", g[3]) },
            hostname: g[6].clone(),
            protocol: protocol.to_string(),
            route: format!("{}/{}", if g[4].is_empty() { "default" } else { &g[4] }, g[5]),
            decision: if denied { "denied" } else { "allowed" }.to_string(),
            rate: n / secs,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::viz::store::{Store, Target};
    use std::{sync::Arc, time::Instant};

    #[tokio::test]
    async fn egress_rows_name_the_network_route_hostname_and_decision() {
        let store = Arc::new(Store::new(Duration::from_secs(120)));
        let web = Target {
            admin: "10.1.0.1:4191".parse().unwrap(),
            namespace: "demo".into(),
            deployment: "web".into(),
            pod: "web-1".into(),
            identity: None,
            tap: "10.1.0.1:4190".parse().unwrap(),
        };
        store.set_targets(vec![web.clone()]);
        let parent = |name: &str, port: u16| {
            format!(
                r#"parent_group="policy.linkerd.io",parent_kind="EgressNetwork",parent_namespace="demo",parent_name="{name}",parent_port="{port}",parent_section_name="""#
            )
        };
        let route =
            |kind: &str, name: &str, host: &str| format!(r#"route_group="",route_kind="{kind}",route_namespace="",route_name="{name}",hostname="{host}""#);
        let scrape = |n: u32| {
            [
                format!("outbound_http_route_request_statuses_total{{{},{},http_status=\"403\",error=\"\"}} {}\n", parent("internet", 80), route("default", "http-egress-deny", "x.example"), 2 * n),
                format!("outbound_http_route_request_statuses_total{{{},{},http_status=\"200\",error=\"\"}} {}\n", parent("internet", 80), route("HTTPRoute", "api", "api.example"), 3 * n),
                format!("outbound_tcp_route_open_total{{{},{}}} {}\n", parent("internet", 5432), route("default", "tcp-egress-deny", ""), n),
                format!("outbound_tcp_route_close_total{{{},{},error=\"forbidden\"}} {}\n", parent("internet", 5432), route("default", "tcp-egress-deny", ""), n),
                format!(
                    "outbound_tcp_route_open_total{{parent_group=\"\",parent_kind=\"default\",parent_namespace=\"\",parent_name=\"egress-fallback\",parent_port=\"443\",{}}} {}\n",
                    route("default", "egress-fallback", ""),
                    4 * n
                ),
            ]
            .concat()
        };
        let now = Instant::now();
        store.record(&web, now - Duration::from_secs(10), Ok(scrape(0)));
        store.record(&web, now, Ok(scrape(10)));
        let rows = egress(&Source::Store(store), "demo", "web", Duration::from_secs(10)).await.unwrap();
        let summary: Vec<(String, String, String, String, String, u64)> = rows
            .iter()
            .map(|r| (r.destination.clone(), r.hostname.clone(), r.protocol.clone(), r.route.clone(), r.decision.clone(), r.rate.round() as u64))
            .collect();
        let row = |d: &str, h: &str, p: &str, r: &str, dec: &str, rate| (d.to_string(), h.to_string(), p.to_string(), r.to_string(), dec.to_string(), rate);
        assert_eq!(
            summary,
            [
                row("EgressNetwork demo/internet:5432", "", "tcp", "default/tcp-egress-deny", "denied", 1),
                row("EgressNetwork demo/internet:80", "api.example", "http", "HTTPRoute/api", "allowed", 3),
                row("EgressNetwork demo/internet:80", "x.example", "http", "default/http-egress-deny", "denied", 2),
                row("egress-fallback :443", "", "tcp", "default/egress-fallback", "allowed", 4),
            ]
        );
    }
}
