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
    /// knit-control's cluster networks, when a test narrows them (egress: 127.0.0.1 outside).
    cluster_networks: Option<Vec<ipnet::IpNet>>,
    /// Applied last to knit-control's configuration (at every start).
    configure: Option<ControlConfigure>,
    /// The trust-anchor bundle proxies read (default: the identity directory's).
    pub anchors_file: PathBuf,
    /// Proxies' shortest certificate refresh (default 10 s).
    pub min_refresh: Duration,
}

/// Changes a test makes to knit-control's configuration.
pub type ControlConfigure = Arc<dyn Fn(&mut knit_control::config::Config) + Send + Sync>;

impl LocalMesh {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, false, None).await
    }

    /// As a cluster runs it: the proxies reach knit-control over TLS and check its identity.
    pub async fn start_tls(name: &str) -> Self {
        Self::start_with(name, true, None).await
    }

    /// With these cluster networks: addresses outside them are egress to knit-control.
    pub async fn start_with_cluster_networks(name: &str, networks: &[&str]) -> Self {
        Self::start_with(name, false, Some(networks.iter().map(|n| n.parse().unwrap()).collect())).await
    }

    /// With `configure` applied to knit-control's configuration.
    pub async fn start_configured(name: &str, configure: ControlConfigure) -> Self {
        Self::start_full(name, false, None, Some(configure)).await
    }

    /// Over TLS, with `configure` applied to knit-control's configuration.
    pub async fn start_tls_configured(name: &str, configure: ControlConfigure) -> Self {
        Self::start_full(name, true, None, Some(configure)).await
    }

    async fn start_with(name: &str, tls: bool, cluster_networks: Option<Vec<ipnet::IpNet>>) -> Self {
        Self::start_full(name, tls, cluster_networks, None).await
    }

    /// Another cluster linked to `other`: the same trust anchor, its own issuer and tokens.
    pub async fn start_linked(name: &str, other: &LocalMesh, configure: Option<ControlConfigure>) -> Self {
        Self::start_all(name, false, None, configure, Some(other.dir.join("identity"))).await
    }

    async fn start_full(name: &str, tls: bool, cluster_networks: Option<Vec<ipnet::IpNet>>, configure: Option<ControlConfigure>) -> Self {
        Self::start_all(name, tls, cluster_networks, configure, None).await
    }

    async fn start_all(
        name: &str,
        tls: bool,
        cluster_networks: Option<Vec<ipnet::IpNet>>,
        configure: Option<ControlConfigure>,
        anchor_of: Option<PathBuf>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("knit-discovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let material = layout::init(&dir.join("identity"), &layout::Params::default()).unwrap();
        if let Some(other) = anchor_of {
            // The other cluster's anchor replaces this one's, and signs a new issuer here.
            let id = dir.join("identity");
            for f in [layout::TRUST_ANCHORS, layout::ANCHOR_KEY] {
                std::fs::copy(other.join(f), id.join(f)).unwrap();
            }
            let anchor = knit_identity::create::Credentials {
                cert_pem: std::fs::read_to_string(id.join(layout::TRUST_ANCHORS)).unwrap(),
                key_pem: std::fs::read_to_string(id.join(layout::ANCHOR_KEY)).unwrap(),
            };
            let issuer = knit_identity::create::issuer(&format!("identity.{name}.cluster.local"), Duration::from_secs(86_400), &anchor).unwrap();
            layout::write_issuer(&id, &issuer).unwrap();
        }
        let any = "127.0.0.1:0".parse().unwrap();
        let (control, shutdown) = Self::start_control_at(&dir, tls, cluster_networks.as_deref(), configure.as_ref(), [any; 3]).await;
        let anchors_file = dir.join("identity").join(layout::TRUST_ANCHORS);
        Self {
            dir,
            manifests,
            control,
            tokens: material.token_key,
            tls,
            shutdown: Some(shutdown),
            workloads: Default::default(),
            cluster_networks,
            configure,
            anchors_file,
            min_refresh: Duration::from_secs(10),
        }
    }

    async fn start_control_at(
        dir: &std::path::Path,
        tls: bool,
        cluster_networks: Option<&[ipnet::IpNet]>,
        configure: Option<&ControlConfigure>,
        [identity, destination, policy]: [SocketAddr; 3],
    ) -> (knit_control::Addrs, tokio::sync::oneshot::Sender<()>) {
        let mut config = knit_control::config::Config::local(knit_control::config::IdentityConfig::for_dir(dir.join("identity")));
        config.serve_tls_identity = tls.then(|| CONTROL_IDENTITY.to_string());
        if let Some(n) = cluster_networks {
            config.discovery.cluster_networks = n.to_vec();
        }
        config.discovery.config_dir = Some(dir.join("manifests"));
        config.identity_addr = identity;
        config.destination_addr = destination;
        config.policy_addr = policy;
        if let Some(configure) = configure {
            configure(&mut config);
        }
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
        let addrs = [self.control.identity, self.control.destination, self.control.policy];
        let (control, shutdown) = Self::start_control_at(&self.dir, self.tls, self.cluster_networks.as_deref(), self.configure.as_ref(), addrs).await;
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
        self.anchors_file.clone()
    }

    /// A proxy certified as `service_account` that discovers from knit-control as workload
    /// `workload`; `app` is the application behind its inbound side.
    pub async fn proxy(&self, workload: &str, service_account: &str, app: Option<SocketAddr>) -> TestProxy {
        self.proxy_with(workload, service_account, app, |_| {}).await
    }

    /// As [`Self::proxy`], with `configure` applied last (port forwards, say).
    pub async fn proxy_with(
        &self,
        workload: &str,
        service_account: &str,
        app: Option<SocketAddr>,
        configure: impl FnOnce(&mut knit_proxy::config::Config),
    ) -> TestProxy {
        let tls_name = self.tls.then(|| CONTROL_IDENTITY.to_string());
        let control = |addr: SocketAddr| knit_proxy::config::ControlAddr { addr: addr.to_string(), tls_name: tls_name.clone() };
        let name = identity(service_account);
        let token_file = self.token_file(workload, &name);
        let id = knit_proxy::identity::IdentityConfig {
            local_name: name,
            trust_anchors: knit_proxy::identity::TrustAnchors::File(self.trust_anchors_file()),
            token_file,
            svc_addr: control(self.control.identity),
            min_refresh: self.min_refresh,
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
            configure(c);
        })
        .await;
        crate::integration::mtls::ready(proxy.addrs.admin).await;
        proxy
    }

    /// A client proxy (identity `client`) whose port forwards reach `authorities`, and each
    /// forward's address (port forwards stand in for the iptables redirect of a cluster; the tests
    /// in tests/netns*.sh use the real one).
    pub async fn forwarding_client(&self, authorities: &[&str]) -> (TestProxy, Vec<SocketAddr>) {
        let mut forwards = std::collections::BTreeMap::new();
        for a in authorities {
            forwards.insert(free_port().await, a.parse::<knit_core::destination::Authority>().unwrap());
        }
        let proxy = self.proxy_with("client", "client", None, move |c| c.outbound.port_forwards = forwards).await;
        let addrs = authorities.iter().map(|a| proxy.addrs.forwards.iter().find(|(_, f)| f.to_string() == *a).expect("forward").0).collect();
        (proxy, addrs)
    }

    /// A backend behind its own proxy, declared as an ExternalWorkload with `labels`, written
    /// to `workloads.yaml` with every workload declared so far.
    pub async fn workload(&self, backend: &Backend, service_account: &str, labels: &[(&str, &str)]) -> TestProxy {
        self.workload_at(backend.name, backend.addr, "http", service_account, labels).await
    }

    /// A workload named `name` whose application listens on `app`, its port named `port_name`.
    pub async fn workload_at(&self, name: &str, app: SocketAddr, port_name: &str, service_account: &str, labels: &[(&str, &str)]) -> TestProxy {
        self.workload_with(name, app, port_name, service_account, labels, |_| {}).await
    }

    /// As [`Self::workload_at`], with `configure` applied last to its proxy.
    pub async fn workload_with(
        &self,
        name: &str,
        app: SocketAddr,
        port_name: &str,
        service_account: &str,
        labels: &[(&str, &str)],
        configure: impl FnOnce(&mut knit_proxy::config::Config),
    ) -> TestProxy {
        let proxy = self.proxy_with(name, service_account, Some(app), configure).await;
        // knit-control's viz finds its proxy (to scrape and tap) by these.
        let ports = [("knit.dev/proxy-admin-port", proxy.addrs.admin.port()), ("knit.dev/proxy-tap-port", proxy.addrs.tap.map_or(0, |t| t.port()))];
        self.declare(name, app, port_name, service_account, proxy.addrs.inbound.port(), labels, &ports).await;
        proxy
    }

    /// Declares an ExternalWorkload (meshed, its proxy's inbound on `inbound`, its admin and tap
    /// ports in `ports`) in `workloads.yaml`.
    #[allow(clippy::too_many_arguments)]
    async fn declare(&self, name: &str, app: SocketAddr, port_name: &str, service_account: &str, inbound: u16, labels: &[(&str, &str)], ports: &[(&str, u16)]) {
        let id = identity(service_account);
        let labels: String = labels.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
        let ports: String = ports.iter().map(|(k, p)| format!("    {k}: \"{p}\"\n")).collect();
        let doc = format!(
            "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n{labels}  annotations:\n    knit.dev/proxy-inbound-port: \"{inbound}\"\n{ports}spec:\n  meshTLS:\n    identity: {id}\n    serverName: {id}\n  workloadIPs:\n    - ip: {ip}\n  ports:\n    - name: {port_name}\n      port: {port}\n",
            ip = app.ip(),
            port = app.port(),
        );
        let all = {
            let mut w = self.workloads.lock().unwrap();
            w.push(doc);
            w.join("---\n")
        };
        self.write("workloads.yaml", &all).await;
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

/// A Service `name` in the test namespace selecting `labels`, `port` → the workloads' port named
/// `target`, with `annotations`.
pub fn service_on(name: &str, labels: &[(&str, &str)], port: u16, target: &str, annotations: &[(&str, &str)]) -> String {
    service(name, labels, annotations).replace(
        "    - name: http\n      port: 8080\n      targetPort: http\n",
        &format!("    - name: {target}\n      port: {port}\n      targetPort: {target}\n"),
    )
}

/// How a TCP test backend behaves.
#[derive(Clone, Copy, Debug)]
pub enum Tcp {
    /// Answers each line `L` with `NAME L`.
    Echo,
    /// Greets first (`220 NAME ready`), as SMTP or MySQL servers do, then echoes.
    Banner,
}

/// A TCP backend that says who answered.
pub struct TcpBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
}

