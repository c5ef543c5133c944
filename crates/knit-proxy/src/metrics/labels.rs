//! Label sets, encoded by hand so that absent labels are left out rather than written empty.

use knit_core::destination::MetricLabels;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use std::{fmt::Write as _, net::SocketAddr};

type EncResult = Result<(), std::fmt::Error>;

/// Writes one label; the value is escaped as the text format requires (prometheus-client writes
/// values as given, and an SNI or a discovered label may hold a quote).
fn put(enc: &mut LabelSetEncoder, key: &str, value: &str) -> EncResult {
    if !value.contains(['\\', '"', '\n']) {
        return (key, value).encode(enc.encode_label());
    }
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    (key, escaped.as_str()).encode(enc.encode_label())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Linkerd's `no_tls_reason` values that apply before mesh TLS exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoTlsReason {
    /// Inbound: the client did not start a TLS handshake.
    NoTlsFromRemote,
    /// Outbound: discovery did not name an identity for the endpoint.
    NotProvidedByServiceDiscovery,
    /// Inbound: the port is configured opaque, so no detection happened.
    PortSkipped,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tls {
    /// Mesh TLS terminated here: the client's identity, if it presented a certificate.
    Inbound {
        client_id: Option<String>,
    },
    /// Mesh TLS to a peer whose certificate carried `server_id`.
    Outbound {
        server_id: String,
    },
    NoIdentity(NoTlsReason),
    /// TLS that is not the mesh's, passed through untouched.
    Opaque {
        sni: Option<String>,
    },
}

impl Tls {
    fn encode(&self, enc: &mut LabelSetEncoder) -> EncResult {
        match self {
            Tls::Inbound { client_id } => {
                put(enc, "tls", "true")?;
                match client_id {
                    Some(id) => put(enc, "client_id", id),
                    None => Ok(()),
                }
            }
            Tls::Outbound { server_id } => {
                put(enc, "tls", "true")?;
                put(enc, "server_id", server_id)
            }
            Tls::NoIdentity(reason) => {
                put(enc, "tls", "no_identity")?;
                let r = match reason {
                    NoTlsReason::NoTlsFromRemote => "no_tls_from_remote",
                    NoTlsReason::NotProvidedByServiceDiscovery => "not_provided_by_service_discovery",
                    NoTlsReason::PortSkipped => "port_skipped",
                };
                put(enc, "no_tls_reason", r)
            }
            Tls::Opaque { sni } => {
                put(enc, "tls", "opaque")?;
                match sni {
                    Some(s) => put(enc, "sni", s),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The target of a connection or request: `direction`, `authority` (outbound only),
/// `target_addr`, `target_ip`, `target_port`, the TLS labels and, outbound, the endpoint's
/// discovered labels as `dst_<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpLabels {
    pub direction: Direction,
    pub authority: Option<String>,
    pub target_addr: SocketAddr,
    pub tls: Tls,
    pub dst: MetricLabels,
    /// Inbound HTTP: the server, route and authorization that applied.
    pub policy: Option<std::sync::Arc<super::route::PolicyLabels>>,
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        self.encode_into(&mut enc)
    }
}

impl HttpLabels {
    fn encode_into(&self, enc: &mut LabelSetEncoder) -> EncResult {
        put(enc, "direction", self.direction.as_str())?;
        if let Some(a) = &self.authority {
            put(enc, "authority", a)?;
        }
        put(enc, "target_addr", &self.target_addr.to_string())?;
        put(enc, "target_ip", &self.target_addr.ip().to_string())?;
        put(enc, "target_port", &self.target_addr.port().to_string())?;
        self.tls.encode(enc)?;
        for (k, v) in self.dst.iter() {
            put(enc, &format!("dst_{k}"), v)?;
        }
        if let Some(p) = &self.policy {
            let s = &p.server;
            for (k, v) in [("srv_group", &s.srv_group), ("srv_kind", &s.srv_kind), ("srv_name", &s.srv_name), ("srv_port", &s.srv_port)] {
                put(enc, k, v)?;
            }
            for (k, v) in [("route_group", &p.route_group), ("route_kind", &p.route_kind), ("route_name", &p.route_name)] {
                put(enc, k, v)?;
            }
            for (k, v) in [("authz_group", &p.authz_group), ("authz_kind", &p.authz_kind), ("authz_name", &p.authz_name)] {
                put(enc, k, v)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusLabels {
    pub target: HttpLabels,
    pub status_code: Option<u16>,
}

impl EncodeLabelSet for StatusLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        self.target.encode_into(&mut enc)?;
        if let Some(code) = self.status_code {
            put(&mut enc, "status_code", &code.to_string())?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    Success,
    Failure,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    pub status: StatusLabels,
    pub classification: Classification,
    pub grpc_status: Option<u32>,
    /// Set when the proxy, not the application, ended the exchange.
    pub error: Option<&'static str>,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        self.status.target.encode_into(&mut enc)?;
        if let Some(code) = self.status.status_code {
            put(&mut enc, "status_code", &code.to_string())?;
        }
        let c = match self.classification {
            Classification::Success => "success",
            Classification::Failure => "failure",
        };
        put(&mut enc, "classification", c)?;
        if let Some(g) = self.grpc_status {
            put(&mut enc, "grpc_status", &g.to_string())?;
        }
        if let Some(e) = self.error {
            put(&mut enc, "error", e)?;
        }
        Ok(())
    }
}

/// `peer="src"` is the accepted side of a connection, `peer="dst"` the side the proxy opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Src,
    Dst,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub target: HttpLabels,
    pub peer: Peer,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        self.target.encode_into(&mut enc)?;
        put(&mut enc, "peer", if self.peer == Peer::Src { "src" } else { "dst" })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloseLabels {
    pub tcp: TcpLabels,
    pub errno: Option<i32>,
}

impl EncodeLabelSet for CloseLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        self.tcp.target.encode_into(&mut enc)?;
        put(&mut enc, "peer", if self.tcp.peer == Peer::Src { "src" } else { "dst" })?;
        let mut errno = String::new();
        if let Some(e) = self.errno {
            let _ = write!(errno, "{}", errno_name(e));
        }
        put(&mut enc, "errno", &errno)
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EPIPE => "EPIPE",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        _ => "EOTHER",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProtocolLabels {
    pub direction: Direction,
    pub protocol: &'static str,
}

impl EncodeLabelSet for ProtocolLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        put(&mut enc, "direction", self.direction.as_str())?;
        put(&mut enc, "protocol", self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DetectTimeoutLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

impl EncodeLabelSet for DetectTimeoutLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        put(&mut enc, "direction", self.direction.as_str())?;
        put(&mut enc, "reason", self.reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorLabels {
    pub direction: Direction,
    pub error: &'static str,
    pub blame: &'static str,
}

impl EncodeLabelSet for ErrorLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        put(&mut enc, "direction", self.direction.as_str())?;
        put(&mut enc, "error", self.error)?;
        put(&mut enc, "blame", self.blame)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandshakeLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

impl EncodeLabelSet for HandshakeLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        put(&mut enc, "direction", self.direction.as_str())?;
        put(&mut enc, "reason", self.reason)
    }
}

/// `result="ok"` or `result="error"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResultLabels {
    pub result: &'static str,
}

impl EncodeLabelSet for ResultLabels {
    fn encode(&self, mut enc: LabelSetEncoder) -> EncResult {
        put(&mut enc, "result", self.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, metrics::counter::Counter, metrics::family::Family, registry::Registry};

    #[test]
    fn outbound_labels_carry_discovery_and_escape_values() {
        let (dst, _) = MetricLabels::new([("deployment", "books"), ("pod", "books-\"1\"")].map(|(k, v)| (k.to_string(), v.to_string())));
        let labels = HttpLabels {
            direction: Direction::Outbound,
            authority: Some("books.demo:80".into()),
            target_addr: "10.0.0.1:80".parse().unwrap(),
            tls: Tls::Opaque { sni: Some("a\\b\nc".into()) },
            dst,
            policy: None,
        };
        let family = Family::<HttpLabels, Counter>::default();
        family.get_or_create(&labels).inc();
        let mut registry = Registry::default();
        registry.register("request", "requests", family);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        let line = out.lines().find(|l| l.starts_with("request_total{")).unwrap();
        assert!(line.contains(r#"sni="a\\b\nc",dst_deployment="books",dst_pod="books-\"1\""}"#), "{line}");
    }
}
