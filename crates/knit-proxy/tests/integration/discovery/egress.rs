//! Egress (EgressNetwork): knit-control's cluster networks are narrowed to 10.0.0.0/8, so the
//! test servers on 127.0.0.0/8 are outside the cluster, as the internet is. An EgressNetwork
//! denies them by default; routes let some of their traffic through (HTTP by path, gRPC by
//! method, TLS by SNI), one sends a hostname to a Service in the mesh, and a more specific
//! EgressNetwork allows one address.

use super::fixture::{curl_https, free_port, identity, service, tcp_line, Backend, Behaviour, LocalMesh, Tcp, TcpBackend, TlsBackend, NS};
use crate::harness::repo_root;
use knit_core::destination::Authority;
use std::{collections::BTreeMap, net::SocketAddr, process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Python's grpcio Echo server on 127.0.0.1; the child is killed when dropped.
async fn grpc_server() -> (tokio::process::Child, u16) {
    let mut server = tokio::process::Command::new("python3")
        .arg(repo_root().join("tests/grpc/server.py"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 tests/grpc/server.py");
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("server start").unwrap().unwrap();
    let port = first.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("unexpected: {first}"));
    (server, port)
}

/// One gRPC call through `target`: `STATUS OK` or `STATUS <code> <details>`.
async fn grpc_once(target: SocketAddr, method: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .arg(repo_root().join("tests/grpc/client.py"))
        .args(["--target", &target.to_string(), "--once", method])
        .output()
        .await
        .expect("python3 client.py");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A GET through `addr` with `host`: the status and the `l5d-proxy-error` header, if any.
async fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, Option<String>, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let error = head.lines().find_map(|l| l.strip_prefix("l5d-proxy-error: ")).map(str::to_string);
    (status, error, body.to_string())
}

fn egress_network(name: &str, cidr: &str, policy: &str) -> String {
    format!("apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  networks: [{{cidr: {cidr}}}]\n  trafficPolicy: {policy}\n")
}

/// A route of `kind` attached to EgressNetwork `internet` on `port`.
fn route(kind: &str, version: &str, name: &str, port: u16, spec: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/{version}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: policy.linkerd.io, kind: EgressNetwork, name: internet, port: {port}}}]\n{spec}")
}

