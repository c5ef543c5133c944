//! `knit-control`: Knit's control plane.
//!
//! - Identity (`Identity.Certify`, 8080): the CA in `knit-identity` signs proxies' certificates
//!   (LINKERD-WIRE.md §2).
//! - Destination (`Destination.Get`, `GetProfile`, 8086) and policy (`InboundServerPolicies`,
//!   `OutboundPolicies`, 8090): views of one [`index::Index`] of Kubernetes-shaped resources,
//!   streamed as they change (§3, §4).
//! - Sources feed the index: in local mode, a directory of manifests ([`local`]); in a cluster,
//!   the Kubernetes API ([`k8s`]), whose TokenReview also authenticates proxies.
//! - The proxy injector's admission webhook (9443, [`webhook`], [`inject`]).
//! - Admin (9990): `/metrics`, `/ready`, `/live`.
//!
//! Like the proxy, a [`Control`] binds first and then runs until its shutdown future completes.

pub mod accept;
pub mod admin;
pub mod client;
pub mod config;
pub mod grpc;
pub mod identity;
pub mod index;
pub mod inject;
pub mod k8s;
pub mod local;
pub mod multicluster;
pub mod resources;
pub mod tls;
pub mod viz;
pub mod webhook;

use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

/// Connections each gRPC port holds open at once (a proxy keeps one or two per port), and from
/// one address (a pod's proxy; loopback, where local mode's proxies all are, is not counted).
const GRPC_CAPS: accept::Caps = accept::Caps { total: 20_000, per_source: Some(64) };

/// How long open gRPC streams get to end after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Control {
    config: config::Config,
    identity: TcpListener,
    destination: TcpListener,
    policy: TcpListener,
    admin: TcpListener,
    viz: TcpListener,
    viz_api: viz::Viz,
    /// The tap API for the Kubernetes aggregation layer, when it has a serving certificate.
    tap_api: Option<(TcpListener, Arc<viz::apiservice::TapApi>)>,
    service: Arc<identity::Service>,
    index: Arc<index::Index>,
    local: Option<local::LocalSource>,
    webhook: Option<Webhook>,
    kubernetes: Option<(kube::Client, k8s::Status)>,
    /// The gRPC ports' TLS configuration, when they serve TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Renews the control plane's own certificate.
    tls_renewal: Option<Renewal>,
    /// The exports port for linked clusters (mTLS), its TLS and that certificate's renewal.
    multicluster: Option<(TcpListener, Arc<rustls::ServerConfig>, Renewal)>,
    mirror_metrics: multicluster::mirror::Metrics,
}

/// A task that keeps a serving certificate fresh.
type Renewal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The injector's listener and what it serves with.
struct Webhook {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<inject::Injector>,
}

impl Webhook {
    async fn bind(config: &config::Config) -> anyhow::Result<Option<Self>> {
        let w = &config.webhook;
        let (Some(cert), Some(key)) = (&w.webhook_tls_cert, &w.webhook_tls_key) else { return Ok(None) };
        let tls = webhook::tls_config(cert, key)?;
        let mut values = match &w.inject_values {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading the injector values {}: {e}", path.display()))?;
                serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("the injector values {}: {e}", path.display()))?
            }
            None => inject::Values::default(),
        };
        if values.trust_anchors_pem.is_empty() {
            let path = config.identity.trust_anchors();
            values.trust_anchors_pem = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading the trust anchors {}: {e}", path.display()))?;
        }
        let listener = bind("webhook", w.webhook_addr).await?;
        Ok(Some(Self { listener, tls, injector: Arc::new(inject::Injector::new(values)) }))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub identity: SocketAddr,
    pub destination: SocketAddr,
    pub policy: SocketAddr,
    pub admin: SocketAddr,
    pub viz: SocketAddr,
    /// Only when the webhook has a serving certificate.
    pub webhook: Option<SocketAddr>,
    /// Only when the tap API has a serving certificate.
    pub tap_api: Option<SocketAddr>,
    /// Only with `--multicluster-addr`.
    pub multicluster: Option<SocketAddr>,
}

