//! Local rate limits on inbound HTTP (`HTTPLocalRateLimitPolicy`, LINKERD-WIRE.md §4.1): a limit
//! on all requests to a server, and one per client identity, with overrides for named
//! identities. Token buckets that hold one second's worth of requests; a refused request learns
//! when a token will be there (`Retry-After`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Per-identity buckets kept at most; past that, idle ones are dropped so that a flood of
/// identities cannot grow memory without bound.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug)]
pub struct RateLimit {
    total: Option<Mutex<Bucket>>,
    per_identity: Option<u32>,
    /// Identities with a limit of their own.
    overrides: Vec<(Vec<String>, u32)>,
    /// Keyed by identity; unauthenticated clients share the `None` bucket.
    clients: Mutex<HashMap<Option<String>, Bucket>>,
}

/// A refused request: which limit, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub which: &'static str,
    pub retry_after: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    rps: u32,
    tokens: f64,
    stamp: Instant,
}

impl Bucket {
    fn new(rps: u32, now: Instant) -> Self {
        Self { rps, tokens: f64::from(rps), stamp: now }
    }

    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.rps.max(1));
        self.tokens = (self.tokens + now.saturating_duration_since(self.stamp).as_secs_f64() * rate).min(rate);
        self.stamp = now;
        if self.rps > 0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.001)))
    }

    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.stamp).as_secs_f64() * f64::from(self.rps) >= f64::from(self.rps)
    }
}

impl RateLimit {
    pub fn new(total: Option<u32>, per_identity: Option<u32>, overrides: Vec<(Vec<String>, u32)>) -> Self {
        let now = Instant::now();
        Self { total: total.map(|r| Mutex::new(Bucket::new(r, now))), per_identity, overrides, clients: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for a request from `identity`, from the client's bucket first (an override,
    /// else the per-identity limit), then from the server's total.
    pub fn check(&self, identity: Option<&str>, now: Instant) -> Result<(), Limited> {
        let own = identity.and_then(|id| self.overrides.iter().find(|(ids, _)| ids.iter().any(|i| i == id)).map(|(_, rps)| (*rps, "override")));
        if let Some((rps, which)) = own.or(self.per_identity.map(|r| (r, "identity"))) {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients.len() >= MAX_CLIENTS {
                clients.retain(|_, b| !b.is_full(now));
            }
            let bucket = clients.entry(identity.map(str::to_string)).or_insert_with(|| Bucket::new(rps, now));
            bucket.take(now).map_err(|retry_after| Limited { which, retry_after })?;
        }
        if let Some(total) = &self.total {
            total.lock().unwrap_or_else(|p| p.into_inner()).take(now).map_err(|retry_after| Limited { which: "total", retry_after })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_allows_a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let limit = RateLimit::new(Some(5), None, vec![]);
        for _ in 0..5 {
            assert!(limit.check(None, t0).is_ok());
        }
        let refused = limit.check(None, t0).unwrap_err();
        assert_eq!(refused.which, "total");
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert!(limit.check(None, t0 + Duration::from_millis(200)).is_ok());
        assert!(limit.check(None, t0 + Duration::from_millis(250)).is_err());
    }

    #[test]
    fn identities_have_their_own_buckets_and_overrides_win() {
        let t0 = Instant::now();
        let limit = RateLimit::new(None, Some(2), vec![(vec!["vip".into()], 10)]);
        assert!(limit.check(Some("a"), t0).is_ok());
        assert!(limit.check(Some("a"), t0).is_ok());
        assert_eq!(limit.check(Some("a"), t0).unwrap_err().which, "identity");
        assert!(limit.check(Some("b"), t0).is_ok(), "b has a bucket of its own");
        for _ in 0..10 {
            assert!(limit.check(Some("vip"), t0).is_ok());
        }
        assert_eq!(limit.check(Some("vip"), t0).unwrap_err().which, "override");
        assert!(limit.check(None, t0).is_ok() && limit.check(None, t0).is_ok());
        assert!(limit.check(None, t0).is_err(), "unauthenticated clients share one bucket");
    }

    #[test]
    fn the_client_map_stays_bounded() {
        let t0 = Instant::now();
        let limit = RateLimit::new(None, Some(1), vec![]);
        for i in 0..(MAX_CLIENTS + 10) {
            let _ = limit.check(Some(&format!("id-{i}")), t0 + Duration::from_secs(2 * (i / MAX_CLIENTS) as u64));
        }
        assert!(limit.clients.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
