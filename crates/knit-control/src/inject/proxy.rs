//! The objects the injector adds to a pod: the `knit-init` container that programs iptables, the
//! `knit-proxy` container, the volume that carries the proxy's identity token and the one that
//! carries the trust bundle. Built as the real API types, so that a field name typo cannot
//! compile.

use super::{overrides::Settings, values::Values};
use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar,
        EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements,
        SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use std::collections::BTreeMap;

pub const PROXY: &str = "knit-proxy";
pub const INIT: &str = "knit-init";
pub const TOKEN_VOLUME: &str = "knit-identity-token";
pub const XTABLES_VOLUME: &str = "knit-proxy-init-xtables-lock";
/// The trust bundle's volume, from the ConfigMap of the same name in the pod's namespace.
pub const TRUST_ROOTS_VOLUME: &str = "knit-identity-trust-roots";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Mounted whole (never with `subPath`, which the kubelet does not update): the bundle file is
/// a symlink through `..data`, which the kubelet swaps atomically.
const TRUST_ROOTS_DIR: &str = "/var/run/knit/identity/trust-roots";
const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";
/// The pod's labels as a file (downward API), the trace resource's attributes.
pub const PODINFO_VOLUME: &str = "knit-podinfo";
const PODINFO_DIR: &str = "/var/run/knit/podinfo";
/// Audience of the projected token, checked by the control plane's TokenReview (Linkerd's).
pub const TOKEN_AUDIENCE: &str = "identity.l5d.io";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    let field_ref = ObjectFieldSelector { field_path: path.into(), api_version: None };
    EnvVar { name: name.into(), value: None, value_from: Some(EnvVarSource { field_ref: Some(field_ref), ..Default::default() }) }
}

fn http_probe(path: &str, port: u16) -> Probe {
    Probe { http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(port.into()), ..Default::default() }), ..Default::default() }
}

fn image(s: &Settings) -> String {
    format!("{}:{}", s.image, s.version)
}

