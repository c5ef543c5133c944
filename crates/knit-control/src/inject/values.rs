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
    pub tracing: TracingValues,
}

/// Trace export for every injected proxy (Linkerd's `proxy.tracing`); a pod's
/// `config.linkerd.io/trace-collector` (or `config.knit.dev/`) turns it on for that pod alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TracingValues {
    pub enabled: bool,
    /// The OTLP gRPC collector, `HOST:PORT` (Linkerd's `collector.endpoint`).
    pub collector_endpoint: String,
    /// The collector's mesh identity (Linkerd's `collector.meshIdentity`): with a service
    /// account, proxies reach it over mesh TLS and it must prove
    /// `SA.NAMESPACE.serviceaccount.identity...`; the namespace defaults to the endpoint's.
    pub collector_service_account: String,
    pub collector_namespace: String,
    /// `service.name` before the pod's labels (Linkerd's `traceServiceName`).
    pub service_name: String,
    /// The share of untraced requests entering the mesh that start a trace (Knit's extension).
    pub sample_untraced: String,
}

impl TracingValues {
    /// What `knit install` refuses before any pod would be: enabled without a usable collector,
    /// or a share that is not one. Named with the chart's keys.
    pub fn check(&self) -> Result<(), String> {
        if self.enabled {
            super::overrides::host_port(&self.collector_endpoint)
                .map_err(|e| format!("proxy.tracing.collector.endpoint={:?}: {e}", self.collector_endpoint))?;
        }
        super::overrides::share(&self.sample_untraced).map_err(|e| format!("proxy.tracing.sampleUntraced={:?}: {e}", self.sample_untraced))?;
        Ok(())
    }
}

impl Default for TracingValues {
    fn default() -> Self {
        Self {
            enabled: false,
            collector_endpoint: String::new(),
            collector_service_account: String::new(),
            collector_namespace: String::new(),
            service_name: "knit-proxy".into(),
            sample_untraced: "0".into(),
        }
    }
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
            tracing: TracingValues::default(),
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
