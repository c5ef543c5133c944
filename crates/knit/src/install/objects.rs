//! The control plane's objects. Mirrored by `charts/knit/templates/`: change both together (the
//! chart test compares them object by object).

use super::{Material, Options};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::{json, Value};

const CONTROL: &str = "knit-control";
/// The control plane's own UID (the proxy's is 2102).
const CONTROL_UID: i64 = 2103;

fn labels(o: &Options, component: &str) -> Value {
    labels_in(&o.namespace, component)
}

fn labels_in(ns: &str, component: &str) -> Value {
    json!({"app.kubernetes.io/part-of": "knit", "app.kubernetes.io/component": component, "knit.dev/control-plane-ns": ns})
}

fn meta(o: &Options, name: &str, component: &str) -> Value {
    meta_in(&o.namespace, name, component)
}

fn meta_in(ns: &str, name: &str, component: &str) -> Value {
    json!({"name": name, "namespace": ns, "labels": labels_in(ns, component)})
}

/// The trust bundle (Linkerd's `linkerd-identity-trust-roots`) and the issuer Secret with the
/// keys cert-manager writes (`tls.crt`, `tls.key`, `ca.crt`: here the bundle): what `knit
/// install` renders and `knit identity rotate --manifests` prints at each step. Its type stays
/// `Opaque`, as earlier installations made it: a Secret's type cannot change, so an upgrade
/// applied over it would fail; knit-control reads a `kubernetes.io/tls` one the same way.
pub fn identity_objects(ns: &str, anchors_pem: &str, issuer: &knit_identity::create::Credentials) -> [Value; 2] {
    let data: serde_json::Map<String, Value> = [("ca.crt", anchors_pem), ("tls.crt", &issuer.cert_pem), ("tls.key", &issuer.key_pem)]
        .iter()
        .map(|(k, v)| (k.to_string(), json!(B64.encode(v))))
        .collect();
    [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta_in(ns, TRUST_ROOTS, "identity"), "data": {"ca-bundle.crt": anchors_pem}}),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta_in(ns, "knit-identity-issuer", "identity"), "data": data}),
    ]
}

/// The identity alert rules (`groups`, as in a rules file) as a prometheus-operator object.
pub fn prometheus_rule(ns: &str, rules: Value) -> Value {
    json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta_in(ns, "knit-identity", "identity"), "spec": rules})
}

/// The trust bundle's ConfigMap, in the control plane's namespace and in every meshed one.
pub const TRUST_ROOTS: &str = "knit-identity-trust-roots";

fn cluster_meta(o: &Options, name: &str) -> Value {
    let mut m = meta(o, name, "control-plane");
    m.as_object_mut().map(|m| m.remove("namespace"));
    m
}

pub fn control_plane(o: &Options, m: &Material) -> Vec<Value> {
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": o.namespace,
            "labels": {"app.kubernetes.io/part-of": "knit", "knit.dev/is-control-plane": "true", "config.linkerd.io/admission-webhooks": "disabled",
                       "pod-security.kubernetes.io/enforce": "restricted"},
        }}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(o, CONTROL, "control-plane")}),
        cluster_role(o),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": cluster_meta(o, &format!("knit-control-{}", o.namespace)),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("knit-control-{}", o.namespace)},
               "subjects": [{"kind": "ServiceAccount", "name": CONTROL, "namespace": o.namespace}]}),
        secret(
            o,
            "knit-proxy-injector-tls",
            "proxy-injector",
            &[("ca.crt", &m.webhook_ca_pem), ("tls.crt", &m.webhook.cert_pem), ("tls.key", &m.webhook.key_pem)],
        ),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(o, "knit-config", "control-plane"),
               "data": {"values.yaml": serde_yaml::to_string(&o.inject_values(&m.anchors_pem)).expect("values serialise")}}),
        deployment(o),
    ];
    if o.external_issuer {
        out.extend(cert_manager(o));
    } else {
        out.extend(identity_objects(&o.namespace, &m.anchors_pem, &m.issuer));
    }
    for (name, port, target, component) in [
        ("knit-identity", 8080, 8080, "identity"),
        ("knit-destination", 8086, 8086, "destination"),
        ("knit-policy", 8090, 8090, "policy"),
        ("knit-proxy-injector", 443, 9443, "proxy-injector"),
        ("knit-tap", 443, 8089, "tap"),
    ] {
        let port_name = if port == 443 { "https" } else { "grpc" };
        out.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(o, name, component), "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": CONTROL},
            "ports": [{"name": port_name, "port": port, "targetPort": target, "protocol": "TCP"}],
        }}));
    }
    if o.ha {
        out.push(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(o, CONTROL, "control-plane"),
                        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROL}}}}));
    }
    out.push(webhook_config(o, m));
    out.extend(tap_api(o, m));
    out
}

