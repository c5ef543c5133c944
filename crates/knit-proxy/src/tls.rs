//! Mesh TLS on the wire: the client side of the hop to a peer proxy (SNI = the peer's identity,
//! the peer's certificate must carry exactly that identity), the server side on the inbound port
//! (terminated only when the SNI is this proxy's own name), and failures explained.

use crate::{
    error::ProxyError,
    identity::{Creds, Identity, TRANSPORT_ALPN},
    metrics::{Direction, IdentityMetrics},
};
use knit_identity::inspect::CertInfo;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wraps the WebPKI verifier so that a refused certificate is described in full: who was
/// expected, what was presented, by whom, for when, and against which anchors.
#[derive(Debug)]
pub(crate) struct Explaining {
    pub(crate) inner: Arc<WebPkiServerVerifier>,
    pub(crate) anchors: Vec<String>,
}

impl ServerCertVerifier for Explaining {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| {
            let presented = match CertInfo::from_der(end_entity) {
                Ok(i) => format!("presented {:?} issued by {} valid {} to {}", i.dns_sans, i.issuer, i.not_before, i.not_after),
                Err(_) => "presented an unparsable certificate".into(),
            };
            let text = format!("expected identity {}, {presented}; trust anchors: {:?}; {e}", server_name.to_str(), self.anchors);
            // rustls' typed reason travels inside, for `reason`.
            let reason = match e {
                rustls::Error::InvalidCertificate(c) => Some(c),
                _ => None,
            };
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(Explained { reason, text }))))
        })
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Logs each (peer, reason) failure once, so a broken peer does not flood the log. The set is
/// bounded: past 4,096 entries it starts over.
#[derive(Default)]
pub struct LogOnce(Mutex<HashSet<(String, &'static str)>>);

impl LogOnce {
    pub fn first(&self, peer: String, reason: &'static str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 4096 {
            seen.clear();
        }
        seen.insert((peer, reason))
    }
}

/// A refused peer certificate, explained in full, with rustls' own reason kept.
pub(crate) struct Explained {
    reason: Option<rustls::CertificateError>,
    text: String,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

// rustls shows its `Other` certificate errors with `Debug`: the explanation, not the struct.
impl std::fmt::Debug for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Explained {}

/// A failed handshake's message: the explanation of a refused certificate, else rustls' own.
fn describe(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => match o.0.downcast_ref::<Explained>() {
            Some(x) => format!("invalid peer certificate: {}", x.text),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// The `reason` label for a failed handshake, from rustls' typed error (tokio-rustls carries it
/// inside the I/O error): a certificate this side refused, or the alert the peer sent when it
/// refused this side's.
fn reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => certificate_reason(c),
        Some(rustls::Error::AlertReceived(alert)) => match alert {
            rustls::AlertDescription::UnknownCA => "untrusted_issuer",
            rustls::AlertDescription::CertificateExpired => "expired",
            rustls::AlertDescription::BadCertificate | rustls::AlertDescription::CertificateUnknown => "peer_refused_certificate",
            _ => "other",
        },
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        _ => "other",
    }
}

fn certificate_reason(c: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as C;
    match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => "wrong_identity",
        C::UnknownIssuer | C::BadSignature => "untrusted_issuer",
        C::Expired | C::ExpiredContext { .. } => "expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
        C::Other(other) => other.0.downcast_ref::<Explained>().and_then(|x| x.reason.as_ref()).map_or("other", certificate_reason),
        _ => "other",
    }
}

/// Opens mesh TLS to a peer proxy that must prove `expected`, offering the transport-header ALPN.
pub async fn connect<I>(
    io: I,
    identity: &Identity,
    expected: &str,
    addr: SocketAddr,
    metrics: &IdentityMetrics,
    log: &LogOnce,
) -> Result<tokio_rustls::client::TlsStream<I>, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let creds = identity.current().ok_or(ProxyError::NoIdentity)?;
    let name = ServerName::try_from(expected.to_string()).map_err(|_| ProxyError::Tls {
        addr,
        expected: expected.into(),
        message: "not a valid server name".into(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(creds.client.clone());
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, io)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    };
    let tls = result.map_err(|e| {
        let why = reason(&e);
        metrics.handshake_failed(Direction::Outbound, why);
        if log.first(format!("{addr}/{expected}"), why) {
            tracing::warn!(peer = %addr, expected, reason = why, error = %e, "mesh TLS handshake failed");
        }
        ProxyError::Tls { addr, expected: expected.into(), message: describe(&e) }
    })?;
    if tls.get_ref().1.alpn_protocol() != Some(TRANSPORT_ALPN) {
        metrics.handshake_failed(Direction::Outbound, "no_transport_alpn");
        return Err(ProxyError::Tls { addr, expected: expected.into(), message: "the peer did not negotiate transport.l5d.io/v1".into() });
    }
    Ok(tls)
}

/// Terminates mesh TLS on the inbound side. Returns the stream, the client's identity (the first
/// DNS SAN of its certificate, if it sent one) and whether the transport header was negotiated.
pub async fn accept<I>(
    io: I,
    creds: Arc<Creds>,
    peer: SocketAddr,
    metrics: &IdentityMetrics,
    log: &LogOnce,
) -> Result<(tokio_rustls::server::TlsStream<I>, Option<String>, bool), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.server.clone());
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    };
    let tls = result.map_err(|e| {
        let why = reason(&e);
        metrics.handshake_failed(Direction::Inbound, why);
        if log.first(peer.ip().to_string(), why) {
            tracing::warn!(%peer, local = %creds.leaf.dns_sans.join(","), reason = why, anchors = ?creds.anchors, error = %e, "inbound mesh TLS handshake failed");
        }
        ProxyError::Tls { addr: peer, expected: creds.leaf.dns_sans.join(","), message: e.to_string() }
    })?;
    let conn = tls.get_ref().1;
    let client_id = conn.peer_certificates().and_then(|c| c.first()).and_then(|c| CertInfo::from_der(c).ok()).and_then(|i| i.dns_sans.into_iter().next());
    let transport = conn.alpn_protocol() == Some(TRANSPORT_ALPN);
    Ok((tls, client_id, transport))
}
