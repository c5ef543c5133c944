//! The admin server's endpoints.

use crate::harness::{get, request, BinProxy, TestProxy};

#[tokio::test]
async fn ready_live_config_dump_and_metrics() {
    let proxy = TestProxy::start(|c| c.outbound.endpoints = "web.test:80=127.0.0.1:9@4143".parse().unwrap()).await;
    let admin = proxy.addrs.admin;
    assert_eq!(get(admin, "/ready").await, (200, "ready\n".into()));
    assert_eq!(get(admin, "/live").await, (200, "live\n".into()));
    let (status, dump) = get(admin, "/config_dump").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert_eq!(v["outbound"]["endpoints"]["web.test:80"][0], "127.0.0.1:9@4143");
    assert_eq!(v["detect"]["silent_timeout"], "150ms");
    let metrics = proxy.metrics().await;
    for family in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
        assert!(metrics.contains(family), "{family} missing");
    }
    assert!(metrics.ends_with("# EOF\n"));
    assert_eq!(get(admin, "/nope").await.0, 404);
}

#[tokio::test]
async fn log_level_is_read_and_changed_at_runtime() {
    let mut proxy = BinProxy::spawn(&[("KNIT_PROXY_LOG", "warn,knit_proxy=info")]).await;
    let admin = proxy.admin;
    let (status, level) = get(admin, "/log-level").await;
    assert_eq!(status, 200);
    assert!(level.contains("knit_proxy=info"), "{level}");
    assert_eq!(request(admin, "PUT", "/log-level", "localhost", "knit_proxy=debug").await.0, 204);
    assert!(get(admin, "/proxy-log-level").await.1.contains("knit_proxy=debug"), "Linkerd's path works too");
    let (status, err) = request(admin, "PUT", "/log-level", "localhost", "knit_proxy=[[[").await;
    assert_eq!(status, 400, "{err}");
    assert!(get(admin, "/log-level").await.1.contains("knit_proxy=debug"), "a bad level leaves the old one");
    proxy.child.kill().await.unwrap();
}

#[tokio::test]
async fn json_logs_with_an_access_log_line_per_request() {
    let app = crate::harness::server::start().await;
    let table = format!("web.test:80={app}");
    let mut proxy = BinProxy::spawn(&[("KNIT_PROXY_LOG_FORMAT", "json"), ("KNIT_PROXY_ACCESS_LOG", "true"), ("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table)]).await;
    let (status, _) = request(proxy.outbound, "GET", "/hello?x=1", "web.test", "").await;
    assert_eq!(status, 200);
    let found = crate::harness::eventually(std::time::Duration::from_secs(5), || async {
        proxy.log.lock().unwrap().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["target"] == "access" && v["fields"]["status"] == 200 && v["fields"]["uri"] == "/hello?x=1" && v["span"]["name"] == "outbound")
        })
    })
    .await;
    assert!(found, "no JSON access-log line in:\n{}", proxy.log.lock().unwrap());
    proxy.child.kill().await.unwrap();
}

#[tokio::test]
async fn await_returns_once_the_proxy_is_ready_and_fails_on_timeout() {
    let proxy = TestProxy::start(|_| {}).await;
    let run = |admin: String, timeout: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy")).args(["await", "--timeout", timeout, "--admin", &admin]).output()
    };
    let ok = run(proxy.addrs.admin.to_string(), "5s").await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Nothing listens on a port just released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let failed = run(dead.clone(), "300ms").await.unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains(&format!("{dead}/ready did not answer 200")));
    let bad = run(dead, "soon").await.unwrap();
    assert_eq!(bad.status.code(), Some(64));
}