/// The identity the control plane proves to linked clusters: its serving identity, else the
/// one its own namespace gives `knit-control`.
fn own_identity(config: &config::Config, index: &index::Index) -> String {
    config.serve_tls_identity.clone().unwrap_or_else(|| index.config().identity("knit-control", &config.discovery.control_plane_namespace))
}

/// A client of the Kubernetes API: from `kubeconfig`, else the in-cluster config or KUBECONFIG.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("the kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API (in-cluster config or KUBECONFIG): {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {what} on {addr}: {e}"))
}

impl Control {
    /// Loads the identity material and the manifest directory and binds the listeners: a missing
    /// issuer or an unreadable directory stops start-up with the reason, rather than serving failures.
    pub async fn bind(config: config::Config) -> anyhow::Result<Self> {
        let d = &config.discovery;
        let index = Arc::new(index::Index::new(index::IndexConfig {
            cluster_domain: d.cluster_domain.clone(),
            trust_domain: d.trust_domain(),
            control_plane_ns: d.control_plane_namespace.clone(),
            cluster_networks: d.cluster_networks.clone(),
            default_inbound_policy: d.default_inbound_policy.clone(),
            default_opaque_ports: d.default_opaque_ports.clone(),
            global_egress_namespace: d.global_egress_network_namespace.clone(),
        }));
        let local = d.config_dir.as_deref().map(|dir| local::LocalSource::load(dir, index.clone(), d.strict_fields)).transpose()?;
        let tap_api_tls = match (&config.viz.tap_api_tls_cert, &config.viz.tap_api_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        let client = if d.kubernetes || d.kubeconfig.is_some() { Some(kube_client(d.kubeconfig.as_deref()).await?) } else { None };
        let kubernetes = client.clone().filter(|_| d.kubernetes).map(|c| (c, k8s::Status::default()));
        // In Kubernetes, proxies prove who they are with ServiceAccount tokens (TokenReview).
        let tokens = kubernetes.as_ref().map(|(client, _)| -> Arc<dyn identity::TokenValidator> {
            let naming = identity::tokenreview::Naming { control_plane_ns: d.control_plane_namespace.clone(), trust_domain: d.trust_domain() };
            Arc::new(identity::tokenreview::KubernetesTokens::new(client.clone(), naming))
        });
        let mut service = identity::Service::load_with(&config.identity, tokens)?;
        let k8s_status = kubernetes.as_ref().map(|(_, s)| s.clone());
        admin::register(&mut service.registry, index.clone(), local.as_ref().map(local::LocalSource::files), k8s_status);
        let mirror_metrics = multicluster::mirror::Metrics::register(&mut service.registry);
        let service = Arc::new(service);
        let multicluster = match config.multicluster_addr {
            Some(addr) => {
                let (tls, renewal) = tls::serve_config_with(service.clone(), own_identity(&config, &index), true)?;
                Some((bind("multicluster", addr).await?, tls, Box::pin(renewal) as Renewal))
            }
            None => None,
        };
        let (tls, tls_renewal) = match &config.serve_tls_identity {
            Some(name) => {
                let (cfg, renewal) = tls::serve_config(service.clone(), name.clone())?;
                (Some(cfg), Some(Box::pin(renewal) as Renewal))
            }
            None => (None, None),
        };
        let viz_api = viz::Viz::new(
            &config.viz,
            index.clone(),
            service.clone(),
            Arc::new(viz::tap::Client::new(service.clone(), index.config().identity("knit-control", &config.discovery.control_plane_namespace))),
        )?;
        let tap_api = match (tap_api_tls, client) {
            (None, _) => None,
            (Some(_), None) => anyhow::bail!("the tap API asks the Kubernetes API who may tap: give --kubernetes or --kubeconfig"),
            (Some((cert, key)), Some(client)) => {
                let api = viz::apiservice::TapApi::new(viz_api.clone(), client, &cert, &key).await?;
                Some((bind("tap API", config.viz.tap_api_addr).await?, Arc::new(api)))
            }
        };
        Ok(Self {
            tls,
            tls_renewal,
            tap_api,
            identity: bind("identity", config.identity_addr).await?,
            destination: bind("destination", config.destination_addr).await?,
            policy: bind("policy", config.policy_addr).await?,
            admin: bind("admin", config.admin_addr).await?,
            viz: bind("viz", config.viz.viz_addr).await?,
            viz_api,
            webhook: Webhook::bind(&config).await?,
            kubernetes,
            service,
            index,
            local,
            multicluster,
            mirror_metrics,
            config,
        })
    }

    pub fn addrs(&self) -> Addrs {
        Addrs {
            identity: self.identity.local_addr().expect("bound"),
            destination: self.destination.local_addr().expect("bound"),
            policy: self.policy.local_addr().expect("bound"),
            admin: self.admin.local_addr().expect("bound"),
            viz: self.viz.local_addr().expect("bound"),
            webhook: self.webhook.as_ref().map(|w| w.listener.local_addr().expect("bound")),
            tap_api: self.tap_api.as_ref().map(|(l, _)| l.local_addr().expect("bound")),
            multicluster: self.multicluster.as_ref().map(|(l, ..)| l.local_addr().expect("bound")),
        }
    }

    pub fn index(&self) -> &Arc<index::Index> {
        &self.index
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        use linkerd2_proxy_api::identity::identity_server::IdentityServer;
        let addrs = self.addrs();
        let mut tasks = vec![
            tokio::spawn(identity::watch_files(self.service.clone(), self.config.identity.clone())),
            tokio::spawn(admin::serve(self.admin, self.service.clone(), self.kubernetes.as_ref().map(|(_, s)| s.clone()), self.mirror_metrics.clone())),
        ];
        if let Some(w) = self.webhook {
            let namespaces: Arc<dyn webhook::Namespaces> = match &self.kubernetes {
                Some((client, _)) => Arc::new(webhook::ApiNamespaces(client.clone())),
                None => Arc::new(std::collections::BTreeMap::<String, std::collections::BTreeMap<String, String>>::new()),
            };
            tasks.push(tokio::spawn(webhook::serve(w.listener, w.tls, w.injector, namespaces)));
        }
        // The service mirror reads Links' credentials Secrets through it.
        let kube = self.kubernetes.as_ref().map(|(client, _)| client.clone());
        if let Some((client, status)) = self.kubernetes {
            if self.config.discovery.distribute_trust_roots {
                let (path, ns) = (self.config.identity.trust_anchors(), self.config.discovery.control_plane_namespace.clone());
                tasks.push(tokio::spawn(k8s::trust_roots::run(client.clone(), path, ns, self.service.reloads())));
            }
            tasks.push(tokio::spawn(k8s::run(client, self.index.clone(), status)));
        }
        let scrape = matches!(self.viz_api.source, viz::query::Source::Store(_));
        tasks.push(tokio::spawn(viz::store::run(self.viz_api.store.clone(), self.index.clone(), self.config.viz.viz_scrape_interval, scrape)));
        tasks.push(tokio::spawn(viz::serve(self.viz, self.viz_api)));
        if let Some((listener, api)) = self.tap_api {
            tasks.push(tokio::spawn(viz::apiservice::serve(listener, api)));
        }
        if let Some(renewal) = self.tls_renewal {
            tasks.push(tokio::spawn(renewal));
        }
        if let Some((listener, tls, renewal)) = self.multicluster {
            let allowed = multicluster::exports::Allowed(self.config.multicluster_allowed_identities.clone());
            tasks.push(tokio::spawn(multicluster::exports::serve(listener, tls, self.index.clone(), allowed)));
            tasks.push(tokio::spawn(renewal));
        }
        // Links whose remote is another knit-control are mirrored (no other Links, no work).
        let client_tls = Arc::new(tls::ClientTls::new(self.service.clone(), own_identity(&self.config, &self.index)));
        tasks.push(tokio::spawn(multicluster::mirror::run(self.index.clone(), client_tls, self.mirror_metrics.clone(), kube)));
        tasks.push(tokio::spawn(multicluster::federation::run(self.index.clone(), self.config.federated_cluster_ips, self.mirror_metrics.federated.clone())));
        if let Some(local) = self.local {
            tasks.push(tokio::spawn(local.run(self.config.discovery.config_poll_interval)));
        }
        tracing::info!(identity = %addrs.identity, destination = %addrs.destination, policy = %addrs.policy, admin = %addrs.admin, viz = %addrs.viz, "serving");
        // One shutdown signal, shared by the three gRPC servers.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let signal = move || {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        // Requests are small (a CSR and a token; a name and a context token): a client sending
        // megabytes is refused before the server reads them.
        let services = GrpcServices {
            identity: IdentityServer::from_arc(self.service.clone()).max_decoding_message_size(grpc::MAX_CERTIFY_BYTES),
            destination: grpc::Discovery::destination(self.index.clone()),
            policy: grpc::Discovery::policy(self.index.clone()),
        };
        let tls = self.tls.clone();
        let incoming = move |l: TcpListener, what| accept::incoming(l, GRPC_CAPS, tls.clone(), what);
        let servers = services.serve([self.identity, self.destination, self.policy], incoming, signal);
        tokio::pin!(servers);
        let result = tokio::select! {
            r = &mut servers => r,
            () = shutdown => {
                let _ = stop_tx.send(true);
                // Streams end when their clients go; a client that never does (a proxy on a
                // vanished network) must not keep the control plane from exiting.
                match tokio::time::timeout(SHUTDOWN_GRACE, servers).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(grace = ?SHUTDOWN_GRACE, "gRPC streams still open after the shutdown grace period; exiting anyway");
                        Ok(())
                    }
                }
            }
        };
        for t in tasks {
            t.abort();
        }
        result.map_err(|e| anyhow::anyhow!("gRPC server: {e}"))
    }
}

