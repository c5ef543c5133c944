use super::*;
use crate::{create, csr};
use rcgen::PKCS_ECDSA_P384_SHA384;

const ID: &str = "web.default.serviceaccount.identity.knit.cluster.local";
const DAY: Duration = Duration::from_secs(86_400);

fn pki() -> (create::Credentials, create::Credentials) {
    let anchor = create::trust_anchor("root.knit.cluster.local", 3650 * DAY).unwrap();
    let issuer = create::issuer("identity.knit.cluster.local", 365 * DAY, &anchor).unwrap();
    (anchor, issuer)
}

fn ca() -> (Ca, create::Credentials) {
    let (anchor, issuer) = pki();
    (Ca::load(&issuer.cert_pem, &issuer.key_pem, &anchor.cert_pem, DAY, Duration::from_secs(20)).unwrap(), anchor)
}

fn csr_with(key_alg: &'static rcgen::SignatureAlgorithm, sans: &[&str], cn: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(key_alg).unwrap();
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().der().to_vec()
}

#[test]
fn signs_a_24h_leaf_for_the_requested_identity() {
    let (ca, _) = ca();
    let local = csr::generate(ID).unwrap();
    let issued = ca.certify(ID, &local.csr_der).unwrap();
    let leaf = CertInfo::from_der(&issued.leaf_der).unwrap();
    assert_eq!(leaf.dns_sans, vec![ID.to_string()]);
    assert!(!leaf.is_ca);
    assert_eq!(leaf.key, "ECDSA P-256");
    assert_eq!(leaf.issuer, ca.issuer_info.subject);
    let life = leaf.not_after - leaf.not_before;
    assert_eq!(life.whole_seconds(), 86_400 + 40, "24 h plus the skew on both ends");
    assert_eq!(issued.valid_until.unix_timestamp(), leaf.not_after.unix_timestamp());
    assert_eq!(issued.intermediates.len(), 1);
    // The leaf is signed by the issuer, and carries the CSR's public key.
    let (_, leaf_cert) = X509Certificate::from_der(&issued.leaf_der).unwrap();
    let (_, issuer_cert) = X509Certificate::from_der(&issued.intermediates[0]).unwrap();
    leaf_cert.verify_signature(Some(issuer_cert.public_key())).unwrap();
    assert_eq!(leaf_cert.public_key().subject_public_key.data.as_ref(), local.key.public_key_raw());
    let eku = leaf_cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
}

#[test]
fn accepts_pem_requests() {
    let (ca, _) = ca();
    let local = csr::generate(ID).unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &local.csr_der)
    );
    assert!(ca.certify(ID, pem.as_bytes()).is_ok());
}

#[test]
fn refuses_bad_requests_with_reasons() {
    let (ca, _) = ca();
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let extra = ca.certify(ID, &csr_with(p256, &[ID, "admin.knit.cluster.local"], ID)).unwrap_err();
    assert!(matches!(&extra, CertifyError::SanMismatch { found, .. } if found.len() == 2), "{extra}");
    assert_eq!(extra.reason(), "csr_identity");
    let other = ca.certify(ID, &csr_with(p256, &["db.default.serviceaccount.identity.knit.cluster.local"], "")).unwrap_err();
    assert!(matches!(other, CertifyError::SanMismatch { .. }));
    let ip = ca.certify(ID, &csr_with(p256, &[ID, "10.0.0.1"], ID)).unwrap_err();
    assert!(matches!(ip, CertifyError::NonDnsSan(_)), "{ip}");
    let cn = ca.certify(ID, &csr_with(p256, &[ID], "someone-else")).unwrap_err();
    assert!(matches!(cn, CertifyError::CommonName { .. }));
    let p384 = ca.certify(ID, &csr_with(&PKCS_ECDSA_P384_SHA384, &[ID], ID)).unwrap_err();
    assert_eq!(p384, CertifyError::KeyType("ECDSA P-384".into()));
    assert_eq!(p384.reason(), "key_type");
    assert_eq!(ca.certify(ID, b"not a csr").unwrap_err(), CertifyError::CsrMalformed);
    let mut tampered = csr::generate(ID).unwrap().csr_der;
    let n = tampered.len();
    tampered[n - 5] ^= 0xff; // inside the signature
    assert!(matches!(ca.certify(ID, &tampered).unwrap_err(), CertifyError::CsrSignature | CertifyError::CsrMalformed));
}

#[test]
fn loading_checks_the_issuer() {
    let (anchor, issuer) = pki();
    let (other_anchor, other_issuer) = pki();
    let untrusted = Ca::load(&other_issuer.cert_pem, &other_issuer.key_pem, &anchor.cert_pem, DAY, Duration::ZERO).err().unwrap();
    assert!(matches!(untrusted, LoadError::Untrusted { .. }), "{untrusted}");
    let mismatch = Ca::load(&issuer.cert_pem, &other_issuer.key_pem, &anchor.cert_pem, DAY, Duration::ZERO).err().unwrap();
    assert!(matches!(mismatch, LoadError::KeyMismatch { .. }), "{mismatch}");
    // A bundle holding both anchors (mid-rotation) trusts both issuers.
    let bundle = format!("{}{}", anchor.cert_pem, other_anchor.cert_pem);
    assert!(Ca::load(&issuer.cert_pem, &issuer.key_pem, &bundle, DAY, Duration::ZERO).is_ok());
    assert!(Ca::load(&other_issuer.cert_pem, &other_issuer.key_pem, &bundle, DAY, Duration::ZERO).is_ok());
    // An anchor may issue directly (Linkerd's generated installs do).
    assert!(Ca::load(&anchor.cert_pem, &anchor.key_pem, &anchor.cert_pem, DAY, Duration::ZERO).is_ok());
    assert!(matches!(Ca::load(&issuer.cert_pem, &issuer.key_pem, "", DAY, Duration::ZERO), Err(LoadError::NoAnchors)));
}

#[test]
fn an_expired_issuer_signs_nothing() {
    let (anchor, _) = pki();
    let anchor_key = KeyPair::from_pem(&anchor.key_pem).unwrap();
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = crate::now() - ::time::Duration::days(2);
    p.not_after = crate::now() - ::time::Duration::days(1);
    let cert = p.signed_by(&key, &anchor_issuer).unwrap();
    let ca = Ca::load(&cert.pem(), &key.serialize_pem(), &anchor.cert_pem, DAY, Duration::ZERO).unwrap();
    let e = ca.certify(ID, &csr::generate(ID).unwrap().csr_der).unwrap_err();
    assert!(matches!(e, CertifyError::IssuerExpired(_)));
    assert!(e.to_string().contains("replace the issuer"), "{e}");
}
