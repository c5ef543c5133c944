//! The watchers: `Destination.Get` and `OutboundPolicies.Watch` streams held open against
//! knit-control, each a task that reports what it sees on one channel of [`Event`]s.

use linkerd2_proxy_api::{
    destination::{destination_client::DestinationClient, update, GetDestination, Update},
    net::ip_address::Ip,
    outbound::{outbound_policies_client::OutboundPoliciesClient, traffic_spec, TrafficSpec},
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{sync::mpsc, time::Instant};
use tonic::{transport::Channel, Code, Status};

/// Who the watchers say they are (`TrafficSpec.source_workload`): short names would resolve in
/// this namespace.
const SOURCE_WORKLOAD: &str = r#"{"ns":"bench","pod":"knit-loadgen"}"#;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Destination,
    Policy,
}

#[derive(Debug)]
pub enum Event {
    /// A stream received its first message, or gave up before it did.
    Ready(Kind, Result<(), String>),
    /// An address in a Destination `add`, and when it arrived.
    Added(Ipv4Addr, std::time::Instant),
    /// A stream that was ready ended.
    Ended(String),
}

/// Messages received on Destination streams, counted by the watchers as they arrive.
#[derive(Default)]
pub struct Counters {
    pub updates: AtomicU64,
    pub policies: AtomicU64,
}

/// Plaintext h2c channels, as the proxy uses. Several, so that no one HTTP/2 connection carries
/// more streams than a server's default concurrency limit (often 100 or 200).
pub async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_timeout(Duration::from_secs(1));
        // Lazy: knit-control may still be loading its manifests; streams retry until it answers.
        out.push(endpoint.connect_lazy());
    }
    Ok(out)
}

/// Codes that mean "not yet" while knit-control starts (not listening, manifests not loaded).
fn not_yet(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::NotFound | Code::Unknown)
}

async fn retry_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    loop {
        match attempt().await {
            Err(s) if not_yet(&s) && Instant::now() + Duration::from_millis(100) < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            result => return result,
        }
    }
}

fn describe(what: &str, target: &str, status: &Status) -> String {
    let hint = match status.code() {
        Code::Unimplemented => " (does this knit-control serve discovery? it needs --config-dir)",
        Code::NotFound => " (is the manifest directory loaded, and does it declare this Service?)",
        _ => "",
    };
    format!("{what} {target}: {:?}: {}{hint}", status.code(), status.message())
}

/// Watches one Service's endpoints until the stream ends; reports every added IPv4 address.
pub fn spawn_destination(channel: Channel, path: String, deadline: Instant, tx: mpsc::UnboundedSender<Event>, counters: Arc<Counters>) {
    tokio::spawn(async move {
        let client = DestinationClient::new(channel);
        let first = retry_until(deadline, || {
            let req = GetDestination { scheme: String::new(), path: path.clone(), context_token: String::new() };
            let mut client = client.clone();
            async move {
                let mut stream = client.get(req).await?.into_inner();
                match stream.message().await? {
                    Some(update) => Ok((stream, update)),
                    None => Err(Status::unavailable("the stream ended before its first message")),
                }
            }
        })
        .await;
        let (mut stream, update) = match first {
            Ok(first) => first,
            Err(status) => {
                let _ = tx.send(Event::Ready(Kind::Destination, Err(describe("Destination.Get", &path, &status))));
                return;
            }
        };
        counters.updates.fetch_add(1, Ordering::Relaxed);
        report_adds(&update, std::time::Instant::now(), &tx);
        let _ = tx.send(Event::Ready(Kind::Destination, Ok(())));
        let reason = loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    let at = std::time::Instant::now();
                    counters.updates.fetch_add(1, Ordering::Relaxed);
                    report_adds(&update, at, &tx);
                }
                Ok(None) => break format!("Destination.Get {path}: the server ended the stream"),
                Err(status) => break describe("Destination.Get", &path, &status),
            }
        };
        let _ = tx.send(Event::Ended(reason));
    });
}

fn report_adds(update: &Update, at: std::time::Instant, tx: &mpsc::UnboundedSender<Event>) {
    let Some(update::Update::Add(set)) = &update.update else { return };
    for addr in &set.addrs {
        if let Some(Ip::Ipv4(ip)) = addr.addr.and_then(|a| a.ip).and_then(|ip| ip.ip) {
            let _ = tx.send(Event::Added(Ipv4Addr::from(ip), at));
        }
    }
}

/// Watches one Service's outbound policy until the stream ends; only counts its messages (the
/// churn changes endpoints, not policies: these streams are there for their memory cost).
pub fn spawn_policy(channel: Channel, authority: String, deadline: Instant, tx: mpsc::UnboundedSender<Event>, counters: Arc<Counters>) {
    tokio::spawn(async move {
        let client = OutboundPoliciesClient::new(channel);
        let first = retry_until(deadline, || {
            let spec = TrafficSpec { source_workload: SOURCE_WORKLOAD.into(), target: Some(traffic_spec::Target::Authority(authority.clone())) };
            let mut client = client.clone();
            async move {
                let mut stream = client.watch(spec).await?.into_inner();
                match stream.message().await? {
                    Some(_) => Ok(stream),
                    None => Err(Status::unavailable("the stream ended before its first message")),
                }
            }
        })
        .await;
        let mut stream = match first {
            Ok(stream) => stream,
            Err(status) => {
                let _ = tx.send(Event::Ready(Kind::Policy, Err(describe("OutboundPolicies.Watch", &authority, &status))));
                return;
            }
        };
        counters.policies.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Event::Ready(Kind::Policy, Ok(())));
        let reason = loop {
            match stream.message().await {
                Ok(Some(_)) => {
                    counters.policies.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break format!("OutboundPolicies.Watch {authority}: the server ended the stream"),
                Err(status) => break describe("OutboundPolicies.Watch", &authority, &status),
            }
        };
        let _ = tx.send(Event::Ended(reason));
    });
}

#[cfg(test)]
mod tests;
