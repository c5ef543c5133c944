//! Bad input gets a clear answer and costs nobody else anything.

use crate::harness::{request, server, TestProxy};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn web_proxy() -> (TestProxy, SocketAddr) {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    (proxy, app)
}

async fn still_serves(proxy: &TestProxy) {
    let (status, body) = request(proxy.addrs.outbound, "GET", "/hello", "web.test", "").await;
    assert_eq!((status, body.as_str()), (200, "hello\n"), "the proxy keeps serving other clients");
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the proxy answers or closes");
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn malformed_requests_get_400_and_garbage_is_closed() {
    let (proxy, _) = web_proxy().await;
    let rsp = raw(proxy.addrs.outbound, b"GET /hello HTTP/1.1\r\nHost: web.test\r\nthis is not a header\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    // Not HTTP at all, and no original destination: nowhere to send it, so it is closed.
    let rsp = raw(proxy.addrs.outbound, b"\x00\x01garbage\r\n\r\n").await;
    assert_eq!(rsp, "");
    let rsp = raw(proxy.addrs.outbound, b"GET /hello HTTP/1.1\r\nHost: bad host name\r\nConnection: close\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(rsp.contains("not a valid authority"), "{rsp}");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (proxy, _) = web_proxy().await;
    let big = "x".repeat(100 * 1024);
    let req = format!("GET /hello HTTP/1.1\r\nHost: web.test\r\nx-big: {big}\r\n\r\n");
    let rsp = raw(proxy.addrs.outbound, req.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{}", &rsp[..rsp.len().min(200)]);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn silent_clients_are_handed_off_quickly() {
    let (proxy, _) = web_proxy().await;
    // Local mode, no original destination: a silent client has nowhere to go and is closed.
    let mut s = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(proxy.metric("tcp_detect_timeout_total", &[r#"reason="silent_client""#, r#"direction="outbound""#]).await, 1.0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn refused_and_resetting_upstreams() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // Half a response, then a reset (SO_LINGER 0).
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
            // A zero linger resets at once; it cannot block the thread.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let app = server::start().await;
    let table = format!("gone.test:80={closed},reset.test:80={reset_addr},web.test:80={app}");
    let proxy = TestProxy::start(move |c| c.outbound.endpoints = table.parse().unwrap()).await;
    let rsp = raw(proxy.addrs.outbound, b"GET / HTTP/1.1\r\nHost: gone.test\r\nConnection: close\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 502"), "{rsp}");
    assert!(rsp.contains("l5d-proxy-error: connecting to"), "the reason is in the response: {rsp}");
    assert_eq!(proxy.metric("http_errors_total", &[r#"error="connect""#]).await, 1.0);
    let rsp = raw(proxy.addrs.outbound, b"GET / HTTP/1.1\r\nHost: reset.test\r\nConnection: close\r\n\r\n").await;
    assert!(!rsp.contains("content-length: 100\r\n\r\npartial") || rsp.len() < 150, "a truncated body is not passed off as complete: {rsp}");
    assert_eq!(proxy.metric("response_total", &[r#"authority="reset.test:80""#, r#"classification="failure""#]).await, 1.0);
    still_serves(&proxy).await;
}

/// Opens streams in batches of `batch` and resets them after `hold`; returns how many were
/// reset before the connection ended, and whether it ended.
async fn flood(addr: SocketAddr, batch: usize, hold: Duration) -> (usize, bool) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut reset = 0;
    'flood: for _ in 0..5_000 / batch {
        let mut streams = Vec::new();
        for _ in 0..batch {
            client = match tokio::time::timeout(Duration::from_secs(2), client.ready()).await {
                Ok(Ok(c)) => c,
                _ => break 'flood,
            };
            let req = http::Request::get("http://web.test/slow?ms=2000").body(()).unwrap();
            match client.send_request(req, true) {
                Ok((_, stream)) => streams.push(stream),
                Err(_) => break 'flood,
            }
        }
        tokio::time::sleep(hold).await;
        for mut s in streams {
            s.send_reset(h2::Reason::CANCEL);
            reset += 1;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task).await.is_ok();
    (reset, ended)
}

/// CVE-2023-44487: a client that opens and cancels streams as fast as it can is cut off; others
/// are served. Streams reset before the proxy accepts them meet h2's own limit...
#[tokio::test]
async fn http2_rapid_reset_before_accept_is_cut_off() {
    let (proxy, _) = web_proxy().await;
    let (reset, ended) = flood(proxy.addrs.outbound, 5_000, Duration::ZERO).await;
    assert!(ended, "the flooding connection is closed (the client reset {reset} streams)");
    let started = proxy.metric("request_total", &[]).await;
    assert!(started < 1_000.0, "the proxy did not work for the flood ({started} requests started)");
    still_serves(&proxy).await;
}

/// ...and streams the proxy was already working on meet its per-connection cancellation budget.
#[tokio::test]
async fn http2_rapid_reset_after_accept_is_cut_off() {
    let (proxy, _) = web_proxy().await;
    // Holding each batch 50 ms lets the proxy accept and start every stream before its reset.
    let (reset, ended) = flood(proxy.addrs.outbound, 50, Duration::from_millis(50)).await;
    assert!(ended, "the flooding connection is closed (the client reset {reset} streams)");
    assert!(reset < 5_000, "cut off before the flood ended");
    assert_eq!(proxy.metric("http_errors_total", &[r#"error="rapid_reset""#]).await, 1.0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn bad_configuration_is_reported_at_once_with_exit_64() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy"))
        .env_clear()
        .env("KNIT_PROXY_INBOUND_LISTEN_ADDR", "localhost")
        .env("KNIT_PROXY_SHUTDOWN_GRACE_PERIOD", "soon")
        .env("KNIT_PROXY_OUTBOUND_ENDPOINTS", "web=1.2.3.4:80")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for var in ["KNIT_PROXY_INBOUND_LISTEN_ADDR", "KNIT_PROXY_SHUTDOWN_GRACE_PERIOD", "KNIT_PROXY_OUTBOUND_ENDPOINTS"] {
        assert!(err.contains(var), "{var} is named: {err}");
    }
    // And a listener that cannot be bound says which one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy"))
        .env_clear()
        .env("KNIT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_ADMIN_LISTEN_ADDR", &addr)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("binding the admin listener on {addr}")), "{err}");
}

#[tokio::test]
async fn a_client_that_breaks_off_its_body_is_blamed_not_the_upstream() {
    let (proxy, _) = web_proxy().await;
    let mut s = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    // 100,000 bytes promised, 1,000 sent, then the client stops sending.
    s.write_all(b"POST /count HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
    s.write_all(&[b'x'; 1000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the proxy answers or closes");
    let rsp = String::from_utf8_lossy(&out);
    assert!(rsp.is_empty() || rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    let errors = |labels: &'static [&'static str]| {
        let proxy = &proxy;
        async move { proxy.metric("http_errors_total", labels).await }
    };
    assert!(crate::harness::eventually(Duration::from_secs(5), || async { errors(&[r#"error="client_body""#, r#"blame="client""#]).await == 1.0 }).await);
    assert_eq!(errors(&[r#"blame="upstream""#]).await, 0.0, "the upstream did nothing wrong");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn grpc_clients_get_the_proxy_s_errors_as_grpc_statuses() {
    let (proxy, _) = web_proxy().await;
    // No destination named unknown.test: the proxy answers itself.
    let rsp = raw(
        proxy.addrs.outbound,
        b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: unknown.invalid\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "a trailers-only gRPC answer: {rsp}");
    assert!(rsp.contains("grpc-status: 14"), "UNAVAILABLE: {rsp}");
    assert!(rsp.contains("grpc-message: no destination for unknown.invalid"), "{rsp}");
    assert!(rsp.contains("content-type: application/grpc"), "{rsp}");
    let rsp = raw(proxy.addrs.outbound, b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: unknown.invalid\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 502"), "plain HTTP keeps its status: {rsp}");
}
