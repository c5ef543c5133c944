//! `knit multicluster`: link clusters, and see how the links are doing.
//!
//! - `install` prints the gateway and the read-only account a linking cluster reads this one as;
//! - `link` prints the `Link` a cluster needs to mirror another, checked as knit-control will
//!   check it: in Kubernetes, with the Secret holding the other cluster's kubeconfig
//!   (`--kubeconfig`); in local mode, naming its knit-control by address and identity;
//! - `unlink` prints the Link to delete (`kubectl delete -f -`, or remove its file);
//! - `gateways` and `check` read knit-control's `/multicluster` (its admin port, loopback only:
//!   `kubectl port-forward` in a cluster).

use anyhow::Context;
use std::{net::SocketAddr, time::Duration};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a cluster's gateway for Kubernetes (Deployment, Service, Server, AuthorizationPolicy)
    /// and the read-only account linking clusters use: `knit multicluster install | kubectl apply -f -`.
    Install(InstallArgs),
    /// Print the Link that mirrors another cluster's exported Services into this one.
    Link(Box<LinkArgs>),
    /// Print the Link to remove (`kubectl delete -f -`, or delete its file in local mode).
    Unlink(UnlinkArgs),
    /// Each linked cluster's gateway: alive, probe latency, mirrored Services.
    Gateways(AdminArgs),
    /// Check every link: the remote followed (trust anchors shared), the gateway alive, mirrors fresh.
    Check(AdminArgs),
}

#[derive(clap::Args)]
pub struct LinkArgs {
    /// The linked cluster's name: its mirrors are `<service>-<name>`.
    #[arg(long)]
    cluster_name: String,
    /// The gateway's addresses (comma-separated IPs).
    #[arg(long)]
    gateway_address: String,
    #[arg(long, default_value_t = 4143)]
    gateway_port: u16,
    /// The identity the gateway proves (its service account's mesh identity).
    #[arg(long)]
    gateway_identity: String,
    #[arg(long, default_value_t = 4191)]
    probe_port: u16,
    #[arg(long, default_value = "3s")]
    probe_period: String,
    #[arg(long, default_value_t = 3)]
    probe_failure_threshold: u32,
    /// Kubernetes mode: a kubeconfig for the linked cluster's API server (its remote-access
    /// account, which `knit multicluster install` made there). The Link comes with a Secret
    /// holding it, as Linkerd's does.
    #[arg(long, conflicts_with = "remote_control_plane", required_unless_present = "remote_control_plane")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Kubernetes mode: the trust domain of the linked cluster's identities (its identityTrustDomain).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Local mode: the linked knit-control's multicluster address (its --multicluster-addr).
    #[arg(long)]
    remote_control_plane: Option<SocketAddr>,
    /// The identity the linked knit-control proves.
    #[arg(long, default_value = "knit-control.knit.serviceaccount.identity.knit.cluster.local")]
    remote_control_plane_identity: String,
    /// Local mode: the range mirrors' ClusterIPs come from (so applications can call them by address).
    #[arg(long)]
    mirror_cluster_ips: Option<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where the Link lives.
    #[arg(long, short, default_value = "linkerd-multicluster")]
    namespace: String,
    /// The label that exports a Service (`key=value`), Linkerd's by default.
    #[arg(long, default_value = "mirror.linkerd.io/exported=true")]
    selector: String,
    /// The label that exports a Service for flat mode (clients reach its pods directly).
    #[arg(long, default_value = "mirror.linkerd.io/exported=remote-discovery")]
    remote_discovery_selector: String,
    /// The label of the members of `<service>-federated`.
    #[arg(long, default_value = "mirror.linkerd.io/federated=member")]
    federated_service_selector: String,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    #[arg(long, short, default_value = "linkerd-multicluster")]
    namespace: String,
    /// The gateway pod's container (the injector adds the proxy, in gateway mode).
    #[arg(long, default_value = "registry.k8s.io/pause:3.9")]
    gateway_image: String,
    /// The gateway Service's type (LoadBalancer, NodePort, ClusterIP).
    #[arg(long, default_value = "LoadBalancer")]
    gateway_service_type: String,
    #[arg(long, default_value = "knit")]
    control_plane_namespace: String,
    #[arg(long, default_value = "cluster.local")]
    identity_trust_domain: String,
    #[arg(long, default_value_t = 3)]
    probe_period_seconds: u32,
}

