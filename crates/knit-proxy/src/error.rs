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
    #[error("this gateway does not forward to {target}: {reason}")]
    GatewayDomain { target: String, reason: &'static str },
    #[error("refusing to forward through this gateway: {0} (a loop between gateways)")]
    GatewayLoop(&'static str),
    #[error(transparent)]
    TransportHeader(#[from] HeaderError),
    #[error("upstream {addr} failed: {source}")]
    Upstream { addr: SocketAddr, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("upstream {addr} refused the request before reading it: {source}")]
    Unsent { addr: SocketAddr, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("the client's request body failed: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
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

/// Who caused a failure. It decides whether the endpoint is blamed (the balancer and failure
/// accrual count only upstream failures) and is the `blame` label of `http_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The request itself is wrong, or the client failed it; retrying it changes nothing.
    Client,
    /// The destination failed, or could not be reached, or is overloaded.
    Upstream,
    /// The proxy's configuration or discovery has no answer for the request.
    Proxy,
    /// The mesh's policy refused it: authorization, a rate limit, a route that forbids it or
    /// no route that serves it.
    Policy,
}

impl Blame {
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Proxy => "proxy",
            Blame::Policy => "policy",
        }
    }
}

/// Whether a request that failed with an error may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Never: the same request meets the same answer, or a retry budget cannot make it safe.
    No,
    /// As a response with the error's HTTP status would be: when the route's retry conditions
    /// name that status (a failed or timed-out attempt, as Linkerd retries them).
    Yes,
    /// The request certainly never reached an application (no connection, no TLS, a stream
    /// the peer refused before reading it): sent again whatever the route's conditions.
    IfUnsent,
}

/// Everything the proxy decides from an error, from one table ([`ProxyError::class`]): the
/// status codes a client gets, the retry decision, the error metric's labels and whether the
/// balancer blames the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// The `error` label of `http_errors_total` and the span's `error.type`.
    pub kind: &'static str,
    pub blame: Blame,
    pub retry: Retry,
    pub http: http::StatusCode,
    pub grpc: tonic::Code,
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

    /// The one classification of each error. HTTP statuses as Linkerd's proxy answers (504 for
    /// timeouts, 502 for failed upstreams, 503 for none ready, 403 refused, 429 rate limited, 508
    /// a loop); gRPC statuses as its synthesized gRPC responses carry them.
    pub fn class(&self) -> Class {
        use http::StatusCode as S;
        use tonic::Code as G;
        use Blame::{Client, Policy, Proxy, Upstream};
        use Retry::{IfUnsent, No, Yes};
        let (kind, blame, retry, http, grpc) = match self {
            Self::ConnectTimeout { .. } => ("connect_timeout", Upstream, IfUnsent, S::GATEWAY_TIMEOUT, G::Unavailable),
            Self::Connect { .. } => ("connect", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            Self::Tls { .. } => ("tls", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            Self::Unsent { .. } => ("upstream_refused", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            Self::Upstream { .. } => ("upstream", Upstream, Yes, S::BAD_GATEWAY, G::Unavailable),
            Self::UpgradeRefused { .. } => ("upgrade_refused", Upstream, No, S::BAD_GATEWAY, G::Unavailable),
            Self::RequestTimeout { which: "response", .. } => ("request_timeout", Upstream, Yes, S::GATEWAY_TIMEOUT, G::DeadlineExceeded),
            Self::RequestTimeout { .. } => ("request_timeout", Upstream, No, S::GATEWAY_TIMEOUT, G::DeadlineExceeded),
            Self::NoEndpoints { .. } => ("no_endpoints", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::Failfast { .. } => ("failfast", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::QueueFull { .. } => ("loadshed", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::UpstreamBusy { .. } => ("upstream_busy", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::ClientBody(_) => ("client_body", Client, No, S::BAD_REQUEST, G::Cancelled),
            Self::NoAuthority | Self::BadAuthority(_) | Self::MismatchedAuthority { .. } | Self::DuplicateHost => {
                ("bad_authority", Client, No, S::BAD_REQUEST, G::InvalidArgument)
            }
            Self::BadPath(_) => ("bad_path", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            Self::TransportHeader(_) => ("transport_header", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            Self::DirectWithoutTls => ("direct_without_tls", Client, No, S::BAD_REQUEST, G::Unauthenticated),
            Self::NotLocal(_) => ("not_local", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            Self::NotTls { .. } => ("not_tls", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            Self::RouteNotFound { .. } => ("route_not_found", Policy, No, S::NOT_FOUND, G::NotFound),
            Self::NoTcpRoute { .. } => ("route_not_found", Policy, No, S::NOT_FOUND, G::NotFound),
            Self::Forbidden { .. } => ("forbidden", Policy, No, S::FORBIDDEN, G::PermissionDenied),
            Self::Unauthorized(_) => ("unauthorized", Policy, No, S::FORBIDDEN, G::PermissionDenied),
            Self::RateLimited { .. } => ("rate_limited", Policy, No, S::TOO_MANY_REQUESTS, G::ResourceExhausted),
            Self::NoRoute { .. } => ("no_route", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            Self::NoTarget | Self::NoDestination => ("no_target", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            Self::Loop(_) | Self::GatewayLoop(_) => ("loop", Proxy, No, S::LOOP_DETECTED, G::Aborted),
            Self::GatewayDomain { .. } => ("gateway_domain", Client, No, S::NOT_FOUND, G::NotFound),
            Self::NoIdentity => ("no_identity", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            Self::DiscoveryTimeout { .. } => ("discovery_timeout", Proxy, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::Overloaded { .. } => ("overloaded", Proxy, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            Self::NoDiscovery { .. } => ("no_discovery", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
            Self::InvalidPolicy(_) => ("invalid_policy", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
            Self::BackendFailed { .. } => ("backend_failed", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
        };
        Class { kind, blame, retry, http, grpc }
    }

    pub fn blame(&self) -> Blame {
        self.class().blame
    }

    pub fn http_status(&self) -> http::StatusCode {
        self.class().http
    }

    /// The `error` label of `http_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        self.class().kind
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode as S;
    use tonic::Code as G;
    use Blame::*;
    use Retry::*;

    /// Each variant's position, so that the table below is known to hold every one of them (a new
    /// variant fails to compile here until it is added to the table).
    fn variant(e: &ProxyError) -> usize {
        use ProxyError as P;
        match e {
            P::ConnectTimeout { .. } => 0,
            P::Connect { .. } => 1,
            P::NoRoute { .. } => 2,
            P::NoAuthority => 3,
            P::BadAuthority(_) => 4,
            P::MismatchedAuthority { .. } => 5,
            P::DuplicateHost => 6,
            P::BadPath(_) => 7,
            P::NoDestination => 8,
            P::NoTarget => 9,
            P::Loop(_) => 10,
            P::TransportHeader(_) => 11,
            P::Upstream { .. } => 12,
            P::Unsent { .. } => 13,
            P::ClientBody(_) => 14,
            P::Tls { .. } => 15,
            P::NoIdentity => 16,
            P::DirectWithoutTls => 17,
            P::NotLocal(_) => 18,
            P::UpgradeRefused { .. } => 19,
            P::DiscoveryTimeout { .. } => 20,
            P::NoDiscovery { .. } => 21,
            P::InvalidPolicy(_) => 22,
            P::RouteNotFound { .. } => 23,
            P::NoEndpoints { .. } => 24,
            P::Failfast { .. } => 25,
            P::QueueFull { .. } => 26,
            P::Overloaded { .. } => 27,
            P::UpstreamBusy { .. } => 28,
            P::Forbidden { .. } => 29,
            P::NoTcpRoute { .. } => 30,
            P::NotTls { .. } => 31,
            P::BackendFailed { .. } => 32,
            P::RequestTimeout { .. } => 33,
            P::Unauthorized(_) => 34,
            P::RateLimited { .. } => 35,
            P::GatewayDomain { .. } => 36,
            P::GatewayLoop(_) => 37,
        }
    }
    const VARIANTS: usize = 38;

    #[test]
    fn every_error_has_one_classification() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let t = Duration::from_secs(1);
        let s = || "x".to_string();
        let boxed = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let authority = Authority::parse("books:80", None).unwrap();
        #[rustfmt::skip]
        let table: Vec<(ProxyError, &str, Blame, Retry, S, G)> = vec![
            (ProxyError::ConnectTimeout { addr, timeout: t }, "connect_timeout", Upstream, IfUnsent, S::GATEWAY_TIMEOUT, G::Unavailable),
            (ProxyError::Connect { addr, source: io::Error::from(io::ErrorKind::ConnectionRefused) }, "connect", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::NoRoute { authority }, "no_route", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::NoAuthority, "bad_authority", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::BadAuthority(s()), "bad_authority", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::MismatchedAuthority { uri: s(), host: s() }, "bad_authority", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::DuplicateHost, "bad_authority", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::BadPath(s()), "bad_path", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::NoDestination, "no_target", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::NoTarget, "no_target", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::Loop(addr), "loop", Proxy, No, S::LOOP_DETECTED, G::Aborted),
            (ProxyError::TransportHeader(HeaderError::NoPreface), "transport_header", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::Upstream { addr, source: boxed() }, "upstream", Upstream, Yes, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::Unsent { addr, source: boxed() }, "upstream_refused", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::ClientBody(boxed()), "client_body", Client, No, S::BAD_REQUEST, G::Cancelled),
            (ProxyError::Tls { addr, expected: s(), message: s() }, "tls", Upstream, IfUnsent, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::NoIdentity, "no_identity", Proxy, No, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::DirectWithoutTls, "direct_without_tls", Client, No, S::BAD_REQUEST, G::Unauthenticated),
            (ProxyError::NotLocal(addr), "not_local", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::UpgradeRefused { addr, status: S::OK }, "upgrade_refused", Upstream, No, S::BAD_GATEWAY, G::Unavailable),
            (ProxyError::DiscoveryTimeout { what: s(), timeout: t }, "discovery_timeout", Proxy, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::NoDiscovery { path: s() }, "no_discovery", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
            (ProxyError::InvalidPolicy("x".into()), "invalid_policy", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
            (ProxyError::RouteNotFound { target: s(), method: http::Method::GET, path: s() }, "route_not_found", Policy, No, S::NOT_FOUND, G::NotFound),
            (ProxyError::NoEndpoints { backend: s(), total: 0, ejected: 0 }, "no_endpoints", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::Failfast { backend: s(), unready: t }, "failfast", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::QueueFull { backend: s(), capacity: 1 }, "loadshed", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::Overloaded { max: 1 }, "overloaded", Proxy, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::UpstreamBusy { addr, max: 1, waited: t }, "upstream_busy", Upstream, No, S::SERVICE_UNAVAILABLE, G::Unavailable),
            (ProxyError::Forbidden { target: s() }, "forbidden", Policy, No, S::FORBIDDEN, G::PermissionDenied),
            (ProxyError::NoTcpRoute { target: s(), sni: None }, "route_not_found", Policy, No, S::NOT_FOUND, G::NotFound),
            (ProxyError::NotTls { target: s() }, "not_tls", Client, No, S::BAD_REQUEST, G::InvalidArgument),
            (ProxyError::BackendFailed { backend: s(), message: s() }, "backend_failed", Proxy, No, S::INTERNAL_SERVER_ERROR, G::Internal),
            (ProxyError::RequestTimeout { route: s(), which: "response", timeout: t }, "request_timeout", Upstream, Yes, S::GATEWAY_TIMEOUT, G::DeadlineExceeded),
            (ProxyError::RequestTimeout { route: s(), which: "request", timeout: t }, "request_timeout", Upstream, No, S::GATEWAY_TIMEOUT, G::DeadlineExceeded),
            (ProxyError::Unauthorized(s()), "unauthorized", Policy, No, S::FORBIDDEN, G::PermissionDenied),
            (ProxyError::RateLimited { policy: s(), which: "total", retry_after: t }, "rate_limited", Policy, No, S::TOO_MANY_REQUESTS, G::ResourceExhausted),
            (ProxyError::GatewayDomain { target: s(), reason: "x" }, "gateway_domain", Client, No, S::NOT_FOUND, G::NotFound),
            (ProxyError::GatewayLoop("x"), "loop", Proxy, No, S::LOOP_DETECTED, G::Aborted),
        ];
        let mut seen = [false; VARIANTS];
        for (e, kind, blame, retry, http, grpc) in &table {
            seen[variant(e)] = true;
            assert_eq!(e.class(), Class { kind, blame: *blame, retry: *retry, http: *http, grpc: *grpc }, "{e:?}");
            assert_eq!((e.metric_label(), e.blame(), e.http_status()), (*kind, *blame, *http));
            // A client's fault is a 4xx; only the proxy's own and the upstream's are 5xx.
            assert_eq!(http.is_client_error(), matches!(blame, Client | Policy), "{e:?}");
        }
        assert!(
            seen.iter().all(|s| *s),
            "variants missing from the table: {:?}",
            seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect::<Vec<_>>()
        );
    }
}
