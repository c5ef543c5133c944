//! `stat`: golden metrics per resource, as `linkerd viz stat`.
//!
//! A plain stat of workloads (namespace, deployment or pod) reads the resources' own proxies,
//! inbound. `--to R` reads the selected resources' outbound traffic to R; `--from R` reads R's
//! outbound traffic, one row per destination (LINKERD-WIRE.md §5.4). Services are read from
//! their callers; Servers and AuthorizationPolicies from the inbound requests they admitted
//! (the `srv_*` and `authz_*` labels); HTTPRoutes from their callers' route metrics (§5.3).

use super::query::{Grouped, QueryError, Snapshot, Source};
use std::{collections::BTreeMap, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Namespace,
    Deployment,
    Pod,
    /// Services, as their callers see them (outbound, by authority).
    Service,
    /// Servers (`policy.linkerd.io`), by the inbound requests checked against them.
    Server,
    /// AuthorizationPolicies, by the inbound requests they allowed.
    #[serde(rename = "authorizationpolicy")]
    AuthorizationPolicy,
    /// HTTPRoutes (and GRPCRoutes) attached to Services, as their callers see them.
    #[serde(rename = "httproute")]
    HttpRoute,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ns" | "namespace" | "namespaces" => Ok(Kind::Namespace),
            "deploy" | "deployment" | "deployments" => Ok(Kind::Deployment),
            "po" | "pod" | "pods" => Ok(Kind::Pod),
            "svc" | "service" | "services" => Ok(Kind::Service),
            "srv" | "server" | "servers" => Ok(Kind::Server),
            "authorizationpolicy" | "authorizationpolicies" | "authzpolicy" => Ok(Kind::AuthorizationPolicy),
            "httproute" | "httproutes" | "route" | "routes" => Ok(Kind::HttpRoute),
            other => Err(format!(
                "unknown resource kind {other:?}: expected namespace (ns), deployment (deploy), pod (po), service (svc), server (srv), authorizationpolicy or httproute (route)"
            )),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Deployment => "deployment",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Server => "server",
            Kind::AuthorizationPolicy => "authorizationpolicy",
            Kind::HttpRoute => "httproute",
        }
    }

    /// Namespaces, deployments and pods: resources with proxies of their own, which `--to`,
    /// `--from` and tap can name.
    pub fn is_workload(self) -> bool {
        matches!(self, Kind::Namespace | Kind::Deployment | Kind::Pod)
    }
}

/// `KIND/NAME`, as `--to` and `--from` take it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
}

impl std::str::FromStr for Resource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected KIND/NAME, e.g. deploy/web"))?;
        if name.is_empty() {
            return Err(format!("{s:?}: the name is empty"));
        }
        Ok(Self { kind: Kind::parse(kind)?, name: name.to_string() })
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Query {
    pub kind: Kind,
    /// Only this namespace (of the rows' resources); all when `None`.
    pub namespace: Option<String>,
    pub window: Duration,
    pub to: Option<Resource>,
    pub from: Option<Resource>,
    /// The namespace of the `--to` and `--from` resources; `namespace` when unset, as Linkerd's
    /// `--to-namespace` and `--from-namespace`.
    #[serde(default)]
    pub to_namespace: Option<String>,
    #[serde(default)]
    pub from_namespace: Option<String>,
    /// Pods only: those of this deployment.
    #[serde(default)]
    pub deployment: Option<String>,
}

impl Query {
    pub fn new(kind: Kind, namespace: Option<String>, window: Duration) -> Self {
        Self { kind, namespace, window, to: None, from: None, to_namespace: None, from_namespace: None, deployment: None }
    }
}

/// How many pods a resource has, and how many of them run a proxy (Linkerd's MESHED column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pods {
    pub meshed: u32,
    pub total: u32,
}

/// The resources the index knows, by (namespace, name): listed even without traffic.
pub type Inventory = BTreeMap<(String, String), Pods>;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// Responses in the window.
    pub requests: f64,
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Of the responses, the share that crossed mutual TLS.
    pub mtls_rate: Option<f64>,
    pub tcp_connections: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// Unknown when the index is not at hand (a stat straight from Prometheus) and for services.
    #[serde(default)]
    pub pods: Option<Pods>,
    /// Outbound rows: the linked clusters the traffic went to (the `dst_target_cluster` label of
    /// mirrored and federated Services), `""` standing for this one; empty when all stayed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

