//! One error type for everything the proxy can fail at while carrying traffic. Each error knows
//! who is to blame and so which status a client gets and which label the error metric carries.

use knit_core::{destination::Authority, transport_header::HeaderError};
use std::{io, net::SocketAddr, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no destination for {authority}: it is not in KNIT_PROXY_OUTBOUND_ENDPOINTS and DNS has no address for it")]
    NoRoute { authority: Authority },
    #[error("the request names no authority: send a Host header (HTTP/1) or :authority (HTTP/2)")]
    NoAuthority,
    #[error("{0:?} is not a valid authority: expected host[:port]")]
    BadAuthority(String),
    #[error("the request's URI names {uri} but its Host header names {host}: send one authority (the proxy routes and the application reads the same one)")]
    MismatchedAuthority { uri: String, host: String },
    #[error("the request has more than one Host header: send one (the proxy routes and the application reads the same one)")]
    DuplicateHost,
    #[error("{0:?} is not a valid path once normalized")]
    BadPath(String),
    #[error("a non-HTTP connection reached the outbound listener with no original destination (no iptables redirect) and no port forward: nothing says where it should go")]
    NoDestination,
    #[error("connection has no original destination (no iptables redirect) and KNIT_PROXY_INBOUND_TARGET_ADDR is unset")]
    NoTarget,
    #[error("refusing to forward to {0}: it is this proxy's own listener (a routing loop)")]
    Loop(SocketAddr),
    #[error(transparent)]
    TransportHeader(#[from] HeaderError),
    #[error("upstream {addr} failed: {source}")]
    Upstream { addr: SocketAddr, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("mesh TLS with {addr} failed (expected identity {expected}): {message}")]
    Tls { addr: SocketAddr, expected: String, message: String },
    #[error("this proxy has no certificate yet, so it cannot open mesh TLS")]
    NoIdentity,
    #[error("a transport header arrived without mesh TLS; with identity on, direct connections must be mutually authenticated")]
    DirectWithoutTls,
    #[error("the connection was addressed to {0}, which is not this workload; inbound serves only this workload's addresses")]
    NotLocal(SocketAddr),
    #[error("upstream {addr} answered the upgrade with {status} instead of switching protocols")]
    UpgradeRefused { addr: SocketAddr, status: http::StatusCode },
    #[error("no answer from the control plane about {what} within {timeout:?}: is knit-control running and reachable?")]
    DiscoveryTimeout { what: String, timeout: Duration },
    #[error("backend {path} needs endpoint discovery, but KNIT_PROXY_DESTINATION_SVC_ADDR is unset")]
    NoDiscovery { path: String },
    #[error("{0}")]
    InvalidPolicy(std::sync::Arc<str>),
    #[error("no route of {target} matches {method} {path}")]
    RouteNotFound { target: String, method: http::Method, path: String },
    #[error("backend {backend} has no ready endpoint ({total} known, {ejected} ejected by failure accrual)")]
    NoEndpoints { backend: String, total: usize, ejected: usize },
    #[error("backend {backend} has had no ready endpoint for {unready:?} (failfast); requests fail at once until one is ready")]
    Failfast { backend: String, unready: Duration },
    #[error("backend {backend} has {capacity} requests waiting for an endpoint already (its queue is full)")]
    QueueFull { backend: String, capacity: usize },
    #[error("the proxy has {max} requests in flight already; try again shortly")]
    Overloaded { max: usize },
    #[error("{addr} has {max} HTTP/1 requests in flight from this proxy already, and none finished within {waited:?}")]
    UpstreamBusy { addr: SocketAddr, max: usize, waited: Duration },
    #[error("traffic not allowed: the policy of {target} forbids it")]
    Forbidden { target: String },
    #[error("no TCP or TLS route of {target} serves this connection{}", sni.as_deref().map(|s| format!(" (SNI {s})")).unwrap_or_default())]
    NoTcpRoute { target: String, sni: Option<String> },
    #[error("{target} takes TLS only (its policy routes by SNI), but the client did not start with a TLS ClientHello")]
    NotTls { target: String },
    #[error("backend {backend} cannot serve requests: {message}")]
    BackendFailed { backend: String, message: String },
    #[error("request timed out after {timeout:?} ({which} timeout of route {route})")]
    RequestTimeout { route: String, which: &'static str, timeout: Duration },
    #[error("forbidden: {0}")]
    Unauthorized(String),
    #[error("rate limited by {policy} ({which} limit): retry after {retry_after:?}")]
    RateLimited { policy: String, which: &'static str, retry_after: Duration },
}

/// Who caused a failure: it decides the status a client sees and whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The request itself is wrong; retrying it changes nothing.
    Client,
    /// The destination failed or could not be reached.
    Upstream,
    /// Configuration or discovery has no answer for the request.
    Proxy,
}

impl ProxyError {
    /// Whether the proxy gave this answer before calling any endpoint (routing, discovery,
    /// balancing, policy), rather than after an endpoint failed or timed out.
    pub fn before_endpoint(&self) -> bool {
        matches!(
            self,
            Self::RouteNotFound { .. }
                | Self::NoEndpoints { .. }
                | Self::BackendFailed { .. }
                | Self::InvalidPolicy(_)
                | Self::DiscoveryTimeout { .. }
                | Self::NoDiscovery { .. }
        )
    }

    pub fn blame(&self) -> Blame {
        match self {
            Self::NoAuthority
            | Self::BadAuthority(_)
            | Self::MismatchedAuthority { .. }
            | Self::DuplicateHost
            | Self::BadPath(_)
            | Self::TransportHeader(_)
            | Self::DirectWithoutTls
            | Self::NotLocal(_) => Blame::Client,
            Self::ConnectTimeout { .. } | Self::Connect { .. } | Self::Upstream { .. } | Self::UpgradeRefused { .. } | Self::Tls { .. } => Blame::Upstream,
            Self::NoIdentity => Blame::Proxy,
            Self::NoRoute { .. } | Self::NoTarget | Self::NoDestination | Self::Loop(_) => Blame::Proxy,
            Self::DiscoveryTimeout { .. } | Self::NoDiscovery { .. } | Self::InvalidPolicy(_) | Self::BackendFailed { .. } => Blame::Proxy,
            Self::RouteNotFound { .. } | Self::Unauthorized(_) | Self::RateLimited { .. } => Blame::Client,
            Self::NoEndpoints { .. } | Self::Failfast { .. } | Self::QueueFull { .. } | Self::RequestTimeout { .. } | Self::UpstreamBusy { .. } => {
                Blame::Upstream
            }
            Self::Overloaded { .. } => Blame::Proxy,
            Self::Forbidden { .. } | Self::NoTcpRoute { .. } | Self::NotTls { .. } => Blame::Client,
        }
    }

    /// The status an HTTP client gets, as Linkerd answers: 504 for timeouts, 502 for failed
    /// upstreams and missing routes, 400 for malformed requests.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Self::ConnectTimeout { .. } | Self::RequestTimeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            Self::RouteNotFound { .. } => http::StatusCode::NOT_FOUND,
            Self::Unauthorized(_) | Self::Forbidden { .. } => http::StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            Self::DiscoveryTimeout { .. }
            | Self::NoEndpoints { .. }
            | Self::Failfast { .. }
            | Self::QueueFull { .. }
            | Self::Overloaded { .. }
            | Self::UpstreamBusy { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidPolicy(_) | Self::BackendFailed { .. } | Self::NoDiscovery { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
            _ if self.blame() == Blame::Client => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the request certainly never reached the application, so it may be sent again.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::ConnectTimeout { .. } | Self::Connect { .. })
    }

    /// The `error` label of `http_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::Connect { .. } => "connect",
            Self::NoRoute { .. } => "no_route",
            Self::NoAuthority | Self::BadAuthority(_) | Self::MismatchedAuthority { .. } | Self::DuplicateHost => "bad_authority",
            Self::BadPath(_) => "bad_path",
            Self::NoTarget | Self::NoDestination => "no_target",
            Self::Loop(_) => "loop",
            Self::TransportHeader(_) => "transport_header",
            Self::Upstream { .. } => "upstream",
            Self::UpgradeRefused { .. } => "upgrade_refused",
            Self::Tls { .. } => "tls",
            Self::NoIdentity => "no_identity",
            Self::DirectWithoutTls => "direct_without_tls",
            Self::NotLocal(_) => "not_local",
            Self::DiscoveryTimeout { .. } => "discovery_timeout",
            Self::NoDiscovery { .. } => "no_discovery",
            Self::InvalidPolicy(_) => "invalid_policy",
            Self::RouteNotFound { .. } => "route_not_found",
            Self::NoEndpoints { .. } => "no_endpoints",
            Self::Failfast { .. } => "failfast",
            Self::Overloaded { .. } => "overloaded",
            Self::UpstreamBusy { .. } => "upstream_busy",
            Self::QueueFull { .. } => "loadshed",
            Self::Forbidden { .. } => "forbidden",
            Self::NoTcpRoute { .. } => "route_not_found",
            Self::NotTls { .. } => "not_tls",
            Self::BackendFailed { .. } => "backend_failed",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Unauthorized(_) => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// How long a refused client should wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The OS error number behind the failure, for `tcp_close_total{errno}`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Connect { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
