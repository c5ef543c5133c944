//! Distributed tracing, as Linkerd's proxy does it (LINKERD-WIRE.md §14): the proxy joins the
//! traces requests carry and never starts one, unless `KNIT_PROXY_TRACE_SAMPLE_UNTRACED` asks
//! it to start a share of the untraced requests that enter the mesh (a Knit extension, off by
//! default). With a collector configured, each span point gives the request a new span id,
//! written into the forwarded headers, and records a span when the trace is sampled:
//! - the server side of each direction (`http::forward::handle`, kind Server), and
//! - each attempt sent to an endpoint (`http::forward::call_endpoint`, kind Client),
//!
//! so a meshed hop gives four spans, each the parent of the next. Spans are queued (bounded,
//! `KNIT_PROXY_TRACE_QUEUE`; a full queue drops and counts) and exported in batches over OTLP
//! gRPC ([`export`]). Without a collector nothing is read or written: the headers pass as they
//! came.

pub mod context;
pub mod export;

use crate::{config::ControlAddr, metrics::Direction};
use context::Context;
use http::{header, Request};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use std::{net::SocketAddr, path::PathBuf, time::Duration, time::SystemTime};
use tokio::sync::mpsc;

/// `KNIT_PROXY_TRACE_*` (or Linkerd's `LINKERD2_PROXY_TRACE_*`): on when a collector is named.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TraceConfig {
    /// The OTLP gRPC collector; with a TLS name (`..._TRACE_COLLECTOR_SVC_NAME`), reached over
    /// mesh TLS with this proxy's certificate, and it must prove that identity.
    pub collector: ControlAddr,
    /// `service.name` of the resource, before the labels file and the extra attributes.
    pub service_name: String,
    /// The pod's labels (downward API: `key="value"` per line), read at start-up.
    pub attributes_path: Option<PathBuf>,
    /// `..._TRACE_EXTRA_ATTRIBUTES` (`key=value` per line).
    pub extra_attributes: Vec<(String, String)>,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`, percent-encoded), which wins over all.
    pub otel_resource_attributes: Vec<(String, String)>,
    /// `HOSTNAME`, the resource's `host.name`.
    pub host_name: Option<String>,
    /// The share (0 to 1) of untraced requests entering the mesh here that start a trace.
    pub sample_untraced: f64,
    /// Spans waiting for export; beyond it new spans are dropped (and counted).
    pub queue: usize,
    /// Spans per export request.
    pub max_batch: usize,
    /// How long a span waits for its batch to fill.
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub flush_interval: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub export_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, waiting for export.
#[derive(Debug)]
pub struct SpanData {
    /// The trace, this span's id and the trace flags.
    pub context: Context,
    /// The span the request came from; none for a trace this proxy started.
    pub parent: Option<[u8; 8]>,
    /// The parent is in another process (a server span's).
    pub remote_parent: bool,
    pub kind: Kind,
    /// The request's path, as Linkerd names its spans.
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// The request failed (a 5xx from a server span, a 4xx or 5xx or no response from a client).
    pub error: bool,
}

/// A span being timed; [`Tracer::finish`] queues it.
pub struct Started(SpanData);

/// The proxy's trace counters (`trace_*`).
#[derive(Clone)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub exports: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl TraceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self { exported: Counter::default(), dropped: Family::default(), exports: Family::default() };
        registry.register("trace_spans_exported", "Spans the trace collector accepted", m.exported.clone());
        registry.register(
            "trace_spans_dropped",
            "Spans lost: queue_full (the collector is slower than the traffic), export_failed, rejected (by the collector)",
            m.dropped.clone(),
        );
        registry.register("trace_exports", "Export requests to the trace collector, by result", m.exports.clone());
        m
    }

    pub fn drop_spans(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&vec![("reason", reason)]).inc_by(n);
    }
}

/// Where spans go; shared by both directions.
pub struct Tracer {
    queue: mpsc::Sender<SpanData>,
    metrics: TraceMetrics,
    sample_untraced: f64,
}

/// Who is on the other side of a span: the client (server spans) or the endpoint (client spans).
pub struct Peer<'a> {
    pub addr: SocketAddr,
    pub identity: Option<&'a str>,
}

impl Tracer {
    pub fn new(queue: mpsc::Sender<SpanData>, metrics: TraceMetrics, sample_untraced: f64) -> Self {
        Self { queue, metrics, sample_untraced }
    }

    /// The server side of a request: joins its trace (or, when `may_start` and the sampling
    /// share says so, starts one), and writes the new span id into the request's headers.
    pub fn server<B>(&self, req: &mut Request<B>, direction: Direction, peer: Peer<'_>, may_start: bool) -> Option<Started> {
        let (context, parent) = match Context::extract(req.headers()) {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None if may_start && self.sample_untraced > 0.0 && fastrand::f64() < self.sample_untraced => (Context::root(), None),
            None => return None,
        };
        context.inject(req.headers_mut());
        context.sampled().then(|| Started(span(req, context, parent, Kind::Server, direction, peer)))
    }

    /// One attempt sent to an endpoint: a child of the server span (whose id the request's
    /// headers carry), its own id written for the next hop.
    pub fn client<B>(&self, req: &mut Request<B>, direction: Direction, peer: Peer<'_>) -> Option<Started> {
        let parent = Context::extract(req.headers())?;
        let context = parent.child();
        context.inject(req.headers_mut());
        context.sampled().then(|| Started(span(req, context, Some(parent.span_id), Kind::Client, direction, peer)))
    }

    /// Ends a span with the response's status, or the proxy's error (its metric label), and
    /// queues it; a full queue drops it.
    pub fn finish(&self, Started(mut span): Started, status: Option<http::StatusCode>, error: Option<&'static str>) {
        span.end = SystemTime::now();
        if let Some(s) = status {
            span.attributes.push(("http.response.status_code", Value::Int(i64::from(s.as_u16()))));
        }
        let failed_status = status.is_some_and(|s| s.is_server_error() || (span.kind == Kind::Client && s.is_client_error()));
        match (error, status) {
            (Some(e), _) => span.attributes.push(("error.type", Value::Str(e.to_string()))),
            (None, Some(s)) if failed_status => span.attributes.push(("error.type", Value::Str(s.as_u16().to_string()))),
            _ => {}
        }
        span.error = error.is_some() || failed_status || status.is_none();
        if self.queue.try_send(span).is_err() {
            self.metrics.drop_spans("queue_full", 1);
        }
    }
}

/// The longest a header's attribute may be, and a URL's: whatever a client sends, a queued
/// span stays a few kilobytes (`KNIT_PROXY_TRACE_QUEUE` of them at most).
const MAX_HEADER_ATTR: usize = 256;
const MAX_URL_ATTR: usize = 1024;

/// `s`, cut at a character boundary to at most `max` bytes.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A span's attributes, after OpenTelemetry's HTTP conventions and Linkerd's choice of them;
/// what the client chose is bounded in length.
fn span<B>(req: &Request<B>, context: Context, parent: Option<[u8; 8]>, kind: Kind, direction: Direction, peer: Peer<'_>) -> SpanData {
    let h = req.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let uri = req.uri();
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = header("x-forwarded-host").or(uri.authority().map(|a| a.as_str())).or(header(header::HOST.as_str()));
    let mut attributes = vec![
        ("http.request.method", Value::Str(req.method().to_string())),
        ("url.scheme", Value::Str(scheme.to_string())),
        ("url.path", Value::Str(bounded(uri.path(), MAX_URL_ATTR))),
        ("network.transport", Value::Str("tcp".into())),
        ("network.peer.address", Value::Str(peer.addr.ip().to_canonical().to_string())),
        ("network.peer.port", Value::Int(i64::from(peer.addr.port()))),
        ("direction", Value::Str(direction.as_str().into())),
    ];
    if let Some(q) = uri.query() {
        attributes.push(("url.query", Value::Str(bounded(q, MAX_URL_ATTR))));
    }
    if let Some(a) = authority {
        // Credentials in the authority never reach the collector.
        let host_port = a.rsplit_once('@').map_or(a, |(_, hp)| hp);
        let redacted = if a.contains('@') { format!("REDACTED:REDACTED@{host_port}") } else { a.to_string() };
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        attributes.push(("url.full", Value::Str(bounded(&format!("{scheme}://{redacted}{pq}"), MAX_URL_ATTR))));
        if let Ok(parsed) = http::uri::Authority::try_from(host_port) {
            attributes.push(("server.address", Value::Str(bounded(parsed.host(), MAX_HEADER_ATTR))));
            let port = parsed.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
            attributes.push(("server.port", Value::Int(i64::from(port))));
        }
    }
    for (name, attr) in [
        (header::USER_AGENT.as_str(), "user_agent.original"),
        (header::CONTENT_LENGTH.as_str(), "http.request.header.content-length"),
        (header::CONTENT_TYPE.as_str(), "http.request.header.content-type"),
        ("l5d-orig-proto", "http.request.header.l5d-orig-proto"),
    ] {
        if let Some(v) = header(name) {
            attributes.push((attr, Value::Str(bounded(v, MAX_HEADER_ATTR))));
        }
    }
    if let Some(id) = peer.identity {
        attributes.push(("knit.peer.identity", Value::Str(id.to_string())));
    }
    let now = SystemTime::now();
    SpanData {
        context,
        parent,
        remote_parent: kind == Kind::Server && parent.is_some(),
        kind,
        name: bounded(uri.path(), MAX_URL_ATTR),
        start: now,
        end: now,
        attributes,
        error: false,
    }
}

/// `key=value` per line (`key="value"`: quotes stripped), as Linkerd reads the labels file and
/// the extra attributes; lines without `=` are skipped.
pub fn parse_lines(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded.
pub fn parse_otel_resource_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("{p:?} is not key=value"))?;
            Ok((k.trim().to_string(), percent_decode(v.trim()).ok_or_else(|| format!("{v:?} is not percent-encoded UTF-8"))?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The resource every span is exported under: process and host, then, each overriding the
/// previous, `service.name`, the labels file, the extra attributes and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(cfg: &TraceConfig) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> = vec![("process.pid".into(), std::process::id().to_string())];
    if let Some(h) = &cfg.host_name {
        attrs.push(("host.name".into(), h.clone()));
    }
    attrs.push(("service.name".into(), cfg.service_name.clone()));
    if let Some(path) = &cfg.attributes_path {
        match std::fs::read_to_string(path) {
            Ok(s) => attrs.extend(parse_lines(&s)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "the trace attributes file cannot be read; spans go without the pod's labels"),
        }
    }
    attrs.extend(cfg.extra_attributes.iter().cloned());
    attrs.extend(cfg.otel_resource_attributes.iter().cloned());
    // The last value of each key wins; the order of first appearance stays.
    let mut merged: Vec<(String, String)> = Vec::with_capacity(attrs.len());
    for (k, v) in attrs {
        match merged.iter_mut().find(|(mk, _)| *mk == k) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sample: f64) -> (Tracer, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(2);
        (Tracer::new(tx, TraceMetrics::register(&mut Registry::default()), sample), rx)
    }

    const PEER: Peer<'static> = Peer { addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000), identity: Some("web.test") };

    #[test]
    fn server_then_client_chain_their_span_ids() {
        let (t, mut rx) = tracer(0.0);
        let mut req = Request::get("http://user:pw@books:8080/a?b=1")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("user-agent", "curl")
            .body(())
            .unwrap();
        let server = t.server(&mut req, Direction::Outbound, PEER, false).unwrap();
        let client = t.client(&mut req, Direction::Outbound, PEER).unwrap();
        t.finish(server, Some(http::StatusCode::OK), None);
        t.finish(client, Some(http::StatusCode::SERVICE_UNAVAILABLE), None);
        let (s, c) = (rx.try_recv().unwrap(), rx.try_recv().unwrap());
        assert_eq!(s.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        assert_eq!(c.parent, Some(s.context.span_id));
        assert_eq!(Context::extract(req.headers()).unwrap().span_id, c.context.span_id, "the next hop's parent is the client span");
        assert!(s.remote_parent && !c.remote_parent && !s.error && c.error);
        let attr = |span: &SpanData, k: &str| span.attributes.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(attr(&s, "url.full"), Some(Value::Str("http://REDACTED:REDACTED@books:8080/a?b=1".into())));
        assert_eq!(attr(&s, "server.address"), Some(Value::Str("books".into())));
        assert_eq!(attr(&s, "server.port"), Some(Value::Int(8080)));
        assert_eq!(attr(&s, "url.query"), Some(Value::Str("b=1".into())));
        assert_eq!(attr(&c, "error.type"), Some(Value::Str("503".into())));
        assert_eq!(s.name, "/a");
    }

    #[test]
    fn what_the_client_chose_is_bounded() {
        let (t, mut rx) = tracer(0.0);
        let long = "u".repeat(5000);
        let mut req = Request::get(format!("/{}?q={}", "a".repeat(5000), "b".repeat(5000)))
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("user-agent", long.as_str())
            .header("host", "h")
            .body(())
            .unwrap();
        let s = t.server(&mut req, Direction::Inbound, PEER, false).unwrap();
        t.finish(s, Some(http::StatusCode::OK), None);
        let span = rx.try_recv().unwrap();
        assert!(span.name.len() <= MAX_URL_ATTR);
        for (k, v) in &span.attributes {
            if let Value::Str(s) = v {
                assert!(s.len() <= MAX_URL_ATTR, "{k}: {} bytes", s.len());
            }
        }
        let ua = span.attributes.iter().find(|(k, _)| *k == "user_agent.original").unwrap();
        assert!(matches!(&ua.1, Value::Str(s) if s.len() == MAX_HEADER_ATTR));
        // Cut at a character boundary.
        assert_eq!(bounded(&"é".repeat(10), 5), "éé");
    }

    #[test]
    fn unsampled_traces_are_rewritten_but_not_recorded_and_untraced_pass_untouched() {
        let (t, mut rx) = tracer(0.0);
        let mut req = Request::get("/").header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").body(()).unwrap();
        assert!(t.server(&mut req, Direction::Inbound, PEER, true).is_none());
        assert_ne!(req.headers()["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let mut plain = Request::get("/").body(()).unwrap();
        assert!(t.server(&mut plain, Direction::Outbound, PEER, true).is_none());
        assert!(plain.headers().is_empty());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn sampling_starts_traces_only_where_allowed_and_a_full_queue_drops() {
        let (t, mut rx) = tracer(1.0);
        let mut peer_req = Request::get("/").body(()).unwrap();
        assert!(t.server(&mut peer_req, Direction::Inbound, PEER, false).is_none());
        for _ in 0..3 {
            let mut req = Request::get("/").body(()).unwrap();
            let s = t.server(&mut req, Direction::Outbound, PEER, true).unwrap();
            assert!(req.headers().contains_key("traceparent"));
            t.finish(s, Some(http::StatusCode::OK), None);
        }
        assert!(rx.try_recv().unwrap().parent.is_none());
        let text = {
            let mut out = String::new();
            let mut r = Registry::default();
            r.register("trace_spans_dropped", "", t.metrics.dropped.clone());
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        assert!(text.contains("trace_spans_dropped_total{reason=\"queue_full\"} 1"), "{text}");
    }

    #[test]
    fn resource_attributes_merge_in_order() {
        let dir = std::env::temp_dir().join(format!("knit-trace-labels-{}", std::process::id()));
        std::fs::write(&dir, "app=\"books\"\nservice.name=\"from-labels\"\nnot a pair\n").unwrap();
        let cfg = TraceConfig {
            collector: ControlAddr { addr: "127.0.0.1:4317".into(), tls_name: None },
            service_name: "knit-proxy".into(),
            attributes_path: Some(dir.clone()),
            extra_attributes: parse_lines("k8s.pod.uid=123\napp=extra"),
            otel_resource_attributes: parse_otel_resource_attributes("deployment.environment=prod%20eu, app=otel").unwrap(),
            host_name: Some("books-0".into()),
            sample_untraced: 0.0,
            queue: 1,
            max_batch: 1,
            flush_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
        };
        let r = resource(&cfg);
        std::fs::remove_file(dir).unwrap();
        let get = |k: &str| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("service.name"), Some("from-labels"));
        assert_eq!(get("app"), Some("otel"));
        assert_eq!(get("k8s.pod.uid"), Some("123"));
        assert_eq!(get("deployment.environment"), Some("prod eu"));
        assert_eq!(get("host.name"), Some("books-0"));
        assert!(parse_otel_resource_attributes("novalue").is_err());
        assert!(parse_otel_resource_attributes("k=%zz").is_err());
    }
}
