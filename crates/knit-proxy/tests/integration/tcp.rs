//! Opaque TCP: a real server-speaks-first protocol (Redis through a configured opaque port), a
//! greeting server on an ordinary port, half-close, and byte counters.

use crate::harness::{free_port, run, TestProxy};
use knit_core::destination::Authority;
use std::{net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A port forward to `authority`, and `table` as the destination table.
async fn forwarding_proxy(table: &str, authority: &str, opaque_port: Option<u16>) -> (TestProxy, SocketAddr) {
    let (table, authority) = (table.to_string(), authority.parse::<Authority>().unwrap());
    let proxy = TestProxy::start(move |c| {
        c.outbound.endpoints = table.parse().unwrap();
        c.outbound.port_forwards.insert(0, authority);
        if let Some(p) = opaque_port {
            c.detect.opaque_ports.insert(p);
        }
    })
    .await;
    let forward = proxy.addrs.forwards[0].0;
    (proxy, forward)
}

#[tokio::test]
async fn redis_cli_through_an_opaque_port_and_the_mesh() {
    let port = free_port().await;
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (scripts/test.sh installs it)");
    let ready = crate::harness::eventually(Duration::from_secs(10), || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;
    assert!(ready, "redis-server did not start");
    // The server proxy treats the port as opaque; the client proxy reaches it through the mesh.
    let server = TestProxy::start(move |c| {
        c.detect.opaque_ports.insert(port);
    })
    .await;
    let table = format!("redis.test:6379=127.0.0.1:{port}@{}", server.addrs.inbound.port());
    let (client, forward) = forwarding_proxy(&table, "redis.test:6379", None).await;
    let p = forward.port().to_string();
    let (ok, out, err) = run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "set", "knit", "mesh"]).await;
    assert!(ok && out.trim() == "OK", "{out} {err}");
    let (ok, out, _) = run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "get", "knit"]).await;
    assert!(ok && out.trim() == "mesh", "{out}");
    // Redis's port 6379 is in the default opaque list: no detection, no timeout on the client side.
    assert_eq!(client.metric("tcp_detect_timeout_total", &[]).await, 0.0);
    assert_eq!(client.metric("tcp_open_total", &[r#"peer="src""#, r#"authority="redis.test:6379""#]).await, 2.0);
    assert!(server.metric("tcp_read_bytes_total", &[r#"peer="src""#, r#"direction="inbound""#]).await > 0.0);
}

/// A server that greets first, like MySQL or SMTP, on a port nobody marked opaque.
#[tokio::test]
async fn server_speaks_first_is_not_stalled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 greetings\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let (proxy, forward) = forwarding_proxy(&format!("smtp.test:2525={app}"), "smtp.test:2525", None).await;
    let mut s = tokio::net::TcpStream::connect(forward).await.unwrap();
    let started = std::time::Instant::now();
    let mut greeting = [0u8; 15];
    // Bounded well above the 150 ms silent-client timeout and far below Linkerd's 10 s.
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut greeting)).await.expect("greeting arrives").unwrap();
    assert_eq!(&greeting, b"220 greetings\r\n");
    eprintln!("greeting after {:?}", started.elapsed());
    s.write_all(b"HELO knit\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO knit\r\n");
    assert_eq!(proxy.metric("tcp_detect_timeout_total", &[r#"reason="silent_client""#]).await, 1.0);
}

#[tokio::test]
async fn half_close_lets_the_response_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Reads until the client's FIN, then answers: the request ends with a half-close.
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = s.write_all(format!("got {} bytes", all.len()).as_bytes()).await;
            });
        }
    });
    let (proxy, forward) = forwarding_proxy(&format!("sink.test:9000={app}"), "sink.test:9000", Some(9000)).await;
    let mut s = tokio::net::TcpStream::connect(forward).await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, "got 100000 bytes");
    crate::assert_eventually!(
        proxy.metric("tcp_close_total", &[r#"peer="src""#, r#"authority="sink.test:9000""#]).await == 1.0,
        "the connection is closed and counted"
    );
    assert_eq!(proxy.metric("tcp_read_bytes_total", &[r#"peer="src""#, r#"authority="sink.test:9000""#]).await, 100_000.0);
    assert_eq!(proxy.metric("tcp_write_bytes_total", &[r#"peer="src""#, r#"authority="sink.test:9000""#]).await, 16.0);
    assert_eq!(proxy.metric("tcp_open_connections", &[r#"peer="src""#]).await, 0.0);
}

/// Draining waits for opaque connections on both sides of the mesh: an open one keeps
/// carrying bytes while the proxies drain, and each drain ends when it closes.
#[tokio::test]
async fn draining_waits_for_open_opaque_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut server = TestProxy::start(move |c| {
        c.detect.opaque_ports.insert(app.port());
    })
    .await;
    let table = format!("echo.test:7000={app}@{}", server.addrs.inbound.port());
    let (mut client, forward) = forwarding_proxy(&table, "echo.test:7000", Some(7000)).await;
    let mut s = tokio::net::TcpStream::connect(forward).await.unwrap();
    let mut buf = [0u8; 5];
    s.write_all(b"first").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"first");
    let (client_done, server_done) = (client.begin_shutdown(), server.begin_shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!client_done.is_finished() && !server_done.is_finished(), "a drain ended with an opaque connection open");
    s.write_all(b"again").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again", "the connection keeps working while the proxies drain");
    drop(s);
    assert!(tokio::time::timeout(Duration::from_secs(5), client_done).await.expect("client drained").unwrap());
    assert!(tokio::time::timeout(Duration::from_secs(5), server_done).await.expect("server drained").unwrap());
}
