//! Where traffic goes: authorities (`name:port`), endpoints (an address, and how to reach the
//! proxy in front of it when it is meshed) and the local-mode destination table that maps one to
//! the other until discovery from `knit-control` takes over.

use std::{collections::BTreeMap, fmt, net::SocketAddr, str::FromStr};

/// A logical destination `host:port`; host names are lower-case without a trailing dot, so that
/// `Books.default:8080` and `books.default.:8080` are one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("{0:?} is not an authority: expected host:port")]
    Authority(String),
    #[error("{0:?} is not an endpoint: expected IP:PORT or IP:PORT@INBOUND_PORT")]
    Endpoint(String),
    #[error("{0:?} is not a destination entry: expected AUTHORITY=ENDPOINT[|ENDPOINT...]")]
    Entry(String),
    #[error("{0:?} is not a port forward: expected LOCAL_PORT=AUTHORITY")]
    Forward(String),
}

impl Authority {
    /// Parses `host[:port]`, using `default_port` when the port is absent (an HTTP `Host` header
    /// may leave it out).
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Self, DestinationError> {
        let err = || DestinationError::Authority(s.to_string());
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(err)?;
            (h, after.strip_prefix(':'))
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(err()),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err)?,
            None => default_port.ok_or_else(err)?,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !valid {
            return Err(err());
        }
        Ok(Self { host, port })
    }

    pub fn from_addr(addr: SocketAddr) -> Self {
        Self { host: addr.ip().to_string(), port: addr.port() }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Authority {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, None)
    }
}

/// One address traffic can be sent to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The application's address: what the transport header names, and what an unmeshed
    /// connection dials.
    pub addr: SocketAddr,
    /// Set when a Knit (or Linkerd) proxy fronts the endpoint: connections go to its inbound port
    /// with a transport header, and HTTP/1 travels upgraded to HTTP/2.
    pub meshed: Option<Meshed>,
    /// What discovery says about it for metrics.
    pub labels: MetricLabels,
}

/// The labels discovery gives an endpoint (Linkerd's `metric_labels`: `namespace`, `service`,
/// `deployment`, `pod`, ...), which outbound metrics carry as `dst_<name>`. Sorted by name, and
/// shared between clones: every request to the endpoint labels its metrics with them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricLabels(Option<std::sync::Arc<[(String, String)]>>);

