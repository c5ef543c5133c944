//! `knit check` against a cluster (in-cluster config or KUBECONFIG): `--pre` before installing,
//! and, without it, what is running. Every failed check says how to fix it. The local-mode
//! checks (`--dir`) are in `identity.rs`.

use crate::install::{self, Material};
use anyhow::bail;
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
        core::v1::{ConfigMap, Namespace, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{api::PostParams, Api, Client};
use std::fmt::Write;

/// Native sidecars (an init container with `restartPolicy: Always`) are on by default from 1.29.
const MIN_NATIVE_SIDECAR_MINOR: u32 = 29;

/// The outcome of the checks, printed as they run.
#[derive(Default)]
struct Report {
    failed: usize,
    out: String,
}

impl Report {
    fn check(&mut self, what: &str, result: Result<String, String>) {
        let line = match result {
            Ok(msg) => format!("√ {what}: {msg}"),
            Err(msg) => {
                self.failed += 1;
                format!("× {what}: {msg}")
            }
        };
        println!("{line}");
        let _ = writeln!(self.out, "{line}");
    }
}

fn api_err(e: kube::Error) -> String {
    match &e {
        kube::Error::Api(s) if s.code == 404 => "not found".into(),
        _ => e.to_string(),
    }
}

pub fn kubernetes(pre: bool, namespace: &str, control_admins: &[std::net::SocketAddr]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let failed = rt.block_on(run(pre, namespace, control_admins))?;
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn run(pre: bool, ns: &str, control_admins: &[std::net::SocketAddr]) -> anyhow::Result<usize> {
    let mut r = Report::default();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            r.check("Kubernetes API", Err(format!("{e}; fix: set KUBECONFIG (or run inside a cluster); for local mode use knit check --dir")));
            return Ok(r.failed);
        }
    };
    let version = client.apiserver_version().await;
    let reachable = version.is_ok();
    r.check(
        "Kubernetes API",
        version.as_ref().map(|v| format!("reachable, version {}", v.git_version)).map_err(|e| format!("{e}; fix: check KUBECONFIG and that the cluster is up")),
    );
    if !reachable {
        return Ok(r.failed);
    }
    if let Ok(v) = &version {
        let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
        r.check(
            "Kubernetes version",
            if minor >= MIN_NATIVE_SIDECAR_MINOR {
                Ok(format!("{}.{} runs native sidecars", v.major, minor))
            } else {
                Err(format!("{}.{} has no native sidecars; fix: upgrade to 1.29 or newer, or install with --disable-native-sidecar", v.major, minor))
            },
        );
    }
    if pre {
        pre_install(&client, ns, &mut r).await;
    } else {
        installed(&client, ns, control_admins, &mut r).await;
    }
    Ok(r.failed)
}

/// Whether the current user may `verb` `resource`: installing needs these once.
async fn may(client: &Client, verb: &str, group: &str, resource: &str) -> Result<bool, String> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await.map_err(api_err)?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn pre_install(client: &Client, ns: &str, r: &mut Report) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    r.check(
        "control-plane namespace",
        match namespaces.get_opt(ns).await {
            Ok(None) => Ok(format!("{ns} does not exist yet")),
            Ok(Some(_)) => Err(format!("{ns} already exists; fix: to change an installation use knit upgrade, or knit uninstall | kubectl delete -f - first")),
            Err(e) => Err(api_err(e)),
        },
    );
    for (verb, group, resource) in [
        ("create", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("create", "apiregistration.k8s.io", "apiservices"),
        ("create", "", "namespaces"),
    ] {
        let what = format!("may {verb} {resource}");
        r.check(
            &what,
            match may(client, verb, group, resource).await {
                Ok(true) => Ok("yes".into()),
                Ok(false) => {
                    Err("no; fix: installing needs cluster-admin or a role with this permission (once: the running control plane needs far less)".into())
                }
                Err(e) => Err(e),
            },
        );
    }
}

