//! Two linked local-mode clusters on loopback (LINKERD-WIRE.md §12.1): `east` exports, `west`
//! links to it. Each has its own knit-control and issuer under one trust anchor. West's service
//! mirror follows east's exports over mTLS and probes east's gateway; a client in west reaches
//! east's Services by their mirrors, through the gateway. The same run in network namespaces, with
//! iptables interception, is in tests/.

use super::{
    fixture::{free_port, identity, service, Backend, Behaviour, LocalMesh, CONTROL_IDENTITY, NS},
    gateway::get,
};
use crate::harness::{scrape, sum_metric, TestProxy};
use std::{net::SocketAddr, sync::Arc, time::Duration};

fn exported(yaml: &str) -> String {
    yaml.replacen("metadata:\n", "metadata:\n  labels:\n    mirror.linkerd.io/exported: \"true\"\n", 1)
}

fn link(remote: SocketAddr, gateway: &TestProxy, extra: &str) -> String {
    format!(
        "apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata:\n  name: east\n  namespace: {NS}\n  annotations:\n    knit.dev/remote-control-plane: \"{remote}\"\n    knit.dev/remote-control-plane-identity: {CONTROL_IDENTITY}\n{extra}spec:\n  targetClusterName: east\n  targetClusterDomain: cluster.local\n  gatewayAddress: 127.0.0.1\n  gatewayPort: \"{port}\"\n  gatewayIdentity: {gw}\n  probeSpec: {{path: /ready, port: \"{probe}\", period: 300ms, timeout: 1s, failureThreshold: \"2\"}}\n  selector: {{matchLabels: {{mirror.linkerd.io/exported: \"true\"}}}}\n",
        port = gateway.addrs.inbound.port(),
        gw = identity("gateway"),
        probe = gateway.addrs.admin.port(),
    )
}

async fn control_metric(mesh: &LocalMesh, name: &str, labels: &[&str]) -> f64 {
    sum_metric(&scrape(mesh.control.admin).await, name, labels)
}

/// The east gateway, on `at` (its inbound and admin addresses) when restarted.
async fn east_gateway(east: &LocalMesh, at: Option<(SocketAddr, SocketAddr)>) -> TestProxy {
    east.proxy_with("gateway", "gateway", None, move |c| {
        c.inbound.gateway_suffixes = vec!["svc.cluster.local".into()];
        if let Some((inbound, admin)) = at {
            c.inbound.listen_addr = inbound;
            c.admin.listen_addr = admin;
        }
    })
    .await
}