impl MetricLabels {
    /// Keeps the pairs whose name is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`);
    /// the others could not be exported, and are returned so the caller can say so.
    pub fn new(labels: impl IntoIterator<Item = (String, String)>) -> (Self, Vec<String>) {
        let valid =
            |k: &str| k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let (mut kept, refused): (Vec<_>, Vec<_>) = labels.into_iter().partition(|(k, _)| valid(k));
        kept.sort();
        kept.dedup_by(|a, b| a.0 == b.0);
        let labels = if kept.is_empty() { None } else { Some(kept.into()) };
        (Self(labels), refused.into_iter().map(|(k, _)| k).collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Meshed {
    pub inbound_port: u16,
    /// The identity the peer proxy must prove with mesh TLS; without one the hop is plaintext.
    pub identity: Option<std::sync::Arc<str>>,
    /// A multicluster gateway's endpoint (Destination's `authority_override`): the transport
    /// header names this authority in the gateway's cluster instead of a local port, and HTTP
    /// requests are addressed to it.
    pub gateway_target: Option<std::sync::Arc<Authority>>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, meshed: None, labels: MetricLabels::default() }
    }

    /// The socket address to dial.
    pub fn connect_addr(&self) -> SocketAddr {
        match &self.meshed {
            Some(m) => SocketAddr::new(self.addr.ip(), m.inbound_port),
            None => self.addr,
        }
    }
}

impl FromStr for Endpoint {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DestinationError::Endpoint(s.to_string());
        let (rest, identity) = match s.split_once('#') {
            Some((r, id)) if !id.trim().is_empty() => (r, Some(std::sync::Arc::<str>::from(id.trim()))),
            Some(_) => return Err(err()),
            None => (s, None),
        };
        let (addr, inbound) = match rest.rsplit_once('@') {
            Some((a, p)) => (a, Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err)?)),
            None => (rest, None),
        };
        let addr = addr.trim().parse::<SocketAddr>().map_err(|_| err())?;
        let meshed = match (inbound, identity) {
            (Some(inbound_port), identity) => Some(Meshed { inbound_port, identity, gateway_target: None }),
            // An identity says how to authenticate the peer proxy; without its port there is none.
            (None, Some(_)) => return Err(err()),
            (None, None) => None,
        };
        Ok(Self { addr, meshed, labels: MetricLabels::default() })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.meshed {
            Some(Meshed { inbound_port, identity: Some(id), .. }) => write!(f, "{}@{inbound_port}#{id}", self.addr),
            Some(Meshed { inbound_port, identity: None, .. }) => write!(f, "{}@{inbound_port}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// The local-mode destination table: `AUTHORITY=ENDPOINT[|ENDPOINT...]` entries separated by
/// commas; an endpoint is `IP:PORT`, or `IP:PORT@INBOUND_PORT[#IDENTITY]` when a proxy fronts it
/// (with the identity, the hop to that proxy is mesh TLS). Authorities may be names (`books.default:8080`) or addresses (`10.0.0.2:8080`, for
/// transparent mode, where the original destination is the key).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct DestinationTable(BTreeMap<Authority, Vec<Endpoint>>);

impl DestinationTable {
    pub fn get(&self, authority: &Authority) -> Option<&[Endpoint]> {
        self.0.get(authority).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn authorities(&self) -> impl Iterator<Item = &Authority> {
        self.0.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for DestinationTable {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut table = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (auth, eps) = entry.split_once('=').ok_or_else(|| DestinationError::Entry(entry.to_string()))?;
            let auth = Authority::parse(auth.trim(), None)?;
            let eps = eps.split('|').map(|e| e.trim().parse()).collect::<Result<Vec<Endpoint>, _>>()?;
            table.insert(auth, eps);
        }
        Ok(Self(table))
    }
}

/// Authorities and endpoints serialize as the strings they parse from, so a config dump can be
/// pasted back into the environment.
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(Authority, Endpoint);

/// Local port forwards: `LOCAL_PORT=AUTHORITY` entries separated by commas.
pub fn parse_port_forwards(s: &str) -> Result<BTreeMap<u16, Authority>, DestinationError> {
    let mut out = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let err = || DestinationError::Forward(entry.to_string());
        let (port, auth) = entry.split_once('=').ok_or_else(err)?;
        let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err)?;
        out.insert(port, Authority::parse(auth.trim(), None)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let a = Authority::parse("Books.Default.:8080", None).unwrap();
        assert_eq!(a, Authority { host: "books.default".into(), port: 8080 });
        assert_eq!(a.to_string(), "books.default:8080");
        assert_eq!(Authority::parse("web", Some(80)).unwrap().port, 80);
        assert_eq!(Authority::parse("[::1]:81", None).unwrap().to_string(), "[::1]:81");
        for bad in ["web", "web:0", "web:x", ":80", "a b:80", "::1:80", "web:99999"] {
            assert!(Authority::parse(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tables() {
        let t: DestinationTable = "books:8080=127.0.0.1:9080@4143|127.0.0.1:9081, 10.0.0.2:80=10.0.0.2:80".parse().unwrap();
        let eps = t.get(&"books:8080".parse().unwrap()).unwrap();
        assert_eq!(eps[0].connect_addr(), "127.0.0.1:4143".parse().unwrap());
        assert_eq!(eps[0].addr, "127.0.0.1:9080".parse().unwrap());
        assert_eq!(eps[1].meshed, None);
        assert_eq!(eps[0].to_string(), "127.0.0.1:9080@4143");
        assert!(t.get(&"10.0.0.2:80".parse().unwrap()).is_some());
        assert!("books:8080".parse::<DestinationTable>().is_err());
        assert!("books:8080=localhost:80".parse::<DestinationTable>().is_err());
        assert!("books:8080=127.0.0.1:80@0".parse::<DestinationTable>().is_err());
        let t: DestinationTable = "b:80=127.0.0.1:80@4143#web.ns.serviceaccount.identity.knit.cluster.local".parse().unwrap();
        let e = &t.get(&"b:80".parse().unwrap()).unwrap()[0];
        assert_eq!(e.meshed.as_ref().unwrap().identity.as_deref(), Some("web.ns.serviceaccount.identity.knit.cluster.local"));
        assert_eq!(e.to_string(), "127.0.0.1:80@4143#web.ns.serviceaccount.identity.knit.cluster.local");
        assert!("b:80=127.0.0.1:80#id".parse::<DestinationTable>().is_err(), "an identity needs an inbound port");
        assert!("b:80=127.0.0.1:80@4143#".parse::<DestinationTable>().is_err());
        assert_eq!("".parse::<DestinationTable>().unwrap().len(), 0);
    }

    #[test]
    fn serializes_as_it_parses() {
        let t: DestinationTable = "books:8080=127.0.0.1:9080@4143".parse().unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"books:8080":["127.0.0.1:9080@4143"]}"#);
    }

    #[test]
    fn metric_labels() {
        let pairs = [("pod", "b-1"), ("namespace", "demo"), ("zone-a", "x"), ("1st", "x"), ("_ok", "y"), ("pod", "dup")];
        let (labels, refused) = MetricLabels::new(pairs.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(labels.iter().collect::<Vec<_>>(), [("_ok", "y"), ("namespace", "demo"), ("pod", "b-1")]);
        assert_eq!(refused, ["zone-a", "1st"]);
        assert_eq!(MetricLabels::new([]).0, MetricLabels::default());
    }

    #[test]
    fn forwards() {
        let f = parse_port_forwards("16379=redis.default:6379").unwrap();
        assert_eq!(f[&16379].to_string(), "redis.default:6379");
        assert!(parse_port_forwards("0=a:1").is_err());
        assert!(parse_port_forwards("1=a").is_err());
    }
}
