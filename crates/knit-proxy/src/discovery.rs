//! Discovery: what the control plane says about each destination and each inbound port, kept
//! current by its streams (LINKERD-WIRE.md §3, §4):
//! - outbound policy per target (a logical authority, or an original destination address):
//!   `OutboundPolicies.Watch`;
//! - the endpoints behind each balancer (`BalanceP2c` backends name a path): `Destination.Get`,
//!   applied to that balancer's pool as adds and removes, so endpoint load and breaker state
//!   survive updates;
//! - inbound policy per local port: `InboundServerPolicies.WatchPort`;
//! - the endpoint at an address no Service covers (a pod's own IP, reached through a headless
//!   Service or by hand): `Destination.GetProfile(ip:port)`'s `endpoint`, so that a meshed workload
//!   is reached over mTLS even when the policy service answers `NotFound` (Linkerd's fallback).
//!
//! Answers are cached and shared by every connection that asks for the same thing; an entry
//! unused for its idle timeout is dropped together with its stream. A stream that fails is
//! reopened with jittered backoff while the last answer stays in use, so a control plane that
//! restarts (or is down for a while) costs no request that the cache can answer.

use crate::{
    balance::Pool,
    config::ControlAddr,
    error::ProxyError,
    policy::{
        inbound::{DefaultPolicy, ServerPolicy},
        outbound::{self, FailureAccrual, Load, OutboundPolicy},
    },
    retry::Budget,
};
use knit_core::destination::{Authority, Endpoint};
use linkerd2_proxy_api::{
    destination::{destination_client::DestinationClient, update, GetDestination},
    inbound::{inbound_server_policies_client::InboundServerPoliciesClient, PortSpec},
    outbound::{outbound_policies_client::OutboundPoliciesClient, traffic_spec, TrafficSpec},
};
use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    hash::Hash,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};
use tonic::{transport::Channel, Code, Status};

#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoveryConfig {
    /// `Destination` service; without it, balancers have no endpoints and only `Forward`
    /// backends and the static destination table work.
    pub destination_addr: Option<ControlAddr>,
    /// `OutboundPolicies` and `InboundServerPolicies`; without it, outbound traffic goes where the
    /// destination table or DNS say and every inbound port has the default policy.
    pub policy_addr: Option<ControlAddr>,
    /// Sent as `PortSpec.workload` and `TrafficSpec.source_workload`: `{"ns":..,"pod":..}` or
    /// `{"ns":..,"external_workload":..}`.
    pub workload: String,
    /// Sent as `GetDestination.context_token`.
    pub context: String,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub outbound_idle_timeout: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub inbound_idle_timeout: Duration,
    /// How long a request waits for the first answer about a destination it has never seen.
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub initial_timeout: Duration,
    /// The inbound policy until the control plane answers, and for ports it does not know.
    pub default_inbound_policy: DefaultPolicy,
    #[serde(serialize_with = "ser_networks")]
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// Inbound ports watched from start-up and never expired.
    pub inbound_ports: BTreeSet<u16>,
    /// Whether loopback clients pass every inbound policy (see [`ServerPolicy::with_localhost`]).
    pub trust_loopback: bool,
    /// Inbound ports that are opaque until the control plane says otherwise
    /// (`KNIT_PROXY_OPAQUE_PORTS`).
    pub opaque_ports: BTreeSet<u16>,
}

impl DiscoveryConfig {
    fn loopback(&self, policy: ServerPolicy) -> ServerPolicy {
        if self.trust_loopback {
            policy.with_localhost()
        } else {
            policy
        }
    }
}

fn ser_networks<S: serde::Serializer>(n: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(n.iter().map(|n| n.to_string()))
}

/// What the control plane said about one thing.
#[derive(Debug)]
pub enum Answer<T> {
    /// No answer yet.
    Pending,
    Found(Arc<T>),
    /// The control plane does not know it (`NotFound`/`Unimplemented`): fall back.
    NotFound,
    /// The control plane answered with something unusable; requests fail with this reason.
    Invalid(Arc<str>),
}

// Not derived: cloning an answer clones an `Arc`, whatever `T` is.
impl<T> Clone for Answer<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Pending => Self::Pending,
            Self::Found(t) => Self::Found(t.clone()),
            Self::NotFound => Self::NotFound,
            Self::Invalid(r) => Self::Invalid(r.clone()),
        }
    }
}

/// The key of an outbound policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Authority(Authority),
    Addr(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Authority(a) => a.fmt(f),
            Self::Addr(a) => a.fmt(f),
        }
    }
}