async fn installed(client: &Client, ns: &str, control_admins: &[std::net::SocketAddr], r: &mut Report) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for text in install::CRDS {
        let name = crd_name(text);
        r.check(
            &format!("CRD {name}"),
            crds.get(&name).await.map(|_| "installed".to_string()).map_err(|e| format!("{}; fix: knit install | kubectl apply -f -", api_err(e))),
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    r.check(
        "knit-control",
        match deployments.get("knit-control").await {
            Ok(d) => {
                let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                if ready >= want {
                    Ok(format!("{ready}/{want} replicas ready"))
                } else {
                    Err(format!(
                        "{ready}/{want} replicas ready; fix: kubectl -n {ns} describe deployment knit-control, and kubectl -n {ns} logs deploy/knit-control"
                    ))
                }
            }
            Err(e) => Err(format!("{}; fix: knit install | kubectl apply -f -", api_err(e))),
        },
    );
    let material = installed_material(client, ns).await;
    match &material {
        Ok(m) => {
            r.check(
                "identity issuer",
                m.check().map(|()| "chains to the trust anchors".into()).map_err(|e| format!("{e}; fix: knit upgrade with a new issuer signed by the anchor")),
            );
            r.check("identity issuer expiry", crate::identity::cert_expiry(&m.issuer.cert_pem));
            let rotation = knit_identity::rotation::Rotation::read(&m.anchors_pem, &m.issuer.cert_pem);
            r.check("trust-anchor rotation", rotation.as_ref().map(|r| r.describe()).map_err(Clone::clone));
            if let (Ok(rotation), false) = (&rotation, control_admins.is_empty()) {
                // Blocking HTTP/1 to a loopback port-forward: short, and nothing else runs here.
                r.check("proxy leaves", crate::identity::proxy_leaves(control_admins, rotation));
            }
            r.check("webhook certificate expiry", crate::identity::cert_expiry(&m.webhook.cert_pem).map_err(|e| format!("{e}; fix: knit upgrade renews it")));
        }
        Err(e) => r.check("identity material", Err(e.clone())),
    }
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    r.check(
        "proxy injector webhook",
        match (hooks.get(&format!("knit-proxy-injector-{ns}")).await, &material) {
            (Ok(h), Ok(m)) => {
                let bundle = h.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.ca_bundle.clone()).map(|b| String::from_utf8_lossy(&b.0).into_owned());
                match bundle {
                    Some(b) if b == m.webhook_ca_pem => Ok("registered, and its caBundle signs the serving certificate".into()),
                    _ => Err("its caBundle is not the CA of the serving certificate in knit-proxy-injector-tls; the API server cannot call it; fix: knit upgrade --from (current manifests) | kubectl apply -f -".into()),
                }
            }
            (Err(e), _) => Err(format!("{}; fix: knit install | kubectl apply -f -", api_err(e))),
            (Ok(_), Err(_)) => Err("cannot be checked without knit-proxy-injector-tls".into()),
        },
    );
    let api_services: Api<APIService> = Api::all(client.clone());
    let describe = "kubectl describe apiservice v1alpha1.tap.knit.dev";
    r.check(
        "tap API",
        match api_services.get("v1alpha1.tap.knit.dev").await {
            Ok(s) => match s.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Available") {
                Some(c) if c.status == "True" => Ok("registered, and the API server reaches it".into()),
                Some(c) => Err(format!(
                    "the API server cannot reach it ({}: {}); fix: {describe}, and kubectl -n {ns} logs deploy/knit-control",
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                )),
                None => Err(format!("registered, not yet checked by the API server; fix: wait, then {describe}")),
            },
            Err(e) => Err(format!("{}; fix: knit upgrade --from (current manifests) | kubectl apply -f -", api_err(e))),
        },
    );
}

/// The identity and webhook material an installation holds, as `knit upgrade` reads it.
async fn installed_material(client: &Client, ns: &str) -> Result<Material, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut objects = Vec::new();
    for name in ["knit-identity-issuer", "knit-proxy-injector-tls"] {
        let s = secrets.get(name).await.map_err(|e| format!("Secret {ns}/{name}: {}; fix: knit install | kubectl apply -f -", api_err(e)))?;
        objects.push(serde_json::to_value(s).map_err(|e| e.to_string())?);
    }
    let roots = config_maps.get("knit-identity-trust-roots").await.map_err(|e| format!("ConfigMap {ns}/knit-identity-trust-roots: {}", api_err(e)))?;
    objects.push(serde_json::to_value(roots).map_err(|e| e.to_string())?);
    let list = serde_json::json!({"kind": "List", "items": objects});
    Material::from_manifests(&list.to_string(), ns).map_err(|e| format!("{e:#}"))
}

fn crd_name(text: &str) -> String {
    serde_yaml::from_str::<serde_json::Value>(text).ok().and_then(|v| v["metadata"]["name"].as_str().map(str::to_string)).unwrap_or_default()
}