/// The three gRPC ports' services.
struct GrpcServices {
    identity: linkerd2_proxy_api::identity::identity_server::IdentityServer<identity::Service>,
    destination: grpc::Discovery,
    policy: grpc::Discovery,
}

impl GrpcServices {
    /// Serves identity, destination and policy on their listeners, with connections from
    /// `incoming` (plain TCP or TLS), until `signal` resolves. Every port is bounded: streams per
    /// connection, header size, resets (rapid reset; MadeYouReset), and dead peers are found by
    /// HTTP/2 keep-alive.
    async fn serve<St, Sig>(
        self,
        [identity, destination, policy]: [TcpListener; 3],
        incoming: impl Fn(TcpListener, &'static str) -> St,
        signal: impl Fn() -> Sig,
    ) -> Result<(), tonic::transport::Error>
    where
        St: futures_util::Stream<Item = Result<accept::Conn, std::io::Error>> + Send + 'static,
        Sig: Future<Output = ()> + Send,
    {
        let server = || {
            tonic::transport::Server::builder()
                .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION))
                .http2_max_pending_accept_reset_streams(Some(64))
                .http2_max_local_error_reset_streams(Some(256))
                .http2_max_header_list_size(Some(16 * 1024))
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        };
        tokio::try_join!(
            server().serve_with_incoming_shutdown(self.identity, incoming(identity, "identity"), signal()),
            server().serve_with_incoming_shutdown(self.destination, incoming(destination, "destination"), signal()),
            server().serve_with_incoming_shutdown(self.policy, incoming(policy, "policy"), signal()),
        )
        .map(drop)
    }
}

/// Streams one proxy may have open on one connection: a watch per destination it talks to.
const GRPC_STREAMS_PER_CONNECTION: u32 = 1_000;