/// The endpoints of one balancer, fed by `Destination.Get`.
pub struct Endpoints {
    pub pool: Arc<Pool<Endpoint>>,
    /// True once the first update arrived (an empty set included).
    ready: watch::Receiver<bool>,
}

pub struct Discovery {
    cfg: DiscoveryConfig,
    dst: Option<DestinationClient<Channel>>,
    outbound_client: Option<OutboundPoliciesClient<Channel>>,
    inbound_client: Option<InboundServerPoliciesClient<Channel>>,
    /// Each target's policy, with the retry budget its routes share.
    outbound: Cache<Target, (watch::Receiver<Answer<OutboundPolicy>>, Arc<Budget>)>,
    endpoints: Cache<String, Arc<Endpoints>>,
    inbound: Cache<u16, watch::Receiver<Answer<ServerPolicy>>>,
    /// The default policy, for the opaque ports.
    default_opaque: Arc<ServerPolicy>,
    /// The endpoint the control plane knows at an address (a profile's `endpoint`).
    profiles: Cache<SocketAddr, watch::Receiver<Answer<Endpoint>>>,
    default_inbound: Arc<ServerPolicy>,
}

impl Discovery {
    /// Builds the clients (no connection is made until something is looked up) and starts the
    /// eager inbound watches and the idle sweeper. Must be called inside a tokio runtime.
    /// `tls`: how to reach a control plane that serves TLS (its addresses name its identity).
    pub fn spawn(cfg: DiscoveryConfig, tls: Option<&Arc<crate::control::ControlTls>>) -> Result<Arc<Self>, crate::control::ChannelError> {
        let dst = cfg.destination_addr.as_ref().map(|a| crate::control::channel(a, tls)).transpose()?.map(DestinationClient::new);
        let policy = cfg.policy_addr.as_ref().map(|a| crate::control::channel(a, tls)).transpose()?;
        let default_policy = cfg.loopback(ServerPolicy::default_for(cfg.default_inbound_policy, &cfg.cluster_networks));
        let default_opaque = Arc::new(default_policy.clone().opaque());
        let default_inbound = Arc::new(default_policy);
        let this = Arc::new(Self {
            outbound_client: policy.clone().map(OutboundPoliciesClient::new),
            inbound_client: policy.map(InboundServerPoliciesClient::new),
            dst,
            outbound: Cache::new(cfg.outbound_idle_timeout),
            endpoints: Cache::new(cfg.outbound_idle_timeout),
            inbound: Cache::new(cfg.inbound_idle_timeout),
            profiles: Cache::new(cfg.outbound_idle_timeout),
            default_inbound,
            default_opaque,
            cfg,
        });
        for port in this.cfg.inbound_ports.clone() {
            this.inbound_watch(port, true);
        }
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let now = Instant::now();
                this.outbound.sweep(now);
                this.endpoints.sweep(now);
                this.inbound.sweep(now);
                this.profiles.sweep(now);
            }
        });
        Ok(this)
    }

    pub fn config(&self) -> &DiscoveryConfig {
        &self.cfg
    }

    pub fn has_policy(&self) -> bool {
        self.outbound_client.is_some()
    }

    /// The outbound policy of `target`, followed: the receiver holds the control plane's latest
    /// answer, after waiting up to the initial timeout for the first one (it is still `Pending`
    /// when none came in time). With it, the retry budget of that destination: retries may add
    /// at most a fifth to its load (plus 10 per second), however many routes retry. Callers check
    /// [`Self::has_policy`] first; without a policy service the answer is always `NotFound`.
    pub async fn outbound(&self, target: &Target) -> (watch::Receiver<Answer<OutboundPolicy>>, Arc<Budget>) {
        let Some(client) = &self.outbound_client else {
            let (_, rx) = watch::channel(Answer::NotFound);
            return (rx, Arc::new(Budget::default_per_destination()));
        };
        let (mut rx, budget) = self.outbound.get_or_insert(target.clone(), false, || {
            let (tx, rx) = watch::channel(Answer::Pending);
            let spec = TrafficSpec {
                source_workload: self.cfg.workload.clone(),
                target: Some(match target {
                    Target::Authority(a) => traffic_spec::Target::Authority(a.to_string()),
                    Target::Addr(a) => traffic_spec::Target::Addr((*a).into()),
                }),
            };
            let client = client.clone();
            let what = format!("outbound policy for {target}");
            let task = tokio::spawn(follow(
                what,
                move || {
                    let (mut client, spec) = (client.clone(), spec.clone());
                    async move { client.watch(spec).await.map(tonic::Response::into_inner) }
                },
                move |event| {
                    let answer = match event {
                        Event::Message(m) => match OutboundPolicy::try_from(m) {
                            Ok(p) => Answer::Found(Arc::new(p)),
                            Err(e) => {
                                tracing::warn!(error = %e, "the control plane sent an invalid outbound policy");
                                Answer::Invalid(format!("invalid outbound policy from the control plane: {e}").into())
                            }
                        },
                        Event::NotFound => Answer::NotFound,
                        Event::Rejected(s) => Answer::Invalid(format!("the control plane refused the lookup: {}", s.message()).into()),
                    };
                    tx.send_replace(answer);
                },
            ));
            ((rx, Arc::new(Budget::default_per_destination())), task)
        });
        if matches!(*rx.borrow(), Answer::Pending) {
            let _ = tokio::time::timeout(self.cfg.initial_timeout, rx.wait_for(|a| !matches!(a, Answer::Pending))).await;
        }
        (rx, budget)
    }

    async fn first_answer<T>(&self, rx: &mut watch::Receiver<Answer<T>>, what: &(dyn std::fmt::Display + Sync)) -> Result<Answer<T>, ProxyError> {
        if !matches!(*rx.borrow(), Answer::Pending) {
            return Ok(rx.borrow().clone());
        }
        match tokio::time::timeout(self.cfg.initial_timeout, rx.wait_for(|a| !matches!(a, Answer::Pending))).await {
            Ok(Ok(a)) => Ok(a.clone()),
            _ => Err(ProxyError::DiscoveryTimeout { what: what.to_string(), timeout: self.cfg.initial_timeout }),
        }
    }

    /// The endpoints behind a balancer's path. The pool is created with the first caller's
    /// load and failure-accrual settings; the control plane sends the same ones for a path.
    pub async fn endpoints(&self, path: &str, load: &Load, accrual: Option<&FailureAccrual>) -> Result<Arc<Endpoints>, ProxyError> {
        let Some(client) = &self.dst else {
            return Err(ProxyError::NoDiscovery { path: path.to_string() });
        };
        let entry = self.endpoints.get_or_insert(path.to_string(), false, || {
            let pool = Arc::new(Pool::new(load, accrual));
            let (tx, ready) = watch::channel(false);
            let req = GetDestination { scheme: String::new(), path: path.to_string(), context_token: self.cfg.context.clone() };
            let client = client.clone();
            let task_pool = pool.clone();
            let what = format!("endpoints of {path}");
            let task = tokio::spawn(follow(
                what,
                move || {
                    let (mut client, req) = (client.clone(), req.clone());
                    async move { client.get(req).await.map(tonic::Response::into_inner) }
                },
                move |event| {
                    match event {
                        Event::Message(m) => apply_update(&task_pool, m),
                        // The service is gone: no endpoints until it comes back.
                        Event::NotFound | Event::Rejected(_) => task_pool.reset(Vec::new()),
                    }
                    tx.send_replace(true);
                },
            ));
            (Arc::new(Endpoints { pool, ready }), task)
        });
        let mut ready = entry.ready.clone();
        if !*ready.borrow() {
            let waited = tokio::time::timeout(self.cfg.initial_timeout, ready.wait_for(|r| *r)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(ProxyError::DiscoveryTimeout { what: format!("endpoints of {path}"), timeout: self.cfg.initial_timeout });
            }
        }
        Ok(entry)
    }

    /// The endpoint the control plane knows at `addr`, with its identity and inbound port when it
    /// is meshed; `None` when it knows none (or there is no destination service), and the address
    /// is then dialled as it is. Waits up to the initial timeout for a first answer.
    pub async fn endpoint_at(&self, addr: SocketAddr) -> Option<Endpoint> {
        let client = self.dst.as_ref()?;
        let mut rx = self.profiles.get_or_insert(addr, false, || {
            let (tx, rx) = watch::channel(Answer::Pending);
            let req = GetDestination { scheme: String::new(), path: addr.to_string(), context_token: self.cfg.context.clone() };
            let client = client.clone();
            let task = tokio::spawn(follow(
                format!("profile of {addr}"),
                move || {
                    let (mut client, req) = (client.clone(), req.clone());
                    async move { client.get_profile(req).await.map(tonic::Response::into_inner) }
                },
                move |event| {
                    let answer = match event {
                        Event::Message(linkerd2_proxy_api::destination::DestinationProfile { endpoint: Some(ep), .. }) => {
                            match outbound::endpoint(&ep, &HashMap::new()) {
                                Ok(e) => Answer::Found(Arc::new(e)),
                                Err(e) => Answer::Invalid(format!("invalid endpoint in the profile of {addr}: {e}").into()),
                            }
                        }
                        // A profile without an endpoint (a Service's), or none: nothing known here.
                        Event::Message(_) | Event::NotFound | Event::Rejected(_) => Answer::NotFound,
                    };
                    tx.send_replace(answer);
                },
            ));
            (rx, task)
        });
        match self.first_answer(&mut rx, &addr).await {
            Ok(Answer::Found(e)) => Some((*e).clone()),
            Ok(Answer::Invalid(reason)) => {
                tracing::warn!(%addr, %reason, "ignoring the control plane's endpoint");
                None
            }
            _ => None,
        }
    }

    /// The policy of a local inbound port: the control plane's answer once there is one, the
    /// default policy until then (inbound never waits for the control plane).
    pub fn inbound(&self, port: u16) -> Arc<ServerPolicy> {
        let default = || if self.cfg.opaque_ports.contains(&port) { self.default_opaque.clone() } else { self.default_inbound.clone() };
        if self.inbound_client.is_none() {
            return default();
        }
        let pinned = self.cfg.inbound_ports.contains(&port);
        // A port scan must not open a policy stream per port (they share one connection with
        // outbound discovery): past a few undeclared ports, the others are refused until some
        // are forgotten. Refused, not given the default policy: a Server on an undeclared port
        // may be stricter than the default, and a scan must not walk around it.
        if !pinned && !self.inbound.contains(&port) && self.inbound.unpinned() >= MAX_UNDECLARED_INBOUND_PORTS {
            tracing::debug!(port, "too many undeclared inbound ports in use; refusing this one until some are forgotten");
            return Arc::new(ServerPolicy::invalid(&format!(
                "port {port} is not in KNIT_PROXY_INBOUND_PORTS and {MAX_UNDECLARED_INBOUND_PORTS} undeclared ports are already in use"
            )));
        }
        let rx = self.inbound_watch(port, pinned);
        let answer = rx.borrow().clone();
        match answer {
            Answer::Found(p) => p,
            Answer::Invalid(reason) => Arc::new(ServerPolicy::invalid(&reason)),
            Answer::Pending | Answer::NotFound => default(),
        }
    }

    /// Waits, at most the initial timeout, for the control plane's first answer on every port of
    /// `KNIT_PROXY_INBOUND_PORTS`, so that the proxy never serves them under the default policy
    /// by mistake (a Server may be stricter). Past the timeout, the default applies until the
    /// control plane answers.
    pub async fn inbound_ready(&self) {
        let deadline = Instant::now() + self.cfg.initial_timeout;
        for port in self.cfg.inbound_ports.clone() {
            let mut rx = self.inbound_watch(port, true);
            if tokio::time::timeout_at(deadline, rx.wait_for(|a| !matches!(a, Answer::Pending))).await.is_err() {
                tracing::warn!(port, timeout = ?self.cfg.initial_timeout, "no inbound policy from the control plane yet; serving under the default policy until it answers");
                return;
            }
        }
    }

    fn inbound_watch(&self, port: u16, pinned: bool) -> watch::Receiver<Answer<ServerPolicy>> {
        let Some(client) = &self.inbound_client else {
            let (_, rx) = watch::channel(Answer::NotFound);
            return rx;
        };
        self.inbound.get_or_insert(port, pinned, || {
            let (tx, rx) = watch::channel(Answer::Pending);
            let spec = PortSpec { workload: self.cfg.workload.clone(), port: u32::from(port) };
            let client = client.clone();
            let cfg = self.cfg.clone();
            let task = tokio::spawn(follow(
                format!("inbound policy for port {port}"),
                move || {
                    let (mut client, spec) = (client.clone(), spec.clone());
                    async move { client.watch_port(spec).await.map(tonic::Response::into_inner) }
                },
                move |event| {
                    let answer = match event {
                        Event::Message(m) => match ServerPolicy::try_from(m) {
                            Ok(p) => Answer::Found(Arc::new(cfg.loopback(p))),
                            Err(e) => {
                                tracing::warn!(error = %e, port, "the control plane sent an invalid inbound policy");
                                Answer::Invalid(format!("invalid inbound policy from the control plane: {e}").into())
                            }
                        },
                        Event::NotFound | Event::Rejected(_) => Answer::NotFound,
                    };
                    tx.send_replace(answer);
                },
            ));
            (rx, task)
        })
    }
}

