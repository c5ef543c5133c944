//! The service mirror (LINKERD-WIRE.md §12.1), for Links whose remote is another knit-control.
//!
//! One worker per Link. It follows the remote's exports ([`super::exports`]) and probes the
//! gateway (`GET http://GATEWAY:probePort/probePath`, every `period`, `timeout` each; only 200 is
//! a success). What it knows is written to the index as one source, `multicluster/NS/LINK`:
//! - for each exported Service `svc`: a Service `svc-<cluster>` in the same namespace, with the
//!   remote's ports, labels (without `mirror.linkerd.io/*`) and annotations (without the topology
//!   ones), plus `mirror.linkerd.io/mirrored-service`, `mirror.linkerd.io/cluster-name` and
//!   `mirror.linkerd.io/remote-svc-fq-name`; and its endpoints, as an EndpointSlice would give
//!   them: the gateway's addresses on the gateway port, annotated with the gateway's identity.
//!   Destination then answers with the gateway and `authority_override` (`index/endpoints.rs`);
//! - the endpoints are empty while the remote Service has none ready, and while the gateway has
//!   failed `failureThreshold` probes in a row (until one succeeds).
//!
//! When the remote cannot be reached, the mirrors stay as they were last seen (a remote control
//! plane restarting must not take its Services away here), and the worker reconnects with
//! backoff. A Link removed or changed stops its worker and removes (or replaces) its mirrors.

use super::{
    excluded,
    exports::{ExportRequest, Snapshot, PATH},
    remote, LinkSettings, Remote,
};
use crate::{
    index::{
        Index, CLUSTER_NAME_LABEL, ENDPOINT_SLICE_LABEL, MIRRORED_SERVICE_LABEL, REMOTE_DEPLOYMENT, REMOTE_GATEWAY_IDENTITY, REMOTE_POD, REMOTE_SVC_FQ_NAME,
    },
    resources::Resource,
    tls::ClientTls,
};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The largest snapshot line read from a remote: 1,000 Services fit in a few hundred KiB.
const MAX_SNAPSHOT_BYTES: usize = 16 << 20;
/// Past this long without a byte (the remote sends one every 15 s), the stream is dead.
const REMOTE_SILENCE: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(&'static str, String)>;

/// The mirror's metrics, by `target_cluster`.
#[derive(Clone, Default)]
pub struct Metrics {
    /// 1 while the gateway passes its probe.
    pub gateway_alive: Family<Labels, Gauge>,
    /// The last successful probe's latency, in milliseconds.
    pub probe_latency_ms: Family<Labels, Gauge>,
    /// Mirror Services written.
    pub mirrored_services: Family<Labels, Gauge>,
    /// 1 while the remote control plane's exports are being followed.
    pub remote_connected: Family<Labels, Gauge>,
    /// Each Link's state, for the admin server's `/multicluster` (and `knit multicluster`).
    pub status: Arc<Mutex<std::collections::BTreeMap<String, LinkStatus>>>,
    /// The federated Services (`federation.rs`), for `/multicluster` too.
    pub federated: Arc<Mutex<Vec<FederatedStatus>>>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FederatedStatus {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<String>,
    /// Whether this cluster has a member.
    pub local: bool,
    /// The linked clusters that have one.
    pub clusters: Vec<String>,
}

/// What the mirror knows of one Link, as `/multicluster` reports it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkStatus {
    pub cluster: String,
    pub remote: String,
    pub remote_connected: bool,
    /// Why the remote could not be followed, last time it could not.
    pub remote_error: Option<String>,
    pub gateway: GatewayStatus,
    pub mirrors: Vec<MirrorStatus>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GatewayStatus {
    pub addresses: Vec<String>,
    pub alive: bool,
    /// Probes failed in a row.
    pub failures: u32,
    pub probe_latency_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MirrorStatus {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<String>,
    /// Whether it has endpoints now (the remote Service has a ready one and the gateway is alive).
    pub ready: bool,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("multicluster_gateway_alive", "Whether a linked cluster's gateway passes its probe", m.gateway_alive.clone());
        registry.register("multicluster_gateway_probe_latency_ms", "Latency of the gateway's last successful probe", m.probe_latency_ms.clone());
        registry.register("multicluster_mirrored_services", "Services mirrored from a linked cluster", m.mirrored_services.clone());
        registry.register("multicluster_remote_connected", "Whether the linked cluster's control plane is being followed", m.remote_connected.clone());
        m
    }

    fn update(&self, link: &str, f: impl FnOnce(&mut LinkStatus)) {
        f(self.status.lock().unwrap_or_else(|p| p.into_inner()).entry(link.to_string()).or_default());
    }

    fn clear(&self, link: &str, cluster: &str) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).remove(link);
        let l = labels(cluster);
        for f in [&self.gateway_alive, &self.probe_latency_ms, &self.mirrored_services, &self.remote_connected] {
            f.remove(&l);
        }
    }
}

