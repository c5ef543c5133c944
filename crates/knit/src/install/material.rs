//! The certificates an installation carries: the identity trust anchors and issuer (generated,
//! given as files, or kept from the current installation by `knit upgrade`), and the webhook's
//! serving certificate with the CA the API server checks it against.

use super::Options;
use anyhow::{anyhow, bail, Context};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use clap::Args;
use knit_identity::{
    ca::Ca,
    create::{self, Credentials},
    inspect::CertInfo,
};
use serde_json::Value;
use std::{path::PathBuf, time::Duration};

pub(super) const DAY: Duration = Duration::from_secs(86_400);
/// A webhook certificate closer than this to its expiry is replaced by `knit upgrade`.
const WEBHOOK_RENEW_BEFORE: time::Duration = time::Duration::days(60);

#[derive(Args, Clone, Debug)]
pub struct MaterialArgs {
    /// PEM bundle of trust anchors (Linkerd's --identity-trust-anchors-file). With the issuer
    /// files, or alone with --identity-external-issuer; all three are generated when none is given.
    #[arg(long)]
    pub identity_trust_anchors_file: Option<PathBuf>,
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// The CA, serving certificate and key (PEM) of the proxy injector and the tap API; generated
    /// when not given. The certificate names knit-proxy-injector.NS.svc and knit-tap.NS.svc.
    #[arg(long, requires_all = ["webhook_cert_file", "webhook_key_file"])]
    pub webhook_ca_file: Option<PathBuf>,
    #[arg(long, requires = "webhook_ca_file")]
    pub webhook_cert_file: Option<PathBuf>,
    #[arg(long, requires = "webhook_ca_file")]
    pub webhook_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Material {
    pub anchors_pem: String,
    pub issuer: Credentials,
    pub webhook_ca_pem: String,
    pub webhook: Credentials,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The DNS names the API server dials knit-control's HTTPS servers by: the proxy injector's
/// Service and the tap API's, which share one serving certificate.
pub fn webhook_names(ns: &str) -> Vec<String> {
    ["knit-proxy-injector", "knit-tap"].iter().flat_map(|svc| [format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")]).collect()
}

fn new_webhook(ns: &str) -> anyhow::Result<(String, Credentials)> {
    let ca = create::trust_anchor(&format!("webhook.{ns}.knit"), 3650 * DAY)?;
    let cert = create::server(&webhook_names(ns), 365 * DAY, &ca)?;
    Ok((ca.cert_pem, cert))
}

impl Material {
    pub fn load_or_generate(a: &MaterialArgs, o: &Options) -> anyhow::Result<Self> {
        let (anchors_pem, issuer) = match (&a.identity_trust_anchors_file, &a.identity_issuer_certificate_file, &a.identity_issuer_key_file) {
            (Some(_), Some(_), Some(_)) if o.external_issuer => {
                bail!("--identity-external-issuer: cert-manager issues the issuer; pass --identity-trust-anchors-file alone")
            }
            (Some(anchors), None, None) if o.external_issuer => (read(anchors)?, Credentials { cert_pem: String::new(), key_pem: String::new() }),
            (None, ..) if o.external_issuer => {
                bail!("--identity-external-issuer needs --identity-trust-anchors-file: the anchor of the Secret knit-trust-anchor")
            }
            (Some(_), None, _) | (Some(_), _, None) => {
                bail!("--identity-trust-anchors-file needs --identity-issuer-certificate-file and --identity-issuer-key-file")
            }
            (Some(anchors), Some(cert), Some(key)) => (read(anchors)?, Credentials { cert_pem: read(cert)?, key_pem: read(key)? }),
            _ => {
                let anchor = create::trust_anchor(&format!("root.{}.{}", o.namespace, o.trust_domain), 3650 * DAY)?;
                let issuer = create::issuer(&format!("identity.{}.{}", o.namespace, o.trust_domain), 365 * DAY, &anchor)?;
                (anchor.cert_pem, issuer)
            }
        };
        let (webhook_ca_pem, webhook) = match (&a.webhook_ca_file, &a.webhook_cert_file, &a.webhook_key_file) {
            (Some(ca), Some(cert), Some(key)) => (read(ca)?, Credentials { cert_pem: read(cert)?, key_pem: read(key)? }),
            _ => new_webhook(&o.namespace)?,
        };
        let m = Self { anchors_pem, issuer, webhook_ca_pem, webhook };
        if o.external_issuer {
            if knit_identity::inspect::pem_certs(&m.anchors_pem).map_or(true, |c| c.is_empty()) {
                bail!("the trust anchors file holds no PEM certificate");
            }
        } else {
            m.check()?;
        }
        Ok(m)
    }

    /// Refuses an issuer that does not chain to the anchors or has expired: an installation with
    /// it would never certify a proxy.
    pub fn check(&self) -> anyhow::Result<()> {
        Ca::load(&self.issuer.cert_pem, &self.issuer.key_pem, &self.anchors_pem, DAY, Duration::ZERO).map_err(|e| anyhow!("the identity issuer: {e}"))?;
        Ok(())
    }

    /// The material of an installation, from its manifests (a YAML stream, or a `List`).
    pub fn from_manifests(text: &str, ns: &str) -> anyhow::Result<Self> {
        let objects = manifest_objects(text)?;
        let (anchors_pem, issuer) = identity_from_objects(&objects, ns)?;
        let field = |key: &str| object_field(&objects, ns, "Secret", "knit-proxy-injector-tls", key);
        let webhook = Credentials { cert_pem: field("tls.crt")?, key_pem: field("tls.key")? };
        Ok(Self { anchors_pem, issuer, webhook_ca_pem: field("ca.crt")?, webhook })
    }

    /// A new webhook certificate when the current one expires within 60 days or does not name
    /// every Service it serves (one from before the tap API) (`knit upgrade`).
    pub fn renew_webhook(mut self, ns: &str) -> anyhow::Result<Self> {
        let names = webhook_names(ns);
        let current = CertInfo::from_pem(&self.webhook.cert_pem);
        if !current.is_ok_and(|i| i.expires_in() > WEBHOOK_RENEW_BEFORE && names.iter().all(|n| i.dns_sans.contains(n))) {
            (self.webhook_ca_pem, self.webhook) = new_webhook(ns)?;
        }
        Ok(self)
    }

    /// Stand-in certificates, for rendering object references (`knit uninstall`).
    pub fn placeholder() -> Self {
        let empty = Credentials { cert_pem: String::new(), key_pem: String::new() };
        Self { anchors_pem: String::new(), issuer: empty.clone(), webhook_ca_pem: String::new(), webhook: empty }
    }
}

/// The objects of a YAML stream or of a `List` (as `kubectl get -o yaml` prints it).
pub fn manifest_objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).context("the current manifests are not YAML")?;
        match v["kind"].as_str() {
            Some("List") => objects.extend(v["items"].as_array().cloned().unwrap_or_default()),
            Some(_) => objects.push(v),
            None => {}
        }
    }
    Ok(objects)
}

/// The object `kind` `ns/name` of `objects` (namespaced kinds).
pub fn find_object<'a>(objects: &'a [Value], ns: &str, kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name && o["metadata"]["namespace"] == ns)
}