/// Applies one `Destination.Get` update to a pool.
fn apply_update(pool: &Pool<Endpoint>, m: linkerd2_proxy_api::destination::Update) {
    match m.update {
        Some(update::Update::Add(set)) => {
            let mut eps = Vec::with_capacity(set.addrs.len());
            for a in &set.addrs {
                match outbound::endpoint(a, &set.metric_labels) {
                    Ok(ep) => eps.push(ep),
                    Err(e) => tracing::warn!(error = %e, "skipping an invalid endpoint from the control plane"),
                }
            }
            // An add replaces an endpoint at the same address (its identity, hint or labels
            // changed); one that is unchanged keeps its load state.
            let replaced: Vec<Endpoint> = pool.endpoints().into_iter().filter(|have| eps.iter().any(|e| e.addr == have.addr && e != have)).collect();
            pool.update_remove(&replaced);
            pool.update_add(eps);
        }
        Some(update::Update::Remove(set)) => {
            let gone: Vec<Endpoint> = set
                .addrs
                .into_iter()
                .filter_map(|a| {
                    let ip = std::net::IpAddr::try_from(a.ip?).ok()?;
                    Some(SocketAddr::new(ip, u16::try_from(a.port).ok()?))
                })
                .flat_map(|addr| pool.endpoints().into_iter().filter(move |e| e.addr == addr))
                .collect();
            pool.update_remove(&gone);
        }
        Some(update::Update::NoEndpoints(_)) => pool.reset(Vec::new()),
        None => {}
    }
}

