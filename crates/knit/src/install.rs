//! `knit install`, `knit upgrade` and `knit uninstall`: the control plane as Kubernetes manifests,
//! for `knit install | kubectl apply -f -`.
//!
//! [`render`] is a pure function of [`Options`] and the identity [`Material`]; the Helm chart in
//! `charts/knit` renders the same objects (a test compares them), and both are validated against
//! the Kubernetes schemas in CI. The objects are written as JSON here because that is what the
//! chart and the validator compare; their field names are checked by that strict validation.
//!
//! What runs needs little: knit-control reads (get/list/watch) the resources it serves and
//! creates TokenReviews; the one thing it writes is the trust bundle's ConfigMap in each meshed
//! namespace (unless trust-manager does), with server-side apply of identical content, so its
//! replicas serve side by side without a leader (no Lease). Installing needs the right to create CRDs, a ClusterRole and
//! its binding, and a MutatingWebhookConfiguration: cluster-admin, or an equivalent role, once.

pub mod material;
mod objects;

pub use material::Material;
pub use objects::{cert_manager, identity_objects, TRUST_ROOTS};

use clap::Args;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct InstallArgs {
    /// High availability: three control-plane replicas spread over nodes, with a PodDisruptionBudget.
    #[arg(long)]
    pub ha: bool,
    /// Leave the CRDs out (they are already installed, e.g. Linkerd's).
    #[arg(long)]
    pub skip_crds: bool,
    /// Only the CRDs, as Linkerd's first step (`knit install --crds | kubectl apply -f -`, then
    /// `knit install | kubectl apply -f -`).
    #[arg(long, conflicts_with_all = ["skip_crds", "ha"])]
    pub crds: bool,
    /// Only the identity alert rules (anchor and issuer expiry 30 and 7 days ahead, failed
    /// reloads, proxies that cannot refresh) as a prometheus-operator PrometheusRule; the same
    /// rules as a plain file are deploy/prometheus/knit-identity.rules.yml.
    #[arg(long, conflicts_with_all = ["skip_crds", "ha", "crds"])]
    pub prometheus_rule: bool,
    #[command(flatten)]
    pub options: OptionArgs,
    #[command(flatten)]
    pub material: material::MaterialArgs,
}

/// Settings with Linkerd's names where Linkerd has them.
#[derive(Args, Clone, Debug)]
pub struct OptionArgs {
    /// The control plane's namespace.
    #[arg(long, default_value = "knit")]
    pub namespace: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Defaults to the cluster domain.
    #[arg(long)]
    pub identity_trust_domain: Option<String>,
    #[arg(long, default_value = "ghcr.io/knit-mesh/knit-control")]
    pub controller_image: String,
    #[arg(long, default_value = "ghcr.io/knit-mesh/knit-proxy")]
    pub proxy_image: String,
    /// The image tag of both images.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub image_version: String,
    #[arg(long, default_value = "all-unauthenticated", value_parser = ["all-unauthenticated", "all-authenticated", "cluster-unauthenticated", "cluster-authenticated", "deny", "audit"])]
    pub default_inbound_policy: String,
    #[arg(long, default_value = knit_control::config::DEFAULT_CLUSTER_NETWORKS)]
    pub cluster_networks: String,
    /// Control-plane log filter.
    #[arg(long, default_value = "warn,knit_control=info")]
    pub controller_log_level: String,
    /// Proxies as classic sidecars (for Kubernetes before 1.29) instead of native ones.
    #[arg(long)]
    pub disable_native_sidecar: bool,
    /// cert-manager issues and renews the issuer, trust-manager distributes the bundle (Linkerd's
    /// --identity-external-issuer): renders their Issuer, Certificate and Bundle instead of the
    /// issuer Secret and the trust-roots ConfigMap. Needs --identity-trust-anchors-file alone.
    #[arg(long)]
    pub identity_external_issuer: bool,
    /// Give proxies the trust bundle inline, fixed for each pod's life (as Linkerd does), instead
    /// of the ConfigMap volume they follow through rotations.
    #[arg(long)]
    pub identity_trust_anchors_inline: bool,
    /// Chart values the flags above do not cover, as Helm takes them (`KEY=VALUE[,KEY=VALUE]`,
    /// repeatable): proxy.tracing.enabled, proxy.tracing.collector.endpoint,
    /// proxy.tracing.collector.meshIdentity.serviceAccountName,
    /// proxy.tracing.collector.meshIdentity.namespace, proxy.tracing.traceServiceName,
    /// proxy.tracing.sampleUntraced.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Everything [`render`] needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub ha: bool,
    pub crds: bool,
    pub namespace: String,
    pub cluster_domain: String,
    pub trust_domain: String,
    pub controller_image: String,
    pub proxy_image: String,
    pub version: String,
    pub default_inbound_policy: String,
    pub cluster_networks: String,
    pub controller_log_level: String,
    pub native_sidecar: bool,
    pub external_issuer: bool,
    pub trust_anchors_inline: bool,
    pub tracing: knit_control::inject::values::TracingValues,
}