/// `key` of the Secret (decoded) or ConfigMap `ns/name` in `objects`.
fn object_field(objects: &[Value], ns: &str, kind: &str, name: &str, key: &str) -> anyhow::Result<String> {
    let o = find_object(objects, ns, kind, name).ok_or_else(|| {
        anyhow!("the current manifests have no {kind} {ns}/{name}; pass `kubectl get -n {ns} secret,configmap -o yaml` or the output of knit install")
    })?;
    match (o["data"][key].as_str(), o["stringData"][key].as_str()) {
        (Some(d), _) if kind == "Secret" => Ok(String::from_utf8(B64.decode(d).with_context(|| format!("{kind} {name}: {key} is not base64"))?)?),
        (Some(d), _) | (None, Some(d)) => Ok(d.to_string()),
        (None, None) => bail!("{kind} {ns}/{name} has no {key}"),
    }
}

/// The trust bundle (the `knit-identity-trust-roots` ConfigMap) and the issuer (the
/// `knit-identity-issuer` Secret, as Knit or cert-manager writes it) of `objects`.
pub fn identity_from_objects(objects: &[Value], ns: &str) -> anyhow::Result<(String, Credentials)> {
    let anchors_pem = object_field(objects, ns, "ConfigMap", "knit-identity-trust-roots", "ca-bundle.crt")?;
    let field = |key: &str| object_field(objects, ns, "Secret", "knit-identity-issuer", key);
    // cert-manager's Secret may hold, in `ca.crt`, the intermediate between the issuer and the
    // bundle: it completes the chain (as knit-control's --issuer-ca does).
    let chain = field("tls.crt")?;
    let completion = knit_identity::inspect::chain_completion(&field("ca.crt").unwrap_or_default(), &format!("{anchors_pem}\n{chain}"));
    let cert_pem = if completion.is_empty() { chain } else { format!("{}\n{completion}", chain.trim_end()) };
    Ok((anchors_pem, Credentials { cert_pem, key_pem: field("tls.key")? }))
}

#[cfg(test)]
impl MaterialArgs {
    pub fn default_for_tests() -> Self {
        Self {
            identity_trust_anchors_file: None,
            identity_issuer_certificate_file: None,
            identity_issuer_key_file: None,
            webhook_ca_file: None,
            webhook_cert_file: None,
            webhook_key_file: None,
        }
    }
}