/// The label that names a linked cluster on the callers' series.
const CLUSTER: &str = "dst_target_cluster";

/// The rows of `q`, sorted by namespace and name. `inventory`: the resources of `q.kind` the
/// index knows (already narrowed to `q.deployment`), listed even without traffic.
pub async fn stat(source: &Source, q: &Query, inventory: &Inventory) -> Result<Vec<Row>, QueryError> {
    if q.to.is_some() && q.from.is_some() {
        return Err(QueryError::Invalid("--to and --from together are not supported; use one".into()));
    }
    if q.deployment.is_some() && q.kind != Kind::Pod {
        return Err(QueryError::Invalid("deployment narrows pods: use it with `stat po`".into()));
    }
    if let Some(r) = [&q.to, &q.from].into_iter().flatten().find(|r| !r.kind.is_workload()) {
        let kind = r.kind.label();
        return Err(QueryError::Invalid(format!("--to/--from a {kind}: name a namespace, deployment or pod (use `stat {kind}` for the {kind} itself)")));
    }
    match q.kind {
        Kind::Service => return services(source, q).await,
        Kind::Server | Kind::AuthorizationPolicy => return policies(source, q).await,
        Kind::HttpRoute => return http_routes(source, q).await,
        Kind::Namespace | Kind::Deployment | Kind::Pod => {}
    }
    let kind = q.kind.label();
    let (ns_label, name_label) = match &q.from {
        Some(_) => ("dst_namespace".to_string(), format!("dst_{kind}")),
        None => ("namespace".to_string(), kind.to_string()),
    };
    let mut matchers: Vec<(String, String)> = vec![("direction".into(), if q.to.is_some() || q.from.is_some() { "outbound" } else { "inbound" }.into())];
    if let Some(ns) = &q.namespace {
        matchers.push((ns_label.clone(), ns.clone()));
    }
    if let Some(to) = &q.to {
        matchers.push((format!("dst_{}", to.kind.label()), to.name.clone()));
        if let Some(ns) = q.to_namespace.as_ref().or(q.namespace.as_ref()).filter(|_| to.kind != Kind::Namespace) {
            matchers.push(("dst_namespace".into(), ns.clone()));
        }
    }
    if let Some(from) = &q.from {
        matchers.push((from.kind.label().into(), from.name.clone()));
        if let Some(ns) = q.from_namespace.as_ref().or(q.namespace.as_ref()).filter(|_| from.kind != Kind::Namespace) {
            matchers.push(("namespace".into(), ns.clone()));
        }
    }
    if let Some(d) = &q.deployment {
        matchers.push((if q.from.is_some() { "dst_deployment" } else { "deployment" }.into(), d.clone()));
    }
    let m: Vec<(&str, &str)> = matchers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // A namespace row is grouped by its namespace only.
    let by: Vec<&str> = if q.kind == Kind::Namespace { vec![ns_label.as_str()] } else { vec![ns_label.as_str(), name_label.as_str()] };
    let key = |g: &[String]| -> (String, String) { (g[0].clone(), g.last().cloned().unwrap_or_default()) };
    let outbound = q.to.is_some() || q.from.is_some();
    let peer = if outbound { "dst" } else { "src" };
    let mut rows = rows(&source.snapshot(), &m, &by, &key, q.window, Some(peer), outbound).await?;
    if q.to.is_none() && q.from.is_none() {
        for k in inventory.keys().filter(|(ns, _)| q.namespace.as_ref().is_none_or(|n| n == ns)) {
            rows.entry(k.clone()).or_insert_with(|| Row::empty(k.clone()));
        }
    }
    // Series of resources nobody names (no dst_* label: an address outside the mesh).
    rows.retain(|(_, name), _| !name.is_empty());
    for (k, row) in rows.iter_mut() {
        row.pods = inventory.get(k).copied();
    }
    Ok(rows.into_values().collect())
}