/// Tap through the API server, as Linkerd's tap APIService: the registration, the right to read
/// how the API server's front proxy authenticates (kube-system's
/// extension-apiserver-authentication-reader), and the ClusterRole to bind to those who may tap.
fn tap_api(o: &Options, m: &Material) -> Vec<Value> {
    vec![
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": cluster_meta(o, "v1alpha1.tap.knit.dev"), "spec": {
            "group": "tap.knit.dev",
            "version": "v1alpha1",
            "service": {"name": "knit-tap", "namespace": o.namespace, "port": 443},
            "caBundle": B64.encode(&m.webhook_ca_pem),
            "groupPriorityMinimum": 1000,
            "versionPriority": 100,
        }}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": format!("knit-control-{}-auth-reader", o.namespace), "namespace": "kube-system", "labels": labels(o, "tap")},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": CONTROL, "namespace": o.namespace}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": cluster_meta(o, &format!("knit-tap-{}", o.namespace)), "rules": [
            {"apiGroups": ["tap.knit.dev"], "resources": ["*"], "verbs": ["watch"]},
        ]}),
    ]
}

fn secret(o: &Options, name: &str, component: &str, entries: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = entries.iter().map(|(k, v)| (k.to_string(), json!(B64.encode(v)))).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(o, name, component), "data": data})
}

/// `--identity-external-issuer`: cert-manager issues the issuer from the trust anchor in the
/// Secret `knit-trust-anchor` (which the user creates in the control plane's namespace, as
/// Linkerd's docs have it) and renews it; trust-manager (its trust namespace set to the control
/// plane's) copies the anchor into the `knit-identity-trust-roots` ConfigMap of every namespace.
fn cert_manager(o: &Options) -> Vec<Value> {
    vec![
        cert_manager::ca_issuer(&o.namespace, cert_manager::ANCHOR_SECRET),
        cert_manager::issuer_certificate(&o.namespace, &o.trust_domain, cert_manager::ANCHOR_SECRET),
        cert_manager::bundle(&o.namespace, &[cert_manager::ANCHOR_SECRET]),
    ]
}

/// cert-manager's and trust-manager's objects, one by one: `knit install` renders them, `knit
/// identity rotate --external-issuer` prints the ones each step changes.
pub mod cert_manager {
    use super::{meta_in, TRUST_ROOTS};
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    use serde_json::{json, Value};

    /// The Secret holding the first trust anchor (certificate and key); the CA `Issuer` that
    /// signs with it has the same name.
    pub const ANCHOR_SECRET: &str = "knit-trust-anchor";
    pub const ISSUER_CERTIFICATE: &str = "knit-identity-issuer";

    /// A CA `Issuer` signing with the anchor in the Secret `secret` (named as the Secret).
    pub fn ca_issuer(ns: &str, secret: &str) -> Value {
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": meta_in(ns, secret, "identity"), "spec": {"ca": {"secretName": secret}}})
    }

