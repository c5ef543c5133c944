//! The proxy injector's admission webhook (9443, HTTPS): `POST /inject` takes an
//! `admission.k8s.io/v1` AdmissionReview of a Pod and answers with the JSON patch of
//! [`crate::inject`].
//!
//! A pod whose annotations cannot be honoured is refused with the reason (the user sees it in
//! `kubectl` or in the ReplicaSet's events) rather than started unmeshed, which would silently
//! escape its authorization policy. A pod the injector skips is allowed unchanged.

use crate::inject::{Injector, Outcome, Owner};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::core::{
    admission::{AdmissionRequest, AdmissionReview},
    DynamicObject,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::{collections::BTreeMap, convert::Infallible, path::Path, sync::Arc};
use tokio::net::TcpListener;

type Annotations = BTreeMap<String, String>;
type Lookup<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Annotations, String>> + Send + 'a>>;

/// The annotations of a namespace, which pods inherit (`knit.dev/inject` and `config.*`).
pub trait Namespaces: Send + Sync {
    fn annotations<'a>(&'a self, namespace: &'a str) -> Lookup<'a>;
}

/// Namespaces known up front (tests, and no cluster).
impl Namespaces for BTreeMap<String, Annotations> {
    fn annotations<'a>(&'a self, namespace: &'a str) -> Lookup<'a> {
        Box::pin(std::future::ready(Ok(self.get(namespace).cloned().unwrap_or_default())))
    }
}

/// Read from the API server at admission time, as Linkerd's injector does: the answer is always
/// the namespace as it is now, and nothing is cached between pod creations.
pub struct ApiNamespaces(pub kube::Client);

impl Namespaces for ApiNamespaces {
    fn annotations<'a>(&'a self, namespace: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(self.0.clone());
            let ns = api.get(namespace).await.map_err(|e| format!("reading namespace {namespace}: {e}"))?;
            Ok(ns.metadata.annotations.unwrap_or_default().into_iter().collect())
        })
    }
}

/// The response half of an `admission.k8s.io/v1` AdmissionReview. Written out rather than with
/// kube's `AdmissionResponse`, whose serialisation (kube 5) gives `patch` as an array of numbers
/// where the API server expects base64.
fn response(uid: &str, verdict: Result<Option<(json_patch::Patch, Vec<String>)>, String>) -> Value {
    let mut rsp = json!({"uid": uid, "allowed": verdict.is_ok()});
    match verdict {
        Ok(None) => {}
        Ok(Some((patch, warnings))) => {
            let bytes = serde_json::to_vec(&patch).unwrap_or_default();
            rsp["patchType"] = json!("JSONPatch");
            rsp["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            if !warnings.is_empty() {
                rsp["warnings"] = json!(warnings);
            }
        }
        Err(message) => rsp["status"] = json!({"code": 403, "reason": "Forbidden", "message": message}),
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": rsp})
}

/// An AdmissionReview response for one request body; `Err` for a body that is not one, or a
/// namespace that cannot be read (the API server then applies the webhook's failure policy).
pub async fn review(injector: &Injector, namespaces: &dyn Namespaces, body: &[u8]) -> Result<Value, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let req: AdmissionRequest<DynamicObject> = review.try_into().map_err(|e| format!("the AdmissionReview has no request: {e}"))?;
    let uid = req.uid.as_str();
    let Some(object) = req.object.as_ref() else {
        return Ok(response(uid, Ok(None)));
    };
    if req.kind.kind != "Pod" {
        return Ok(response(uid, Err(format!("the injector mutates Pods, not {}", req.kind.kind))));
    }
    let mut pod = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let ns = req.namespace.clone().unwrap_or_else(|| "default".into());
    // A pod created by a controller has no namespace in its object yet; the request carries it.
    pod["metadata"]["namespace"] = Value::String(ns.clone());
    let name = pod.pointer("/metadata/name").or_else(|| pod.pointer("/metadata/generateName")).and_then(|n| n.as_str()).unwrap_or("?").to_string();
    let owner = Owner::of_pod(&pod);
    let ns_annotations = namespaces.annotations(&ns).await?;
    match injector.inject(&pod, "", &ns_annotations, owner.as_ref()) {
        Ok(Outcome::Inject { patch, warnings }) => {
            tracing::info!(pod = %format!("{ns}/{name}"), "injected");
            Ok(response(uid, Ok(Some((patch, warnings)))))
        }
        Ok(Outcome::Skip(reason)) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), %reason, "not injected");
            Ok(response(uid, Ok(None)))
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "refused");
            Ok(response(uid, Err(format!("knit proxy injector: pod {ns}/{name}: {e}"))))
        }
    }
}

/// The serving certificate and key (PEM files).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("webhook certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("webhook key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| anyhow::anyhow!("webhook certificate {}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// AdmissionReviews are small; the API server's limit on a request body is 3 MiB.
const MAX_BODY: usize = 3 << 20;

pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, injector: Arc<Injector>, namespaces: Arc<dyn Namespaces>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    crate::accept::accept_loop(listener, crate::accept::Caps { total: 256, per_source: None }, "webhook", move |tcp, peer| {
        let (acceptor, injector, namespaces) = (acceptor.clone(), injector.clone(), namespaces.clone());
        async move {
            let tls = match tokio::time::timeout(crate::accept::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (injector, namespaces) = (injector.clone(), namespaces.clone());
                async move { Ok::<_, Infallible>(handle(req, &injector, &*namespaces).await) }
            });
            let _ = crate::accept::http1().serve_connection(TokioIo::new(tls), svc).await;
        }
    })
    .await
}

async fn handle(req: http::Request<hyper::body::Incoming>, injector: &Injector, namespaces: &dyn Namespaces) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        rsp
    };
    if req.uri().path() != "/inject" || req.method() != Method::POST {
        return reply(StatusCode::NOT_FOUND, b"{\"error\":\"POST an AdmissionReview to /inject\"}".to_vec());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": format!("reading the body: {e}")}).to_string().into_bytes()),
    };
    match review(injector, namespaces, &body).await {
        Ok(review) => reply(StatusCode::OK, review.to_string().into_bytes()),
        Err(e) => {
            tracing::warn!(error = %e, "admission review failed");
            reply(StatusCode::BAD_REQUEST, json!({ "error": e }).to_string().into_bytes())
        }
    }
}
