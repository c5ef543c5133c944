//! What one pod gets: the install-time [`Values`] overridden by its namespace's annotations and
//! then by its own. Every `config.linkerd.io/X` annotation of LINKERD-WIRE.md §7.2 that Knit's
//! proxy has a meaning for is honoured, and so is Knit's `config.knit.dev/X`, which wins when a
//! pod carries both. A value that cannot be used is an error naming the annotation, never
//! silently dropped: a pod must not run with settings other than the ones it asked for.

use super::{values::Values, InjectError};
use std::collections::BTreeMap;

pub const KNIT_INJECT: &str = "knit.dev/inject";
pub const LINKERD_INJECT: &str = "linkerd.io/inject";
const KNIT_CONFIG: &str = "config.knit.dev/";
const LINKERD_CONFIG: &str = "config.linkerd.io/";

/// How a pod is meshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enabled,
    /// An ingress controller's pod: the proxy routes by the request's target, not by the original
    /// destination (`KNIT_PROXY_INGRESS_MODE`).
    Ingress,
}

/// The effective settings of one pod's proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub image: String,
    pub version: String,
    pub pull_policy: String,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub tap_port: u16,
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub skip_subnets: String,
    pub opaque_ports: String,
    pub uid: i64,
    pub gid: Option<i64>,
    pub log_level: String,
    pub log_format: String,
    pub default_inbound_policy: String,
    pub native_sidecar: bool,
    /// A multicluster gateway (`config.linkerd.io/enable-gateway`): its inbound forwards
    /// transport headers naming this cluster's Services.
    pub gateway: bool,
    pub await_ready: bool,
    pub shutdown_grace_period: String,
    /// `requests`/`limits` → resource → quantity.
    pub resources: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
    /// Trace export, when the values or the pod's annotations name a collector.
    pub trace: Option<TraceSettings>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// `HOST:PORT` of the OTLP collector.
    pub collector: String,
    /// The identity the collector proves (mesh TLS), when its service account is known.
    pub svc_name: Option<String>,
    pub service_name: String,
    pub sample_untraced: String,
    /// Resource attributes from the pod: `service.name` from its `app.kubernetes.io/instance`
    /// or `app.kubernetes.io/name` label, and its `resource.opentelemetry.io/KEY` annotations.
    pub extra_attributes: Vec<(String, String)>,
}

/// Annotations looked up pod first, then namespace.
pub struct Annotations<'a> {
    pub pod: &'a BTreeMap<String, String>,
    pub namespace: &'a BTreeMap<String, String>,
}

impl Annotations<'_> {
    fn first(&self, keys: &[String]) -> Option<(String, String)> {
        [self.pod, self.namespace].into_iter().find_map(|m| keys.iter().find_map(|k| m.get(k).map(|v| (k.clone(), v.trim().to_string()))))
    }

    /// `config.knit.dev/NAME` or `config.linkerd.io/NAME`.
    fn config(&self, name: &str) -> Option<(String, String)> {
        self.first(&[format!("{KNIT_CONFIG}{name}"), format!("{LINKERD_CONFIG}{name}")])
    }

    /// `None` when the pod is not to be meshed, with the reason.
    pub fn mode(&self) -> Result<Result<Mode, String>, InjectError> {
        match self.first(&[KNIT_INJECT.to_string(), LINKERD_INJECT.to_string()]) {
            None => Ok(Err(format!("neither the pod nor its namespace has {KNIT_INJECT} or {LINKERD_INJECT}"))),
            Some((_, v)) if v == "enabled" => Ok(Ok(Mode::Enabled)),
            Some((_, v)) if v == "ingress" => Ok(Ok(Mode::Ingress)),
            Some((k, v)) if v == "disabled" => Ok(Err(format!("{k} is disabled"))),
            Some((key, value)) => Err(InjectError::Annotation { key, value, reason: "expected enabled, disabled or ingress".into() }),
        }
    }
}

fn parse<T>(a: &Annotations<'_>, name: &str, default: T, f: impl Fn(&str) -> Result<T, String>) -> Result<T, InjectError> {
    match a.config(name) {
        None => Ok(default),
        Some((key, value)) => f(&value).map_err(|reason| InjectError::Annotation { key, value, reason }),
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| "expected a port from 1 to 65535".into())
}

