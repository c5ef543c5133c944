//! How proxies name what they ask about.
//!
//! A Service port is `NAME.NS.svc.DOMAIN:PORT`, `NAME.NS.svc:PORT`, `NAME.NS:PORT`, or `NAME:PORT`
//! in the caller's namespace (a trailing dot and upper case are allowed), or its `CLUSTER_IP:PORT`.
//! A workload is the JSON the proxy is configured with: `{"ns":NS,"external_workload":NAME}` or
//! `{"ns":NS,"pod":NAME}`, or Linkerd's older `NS:NAME`.

use super::Model;
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcPort {
    pub ns: String,
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadPort {
    pub ns: String,
    pub workload: String,
    pub port: u16,
}

/// What a lookup names before the index is consulted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Name(SvcPort),
    Addr(SocketAddr),
}

/// `GetProfile` answers for a Service port, or for one workload's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProfileKey {
    Service(SvcPort),
    Addr(SocketAddr),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NameError {
    #[error("expected HOST:PORT, found {0:?}")]
    NoPort(String),
    #[error("expected a port from 1 to 65535 in {0:?}")]
    BadPort(String),
    #[error("{0:?} is not a Service name in cluster domain {1} (expected NAME, NAME.NS, NAME.NS.svc or NAME.NS.svc.{1})")]
    NotAService(String, String),
    #[error("expected a workload as {{\"ns\":NS,\"external_workload\":NAME}}, {{\"ns\":NS,\"pod\":NAME}} or NS:NAME, found {0:?}")]
    BadWorkload(String),
}

/// Parses `authority` as a Service name (relative to `source_ns`) or an IP address with a port.
pub fn parse_target(authority: &str, source_ns: &str, cluster_domain: &str) -> Result<Target, NameError> {
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| NameError::NoPort(authority.to_string()))?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| NameError::BadPort(authority.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, port)));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let not_a_service = || NameError::NotAService(authority.to_string(), cluster_domain.to_string());
    if labels.iter().any(|l| l.is_empty()) {
        return Err(not_a_service());
    }
    let (name, ns) = match labels.as_slice() {
        [name] => (*name, source_ns),
        [name, ns] | [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", rest @ ..] if rest.join(".") == cluster_domain => (*name, *ns),
        _ => return Err(not_a_service()),
    };
    Ok(Target::Name(SvcPort { ns: ns.to_string(), name: name.to_string(), port }))
}

/// A Service port for a target: names are taken as they are (the index answers NotFound later if
/// the Service does not exist), addresses must be some Service's cluster IP.
pub fn resolve(model: &Model, target: &Target) -> Option<SvcPort> {
    match target {
        Target::Name(svc) => model.service(&svc.ns, &svc.name).map(|_| svc.clone()),
        Target::Addr(addr) => {
            let ip = addr.ip().to_string();
            model.services().find(|s| s.spec.cluster_ip.as_deref() == Some(ip.as_str())).map(|s| SvcPort {
                ns: s.metadata.namespace.clone(),
                name: s.metadata.name.clone(),
                port: addr.port(),
            })
        }
    }
}

/// The namespace and name of a workload, from the proxy's `PortSpec.workload` or
/// `TrafficSpec.source_workload`. Pods are looked up as ExternalWorkloads of the same name in local
/// mode (there are no Pods without a cluster).
pub fn parse_workload(s: &str) -> Result<(String, String), NameError> {
    #[derive(serde::Deserialize)]
    struct Json {
        ns: String,
        #[serde(default)]
        external_workload: Option<String>,
        #[serde(default)]
        pod: Option<String>,
    }
    let bad = || NameError::BadWorkload(s.to_string());
    // Kubernetes names: lower-case letters, digits, '-' and '.'.
    let valid = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let (ns, name) = if s.trim_start().starts_with('{') {
        let j: Json = serde_json::from_str(s).map_err(|_| bad())?;
        (j.ns, j.external_workload.or(j.pod).ok_or_else(bad)?)
    } else {
        let (ns, name) = s.split_once(':').ok_or_else(bad)?;
        (ns.to_string(), name.to_string())
    };
    if valid(&ns) && valid(&name) {
        Ok((ns, name))
    } else {
        Err(bad())
    }
}

/// The namespace a proxy runs in, from its `source_workload` or `context_token` (both carry
/// `"ns"`); `default` when it does not say.
pub fn source_namespace(token: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Ns {
        ns: String,
    }
    serde_json::from_str::<Ns>(token).map(|n| n.ns).ok().or_else(|| parse_workload(token).ok().map(|(ns, _)| ns)).unwrap_or_else(|| "default".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, port: u16) -> Target {
        Target::Name(SvcPort { ns: ns.into(), name: name.into(), port })
    }

    #[test]
    fn service_names_in_every_form() {
        for a in ["books.demo.svc.cluster.local:8080", "books.demo.svc.cluster.local.:8080", "Books.Demo.svc:8080", "books.demo:8080", "books:8080"] {
            assert_eq!(parse_target(a, "demo", "cluster.local"), Ok(svc("demo", "books", 8080)), "{a}");
        }
        assert_eq!(parse_target("books:80", "other", "cluster.local"), Ok(svc("other", "books", 80)));
        assert_eq!(parse_target("10.96.0.10:80", "x", "cluster.local"), Ok(Target::Addr("10.96.0.10:80".parse().unwrap())));
        assert_eq!(parse_target("[::1]:80", "x", "cluster.local"), Ok(Target::Addr("[::1]:80".parse().unwrap())));
    }

    #[test]
    fn bad_names_say_what_was_expected() {
        assert_eq!(parse_target("books", "d", "cluster.local"), Err(NameError::NoPort("books".into())));
        assert_eq!(parse_target("books:0", "d", "cluster.local"), Err(NameError::BadPort("books:0".into())));
        assert!(matches!(parse_target("books.demo.svc.other.domain:80", "d", "cluster.local"), Err(NameError::NotAService(..))));
        assert!(matches!(parse_target("a..b:80", "d", "cluster.local"), Err(NameError::NotAService(..))));
        assert!(parse_target("www.example.com:443", "d", "cluster.local").is_err());
    }

    #[test]
    fn workloads_in_json_and_legacy_forms() {
        assert_eq!(parse_workload(r#"{"ns":"demo","external_workload":"web"}"#), Ok(("demo".into(), "web".into())));
        assert_eq!(parse_workload(r#"{"ns":"demo","pod":"web-1"}"#), Ok(("demo".into(), "web-1".into())));
        assert_eq!(parse_workload("demo:web"), Ok(("demo".into(), "web".into())));
        for bad in [r#"{"ns":"demo"}"#, "{", "web", r#"{"ns":"","pod":"x"}"#, r#""external_workload":"b""#] {
            assert!(parse_workload(bad).is_err(), "{bad}");
        }
        assert_eq!(source_namespace(r#"{"ns":"demo","external_workload":"web"}"#), "demo");
        assert_eq!(source_namespace(""), "default");
    }
}