#[derive(clap::Args)]
pub struct UnlinkArgs {
    #[arg(long)]
    cluster_name: String,
    #[arg(long, short, default_value = "linkerd-multicluster")]
    namespace: String,
}

#[derive(clap::Args)]
pub struct AdminArgs {
    /// knit-control's admin address.
    #[arg(long, default_value = "127.0.0.1:9990")]
    admin_addr: SocketAddr,
}

pub fn main(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Install(a) => {
            print!("{}", install(&a));
            Ok(())
        }
        Command::Link(a) => {
            print!("{}", link(&a)?);
            Ok(())
        }
        Command::Unlink(a) => {
            print!("apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata:\n  name: {}\n  namespace: {}\n", a.cluster_name, a.namespace);
            Ok(())
        }
        Command::Gateways(a) => {
            let links = fetch(a.admin_addr)?;
            print!("{}", gateways(&links));
            Ok(())
        }
        Command::Check(a) => {
            let links = fetch(a.admin_addr)?;
            let (report, ok) = check(&links);
            print!("{report}");
            if ok {
                Ok(())
            } else {
                anyhow::bail!("some links are not healthy")
            }
        }
    }
}

/// The account a linking cluster reads this one's API server as (Linkerd's name).
const REMOTE_ACCESS: &str = "linkerd-service-mirror-remote-access-default";

/// The gateway, as Linkerd's multicluster chart makes it (LINKERD-WIRE.md §12.1): a pause
/// container the injector meshes in gateway mode, a Service with the mirror's annotations, and a
/// policy that lets every mesh identity in from anywhere (the gateway checks each request's
/// identity against its own port's policy, and forwards only to this cluster's Services).
fn install(a: &InstallArgs) -> String {
    let ns = &a.namespace;
    let identity = format!("linkerd-gateway.{ns}.serviceaccount.identity.{}.{}", a.control_plane_namespace, a.identity_trust_domain);
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels: {{linkerd.io/extension: multicluster}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: linkerd-gateway, namespace: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: linkerd-gateway
  namespace: {ns}
  labels: {{app: linkerd-gateway}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: linkerd-gateway}}}}
  template:
    metadata:
      labels: {{app: linkerd-gateway}}
      annotations:
        linkerd.io/inject: enabled
        config.linkerd.io/enable-gateway: "true"
        config.linkerd.io/proxy-require-identity-inbound-ports: "4143"
        config.linkerd.io/default-inbound-policy: all-authenticated
    spec:
      serviceAccountName: linkerd-gateway
      automountServiceAccountToken: false
      containers:
        - name: pause
          image: {image}
          securityContext: {{runAsUser: 65534, runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: linkerd-gateway
  namespace: {ns}
  annotations:
    mirror.linkerd.io/gateway-identity: {identity}
    mirror.linkerd.io/probe-path: /ready
    mirror.linkerd.io/probe-period: "{period}"
    mirror.linkerd.io/multicluster-gateway: "true"
spec:
  type: {svc_type}
  selector: {{app: linkerd-gateway}}
  ports:
    - {{name: mc-gateway, port: 4143, targetPort: 4143, protocol: TCP}}
    - {{name: mc-probe, port: 4191, targetPort: 4191, protocol: TCP}}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: linkerd-gateway, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: linkerd-gateway}}}}
  port: 4143
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: any-meshed, namespace: {ns}}}
spec: {{identities: ["*"]}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: source-cluster, namespace: {ns}}}
spec: {{networks: [{{cidr: 0.0.0.0/0}}, {{cidr: "::/0"}}]}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: linkerd-gateway, namespace: {ns}}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: linkerd-gateway}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: any-meshed}}
    - {{group: policy.linkerd.io, kind: NetworkAuthentication, name: source-cluster}}
