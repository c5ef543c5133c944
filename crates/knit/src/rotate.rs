//! `knit identity rotate`: a trust-anchor rotation, one step per run, in the identity directory
//! (`knit identity init`'s layout), printing the cluster's objects at each step with
//! `--manifests`:
//!
//! 1. a new anchor (its key kept in `DIR/next/`) joins the bundle;
//! 2. once every proxy has read the bundle, the issuer is replaced by one the new anchor signs;
//! 3. once no proxy's leaf chains to the old anchor (knit-control's `/identity/leaves` says so),
//!    the old anchor leaves the bundle and the new anchor's key takes its place.
//!
//! The step is read from the bundle and the issuer ([`knit_identity::rotation`]), so a run
//! interrupted between steps simply continues. With cert-manager and trust-manager, see
//! [`cert_manager`].

mod cert_manager;

use anyhow::{bail, Context};
use knit_control::identity::{Leaf, LeavesReport};
use knit_identity::{
    create::{self, Credentials},
    inspect::{cert_pem, fingerprint, pem_certs, relative},
    layout,
    rotation::{Rotation, Step},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

#[derive(clap::Args)]
pub struct RotateArgs {
    #[arg(long, default_value = "identity")]
    dir: PathBuf,
    /// knit-control's admin address (repeat it for every replica): the last step asks it which
    /// anchor each proxy's leaf chains to. In a cluster: `kubectl -n knit port-forward
    /// deploy/knit-control 9990`, then `--control-admin 127.0.0.1:9990`.
    #[arg(long = "control-admin")]
    control_admins: Vec<SocketAddr>,
    /// Say where the rotation stands and change nothing.
    #[arg(long)]
    status: bool,
    /// After the step, print the trust-roots ConfigMap and the issuer Secret for `kubectl apply -f -`.
    #[arg(long)]
    manifests: bool,
    /// The control plane's namespace, for --manifests and --external-issuer.
    #[arg(long, default_value = "knit")]
    namespace: String,
    /// cert-manager holds the anchors and issues the issuer, trust-manager writes the bundle
    /// (`knit install --identity-external-issuer`): read the step from the cluster's objects and
    /// print, for `kubectl apply -f -`, the objects it changes (nothing is written; what to do
    /// next goes to stderr).
    #[arg(long, conflicts_with = "manifests")]
    external_issuer: bool,
    /// With --external-issuer: read the objects from this file instead of the cluster of
    /// KUBECONFIG (`kubectl get -n knit secret/knit-identity-issuer configmap/knit-identity-trust-roots
    /// bundle/knit-identity-trust-roots -o yaml`).
    #[arg(long, requires = "external_issuer")]
    from: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "3650d", value_parser = duration)]
    anchor_lifetime: Duration,
    #[arg(long, default_value = "365d", value_parser = duration)]
    issuer_lifetime: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

