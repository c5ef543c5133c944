//! Kubernetes objects as the index's resources; pure functions over plain data.
//!
//! Services and the custom resources keep their API shape: each becomes JSON (without `status`
//! and `managedFields`, which no resource reads) that `resources::parse_document` validates when
//! it is emitted, exactly as a manifest file's document would be. A Pod becomes an
//! `ExternalWorkload` of the same name, and only while it can take traffic. Namespaces lend their
//! Linkerd annotations to the Services and Pods in them, the object's own value winning, so that a
//! namespace-wide `config.linkerd.io/default-inbound-policy` or retry budget applies as it does in
//! Linkerd.

use crate::{
    index::IndexConfig,
    resources::{self, ExternalWorkload, ExternalWorkloadSpec, MeshTls, ObjectMeta, Resource, WorkloadIp, WorkloadPort},
};
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use serde_json::Value;
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

pub type Annotations = BTreeMap<String, String>;

/// The containers whose presence makes a pod meshed: Knit's proxy, or Linkerd's. Each names its
/// inbound port after itself.
pub const PROXY_CONTAINERS: [&str; 2] = ["knit-proxy", "linkerd-proxy"];
/// Where the index reads a workload's proxy inbound port (`index::endpoints`, private there).
const INBOUND_PORT_ANNOTATION: &str = "knit.dev/proxy-inbound-port";

/// An object as the translator keeps it between its arrival and its emission, which happens
/// again whenever its namespace's annotations change.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A Service or a custom resource in its API shape.
    Json(Value),
    /// A Pod that can take traffic, with its own annotations only.
    Workload(ExternalWorkload),
    /// An object that could not be turned into JSON, with the reason (refused when emitted).
    Unreadable(String),
}

/// Whether a namespace annotation is inherited by the Services and Pods in it: the keys
/// `config.linkerd.io/*`, `balancer.*linkerd.io/*`, `retry.linkerd.io/*`, `timeout.linkerd.io/*`.
fn inheritable(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return false };
    matches!(prefix, "config.linkerd.io" | "retry.linkerd.io" | "timeout.linkerd.io") || (prefix.starts_with("balancer.") && prefix.ends_with("linkerd.io"))
}

/// The annotations of a namespace that its objects inherit.
pub fn inherited(annotations: Option<&Annotations>) -> Annotations {
    annotations.into_iter().flatten().filter(|(k, _)| inheritable(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An object's JSON without what the index never reads (`status`, `metadata.managedFields`),
/// which also keeps the translator's copy small.
pub fn json<T: serde::Serialize>(object: &T) -> Object {
    match serde_json::to_value(object) {
        Ok(mut v) => {
            if let Some(map) = v.as_object_mut() {
                map.remove("status");
            }
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
            Object::Json(v)
        }
        Err(e) => Object::Unreadable(format!("cannot be read as JSON: {e}")),
    }
}

/// A custom resource's JSON. Objects of a list may come without `apiVersion` and `kind`, which
/// `parse_document` needs: the watch knows them.
pub fn custom(mut object: kube::api::DynamicObject, api_version: &str, kind: &str) -> Object {
    if object.types.is_none() {
        object.types = Some(kube::api::TypeMeta { api_version: api_version.to_string(), kind: kind.to_string() });
    }
    json(&object)
}

/// A Pod as a workload, or `None` when it must not receive traffic: it runs in the host's network,
/// has no IP, is not Ready, is terminating, or has finished.
pub fn pod(pod: &Pod, cfg: &IndexConfig) -> Option<ExternalWorkload> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    // A host-network pod shares the node's IP: its "endpoints" would be every host-network pod's.
    if spec.host_network == Some(true) || pod.metadata.deletion_timestamp.is_some() || !serving(status) {
        return None;
    }
    let workload_ips = ips(status);
    if workload_ips.is_empty() {
        return None;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    let name = pod.metadata.name.clone()?;
    // Native sidecars (init containers that keep running) serve like ordinary containers.
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let ports = spec.containers.iter().chain(sidecars).flat_map(container_ports).collect();
    let proxy = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| PROXY_CONTAINERS.contains(&c.name.as_str()));
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    // The running proxy's port says where it listens, whatever inbound port the injector was told.
    if let Some(port) = proxy.and_then(|c| c.ports.iter().flatten().find(|p| PROXY_CONTAINERS.contains(&p.name.as_deref().unwrap_or("")))) {
        annotations.insert(INBOUND_PORT_ANNOTATION.to_string(), port.container_port.to_string());
    }
    // Its admin port is where viz scrapes its metrics.
    if let Some(port) = proxy.and_then(|c| c.ports.iter().flatten().find(|p| matches!(p.name.as_deref(), Some("knit-admin" | "linkerd-admin")))) {
        annotations.insert(crate::viz::store::ADMIN_PORT_ANNOTATION.to_string(), port.container_port.to_string());
    }
    let mesh_tls = proxy.is_some().then(|| {
        let identity = cfg.identity(spec.service_account_name.as_deref().unwrap_or("default"), &ns);
        MeshTls { server_name: Some(identity.clone()), identity }
    });
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    // Viz groups pods by deployment: the injector labels a meshed pod with it; any other pod's
    // is read from its owner, so that an unmeshed pod counts in its deployment's "meshed" column.
    if !labels.contains_key(crate::resources::DEPLOYMENT_LABEL) {
        let owner = crate::inject::Owner::of_pod(&serde_json::json!({ "metadata": &pod.metadata }));
        if let Some(owner) = owner.filter(|o| o.kind == "Deployment") {
            labels.insert(crate::resources::DEPLOYMENT_LABEL.to_string(), owner.name);
        }
    }
    let metadata = ObjectMeta { name, namespace: ns, labels, annotations, creation_timestamp: None };
    Some(ExternalWorkload { metadata, spec: ExternalWorkloadSpec { mesh_tls, ports, workload_ips } })
}

fn serving(status: &PodStatus) -> bool {
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    ready && !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// `status.podIPs`, or `status.podIP` from API servers that predate dual-stack.
fn ips(status: &PodStatus) -> Vec<WorkloadIp> {
    let listed: Vec<&str> = status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
    let ips = if listed.is_empty() { status.pod_ip.as_deref().into_iter().collect() } else { listed };
    ips.into_iter().filter_map(|ip| ip.parse::<IpAddr>().ok()).map(|ip| WorkloadIp { ip }).collect()
}

/// A container's TCP ports: the mesh carries nothing else, and a UDP port of the same number
/// would otherwise shadow the TCP one in a named `targetPort`.
fn container_ports(c: &Container) -> impl Iterator<Item = WorkloadPort> + '_ {
    c.ports.iter().flatten().filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP")).filter_map(|p| {
        let port = u16::try_from(p.container_port).ok().filter(|n| *n != 0)?;
        Some(WorkloadPort { name: p.name.clone(), port })
    })
}

