//! The built-in metrics store: knit-control scrapes every meshed workload's proxy and keeps a
//! bounded window of the golden-metric series, labelled as Prometheus would label them after
//! Linkerd's relabelling (`namespace`, `deployment`, `pod`). Outbound series name their
//! destination with the `dst_*` labels the proxy takes from discovery, as Prometheus sees them.
//!
//! Memory: one entry per series (its labels, about 300 bytes) and one 16-byte sample per scrape
//! within the retention. Series of a target that is gone, or that stopped appearing, are dropped
//! once older than the retention.

use super::prom;
use crate::resources::ExternalWorkload;
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The annotation naming the port of a workload's proxy admin server (metrics).
pub const ADMIN_PORT_ANNOTATION: &str = "knit.dev/proxy-admin-port";
/// The annotation naming the port of its tap server (default 4190).
pub const TAP_PORT_ANNOTATION: &str = "knit.dev/proxy-tap-port";

/// The families a stat, an edge or a Grafana panel reads. Everything else is not stored.
pub const FAMILIES: [&str; 14] = [
    "response_total",
    "response_latency_ms_bucket",
    "tcp_open_connections",
    "tcp_read_bytes_total",
    "tcp_write_bytes_total",
    "identity_cert_expiration_timestamp_seconds",
    "outbound_http_route_request_statuses_total",
    "outbound_http_route_request_duration_seconds_bucket",
    "inbound_http_authz_allow_total",
    "inbound_http_authz_deny_total",
    "outbound_tcp_route_open_total",
    "outbound_tcp_route_close_total",
    "outbound_tls_route_open_total",
    "outbound_tls_route_close_total",
];

/// The proxy labels kept; the address labels are not (`dst_*` name the destination).
const KEPT_LABELS: [&str; 30] = [
    "direction",
    "authority",
    "tls",
    "client_id",
    "server_id",
    "no_tls_reason",
    "classification",
    "status_code",
    "le",
    "peer",
    "dst_namespace",
    "dst_service",
    "dst_deployment",
    "dst_pod",
    // Mirrored and federated Services: the linked cluster, and the Service there.
    "dst_target_cluster",
    "dst_target_service",
    "http_status",
    "error",
    "parent_kind",
    "parent_namespace",
    "parent_name",
    "parent_port",
    "route_kind",
    "route_namespace",
    "route_name",
    "srv_kind",
    "srv_name",
    "authz_kind",
    "authz_name",
    "hostname",
];

/// A proxy to scrape, and the labels its series get.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub admin: SocketAddr,
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    /// The identity its proxy proves, when meshed.
    pub identity: Option<String>,
    /// Its proxy's tap server.
    pub tap: SocketAddr,
}

impl Target {
    /// The workload's proxy, if it declares an admin port and has an IP.
    pub fn of(w: &ExternalWorkload) -> Option<Self> {
        let port: u16 = w.metadata.annotations.get(ADMIN_PORT_ANNOTATION)?.parse().ok()?;
        let ip = w.spec.workload_ips.first()?.ip;
        Some(Self {
            admin: SocketAddr::new(ip, port),
            namespace: w.metadata.namespace.clone(),
            deployment: w.deployment().to_string(),
            pod: w.metadata.name.clone(),
            identity: w.spec.mesh_tls.as_ref().map(|m| m.identity.clone()),
            tap: SocketAddr::new(ip, w.metadata.annotations.get(TAP_PORT_ANNOTATION).and_then(|p| p.parse().ok()).unwrap_or(4190)),
        })
    }

    /// Its name as a resource of `kind`; `None` for the kinds that are no proxy's own.
    pub fn name(&self, kind: super::stat::Kind) -> Option<&str> {
        use super::stat::Kind;
        match kind {
            Kind::Namespace => Some(&self.namespace),
            Kind::Deployment => Some(&self.deployment),
            Kind::Pod => Some(&self.pod),
            Kind::Service | Kind::Server | Kind::AuthorizationPolicy | Kind::HttpRoute => None,
        }
    }

