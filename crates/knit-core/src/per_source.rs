//! Connections per client address, for the accept loops of knit-proxy and knit-control: one
//! client must not take every place of a listener. Loopback clients (the pod itself, or every
//! workload in local mode) are not counted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Open connections by client address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

#[derive(Clone, Debug)]
pub struct PerSource {
    cap: usize,
    counts: Counts,
}

/// One connection counted against its address; released when dropped.
#[derive(Debug)]
pub struct SourceGuard {
    counted: Option<(IpAddr, Counts)>,
}

impl PerSource {
    pub fn new(cap: usize) -> Self {
        Self { cap, counts: Default::default() }
    }

    /// Counts a connection from `client`; `None` when that address has `cap` open already.
    pub fn admit(&self, client: IpAddr) -> Option<SourceGuard> {
        let ip = client.to_canonical();
        if ip.is_loopback() {
            return Some(SourceGuard { counted: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(SourceGuard { counted: Some((ip, self.counts.clone())) })
    }

    /// Addresses with a connection open (for tests and metrics).
    pub fn sources(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.counted {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_cap_and_loopback_is_not_counted() {
        let limit = PerSource::new(2);
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let (a, b) = (limit.admit(remote).unwrap(), limit.admit(remote).unwrap());
        assert!(limit.admit(remote).is_none(), "a third from the same address");
        assert!(limit.admit("::ffff:192.0.2.7".parse().unwrap()).is_none(), "in any spelling");
        assert!(limit.admit("192.0.2.8".parse().unwrap()).is_some(), "another address");
        let local: Vec<_> = (0..10).map(|_| limit.admit("127.0.0.1".parse().unwrap()).unwrap()).collect();
        assert_eq!(local.len(), 10, "loopback is not counted");
        drop(a);
        assert!(limit.admit(remote).is_some(), "a place freed is a place again");
        drop(b);
        assert_eq!(limit.sources(), 0, "nothing left behind");
    }
}
