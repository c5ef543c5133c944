//! `knit-control`'s flags (each also an environment variable).

use knit_identity::layout;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

fn duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

#[derive(Clone, Debug, clap::Parser)]
#[command(name = "knit-control", version, about = "Knit's control plane")]
pub struct Config {
    /// Identity gRPC (Identity.Certify).
    #[arg(long, env = "KNIT_CONTROL_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    pub identity_addr: SocketAddr,
    /// Admin server: /metrics, /ready, /live.
    #[arg(long, env = "KNIT_CONTROL_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    /// Destination gRPC (Destination.Get, GetProfile).
    #[arg(long, env = "KNIT_CONTROL_DESTINATION_ADDR", default_value = "0.0.0.0:8086")]
    pub destination_addr: SocketAddr,
    /// Policy gRPC (InboundServerPolicies, OutboundPolicies).
    #[arg(long, env = "KNIT_CONTROL_POLICY_ADDR", default_value = "0.0.0.0:8090")]
    pub policy_addr: SocketAddr,
    /// Serve identity, destination and policy over TLS with a certificate for this identity,
    /// signed by the control plane's own issuer (in a cluster; proxies check it with
    /// KNIT_PROXY_*_SVC_NAME). Without it they are plaintext h2c, for loopback.
    #[arg(long, env = "KNIT_CONTROL_SERVE_TLS_IDENTITY")]
    pub serve_tls_identity: Option<String>,
    /// Serve this cluster's exported Services to linked control planes (mTLS, local mode's
    /// multicluster: `knit.dev/remote-control-plane` of their Links names this address).
    #[arg(long, env = "KNIT_CONTROL_MULTICLUSTER_ADDR")]
    pub multicluster_addr: Option<SocketAddr>,
    /// Identities that may read the exports (default: any control plane's,
    /// `knit-control.*.serviceaccount.identity.*`, under the shared trust anchors).
    #[arg(long, env = "KNIT_CONTROL_MULTICLUSTER_ALLOWED_IDENTITIES", value_delimiter = ',')]
    pub multicluster_allowed_identities: Vec<String>,
    /// Local mode: the range federated Services' (`<svc>-federated`) ClusterIPs come from.
    #[arg(long, env = "KNIT_CONTROL_FEDERATED_CLUSTER_IPS")]
    pub federated_cluster_ips: Option<ipnet::IpNet>,
    #[command(flatten)]
    pub identity: IdentityConfig,
    #[command(flatten)]
    pub discovery: DiscoveryConfig,
    #[command(flatten)]
    pub webhook: WebhookConfig,
    #[command(flatten)]
    pub viz: VizConfig,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "KNIT_CONTROL_LOG", default_value = "warn,knit_control=info")]
    pub log: String,
}

impl Config {
    /// Every listener on 127.0.0.1 with a port the system picks, and the defaults: for tests and
    /// `knit demo`.
    pub fn local(identity: IdentityConfig) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            identity_addr: any,
            admin_addr: any,
            destination_addr: any,
            policy_addr: any,
            serve_tls_identity: None,
            multicluster_addr: None,
            multicluster_allowed_identities: Vec::new(),
            federated_cluster_ips: None,
            identity,
            discovery: DiscoveryConfig {
                config_dir: None,
                kubernetes: false,
                kubeconfig: None,
                distribute_trust_roots: false,
                config_poll_interval: Duration::from_millis(100),
                strict_fields: false,
                cluster_domain: "cluster.local".into(),
                identity_trust_domain: None,
                control_plane_namespace: "knit".into(),
                cluster_networks: DEFAULT_CLUSTER_NETWORKS.split(',').filter_map(|n| n.parse().ok()).collect(),
                default_inbound_policy: "all-unauthenticated".into(),
                default_opaque_ports: knit_core::parse::port_set(DEFAULT_OPAQUE_PORTS).unwrap_or_default(),
                global_egress_network_namespace: "linkerd-egress".into(),
            },
            webhook: WebhookConfig { webhook_addr: any, webhook_tls_cert: None, webhook_tls_key: None, inject_values: None },
            viz: VizConfig {
                viz_addr: any,
                viz_scrape_interval: Duration::from_secs(10),
                viz_retention: Duration::from_secs(120),
                prometheus_url: None,
                tap_api_addr: any,
                tap_api_tls_cert: None,
                tap_api_tls_key: None,
            },
            log: "warn,knit_control=info".into(),
        }
    }
}

/// Linkerd's default opaque ports (`proxy.opaquePorts`): SMTP, MySQL, Galera, PostgreSQL, Redis,
/// Elasticsearch, memcached; protocols whose server speaks first or that carry no HTTP.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

fn port_set(s: &str) -> Result<std::collections::BTreeSet<u16>, String> {
    knit_core::parse::port_set(s).map_err(|e| e.to_string())
}

pub const DEFAULT_CLUSTER_NETWORKS: &str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.0/8,::1/128";

