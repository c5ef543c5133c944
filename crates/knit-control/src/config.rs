//! `knit-control`'s flags (each also an environment variable).

use knit_identity::layout;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

fn duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

#[derive(Clone, Debug, clap::Parser)]
#[command(name = "knit-control", version, about = "Knit's control plane")]
pub struct Config {
    /// Identity gRPC (Identity.Certify).
    #[arg(long, env = "KNIT_CONTROL_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    pub identity_addr: SocketAddr,
    /// Admin server: /metrics, /ready, /live.
    #[arg(long, env = "KNIT_CONTROL_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub identity: IdentityConfig,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "KNIT_CONTROL_LOG", default_value = "warn,knit_control=info")]
    pub log: String,
}

#[derive(Clone, Debug, clap::Args)]
pub struct IdentityConfig {
    /// Directory written by `knit identity init`; the file flags below default to files in it.
    #[arg(long, env = "KNIT_CONTROL_IDENTITY_DIR", default_value = "identity")]
    pub identity_dir: PathBuf,
    /// PEM bundle of trust anchors (several during a rotation). Default: DIR/trust-anchors.pem.
    #[arg(long, env = "KNIT_CONTROL_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// Issuer certificate PEM (optionally followed by its chain). Default: DIR/issuer/crt.pem.
    #[arg(long, env = "KNIT_CONTROL_ISSUER_CERT")]
    pub issuer_cert: Option<PathBuf>,
    /// Issuer private key PEM. Default: DIR/issuer/key.pem.
    #[arg(long, env = "KNIT_CONTROL_ISSUER_KEY")]
    pub issuer_key: Option<PathBuf>,
    /// Local-mode token key. Default: DIR/token.key.
    #[arg(long, env = "KNIT_CONTROL_TOKEN_KEY")]
    pub token_key: Option<PathBuf>,
    /// Lifetime of proxies' certificates.
    #[arg(long, env = "KNIT_CONTROL_ISSUANCE_LIFETIME", default_value = "24h", value_parser = duration)]
    pub issuance_lifetime: Duration,
    /// Allowance for clocks that disagree, added to both ends of a leaf's validity.
    #[arg(long, env = "KNIT_CONTROL_CLOCK_SKEW", default_value = "20s", value_parser = duration)]
    pub clock_skew: Duration,
    /// How often the identity files are checked for changes.
    #[arg(long, env = "KNIT_CONTROL_RELOAD_INTERVAL", default_value = "1s", value_parser = duration)]
    pub reload_interval: Duration,
}

impl IdentityConfig {
    pub fn for_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            identity_dir: dir.into(),
            trust_anchors: None,
            issuer_cert: None,
            issuer_key: None,
            token_key: None,
            issuance_lifetime: Duration::from_secs(86_400),
            clock_skew: Duration::from_secs(20),
            reload_interval: Duration::from_secs(1),
        }
    }

    pub fn trust_anchors(&self) -> PathBuf {
        self.trust_anchors.clone().unwrap_or_else(|| self.identity_dir.join(layout::TRUST_ANCHORS))
    }
    pub fn issuer_cert(&self) -> PathBuf {
        self.issuer_cert.clone().unwrap_or_else(|| self.identity_dir.join(layout::ISSUER_CERT))
    }
    pub fn issuer_key(&self) -> PathBuf {
        self.issuer_key.clone().unwrap_or_else(|| self.identity_dir.join(layout::ISSUER_KEY))
    }
    pub fn token_key(&self) -> PathBuf {
        self.token_key.clone().unwrap_or_else(|| self.identity_dir.join(layout::TOKEN_KEY))
    }
}
