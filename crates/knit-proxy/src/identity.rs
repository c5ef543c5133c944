//! The proxy's identity: an ECDSA P-256 key generated in memory (it never leaves the process), a
//! certificate from `Identity.Certify`, and the rustls configurations built from both.
//!
//! The certify loop refreshes at 70% of the certificate's remaining lifetime (Linkerd's rule,
//! clamped to [min, max] refresh), retries failures with jittered backoff while the old
//! certificate stays in use, and rebuilds the TLS configurations when the trust-anchor bundle's
//! contents change (a file rewritten in place, renamed over, or a kubelet `..data` symlink
//! swap), so an anchor rotation needs no restart. When the new bundle no longer holds the
//! anchor the current leaf chains to, it certifies again at once.

use crate::metrics::IdentityMetrics;
use knit_identity::inspect::{pem_certs, CertInfo};
use linkerd2_proxy_api::identity::{identity_client::IdentityClient, CertifyRequest};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

pub const TRANSPORT_ALPN: &[u8] = knit_core::transport_header::ALPN;

#[derive(Clone, Debug, serde::Serialize)]
pub struct IdentityConfig {
    /// This proxy's identity, also its TLS server name.
    pub local_name: String,
    pub trust_anchors: TrustAnchors,
    /// The token presented to Certify, re-read on every call.
    pub token_file: PathBuf,
    pub svc_addr: crate::config::ControlAddr,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub min_refresh: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub max_refresh: Duration,
}

/// Where the trust anchors come from.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustAnchors {
    /// A PEM bundle file, re-read when it changes (local mode: rotation without a restart).
    File(PathBuf),
    /// A PEM bundle given inline (`KNIT_PROXY_IDENTITY_TRUST_ANCHORS`), for clusters that ask
    /// for it (`identity.trustAnchorsInline`); it never changes while the proxy runs.
    Pem(String),
}

impl TrustAnchors {
    fn source(&self) -> String {
        match self {
            TrustAnchors::File(p) => p.display().to_string(),
            TrustAnchors::Pem(_) => "KNIT_PROXY_IDENTITY_TRUST_ANCHORS".to_string(),
        }
    }

    /// The bundle as it is now: a file is read again (through any symlinks, so a kubelet
    /// `..data` swap is seen whole: the old or the new bundle, never a mix).
    pub fn pem(&self) -> Result<std::borrow::Cow<'_, [u8]>, IdentityError> {
        match self {
            TrustAnchors::File(path) => read(path).map(std::borrow::Cow::Owned),
            TrustAnchors::Pem(pem) => Ok(std::borrow::Cow::Borrowed(pem.as_bytes())),
        }
    }
}

/// The material a TLS handshake needs, replaced as a whole on refresh or anchor change.
pub struct Creds {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub roots: Arc<RootCertStore>,
    pub leaf: CertInfo,
    /// Subjects of the anchors in use, for error messages.
    pub anchors: Vec<String>,
}

/// A handle to the current credentials.
#[derive(Clone)]
pub struct Identity {
    pub name: Arc<str>,
    creds: watch::Receiver<Option<Arc<Creds>>>,
}

impl Identity {
    pub fn current(&self) -> Option<Arc<Creds>> {
        self.creds.borrow().clone()
    }

    /// Completes once the first certificate is installed.
    pub async fn ready(&mut self) {
        let _ = self.creds.wait_for(Option::is_some).await;
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    // aws-lc-rs with rustls' `prefer-post-quantum`: X25519MLKEM768 is offered first, X25519 next.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the trust anchors in {0} hold no usable certificate")]
    NoAnchors(String),
    #[error("identity service {addr}: {message}")]
    Certify { addr: crate::config::ControlAddr, message: String },
    #[error("the certificate from the identity service is unusable: {0}")]
    BadCert(String),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read { path: path.display().to_string(), source })
}

/// The anchors in `pem` (read from `source`) as a root store, with their subjects. Also what
/// the control plane's certificate is checked with.
pub fn parse_anchors(pem: &[u8], source: &TrustAnchors) -> Result<(RootCertStore, Vec<String>), IdentityError> {
    let mut store = RootCertStore::empty();
    let mut names = Vec::new();
    for der in pem_certs(&String::from_utf8_lossy(pem)).map_err(|_| IdentityError::NoAnchors(source.source()))? {
        if store.add(CertificateDer::from(der.clone())).is_ok() {
            names.push(CertInfo::from_der(&der).map(|i| i.subject).unwrap_or_default());
        }
    }
    if store.is_empty() {
        return Err(IdentityError::NoAnchors(source.source()));
    }
    Ok((store, names))
}

