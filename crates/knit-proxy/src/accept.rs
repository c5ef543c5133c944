//! The proxy's one accept loop, used by every listener (inbound, outbound, port forwards, admin,
//! tap), and the limits it keeps:
//! - each listener class has a cap on open connections; at the cap the loop stops accepting, so
//!   new clients wait in the kernel's backlog (back-pressure) instead of costing memory here;
//! - the data listeners' cap leaves file descriptors in reserve (each proxied connection holds
//!   two: the client's and the upstream's), so that `/live` and `/ready` keep answering however
//!   many connections the data listeners hold;
//! - a failed accept (usually EMFILE, out of descriptors) backs off, 10 ms doubling to 1 s,
//!   instead of spinning on a listener that stays readable;
//! - accepted sockets get `TCP_NODELAY` and TCP keep-alive (a peer that vanished is noticed);
//! - the loop ends when draining starts, dropping the listener so new connections are refused.

use crate::drain;
use knit_core::per_source::{PerSource, SourceGuard};
use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// Idle time before the first keep-alive probe, and between probes.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Descriptors kept out of the data listeners' reach: admin and tap connections, the
/// control-plane streams, files, the runtime's own.
pub const RESERVED_FDS: u64 = 128;

/// Connections one listener class may hold open at once, and optionally from one client
/// address: one client must not take every place of a small listener (admin, tap) and leave
/// the kubelet's probes waiting behind it.
#[derive(Clone)]
pub struct Limit {
    permits: Arc<Semaphore>,
    pub max: usize,
    per_source: Option<PerSource>,
}

/// A connection's place under its [`Limit`]; released when dropped.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _source: Option<SourceGuard>,
}

impl Limit {
    pub fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)), max, per_source: None }
    }

    /// As [`Self::new`], with at most `per_source` connections from one non-loopback address.
    pub fn per_source(max: usize, per_source: usize) -> Self {
        Self { per_source: Some(PerSource::new(per_source)), ..Self::new(max) }
    }

    /// Counts a connection from `client` against the per-source cap; `None` when it is full.
    fn admit(&self, global: OwnedSemaphorePermit, client: IpAddr) -> Option<Permit> {
        let source = match &self.per_source {
            Some(p) => Some(p.admit(client)?),
            None => None,
        };
        Some(Permit { _global: global, _source: source })
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// The soft `RLIMIT_NOFILE` (from `/proc/self/limits`; no syscall needs `unsafe`), if known.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The data listeners' connection cap: the configured maximum, lowered so that two descriptors
/// per connection still leave [`RESERVED_FDS`] free.
pub fn data_connections(configured: usize) -> usize {
    match fd_limit() {
        Some(n) => configured.min(usize::try_from(n.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX)).max(1),
        None => configured,
    }
}

/// Sets what every socket of the proxy gets, accepted or dialled.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE).with_interval(KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Accepts until `drain` (when given) signals, calling `on_conn` with each connection and the
/// permit that counts it against `limit` (dropped when the connection's task ends).
pub async fn accept_loop<F, Fut>(listener: TcpListener, limit: Limit, mut drain: Option<drain::Watch>, what: &'static str, mut on_conn: F)
where
    F: FnMut(TcpStream, SocketAddr, Permit, Option<drain::Watch>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(10);
    let mut full_logged = false;
    loop {
        let permit = match limit.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !full_logged {
                    tracing::warn!(listener = what, max = limit.max, "connection limit reached; new connections wait in the backlog");
                    full_logged = true;
                }
                let acquired = tokio::select! {
                    p = limit.permits.clone().acquire_owned() => p.ok(),
                    () = signaled(&mut drain) => return,
                };
                match acquired {
                    Some(p) => p,
                    None => return,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = signaled(&mut drain) => return,
        };
        match accepted {
            Ok((tcp, client)) => {
                backoff = Duration::from_millis(10);
                full_logged = false;
                let Some(permit) = limit.admit(permit, client.ip()) else {
                    // Closed at once: its place goes to the next client.
                    tracing::debug!(listener = what, %client, "too many connections from one client; closed");
                    continue;
                };
                tune(&tcp);
                tokio::spawn(on_conn(tcp, client, permit, drain.clone()));
            }
            Err(e) => {
                // Usually EMFILE or ENFILE: the listener stays readable, so an immediate retry
                // would spin. The connections in flight free descriptors as they end.
                tracing::warn!(listener = what, error = %e, retry_in = ?backoff, "accept failed");
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = signaled(&mut drain) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn signaled(drain: &mut Option<drain::Watch>) {
    match drain {
        Some(d) => d.signaled().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_new_connections_wait_and_are_served_once_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Limit::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        tokio::spawn(accept_loop(listener, limit.clone(), None, "test", move |_tcp, client, permit, _| {
            let (tx, release) = (tx.clone(), release.clone());
            async move {
                let _ = tx.send(client);
                // The first connection holds its permit until released.
                if let Some(r) = release.lock().await.take() {
                    let _ = r.await;
                }
                drop(permit);
            }
        }));
        let _a = TcpStream::connect(addr).await.unwrap();
        rx.recv().await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "the second waits in the backlog");
        assert_eq!(limit.in_use(), 1);
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("served once the first ended").unwrap();
    }

    #[test]
    fn one_client_cannot_take_every_place() {
        let limit = Limit::per_source(8, 2);
        let global = || limit.permits.clone().try_acquire_owned().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let held = [limit.admit(global(), remote).unwrap(), limit.admit(global(), remote).unwrap()];
        assert!(limit.admit(global(), remote).is_none(), "a third from the same address");
        assert_eq!(limit.in_use(), 2, "the refused one's place is free again");
        drop(held);
        assert_eq!(limit.in_use(), 0);
    }

    #[test]
    fn the_data_cap_leaves_descriptors_for_the_admin_server() {
        if let Some(n) = fd_limit() {
            assert!(data_connections(usize::MAX) as u64 * 2 + RESERVED_FDS <= n.max(RESERVED_FDS + 2));
        }
        assert_eq!(data_connections(10), 10.min(data_connections(usize::MAX)));
    }
}
