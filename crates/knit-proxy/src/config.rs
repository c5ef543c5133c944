//! The proxy's configuration, read from `KNIT_PROXY_*` environment variables. Each variable sits
//! beside its default; every bad variable is reported at once (the binary exits 64), and the whole
//! effective configuration is `Serialize` for `/config_dump`.
//!
//! The environment is read through [`Env`] so tests build configurations from a map and never
//! touch the process environment.

use knit_core::{
    destination::{parse_port_forwards, Authority, DestinationTable},
    parse,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    pub detect: DetectConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace_period: Duration,
    /// Worker threads; 1 runs a current-thread runtime.
    pub cores: usize,
    /// Once ready, the binary's pages that only start-up used are let go (`memory.rs`).
    pub release_startup_code: bool,
    /// Connections the inbound and outbound listeners hold open at once, lowered to fit the
    /// file-descriptor limit with some in reserve for the admin server.
    pub max_connections: usize,
    /// Mesh identity and TLS; `None` (no `KNIT_PROXY_IDENTITY_LOCAL_NAME`) runs without mesh TLS.
    pub identity: Option<crate::identity::IdentityConfig>,
    /// Destination and policy discovery from the control plane.
    pub discovery: crate::discovery::DiscoveryConfig,
    /// The tap server, on when `KNIT_PROXY_TAP_SVC_NAME` names who may tap.
    pub tap: Option<TapConfig>,
    /// Trace export, on when a collector is named (`KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR`).
    pub trace: Option<crate::trace::TraceConfig>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TapConfig {
    pub listen_addr: SocketAddr,
    /// The only identity allowed to tap (the viz component's), proven with mTLS.
    pub svc_name: String,
    /// Requests per second one subscriber may see; beyond it requests are not tapped.
    pub max_rps: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct InboundConfig {
    pub listen_addr: SocketAddr,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Local mode: where plain connections go when there is no original destination.
    pub target_addr: Option<SocketAddr>,
    /// A multicluster gateway's: the DNS suffixes (`svc.cluster.local`) of the names a peer's
    /// transport header may ask it to forward to. Empty: not a gateway.
    pub gateway_suffixes: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OutboundConfig {
    pub listen_addr: SocketAddr,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    pub endpoints: DestinationTable,
    pub port_forwards: BTreeMap<u16, Authority>,
    /// Route metrics carry the `hostname` the request or connection named (bounded).
    pub metrics_hostname_labels: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AdminConfig {
    pub listen_addr: SocketAddr,
    pub shutdown_endpoint_enabled: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DetectConfig {
    /// Target ports forwarded without detection, in both directions.
    pub opaque_ports: BTreeSet<u16>,
    /// A client silent this long is taken to be waiting for a server-speaks-first protocol.
    #[serde(serialize_with = "ser_duration")]
    pub silent_timeout: Duration,
    /// A client that sent part of a preamble gets this long to finish it.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct HttpConfig {
    pub max_header_bytes: usize,
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    /// How long a client may take to send an HTTP/1 request's head.
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed gracefully.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// An HTTP/1 client connection with no request in flight for this long is parked: hyper's
    /// buffers and state are let go until the client sends again (`http/park.rs`). Zero: never.
    #[serde(serialize_with = "ser_duration")]
    pub park_after: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub h2_keep_alive_interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub h2_keep_alive_timeout: Duration,
    /// Requests in flight on each side of the proxy; past it, 503 at once.
    pub max_in_flight_requests: usize,
    /// HTTP/1 requests (so connections) in flight to one endpoint; more wait for one to finish.
    pub max_http1_per_endpoint: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// Where configuration values come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct OsEnv;

impl Env for OsEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// One bad variable: which, what it held, and why it was refused.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct VarError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Every bad variable found while reading the configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<VarError>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} bad variable(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Reads variables, collecting errors instead of stopping at the first.
struct Reader<'a> {
    env: &'a dyn Env,
    errors: Vec<VarError>,
}

impl Reader<'_> {
    fn get<T, E: std::fmt::Display>(&mut self, name: &str, default: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Option<T> {
        let raw = self.env.var(name);
        let value = raw.as_deref().unwrap_or(default);
        match parse(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(VarError { name: name.to_string(), value: value.to_string(), reason: e.to_string() });
                None
            }
        }
    }
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| "expected IP:PORT".to_string())
}

pub use crate::control::ControlAddr;

fn control_addr(s: &str) -> Result<ControlAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a.into());
    }
    let bad = || "expected IP:PORT or DNS-NAME:PORT".to_string();
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if !knit_identity::is_dns_name(&host.trim_end_matches('.').to_ascii_lowercase()) {
        return Err(bad());
    }
    Ok(ControlAddr { addr: s.to_string(), tls_name: None })
}

