//! The exports API: what a linked control plane reads to mirror this cluster's Services.
//!
//! `POST /multicluster.knit.dev/v1/exports` with `{"selector": LABEL_SELECTOR,
//! "remoteDiscoverySelector": LABEL_SELECTOR}` (either may be left out) answers `200`
//! and a body of JSON lines that never ends: a [`Snapshot`] at once, another each time the
//! selected Services (or whether they have a ready endpoint) change, and an empty line every 15 s
//! so that the reader knows the stream is alive.
//!
//! Who may read: HTTP/2 over TLS 1.3 with a client certificate under this mesh's trust anchors,
//! whose identity is a control plane's (`knit-control.*.serviceaccount.identity.*`, or one of
//! `--multicluster-allowed-identities`). Anything else is refused before a byte of HTTP. The
//! listener takes 256 connections (16 from one address), 8 streams each, 8 KiB request bodies.

use crate::{index::Index, resources::LabelSelector};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpListener;

pub const PATH: &str = "/multicluster.knit.dev/v1/exports";
const MAX_REQUEST_BYTES: usize = 8 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(15);
const CAPS: crate::accept::Caps = crate::accept::Caps { total: 256, per_source: Some(16) };

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    /// Services mirrored through the gateway.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    /// Services mirrored with their endpoints (flat mode).
    #[serde(default)]
    pub remote_discovery_selector: Option<LabelSelector>,
    /// Members of `<name>-federated`, with their endpoints.
    #[serde(default)]
    pub federated_service_selector: Option<LabelSelector>,
}

/// The exported Services, all of them, at one moment.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub services: Vec<Export>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub ports: Vec<ExportPort>,
    /// Whether it has a ready endpoint.
    pub ready: bool,
    /// Mirrored through the gateway.
    #[serde(default)]
    pub gateway: bool,
    /// Flat mode (remote discovery): the client connects to these endpoints itself.
    #[serde(default)]
    pub remote_discovery: bool,
    /// A member of `<name>-federated`: its endpoints join those of the other clusters' members.
    #[serde(default)]
    pub federated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ExportEndpoint>,
}

/// A flat-mode endpoint: one address, and where each Service port goes on it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportEndpoint {
    pub ip: std::net::IpAddr,
    /// Service port -> the port on this address.
    pub ports: BTreeMap<u16, u16>,
    /// The identity its proxy proves, when meshed; with it, the proxy's inbound port.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub inbound_port: Option<u16>,
    /// The pod and deployment it belongs to there, for the callers' metrics (`dst_pod`, `dst_deployment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

pub fn snapshot(index: &Index, req: &ExportRequest) -> Snapshot {
    let services = index
        .exported([req.selector.as_ref(), req.remote_discovery_selector.as_ref(), req.federated_service_selector.as_ref()])
        .into_iter()
        .map(|e| {
            let s = &e.service;
            Export {
                name: s.metadata.name.clone(),
                namespace: s.metadata.namespace.clone(),
                labels: s.metadata.labels.clone(),
                annotations: s.metadata.annotations.clone(),
                ports: s.spec.ports.iter().map(|p| ExportPort { name: p.name.clone(), port: p.port, app_protocol: p.app_protocol.clone() }).collect(),
                ready: e.ready,
                gateway: e.gateway,
                remote_discovery: e.flat,
                federated: e.federated,
                endpoints: flat_endpoints(&e.endpoints),
            }
        })
        .collect();
    Snapshot { services }
}

