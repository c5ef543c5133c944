//! Tap through the Kubernetes API server (`tap.knit.dev`, knit-control's aggregated API), with
//! this test in the API server's two roles, since no API server runs here: it is the front proxy
//! that dials knit-control with a request-header client certificate and names the user in
//! `X-Remote-User`, and, over a kubeconfig, the API that knit-control reads the request-header
//! ConfigMap from and asks SubjectAccessReviews of. The proxies, their tap servers and
//! knit-control are the real ones.

use super::fixture::{service, Backend, Behaviour, LocalMesh, NS};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use knit_identity::create::{self, Credentials};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A client certificate with `common_name`, signed by `ca`.
fn client_cert(ca: &Credentials, common_name: &str) -> Credentials {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Credentials { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// What the stand-in API server was asked.
#[derive(Default)]
struct Asked {
    reviews: Vec<serde_json::Value>,
    tokens: Vec<String>,
}

/// The API the tap API calls: the request-header ConfigMap naming `front_proxy_ca`, and
/// SubjectAccessReviews answered as RBAC would with alice bound to knit-tap in `NS` only; carol's
/// reviews fail (an API server in trouble).
async fn api_server(front_proxy_ca: String, asked: Arc<Mutex<Asked>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (ca, asked) = (front_proxy_ca.clone(), asked.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (ca, asked) = (ca.clone(), asked.clone());
                    async move {
                        let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        asked.lock().unwrap().tokens.push(token);
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (status, json) = match path.as_str() {
                            "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication" => (
                                StatusCode::OK,
                                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
                                "data": {
                                    "requestheader-client-ca-file": ca,
                                    "requestheader-allowed-names": "[\"front-proxy-client\"]",
                                    "requestheader-username-headers": "[\"X-Remote-User\"]",
                                    "requestheader-group-headers": "[\"X-Remote-Group\"]",
                                    "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
                                }}),
                            ),
                            "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
                                let mut review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                                asked.lock().unwrap().reviews.push(review.clone());
                                let spec = &review["spec"];
                                let attrs = &spec["resourceAttributes"];
                                if spec["user"] == "carol" {
                                    (
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "code": 500}),
                                    )
                                } else {
                                    let allowed = spec["user"] == "alice"
                                        && attrs["group"] == "tap.knit.dev"
                                        && attrs["verb"] == "watch"
                                        && attrs["subresource"] == "tap"
                                        && attrs["namespace"] == NS;
                                    review["status"] = if allowed {
                                        serde_json::json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"alice-tap/test\" of ClusterRole \"knit-tap-knit\" to User \"alice\""})
                                    } else {
                                        serde_json::json!({"allowed": false})
                                    };
                                    (StatusCode::CREATED, review)
                                }
                            }
                            _ => (
                                StatusCode::NOT_FOUND,
                                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                            ),
                        };
                        let mut rsp = Response::new(Full::new(Bytes::from(json.to_string())));
                        *rsp.status_mut() = status;
                        rsp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

/// A kubeconfig for the stand-in API server, with knit-control's token.
fn kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: knit-control\n  user: {{token: knit-control-token}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: knit-control}}\ncurrent-context: test\n"
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// The front proxy's side: a TLS connection to the tap API with `client` (or no certificate),
/// checking knit-control's serving certificate against `serving_ca`, and one GET with `headers`.
async fn get(
    tap_api: SocketAddr,
    serving_ca: &str,
    client: Option<&Credentials>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Incoming), String> {
    get_as(false, tap_api, serving_ca, client, path, headers).await
}