fn optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    addr(s).map(Some)
}

/// Comma-separated DNS suffixes (`svc.cluster.local.`), lower-cased without the final dot.
fn dns_suffixes(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let suffix = raw.trim_end_matches('.').to_ascii_lowercase();
        let label = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !suffix.split('.').all(label) {
            return Err(format!("{raw:?} is not a DNS suffix (dot-separated labels of letters, digits and '-')"));
        }
        out.push(suffix);
    }
    Ok(out)
}

/// The identity `var` names, which the service must prove with TLS (a cluster); unset, plaintext.
fn with_tls_name(r: &Reader<'_>, addr: ControlAddr, var: &str) -> ControlAddr {
    let tls_name = r.env.var(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    ControlAddr { tls_name, ..addr }
}

fn optional_control_addr(s: &str) -> Result<Option<ControlAddr>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    control_addr(s).map(Some)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err("expected a positive whole number".to_string()),
    }
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "plain" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected plain or json".to_string()),
    }
}

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Reader { env, errors: Vec::new() };
        let p = "KNIT_PROXY_";
        let v = |n: &str| format!("{p}{n}");
        let inbound_listen = r.get(&v("INBOUND_LISTEN_ADDR"), "0.0.0.0:4143", addr);
        let inbound_connect = r.get(&v("INBOUND_CONNECT_TIMEOUT"), "1s", parse::duration);
        let inbound_target = r.get(&v("INBOUND_TARGET_ADDR"), "", optional_addr);
        let gateway_var = knit_or_linkerd(&r, "INBOUND_GATEWAY_SUFFIXES");
        let gateway_suffixes = r.get(&gateway_var, "", dns_suffixes);
        let outbound_listen = r.get(&v("OUTBOUND_LISTEN_ADDR"), "127.0.0.1:4140", addr);
        let outbound_connect = r.get(&v("OUTBOUND_CONNECT_TIMEOUT"), "1s", parse::duration);
        let endpoints = r.get(&v("OUTBOUND_ENDPOINTS"), "", str::parse::<DestinationTable>);
        let port_forwards = r.get(&v("OUTBOUND_PORT_FORWARDS"), "", parse_port_forwards);
        let hostname_labels = r.get(&v("OUTBOUND_METRICS_HOSTNAME_LABELS"), "false", parse::boolean);
        let admin_listen = r.get(&v("ADMIN_LISTEN_ADDR"), "127.0.0.1:4191", addr);
        let shutdown_endpoint = r.get(&v("SHUTDOWN_ENDPOINT_ENABLED"), "false", parse::boolean);
        let opaque_ports = r.get(&v("OPAQUE_PORTS"), DEFAULT_OPAQUE_PORTS, parse::port_set);
        let silent = r.get(&v("DETECT_SILENT_TIMEOUT"), "150ms", parse::duration);
        let detect_timeout = r.get(&v("DETECT_TIMEOUT"), "10s", parse::duration);
        let max_header = r.get(&v("MAX_HEADER_BYTES"), "65536", positive::<usize>);
        let pool_idle = r.get(&v("HTTP_POOL_IDLE_TIMEOUT"), "3s", parse::duration);
        let pool_max_idle = r.get(&v("HTTP_POOL_MAX_IDLE_PER_ENDPOINT"), "64", positive::<usize>);
        let h2_streams = r.get(&v("HTTP2_MAX_CONCURRENT_STREAMS"), "1000", positive::<u32>);
        let h2_resets = r.get(&v("HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS"), "50", positive::<usize>);
        let header_read = r.get(&v("HTTP_HEADER_READ_TIMEOUT"), "10s", parse::duration);
        let http_idle = r.get(&v("HTTP_IDLE_TIMEOUT"), "60s", parse::duration);
        let park_after = r.get(&v("HTTP1_PARK_AFTER"), "1s", parse::duration);
        let h2_ka_interval = r.get(&v("HTTP2_KEEP_ALIVE_INTERVAL"), "10s", parse::duration);
        let h2_ka_timeout = r.get(&v("HTTP2_KEEP_ALIVE_TIMEOUT"), "3s", parse::duration);
        let max_in_flight = r.get(&v("MAX_IN_FLIGHT_REQUESTS"), "10000", positive::<usize>);
        let max_h1_endpoint = r.get(&v("HTTP1_MAX_CONNECTIONS_PER_ENDPOINT"), "256", positive::<usize>);
        let max_connections = r.get(&v("MAX_CONNECTIONS"), "100000", positive::<usize>);
        let log_filter = r.get(&v("LOG"), "warn,knit_proxy=info,access=info", log_filter);
        let log_format = r.get(&v("LOG_FORMAT"), "plain", log_format);
        let access_log = r.get(&v("ACCESS_LOG"), "false", parse::boolean);
        let grace = r.get(&v("SHUTDOWN_GRACE_PERIOD"), "2m", parse::duration);
        let cores = r.get(&v("CORES"), "1", positive::<usize>);
        let release_code = r.get(&v("RELEASE_STARTUP_CODE"), "true", parse::boolean);
        if let (Some(s), Some(t)) = (silent, detect_timeout) {
            if s > t {
                r.errors.push(VarError {
                    name: v("DETECT_SILENT_TIMEOUT"),
                    value: parse::format_duration(s),
                    reason: format!("must not exceed KNIT_PROXY_DETECT_TIMEOUT ({})", parse::format_duration(t)),
                });
            }
        }
        let identity = identity_config(&mut r);
        let mut discovery = discovery_config(&mut r);
        if let (Some(d), Some(ports)) = (discovery.as_mut(), opaque_ports.as_ref()) {
            d.opaque_ports = ports.clone();
        }
        let tap = tap_config(&mut r, identity.is_some());
        let trace = trace_config(&mut r, identity.is_some());
        if !r.errors.is_empty() {
            return Err(ConfigError(r.errors));
        }
        // Every `get` above returned Some, or an error was recorded and we returned.
        let m = "checked: no errors were recorded";
        Ok(Config {
            inbound: InboundConfig {
                listen_addr: inbound_listen.expect(m),
                connect_timeout: inbound_connect.expect(m),
                target_addr: inbound_target.expect(m),
                gateway_suffixes: gateway_suffixes.expect(m),
            },
            outbound: OutboundConfig {
                listen_addr: outbound_listen.expect(m),
                connect_timeout: outbound_connect.expect(m),
                endpoints: endpoints.expect(m),
                port_forwards: port_forwards.expect(m),
                metrics_hostname_labels: hostname_labels.expect(m),
            },
            admin: AdminConfig { listen_addr: admin_listen.expect(m), shutdown_endpoint_enabled: shutdown_endpoint.expect(m) },
            detect: DetectConfig { opaque_ports: opaque_ports.expect(m), silent_timeout: silent.expect(m), timeout: detect_timeout.expect(m) },
            http: HttpConfig {
                max_header_bytes: max_header.expect(m),
                pool_idle_timeout: pool_idle.expect(m),
                pool_max_idle_per_endpoint: pool_max_idle.expect(m),
                h2_max_concurrent_streams: h2_streams.expect(m),
                h2_max_pending_accept_reset_streams: h2_resets.expect(m),
                header_read_timeout: header_read.expect(m),
                idle_timeout: http_idle.expect(m),
                park_after: park_after.expect(m),
                h2_keep_alive_interval: h2_ka_interval.expect(m),
                h2_keep_alive_timeout: h2_ka_timeout.expect(m),
                max_in_flight_requests: max_in_flight.expect(m),
                max_http1_per_endpoint: max_h1_endpoint.expect(m),
            },
            log: LogConfig { filter: log_filter.expect(m), format: log_format.expect(m), access_log: access_log.expect(m) },
            shutdown_grace_period: grace.expect(m),
            cores: cores.expect(m),
            release_startup_code: release_code.expect(m),
            max_connections: max_connections.expect(m),
            identity,
            discovery: discovery.expect(m),
            tap: tap.expect(m),
            trace: trace.expect(m),
        })
    }

    /// A configuration for tests and embedding: every listener on 127.0.0.1 with an ephemeral port.
    pub fn loopback() -> Self {
        let env: BTreeMap<String, String> = [
            ("KNIT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("KNIT_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self::from_env(&env).expect("the loopback defaults are valid")
    }
}

/// The tap variables: on only with a name to authorize, and only with mesh identity (tap is
/// served over mTLS alone).
fn tap_config(r: &mut Reader<'_>, identity: bool) -> Option<Option<TapConfig>> {
    let listen = r.get("KNIT_PROXY_TAP_LISTEN_ADDR", "0.0.0.0:4190", addr);
    let max_rps = r.get("KNIT_PROXY_TAP_MAX_RPS", "100", positive::<u32>);
    let Some(svc_name) = r.env.var("KNIT_PROXY_TAP_SVC_NAME").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) else {
        return Some(None);
    };
    if !knit_identity::is_dns_name(&svc_name) {
        r.errors.push(VarError {
            name: "KNIT_PROXY_TAP_SVC_NAME".into(),
            value: svc_name,
            reason: "expected the identity allowed to tap (a lower-case DNS name)".into(),
        });
        return None;
    }
    if !identity {
        r.errors.push(VarError {
            name: "KNIT_PROXY_TAP_SVC_NAME".into(),
            value: svc_name,
            reason: "tap is served over mTLS only: set the identity variables (KNIT_PROXY_IDENTITY_*)".into(),
        });
        return None;
    }
    Some(Some(TapConfig { listen_addr: listen?, svc_name, max_rps: max_rps? }))
}

