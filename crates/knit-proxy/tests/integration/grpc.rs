//! gRPC (unary, server streaming, bidirectional streaming, error status) with Python's grpcio on
//! both ends and two proxies between them.

use crate::harness::{repo_root, Mesh};
use std::{process::Stdio, time::Duration};
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn grpcio_unary_and_streaming_through_the_mesh() {
    let dir = repo_root().join("tests/grpc");
    let mut server = tokio::process::Command::new("python3")
        .arg(dir.join("server.py"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 tests/grpc/server.py");
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("server start").unwrap().unwrap();
    let port: u16 = first.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("unexpected: {first}"));
    let mesh = Mesh::start("echo.test:50051", format!("127.0.0.1:{port}").parse().unwrap()).await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(dir.join("client.py"))
            .args(["--target", &mesh.client.addrs.outbound.to_string(), "--authority", "echo.test:50051"])
            .output(),
    )
    .await
    .expect("client in time")
    .expect("python3 client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK unary=20 server_stream=5 bidi=10 status=UNAVAILABLE"), "{stdout}");
    // The UNAVAILABLE call is a gRPC failure inside an HTTP 200.
    let failed = mesh.server.metric("response_total", &[r#"grpc_status="14""#, r#"classification="failure""#]).await;
    assert_eq!(failed, 1.0);
    let ok = mesh.client.metric("response_total", &[r#"grpc_status="0""#, r#"classification="success""#]).await;
    assert_eq!(ok, 22.0, "20 unary + 1 server stream + 1 bidi stream");
}