/// Builds both TLS configurations: TLS 1.3 only, no session resumption, the transport-header
/// ALPN; the server accepts clients without certificates (their connections are labelled
/// unauthenticated) and verifies those that present one against the anchors.
fn build(chain: &[Vec<u8>], key: &PrivatePkcs8KeyDer<'static>, roots: RootCertStore, anchors: Vec<String>) -> Result<Creds, IdentityError> {
    let bad = |e: rustls::Error| IdentityError::BadCert(e.to_string());
    let certs: Vec<CertificateDer<'static>> = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let roots = Arc::new(roots);
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| IdentityError::BadCert(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), PrivateKeyDer::Pkcs8(key.clone_key()))
        .map_err(bad)?;
    server.alpn_protocols = vec![TRANSPORT_ALPN.to_vec()];
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(certs, PrivateKeyDer::Pkcs8(key.clone_key()))
        .map_err(bad)?;
    client.alpn_protocols = vec![TRANSPORT_ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    // Refusals name the expected and the presented identity; built once per credential set.
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| IdentityError::BadCert(e.to_string()))?;
    client.dangerous().set_certificate_verifier(Arc::new(crate::tls::Explaining { inner, anchors: anchors.clone() }));
    let leaf = CertInfo::from_der(&chain[0]).map_err(|e| IdentityError::BadCert(e.to_string()))?;
    Ok(Creds { server: Arc::new(server), client: Arc::new(client), roots, leaf, anchors })
}

/// Checks the issued chain before using it: the leaf names this identity and chains to an anchor.
fn validate(name: &str, chain: &[Vec<u8>], roots: &RootCertStore) -> Result<(), IdentityError> {
    let leaf = CertInfo::from_der(&chain[0]).map_err(|e| IdentityError::BadCert(e.to_string()))?;
    if !leaf.dns_sans.iter().any(|s| s == name) {
        return Err(IdentityError::BadCert(format!("it names {:?}, not {name:?}", leaf.dns_sans)));
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
        .build()
        .map_err(|e| IdentityError::BadCert(e.to_string()))?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| IdentityError::BadCert(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(&CertificateDer::from(chain[0].as_slice()), &intermediates, &server_name, &[], rustls::pki_types::UnixTime::now())
        .map(drop)
        .map_err(|e| IdentityError::BadCert(format!("it does not verify against the trust anchors: {e}")))
}

/// Starts the certify loop; the returned handle is ready once the first certificate arrives.
/// `control_tls`: how the identity service is reached when its address names an identity.
pub fn spawn(cfg: IdentityConfig, control_tls: Option<Arc<crate::control::ControlTls>>, metrics: IdentityMetrics) -> Identity {
    let (tx, rx) = watch::channel(None);
    let name: Arc<str> = cfg.local_name.clone().into();
    tokio::spawn(certify_loop(cfg, control_tls, tx, metrics));
    Identity { name, creds: rx }
}

async fn certify_loop(
    cfg: IdentityConfig,
    control_tls: Option<Arc<crate::control::ControlTls>>,
    tx: watch::Sender<Option<Arc<Creds>>>,
    metrics: IdentityMetrics,
) {
    let local = match knit_identity::csr::generate(&cfg.local_name) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot generate the identity key; the proxy will not become ready");
            return;
        }
    };
    let key = PrivatePkcs8KeyDer::from(local.key.serialize_der());
    let mut chain: Option<(Vec<Vec<u8>>, SystemTime)> = None;
    let mut failures = 0u32;
    // The bundle's bytes when the credentials in use were built (a bundle is a few kilobytes:
    // comparing contents sees every kind of update, where times and sizes can coincide).
    let mut anchors_seen: Option<Vec<u8>> = None;
    loop {
        let result = certify_once(&cfg, control_tls.as_ref(), &local.csr_der).await.and_then(|(issued, expiry)| {
            let pem = cfg.trust_anchors.pem()?.into_owned();
            let (roots, names) = parse_anchors(&pem, &cfg.trust_anchors)?;
            validate(&cfg.local_name, &issued, &roots)?;
            let creds = build(&issued, &key, roots, names)?;
            Ok((issued, expiry, creds, pem))
        });
        let wait = match result {
            Ok((issued, expiry, creds, pem)) => {
                failures = 0;
                anchors_seen = Some(pem);
                tracing::info!(identity = %cfg.local_name, issuer = %creds.leaf.issuer, valid_until = %creds.leaf.not_after, "certified");
                metrics.refreshed(expiry);
                tx.send_replace(Some(Arc::new(creds)));
                chain = Some((issued, expiry));
                refresh_in(expiry, cfg.min_refresh, cfg.max_refresh)
            }
            Err(e) => {
                failures += 1;
                metrics.failed();
                let wait = backoff(failures, chain.as_ref().map(|c| c.1), cfg.min_refresh);
                tracing::warn!(identity = %cfg.local_name, error = %e, retry_in = ?wait, has_certificate = chain.is_some(), "failed to obtain a certificate");
                wait
            }
        };
        // Until the refresh, rebuild the TLS configurations whenever the anchors change.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let tick = tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(tokio::time::Instant::now())));
            tick.await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let Some((issued, _)) = &chain else { continue };
            let pem = match cfg.trust_anchors.pem() {
                Ok(pem) if Some(pem.as_ref()) != anchors_seen.as_deref() => pem.into_owned(),
                Ok(_) => continue,
                Err(e) => {
                    if anchors_seen.take().is_some() {
                        metrics.anchors_reloaded(false);
                        tracing::warn!(error = %e, "the trust anchors cannot be read; keeping the previous ones");
                    }
                    continue;
                }
            };
            anchors_seen = Some(pem.clone());
            match parse_anchors(&pem, &cfg.trust_anchors).and_then(|(roots, names)| {
                let chains = validate(&cfg.local_name, issued, &roots).is_ok();
                build(issued, &key, roots, names).map(|c| (c, chains))
            }) {
                Ok((creds, chains)) => {
                    metrics.anchors_reloaded(true);
                    tracing::info!(anchors = ?creds.anchors, "trust anchors reloaded");
                    let issuer = creds.leaf.issuer.clone();
                    tx.send_replace(Some(Arc::new(creds)));
                    if !chains {
                        tracing::warn!(%issuer, "the current certificate does not chain to the new trust anchors; certifying again now");
                        break;
                    }
                }
                Err(e) => {
                    metrics.anchors_reloaded(false);
                    tracing::warn!(error = %e, "trust anchors changed but cannot be used; keeping the previous ones");
                }
            }
        }
    }
}

