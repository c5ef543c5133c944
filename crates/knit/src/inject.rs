//! `knit inject` and `knit uninject`: rewrite manifests the way the admission webhook would mesh
//! them, for GitOps and review. Every document is kept, in order; the workloads among them
//! (Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController, and
//! the same inside a `List`) are injected with the webhook's own patch, after adding
//! `knit.dev/inject: enabled` to their pod template as `linkerd inject` does.

use crate::install::{OptionArgs, Options};
use anyhow::{anyhow, Context};
use clap::Args;
use knit_control::inject::{pod_template_path, uninject, Injector, Outcome, Owner, KNIT_INJECT};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

#[derive(Args, Clone, Debug)]
pub struct InjectArgs {
    /// A manifest file, or `-` for stdin.
    pub file: PathBuf,
    /// The trust anchors proxies get (PEM); by default the installation's: from the manifests
    /// of `knit install` given with --from, or else from the cluster (KUBECONFIG or in-cluster),
    /// as `linkerd inject` reads them.
    #[arg(long)]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// The installation's manifests (`knit install` output), to take the trust anchors from.
    #[arg(long, conflicts_with = "identity_trust_anchors_file")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub options: OptionArgs,
}

#[derive(Args, Clone, Debug)]
pub struct UninjectArgs {
    /// A manifest file, or `-` for stdin.
    pub file: PathBuf,
}

pub fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The documents of a YAML stream; an unreadable one is an error naming it.
fn documents(text: &str, file: &Path) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| anyhow!("{}: document {}: {e}", file.display(), i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Applies `f` to every workload in `doc` (or in the items of a `List`).
fn each_workload(doc: &mut Value, f: &mut dyn FnMut(&mut Value, &'static str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if doc["kind"] == "List" {
        for item in doc["items"].as_array_mut().into_iter().flatten() {
            each_workload(item, f)?;
        }
        return Ok(());
    }
    match doc["kind"].as_str().and_then(pod_template_path) {
        Some(base) => f(doc, base),
        None => Ok(()),
    }
}

fn label(doc: &Value) -> String {
    format!("{} {}", doc["kind"].as_str().unwrap_or("?"), doc["metadata"]["name"].as_str().unwrap_or("?"))
}

/// The injector's values of an installation: its knit-config ConfigMap, as the webhook reads it.
fn installed_values(manifests: &str, ns: &str) -> anyhow::Result<knit_control::inject::Values> {
    let docs = documents(manifests, Path::new("--from"))?;
    let objects = docs.iter().flat_map(|d| if d["kind"] == "List" { d["items"].as_array().cloned().unwrap_or_default() } else { vec![d.clone()] });
    let config = objects
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "knit-config" && o["metadata"]["namespace"] == ns)
        .find_map(|o| o["data"]["values.yaml"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("--from has no ConfigMap {ns}/knit-config with values.yaml; pass the output of knit install (or `kubectl get -n {ns} configmap knit-config -o yaml`)"))?;
    values_yaml(&config, ns, "--from")
}

/// The injector's values as ConfigMap knit-config holds them; `from` says where it was read.
fn values_yaml(yaml: &str, ns: &str, from: &str) -> anyhow::Result<knit_control::inject::Values> {
    serde_yaml::from_str(yaml).map_err(|e| anyhow!("{ns}/knit-config values.yaml ({from}): {e}"))
}

/// Whether a Kubernetes API server is configured: KUBECONFIG, ~/.kube/config, or a pod's service
/// account (as kubectl looks for one).
fn cluster_configured() -> bool {
    std::env::var_os("KUBECONFIG").is_some_and(|k| !k.is_empty())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".kube/config").is_file())
}

/// The installation's values, from the ConfigMap `knit install` put in the cluster (as `linkerd
/// inject` reads `linkerd-config`).
fn cluster_values(ns: &str) -> anyhow::Result<knit_control::inject::Values> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = rt.block_on(async {
        let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
        let api = kube::Api::<ConfigMap>::namespaced(client, ns);
        match tokio::time::timeout(std::time::Duration::from_secs(30), api.get("knit-config")).await {
            Err(_) => Err(anyhow!("the Kubernetes API server did not answer within 30s")),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                Err(anyhow!("the cluster has no ConfigMap {ns}/knit-config: is Knit installed (knit install | kubectl apply -f -; --namespace if elsewhere)? Offline, pass --from install.yaml"))
            }
            Ok(r) => r.with_context(|| format!("reading ConfigMap {ns}/knit-config from the cluster")),
        }
    })?;
    let values = config
        .data
        .and_then(|mut d| d.remove("values.yaml"))
        .ok_or_else(|| anyhow!("ConfigMap {ns}/knit-config in the cluster has no values.yaml: reinstall with knit upgrade"))?;
    values_yaml(&values, ns, "from the cluster")
}

pub fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let options = Options::new(&args.options, false, false)?;
    let values = match (&args.identity_trust_anchors_file, &args.from) {
        (Some(file), _) => options.inject_values(&read_input(file)?),
        (None, Some(from)) => installed_values(&read_input(from)?, &options.namespace)?,
        (None, None) if cluster_configured() => cluster_values(&options.namespace)?,
        (None, None) => {
            return Err(anyhow!(
                "proxies need the installation's trust anchors, and there is no cluster to read them from (no KUBECONFIG, ~/.kube/config or in-cluster service account): \
                 pass --from install.yaml (the output of knit install), or --identity-trust-anchors-file trust-anchors.pem"
            ))
        }
    };
    let injector = Injector::new(values);
    let mut docs = documents(&read_input(&args.file)?, &args.file)?;
    let (mut injected, mut skipped) = (0, Vec::new());
    for doc in &mut docs {
        each_workload(doc, &mut |w, base| {
            let name = label(w);
            // Injected as the webhook would see it once `knit.dev/inject: enabled` is set.
            let mut candidate = w.clone();
            let template = candidate.pointer_mut(base).ok_or_else(|| anyhow!("{name} has no pod template"))?;
            template["metadata"]["annotations"][KNIT_INJECT] = Value::String("enabled".into());
            let kind = w["kind"].as_str().unwrap_or("Pod");
            let owner = (kind != "Pod").then(|| Owner { kind: kind.to_string(), name: w["metadata"]["name"].as_str().unwrap_or("").to_string() });
            match injector.inject(&candidate, base, &BTreeMap::new(), owner.as_ref()).map_err(|e| anyhow!("{name}: {e}"))? {
                Outcome::Inject { patch, warnings } => {
                    json_patch::patch(&mut candidate, &patch).map_err(|e| anyhow!("{name}: applying the patch: {e}"))?;
                    warnings.iter().for_each(|m| eprintln!("knit inject: {name}: {m}"));
                    *w = candidate;
                    injected += 1;
                }
                Outcome::Skip(reason) => skipped.push(format!("{name}: {reason}")),
            }
            Ok(())
        })?;
    }
    print!("{}", crate::install::to_yaml(&docs));
    eprintln!("knit inject: {injected} workload(s) injected");
    skipped.iter().for_each(|s| eprintln!("knit inject: skipped {s}"));
    Ok(())
}

pub fn uninject_cmd(args: UninjectArgs) -> anyhow::Result<()> {
    let mut docs = documents(&read_input(&args.file)?, &args.file)?;
    let mut n = 0;
    for doc in &mut docs {
        each_workload(doc, &mut |w, base| {
            n += usize::from(uninject(w, base));
            Ok(())
        })?;
    }
    print!("{}", crate::install::to_yaml(&docs));
    eprintln!("knit uninject: {n} workload(s) uninjected");
    Ok(())
}