/// `P,A-B,...` as `knit-proxy init` and `KNIT_PROXY_OPAQUE_PORTS` take it.
fn ports(s: &str) -> Result<String, String> {
    let items: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    for item in &items {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        match (port(a), port(b)) {
            (Ok(a), Ok(b)) if a <= b => {}
            _ => return Err(format!("expected ports or ranges like 25,3306,9000-9010, found {item:?}")),
        }
    }
    Ok(items.join(","))
}

fn subnets(s: &str) -> Result<String, String> {
    let items: Vec<&str> = s.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if let Some(bad) = items.iter().find(|n| n.parse::<ipnet::IpNet>().is_err()) {
        return Err(format!("expected CIDRs like 10.0.0.0/8, found {bad:?}"));
    }
    Ok(items.join(","))
}

fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" | "enabled" => Ok(true),
        "false" | "disabled" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn one_of<'a>(allowed: &'a [&'a str]) -> impl Fn(&str) -> Result<String, String> + 'a {
    move |s| if allowed.contains(&s) { Ok(s.to_string()) } else { Err(format!("expected one of {}", allowed.join(", "))) }
}

fn duration(s: &str) -> Result<String, String> {
    knit_core::parse::duration(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`).
pub fn quantity(s: &str) -> Result<String, String> {
    let digits = s.trim_start_matches(['+', '-']);
    let number_end = digits.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(number_end);
    let number_ok = !number.is_empty() && number.matches('.').count() <= 1 && number != ".";
    let suffix_ok = matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
        || (suffix.starts_with(['e', 'E']) && suffix[1..].trim_start_matches(['+', '-']).parse::<u32>().is_ok());
    if number_ok && suffix_ok {
        Ok(s.to_string())
    } else {
        Err("expected a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi".into())
    }
}

fn uid(s: &str) -> Result<i64, String> {
    s.parse::<i64>().ok().filter(|u| *u > 0).ok_or_else(|| "expected a positive user or group ID".into())
}

/// `HOST:PORT`, a DNS name or an IP address and a port.
pub(super) fn host_port(s: &str) -> Result<String, String> {
    let bad = || "expected HOST:PORT, e.g. collector.tracing:4317".to_string();
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let (host, p) = s.rsplit_once(':').ok_or_else(bad)?;
    port(p).map_err(|_| bad())?;
    if !knit_identity::is_dns_name(&host.trim_end_matches('.').to_ascii_lowercase()) {
        return Err(bad());
    }
    Ok(s.to_string())
}

pub(super) fn share(s: &str) -> Result<String, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(s.to_string()),
        _ => Err("expected a share between 0 and 1 (0.01 is 1%)".into()),
    }
}

/// Trace export: the values' collector (when `proxy.tracing.enabled`) or the pod's or namespace's
/// `trace-collector` annotation; the collector's identity from its service account
/// (`config.alpha.linkerd.io/trace-collector-service-account`, or the values') and namespace
/// (`config.knit.dev/trace-collector-namespace`, else the values' when the collector is theirs,
/// else the second label of its host, `NAME.NAMESPACE...`).
fn trace(values: &Values, a: &Annotations<'_>) -> Result<Option<TraceSettings>, InjectError> {
    let t = &values.proxy.tracing;
    let from_values = (t.enabled && !t.collector_endpoint.is_empty()).then(|| t.collector_endpoint.clone());
    let annotated = a.config("trace-collector");
    let collector = parse(a, "trace-collector", from_values, |s| host_port(s).map(Some))?;
    let Some(collector) = collector else { return Ok(None) };
    if let Some((key, value)) = a.config("trace-collector-protocol").filter(|(_, v)| v != "opentelemetry") {
        return Err(InjectError::Annotation { key, value, reason: "Knit's proxy exports OpenTelemetry (OTLP gRPC) only, as Linkerd's does since 2.19".into() });
    }
    let sa_keys = [format!("{KNIT_CONFIG}trace-collector-service-account"), "config.alpha.linkerd.io/trace-collector-service-account".to_string()];
    let sa = a.first(&sa_keys).map(|(_, v)| v).unwrap_or_else(|| t.collector_service_account.clone());
    let svc_name = if sa.is_empty() {
        None
    } else {
        let ns = a.first(&[format!("{KNIT_CONFIG}trace-collector-namespace")]).map(|(_, v)| v);
        let ns = ns.or_else(|| (annotated.is_none() && !t.collector_namespace.is_empty()).then(|| t.collector_namespace.clone()));
        let ns = ns.or_else(|| {
            let host = collector.rsplit_once(':').map_or(collector.as_str(), |(h, _)| h);
            host.parse::<std::net::IpAddr>().is_err().then(|| host.split('.').nth(1).map(str::to_string)).flatten()
        });
        let Some(ns) = ns.filter(|n| !n.is_empty()) else {
            return Err(InjectError::Annotation {
                key: sa_keys[0].clone(),
                value: sa,
                reason: format!("the collector {collector} names no namespace: set {KNIT_CONFIG}trace-collector-namespace"),
            });
        };
        Some(format!("{sa}.{ns}.{}", values.identity_suffix()))
    };
    Ok(Some(TraceSettings {
        collector,
        svc_name,
        service_name: t.service_name.clone(),
        sample_untraced: parse(a, "trace-sample-untraced", t.sample_untraced.clone(), share)?,
        extra_attributes: Vec::new(),
    }))
}

/// The pod's settings, or the first annotation that cannot be used.
pub fn settings(values: &Values, a: &Annotations<'_>, mode: Mode) -> Result<Settings, InjectError> {
    let p = &values.proxy;
    let text = |s: &str| -> Result<String, String> {
        if s.is_empty() {
            Err("expected a value".into())
        } else {
            Ok(s.to_string())
        }
    };
    let mut resources: BTreeMap<&'static str, BTreeMap<&'static str, String>> = BTreeMap::new();
    let quantities = [
        ("requests", "cpu", "proxy-cpu-request", &p.cpu_request),
        ("limits", "cpu", "proxy-cpu-limit", &p.cpu_limit),
        ("requests", "memory", "proxy-memory-request", &p.memory_request),
        ("limits", "memory", "proxy-memory-limit", &p.memory_limit),
        ("requests", "ephemeral-storage", "proxy-ephemeral-storage-request", &p.ephemeral_storage_request),
        ("limits", "ephemeral-storage", "proxy-ephemeral-storage-limit", &p.ephemeral_storage_limit),
    ];
    for (kind, resource, name, default) in quantities {
        if let Some(q) = parse(a, name, default.clone(), |s| quantity(s).map(Some))? {
            resources.entry(kind).or_default().insert(resource, q);
        }
    }
    Ok(Settings {
        mode,
        image: parse(a, "proxy-image", p.image.clone(), text)?,
        version: parse(a, "proxy-version", p.version.clone(), text)?,
        pull_policy: parse(a, "image-pull-policy", p.image_pull_policy.clone(), one_of(&["Always", "IfNotPresent", "Never"]))?,
        inbound_port: parse(a, "inbound-port", p.inbound_port, port)?,
        outbound_port: parse(a, "outbound-port", p.outbound_port, port)?,
        admin_port: parse(a, "admin-port", p.admin_port, port)?,
        tap_port: parse(a, "control-port", p.tap_port, port)?,
        skip_inbound_ports: parse(a, "skip-inbound-ports", p.skip_inbound_ports.clone(), ports)?,
        skip_outbound_ports: parse(a, "skip-outbound-ports", p.skip_outbound_ports.clone(), ports)?,
        skip_subnets: parse(a, "skip-subnets", String::new(), subnets)?,
        opaque_ports: parse(a, "opaque-ports", p.opaque_ports.clone(), ports)?,
        uid: parse(a, "proxy-uid", p.uid, uid)?,
        gid: parse(a, "proxy-gid", p.gid, |s| uid(s).map(Some))?,
        log_level: parse(a, "proxy-log-level", p.log_level.clone(), text)?,
        log_format: parse(a, "proxy-log-format", p.log_format.clone(), one_of(&["plain", "json"]))?,
        default_inbound_policy: parse(a, "default-inbound-policy", values.default_inbound_policy.clone(), one_of(&crate::resources::DEFAULT_POLICIES))?,
        native_sidecar: parse(a, "proxy-enable-native-sidecar", values.native_sidecar, boolean)?,
        gateway: parse(a, "enable-gateway", false, boolean)?,
        await_ready: parse(a, "proxy-await", p.await_ready, boolean)?,
        shutdown_grace_period: parse(a, "shutdown-grace-period", p.shutdown_grace_period.clone(), duration)?,
        resources,
        trace: trace(values, a)?,
    })
}