fn labels(cluster: &str) -> Labels {
    vec![("target_cluster", cluster.to_string())]
}

/// Starts, replaces and stops one worker per Link as the Links in the index change. `kube` is
/// this cluster's API, in Kubernetes mode: it holds the Links' credentials Secrets.
pub async fn run(index: Arc<Index>, tls: Arc<ClientTls>, metrics: Metrics, kube: Option<kube::Client>) {
    let mut changes = index.changes();
    let mut workers: HashMap<String, (LinkSettings, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let mut wanted = HashMap::new();
        for link in index.links() {
            match LinkSettings::of(&link) {
                Ok(s) if s.remote.is_some() => {
                    wanted.insert(s.key.clone(), s);
                }
                Ok(s) => tracing::debug!(link = %s.key, "a Link with neither clusterCredentialsSecret nor knit.dev/remote-control-plane: not mirrored"),
                Err((field, reason)) => tracing::warn!(link = %link.metadata.name, %field, %reason, "invalid Link"),
            }
        }
        workers.retain(|key, (settings, task)| {
            if wanted.get(key) == Some(settings) {
                return true;
            }
            task.abort();
            index.reset(&source(key), Vec::new());
            metrics.clear(key, &settings.cluster);
            tracing::info!(link = %key, "stopped mirroring");
            false
        });
        for (key, settings) in wanted {
            if workers.contains_key(&key) {
                continue;
            }
            let remote = settings.remote.as_ref().map(ToString::to_string).unwrap_or_default();
            tracing::info!(link = %key, cluster = %settings.cluster, %remote, "mirroring a linked cluster");
            metrics.update(&key, |st| {
                *st = LinkStatus {
                    cluster: settings.cluster.clone(),
                    remote,
                    gateway: GatewayStatus {
                        addresses: settings.gateways.iter().map(ToString::to_string).chain(settings.gateway_names.iter().cloned()).collect(),
                        ..Default::default()
                    },
                    ..Default::default()
                }
            });
            let worker =
                Arc::new(Worker { settings: settings.clone(), index: index.clone(), metrics: metrics.clone(), state: Mutex::default(), kube: kube.clone() });
            let task = tokio::spawn(worker.run(tls.clone()));
            workers.insert(key, (settings, task));
        }
        if !super::next_change(&mut changes).await {
            return;
        }
    }
}

fn source(link_key: &str) -> String {
    format!("multicluster/{link_key}")
}

struct Worker {
    settings: LinkSettings,
    index: Arc<Index>,
    metrics: Metrics,
    state: Mutex<State>,
    kube: Option<kube::Client>,
}

#[derive(Default)]
struct State {
    /// The remote's exports as last seen; `None` before the first snapshot.
    exports: Option<Arc<Snapshot>>,
    /// Whether the gateway passes its probe (false until the first success).
    alive: bool,
    /// The gateway's addresses: the Link's IPs, and what its names resolved to last.
    gateway_ips: Vec<IpAddr>,
    /// What was last written to the index, to write only changes (the snapshot shared, not copied).
    written: Option<(Arc<Snapshot>, bool, Vec<IpAddr>)>,
}

