//! The built-in metrics store: knit-control scrapes every meshed workload's proxy and keeps a
//! bounded window of the golden-metric series, labelled as Prometheus would label them after
//! Linkerd's relabelling (`namespace`, `deployment`, `pod`). Outbound series name their
//! destination with the `dst_*` labels the proxy takes from discovery, as Prometheus sees them.
//!
//! Memory: one entry per series (its own labels, about 150 bytes: its family and its target's
//! labels are held once) and one 16-byte sample per scrape within the retention; about 640
//! bytes in all per series at 13 samples (bench/RESULTS.md). Series of a target that is gone,
//! or that stopped appearing, are dropped once older than the retention.

use super::prom;
use crate::resources::ExternalWorkload;
use std::{
    borrow::Cow,
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
}

/// How a target's last scrape went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    pub up: bool,
    pub error: Option<String>,
    pub series: usize,
}

/// A label name a query asks about, resolved once per query instead of once per series: one of
/// the target's labels, or an index into [`KEPT_LABELS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    Namespace,
    Deployment,
    Pod,
    Kept(u8),
    /// A label no stored series has.
    Unknown,
}

impl Label {
    pub fn of(name: &str) -> Self {
        match name {
            "namespace" => Label::Namespace,
            "deployment" => Label::Deployment,
            "pod" => Label::Pod,
            _ => KEPT_LABELS.iter().position(|l| *l == name).map_or(Label::Unknown, |i| Label::Kept(i as u8)),
        }
    }
}

/// The target a series was scraped from: the labels all of its series share, held once.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Owner {
    admin: SocketAddr,
    namespace: Arc<str>,
    deployment: Arc<str>,
    pod: Arc<str>,
}

/// A series' own labels: (index into [`KEPT_LABELS`], value), in that order, each value shared
/// across series. Its family and its target's labels are not repeated here.
type Labels = Box<[(u8, Arc<str>)]>;

/// One sample: nanoseconds from the store's epoch (negative before it) and the value.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: i64,
    value: f64,
}

/// A series as scraped, before it is stored: its family and its kept labels (borrowed from the
/// scraped text, unless escaped).
type Scraped<'a> = (&'static str, Vec<(u8, Cow<'a, str>)>);

/// One family's series: by target and labels, the samples.
type Family = HashMap<(Arc<Owner>, Labels), VecDeque<Sample>>;

#[derive(Default)]
struct Inner {
    targets: Vec<Target>,
    health: HashMap<SocketAddr, Health>,
    /// Every label value, once.
    strings: std::collections::HashSet<Arc<str>>,
    /// Each target's labels, shared by its series.
    owners: HashMap<SocketAddr, Arc<Owner>>,
    /// By family (one of [`FAMILIES`]), then by target and labels: the samples.
    series: HashMap<&'static str, Family>,
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

    /// The labels of `target`'s series: the ones it had, unless they changed.
    fn owner(&mut self, target: &Target) -> Arc<Owner> {
        let same = |o: &Owner| *o.namespace == *target.namespace && *o.deployment == *target.deployment && *o.pod == *target.pod;
        if let Some(owner) = self.owners.get(&target.admin).filter(|o| same(o)) {
            return owner.clone();
        }
        let owner = Arc::new(Owner {
            admin: target.admin,
            namespace: self.intern(&target.namespace),
            deployment: self.intern(&target.deployment),
            pod: self.intern(&target.pod),
        });
        self.owners.insert(target.admin, owner.clone());
        owner
    }
}

pub struct Store {
    retention: Duration,
    /// What sample times count from.
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Completed scrape rounds: answers computed in one round hold until the next.
    rounds: std::sync::atomic::AtomicU64,
    /// When the last round completed, in milliseconds since the Unix epoch (0: none yet).
    round_ended_ms: std::sync::atomic::AtomicU64,
}

/// `at` in nanoseconds from `epoch`, negative before it.
fn since(epoch: Instant, at: Instant) -> i64 {
    match at.checked_duration_since(epoch) {
        Some(after) => after.as_nanos() as i64,
        None => -((epoch - at).as_nanos() as i64),
    }
}

/// The value of a label a series lacks.
static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

/// One series as a query sees it.
pub struct View<'a> {
    owner: &'a Owner,
    labels: &'a [(u8, Arc<str>)],
    samples: &'a VecDeque<Sample>,
    epoch: Instant,
}

