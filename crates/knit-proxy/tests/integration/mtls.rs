//! Mesh identity and mTLS: proxies certified by a real knit-control, talking TLS 1.3 to each
//! other, with the client's identity handed to the application.

use crate::harness::{get, request, run, server, TestProxy};
use knit_control::{
    config::{Config as ControlConfig, IdentityConfig as ControlIdentity},
    Control,
};
use knit_identity::{
    create, layout,
    token::{Claims, TokenKey},
};
use knit_proxy::identity::{IdentityConfig, TrustAnchors};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

const DAY: Duration = Duration::from_secs(86_400);
pub const WEB: &str = "web.default.serviceaccount.identity.knit.cluster.local";
pub const BOOKS: &str = "books.default.serviceaccount.identity.knit.cluster.local";

/// A control plane with fresh identity material in a temporary directory.
pub struct Pki {
    pub dir: PathBuf,
    pub identity: SocketAddr,
    pub anchor: create::Credentials,
    key: TokenKey,
    min_refresh: Duration,
}

impl Pki {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, DAY, Duration::from_secs(20)).await
    }

    /// A control plane issuing leaves of `lifetime` (plus `skew` at each end).
    pub async fn start_with(name: &str, lifetime: Duration, skew: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!("knit-mtls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let material = layout::init(&dir, &layout::Params::default()).unwrap();
        let mut identity = ControlIdentity::for_dir(&dir);
        identity.issuance_lifetime = lifetime;
        identity.clock_skew = skew;
        identity.reload_interval = Duration::from_millis(100);
        let config = ControlConfig::local(identity);
        let control = Control::bind(config).await.expect("control plane");
        let identity = control.addrs().identity;
        tokio::spawn(control.run(std::future::pending()));
        let min_refresh = if lifetime < Duration::from_secs(60) { Duration::from_millis(500) } else { Duration::from_secs(10) };
        Self { dir, identity, anchor: material.anchor, key: material.token_key, min_refresh }
    }

    /// The proxy settings for `name`, with a token file written for it.
    pub fn proxy_identity(&self, name: &str) -> IdentityConfig {
        let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 3600;
        let token_file = self.dir.join(format!("{name}.token"));
        std::fs::write(&token_file, self.key.sign(&Claims { identity: name.into(), expires_at })).unwrap();
        IdentityConfig {
            local_name: name.into(),
            trust_anchors: TrustAnchors::File(self.dir.join(layout::TRUST_ANCHORS)),
            token_file,
            svc_addr: self.identity.into(),
            min_refresh: self.min_refresh,
            max_refresh: DAY,
        }
    }

    pub fn write_anchors(&self, anchors: &[&create::Credentials]) {
        let bundle: String = anchors.iter().map(|a| a.cert_pem.as_str()).collect();
        std::fs::write(self.dir.join(layout::TRUST_ANCHORS), bundle).unwrap();
    }

    pub fn write_issuer(&self, issuer: &create::Credentials) {
        layout::write_issuer(&self.dir, issuer).unwrap();
    }
}

pub async fn ready(admin: SocketAddr) {
    crate::assert_eventually!(get(admin, "/ready").await.0 == 200, "the proxy becomes ready once certified");
}

/// A server proxy for `app` with identity BOOKS, and a client proxy with identity WEB whose
/// table reaches it as `books.test:80` over mesh TLS expecting `expected`.
pub async fn pair(pki: &Pki, app: SocketAddr, expected: &str) -> (TestProxy, TestProxy) {
    pair_across(pki, pki, app, expected).await
}

/// As [`pair`], with the client certified by `client_pki` and the server by `server_pki`.
pub async fn pair_across(client_pki: &Pki, server_pki: &Pki, app: SocketAddr, expected: &str) -> (TestProxy, TestProxy) {
    let server_id = server_pki.proxy_identity(BOOKS);
    let server = TestProxy::start(move |c| {
        c.identity = Some(server_id);
        c.inbound.target_addr = Some(app);
    })
    .await;
    let client_id = client_pki.proxy_identity(WEB);
    let table = format!("books.test:80={app}@{}#{expected}", server.addrs.inbound.port());
    let client = TestProxy::start(move |c| {
        c.identity = Some(client_id);
        c.outbound.endpoints = table.parse().unwrap();
    })
    .await;
    ready(server.addrs.admin).await;
    ready(client.addrs.admin).await;
    (client, server)
}

