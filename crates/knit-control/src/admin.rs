//! The control plane's admin server (9990): `/metrics`, `/ready`, `/live`, and, to loopback
//! peers only (`kubectl port-forward` arrives there), `/identity/leaves`: every unexpired leaf
//! this control plane signed and the anchor it chains to, which names every meshed workload;
//! and `/multicluster`: each Link's remote, gateway and mirrors (`multicluster/mirror.rs`).
//!
//! The index's sizes and the manifest errors are read at scrape time, not mirrored in gauges.

use crate::{identity::Service, index::Index, local::Files};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use std::{convert::Infallible, sync::Arc};
use tokio::net::TcpListener;

/// `kubernetes`: the Kubernetes source's status; `/ready` waits for its first listings.
pub async fn serve(listener: TcpListener, service: Arc<Service>, kubernetes: Option<crate::k8s::Status>, multicluster: crate::multicluster::mirror::Metrics) {
    crate::accept::accept_loop(listener, crate::accept::Caps { total: 256, per_source: Some(8) }, "admin", move |tcp, peer| {
        let (service, kubernetes, multicluster) = (service.clone(), kubernetes.clone(), multicluster.clone());
        async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (service, kubernetes, multicluster) = (service.clone(), kubernetes.clone(), multicluster.clone());
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics(&service)),
                        "/ready" => match kubernetes.filter(|k| !k.ready()) {
                            Some(k) => (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for the first listing of: {}\n", k.pending().join(", "))),
                            None => (StatusCode::OK, "ready\n".to_string()),
                        },
                        "/live" => (StatusCode::OK, "live\n".to_string()),
                        "/identity/leaves" if peer.ip().is_loopback() => {
                            (StatusCode::OK, serde_json::to_string_pretty(&service.leaves.report()).expect("leaves serialise"))
                        }
                        "/multicluster" if peer.ip().is_loopback() => {
                            let links = multicluster.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            let federated = multicluster.federated.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            let status = serde_json::json!({"links": links, "federated": federated});
                            (StatusCode::OK, serde_json::to_string_pretty(&status).expect("link status serialises"))
                        }
                        "/identity/leaves" | "/multicluster" => (StatusCode::FORBIDDEN, "only served to loopback: use kubectl port-forward\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut rsp = Response::new(Full::new(Bytes::from(body)));
                    *rsp.status_mut() = status;
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = crate::accept::http1().serve_connection(TokioIo::new(tcp), svc).await;
        }
    })
    .await
}

fn metrics(service: &Service) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &service.registry);
    out
}

pub fn register(registry: &mut Registry, index: Arc<Index>, files: Option<Files>, kubernetes: Option<crate::k8s::Status>) {
    registry.register_collector(Box::new(IndexCollector { index, files, kubernetes }));
}

struct IndexCollector {
    index: Arc<Index>,
    files: Option<Files>,
    kubernetes: Option<crate::k8s::Status>,
}

impl std::fmt::Debug for IndexCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexCollector")
    }
}

impl Collector for IndexCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.index.stats();
        let mut family = enc.encode_descriptor("index_resources", "Resources in the index, by kind", None, MetricType::Gauge)?;
        for (kind, n) in &stats.resources {
            ConstGauge::new(*n as i64).encode(family.encode_family(&[("kind", *kind)])?)?;
        }
        let mut family = enc.encode_descriptor("index_views", "Live views (distinct answers being watched), by kind", None, MetricType::Gauge)?;
        for (kind, (views, _)) in &stats.views {
            ConstGauge::new(*views as i64).encode(family.encode_family(&[("kind", *kind)])?)?;
        }
        let mut family = enc.encode_descriptor("index_subscribers", "Streams watching views, by kind", None, MetricType::Gauge)?;
        for (kind, (_, subscribers)) in &stats.views {
            ConstGauge::new(*subscribers as i64).encode(family.encode_family(&[("kind", *kind)])?)?;
        }
        let c = ConstCounter::new(stats.published);
        c.encode(enc.encode_descriptor("index_updates_published", "View changes published to watchers", None, c.metric_type())?)?;
        if let Some(k) = &self.kubernetes {
            let c = ConstCounter::new(k.invalid());
            c.encode(enc.encode_descriptor(
                "kubernetes_invalid_objects",
                "Objects from the Kubernetes API refused as invalid (counted at each event)",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(files) = &self.files {
            let files = files.lock().unwrap_or_else(|p| p.into_inner());
            let mut family = enc.encode_descriptor(
                "manifest_invalid_documents",
                "Documents skipped as invalid in each manifest file, as last read",
                None,
                MetricType::Gauge,
            )?;
            for (file, status) in files.iter() {
                ConstGauge::new(status.errors.len() as i64).encode(family.encode_family(&[("file", file.as_str())])?)?;
            }
            let mut family = enc.encode_descriptor(
                "manifest_unknown_fields",
                "Fields Knit does not know (and ignores) in each manifest file's valid documents, as last read",
                None,
                MetricType::Gauge,
            )?;
            for (file, status) in files.iter() {
                ConstGauge::new(status.warnings.len() as i64).encode(family.encode_family(&[("file", file.as_str())])?)?;
            }
            let mut family = enc.encode_descriptor("manifest_reads", "Times each manifest file was read after a change", None, MetricType::Counter)?;
            for (file, status) in files.iter() {
                ConstCounter::new(status.reads).encode(family.encode_family(&[("file", file.as_str())])?)?;
            }
        }
        Ok(())
    }
}
