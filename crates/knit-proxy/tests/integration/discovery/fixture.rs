//! A local-mode mesh for tests: identity material and a manifest directory in a temporary
//! directory, knit-control serving both, workloads (a backend and its proxy) declared as
//! ExternalWorkloads, and a client proxy to send traffic through.

use crate::harness::TestProxy;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_identity::{
    layout,
    token::{Claims, TokenKey},
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::net::TcpListener;

pub const NS: &str = "test";

/// The identity knit-control proves on its gRPC ports when a test asks for TLS.
pub const CONTROL_IDENTITY: &str = "knit-control.knit.serviceaccount.identity.knit.cluster.local";

pub fn identity(service_account: &str) -> String {
    knit_identity::identity_name(service_account, NS, "knit", "cluster.local")
}

/// How a test backend answers.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Ok,
    /// Every `n`th request (1-based count) fails with 503.
    FailEvery(u64),
    /// Every request is answered 429 with `Retry-After: secs`.
    RateLimited {
        secs: u64,
    },
    /// Answers after this delay.
    Slow(Duration),
}

/// A backend that answers `NAME` (its name) and counts what it served.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub served: Arc<AtomicU64>,
}

impl Backend {
    pub async fn start(name: &'static str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                        async move { Ok::<_, Infallible>(answer(name, behaviour, n, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Self { name, addr, served }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

async fn answer(name: &str, behaviour: Behaviour, n: u64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let client_id = req.headers().get("l5d-client-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let _ = req.into_body().collect().await;
    let mut rsp = Response::new(Full::new(Bytes::from(format!("{name} {client_id}\n"))));
    match behaviour {
        Behaviour::Ok => {}
        Behaviour::FailEvery(k) if n.is_multiple_of(k) => *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
        Behaviour::FailEvery(_) => {}
        Behaviour::RateLimited { secs } => {
            *rsp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            rsp.headers_mut().insert("retry-after", secs.into());
        }
        Behaviour::Slow(d) => tokio::time::sleep(d).await,
    }
    rsp
}

/// knit-control in local mode, and the proxies it serves.
pub struct LocalMesh {
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub control: knit_control::Addrs,
    tokens: TokenKey,
    /// Whether knit-control serves its gRPC ports with TLS as [`CONTROL_IDENTITY`].
    tls: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    workloads: std::sync::Mutex<Vec<String>>,
}

impl LocalMesh {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, false).await
    }

    /// As a cluster runs it: the proxies reach knit-control over TLS and check its identity.
    pub async fn start_tls(name: &str) -> Self {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &str, tls: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("knit-discovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let material = layout::init(&dir.join("identity"), &layout::Params::default()).unwrap();
        let any = "127.0.0.1:0".parse().unwrap();
        let (control, shutdown) = Self::start_control_at(&dir, tls, [any; 3]).await;
        Self { dir, manifests, control, tokens: material.token_key, tls, shutdown: Some(shutdown), workloads: Default::default() }
    }

    async fn start_control_at(
        dir: &std::path::Path,
        tls: bool,
        [identity, destination, policy]: [SocketAddr; 3],
    ) -> (knit_control::Addrs, tokio::sync::oneshot::Sender<()>) {
        let mut config = knit_control::config::Config::local(knit_control::config::IdentityConfig::for_dir(dir.join("identity")));
        config.serve_tls_identity = tls.then(|| CONTROL_IDENTITY.to_string());
        config.discovery.config_dir = Some(dir.join("manifests"));
        config.identity_addr = identity;
        config.destination_addr = destination;
        config.policy_addr = policy;
        let control = knit_control::Control::bind(config).await.expect("control plane starts");
        let addrs = control.addrs();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(control.run(async move {
            let _ = rx.await;
        }));
        (addrs, tx)
    }

    /// Stops knit-control and starts a new one on the same ports (a restart).
    pub async fn restart_control(&mut self, down_for: Duration) {
        let _ = self.shutdown.take().expect("running").send(());
        tokio::time::sleep(down_for).await;
        let (control, shutdown) = Self::start_control_at(&self.dir, self.tls, [self.control.identity, self.control.destination, self.control.policy]).await;
        assert_eq!(control.destination, self.control.destination);
        self.shutdown = Some(shutdown);
    }

    /// Writes one manifest file (a whole file is one source: rewriting it replaces its
    /// resources) and returns once knit-control has read it, so that what follows sees it.
    pub async fn write(&self, file: &str, yaml: &str) {
        let before = self.manifest_reads(file).await;
        // Write then rename, so the control plane never reads half a file.
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
        crate::assert_eventually!(self.manifest_reads(file).await > before, "knit-control reads {file}");
    }

    /// `manifest_reads_total{file}` from knit-control's admin server.
    async fn manifest_reads(&self, file: &str) -> u64 {
        let text = crate::harness::scrape(self.control.admin).await;
        let prefix = format!("manifest_reads_total{{file=\"{file}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    /// A ServiceAccount token for `identity`, written for `workload`.
    pub fn token_file(&self, workload: &str, identity: &str) -> PathBuf {
        let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 3600;
        let token_file = self.dir.join(format!("{workload}.token"));
        std::fs::write(&token_file, self.tokens.sign(&Claims { identity: identity.into(), expires_at })).unwrap();
        token_file
    }

    pub fn trust_anchors_file(&self) -> PathBuf {
        self.dir.join("identity").join(layout::TRUST_ANCHORS)
    }

    /// A proxy certified as `service_account` that discovers from knit-control as workload
    /// `workload`; `app` is the application behind its inbound side.
    pub async fn proxy(&self, workload: &str, service_account: &str, app: Option<SocketAddr>) -> TestProxy {
        let tls_name = self.tls.then(|| CONTROL_IDENTITY.to_string());
        let control = |addr: SocketAddr| knit_proxy::config::ControlAddr { addr: addr.to_string(), tls_name: tls_name.clone() };
        let name = identity(service_account);
        let token_file = self.token_file(workload, &name);
        let id = knit_proxy::identity::IdentityConfig {
            local_name: name,
            trust_anchors: knit_proxy::identity::TrustAnchors::File(self.trust_anchors_file()),
            token_file,
            svc_addr: control(self.control.identity),
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(86_400),
        };
        let (dst, pol) = (control(self.control.destination), control(self.control.policy));
        let workload_json = format!(r#"{{"ns":"{NS}","external_workload":"{workload}"}}"#);
        let proxy = TestProxy::start(move |c| {
            c.identity = Some(id);
            c.inbound.target_addr = app;
            c.discovery.destination_addr = Some(dst);
            c.discovery.policy_addr = Some(pol);
            c.discovery.workload = workload_json;
            c.discovery.inbound_ports = app.map(|a| a.port()).into_iter().collect();
            // Every workload shares 127.0.0.1 here: loopback must not pass every policy.
            c.discovery.trust_loopback = false;
            // knit-control may tap it, as its own identity.
            c.tap = Some(knit_proxy::config::TapConfig { listen_addr: "127.0.0.1:0".parse().unwrap(), svc_name: CONTROL_IDENTITY.into(), max_rps: 20 });
        })
        .await;
        crate::integration::mtls::ready(proxy.addrs.admin).await;
        proxy
    }

    /// A backend behind its own proxy, declared as an ExternalWorkload with `labels`, written
    /// to `workloads.yaml` with every workload declared so far.
    pub async fn workload(&self, backend: &Backend, service_account: &str, labels: &[(&str, &str)]) -> TestProxy {
        let proxy = self.proxy(backend.name, service_account, Some(backend.addr)).await;
        let id = identity(service_account);
        let labels: String = labels.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
        let doc = format!(
            "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n{labels}  annotations:\n    knit.dev/proxy-inbound-port: \"{inbound}\"\nspec:\n  meshTLS:\n    identity: {id}\n    serverName: {id}\n  workloadIPs:\n    - ip: 127.0.0.1\n  ports:\n    - name: http\n      port: {port}\n",
            name = backend.name,
            inbound = proxy.addrs.inbound.port(),
            port = backend.addr.port(),
        );
        let all = {
            let mut w = self.workloads.lock().unwrap();
            w.push(doc);
            w.join("---\n")
        };
        self.write("workloads.yaml", &all).await;
        proxy
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Service `name` in the test namespace selecting `labels`, port 8080 → the workloads' `http`
/// port, with `annotations`.
pub fn service(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> String {
    let selector: String = labels.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        let a: String = annotations.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
        format!("  annotations:\n{a}")
    };
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n{annotations}spec:\n  selector:\n{selector}  ports:\n    - name: http\n      port: 8080\n      targetPort: http\n")
}

/// Sends `n` GETs for `host` + `path` through `proxy`'s outbound listener over one keep-alive
/// HTTP/1 connection pool; returns the statuses and bodies.
pub async fn send(outbound: SocketAddr, host: &str, path: &str, n: usize) -> Vec<(u16, String)> {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = Request::get(format!("http://{outbound}{path}")).header("host", host).body(http_body_util::Empty::new()).unwrap();
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(rsp)) => {
                let status = rsp.status().as_u16();
                let body = rsp.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
                out.push((status, body));
            }
            Ok(Err(e)) => out.push((0, e.to_string())),
            Err(_) => out.push((0, "timed out".into())),
        }
    }
    out
}

/// How many of `results` were answered 200 by the backend named `name`.
pub fn count_from(results: &[(u16, String)], name: &str) -> usize {
    results.iter().filter(|(s, b)| *s == 200 && b.split_whitespace().next() == Some(name)).count()
}