/// `KNIT_PROXY_<suffix>`, else Linkerd's `LINKERD2_PROXY_<suffix>`: the name set (Knit's when
/// neither is), for reading and for error messages.
fn knit_or_linkerd(r: &Reader<'_>, suffix: &str) -> String {
    let knit = format!("KNIT_PROXY_{suffix}");
    let linkerd = format!("LINKERD2_PROXY_{suffix}");
    if r.env.var(&knit).is_none() && r.env.var(&linkerd).is_some() {
        linkerd
    } else {
        knit
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a share between 0 and 1 (0.01 is 1%)".into()),
    }
}

/// The tracing variables (LINKERD-WIRE.md §14): on when a collector is named. A collector with a
/// TLS name is reached over mesh TLS, which needs this proxy's identity.
fn trace_config(r: &mut Reader<'_>, identity: bool) -> Option<Option<crate::trace::TraceConfig>> {
    let name = |r: &Reader<'_>, s: &str| knit_or_linkerd(r, s);
    let addr_var = name(r, "TRACE_COLLECTOR_SVC_ADDR");
    let collector = r.get(&addr_var, "", optional_control_addr);
    let name_var = name(r, "TRACE_COLLECTOR_SVC_NAME");
    let service_name = r.env.var(&name(r, "TRACE_SERVICE_NAME")).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let attributes_path = r.env.var(&name(r, "TRACE_ATTRIBUTES_PATH")).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let extra = r.env.var(&name(r, "TRACE_EXTRA_ATTRIBUTES")).unwrap_or_default();
    let otel = r.get("OTEL_RESOURCE_ATTRIBUTES", "", crate::trace::parse_otel_resource_attributes);
    let sample = r.get("KNIT_PROXY_TRACE_SAMPLE_UNTRACED", "0", share);
    let queue = r.get("KNIT_PROXY_TRACE_QUEUE", "1000", positive::<usize>);
    let batch = r.get("KNIT_PROXY_TRACE_MAX_BATCH", "512", positive::<usize>);
    let flush = r.get("KNIT_PROXY_TRACE_FLUSH_INTERVAL", "1s", parse::duration);
    let timeout = r.get("KNIT_PROXY_TRACE_EXPORT_TIMEOUT", "10s", parse::duration);
    let Some(collector) = collector?.map(|a| with_tls_name(r, a, &name_var)) else { return Some(None) };
    if let (Some(tls_name), false) = (&collector.tls_name, identity) {
        r.errors.push(VarError {
            name: name_var,
            value: tls_name.clone(),
            reason: "the collector is reached over mesh TLS: set the identity variables (KNIT_PROXY_IDENTITY_*)".into(),
        });
        return None;
    }
    Some(Some(crate::trace::TraceConfig {
        collector,
        service_name: service_name.unwrap_or_else(|| "knit-proxy".into()),
        attributes_path: attributes_path.map(Into::into),
        extra_attributes: crate::trace::parse_lines(&extra),
        otel_resource_attributes: otel?,
        host_name: r.env.var("HOSTNAME").filter(|h| !h.trim().is_empty()),
        sample_untraced: sample?,
        queue: queue?,
        max_batch: batch?,
        flush_interval: flush?,
        export_timeout: timeout?,
    }))
}

