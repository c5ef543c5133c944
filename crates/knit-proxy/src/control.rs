//! Connections to the control plane (identity, destination, policy): plaintext h2c when it is on
//! loopback (local mode), TLS 1.3 when it is across a network (Kubernetes), with its certificate
//! checked against the mesh's trust anchors and the identity it must present
//! (`KNIT_PROXY_*_SVC_NAME`, as Linkerd's `LINKERD2_PROXY_*_SVC_NAME`). Every new connection
//! reads the trust anchors again ([`ControlTls`]), so that after an anchor rotation the identity,
//! destination and policy channels reconnect under the new bundle without a restart.

use crate::identity::{IdentityError, TrustAnchors};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// A control-plane service: `IP:PORT` or `DNS-NAME:PORT` (resolved again on every connection, so
/// that the control plane's pods may change), and the identity it proves with TLS, if any.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ControlAddr {
    pub addr: String,
    pub tls_name: Option<String>,
}

impl From<SocketAddr> for ControlAddr {
    fn from(a: SocketAddr) -> Self {
        Self { addr: a.to_string(), tls_name: None }
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls_name {
            Some(name) => write!(f, "{} (TLS, {name})", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

/// Client TLS for the control plane, following the trust-anchor bundle: [`Self::config`] reads
/// it again and rebuilds the configuration when its contents changed. A bundle that cannot be
/// read or holds no anchor keeps the previous configuration (and says so at each connection).
pub struct ControlTls {
    anchors: TrustAnchors,
    /// The bundle's bytes and the configuration built from them.
    current: Mutex<(Vec<u8>, Arc<ClientConfig>)>,
}

impl ControlTls {
    /// Reads the bundle once: at start-up, an unusable one is an error.
    pub fn new(anchors: TrustAnchors) -> Result<Self, IdentityError> {
        let pem = anchors.pem()?.into_owned();
        let (roots, _) = crate::identity::parse_anchors(&pem, &anchors)?;
        Ok(Self { current: Mutex::new((pem, client_config(roots))), anchors })
    }

    /// The configuration for a new connection, under the bundle of the moment.
    pub fn config(&self) -> Arc<ClientConfig> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = self.anchors.pem().and_then(|pem| {
            if pem.as_ref() == current.0.as_slice() {
                return Ok(None);
            }
            let (roots, names) = crate::identity::parse_anchors(&pem, &self.anchors)?;
            Ok(Some((pem.into_owned(), roots, names)))
        });
        match fresh {
            Ok(None) => {}
            Ok(Some((pem, roots, names))) => {
                tracing::info!(anchors = ?names, "the control-plane connections use the new trust anchors");
                *current = (pem, client_config(roots));
            }
            Err(e) => tracing::warn!(error = %e, "the control plane is checked with the previous trust anchors"),
        }
        current.1.clone()
    }
}

/// Client TLS for the control plane: TLS 1.3, h2, the trust anchors as roots, no client certificate.
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}: the control plane's TLS name needs the trust anchors (KNIT_PROXY_IDENTITY_TRUST_ANCHORS[_FILE])")]
    NoAnchors(String),
    #[error("{0}: {1:?} is not a TLS server name")]
    BadName(String, String),
}

/// A lazily connecting channel: it dials on first use and again after the connection is lost.
pub fn channel(addr: &ControlAddr, tls: Option<&Arc<ControlTls>>) -> Result<Channel, ChannelError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", addr.addr))
        .expect("an http URI built from a validated HOST:PORT is valid")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3));
    match tls_of(addr, tls)? {
        None => Ok(endpoint.connect_lazy()),
        Some((config, name)) => Ok(tls_channel(&addr.addr, name, ClientTls::Control(config), "the control plane")),
    }
}

/// The TLS configuration and server name `addr` is reached with, if it names an identity.
fn tls_of(addr: &ControlAddr, tls: Option<&Arc<ControlTls>>) -> Result<Option<(Arc<ControlTls>, ServerName<'static>)>, ChannelError> {
    let Some(name) = &addr.tls_name else { return Ok(None) };
    let config = tls.ok_or_else(|| ChannelError::NoAnchors(addr.addr.clone()))?.clone();
    let server_name = ServerName::try_from(name.clone()).map_err(|_| ChannelError::BadName(addr.addr.clone(), name.clone()))?;
    Ok(Some((config, server_name)))
}

/// Whether [`channel`] will accept `addr` with `tls`, without building it.
pub fn check(addr: &ControlAddr, tls: Option<&Arc<ControlTls>>) -> Result<(), ChannelError> {
    tls_of(addr, tls).map(drop)
}

/// Where a connection's client TLS configuration comes from, read again for each connection.
#[derive(Clone)]
pub enum ClientTls {
    /// The control plane's: the trust anchors of the moment, no client certificate.
    Control(Arc<ControlTls>),
    /// Mesh TLS with this proxy's current certificate and no ALPN, so that a meshed service's
    /// proxy takes the connection for its original destination (the trace collector's).
    Mesh(crate::identity::Identity),
}

impl ClientTls {
    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        match self {
            ClientTls::Control(c) => Ok(c.config()),
            ClientTls::Mesh(identity) => {
                let creds = identity.current().ok_or("this proxy has no certificate yet")?;
                let mut config = (*creds.client).clone();
                config.alpn_protocols.clear();
                Ok(Arc::new(config))
            }
        }
    }
}

/// A lazily connecting channel to `addr` over TLS, where the server must prove `name`; `what`
/// names the service in errors ("the control plane", "the trace collector").
pub fn tls_channel(addr: &str, name: ServerName<'static>, tls: ClientTls, what: &'static str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("an http URI built from a validated HOST:PORT is valid")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3));
    endpoint.connect_with_connector_lazy(TlsConnect { tls, name, addr: addr.to_string(), what })
}

/// Dials a service (its name resolved again on each connection) and completes the TLS
/// handshake, for tonic's channel.
#[derive(Clone)]
struct TlsConnect {
    tls: ClientTls,
    name: ServerName<'static>,
    addr: String,
    what: &'static str,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {} at {}", this.what, this.addr));
            let config = this.tls.config().map_err(|e| std::io::Error::other(format!("{} at {}: {e}", this.what, this.addr)))?;
            let tcp = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(this.addr.as_str())).await.map_err(|_| timed_out())??;
            tcp.set_nodelay(true)?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(this.name.clone(), tcp);
            let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| std::io::Error::new(e.kind(), format!("TLS to {} at {} (expected identity {}): {e}", this.what, this.addr, this.name.to_str())))?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