fn default_policy(s: &str) -> Result<String, String> {
    let allowed = crate::resources::DEFAULT_POLICIES;
    if allowed.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("expected one of {}", allowed.join(", ")))
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct DiscoveryConfig {
    /// Local mode: a directory of manifests (Service, ExternalWorkload, Server, AuthorizationPolicy,
    /// HTTPRoute, TrafficSplit, ...), read at start-up and watched. Without it, discovery answers
    /// NotFound for everything.
    #[arg(long, env = "KNIT_CONTROL_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster config or KUBECONFIG) for Namespaces, Services, Pods, EndpointSlices
    /// and the policy, route, workload and split resources, and check proxies' tokens with
    /// TokenReview. May be combined with --config-dir.
    #[arg(long, env = "KNIT_CONTROL_KUBERNETES")]
    pub kubernetes: bool,
    /// The kubeconfig for the Kubernetes API (for running outside the cluster); the in-cluster
    /// config or KUBECONFIG when not given.
    #[arg(long, env = "KNIT_CONTROL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: keep a copy of the trust bundle (the ConfigMap
    /// `knit-identity-trust-roots`) in every namespace, where injected proxies mount it. Leave it
    /// off when trust-manager writes those copies.
    #[arg(long, env = "KNIT_CONTROL_DISTRIBUTE_TRUST_ROOTS", requires = "kubernetes")]
    pub distribute_trust_roots: bool,
    /// How often the manifest directory is also checked for changes: inotify reports them at once,
    /// the poll catches what it cannot (network filesystems, a writer that keeps a file open).
    #[arg(long, env = "KNIT_CONTROL_CONFIG_POLL_INTERVAL", default_value = "100ms", value_parser = duration)]
    pub config_poll_interval: Duration,
    /// A manifest document with a field Knit does not know is refused as invalid, instead of
    /// served with a warning (kubectl's `--validate=strict`).
    #[arg(long, env = "KNIT_CONTROL_STRICT_FIELDS")]
    pub strict_fields: bool,
    #[arg(long, env = "KNIT_CONTROL_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The last part of every identity name; the cluster domain when not given.
    #[arg(long, env = "KNIT_CONTROL_IDENTITY_TRUST_DOMAIN")]
    pub identity_trust_domain: Option<String>,
    /// The control plane's namespace, part of every proxy identity (SA.NS.serviceaccount.identity.THIS.DOMAIN).
    #[arg(long, env = "KNIT_CONTROL_NAMESPACE", default_value = "knit")]
    pub control_plane_namespace: String,
    /// The networks `cluster-*` policies and authorizations without a NetworkAuthentication allow.
    #[arg(long, env = "KNIT_CONTROL_CLUSTER_NETWORKS", default_value = DEFAULT_CLUSTER_NETWORKS, value_delimiter = ',')]
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// The inbound policy of ports no Server selects (all-unauthenticated, all-authenticated,
    /// cluster-unauthenticated, cluster-authenticated, deny, audit).
    #[arg(long, env = "KNIT_CONTROL_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated", value_parser = default_policy)]
    pub default_inbound_policy: String,
    /// Ports that are opaque (never detected, mTLS'd byte for byte) unless a
    /// config.linkerd.io/opaque-ports annotation says otherwise.
    #[arg(long, env = "KNIT_CONTROL_DEFAULT_OPAQUE_PORTS", default_value = DEFAULT_OPAQUE_PORTS, value_parser = port_set)]
    pub default_opaque_ports: std::collections::BTreeSet<u16>,
    /// The namespace whose EgressNetworks apply to clients in namespaces without their own (as
    /// Linkerd's egress.globalEgressNetworkNamespace).
    #[arg(long, env = "KNIT_CONTROL_GLOBAL_EGRESS_NETWORK_NAMESPACE", default_value = "linkerd-egress")]
    pub global_egress_network_namespace: String,
}

impl DiscoveryConfig {
    pub fn trust_domain(&self) -> String {
        self.identity_trust_domain.clone().unwrap_or_else(|| self.cluster_domain.clone())
    }
}

/// The proxy injector's admission webhook; it runs when given a serving certificate.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookConfig {
    #[arg(long, env = "KNIT_CONTROL_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// The webhook's serving certificate (PEM), for the name `knit-proxy-injector.NS.svc`.
    #[arg(long, env = "KNIT_CONTROL_WEBHOOK_TLS_CERT", requires = "webhook_tls_key")]
    pub webhook_tls_cert: Option<PathBuf>,
    #[arg(long, env = "KNIT_CONTROL_WEBHOOK_TLS_KEY", requires = "webhook_tls_cert")]
    pub webhook_tls_key: Option<PathBuf>,
    /// The injector's values (YAML, as `knit install` renders into the knit-config ConfigMap).
    #[arg(long, env = "KNIT_CONTROL_INJECT_VALUES")]
    pub inject_values: Option<PathBuf>,
}

