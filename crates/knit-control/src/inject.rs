//! The proxy injector: given a pod (or a workload's pod template) and its namespace's
//! annotations, the JSON patch that meshes it. The admission webhook (`webhook.rs`) answers the
//! API server with it; `knit inject` applies it to manifests on disk, so both mesh a pod the same
//! way.
//!
//! The patch only adds: labels and annotations, its volumes (token, xtables lock, and the trust bundle unless it is inline), the `knit-init` container, and the
//! `knit-proxy` container, as a native sidecar (an init container with `restartPolicy: Always`,
//! placed before the pod's own init containers so they already have a network) or, in classic
//! mode, as the first container. A pod that already has a proxy gets an empty patch, so injecting
//! twice changes nothing; a pod on the host network is skipped with the reason.

mod overrides;
mod proxy;
pub mod values;

pub use overrides::{KNIT_INJECT, LINKERD_INJECT};
pub use values::Values;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InjectError {
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation { key: String, value: String, reason: String },
    #[error("the pod spec cannot be read: {0}")]
    BadPod(String),
    #[error("{0} has no pod template to inject")]
    NotAWorkload(String),
}

/// What the injector decided for one pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The patch, relative to the object given, and warnings for the user.
    Inject {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
    Skip(String),
}

/// Where the pod template of a workload kind is, as a JSON pointer ("" for a Pod itself).
pub fn pod_template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The workload a pod belongs to, for the `linkerd.io/proxy-<kind>` label viz groups by.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

impl Owner {
    /// A pod's owner from its `ownerReferences`; a ReplicaSet named `DEPLOYMENT-HASH` (the
    /// pod's `pod-template-hash`) stands for its Deployment.
    pub fn of_pod(pod: &Value) -> Option<Owner> {
        let owner = pod.pointer("/metadata/ownerReferences")?.as_array()?.iter().find(|o| o["controller"] == true)?;
        let (kind, name) = (owner["kind"].as_str()?, owner["name"].as_str()?);
        let hash = pod.pointer("/metadata/labels/pod-template-hash").and_then(Value::as_str);
        match (kind, hash.and_then(|h| name.strip_suffix(h)?.strip_suffix('-'))) {
            ("ReplicaSet", Some(deployment)) => Some(Owner { kind: "Deployment".into(), name: deployment.into() }),
            _ => Some(Owner { kind: kind.into(), name: name.into() }),
        }
    }
}

pub struct Injector {
    values: Values,
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object).map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default()
}

/// A JSON pointer token: `~` and `/` escaped (RFC 6901).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Patch operations under construction; only `add` is needed to inject.
struct Ops(Vec<Value>);

impl Ops {
    fn add(&mut self, path: String, value: Value) {
        self.0.push(json!({"op": "add", "path": path, "value": value}));
    }

    /// Adds `entries` to the map at `path`, creating the map if the object has none.
    fn add_entries(&mut self, object: &Value, base: &str, field: &str, entries: BTreeMap<String, String>) {
        let path = format!("{base}/metadata/{field}");
        if object.pointer(&path).is_some_and(Value::is_object) {
            for (k, v) in entries {
                self.add(format!("{path}/{}", token(&k)), Value::String(v));
            }
        } else {
            self.add(path, json!(entries));
        }
    }

    /// Appends `items` to the array at `path` (at `index`, or the end), creating it if absent.
    fn insert(&mut self, object: &Value, path: String, index: Option<usize>, items: Vec<Value>) {
        if object.pointer(&path).is_some_and(Value::is_array) {
            let at = |i: usize| index.map(|n| (n + i).to_string()).unwrap_or_else(|| "-".into());
            for (i, item) in items.into_iter().enumerate() {
                self.add(format!("{path}/{}", at(i)), item);
            }
        } else {
            self.add(path, Value::Array(items));
        }
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("API types always serialise to JSON")
}

/// Names of containers that mean "already meshed": Knit's or Linkerd's proxy.
const PROXY_NAMES: [&str; 2] = [proxy::PROXY, "linkerd-proxy"];

impl Injector {
    pub fn new(values: Values) -> Self {
        Self { values }
    }

    pub fn values(&self) -> &Values {
        &self.values
    }

