//! Tap as a Kubernetes aggregated API, `tap.knit.dev/v1alpha1`, as Linkerd's tap APIService:
//! who may tap what is the API server's decision, made for the person asking.
//!
//! `knit viz tap --kubernetes` (or `kubectl get --raw`) asks the API server, which authenticates
//! the user and proxies the request to knit-control (Service `knit-tap`, port 443 → 8089) over
//! TLS, presenting its front-proxy client certificate and naming the user in `X-Remote-User`,
//! `X-Remote-Group` and `X-Remote-Extra-*`. knit-control:
//! - takes connections only from clients whose certificate chains to the API server's
//!   request-header CA (the `extension-apiserver-authentication` ConfigMap in kube-system,
//!   re-read every minute), with a name it allows (`requestheader-allowed-names`); anybody
//!   else's headers name nobody;
//! - asks the API server, with a SubjectAccessReview for that user, whether they may `watch`
//!   the resource's `tap` subresource in `tap.knit.dev` (`namespaces/tap`, `deployments/tap`,
//!   `pods/tap`), and taps only then (RBAC: `charts/knit` and `knit install` ship the
//!   ClusterRole `knit-tap` to bind).
//!
//! Paths (GET):
//! - `/apis/tap.knit.dev/v1alpha1`: the APIResourceList (discovery; the aggregator's check);
//! - `/apis/tap.knit.dev/v1alpha1/watch/namespaces/NS/tap`: a namespace's proxies;
//! - `/apis/tap.knit.dev/v1alpha1/watch/namespaces/NS/{deployments,pods}/NAME/tap`;
//!   with viz's `/api/tap` query (`method`, `path`, `authority`, `max_rps`, `limit`), and the
//!   same newline-delimited JSON answer. Refusals are Kubernetes `Status` objects.
//!
//! The request-header settings ([`RequestHeader::from_configmap`]), the user they name
//! ([`RequestHeader::user`]), the review ([`review`]) and its judgement ([`judge`]) are pure,
//! tested on recorded objects; the API calls are thin.

use super::{Body, Viz};
use http::{HeaderMap, Response, StatusCode};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ConfigMap,
};
use kube::{api::PostParams, Api, Client};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};
use tokio::net::TcpListener;

pub const GROUP: &str = "tap.knit.dev";
pub const VERSION: &str = "v1alpha1";
/// Where the API server publishes how its front proxy authenticates.
const CONFIGMAP_NS: &str = "kube-system";
const CONFIGMAP: &str = "extension-apiserver-authentication";
/// How often that ConfigMap is re-read (the CA rotates with the control plane's certificates).
const REFRESH: Duration = Duration::from_secs(60);
/// An API server that does not answer a review must not hold a tap request for ever.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server (each of its replicas keeps a few connections) and room to spare.
const CONNECTIONS: usize = 256;

/// How the API server's front proxy proves itself and names users, from the
/// `extension-apiserver-authentication` ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestHeader {
    pub client_ca_pem: String,
    /// Client certificate common names allowed to name users; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

/// The user a request is made for, as the API server authenticated them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request taps: the resource whose `tap` subresource the user must be allowed to watch.
#[derive(Clone, Debug, PartialEq)]
pub struct TapTarget {
    pub namespace: String,
    /// `namespaces`, `deployments` or `pods`.
    pub resource: &'static str,
    pub name: String,
}

impl TapTarget {
    /// The `KIND/NAME` viz's tap selects.
    fn viz_resource(&self) -> String {
        let kind = match self.resource {
            "namespaces" => "ns",
            "deployments" => "deploy",
            _ => "po",
        };
        format!("{kind}/{}", self.name)
    }
}