impl<'a> View<'a> {
    /// The value of `label`, shared with the store.
    pub fn value(&self, label: Label) -> Option<&'a Arc<str>> {
        match label {
            Label::Namespace => Some(&self.owner.namespace),
            Label::Deployment => Some(&self.owner.deployment),
            Label::Pod => Some(&self.owner.pod),
            Label::Kept(i) => self.labels.iter().find(|(k, _)| *k == i).map(|(_, v)| v),
            Label::Unknown => None,
        }
    }

    /// The value of `label` as a shared string (empty when absent), for grouping without copies.
    pub fn shared(&self, label: Label) -> Arc<str> {
        self.value(label).unwrap_or(&EMPTY).clone()
    }

    /// The counter's increase over `window` ending at `now`, from the last sample at or before
    /// the window's start (or the first sample) to the newest; a counter that went down was
    /// reset and counts from zero. No extrapolation.
    /// Samples taken after `now` are not counted.
    pub fn increase(&self, now: Instant, window: Duration) -> f64 {
        let now = since(self.epoch, now);
        let start = now.saturating_sub(window.as_nanos() as i64);
        let from = self.samples.iter().rposition(|s| s.at <= start).unwrap_or(0);
        let mut prev = self.samples[from].value;
        let mut total = 0.0;
        for s in self.samples.iter().skip(from + 1).take_while(|s| s.at <= now) {
            total += if s.value >= prev { s.value - prev } else { s.value };
            prev = s.value;
        }
        total
    }

    /// The newest value taken at or before `now`.
    pub fn latest(&self, now: Instant) -> f64 {
        let now = since(self.epoch, now);
        self.samples.iter().rev().find(|s| s.at <= now).map_or(0.0, |s| s.value)
    }
}

impl Store {
    pub fn new(retention: Duration) -> Self {
        Self { retention, epoch: Instant::now(), inner: Mutex::new(Inner::default()), rounds: Default::default(), round_ended_ms: Default::default() }
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
        let mut scraped: HashMap<Scraped, f64> = HashMap::new();
        for sample in prom::lines(&text) {
            let Some(family) = FAMILIES.iter().find(|f| **f == sample.name) else { continue };
            let mut labels = Vec::new();
            let parsed = sample.labels(|k, v| {
                if let Some(kept) = KEPT_LABELS.iter().position(|l| *l == k) {
                    labels.push((kept as u8, v));
                }
            });
            if parsed.is_none() {
                continue;
            }
            labels.sort_unstable();
            *scraped.entry((family, labels)).or_default() += sample.value;
            if scraped.len() > MAX_SERIES_PER_TARGET {
                let error = format!("more than {MAX_SERIES_PER_TARGET} series to keep: refused");
                self.lock().health.insert(target.admin, Health { up: false, error: Some(error), series: 0 });
                return;
            }
        }
        let count = scraped.len();
        let mut inner = self.lock();
        let previous = inner.last_scrape.insert(target.admin, at).map(|p| since(self.epoch, p));
        let owner = inner.owner(target);
        let at = since(self.epoch, at);
        for ((family, labels), value) in scraped {
            let labels: Labels = labels.iter().map(|(k, v)| (*k, inner.intern(v))).collect();
            let samples = inner.series.entry(family).or_default().entry((owner.clone(), labels)).or_insert_with(|| {
                // New on a target seen before: it counted from zero since the last scrape.
                previous.map(|at| Sample { at, value: 0.0 }).into_iter().collect()
            });
            samples.push_back(Sample { at, value });
        }
        inner.health.insert(target.admin, Health { up: true, error: None, series: count });
    }