    fn labels(&self) -> [(&'static str, &str); 3] {
        [("namespace", &self.namespace), ("deployment", &self.deployment), ("pod", &self.pod)]
    }
}

/// How a target's last scrape went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    pub up: bool,
    pub error: Option<String>,
    pub series: usize,
}

/// A series' labels (`__name__` included), sorted by name, their strings shared across series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelSet(Arc<[(Arc<str>, Arc<str>)]>);

impl LabelSet {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name)).ok().map(|i| &*self.0[i].1)
    }

    /// The value of `name` as a shared string (empty when absent), for grouping without copies.
    pub fn shared(&self, name: &str) -> Arc<str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name)).ok().map_or_else(|| Arc::from(""), |i| self.0[i].1.clone())
    }
}

/// One family's series: by target and labels, the samples.
type Family = HashMap<(SocketAddr, LabelSet), VecDeque<(Instant, f64)>>;

#[derive(Default)]
struct Inner {
    targets: Vec<Target>,
    health: HashMap<SocketAddr, Health>,
    /// Every label name and value, once.
    strings: std::collections::HashSet<Arc<str>>,
    /// By family, then by target and labels: the samples.
    series: HashMap<Arc<str>, Family>,
    /// When each target was last scraped: a series new since then started from zero.
    last_scrape: HashMap<SocketAddr, Instant>,
}

impl Inner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }
}

pub struct Store {
    retention: Duration,
    inner: Mutex<Inner>,
    /// Completed scrape rounds: answers computed in one round hold until the next.
    rounds: std::sync::atomic::AtomicU64,
    /// When the last round completed, in milliseconds since the Unix epoch (0: none yet).
    round_ended_ms: std::sync::atomic::AtomicU64,
}

/// One series as a query sees it.
pub struct View<'a> {
    pub labels: &'a LabelSet,
    samples: &'a VecDeque<(Instant, f64)>,
}

impl View<'_> {
    /// The counter's increase over `window` ending at `now`, from the last sample at or before
    /// the window's start (or the first sample) to the newest; a counter that went down was
    /// reset and counts from zero. No extrapolation.
    /// Samples taken after `now` are not counted.
    pub fn increase(&self, now: Instant, window: Duration) -> f64 {
        let start = now.checked_sub(window).unwrap_or(now);
        let from = self.samples.iter().rposition(|(t, _)| *t <= start).unwrap_or(0);
        let mut prev = self.samples[from].1;
        let mut total = 0.0;
        for &(_, v) in self.samples.iter().skip(from + 1).take_while(|(t, _)| *t <= now) {
            total += if v >= prev { v - prev } else { v };
            prev = v;
        }
        total
    }

    /// The newest value taken at or before `now`.
    pub fn latest(&self, now: Instant) -> f64 {
        self.samples.iter().rev().find(|(t, _)| *t <= now).map_or(0.0, |s| s.1)
    }
}

impl Store {
    pub fn new(retention: Duration) -> Self {
        Self { retention, inner: Mutex::new(Inner::default()), rounds: Default::default(), round_ended_ms: Default::default() }
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut inner = self.lock();
        inner.health.retain(|a, _| targets.iter().any(|t| t.admin == *a));
        inner.targets = targets;
    }

    pub fn targets(&self) -> Vec<(Target, Health)> {
        let inner = self.lock();
        inner.targets.iter().map(|t| (t.clone(), inner.health.get(&t.admin).cloned().unwrap_or_default())).collect()
    }