enum Event<M> {
    Message(M),
    NotFound,
    /// `InvalidArgument` / `FailedPrecondition`: the control plane will never answer this lookup.
    Rejected(Status),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A target the control plane does not know is asked about again this often, so a manifest
/// that adds it takes effect without waiting for the cache to expire.
const NOT_FOUND_RETRY: Duration = Duration::from_secs(5);

/// Opens a stream, hands every message to `on_event`, and reopens it after errors with jittered
/// exponential backoff. Runs until its task is aborted (the cache entry expired).
async fn follow<M, F, Fut>(what: String, mut open: F, mut on_event: impl FnMut(Event<M>))
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Streaming<M>, Status>>,
{
    let mut failures = 0u32;
    loop {
        let wait = match open().await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        failures = 0;
                        on_event(Event::Message(m));
                    }
                    Ok(None) => {
                        tracing::debug!(%what, "the control plane ended the stream; reopening");
                        break BACKOFF_MIN;
                    }
                    Err(status) => {
                        failures += 1;
                        tracing::info!(%what, error = %status.message(), code = ?status.code(), "discovery stream failed; keeping the last answer");
                        break backoff(failures);
                    }
                }
            },
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {
                on_event(Event::NotFound);
                NOT_FOUND_RETRY
            }
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
                tracing::info!(%what, error = %s.message(), "the control plane rejected the lookup");
                on_event(Event::Rejected(s));
                NOT_FOUND_RETRY
            }
            Err(s) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(%what, error = %s.message(), code = ?s.code(), failures, "cannot reach the control plane; keeping the last answer");
                }
                backoff(failures)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// 100 ms doubling to 10 s, with up to half of it as jitter so proxies do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1 << failures.min(8)).min(BACKOFF_MAX);
    base / 2 + base.mul_f64(fastrand::f64() / 2.0)
}