    /// The identity issuer as a 48 h CA `Certificate` from the `Issuer` `issuer`. A change of
    /// `issuerRef` makes cert-manager issue it again at once.
    pub fn issuer_certificate(ns: &str, trust_domain: &str, issuer: &str) -> Value {
        let name = format!("identity.{ns}.{trust_domain}");
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta_in(ns, ISSUER_CERTIFICATE, "identity"), "spec": {
            "secretName": ISSUER_CERTIFICATE,
            "duration": "48h0m0s",
            "renewBefore": "25h0m0s",
            "issuerRef": {"name": issuer, "kind": "Issuer"},
            "commonName": name,
            "dnsNames": [name],
            "isCA": true,
            // PKCS#8: what knit-control reads; a new key at every renewal.
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
            "usages": ["cert sign", "crl sign", "server auth", "client auth"],
        }})
    }

    /// trust-manager's `Bundle` (cluster-scoped): the anchors of the Secrets `sources` (their
    /// `tls.crt`), written to the `knit-identity-trust-roots` ConfigMap of every namespace.
    pub fn bundle(ns: &str, sources: &[&str]) -> Value {
        let mut meta = meta_in(ns, TRUST_ROOTS, "identity");
        meta.as_object_mut().map(|m| m.remove("namespace"));
        let sources: Vec<Value> = sources.iter().map(|s| json!({"secret": {"name": s, "key": "tls.crt"}})).collect();
        json!({"apiVersion": "trust.cert-manager.io/v1alpha1", "kind": "Bundle", "metadata": meta, "spec": {
            "sources": sources,
            "target": {"configMap": {"key": "ca-bundle.crt"}},
        }})
    }

    /// A trust anchor's Secret, as cert-manager's CA `Issuer` reads it.
    pub fn anchor_secret(ns: &str, name: &str, anchor: &knit_identity::create::Credentials) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta_in(ns, name, "identity"),
               "data": {"tls.crt": B64.encode(&anchor.cert_pem), "tls.key": B64.encode(&anchor.key_pem)}})
    }
}

/// Read access to what the control plane serves, TokenReview and SubjectAccessReview, and (unless
/// trust-manager does it) writing the trust bundle's ConfigMap: nothing else.
fn cluster_role(o: &Options) -> Value {
    let read = json!(["get", "list", "watch"]);
    let mut role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": cluster_meta(o, &format!("knit-control-{}", o.namespace)), "rules": [
        // Endpoints come from Ready Pods for Services with a selector, from EndpointSlices otherwise.
        {"apiGroups": [""], "resources": ["namespaces", "services", "pods"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["policy.linkerd.io"], "resources": ["servers", "authorizationpolicies", "meshtlsauthentications", "networkauthentications", "httproutes", "httplocalratelimitpolicies", "egressnetworks"], "verbs": read},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes", "tcproutes", "tlsroutes"], "verbs": read},
        {"apiGroups": ["workload.linkerd.io"], "resources": ["externalworkloads"], "verbs": read},
        {"apiGroups": ["split.smi-spec.io"], "resources": ["trafficsplits"], "verbs": read},
        // Linked clusters (their credentials Secrets: a Role of `knit multicluster install`).
        {"apiGroups": ["multicluster.linkerd.io"], "resources": ["links"], "verbs": read},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        // The tap API asks whether the user may tap.
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]});
    if !o.external_issuer {
        // The trust bundle in every namespace, for injected proxies to mount (--distribute-trust-roots).
        role["rules"]
            .as_array_mut()
            .expect("rules")
            .push(json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]}));
    }
    role
}