    /// Records one scrape of `target` taken at `at`: its text, or why it failed. The text is
    /// parsed before the store is locked, so queries wait only for the insertion.
    pub fn record(&self, target: &Target, at: Instant, scraped: Result<String, String>) {
        let text = match scraped {
            Ok(text) => text,
            Err(error) => {
                self.lock().health.insert(target.admin, Health { up: false, error: Some(error), series: 0 });
                return;
            }
        };
        // Series that differ only in labels not kept (`error`, the address labels) are summed.
        let mut scraped: HashMap<Vec<(&str, String)>, f64> = HashMap::new();
        for sample in prom::parse(&text) {
            let Some(name) = FAMILIES.iter().find(|f| **f == sample.name) else { continue };
            let mut labels: Vec<(&str, String)> = Vec::with_capacity(16);
            for (k, v) in &sample.labels {
                if let Some(kept) = KEPT_LABELS.iter().find(|l| **l == k) {
                    labels.push((kept, v.clone()));
                }
            }
            labels.extend(target.labels().map(|(k, v)| (k, v.to_string())));
            labels.push(("__name__", name.to_string()));
            labels.sort();
            *scraped.entry(labels).or_default() += sample.value;
        }
        let count = scraped.len();
        let mut inner = self.lock();
        let previous = inner.last_scrape.insert(target.admin, at);
        for (labels, value) in scraped {
            let set: Vec<(Arc<str>, Arc<str>)> = labels.iter().map(|(k, v)| (inner.intern(k), inner.intern(v))).collect();
            let set = LabelSet(set.into());
            let family = set.shared("__name__");
            let samples = inner.series.entry(family).or_default().entry((target.admin, set)).or_insert_with(|| {
                // New on a target seen before: it counted from zero since the last scrape.
                previous.map(|p| (p, 0.0)).into_iter().collect()
            });
            samples.push_back((at, value));
        }
        inner.health.insert(target.admin, Health { up: true, error: None, series: count });
    }

