//! `Identity.Certify`: authenticate the caller's token, check that it names the identity the
//! request asks for, and have the CA sign the CSR. The issuer, anchors and token key are files,
//! reloaded when their contents change (rewritten, renamed over, or swapped by the kubelet as a
//! Secret or ConfigMap volume), so rotating them needs no restart; an update that cannot be
//! loaded (a broken file, a key for another certificate, an issuer that chains to no anchor in
//! the bundle) keeps the previous issuer, is logged and counted (`identity_reloads{result="error"}`).
//!
//! Every leaf it signs is remembered until it expires ([`Leaves`]), one per proxy key: which
//! anchor each running proxy depends on, what `knit identity rotate` waits for before the old
//! anchor may leave the bundle.
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
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    pub leaves: Arc<Leaves>,
    /// Bumped on every successful reload: the control plane's own serving certificate is issued
    /// again under the new issuer.
    generation: tokio::sync::watch::Sender<u64>,
}

/// A leaf this control plane signed, as `/identity/leaves` reports it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Leaf {
    pub identity: String,
    pub issuer: String,
    /// The trust anchor the leaf chains to: its subject and SHA-256 fingerprint.
    pub anchor: String,
    pub anchor_sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    pub certified_at: i64,
}

/// What `/identity/leaves` answers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LeavesReport {
    /// Whether every running proxy has certified since this control plane started: leaves
    /// signed before it started are unknown to it until their proxies refresh, which happens
    /// within one issuance lifetime.
    pub complete: bool,
    /// Seconds until `complete`, when it is not.
    pub complete_in: u64,
    pub leaves: Vec<Leaf>,
}

/// Unexpired leaves by proxy key, bounded: past [`Leaves::MAX`] a new key is not remembered
/// (and counted), so a caller with valid tokens and fresh keys cannot grow it without end.
pub struct Leaves {
    by_key: Mutex<HashMap<[u8; 32], Leaf>>,
    started: Instant,
    /// After this long every live proxy has certified at least once (its refresh comes at 70%
    /// of a leaf's life, the leaf lives the issuance lifetime plus the skew).
    settle: Duration,
    untracked: Counter,
}

impl Leaves {
    pub const MAX: usize = 100_000;

    fn new(settle: Duration, untracked: Counter) -> Self {
        Self { by_key: Mutex::new(HashMap::new()), started: Instant::now(), settle, untracked }
    }

    fn record(&self, key: [u8; 32], leaf: Leaf) {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX && !map.contains_key(&key) {
            let now = unix_now();
            map.retain(|_, l| l.not_after > now);
            if map.len() >= Self::MAX {
                self.untracked.inc();
                return;
            }
        }
        map.insert(key, leaf);
    }

    /// The unexpired leaves, by identity.
    pub fn report(&self) -> LeavesReport {
        let now = unix_now();
        let mut leaves: Vec<Leaf> = {
            let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, l| l.not_after > now);
            map.values().cloned().collect()
        };
        leaves.sort_by(|a, b| (&a.identity, a.certified_at).cmp(&(&b.identity, b.certified_at)));
        let complete_in = self.settle.saturating_sub(self.started.elapsed()).as_secs();
        LeavesReport { complete: complete_in == 0, complete_in, leaves }
    }

    /// Unexpired leaves per anchor fingerprint.
    fn per_anchor(&self) -> HashMap<(String, String), u64> {
        let now = unix_now();
        let mut counts = HashMap::new();
        for l in self.by_key.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|l| l.not_after > now) {
            *counts.entry((l.anchor.clone(), l.anchor_sha256.clone())).or_default() += 1;
        }
        counts
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
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
    let anchors = text(cfg.trust_anchors())?;
    let mut chain = text(cfg.issuer_cert())?;
    if let Some(path) = &cfg.issuer_ca {
        let completion = knit_identity::inspect::chain_completion(&text(path.clone())?, &format!("{anchors}\n{chain}"));
        if !completion.is_empty() {
            chain = format!("{}\n{completion}", chain.trim_end());
        }
    }
    let ca = Ca::load(&chain, &text(cfg.issuer_key())?, &anchors, cfg.issuance_lifetime, cfg.clock_skew)
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
        Ok(Self::new(state, tokens, cfg.issuance_lifetime + cfg.clock_skew * 2))
    }

    fn new(state: State, tokens: Option<Arc<dyn TokenValidator>>, settle: Duration) -> Self {
        let mut registry = Registry::default();
        let issued = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let untracked = Counter::default();
        registry.register("identity_certificates_issued", "Leaf certificates signed", issued.clone());
        registry.register("identity_certify_failures", "Certify requests refused, by reason", failures.clone());
        registry.register("identity_reloads", "Reloads of the identity files, by result", reloads.clone());
        registry.register("identity_leaves_untracked", "Leaves signed but not remembered: the leaf registry was full", untracked.clone());
        let state = Arc::new(RwLock::new(state));
        let leaves = Arc::new(Leaves::new(settle, untracked));
        registry.register_collector(Box::new(ExpiryCollector(state.clone(), leaves.clone())));
        Self { state, tokens, registry, issued, failures, reloads, leaves, generation: tokio::sync::watch::channel(0).0 }
    }

    /// Changes on every successful reload of the identity files.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
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
        let anchor = &ca.anchors[ca.issuer_anchor];
        let leaf = Leaf {
            identity: id.to_string(),
            issuer: ca.issuer_info.subject.clone(),
            anchor: anchor.subject.clone(),
            anchor_sha256: knit_identity::inspect::fingerprint(&ca.anchors_der[ca.issuer_anchor]),
            not_after: issued.valid_until.unix_timestamp(),
            certified_at: unix_now(),
        };
        self.leaves.record(issued.key_sha256, leaf);
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
                self.generation.send_modify(|g| *g += 1);
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

/// The identity files' contents (each a few kilobytes at most): comparing contents sees every
/// kind of update, where modification times and sizes can coincide.
fn fingerprint(cfg: &IdentityConfig) -> Vec<Option<[u8; 32]>> {
    [Some(cfg.trust_anchors()), Some(cfg.issuer_cert()), Some(cfg.issuer_key()), Some(cfg.token_key()), cfg.issuer_ca.clone()]
        .iter()
        .map(|p| p.as_ref().and_then(|p| std::fs::read(p).ok()).map(|b| knit_identity::inspect::sha256(&b)))
        .collect()
}

/// Polls the identity files and reloads them when they change. Polling (rather than inotify)
/// follows a Kubernetes volume's update, a `..data` symlink swapped over a new directory, which
/// changes no watched file. An update seen half-done (a new certificate beside the old key)
/// fails to load and keeps the previous issuer; the next poll sees the finished one.
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

/// Expiry timestamps, read from the current CA at scrape time, and the leaves per anchor.
struct ExpiryCollector(Arc<RwLock<State>>, Arc<Leaves>);

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
        for (a, der) in ca.anchors.iter().zip(&ca.anchors_der) {
            let labels = [("subject", a.subject.clone()), ("sha256", knit_identity::inspect::fingerprint(der))];
            ConstGauge::new(a.not_after.unix_timestamp()).encode(family.encode_family(&labels)?)?;
        }
        let mut family = enc.encode_descriptor(
            "identity_leaves",
            "Unexpired leaves this control plane signed, by the trust anchor they chain to",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((subject, sha256), n) in self.1.per_anchor() {
            let labels = [("anchor", subject), ("sha256", sha256)];
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
