//! A caller with no credentials against the proxy's trust boundaries and limits
//! (docs/security.md). Each test says what the caller gets, that others are still served, and
//! that the proxy stays within a stated memory bound.

use crate::harness::{get, request, server, BinProxy, TestProxy};
use knit_core::transport_header::{SessionProtocol, TransportHeader};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: u64 = 1024 * 1024;

/// What a connection gets for `bytes` within 10 s (the requests say `Connection: close`).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.expect("answered or closed");
    out
}

/// This host's address on its default route, when it has one (the loop check must know every
/// local address, not only loopback).
fn interface_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_loopback())
}

#[tokio::test]
async fn a_target_that_is_the_proxy_itself_is_refused_at_once_in_every_spelling() {
    let app = server::start().await;
    let table = format!("web.test:80={app}");
    let proxy = BinProxy::spawn(&[("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table), ("KNIT_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true")]).await;
    let (out, admin) = (proxy.outbound.port(), proxy.admin.port());
    let mut hosts: Vec<String> =
        ["0.0.0.0", "[::]", "127.0.0.1", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]", "localhost"].iter().map(|h| format!("{h}:{out}")).collect();
    hosts.extend(interface_address().map(|ip| SocketAddr::new(ip, out).to_string()));
    // The admin port too: a request must not reach /shutdown through the data path.
    hosts.push(format!("0.0.0.0:{admin}"));
    for host in &hosts {
        let started = Instant::now();
        let (status, body) = request(proxy.outbound, "POST", "/shutdown", host, "").await;
        assert_eq!(status, 508, "{host}: {body}");
        assert!(body.contains("routing loop"), "{host}: {body}");
        assert!(started.elapsed() < Duration::from_secs(2), "{host}: refused after {:?}", started.elapsed());
    }
    let loops = crate::harness::sum_metric(&crate::harness::scrape(proxy.admin).await, "http_errors_total", &[r#"error="loop""#, r#"blame="proxy""#]);
    assert_eq!(loops, hosts.len() as f64);
    assert_eq!(get(proxy.admin, "/ready").await.0, 200, "nothing reached /shutdown");
    assert!(proxy.fds() < 64, "no connection piled up: {} descriptors", proxy.fds());
    assert!(proxy.peak_rss() < 40 * MIB, "peak RSS {} MiB", proxy.peak_rss() / MIB);
    assert_eq!(request(proxy.outbound, "GET", "/hello", "web.test", "").await, (200, "hello\n".into()));
}

#[tokio::test]
async fn a_transport_header_may_not_name_the_proxys_own_ports() {
    // Without identity a proxy takes plaintext transport headers (local mode): the worst case.
    let app = server::start().await;
    let target = app.to_string();
    let proxy = BinProxy::spawn(&[("KNIT_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true"), ("KNIT_PROXY_INBOUND_TARGET_ADDR", &target)]).await;
    for port in [proxy.admin.port(), proxy.inbound.port(), proxy.outbound.port()] {
        let mut bytes = TransportHeader { port, name: None, protocol: Some(SessionProtocol::Http1) }.encode();
        bytes.extend_from_slice(b"POST /shutdown HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let answer = raw(proxy.inbound, &bytes).await;
        assert!(answer.is_empty(), "port {port}: the connection is closed, not served: {}", String::from_utf8_lossy(&answer));
    }
    // A gateway name on a proxy that is not a gateway is refused too.
    let mut bytes = TransportHeader { port: app.port(), name: Some("admin.knit.svc.cluster.local".into()), protocol: Some(SessionProtocol::Http1) }.encode();
    bytes.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(raw(proxy.inbound, &bytes).await.is_empty());
    let metrics = crate::harness::scrape(proxy.admin).await;
    assert_eq!(crate::harness::sum_metric(&metrics, "http_errors_total", &[r#"direction="inbound""#, r#"error="loop""#]), 3.0);
    assert_eq!(get(proxy.admin, "/ready").await.0, 200, "the proxy was not drained");
    // The application's own port is still reached that way.
    let mut bytes = TransportHeader { port: app.port(), name: None, protocol: Some(SessionProtocol::Http1) }.encode();
    bytes.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw(proxy.inbound, &bytes).await).contains("hello"));
}

/// With mesh identity: a certified peer (the worst an outsider can become) still cannot name
/// the admin or tap port, and the application never sees a forged identity or downgrade.
#[tokio::test]
async fn a_certified_peer_cannot_reach_admin_or_tap_and_headers_cannot_forge_anything() {
    use crate::integration::mtls::{ready, Pki, BOOKS, WEB};
    let pki = Pki::start("abuse-peer").await;
    let app = server::start().await;
    let (books, web) = (pki.proxy_identity(BOOKS), pki.proxy_identity(WEB));
    let server = TestProxy::start(move |c| {
        c.identity = Some(books);
        c.inbound.target_addr = Some(app);
        c.admin.shutdown_endpoint_enabled = true;
        c.tap = Some(knit_proxy::config::TapConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            svc_name: "viz.knit.serviceaccount.identity.knit.cluster.local".into(),
            max_rps: 10,
        });
    })
    .await;
    ready(server.addrs.admin).await;
    let inbound = server.addrs.inbound.port();
    let entry = |name: &str, port: u16| format!("{name}=127.0.0.1:{port}@{inbound}#{BOOKS}");
    let table =
        [entry("app.test:80", app.port()), entry("admin.test:80", server.addrs.admin.port()), entry("tap.test:80", server.addrs.tap.unwrap().port())].join(",");
    let client = TestProxy::start(move |c| {
        c.identity = Some(web);
        c.outbound.endpoints = table.parse().unwrap();
    })
    .await;
    ready(client.addrs.admin).await;
    for host in ["admin.test", "tap.test"] {
        let (status, _) = request(client.addrs.outbound, "POST", "/shutdown", host, "").await;
        assert_eq!(status, 502, "{host}: the peer refuses the transport header");
    }
    assert_eq!(server.metric("http_errors_total", &[r#"direction="inbound""#, r#"error="loop""#]).await, 2.0);
    assert_eq!(get(server.addrs.admin, "/ready").await.0, 200, "not drained");
    // The application sees the identity the peer proved, whatever the client wrote, and an
    // `l5d-orig-proto` from the application does not make its request skip the peer proxy.
    let mut tcp = TcpStream::connect(client.addrs.outbound).await.unwrap();
    let forged = "GET /headers HTTP/1.1\r\nHost: app.test\r\nl5d-client-id: admin.knit.serviceaccount.identity.knit.cluster.local\r\nl5d-orig-proto: HTTP/1.1\r\nl5d-proxy-secret: x\r\nConnection: close\r\n\r\n";
    tcp.write_all(forged.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.contains(&format!("l5d-client-id: {WEB}")), "{out}");
    assert!(!out.contains("admin.knit") && !out.contains("l5d-proxy-secret") && !out.contains("l5d-orig-proto"), "{out}");
    assert_eq!(server.metric("request_total", &[r#"direction="inbound""#, r#"tls="true""#]).await, 1.0, "it crossed the peer proxy over mTLS");
}

#[tokio::test]
async fn slow_clients_are_closed_within_the_header_timeout_while_others_are_served() {
    let app = server::start().await;
    let (table, target) = (format!("web.test:80={app}"), app.to_string());
    let proxy = BinProxy::spawn(&[
        ("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table),
        ("KNIT_PROXY_INBOUND_TARGET_ADDR", &target),
        ("KNIT_PROXY_HTTP_HEADER_READ_TIMEOUT", "1s"),
        ("KNIT_PROXY_DETECT_TIMEOUT", "1s"),
    ])
    .await;
    let slowloris = |addr: SocketAddr| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        // A request line (so it is HTTP), then one header byte every 100 ms, never the end.
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nx-slow: ").await.unwrap();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                r = tcp.read(&mut buf) => {
                    // Closed (or answered and closed): when?
                    let _ = r;
                    return started.elapsed();
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if tcp.write_all(b"a").await.is_err() {
                        return started.elapsed();
                    }
                }
            }
            assert!(started.elapsed() < Duration::from_secs(8), "{addr}: the slow client is still connected after 8 s");
        }
    };
    let slow = [proxy.inbound, proxy.outbound, proxy.admin].map(|a| tokio::spawn(slowloris(a)));
    // Meanwhile, everyone else is served.
    assert_eq!(request(proxy.outbound, "GET", "/hello", "web.test", "").await, (200, "hello\n".into()));
    assert_eq!(get(proxy.admin, "/live").await.0, 200);
    for s in slow {
        let took = s.await.unwrap();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "closed after {took:?}, expected about 1 s");
    }
}

#[tokio::test]
async fn many_idle_connections_under_a_low_descriptor_limit_leave_the_admin_server_answering() {
    let app = server::start().await;
    let target = app.to_string();
    // 300 descriptors: the data listeners may hold (300 - 128) / 2 = 86 connections.
    let proxy = BinProxy::spawn_with_nofile(&[("KNIT_PROXY_INBOUND_TARGET_ADDR", &target)], Some(300)).await;
    // More clients than the cap: the rest wait in the listener's backlog, and once that is full
    // (the kernel's somaxconn) a connect hangs on SYN retries: that is where this stops.
    let mut idle = Vec::new();
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(proxy.inbound)).await {
            Ok(Ok(s)) => idle.push(s),
            _ => break,
        }
    }
    assert!(idle.len() > 100, "{} connections", idle.len());
    // Hold them a moment so the proxy accepts what it will.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(get(proxy.admin, "/live").await.0, 200);
    assert_eq!(get(proxy.admin, "/ready").await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "the admin server answered after {:?}", started.elapsed());
    assert!(proxy.fds() <= 300, "{} descriptors", proxy.fds());
    let log = proxy.log.lock().unwrap().clone();
    assert!(log.contains("connection limit reached"), "the limit is said once: {log}");
    // Once the idle clients go, the data path serves again.
    drop(idle);
    crate::assert_eventually!(request(proxy.inbound, "GET", "/hello", "x", "").await == (200, "hello\n".to_string()), "served again");
    assert!(proxy.peak_rss() < 40 * MIB, "peak RSS {} MiB", proxy.peak_rss() / MIB);
}

#[tokio::test]
async fn one_http2_connection_cannot_fan_out_into_unbounded_http1_connections() {
    // An HTTP/1 backend that counts its concurrent connections and answers slowly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (open, peak) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (open, peak) = (open.clone(), peak.clone());
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    // The meshed hop multiplexes every request onto one HTTP/2 connection to the server proxy,
    // which downgrades each back to HTTP/1 for the application: the fan-out point.
    let server = TestProxy::start(|c| c.http.max_http1_per_endpoint = 8).await;
    let table = format!("slow.test:80={backend}@{}", server.addrs.inbound.port());
    let client = TestProxy::start(move |c| c.outbound.endpoints = table.parse().unwrap()).await;
    let outbound = client.addrs.outbound;
    let requests: Vec<_> = (0..200).map(|_| tokio::spawn(request(outbound, "GET", "/", "slow.test", ""))).collect();
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200, "every request is served, some after waiting: {body}");
    }
    assert_eq!(server.metric("tcp_detect_protocol_total", &[r#"protocol="transport_header""#]).await, 1.0, "one connection between the proxies");
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "{peak} upstream connections for one HTTP/2 client: the cap is 8");
}

/// A minimal TLS 1.2/1.3 ClientHello naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn ten_thousand_made_up_server_names_do_not_make_ten_thousand_series() {
    // The application: a sink that closes.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = sink.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = sink.accept().await {
            tokio::spawn(async move {
                let _ = tcp.read(&mut [0u8; 4096]).await;
            });
        }
    });
    let proxy = BinProxy::spawn(&[("KNIT_PROXY_INBOUND_TARGET_ADDR", &target)]).await;
    let inbound = proxy.inbound;
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..50)
        .map(|w| {
            let sent = sent.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let hello = client_hello(&format!("made-up-{w}-{i}.example"));
                    if let Ok(mut tcp) = TcpStream::connect(inbound).await {
                        let _ = tcp.write_all(&hello).await;
                        let _ = tcp.shutdown().await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut Vec::new())).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(sent.load(Ordering::Relaxed), 10_000);
    let metrics = crate::harness::scrape(proxy.admin).await;
    let names: std::collections::BTreeSet<&str> = metrics.lines().filter_map(|l| l.split("sni=\"").nth(1)?.split('"').next()).collect();
    assert!(names.len() <= 1001, "{} distinct sni values", names.len());
    assert!(names.contains("overflow"), "the rest share one value");
    assert!(metrics.len() < 8 * 1024 * 1024, "the scrape is {} KiB", metrics.len() / 1024);
    assert!(proxy.peak_rss() < 64 * MIB, "peak RSS {} MiB", proxy.peak_rss() / MIB);
}

/// Routing and authorization see what the application sees: one authority, one path.
#[tokio::test]
async fn odd_spellings_of_a_path_or_authority_do_not_walk_around_a_route() {
    let app = server::start().await;
    let table = format!("web.test:80={app}");
    let proxy = BinProxy::spawn(&[("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table)]).await;
    for path in ["/%68ello", "//hello", "/x/../hello", "/./hello"] {
        let (status, body) = request(proxy.outbound, "GET", path, "web.test", "").await;
        assert_eq!((status, body.as_str()), (200, "hello\n"), "{path} reaches the application as /hello");
    }
    // An absolute URI naming another host than Host: refused, whichever the proxy would route.
    let answer = raw(proxy.outbound, b"GET http://admin.internal/hello HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("names admin.internal but its Host header names web.test"), "{answer}");
    // Two Host headers: routing would read one, the application perhaps the other.
    let answer = raw(proxy.outbound, b"GET /hello HTTP/1.1\r\nHost: web.test\r\nHost: admin.internal\r\nConnection: close\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("more than one Host header"), "{answer}");
    // `Connection: host` does not take away the Host the request was routed by.
    let answer = raw(proxy.outbound, b"GET /headers HTTP/1.1\r\nHost: web.test\r\nConnection: close, host\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.to_ascii_lowercase().contains("host: web.test"), "{answer}");
}
