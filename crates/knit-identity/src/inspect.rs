//! Certificates in human terms: what `knit identity show` prints, what TLS failures log, what
//! `knit check` judges.

use ::time::OffsetDateTime;
use std::fmt;
use x509_parser::{extensions::GeneralName, prelude::*};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub dns_sans: Vec<String>,
    /// SANs of other kinds (IP, URI, email), rendered.
    pub other_sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, InspectError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| InspectError::Der(e.to_string()))?;
        let mut dns_sans = Vec::new();
        let mut other_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_sans.push(d.to_string()),
                    other => other_sans.push(other.to_string()),
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            dns_sans,
            other_sans,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            is_ca: cert.is_ca(),
            key: key_name_of(cert.public_key()),
        })
    }

    /// The first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, InspectError> {
        let der = pem_certs(pem).map_err(InspectError::Pem)?.into_iter().next().ok_or_else(|| InspectError::Pem("no CERTIFICATE block".into()))?;
        Self::from_der(&der)
    }

    pub fn expires_in(&self) -> ::time::Duration {
        self.not_after - crate::now()
    }
}

/// The subject's first common name, if the certificate parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| e.to_string())?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Ok(out)
}

pub(crate) fn key_name_of(spki: &SubjectPublicKeyInfo<'_>) -> String {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(p)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve.map(|o| o.to_id_string()).as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".into(),
                Some("1.3.132.0.34") => "ECDSA P-384".into(),
                Some(other) => format!("ECDSA (curve {other})"),
                None => format!("ECDSA ({} bytes)", p.data().len()),
            }
        }
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA {} bits", r.key_size()),
        Ok(_) => spki.algorithm.algorithm.to_id_string(),
        Err(_) => "unknown".into(),
    }
}

fn date(t: OffsetDateTime) -> String {
    let f = ::time::format_description::well_known::Rfc3339;
    t.format(&f).unwrap_or_else(|_| t.to_string())
}

/// A human description of how far away `t` is: "in 23h 59m", "2d 3h ago".
pub fn relative(t: OffsetDateTime) -> String {
    let d = t - crate::now();
    let (past, d) = if d.is_negative() { (true, -d) } else { (false, d) };
    let (days, hours, mins) = (d.whole_days(), d.whole_hours() % 24, d.whole_minutes() % 60);
    let span = if days > 0 { format!("{days}d {hours}h") } else { format!("{hours}h {mins}m") };
    if past {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "issuer:      {}", self.issuer)?;
        writeln!(f, "kind:        {}", if self.is_ca { "CA certificate" } else { "leaf certificate" })?;
        writeln!(f, "key:         {}", self.key)?;
        if !self.dns_sans.is_empty() || !self.other_sans.is_empty() {
            writeln!(f, "names:       {}", self.dns_sans.iter().chain(&self.other_sans).cloned().collect::<Vec<_>>().join(", "))?;
        }
        writeln!(f, "valid from:  {} ({})", date(self.not_before), relative(self.not_before))?;
        writeln!(f, "valid until: {} ({})", date(self.not_after), relative(self.not_after))?;
        write!(f, "serial:      {}", self.serial)
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// A certificate's SHA-256 fingerprint (of its DER), in lower-case hex: how anchors are named
/// where their subjects may repeat.
pub fn fingerprint(der: &[u8]) -> String {
    sha256(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// One certificate (DER) as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// The certificates of `ca_pem` that are not in `known_pem` (the bundle and the issuer's chain so
/// far), as PEM: what the issuer Secret's `ca.crt` adds to the issuer's chain (cert-manager writes
/// the CA that signed `tls.crt` there; when that is an intermediate between the issuer and an
/// anchor, leaves must be served with it).
pub fn chain_completion(ca_pem: &str, known_pem: &str) -> String {
    let known = pem_certs(known_pem).unwrap_or_default();
    pem_certs(ca_pem).unwrap_or_default().into_iter().filter(|c| !known.contains(c)).map(|c| cert_pem(&c)).collect()
}