impl Worker {
    /// Probes the gateway and follows the remote, in this one task: aborting it stops both.
    async fn run(self: Arc<Self>, tls: Arc<ClientTls>) {
        tokio::join!(self.probe_loop(), self.follow_loop(&tls));
    }

    async fn follow_loop(&self, tls: &ClientTls) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let followed = match self.settings.remote.as_ref().expect("workers are started for remote Links") {
                Remote::ControlPlane { addr, identity } => self.follow(tls, *addr, identity).await,
                Remote::Kubernetes { secret } => self.follow_kubernetes(secret).await,
            };
            let error = match followed {
                Ok(()) => "the linked control plane ended the exports stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            tracing::warn!(cluster = %self.settings.cluster, %error, retry_in = ?backoff, "not following the linked cluster's exports");
            remote::Sink::connected(self, Some(error));
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_secs(1);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn request(&self) -> ExportRequest {
        let s = &self.settings;
        ExportRequest {
            selector: s.selector.clone(),
            remote_discovery_selector: s.remote_discovery_selector.clone(),
            federated_service_selector: s.federated_selector.clone(),
        }
    }

    /// Kubernetes mode: follows the remote API server ([`remote`]) until the credentials Secret
    /// changes or cannot be read.
    async fn follow_kubernetes(&self, secret: &str) -> anyhow::Result<()> {
        let Some(local) = &self.kube else {
            anyhow::bail!(
                "the Link names a credentials Secret, which only knit-control in Kubernetes mode can read (in local mode, name the remote with {} and {})",
                super::REMOTE_ANNOTATION,
                super::REMOTE_IDENTITY_ANNOTATION
            )
        };
        let namespace = self.settings.key.split_once('/').map_or("", |(ns, _)| ns);
        remote::follow(local, (namespace, secret), &self.settings.cluster_domain, self.index.config(), &self.request(), self).await
    }

    /// Local mode: follows the remote knit-control's exports until the stream ends or fails.
    async fn follow(&self, tls: &ClientTls, addr: std::net::SocketAddr, identity: &str) -> anyhow::Result<()> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))??;
        let name = rustls::pki_types::ServerName::try_from(identity.to_string())?;
        let io = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(tls.config()?).connect(name, tcp))
            .await
            .map_err(|_| anyhow::anyhow!("TLS with {addr} timed out"))?
            .map_err(|e| anyhow::anyhow!("TLS with {addr} (expecting {identity}): {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(&self.request())?;
        let uri = format!("https://{addr}{PATH}");
        let req = http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json").body(Full::new(Bytes::from(body)))?;
        let rsp = sender.send_request(req).await?;
        if !rsp.status().is_success() {
            let status = rsp.status();
            let text = rsp.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
            anyhow::bail!("the linked control plane answered {status}: {}", text.trim());
        }
        remote::Sink::connected(self, None);
        let mut body = rsp.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(REMOTE_SILENCE, body.frame()).await {
                Err(_) => anyhow::bail!("nothing from the linked control plane for {REMOTE_SILENCE:?}"),
                Ok(None) => return Ok(()),
                Ok(Some(f)) => f?,
            };
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(end + 1);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let snapshot: Snapshot = serde_json::from_slice(&line).map_err(|e| anyhow::anyhow!("a malformed snapshot: {e}"))?;
                remote::Sink::snapshot(self, snapshot);
            }
            if buf.len() > MAX_SNAPSHOT_BYTES {
                anyhow::bail!("a snapshot longer than {MAX_SNAPSHOT_BYTES} bytes");
            }
        }
    }

    async fn probe_loop(&self) {
        let p = &self.settings.probe;
        let cluster = labels(&self.settings.cluster);
        let mut failures = 0u32;
        loop {
            let ips = self.gateway_ips().await;
            // Every gateway address is probed; one that answers is enough.
            let mut ok = None;
            let mut last_error = if ips.is_empty() { "the gateway's names resolve to no usable address".to_string() } else { String::new() };
            for ip in &ips {
                match probe(std::net::SocketAddr::new(*ip, p.port), &p.path, p.timeout).await {
                    Ok(latency) => {
                        ok = Some(latency);
                        break;
                    }
                    Err(e) => last_error = e,
                }
            }
            let alive = match ok {
                Some(latency) => {
                    failures = 0;
                    self.metrics.probe_latency_ms.get_or_create(&cluster).set(i64::try_from(latency.as_millis()).unwrap_or(i64::MAX));
                    true
                }
                None => {
                    failures = failures.saturating_add(1);
                    tracing::info!(cluster = %self.settings.cluster, failures, error = %last_error, "the gateway failed its probe");
                    let was = self.state.lock().unwrap_or_else(|p| p.into_inner()).alive;
                    was && failures < p.failure_threshold
                }
            };
            self.metrics.gateway_alive.get_or_create(&cluster).set(i64::from(alive));
            self.metrics.update(&self.settings.key, |st| {
                let g = &mut st.gateway;
                (g.alive, g.failures) = (alive, failures);
                match ok {
                    Some(latency) => g.probe_latency_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
                    None => g.last_error = Some(last_error.clone()),
                }
            });
            let changed = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let moved = std::mem::replace(&mut st.gateway_ips, ips) != st.gateway_ips;
                if moved {
                    tracing::info!(cluster = %self.settings.cluster, gateway = ?st.gateway_ips, "the gateway's addresses changed");
                }
                (std::mem::replace(&mut st.alive, alive) != alive) | moved
            };
            if changed {
                tracing::info!(cluster = %self.settings.cluster, alive, "the gateway's readiness changed");
                self.publish();
            }
            // Jitter of up to a tenth of the period, as Linkerd's probe worker has.
            let jitter = p.period.mul_f64(fastrand_fraction() * 0.1);
            tokio::time::sleep(p.period + jitter).await;
        }
    }

    /// The gateway's addresses now: the Link's IPs, and its names resolved (a name that does not
    /// resolve now keeps its last addresses). Addresses no gateway can have are dropped.
    async fn gateway_ips(&self) -> Vec<IpAddr> {
        let mut ips = self.settings.gateways.clone();
        if !self.settings.gateway_names.is_empty() {
            let before = self.state.lock().unwrap_or_else(|p| p.into_inner()).gateway_ips.clone();
            for name in &self.settings.gateway_names {
                match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((name.as_str(), self.settings.gateway_port))).await {
                    Ok(Ok(found)) => ips.extend(found.map(|a| a.ip()).filter(|ip| usable(*ip))),
                    failed => {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(cluster = %self.settings.cluster, %name, %error, "resolving the gateway's name failed; keeping its last addresses");
                        return before;
                    }
                }
            }
        }
        ips.sort();
        ips.dedup();
        ips
    }

    /// Writes the mirrors as the state now says, if that changed.
    fn publish(&self) {
        let resources = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(exports) = st.exports.clone() else { return };
            let now = (exports, st.alive, st.gateway_ips.clone());
            if st.written.as_ref() == Some(&now) {
                return;
            }
            let mut resources = mirrors(&self.settings, &now.0, now.1, &now.2);
            self.keep_local(&mut resources);
            st.written = Some(now);
            resources
        };
        let services = resources.iter().filter(|r| matches!(r, Resource::Service(_))).count();
        let has_endpoints = |s: &crate::resources::Service| {
            resources.iter().any(|r| {
                matches!(r, Resource::ExternalWorkload(w) if w.metadata.namespace == s.metadata.namespace
                    && w.metadata.labels.get(ENDPOINT_SLICE_LABEL) == Some(&s.metadata.name) && !w.spec.workload_ips.is_empty())
            })
        };
        let mirrors = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Service(s) => Some(MirrorStatus {
                    namespace: s.metadata.namespace.clone(),
                    name: s.metadata.name.clone(),
                    cluster_ip: s.spec.cluster_ip.clone(),
                    ready: has_endpoints(s),
                }),
                _ => None,
            })
            .collect();
        self.metrics.update(&self.settings.key, |st| st.mirrors = mirrors);
        self.metrics.mirrored_services.get_or_create(&labels(&self.settings.cluster)).set(i64::try_from(services).unwrap_or(i64::MAX));
        self.index.reset(&source(&self.settings.key), resources);
    }
}