impl RequestHeader {
    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, String> {
        let data = cm.data.clone().unwrap_or_default();
        let list = |key: &str| -> Result<Vec<String>, String> {
            match data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                None => Ok(Vec::new()),
                Some(v) => serde_json::from_str(v).map_err(|e| format!("{CONFIGMAP}: {key} is not a JSON list of strings: {e}")),
            }
        };
        let client_ca_pem = data.get("requestheader-client-ca-file").filter(|v| !v.trim().is_empty()).cloned().ok_or_else(|| {
            format!("{CONFIGMAP_NS}/{CONFIGMAP} has no requestheader-client-ca-file: the API server has no front proxy (--requestheader-client-ca-file)")
        })?;
        let header = Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            uid_headers: list("requestheader-uid-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        };
        if header.username_headers.is_empty() {
            return Err(format!("{CONFIGMAP_NS}/{CONFIGMAP}: requestheader-username-headers is empty"));
        }
        Ok(header)
    }

    pub async fn load(client: &Client) -> Result<Self, String> {
        let api = Api::<ConfigMap>::namespaced(client.clone(), CONFIGMAP_NS);
        let cm = tokio::time::timeout(REVIEW_TIMEOUT, api.get(CONFIGMAP))
            .await
            .map_err(|_| format!("reading {CONFIGMAP_NS}/{CONFIGMAP}: no answer within {REVIEW_TIMEOUT:?}"))?
            .map_err(|e| format!("reading {CONFIGMAP_NS}/{CONFIGMAP}: {e}"))?;
        Self::from_configmap(&cm)
    }

    /// Whether a client certificate's common name may name users.
    pub fn allows(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty() || common_name.is_some_and(|cn| self.allowed_names.iter().any(|a| a == cn))
    }

    /// The user the headers name (the first username header present), with groups from every
    /// group header and extras from the prefixed headers (keys lower-cased and unescaped, as the
    /// API server's request-header authenticator reads them).
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string);
        let name = self.username_headers.iter().find_map(|h| value(h))?;
        let uid = self.uid_headers.iter().find_map(|h| value(h));
        let groups = self.group_headers.iter().flat_map(|h| headers.get_all(h.as_str()).iter().filter_map(|v| v.to_str().ok().map(str::to_string))).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (h, v) in headers {
            let Some(key) = self.extra_prefixes.iter().find_map(|p| h.as_str().strip_prefix(&*p.to_ascii_lowercase())) else { continue };
            if let Ok(v) = v.to_str() {
                extra.entry(percent_decode(key)).or_default().push(v.to_string());
            }
        }
        Some(User { name, uid, groups, extra })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path's tap target; `Ok(None)` for the group version itself (discovery).
pub fn parse_path(path: &str) -> Result<Option<TapTarget>, String> {
    let base = format!("/apis/{GROUP}/{VERSION}");
    let Some(rest) = path.strip_prefix(&base) else { return Err(format!("{path}: not under {base}")) };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Ok(None);
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let target = match parts.as_slice() {
        ["watch", "namespaces", ns, "tap"] => TapTarget { namespace: ns.to_string(), resource: "namespaces", name: ns.to_string() },
        ["watch", "namespaces", ns, kind @ ("deployments" | "pods"), name, "tap"] => {
            TapTarget { namespace: ns.to_string(), resource: if *kind == "deployments" { "deployments" } else { "pods" }, name: name.to_string() }
        }
        _ => return Err(format!("{path}: expected {base}/watch/namespaces/NS[/deployments|pods/NAME]/tap")),
    };
    if [&target.namespace, &target.name].iter().any(|s| s.is_empty() || s.len() > 253) {
        return Err(format!("{path}: empty or overlong name"));
    }
    Ok(Some(target))
}

