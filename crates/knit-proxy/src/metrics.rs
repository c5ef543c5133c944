//! Golden metrics with Linkerd's names and labels (`request_total`, `response_total`,
//! `response_latency_ms`, `tcp_*`), so existing queries and dashboards work unchanged, plus the
//! proxy's own detection and error counters and process metrics read at scrape time.
//!
//! Label sets are structs; each connection resolves its counters once and then only increments
//! atomics.

mod labels;
mod process;
pub mod route;

pub use labels::{Classification, Direction, HttpLabels, NoTlsReason, Peer, ResponseLabels, StatusLabels, TcpLabels, Tls};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::{Arc, Mutex};

/// Linkerd's latency buckets, in milliseconds.
const LATENCY_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0,
    30000.0, 40000.0, 50000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_MS.iter().copied())
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http: HttpMetrics,
    pub tcp: TcpMetrics,
    pub detect: DetectMetrics,
    pub identity: IdentityMetrics,
    pub route: route::RouteMetrics,
    pub trace: crate::trace::TraceMetrics,
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<StatusLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<labels::ErrorLabels, Counter>,
}

/// The golden-metric handles of one label set: its request counter, and the latency histograms
/// and response counters of the outcomes seen so far (a few; further ones take the families'
/// lookup). A connection keeps those of its last request ([`GoldenCache`]): outbound requests
/// on one connection usually share their labels, and then increment atomics instead of hashing
/// and comparing a label set (with its strings) in three families.
pub struct Golden {
    labels: HttpLabels,
    requests: Counter,
    latency_family: Family<StatusLabels, Histogram, fn() -> Histogram>,
    responses_family: Family<ResponseLabels, Counter>,
    latency: Mutex<Vec<(Option<u16>, Histogram)>>,
    responses: Mutex<Vec<(ResponseKey, Counter)>>,
}

/// A response's labels beyond its target's.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ResponseKey {
    status_code: Option<u16>,
    classification: Classification,
    grpc_status: Option<u32>,
    error: Option<&'static str>,
}

/// The outcomes a [`Golden`] (or a route's [`route::Handles`]) keeps handles for.
const OUTCOMES: usize = 8;

/// The handle of `key` in `seen`, created (and kept, while there is room) when missing.
pub(crate) fn kept<K: PartialEq, M: Clone>(seen: &Mutex<Vec<(K, M)>>, key: K, create: impl FnOnce() -> M) -> M {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = seen.iter().find(|(k, _)| *k == key) {
        return m.clone();
    }
    let m = create();
    if seen.len() < OUTCOMES {
        seen.push((key, m.clone()));
    }
    m
}

impl Golden {
    pub fn labels(&self) -> &HttpLabels {
        &self.labels
    }

    /// Counts a request.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Records the time to the response headers (or the failure) with `status_code`.
    pub fn latency(&self, status_code: Option<u16>, ms: f64) {
        let create = || self.latency_family.get_or_create(&StatusLabels { target: self.labels.clone(), status_code }).clone();
        kept(&self.latency, status_code, create).observe(ms);
    }

    /// Counts a finished response.
    pub fn response(&self, status_code: Option<u16>, classification: Classification, grpc_status: Option<u32>, error: Option<&'static str>) {
        let key = ResponseKey { status_code, classification, grpc_status, error };
        let create = || {
            let labels = ResponseLabels { status: StatusLabels { target: self.labels.clone(), status_code }, classification, grpc_status, error };
            self.responses_family.get_or_create(&labels).clone()
        };
        kept(&self.responses, key, create).inc();
    }
}

/// A connection's [`Golden`] handles of its last label set.
#[derive(Default)]
pub struct GoldenCache(Mutex<Option<Arc<Golden>>>);

