//! Kubernetes mode: a linked cluster's exports read from its API server, as Linkerd's service
//! mirror reads them.
//!
//! The Link's `clusterCredentialsSecret` (in the Link's namespace) holds a kubeconfig under
//! `kubeconfig`, and may say with `multicluster.linkerd.io/trust-domain` which trust domain the
//! remote's identities carry (this cluster's by default); `linkerd multicluster link` and
//! `knit multicluster link --kubeconfig` write it. The remote's Namespaces, Services, Pods and
//! EndpointSlices are watched (list, get and watch is all the kubeconfig's account needs) and go
//! through the translation of this cluster's own objects (`k8s`), into an index of their own, with
//! the remote's cluster and trust domains. The exports are then what the remote knit-control's
//! exports API would answer ([`super::exports::snapshot`]): the Services the Link's selectors
//! pick, whether they have a ready endpoint, and, for flat and federated ones, each pod with the
//! identity its proxy proves.

use super::exports::{self, ExportRequest, Snapshot};
use crate::{
    index::{Index, IndexConfig},
    k8s::{self, Watched},
};
use k8s_openapi::api::core::v1::Secret;
use std::{sync::Arc, time::Duration};

pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const TRUST_DOMAIN_ANNOTATION: &str = "multicluster.linkerd.io/trust-domain";
/// How often the credentials Secret is read again: a rotated kubeconfig reconnects.
const SECRET_RECHECK: Duration = Duration::from_secs(30);
/// How often the watches' state is reported while nothing changes.
const STATUS_TICK: Duration = Duration::from_secs(2);

/// What a credentials Secret gives.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub kubeconfig: kube::config::Kubeconfig,
    pub trust_domain: Option<String>,
    /// The Secret's version, to notice a change.
    pub version: Option<String>,
}

/// Reads a credentials Secret; the error says what is missing or malformed.
pub fn credentials(secret: &Secret) -> anyhow::Result<Credentials> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| b.0.clone())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(KUBECONFIG_KEY)).map(|s| s.clone().into_bytes()))
        .ok_or_else(|| anyhow::anyhow!("the Secret {name} has no {KUBECONFIG_KEY:?} key"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| anyhow::anyhow!("the Secret {name}'s kubeconfig is not UTF-8"))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|e| anyhow::anyhow!("the Secret {name}'s kubeconfig: {e}"))?;
    if kubeconfig.clusters.is_empty() {
        anyhow::bail!("the Secret {name}'s kubeconfig names no cluster");
    }
    if let Some(what) = local_reference(&kubeconfig) {
        anyhow::bail!("the Secret {name}'s kubeconfig {what}: only inline credentials are read (a token, or client-certificate-data and client-key-data; certificate-authority-data)");
    }
    let trust_domain = secret.metadata.annotations.as_ref().and_then(|a| a.get(TRUST_DOMAIN_ANNOTATION)).map(|d| d.trim().trim_end_matches('.').to_string());
    if let Some(d) = trust_domain.as_deref().filter(|d| d.is_empty() || d.contains(['/', ' '])) {
        anyhow::bail!("the Secret {name}'s {TRUST_DOMAIN_ANNOTATION} {d:?} is not a domain");
    }
    Ok(Credentials { kubeconfig, trust_domain, version: secret.metadata.resource_version.clone() })
}

/// What in a kubeconfig would make this process run a command or read one of its own files:
/// an exec or auth-provider plugin, a token file, a certificate or key by path. The Secret's
/// writer must not get knit-control to run a program, or to send one of its files (the
/// issuer's key) to a server the kubeconfig names.
fn local_reference(k: &kube::config::Kubeconfig) -> Option<String> {
    for user in &k.auth_infos {
        let Some(a) = &user.auth_info else { continue };
        let found = [
            (a.exec.is_some(), "exec"),
            (a.auth_provider.is_some(), "auth-provider"),
            (a.token_file.is_some(), "tokenFile"),
            (a.client_certificate.is_some(), "client-certificate"),
            (a.client_key.is_some(), "client-key"),
        ];
        if let Some((_, field)) = found.into_iter().find(|(set, _)| *set) {
            return Some(format!("gives user {:?} a {field}", user.name));
        }
    }
    k.clusters
        .iter()
        .find(|c| c.cluster.as_ref().is_some_and(|c| c.certificate_authority.is_some()))
        .map(|c| format!("gives cluster {:?} a certificate-authority file", c.name))
}