/// The SubjectAccessReview asking whether `user` may watch `target`'s tap.
pub fn review(user: &User, target: &TapTarget) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(target.resource.into()),
                subresource: Some("tap".into()),
                verb: Some("watch".into()),
                // For a namespace too (as Linkerd's tap asks): a RoleBinding in the namespace
                // can then grant tapping all of it.
                namespace: Some(target.namespace.clone()),
                name: Some(target.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Allowed, or why not (the API server's reason when it gives one).
pub fn judge(answer: &SubjectAccessReview, user: &User, target: &TapTarget) -> Result<(), String> {
    let status = answer.status.as_ref();
    if status.is_some_and(|s| s.allowed && s.denied != Some(true)) {
        return Ok(());
    }
    let mut message = format!(
        "user {:?} cannot watch resource \"{}/tap\" {:?} in API group {GROUP:?} in the namespace {:?}",
        user.name, target.resource, target.name, target.namespace
    );
    if let Some(reason) = status.and_then(|s| s.reason.as_deref()).filter(|r| !r.is_empty()) {
        message.push_str(": ");
        message.push_str(reason);
    }
    Err(message)
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    super::json(code, body)
}

fn resource_list() -> Response<Body> {
    let tap = |name: &str, namespaced: bool| serde_json::json!({"name": format!("{name}/tap"), "singularName": "", "namespaced": namespaced, "kind": "Tap", "verbs": ["watch"]});
    super::json(
        StatusCode::OK,
        serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
            "resources": [tap("namespaces", false), tap("deployments", true), tap("pods", true)],
        }),
    )
}

/// The tap API's state: viz (what it taps), the API server (reviews), and the TLS settings
/// built from the serving certificate and the request-header CA.
pub struct TapApi {
    viz: Viz,
    client: Client,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<Current>>,
    /// Taps open per user: one user's watches must not take every connection the aggregator has.
    taps: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// Taps one user may have open at once.
const TAPS_PER_USER: usize = 8;

/// A user's open tap, counted until its response body is dropped.
struct OpenTap {
    user: String,
    taps: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Drop for OpenTap {
    fn drop(&mut self) {
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = taps.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                taps.remove(&self.user);
            }
        }
    }
}

struct Current {
    /// The request-header settings, or why there are none yet (every request then gets 503).
    header: Result<RequestHeader, String>,
    tls: Arc<rustls::ServerConfig>,
}

impl TapApi {
    /// Reads the serving certificate (a bad one stops start-up) and the request-header settings:
    /// without those the tap API answers 503 with the reason and tries again every minute, while
    /// the rest of the control plane serves.
    pub async fn new(viz: Viz, client: Client, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let header = RequestHeader::load(&client).await;
        if let Err(e) = &header {
            tracing::warn!(error = %e, "the tap API cannot authenticate the API server yet; it answers 503 until it can");
        }
        let tls = tls_config(cert, key, header.as_ref().ok())?;
        Ok(Self { viz, client, cert: cert.into(), key: key.into(), current: RwLock::new(Arc::new(Current { header, tls })), taps: Default::default() })
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().map(|c| c.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Re-reads the ConfigMap and the serving certificate; what fails keeps what worked.
    async fn refresh(&self) {
        let header = match RequestHeader::load(&self.client).await {
            Ok(h) => h,
            Err(e) => return tracing::warn!(error = %e, "the tap API keeps its request-header settings"),
        };
        match tls_config(&self.cert, &self.key, Some(&header)) {
            Ok(tls) => {
                let next = Arc::new(Current { header: Ok(header), tls });
                match self.current.write() {
                    Ok(mut c) => *c = next,
                    Err(e) => *e.into_inner() = next,
                }
            }
            Err(e) => tracing::warn!(error = %e, "the tap API keeps its TLS settings"),
        }
    }

    async fn handle(&self, req: http::Request<hyper::body::Incoming>, header: &Result<RequestHeader, String>, front_proxy: bool) -> Response<Body> {
        let header = match header {
            Ok(h) => h,
            Err(e) => return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &format!("the tap API cannot authenticate the API server: {e}")),
        };
        if !front_proxy {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "only the Kubernetes API server's front proxy may call the tap API");
        }
        if req.method() != http::Method::GET {
            return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the tap API answers GET only");
        }
        let target = match parse_path(req.uri().path()) {
            Ok(Some(t)) => t,
            Ok(None) => return resource_list(),
            Err(e) => return status(StatusCode::NOT_FOUND, "NotFound", &e),
        };
        let Some(user) = header.user(req.headers()) else {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "the request names no user");
        };
        let api = Api::<SubjectAccessReview>::all(self.client.clone());
        let answer = match tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review(&user, &target))).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &format!("SubjectAccessReview: {e}")),
            Err(_) => return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "SubjectAccessReview: the API server did not answer"),
        };
        if let Err(why) = judge(&answer, &user, &target) {
            tracing::info!(user = %user.name, target = ?target, "tap refused");
            return status(StatusCode::FORBIDDEN, "Forbidden", &why);
        }
        let open = {
            let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
            let n = taps.entry(user.name.clone()).or_insert(0);
            if *n >= TAPS_PER_USER {
                return status(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", &format!("user {:?} has {TAPS_PER_USER} taps open already", user.name));
            }
            *n += 1;
            OpenTap { user: user.name.clone(), taps: self.taps.clone() }
        };
        let mut params = super::params(req.uri().query().unwrap_or(""));
        params.retain(|k, _| ["method", "path", "authority", "max_rps", "limit"].contains(&k.as_str()));
        params.insert("namespace".into(), target.namespace.clone());
        params.insert("resource".into(), target.viz_resource());
        tracing::info!(user = %user.name, target = ?target, "tap");
        match self.viz.tap(&params) {
            // The user's tap stays counted while its stream is read.
            Ok(rsp) => rsp.map(|body| {
                http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _open = &open;
                    f
                }))
            }),
            Err((code, body)) => {
                let message = body["error"].as_str().unwrap_or("tap failed").to_string();
                status(code, if code == StatusCode::NOT_FOUND { "NotFound" } else { "BadRequest" }, &message)
            }
        }
    }
}

