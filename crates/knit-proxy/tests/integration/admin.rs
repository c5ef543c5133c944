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

/// The JSON access-log events of `log`: (message, fields).
fn access_events(log: &str) -> Vec<(String, serde_json::Value)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .map(|v| (v["fields"]["message"].as_str().unwrap_or_default().to_string(), v["fields"].clone()))
        .collect()
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_connection_whatever_the_outcome() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::harness::server::start().await;
    // A TCP echo server for the opaque connection, and a port nothing listens on.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dead = format!("127.0.0.1:{}", crate::harness::free_port().await);
    let (forward, dead_forward) = (crate::harness::free_port().await, crate::harness::free_port().await);
    let table = format!("web.test:80={app},dead.test:80={dead}");
    let forwards = format!("{forward}={echo_addr},{dead_forward}={dead}");
    let proxy = BinProxy::spawn(&[
        ("KNIT_PROXY_LOG_FORMAT", "json"),
        ("KNIT_PROXY_ACCESS_LOG", "true"),
        ("KNIT_PROXY_OUTBOUND_ENDPOINTS", &table),
        ("KNIT_PROXY_OUTBOUND_PORT_FORWARDS", &forwards),
        ("KNIT_PROXY_INBOUND_TARGET_ADDR", &app.to_string()),
        ("KNIT_PROXY_INBOUND_DEFAULT_POLICY", "deny"),
        ("KNIT_PROXY_INBOUND_TRUST_LOOPBACK", "false"),
        // A collector that is down: spans are dropped, trace ids still logged.
        ("KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR", &dead),
    ])
    .await;
    // (method, path, host, via inbound): each outcome kind once.
    let cases: [(&str, &str, &str, bool, u16, &str, &str); 6] = [
        ("GET", "/hello?case=ok", "web.test", false, 200, "-", "-"),
        ("GET", "/status/503?case=app-error", "web.test", false, 503, "-", "-"),
        ("GET", "/hello?case=refused", "bad host", false, 400, "bad_authority", "client"),
        ("GET", "/hello?case=unreachable", "dead.test", false, 502, "connect", "upstream"),
        ("GET", "/hello?case=loop", &proxy.outbound.to_string(), false, 508, "loop", "proxy"),
        ("GET", "/hello?case=denied", "web.test", true, 403, "unauthorized", "policy"),
    ];
    for (method, path, host, inbound, status, ..) in &cases {
        let to = if *inbound { proxy.inbound } else { proxy.outbound };
        assert_eq!(request(to, method, path, host, "").await.0, *status, "{path}");
    }
    // A traced request: its line carries the trace id.
    let mut s = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    s.write_all(format!("GET /hello?case=traced HTTP/1.1\r\nHost: web.test\r\ntraceparent: {traceparent}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.read_to_end(&mut Vec::new()).await.unwrap();
    // An opaque connection through a port forward, and one whose endpoint refuses.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", forward)).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"ping\n");
    // It speaks first (a silent client would wait for the detect timeout once the route fails).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", dead_forward)).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    let _ = s.read_to_end(&mut Vec::new()).await;

    let done = crate::harness::eventually(std::time::Duration::from_secs(10), || async {
        let events = access_events(&proxy.log.lock().unwrap());
        events.iter().filter(|(m, _)| m == "request").count() > cases.len()
            && events.iter().filter(|(m, f)| m == "connection" && f["protocol"] != "http/1").count() >= 2
    })
    .await;
    let events = access_events(&proxy.log.lock().unwrap());
    assert!(done, "access log:\n{events:#?}");
    for (_, path, _, inbound, status, error, blame) in &cases {
        let lines: Vec<&serde_json::Value> = events.iter().filter(|(m, f)| m == "request" && f["uri"] == *path).map(|(_, f)| f).collect();
        assert_eq!(lines.len(), 1, "one line for {path}: {lines:#?}");
        let f = lines[0];
        assert_eq!(f["status"], *status, "{path}: {f}");
        assert_eq!((f["error"].as_str(), f["blame"].as_str()), (Some(*error), Some(*blame)), "{path}: {f}");
        assert_eq!(f["direction"], if *inbound { "inbound" } else { "outbound" }, "{path}: {f}");
        assert!(f["duration_ms"].as_f64().is_some() && f["client"].as_str().is_some(), "{path}: {f}");
    }
    let ok = events.iter().find(|(m, f)| m == "request" && f["uri"] == "/hello?case=ok").unwrap();
    assert_eq!((ok.1["endpoint"].as_str(), ok.1["attempts"].as_u64(), ok.1["response_bytes"].as_u64()), (Some(app.to_string().as_str()), Some(1), Some(6)));
    let traced = events.iter().find(|(m, f)| m == "request" && f["uri"] == "/hello?case=traced").unwrap();
    assert_eq!(traced.1["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{}", traced.1);
    assert!(traced.1["span_id"].as_str().is_some_and(|s| s.len() == 16 && s != "00f067aa0ba902b7"), "this proxy's server span: {}", traced.1);
    let unreachable = events.iter().find(|(m, f)| m == "request" && f["uri"] == "/hello?case=unreachable").unwrap();
    assert!(unreachable.1["reason"].as_str().unwrap().contains(&dead), "{}", unreachable.1);
    let opaque: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(m, f)| m == "connection" && f["protocol"] == "opaque" && f["target_addr"] == echo_addr.to_string().as_str())
        .map(|(_, f)| f)
        .collect();
    assert_eq!(opaque.len(), 1, "{opaque:#?}");
    assert_eq!((opaque[0]["bytes_sent"].as_u64(), opaque[0]["bytes_received"].as_u64(), opaque[0]["error"].as_str()), (Some(5), Some(5), Some("-")));
    assert_eq!(opaque[0]["endpoint"], echo_addr.to_string());
    let refused: Vec<&serde_json::Value> =
        events.iter().filter(|(m, f)| m == "connection" && f["target_addr"] == dead.as_str() && f["error"] != "-").map(|(_, f)| f).collect();
    assert_eq!(refused.len(), 1, "{events:#?}");
    assert_eq!((refused[0]["error"].as_str(), refused[0]["blame"].as_str()), (Some("connect"), Some("upstream")));
}
