//! The demo's trace collector: an OTLP gRPC receiver (OpenTelemetry's generated
//! `TraceService`) that keeps the spans of the last traces the demo's proxies export, and draws
//! one trace as a tree: each proxy's server and client spans, web's calls to books and authors
//! under its own.

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, KeyValue},
    trace::v1::{span::SpanKind, Span},
};
use std::{
    collections::{HashMap, VecDeque},
    fmt::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Traces kept; older ones are forgotten.
const KEPT: usize = 64;

/// A trace's spans, each with the `service.name` of the proxy that sent it, and when the last
/// one arrived.
type Trace = (Vec<(String, Span)>, Instant);

#[derive(Default)]
struct Store {
    traces: HashMap<Vec<u8>, Trace>,
    order: VecDeque<Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<Store>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut store = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.into_inner().resource_spans {
            let service = rs.resource.as_ref().and_then(|r| string(&r.attributes, "service.name")).unwrap_or_else(|| "?".into());
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let id = span.trace_id.clone();
                if !store.traces.contains_key(&id) {
                    store.order.push_back(id.clone());
                    if store.order.len() > KEPT {
                        if let Some(old) = store.order.pop_front() {
                            store.traces.remove(&old);
                        }
                    }
                }
                let entry = store.traces.entry(id).or_insert_with(|| (Vec::new(), Instant::now()));
                entry.0.push((service.clone(), span));
                entry.1 = Instant::now();
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

impl Collector {
    /// Serves OTLP on 127.0.0.1 until the process ends.
    pub async fn start() -> anyhow::Result<(SocketAddr, Self)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collector = Self::default();
        let incoming = futures_util::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(TraceServiceServer::new(collector.clone()), incoming));
        Ok((addr, collector))
    }

    /// The newest trace that has had no new span for `settled` and has at least `min_spans`.
    pub fn latest(&self, min_spans: usize, settled: Duration) -> Option<Vec<(String, Span)>> {
        let store = self.0.lock().unwrap_or_else(|p| p.into_inner());
        store
            .order
            .iter()
            .rev()
            .filter_map(|id| store.traces.get(id))
            .find(|(spans, last)| spans.len() >= min_spans && last.elapsed() >= settled)
            .map(|(s, _)| s.clone())
    }
}

/// The trace as an indented tree, children under their parent span, in start order.
pub fn render(spans: &[(String, Span)]) -> String {
    let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|(_, s)| s.span_id.as_slice()).collect();
    let mut out = String::new();
    let trace: String = spans.first().map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default();
    let start = spans.iter().map(|(_, s)| s.start_time_unix_nano).min().unwrap_or(0);
    let _ = writeln!(out, "trace {trace}: {} spans (one server and one client span per proxy hop)", spans.len());
    let _ = writeln!(out, "  {:<52} {:>9} {:>9}  PEER", "PROXY DIRECTION KIND REQUEST STATUS", "START_MS", "TOOK_MS");
    // Roots: spans whose parent is not in this trace (the first proxy's server span).
    let mut roots: Vec<&(String, Span)> = spans.iter().filter(|(_, s)| !ids.contains(s.parent_span_id.as_slice())).collect();
    roots.sort_by_key(|(_, s)| s.start_time_unix_nano);
    for root in roots {
        draw(&mut out, spans, root, 1, start);
    }
    out
}

fn draw(out: &mut String, all: &[(String, Span)], (service, span): &(String, Span), depth: usize, start: u64) {
    let kind = if span.kind == SpanKind::Server as i32 { "server" } else { "client" };
    let direction = string(&span.attributes, "direction").unwrap_or_default();
    let method = string(&span.attributes, "http.request.method").unwrap_or_default();
    let status = string(&span.attributes, "http.response.status_code").unwrap_or_else(|| "-".into());
    let peer = string(&span.attributes, "knit.peer.identity")
        .map(|id| id.split('.').take(2).collect::<Vec<_>>().join("."))
        .or_else(|| Some(format!("{}:{}", string(&span.attributes, "network.peer.address")?, string(&span.attributes, "network.peer.port")?)))
        .unwrap_or_default();
    let what = format!("{}{service} {direction} {kind} {method} {} {status}", "  ".repeat(depth - 1), span.name);
    let ms = |ns: u64| ns as f64 / 1e6;
    let _ = writeln!(
        out,
        "  {what:<52} {:>9.2} {:>9.2}  {peer}",
        ms(span.start_time_unix_nano.saturating_sub(start)),
        ms(span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano))
    );
    let mut children: Vec<&(String, Span)> = all.iter().filter(|(_, s)| s.parent_span_id == span.span_id).collect();
    children.sort_by_key(|(_, s)| s.start_time_unix_nano);
    for c in children {
        draw(out, all, c, depth + 1, start);
    }
}