/// Server TLS with the serving certificate, requiring a client certificate from the
/// request-header CA (with no settings yet, none: every request is answered 503).
fn tls_config(cert: &Path, key: &Path, header: Option<&RequestHeader>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("the tap API's certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("the tap API's key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let Some(header) = header else {
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| anyhow::anyhow!("the tap API's certificate {}: {e}", cert.display()))?;
        config.alpn_protocols = alpn();
        return Ok(Arc::new(config));
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(header.client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| anyhow::anyhow!("requestheader-client-ca-file: {e}"))?;
        roots.add(ca).map_err(|e| anyhow::anyhow!("requestheader-client-ca-file: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("requestheader-client-ca-file: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_client_cert_verifier(verifier).with_single_cert(certs, key))
        .map_err(|e| anyhow::anyhow!("the tap API's certificate {}: {e}", cert.display()))?;
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// HTTP/2 first: the aggregator then carries every watch and its discovery checks on one
/// connection, instead of one connection per watch.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Serves the tap API on `listener` until the task is dropped, re-reading the request-header
/// settings every minute.
pub async fn serve(listener: TcpListener, api: Arc<TapApi>) {
    let refresh = {
        let api = api.clone();
        async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                api.refresh().await;
            }
        }
    };
    let accept = crate::accept::accept_loop(listener, crate::accept::Caps { total: CONNECTIONS, per_source: None }, "tap-api", move |tcp, peer| {
        let api = api.clone();
        async move {
            let current = api.current();
            let acceptor = tokio_rustls::TlsAcceptor::from(current.tls.clone());
            let tls = match tokio::time::timeout(crate::accept::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "tap API TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "tap API TLS handshake timed out"),
            };
            let cn = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| knit_identity::inspect::common_name(c));
            let front_proxy = current.header.as_ref().is_ok_and(|h| h.allows(cn.as_deref()));
            if !front_proxy && current.header.is_ok() {
                tracing::info!(%peer, client = ?cn, "a tap API client with a request-header certificate but a name it may not use");
            }
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let svc = hyper::service::service_fn(move |req| {
                let (api, current) = (api.clone(), current.clone());
                async move { Ok::<_, Infallible>(api.handle(req, &current.header, front_proxy).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            if h2 {
                let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                b.timer(hyper_util::rt::TokioTimer::new())
                    .max_concurrent_streams(256)
                    .max_header_list_size(64 * 1024)
                    .max_pending_accept_reset_streams(64)
                    .max_local_error_reset_streams(256)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(10));
                let _ = b.serve_connection(io, svc).await;
            } else {
                let _ = crate::accept::http1().serve_connection(io, svc).await;
            }
        }
    });
    tokio::join!(refresh, accept);
}

#[cfg(test)]
mod tests;