impl remote::Sink for Worker {
    fn snapshot(&self, snapshot: Snapshot) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).exports = Some(Arc::new(snapshot));
        self.publish();
    }

    fn connected(&self, error: Option<String>) {
        self.metrics.remote_connected.get_or_create(&labels(&self.settings.cluster)).set(i64::from(error.is_none()));
        self.metrics.update(&self.settings.key, |st| {
            st.remote_connected = error.is_none();
            if error.is_some() {
                st.remote_error = error;
            }
        });
    }
}

impl Worker {
    /// Drops the mirrors whose name a Service of another source (the local cluster's own, or
    /// another Link's mirror) already has, with their endpoints: a linked cluster must not
    /// replace a local Service by exporting one named to collide (`books` from `east` and a local
    /// `books-east`), as Linkerd's mirror refuses to.
    fn keep_local(&self, resources: &mut Vec<Resource>) {
        let own = source(&self.settings.key);
        let taken: std::collections::BTreeSet<(String, String)> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Service(s) if self.index.source_of(&r.key()).is_some_and(|src| src != own) => {
                    tracing::warn!(cluster = %self.settings.cluster, namespace = %s.metadata.namespace, service = %s.metadata.name, "not mirroring: a Service of that name exists here already");
                    Some((s.metadata.namespace.clone(), s.metadata.name.clone()))
                }
                _ => None,
            })
            .collect();
        resources.retain(|r| {
            let m = r.meta();
            let name = match r {
                Resource::ExternalWorkload(w) => w.metadata.labels.get(ENDPOINT_SLICE_LABEL).cloned().unwrap_or_default(),
                _ => m.name.clone(),
            };
            !taken.contains(&(m.namespace.clone(), name))
        });
    }
}