const NEXT_ANCHOR: &str = "next/anchor.pem";
const NEXT_KEY: &str = "next/anchor.key";

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`: a reader sees
/// the old file or the new one, never a part.
fn replace(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    if secret { layout::write_secret(&tmp, contents.as_bytes()) } else { std::fs::write(&tmp, contents) }
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

pub fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    if args.external_issuer {
        return cert_manager::rotate(&args);
    }
    let dir = &args.dir;
    let (bundle_path, issuer_path) = (dir.join(layout::TRUST_ANCHORS), dir.join(layout::ISSUER_CERT));
    let rotation = Rotation::read(&read(&bundle_path)?, &read(&issuer_path)?).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if args.status {
        return status(&args, &rotation);
    }
    match &rotation.step {
        Step::Steady => {
            let today = time::OffsetDateTime::now_utc().date();
            let name = format!("root-{}{:02}{:02}.{}.{}", today.year(), u8::from(today.month()), today.day(), args.namespace, args.trust_domain);
            let next = create::trust_anchor(&name, args.anchor_lifetime)?;
            std::fs::create_dir_all(dir.join("next")).with_context(|| format!("creating {}", dir.join("next").display()))?;
            replace(&dir.join(NEXT_KEY), &next.key_pem, true)?;
            replace(&dir.join(NEXT_ANCHOR), &next.cert_pem, false)?;
            let bundle: String = rotation.anchors.iter().map(|a| cert_pem(&a.der)).chain([next.cert_pem.clone()]).collect();
            replace(&bundle_path, &bundle, false)?;
            println!("step 1 of 3: the new anchor {name} joined the bundle {}", bundle_path.display());
            println!("next: wait until every proxy has read it (at once in local mode; in a cluster, after `kubectl apply`, the kubelet updates the");
            println!("      ConfigMap volume within about a minute and proxies follow it), then run knit identity rotate again to switch the issuer");
        }
        Step::AnchorAdded { new } => {
            let next = Credentials { cert_pem: read(&dir.join(NEXT_ANCHOR))?, key_pem: read(&dir.join(NEXT_KEY))? };
            let ours = pem_certs(&next.cert_pem).map_err(anyhow::Error::msg)?;
            if ours.first().map(|d| fingerprint(d)) != Some(new.sha256.clone()) {
                bail!(
                    "the bundle's new anchor {} is not the one in {}: was step 1 run from another directory?",
                    new.info.subject,
                    dir.join(NEXT_ANCHOR).display()
                );
            }
            let name = format!("identity-{}", new.info.subject.trim_start_matches("CN=").trim_start_matches("root-"));
            let issuer = create::issuer(&name, args.issuer_lifetime, &next)?;
            replace(&dir.join(layout::ISSUER_KEY), &issuer.key_pem, true)?;
            replace(&issuer_path, &issuer.cert_pem, false)?;
            println!("step 2 of 3: the issuer is now {name}, signed by {}; new leaves chain to it", new.info.subject);
            println!("next: wait until every proxy has refreshed its leaf (within 70% of a leaf's lifetime, 24h by default), then run knit identity");
            println!("      rotate --control-admin ADDR again: it removes the old anchor once knit-control reports no leaf under it");
        }
        Step::IssuerSwitched { old } => {
            if args.control_admins.is_empty() {
                bail!(
                    "removing the old anchor needs knit-control's word that no proxy depends on it: name its admin address with --control-admin \
                     (in a cluster: kubectl -n {} port-forward deploy/knit-control 9990, then --control-admin 127.0.0.1:9990)",
                    args.namespace
                );
            }
            still_on_old(&args.control_admins, &rotation)?;
            replace(&bundle_path, &cert_pem(&rotation.current.der), false)?;
            let next_anchor = read(&dir.join(NEXT_ANCHOR)).ok().and_then(|p| pem_certs(&p).ok()).and_then(|c| c.first().map(|d| fingerprint(d)));
            if next_anchor.as_deref() == Some(rotation.current.sha256.as_str()) {
                std::fs::rename(dir.join(NEXT_KEY), dir.join(layout::ANCHOR_KEY)).context("moving the new anchor's key into place")?;
                let _ = std::fs::remove_dir_all(dir.join("next"));
            }
            let names: Vec<&str> = old.iter().map(|a| a.info.subject.as_str()).collect();
            println!("step 3 of 3: {} left the bundle; it holds {} alone. The rotation is complete.", names.join(", "), rotation.current.info.subject);
        }
    }
    if args.manifests {
        let issuer = Credentials { cert_pem: read(&issuer_path)?, key_pem: read(&dir.join(layout::ISSUER_KEY))? };
        let objects = crate::install::identity_objects(&args.namespace, &read(&bundle_path)?, &issuer);
        print!("{}", crate::install::to_yaml(&objects));
    }
    Ok(())
}

/// `--status`: the step, and in the last one whether the old anchor may go.
fn status(args: &RotateArgs, rotation: &Rotation) -> anyhow::Result<()> {
    println!("{}", rotation.describe());
    if matches!(rotation.step, Step::IssuerSwitched { .. }) && !args.control_admins.is_empty() {
        match still_on_old(&args.control_admins, rotation) {
            Ok(()) => println!("no proxy's leaf chains to the old anchor any more: the next run removes it"),
            Err(e) => println!("{e:#}"),
        }
    }
    Ok(())
}

/// Fails, naming them, while any proxy's leaf chains to an anchor other than the issuer's, or
/// while a replica is too young to know every proxy's leaf.
fn still_on_old(admins: &[SocketAddr], rotation: &Rotation) -> anyhow::Result<()> {
    let known = Known::fetch(admins)?;
    if let Some((admin, secs)) = known.incomplete {
        bail!(
            "knit-control at {admin} started too recently to know every proxy's leaf (leaves signed before it started are unknown to it): \
             run again in {secs}s"
        );
    }
    let behind = known.behind(rotation);
    if behind.is_empty() {
        return Ok(());
    }
    bail!("refusing to remove the old anchor: {}: run again then", describe_behind(&behind))
}

/// The unexpired leaves every named knit-control replica signed.
pub struct Known {
    pub leaves: Vec<Leaf>,
    /// A replica that started too recently to know every proxy's leaf, and how long until it does.
    pub incomplete: Option<(SocketAddr, u64)>,
}

impl Known {
    pub fn fetch(admins: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut known = Self { leaves: Vec::new(), incomplete: None };
        for admin in admins {
            let body = crate::identity::http_get(*admin, "/identity/leaves").map_err(|e| anyhow::anyhow!("knit-control at {admin}: {e}"))?;
            let report: LeavesReport = serde_json::from_str(&body).with_context(|| format!("knit-control at {admin}: /identity/leaves"))?;
            if !report.complete && known.incomplete.is_none_or(|(_, s)| s < report.complete_in) {
                known.incomplete = Some((*admin, report.complete_in));
            }
            known.leaves.extend(report.leaves);
        }
        Ok(known)
    }

    /// The leaves under an anchor other than the issuer's, soonest to expire first.
    pub fn behind(&self, rotation: &Rotation) -> Vec<Leaf> {
        let mut behind: Vec<Leaf> = self.leaves.iter().filter(|l| l.anchor_sha256 != rotation.current.sha256).cloned().collect();
        behind.sort_by_key(|l| l.not_after);
        behind
    }

    /// `knit check`'s line: how many leaves chain where, and who a rotation still waits for.
    pub fn describe(&self, rotation: &Rotation) -> String {
        let behind = self.behind(rotation);
        let mut line = if behind.is_empty() {
            format!("{} leaf(s), all under the issuer's anchor {}", self.leaves.len(), rotation.current.info.subject)
        } else {
            format!("{} of {} leaf(s) are not under the issuer's anchor: {}", behind.len(), self.leaves.len(), describe_behind(&behind))
        };
        if let Some((admin, secs)) = self.incomplete {
            line.push_str(&format!(" (knit-control at {admin} started too recently to know leaves signed before it: complete in {secs}s)"));
        }
        line
    }
}

/// "N proxy leaf(s) still chain to an old anchor (a, b and 3 more); ..." for leaves sorted by expiry.
fn describe_behind(behind: &[Leaf]) -> String {
    let last = behind.last().map(|l| time::OffsetDateTime::from_unix_timestamp(l.not_after).map(relative).unwrap_or_default()).unwrap_or_default();
    let mut names: Vec<&str> = behind.iter().map(|l| l.identity.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let shown = names.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 10 { format!(" and {} more", names.len() - 10) } else { String::new() };
    format!("{} proxy leaf(s) still chain to an old anchor ({shown}{more}); they refresh before they expire (the last {last})", behind.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(identity: &str, anchor_sha256: &str, not_after: i64) -> Leaf {
        Leaf {
            identity: identity.into(),
            issuer: "CN=issuer".into(),
            anchor: "CN=root".into(),
            anchor_sha256: anchor_sha256.into(),
            not_after,
            certified_at: 0,
        }
    }

    #[test]
    fn the_leaves_line_names_the_proxies_a_rotation_waits_for() {
        let old = create::trust_anchor("root-1", Duration::from_secs(86_400)).unwrap();
        let new = create::trust_anchor("root-2", Duration::from_secs(86_400)).unwrap();
        let issuer = create::issuer("issuer-2", Duration::from_secs(86_400), &new).unwrap();
        let rotation = Rotation::read(&format!("{}{}", old.cert_pem, new.cert_pem), &issuer.cert_pem).unwrap();
        let (old_sha, new_sha) = (rotation.anchors[0].sha256.clone(), rotation.current.sha256.clone());
        let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let mut known = Known { leaves: vec![leaf("a.ns", &new_sha, soon)], incomplete: None };
        assert!(known.describe(&rotation).starts_with("1 leaf(s), all under the issuer's anchor CN=root-2"), "{}", known.describe(&rotation));
        known.leaves.extend((0..12).map(|i| leaf(&format!("w{i:02}.ns"), &old_sha, soon + i)));
        known.leaves.push(leaf("w00.ns", &old_sha, soon + 100));
        known.incomplete = Some(("127.0.0.1:9990".parse().unwrap(), 7));
        let line = known.describe(&rotation);
        assert!(
            line.starts_with("13 of 14 leaf(s) are not under the issuer's anchor: 13 proxy leaf(s) still chain to an old anchor (w00.ns, w01.ns"),
            "{line}"
        );
        assert!(line.contains("w09.ns and 2 more)") && line.contains("the last in 1h"), "{line}");
        assert!(line.ends_with("complete in 7s)"), "{line}");
    }
}