/// `stat svc`: each Service's traffic as its callers' proxies see it, from the `authority` label
/// (`NAME.NS.svc.DOMAIN:PORT`); `--from` narrows it to one caller.
async fn services(source: &Source, q: &Query) -> Result<Vec<Row>, QueryError> {
    if q.to.is_some() {
        return Err(QueryError::Invalid("stat svc takes --from (who calls), not --to".into()));
    }
    let mut matchers = vec![("direction".to_string(), "outbound".to_string())];
    if let Some(from) = &q.from {
        matchers.push((from.kind.label().into(), from.name.clone()));
    }
    let m: Vec<(&str, &str)> = matchers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // `NAME.NS.svc.DOMAIN:PORT`, `NAME.NS:PORT`, or `NAME:PORT` in the caller's namespace.
    let key = |g: &[String]| -> (String, String) {
        let (host, port) = g[0].rsplit_once(':').unwrap_or((&g[0], ""));
        match host.split('.').collect::<Vec<_>>()[..] {
            [name] => (g[1].clone(), format!("{name}:{port}")),
            [name, ns] | [name, ns, "svc", ..] => (ns.to_string(), format!("{name}:{port}")),
            _ => (String::new(), g[0].clone()),
        }
    };
    let mut rows = rows(&source.snapshot(), &m, &["authority", "namespace"], &key, q.window, Some("dst"), true).await?;
    rows.retain(|(ns, name), _| !name.is_empty() && q.namespace.as_ref().is_none_or(|n| n == ns));
    Ok(rows.into_values().collect())
}

/// `stat srv` and `stat authorizationpolicy`: the inbound requests each Server checked, or each
/// AuthorizationPolicy allowed, from the `srv_*` and `authz_*` labels of the inbound golden
/// families; `--from` is not supported (the labels are the server side's).
async fn policies(source: &Source, q: &Query) -> Result<Vec<Row>, QueryError> {
    if q.to.is_some() || q.from.is_some() {
        return Err(QueryError::Invalid(format!("stat {} takes neither --to nor --from", q.kind.label())));
    }
    let (kind_label, name_label) = if q.kind == Kind::Server { ("srv_kind", "srv_name") } else { ("authz_kind", "authz_name") };
    let mut m = vec![("direction", "inbound"), (kind_label, q.kind.label())];
    if let Some(ns) = &q.namespace {
        m.push(("namespace", ns));
    }
    let key = |g: &[String]| (g[0].clone(), g[1].clone());
    // No TCP: connections carry no srv_*/authz_* labels.
    let rows = rows(&source.snapshot(), &m, &["namespace", name_label], &key, q.window, None, false).await?;
    Ok(rows.into_values().collect())
}

/// `stat httproute`: each route's requests as its callers' proxies saw them, after retries,
/// summed over the callers (`--from` narrows them to one); a Service's default route is not
/// an HTTPRoute and is left out (`knit viz routes` shows it).
async fn http_routes(source: &Source, q: &Query) -> Result<Vec<Row>, QueryError> {
    if q.to.is_some() {
        return Err(QueryError::Invalid("stat httproute takes --from (who calls), not --to".into()));
    }
    let from_ns = q.from_namespace.as_ref().or(q.namespace.as_ref());
    let mut m: Vec<(&str, &str)> = Vec::new();
    if let Some(ns) = &q.namespace {
        m.push(("route_namespace", ns));
    }
    if let Some(from) = &q.from {
        m.push((from.kind.label(), &from.name));
        if let Some(ns) = from_ns.filter(|_| from.kind != Kind::Namespace) {
            m.push(("namespace", ns));
        }
    }
    let by = ["route_namespace", "route_kind", "route_name"];
    let outcomes = super::routes::outcomes(&source.snapshot(), &m, &by, q.window).await?;
    Ok(outcomes
        .into_iter()
        .filter(|(k, _)| k[1] != "default" && !k[2].is_empty())
        .map(|(k, g)| Row {
            requests: g.requests,
            success_rate: g.success_rate,
            rps: g.rps,
            latency_ms_p50: g.latency_ms_p50,
            latency_ms_p95: g.latency_ms_p95,
            latency_ms_p99: g.latency_ms_p99,
            ..Row::empty((k[0].clone(), k[2].clone()))
        })
        .collect())
}

impl Row {
    fn empty((namespace, name): (String, String)) -> Self {
        Row {
            namespace,
            name,
            requests: 0.0,
            success_rate: None,
            rps: 0.0,
            latency_ms_p50: None,
            latency_ms_p95: None,
            latency_ms_p99: None,
            mtls_rate: None,
            tcp_connections: 0.0,
            read_bytes_per_sec: 0.0,
            write_bytes_per_sec: 0.0,
            pods: None,
            clusters: Vec::new(),
        }
    }
}

type Key<'a> = &'a (dyn Fn(&[String]) -> (String, String) + Sync);