impl HttpMetrics {
    /// The handles of `labels`: the connection's cached ones when the labels are the same,
    /// else resolved (and cached in their place).
    pub fn golden(&self, cache: &GoldenCache, labels: HttpLabels) -> Arc<Golden> {
        let mut cached = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = cached.as_ref().filter(|g| g.labels == labels) {
            return g.clone();
        }
        let g = Arc::new(Golden {
            requests: self.requests.get_or_create(&labels).clone(),
            labels,
            latency_family: self.latency.clone(),
            responses_family: self.responses.clone(),
            latency: Mutex::default(),
            responses: Mutex::default(),
        });
        *cached = Some(g.clone());
        g
    }
}

#[derive(Clone)]
pub struct TcpMetrics {
    pub open_total: Family<TcpLabels, Counter>,
    pub open_connections: Family<TcpLabels, Gauge>,
    pub read_bytes: Family<TcpLabels, Counter>,
    pub write_bytes: Family<TcpLabels, Counter>,
    pub close_total: Family<labels::CloseLabels, Counter>,
}

#[derive(Clone)]
pub struct IdentityMetrics {
    pub expiry: Gauge,
    pub refreshes: Counter,
    pub failures: Counter,
    pub handshake_failures: Family<labels::HandshakeLabels, Counter>,
    /// Changes of the trust-anchor bundle, by whether they could be used.
    pub anchor_reloads: Family<labels::ResultLabels, Counter>,
}

impl IdentityMetrics {
    pub fn refreshed(&self, expiry: std::time::SystemTime) {
        let secs = expiry.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.expiry.set(i64::try_from(secs).unwrap_or(i64::MAX));
        self.refreshes.inc();
    }

    pub fn failed(&self) {
        self.failures.inc();
    }