/// A fraction in [0, 1) from the clock: enough to spread probes, no random crate needed.
fn fastrand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// One probe: `GET path` over HTTP/1 within `timeout`; only 200 counts.
async fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let attempt = async {
        let (status, _) = crate::client::get(addr, path, 0).await?;
        if status != http::StatusCode::OK {
            return Err(format!("GET {path} from {addr} answered {status}"));
        }
        Ok(started.elapsed())
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("GET {path} from {addr} timed out after {timeout:?}")))
}

/// One remote endpoint of a flat mirror, as an EndpointSlice's workload: its address, its port
/// for each of the mirror's ports (by name), and its proxy's identity and inbound port, so
/// Destination sends it with `opaque_transport` and the remote identity (LINKERD-WIRE.md §12.2).
fn flat_endpoint(link: &LinkSettings, e: &super::exports::Export, mirror: &str, ep: &super::exports::ExportEndpoint) -> Option<serde_json::Value> {
    // A remote endpoint is a pod there: never this host, nor an address no pod has.
    if !usable(ep.ip) {
        tracing::warn!(cluster = %link.cluster, service = %e.name, ip = %ep.ip, "ignoring a remote endpoint that no pod can have");
        return None;
    }
    let ports: Vec<_> = e.ports.iter().filter_map(|p| Some(json!({"name": p.name, "port": ep.ports.get(&p.port)?}))).collect();
    let mut annotations = serde_json::Map::new();
    if let Some(port) = ep.inbound_port {
        annotations.insert(crate::index::INBOUND_PORT_ANNOTATION.into(), json!(port.to_string()));
    }
    for (key, value) in [(REMOTE_POD, &ep.pod), (REMOTE_DEPLOYMENT, &ep.deployment)] {
        if let Some(v) = value {
            annotations.insert(key.into(), json!(v));
        }
    }
    let mesh_tls = ep.identity.as_ref().map(|id| json!({"identity": id, "serverName": id}));
    Some(json!({
        "apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload",
        "metadata": {
            "name": format!("mirror/{mirror}/{}", ep.ip), "namespace": e.namespace,
            "labels": {ENDPOINT_SLICE_LABEL: mirror, CLUSTER_NAME_LABEL: link.cluster},
            "annotations": annotations,
        },
        "spec": {"workloadIPs": [{"ip": ep.ip.to_string()}], "ports": ports, "meshTLS": mesh_tls},
    }))
}

