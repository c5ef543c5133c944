//! The injector on a corpus of real manifests (`tests/inject/`), checked field by field. The same
//! corpus is validated against the Kubernetes schemas by `knit inject`'s CLI test.

use super::*;

fn corpus(name: &str) -> Value {
    let path = format!("{}/tests/inject/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap()
}

fn injector() -> Injector {
    Injector::new(Values { trust_anchors_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(), ..Values::default() })
}

/// Injects `object` (a workload of any kind) and returns it patched.
fn injected(object: &Value, ns: &BTreeMap<String, String>) -> Value {
    injected_by(&injector(), object, ns)
}

fn injected_by(injector: &Injector, object: &Value, ns: &BTreeMap<String, String>) -> Value {
    let base = pod_template_path(object["kind"].as_str().unwrap()).unwrap();
    let owner = Owner { kind: object["kind"].as_str().unwrap().into(), name: object["metadata"]["name"].as_str().unwrap().into() };
    match injector.inject(object, base, ns, Some(&owner)).unwrap() {
        Outcome::Inject { patch, .. } => {
            let mut out = object.clone();
            json_patch::patch(&mut out, &patch).unwrap();
            out
        }
        Outcome::Skip(reason) => panic!("skipped: {reason}"),
    }
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([(KNIT_INJECT.to_string(), "enabled".to_string())])
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().and_then(|l| l.iter().find(|c| c["name"] == name)).unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn pod_gets_a_native_sidecar_with_its_overrides() {
    let pod = injected(&corpus("pod.yaml"), &BTreeMap::new());
    let spec = &pod["spec"];
    let inits: Vec<&str> = spec["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(inits, ["knit-init", "knit-proxy"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 4191);
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(proxy["resources"]["requests"]["cpu"], "200m", "config.linkerd.io/proxy-cpu-request");
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(env(proxy, "KNIT_PROXY_LOG"), Some("debug"), "config.knit.dev wins over config.linkerd.io");
    assert_eq!(env(proxy, "KNIT_PROXY_INBOUND_PORTS"), Some("8080,9100"));
    assert_eq!(env(proxy, "KNIT_PROXY_OPAQUE_PORTS"), Some("6379,9000-9010"));
    assert_eq!(env(proxy, "KNIT_PROXY_IDENTITY_LOCAL_NAME"), Some("$(_pod_sa).$(_pod_ns).serviceaccount.identity.knit.cluster.local"));
    assert_eq!(env(proxy, "KNIT_PROXY_DESTINATION_SVC_ADDR"), Some("knit-destination.knit.svc.cluster.local.:8086"));
    for var in ["KNIT_PROXY_DESTINATION_SVC_NAME", "KNIT_PROXY_POLICY_SVC_NAME", "KNIT_PROXY_IDENTITY_SVC_NAME", "KNIT_PROXY_TAP_SVC_NAME"] {
        assert_eq!(
            env(proxy, var),
            Some("knit-control.knit.serviceaccount.identity.knit.cluster.local"),
            "{var}: the control plane proves this identity with TLS"
        );
    }
    // The bundle comes from the namespace's ConfigMap, mounted whole (a subPath mount is never
    // updated), so the proxy follows a rotation; it is not inline.
    assert_eq!(env(proxy, "KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE"), Some("/var/run/knit/identity/trust-roots/ca-bundle.crt"));
    assert_eq!(env(proxy, "KNIT_PROXY_IDENTITY_TRUST_ANCHORS"), None);
    let roots = named(&spec["volumes"], "knit-identity-trust-roots");
    assert_eq!(roots["configMap"], json!({"name": "knit-identity-trust-roots", "optional": false}));
    let mount = named(&proxy["volumeMounts"], "knit-identity-trust-roots");
    assert_eq!(mount, &json!({"name": "knit-identity-trust-roots", "mountPath": "/var/run/knit/identity/trust-roots", "readOnly": true}));
    let init = &spec["initContainers"][0];
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args.join(" "), "init --inbound-port 4143 --outbound-port 4140 --proxy-uid 2102 --skip-inbound-ports 4190,4191 --skip-outbound-ports 5432");
    let token = named(&spec["volumes"], "knit-identity-token");
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "identity.l5d.io");
    assert_eq!(pod["metadata"]["labels"]["linkerd.io/control-plane-ns"], "knit");
    assert_eq!(pod["metadata"]["labels"]["linkerd.io/workload-ns"], "shop");
    assert_eq!(pod["metadata"]["labels"]["app"], "web", "existing labels stay");
    assert_eq!(pod["metadata"]["annotations"]["linkerd.io/proxy-version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(pod["metadata"]["annotations"]["linkerd.io/trust-root-sha256"].as_str().unwrap().len(), 64);
    assert_eq!(spec["containers"].as_array().unwrap().len(), 2, "the application's containers are untouched");
}

#[test]
fn deployment_template_gets_maps_and_lists_it_lacked() {
    let d = injected(&corpus("deployment.yaml"), &enabled());
    let t = &d["spec"]["template"];
    assert_eq!(t["metadata"]["labels"]["linkerd.io/proxy-deployment"], "books");
    assert!(t["metadata"]["annotations"]["linkerd.io/created-by"].as_str().unwrap().starts_with("knit/"));
    assert_eq!(t["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(env(&t["spec"]["initContainers"][1], "KNIT_PROXY_INBOUND_PORTS"), Some("7000"));
    assert_eq!(d["spec"]["replicas"], 2, "the rest of the object is untouched");
}

#[test]
fn classic_mode_puts_the_proxy_first_and_init_after_the_pods_own() {
    let s = injected(&corpus("statefulset.yaml"), &enabled());
    let spec = &s["spec"]["template"]["spec"];
    let inits: Vec<&str> = spec["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(inits, ["migrate", "knit-init"]);
    assert_eq!(spec["containers"][0]["name"], "knit-proxy");
    assert_eq!(spec["containers"][1]["name"], "postgres");
    assert!(spec["containers"][0].get("restartPolicy").is_none());
    assert_eq!(spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][1], "await");
    let volumes: Vec<&str> = spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["data", "knit-identity-token", "knit-proxy-init-xtables-lock", "knit-identity-trust-roots"]);
}

#[test]
fn inline_anchors_when_the_cluster_asks_for_them() {
    let values =
        Values { trust_anchors_inline: true, trust_anchors_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(), ..Values::default() };
    let pod = injected_by(&Injector::new(values), &corpus("pod.yaml"), &enabled());
    let spec = &pod["spec"];
    let proxy = spec["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "knit-proxy").unwrap();
    assert!(env(proxy, "KNIT_PROXY_IDENTITY_TRUST_ANCHORS").unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(env(proxy, "KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE"), None);
    assert!(!spec["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "knit-identity-trust-roots"));
}

#[test]
fn jobs_and_cronjobs_get_native_sidecars() {
    let job = injected(&corpus("job.yaml"), &enabled());
    assert_eq!(job["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(job["spec"]["template"]["metadata"]["labels"]["linkerd.io/proxy-job"], "report");
    let cron = injected(&corpus("cronjob.yaml"), &enabled());
    let proxy = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(env(proxy, "KNIT_PROXY_SHUTDOWN_GRACE_PERIOD"), Some("30s"));
}

#[test]
fn injecting_twice_changes_nothing() {
    for file in ["pod.yaml", "deployment.yaml", "statefulset.yaml", "job.yaml", "cronjob.yaml"] {
        let once = injected(&corpus(file), &enabled());
        let base = pod_template_path(once["kind"].as_str().unwrap()).unwrap();
        match injector().inject(&once, base, &enabled(), None).unwrap() {
            Outcome::Skip(reason) => assert!(reason.contains("already has a knit-proxy"), "{file}: {reason}"),
            other => panic!("{file}: {other:?}"),
        }
    }
}

#[test]
fn uninject_restores_the_original() {
    for file in ["pod.yaml", "deployment.yaml", "statefulset.yaml", "job.yaml", "cronjob.yaml"] {
        let original = corpus(file);
        let mut round = injected(&original, &enabled());
        let base = pod_template_path(original["kind"].as_str().unwrap()).unwrap();
        assert!(uninject(&mut round, base), "{file}");
        assert_eq!(round, original, "{file}");
        assert!(!uninject(&mut round, base), "{file}: nothing left to remove");
    }
}

#[test]
fn skips_with_a_reason() {
    let agent = corpus("hostnetwork.yaml");
    let skip = |object: &Value, ns: &BTreeMap<String, String>| match injector().inject(object, "/spec/template", ns, None).unwrap() {
        Outcome::Skip(reason) => reason,
        other => panic!("{other:?}"),
    };
    assert!(skip(&agent, &enabled()).contains("hostNetwork"));
    let deployment = corpus("deployment.yaml");
    assert!(skip(&deployment, &BTreeMap::new()).contains("neither the pod nor its namespace"));
    let mut opted_out = deployment.clone();
    opted_out["spec"]["template"]["metadata"]["annotations"] = json!({"linkerd.io/inject": "disabled"});
    assert!(skip(&opted_out, &enabled()).contains("linkerd.io/inject is disabled"), "the pod's annotation wins over its namespace's");
}

#[test]
fn namespace_annotations_apply_unless_the_pod_overrides_them() {
    let ns = BTreeMap::from([
        (LINKERD_INJECT.to_string(), "enabled".to_string()),
        ("config.linkerd.io/default-inbound-policy".to_string(), "all-authenticated".to_string()),
        ("config.linkerd.io/proxy-log-level".to_string(), "trace".to_string()),
    ]);
    let pod = injected(&corpus("pod.yaml"), &ns);
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(env(proxy, "KNIT_PROXY_INBOUND_DEFAULT_POLICY"), Some("all-authenticated"));
    assert_eq!(env(proxy, "KNIT_PROXY_LOG"), Some("debug"), "the pod's own annotation wins");
}

#[test]
fn bad_annotations_are_refused_by_name() {
    let cases = [
        ("config.linkerd.io/proxy-cpu-request", "lots", "quantity"),
        ("config.linkerd.io/inbound-port", "70000", "port"),
        ("config.linkerd.io/skip-outbound-ports", "5432,abc", "abc"),
        ("config.linkerd.io/skip-subnets", "10.0.0.0/33", "CIDR"),
        ("config.linkerd.io/default-inbound-policy", "allow-all", "expected one of"),
        ("config.linkerd.io/proxy-enable-native-sidecar", "yes", "true or false"),
        ("linkerd.io/inject", "on", "enabled, disabled or ingress"),
    ];
    for (key, value, expect) in cases {
        let mut pod = corpus("pod.yaml");
        pod["metadata"]["annotations"][key] = json!(value);
        let err = injector().inject(&pod, "", &BTreeMap::new(), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(value) && text.contains(expect), "{text}");
    }
}

#[test]
fn owners_from_owner_references() {
    let pod =
        json!({"metadata": {"labels": {"pod-template-hash": "7d9f8c"}, "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f8c", "controller": true}]}});
    assert_eq!(Owner::of_pod(&pod), Some(Owner { kind: "Deployment".into(), name: "web".into() }));
    let job = json!({"metadata": {"ownerReferences": [{"kind": "Job", "name": "nightly-2911", "controller": true}]}});
    assert_eq!(Owner::of_pod(&job), Some(Owner { kind: "Job".into(), name: "nightly-2911".into() }));
    assert_eq!(Owner::of_pod(&json!({"metadata": {}})), None);
}

#[test]
fn quantities() {
    for ok in ["100m", "0.5", "64Mi", "1Gi", "2e3", "1.5k", "+1"] {
        assert!(overrides::quantity(ok).is_ok(), "{ok}");
    }
    for bad in ["", "m", "1.2.3", "64MB", "lots", "1ee"] {
        assert!(overrides::quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn trace_annotations_give_the_proxy_a_collector_its_identity_and_the_pod_s_attributes() {
    let deployment = injected(&corpus("traced.yaml"), &BTreeMap::new());
    let spec = &deployment["spec"]["template"]["spec"];
    let proxy = named(&spec["initContainers"], "knit-proxy");
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR"), Some("collector.tracing:4317"));
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_COLLECTOR_SVC_NAME"), Some("collector.tracing.serviceaccount.identity.knit.cluster.local"));
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_SERVICE_NAME"), Some("knit-proxy"));
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_ATTRIBUTES_PATH"), Some("/var/run/knit/podinfo/labels"));
    assert_eq!(
        env(proxy, "KNIT_PROXY_TRACE_EXTRA_ATTRIBUTES"),
        Some("k8s.pod.ip=$(_pod_ip)\nk8s.pod.uid=$(_pod_uid)\nk8s.container.name=knit-proxy\nservice.name=authors\nteam=catalogue")
    );
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_SAMPLE_UNTRACED"), None, "sampling is off unless asked for");
    // The variables it refers to come first (Kubernetes expands only earlier ones).
    let names: Vec<&str> = proxy["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(names.iter().position(|n| *n == "_pod_ip") < names.iter().position(|n| *n == "KNIT_PROXY_TRACE_EXTRA_ATTRIBUTES"));
    let podinfo = named(&spec["volumes"], "knit-podinfo");
    assert_eq!(podinfo["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.labels");
    assert!(proxy["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "knit-podinfo"));

    let mut out = deployment.clone();
    assert!(uninject(&mut out, "/spec/template"));
    assert!(!out["spec"]["template"]["spec"]["volumes"].as_array().is_some_and(|v| v.iter().any(|v| v["name"] == "knit-podinfo")));
}

#[test]
fn tracing_in_the_values_applies_to_every_pod_and_a_pod_may_sample() {
    let mut values = injector().values().clone();
    values.proxy.tracing.enabled = true;
    values.proxy.tracing.collector_endpoint = "otel-collector.observability.svc.cluster.local:4317".into();
    values.proxy.tracing.collector_service_account = "otel".into();
    values.proxy.tracing.collector_namespace = "observability".into();
    let by_values = Injector::new(values);
    let mut pod = corpus("pod.yaml");
    pod["metadata"]["annotations"]["config.knit.dev/trace-sample-untraced"] = json!("0.05");
    let pod = injected_by(&by_values, &pod, &BTreeMap::new());
    let proxy = named(&pod["spec"]["initContainers"], "knit-proxy");
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR"), Some("otel-collector.observability.svc.cluster.local:4317"));
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_COLLECTOR_SVC_NAME"), Some("otel.observability.serviceaccount.identity.knit.cluster.local"));
    assert_eq!(env(proxy, "KNIT_PROXY_TRACE_SAMPLE_UNTRACED"), Some("0.05"));
    // Off in the values and without annotations: nothing of it.
    let plain = injected(&corpus("pod.yaml"), &BTreeMap::new());
    let proxy = named(&plain["spec"]["initContainers"], "knit-proxy");
    assert!(proxy["env"].as_array().unwrap().iter().all(|e| !e["name"].as_str().unwrap().contains("TRACE") && e["name"] != "_pod_ip"));
    assert!(plain["spec"]["volumes"].as_array().unwrap().iter().all(|v| v["name"] != "knit-podinfo"));
}

#[test]
fn bad_trace_annotations_are_refused_by_name() {
    let cases = [
        ("config.linkerd.io/trace-collector", "collector", "HOST:PORT"),
        ("config.linkerd.io/trace-collector", "collector.tracing:0", "HOST:PORT"),
        ("config.linkerd.io/trace-collector-protocol", "opencensus", "OTLP"),
        ("config.knit.dev/trace-sample-untraced", "2", "between 0 and 1"),
    ];
    for (key, value, expect) in cases {
        let mut d = corpus("traced.yaml");
        d["spec"]["template"]["metadata"]["annotations"][key] = json!(value);
        let err = injector().inject(&d, "/spec/template", &BTreeMap::new(), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(value) && text.contains(expect), "{text}");
    }
    // A service account but a collector address with no namespace in it.
    let mut d = corpus("traced.yaml");
    d["spec"]["template"]["metadata"]["annotations"]["config.linkerd.io/trace-collector"] = json!("10.0.0.7:4317");
    let err = injector().inject(&d, "/spec/template", &BTreeMap::new(), None).unwrap_err().to_string();
    assert!(err.contains("trace-collector-namespace"), "{err}");
}

#[test]
fn a_gateway_pod_forwards_this_clusters_service_names() {
    let mut deployment = corpus("deployment.yaml");
    let proxy_env = |d: &Value, var: &str| {
        let pod = injected(d, &enabled());
        let spec = &pod["spec"]["template"]["spec"];
        let proxy =
            [&spec["initContainers"], &spec["containers"]].into_iter().find_map(|l| l.as_array()?.iter().find(|c| c["name"] == "knit-proxy")).cloned().unwrap();
        env(&proxy, var).map(str::to_string)
    };
    assert_eq!(proxy_env(&deployment, "KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES"), None, "not a gateway unless asked");
    deployment["spec"]["template"]["metadata"]["annotations"] = json!({"config.linkerd.io/enable-gateway": "true"});
    assert_eq!(proxy_env(&deployment, "KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES").as_deref(), Some("svc.cluster.local."));
}