async fn certify_once(cfg: &IdentityConfig, tls: Option<&Arc<crate::control::ControlTls>>, csr: &[u8]) -> Result<(Vec<Vec<u8>>, SystemTime), IdentityError> {
    let addr = &cfg.svc_addr;
    let err = |message: String| IdentityError::Certify { addr: addr.clone(), message };
    let token = read(&cfg.token_file)?;
    // A new channel per call, as Linkerd's proxy does: nothing stale survives a failure. Its
    // TLS handshake checks the identity service against the anchors of the moment.
    let channel = crate::control::channel(addr, tls).map_err(|e| err(e.to_string()))?;
    let mut client = IdentityClient::new(channel);
    let req = CertifyRequest { identity: cfg.local_name.clone(), token, certificate_signing_request: csr.to_vec() };
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.certify(req))
        .await
        .map_err(|_| err("no answer within 10s".into()))?
        .map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let until = rsp.valid_until.ok_or_else(|| err("the response has no valid_until".into()))?;
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(until.seconds.max(0) as u64);
    if expiry <= SystemTime::now() {
        return Err(err("the certificate it issued is already expired".into()));
    }
    let mut chain = vec![rsp.leaf_certificate];
    chain.extend(rsp.intermediate_certificates);
    Ok((chain, expiry))
}

/// 70% of the remaining lifetime, within [min, max].
pub fn refresh_in(expiry: SystemTime, min: Duration, max: Duration) -> Duration {
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    left.mul_f64(0.7).clamp(min, max.max(min))
}