/// The proxy container. `inbound_ports` are the application's container ports.
pub fn proxy(values: &Values, s: &Settings, inbound_ports: &[i32]) -> Container {
    let mut inbound_ports: Vec<String> = inbound_ports.iter().map(i32::to_string).collect();
    inbound_ports.dedup();
    let mut vars = vec![
        field_env("_pod_name", "metadata.name"),
        field_env("_pod_ns", "metadata.namespace"),
        field_env("_pod_sa", "spec.serviceAccountName"),
        env("KNIT_PROXY_LOG", &s.log_level),
        env("KNIT_PROXY_LOG_FORMAT", &s.log_format),
        env("KNIT_PROXY_INBOUND_LISTEN_ADDR", format!("0.0.0.0:{}", s.inbound_port)),
        env("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", format!("127.0.0.1:{}", s.outbound_port)),
        // The kubelet probes the admin port from outside the pod.
        env("KNIT_PROXY_ADMIN_LISTEN_ADDR", format!("0.0.0.0:{}", s.admin_port)),
        env("KNIT_PROXY_INBOUND_PORTS", inbound_ports.join(",")),
        env("KNIT_PROXY_OPAQUE_PORTS", &s.opaque_ports),
        env("KNIT_PROXY_INBOUND_DEFAULT_POLICY", &s.default_inbound_policy),
        env("KNIT_PROXY_POLICY_CLUSTER_NETWORKS", &values.cluster_networks),
        env("KNIT_PROXY_SHUTDOWN_GRACE_PERIOD", &s.shutdown_grace_period),
        env("KNIT_PROXY_DESTINATION_SVC_ADDR", values.service_addr("knit-destination", 8086)),
        env("KNIT_PROXY_DESTINATION_SVC_NAME", values.control_plane_identity()),
        env("KNIT_PROXY_POLICY_SVC_ADDR", values.service_addr("knit-policy", 8090)),
        env("KNIT_PROXY_POLICY_SVC_NAME", values.control_plane_identity()),
        env("KNIT_PROXY_POLICY_WORKLOAD", r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#),
        env("KNIT_PROXY_IDENTITY_SVC_ADDR", values.service_addr("knit-identity", 8080)),
        env("KNIT_PROXY_IDENTITY_SVC_NAME", values.control_plane_identity()),
        // knit-control taps proxies as itself.
        env("KNIT_PROXY_TAP_SVC_NAME", values.control_plane_identity()),
        env("KNIT_PROXY_IDENTITY_LOCAL_NAME", format!("$(_pod_sa).$(_pod_ns).{}", values.identity_suffix())),
        env("KNIT_PROXY_IDENTITY_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
        if values.trust_anchors_inline {
            env("KNIT_PROXY_IDENTITY_TRUST_ANCHORS", &values.trust_anchors_pem)
        } else {
            env("KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", format!("{TRUST_ROOTS_DIR}/{TRUST_ROOTS_KEY}"))
        },
    ];
    if let Some(t) = &s.trace {
        let mut extra = vec!["k8s.pod.ip=$(_pod_ip)".to_string(), "k8s.pod.uid=$(_pod_uid)".into(), format!("k8s.container.name={PROXY}")];
        extra.extend(t.extra_attributes.iter().map(|(k, v)| format!("{k}={v}")));
        vars.splice(0..0, [field_env("_pod_ip", "status.podIP"), field_env("_pod_uid", "metadata.uid")]);
        vars.extend([
            env("KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR", &t.collector),
            env("KNIT_PROXY_TRACE_COLLECTOR_SVC_NAME", t.svc_name.clone().unwrap_or_default()),
            env("KNIT_PROXY_TRACE_SERVICE_NAME", &t.service_name),
            env("KNIT_PROXY_TRACE_ATTRIBUTES_PATH", format!("{PODINFO_DIR}/labels")),
            env("KNIT_PROXY_TRACE_EXTRA_ATTRIBUTES", extra.join("\n")),
            env("KNIT_PROXY_TRACE_SAMPLE_UNTRACED", if t.sample_untraced == "0" { "" } else { &t.sample_untraced }),
        ]);
    }
    if s.gateway {
        // Linkerd's `svc.<clusterDomain>.`: the names a peer's transport header may ask for.
        vars.push(env("KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES", format!("svc.{}.", values.cluster_domain)));
    }
    vars.retain(|e| e.value.as_deref() != Some(""));
    let resources = s
        .resources
        .iter()
        .map(|(kind, r)| (*kind, r.iter().map(|(k, v)| (k.to_string(), Quantity(v.clone()))).collect::<BTreeMap<_, _>>()))
        .collect::<BTreeMap<_, _>>();
    Container {
        name: PROXY.into(),
        image: Some(image(s)),
        image_pull_policy: Some(s.pull_policy.clone()),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort { name: Some("knit-proxy".into()), container_port: s.inbound_port.into(), ..Default::default() },
            ContainerPort { name: Some("knit-admin".into()), container_port: s.admin_port.into(), ..Default::default() },
        ]),
        liveness_probe: Some(Probe { initial_delay_seconds: Some(10), ..http_probe("/live", s.admin_port) }),
        readiness_probe: Some(Probe { initial_delay_seconds: Some(2), ..http_probe("/ready", s.admin_port) }),
        resources: Some(ResourceRequirements { requests: resources.get("requests").cloned(), limits: resources.get("limits").cloned(), ..Default::default() }),
        security_context: Some(SecurityContext {
            run_as_user: Some(s.uid),
            run_as_group: s.gid,
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(
            [(TOKEN_VOLUME, TOKEN_DIR)]
                .into_iter()
                .chain((!values.trust_anchors_inline).then_some((TRUST_ROOTS_VOLUME, TRUST_ROOTS_DIR)))
                .chain(s.trace.is_some().then_some((PODINFO_VOLUME, PODINFO_DIR)))
                .map(|(name, path)| VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(true), ..Default::default() })
                .collect(),
        ),
        ..Default::default()
    }
}

/// Native sidecar: an init container that keeps running, started before the application's
/// containers (once its startup probe passes) and stopped after them, so Jobs complete.
pub fn native(mut c: Container, s: &Settings) -> Container {
    c.restart_policy = Some("Always".into());
    c.startup_probe = Some(Probe { period_seconds: Some(1), failure_threshold: Some(120), ..http_probe("/ready", s.admin_port) });
    c
}

/// Classic sidecar: the first container, holding the others back until it is ready.
pub fn classic(mut c: Container, s: &Settings) -> Container {
    if s.await_ready {
        let command = vec![PROXY.into(), "await".into(), "--timeout".into(), "2m".into(), "--admin".into(), format!("127.0.0.1:{}", s.admin_port)];
        let post_start = LifecycleHandler { exec: Some(ExecAction { command: Some(command) }), ..Default::default() };
        c.lifecycle = Some(Lifecycle { post_start: Some(post_start), ..Default::default() });
    }
    c
}

/// `knit-proxy init`: redirects the pod's TCP through the proxy. It alone gets NET_ADMIN and
/// NET_RAW, and runs as root only because iptables needs it.
pub fn init(s: &Settings) -> Container {
    let mut skip_inbound = vec![s.tap_port.to_string(), s.admin_port.to_string()];
    skip_inbound.extend(s.skip_inbound_ports.split(',').filter(|p| !p.is_empty()).map(str::to_string));
    let mut args = vec![
        "init".to_string(),
        "--inbound-port".into(),
        s.inbound_port.to_string(),
        "--outbound-port".into(),
        s.outbound_port.to_string(),
        "--proxy-uid".into(),
        s.uid.to_string(),
        "--skip-inbound-ports".into(),
        skip_inbound.join(","),
    ];
    let optional = [
        ("--proxy-gid", s.gid.map(|g| g.to_string()).unwrap_or_default()),
        ("--skip-outbound-ports", s.skip_outbound_ports.clone()),
        ("--skip-subnets", s.skip_subnets.clone()),
    ];
    for (flag, value) in optional {
        if !value.is_empty() {
            args.extend([flag.to_string(), value]);
        }
    }
    let quantities =
        |cpu: &str, memory: &str| Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))]));
    Container {
        name: INIT.into(),
        image: Some(image(s)),
        image_pull_policy: Some(s.pull_policy.clone()),
        args: Some(args),
        resources: Some(ResourceRequirements { requests: quantities("10m", "10Mi"), limits: quantities("100m", "20Mi"), ..Default::default() }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]), drop: Some(vec!["ALL".into()]) }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        // iptables takes its lock in /run, which must be writable under a read-only root.
        volume_mounts: Some(vec![VolumeMount { name: XTABLES_VOLUME.into(), mount_path: "/run".into(), ..Default::default() }]),
        ..Default::default()
    }
}

pub fn volumes(values: &Values, s: &Settings) -> Vec<Volume> {
    let token = ServiceAccountTokenProjection { audience: Some(TOKEN_AUDIENCE.into()), expiration_seconds: Some(86400), path: TOKEN_VOLUME.into() };
    let trust_roots = Volume {
        name: TRUST_ROOTS_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource { name: TRUST_ROOTS_VOLUME.into(), optional: Some(false), ..Default::default() }),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection { service_account_token: Some(token), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume { name: XTABLES_VOLUME.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    if !values.trust_anchors_inline {
        volumes.push(trust_roots);
    }
    if s.trace.is_some() {
        let labels = DownwardAPIVolumeFile {
            path: "labels".into(),
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.labels".into(), api_version: None }),
            ..Default::default()
        };
        volumes.push(Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource { items: Some(vec![labels]), ..Default::default() }),
            ..Default::default()
        });
    }
    volumes
}
