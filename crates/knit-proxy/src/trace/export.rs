//! The OTLP exporter: one task takes spans from the bounded queue, batches them (up to
//! `KNIT_PROXY_TRACE_MAX_BATCH`, or what arrived within `KNIT_PROXY_TRACE_FLUSH_INTERVAL` of the
//! first) and calls `opentelemetry.proto.collector.trace.v1.TraceService/Export`. A batch the
//! collector does not take in time is dropped and counted, never retried: while the collector
//! is down the proxy's memory stays bounded by the queue, and no request waits on it.
//!
//! The collector is reached in plaintext (no `..._SVC_NAME`), or over mesh TLS as Linkerd's
//! proxy reaches it: this proxy's certificate and no ALPN (`control::ClientTls::Mesh`; the
//! collector's proxy takes the connection for its original destination), and the collector's
//! proxy must prove `..._TRACE_COLLECTOR_SVC_NAME`.

use super::{Kind, SpanData, TraceConfig, TraceMetrics, Value};
use crate::{control::ControlAddr, identity::Identity};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};
use rustls::pki_types::ServerName;
use std::time::SystemTime;
use tokio::{sync::mpsc, time::Instant};
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the trace collector's TLS name {0:?} needs this proxy's identity (KNIT_PROXY_IDENTITY_*)")]
    NoIdentity(String),
    #[error("the trace collector's TLS name {0:?} is not a server name")]
    BadName(String),
    #[error(transparent)]
    Channel(#[from] crate::control::ChannelError),
}

/// Starts the exporter; the returned sender is the span queue.
pub fn spawn(cfg: &TraceConfig, identity: Option<Identity>, metrics: TraceMetrics) -> Result<mpsc::Sender<SpanData>, ExportError> {
    let channel = channel(&cfg.collector, identity)?;
    let (tx, rx) = mpsc::channel(cfg.queue);
    let resource = Resource { attributes: super::resource(cfg).into_iter().map(|(k, v)| kv(k, Value::Str(v))).collect(), ..Default::default() };
    tracing::info!(collector = %cfg.collector, "exporting trace spans");
    tokio::spawn(run(rx, TraceServiceClient::new(channel), resource, cfg.clone(), metrics));
    Ok(tx)
}

/// Whether [`spawn`] will accept the collector's address, with or without this proxy's identity.
pub fn check(collector: &ControlAddr, identity: bool) -> Result<(), ExportError> {
    match &collector.tls_name {
        None => crate::control::check(collector, None).map_err(Into::into),
        Some(name) if !identity => Err(ExportError::NoIdentity(name.clone())),
        Some(name) => ServerName::try_from(name.clone()).map(drop).map_err(|_| ExportError::BadName(name.clone())),
    }
}

fn channel(collector: &ControlAddr, identity: Option<Identity>) -> Result<Channel, ExportError> {
    check(collector, identity.is_some())?;
    let Some(name) = &collector.tls_name else { return Ok(crate::control::channel(collector, None)?) };
    let identity = identity.ok_or_else(|| ExportError::NoIdentity(name.clone()))?;
    let server_name = ServerName::try_from(name.clone()).map_err(|_| ExportError::BadName(name.clone()))?;
    Ok(crate::control::tls_channel(&collector.addr, server_name, crate::control::ClientTls::Mesh(identity), "the trace collector"))
}

async fn run(mut rx: mpsc::Receiver<SpanData>, mut client: TraceServiceClient<Channel>, resource: Resource, cfg: TraceConfig, metrics: TraceMetrics) {
    let mut healthy = true;
    let mut batch = Vec::with_capacity(cfg.max_batch.min(64));
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = Instant::now() + cfg.flush_interval;
        let mut open = true;
        while open && batch.len() < cfg.max_batch {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => batch.push(s),
                    None => open = false,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "knit-proxy".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }),
                    spans: batch.drain(..).map(span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match tokio::time::timeout(cfg.export_timeout, client.export(request)).await {
            Ok(Ok(rsp)) => {
                let rejected = rsp.into_inner().partial_success.map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)).min(n);
                metrics.exported.inc_by(n - rejected);
                if rejected > 0 {
                    metrics.drop_spans("rejected", rejected);
                }
                metrics.exports.get_or_create(&vec![("result", "ok")]).inc();
                if !healthy {
                    tracing::info!(collector = %cfg.collector, "the trace collector takes spans again");
                    healthy = true;
                }
            }
            failed => {
                metrics.drop_spans("export_failed", n);
                metrics.exports.get_or_create(&vec![("result", "error")]).inc();
                if healthy {
                    let error = match failed {
                        Ok(Err(status)) => status.to_string(),
                        _ => format!("no answer within {:?}", cfg.export_timeout),
                    };
                    tracing::warn!(collector = %cfg.collector, %error, "exporting trace spans failed; spans are dropped until the collector answers");
                    healthy = false;
                }
            }
        }
        if !open {
            return;
        }
    }
}

fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// OTLP's span flags: the W3C trace flags, and whether the parent is remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn span(s: SpanData) -> Span {
    let remote = if s.remote_parent { IS_REMOTE } else { 0 };
    Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.context.flags) | HAS_IS_REMOTE | remote,
        name: s.name,
        kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(Status { code: if s.error { StatusCode::Error } else { StatusCode::Unset } as i32, message: String::new() }),
        ..Default::default()
    }
}
