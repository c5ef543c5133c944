//! Creating trust anchors and issuers. The documented layout follows Linkerd's: a long-lived root
//! (the trust anchor) signs a shorter-lived issuer, which signs proxies' 24-hour leaves.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
use std::time::Duration;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn ca_params(common_name: &str, lifetime: Duration, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    // A small backdate absorbs clock skew between the machine that creates and the ones that check.
    p.not_before = crate::now() - ::time::Duration::minutes(5);
    p.not_after = crate::now() + lifetime;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p
}

/// A self-signed root, e.g. `root.knit.cluster.local`, valid for `lifetime`.
pub fn trust_anchor(common_name: &str, lifetime: Duration) -> Result<Credentials, CreateError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(common_name, lifetime, 1).self_signed(&key)?;
    Ok(Credentials { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// An intermediate CA signed by `anchor`, e.g. `identity.knit.cluster.local`, valid for `lifetime`
/// (never past the anchor).
pub fn issuer(common_name: &str, lifetime: Duration, anchor: &Credentials) -> Result<Credentials, CreateError> {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem)?;
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(common_name, lifetime, 0);
    if let Ok(info) = crate::inspect::CertInfo::from_pem(&anchor.cert_pem) {
        params.not_after = params.not_after.min(info.not_after);
    }
    let cert = params.signed_by(&key, &anchor_issuer)?;
    Ok(Credentials { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A TLS server certificate for `dns_names`, signed by `ca`: the injector webhook's serving
/// certificate, which the API server checks against the `caBundle` of the webhook configuration.
pub fn server(dns_names: &[String], lifetime: Duration, ca: &Credentials) -> Result<Credentials, CreateError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    params.not_before = crate::now() - ::time::Duration::minutes(5);
    params.not_after = crate::now() + lifetime;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca_issuer)?;
    Ok(Credentials { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}