/// The viz API (golden metrics for `knit viz` and the dashboard).
#[derive(Clone, Debug, clap::Args)]
pub struct VizConfig {
    /// Loopback by default: the viz API relays tap of every request, so it is not for whoever
    /// reaches the pod. In a cluster, reach it with `kubectl port-forward` (which the API server
    /// authorizes), as `linkerd viz` reaches its own.
    #[arg(long, env = "KNIT_CONTROL_VIZ_ADDR", default_value = "127.0.0.1:8084")]
    pub viz_addr: SocketAddr,
    /// How often the built-in store scrapes each proxy.
    #[arg(long, env = "KNIT_CONTROL_VIZ_SCRAPE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub viz_scrape_interval: Duration,
    /// How much history the built-in store keeps: the longest window a query may ask for.
    #[arg(long, env = "KNIT_CONTROL_VIZ_RETENTION", default_value = "2m", value_parser = duration)]
    pub viz_retention: Duration,
    /// Answer viz queries from this Prometheus (http://HOST:PORT) instead of scraping.
    #[arg(long, env = "KNIT_CONTROL_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// The tap API for the Kubernetes API server's aggregation layer (`tap.knit.dev`, as
    /// Linkerd's tap APIService): the API server authenticates users, knit-control asks it with a
    /// SubjectAccessReview whether they may tap. Runs when given a serving certificate, and
    /// needs a Kubernetes API (`--kubernetes` or `--kubeconfig`).
    #[arg(long, env = "KNIT_CONTROL_TAP_API_ADDR", default_value = "0.0.0.0:8089")]
    pub tap_api_addr: SocketAddr,
    /// The tap API's serving certificate (PEM), for the name `knit-tap.NS.svc`.
    #[arg(long, env = "KNIT_CONTROL_TAP_API_TLS_CERT", requires = "tap_api_tls_key")]
    pub tap_api_tls_cert: Option<PathBuf>,
    #[arg(long, env = "KNIT_CONTROL_TAP_API_TLS_KEY", requires = "tap_api_tls_cert")]
    pub tap_api_tls_key: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct IdentityConfig {
    /// Directory written by `knit identity init`; the file flags below default to files in it.
    #[arg(long, env = "KNIT_CONTROL_IDENTITY_DIR", default_value = "identity")]
    pub identity_dir: PathBuf,
    /// PEM bundle of trust anchors (several during a rotation). Default: DIR/trust-anchors.pem.
    #[arg(long, env = "KNIT_CONTROL_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// Issuer certificate PEM (optionally followed by its chain). Default: DIR/issuer/crt.pem.
    #[arg(long, env = "KNIT_CONTROL_ISSUER_CERT")]
    pub issuer_cert: Option<PathBuf>,
    /// Issuer private key PEM. Default: DIR/issuer/key.pem.
    #[arg(long, env = "KNIT_CONTROL_ISSUER_KEY")]
    pub issuer_key: Option<PathBuf>,
    /// The CA that signed the issuer (a `kubernetes.io/tls` Secret's `ca.crt`, as cert-manager
    /// writes it): its certificates that are not anchors complete the issuer's chain.
    #[arg(long, env = "KNIT_CONTROL_ISSUER_CA")]
    pub issuer_ca: Option<PathBuf>,
    /// Local-mode token key. Default: DIR/token.key.
    #[arg(long, env = "KNIT_CONTROL_TOKEN_KEY")]
    pub token_key: Option<PathBuf>,
    /// Lifetime of proxies' certificates.
    #[arg(long, env = "KNIT_CONTROL_ISSUANCE_LIFETIME", default_value = "24h", value_parser = duration)]
    pub issuance_lifetime: Duration,
    /// Allowance for clocks that disagree, added to both ends of a leaf's validity.
    #[arg(long, env = "KNIT_CONTROL_CLOCK_SKEW", default_value = "20s", value_parser = duration)]
    pub clock_skew: Duration,
    /// How often the identity files are checked for changes.
    #[arg(long, env = "KNIT_CONTROL_RELOAD_INTERVAL", default_value = "1s", value_parser = duration)]
    pub reload_interval: Duration,
}

impl IdentityConfig {
    pub fn for_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            identity_dir: dir.into(),
            trust_anchors: None,
            issuer_cert: None,
            issuer_key: None,
            issuer_ca: None,
            token_key: None,
            issuance_lifetime: Duration::from_secs(86_400),
            clock_skew: Duration::from_secs(20),
            reload_interval: Duration::from_secs(1),
        }
    }

    pub fn trust_anchors(&self) -> PathBuf {
        self.trust_anchors.clone().unwrap_or_else(|| self.identity_dir.join(layout::TRUST_ANCHORS))
    }
    pub fn issuer_cert(&self) -> PathBuf {
        self.issuer_cert.clone().unwrap_or_else(|| self.identity_dir.join(layout::ISSUER_CERT))
    }
    pub fn issuer_key(&self) -> PathBuf {
        self.issuer_key.clone().unwrap_or_else(|| self.identity_dir.join(layout::ISSUER_KEY))
    }
    pub fn token_key(&self) -> PathBuf {
        self.token_key.clone().unwrap_or_else(|| self.identity_dir.join(layout::TOKEN_KEY))
    }
}