#[tokio::test]
async fn egress_networks_allow_and_deny_http_grpc_tls_and_tcp() {
    let mesh = LocalMesh::start_with_cluster_networks("egress", &["10.0.0.0/8"]).await;
    // Outside the cluster.
    let api = Backend::start("api", Behaviour::Ok).await;
    let tls = TlsBackend::start("tls-ext", &["allowed.example", "denied.example"]).await;
    let tcp = TcpBackend::start("tcp-ext", Tcp::Echo).await;
    let open = TcpBackend::start_on("127.0.0.2", "open-ext", Tcp::Echo).await;
    let (_grpc, grpc_port) = grpc_server().await;
    // Inside: a Service that one external hostname is sent to.
    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("books.yaml", &service("books", &[("app", "books")], &[])).await;

    let to_self = "backendRefs: [{group: policy.linkerd.io, kind: EgressNetwork, name: internet}]";
    let manifests = [
        egress_network("internet", "127.0.0.0/8", "Deny"),
        // The most specific network wins: this one address is allowed.
        egress_network("open", "127.0.0.2/32", "Allow"),
        route(
            "HTTPRoute",
            "v1",
            "api-allowed",
            api.addr.port(),
            &format!("  rules: [{{matches: [{{path: {{type: PathPrefix, value: /allowed}}}}], {to_self}}}]\n"),
        ),
        route(
            "HTTPRoute",
            "v1",
            "books-by-name",
            api.addr.port(),
            &format!("  hostnames: [books.example.com]\n  rules: [{{backendRefs: [{{name: books, namespace: {NS}, port: 8080}}]}}]\n"),
        ),
        route(
            "GRPCRoute",
            "v1",
            "echo-unary",
            grpc_port,
            &format!("  rules: [{{matches: [{{method: {{service: knit.test.Echo, method: Unary}}}}], {to_self}}}]\n"),
        ),
        route("TLSRoute", "v1alpha2", "tls-allowed", tls.addr.port(), &format!("  hostnames: [allowed.example]\n  rules: [{{{to_self}}}]\n")),
    ];
    mesh.write("egress.yaml", &manifests.join("---\n")).await;

    let targets = [api.addr, tls.addr, tcp.addr, open.addr, SocketAddr::from(([127, 0, 0, 1], grpc_port))];
    let mut forwards = BTreeMap::new();
    for t in &targets {
        forwards.insert(free_port().await, Authority::from_addr(*t));
    }
    let client = mesh
        .proxy_with("client", "client", None, move |c| {
            c.outbound.port_forwards = forwards;
            c.outbound.metrics_hostname_labels = true;
        })
        .await;
    let via = |t: &SocketAddr| client.addrs.forwards.iter().find(|(_, a)| *a == Authority::from_addr(*t)).expect("forward").0;
    let (p_api, p_tls, p_tcp, p_open, p_grpc) = (via(&targets[0]), via(&targets[1]), via(&targets[2]), via(&targets[3]), via(&targets[4]));

    // HTTP: a route's path is let through, the rest gets Linkerd's 403.
    assert_eq!(get(p_api, "api.example.com", "/allowed/x").await, (200, None, "api -\n".into()));
    let (status, error, _) = get(p_api, "api.example.com", "/other").await;
    assert_eq!((status, error.as_deref()), (403, Some("traffic not allowed")));
    // A hostname sent into the mesh: over mTLS, with the client's identity.
    assert_eq!(get(p_api, "books.example.com", "/").await, (200, None, format!("books {}\n", identity("client"))));
    // gRPC: the routed method passes; any other is PERMISSION_DENIED.
    assert_eq!(grpc_once(p_grpc, "Unary").await, "STATUS OK");
    assert!(grpc_once(p_grpc, "ServerStream").await.starts_with("STATUS PERMISSION_DENIED traffic not allowed"));
    // TLS by SNI.
    assert_eq!(curl_https("allowed.example", p_tls).await.unwrap(), "tls-ext allowed.example\n");
    assert!(curl_https("denied.example", p_tls).await.is_err(), "a denied SNI is refused");
    // TCP: denied by default, allowed by the more specific EgressNetwork.
    assert!(tcp_line(p_tcp, "hello").await.is_err(), "denied TCP is closed");
    assert_eq!(tcp_line(p_open, "hello").await.unwrap(), "open-ext hello");

    let egress = r#"parent_kind="EgressNetwork""#;
    assert_eq!(client.metric("outbound_http_route_request_statuses_total", &[egress, r#"route_name="http-egress-deny""#, r#"http_status="403""#]).await, 1.0);
    assert_eq!(
        client.metric("outbound_http_route_request_statuses_total", &[egress, r#"route_name="books-by-name""#, r#"hostname="books.example.com""#]).await,
        1.0
    );
    assert_eq!(
        client
            .metric("outbound_tcp_route_close_total", &[egress, r#"parent_name="internet""#, r#"route_name="tcp-egress-deny""#, r#"error="forbidden""#])
            .await,
        1.0
    );
    assert_eq!(client.metric("outbound_tcp_route_open_total", &[egress, r#"parent_name="open""#, r#"route_name="tcp-egress-allow""#]).await, 1.0);
    assert_eq!(
        client
            .metric("outbound_tls_route_close_total", &[egress, r#"route_name="tls-egress-deny""#, r#"error="forbidden""#, r#"hostname="denied.example""#])
            .await,
        1.0
    );
    assert_eq!(client.metric("outbound_tls_route_open_total", &[egress, r#"route_name="tls-allowed""#, r#"hostname="allowed.example""#]).await, 1.0);
    assert_eq!(tcp.connections(), 0, "no denied byte left the proxy");

    // An EgressNetwork over the cluster's own networks is refused, and names why.
    mesh.write("bad.yaml", &egress_network("overlap", "10.1.0.0/16", "Allow")).await;
    let admin = crate::harness::scrape(mesh.control.admin).await;
    assert!(admin.contains(r#"manifest_invalid_documents{file="bad.yaml"} 1"#), "{admin}");
}
