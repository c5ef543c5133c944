//! The injector's install-time settings: what `knit install` renders into the `knit-config`
//! ConfigMap and the webhook reads back, and what `knit inject` takes from flags. Annotations on
//! namespaces and pods override the per-proxy ones (`overrides.rs`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Values {
    /// The control plane's namespace: part of every identity and control-plane address.
    pub control_plane_namespace: String,
    pub cluster_domain: String,
    /// The identity trust domain (Linkerd's `identityTrustDomain`); the cluster domain by default.
    pub trust_domain: String,
    /// The trust anchors' PEM bundle: its digest annotates every injected pod, and with
    /// `trust_anchors_inline` it is given to every proxy inline.
    pub trust_anchors_pem: String,
    /// Give proxies the bundle inline (`KNIT_PROXY_IDENTITY_TRUST_ANCHORS`), fixed for the pod's
    /// life, instead of mounting the `knit-identity-trust-roots` ConfigMap of the pod's namespace
    /// (which knit-control or trust-manager keeps there), which proxies follow as it changes.
    pub trust_anchors_inline: bool,
    pub proxy: ProxyValues,
    pub default_inbound_policy: String,
    pub cluster_networks: String,
    /// Native sidecar (an init container with `restartPolicy: Always`, Kubernetes ≥ 1.29) unless
    /// a pod or namespace says otherwise.
    pub native_sidecar: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProxyValues {
    pub image: String,
    pub version: String,
    pub image_pull_policy: String,
    pub uid: i64,
    pub gid: Option<i64>,
    pub log_level: String,
    pub log_format: String,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub tap_port: u16,
    pub opaque_ports: String,
    /// Inbound ports never redirected besides the proxy's own (Linkerd's `ignoreInboundPorts`).
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub ephemeral_storage_request: Option<String>,
    pub ephemeral_storage_limit: Option<String>,
    /// Classic mode: hold the application containers until the proxy is ready.
    pub await_ready: bool,
    pub shutdown_grace_period: String,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            control_plane_namespace: "knit".into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            trust_anchors_pem: String::new(),
            trust_anchors_inline: false,
            proxy: ProxyValues::default(),
            default_inbound_policy: "all-unauthenticated".into(),
            cluster_networks: crate::config::DEFAULT_CLUSTER_NETWORKS.into(),
            native_sidecar: true,
        }
    }
}

impl Default for ProxyValues {
    fn default() -> Self {
        Self {
            image: "ghcr.io/knit-mesh/knit-proxy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            image_pull_policy: "IfNotPresent".into(),
            uid: 2102,
            gid: None,
            log_level: "warn,knit_proxy=info".into(),
            log_format: "plain".into(),
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            tap_port: 4190,
            opaque_ports: "25,587,3306,4444,5432,6379,9300,11211".into(),
            skip_inbound_ports: String::new(),
            skip_outbound_ports: String::new(),
            cpu_request: Some("100m".into()),
            cpu_limit: None,
            memory_request: Some("20Mi".into()),
            memory_limit: Some("250Mi".into()),
            ephemeral_storage_request: None,
            ephemeral_storage_limit: None,
            await_ready: true,
            shutdown_grace_period: "2m".into(),
        }
    }
}

impl Values {
    /// `NAME.NS.svc.DOMAIN.:PORT`: a control-plane Service as proxies dial it (the trailing dot
    /// skips the search-domain lookups).
    pub fn service_addr(&self, name: &str, port: u16) -> String {
        format!("{name}.{}.svc.{}.:{port}", self.control_plane_namespace, self.cluster_domain)
    }

    /// The identity suffix after `SA.NS.`.
    pub fn identity_suffix(&self) -> String {
        format!("serviceaccount.identity.{}.{}", self.control_plane_namespace, self.trust_domain)
    }

    /// The identity the control plane's gRPC ports prove with TLS (its ServiceAccount's), which
    /// proxies are told to expect.
    pub fn control_plane_identity(&self) -> String {
        format!("knit-control.{}.{}", self.control_plane_namespace, self.identity_suffix())
    }

    /// SHA-256 of the trust anchors, hex: the `linkerd.io/trust-root-sha256` annotation, so a
    /// rotation shows which pods still carry the old bundle.
    pub fn trust_root_sha256(&self) -> String {
        knit_identity::inspect::fingerprint(self.trust_anchors_pem.as_bytes())
    }
}