    pub fn anchors_reloaded(&self, ok: bool) {
        self.anchor_reloads.get_or_create(&labels::ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.handshake_failures.get_or_create(&labels::HandshakeLabels { direction, reason }).inc();
    }
}

#[derive(Clone)]
pub struct DetectMetrics {
    pub protocols: Family<labels::ProtocolLabels, Counter>,
    pub timeouts: Family<labels::DetectTimeoutLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
        };
        registry.register("request", "HTTP requests received", http.requests.clone());
        registry.register("response", "HTTP responses, counted when the response stream ends", http.responses.clone());
        registry.register("response_latency_ms", "Time from request to response headers, in milliseconds", http.latency.clone());
        registry.register("http_errors", "HTTP requests the proxy failed, by reason", http.errors.clone());
        let tcp = TcpMetrics {
            open_total: Family::default(),
            open_connections: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
            close_total: Family::default(),
        };
        registry.register("tcp_open", "TCP connections opened", tcp.open_total.clone());
        registry.register("tcp_open_connections", "TCP connections currently open", tcp.open_connections.clone());
        registry.register("tcp_read_bytes", "Bytes read from TCP peers", tcp.read_bytes.clone());
        registry.register("tcp_write_bytes", "Bytes written to TCP peers", tcp.write_bytes.clone());
        registry.register("tcp_close", "TCP connections closed", tcp.close_total.clone());
        let detect = DetectMetrics { protocols: Family::default(), timeouts: Family::default() };
        registry.register("tcp_detect_protocol", "Accepted connections by detected protocol", detect.protocols.clone());
        registry.register(
            "tcp_detect_timeout",
            "Connections handed to opaque forwarding because detection ran out of time (silent_client: the client sent nothing)",
            detect.timeouts.clone(),
        );
        let identity = IdentityMetrics {
            expiry: Gauge::default(),
            refreshes: Counter::default(),
            failures: Counter::default(),
            handshake_failures: Family::default(),
            anchor_reloads: Family::default(),
        };
        registry.register("identity_cert_expiration_timestamp_seconds", "When this proxy's certificate expires", identity.expiry.clone());
        registry.register("identity_cert_refreshes", "Certificates obtained from the identity service", identity.refreshes.clone());
        registry.register("identity_cert_refresh_failures", "Failed attempts to obtain a certificate", identity.failures.clone());
        registry.register("identity_trust_anchor_reloads", "Changes of the trust-anchor bundle, by result", identity.anchor_reloads.clone());
        registry.register("tls_handshake_failures", "Mesh TLS handshakes that failed, by reason", identity.handshake_failures.clone());
        let route = route::RouteMetrics::register(&mut registry);
        let trace = crate::trace::TraceMetrics::register(&mut registry);
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Self { registry: Arc::new(registry), http, tcp, detect, identity, route, trace }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and every label encoder here writes plain strings.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn labels_detect(direction: Direction, reason: &'static str) -> labels::DetectTimeoutLabels {
    labels::DetectTimeoutLabels { direction, reason }
}

pub fn labels_protocol(direction: Direction, p: &knit_core::detect::Protocol) -> labels::ProtocolLabels {
    use knit_core::detect::Protocol;
    let protocol = match p {
        Protocol::Http1 => "http/1",
        Protocol::Http2 => "http/2",
        Protocol::Tls { .. } => "tls",
        Protocol::TransportHeader => "transport_header",
        Protocol::Opaque => "opaque",
    };
    labels::ProtocolLabels { direction, protocol }
}

pub fn labels_close(tcp: TcpLabels, errno: Option<i32>) -> labels::CloseLabels {
    labels::CloseLabels { tcp, errno }
}

/// The TLS labels of a plaintext connection: inbound, the client sent no ClientHello; outbound,
/// discovery named no identity for the endpoint.
pub fn plaintext_tls(direction: Direction) -> Tls {
    match direction {
        Direction::Inbound => Tls::NoIdentity(NoTlsReason::NoTlsFromRemote),
        Direction::Outbound => Tls::NoIdentity(NoTlsReason::NotProvidedByServiceDiscovery),
    }
}

/// The labels of `http_errors_total` for `e`: its kind and who is to blame.
pub fn labels_error(direction: Direction, e: &crate::error::ProxyError) -> labels::ErrorLabels {
    let c = e.class();
    error_labels(direction, c.kind, c.blame)
}

/// The labels of `http_errors_total` for an error of `kind` (`rapid_reset`: a connection the
/// proxy closed for misbehaving).
pub fn error_labels(direction: Direction, error: &'static str, blame: crate::error::Blame) -> labels::ErrorLabels {
    labels::ErrorLabels { direction, error, blame: blame.as_str() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(addr: &str) -> HttpLabels {
        HttpLabels {
            direction: Direction::Outbound,
            authority: None,
            target_addr: addr.parse().unwrap(),
            tls: plaintext_tls(Direction::Outbound),
            dst: Default::default(),
            policy: None,
        }
    }

    fn sample(text: &str, prefix: &str, parts: &[&str]) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    #[test]
    fn a_connection_s_cached_golden_handles_count_into_its_requests_series() {
        let m = Metrics::new();
        let cache = GoldenCache::default();
        // Two endpoints in turn on one connection, and more outcomes than are kept.
        for i in 0..(OUTCOMES as u16 + 4) {
            for addr in ["10.0.0.1:80", "10.0.0.2:80"] {
                let g = m.http.golden(&cache, labels(addr));
                g.request();
                g.latency(Some(200 + i), 1.0);
                g.response(Some(200 + i), Classification::Success, None, None);
            }
        }
        let g = m.http.golden(&cache, labels("10.0.0.1:80"));
        g.response(None, Classification::Failure, None, Some("stream_cancelled"));
        let t = m.encode();
        let n = OUTCOMES as f64 + 4.0;
        for addr in ["10.0.0.1:80", "10.0.0.2:80"] {
            let a = format!("target_addr=\"{addr}\"");
            assert_eq!(sample(&t, "request_total{", &[&a]), n, "{t}");
            assert_eq!(sample(&t, "response_latency_ms_count{", &[&a]), n);
            assert_eq!(sample(&t, "response_total{", &[&a, "classification=\"success\""]), n);
            assert_eq!(sample(&t, "response_total{", &[&a, "status_code=\"211\""]), 1.0);
        }
        assert_eq!(sample(&t, "response_total{", &["error=\"stream_cancelled\"", "target_addr=\"10.0.0.1:80\""]), 1.0);
    }
}
