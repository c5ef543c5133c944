//! Outbound: splits, routes, retries, timeouts, the rate-limit-aware balancer, and a control
//! plane that restarts under traffic.

use super::fixture::{count_from, send, service, Backend, Behaviour, LocalMesh, NS};
use std::time::{Duration, Instant};

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: books-split\n  namespace: {NS}\nspec:\n  parentRefs:\n    - group: core\n      kind: Service\n      name: books\n      port: 8080\n  rules:\n    - backendRefs:\n        - name: books-v1\n          port: 8080\n          weight: {v1}\n        - name: books-v2\n          port: 8080\n          weight: {v2}\n"
    )
}

/// books (v1 and v2 behind their own proxies), the three Services, and a client proxy.
async fn books(mesh: &LocalMesh, v2: Behaviour) -> (Backend, Backend, Vec<crate::harness::TestProxy>) {
    let v1 = Backend::start("books-v1", Behaviour::Ok).await;
    let v2 = Backend::start("books-v2", v2).await;
    let p1 = mesh.workload(&v1, "books", &[("app", "books"), ("version", "v1")]).await;
    let p2 = mesh.workload(&v2, "books", &[("app", "books"), ("version", "v2")]).await;
    let services = [
        service("books", &[("app", "books")], &[]),
        service("books-v1", &[("app", "books"), ("version", "v1")], &[]),
        service("books-v2", &[("app", "books"), ("version", "v2")], &[]),
    ];
    mesh.write("services.yaml", &services.join("---\n")).await;
    (v1, v2, vec![p1, p2])
}

