//! From a logical destination to an endpoint. In local mode the destination table answers first
//! and DNS second; discovery from `knit-control` will answer here too.

use crate::error::ProxyError;
use knit_core::destination::{Authority, DestinationTable, Endpoint};
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

pub struct Resolver {
    table: DestinationTable,
    next: AtomicUsize,
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
        Self { table, next: AtomicUsize::new(0) }
    }

    pub fn has(&self, authority: &Authority) -> bool {
        self.table.get(authority).is_some()
    }

    /// Picks an endpoint for `authority`: the table's endpoints in turn, or the first address DNS
    /// gives for it.
    pub async fn resolve(&self, authority: &Authority) -> Result<Endpoint, ProxyError> {
        if let Some(eps) = self.table.get(authority).filter(|e| !e.is_empty()) {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % eps.len();
            return Ok(eps[i]);
        }
        if let Ok(ip) = authority.host.parse::<std::net::IpAddr>() {
            return Ok(Endpoint::plain(SocketAddr::new(ip, authority.port)));
        }
        let no_route = || ProxyError::NoRoute { authority: authority.clone() };
        let mut addrs = tokio::net::lookup_host((authority.host.as_str(), authority.port)).await.map_err(|_| no_route())?;
        addrs.next().map(Endpoint::plain).ok_or_else(no_route)
    }
}