impl Options {
    pub fn new(a: &OptionArgs, ha: bool, crds: bool) -> anyhow::Result<Self> {
        let mut tracing = knit_control::inject::values::TracingValues::default();
        for pair in a.set.iter().flat_map(|s| s.split(',')) {
            set(&mut tracing, pair)?;
        }
        tracing.check().map_err(anyhow::Error::msg)?;
        Ok(Self {
            ha,
            crds,
            namespace: a.namespace.clone(),
            cluster_domain: a.cluster_domain.clone(),
            trust_domain: a.identity_trust_domain.clone().unwrap_or_else(|| a.cluster_domain.clone()),
            controller_image: a.controller_image.clone(),
            proxy_image: a.proxy_image.clone(),
            version: a.image_version.clone(),
            default_inbound_policy: a.default_inbound_policy.clone(),
            cluster_networks: a.cluster_networks.clone(),
            controller_log_level: a.controller_log_level.clone(),
            native_sidecar: !a.disable_native_sidecar,
            external_issuer: a.identity_external_issuer,
            trust_anchors_inline: a.identity_trust_anchors_inline,
            tracing,
        })
    }

    /// The injector's values, as the webhook reads them from the knit-config ConfigMap.
    pub fn inject_values(&self, anchors_pem: &str) -> knit_control::inject::Values {
        let mut v = knit_control::inject::Values {
            control_plane_namespace: self.namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
            trust_domain: self.trust_domain.clone(),
            trust_anchors_pem: anchors_pem.to_string(),
            default_inbound_policy: self.default_inbound_policy.clone(),
            cluster_networks: self.cluster_networks.clone(),
            native_sidecar: self.native_sidecar,
            trust_anchors_inline: self.trust_anchors_inline,
            ..Default::default()
        };
        v.proxy.image = self.proxy_image.clone();
        v.proxy.version = self.version.clone();
        v.proxy.tracing = self.tracing.clone();
        v
    }
}

/// One `--set KEY=VALUE`, with the chart's key.
fn set(t: &mut knit_control::inject::values::TracingValues, pair: &str) -> anyhow::Result<()> {
    let (key, value) = pair.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {pair:?}: expected KEY=VALUE"))?;
    let value = value.trim().to_string();
    match key.trim() {
        "proxy.tracing.enabled" => {
            t.enabled = match value.as_str() {
                "true" => true,
                "false" => false,
                _ => anyhow::bail!("--set {pair:?}: expected true or false"),
            }
        }
        "proxy.tracing.collector.endpoint" => t.collector_endpoint = value,
        "proxy.tracing.collector.meshIdentity.serviceAccountName" => t.collector_service_account = value,
        "proxy.tracing.collector.meshIdentity.namespace" => t.collector_namespace = value,
        "proxy.tracing.traceServiceName" => t.service_name = value,
        "proxy.tracing.sampleUntraced" => t.sample_untraced = value,
        other => anyhow::bail!("--set {other}: not a value knit install takes with --set (its flags set the others; see --help)"),
    }
    Ok(())
}