/// The identity variables: all or nothing, keyed on `KNIT_PROXY_IDENTITY_LOCAL_NAME`.
fn identity_config(r: &mut Reader<'_>) -> Option<crate::identity::IdentityConfig> {
    let local_name = r.env.var("KNIT_PROXY_IDENTITY_LOCAL_NAME").filter(|v| !v.trim().is_empty())?;
    if !knit_identity::is_dns_name(&local_name) {
        r.errors.push(VarError { name: "KNIT_PROXY_IDENTITY_LOCAL_NAME".into(), value: local_name.clone(), reason: "expected a lower-case DNS name".into() });
    }
    let mut required = |name: &str| -> Option<std::path::PathBuf> {
        match r.env.var(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => Some(v.into()),
            None => {
                r.errors.push(VarError { name: name.into(), value: String::new(), reason: "required when KNIT_PROXY_IDENTITY_LOCAL_NAME is set".into() });
                None
            }
        }
    };
    // Inline anchors (the Kubernetes injector) or a file (local mode); inline wins.
    let trust_anchors = match r.env.var("KNIT_PROXY_IDENTITY_TRUST_ANCHORS").filter(|v| !v.trim().is_empty()) {
        Some(pem) => Some(crate::identity::TrustAnchors::Pem(pem)),
        None => required("KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE").map(crate::identity::TrustAnchors::File),
    };
    let token_file = required("KNIT_PROXY_IDENTITY_TOKEN_FILE");
    let svc_addr = r.get("KNIT_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080", control_addr).map(|a| with_tls_name(r, a, "KNIT_PROXY_IDENTITY_SVC_NAME"));
    let min_refresh = r.get("KNIT_PROXY_IDENTITY_MIN_REFRESH", "10s", parse::duration);
    let max_refresh = r.get("KNIT_PROXY_IDENTITY_MAX_REFRESH", "24h", parse::duration);
    Some(crate::identity::IdentityConfig {
        local_name,
        trust_anchors: trust_anchors?,
        token_file: token_file?,
        svc_addr: svc_addr?,
        min_refresh: min_refresh?,
        max_refresh: max_refresh?,
    })
}