#[tokio::test]
async fn a_weighted_split_follows_its_manifest() {
    let mesh = LocalMesh::start("split").await;
    let (_v1, _v2, _proxies) = books(&mesh, Behaviour::Ok).await;
    mesh.write("split.yaml", &split(90, 10)).await;
    let web = mesh.proxy("web", "web", None).await;

    let results = send(web.addrs.outbound, "books:8080", "/", 500).await;
    let (n1, n2) = (count_from(&results, "books-v1"), count_from(&results, "books-v2"));
    assert_eq!(n1 + n2, 500, "every request answered by books: {:?}", results.iter().find(|(s, _)| *s != 200));
    // 10% of 500 is 50; a binomial's standard deviation here is under 7.
    assert!((25..=80).contains(&n2), "books-v2 got {n2} of 500 with a 90/10 split");
    let mtls = web.metric("request_total", &[r#"direction="outbound""#, r#"tls="true""#]).await;
    assert_eq!(mtls, 500.0, "every hop was mutual TLS");

    // Finish the rollout by editing the manifest; measure how long until the proxy applies it.
    let written = Instant::now();
    mesh.write("split.yaml", &split(0, 100)).await;
    let mut streak = 0;
    while streak < 20 {
        assert!(written.elapsed() < Duration::from_secs(10), "the new split was not applied within 10s");
        let r = send(web.addrs.outbound, "books:8080", "/", 1).await;
        streak = if count_from(&r, "books-v2") == 1 { streak + 1 } else { 0 };
    }
    eprintln!("split change applied by the proxy within {:?} of the manifest write (including 20 confirming requests)", written.elapsed());
    let after = send(web.addrs.outbound, "books:8080", "/", 100).await;
    assert_eq!(count_from(&after, "books-v2"), 100);
}

#[tokio::test]
async fn routes_match_paths_and_headers() {
    let mesh = LocalMesh::start("routes").await;
    let (_v1, _v2, _proxies) = books(&mesh, Behaviour::Ok).await;
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: books-routes\n  namespace: {NS}\nspec:\n  parentRefs:\n    - kind: Service\n      group: core\n      name: books\n      port: 8080\n  rules:\n    - matches:\n        - path:\n            type: PathPrefix\n            value: /v2\n        - headers:\n            - name: x-canary\n              value: \"yes\"\n      backendRefs:\n        - name: books-v2\n          port: 8080\n    - backendRefs:\n        - name: books-v1\n          port: 8080\n"
    );
    mesh.write("routes.yaml", &route).await;
    let web = mesh.proxy("web", "web", None).await;
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/v2/list", 10).await, "books-v2"), 10);
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/v2", 5).await, "books-v2"), 5);
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/v20", 5).await, "books-v1"), 5, "a path prefix matches whole segments");
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/", 10).await, "books-v1"), 10);
    let header =
        crate::harness::run("curl", &["-sS", "--max-time", "10", "-H", "Host: books:8080", "-H", "x-canary: yes", &format!("http://{}/", web.addrs.outbound)])
            .await;
    assert!(header.1.starts_with("books-v2"), "the header match routes to v2: {header:?}");
    let route_label = r#"route_name="books-routes""#;
    assert!(web.metric("outbound_http_route_request_statuses_total", &[route_label, r#"http_status="200""#]).await >= 30.0);
}

#[tokio::test]
async fn retries_hide_intermittent_failures_within_the_budget() {
    let mesh = LocalMesh::start("retries").await;
    let flaky = Backend::start("flaky", Behaviour::FailEvery(3)).await;
    let _p = mesh.workload(&flaky, "flaky", &[("app", "flaky")]).await;
    mesh.write("services.yaml", &service("flaky", &[("app", "flaky")], &[("retry.linkerd.io/http", "5xx"), ("retry.linkerd.io/limit", "2")])).await;
    let web = mesh.proxy("web", "web", None).await;
    let results = send(web.addrs.outbound, "flaky:8080", "/", 90).await;
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "retries should hide every third request's 503: {failed:?}");
    // 90 requests, every third attempt fails: about 45 retries were needed.
    let retries = web.metric("outbound_http_route_retry_requests_total", &[]).await;
    assert!((30.0..=60.0).contains(&retries), "retries sent: {retries}");
    assert!(flaky.served() >= 120, "the backend saw the retries: {}", flaky.served());
}

#[tokio::test]
async fn a_request_timeout_answers_504() {
    let mesh = LocalMesh::start("timeout").await;
    let slow = Backend::start("slow", Behaviour::Slow(Duration::from_millis(800))).await;
    let _p = mesh.workload(&slow, "slow", &[("app", "slow")]).await;
    mesh.write("services.yaml", &service("slow", &[("app", "slow")], &[("timeout.linkerd.io/request", "100ms")])).await;
    let web = mesh.proxy("web", "web", None).await;
    let started = Instant::now();
    let r = send(web.addrs.outbound, "slow:8080", "/", 1).await;
    assert_eq!(r[0].0, 504, "{r:?}");
    assert!(r[0].1.contains("timed out"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(700), "the proxy gave up at the timeout, not when the backend answered");
}

#[tokio::test]
async fn the_balancer_backs_off_from_a_rate_limited_endpoint() {
    let mesh = LocalMesh::start("penalty").await;
    let limited = Backend::start("authors-1", Behaviour::RateLimited { secs: 30 }).await;
    let healthy = Backend::start("authors-2", Behaviour::Ok).await;
    let _p1 = mesh.workload(&limited, "authors", &[("app", "authors")]).await;
    let _p2 = mesh.workload(&healthy, "authors", &[("app", "authors")]).await;
    mesh.write("services.yaml", &service("authors", &[("app", "authors")], &[("balancer.alpha.linkerd.io/penalize-failures", "true")])).await;
    let web = mesh.proxy("web", "web", None).await;
    let results = send(web.addrs.outbound, "authors:8080", "/", 200).await;
    let limited_share = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(count_from(&results, "authors-2") + limited_share, 200);
    // Round robin would send 100 to the limited replica; Retry-After: 30 keeps it penalised.
    assert!(limited_share <= 10, "the rate-limited endpoint still got {limited_share} of 200 requests");
}

#[tokio::test]
async fn a_control_plane_restart_under_traffic_fails_no_request() {
    let mut mesh = LocalMesh::start("restart").await;
    let (_v1, _v2, _proxies) = books(&mesh, Behaviour::Ok).await;
    mesh.write("split.yaml", &split(50, 50)).await;
    let web = mesh.proxy("web", "web", None).await;
    assert!(count_from(&send(web.addrs.outbound, "books:8080", "/", 20).await, "books-v1") > 0);
    let outbound = web.addrs.outbound;
    let traffic = tokio::spawn(async move {
        let mut all = Vec::new();
        for _ in 0..30 {
            all.extend(send(outbound, "books:8080", "/", 10).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        all
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.restart_control(Duration::from_secs(1)).await;
    let all = traffic.await.unwrap();
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(all.len(), 300);
    assert!(failed.is_empty(), "{} of 300 requests failed across the restart: {:?}", failed.len(), failed.first());
}

#[tokio::test]
async fn failure_accrual_ejects_an_endpoint_that_keeps_failing() {
    let mesh = LocalMesh::start("accrual").await;
    let broken = Backend::start("orders-1", Behaviour::FailEvery(1)).await;
    let healthy = Backend::start("orders-2", Behaviour::Ok).await;
    let _p1 = mesh.workload(&broken, "orders", &[("app", "orders")]).await;
    let _p2 = mesh.workload(&healthy, "orders", &[("app", "orders")]).await;
    let accrual = [
        ("balancer.linkerd.io/failure-accrual", "consecutive"),
        ("balancer.linkerd.io/failure-accrual-consecutive-max-failures", "3"),
        ("balancer.linkerd.io/failure-accrual-consecutive-min-penalty", "30s"),
    ];
    mesh.write("services.yaml", &service("orders", &[("app", "orders")], &accrual)).await;
    let web = mesh.proxy("web", "web", None).await;
    let results = send(web.addrs.outbound, "orders:8080", "/", 100).await;
    let failed = results.iter().filter(|(s, _)| *s == 503).count();
    // Fast failures look cheap to PeakEWMA, so without the breaker the broken endpoint would
    // take most requests; three consecutive failures eject it for the 30 s penalty.
    assert!(failed <= 3, "{failed} of 100 requests reached the failing endpoint");
    assert_eq!(count_from(&results, "orders-2") + failed, 100);
}
