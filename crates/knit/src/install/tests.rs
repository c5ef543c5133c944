//! The install renderer's invariants; the Kubernetes schemas and the Helm chart are checked by
//! the CLI tests.

use super::*;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use material::MaterialArgs;

fn options(ha: bool) -> Options {
    options_with(&[], ha).unwrap()
}

fn options_with(args: &[&str], ha: bool) -> anyhow::Result<Options> {
    use clap::Parser;
    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        o: OptionArgs,
    }
    Options::new(&A::parse_from(std::iter::once("knit").chain(args.iter().copied())).o, ha, true)
}

#[test]
fn set_takes_the_tracing_values_and_refuses_the_rest() {
    let o = options_with(
        &["--set", "proxy.tracing.enabled=true,proxy.tracing.collector.endpoint=otel.obs:4317", "--set", "proxy.tracing.sampleUntraced=0.1"],
        false,
    )
    .unwrap();
    let v = o.inject_values("");
    assert!(v.proxy.tracing.enabled);
    assert_eq!((v.proxy.tracing.collector_endpoint.as_str(), v.proxy.tracing.sample_untraced.as_str()), ("otel.obs:4317", "0.1"));
    for (args, expect) in [
        (&["--set", "proxy.tracing.enabled=true"][..], "proxy.tracing.collector.endpoint"),
        (&["--set", "proxy.tracing.enabled=yes"][..], "true or false"),
        (&["--set", "proxy.tracing.sampleUntraced=5"][..], "between 0 and 1"),
        (&["--set", "namespace=mesh"][..], "not a value knit install takes"),
        (&["--set", "proxy.tracing.enabled"][..], "KEY=VALUE"),
    ] {
        let err = options_with(args, false).err().unwrap_or_else(|| panic!("{args:?} accepted")).to_string();
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

fn material() -> Material {
    Material::load_or_generate(&MaterialArgs::default_for_tests(), &options(false)).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn default_and_ha_modes() {
    let m = material();
    let one = render(&options(false), &m);
    let ha = render(&options(true), &m);
    assert_eq!(find(&one, "Deployment", "knit-control")["spec"]["replicas"], 1);
    assert_eq!(find(&ha, "Deployment", "knit-control")["spec"]["replicas"], 3);
    assert!(find(&ha, "Deployment", "knit-control")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
    assert!(one.iter().all(|o| o["kind"] != "PodDisruptionBudget"));
    assert_eq!(find(&ha, "PodDisruptionBudget", "knit-control")["spec"]["maxUnavailable"], 1);
    assert_eq!(one.iter().filter(|o| o["kind"] == "CustomResourceDefinition").count(), CRDS.len());
}

#[test]
fn the_webhook_trusts_its_serving_certificate_and_proxies_get_the_anchors() {
    let m = material();
    let objects = render(&options(false), &m);
    let hook = find(&objects, "MutatingWebhookConfiguration", "knit-proxy-injector-knit");
    let ca = String::from_utf8(B64.decode(hook["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ca, m.webhook_ca_pem);
    let values: knit_control::inject::Values =
        serde_yaml::from_str(find(&objects, "ConfigMap", "knit-config")["data"]["values.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(values.trust_anchors_pem, m.anchors_pem);
    assert_eq!(values.control_plane_namespace, "knit");
}

#[test]
fn least_privilege() {
    let objects = render(&options(false), &material());
    let role = find(&objects, "ClusterRole", "knit-control-knit");
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let resources = rule["resources"].to_string();
        let reviews = resources == r#"["tokenreviews"]"# || resources == r#"["subjectaccessreviews"]"#;
        // The one write: the trust bundle's ConfigMap in every namespace (--distribute-trust-roots).
        let bundle = resources == r#"["configmaps"]"# && verbs == ["get", "list", "watch", "create", "patch"];
        assert!(verbs == ["get", "list", "watch"] || (reviews && verbs == ["create"]) || bundle, "{rule}");
        assert!(!resources.contains("secrets") && !resources.contains('*'), "{rule}");
    }
    // With trust-manager writing the bundle, knit-control writes nothing.
    let external = Options { external_issuer: true, ..options(false) };
    let objects_external = render(&external, &material());
    let role = find(&objects_external, "ClusterRole", "knit-control-knit");
    assert!(role["rules"].as_array().unwrap().iter().all(|r| !r["resources"].to_string().contains("configmaps")), "{role}");
    // In kube-system, only the role that reads how the API server's front proxy authenticates.
    for o in objects.iter().filter(|o| o["metadata"]["namespace"] == "kube-system") {
        assert_eq!((o["kind"].as_str(), o["roleRef"]["name"].as_str()), (Some("RoleBinding"), Some("extension-apiserver-authentication-reader")), "{o}");
    }
    // Who may tap is granted by binding knit-tap-NS; it grants watch on tap.knit.dev and nothing else.
    let tap = find(&objects, "ClusterRole", "knit-tap-knit");
    assert_eq!(tap["rules"], serde_json::json!([{"apiGroups": ["tap.knit.dev"], "resources": ["*"], "verbs": ["watch"]}]));
}

#[test]
fn the_tap_api_is_registered_with_the_serving_certificates_ca() {
    let m = material();
    let objects = render(&options(false), &m);
    let api = find(&objects, "APIService", "v1alpha1.tap.knit.dev");
    assert_eq!(api["spec"]["service"], serde_json::json!({"name": "knit-tap", "namespace": "knit", "port": 443}));
    assert_eq!(String::from_utf8(B64.decode(api["spec"]["caBundle"].as_str().unwrap()).unwrap()).unwrap(), m.webhook_ca_pem);
    let names = knit_identity::inspect::CertInfo::from_pem(&m.webhook.cert_pem).unwrap().dns_sans;
    assert!(names.contains(&"knit-tap.knit.svc".to_string()) && names.contains(&"knit-proxy-injector.knit.svc".to_string()), "{names:?}");
    assert_eq!(find(&objects, "Service", "knit-tap")["spec"]["ports"][0]["targetPort"], 8089);

    // A certificate from before the tap API (the injector's names only) is renewed by upgrade;
    // a current one is kept.
    let old_ca = knit_identity::create::trust_anchor("webhook.knit.knit", 3650 * material::DAY).unwrap();
    let old = knit_identity::create::server(&["knit-proxy-injector.knit.svc".to_string()], 365 * material::DAY, &old_ca).unwrap();
    let before = Material { webhook_ca_pem: old_ca.cert_pem.clone(), webhook: old.clone(), ..m.clone() };
    let renewed = before.renew_webhook("knit").unwrap();
    assert_ne!(renewed.webhook.cert_pem, old.cert_pem);
    assert!(knit_identity::inspect::CertInfo::from_pem(&renewed.webhook.cert_pem).unwrap().dns_sans.contains(&"knit-tap.knit.svc".to_string()));
    assert_eq!(m.clone().renew_webhook("knit").unwrap().webhook.cert_pem, m.webhook.cert_pem);
}

#[test]
fn upgrade_keeps_the_identity_and_uninstall_lists_everything() {
    let o = options(false);
    let m = material();
    let first = to_yaml(&render(&o, &m));
    let kept = Material::from_manifests(&first, "knit").unwrap();
    assert_eq!(
        (kept.anchors_pem.as_str(), kept.issuer.cert_pem.as_str(), kept.webhook.cert_pem.as_str()),
        (m.anchors_pem.as_str(), m.issuer.cert_pem.as_str(), m.webhook.cert_pem.as_str())
    );
    let err = Material::from_manifests("kind: ConfigMap\nmetadata: {name: x, namespace: knit}\n", "knit").unwrap_err().to_string();
    assert!(err.contains("knit-identity-trust-roots") && err.contains("kubectl get -n knit secret,configmap -o yaml"), "{err}");
}

/// What `knit check` and `knit upgrade` read from a cluster where cert-manager writes the issuer
/// Secret (`kubernetes.io/tls`, its chain in `tls.crt`, the anchor in `ca.crt`) and trust-manager
/// the bundle's ConfigMap: recorded API JSON (`kubectl get -o json`), its issuer two CAs below the
/// anchor. With the intermediate in `ca.crt` instead (a CA Issuer whose Secret holds only the
/// intermediate), the chain is completed from it.
#[test]
fn cert_managers_issuer_secret_is_read_from_recorded_api_json() {
    let recorded = include_str!("../../tests/k8s/cert-manager-identity.json");
    let m = Material::from_manifests(recorded, "knit").unwrap();
    m.check().unwrap();
    assert_eq!(knit_identity::inspect::pem_certs(&m.issuer.cert_pem).unwrap().len(), 2, "the issuer and the intermediate");
    let r = knit_identity::rotation::Rotation::read(&m.anchors_pem, &m.issuer.cert_pem).unwrap();
    assert_eq!((r.step, r.current.info.subject.as_str()), (knit_identity::rotation::Step::Steady, "CN=root.knit.cluster.local"));

    let mut list: Value = serde_json::from_str(recorded).unwrap();
    let chain = String::from_utf8(B64.decode(list["items"][0]["data"]["tls.crt"].as_str().unwrap()).unwrap()).unwrap();
    let certs = knit_identity::inspect::pem_certs(&chain).unwrap();
    list["items"][0]["data"]["tls.crt"] = B64.encode(knit_identity::inspect::cert_pem(&certs[0])).into();
    let alone = Material::from_manifests(&list.to_string(), "knit").unwrap();
    alone.check().unwrap_err();
    list["items"][0]["data"]["ca.crt"] = B64.encode(knit_identity::inspect::cert_pem(&certs[1])).into();
    let completed = Material::from_manifests(&list.to_string(), "knit").unwrap();
    completed.check().unwrap();
    assert_eq!(knit_identity::inspect::pem_certs(&completed.issuer.cert_pem).unwrap(), certs);
}

#[test]
fn the_control_plane_accepts_its_arguments_and_serves_tls_as_the_identity_proxies_expect() {
    use clap::Parser;
    let m = material();
    let objects = render(&options(false), &m);
    let container = &find(&objects, "Deployment", "knit-control")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let config = knit_control::config::Config::try_parse_from(std::iter::once("knit-control").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("knit-control refuses the arguments knit install gives it: {e}"));
    let values = knit_control::inject::Values::default();
    assert_eq!(config.serve_tls_identity.as_deref(), Some(values.control_plane_identity().as_str()), "what the injector tells proxies to expect");
}
