//! HTTP/2 clients (nghttp, h2load) through one proxy and the mesh.

use crate::harness::{run, server, Mesh, TestProxy};

#[tokio::test]
async fn nghttp_through_outbound() {
    let app = server::start().await;
    let proxy = TestProxy::start(|c| c.outbound.endpoints = format!("web.test:80={app}").parse().unwrap()).await;
    let url = format!("http://{}/headers", proxy.addrs.outbound);
    let (ok, out, err) = run("nghttp", &["-H", ":authority: web.test", &url]).await;
    assert!(ok, "nghttp failed: {out} {err}");
    assert!(out.contains("version: HTTP/2.0"), "HTTP/2 end to end: {out}");
    assert_eq!(proxy.metric("tcp_detect_protocol_total", &[r#"protocol="http/2""#]).await, 1.0);
    assert_eq!(proxy.metric("response_total", &[r#"authority="web.test:80""#, r#"status_code="200""#]).await, 1.0);
}

#[tokio::test]
async fn h2load_through_the_mesh() {
    let app = server::start().await;
    let mesh = Mesh::start("web.test:80", app).await;
    let url = format!("http://{}/hello", mesh.client.addrs.outbound);
    let (ok, out, err) = run("h2load", &["-n", "2000", "-c", "4", "-m", "10", "-H", ":authority: web.test", &url]).await;
    assert!(ok, "h2load failed: {out} {err}");
    assert!(out.contains("2000 succeeded, 0 failed, 0 errored"), "{out}");
    assert_eq!(mesh.server.metric("response_total", &[r#"direction="inbound""#, r#"classification="success""#]).await, 2000.0);
    assert_eq!(mesh.client.metric("response_total", &[r#"direction="outbound""#, r#"classification="success""#]).await, 2000.0);
}
