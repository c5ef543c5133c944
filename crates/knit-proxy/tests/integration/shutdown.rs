//! Graceful shutdown: nothing in flight is lost, new connections are refused.

use crate::harness::{get, request, server, BinProxy, Mesh};
use std::time::Duration;

#[tokio::test]
async fn in_flight_requests_finish_during_drain() {
    let app = server::start().await;
    let mut mesh = Mesh::start("web.test:80", app).await;
    let outbound = mesh.client.addrs.outbound;
    let inflight: Vec<_> = (0..20).map(|_| tokio::spawn(request(outbound, "GET", "/slow?ms=700", "web.test", ""))).collect();
    // Both proxies drain while the requests are inside them.
    crate::assert_eventually!(mesh.server.metric("request_total", &[r#"direction="inbound""#]).await == 20.0, "all requests reached the server proxy");
    let client_done = mesh.client.begin_shutdown();
    let server_done = mesh.server.begin_shutdown();
    for r in inflight {
        let (status, body) = r.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slow\n"), "an in-flight request was dropped");
    }
    assert!(client_done.await.unwrap(), "client proxy drained within the grace period");
    assert!(server_done.await.unwrap(), "server proxy drained within the grace period");
    assert!(tokio::net::TcpStream::connect(outbound).await.is_err(), "the listener is closed after the drain");
}

#[tokio::test]
async fn sigterm_drains_the_binary() {
    let app = server::start().await;
    let table = format!("web.test:80={app}");
    let mut proxy = BinProxy::spawn(&[("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table), ("KNIT_PROXY_SHUTDOWN_GRACE_PERIOD", "10s")]).await;
    let outbound = proxy.outbound;
    let slow = tokio::spawn(request(outbound, "GET", "/slow?ms=800", "web.test", ""));
    let admin = proxy.admin;
    crate::assert_eventually!(crate::harness::sum_metric(&crate::harness::scrape(admin).await, "request_total", &[]) == 1.0, "the request is in flight");
    proxy.signal("TERM");
    assert_eq!(slow.await.unwrap(), (200, "slow\n".to_string()));
    // The whole log, once the process has exited and its stderr is read to the end (a read
    // right after exit could miss the last line: it once did on a loaded machine).
    let (status, log) = proxy.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("drained"), "{log}");
}

#[tokio::test]
async fn shutdown_endpoint_when_enabled() {
    let mut off = BinProxy::spawn(&[]).await;
    assert_eq!(request(off.admin, "POST", "/shutdown", "localhost", "").await.0, 404, "disabled by default");
    let mut on = BinProxy::spawn(&[("KNIT_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true")]).await;
    assert_eq!(request(on.admin, "POST", "/shutdown", "localhost", "").await.0, 200);
    let status = tokio::time::timeout(Duration::from_secs(10), on.child.wait()).await.expect("exits").unwrap();
    assert!(status.success());
    assert_eq!(get(off.admin, "/live").await.0, 200, "the other proxy is unaffected");
    off.child.kill().await.unwrap();
}

/// At a log level that hides info (the benchmark runs with `warn`), the binary still serves until
/// it is signalled (it once stopped at once: the signal was awaited inside a skipped log macro).
#[tokio::test]
async fn the_binary_serves_until_signalled_whatever_the_log_level() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy"))
        .env_clear()
        .env("KNIT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
        .env("KNIT_PROXY_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::assert_eventually!(tokio::net::TcpStream::connect(admin).await.is_ok() && get(admin, "/ready").await.0 == 200, "the proxy becomes ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the proxy exited without a signal");
    assert_eq!(get(admin, "/ready").await.0, 200);
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-s", "TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(status.success(), "exit status {status}");
}
