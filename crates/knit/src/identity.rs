//! `knit identity` and `knit check`: the trust anchor, the issuer and local-mode tokens on disk,
//! in the layout `knit-control --identity-dir` reads ([`knit_identity::layout`]).

use anyhow::{bail, Context};
use knit_identity::{
    ca::Ca,
    create,
    inspect::{pem_certs, relative, CertInfo},
    layout,
    token::{Claims, TokenKey},
};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

fn duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a trust anchor, an issuer and a token key in DIR.
    Init {
        #[arg(long, default_value = "identity")]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, default_value = "knit")]
        control_plane_ns: String,
        #[arg(long, default_value = "3650d", value_parser = duration)]
        anchor_lifetime: Duration,
        #[arg(long, default_value = "365d", value_parser = duration)]
        issuer_lifetime: Duration,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a new issuer signed by DIR's anchor (issuer rotation): knit-control picks it up.
    Issuer {
        #[arg(long, default_value = "identity")]
        dir: PathBuf,
        #[arg(long, default_value = "365d", value_parser = duration)]
        lifetime: Duration,
        #[arg(long, default_value = "identity.knit.cluster.local")]
        name: String,
    },
    /// Print a local-mode token for a workload identity.
    Token {
        #[arg(long, default_value = "identity")]
        dir: PathBuf,
        /// The full identity name, or use --service-account and --namespace.
        #[arg(long, conflicts_with_all = ["service_account", "namespace"])]
        identity: Option<String>,
        #[arg(long, requires = "namespace")]
        service_account: Option<String>,
        #[arg(long, requires = "service_account")]
        namespace: Option<String>,
        #[arg(long, default_value = "knit")]
        control_plane_ns: String,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, default_value = "24h", value_parser = duration)]
        ttl: Duration,
    },
    /// Show the certificates in a PEM file in human terms.
    Show { file: PathBuf },
    /// One step of a trust-anchor rotation (run it three times): add a new anchor to the
    /// bundle; switch the issuer to one it signs; remove the old anchor once no proxy's leaf
    /// chains to it. --status says where a rotation stands.
    Rotate(crate::rotate::RotateArgs),
}