pub const DEFAULT_CLUSTER_NETWORKS: &str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

fn networks(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(|n| n.parse().map_err(|_| format!("{n:?} is not a CIDR network (e.g. 10.0.0.0/8)"))).collect()
}

/// The discovery variables. The workload is required once a policy service is configured: the
/// control plane cannot answer `WatchPort` without knowing which workload asks.
fn discovery_config(r: &mut Reader<'_>) -> Option<crate::discovery::DiscoveryConfig> {
    let destination_addr =
        r.get("KNIT_PROXY_DESTINATION_SVC_ADDR", "", optional_control_addr).map(|a| a.map(|a| with_tls_name(r, a, "KNIT_PROXY_DESTINATION_SVC_NAME")));
    let policy_addr = r.get("KNIT_PROXY_POLICY_SVC_ADDR", "", optional_control_addr).map(|a| a.map(|a| with_tls_name(r, a, "KNIT_PROXY_POLICY_SVC_NAME")));
    let workload = r.env.var("KNIT_PROXY_POLICY_WORKLOAD").unwrap_or_default();
    if matches!(policy_addr, Some(Some(_))) && workload.trim().is_empty() {
        r.errors.push(VarError {
            name: "KNIT_PROXY_POLICY_WORKLOAD".into(),
            value: workload.clone(),
            reason: "required when KNIT_PROXY_POLICY_SVC_ADDR is set: {\"ns\":\"NAMESPACE\",\"pod\":\"POD\"} or {\"ns\":..,\"external_workload\":..}".into(),
        });
    }
    let context = r.env.var("KNIT_PROXY_DESTINATION_CONTEXT").unwrap_or_default();
    let outbound_idle = r.get("KNIT_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "5s", parse::duration);
    let inbound_idle = r.get("KNIT_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT", "90s", parse::duration);
    let initial = r.get("KNIT_PROXY_DISCOVERY_INITIAL_TIMEOUT", "3s", parse::duration);
    let default_policy = r.get("KNIT_PROXY_INBOUND_DEFAULT_POLICY", "all-unauthenticated", str::parse::<crate::policy::inbound::DefaultPolicy>);
    let cluster_networks = r.get("KNIT_PROXY_POLICY_CLUSTER_NETWORKS", DEFAULT_CLUSTER_NETWORKS, networks);
    let inbound_ports = r.get("KNIT_PROXY_INBOUND_PORTS", "", parse::port_set);
    let trust_loopback = r.get("KNIT_PROXY_INBOUND_TRUST_LOOPBACK", "true", parse::boolean);
    Some(crate::discovery::DiscoveryConfig {
        destination_addr: destination_addr?,
        policy_addr: policy_addr?,
        workload,
        context,
        outbound_idle_timeout: outbound_idle?,
        inbound_idle_timeout: inbound_idle?,
        initial_timeout: initial?,
        default_inbound_policy: default_policy?,
        cluster_networks: cluster_networks?,
        inbound_ports: inbound_ports?,
        trust_loopback: trust_loopback?,
        opaque_ports: BTreeSet::new(),
    })
}

pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&parse::format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_follow_linkerd() {
        let c = Config::from_env(&env(&[])).unwrap();
        assert_eq!(c.inbound.listen_addr.port(), 4143);
        assert_eq!(c.outbound.listen_addr.port(), 4140);
        assert_eq!(c.admin.listen_addr.port(), 4191);
        assert_eq!(c.detect.opaque_ports.iter().copied().collect::<Vec<_>>(), vec![25, 587, 3306, 4444, 5432, 6379, 9300, 11211]);
        assert!(!c.admin.shutdown_endpoint_enabled);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(dump["shutdown_grace_period"], "2m");
    }

    #[test]
    fn reports_every_bad_variable_at_once() {
        let e = Config::from_env(&env(&[
            ("KNIT_PROXY_INBOUND_LISTEN_ADDR", "nope"),
            ("KNIT_PROXY_DETECT_TIMEOUT", "1.5s"),
            ("KNIT_PROXY_OPAQUE_PORTS", "6379,70000"),
            ("KNIT_PROXY_OUTBOUND_ENDPOINTS", "books:8080"),
            ("KNIT_PROXY_LOG_FORMAT", "xml"),
            ("KNIT_PROXY_CORES", "0"),
        ]))
        .unwrap_err();
        let names: Vec<_> = e.0.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "KNIT_PROXY_INBOUND_LISTEN_ADDR",
                "KNIT_PROXY_OUTBOUND_ENDPOINTS",
                "KNIT_PROXY_OPAQUE_PORTS",
                "KNIT_PROXY_DETECT_TIMEOUT",
                "KNIT_PROXY_LOG_FORMAT",
                "KNIT_PROXY_CORES"
            ]
        );
        let text = e.to_string();
        assert!(text.contains("6 bad variable"), "{text}");
        assert!(text.contains("KNIT_PROXY_INBOUND_LISTEN_ADDR=\"nope\": expected IP:PORT"), "{text}");
    }

    #[test]
    fn tracing_reads_knit_s_names_or_linkerd_s() {
        assert!(Config::from_env(&env(&[])).unwrap().trace.is_none(), "off without a collector");
        let c = Config::from_env(&env(&[
            ("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR", "collector.linkerd-jaeger:4317"),
            ("LINKERD2_PROXY_TRACE_SERVICE_NAME", "linkerd-proxy"),
            ("LINKERD2_PROXY_TRACE_EXTRA_ATTRIBUTES", "k8s.pod.uid=1\nk8s.container.name=\"linkerd-proxy\""),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=shop"),
        ]))
        .unwrap();
        let t = c.trace.unwrap();
        assert_eq!(
            (t.collector.addr.as_str(), t.collector.tls_name.as_deref(), t.service_name.as_str()),
            ("collector.linkerd-jaeger:4317", None, "linkerd-proxy")
        );
        assert_eq!(t.extra_attributes, [("k8s.pod.uid".to_string(), "1".to_string()), ("k8s.container.name".into(), "linkerd-proxy".into())]);
        assert_eq!(t.otel_resource_attributes, [("team".to_string(), "shop".to_string())]);
        assert_eq!((t.sample_untraced, t.queue, t.flush_interval), (0.0, 1000, Duration::from_secs(1)));
        // Knit's name wins over Linkerd's.
        let c = Config::from_env(&env(&[("KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR", "127.0.0.1:4317"), ("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR", "other:4317")]))
            .unwrap();
        assert_eq!(c.trace.unwrap().collector.addr, "127.0.0.1:4317");
        // Bad values, by name; a collector identity needs this proxy's own.
        let e = Config::from_env(&env(&[
            ("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR", "collector"),
            ("KNIT_PROXY_TRACE_SAMPLE_UNTRACED", "1.5"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ]))
        .unwrap_err();
        let names: Vec<&str> = e.0.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR", "OTEL_RESOURCE_ATTRIBUTES", "KNIT_PROXY_TRACE_SAMPLE_UNTRACED"], "{e}");
        let e = Config::from_env(&env(&[("KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR", "10.0.0.9:4317"), ("KNIT_PROXY_TRACE_SAMPLE_UNTRACED", "1.5")])).unwrap_err();
        assert_eq!(e.0[0].name, "KNIT_PROXY_TRACE_SAMPLE_UNTRACED");
        let e = Config::from_env(&env(&[
            ("KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR", "10.0.0.9:4317"),
            ("KNIT_PROXY_TRACE_COLLECTOR_SVC_NAME", "collector.tracing.serviceaccount.identity.knit.cluster.local"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("KNIT_PROXY_IDENTITY_"), "{e}");
    }

    #[test]
    fn silent_timeout_may_not_exceed_detect_timeout() {
        let e = Config::from_env(&env(&[("KNIT_PROXY_DETECT_SILENT_TIMEOUT", "20s")])).unwrap_err();
        assert_eq!(e.0[0].name, "KNIT_PROXY_DETECT_SILENT_TIMEOUT");
    }

    #[test]
    fn control_plane_addresses_may_be_dns_names() {
        assert_eq!(control_addr("10.0.0.1:8086").unwrap().to_string(), "10.0.0.1:8086");
        assert_eq!(control_addr("knit-dst-headless.knit.svc.cluster.local.:8086").unwrap().to_string(), "knit-dst-headless.knit.svc.cluster.local.:8086");
        assert_eq!(control_addr("[::1]:8090").unwrap().to_string(), "[::1]:8090");
        for bad in ["knit-dst:0", "knit-dst", "bad_name:8086", ":8086", "a:b:8086"] {
            assert!(control_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inline_trust_anchors_win_over_the_file() {
        let c = Config::from_env(&env(&[
            ("KNIT_PROXY_IDENTITY_LOCAL_NAME", "web.demo.serviceaccount.identity.knit.cluster.local"),
            ("KNIT_PROXY_IDENTITY_TRUST_ANCHORS", "-----BEGIN CERTIFICATE-----"),
            ("KNIT_PROXY_IDENTITY_TOKEN_FILE", "/var/run/secrets/tokens/knit-identity-token"),
            ("KNIT_PROXY_IDENTITY_SVC_ADDR", "knit-identity.knit.svc.cluster.local.:8080"),
        ]))
        .unwrap();
        let id = c.identity.expect("identity configured");
        assert!(matches!(id.trust_anchors, crate::identity::TrustAnchors::Pem(_)));
        assert_eq!(id.svc_addr.to_string(), "knit-identity.knit.svc.cluster.local.:8080");
        assert_eq!(id.svc_addr.tls_name, None, "plaintext without a name");
    }

    #[test]
    fn svc_names_ask_for_tls_to_the_control_plane() {
        let name = "knit-control.knit.serviceaccount.identity.knit.cluster.local";
        let c = Config::from_env(&env(&[
            ("KNIT_PROXY_IDENTITY_LOCAL_NAME", "web.demo.serviceaccount.identity.knit.cluster.local"),
            ("KNIT_PROXY_IDENTITY_TRUST_ANCHORS", "-----BEGIN CERTIFICATE-----"),
            ("KNIT_PROXY_IDENTITY_TOKEN_FILE", "/var/run/secrets/tokens/knit-identity-token"),
            ("KNIT_PROXY_IDENTITY_SVC_NAME", name),
            ("KNIT_PROXY_DESTINATION_SVC_ADDR", "knit-destination.knit.svc.cluster.local.:8086"),
            ("KNIT_PROXY_DESTINATION_SVC_NAME", name),
            ("KNIT_PROXY_POLICY_SVC_ADDR", "knit-policy.knit.svc.cluster.local.:8090"),
            ("KNIT_PROXY_POLICY_WORKLOAD", r#"{"ns":"demo","pod":"web-0"}"#),
        ]))
        .unwrap();
        assert_eq!(c.identity.unwrap().svc_addr.tls_name.as_deref(), Some(name));
        assert_eq!(c.discovery.destination_addr.unwrap().tls_name.as_deref(), Some(name));
        assert_eq!(c.discovery.policy_addr.unwrap().tls_name, None, "each service has its own name");
    }
}
