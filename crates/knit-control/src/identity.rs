//! `Identity.Certify`: authenticate the caller's token, check that it names the identity the
//! request asks for, and have the CA sign the CSR. The issuer, anchors and token key are files,
//! reloaded when they change, so rotating them needs no restart.
//!
//! Tokens are checked by a [`TokenValidator`]: in local mode, [`LocalTokens`] (signed with the
//! control plane's token key); in a cluster, [`tokenreview::KubernetesTokens`] (a ServiceAccount
//! token, checked by the API server's TokenReview, LINKERD-WIRE.md §2.4).

pub mod tokenreview;

use crate::config::IdentityConfig;
use knit_identity::{ca::Ca, token::TokenKey};
use linkerd2_proxy_api::identity::{identity_server::Identity, CertifyRequest, CertifyResponse};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::ConstGauge},
    registry::Registry,
};
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};
use tonic::{Request, Response, Status};

/// How a caller proves which workload it is: a local-mode token, or a Kubernetes ServiceAccount
/// token checked by TokenReview. Resolves to the identity the token vouches for.
pub trait TokenValidator: Send + Sync {
    fn validate<'a>(&'a self, token: &'a [u8]) -> Validation<'a>;
}

/// A validation under way. Boxed, so that `Arc<dyn TokenValidator>` works with validators that
/// wait for an API (TokenReview) as with those that answer at once.
pub type Validation<'a> = Pin<Box<dyn Future<Output = Result<String, Rejection>> + Send + 'a>>;

/// Why a token was refused; the message is sent to the caller and logged.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// Tokens signed with the control plane's token key (`knit identity token`).
pub struct LocalTokens(TokenKey);

impl TokenValidator for LocalTokens {
    fn validate<'a>(&'a self, token: &'a [u8]) -> Validation<'a> {
        Box::pin(std::future::ready(self.check(token)))
    }
}

impl LocalTokens {
    fn check(&self, token: &[u8]) -> Result<String, Rejection> {
        let text = std::str::from_utf8(token).map_err(|_| Rejection { reason: "token_invalid", message: "the token is not UTF-8".into() })?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.0.verify(text, now).map(|c| c.identity).map_err(|e| {
            let reason = if matches!(e, knit_identity::token::TokenError::Expired { .. }) { "token_expired" } else { "token_invalid" };
            Rejection { reason, message: e.to_string() }
        })
    }
}

struct State {
    ca: Arc<Ca>,
    tokens: Arc<dyn TokenValidator>,
}

pub struct Service {
    state: Arc<RwLock<State>>,
    /// The validator given at load (TokenReview), kept across reloads; `None`: the local token key.
    tokens: Option<Arc<dyn TokenValidator>>,
    pub registry: Registry,
    issued: Counter,
    failures: Family<ReasonLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads the identity files. With `tokens` given (TokenReview), the local token key is not read:
/// a cluster has no use for one.
fn load_state(cfg: &IdentityConfig, tokens: Option<&Arc<dyn TokenValidator>>) -> anyhow::Result<State> {
    let text = |p: std::path::PathBuf| -> anyhow::Result<String> { Ok(String::from_utf8_lossy(&read(&p)?).into_owned()) };
    let ca = Ca::load(&text(cfg.issuer_cert())?, &text(cfg.issuer_key())?, &text(cfg.trust_anchors())?, cfg.issuance_lifetime, cfg.clock_skew)
        .map_err(|e| anyhow::anyhow!("issuer {}: {e}", cfg.issuer_cert().display()))?;
    let tokens = match tokens {
        Some(t) => t.clone(),
        None => {
            let key = TokenKey::new(&read(&cfg.token_key())?).map_err(|e| anyhow::anyhow!("token key {}: {e}", cfg.token_key().display()))?;
            Arc::new(LocalTokens(key))
        }
    };
    Ok(State { ca: Arc::new(ca), tokens })
}

impl Service {
    pub fn load(cfg: &IdentityConfig) -> anyhow::Result<Self> {
        Self::load_with(cfg, None)
    }

    /// Like `load`, with callers' tokens checked by `tokens` (when given) instead of the local
    /// token key.
    /// A missing file at start names the command that writes it.
    pub fn load_with(cfg: &IdentityConfig, tokens: Option<Arc<dyn TokenValidator>>) -> anyhow::Result<Self> {
        let state = load_state(cfg, tokens.as_ref()).map_err(|e| match e.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::NotFound => e.context(format!(
                "no identity in {dir}: create one with `knit identity init --dir {dir}` (or point --identity-dir, or the --trust-anchors, --issuer-cert, --issuer-key and --token-key files, at an existing one)",
                dir = cfg.identity_dir.display()
            )),
            _ => e,
        })?;
        Ok(Self::new(state, tokens))
    }

    fn new(state: State, tokens: Option<Arc<dyn TokenValidator>>) -> Self {
        let mut registry = Registry::default();
        let issued = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("identity_certificates_issued", "Leaf certificates signed", issued.clone());
        registry.register("identity_certify_failures", "Certify requests refused, by reason", failures.clone());
        registry.register("identity_reloads", "Reloads of the identity files, by result", reloads.clone());
        let state = Arc::new(RwLock::new(state));
        registry.register_collector(Box::new(ExpiryCollector(state.clone())));
        Self { state, tokens, registry, issued, failures, reloads }
    }