---
# What a linking cluster's service mirror reads here (Kubernetes mode): read access to Namespaces,
# Services, Pods and EndpointSlices, nothing else. Its token Secret goes into the kubeconfig given
# to `knit multicluster link --kubeconfig` in the other cluster.
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {remote}, namespace: {ns}}}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: {remote}-token
  namespace: {ns}
  annotations: {{kubernetes.io/service-account.name: {remote}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {remote}-{ns}}}
rules:
  - apiGroups: [""]
    resources: [namespaces, services, pods]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {remote}-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {remote}-{ns}}}
subjects:
  - {{kind: ServiceAccount, name: {remote}, namespace: {ns}}}
---
# This cluster's control plane reads the Links' credentials Secrets, here only.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: knit-control-link-credentials, namespace: {ns}}}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: knit-control-link-credentials, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: knit-control-link-credentials}}
subjects:
  - {{kind: ServiceAccount, name: knit-control, namespace: {cp}}}
"#,
        cp = a.control_plane_namespace,
        remote = REMOTE_ACCESS,
        image = a.gateway_image,
        period = a.probe_period_seconds,
        svc_type = a.gateway_service_type,
    )
}

/// The Link's YAML, refused with knit-control's reason if knit-control would refuse it.
fn link(a: &LinkArgs) -> anyhow::Result<String> {
    let (key, value) = a.selector.split_once('=').context("--selector: expected key=value")?;
    let (flat_key, flat_value) = a.remote_discovery_selector.split_once('=').context("--remote-discovery-selector: expected key=value")?;
    let (fed_key, fed_value) = a.federated_service_selector.split_once('=').context("--federated-service-selector: expected key=value")?;
    let mut annotations = vec![];
    let mut secret = String::new();
    let mut credentials = String::new();
    match (&a.remote_control_plane, &a.kubeconfig) {
        (Some(addr), _) => {
            annotations.push(format!("    knit.dev/remote-control-plane: \"{addr}\""));
            annotations.push(format!("    knit.dev/remote-control-plane-identity: {}", a.remote_control_plane_identity));
        }
        (None, Some(path)) => {
            secret = credentials_secret(a, path)?;
            credentials = format!("  clusterCredentialsSecret: cluster-credentials-{}\n", a.cluster_name);
        }
        (None, None) => anyhow::bail!("name the linked cluster with --kubeconfig (Kubernetes) or --remote-control-plane (local mode)"),
    }
    if let Some(ips) = &a.mirror_cluster_ips {
        annotations.push(format!("    knit.dev/mirror-cluster-ips: {ips}"));
    }
    let annotations = if annotations.is_empty() { String::new() } else { format!("  annotations:\n{}\n", annotations.join("\n")) };
    let yaml = format!(
        "apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata:\n  name: {name}\n  namespace: {ns}\n{annotations}spec:\n  targetClusterName: {name}\n  targetClusterDomain: {domain}\n{credentials}  gatewayAddress: {gw}\n  gatewayPort: \"{port}\"\n  gatewayIdentity: {gw_id}\n  probeSpec:\n    path: /ready\n    port: \"{probe}\"\n    period: {period}\n    timeout: 30s\n    failureThreshold: \"{threshold}\"\n  selector:\n    matchLabels:\n      {key}: \"{value}\"\n  remoteDiscoverySelector:\n    matchLabels:\n      {flat_key}: \"{flat_value}\"\n  federatedServiceSelector:\n    matchLabels:\n      {fed_key}: \"{fed_value}\"\n",
        name = a.cluster_name,
        ns = a.namespace,
        domain = a.cluster_domain,
        gw = a.gateway_address,
        port = a.gateway_port,
        gw_id = a.gateway_identity,
        probe = a.probe_port,
        period = a.probe_period,
        threshold = a.probe_failure_threshold,
    );
    let (resources, errors) = knit_control::resources::parse("link", &yaml);
    if let Some(e) = errors.first() {
        anyhow::bail!("this Link would be refused: {e}");
    }
    anyhow::ensure!(resources.len() == 1, "expected one Link");
    Ok(format!("{secret}{yaml}"))
}

