//! `knit identity rotate --external-issuer`: the same three steps when cert-manager holds the
//! anchors and issues the issuer, and trust-manager writes the bundle (`knit install
//! --identity-external-issuer`). Where the rotation stands is read from the cluster's objects
//! (or `--from`, what `kubectl get -o yaml` printed); each step prints the cert-manager and
//! trust-manager objects it changes, for `kubectl apply -f -`, and writes nothing itself:
//!
//! 1. a new anchor's Secret `knit-trust-anchor-YYYYMMDD` and the `Bundle` with it as a source
//!    beside the current ones (trust-manager then adds it to every namespace's ConfigMap);
//! 2. a CA `Issuer` of that Secret and the issuer `Certificate` pointed at it (a changed
//!    `issuerRef` makes cert-manager issue the issuer again at once);
//! 3. once no proxy's leaf chains to an old anchor, the `Bundle` with the new Secret alone, and
//!    the `kubectl delete` of the old Issuer and Secret.

use super::{still_on_old, RotateArgs};
use crate::install::{cert_manager, material, to_yaml, TRUST_ROOTS};
use anyhow::{bail, Context};
use knit_identity::{
    create,
    rotation::{Anchor, Rotation, Step},
};
use serde_json::Value;

pub fn rotate(args: &RotateArgs) -> anyhow::Result<()> {
    let ns = args.namespace.as_str();
    let text = match &args.from {
        Some(path) => super::read(path)?,
        None => from_cluster(ns)?,
    };
    let objects = material::manifest_objects(&text)?;
    let (bundle_pem, issuer) = material::identity_from_objects(&objects, ns)?;
    let rotation = Rotation::read(&bundle_pem, &issuer.cert_pem).map_err(anyhow::Error::msg)?;
    let sources = bundle_sources(&objects)?;
    if args.status {
        return super::status(args, &rotation);
    }
    let printed = match &rotation.step {
        Step::Steady => {
            let today = time::OffsetDateTime::now_utc().date();
            let date = format!("{}{:02}{:02}", today.year(), u8::from(today.month()), today.day());
            let secret = format!("{}-{date}", cert_manager::ANCHOR_SECRET);
            if sources.contains(&secret) {
                bail!("the Bundle already has the source {secret}: one rotation a day (remove it from the Bundle to start again)");
            }
            let next = create::trust_anchor(&format!("root-{date}.{ns}.{}", args.trust_domain), args.anchor_lifetime)?;
            let mut with_new: Vec<&str> = sources.iter().map(String::as_str).collect();
            with_new.push(&secret);
            eprintln!("step 1 of 3: the new anchor's Secret {ns}/{secret}, and the Bundle {TRUST_ROOTS} with it beside {}", sources.join(", "));
            eprintln!("next: kubectl apply -f - (this output); once trust-manager has written it and every proxy has read it (the kubelet");
            eprintln!("      updates ConfigMap volumes within about a minute), run knit identity rotate --external-issuer again");
            vec![cert_manager::anchor_secret(ns, &secret, &next), cert_manager::bundle(ns, &with_new)]
        }
        Step::AnchorAdded { new } => {
            let secret = secret_of(new, &sources)?;
            eprintln!("step 2 of 3: the Issuer {ns}/{secret} and the Certificate {} issued by it", cert_manager::ISSUER_CERTIFICATE);
            eprintln!("next: kubectl apply -f - (this output); cert-manager issues the issuer again under {}; once every proxy", new.info.subject);
            eprintln!("      has refreshed its leaf, run knit identity rotate --external-issuer --control-admin ADDR again");
            vec![cert_manager::ca_issuer(ns, &secret), cert_manager::issuer_certificate(ns, &args.trust_domain, &secret)]
        }
        Step::IssuerSwitched { old } => {
            if args.control_admins.is_empty() {
                bail!(
                    "removing the old anchor needs knit-control's word that no proxy depends on it: name its admin address with --control-admin \
                     (kubectl -n {ns} port-forward deploy/knit-control 9990, then --control-admin 127.0.0.1:9990)"
                );
            }
            still_on_old(&args.control_admins, &rotation)?;
            let keep = secret_of(&rotation.current, &sources)?;
            let names: Vec<&str> = old.iter().map(|a| a.info.subject.as_str()).collect();
            eprintln!("step 3 of 3: the Bundle {TRUST_ROOTS} with {keep} alone; {} leave(s) it", names.join(", "));
            eprintln!("next: kubectl apply -f - (this output); once trust-manager has updated the bundle, the old anchors' objects can go:");
            for gone in sources.iter().filter(|s| **s != keep) {
                eprintln!("      kubectl -n {ns} delete issuer.cert-manager.io/{gone} secret/{gone}");
            }
            vec![cert_manager::bundle(ns, &[&keep])]
        }
    };
    print!("{}", to_yaml(&printed));
    Ok(())
}

