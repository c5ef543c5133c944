//! Destinations the control plane does not answer for: the static destination table
//! (`KNIT_PROXY_OUTBOUND_ENDPOINTS`), whose entries win over discovery so that a local override
//! needs no control plane, and DNS for other names (a port forward to a host outside the mesh).

use crate::{
    balance::Pool,
    error::ProxyError,
    policy::outbound::{Load, OutboundPolicy},
    retry::Budget,
};
use knit_core::destination::{Authority, DestinationTable, Endpoint};
use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

pub struct Resolver {
    entries: HashMap<Authority, Entry>,
}

struct Entry {
    /// One balancer per table entry, built at start-up: its endpoints' load and health persist
    /// across connections, as a discovered backend's do.
    pool: Arc<Pool<Endpoint>>,
    /// The entry's policy and retry budget, made at first use and shared by every connection
    /// and request to it (as a discovered destination's are).
    fixed: std::sync::OnceLock<(Arc<OutboundPolicy>, Arc<Budget>)>,
}

/// The load estimate of static endpoints: Linkerd's defaults for a Service.
const STATIC_LOAD: Load = Load::PeakEwma { default_rtt: Duration::from_millis(30), decay: Duration::from_secs(10) };

impl Resolver {
    pub fn new(table: &DestinationTable) -> Self {
        let entries = table
            .authorities()
            .map(|a| {
                let pool = Pool::new(&STATIC_LOAD, None);
                pool.update_add(table.get(a).map(<[Endpoint]>::to_vec).unwrap_or_default());
                (a.clone(), Entry { pool: Arc::new(pool), fixed: Default::default() })
            })
            .collect();
        Self { entries }
    }

    /// Whether the table names this authority.
    pub fn has(&self, authority: &Authority) -> bool {
        self.entries.contains_key(authority)
    }

    /// The balancer of a table entry.
    pub fn pool(&self, authority: &Authority) -> Option<&Arc<Pool<Endpoint>>> {
        self.entries.get(authority).map(|e| &e.pool)
    }

    /// A table entry's policy and retry budget, `make` giving them the first time.
    pub fn fixed(&self, authority: &Authority, make: impl FnOnce() -> OutboundPolicy) -> Option<(Arc<OutboundPolicy>, Arc<Budget>)> {
        let e = self.entries.get(authority)?;
        Some(e.fixed.get_or_init(|| (Arc::new(make()), Arc::new(Budget::default_per_destination()))).clone())
    }

    /// The first address DNS gives for a name outside the table (an IP literal is its own).
    pub async fn lookup(authority: &Authority) -> Result<Endpoint, ProxyError> {
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

    #[test]
    fn each_entry_gets_a_balancer_of_its_endpoints() {
        let r = Resolver::new(&"a:80=127.0.0.1:1|127.0.0.1:2,b:80=127.0.0.1:3".parse().unwrap());
        let a: Authority = "a:80".parse().unwrap();
        let mut ports: Vec<u16> = r.pool(&a).unwrap().endpoints().iter().map(|e| e.addr.port()).collect();
        ports.sort();
        assert_eq!(ports, [1, 2]);
        assert!(r.has(&"b:80".parse().unwrap()));
        assert!(!r.has(&"c:80".parse().unwrap()));
    }

    #[tokio::test]
    async fn ip_literals_and_unknown_names() {
        assert_eq!(Resolver::lookup(&"10.1.2.3:80".parse().unwrap()).await.unwrap().addr, "10.1.2.3:80".parse().unwrap());
        let e = Resolver::lookup(&"nowhere.invalid:80".parse().unwrap()).await.unwrap_err();
        assert!(matches!(e, ProxyError::NoRoute { .. }));
    }
}