/// Exponential from 1 s with ±25% jitter, capped at `min_refresh` and, with a certificate, at a
/// tenth of its remaining lifetime (so several attempts fit before it expires).
fn backoff(failures: u32, expiry: Option<SystemTime>, min_refresh: Duration) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << failures.min(6)).min(min_refresh.max(Duration::from_secs(1)));
    let cap = expiry.and_then(|e| e.duration_since(SystemTime::now()).ok()).map_or(base, |left| base.min(left / 10).max(Duration::from_millis(100)));
    let mut b = [0u8; 1];
    let _ = aws_lc_rs_fill(&mut b);
    cap.mul_f64(0.75 + f64::from(b[0]) / 512.0)
}

fn aws_lc_rs_fill(b: &mut [u8]) -> Result<(), ()> {
    rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(b).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials for `name` from a throwaway CA, as the certify loop builds them.
    fn creds(name: &str, anchor: &knit_identity::create::Credentials) -> Creds {
        let issuer = knit_identity::create::issuer("issuer", Duration::from_secs(86_400), anchor).unwrap();
        let ca = knit_identity::ca::Ca::load(&issuer.cert_pem, &issuer.key_pem, &anchor.cert_pem, Duration::from_secs(3600), Duration::ZERO).unwrap();
        let local = knit_identity::csr::generate(name).unwrap();
        let issued = ca.certify(name, &local.csr_der).unwrap();
        let mut chain = vec![issued.leaf_der];
        chain.extend(issued.intermediates);
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(pem_certs(&anchor.cert_pem).unwrap().remove(0))).unwrap();
        validate(name, &chain, &roots).unwrap();
        build(&chain, &PrivatePkcs8KeyDer::from(local.key.serialize_der()), roots, vec!["root".into()]).unwrap()
    }

    async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>, sni: &str) -> (rustls::NamedGroup, Option<String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let (c, s) = tokio::join!(tokio_rustls::TlsConnector::from(client).connect(name, a), tokio_rustls::TlsAcceptor::from(server).accept(b));
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(TRANSPORT_ALPN));
        let client_id = s.get_ref().1.peer_certificates().and_then(|c| CertInfo::from_der(&c[0]).ok()).map(|i| i.dns_sans[0].clone());
        (c.get_ref().1.negotiated_key_exchange_group().unwrap().name(), client_id)
    }

    #[tokio::test]
    async fn mesh_tls_is_tls13_post_quantum_first_with_x25519_fallback() {
        let anchor = knit_identity::create::trust_anchor("root", Duration::from_secs(86_400)).unwrap();
        let (web, books) = ("web.ns.serviceaccount.identity.knit.cluster.local", "books.ns.serviceaccount.identity.knit.cluster.local");
        let (client, server) = (creds(web, &anchor), creds(books, &anchor));
        let (group, client_id) = handshake(client.client.clone(), server.server.clone(), books).await;
        assert_eq!(group, rustls::NamedGroup::X25519MLKEM768, "the hybrid post-quantum group is preferred");
        assert_eq!(client_id.as_deref(), Some(web), "the server learns the client's identity");
        // A peer that offers only X25519 still connects.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let mut x25519_only = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(client.roots.clone())
            .with_no_client_auth();
        x25519_only.alpn_protocols = vec![TRANSPORT_ALPN.to_vec()];
        let (group, client_id) = handshake(Arc::new(x25519_only), server.server.clone(), books).await;
        assert_eq!(group, rustls::NamedGroup::X25519);
        assert_eq!(client_id, None, "a client without a certificate is accepted, unauthenticated");
    }

    #[test]
    fn refresh_at_70_percent_clamped() {
        let day = SystemTime::now() + Duration::from_secs(86_400);
        let r = refresh_in(day, Duration::from_secs(10), Duration::from_secs(86_400));
        assert!((r.as_secs_f64() - 60_480.0).abs() < 5.0, "{r:?}");
        assert_eq!(refresh_in(SystemTime::now(), Duration::from_secs(10), Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(refresh_in(day, Duration::from_secs(10), Duration::from_secs(100)), Duration::from_secs(100));
    }

    #[test]
    fn backoff_grows_jitters_and_stays_below_the_expiry() {
        let b1 = backoff(1, None, Duration::from_secs(10));
        assert!(b1 >= Duration::from_millis(1500) && b1 <= Duration::from_millis(2500), "{b1:?}");
        let capped = backoff(10, None, Duration::from_secs(10));
        assert!(capped <= Duration::from_millis(12_500), "{capped:?}");
        let near = backoff(10, Some(SystemTime::now() + Duration::from_secs(5)), Duration::from_secs(10));
        assert!(near <= Duration::from_millis(700), "{near:?}");
    }
}
