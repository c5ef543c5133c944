//! Knit's identity, as plain functions with no async runtime: shared by the control plane (the CA
//! behind `Identity.Certify`), the proxy (its key and CSR) and the CLI (`knit identity`, `knit
//! check`).
//!
//! - [`create`]: trust anchors and issuers (ECDSA P-256).
//! - [`ca`]: validating a proxy's CSR and signing its leaf certificate (LINKERD-WIRE.md §2.4).
//! - [`token`]: local-mode tokens that name a workload identity, checked without a network call.
//! - [`csr`]: a proxy's in-memory key and its certificate signing request.
//! - [`inspect`]: certificates in human terms.
//! - [`layout`]: the identity directory `knit identity init` writes and knit-control reads.
//! - [`rotation`]: where a trust-anchor rotation stands.

pub mod ca;
pub mod create;
pub mod csr;
pub mod inspect;
pub mod layout;
pub mod rotation;
pub mod token;

/// Linkerd's identity name: `<serviceaccount>.<namespace>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.
pub fn identity_name(service_account: &str, namespace: &str, control_plane_ns: &str, trust_domain: &str) -> String {
    format!("{service_account}.{namespace}.serviceaccount.identity.{control_plane_ns}.{trust_domain}")
}

/// Whether `name` has the shape of a mesh identity (`….serviceaccount.identity.….`): TLS for
/// such a name is meant for a proxy, never for an application.
pub fn is_mesh_identity(name: &str) -> bool {
    name.contains(".serviceaccount.identity.")
}

/// Whether `s` is a DNS name an identity may be: lower-case labels of letters, digits and `-`.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

pub(crate) fn now() -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::now_utc()
}