/// Whether a remote address can be a pod's or a gateway's: never this host's loopback, nor an
/// address no host has.
fn usable(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_link_local() || v4.is_broadcast()))
}

/// The mirror Services of `exports` and their endpoints (LINKERD-WIRE.md §12.1, §12.2), the
/// gateway mirrors' at `gateway_ips`.
pub fn mirrors(link: &LinkSettings, exports: &Snapshot, gateway_alive: bool, gateway_ips: &[IpAddr]) -> Vec<Resource> {
    const TOPOLOGY: [&str; 2] = ["service.kubernetes.io/topology-aware-hints", "service.kubernetes.io/topology-mode"];
    let mut out = Vec::new();
    let keys: Vec<String> = exports.services.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect();
    let ips = link.cluster_ips.as_ref().map(|range| super::cluster_ips(range, keys.iter().map(String::as_str))).unwrap_or_default();
    for (e, key) in exports.services.iter().zip(&keys) {
        if e.federated {
            // Members of `<name>-federated` (§12.3): their endpoints, which `federation.rs` gathers.
            let federated = format!("{}-federated", e.name);
            let ports = serde_json::to_string(&e.ports).unwrap_or_default();
            for ep in &e.endpoints {
                let Some(mut doc) = flat_endpoint(link, e, &federated, ep) else { continue };
                doc["metadata"]["name"] = json!(format!("mirror/{federated}/{}/{}", link.cluster, ep.ip));
                doc["metadata"]["labels"][super::federation::MEMBER_LABEL] = json!(e.name);
                doc["metadata"]["annotations"][super::federation::PORTS_ANNOTATION] = json!(ports);
                push(&mut out, doc, link, e);
            }
        }
        if !e.gateway && !e.remote_discovery {
            continue;
        }
        let name = format!("{}-{}", e.name, link.cluster);
        let mut labels: serde_json::Map<String, serde_json::Value> = e
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("mirror.linkerd.io/") && !excluded(&link.excluded_labels, k))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        labels.insert(MIRRORED_SERVICE_LABEL.into(), json!("true"));
        labels.insert(CLUSTER_NAME_LABEL.into(), json!(link.cluster));
        let mut annotations: serde_json::Map<String, serde_json::Value> = e
            .annotations
            .iter()
            .filter(|(k, _)| !TOPOLOGY.contains(&k.as_str()) && !excluded(&link.excluded_annotations, k))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if e.remote_discovery {
            // Flat mode (§12.2): Linkerd's labels, no gateway; the endpoints are the remote's own.
            labels.insert("multicluster.linkerd.io/remote-discovery".into(), json!(link.cluster));
            labels.insert("multicluster.linkerd.io/remote-service".into(), json!(e.name));
        } else {
            let fq_name = format!("{}.{}.svc.{}", e.name, e.namespace, link.cluster_domain);
            annotations.insert(REMOTE_SVC_FQ_NAME.into(), json!(fq_name));
        }
        let ports: Vec<_> =
            e.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "targetPort": link.gateway_port, "appProtocol": p.app_protocol})).collect();
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": e.namespace, "labels": labels, "annotations": annotations},
            "spec": {"ports": ports, "clusterIP": ips.get(key.as_str()).map(|ip| ip.to_string())},
        });
        let mut docs = vec![service];
        if e.remote_discovery {
            docs.extend(e.endpoints.iter().filter_map(|ep| flat_endpoint(link, e, &name, ep)));
        } else {
            let ips: Vec<_> = if e.ready && gateway_alive { gateway_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect() } else { Vec::new() };
            let slice_ports: Vec<_> = e.ports.iter().map(|p| json!({"name": p.name, "port": link.gateway_port})).collect();
            docs.push(json!({
                "apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload",
                "metadata": {
                    "name": format!("mirror/{name}"), "namespace": e.namespace,
                    "labels": {ENDPOINT_SLICE_LABEL: name, CLUSTER_NAME_LABEL: link.cluster},
                    "annotations": {REMOTE_GATEWAY_IDENTITY: link.gateway_identity},
                },
                "spec": {"workloadIPs": ips, "ports": slice_ports},
            }));
        }
        for doc in docs {
            push(&mut out, doc, link, e);
        }
    }
    out
}

