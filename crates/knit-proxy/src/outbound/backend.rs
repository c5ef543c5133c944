//! From a route's backend to one endpoint, for HTTP requests and opaque connections alike:
//! a balancer (P2C over the endpoints `Destination.Get` gives the backend's path, or over a
//! static table entry's), a single forwarded endpoint, or a backend the control plane could not
//! resolve.
//!
//! The backend's queue (LINKERD-WIRE.md §4.2 `Backend.queue`): when no endpoint is ready (none
//! discovered yet, or all ejected by failure accrual), a request waits for one, with at most
//! `queue_capacity` others; once the backend has had no ready endpoint for `failfast`, it fails
//! fast: waiting requests and new ones fail at once with 503 until an endpoint is ready again.

use crate::http::Side;
use crate::{
    balance::{Picked, Pool},
    error::ProxyError,
    policy::outbound::{Backend, BackendKind, FailureAccrual},
};
use knit_core::destination::Endpoint;
use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

/// The endpoint a backend chose, and its balancer's accounting when it came from one (dropped
/// or finished when the request or connection ends).
pub struct Chosen {
    pub endpoint: Endpoint,
    pub picked: Option<Picked<Endpoint>>,
}

/// How often a waiting request re-checks its balancer between endpoint updates: an ejected
/// endpoint's probation starts on a timer, which no update announces.
const RECHECK: Duration = Duration::from_millis(50);

pub async fn endpoint(backend: &Backend, accrual: Option<&FailureAccrual>, side: &Side) -> Result<Chosen, ProxyError> {
    let name = backend.meta.name();
    let pool = match &backend.kind {
        BackendKind::Forward(e) => return Ok(Chosen { endpoint: side.localize(e.clone()), picked: None }),
        BackendKind::Fail { message } => return Err(ProxyError::BackendFailed { backend: name.to_string(), message: message.clone() }),
        BackendKind::Balancer { path, load } => side.discovery.endpoints(path, load, accrual).await?.pool.clone(),
        BackendKind::Static(authority) => side.resolver.pool(authority).cloned().ok_or_else(|| ProxyError::NoRoute { authority: authority.clone() })?,
    };
    let picked = queue(&pool, backend).await?;
    Ok(Chosen { endpoint: side.localize(picked.endpoint().clone()), picked: Some(picked) })
}

/// Picks a ready endpoint, waiting in the backend's queue while there is none.
async fn queue(pool: &Arc<Pool<Endpoint>>, backend: &Backend) -> Result<Picked<Endpoint>, ProxyError> {
    let name = || backend.meta.name().to_string();
    let now = Instant::now();
    let mut rng = fastrand::Rng::new();
    if let Ok(p) = pool.pick(now, &mut rng) {
        pool.note_ready(true, now);
        return Ok(p);
    }
    let unready = pool.note_ready(false, now);
    if unready >= backend.failfast {
        return Err(ProxyError::Failfast { backend: name(), unready });
    }
    if pool.waiting.load(Ordering::Relaxed) >= backend.queue_capacity {
        return Err(ProxyError::QueueFull { backend: name(), capacity: backend.queue_capacity });
    }
    let _waiting = Waiting::enter(pool);
    let deadline = now + (backend.failfast - unready);
    loop {
        // Registered before the check, so an update between the two is not missed.
        let added = pool.added();
        let now = Instant::now();
        match pool.pick(now, &mut rng) {
            Ok(p) => {
                pool.note_ready(true, now);
                return Ok(p);
            }
            Err(n) if now >= deadline => {
                tracing::debug!(backend = %name(), total = n.total, ejected = n.ejected, "no endpoint became ready within the failfast timeout");
                return Err(ProxyError::Failfast { backend: name(), unready: pool.note_ready(false, now) });
            }
            Err(_) => {}
        }
        tokio::select! {
            () = added => {}
            () = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
        }
    }
}

/// One request in a backend's queue.
struct Waiting<'a>(&'a Pool<Endpoint>);

impl<'a> Waiting<'a> {
    fn enter(pool: &'a Pool<Endpoint>) -> Self {
        pool.waiting.fetch_add(1, Ordering::Relaxed);
        Self(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::outbound::{Load, Meta};

    fn backend(capacity: usize, failfast: Duration) -> Backend {
        Backend { meta: Arc::new(Meta::Default("b".into())), queue_capacity: capacity, failfast, kind: BackendKind::Fail { message: String::new() } }
    }

    fn pool() -> Arc<Pool<Endpoint>> {
        Arc::new(Pool::new(&Load::PeakEwma { default_rtt: Duration::from_millis(30), decay: Duration::from_secs(10) }, None))
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::plain(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test]
    async fn a_request_waits_for_the_first_endpoint() {
        let pool = pool();
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { queue(&pool, &backend(10, Duration::from_secs(5))).await.map(|p| p.endpoint().clone()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.waiting.load(Ordering::Relaxed), 1);
        pool.update_add(vec![ep(1)]);
        assert_eq!(waiter.await.unwrap().unwrap(), ep(1));
        assert_eq!(pool.waiting.load(Ordering::Relaxed), 0, "the queue slot is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_backend_fails_fast_after_its_timeout_and_then_at_once() {
        let pool = pool();
        let b = backend(10, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        assert!(matches!(queue(&pool, &b).await, Err(ProxyError::Failfast { .. })));
        assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
        // In failfast: the next request does not wait.
        let again = tokio::time::Instant::now();
        assert!(matches!(queue(&pool, &b).await, Err(ProxyError::Failfast { .. })));
        assert_eq!(again.elapsed(), Duration::ZERO);
        // An endpoint ends failfast.
        pool.update_add(vec![ep(2)]);
        assert_eq!(queue(&pool, &b).await.unwrap().endpoint(), &ep(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_load() {
        let pool = pool();
        let b = backend(1, Duration::from_secs(3));
        let first = tokio::spawn({
            let (pool, b) = (pool.clone(), b.clone());
            async move { queue(&pool, &b).await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(matches!(queue(&pool, &b).await, Err(ProxyError::QueueFull { capacity: 1, .. })));
        pool.update_add(vec![ep(3)]);
        assert!(first.await.unwrap());
    }
}