/// The Secrets the `Bundle` reads its anchors from.
fn bundle_sources(objects: &[Value]) -> anyhow::Result<Vec<String>> {
    let bundle = objects.iter().find(|o| o["kind"] == "Bundle" && o["metadata"]["name"] == TRUST_ROOTS).with_context(|| {
        format!("no Bundle {TRUST_ROOTS} among the objects: with --from, give `kubectl get -n NS secret/knit-identity-issuer configmap/{TRUST_ROOTS} bundle/{TRUST_ROOTS} -o yaml`")
    })?;
    let mut sources = Vec::new();
    for s in bundle["spec"]["sources"].as_array().map(Vec::as_slice).unwrap_or_default() {
        match s["secret"]["name"].as_str() {
            Some(name) if s["secret"]["key"] == "tls.crt" => sources.push(name.to_string()),
            _ => bail!("the Bundle {TRUST_ROOTS} has a source this command does not manage ({s}): edit the Bundle by hand"),
        }
    }
    Ok(sources)
}

/// The Secret step 1 made for `anchor` (`root-YYYYMMDD...` lives in `knit-trust-anchor-YYYYMMDD`),
/// which must be one of the Bundle's sources.
fn secret_of(anchor: &Anchor, sources: &[String]) -> anyhow::Result<String> {
    let cn = anchor.info.subject.trim_start_matches("CN=");
    let date = cn.split('.').next().and_then(|first| first.strip_prefix("root-"));
    let secret = date.map(|d| format!("{}-{d}", cert_manager::ANCHOR_SECRET));
    match secret {
        Some(s) if sources.contains(&s) => Ok(s),
        _ => bail!(
            "the anchor {} was not added by knit identity rotate --external-issuer (or its Secret left the Bundle): finish this rotation by hand",
            anchor.info.subject
        ),
    }
}

/// The issuer Secret, the bundle's ConfigMap and the Bundle, from the cluster of KUBECONFIG.
fn from_cluster(ns: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::{
        api::{ApiResource, DynamicObject},
        Api, Client,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = Client::try_default().await.context("the Kubernetes API (KUBECONFIG; or give --from)")?;
        let secret = Api::<Secret>::namespaced(client.clone(), ns).get(cert_manager::ISSUER_CERTIFICATE).await.context("the issuer Secret")?;
        let roots = Api::<ConfigMap>::namespaced(client.clone(), ns).get(TRUST_ROOTS).await.context("the trust bundle's ConfigMap")?;
        let resource = ApiResource {
            group: "trust.cert-manager.io".into(),
            version: "v1alpha1".into(),
            api_version: "trust.cert-manager.io/v1alpha1".into(),
            kind: "Bundle".into(),
            plural: "bundles".into(),
        };
        let bundle = Api::<DynamicObject>::all_with(client, &resource).get(TRUST_ROOTS).await.context("trust-manager's Bundle")?;
        let mut items = vec![serde_json::to_value(secret)?, serde_json::to_value(roots)?, serde_json::to_value(bundle)?];
        // Typed objects serialise without their kind.
        for (item, (version, kind)) in items.iter_mut().zip([("v1", "Secret"), ("v1", "ConfigMap"), ("trust.cert-manager.io/v1alpha1", "Bundle")]) {
            item["apiVersion"] = version.into();
            item["kind"] = kind.into();
        }
        Ok(serde_json::json!({"kind": "List", "items": items}).to_string())
    })
}