/// The credentials Secret a Kubernetes-mode Link names, as `linkerd multicluster link` writes it
/// (type, label, the trust- and cluster-domain annotations, the kubeconfig), after checking that
/// the kubeconfig reads and names a server.
fn credentials_secret(a: &LinkArgs, path: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config = kube::config::Kubeconfig::from_yaml(&text).with_context(|| format!("the kubeconfig {}", path.display()))?;
    let context = config.current_context.as_deref().and_then(|c| config.contexts.iter().find(|n| n.name == c)).and_then(|c| c.context.as_ref());
    let cluster = context.and_then(|c| config.clusters.iter().find(|n| n.name == c.cluster)).and_then(|c| c.cluster.as_ref());
    anyhow::ensure!(cluster.is_some_and(|c| c.server.is_some()), "the kubeconfig {} has no current context naming a cluster with a server", path.display());
    // What knit-control will refuse, refused here with its reason (a local kubeconfig often
    // names files or an exec plugin: `kubectl config view --flatten --minify` inlines files).
    let probe = k8s_openapi::api::core::v1::Secret {
        data: Some([("kubeconfig".to_string(), k8s_openapi::ByteString(text.clone().into_bytes()))].into()),
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("cluster-credentials-{}", a.cluster_name)),
            ..Default::default()
        },
        ..Default::default()
    };
    knit_control::multicluster::remote::credentials(&probe).map_err(|e| anyhow::anyhow!("{e:#} (try `kubectl config view --flatten --minify`)"))?;
    Ok(format!(
        "apiVersion: v1\nkind: Secret\ntype: mirror.linkerd.io/remote-kubeconfig\nmetadata:\n  name: cluster-credentials-{name}\n  namespace: {ns}\n  labels:\n    multicluster.linkerd.io/cluster-name: {name}\n  annotations:\n    multicluster.linkerd.io/trust-domain: {trust}\n    multicluster.linkerd.io/cluster-domain: {domain}\ndata:\n  kubeconfig: {data}\n---\n",
        name = a.cluster_name,
        ns = a.namespace,
        trust = a.trust_domain,
        domain = a.cluster_domain,
        data = base64::engine::general_purpose::STANDARD.encode(text),
    ))
}

fn fetch(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let req = http::Request::get(format!("http://{admin}/multicluster")).body(Empty::new())?;
        let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("knit-control's admin server at {admin} did not answer within 10s"))?
            .with_context(|| format!("cannot reach knit-control's admin server at {admin} (--admin-addr; in a cluster, kubectl port-forward first)"))?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{admin}/multicluster: {status}: {}", String::from_utf8_lossy(&body).trim());
        Ok(serde_json::from_slice(&body)?)
    })
}

fn links(v: &serde_json::Value) -> Vec<(&str, &serde_json::Value)> {
    v["links"].as_object().map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect()).unwrap_or_default()
}

/// Linkerd's `multicluster gateways` columns.
fn gateways(v: &serde_json::Value) -> String {
    let mut out = format!("{:<20} {:<8} {:>12} {:>8}\n", "CLUSTER", "ALIVE", "LATENCY", "NUM_SVC");
    for (_, l) in links(v) {
        let g = &l["gateway"];
        let latency = g["probe_latency_ms"].as_u64().filter(|_| g["alive"] == true).map_or("-".to_string(), |ms| format!("{ms}ms"));
        let alive = if g["alive"] == true { "True" } else { "False" };
        out += &format!("{:<20} {:<8} {:>12} {:>8}\n", l["cluster"].as_str().unwrap_or("?"), alive, latency, l["mirrors"].as_array().map_or(0, Vec::len));
    }
    out
}

