//! Inbound policy from knit-control: authorization by mesh identity, the refusal a denied
//! client sees, and local rate limits.

use super::fixture::{identity, send, Backend, Behaviour, LocalMesh, NS};

pub(super) fn books_policy(allowed: &str) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: books-http\n  namespace: {NS}\nspec:\n  externalWorkloadSelector:\n    matchLabels:\n      app: books\n  port: http\n  proxyProtocol: HTTP/1\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: allowed-clients\n  namespace: {NS}\nspec:\n  identities:\n    - {allowed}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: books-authz\n  namespace: {NS}\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: books-http\n  requiredAuthenticationRefs:\n    - group: policy.linkerd.io\n      kind: MeshTLSAuthentication\n      name: allowed-clients\n"
    )
}

fn service_yaml() -> String {
    super::fixture::service("books", &[("app", "books")], &[])
}

#[tokio::test]
async fn only_authorized_identities_reach_the_application() {
    let mesh = LocalMesh::start("authz").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let server = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service_yaml()).await;
    mesh.write("policy.yaml", &books_policy(&identity("web"))).await;
    let web = mesh.proxy("web", "web", None).await;
    let other = mesh.proxy("other", "other", None).await;

    // The proxies start under the default policy; the Server's arrives by a stream update.
    crate::assert_eventually!(send(other.addrs.outbound, "books:8080", "/", 1).await[0].0 == 403, "the policy applies");
    let ok = send(web.addrs.outbound, "books:8080", "/", 5).await;
    assert!(ok.iter().all(|(s, b)| *s == 200 && b.contains(&identity("web"))), "{ok:?}");

    let served_before = books.served();
    let deny_before = server.metric("inbound_http_authz_deny_total", &[r#"srv_name="books-http""#]).await;
    let denied = send(other.addrs.outbound, "books:8080", "/", 1).await;
    assert_eq!(denied[0].0, 403, "{denied:?}");
    let body = &denied[0].1;
    assert!(body.contains("books-http") && body.contains(&identity("other")), "the refusal names the server and the identity seen: {body}");
    // Without mesh TLS there is no identity at all.
    let (status, body) = crate::harness::request(server.addrs.inbound, "GET", "/", "books", "").await;
    assert_eq!(status, 403, "{body}");
    // The application's own `l5d-*` headers choose nothing: not a downgrade that would skip
    // books' proxy, not web's identity.
    let forged = format!(
        "GET / HTTP/1.1\r\nHost: books:8080\r\nl5d-orig-proto: HTTP/1.1\r\nl5d-client-id: {}\r\nl5d-dst-override: books.{NS}.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
        identity("web")
    );
    let mut tcp = tokio::net::TcpStream::connect(other.addrs.outbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, forged.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains(&identity("other")) && !answer.contains(&identity("web")), "books' proxy saw other's proven identity: {answer}");
    assert_eq!(books.served(), served_before, "denied requests never reached the application");

    let deny = server.metric("inbound_http_authz_deny_total", &[r#"srv_name="books-http""#]).await;
    assert_eq!(deny - deny_before, 3.0);
    let allow = server.metric("inbound_http_authz_allow_total", &[r#"srv_name="books-http""#, r#"authz_name="books-authz""#]).await;
    assert!(allow >= 5.0, "allowed requests are counted: {allow}");

    // Allowing the other identity takes effect without a restart.
    mesh.write("policy.yaml", &books_policy(&identity("other"))).await;
    crate::assert_eventually!(send(other.addrs.outbound, "books:8080", "/", 1).await[0].0 == 200, "the new policy applies");
}

#[tokio::test]
async fn a_local_rate_limit_answers_429_with_retry_after() {
    let mesh = LocalMesh::start("ratelimit").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let server = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service_yaml()).await;
    let policy = format!(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: books-http\n  namespace: {NS}\nspec:\n  externalWorkloadSelector:\n    matchLabels:\n      app: books\n  port: http\n  accessPolicy: all-unauthenticated\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\nmetadata:\n  name: books-limit\n  namespace: {NS}\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: books-http\n  total:\n    requestsPerSecond: 5\n"
    );
    mesh.write("policy.yaml", &policy).await;
    let web = mesh.proxy("web", "web", None).await;
    crate::assert_eventually!(send(web.addrs.outbound, "books:8080", "/", 20).await.iter().any(|(s, _)| *s == 429), "the rate limit applies");
    let burst = send(web.addrs.outbound, "books:8080", "/", 30).await;
    let limited = burst.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 15, "30 requests at once against 5/s: {limited} refused");
    assert!(server.metric("inbound_http_local_ratelimit_total", &[r#"srv_name="books-http""#]).await >= limited as f64);
    // What a client sees: 429 with Retry-After.
    let url = format!("http://{}/", web.addrs.outbound);
    let mut seen = None;
    for _ in 0..20 {
        let (ok, out, err) = crate::harness::run("curl", &["-sS", "-i", "--max-time", "10", "-H", "Host: books:8080", &url]).await;
        assert!(ok, "{err}");
        if out.starts_with("HTTP/1.1 429") {
            seen = Some(out);
            break;
        }
    }
    let out = seen.expect("a 429 within 20 quick requests against 5/s");
    assert!(out.to_ascii_lowercase().contains("retry-after:"), "{out}");
}
