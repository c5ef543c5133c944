//! The identity directory, as `knit identity init` writes it and `knit-control --identity-dir`
//! reads it:
//!
//! ```text
//! DIR/trust-anchors.pem   the anchors proxies trust (a bundle: several during a rotation)
//! DIR/anchor.key          the anchor's key, kept to sign the next issuer (keep it offline in production)
//! DIR/issuer/crt.pem      the issuer that signs proxies' certificates
//! DIR/issuer/key.pem
//! DIR/token.key           the secret that signs local-mode tokens
//! ```

use crate::{create, token::TokenKey};
use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

pub const TRUST_ANCHORS: &str = "trust-anchors.pem";
pub const ANCHOR_KEY: &str = "anchor.key";
pub const ISSUER_CERT: &str = "issuer/crt.pem";
pub const ISSUER_KEY: &str = "issuer/key.pem";
pub const TOKEN_KEY: &str = "token.key";

/// What [`init`] created.
pub struct Material {
    pub anchor: create::Credentials,
    pub issuer: create::Credentials,
    pub token_key: TokenKey,
}

/// Names and lifetimes for [`init`].
pub struct Params<'a> {
    pub trust_domain: &'a str,
    pub control_plane_ns: &'a str,
    pub anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
}

impl Default for Params<'_> {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local",
            control_plane_ns: "knit",
            anchor_lifetime: Duration::from_secs(3650 * 86_400),
            issuer_lifetime: Duration::from_secs(365 * 86_400),
        }
    }
}

/// Writes a file readable only by its owner (keys and the token secret).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents)
}

fn io_err(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
}

/// Writes an issuer's key, then its certificate: a reader that polls the pair sees a consistent
/// one at the latest when the certificate lands.
pub fn write_issuer(dir: &Path, issuer: &create::Credentials) -> std::io::Result<()> {
    let (key, cert) = (dir.join(ISSUER_KEY), dir.join(ISSUER_CERT));
    write_secret(&key, issuer.key_pem.as_bytes()).map_err(|e| io_err(&key, e))?;
    std::fs::write(&cert, &issuer.cert_pem).map_err(|e| io_err(&cert, e))
}

/// Creates a trust anchor, an issuer and a token key in `dir` (which may already exist).
pub fn init(dir: &Path, p: &Params<'_>) -> Result<Material, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir.join("issuer")).map_err(|e| io_err(dir, e))?;
    let anchor = create::trust_anchor(&format!("root.{}.{}", p.control_plane_ns, p.trust_domain), p.anchor_lifetime)?;
    let issuer = create::issuer(&format!("identity.{}.{}", p.control_plane_ns, p.trust_domain), p.issuer_lifetime, &anchor)?;
    let anchors = dir.join(TRUST_ANCHORS);
    std::fs::write(&anchors, &anchor.cert_pem).map_err(|e| io_err(&anchors, e))?;
    write_secret(&dir.join(ANCHOR_KEY), anchor.key_pem.as_bytes()).map_err(|e| io_err(&dir.join(ANCHOR_KEY), e))?;
    write_issuer(dir, &issuer)?;
    let secret = TokenKey::generate_secret();
    write_secret(&dir.join(TOKEN_KEY), &secret).map_err(|e| io_err(&dir.join(TOKEN_KEY), e))?;
    Ok(Material { anchor, issuer, token_key: TokenKey::new(&secret)? })
}

/// A path inside the identity directory.
pub fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}