#[tokio::test]
async fn meshed_pair_talks_mtls_and_the_app_sees_the_client_identity() {
    let pki = Pki::start("pair").await;
    let app = server::start().await;
    let (client, server) = pair(&pki, app, BOOKS).await;
    let url = format!("http://{}/headers", client.addrs.outbound);
    let (ok, out, err) = run("curl", &["-sS", "--max-time", "10", "-H", "Host: books.test", "-H", "l5d-client-id: spoofed", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("l5d-client-id: {WEB}")), "the app sees the proven client identity: {out}");
    assert!(!out.contains("spoofed"), "a client-supplied l5d-client-id never reaches the app: {out}");
    let server_id = format!(r#"server_id="{BOOKS}""#);
    let client_label = format!(r#"client_id="{WEB}""#);
    assert_eq!(client.metric("request_total", &[r#"direction="outbound""#, r#"tls="true""#, &server_id]).await, 1.0);
    assert_eq!(server.metric("request_total", &[r#"direction="inbound""#, r#"tls="true""#, &client_label]).await, 1.0);
    assert_eq!(server.metric("tcp_open_total", &[r#"peer="src""#, r#"tls="true""#, &client_label]).await, 1.0);
    assert!(client.metric("identity_cert_expiration_timestamp_seconds", &[]).await > 0.0);
    assert_eq!(client.metric("identity_cert_refreshes_total", &[]).await, 1.0);
}

#[tokio::test]
async fn plaintext_clients_are_labelled_no_identity() {
    let pki = Pki::start("plain").await;
    let app = server::start().await;
    let (_client, server) = pair(&pki, app, BOOKS).await;
    let (status, body) = request(server.addrs.inbound, "GET", "/headers", "books.test", "").await;
    assert_eq!(status, 200);
    assert!(!body.contains("l5d-client-id"), "{body}");
    let n = server.metric("request_total", &[r#"direction="inbound""#, r#"tls="no_identity""#, r#"no_tls_reason="no_tls_from_remote""#]).await;
    assert_eq!(n, 1.0);
}

#[tokio::test]
async fn a_plaintext_transport_header_is_refused_once_identity_is_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::start("direct").await;
    let app = server::start().await;
    let (_client, server) = pair(&pki, app, BOOKS).await;
    let header =
        knit_core::transport_header::TransportHeader { port: app.port(), name: None, protocol: Some(knit_core::transport_header::SessionProtocol::Http1) };
    let mut s = tokio::net::TcpStream::connect(server.addrs.inbound).await.unwrap();
    s.write_all(&header.encode()).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("closed");
    assert!(out.is_empty(), "nothing is proxied: {}", String::from_utf8_lossy(&out));
    assert_eq!(server.metric("tls_handshake_failures_total", &[r#"reason="direct_without_tls""#]).await, 1.0);
}

/// Mesh TLS without a client certificate, negotiating the transport header anyway: the header
/// (which chooses a local port and a protocol) is a peer proxy's, and a client that proved no
/// identity is not one.
#[tokio::test]
async fn a_transport_header_inside_tls_without_a_client_identity_is_refused() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::start("direct-anon").await;
    let app = server::start().await;
    let (_client, server) = pair(&pki, app, BOOKS).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.anchor.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addrs.inbound).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(ServerName::try_from(BOOKS).unwrap(), tcp).await.unwrap();
    let header =
        knit_core::transport_header::TransportHeader { port: app.port(), name: None, protocol: Some(knit_core::transport_header::SessionProtocol::Http1) };
    tls.write_all(&header.encode()).await.unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await.expect("closed");
    assert!(out.is_empty(), "nothing is proxied: {}", String::from_utf8_lossy(&out));
    assert_eq!(server.metric("tls_handshake_failures_total", &[r#"reason="direct_without_identity""#]).await, 1.0);
}

#[tokio::test]
async fn a_peer_with_the_wrong_identity_is_refused_with_an_explanation() {
    let pki = Pki::start("wrong").await;
    let app = server::start().await;
    let expected = "db.default.serviceaccount.identity.knit.cluster.local";
    let (client, _server) = pair(&pki, app, expected).await;
    let url = format!("http://{}/hello", client.addrs.outbound);
    let (_, out, _) = run("curl", &["-sS", "-i", "--max-time", "10", "-H", "Host: books.test", &url]).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains(&format!("expected identity {expected}")), "the error names who was expected: {out}");
    assert!(out.contains(BOOKS), "and who was presented: {out}");
    assert_eq!(client.metric("tls_handshake_failures_total", &[r#"direction="outbound""#, r#"reason="wrong_identity""#]).await, 1.0);
}

#[tokio::test]
async fn a_proxy_is_not_ready_without_a_certificate() {
    let dead: SocketAddr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-identity");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("anchors.pem"), create::trust_anchor("x", DAY).unwrap().cert_pem).unwrap();
    std::fs::write(dir.join("token"), "knit1.x.y").unwrap();
    let cfg = IdentityConfig {
        local_name: WEB.into(),
        trust_anchors: TrustAnchors::File(dir.join("anchors.pem")),
        token_file: dir.join("token"),
        svc_addr: dead.into(),
        min_refresh: Duration::from_secs(10),
        max_refresh: DAY,
    };
    let proxy = TestProxy::start(move |c| c.identity = Some(cfg)).await;
    crate::assert_eventually!(proxy.metric("identity_cert_refresh_failures_total", &[]).await >= 1.0, "the refresh failed");
    assert_eq!(get(proxy.addrs.admin, "/ready").await.0, 503);
    assert_eq!(get(proxy.addrs.admin, "/live").await.0, 200);
}

/// Steady traffic through three meshed pairs while the trust anchor and the issuer rotate:
/// add the new anchor to the bundle, switch the issuer, wait until every proxy holds a leaf from
/// the new issuer, remove the old anchor. Not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_and_issuer_rotation_drop_no_request() {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };
    // 4 s leaves with 1 s skew: proxies refresh about every 3.5 s.
    let pki = Pki::start_with("rotate", Duration::from_secs(4), Duration::from_secs(1)).await;
    let mut pairs = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let app = server::start().await;
        apps.push(app);
        pairs.push(pair(&pki, app, BOOKS).await);
    }
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (client, _) in &pairs {
        let (outbound, ok, failed, stop) = (client.addrs.outbound, ok.clone(), failed.clone(), stop.clone());
        // About 70 requests per second per pair, over a few keep-alive connections.
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(14_300));
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (ok, failed) = (ok.clone(), failed.clone());
                inflight.spawn(async move {
                    let (status, _) = request(outbound, "GET", "/hello", "books.test", "").await;
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                });
            }
            while inflight.join_next().await.is_some() {}
        }));
    }
    let admins: Vec<SocketAddr> = pairs.iter().flat_map(|(c, s)| [c.addrs.admin, s.addrs.admin]).collect();
    let refreshes = |admins: Vec<SocketAddr>| async move {
        let mut v = Vec::new();
        for a in admins {
            v.push(crate::harness::sum_metric(&crate::harness::scrape(a).await, "identity_cert_refreshes_total", &[]));
        }
        v
    };
    // Waits until every proxy has refreshed its certificate `n` more times (each refresh reads
    // the anchors and the issuer's answer anew): however slow the machine, the step has landed.
    let refreshed = |n: f64| {
        let admins = admins.clone();
        async move {
            let before = refreshes(admins.clone()).await;
            for _ in 0..150 {
                let now = refreshes(admins.clone()).await;
                if now.iter().zip(&before).all(|(a, b)| *a >= b + n) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }
    };
    // Traffic flows in every phase, not only around them.
    let progress = |ok: &AtomicU64, since: u64| ok.load(Ordering::Relaxed) > since;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 1. The new anchor joins the bundle.
    let mark = ok.load(Ordering::Relaxed);
    let next_anchor = create::trust_anchor("root-2.knit.cluster.local", 3650 * DAY).unwrap();
    pki.write_anchors(&[&pki.anchor, &next_anchor]);
    assert!(refreshed(1.0).await, "every proxy read the new bundle");
    assert!(progress(&ok, mark), "traffic while the anchor was added");
    // 2. The issuer switches to one under the new anchor; every proxy refreshes twice more, so
    // its leaf certainly comes from the new issuer.
    let mark = ok.load(Ordering::Relaxed);
    pki.write_issuer(&create::issuer("identity-2.knit.cluster.local", 365 * DAY, &next_anchor).unwrap());
    assert!(refreshed(2.0).await, "every proxy obtained leaves from the new issuer");
    assert!(progress(&ok, mark), "traffic while the issuer switched");
    // 3. The old anchor leaves the bundle.
    let mark = ok.load(Ordering::Relaxed);
    pki.write_anchors(&[&next_anchor]);
    assert!(refreshed(1.0).await, "every proxy read the bundle without the old anchor");
    assert!(progress(&ok, mark), "traffic after the old anchor left");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "no request failed during the rotation");
    for a in admins {
        let m = crate::harness::scrape(a).await;
        assert_eq!(crate::harness::sum_metric(&m, "response_total", &[r#"classification="failure""#]), 0.0, "a proxy saw a failure");
        assert_eq!(crate::harness::sum_metric(&m, "tls_handshake_failures_total", &[]), 0.0, "a handshake failed");
    }
    // Pooled connections survive rotation by design; a brand-new client proves that fresh
    // handshakes work under the new anchor alone.
    let (_, server) = &pairs[0];
    let client_id = pki.proxy_identity(WEB);
    let table = format!("books.test:80={}@{}#{BOOKS}", apps[0], server.addrs.inbound.port());
    let fresh = TestProxy::start(move |c| {
        c.identity = Some(client_id);
        c.outbound.endpoints = table.parse().unwrap();
    })
    .await;
    ready(fresh.addrs.admin).await;
    let (status, body) = request(fresh.addrs.outbound, "GET", "/hello", "books.test", "").await;
    assert_eq!((status, body.as_str()), (200, "hello\n"), "a new mTLS connection after the rotation");
}

#[tokio::test]
async fn a_peer_certified_by_another_ca_is_refused() {
    let ours = Pki::start("ca-ours").await;
    let theirs = Pki::start("ca-theirs").await;
    let app = server::start().await;
    let (client, server) = pair_across(&ours, &theirs, app, BOOKS).await;
    let (status, body) = request(client.addrs.outbound, "GET", "/hello", "books.test", "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("trust anchors") && body.contains("issued by"), "{body}");
    assert_eq!(client.metric("tls_handshake_failures_total", &[r#"reason="untrusted_issuer""#]).await, 1.0);
    // The server side saw the client abort the handshake; it keeps serving others.
    let (status, _) = request(server.addrs.inbound, "GET", "/hello", "books.test", "").await;
    assert_eq!(status, 200);
}
