//! Local-mode tokens: what a proxy outside Kubernetes presents to `Identity.Certify` instead of a
//! ServiceAccount token. A token names one workload identity and an expiry, and carries an
//! HMAC-SHA256 over both with a key only the control plane (and `knit identity token`) hold, so
//! checking it needs no network call.
//!
//! Format: `knit1.<base64url(JSON claims)>.<base64url(MAC)>`.

use aws_lc_rs::hmac;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};

const PREFIX: &str = "knit1";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The identity the bearer may certify as.
    pub identity: String,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a Knit local-mode token (expected knit1.<claims>.<signature>)")]
    Malformed,
    #[error("the token's signature does not verify: it was not signed with this control plane's token key (forged, or from another installation)")]
    BadSignature,
    #[error("the token for {identity} expired {ago}s ago; issue a new one with `knit identity token`")]
    Expired { identity: String, ago: i64 },
    #[error("the token key must be at least 32 bytes, found {0}")]
    ShortKey(usize),
}

/// The secret that signs and checks tokens.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < 32 {
            return Err(TokenError::ShortKey(secret.len()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// 32 random bytes for a new key file.
    pub fn generate_secret() -> Vec<u8> {
        let mut b = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut b).expect("the system RNG is available");
        b
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{body}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks the signature first, then expiry at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let token = token.trim();
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, body) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64.decode(body).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired { ago: now - claims.expires_at, identity: claims.identity });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let key = TokenKey::new(&[7; 32]).unwrap();
        let claims = Claims { identity: "web.default.serviceaccount.identity.knit.cluster.local".into(), expires_at: 1_000 };
        let token = key.sign(&claims);
        assert_eq!(key.verify(&token, 999), Ok(claims.clone()));
        assert!(matches!(key.verify(&token, 1_000), Err(TokenError::Expired { ago: 0, .. })));
        let other = TokenKey::new(&[8; 32]).unwrap();
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        // Changing the claims breaks the signature.
        let (_, rest) = token.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let forged_body = B64.encode(br#"{"identity":"admin","expires_at":99999}"#);
        assert_eq!(key.verify(&format!("knit1.{forged_body}.{tag}"), 0), Err(TokenError::BadSignature));
        assert_eq!(key.verify("eyJhbGciOi.JWT.like", 0), Err(TokenError::Malformed));
        assert_eq!(key.verify("", 0), Err(TokenError::Malformed));
        assert!(matches!(TokenKey::new(b"short"), Err(TokenError::ShortKey(5))));
    }
}
