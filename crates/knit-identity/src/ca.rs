//! The CA behind `Identity.Certify`: validate a proxy's CSR, sign its leaf with the issuer, hand
//! back the leaf, the chain up to (not including) the trust anchor, and its expiry.
//!
//! Validation follows Linkerd's identity controller (LINKERD-WIRE.md §2.4): exactly one DNS SAN,
//! equal to the requested identity; CN empty or equal; no other SANs; an ECDSA P-256 key. The
//! leaf never takes extensions from the CSR: Knit decides them.

use crate::inspect::{pem_certs, CertInfo};
use ::time::OffsetDateTime;
use rcgen::{CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber};
use std::time::Duration;
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    prelude::*,
};

/// What Certify hands back.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf_der: Vec<u8>,
    /// The issuer first, then any chain bundled with it, ordered towards the root.
    pub intermediates: Vec<Vec<u8>>,
    pub valid_until: OffsetDateTime,
    /// SHA-256 of the requester's public key (DER SubjectPublicKeyInfo): one per proxy, the same
    /// across its refreshes, since a proxy keeps its key for its lifetime.
    pub key_sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertifyError {
    #[error("the certificate signing request is not a DER (or PEM) PKCS#10 request")]
    CsrMalformed,
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    #[error("the request must name exactly one DNS SAN, {expected:?}; it names {found:?}")]
    SanMismatch { expected: String, found: Vec<String> },
    #[error("the request carries SANs other than DNS names ({0:?}); identities are DNS names only")]
    NonDnsSan(Vec<String>),
    #[error("the request's common name {found:?} is neither empty nor the identity {expected:?}")]
    CommonName { expected: String, found: String },
    #[error("the request's key is {0}; Knit issues certificates for ECDSA P-256 keys only")]
    KeyType(String),
    #[error("the issuer certificate expired at {0}; replace the issuer (knit identity issuer) before proxies' certificates run out")]
    IssuerExpired(OffsetDateTime),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl CertifyError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CsrMalformed | Self::CsrSignature => "csr_invalid",
            Self::SanMismatch { .. } | Self::NonDnsSan(_) | Self::CommonName { .. } => "csr_identity",
            Self::KeyType(_) => "key_type",
            Self::IssuerExpired(_) => "issuer_expired",
            Self::Sign(_) => "sign",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the issuer certificate file holds no certificate: {0}")]
    NoCert(String),
    #[error("the issuer key is not a PEM private key: {0}")]
    Key(String),
    #[error("the issuer certificate is not a CA certificate (basicConstraints CA:TRUE is required)")]
    NotCa,
    #[error("the issuer key does not belong to the issuer certificate ({subject})")]
    KeyMismatch { subject: String },
    #[error("the trust anchors bundle holds no certificate")]
    NoAnchors,
    #[error("the issuer {subject} (issued by {issuer}) does not chain to any trust anchor in the bundle ({anchors})")]
    Untrusted { subject: String, issuer: String, anchors: String },
    #[error("{0}")]
    Parse(String),
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub issuer_info: CertInfo,
    chain: Vec<Vec<u8>>,
    pub anchors: Vec<CertInfo>,
    /// The trust anchors as they were loaded (DER), for building root stores.
    pub anchors_der: Vec<Vec<u8>>,
    /// The anchor (index into `anchors`) the issuer chains to: the one its leaves depend on.
    pub issuer_anchor: usize,
    pub lifetime: Duration,
    pub skew: Duration,
}

