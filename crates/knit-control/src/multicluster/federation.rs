//! Federated Services (LINKERD-WIRE.md §12.3): one name, `<svc>-federated`, whose endpoints are
//! those of every member, here and in each linked cluster, updated as members join and leave.
//!
//! Members are Services labelled `mirror.linkerd.io/federated=member`: the local one (if any) is
//! read from the index; the remote ones arrive through each Link's mirror as endpoint workloads
//! labelled [`MEMBER_LABEL`] and named for `<svc>-federated` (so they are its endpoints as an
//! EndpointSlice's would be). This task writes the `<svc>-federated` Services, as one source of
//! the index, with Linkerd's annotations: `multicluster.linkerd.io/remote-discovery:
//! <svc>@<cluster>,...` and `multicluster.linkerd.io/local-discovery: <svc>`; Destination adds the
//! local member's endpoints to the remote ones (`index/endpoints.rs`). In local mode their
//! ClusterIPs come from `--federated-cluster-ips`.

use crate::index::{Index, MIRRORED_SERVICE_LABEL};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

/// The label of a Service that is a member of `<name>-federated`.
pub const FEDERATED_LABEL: &str = "mirror.linkerd.io/federated";
/// The label of a remote member's endpoint: the member Service's name.
pub const MEMBER_LABEL: &str = "knit.dev/federated-member";
/// The annotation of a remote member's endpoint: the member's ports (JSON), for the federated
/// Service when no local member gives them.
pub const PORTS_ANNOTATION: &str = "knit.dev/federated-ports";
pub use crate::index::LOCAL_DISCOVERY;
pub const REMOTE_DISCOVERY: &str = "multicluster.linkerd.io/remote-discovery";
const SOURCE: &str = "multicluster/federated";

/// Keeps the federated Services in step with their members until the task is dropped.
pub async fn run(index: Arc<Index>, cluster_ips: Option<ipnet::IpNet>, status: Arc<std::sync::Mutex<Vec<super::mirror::FederatedStatus>>>) {
    let mut changes = index.changes();
    let mut written: Option<Vec<serde_json::Value>> = None;
    loop {
        let docs = federated(&index, cluster_ips.as_ref());
        if written.as_ref() != Some(&docs) {
            let resources = docs
                .iter()
                .filter_map(|d| match crate::resources::parse_document(d.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write a federated Service");
                        None
                    }
                })
                .collect();
            tracing::info!(services = docs.len(), "federated Services updated");
            *status.lock().unwrap_or_else(|p| p.into_inner()) = docs.iter().map(report).collect();
            written = Some(docs);
            index.reset(SOURCE, resources);
        }
        if !super::next_change(&mut changes).await {
            return;
        }
    }
}

fn report(doc: &serde_json::Value) -> super::mirror::FederatedStatus {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let a = &doc["metadata"]["annotations"];
    super::mirror::FederatedStatus {
        namespace: text(&doc["metadata"]["namespace"]).unwrap_or_default(),
        name: text(&doc["metadata"]["name"]).unwrap_or_default(),
        cluster_ip: text(&doc["spec"]["clusterIP"]),
        local: a.get(LOCAL_DISCOVERY).is_some(),
        clusters: a[REMOTE_DISCOVERY].as_str().unwrap_or("").split(',').filter_map(|m| Some(m.split_once('@')?.1.to_string())).collect(),
    }
}

#[derive(Default)]
struct Members {
    local: bool,
    clusters: BTreeSet<String>,
    ports: Option<serde_json::Value>,
}

/// The federated Services the index's members call for, as manifests.
fn federated(index: &Index, cluster_ips: Option<&ipnet::IpNet>) -> Vec<serde_json::Value> {
    let mut members: BTreeMap<(String, String), Members> = BTreeMap::new();
    for s in index.services_where(|s| {
        s.metadata.labels.get(FEDERATED_LABEL).map(String::as_str) == Some("member") && !s.metadata.labels.contains_key(MIRRORED_SERVICE_LABEL)
    }) {
        let m = members.entry((s.metadata.namespace.clone(), s.metadata.name.clone())).or_default();
        m.local = true;
        let ports: Vec<_> = s.spec.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "appProtocol": p.app_protocol})).collect();
        m.ports = Some(json!(ports));
    }
    for w in index.workloads_all() {
        let Some(name) = w.metadata.labels.get(MEMBER_LABEL) else { continue };
        let Some(cluster) = w.metadata.labels.get(crate::index::CLUSTER_NAME_LABEL) else { continue };
        let m = members.entry((w.metadata.namespace.clone(), name.clone())).or_default();
        m.clusters.insert(cluster.clone());
        if m.ports.is_none() {
            m.ports = w.metadata.annotations.get(PORTS_ANNOTATION).and_then(|p| serde_json::from_str(p).ok());
        }
    }
    let keys: Vec<String> = members.keys().map(|(ns, name)| format!("{ns}/{name}-federated")).collect();
    let ips = cluster_ips.map(|range| super::cluster_ips(range, keys.iter().map(String::as_str))).unwrap_or_default();
    members
        .iter()
        .filter_map(|((ns, name), m)| {
            let mut annotations = serde_json::Map::new();
            if m.local {
                annotations.insert(LOCAL_DISCOVERY.into(), json!(name));
            }
            if !m.clusters.is_empty() {
                annotations.insert(REMOTE_DISCOVERY.into(), json!(m.clusters.iter().map(|c| format!("{name}@{c}")).collect::<Vec<_>>().join(",")));
            }
            Some(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("{name}-federated"), "namespace": ns, "labels": {MIRRORED_SERVICE_LABEL: "true"}, "annotations": annotations},
                "spec": {"ports": m.ports.clone()?, "clusterIP": ips.get(format!("{ns}/{name}-federated").as_str()).map(|ip| ip.to_string())},
            }))
        })
        .collect()
}
