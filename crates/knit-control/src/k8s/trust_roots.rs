//! The trust bundle in every namespace: injected proxies mount the `knit-identity-trust-roots`
//! ConfigMap of their own namespace (a pod cannot mount another namespace's), so with
//! `--distribute-trust-roots` knit-control copies its bundle file there, as trust-manager's
//! `Bundle` does in the production path with cert-manager (where this stays off: two writers
//! would fight).
//!
//! Every 30 s, and at once when the identity files reload: one list of Namespaces, one list of
//! the ConfigMaps of that name across namespaces, and a server-side apply only where the bundle
//! differs or is missing ([`plan`], pure). The control plane's own namespace is left to the
//! installation, which is where the bundle comes from.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    Client, ResourceExt,
};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

pub const NAME: &str = "knit-identity-trust-roots";
pub const KEY: &str = "ca-bundle.crt";
const MANAGER: &str = "knit-control";

/// The namespaces whose ConfigMap must be written: active ones, other than `control_ns`, whose
/// copy is missing or holds another bundle.
pub fn plan(bundle: &str, control_ns: &str, namespaces: &[Namespace], existing: &[ConfigMap]) -> Vec<String> {
    let current: BTreeMap<String, Option<&str>> = existing
        .iter()
        .filter(|c| c.name_any() == NAME)
        .map(|c| (c.namespace().unwrap_or_default(), c.data.as_ref().and_then(|d| d.get(KEY)).map(String::as_str)))
        .collect();
    namespaces
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating") && n.metadata.deletion_timestamp.is_none())
        .map(|n| n.name_any())
        .filter(|n| n != control_ns && current.get(n).copied().flatten() != Some(bundle))
        .collect()
}

/// The ConfigMap written in `ns`.
pub fn object(ns: &str, control_ns: &str, bundle: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(NAME.into());
    c.metadata.namespace = Some(ns.into());
    c.metadata.labels = Some(BTreeMap::from([
        ("app.kubernetes.io/part-of".to_string(), "knit".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
        ("knit.dev/control-plane-ns".to_string(), control_ns.to_string()),
    ]));
    c.data = Some(BTreeMap::from([(KEY.to_string(), bundle.to_string())]));
    c
}

/// Keeps every namespace's copy equal to the bundle file. Never returns.
pub async fn run(client: Client, bundle_path: PathBuf, control_ns: String, mut reloads: tokio::sync::watch::Receiver<u64>) {
    loop {
        if let Err(e) = pass(&client, &bundle_path, &control_ns).await {
            tracing::warn!(error = %format!("{e:#}"), "distributing the trust bundle failed; retrying in 30s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            changed = reloads.changed() => if changed.is_err() { std::future::pending::<()>().await },
        }
    }
}

async fn pass(client: &Client, bundle_path: &std::path::Path, control_ns: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let bundle = std::fs::read_to_string(bundle_path).with_context(|| format!("reading {}", bundle_path.display()))?;
    if knit_identity::inspect::pem_certs(&bundle).map_or(true, |c| c.is_empty()) {
        anyhow::bail!("{} holds no certificate: not distributed", bundle_path.display());
    }
    let namespaces = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await.context("listing namespaces")?;
    let existing = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={NAME}")))
        .await
        .context("listing the trust-roots ConfigMaps")?;
    for ns in plan(&bundle, control_ns, &namespaces.items, &existing.items) {
        let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        match api.patch(NAME, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object(&ns, control_ns, &bundle))).await {
            Ok(_) => tracing::info!(namespace = %ns, "trust bundle written"),
            Err(e) => tracing::warn!(namespace = %ns, error = %e, "cannot write the trust bundle"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded<T: serde::de::DeserializeOwned>(json: &str) -> Vec<T> {
        let list: serde_json::Value = serde_json::from_str(json).unwrap();
        list["items"].as_array().unwrap().iter().map(|i| serde_json::from_value(i.clone()).unwrap()).collect()
    }

    /// API answers as a v1.30 API server gives them (trimmed of managedFields).
    #[test]
    fn only_active_namespaces_with_a_missing_or_stale_bundle_are_written() {
        let namespaces: Vec<Namespace> = recorded(
            r#"{"kind":"NamespaceList","apiVersion":"v1","metadata":{"resourceVersion":"812"},"items":[
              {"metadata":{"name":"knit","uid":"0b6f","resourceVersion":"12","labels":{"kubernetes.io/metadata.name":"knit"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}},
              {"metadata":{"name":"shop","uid":"1c2d","resourceVersion":"40","labels":{"kubernetes.io/metadata.name":"shop"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}},
              {"metadata":{"name":"books","uid":"2e3f","resourceVersion":"41"},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}},
              {"metadata":{"name":"fresh","uid":"3f40","resourceVersion":"90"},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}},
              {"metadata":{"name":"old","uid":"4a51","resourceVersion":"95","deletionTimestamp":"2026-12-04T10:00:00Z"},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Terminating"}}
            ]}"#,
        );
        let configmaps: Vec<ConfigMap> = recorded(
            r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"812"},"items":[
              {"metadata":{"name":"knit-identity-trust-roots","namespace":"knit","resourceVersion":"13"},"data":{"ca-bundle.crt":"OLD"}},
              {"metadata":{"name":"knit-identity-trust-roots","namespace":"shop","resourceVersion":"50"},"data":{"ca-bundle.crt":"NEW"}},
              {"metadata":{"name":"knit-identity-trust-roots","namespace":"books","resourceVersion":"51"},"data":{"ca-bundle.crt":"OLD"}}
            ]}"#,
        );
        assert_eq!(plan("NEW", "knit", &namespaces, &configmaps), ["books", "fresh"], "stale and missing; not the control plane's, not a terminating one");
        assert_eq!(plan("OLD", "knit", &namespaces, &configmaps), ["shop", "fresh"]);
        let written = serde_json::to_value(object("fresh", "knit", "NEW")).unwrap();
        assert_eq!(written["metadata"]["name"], NAME);
        assert_eq!(written["metadata"]["labels"]["app.kubernetes.io/managed-by"], "knit-control");
        assert_eq!(written["data"][KEY], "NEW");
    }
}