    /// The current CA (for metrics, `knit check` and tests).
    pub fn ca(&self) -> Arc<Ca> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).ca.clone()
    }

    /// Counts and logs a refusal. The request's values are the caller's: they are logged
    /// escaped (`?`) and cut short, so a request cannot forge or flood log records.
    fn fail(&self, identity: &str, reason: &'static str, status: Status) -> Status {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
        tracing::warn!(identity = ?shortened(identity), reason, error = ?shortened(status.message()), "refused to certify");
        status
    }

    async fn certify_request(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        let id = req.identity.as_str();
        for (field, empty) in
            [("identity", id.is_empty()), ("token", req.token.is_empty()), ("certificate_signing_request", req.certificate_signing_request.is_empty())]
        {
            if empty {
                return Err(self.fail(id, "missing_field", Status::invalid_argument(format!("{field} is empty"))));
            }
        }
        if id.len() > 253 || !knit_identity::is_dns_name(id) {
            return Err(self.fail(id, "invalid_identity", Status::invalid_argument("identity must be a DNS name of at most 253 bytes")));
        }
        let (ca, tokens) = {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            (s.ca.clone(), s.tokens.clone())
        };
        let vouched = tokens.validate(&req.token).await.map_err(|r| {
            // The API server failing a TokenReview is not the caller's fault: the proxy should retry.
            let status = if r.reason == tokenreview::FAILED { Status::unavailable(r.message) } else { Status::unauthenticated(r.message) };
            self.fail(id, r.reason, status)
        })?;
        if vouched != id {
            let msg = format!("the token vouches for {vouched:?}, but the request asks for {id:?}");
            return Err(self.fail(id, "identity_mismatch", Status::permission_denied(msg)));
        }
        let issued = ca.certify(id, &req.certificate_signing_request).map_err(|e| self.fail(id, e.reason(), Status::failed_precondition(e.to_string())))?;
        self.issued.inc();
        tracing::info!(identity = %id, valid_until = %issued.valid_until, "certified");
        Ok(CertifyResponse {
            leaf_certificate: issued.leaf_der,
            intermediate_certificates: issued.intermediates,
            valid_until: Some(prost_types::Timestamp { seconds: issued.valid_until.unix_timestamp(), nanos: 0 }),
        })
    }

    fn reloaded(&self, result: anyhow::Result<State>) {
        match result {
            Ok(state) => {
                let info = state.ca.issuer_info.clone();
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
                self.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                tracing::info!(issuer = %info.subject, not_after = %info.not_after, "identity files reloaded");
            }
            Err(e) => {
                self.reloads.get_or_create(&ResultLabel { result: "error" }).inc();
                tracing::warn!(error = %format!("{e:#}"), "identity files changed but cannot be loaded; still serving the previous issuer");
            }
        }
    }
}

/// At most 120 characters of an untrusted value, for a log record.
fn shortened(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(120) {
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()).into(),
        None => s.into(),
    }
}

#[tonic::async_trait]
impl Identity for Service {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        // Signing is a few hundred microseconds of CPU: not worth a blocking-pool hop.
        self.certify_request(request.into_inner()).await.map(Response::new)
    }
}

/// A cheap fingerprint of the identity files: modification times and sizes.
fn fingerprint(cfg: &IdentityConfig) -> Vec<Option<(SystemTime, u64)>> {
    [cfg.trust_anchors(), cfg.issuer_cert(), cfg.issuer_key(), cfg.token_key()]
        .iter()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// Polls the identity files and reloads them when they change. Polling (rather than inotify)
/// also follows Kubernetes' Secret updates, which swap a symlink.
pub async fn watch_files(service: Arc<Service>, cfg: IdentityConfig) {
    let mut seen = fingerprint(&cfg);
    let mut tick = tokio::time::interval(cfg.reload_interval);
    loop {
        tick.tick().await;
        let now = fingerprint(&cfg);
        if now != seen {
            seen = now;
            service.reloaded(load_state(&cfg, service.tokens.as_ref()));
        }
    }
}

/// Expiry timestamps, read from the current CA at scrape time.
struct ExpiryCollector(Arc<RwLock<State>>);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ca = self.0.read().unwrap_or_else(|p| p.into_inner()).ca.clone();
        let g = ConstGauge::new(ca.issuer_info.not_after.unix_timestamp());
        g.encode(enc.encode_descriptor("identity_issuer_expiry_timestamp_seconds", "When the issuer certificate expires", None, g.metric_type())?)?;
        let mut family = enc.encode_descriptor(
            "identity_trust_anchor_expiry_timestamp_seconds",
            "When each trust anchor in the bundle expires",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for a in &ca.anchors {
            let labels = [("subject", a.subject.clone())];
            ConstGauge::new(a.not_after.unix_timestamp()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
