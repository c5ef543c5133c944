//! A proxy's identity material: an ECDSA P-256 key generated in memory (it never leaves the
//! process) and a CSR with exactly one DNS SAN, the identity, as Linkerd's proxy sends.

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

pub struct LocalIdentity {
    pub name: String,
    pub key: KeyPair,
    pub csr_der: Vec<u8>,
}

pub fn generate(identity: &str) -> Result<LocalIdentity, rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![identity.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, identity);
    let csr = params.serialize_request(&key)?;
    Ok(LocalIdentity { name: identity.to_string(), csr_der: csr.der().to_vec(), key })
}
