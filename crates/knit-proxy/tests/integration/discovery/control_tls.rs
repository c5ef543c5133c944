//! The control plane over TLS, as in a cluster: knit-control proves its own identity on the
//! identity, destination and policy ports, and proxies check it against the trust anchors.

use super::fixture::{count_from, identity, send, service, Backend, Behaviour, LocalMesh, CONTROL_IDENTITY};
use crate::harness::run;
use std::time::Duration;

#[tokio::test]
async fn proxies_certify_and_discover_over_tls_with_the_control_planes_identity_checked() {
    let mesh = LocalMesh::start_tls("control-tls").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy("web", "web", None).await;
    let results = send(web.addrs.outbound, "books:8080", "/", 50).await;
    assert_eq!(count_from(&results, "books"), 50, "discovered over TLS: {:?}", results.iter().find(|(s, _)| *s != 200));

    // A real TLS client sees the same: the certificate chains to the anchors and names the
    // control plane; plaintext h2c is not served.
    let anchors = mesh.trust_anchors_file();
    let curl = |name: &str, port: u16| {
        let connect_to = format!("{name}:443:127.0.0.1:{port}");
        let url = format!("https://{name}/io.linkerd.proxy.destination.Destination/Get");
        let anchors = anchors.display().to_string();
        async move {
            run(
                "curl",
                &["-sS", "--http2", "--max-time", "5", "--cacert", &anchors, "--connect-to", &connect_to, "-o", "/dev/null", "-w", "%{http_version}", &url],
            )
            .await
        }
    };
    for port in [mesh.control.identity.port(), mesh.control.destination.port(), mesh.control.policy.port()] {
        let (ok, out, err) = curl(CONTROL_IDENTITY, port).await;
        assert!(ok && out == "2", "port {port}: TLS with the control plane's identity and h2: {out} {err}");
        let (ok, _, err) = curl("knit-control.other.serviceaccount.identity.knit.cluster.local", port).await;
        assert!(!ok && err.contains("SSL"), "port {port}: another name must not verify: {err}");
        let plain = format!("http://127.0.0.1:{port}/");
        let (ok, _, _) = run("curl", &["-sS", "--http2-prior-knowledge", "--max-time", "5", &plain]).await;
        assert!(!ok, "port {port}: plaintext h2c must not be served");
    }
}

/// A proxy told to expect another identity refuses the control plane and says which identity
/// it expected and which it was shown. (It never serves: it waits for a certificate first.)
#[tokio::test]
async fn a_proxy_expecting_another_control_plane_identity_refuses_it() {
    use tokio::io::AsyncBufReadExt;
    let mesh = LocalMesh::start_tls("control-tls-wrong").await;
    let wrong = "knit-control.elsewhere.serviceaccount.identity.knit.cluster.local";
    let name = identity("web");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy"))
        .env_clear()
        .env("KNIT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
        .env("KNIT_PROXY_IDENTITY_LOCAL_NAME", &name)
        .env("KNIT_PROXY_IDENTITY_TOKEN_FILE", mesh.token_file("web", &name))
        .env("KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", mesh.trust_anchors_file())
        .env("KNIT_PROXY_IDENTITY_SVC_ADDR", mesh.control.identity.to_string())
        .env("KNIT_PROXY_IDENTITY_SVC_NAME", wrong)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn knit-proxy");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let failure = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("failed to obtain a certificate") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the refused control plane is logged");
    assert!(failure.contains(&format!("expected identity {wrong}")), "names the identity expected: {failure}");
    assert!(failure.contains(CONTROL_IDENTITY), "names the identity shown: {failure}");
    assert!(child.try_wait().expect("wait").is_none(), "the proxy keeps retrying");
}