/// As [`get`], over HTTP/2 when `h2` (as the aggregator does when the server offers it).
async fn get_as(
    h2: bool,
    tap_api: SocketAddr,
    serving_ca: &str,
    client: Option<&Credentials>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Incoming), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(serving_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).map(|c| c.unwrap()).collect(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let tcp = tokio::net::TcpStream::connect(tap_api).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("knit-tap.knit.svc").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut req = Request::get(format!("https://knit-tap.knit.svc{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let rsp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut().insert("host", "knit-tap.knit.svc".parse().unwrap());
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    Ok((rsp.status(), rsp.into_body()))
}

async fn json_of(body: Incoming) -> serde_json::Value {
    let bytes = body.collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// Reads NDJSON lines from a tap stream for `secs`.
async fn lines_of(mut body: Incoming, secs: u64) -> Vec<serde_json::Value> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
    })
    .await;
    buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_decides_who_may_tap() {
    let front_proxy_ca = create::trust_anchor("front-proxy-ca", YEAR).unwrap();
    let front_proxy = client_cert(&front_proxy_ca, "front-proxy-client");
    let asked = Arc::new(Mutex::new(Asked::default()));
    let api = api_server(front_proxy_ca.cert_pem.clone(), asked.clone()).await;
    let serving_ca = create::trust_anchor("webhook.knit.knit", YEAR).unwrap();
    let serving = create::server(&["knit-tap.knit.svc".to_string()], YEAR, &serving_ca).unwrap();
    let dir = std::env::temp_dir().join(format!("knit-tap-api-{}", std::process::id()));
    let kubeconfig = kubeconfig(&dir, api);
    std::fs::write(dir.join("tap.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.join("tap.key"), &serving.key_pem).unwrap();
    let (cert, key) = (dir.join("tap.crt"), dir.join("tap.key"));
    let mesh = LocalMesh::start_configured(
        "tap-api",
        Arc::new(move |c| {
            c.discovery.kubeconfig = Some(kubeconfig.clone());
            c.viz.tap_api_tls_cert = Some(cert.clone());
            c.viz.tap_api_tls_key = Some(key.clone());
        }),
    )
    .await;
    let tap_api = mesh.control.tap_api.expect("the tap API runs with a serving certificate and a Kubernetes API");
    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy("web", "web", None).await;
    let ca = serving_ca.cert_pem.as_str();
    let tap_path = format!("/apis/tap.knit.dev/v1alpha1/watch/namespaces/{NS}/deployments/books/tap?path=/books");

    // Discovery, as the aggregator's availability check asks it, over HTTP/1 and HTTP/2.
    for h2 in [false, true] {
        let (status, body) = get_as(h2, tap_api, ca, Some(&front_proxy), "/apis/tap.knit.dev/v1alpha1", &[]).await.unwrap();
        let list = json_of(body).await;
        assert_eq!(
            (status, list["kind"].as_str(), list["groupVersion"].as_str()),
            (StatusCode::OK, Some("APIResourceList"), Some("tap.knit.dev/v1alpha1")),
            "h2: {h2}"
        );
    }

    // alice may: she sees books' requests, and the review asked exactly that.
    let traffic = super::tap::traffic(web.addrs.outbound, "/books/1", 60);
    let alice = [("X-Remote-User", "alice"), ("X-Remote-Group", "devs"), ("X-Remote-Group", "system:authenticated")];
    let (status, body) = get(tap_api, ca, Some(&front_proxy), &tap_path, &alice).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let tapped = lines_of(body, 2).await;
    assert!(!tapped.is_empty() && tapped.iter().all(|t| t["path"] == "/books/1"), "{tapped:?}");
    assert!(tapped.iter().any(|t| t["direction"] == "inbound" && t["status"] == 200), "{tapped:?}");
    let review = asked.lock().unwrap().reviews.last().cloned().unwrap();
    assert_eq!(review["spec"]["user"], "alice");
    assert_eq!(review["spec"]["groups"], serde_json::json!(["devs", "system:authenticated"]));
    assert_eq!(
        review["spec"]["resourceAttributes"],
        serde_json::json!({"group": "tap.knit.dev", "version": "v1alpha1", "resource": "deployments", "subresource": "tap", "verb": "watch", "namespace": NS, "name": "books"})
    );
    assert!(asked.lock().unwrap().tokens.iter().all(|t| t == "Bearer knit-control-token"), "knit-control asks with its own credentials");

    // One user's taps are bounded: the aggregator's connections are everyone's.
    let mut open = Vec::new();
    for _ in 0..8 {
        let (status, body) = get_as(true, tap_api, ca, Some(&front_proxy), &tap_path, &alice).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        open.push(body);
    }
    let (status, body) = get_as(true, tap_api, ca, Some(&front_proxy), &tap_path, &alice).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", json_of(body).await);
    open.pop();
    let mut freed = false;
    for _ in 0..50 {
        let (status, body) = get(tap_api, ca, Some(&front_proxy), &tap_path, &alice).await.unwrap();
        if status == StatusCode::OK {
            freed = true;
            open.push(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a tap closed is a place again");
    drop(open);

    // bob may not, and is told so as Kubernetes tells it.
    let (status, body) = get(tap_api, ca, Some(&front_proxy), &tap_path, &[("X-Remote-User", "bob")]).await.unwrap();
    let refusal = json_of(body).await;
    assert_eq!((status, refusal["kind"].as_str(), refusal["reason"].as_str()), (StatusCode::FORBIDDEN, Some("Status"), Some("Forbidden")), "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains(r#"user "bob" cannot watch resource "deployments/tap""#), "{refusal}");
    // alice, in another namespace, neither.
    let elsewhere = "/apis/tap.knit.dev/v1alpha1/watch/namespaces/other/deployments/books/tap";
    assert_eq!(get(tap_api, ca, Some(&front_proxy), elsewhere, &alice).await.unwrap().0, StatusCode::FORBIDDEN);
    // An API server that cannot answer: 503, nothing tapped.
    let (status, body) = get(tap_api, ca, Some(&front_proxy), &tap_path, &[("X-Remote-User", "carol")]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", json_of(body).await);

    // Nobody else can name a user: not without a user header, not with another certificate of
    // the front proxy's CA, not with a certificate of another CA, not without one.
    let reviews = asked.lock().unwrap().reviews.len();
    let (status, _) = get(tap_api, ca, Some(&front_proxy), &tap_path, &[]).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no user named");
    let controller = client_cert(&front_proxy_ca, "system:kube-controller-manager");
    let (status, body) = get(tap_api, ca, Some(&controller), &tap_path, &alice).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a name the ConfigMap does not allow: {}", json_of(body).await);
    let stranger_ca = create::trust_anchor("front-proxy-ca", YEAR).unwrap();
    let stranger = client_cert(&stranger_ca, "front-proxy-client");
    let refused = get(tap_api, ca, Some(&stranger), &tap_path, &alice).await;
    assert!(refused.is_err(), "a certificate from another CA gets no answer: {:?}", refused.map(|r| r.0));
    let refused = get(tap_api, ca, None, &tap_path, &alice).await;
    assert!(refused.is_err(), "no client certificate, no answer: {:?}", refused.map(|r| r.0));
    assert_eq!(asked.lock().unwrap().reviews.len(), reviews, "none of them cost a SubjectAccessReview");
    traffic.abort();
}
