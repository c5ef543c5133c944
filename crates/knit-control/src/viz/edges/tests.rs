//! Traffic to linked clusters as `stat` and `edges` show it: a caller's outbound series to a
//! gateway mirror (`books-east`: the gateway's endpoint, the set's `target_*` labels) and to a
//! federated Service (`books-federated`: a local pod and a remote pod with its cluster), recorded
//! in the built-in store as the proxy exposes them.

use super::*;
use crate::viz::{
    stat::{self, Kind, Query},
    store::{Store, Target},
};
use std::{net::SocketAddr, sync::Arc, time::Instant};

const GATEWAY: &str = "gateway.shop.serviceaccount.identity.knit.cluster.local";

fn web() -> Target {
    let ip = std::net::Ipv4Addr::new(10, 233, 2, 2).into();
    Target {
        admin: SocketAddr::new(ip, 4191),
        namespace: "shop".into(),
        deployment: "web".into(),
        pod: "web".into(),
        identity: Some("web.shop.serviceaccount.identity.knit.cluster.local".into()),
        tap: SocketAddr::new(ip, 4190),
    }
}

/// The caller's outbound families after `n` requests to each destination.
fn exposition(n: u32) -> String {
    let gateway = format!(
        r#"authority="books-east.shop.svc.cluster.local:8080",target_addr="10.233.1.1:4143",dst_namespace="shop",dst_service="books-east",dst_target_cluster="east",dst_target_service="books",dst_target_service_namespace="shop",dst_zone_locality="unknown",tls="true",server_id="{GATEWAY}""#
    );
    let local = r#"authority="books-federated.shop.svc.cluster.local:8080",target_addr="10.233.2.3:4143",dst_namespace="shop",dst_service="books-federated",dst_pod="books-w",dst_deployment="books-w",tls="true",server_id="books-w.shop.serviceaccount.identity.knit.cluster.local""#;
    let remote = r#"authority="books-federated.shop.svc.cluster.local:8080",target_addr="10.233.1.2:4143",dst_namespace="shop",dst_service="books-federated",dst_pod="books",dst_deployment="books",dst_target_cluster="east",tls="true",server_id="books.shop.serviceaccount.identity.knit.east.local""#;
    let mut out = String::new();
    for labels in [gateway.as_str(), local, remote] {
        out += &format!("response_total{{direction=\"outbound\",{labels},status_code=\"200\",classification=\"success\"}} {n}\n");
        out += &format!("response_latency_ms_bucket{{direction=\"outbound\",{labels},status_code=\"200\",le=\"+Inf\"}} {n}\n");
    }
    out
}

fn source() -> Source {
    let store = Arc::new(Store::new(Duration::from_secs(60)));
    store.set_targets(vec![web()]);
    let now = Instant::now();
    store.record(&web(), now - Duration::from_secs(10), Ok(exposition(0)));
    store.record(&web(), now, Ok(exposition(20)));
    Source::Store(store)
}

#[tokio::test]
async fn stat_svc_names_the_clusters_a_service_reached() {
    let rows = stat::stat(&source(), &Query::new(Kind::Service, Some("shop".into()), Duration::from_secs(30)), &Default::default()).await.unwrap();
    let by_name: BTreeMap<&str, &stat::Row> = rows.iter().map(|r| (r.name.as_str(), r)).collect();
    assert_eq!(by_name["books-east:8080"].clusters, ["east"]);
    assert_eq!(by_name["books-east:8080"].requests, 20.0);
    // A federated Service's requests went to both: this cluster ("") and east.
    assert_eq!(by_name["books-federated:8080"].clusters, ["", "east"]);
    assert_eq!(by_name["books-federated:8080"].requests, 40.0);
    // Traffic that stays here names no cluster.
    let local_only = stat::stat(
        &source(),
        &Query { to: Some("deploy/books-w".parse().unwrap()), ..Query::new(Kind::Deployment, Some("shop".into()), Duration::from_secs(30)) },
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(local_only.len(), 1);
    assert!(local_only[0].clusters.is_empty(), "{local_only:?}");
}

#[tokio::test]
async fn edges_name_the_remote_cluster_and_the_gateways_service() {
    let found = edges(&source(), By::Deployment, Some("shop"), Duration::from_secs(30), &Default::default()).await.unwrap();
    let seen: Vec<_> = found.iter().map(|e| (e.dst.as_str(), e.dst_cluster.as_deref(), e.via_gateway, e.server_id.as_deref())).collect();
    assert_eq!(
        seen,
        [
            // books-federated's member in east, reached directly (flat): the pod's own identity.
            ("books", Some("east"), false, Some("books.shop.serviceaccount.identity.knit.east.local")),
            // books-east, through east's gateway: the remote Service, answered by the gateway.
            ("books", Some("east"), true, Some(GATEWAY)),
            // books-federated's member here.
            ("books-w", None, false, Some("books-w.shop.serviceaccount.identity.knit.cluster.local")),
        ],
        "{found:#?}"
    );
    assert!(found.iter().all(|e| e.secured && e.src == "web"));
}
