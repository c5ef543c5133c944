//! From a logical destination to an endpoint. In local mode the destination table answers first
//! and DNS second; discovery from `knit-control` will answer here too.

use crate::error::ProxyError;
use knit_core::destination::{Authority, DestinationTable, Endpoint};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

pub struct Resolver {
    table: DestinationTable,
    /// One round-robin position per authority: a shared one would skew every split whose
    /// requests interleave with another authority's.
    next: HashMap<Authority, AtomicUsize>,
}

/// Where a connection's traffic goes, as far as the connection alone tells.
#[derive(Clone, Debug)]
pub enum Dest {
    /// A known endpoint: the original destination, or the inbound application.
    Endpoint(Endpoint),
    /// A logical name resolved per request (port forwards, table entries for an original
    /// destination).
    Named(Authority),
    /// Each HTTP request names its destination with `Host` / `:authority` (local mode).
    FromRequest,
}

impl Resolver {
    pub fn new(table: DestinationTable) -> Self {
        let next = table.authorities().map(|a| (a.clone(), AtomicUsize::new(0))).collect();
        Self { table, next }
    }

    pub fn has(&self, authority: &Authority) -> bool {
        self.table.get(authority).is_some()
    }

    /// Whether the static table names this destination: an entry there wins over discovery, so
    /// a local override needs no control plane.
    pub fn has_static(&self, target: &crate::discovery::Target) -> bool {
        matches!(target, crate::discovery::Target::Authority(a) if self.has(a))
    }

    /// Picks an endpoint for `authority`: the table's endpoints in turn, or the first address DNS
    /// gives for it.
    pub async fn resolve(&self, authority: &Authority) -> Result<Endpoint, ProxyError> {
        if let Some(eps) = self.table.get(authority).filter(|e| !e.is_empty()) {
            let i = self.next.get(authority).map_or(0, |n| n.fetch_add(1, Ordering::Relaxed)) % eps.len();
            return Ok(eps[i].clone());
        }
        if let Ok(ip) = authority.host.parse::<std::net::IpAddr>() {
            return Ok(Endpoint::plain(SocketAddr::new(ip, authority.port)));
        }
        let no_route = || ProxyError::NoRoute { authority: authority.clone() };
        let mut addrs = tokio::net::lookup_host((authority.host.as_str(), authority.port)).await.map_err(|_| no_route())?;
        addrs.next().map(Endpoint::plain).ok_or_else(no_route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_robin_is_per_authority() {
        let r = Resolver::new("a:80=127.0.0.1:1|127.0.0.1:2,b:80=127.0.0.1:3".parse().unwrap());
        let (a, b): (Authority, Authority) = ("a:80".parse().unwrap(), "b:80".parse().unwrap());
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(r.resolve(&a).await.unwrap().addr.port());
            r.resolve(&b).await.unwrap();
        }
        assert_eq!(seen, [1, 2, 1, 2]);
    }

    #[tokio::test]
    async fn ip_literals_and_unknown_names() {
        let r = Resolver::new(Default::default());
        assert_eq!(r.resolve(&"10.1.2.3:80".parse().unwrap()).await.unwrap().addr, "10.1.2.3:80".parse().unwrap());
        let e = r.resolve(&"nowhere.invalid:80".parse().unwrap()).await.unwrap_err();
        assert!(matches!(e, ProxyError::NoRoute { .. }));
    }
}