/// A client of the remote API server, as the kubeconfig's current context says.
pub async fn client(creds: &Credentials) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(creds.kubeconfig.clone(), &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("the linked cluster's kubeconfig: {e}"))?;
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("a client of the linked cluster's API server: {e}"))
}

/// The credentials Secret `name` in `namespace`, from this cluster's API server.
pub async fn read_secret(local: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Secret> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(local.clone(), namespace);
    secrets.get(name).await.map_err(|e| anyhow::anyhow!("reading the credentials Secret {namespace}/{name}: {e}"))
}

/// What the follower tells its caller.
pub trait Sink {
    /// The remote's exports (once the first listing is complete, then after each change to the
    /// remote's objects, which may leave them as they were).
    fn snapshot(&self, snapshot: Snapshot);
    /// Whether the remote's watches are all working, and why not.
    fn connected(&self, error: Option<String>);
}

/// The remote's index: this cluster's settings, with the remote's cluster and trust domains.
pub fn remote_index(local: &IndexConfig, cluster_domain: &str, trust_domain: Option<&str>) -> Arc<Index> {
    let config =
        IndexConfig { cluster_domain: cluster_domain.to_string(), trust_domain: trust_domain.unwrap_or(&local.trust_domain).to_string(), ..local.clone() };
    Arc::new(Index::new(config))
}

/// Follows the remote API server until the credentials Secret changes (or can no longer be read),
/// which returns, so that the caller reconnects with the new kubeconfig. A watch that fails keeps
/// retrying with backoff meanwhile; the exports stay as last seen.
pub async fn follow(
    local: &kube::Client,
    (namespace, secret): (&str, &str),
    cluster_domain: &str,
    local_config: &IndexConfig,
    request: &ExportRequest,
    sink: &impl Sink,
) -> anyhow::Result<()> {
    let creds = credentials(&read_secret(local, namespace, secret).await?)?;
    let remote = client(&creds).await?;
    let index = remote_index(local_config, cluster_domain, creds.trust_domain.as_deref());
    let status = k8s::Status::of(&Watched::REMOTE);
    let _watches = AbortOnDrop(tokio::spawn(k8s::run(remote, index.clone(), status.clone())));
    let mut changes = index.changes();
    let mut last_error: Option<Option<String>> = None;
    // The index changed since the exports were last computed (or they never were).
    let mut dirty = true;
    let mut recheck = tokio::time::Instant::now() + SECRET_RECHECK;
    loop {
        let error = status.failing().or_else(|| (!status.ready()).then(|| format!("listing {}", status.pending().join(", "))));
        if last_error.as_ref() != Some(&error) {
            sink.connected(error.clone());
            last_error = Some(error);
        }
        // The sink writes only what changed (the mirror compares with what it last wrote).
        if status.ready() && std::mem::take(&mut dirty) {
            sink.snapshot(exports::snapshot(&index, request));
        }
        if tokio::time::Instant::now() >= recheck {
            recheck = tokio::time::Instant::now() + SECRET_RECHECK;
            let again = read_secret(local, namespace, secret).await?;
            if again.metadata.resource_version != creds.version {
                // (Returning drops `watches`, which stops them.)
                anyhow::bail!("the credentials Secret {namespace}/{secret} changed: reconnecting with it");
            }
        }
        tokio::select! {
            more = super::next_change(&mut changes) => {
                anyhow::ensure!(more, "the linked cluster's watches ended");
                dirty = true;
            }
            _ = tokio::time::sleep(STATUS_TICK) => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
