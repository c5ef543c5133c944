//! Multicluster gateway mode on one machine (LINKERD-WIRE.md §12.1): a client proxy calls a
//! mirror Service whose endpoint is a gateway proxy; knit-control answers with the gateway's
//! address, its identity and `authority_override`; the client dials the gateway over mTLS with a
//! transport header naming the remote Service; the gateway forwards through its outbound side to
//! that Service's meshed endpoints. One control plane plays both clusters here: the mirror's
//! `remote-svc-fq-name` names a Service it also serves (the two-cluster run is in tests/).

use super::fixture::{identity, service, service_on, tcp_line, Backend, Behaviour, LocalMesh, Tcp, TcpBackend, NS};
use crate::harness::TestProxy;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioExecutor;
use std::{net::SocketAddr, time::Duration};

const SUFFIX: &str = "svc.cluster.local";

/// The gateway (a proxy with no application of its own), declared as the ExternalWorkload the
/// mirrors select, with the identity it proves.
async fn gateway(mesh: &LocalMesh) -> TestProxy {
    let gw = mesh.proxy_with("gateway", "gateway", None, |c| c.inbound.gateway_suffixes = vec![SUFFIX.into()]).await;
    mesh.write("gateway.yaml", &format!(
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: gateway\n  namespace: {NS}\n  labels: {{knit.dev/gateway: east}}\n  annotations: {{mirror.linkerd.io/remote-gateway-identity: {id}}}\nspec:\n  workloadIPs: [{{ip: 127.0.0.1}}]\n  ports: [{{name: mc-gateway, port: {port}}}]\n",
        id = identity("gateway"),
        port = gw.addrs.inbound.port(),
    ))
    .await;
    gw
}

/// A Service mirrored from `east`: `name-east`, selecting the gateway, for `remote` there.
fn mirror(name: &str, port: u16, remote: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}-east\n  namespace: {NS}\n  labels: {{mirror.linkerd.io/mirrored-service: 'true', mirror.linkerd.io/cluster-name: east}}\n  annotations: {{mirror.linkerd.io/remote-svc-fq-name: {remote}}}\nspec:\n  selector: {{knit.dev/gateway: east}}\n  ports: [{{name: p{port}, port: {port}, targetPort: mc-gateway}}]\n"
    )
}

fn fq(name: &str) -> String {
    format!("{name}.{NS}.{SUFFIX}")
}

/// One GET through a port forward, with extra headers: status and body.
pub(super) async fn get(to: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{to}/")).header("host", "books-east");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match tokio::time::timeout(Duration::from_secs(10), client.request(req.body(Empty::new()).unwrap())).await {
        Ok(Ok(rsp)) => {
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
            (status, body)
        }
        Ok(Err(e)) => (0, e.to_string()),
        Err(_) => (0, "timed out".into()),
    }
}