/// A map of watched answers, each kept alive by its stream task and dropped (aborting the task)
/// once unused for the idle timeout.
/// Inbound ports outside `KNIT_PROXY_INBOUND_PORTS` whose policy is watched at once.
const MAX_UNDECLARED_INBOUND_PORTS: usize = 64;

struct Cache<K, V> {
    idle: Duration,
    epoch: Instant,
    map: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    value: V,
    /// Milliseconds since the cache's epoch at the last use.
    last_used: AtomicU64,
    pinned: bool,
    task: tokio::task::JoinHandle<()>,
}

impl<V> Drop for Entry<V> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    fn new(idle: Duration) -> Self {
        Self { idle, epoch: Instant::now(), map: Mutex::new(HashMap::new()) }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn get_or_insert(&self, key: K, pinned: bool, make: impl FnOnce() -> (V, tokio::task::JoinHandle<()>)) -> V {
        let now = self.now_ms(Instant::now());
        // A poisoned lock means a panic while inserting into a map; the map is still valid.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(&key) {
            e.last_used.store(now, Ordering::Relaxed);
            return e.value.clone();
        }
        let (value, task) = make();
        map.insert(key, Entry { value: value.clone(), last_used: AtomicU64::new(now), pinned, task });
        value
    }

    fn contains(&self, key: &K) -> bool {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).contains_key(key)
    }

    /// Entries that idleness may forget.
    fn unpinned(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|e| !e.pinned).count()
    }

    fn sweep(&self, now: Instant) {
        let now = self.now_ms(now);
        let idle = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.pinned || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_entries_expire_with_their_task_and_pinned_ones_stay() {
        let cache: Cache<u16, u32> = Cache::new(Duration::from_secs(5));
        let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
        cache.get_or_insert(1, false, || {
            (
                1,
                tokio::spawn(async move {
                    let _keep = alive_tx;
                    std::future::pending::<()>().await
                }),
            )
        });
        cache.get_or_insert(2, true, || (2, tokio::spawn(std::future::pending())));
        tokio::time::advance(Duration::from_secs(3)).await;
        cache.sweep(Instant::now());
        assert_eq!(cache.len(), 2);
        tokio::time::advance(Duration::from_secs(3)).await;
        cache.sweep(Instant::now());
        assert_eq!(cache.len(), 1, "the unpinned entry expired");
        // Aborting the task dropped its sender.
        assert!(alive_rx.await.is_err());
    }

    #[test]
    fn an_add_replaces_the_endpoint_at_the_same_address() {
        use linkerd2_proxy_api::{destination as dst, net};
        let load = crate::policy::outbound::Load::PeakEwma { default_rtt: Duration::from_millis(30), decay: Duration::from_secs(10) };
        let pool = Pool::new(&load, None);
        let add = |pod: &str| {
            let addr = dst::WeightedAddr {
                addr: Some(net::TcpAddress::from("10.0.0.1:80".parse::<SocketAddr>().unwrap())),
                metric_labels: [("pod".to_string(), pod.to_string())].into(),
                ..Default::default()
            };
            let set = dst::WeightedAddrSet { addrs: vec![addr], metric_labels: [("namespace".to_string(), "demo".to_string())].into() };
            dst::Update { update: Some(update::Update::Add(set)) }
        };
        apply_update(&pool, add("a"));
        apply_update(&pool, add("a"));
        apply_update(&pool, add("b"));
        let eps = pool.endpoints();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].labels.iter().collect::<Vec<_>>(), [("namespace", "demo"), ("pod", "b")]);
    }

    #[tokio::test]
    async fn a_port_scan_opens_a_bounded_number_of_policy_streams() {
        let cfg = DiscoveryConfig {
            destination_addr: None,
            // Nobody answers there: every watch stays pending, as under a scan.
            policy_addr: Some(crate::control::ControlAddr { addr: "127.0.0.1:9".into(), tls_name: None }),
            workload: r#"{"ns":"demo","pod":"web"}"#.into(),
            context: String::new(),
            outbound_idle_timeout: Duration::from_secs(5),
            inbound_idle_timeout: Duration::from_secs(90),
            initial_timeout: Duration::from_secs(3),
            default_inbound_policy: crate::policy::inbound::DefaultPolicy::AllUnauthenticated,
            cluster_networks: vec![],
            inbound_ports: [8080].into(),
            trust_loopback: false,
            opaque_ports: BTreeSet::new(),
        };
        let d = Discovery::spawn(cfg, None).unwrap();
        for port in 10_000..10_000 + MAX_UNDECLARED_INBOUND_PORTS as u16 {
            assert!(d.inbound(port).invalid.is_none(), "{port}: the default policy until the control plane answers");
        }
        assert_eq!(d.inbound.len(), MAX_UNDECLARED_INBOUND_PORTS + 1, "one watch per port, and the declared one");
        let refused = d.inbound(20_000);
        assert!(refused.invalid.as_deref().is_some_and(|r| r.contains("undeclared")), "past the bound a new port is refused, not defaulted");
        assert_eq!(d.inbound.len(), MAX_UNDECLARED_INBOUND_PORTS + 1, "and opens no stream");
        assert!(d.inbound(10_000).invalid.is_none() && d.inbound(8080).invalid.is_none(), "ports in use and declared ports are unaffected");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        for f in 1..40 {
            let d = backoff(f);
            assert!(d >= BACKOFF_MIN / 2 && d <= BACKOFF_MAX, "{d:?}");
        }
        assert!(backoff(20) >= BACKOFF_MAX / 2);
    }
}
