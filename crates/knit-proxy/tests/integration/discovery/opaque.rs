//! Discovery first for opaque TCP: a connection to a meshed Service port is resolved by
//! knit-control before its protocol is chosen, so opaque bytes cross mTLS to the endpoints'
//! proxies, balanced, and follow TCPRoutes and TLSRoutes; HTTP-declared ports are never turned
//! into raw TCP by a client that pauses.

use super::fixture::{curl_https, identity, service, service_on, tcp_line, Backend, Behaviour, LocalMesh, Tcp, TcpBackend, TlsBackend, NS};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn svc(name: &str, port: u16) -> String {
    format!("{name}.{NS}.svc.cluster.local:{port}")
}

#[tokio::test]
async fn opaque_tcp_to_a_meshed_service_crosses_mtls_and_is_balanced() {
    let mesh = LocalMesh::start("opaque-mtls").await;
    let (a, b) = (TcpBackend::start("db-1", Tcp::Echo).await, TcpBackend::start("db-2", Tcp::Echo).await);
    let pa = mesh.workload_at(a.name, a.addr, "tcp", "db", &[("app", "db")]).await;
    let pb = mesh.workload_at(b.name, b.addr, "tcp", "db", &[("app", "db")]).await;
    // 6379 is one of the default opaque ports: no detection anywhere.
    mesh.write("db.yaml", &service_on("db", &[("app", "db")], 6379, "tcp", &[])).await;
    let (client, fwd) = mesh.forwarding_client(&[&svc("db", 6379)]).await;
    let mut seen = BTreeMap::<String, u32>::new();
    for i in 0..30 {
        let answer = tcp_line(fwd[0], &format!("PING {i}")).await.unwrap();
        let (who, rest) = answer.split_once(' ').unwrap();
        assert_eq!(rest, format!("PING {i}"));
        *seen.entry(who.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both endpoints served: {seen:?}");
    // Each server proxy saw the client's identity over mesh TLS, and no detection ran.
    let client_id = format!(r#"client_id="{}""#, identity("client"));
    for p in [&pa, &pb] {
        assert!(p.metric("tcp_open_total", &[r#"direction="inbound""#, r#"peer="src""#, r#"tls="true""#, &client_id]).await >= 1.0);
    }
    assert_eq!(client.metric("outbound_tcp_route_open_total", &[r#"parent_name="db""#, r#"parent_kind="Service""#]).await, 30.0);
    assert_eq!(client.metric("tcp_open_total", &[r#"direction="outbound""#, r#"peer="dst""#, r#"tls="true""#]).await, 30.0);
    assert_eq!(client.metric("tcp_detect_timeout_total", &[]).await, 0.0);
    assert_eq!(client.metric("tcp_detect_protocol_total", &[r#"direction="outbound""#]).await, 0.0, "an opaque port is not detected");
}

#[tokio::test]
async fn a_tcp_route_splits_connections_by_weight_and_follows_its_manifest() {
    let mesh = LocalMesh::start("opaque-split").await;
    let (a, b) = (TcpBackend::start("pg-a", Tcp::Echo).await, TcpBackend::start("pg-b", Tcp::Echo).await);
    let _pa = mesh.workload_at(a.name, a.addr, "tcp", "pg", &[("app", "pg-a")]).await;
    let _pb = mesh.workload_at(b.name, b.addr, "tcp", "pg", &[("app", "pg-b")]).await;
    let services = [
        service_on("pg", &[("app", "pg-a")], 5432, "tcp", &[]),
        service_on("pg-a", &[("app", "pg-a")], 5432, "tcp", &[]),
        service_on("pg-b", &[("app", "pg-b")], 5432, "tcp", &[]),
    ];
    mesh.write("pg.yaml", &services.join("---\n")).await;
    let route = |wa: u32, wb: u32| {
        format!("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: pg-split, namespace: {NS}}}\nspec:\n  parentRefs: [{{kind: Service, name: pg, port: 5432}}]\n  rules:\n    - backendRefs:\n        - {{name: pg-a, port: 5432, weight: {wa}}}\n        - {{name: pg-b, port: 5432, weight: {wb}}}\n")
    };
    mesh.write("route.yaml", &route(50, 50)).await;
    let (client, fwd) = mesh.forwarding_client(&[&svc("pg", 5432)]).await;
    let to = fwd[0];
    let seen = count(to, 40).await;
    // Binomial(40, 1/2): fewer than 8 on one side has a chance below 1 in 10^4.
    assert!(seen.get("pg-a").copied().unwrap_or(0) >= 8 && seen.get("pg-b").copied().unwrap_or(0) >= 8, "a 50/50 split: {seen:?}");
    assert_eq!(client.metric("outbound_tcp_route_open_total", &[r#"route_kind="TCPRoute""#, r#"route_name="pg-split""#]).await, 40.0);
    mesh.write("route.yaml", &route(100, 0)).await;
    // The connections that follow the rewrite see it (the watch is per connection, at accept).
    crate::assert_eventually!(count(to, 1).await.contains_key("pg-a") && count(to, 1).await.contains_key("pg-a"), "the edited split applies");
    let seen = count(to, 20).await;
    assert_eq!(seen.get("pg-a"), Some(&20), "all of it to pg-a: {seen:?}");
}

/// Which backend answered each of `n` connections to `to`.
async fn count(to: SocketAddr, n: usize) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::<String, u32>::new();
    for i in 0..n {
        let answer = tcp_line(to, &format!("q{i}")).await.unwrap();
        *seen.entry(answer.split(' ').next().unwrap().to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn tls_routes_choose_a_backend_by_sni_over_mtls() {
    let mesh = LocalMesh::start("opaque-tls").await;
    let (a, b) = (TlsBackend::start("tls-a", &["a.example.com"]).await, TlsBackend::start("tls-b", &["b.example.com", "c.example.com"]).await);
    let _pa = mesh.workload_at(a.name, a.addr, "https", "tls", &[("app", "tls-a")]).await;
    let _pb = mesh.workload_at(b.name, b.addr, "https", "tls", &[("app", "tls-b")]).await;
    let services = [
        service_on("front", &[("app", "tls-a")], 443, "https", &[]),
        service_on("tls-a", &[("app", "tls-a")], 443, "https", &[]),
        service_on("tls-b", &[("app", "tls-b")], 443, "https", &[]),
    ];
    let route = |name: &str, host: &str, backend: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{kind: Service, name: front, port: 443}}]\n  hostnames: [\"{host}\"]\n  rules: [{{backendRefs: [{{name: {backend}, port: 443}}]}}]\n")
    };
    let manifests = [services.join("---\n"), route("to-a", "a.example.com", "tls-a"), route("to-b", "*.example.com", "tls-b")];
    mesh.write("tls.yaml", &manifests.join("---\n")).await;
    let (client, fwd) = mesh.forwarding_client(&[&svc("front", 443)]).await;
    // The exact name beats the wildcard; the wildcard takes the rest; no route, no connection.
    assert_eq!(curl_https("a.example.com", fwd[0]).await.unwrap(), "tls-a a.example.com\n");
    assert_eq!(curl_https("c.example.com", fwd[0]).await.unwrap(), "tls-b c.example.com\n");
    assert!(curl_https("other.test", fwd[0]).await.is_err(), "an SNI no route serves is refused");
    assert_eq!(client.metric("outbound_tls_route_open_total", &[r#"route_name="to-a""#, r#"route_kind="TLSRoute""#]).await, 1.0);
    assert_eq!(client.metric("outbound_tls_route_open_total", &[r#"route_name="to-b""#]).await, 1.0);
    assert_eq!(client.metric("tcp_open_total", &[r#"direction="outbound""#, r#"peer="dst""#, r#"tls="true""#]).await, 2.0, "TLS inside the mesh's mTLS");
    // Plaintext to a TLS-routed destination is refused, not forwarded.
    assert!(tcp_line(fwd[0], "GET / HTTP/1.0").await.is_err());
}

#[tokio::test]
async fn a_server_that_speaks_first_greets_through_the_mesh_at_once() {
    let mesh = LocalMesh::start("opaque-banner").await;
    let smtp = TcpBackend::start("smtp", Tcp::Banner).await;
    let _p = mesh.workload_at(smtp.name, smtp.addr, "smtp", "smtp", &[("app", "smtp")]).await;
    // Port 2525 is not a default opaque port: detection runs, and the silent client must not stall.
    mesh.write("smtp.yaml", &service_on("smtp", &[("app", "smtp")], 2525, "smtp", &[])).await;
    let (_client, fwd) = mesh.forwarding_client(&[&svc("smtp", 2525)]).await;
    let mut tcp = tokio::net::TcpStream::connect(fwd[0]).await.unwrap();
    let started = std::time::Instant::now();
    let mut greeting = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut greeting)).await.expect("greeted").unwrap();
    assert_eq!(&greeting[..n], b"220 smtp ready\r\n");
    assert!(started.elapsed() < Duration::from_secs(2), "greeted after {:?}: the silent client was not handed to the server quickly", started.elapsed());
    tcp.write_all(b"EHLO knit\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut greeting)).await.expect("answered").unwrap();
    assert_eq!(&greeting[..n], b"smtp EHLO knit\n");
}

#[tokio::test]
async fn an_annotation_opaque_port_takes_http_and_raw_tcp() {
    let mesh = LocalMesh::start("opaque-annotation").await;
    let web = Backend::start("web-1", Behaviour::Ok).await;
    let server = mesh.workload(&web, "web", &[("app", "web")]).await;
    mesh.write("web.yaml", &service("web", &[("app", "web")], &[("config.linkerd.io/opaque-ports", "8080")])).await;
    let (client, fwd) = mesh.forwarding_client(&[&svc("web", 8080)]).await;
    // Through a port forward (as through iptables): the bytes go opaquely, HTTP included, over
    // mTLS; opaque bytes are not HTTP to either proxy, so no `l5d-client-id` is added.
    let (status, body) = crate::harness::request(fwd[0], "GET", "/", "web", "").await;
    assert_eq!((status, body.as_str()), (200, "web-1 -\n"));
    let client_id = format!(r#"client_id="{}""#, identity("client"));
    assert_eq!(server.metric("tcp_open_total", &[r#"direction="inbound""#, r#"peer="src""#, &client_id]).await, 1.0);
    // By Host in local mode: the opaque route's backend serves the request as HTTP.
    let rsp = super::fixture::send(client.addrs.outbound, &svc("web", 8080), "/", 3).await;
    assert!(rsp.iter().all(|(s, b)| *s == 200 && b.starts_with("web-1")), "{rsp:?}");
    // Raw TCP: the HTTP server answers garbage with 400, so the bytes reached it.
    let mut tcp = tokio::net::TcpStream::connect(fwd[0]).await.unwrap();
    tcp.write_all(b"not http at all\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&out));
}

/// An HTTP port declared by a Server is never detected: a client that pauses before its request
/// is still served as HTTP (routes, authorization, `l5d-client-id` rewriting), as is one on a
/// detected port that speaks after the silent timeout.
#[tokio::test]
async fn a_client_that_pauses_is_still_routed_authorized_and_rewritten() {
    let mesh = LocalMesh::start("opaque-pause").await;
    let (declared, detected) = (Backend::start("declared", Behaviour::Ok).await, Backend::start("detected", Behaviour::Ok).await);
    let p_declared = mesh.workload(&declared, "declared", &[("app", "declared")]).await;
    let p_detected = mesh.workload(&detected, "detected", &[("app", "detected")]).await;
    let policy = format!(
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: declared-http, namespace: {NS}}}
spec:
  externalWorkloadSelector: {{matchLabels: {{app: declared}}}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: allowed-only, namespace: {NS}}}
spec:
  parentRefs: [{{group: policy.linkerd.io, kind: Server, name: declared-http}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /allowed}}}}]}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: anywhere, namespace: {NS}}}
spec:
  networks: [{{cidr: 0.0.0.0/0}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allowed-route, namespace: {NS}}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: HTTPRoute, name: allowed-only}}
  requiredAuthenticationRefs: [{{group: policy.linkerd.io, kind: NetworkAuthentication, name: anywhere}}]
"
    );
    mesh.write("policy.yaml", &policy).await;
    // The route may be served only once the proxy has the Server's policy.
    crate::assert_eventually!(paused(p_declared.addrs.inbound, "/other", Duration::ZERO).await.0 == 404, "the Server's routes apply");
    for (proxy, path, want, name) in [(&p_declared, "/allowed", 200, "declared"), (&p_declared, "/other", 404, ""), (&p_detected, "/", 200, "detected")] {
        let (status, body) = paused(proxy.addrs.inbound, path, Duration::from_millis(400)).await;
        assert_eq!(status, want, "{path} after a pause: {body}");
        if want == 200 {
            // The forged identity never reaches the application: a plaintext client has none.
            assert_eq!(body, format!("{name} -\n"));
        }
    }
    assert!(p_declared.metric("inbound_http_authz_allow_total", &[r#"authz_name="allowed-route""#]).await >= 1.0);
    assert_eq!(p_declared.metric("tcp_detect_protocol_total", &[r#"protocol="opaque""#]).await, 0.0, "never taken for raw TCP");
}

/// A request that waits `pause` after connecting, with a forged `l5d-client-id`.
async fn paused(addr: SocketAddr, path: &str, pause: Duration) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(pause).await;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: app\r\nl5d-client-id: admin.forged.serviceaccount.identity.knit.cluster.local\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}