/// A flat Service's endpoints by address: each address once, with its port for each Service
/// port and the identity and inbound port Destination would give it.
fn flat_endpoints(by_port: &BTreeMap<u16, BTreeMap<std::net::SocketAddr, linkerd2_proxy_api::destination::WeightedAddr>>) -> Vec<ExportEndpoint> {
    use linkerd2_proxy_api::destination::tls_identity::Strategy;
    let mut by_ip: BTreeMap<std::net::IpAddr, ExportEndpoint> = BTreeMap::new();
    for (svc_port, addrs) in by_port {
        for (addr, w) in addrs {
            let label = |k: &str| w.metric_labels.get(k).cloned();
            let e = by_ip.entry(addr.ip()).or_insert_with(|| ExportEndpoint {
                ip: addr.ip(),
                ports: BTreeMap::new(),
                identity: None,
                inbound_port: None,
                pod: label("pod"),
                deployment: label("deployment"),
            });
            e.ports.insert(*svc_port, addr.port());
            if let Some(Strategy::DnsLikeIdentity(d)) = w.tls_identity.as_ref().and_then(|t| t.strategy.as_ref()) {
                e.identity = Some(d.name.clone());
            }
            if let Some(ot) = w.protocol_hint.as_ref().and_then(|h| h.opaque_transport.as_ref()) {
                e.inbound_port = u16::try_from(ot.inbound_port).ok();
            }
        }
    }
    by_ip.into_values().collect()
}

/// Who may read the exports.
#[derive(Clone, Debug, Default)]
pub struct Allowed(pub Vec<String>);

impl Allowed {
    pub fn allows(&self, identity: &str) -> bool {
        if !self.0.is_empty() {
            return self.0.iter().any(|a| a == identity);
        }
        identity.starts_with("knit-control.") && identity.contains(".serviceaccount.identity.")
    }
}

/// Serves the exports API until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, index: Arc<Index>, allowed: Allowed) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    crate::accept::accept_loop(listener, CAPS, "multicluster", move |tcp, peer| {
        let (acceptor, index, allowed) = (acceptor.clone(), index.clone(), allowed.clone());
        async move {
            let tls = match tokio::time::timeout(crate::accept::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "multicluster: TLS handshake failed"),
                Err(_) => return tracing::info!(%peer, "multicluster: TLS handshake timed out"),
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| knit_identity::inspect::CertInfo::from_der(c).ok())
                .and_then(|i| i.dns_sans.into_iter().next());
            let Some(identity) = identity.clone().filter(|id| allowed.allows(id)) else {
                return tracing::warn!(%peer, ?identity, "multicluster: refused a client that is not a linked control plane");
            };
            tracing::info!(%peer, %identity, "multicluster: a linked control plane connected");
            let svc = hyper::service::service_fn(move |req| handle(req, index.clone(), peer));
            let mut h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            h2.timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(8)
                .max_header_list_size(16 * 1024)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            if let Err(e) = h2.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, error = %e, "multicluster connection ended");
            }
        }
    })
    .await
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(format!("{}\n", text.into()))).boxed());
    *rsp.status_mut() = status;
    rsp
}

async fn handle(req: Request<Incoming>, index: Arc<Index>, peer: SocketAddr) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != PATH {
        return Ok(plain(StatusCode::NOT_FOUND, format!("not found: the exports are at POST {PATH}")));
    }
    if req.method() != http::Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST a selector"));
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body: {e}"))),
    };
    let request: ExportRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(plain(StatusCode::BAD_REQUEST, format!("expected {{\"selector\": {{\"matchLabels\": ...}}, \"remoteDiscoverySelector\": ...}}: {e}")))
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let mut changes = index.changes();
        let mut last = None;
        loop {
            let now = snapshot(&index, &request);
            let line = if last.as_ref() != Some(&now) {
                let mut line = serde_json::to_vec(&now).unwrap_or_default();
                line.push(b'\n');
                last = Some(now);
                Some(line)
            } else {
                None
            };
            if let Some(line) = line {
                if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = super::next_change(&mut changes) => if !changed { return },
                () = tokio::time::sleep(KEEPALIVE) => if tx.send(Ok(Frame::data(Bytes::from_static(b"\n")))).await.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    tracing::debug!(%peer, "multicluster: streaming exports");
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut rsp = Response::new(StreamBody::new(stream).boxed());
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    Ok(rsp)
}
