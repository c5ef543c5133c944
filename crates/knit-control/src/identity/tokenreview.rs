//! [`KubernetesTokens`]: a proxy's ServiceAccount token, checked by the API server's TokenReview,
//! as Linkerd's identity controller does (LINKERD-WIRE.md §2.4).
//!
//! The review asks for the audience `identity.l5d.io`, the one the injector projects the token
//! with. When the API server answers with an error that mentions "token audiences" (a token
//! without that audience, or an authenticator that cannot check audiences), the review is asked
//! once more without audiences, as Linkerd does. An authenticated username must be
//! `system:serviceaccount:NS:NAME` with DNS-1123 labels; the identity is
//! `NAME.NS.serviceaccount.identity.CP_NS.TRUST_DOMAIN`.
//!
//! The request ([`review`]) and the judgement of the answer ([`judge`], [`api_failure`]) are pure
//! functions, tested on recorded TokenReview JSON; the call itself is thin.

use super::{Rejection, TokenValidator, Validation};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{api::PostParams, Api, Client};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// The audience the injector gives the proxy's projected token.
pub const AUDIENCE: &str = "identity.l5d.io";
/// The reason of a review the API server could not answer (Certify answers Unavailable).
pub const FAILED: &str = "tokenreview_failed";
/// A proxy retries Certify; an API server that does not answer must not hold the call forever.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How identities are named: `SA.NS.serviceaccount.identity.CONTROL_PLANE_NS.TRUST_DOMAIN`.
#[derive(Clone, Debug, PartialEq)]
pub struct Naming {
    pub control_plane_ns: String,
    pub trust_domain: String,
}

impl Naming {
    pub fn identity(&self, service_account: &str, ns: &str) -> String {
        format!("{service_account}.{ns}.serviceaccount.identity.{}.{}", self.control_plane_ns, self.trust_domain)
    }
}

/// Tokens checked by the Kubernetes API's TokenReview.
pub struct KubernetesTokens {
    client: Client,
    naming: Naming,
    /// TokenReviews in flight: callers with no credentials must not turn into a flood of API
    /// calls.
    reviews: tokio::sync::Semaphore,
}

/// TokenReviews knit-control asks at once; more wait (up to the review timeout).
const CONCURRENT_REVIEWS: usize = 64;

/// Whether `token` has a JWT's shape (three base64url parts): anything else is refused without
/// asking the API server.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// What one TokenReview answer means.
#[derive(Debug)]
pub enum Verdict {
    Identity(String),
    /// The API server could not check the audience: ask again without one.
    RetryWithoutAudiences,
    Rejected(Rejection),
}

fn reject(reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict::Rejected(Rejection { reason, message: message.into() })
}

/// The TokenReview to create for `token`, with the identity audience or without any.
pub fn review(token: &str, with_audience: bool) -> TokenReview {
    let audiences = with_audience.then(|| vec![AUDIENCE.to_string()]);
    TokenReview { spec: TokenReviewSpec { token: Some(token.to_string()), audiences }, ..Default::default() }
}

/// Judges the API server's answer to a review made with or without the audience.
pub fn judge(answer: &TokenReview, with_audience: bool, naming: &Naming) -> Verdict {
    let Some(status) = &answer.status else { return reject(FAILED, "the TokenReview answer has no status") };
    let error = status.error.as_deref().unwrap_or("");
    if with_audience && error.contains("token audiences") {
        return Verdict::RetryWithoutAudiences;
    }
    if status.authenticated != Some(true) {
        let why = if error.is_empty() { "the API server did not authenticate the token" } else { error };
        return reject("token_unauthenticated", format!("TokenReview: {why}"));
    }
    if !error.is_empty() {
        // Authenticated and an error at once: not an answer to act on.
        return reject("token_invalid", format!("TokenReview authenticated the token but reported: {error}"));
    }
    // An audience-aware authenticator lists the audiences it checked; one that lists others
    // vouched for a token meant for someone else. (Linkerd does not check; absence is allowed.)
    if let Some(audiences) = status.audiences.as_ref().filter(|_| with_audience) {
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return reject("token_invalid", format!("the token is for the audiences {audiences:?}, expected {AUDIENCE}"));
        }
    }
    let username = status.user.as_ref().and_then(|u| u.username.as_deref()).unwrap_or("");
    let parts: Vec<&str> = username.split(':').collect();
    let ["system", "serviceaccount", ns, name] = parts.as_slice() else {
        return reject("token_invalid", format!("expected the username system:serviceaccount:NAMESPACE:NAME, found {username:?}"));
    };
    if let Some(bad) = [ns, name].into_iter().find(|l| !dns_label(l)) {
        return reject("token_invalid", format!("{bad:?} in the username {username:?} is not a DNS-1123 label"));
    }
    Verdict::Identity(naming.identity(name, ns))
}

/// A failed API call: a "token audiences" complaint asks for the retry, anything else fails
/// the review with the API's status.
pub fn api_failure(e: &kube::Error, with_audience: bool) -> Verdict {
    match e {
        kube::Error::Api(s) if with_audience && s.message.contains("token audiences") => Verdict::RetryWithoutAudiences,
        kube::Error::Api(s) => reject(FAILED, format!("TokenReview failed: {} {}: {}", s.code, s.reason, s.message)),
        e => reject(FAILED, format!("TokenReview failed: {e}")),
    }
}

/// RFC 1123 label: 1 to 63 lower-case letters, digits and '-', starting and ending alphanumeric.
fn dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(f), Some(l)) if alnum(*f) && alnum(*l)) && bytes.len() <= 63 && bytes.iter().all(|b| alnum(*b) || *b == b'-')
}

impl KubernetesTokens {
    pub fn new(client: Client, naming: Naming) -> Self {
        Self { client, naming, reviews: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS) }
    }

    async fn check(&self, token: &[u8]) -> Result<String, Rejection> {
        let token = std::str::from_utf8(token).map_err(|_| Rejection { reason: "token_invalid", message: "the token is not UTF-8".into() })?;
        if !looks_like_jwt(token) {
            return Err(Rejection { reason: "token_invalid", message: "the token is not a ServiceAccount token (a JWT)".into() });
        }
        let _review = match tokio::time::timeout(TIMEOUT, self.reviews.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(Rejection { reason: FAILED, message: format!("{CONCURRENT_REVIEWS} TokenReviews have been in flight for {TIMEOUT:?}; retry") }),
        };
        let verdict = match self.ask(token, true).await {
            Verdict::RetryWithoutAudiences => {
                tracing::debug!("TokenReview cannot check the {AUDIENCE} audience; asking without");
                self.ask(token, false).await
            }
            v => v,
        };
        match verdict {
            Verdict::Identity(id) => Ok(id),
            Verdict::Rejected(r) => Err(r),
            // `judge` and `api_failure` ask for a retry only when the audience was asked for.
            Verdict::RetryWithoutAudiences => Err(Rejection { reason: FAILED, message: "TokenReview kept asking for a retry".into() }),
        }
    }

    async fn ask(&self, token: &str, with_audience: bool) -> Verdict {
        let api = Api::<TokenReview>::all(self.client.clone());
        let request = review(token, with_audience);
        match tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), &request)).await {
            Ok(Ok(answer)) => judge(&answer, with_audience, &self.naming),
            Ok(Err(e)) => api_failure(&e, with_audience),
            Err(_) => reject(FAILED, format!("TokenReview: no answer from the API server within {TIMEOUT:?}")),
        }
    }
}

impl TokenValidator for KubernetesTokens {
    fn validate<'a>(&'a self, token: &'a [u8]) -> Validation<'a> {
        Box::pin(self.check(token))
    }
}
