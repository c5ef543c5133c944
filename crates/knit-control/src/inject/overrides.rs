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
    pub await_ready: bool,
    pub shutdown_grace_period: String,
    /// `requests`/`limits` → resource → quantity.
    pub resources: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
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
        await_ready: parse(a, "proxy-await", p.await_ready, boolean)?,
        shutdown_grace_period: parse(a, "shutdown-grace-period", p.shutdown_grace_period.clone(), duration)?,
        resources,
    })
}