/// The golden metrics of the series matching `m`, grouped by `by` and keyed by `key`; the TCP
/// columns from the `peer` side's connections, none without one; with `clusters`, each row's
/// [`Row::clusters`].
#[allow(clippy::too_many_arguments)]
async fn rows(
    source: &Snapshot<'_>,
    m: &[(&str, &str)],
    by: &[&str],
    key: Key<'_>,
    window: Duration,
    peer: Option<&str>,
    clusters: bool,
) -> Result<BTreeMap<(String, String), Row>, QueryError> {
    let mut rows = golden(source, m, by, key, window, peer).await?;
    if clusters {
        let mut by = by.to_vec();
        by.push(CLUSTER);
        let seen = source.increase("response_total", m, &by, window).await?;
        let mut found: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
        for (g, n) in &seen {
            if *n > 0.0 {
                found.entry(key(&g[..g.len() - 1])).or_default().insert(g[g.len() - 1].clone());
            }
        }
        for (k, set) in found {
            if let Some(row) = rows.get_mut(&k).filter(|_| set.iter().any(|c| !c.is_empty())) {
                row.clusters = set.into_iter().collect();
            }
        }
    }
    Ok(rows)
}

async fn golden(
    source: &Snapshot<'_>,
    m: &[(&str, &str)],
    by: &[&str],
    key: Key<'_>,
    window: Duration,
    peer: Option<&str>,
) -> Result<BTreeMap<(String, String), Row>, QueryError> {
    let by = by.to_vec();
    let mut by_class = by.clone();
    by_class.push("classification");
    let mut by_tls = by.clone();
    by_tls.push("tls");
    let responses = source.increase("response_total", m, &by_class, window).await?;
    let tls = source.increase("response_total", m, &by_tls, window).await?;
    let quantiles = [
        source.quantile(0.5, "response_latency_ms", m, &by, window).await?,
        source.quantile(0.95, "response_latency_ms", m, &by, window).await?,
        source.quantile(0.99, "response_latency_ms", m, &by, window).await?,
    ];
    // TCP: the accepted side for a plain stat, the opened side toward destinations otherwise.
    let (conns, read, write) = match peer {
        Some(peer) => {
            let mut tcp_m = m.to_vec();
            tcp_m.push(("peer", peer));
            (
                source.gauge("tcp_open_connections", &tcp_m, &by).await?,
                source.increase("tcp_read_bytes_total", &tcp_m, &by, window).await?,
                source.increase("tcp_write_bytes_total", &tcp_m, &by, window).await?,
            )
        }
        None => Default::default(),
    };

    let empty = Row::empty;
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let secs = window.as_secs_f64().max(1e-3);
    let mut success: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (g, n) in &responses {
        let k = key(&g[..g.len() - 1]);
        let row = rows.entry(k.clone()).or_insert_with(|| empty(k.clone()));
        row.requests += n;
        if g.last().map(String::as_str) == Some("success") {
            *success.entry(k).or_default() += n;
        }
    }
    let mut mtls: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (g, n) in &tls {
        if g.last().map(String::as_str) == Some("true") {
            *mtls.entry(key(&g[..g.len() - 1])).or_default() += n;
        }
    }
    let each = |grouped: &Grouped, rows: &mut BTreeMap<(String, String), Row>, set: &dyn Fn(&mut Row, f64)| {
        for (g, v) in grouped {
            let k = key(g);
            set(rows.entry(k.clone()).or_insert_with(|| empty(k)), *v);
        }
    };
    each(&quantiles[0], &mut rows, &|r, v| r.latency_ms_p50 = Some(v));
    each(&quantiles[1], &mut rows, &|r, v| r.latency_ms_p95 = Some(v));
    each(&quantiles[2], &mut rows, &|r, v| r.latency_ms_p99 = Some(v));
    each(&conns, &mut rows, &|r, v| r.tcp_connections = v);
    each(&read, &mut rows, &|r, v| r.read_bytes_per_sec = v / secs);
    each(&write, &mut rows, &|r, v| r.write_bytes_per_sec = v / secs);
    for (k, row) in rows.iter_mut() {
        row.rps = row.requests / secs;
        if row.requests > 0.0 {
            row.success_rate = Some(success.get(k).copied().unwrap_or(0.0) / row.requests);
            row.mtls_rate = Some(mtls.get(k).copied().unwrap_or(0.0) / row.requests);
        }
    }
    Ok(rows)
}