fn deployment(o: &Options) -> Value {
    let replicas = if o.ha { 3 } else { 1 };
    let mut args = vec![
        "--kubernetes".to_string(),
        format!("--control-plane-namespace={}", o.namespace),
        format!("--cluster-domain={}", o.cluster_domain),
        format!("--identity-trust-domain={}", o.trust_domain),
        format!("--serve-tls-identity={CONTROL}.{ns}.serviceaccount.identity.{ns}.{}", o.trust_domain, ns = o.namespace),
        format!("--cluster-networks={}", o.cluster_networks),
        format!("--default-inbound-policy={}", o.default_inbound_policy),
        "--trust-anchors=/var/run/knit/identity/trust-roots/ca-bundle.crt".to_string(),
        "--issuer-cert=/var/run/knit/identity/issuer/tls.crt".to_string(),
        "--issuer-key=/var/run/knit/identity/issuer/tls.key".to_string(),
        "--issuer-ca=/var/run/knit/identity/issuer/ca.crt".to_string(),
        "--webhook-tls-cert=/var/run/knit/webhook/tls.crt".to_string(),
        "--webhook-tls-key=/var/run/knit/webhook/tls.key".to_string(),
        "--tap-api-tls-cert=/var/run/knit/webhook/tls.crt".to_string(),
        "--tap-api-tls-key=/var/run/knit/webhook/tls.key".to_string(),
        "--inject-values=/var/run/knit/config/values.yaml".to_string(),
        format!("--log={}", o.controller_log_level),
    ];
    if !o.external_issuer {
        args.push("--distribute-trust-roots".to_string());
    }
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 9990}, "periodSeconds": 10});
    let mut pod_spec = json!({
        "serviceAccountName": CONTROL,
        "automountServiceAccountToken": true,
        "securityContext": {"runAsNonRoot": true, "runAsUser": CONTROL_UID, "runAsGroup": CONTROL_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": CONTROL,
            "image": format!("{}:{}", o.controller_image, o.version),
            "imagePullPolicy": "IfNotPresent",
            "args": args,
            "ports": [
                {"name": "identity", "containerPort": 8080}, {"name": "destination", "containerPort": 8086},
                {"name": "policy", "containerPort": 8090}, {"name": "webhook", "containerPort": 9443}, {"name": "admin", "containerPort": 9990},
                {"name": "viz", "containerPort": 8084}, {"name": "tap-api", "containerPort": 8089},
            ],
            "livenessProbe": probe("/live"),
            "readinessProbe": probe("/ready"),
            "resources": {"requests": {"cpu": "100m", "memory": "50Mi"}, "limits": {"memory": "250Mi"}},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "trust-roots", "mountPath": "/var/run/knit/identity/trust-roots", "readOnly": true},
                {"name": "issuer", "mountPath": "/var/run/knit/identity/issuer", "readOnly": true},
                {"name": "webhook-tls", "mountPath": "/var/run/knit/webhook", "readOnly": true},
                {"name": "config", "mountPath": "/var/run/knit/config", "readOnly": true},
            ],
        }],
        "volumes": [
            {"name": "trust-roots", "configMap": {"name": "knit-identity-trust-roots"}},
            {"name": "issuer", "secret": {"secretName": "knit-identity-issuer"}},
            {"name": "webhook-tls", "secret": {"secretName": "knit-proxy-injector-tls"}},
            {"name": "config", "configMap": {"name": "knit-config"}},
        ],
    });
    if o.ha {
        pod_spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app.kubernetes.io/name": CONTROL}}, "topologyKey": "kubernetes.io/hostname"},
        ]}});
    }
    let mut pod_labels = labels(o, "control-plane");
    pod_labels["app.kubernetes.io/name"] = json!(CONTROL);
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(o, CONTROL, "control-plane"), "spec": {
        "replicas": replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROL}},
        "strategy": {"rollingUpdate": {"maxUnavailable": if o.ha { 1 } else { 0 }, "maxSurge": 1}},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }})
}

fn webhook_config(o: &Options, m: &Material) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": cluster_meta(o, &format!("knit-proxy-injector-{}", o.namespace)), "webhooks": [{
        "name": format!("knit-proxy-injector.{}.knit.dev", o.namespace),
        "clientConfig": {"service": {"name": "knit-proxy-injector", "namespace": o.namespace, "path": "/inject", "port": 443}, "caBundle": B64.encode(&m.webhook_ca_pem)},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
        // Never the control plane's own namespace or the system's.
        "namespaceSelector": {"matchExpressions": [
            {"key": "config.linkerd.io/admission-webhooks", "operator": "NotIn", "values": ["disabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-node-lease"]},
        ]},
        // As Linkerd: a control plane that is down does not stop pods from being created (they
        // start unmeshed, and `knit check` reports the webhook).
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "reinvocationPolicy": "IfNeeded",
    }]})
}
