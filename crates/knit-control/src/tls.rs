//! TLS on the control plane's gRPC ports (identity 8080, destination 8086, policy 8090), for a
//! cluster, where proxies reach them across the pod network with ServiceAccount tokens in hand.
//!
//! The control plane certifies itself: its own CA signs a leaf for its identity
//! (`knit-control.NS.serviceaccount.identity.NS.DOMAIN`), renewed at half its lifetime and at
//! once when the issuer changes (so that an anchor rotation never leaves it on a leaf under an
//! anchor that is leaving the bundle), so proxies
//! check it against the trust anchors they already have and the name they are given
//! (`KNIT_PROXY_*_SVC_NAME`), as Linkerd's proxies check its control plane. In local mode the
//! ports stay plaintext on loopback.

use crate::identity::Service;
use rustls::{
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

/// The control plane's current serving certificate.
#[derive(Debug)]
pub struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A leaf for `name` from the control plane's own CA, and when to renew it.
pub(crate) fn issue(service: &Service, name: &str) -> anyhow::Result<(Arc<CertifiedKey>, Duration)> {
    let local = knit_identity::csr::generate(name)?;
    let issued = service.ca().certify(name, &local.csr_der).map_err(|e| anyhow::anyhow!("certifying the control plane as {name}: {e}"))?;
    let mut chain = vec![CertificateDer::from(issued.leaf_der)];
    chain.extend(issued.intermediates.into_iter().map(CertificateDer::from));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(local.key.serialize_der()));
    let signing = aws_lc_rs::sign::any_supported_type(&key).map_err(|e| anyhow::anyhow!("the control plane's key: {e}"))?;
    let left = (issued.valid_until - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::from_secs(60));
    Ok((Arc::new(CertifiedKey::new(chain, signing)), left / 2))
}

/// The serving configuration (h2 only: every port is gRPC) and the task that keeps its
/// certificate fresh.
pub fn serve_config(service: Arc<Service>, name: String) -> anyhow::Result<(Arc<rustls::ServerConfig>, impl std::future::Future<Output = ()>)> {
    serve_config_with(service, name, false)
}

/// As [`serve_config`]; with `mtls`, clients must present a certificate under the trust anchors.
/// The anchors are read once: a new bundle takes a restart.
pub fn serve_config_with(
    service: Arc<Service>,
    name: String,
    mtls: bool,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, impl std::future::Future<Output = ()>)> {
    let (first, mut renew_in) = issue(&service, &name)?;
    let resolver = Arc::new(Resolver(RwLock::new(first)));
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow::anyhow!("control-plane TLS: {e}"))?;
    let builder = if mtls {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&service)?), provider)
            .build()
            .map_err(|e| anyhow::anyhow!("client verification: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut reloads = service.reloads();
    let renew = async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(renew_in) => {}
                changed = reloads.changed() => if changed.is_err() { std::future::pending::<()>().await },
            }
            renew_in = match issue(&service, &name) {
                Ok((key, next)) => {
                    *resolver.0.write().unwrap_or_else(|p| p.into_inner()) = key;
                    tracing::info!(identity = %name, "control-plane certificate renewed");
                    next
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the control plane's certificate; retrying in 1 minute");
                    Duration::from_secs(60)
                }
            };
        }
    };
    Ok((Arc::new(config), renew))
}

/// A client certificate for the control plane's own identity, issued by its CA and renewed at
/// half its life, with the trust anchors as roots: what it dials other mesh parties with (a
/// proxy's tap port, a linked cluster's control plane).
pub struct ClientTls {
    service: Arc<Service>,
    identity: String,
    current: std::sync::Mutex<Option<(Arc<rustls::ClientConfig>, std::time::Instant)>>,
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientTls {
    pub fn new(service: Arc<Service>, identity: String) -> Self {
        Self { service, identity, current: std::sync::Mutex::new(None) }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, renew_at)) = current.as_ref() {
            if std::time::Instant::now() < *renew_at {
                return Ok(c.clone());
            }
        }
        let (key, renew_in) = issue(&self.service, &self.identity)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| anyhow::anyhow!("client TLS: {e}"))?
            .with_root_certificates(roots(&self.service)?)
            .with_client_cert_resolver(Arc::new(OneCert(key)));
        let config = Arc::new(config);
        *current = Some((config.clone(), std::time::Instant::now() + renew_in));
        Ok(config)
    }
}

/// The trust anchors, as rustls roots.
fn roots(service: &Service) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for der in &service.ca().anchors_der {
        roots.add(der.clone().into()).map_err(|e| anyhow::anyhow!("a trust anchor: {e}"))?;
    }
    Ok(roots)
}