/// The CRDs, one file each, shared with the Helm chart.
pub const CRDS: [&str; 10] = [
    include_str!("../../../charts/knit/crds/authorization-policy.yaml"),
    include_str!("../../../charts/knit/crds/egress-network.yaml"),
    include_str!("../../../charts/knit/crds/external-workload.yaml"),
    include_str!("../../../charts/knit/crds/http-local-ratelimit-policy.yaml"),
    include_str!("../../../charts/knit/crds/httproute.yaml"),
    include_str!("../../../charts/knit/crds/link.yaml"),
    include_str!("../../../charts/knit/crds/meshtls-authentication.yaml"),
    include_str!("../../../charts/knit/crds/network-authentication.yaml"),
    include_str!("../../../charts/knit/crds/server.yaml"),
    include_str!("../../../charts/knit/crds/traffic-split.yaml"),
];

/// Every object of an installation, in the order `kubectl apply` needs them.
pub fn render(o: &Options, m: &Material) -> Vec<Value> {
    let mut out = Vec::new();
    if o.crds {
        out.extend(CRDS.iter().map(|text| serde_yaml::from_str::<Value>(text).expect("the CRDs shipped in the binary parse (tested)")));
    }
    out.extend(objects::control_plane(o, m));
    out
}

/// A YAML stream of `objects`, `---` between documents.
pub fn to_yaml(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{}", serde_yaml::to_string(o).expect("JSON values serialise as YAML"))).collect()
}

/// The identity alert rules, shipped as a Prometheus rules file.
pub const ALERT_RULES: &str = include_str!("../../../deploy/prometheus/knit-identity.rules.yml");

pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    if args.prometheus_rule {
        let rules: Value = serde_yaml::from_str(ALERT_RULES).expect("the shipped rules parse (tested)");
        print!("{}", to_yaml(&[objects::prometheus_rule(&args.options.namespace, rules)]));
        return Ok(());
    }
    if args.crds {
        let crds: Vec<Value> = CRDS.iter().map(|text| serde_yaml::from_str(text).expect("the CRDs shipped in the binary parse (tested)")).collect();
        print!("{}", to_yaml(&crds));
        return Ok(());
    }
    let options = Options::new(&args.options, args.ha, !args.skip_crds)?;
    let material = Material::load_or_generate(&args.material, &options)?;
    print!("{}", to_yaml(&render(&options, &material)));
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct UpgradeArgs {
    /// The installation's current manifests (`knit install` output, or `kubectl get -n knit
    /// secret,configmap -o yaml`), `-` for stdin: its trust anchors, issuer and webhook
    /// certificate are kept.
    #[arg(long)]
    pub from: PathBuf,
    #[arg(long)]
    pub ha: bool,
    #[arg(long)]
    pub skip_crds: bool,
    #[command(flatten)]
    pub options: OptionArgs,
}

pub fn upgrade(args: UpgradeArgs) -> anyhow::Result<()> {
    let text = crate::inject::read_input(&args.from)?;
    let options = Options::new(&args.options, args.ha, !args.skip_crds)?;
    let material = Material::from_manifests(&text, &options.namespace)?.renew_webhook(&options.namespace)?;
    material.check()?;
    print!("{}", to_yaml(&render(&options, &material)));
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct UninstallArgs {
    #[arg(long, default_value = "knit")]
    pub namespace: String,
}

/// Every object `knit install` creates, as references, for `kubectl delete -f -`.
pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let options = Options::new(&OptionArgs { namespace: args.namespace, ..default_option_args() }, true, true)?;
    let material = Material::placeholder();
    let refs: Vec<Value> = render(&options, &material)
        .into_iter()
        .map(|o| {
            let mut meta = serde_json::Map::new();
            for field in ["name", "namespace"] {
                if let Some(v) = o["metadata"].get(field) {
                    meta.insert(field.into(), v.clone());
                }
            }
            serde_json::json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": meta})
        })
        .rev()
        .collect();
    eprintln!("knit uninstall: the CRDs are included: deleting them deletes every Server, AuthorizationPolicy, HTTPRoute (policy.linkerd.io), EgressNetwork, ExternalWorkload and TrafficSplit in the cluster");
    print!("{}", to_yaml(&refs));
    Ok(())
}

fn default_option_args() -> OptionArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        o: OptionArgs,
    }
    Defaults::parse_from(["knit"]).o
}

#[cfg(test)]
mod tests;