pub fn main(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Rotate(args) => crate::rotate::rotate(args),
        Command::Init { dir, trust_domain, control_plane_ns, anchor_lifetime, issuer_lifetime, force } => {
            if dir.join(layout::TRUST_ANCHORS).exists() && !force {
                bail!("{} already holds identity material; pass --force to replace it (every proxy will need the new anchors)", dir.display());
            }
            let params = layout::Params { trust_domain: &trust_domain, control_plane_ns: &control_plane_ns, anchor_lifetime, issuer_lifetime };
            let m = layout::init(&dir, &params).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created in {}:", dir.display());
            println!("  trust anchor  {}", describe(&m.anchor.cert_pem)?);
            println!("  issuer        {}", describe(&m.issuer.cert_pem)?);
            println!("  token key     token.key (mode 0600)");
            println!("next: knit-control --identity-dir {}", dir.display());
            Ok(())
        }
        Command::Issuer { dir, lifetime, name } => {
            let anchor = create::Credentials {
                cert_pem: read(&dir.join(layout::TRUST_ANCHORS))?,
                key_pem: read(&dir.join(layout::ANCHOR_KEY)).context("the anchor's key is needed to sign a new issuer")?,
            };
            let issuer = create::issuer(&name, lifetime, &anchor)?;
            layout::write_issuer(&dir, &issuer)?;
            println!("new issuer {}", describe(&issuer.cert_pem)?);
            Ok(())
        }
        Command::Token { dir, identity, service_account, namespace, control_plane_ns, trust_domain, ttl } => {
            let identity = match (identity, service_account, namespace) {
                (Some(id), _, _) => id,
                (None, Some(sa), Some(ns)) => knit_identity::identity_name(&sa, &ns, &control_plane_ns, &trust_domain),
                _ => bail!("name the workload with --identity, or --service-account and --namespace"),
            };
            if !knit_identity::is_dns_name(&identity) {
                bail!("{identity:?} is not a valid identity: lower-case DNS labels separated by dots");
            }
            let key =
                TokenKey::new(&std::fs::read(dir.join(layout::TOKEN_KEY)).with_context(|| format!("reading {}", dir.join(layout::TOKEN_KEY).display()))?)?;
            let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 + ttl.as_secs() as i64;
            println!("{}", key.sign(&Claims { identity, expires_at }));
            Ok(())
        }
        Command::Show { file } => {
            let pem = read(&file)?;
            let certs = pem_certs(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", file.display());
            }
            for (i, der) in certs.iter().enumerate() {
                if certs.len() > 1 {
                    println!("certificate {} of {}:", i + 1, certs.len());
                }
                println!("{}\n", CertInfo::from_der(der)?);
            }
            Ok(())
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn describe(pem: &str) -> anyhow::Result<String> {
    let info = CertInfo::from_pem(pem)?;
    Ok(format!("{} (expires {})", info.subject, relative(info.not_after)))
}

/// Warn when something expires sooner than this.
const WARN_BEFORE: time::Duration = time::Duration::days(30);

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Local mode: check the identity directory (as `knit identity init` wrote it). Without it,
    /// the installation in the Kubernetes cluster of KUBECONFIG is checked.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Before installing: the cluster's version and the permissions installing needs.
    #[arg(long, conflicts_with = "dir")]
    pre: bool,
    /// The control plane's namespace in the cluster.
    #[arg(long, default_value = "knit")]
    namespace: String,
    /// A proxy's admin address (repeatable): its certificate's expiry is checked too.
    #[arg(long = "proxy")]
    proxies: Vec<std::net::SocketAddr>,
    /// knit-control's admin address (repeat it for every replica): the leaves it signed, by
    /// anchor, and the proxies an anchor rotation still waits for. In a cluster: `kubectl -n knit
    /// port-forward deploy/knit-control 9990`, then `--control-admin 127.0.0.1:9990`.
    #[arg(long = "control-admin", conflicts_with = "pre")]
    control_admins: Vec<std::net::SocketAddr>,
    /// Local mode: check the manifest directory as knit-control reads it (invalid documents,
    /// and fields Knit does not know, which have no effect).
    #[arg(long, conflicts_with = "pre")]
    config_dir: Option<PathBuf>,
    /// With --config-dir: a field Knit does not know fails the check (as knit-control's
    /// --strict-fields refuses the document).
    #[arg(long, requires = "config_dir")]
    strict_fields: bool,
}

struct LocalCheck {
    dir: PathBuf,
    proxies: Vec<std::net::SocketAddr>,
    control_admins: Vec<std::net::SocketAddr>,
}

/// `knit check`, the local-mode part: anchors, issuer, and that the issuer chains to an anchor.
pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    if let Some(config_dir) = &args.config_dir {
        failed += manifests(config_dir, args.strict_fields)?;
    }
    let Some(dir) = args.dir.clone() else {
        if args.config_dir.is_some() {
            return if failed > 0 { Err(anyhow::anyhow!("{failed} check(s) failed")) } else { Ok(()) };
        }
        return crate::check::kubernetes(args.pre, &args.namespace, &args.control_admins);
    };
    let args = LocalCheck { dir, proxies: args.proxies, control_admins: args.control_admins };
    let mut report = |ok: Result<String, String>, what: &str| match ok {
        Ok(msg) => println!("√ {what}: {msg}"),
        Err(msg) => {
            failed += 1;
            println!("× {what}: {msg}");
        }
    };
    let anchors = read(&args.dir.join(layout::TRUST_ANCHORS)).map_err(|e| format!("{e:#}"));
    let anchors_pem = anchors.clone().unwrap_or_default();
    match anchors.and_then(|p| pem_certs(&p)) {
        Ok(certs) if certs.is_empty() => report(Err("the bundle holds no certificate; run knit identity init".into()), "trust anchors"),
        Ok(certs) => {
            for der in certs {
                match CertInfo::from_der(&der) {
                    Ok(info) => report(expiry(&info), &format!("trust anchor {}", info.subject)),
                    Err(e) => report(Err(e.to_string()), "trust anchor"),
                }
            }
        }
        Err(e) => report(Err(e), "trust anchors"),
    }
    let issuer = read(&args.dir.join(layout::ISSUER_CERT)).and_then(|c| Ok((c, read(&args.dir.join(layout::ISSUER_KEY))?)));
    match issuer {
        Ok((cert, key)) => {
            match CertInfo::from_pem(&cert) {
                Ok(info) => report(expiry(&info), &format!("issuer {}", info.subject)),
                Err(e) => report(Err(e.to_string()), "issuer"),
            }
            let chained = Ca::load(&cert, &key, &anchors_pem, Duration::from_secs(86_400), Duration::ZERO)
                .map(|_| "chains to the trust anchors, and the key matches".to_string())
                .map_err(|e| format!("{e}; fix: knit identity issuer --dir {}", args.dir.display()));
            report(chained, "issuer chain");
            if let Ok(r) = knit_identity::rotation::Rotation::read(&anchors_pem, &cert) {
                report(Ok(r.describe()), "trust-anchor rotation");
                if !args.control_admins.is_empty() {
                    report(proxy_leaves(&args.control_admins, &r), "proxy leaves");
                }
            }
        }
        Err(e) => report(Err(format!("{e:#}")), "issuer"),
    }
    for admin in &args.proxies {
        report(proxy_cert(*admin), &format!("proxy {admin} certificate"));
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `knit check`'s line on the leaves knit-control signed: where they chain, and the proxies a
/// rotation waits for (a failure only when knit-control cannot be asked).
pub fn proxy_leaves(admins: &[std::net::SocketAddr], rotation: &knit_identity::rotation::Rotation) -> Result<String, String> {
    crate::rotate::Known::fetch(admins)
        .map(|k| k.describe(rotation))
        .map_err(|e| format!("{e:#}; fix: point --control-admin at knit-control's admin port (kubectl port-forward in a cluster)"))
}

/// The manifest directory's files as knit-control reads them: each invalid document is a failed
/// check, each unknown field a warning (a failure with `strict`). Returns the failures.
fn manifests(dir: &std::path::Path, strict: bool) -> anyhow::Result<usize> {
    use knit_control::local;
    let mut files: Vec<(PathBuf, u64)> = local::manifest_files(dir)
        .map_err(|e| anyhow::anyhow!("reading the manifest directory {}: {e}", dir.display()))?
        .into_iter()
        .map(|(path, stamp)| (path, stamp.len))
        .collect();
    files.sort();
    let (mut failed, mut resources, mut unknown) = (0, 0, 0);
    for (path, len) in &files {
        let name = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        if let Some(e) = local::oversized(&name, *len) {
            failed += 1;
            println!("× manifest {e}");
            continue;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                failed += 1;
                println!("× manifest {name}: {e}");
                continue;
            }
        };
        let parsed = knit_control::resources::parse_file(&name, &text, strict);
        for e in &parsed.errors {
            failed += 1;
            println!("× manifest {e}");
        }
        for w in &parsed.warnings {
            println!("‼ manifest {w}: it has no effect (--strict-fields makes this a failure)");
        }
        resources += parsed.resources.len();
        unknown += parsed.warnings.len();
    }
    if failed == 0 {
        let ignored = if unknown > 0 { format!(", {unknown} unknown field(s) ignored") } else { String::new() };
        println!("√ manifests in {}: {resources} resource(s) in {} file(s){ignored}", dir.display(), files.len());
    }
    Ok(failed)
}

/// GET `path` from an admin server (a proxy's or knit-control's): the body of a 200 answer.
pub fn http_get(admin: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(|e| format!("cannot reach the admin server: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // One write: `write!` would send the pieces separately.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: knit-cli\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut rsp = Vec::new();
    s.take(64 << 20).read_to_end(&mut rsp).map_err(|e| e.to_string())?;
    let rsp = String::from_utf8_lossy(&rsp);
    let (head, body) = rsp.split_once("\r\n\r\n").ok_or("the answer is not HTTP")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{path} answered {status}: {}", body.trim()));
    }
    Ok(body.to_string())
}

/// Reads a proxy's certificate expiry from its admin server's metrics.
fn proxy_cert(admin: std::net::SocketAddr) -> Result<String, String> {
    let body = http_get(admin, "/metrics")?;
    let expiry = knit_control::viz::prom::lines(&body)
        .find(|s| s.name == "identity_cert_expiration_timestamp_seconds")
        .map(|s| s.value as i64)
        .ok_or("the proxy exports no certificate expiry: is identity configured (KNIT_PROXY_IDENTITY_LOCAL_NAME)?")?;
    if expiry == 0 {
        return Err("the proxy has no certificate yet: check knit-control and the proxy's token (its log says why)".into());
    }
    let at = time::OffsetDateTime::from_unix_timestamp(expiry).map_err(|e| e.to_string())?;
    if at <= time::OffsetDateTime::now_utc() {
        return Err(format!("EXPIRED {}: the proxy cannot refresh it; check that knit-control is reachable", relative(at)));
    }
    Ok(format!("valid, expires {} (refreshed at 70% of its lifetime)", relative(at)))
}

/// The expiry verdict of the first certificate in `pem`.
pub fn cert_expiry(pem: &str) -> Result<String, String> {
    CertInfo::from_pem(pem).map_err(|e| e.to_string()).and_then(|info| expiry(&info))
}

fn expiry(info: &CertInfo) -> Result<String, String> {
    let left = info.expires_in();
    if left <= time::Duration::ZERO {
        return Err(format!("EXPIRED {}; proxies stop trusting it now — create a new one and roll it out", relative(info.not_after)));
    }
    if left < WARN_BEFORE {
        return Ok(format!("WARNING expires {} — rotate it now", relative(info.not_after)));
    }
    Ok(format!("valid, expires {}", relative(info.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(expires_in: time::Duration) -> CertInfo {
        let now = time::OffsetDateTime::now_utc();
        CertInfo {
            subject: "CN=x".into(),
            issuer: "CN=x".into(),
            serial: "01".into(),
            dns_sans: vec![],
            other_sans: vec![],
            not_before: now - time::Duration::days(1),
            not_after: now + expires_in,
            is_ca: true,
            key: "ECDSA P-256".into(),
        }
    }

    #[test]
    fn expiry_is_judged_with_a_30_day_warning() {
        assert!(expiry(&info(time::Duration::days(200))).unwrap().starts_with("valid"));
        assert!(expiry(&info(time::Duration::days(20))).unwrap().starts_with("WARNING"));
        let expired = expiry(&info(-time::Duration::hours(2))).unwrap_err();
        assert!(expired.starts_with("EXPIRED") && expired.contains("ago"), "{expired}");
    }
}