#[tokio::test]
async fn a_mirror_reaches_the_remote_service_through_the_gateway_over_mtls() {
    let mesh = LocalMesh::start("gateway").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    let db = TcpBackend::start("db", Tcp::Echo).await;
    let _db_proxy = mesh.workload_at(db.name, db.addr, "tcp", "db", &[("app", "db")]).await;
    mesh.write("services.yaml", &(service("books", &[("app", "books")], &[]) + "---\n" + &service_on("db", &[("app", "db")], 6379, "tcp", &[]))).await;
    let gw = gateway(&mesh).await;
    let mirrors = [
        mirror("books", 8080, &fq("books")),
        mirror("db", 6379, &fq("db")),
        mirror("nothing", 8080, &fq("nothing")),
        mirror("outside", 8080, "books.test.svc.other.local"),
    ];
    mesh.write("mirrors.yaml", &mirrors.join("---\n")).await;
    let targets = [
        format!("books-east.{NS}.{SUFFIX}:8080"),
        format!("db-east.{NS}.{SUFFIX}:6379"),
        format!("nothing-east.{NS}.{SUFFIX}:8080"),
        format!("outside-east.{NS}.{SUFFIX}:8080"),
    ];
    let (client, fwd) = mesh.forwarding_client(&targets.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // HTTP: answered by books, which sees the gateway's identity (the hop it came from).
    for _ in 0..5 {
        let (status, body) = get(fwd[0], &[]).await;
        assert_eq!((status, body.trim()), (200, format!("books {}", identity("gateway")).as_str()));
    }
    assert!(books.served() >= 5);
    // Both hops are mesh TLS: the client's to the gateway's identity, the gateway's to books'.
    assert!(
        client
            .metric("tcp_open_total", &[r#"direction="outbound""#, r#"peer="dst""#, r#"tls="true""#, &format!(r#"server_id="{}""#, identity("gateway"))])
            .await
            >= 1.0
    );
    assert!(gw.metric("tcp_open_total", &[r#"direction="inbound""#, r#"tls="true""#, &format!(r#"client_id="{}""#, identity("client"))]).await >= 1.0);
    assert!(gw.metric("tcp_open_total", &[r#"direction="outbound""#, r#"peer="dst""#, &format!(r#"server_id="{}""#, identity("books"))]).await >= 1.0);
    assert!(books_proxy.metric("tcp_open_total", &[r#"direction="inbound""#, &format!(r#"client_id="{}""#, identity("gateway"))]).await >= 1.0);
    // The client's metrics name the cluster; the gateway's, the Service it forwarded to.
    assert!(client.metric("response_total", &[r#"direction="outbound""#, r#"dst_target_cluster="east""#, r#"dst_target_service="books""#]).await >= 5.0);
    assert!(gw.metric("response_total", &[r#"direction="outbound""#, r#"dst_service="books""#, r#"status_code="200""#]).await >= 5.0);

    // Opaque TCP takes the same way, with no session protocol.
    assert_eq!(tcp_line(fwd[1], "PING 1").await.unwrap(), "db PING 1");

    // A request that already passed this gateway is a loop: 508, and books never sees it.
    let served = books.served();
    let by = format!("by={};for=x", identity("gateway"));
    let (status, body) = get(fwd[0], &[("forwarded", &by)]).await;
    assert_eq!(status, 508, "{body}");
    assert!(body.contains("passed this gateway already"), "{body}");
    assert_eq!(books.served(), served);

    // A name within the suffixes that knit-control does not know: 404, the reason said.
    let (status, body) = get(fwd[2], &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("knows no Service by that name"), "{body}");
    // A name outside the suffixes: each request is answered 404 with the reason, as Linkerd's
    // gateway answers it, and counted.
    for _ in 0..2 {
        let (status, body) = get(fwd[3], &[]).await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("outside the gateway's suffixes"), "{body}");
    }
    assert!(gw.metric("http_errors_total", &[r#"error="gateway_domain""#]).await >= 2.0);
}

#[tokio::test]
async fn the_gateway_refuses_callers_its_policy_does_not_allow() {
    let mesh = LocalMesh::start("gateway-authz").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let gw = gateway(&mesh).await;
    mesh.write("mirrors.yaml", &mirror("books", 8080, &fq("books"))).await;
    // Only the identity `allowed` may use the gateway's port.
    let port = gw.addrs.inbound.port();
    mesh.write(
        "gateway-policy.yaml",
        &format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: gateway, namespace: {NS}}}\nspec:\n  externalWorkloadSelector: {{matchLabels: {{knit.dev/gateway: east}}}}\n  port: {port}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{name: allowed, namespace: {NS}}}\nspec: {{identities: [{allowed}]}}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: gateway, namespace: {NS}}}\nspec:\n  targetRef: {{group: policy.linkerd.io, kind: Server, name: gateway}}\n  requiredAuthenticationRefs: [{{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: allowed}}]\n",
            allowed = identity("allowed"),
        ),
    )
    .await;
    let (client, fwd) = mesh.forwarding_client(&[&format!("books-east.{NS}.{SUFFIX}:8080")]).await;
    crate::assert_eventually!(gw.metric("inbound_tcp_authz_deny_total", &[]).await >= 1.0 || get(fwd[0], &[]).await.0 != 200, "the gateway's policy applies");
    let served = books.served();
    let (status, body) = get(fwd[0], &[]).await;
    assert_eq!(status, 403, "each request is authorized by the gateway port's policy: {body}");
    assert_eq!(books.served(), served, "nothing reached books");
    assert!(gw.metric("inbound_tcp_authz_deny_total", &[]).await >= 1.0);
    drop(client);
}
