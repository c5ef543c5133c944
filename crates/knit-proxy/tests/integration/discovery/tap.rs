//! Tap: knit-control observes a proxy's requests over mTLS as its own identity; any other
//! identity is refused; matches and the per-subscriber rate limit apply.

use super::fixture::{count_from, identity, send, service, Backend, Behaviour, LocalMesh, CONTROL_IDENTITY, NS};
use knit_control::viz::{
    store::Target,
    tap::{Client, Filter, Tapped},
};
use std::{sync::Arc, time::Duration};

/// A tap client certified by the mesh's CA as `name`.
fn client(mesh: &LocalMesh, name: &str) -> Arc<Client> {
    let service = knit_control::identity::Service::load(&knit_control::config::IdentityConfig::for_dir(mesh.dir.join("identity"))).unwrap();
    Arc::new(Client::new(Arc::new(service), name.to_string()))
}

/// Taps `target` with `filter` for `secs`, collecting what arrives.
async fn collect(client: Arc<Client>, target: Target, filter: Filter, secs: u64) -> Vec<Result<Tapped, String>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let task = tokio::spawn(client.run(vec![target], filter, 1000, tx));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(item) = rx.recv().await {
            out.push(item);
        }
    })
    .await;
    task.abort();
    out
}

/// What knit-control taps for workload `name` (its pod and deployment share the name).
fn target(name: &str, proxy: &crate::harness::TestProxy) -> Target {
    Target {
        admin: proxy.addrs.admin,
        namespace: NS.into(),
        deployment: name.into(),
        pod: name.into(),
        identity: Some(identity(name)),
        tap: proxy.addrs.tap.expect("tap is on"),
    }
}

/// `n` requests to books for `path` through `outbound`, 50 ms apart, in the background.
pub(super) fn traffic(outbound: std::net::SocketAddr, path: &'static str, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..n {
            send(outbound, "books:8080", path, 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knit_control_taps_over_mtls_and_nobody_else_can() {
    let mesh = LocalMesh::start("tap").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy("web", "web", None).await;
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/warm", 5).await, "books"), 5);
    let target = target("books", &books_proxy);

    // Traffic to two paths while knit-control taps only one of them.
    let outbound = web.addrs.outbound;
    let load = tokio::spawn(async move {
        for _ in 0..30 {
            send(outbound, "books:8080", "/books/1", 1).await;
            send(outbound, "books:8080", "/other", 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let filter = Filter { path_prefix: Some("/books".into()), ..Default::default() };
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target.clone(), filter, 3).await;
    load.abort();
    let tapped: Vec<&Tapped> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!tapped.is_empty(), "requests were tapped: {seen:?}");
    for t in &tapped {
        assert_eq!((t.direction.as_str(), t.method.as_str(), t.path.as_str(), t.status), ("inbound", "GET", "/books/1", Some(200)), "{t:?}");
        assert_eq!(t.source_identity.as_deref(), Some(identity("web").as_str()), "the client's identity, proven by mTLS");
        assert_eq!(t.destination_identity.as_deref(), Some(identity("books").as_str()));
        assert!(t.latency_ms > 0.0 && t.response_bytes > 0, "{t:?}");
    }

    // The per-subscriber limit (20 requests per second here) holds under a burst of 200.
    let outbound = web.addrs.outbound;
    let burst = tokio::spawn(async move { send(outbound, "books:8080", "/books/burst", 200).await });
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target.clone(), Filter::default(), 2).await;
    let _ = burst.await;
    let n = seen.iter().filter(|r| r.is_ok()).count();
    assert!(n > 0 && n <= 20 * 3, "at most about 20 per second over 2 s (and a full bucket), got {n}");

    // A limit: the stream ends after that many requests.
    let outbound = web.addrs.outbound;
    let more = tokio::spawn(async move { send(outbound, "books:8080", "/books/limited", 20).await });
    let started = std::time::Instant::now();
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target.clone(), Filter { limit: 3, ..Default::default() }, 10).await;
    let _ = more.await;
    assert_eq!(seen.iter().filter(|r| r.is_ok()).count(), 3, "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(9), "the stream ended on its own once the limit was reached");

    // Another identity, from the same CA, is refused, and told why.
    let intruder = format!("intruder.{NS}.serviceaccount.identity.knit.cluster.local");
    let seen = collect(client(&mesh, &intruder), target, Filter::default(), 2).await;
    let error = seen.iter().find_map(|r| r.as_ref().err()).unwrap_or_else(|| panic!("refused: {seen:?}"));
    assert!(error.contains(&format!("tap is only for {CONTROL_IDENTITY}")) && error.contains(&intruder), "{error}");
    assert!(seen.iter().all(|r| r.is_err()), "nothing tapped for the intruder");
    assert!(books_proxy.metric("request_total", &[]).await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_tapped_and_outbound_events_name_the_destination() {
    let mesh = LocalMesh::start("tap-own").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    mesh.write("policy.yaml", &super::policy::books_policy(&identity("web"))).await;
    let web = mesh.proxy("web", "web", None).await;
    let other = mesh.proxy("other", "other", None).await;
    crate::assert_eventually!(send(other.addrs.outbound, "books:8080", "/", 1).await[0].0 == 403, "the policy applies");

    // books' proxy refuses other: the refusal is tapped, though no request reached books.
    let denied = traffic(other.addrs.outbound, "/denied", 20);
    let filter = Filter { path_prefix: Some("/denied".into()), ..Default::default() };
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target("books", &books_proxy), filter, 2).await;
    denied.abort();
    let tapped: Vec<&Tapped> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!tapped.is_empty(), "refusals were tapped: {seen:?}");
    for t in &tapped {
        assert_eq!((t.direction.as_str(), t.status, t.source_identity.as_deref()), ("inbound", Some(403), Some(identity("other").as_str())), "{t:?}");
    }

    // web's outbound events name where the request went, from discovery's labels.
    let calls = traffic(web.addrs.outbound, "/books/2", 20);
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target("web", &web), Filter::default(), 2).await;
    calls.abort();
    let tapped: Vec<&Tapped> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!tapped.is_empty(), "web's calls were tapped: {seen:?}");
    for t in &tapped {
        assert_eq!((t.direction.as_str(), t.status), ("outbound", Some(200)), "{t:?}");
        assert_eq!((t.destination_namespace.as_deref(), t.destination_deployment.as_deref()), (Some(NS), Some("books")), "{t:?}");
    }
}

/// Tap takes few connections (16): a client without the allowed identity, or one that finishes
/// its TLS handshake and says nothing, must not keep them from knit-control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_identity_cannot_hold_the_tap_port() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mesh = LocalMesh::start("tap-hold").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy("web", "web", None).await;
    let tap = books_proxy.addrs.tap.expect("tap is on");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(mesh.trust_anchors_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..16 {
        let tcp = tokio::net::TcpStream::connect(tap).await.unwrap();
        let tls = connector.connect(ServerName::try_from(identity("books")).unwrap(), tcp).await.expect("the handshake itself succeeds");
        held.push(tokio::spawn(async move {
            let mut tls = tls;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut buf)).await;
        }));
    }
    for h in held {
        h.await.unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "the silent clients were closed after {took:?}, expected about 5 s");

    // knit-control taps as before.
    let calls = traffic(web.addrs.outbound, "/books/1", 40);
    let seen = collect(client(&mesh, CONTROL_IDENTITY), target("books", &books_proxy), Filter::default(), 2).await;
    calls.abort();
    assert!(seen.iter().any(|r| r.is_ok()), "{seen:?}");
}
