//! `knit-control`: Knit's control plane. Today it serves identity: `Identity.Certify` on 8080
//! (LINKERD-WIRE.md §2), backed by the CA in `knit-identity`, with an admin server on 9990.
//! Destination and policy discovery (8086, 8090) and the Kubernetes sources are the next issues.
//!
//! Like the proxy, a [`Control`] binds first and then runs until its shutdown future completes.

pub mod admin;
pub mod config;
pub mod identity;

use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

pub struct Control {
    config: config::Config,
    identity: TcpListener,
    admin: TcpListener,
    service: Arc<identity::Service>,
}

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub identity: SocketAddr,
    pub admin: SocketAddr,
}

impl Control {
    /// Loads the identity material and binds the listeners: a missing or invalid issuer stops
    /// start-up with the reason, rather than serving failures.
    pub async fn bind(config: config::Config) -> anyhow::Result<Self> {
        let service = Arc::new(identity::Service::load(&config.identity)?);
        let identity = TcpListener::bind(config.identity_addr).await.map_err(|e| anyhow::anyhow!("binding identity on {}: {e}", config.identity_addr))?;
        let admin = TcpListener::bind(config.admin_addr).await.map_err(|e| anyhow::anyhow!("binding admin on {}: {e}", config.admin_addr))?;
        Ok(Self { config, identity, admin, service })
    }

    pub fn addrs(&self) -> Addrs {
        Addrs {
            identity: self.identity.local_addr().expect("bound"),
            admin: self.admin.local_addr().expect("bound"),
        }
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addrs = self.addrs();
        let reload = tokio::spawn(identity::watch_files(self.service.clone(), self.config.identity.clone()));
        let admin = tokio::spawn(admin::serve(self.admin, self.service.clone()));
        tracing::info!(identity = %addrs.identity, admin = %addrs.admin, "serving");
        // One service per port, so tonic's router (and axum behind it) is not needed.
        let svc = linkerd2_proxy_api::identity::identity_server::IdentityServer::from_arc(self.service.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(self.identity).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder().serve_with_incoming_shutdown(svc, incoming, shutdown);
        let result = server.await;
        reload.abort();
        admin.abort();
        result.map_err(|e| anyhow::anyhow!("identity server: {e}"))
    }
}