#[tokio::test]
async fn a_linked_clusters_exported_service_is_mirrored_and_reached_through_its_gateway() {
    let multicluster = Arc::new(|c: &mut knit_control::config::Config| c.multicluster_addr = Some("127.0.0.1:0".parse().unwrap()));
    let east = LocalMesh::start_configured("mc-east", multicluster).await;
    let west = LocalMesh::start_linked("mc-west", &east, None).await;
    let remote = east.control.multicluster.expect("east serves its exports");

    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = east.workload(&books, "books", &[("app", "books")]).await;
    east.write("books.yaml", &exported(&service("books", &[("app", "books")], &[]))).await;
    let gateway = east_gateway(&east, None).await;
    west.write("link.yaml", &link(remote, &gateway, "")).await;

    let target = format!("books-east.{NS}.svc.cluster.local:8080");
    let (web, fwd) = west.forwarding_client(&[&target]).await;
    crate::assert_eventually!(get(fwd[0], &[]).await.0 == 200, "west reaches east's books through the gateway");
    let (status, body) = get(fwd[0], &[]).await;
    assert_eq!((status, body.trim()), (200, format!("books {}", identity("gateway")).as_str()));
    assert_eq!(control_metric(&west, "multicluster_mirrored_services", &[r#"target_cluster="east""#]).await, 1.0);
    assert_eq!(control_metric(&west, "multicluster_gateway_alive", &[r#"target_cluster="east""#]).await, 1.0);
    assert_eq!(control_metric(&west, "multicluster_remote_connected", &[r#"target_cluster="east""#]).await, 1.0);
    // West's client proved its own identity to east's gateway, issued by west's issuer.
    assert!(gateway.metric("tcp_open_total", &[r#"direction="inbound""#, &format!(r#"client_id="{}""#, identity("client"))]).await >= 1.0);

    // The gateway goes: within its failure threshold the mirror has no endpoints, and requests
    // fail at once with the reason.
    let at = (gateway.addrs.inbound, gateway.addrs.admin);
    assert!(gateway.shutdown().await);
    crate::assert_eventually!(
        control_metric(&west, "multicluster_gateway_alive", &[r#"target_cluster="east""#]).await == 0.0,
        "the probe marks the gateway down"
    );
    crate::assert_eventually!(get(fwd[0], &[]).await.0 == 503, "no endpoint while the gateway is down");
    let started = std::time::Instant::now();
    let (status, body) = get(fwd[0], &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "failed fast: {:?}", started.elapsed());
    assert!(body.contains("no ready endpoint") || body.contains("failfast"), "{body}");

    // It comes back on the same address: traffic resumes, nothing restarted.
    let gateway = east_gateway(&east, Some(at)).await;
    crate::assert_eventually!(get(fwd[0], &[]).await.0 == 200, "traffic resumes when the gateway returns");

    // Unexported in east: gone from west.
    east.write("books.yaml", &service("books", &[("app", "books")], &[])).await;
    crate::assert_eventually!(
        control_metric(&west, "multicluster_mirrored_services", &[r#"target_cluster="east""#]).await == 0.0,
        "the mirror goes with the export"
    );
    crate::assert_eventually!(get(fwd[0], &[]).await.0 != 200, "nothing to reach");
    drop((web, gateway));
}

#[tokio::test]
async fn a_link_to_an_unreachable_or_untrusted_remote_is_reported_and_leaves_local_service_alone() {
    let west = LocalMesh::start("mc-lonely").await;
    let books = Backend::start("books", Behaviour::Ok).await;
    let _books_proxy = west.workload(&books, "books", &[("app", "books")]).await;
    west.write("books.yaml", &service("books", &[("app", "books")], &[])).await;
    // Nothing listens at the remote address; the "gateway" is a proxy that nothing links to.
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let stray = east_gateway(&west, None).await;
    west.write("link.yaml", &link(nobody, &stray, "")).await;
    // And a remote with another trust anchor: its certificate does not verify.
    let other =
        LocalMesh::start_configured("mc-other", Arc::new(|c: &mut knit_control::config::Config| c.multicluster_addr = Some("127.0.0.1:0".parse().unwrap())))
            .await;
    let untrusted = link(other.control.multicluster.unwrap(), &stray, "")
        .replace("name: east", "name: other")
        .replace("targetClusterName: east", "targetClusterName: other");
    west.write("link-other.yaml", &untrusted).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for cluster in ["east", "other"] {
        assert_eq!(control_metric(&west, "multicluster_remote_connected", &[&format!(r#"target_cluster="{cluster}""#)]).await, 0.0, "{cluster}");
        assert_eq!(control_metric(&west, "multicluster_mirrored_services", &[&format!(r#"target_cluster="{cluster}""#)]).await, 0.0, "{cluster}");
    }
    // A client without a certificate under the anchors reads nothing.
    let url = format!("https://{}/multicluster.knit.dev/v1/exports", other.control.multicluster.unwrap());
    let (ok, out, err) = crate::harness::run("curl", &["-sS", "-k", "--http2", "-X", "POST", "-d", "{\"selector\":{}}", "--max-time", "5", &url]).await;
    assert!(!ok && out.is_empty(), "{out} {err}");
    // A malformed Link is refused with its field named, and serves nothing.
    west.write(
        "bad-link.yaml",
        &link(nobody, &stray, "").replace("name: east", "name: bad").replace("gatewayAddress: 127.0.0.1", "gatewayAddress: gw_1.example"),
    )
    .await;
    assert!(control_metric(&west, "manifest_invalid_documents", &[r#"file="bad-link.yaml""#]).await >= 1.0);
    // Local service is untouched.
    let (web, fwd) = west.forwarding_client(&[&format!("books.{NS}.svc.cluster.local:8080")]).await;
    let (status, body) = get(fwd[0], &[]).await;
    assert_eq!((status, body.split_whitespace().next()), (200, Some("books")));
    drop((web, stray, other));
}