impl TcpBackend {
    pub async fn start(name: &'static str, behaviour: Tcp) -> Self {
        Self::start_on("127.0.0.1", name, behaviour).await
    }

    /// On another local address (any of 127.0.0.0/8), for tests that tell addresses apart.
    pub async fn start_on(ip: &str, name: &'static str, behaviour: Tcp) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = TcpListener::bind((ip, 0)).await.expect("bind tcp backend");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let (r, mut w) = tcp.into_split();
                    if matches!(behaviour, Tcp::Banner) && w.write_all(format!("220 {name} ready\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("{name} {line}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { name, addr, connections }
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// An HTTPS server with a self-signed certificate for `names`; it answers every request with
/// `NAME SNI`, the server name the client's ClientHello carried.
pub struct TlsBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
}

impl TlsBackend {
    pub async fn start(name: &'static str, names: &[&str]) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tls backend");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let body = format!("{name} {sni}\n");
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        Self { name, addr }
    }
}

/// `curl https://HOST:PORT/` with HOST resolved to `to` (a port forward), the certificate not
/// checked (it is self-signed): the body, or curl's error.
pub async fn curl_https(host: &str, to: SocketAddr) -> Result<String, String> {
    let url = format!("https://{host}:{}/", to.port());
    let resolve = format!("{host}:{}:{}", to.port(), to.ip());
    let (ok, out, err) = crate::harness::run("curl", &["-sS", "-k", "--max-time", "10", "--resolve", &resolve, &url]).await;
    if ok {
        Ok(out)
    } else {
        Err(err)
    }
}

/// One line through `addr`: sends `line`, returns the first line answered.
pub async fn tcp_line(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (r, mut w) = tcp.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tokio::io::BufReader::new(r).read_line(&mut answer)).await;
    match read {
        Ok(Ok(0)) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without an answer")),
        Ok(Ok(_)) => Ok(answer.trim_end().to_string()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s")),
    }
}

pub use crate::harness::free_port;

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