/// The resource an object stands for, its namespace's inherited annotations (if it inherits any)
/// merged under its own; `Err` with the reason when the index cannot use it.
pub fn resolve(object: &Object, namespace: Option<&Annotations>) -> Result<Resource, String> {
    match object {
        Object::Json(v) => {
            let mut v = v.clone();
            if let Some(inherited) = namespace.filter(|a| !a.is_empty()) {
                merge_json(&mut v, inherited);
            }
            match resources::parse_document(v) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err("not a kind Knit serves".to_string()),
                // parse_document's reasons start with " (KIND NS/NAME): ", which the log already says.
                Err(e) => Err(e.split_once("): ").map_or(e.as_str(), |(_, reason)| reason).to_string()),
            }
        }
        Object::Workload(w) => {
            let mut w = w.clone();
            for (k, v) in namespace.into_iter().flatten() {
                w.metadata.annotations.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Ok(Resource::ExternalWorkload(Arc::new(w)))
        }
        Object::Unreadable(reason) => Err(reason.clone()),
    }
}

fn merge_json(v: &mut Value, inherited: &Annotations) {
    let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if annotations.is_null() {
        *annotations = Value::Object(Default::default());
    }
    if let Some(own) = annotations.as_object_mut() {
        for (k, val) in inherited {
            own.entry(k.clone()).or_insert_with(|| Value::String(val.clone()));
        }
    }
}

/// An EndpointSlice as a workload named `endpointslice/NAME`: its ready IP addresses and its
/// ports, labelled with the Service it belongs to (`ENDPOINT_SLICE_LABEL`). `None` (nothing
/// served) without a Service, or for FQDN slices.
pub fn endpoint_slice(slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Option<ExternalWorkload> {
    let labels = slice.metadata.labels.as_ref();
    let service = labels.and_then(|l| l.get("kubernetes.io/service-name"))?;
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    // Ready unless the slice says otherwise, as kube-proxy reads it; terminating ones are out.
    let ready = slice.endpoints.iter().filter(|e| e.conditions.as_ref().is_none_or(|c| c.ready != Some(false) && c.terminating != Some(true)));
    let workload_ips = ready.flat_map(|e| e.addresses.iter()).filter_map(|a| a.parse().ok()).map(|ip| WorkloadIp { ip }).collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| Some(WorkloadPort { name: p.name.clone(), port: u16::try_from(p.port?).ok().filter(|n| *n != 0)? }))
        .collect();
    let metadata = ObjectMeta {
        name: format!("endpointslice/{}", slice.metadata.name.clone()?),
        namespace: slice.metadata.namespace.clone().unwrap_or_else(|| "default".to_string()),
        labels: [(crate::index::ENDPOINT_SLICE_LABEL.to_string(), service.clone())].into(),
        // A gateway mirror's Endpoints name the gateway's identity; Kubernetes' EndpointSlice
        // mirroring copies the Endpoints' annotations to the slices made of it.
        annotations: slice
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| *k == crate::index::REMOTE_GATEWAY_IDENTITY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        creation_timestamp: None,
    };
    Some(ExternalWorkload { metadata, spec: ExternalWorkloadSpec { mesh_tls: None, ports, workload_ips } })
}
