//! HTTP/1.1 through one proxy and through the meshed pair.

use crate::harness::{self, run, server, Mesh, TestProxy};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn curl_through_outbound_routes_by_host() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    let url = format!("http://{}/hello", proxy.addrs.outbound);
    let (ok, out, err) = run("curl", &["-sS", "--max-time", "10", "-H", "Host: web.test", &url]).await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(out, "hello\n");
    let n = proxy.metric("request_total", &[r#"direction="outbound""#, r#"authority="web.test:80""#, &format!(r#"target_addr="{app}""#)]).await;
    assert_eq!(n, 1.0);
    let ok = proxy.metric("response_total", &[r#"authority="web.test:80""#, r#"status_code="200""#, r#"classification="success""#]).await;
    assert_eq!(ok, 1.0);
    let buckets = proxy.metrics().await;
    assert!(buckets.contains(r#"le="50.0""#) && buckets.contains("response_latency_ms_bucket{"), "Linkerd's latency buckets");
}

#[tokio::test]
async fn meshed_http1_travels_as_http2_and_arrives_as_http1() {
    let app = server::start().await;
    let mesh = Mesh::start("web.test:8080", app).await;
    let url = format!("http://{}/headers", mesh.client.addrs.outbound);
    for _ in 0..5 {
        let (ok, out, err) = run("curl", &["-sS", "--max-time", "10", "-H", "Host: web.test:8080", &url]).await;
        assert!(ok, "{err}");
        assert!(out.contains("version: HTTP/1.1"), "the app sees HTTP/1.1: {out}");
        assert!(out.contains("host: web.test:8080"), "Host is preserved: {out}");
        assert!(!out.contains("l5d-orig-proto"), "the orig-proto header does not reach the app: {out}");
    }
    let server = &mesh.server;
    assert_eq!(server.metric("tcp_detect_protocol_total", &[r#"protocol="transport_header""#]).await, 1.0, "one multiplexed connection between the proxies");
    assert_eq!(server.metric("request_total", &[r#"direction="inbound""#]).await, 5.0);
    assert_eq!(mesh.client.metric("request_total", &[r#"direction="outbound""#, r#"authority="web.test:8080""#]).await, 5.0);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    let url = format!("http://{}/headers", proxy.addrs.outbound);
    let (ok, out, _) = run(
        "curl",
        &[
            "-sS",
            "-H",
            "Host: web.test",
            "-H",
            "Connection: keep-alive, x-private",
            "-H",
            "x-private: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "x-app: kept",
            &url,
        ],
    )
    .await;
    assert!(ok);
    assert!(out.contains("x-app: kept"), "{out}");
    for gone in ["x-private", "keep-alive", "connection: keep-alive"] {
        assert!(!out.to_lowercase().contains(gone), "{gone} reached the app: {out}");
    }
}

#[tokio::test]
async fn keep_alive_reuses_pooled_upstream_connections() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..20 {
        let req = http::Request::get("/hello").header("host", "web.test").body(Full::new(bytes::Bytes::new())).unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.unwrap();
    }
    let dst = proxy.metric("tcp_open_total", &[r#"peer="dst""#, &format!(r#"target_addr="{app}""#)]).await;
    assert_eq!(dst, 1.0, "20 sequential requests share one upstream connection");
}

async fn trailers_via(addr: std::net::SocketAddr) -> Option<http::HeaderMap> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/trailers").header("host", "web.test").header("te", "trailers").body(Full::new(bytes::Bytes::new())).unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "body\n");
    trailers
}

#[tokio::test]
async fn trailers_pass_through_http1() {
    let app = server::start().await;
    assert!(trailers_via(app).await.is_some(), "the app sends trailers");
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    let t = trailers_via(proxy.addrs.outbound).await.expect("trailers arrive through one proxy");
    assert_eq!(t["x-checksum"], "abc123");
    let mesh = Mesh::start("web.test:80", app).await;
    let t = trailers_via(mesh.client.addrs.outbound).await.expect("trailers arrive through the mesh");
    assert_eq!(t["x-checksum"], "abc123");
}

async fn websocket_roundtrip(addr: std::net::SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed before the 101: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"frames after the upgrade are opaque bytes"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn websocket_upgrade_through_one_proxy_and_the_mesh() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    websocket_roundtrip(proxy.addrs.outbound).await;
    let mesh = Mesh::start("web.test:80", app).await;
    websocket_roundtrip(mesh.client.addrs.outbound).await;
}

#[tokio::test]
async fn connect_passes_through() {
    let app = server::start().await;
    let mesh = Mesh::start("web.test:80", app).await;
    let mut s = tokio::net::TcpStream::connect(mesh.client.addrs.outbound).await.unwrap();
    s.write_all(b"CONNECT web.test:80 HTTP/1.1\r\nHost: web.test:80\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"tunnelled").await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"tunnelled");
}

/// 100 MB each way through two proxy processes: bodies stream, so peak memory stays small.
#[tokio::test]
async fn large_bodies_stream_without_memory_growth() {
    let app = server::start().await;
    let server = harness::BinProxy::spawn(&[]).await;
    let table = format!("web.test:80={app}@{}", server.inbound.port());
    let client = harness::BinProxy::spawn(&[("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table)]).await;
    const SIZE: u64 = 100 * 1024 * 1024;
    let url = format!("http://{}/big?bytes={SIZE}", client.outbound);
    let (ok, out, err) = run("curl", &["-sS", "--max-time", "60", "-H", "Host: web.test", "-o", "/dev/null", "-w", "%{size_download}", &url]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), SIZE.to_string());
    let upload = format!("http://{}/count", client.outbound);
    let script = format!("head -c {SIZE} /dev/zero | curl -sS --max-time 60 -H 'Host: web.test' -H 'Expect:' -T - {upload}");
    let (ok, out, err) = run("sh", &["-c", &script]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), SIZE.to_string(), "the app counted every uploaded byte");
    for (name, p) in [("client", &client), ("server", &server)] {
        let peak = p.peak_rss();
        assert!(peak < 40 * 1024 * 1024, "{name} proxy peaked at {} MiB while streaming 100 MiB each way", peak >> 20);
    }
}

/// What Knit sends to a meshed peer, checked against the contract (LINKERD-WIRE.md §6.3) with a
/// peer that downgrades as Linkerd's proxy does: it forwards the HTTP/2 request's headers as
/// they are, restoring nothing, so `Host` must travel in the upgraded request itself.
#[tokio::test]
async fn an_upgraded_request_carries_what_a_linkerd_peer_needs() {
    use knit_core::transport_header::{self, Decoded};
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, String)>();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = peer.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                // The transport header first (no identity here: the hop is plaintext).
                let mut buf = Vec::new();
                let (port, rest) = loop {
                    let mut chunk = [0u8; 512];
                    let n = tcp.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Decoded::Complete(h, used) = transport_header::decode(&buf).unwrap() {
                        break (h.port, buf.split_off(used));
                    }
                };
                let io = knit_proxy::io::PrefixedIo::new(bytes::Bytes::from(rest), tcp);
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut lines: Vec<String> = req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
                    lines.push(format!("version: {:?}", req.version()));
                    lines.sort();
                    let _ = seen.send((port, lines.join("\n")));
                    let mut rsp = http::Response::new(Full::new(bytes::Bytes::from_static(b"peer\n")));
                    rsp.headers_mut().insert("l5d-orig-proto", http::HeaderValue::from_static("HTTP/1.1"));
                    async move { Ok::<_, std::convert::Infallible>(rsp) }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    let table = format!("books.test:8080=127.0.0.1:7000@{peer_port}");
    let proxy = TestProxy::start(move |c| c.outbound.endpoints = table.parse().unwrap()).await;
    let url = format!("http://{}/books?page=2", proxy.addrs.outbound);
    let (ok, out, err) = run("curl", &["-sS", "--max-time", "10", "-H", "Host: books.test:8080", "-H", "Transfer-Encoding: chunked", "-d", "x", &url]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "peer\n", "the response's l5d-orig-proto turned it back into HTTP/1.1");
    let (port, headers) = seen_rx.recv().await.unwrap();
    assert_eq!(port, 7000, "the transport header names the application's port");
    assert!(headers.contains("host: books.test:8080"), "Host travels in the upgraded request:\n{headers}");
    assert!(headers.contains("l5d-orig-proto: HTTP/1.1"), "{headers}");
    assert!(headers.contains("version: HTTP/2.0"), "{headers}");
    assert!(!headers.contains("transfer-encoding"), "HTTP/2 forbids transfer-encoding:\n{headers}");
}

/// Reads one response (with a Content-Length body) from a raw connection: status and body.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before a response head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&b[..n]);
    }
    assert!(!head.contains("connection: close"), "the proxy asked to close: {head}");
    (status, String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned())
}

#[tokio::test]
async fn idle_http1_connections_park_and_resume_on_the_same_socket() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| {
        c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap();
        c.http.park_after = Duration::from_millis(100);
        c.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let req = b"GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    s.write_all(req).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()));
    // Parked, then a request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(req).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()), "served after parking");
    // Parked, then a request in two pieces: the first wakes it, hyper reads the rest.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(&req[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&req[10..]).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()), "a head split across the wake-up");
    // Parked, then two pipelined requests in one write.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(&[&req[..], &req[..]].concat()).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()));
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()), "the pipelined second request");
    assert_eq!(proxy.metric("request_total", &[r#"direction="outbound""#]).await, 5.0);
    assert_eq!(proxy.metric("tcp_open_total", &[r#"peer="src""#, r#"direction="outbound""#]).await, 1.0, "one client connection throughout");

    // A client that wakes a parked connection and then stalls meets the header timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: web").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled head was not timed out");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());

    // Another connection parks and is closed at the idle timeout, not kept for ever.
    let proxy = TestProxy::start(|c| {
        c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap();
        c.http.park_after = Duration::from_millis(100);
        c.http.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    s.write_all(req).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "hello\n".into()));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed at the idle timeout").unwrap();
    assert!(rest.is_empty(), "nothing written on an idle close: {rest:?}");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed after {:?}", started.elapsed());
}

/// The idle timeout counts from the end of the last request: a request slower than it is
/// answered, and a client that keeps asking more often than it keeps its one connection.
#[tokio::test]
async fn a_busy_connection_outlives_the_idle_timeout() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| {
        c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap();
        c.http.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    s.write_all(b"GET /slow?ms=900 HTTP/1.1\r\nHost: web.test\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200, "a request slower than the idle timeout");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut s).await, (200, "hello\n".into()));
    }
    assert_eq!(proxy.metric("tcp_open_total", &[r#"peer="src""#, r#"direction="outbound""#]).await, 1.0, "one connection for 2 s of requests");
    // Then quiet: closed.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed at the idle timeout").unwrap();
}