    /// The patch for the pod (template) at `base` inside `object` (a Pod, or a workload).
    pub fn inject(&self, object: &Value, base: &str, ns_annotations: &BTreeMap<String, String>, owner: Option<&Owner>) -> Result<Outcome, InjectError> {
        let pod = object.pointer(base).ok_or_else(|| InjectError::BadPod(format!("nothing at {base}")))?;
        let spec: PodSpec = serde_json::from_value(pod.get("spec").cloned().unwrap_or(Value::Null)).map_err(|e| InjectError::BadPod(e.to_string()))?;
        let annotations = string_map(pod.pointer("/metadata/annotations"));
        let a = overrides::Annotations { pod: &annotations, namespace: ns_annotations };
        let mode = match a.mode()? {
            Ok(mode) => mode,
            Err(reason) => return Ok(Outcome::Skip(reason)),
        };
        if spec.host_network == Some(true) {
            return Ok(Outcome::Skip("the pod uses the host's network (hostNetwork: true): its iptables rules would capture the node's traffic".into()));
        }
        let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
        if let Some(c) = containers.clone().find(|c| PROXY_NAMES.contains(&c.name.as_str())) {
            return Ok(Outcome::Skip(format!("the pod already has a {} container", c.name)));
        }
        let mut settings = overrides::settings(&self.values, &a, mode)?;
        if let Some(t) = settings.trace.as_mut() {
            let labels = string_map(pod.pointer("/metadata/labels"));
            if let Some(name) = labels.get("app.kubernetes.io/instance").or_else(|| labels.get("app.kubernetes.io/name")) {
                t.extra_attributes.push(("service.name".into(), name.clone()));
            }
            // A line break in a value would start another attribute.
            let one_line = |s: &str| !s.contains(['\n', '\r']);
            t.extra_attributes.extend(
                annotations
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("resource.opentelemetry.io/")?.to_string(), v.clone())))
                    .filter(|(k, v)| one_line(k) && one_line(v) && !k.is_empty()),
            );
        }
        let app_ports: Vec<i32> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
            .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
            .collect();
        let mut ops = Ops(Vec::new());
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str));
        let mut labels = BTreeMap::from([("linkerd.io/control-plane-ns".to_string(), self.values.control_plane_namespace.clone())]);
        if let Some(ns) = ns {
            labels.insert("linkerd.io/workload-ns".into(), ns.into());
        }
        if let Some(o) = owner {
            labels.insert(format!("linkerd.io/proxy-{}", o.kind.to_ascii_lowercase()), o.name.clone());
        }
        if pod.get("metadata").is_none() {
            // A pod template may have no metadata at all.
            ops.add(format!("{base}/metadata"), json!({}));
        }
        ops.add_entries(object, base, "labels", labels);
        let added = BTreeMap::from([
            ("linkerd.io/proxy-version".to_string(), settings.version.clone()),
            ("linkerd.io/created-by".to_string(), format!("knit/{}", env!("CARGO_PKG_VERSION"))),
            ("linkerd.io/trust-root-sha256".to_string(), self.values.trust_root_sha256()),
        ]);
        ops.add_entries(object, base, "annotations", added);
        ops.insert(object, format!("{base}/spec/volumes"), None, proxy::volumes(&self.values, &settings).iter().map(to_value).collect());
        let sidecar = proxy::proxy(&self.values, &settings, &app_ports);
        let init = to_value(&proxy::init(&settings));
        if settings.native_sidecar {
            ops.insert(object, format!("{base}/spec/initContainers"), Some(0), vec![init, to_value(&proxy::native(sidecar, &settings))]);
        } else {
            // The pod's own init containers run before the rules exist: with no proxy running
            // yet, a redirected connection of theirs would fail.
            ops.insert(object, format!("{base}/spec/initContainers"), None, vec![init]);
            ops.insert(object, format!("{base}/spec/containers"), Some(0), vec![to_value(&proxy::classic(sidecar, &settings))]);
        }
        let mut warnings = Vec::new();
        if mode == overrides::Mode::Ingress {
            warnings.push("ingress mode: Knit's proxy routes an ingress's requests by their original destination, like any other pod's".into());
        }
        let patch = serde_json::from_value(Value::Array(ops.0)).map_err(|e| InjectError::BadPod(format!("building the patch: {e}")))?;
        Ok(Outcome::Inject { patch, warnings })
    }
}

/// Removes what [`Injector::inject`] added from the pod (template) at `base`, in place (for
/// `knit uninject`). Returns whether anything was removed.
pub fn uninject(object: &mut Value, base: &str) -> bool {
    let Some(pod) = object.pointer_mut(base) else { return false };
    let mut changed = false;
    let mut retain = |pod: &mut Value, field: &str, drop: &[&str]| {
        if let Some(items) = pod.pointer_mut(&format!("/spec/{field}")).and_then(Value::as_array_mut) {
            let before = items.len();
            items.retain(|c| !c["name"].as_str().is_some_and(|n| drop.contains(&n)));
            changed |= items.len() != before;
            if items.is_empty() && before != 0 {
                pod["spec"].as_object_mut().map(|s| s.remove(field));
            }
        }
    };
    retain(pod, "initContainers", &[proxy::PROXY, proxy::INIT]);
    retain(pod, "containers", &[proxy::PROXY]);
    retain(pod, "volumes", &[proxy::TOKEN_VOLUME, proxy::XTABLES_VOLUME, proxy::TRUST_ROOTS_VOLUME, proxy::PODINFO_VOLUME]);
    for (field, prefix_keys) in [
        ("labels", &["linkerd.io/control-plane-ns", "linkerd.io/workload-ns", "linkerd.io/proxy-"][..]),
        ("annotations", &["linkerd.io/proxy-version", "linkerd.io/created-by", "linkerd.io/trust-root-sha256", KNIT_INJECT][..]),
    ] {
        if let Some(map) = pod.pointer_mut(&format!("/metadata/{field}")).and_then(Value::as_object_mut) {
            let before = map.len();
            map.retain(|k, _| !prefix_keys.iter().any(|p| if p.ends_with('-') { k.starts_with(p) } else { k == p }));
            changed |= map.len() != before;
            if map.is_empty() && before != 0 {
                pod["metadata"].as_object_mut().map(|m: &mut Map<String, Value>| m.remove(field));
            }
        }
    }
    if pod.get("metadata").and_then(Value::as_object).is_some_and(Map::is_empty) {
        pod.as_object_mut().map(|p| p.remove("metadata"));
    }
    changed
}
