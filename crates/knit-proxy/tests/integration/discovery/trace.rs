//! Distributed tracing through a meshed hop (web's outbound → books' inbound, mTLS), exported
//! over OTLP gRPC to a real receiver: a tonic server on OpenTelemetry's generated service.

use super::fixture::{identity, service, LocalMesh};
use crate::harness::{free_port, server};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
    trace::v1::{span::SpanKind, Span},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;

/// Every span the receiver was sent, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Received {
    async fn start() -> (SocketAddr, Self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Self::default();
        let incoming = futures_util::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
        let svc = TraceServiceServer::new(received.clone());
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(svc, incoming));
        (addr, received)
    }

    fn of_trace(&self, trace: &str) -> Vec<(String, Span)> {
        self.0.lock().unwrap().iter().filter(|(_, s)| hex(&s.trace_id) == trace).cloned().collect()
    }

    /// Waits for `n` spans of `trace` (and a little longer, to see that no more come).
    async fn wait(&self, trace: &str, n: usize) -> Vec<(String, Span)> {
        let ok = crate::harness::eventually(Duration::from_secs(10), || async { self.of_trace(trace).len() >= n }).await;
        assert!(ok, "{n} spans of {trace} within 10 s; got {:?}", self.of_trace(trace).iter().map(|(s, sp)| (s, &sp.name, sp.kind)).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.of_trace(trace)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

fn tracing_to(collector: SocketAddr, service: &str) -> impl FnOnce(&mut knit_proxy::config::Config) {
    let service = service.to_string();
    move |c| {
        c.trace = Some(knit_proxy::trace::TraceConfig {
            collector: collector.into(),
            service_name: service,
            attributes_path: None,
            extra_attributes: vec![("k8s.pod.uid".into(), "uid-1".into())],
            otel_resource_attributes: vec![],
            host_name: None,
            sample_untraced: 0.0,
            queue: 100,
            max_batch: 512,
            flush_interval: Duration::from_millis(100),
            export_timeout: Duration::from_secs(2),
        })
    }
}

/// books' app (it answers `/headers` with the headers it got) behind its proxy, the `books`
/// Service, and web's client proxy; each proxy configured by the caller.
async fn mesh(
    name: &str,
    books: impl FnOnce(&mut knit_proxy::config::Config),
    web: impl FnOnce(&mut knit_proxy::config::Config),
) -> (LocalMesh, Vec<crate::harness::TestProxy>) {
    let mesh = LocalMesh::start(name).await;
    let app = server::start().await;
    let books = mesh.workload_with("books", app, "http", "books", &[("app", "books")], books).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy_with("web", "web", None, web).await;
    (mesh, vec![web, books])
}

/// GETs `/headers` from books through web's outbound with `headers`; the app's view of them.
async fn call(web: &crate::harness::TestProxy, headers: &[(&str, &str)]) -> String {
    let mut args = vec!["-sS", "--max-time", "10", "-H", "host: books:8080"];
    let hs: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    for h in &hs {
        args.extend(["-H", h.as_str()]);
    }
    let url = format!("http://{}/headers", web.addrs.outbound);
    args.push(&url);
    let (ok, out, err) = crate::harness::run("curl", &args).await;
    assert!(ok && out.contains("version:"), "curl through web: {out} {err}");
    out
}

fn header<'a>(app_saw: &'a str, name: &str) -> Option<&'a str> {
    app_saw.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_meshed_hop_gives_four_spans_each_the_parent_of_the_next() {
    let (addr, received) = Received::start().await;
    let (_mesh, proxies) = mesh("trace-four", tracing_to(addr, "books"), tracing_to(addr, "web")).await;
    let app_saw = call(&proxies[0], &[("traceparent", &format!("00-{TRACE}-{PARENT}-01")), ("tracestate", "vendor=x"), ("user-agent", "knit-test")]).await;

    let spans = received.wait(TRACE, 4).await;
    assert_eq!(spans.len(), 4, "one server and one client span per proxy: {spans:?}");
    let find = |service: &str, kind: SpanKind| spans.iter().find(|(s, sp)| s == service && sp.kind == kind as i32).map(|(_, sp)| sp.clone()).unwrap();
    let (web_server, web_client) = (find("web", SpanKind::Server), find("web", SpanKind::Client));
    let (books_server, books_client) = (find("books", SpanKind::Server), find("books", SpanKind::Client));
    // Each span is the parent of the next, from the application's span to the one books' app sees.
    let chain = [PARENT.to_string(), hex(&web_server.span_id), hex(&web_client.span_id), hex(&books_server.span_id), hex(&books_client.span_id)];
    for (span, parent) in [&web_server, &web_client, &books_server, &books_client].iter().zip(&chain) {
        assert_eq!(&hex(&span.parent_span_id), parent, "{} {:?}", span.name, span.kind);
        assert_eq!(span.name, "/headers");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
        assert_eq!(attr(span, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(span, "url.path").as_deref(), Some("/headers"));
        assert_eq!(attr(span, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(span, "server.address").as_deref(), Some("books"));
        assert_eq!(attr(span, "server.port").as_deref(), Some("8080"));
        assert_eq!(attr(span, "user_agent.original").as_deref(), Some("knit-test"));
    }
    assert_eq!(header(&app_saw, "traceparent"), Some(format!("00-{TRACE}-{}-01", chain[4]).as_str()), "the app's parent is books' client span");
    // Spans end with the response body: web's attempt ends only after books' proxy has sent the
    // whole response.
    assert!(web_client.end_time_unix_nano >= books_server.end_time_unix_nano, "{web_client:?}\n{books_server:?}");
    assert_eq!(header(&app_saw, "tracestate"), Some("vendor=x"), "tracestate passes through");
    assert_eq!(attr(&web_server, "direction").as_deref(), Some("outbound"));
    assert_eq!(attr(&books_server, "direction").as_deref(), Some("inbound"));
    // Who is on the other side, as mTLS proved it.
    assert_eq!(attr(&web_client, "knit.peer.identity"), Some(identity("books")));
    assert_eq!(attr(&books_server, "knit.peer.identity"), Some(identity("web")));
    // Web upgraded the HTTP/1 request for the hop; books' server span saw the marker.
    assert_eq!(attr(&books_server, "http.request.header.l5d-orig-proto").as_deref(), Some("HTTP/1.1"));
    assert_eq!(proxies[0].metric("trace_spans_exported_total", &[]).await, 2.0);
    assert_eq!(proxies[0].metric("trace_spans_dropped_total", &[]).await, 0.0);
}

#[tokio::test]
async fn b3_joins_unsampled_traces_record_nothing_and_sampling_starts_traces_at_the_edge() {
    let (addr, received) = Received::start().await;
    let sample_all = |c: &mut knit_proxy::config::Config| {
        tracing_to(addr, "web")(c);
        c.trace.as_mut().unwrap().sample_untraced = 1.0;
    };
    let (_mesh, proxies) = mesh("trace-b3", tracing_to(addr, "books"), sample_all).await;
    let web = &proxies[0];

    // B3 multi-header: only the span id changes on the way.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let app_saw = call(web, &[("x-b3-traceid", b3_trace), ("x-b3-spanid", "e457b5a2e4d86bd1"), ("x-b3-sampled", "1")]).await;
    let spans = received.wait(b3_trace, 4).await;
    let last = spans.iter().find(|(s, sp)| s == "books" && sp.kind == SpanKind::Client as i32).unwrap();
    assert_eq!(header(&app_saw, "x-b3-traceid"), Some(b3_trace));
    assert_eq!(header(&app_saw, "x-b3-spanid"), Some(hex(&last.1.span_id).as_str()));
    assert!(spans.iter().any(|(_, sp)| hex(&sp.parent_span_id) == "e457b5a2e4d86bd1"));

    // Not sampled: the ids still change hop by hop, and no span is recorded.
    let unsampled = "11111111111111111111111111111111";
    let app_saw = call(web, &[("traceparent", &format!("00-{unsampled}-{PARENT}-00"))]).await;
    let seen = header(&app_saw, "traceparent").unwrap();
    assert!(seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00") && !seen.contains(PARENT), "{seen}");

    // Untraced: web (where the request enters the mesh) starts a sampled W3C trace.
    let app_saw = call(web, &[]).await;
    let started = header(&app_saw, "traceparent").expect("a trace was started");
    let trace = started.split('-').nth(1).unwrap();
    let spans = received.wait(trace, 4).await;
    let root = spans.iter().find(|(s, sp)| s == "web" && sp.kind == SpanKind::Server as i32).unwrap();
    assert!(root.1.parent_span_id.is_empty(), "web's server span is the root");
    assert!(received.of_trace(unsampled).is_empty(), "an unsampled trace records no span");
}

#[tokio::test]
async fn without_a_collector_trace_headers_pass_untouched() {
    let (_mesh, proxies) = mesh("trace-off", |_| {}, |_| {}).await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let app_saw = call(&proxies[0], &[("traceparent", &sent), ("x-b3-spanid", PARENT)]).await;
    assert_eq!(header(&app_saw, "traceparent"), Some(sent.as_str()));
    assert_eq!(header(&app_saw, "x-b3-spanid"), Some(PARENT));
}

#[tokio::test]
async fn a_collector_that_is_down_or_silent_fails_no_request_and_bounds_the_queue() {
    // One collector refuses connections; the other accepts them and never answers.
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port().await).parse().unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let small_queue = move |c: &mut knit_proxy::config::Config| {
        tracing_to(silent_addr, "web")(c);
        let t = c.trace.as_mut().unwrap();
        t.queue = 8;
        t.max_batch = 4;
    };
    let (_mesh, proxies) = mesh("trace-down", tracing_to(refused, "books"), small_queue).await;
    for i in 0..100 {
        let app_saw = call(&proxies[0], &[("traceparent", &format!("00-{TRACE}-{:016x}-01", i + 1))]).await;
        assert!(header(&app_saw, "traceparent").is_some());
    }
    let (web, books) = (&proxies[0], &proxies[1]);
    // Web's exporter waits on its first batch; the queue holds 8 more, the rest are dropped.
    let queue_full = web.metric("trace_spans_dropped_total", &[r#"reason="queue_full""#]).await;
    assert!(queue_full >= 200.0 - 4.0 - 8.0 - 1.0, "web dropped {queue_full} of its 200 spans for a full queue");
    let ok =
        crate::harness::eventually(Duration::from_secs(5), || async { books.metric("trace_spans_dropped_total", &[r#"reason="export_failed""#]).await > 0.0 })
            .await;
    assert!(ok, "books counts the spans its refused exports lost");
    assert_eq!(books.metric("trace_spans_exported_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_meshed_collector_is_reached_over_mtls_as_the_proxy() {
    let mesh = LocalMesh::start("trace-mtls").await;
    let (addr, received) = Received::start().await;
    let collector = mesh.workload_with("collector", addr, "otlp", "collector", &[("app", "collector")], |_| {}).await;
    // Web dials the collector's proxy, which takes the connection for its application (as after
    // an iptables redirect) once it has checked web's certificate.
    let inbound = collector.addrs.inbound;
    let web = mesh
        .proxy_with("web", "web", None, move |c| {
            tracing_to(inbound, "web")(c);
            c.trace.as_mut().unwrap().collector.tls_name = Some(identity("collector"));
        })
        .await;
    let app = server::start().await;
    let _books = mesh.workload_with("books", app, "http", "books", &[("app", "books")], |_| {}).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    call(&web, &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]).await;
    let spans = received.wait(TRACE, 2).await;
    assert!(spans.iter().all(|(s, _)| s == "web"), "books has no collector configured");
    let from_web = collector.metric("request_total", &[r#"direction="inbound""#, &format!(r#"client_id="{}""#, identity("web"))]).await;
    assert!(from_web >= 1.0, "the export arrived over mTLS as web's identity");
}