    /// Drops samples older than the retention (keeping one before it, the baseline of a full
    /// window) and series with none left.
    pub fn expire(&self, now: Instant) {
        let horizon = now.checked_sub(self.retention).unwrap_or(now);
        let mut inner = self.lock();
        for family in inner.series.values_mut() {
            family.retain(|_, samples| {
                while samples.len() > 1 && samples[1].0 <= horizon {
                    samples.pop_front();
                }
                samples.back().is_some_and(|(t, _)| *t > horizon)
            });
        }
        // Strings no series uses any more (gone workloads) are dropped.
        inner.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Calls `f` with every series of `name` whose labels match every `matchers` pair.
    pub fn each(&self, name: &str, matchers: &[(&str, &str)], mut f: impl FnMut(View<'_>)) {
        let inner = self.lock();
        for ((_, labels), samples) in inner.series.get(name).into_iter().flatten() {
            if matchers.iter().all(|(k, v)| labels.get(k) == Some(*v)) {
                f(View { labels, samples });
            }
        }
    }

    /// How many scrape rounds have completed: what a cached answer is valid for.
    pub fn round(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Acquire)
    }

    /// When the last scrape round completed (Unix seconds): how fresh an answer is.
    pub fn as_of(&self) -> Option<f64> {
        let ms = self.round_ended_ms.load(std::sync::atomic::Ordering::Acquire);
        (ms > 0).then(|| ms as f64 / 1000.0)
    }

    fn end_round(&self) {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.round_ended_ms.store(ms, std::sync::atomic::Ordering::Release);
        self.rounds.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn series_count(&self) -> usize {
        self.lock().series.values().map(HashMap::len).sum()
    }
}

/// Every workload's proxy that declares its admin port.
pub fn targets(index: &crate::index::Index) -> Vec<Target> {
    index.workloads_all().iter().filter_map(|w| Target::of(w)).collect()
}

/// Scrapes in flight at once.
const SCRAPE_CONCURRENCY: usize = 64;

/// Follows the index's workloads as targets and, with `scrape`, scrapes each every `interval`
/// (without it, Prometheus scrapes them and only the target list is kept).
pub async fn run(store: Arc<Store>, index: Arc<crate::index::Index>, interval: Duration, scrape: bool) {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets = targets(&index);
        store.set_targets(targets.clone());
        if !scrape {
            continue;
        }
        let scrapes = targets.into_iter().map(|t| {
            let client = client.clone();
            async move {
                let uri = format!("http://{}/metrics", t.admin);
                let req = http::Request::get(uri).body(Empty::new()).expect("a URI from a socket address is valid");
                let fetch = async {
                    let rsp = client.request(req).await.map_err(|e| e.to_string())?;
                    if !rsp.status().is_success() {
                        return Err(format!("HTTP {}", rsp.status()));
                    }
                    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
                };
                // Head and body within the time limit: a proxy that stalls costs one slot, not the round.
                let result = tokio::time::timeout(interval.min(Duration::from_secs(5)), fetch).await.unwrap_or_else(|_| Err("timed out".to_string()));
                (t, result)
            }
        });
        // A bounded number at once (thousands of targets must not mean thousands of sockets),
        // each recorded as it arrives, with its own time.
        let mut results = futures_util::stream::iter(scrapes).buffer_unordered(SCRAPE_CONCURRENCY);
        while let Some((target, result)) = results.next().await {
            if let Err(e) = &result {
                tracing::debug!(target = %target.admin, pod = %target.pod, error = %e, "scrape failed");
            }
            store.record(&target, Instant::now(), result);
        }
        store.expire(Instant::now());
        store.end_round();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pod: &str, admin: u16) -> Target {
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        Target {
            admin: SocketAddr::new(ip, admin),
            namespace: "demo".into(),
            deployment: pod.into(),
            pod: pod.into(),
            identity: None,
            tap: SocketAddr::new(ip, 4190),
        }
    }

    fn sum_increase(store: &Store, name: &str, matchers: &[(&str, &str)], now: Instant, window: Duration) -> f64 {
        let mut total = 0.0;
        store.each(name, matchers, |v| total += v.increase(now, window));
        total
    }

    #[test]
    fn increases_count_resets_and_series_born_between_scrapes() {
        let store = Store::new(Duration::from_secs(60));
        let (web, books) = (target("web", 1), target("books", 2));
        store.set_targets(vec![web.clone(), books.clone()]);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let out = |n: u32, code: u16| {
            format!("response_total{{direction=\"outbound\",target_addr=\"127.0.0.1:20\",dst_deployment=\"books\",dst_pod=\"books\",dst_serviceaccount=\"books\",status_code=\"{code}\",classification=\"success\",tls=\"true\"}} {n}\n")
        };
        store.record(&web, at(0), Ok(out(10, 200)));
        // Two proxy series that differ only in a label not kept count as one.
        store.record(&web, at(10), Ok(out(20, 200) + &out(5, 200).replace("tls=", "error=\"x\",tls=") + &out(3, 201)));
        // A restart: the counter starts again.
        store.record(&web, at(20), Ok(out(4, 200) + &out(3, 201)));
        let now = at(20);
        assert_eq!(sum_increase(&store, "response_total", &[("deployment", "web"), ("status_code", "200")], now, Duration::from_secs(20)), 19.0);
        assert_eq!(sum_increase(&store, "response_total", &[("status_code", "201")], now, Duration::from_secs(20)), 3.0, "born between scrapes: from zero");
        assert_eq!(
            sum_increase(&store, "response_total", &[("dst_deployment", "books")], now, Duration::from_secs(10)),
            4.0,
            "the proxy's dst_* labels name the destination"
        );
        // As of an earlier moment (a view's snapshot), a later scrape is not seen.
        assert_eq!(sum_increase(&store, "response_total", &[("deployment", "web"), ("status_code", "200")], at(10), Duration::from_secs(10)), 15.0);
        store.expire(at(200));
        assert_eq!(store.series_count(), 0, "expired past the retention");
    }

    #[test]
    fn failures_and_unwanted_families_are_not_stored() {
        let store = Store::new(Duration::from_secs(60));
        let web = target("web", 1);
        store.record(&web, Instant::now(), Ok("process_cpu_seconds_total 3\nrequest_total{direction=\"inbound\"} 1\n".into()));
        assert_eq!(store.series_count(), 0);
        store.record(&web, Instant::now(), Err("connection refused".into()));
        store.set_targets(vec![web.clone()]);
        let (_, health) = store.targets().pop().unwrap();
        assert!(!health.up);
    }
}