impl Ca {
    /// Loads an issuer (certificate PEM, optionally followed by its chain, and key PEM) and checks
    /// it against the trust anchors.
    pub fn load(cert_pem: &str, key_pem: &str, anchors_pem: &str, lifetime: Duration, skew: Duration) -> Result<Self, LoadError> {
        let chain = pem_certs(cert_pem).map_err(LoadError::NoCert)?;
        let issuer_der = chain.first().ok_or_else(|| LoadError::NoCert("no CERTIFICATE block".into()))?;
        let (_, issuer_cert) = X509Certificate::from_der(issuer_der).map_err(|e| LoadError::Parse(e.to_string()))?;
        if !issuer_cert.is_ca() {
            return Err(LoadError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| LoadError::Key(e.to_string()))?;
        let subject = issuer_cert.subject().to_string();
        if key.public_key_raw() != issuer_cert.public_key().subject_public_key.data.as_ref() {
            return Err(LoadError::KeyMismatch { subject });
        }
        let anchors = pem_certs(anchors_pem).map_err(LoadError::Parse)?;
        if anchors.is_empty() {
            return Err(LoadError::NoAnchors);
        }
        let Some(issuer_anchor) = chains_to(&issuer_cert, &chain[1..], &anchors) else {
            let names = anchors.iter().filter_map(|a| CertInfo::from_der(a).ok()).map(|i| i.subject).collect::<Vec<_>>().join("; ");
            return Err(LoadError::Untrusted { subject, issuer: issuer_cert.issuer().to_string(), anchors: names });
        };
        let issuer_info = CertInfo::from_der(issuer_der).map_err(|e| LoadError::Parse(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der.clone().into(), key).map_err(|e| LoadError::Parse(e.to_string()))?;
        let anchors_der = anchors.clone();
        // Every anchor parsed, so that `anchors`, `anchors_der` and `issuer_anchor` agree.
        let anchors = anchors.iter().map(|a| CertInfo::from_der(a)).collect::<Result<_, _>>().map_err(|e| LoadError::Parse(format!("a trust anchor: {e}")))?;
        Ok(Self { issuer, issuer_info, chain, anchors, anchors_der, issuer_anchor, lifetime, skew })
    }

    /// Validates `csr` (DER, or PEM) for `identity` and signs a leaf for it.
    pub fn certify(&self, identity: &str, csr: &[u8]) -> Result<Issued, CertifyError> {
        let now = crate::now();
        if self.issuer_info.not_after <= now {
            return Err(CertifyError::IssuerExpired(self.issuer_info.not_after));
        }
        let der = csr_der(csr)?;
        let key_sha256 = validate_csr(identity, &der)?;
        let parsed = CertificateSigningRequestParams::from_der(&der.clone().into()).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CertifyError::CsrSignature,
            other => CertifyError::Sign(format!("reading the request: {other}")),
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.subject_alt_names = vec![SanType::DnsName(identity.try_into().map_err(|e: rcgen::Error| CertifyError::Sign(e.to_string()))?)];
        let skew = ::time::Duration::try_from(self.skew).unwrap_or(::time::Duration::ZERO);
        let lifetime = ::time::Duration::try_from(self.lifetime).unwrap_or(::time::Duration::DAY);
        params.not_before = now - skew;
        // Never past the issuer: a leaf outliving its issuer would fail verification early.
        params.not_after = (now + lifetime + skew).min(self.issuer_info.not_after);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| CertifyError::Sign("no randomness for the serial".into()))?;
        serial[0] &= 0x7f; // positive
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let leaf = params.signed_by(&parsed.public_key, &self.issuer).map_err(|e| CertifyError::Sign(e.to_string()))?;
        Ok(Issued { leaf_der: leaf.der().to_vec(), intermediates: self.chain.clone(), valid_until: params.not_after, key_sha256 })
    }
}

fn csr_der(csr: &[u8]) -> Result<Vec<u8>, CertifyError> {
    if csr.starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr).map_err(|_| CertifyError::CsrMalformed)?;
        return Ok(pem.contents);
    }
    Ok(csr.to_vec())
}

/// Checks the request and returns the SHA-256 of its public key.
fn validate_csr(identity: &str, der: &[u8]) -> Result<[u8; 32], CertifyError> {
    let (_, req) = X509CertificationRequest::from_der(der).map_err(|_| CertifyError::CsrMalformed)?;
    req.verify_signature().map_err(|_| CertifyError::CsrSignature)?;
    let info = &req.certification_request_info;
    let key = crate::inspect::key_name_of(&info.subject_pki);
    if key != "ECDSA P-256" {
        return Err(CertifyError::KeyType(key));
    }
    let (mut dns, mut other) = (Vec::new(), Vec::new());
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    n => other.push(n.to_string()),
                }
            }
        }
    }
    if !other.is_empty() {
        return Err(CertifyError::NonDnsSan(other));
    }
    if dns.len() != 1 || dns[0] != identity {
        return Err(CertifyError::SanMismatch { expected: identity.to_string(), found: dns });
    }
    if let Some(cn) = info.subject.iter_common_name().next().and_then(|c| c.as_str().ok()) {
        if !cn.is_empty() && cn != identity {
            return Err(CertifyError::CommonName { expected: identity.to_string(), found: cn.to_string() });
        }
    }
    Ok(crate::inspect::sha256(info.subject_pki.raw))
}

/// The anchor (index into `anchors`, DER) that `cert` (DER) is, or is signed by, directly or
/// through `chain`: which anchor a certificate depends on.
pub fn anchor_of(cert: &[u8], chain: &[Vec<u8>], anchors: &[Vec<u8>]) -> Option<usize> {
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    chains_to(&cert, chain, anchors)
}

/// The anchor `cert` is, or is signed by (directly or through `chain`).
fn chains_to(cert: &X509Certificate<'_>, chain: &[Vec<u8>], anchors: &[Vec<u8>]) -> Option<usize> {
    fn parse(d: &[u8]) -> Option<X509Certificate<'_>> {
        X509Certificate::from_der(d).ok().map(|(_, c)| c)
    }
    // Anchors keep their index; one that does not parse is skipped.
    let anchor_certs: Vec<(usize, X509Certificate<'_>)> = anchors.iter().enumerate().filter_map(|(i, d)| Some((i, parse(d)?))).collect();
    let chain_certs: Vec<X509Certificate<'_>> = chain.iter().filter_map(|d| parse(d)).collect();
    let signed_by = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
        child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    let mut current = cert.clone();
    for _ in 0..=chain_certs.len() {
        let found = anchor_certs.iter().find(|(_, a)| a.tbs_certificate.as_ref() == current.tbs_certificate.as_ref() || signed_by(&current, a));
        if let Some((i, _)) = found {
            return Some(*i);
        }
        current = chain_certs.iter().find(|p| signed_by(&current, p))?.clone();
    }
    None
}

#[cfg(test)]
mod tests;