    /// Drops samples older than the retention (keeping one before it, the baseline of a full
    /// window) and series with none left.
    pub fn expire(&self, now: Instant) {
        let horizon = since(self.epoch, now).saturating_sub(self.retention.as_nanos() as i64);
        let mut inner = self.lock();
        for family in inner.series.values_mut() {
            family.retain(|_, samples| {
                while samples.len() > 1 && samples[1].at <= horizon {
                    samples.pop_front();
                }
                samples.back().is_some_and(|s| s.at > horizon)
            });
        }
        // Targets and strings no series uses any more (gone workloads) are dropped.
        inner.owners.retain(|_, o| Arc::strong_count(o) > 1);
        inner.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Calls `f` with every series of `name` whose labels match every `matchers` pair.
    pub fn each(&self, name: &str, matchers: &[(&str, &str)], mut f: impl FnMut(View<'_>)) {
        let matchers: Vec<(Label, &str)> = matchers.iter().map(|(k, v)| (Label::of(k), *v)).collect();
        let inner = self.lock();
        for ((owner, labels), samples) in inner.series.get(name).into_iter().flatten() {
            let view = View { owner, labels, samples, epoch: self.epoch };
            if matchers.iter().all(|(k, v)| view.value(*k).is_some_and(|s| **s == **v)) {
                f(view);
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

/// The most series the store keeps of one target (the demo's busiest proxy has 224): a scrape
/// with more is refused, so that no one proxy can fill knit-control's memory.
const MAX_SERIES_PER_TARGET: usize = 20_000;

/// Scrapes in flight at once.
const SCRAPE_CONCURRENCY: usize = 64;

/// The most a proxy's `/metrics` may send (Linkerd's proxy, at ~1,700 series, sends ~300 KB).
const MAX_SCRAPE_BYTES: usize = 4 << 20;

/// Scrapes one proxy's `/metrics` on a connection of its own, closed once read: thousands of
/// targets cost no sockets or buffers between rounds (a pooled keep-alive connection held about
/// 18 KB per target, more than its series). The caller bounds the time.
async fn scrape(admin: SocketAddr) -> Result<String, String> {
    let (status, body) = crate::client::get(admin, "/metrics", MAX_SCRAPE_BYTES).await?;
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    String::from_utf8(body.into()).map_err(|_| "metrics that are not UTF-8".to_string())
}

/// Follows the index's workloads as targets and, with `scrape`, scrapes each every `interval`
/// (without it, Prometheus scrapes them and only the target list is kept).
pub async fn run(store: Arc<Store>, index: Arc<crate::index::Index>, interval: Duration, scrape: bool) {
    use futures_util::StreamExt;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets = targets(&index);
        store.set_targets(targets.clone());
        if !scrape {
            continue;
        }
        let scrapes = targets.into_iter().map(|t| async move {
            // Head and body within the time limit: a proxy that stalls costs one slot, not the round.
            let result =
                tokio::time::timeout(interval.min(Duration::from_secs(5)), self::scrape(t.admin)).await.unwrap_or_else(|_| Err("timed out".to_string()));
            (t, result)
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
        let inner = store.lock();
        assert!(inner.owners.is_empty() && inner.strings.is_empty(), "nothing is held for gone series");
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

        let flood: String = (0..=MAX_SERIES_PER_TARGET).map(|i| format!("response_total{{status_code=\"{i}\"}} 1\n")).collect();
        store.record(&web, Instant::now(), Ok(flood));
        assert_eq!(store.series_count(), 0, "a proxy with too many series is refused, not stored");
        let (_, health) = store.targets().pop().unwrap();
        assert_eq!(health.error.as_deref(), Some("more than 20000 series to keep: refused"));
    }

    /// A one-connection server answering with `head` and `body`, then holding the socket open.
    async fn serve_once(head: String, body: Vec<u8>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            assert!(std::str::from_utf8(&req[..n]).unwrap().starts_with("GET /metrics HTTP/1.1\r\n"));
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&body).await;
            // Keep-alive regardless of `Connection: close`: the scrape ends with the body.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_scrape_reads_one_response_and_refuses_oversized_or_binary_ones() {
        let text = "response_total{direction=\"inbound\"} 1\n";
        let ok = serve_once(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", text.len()), text.into()).await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), scrape(ok)).await.unwrap().unwrap(), text);

        // A proxy that streams without end is cut off at the limit, not buffered.
        let huge = serve_once("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into(), {
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            chunk.repeat(MAX_SCRAPE_BYTES / (64 << 10) + 2).into_bytes()
        })
        .await;
        let err = tokio::time::timeout(Duration::from_secs(5), scrape(huge)).await.unwrap().unwrap_err();
        assert!(err.contains("length limit"), "{err}");

        let binary = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".into(), vec![0xff, 0xfe]).await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), scrape(binary)).await.unwrap().unwrap_err(), "metrics that are not UTF-8");

        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(scrape(refused).await.is_err());
    }
}