/// Each link's checks, with the fix for those that fail; and whether all passed.
fn check(v: &serde_json::Value) -> (String, bool) {
    let mut out = String::new();
    let mut all = true;
    let mut line = |ok: bool, what: String, fix: Option<String>| {
        all &= ok;
        out += &format!("{} {what}\n", if ok { "√" } else { "×" });
        if let (false, Some(fix)) = (ok, fix) {
            out += &format!("    {fix}\n");
        }
    };
    let links = links(v);
    if links.is_empty() {
        line(true, "no Links: nothing is mirrored".into(), None);
    }
    for (key, l) in links {
        let cluster = l["cluster"].as_str().unwrap_or(key);
        let error = l["remote_error"].as_str().unwrap_or("");
        let anchors = error.contains("certificate") || error.contains("UnknownIssuer") || error.contains("BadSignature");
        let fix = if anchors {
            format!("{error}\n    the clusters do not share trust anchors: give both the same anchor (knit identity init once, then knit identity issuer in the other cluster's copy)")
        } else {
            format!(
                "{} (is the linked knit-control running with --multicluster-addr at {}?)",
                if error.is_empty() { "not connected yet" } else { error },
                l["remote"].as_str().unwrap_or("?")
            )
        };
        line(l["remote_connected"] == true, format!("{cluster}: the linked control plane is followed (and shares this cluster's trust anchors)"), Some(fix));
        let g = &l["gateway"];
        let gw_fix = format!(
            "{} (is the gateway running at {}, its admin port reachable?)",
            g["last_error"].as_str().unwrap_or("no successful probe yet"),
            g["addresses"]
        );
        line(
            g["alive"] == true,
            format!("{cluster}: the gateway is alive (probe {})", g["probe_latency_ms"].as_u64().map_or("-".into(), |ms| format!("{ms}ms"))),
            Some(gw_fix),
        );
        let mirrors = l["mirrors"].as_array().cloned().unwrap_or_default();
        let ready = mirrors.iter().filter(|m| m["ready"] == true).count();
        line(
            mirrors.is_empty() || ready > 0 || g["alive"] != true,
            format!("{cluster}: {} mirrored Services, {ready} with endpoints", mirrors.len()),
            Some("no mirror has endpoints: do the exported Services have ready endpoints in the linked cluster?".into()),
        );
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Command,
    }

    fn link_args(extra: &[&str]) -> LinkArgs {
        let gateway = extra.windows(2).find(|w| w[0] == "--gateway-address").map_or("10.233.1.1", |w| w[1]);
        let mut args = vec![
            "knit",
            "link",
            "--cluster-name",
            "east",
            "--gateway-address",
            gateway,
            "--gateway-identity",
            "gateway.shop.serviceaccount.identity.knit.cluster.local",
            "--remote-control-plane",
            "10.233.1.1:8095",
        ];
        args.extend(extra.iter().filter(|a| **a != "--gateway-address" && **a != gateway));
        match Cli::parse_from(args).cmd {
            Command::Link(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn install_prints_a_gateway_knit_control_and_the_injector_accept() {
        let Command::Install(a) = Cli::parse_from(["knit", "install"]).cmd else { unreachable!() };
        let yaml = install(&a);
        let (resources, errors) = knit_control::resources::parse("gateway", &yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(resources.len(), 5, "Service, Server, two authentications and the policy");
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(
            svc["metadata"]["annotations"]["mirror.linkerd.io/gateway-identity"],
            "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.knit.cluster.local"
        );
        let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"];
        assert_eq!(pod["metadata"]["annotations"]["config.linkerd.io/enable-gateway"], "true");
    }

    #[test]
    fn link_with_a_kubeconfig_prints_the_credentials_secret_and_its_link() {
        let dir = std::env::temp_dir().join(format!("knit-mc-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("east.kubeconfig");
        std::fs::write(&good, "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {server: 'https://203.0.113.7:6443'}\ncontexts:\n- name: east\n  context: {cluster: east, user: mirror}\ncurrent-context: east\nusers:\n- name: mirror\n  user: {token: t}\n").unwrap();
        let args = |extra: &[&str]| {
            let base = [
                "knit",
                "link",
                "--cluster-name",
                "east",
                "--gateway-address",
                "203.0.113.8",
                "--gateway-identity",
                "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local",
            ];
            match Cli::parse_from(base.iter().chain(extra)).cmd {
                Command::Link(a) => *a,
                _ => unreachable!(),
            }
        };
        let yaml = link(&args(&["--kubeconfig", good.to_str().unwrap(), "--trust-domain", "east.local"])).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 2, "{yaml}");
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(docs[0].clone()).unwrap();
        assert_eq!(secret.type_.as_deref(), Some("mirror.linkerd.io/remote-kubeconfig"));
        let read = knit_control::multicluster::remote::credentials(&secret).unwrap();
        assert_eq!((read.trust_domain.as_deref(), read.kubeconfig.clusters[0].name.as_str()), (Some("east.local"), "east"));
        assert_eq!(docs[1]["spec"]["clusterCredentialsSecret"], "cluster-credentials-east");
        assert!(docs[1]["metadata"].get("annotations").is_none(), "no local-mode annotations: {yaml}");
        // A kubeconfig without a server, or neither way to reach the remote, is refused.
        let bad = dir.join("bad.kubeconfig");
        std::fs::write(&bad, "apiVersion: v1\nkind: Config\nclusters: []\n").unwrap();
        let e = link(&args(&["--kubeconfig", bad.to_str().unwrap()])).unwrap_err().to_string();
        assert!(e.contains("no current context"), "{e}");
        // One knit-control would refuse (a plugin it would run) is refused here, with the fix.
        let exec = dir.join("exec.kubeconfig");
        std::fs::write(
            &exec,
            std::fs::read_to_string(&good).unwrap().replace("{token: t}", "{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}"),
        )
        .unwrap();
        let e = link(&args(&["--kubeconfig", exec.to_str().unwrap()])).unwrap_err().to_string();
        assert!(e.contains("exec") && e.contains("--flatten"), "{e}");
        assert!(Cli::try_parse_from(["knit", "link", "--cluster-name", "e", "--gateway-address", "1.2.3.4", "--gateway-identity", "g"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_prints_a_link_knit_control_accepts() {
        let yaml = link(&link_args(&["--mirror-cluster-ips", "10.96.200.0/24"])).unwrap();
        assert!(yaml.contains("targetClusterName: east") && yaml.contains("knit.dev/mirror-cluster-ips: 10.96.200.0/24"), "{yaml}");
        let e = link(&link_args(&["--gateway-address", "gw_1.example"])).unwrap_err().to_string();
        assert!(e.contains("spec.gatewayAddress"), "{e}");
    }

    #[test]
    fn gateways_and_check_read_the_status() {
        let v = serde_json::json!({"links": {"linkerd-multicluster/east": {
            "cluster": "east", "remote": "10.0.0.1:8095", "remote_connected": false,
            "remote_error": "TLS with 10.0.0.1:8095 (expecting knit-control...): invalid peer certificate: UnknownIssuer",
            "gateway": {"addresses": ["10.0.0.2"], "alive": true, "failures": 0, "probe_latency_ms": 3},
            "mirrors": [{"namespace": "shop", "name": "books-east", "cluster_ip": null, "ready": true}]}}, "federated": []});
        let table = gateways(&v);
        assert!(table.lines().nth(1).is_some_and(|l| l.split_whitespace().collect::<Vec<_>>() == ["east", "True", "3ms", "1"]), "{table}");
        let (report, ok) = check(&v);
        assert!(!ok);
        assert!(report.contains("do not share trust anchors"), "{report}");
    }
}