fn push(out: &mut Vec<Resource>, doc: serde_json::Value, link: &LinkSettings, e: &super::exports::Export) {
    match crate::resources::parse_document(doc) {
        Ok(Some(r)) => out.push(r),
        Ok(None) => {}
        Err(err) => tracing::warn!(cluster = %link.cluster, service = %e.name, error = %err, "cannot mirror an exported Service"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_never_replaces_a_local_service() {
        let index = Arc::new(Index::new(crate::index::IndexConfig {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "knit".into(),
            cluster_networks: vec![],
            default_inbound_policy: "all-unauthenticated".into(),
            default_opaque_ports: Default::default(),
            global_egress_namespace: "linkerd-egress".into(),
        }));
        let local = "apiVersion: v1\nkind: Service\nmetadata: {name: books-east, namespace: shop}\nspec: {selector: {app: mine}, ports: [{port: 8080}]}\n";
        index.reset("local.yaml", crate::resources::parse("local.yaml", local).0);
        let link = "apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata: {name: east, namespace: shop, annotations: {knit.dev/remote-control-plane: '10.1.0.1:8095', knit.dev/remote-control-plane-identity: knit-control.knit.serviceaccount.identity.knit.cluster.local}}\nspec: {targetClusterName: east, gatewayAddress: 10.1.0.5, gatewayIdentity: gw, selector: {matchLabels: {x: y}}}\n";
        let Some(Resource::Link(l)) = crate::resources::parse("link.yaml", link).0.pop() else { panic!() };
        let settings = LinkSettings::of(&l).unwrap();
        let worker = Worker { settings, index: index.clone(), metrics: Metrics::default(), state: Mutex::default(), kube: None };
        let export = |name: &str| serde_json::json!({"name": name, "namespace": "shop", "ready": true, "gateway": true, "ports": [{"port": 8080}]});
        worker.state.lock().unwrap().exports =
            Some(Arc::new(serde_json::from_value(serde_json::json!({"services": [export("books"), export("authors")]})).unwrap()));
        worker.state.lock().unwrap().alive = true;
        worker.publish();
        let exported: Vec<String> =
            index.exported([Some(&crate::resources::LabelSelector::default()), None, None]).iter().map(|e| e.service.metadata.name.clone()).collect();
        assert_eq!(exported, ["books-east"], "the local Service is, mirrors are not exported again");
        let key = |name: &str| crate::resources::Key { kind: crate::resources::Kind::Service, namespace: "shop".into(), name: name.into() };
        assert_eq!(index.source_of(&key("books-east")).as_deref(), Some("local.yaml"), "the local Service stays");
        assert_eq!(index.source_of(&key("authors-east")).as_deref(), Some("multicluster/shop/east"));
        let status = worker.metrics.status.lock().unwrap().get("shop/east").map(|s| s.mirrors.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
        assert_eq!(status, Some(vec!["authors-east".to_string()]));
    }
}
