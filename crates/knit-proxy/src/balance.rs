//! Load balancing: power of two choices over PeakEWMA, as Linkerd (LINKERD-WIRE.md §8.1), with
//! penalties for endpoints that shed load (§8.2) and failure accrual (`accrual.rs`).
//!
//! Each endpoint keeps a peak-sensitive moving average of its latency, starting at `default_rtt`:
//! a slower sample replaces the estimate at once, a faster one pulls it down with the `decay`
//! time constant, and the estimate itself decays while the endpoint is idle. So an endpoint that
//! has not answered yet (a new one, or one the others outran) becomes the cheaper choice within a
//! few `decay`s rather than never, as in tower's PeakEwma. Its load is the estimate times its requests
//! in flight plus one. A pick draws two ready endpoints at random and takes the less loaded.
//!
//! Penalties (`PenaltyPeakEwma`): Linkerd records a penalised latency for a failed response.
//! Knit does more with the server's own hint: an endpoint that answers 429 or 503 (or gRPC
//! RESOURCE_EXHAUSTED / UNAVAILABLE) is avoided for as long as its `Retry-After` or
//! `grpc-retry-pushback-ms` asks (capped at `max_retry_after`; the base `penalty` without a hint),
//! so traffic moves to endpoints with headroom instead of hammering one that asked for a pause.
//! Other failures record the penalty as a latency sample, as Linkerd does.

use crate::{
    accrual::{self, Admit, Breaker},
    policy::outbound::{FailureAccrual, Load},
};
use http::StatusCode;
use std::{
    hash::Hash,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

#[cfg(test)]
mod tests;

/// What a response says about the endpoint that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure {
        /// 429, 503, RESOURCE_EXHAUSTED or UNAVAILABLE: the endpoint is shedding load.
        rate_limited: bool,
        retry_after: Option<Duration>,
    },
}

/// Classifies a response as the load biaser does: HTTP 429 and 5xx fail; gRPC statuses
/// RESOURCE_EXHAUSTED (8) and UNAVAILABLE (14) shed load, and UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL and DATA_LOSS (2, 4, 13, 15) fail.
pub fn classify(status: StatusCode, grpc_status: Option<i32>) -> Outcome {
    let shedding = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE || matches!(grpc_status, Some(8 | 14));
    if shedding {
        return Outcome::Failure { rate_limited: true, retry_after: None };
    }
    if status.is_server_error() || matches!(grpc_status, Some(2 | 4 | 13 | 15)) {
        return Outcome::Failure { rate_limited: false, retry_after: None };
    }
    Outcome::Success
}

#[derive(Clone, Debug)]
struct Config {
    default_rtt: Duration,
    decay: Duration,
    /// `(penalty, max_retry_after)` when the Service asks for penalties.
    penalty: Option<(Duration, Duration)>,
}

impl From<&Load> for Config {
    fn from(load: &Load) -> Self {
        // Linkerd floors the default RTT at 1 ms.
        let floor = |d: Duration| d.max(Duration::from_millis(1));
        match load {
            Load::PeakEwma { default_rtt, decay } => Self { default_rtt: floor(*default_rtt), decay: *decay, penalty: None },
            Load::PenaltyPeakEwma { default_rtt, decay, penalty, max_retry_after, .. } => {
                Self { default_rtt: floor(*default_rtt), decay: *decay, penalty: Some((*penalty, *max_retry_after)) }
            }
        }
    }
}

#[derive(Debug)]
struct Estimate {
    /// Nanoseconds, at `stamp`; `default_rtt` before the first sample.
    rtt_ns: f64,
    stamp: Instant,
    /// Avoid the endpoint until then (it asked for a pause).
    penalized_until: Option<Instant>,
}

/// One endpoint's load and health.
#[derive(Debug)]
struct State {
    estimate: Mutex<Estimate>,
    pending: AtomicUsize,
    breaker: Option<Mutex<Breaker>>,
}

/// A load above any latency estimate: penalised endpoints lose every comparison with one that
/// is not, and among themselves the one whose pause ends first wins.
const PENALIZED: f64 = 1e15;

impl State {
    fn new(cfg: &Config, accrual: Option<&FailureAccrual>, now: Instant) -> Self {
        Self {
            estimate: Mutex::new(Estimate { rtt_ns: cfg.default_rtt.as_nanos() as f64, stamp: now, penalized_until: None }),
            pending: AtomicUsize::new(0),
            breaker: accrual.map(|a| Mutex::new(Breaker::new(a.clone(), now))),
        }
    }

    fn load(&self, cfg: &Config, now: Instant) -> f64 {
        let e = self.estimate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = e.penalized_until.filter(|u| *u > now) {
            return PENALIZED + until.duration_since(now).as_nanos() as f64;
        }
        let rtt = e.rtt_ns * decay(now.saturating_duration_since(e.stamp), cfg.decay);
        rtt * (self.pending.load(Ordering::Relaxed) + 1) as f64
    }

    fn observe(&self, cfg: &Config, outcome: Outcome, rtt: Duration, now: Instant) {
        let mut e = self.estimate.lock().unwrap_or_else(|p| p.into_inner());
        let sample = match (outcome, cfg.penalty) {
            (Outcome::Failure { rate_limited: true, retry_after }, Some((penalty, max))) => {
                e.penalized_until = Some(now + retry_after.unwrap_or(penalty).min(max));
                return;
            }
            (Outcome::Failure { .. }, Some((penalty, _))) => penalty,
            _ => rtt,
        };
        let sample = sample.as_nanos() as f64;
        let w = decay(now.saturating_duration_since(e.stamp), cfg.decay);
        e.rtt_ns = if sample <= e.rtt_ns { e.rtt_ns * w + sample * (1.0 - w) } else { sample };
        e.stamp = now;
    }

    fn ready(&self, now: Instant) -> bool {
        self.breaker.as_ref().is_none_or(|b| b.lock().unwrap_or_else(|p| p.into_inner()).is_ready(now))
    }
}

/// exp(-elapsed/decay): how much of an estimate survives `elapsed`.
fn decay(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}

/// No endpoint could take the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoEndpoints {
    pub total: usize,
    pub ejected: usize,
}

/// The endpoints of one balancer and their load. Updates keep the state of endpoints that stay.
pub struct Pool<E> {
    config: Config,
    accrual: Option<FailureAccrual>,
    endpoints: RwLock<Vec<(E, Arc<State>)>>,
    /// Woken when endpoints are added, for requests waiting in the backend's queue.
    added: tokio::sync::Notify,
    /// Requests and connections waiting for a ready endpoint (the backend's queue).
    pub waiting: AtomicUsize,
    /// Since when no endpoint has been ready (failfast starts after the backend's timeout).
    unready_since: Mutex<Option<Instant>>,
}

impl<E: Clone + Eq + Hash> Pool<E> {
    pub fn new(load: &Load, accrual: Option<&FailureAccrual>) -> Self {
        Self {
            config: load.into(),
            accrual: accrual.cloned(),
            endpoints: RwLock::new(Vec::new()),
            added: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            unready_since: Mutex::new(None),
        }
    }

    /// Adds endpoints (an endpoint already present keeps its state).
    pub fn update_add(&self, add: Vec<E>) {
        let now = Instant::now();
        let mut eps = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        for e in add {
            if !eps.iter().any(|(have, _)| *have == e) {
                eps.push((e, Arc::new(State::new(&self.config, self.accrual.as_ref(), now))));
            }
        }
        drop(eps);
        self.added.notify_waiters();
    }

    /// Resolves once endpoints may have been added since the call.
    pub fn added(&self) -> tokio::sync::futures::Notified<'_> {
        self.added.notified()
    }

    /// Records whether a pick found a ready endpoint at `now`; returns how long the pool has had
    /// none (zero when it has one).
    pub fn note_ready(&self, ready: bool, now: Instant) -> Duration {
        let mut since = self.unready_since.lock().unwrap_or_else(|p| p.into_inner());
        if ready {
            *since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*since.get_or_insert(now))
    }

    pub fn update_remove(&self, remove: &[E]) {
        self.endpoints.write().unwrap_or_else(|p| p.into_inner()).retain(|(e, _)| !remove.contains(e));
    }

    /// Replaces the whole set.
    pub fn reset(&self, all: Vec<E>) {
        let keep: Vec<E> = all.clone();
        self.endpoints.write().unwrap_or_else(|p| p.into_inner()).retain(|(e, _)| keep.contains(e));
        self.update_add(all);
    }

    pub fn endpoints(&self) -> Vec<E> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(e, _)| e.clone()).collect()
    }

    /// Power of two choices among ready endpoints. An endpoint whose breaker is in probation is
    /// ready for one probe.
    pub fn pick(&self, now: Instant, rng: &mut fastrand::Rng) -> Result<Picked<E>, NoEndpoints> {
        let eps = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let ready: Vec<usize> = (0..eps.len()).filter(|i| eps[*i].1.ready(now)).collect();
        let chosen = match ready.len() {
            0 => return Err(NoEndpoints { total: eps.len(), ejected: eps.len() }),
            1 => ready[0],
            n => {
                let a = ready[rng.usize(0..n)];
                let b = ready[(rng.usize(1..n) + ready.iter().position(|i| *i == a).unwrap_or(0)) % n];
                if eps[b].1.load(&self.config, now) < eps[a].1.load(&self.config, now) {
                    b
                } else {
                    a
                }
            }
        };
        let (endpoint, state) = &eps[chosen];
        let probe = match &state.breaker {
            Some(b) => match b.lock().unwrap_or_else(|p| p.into_inner()).admit(now) {
                Admit::Yes => false,
                Admit::Probe => true,
                // Raced with another probe: no endpoint was ready after all.
                Admit::No => return Err(NoEndpoints { total: eps.len(), ejected: eps.len() - ready.len() + 1 }),
            },
            None => false,
        };
        state.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Picked { endpoint: endpoint.clone(), state: state.clone(), config: self.config.clone(), probe, finished: false })
    }

    /// Each endpoint with whether it is ready and its load, for debugging and metrics.
    pub fn snapshot(&self, now: Instant) -> Vec<(E, bool, f64)> {
        let eps = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        eps.iter().map(|(e, s)| (e.clone(), s.ready(now), s.load(&self.config, now))).collect()
    }
}

/// A request in flight to a picked endpoint: it counts as pending until finished or dropped.
pub struct Picked<E> {
    endpoint: E,
    state: Arc<State>,
    config: Config,
    probe: bool,
    finished: bool,
}

impl<E> Picked<E> {
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// Records the response: its latency into the estimate, its outcome into the breaker.
    pub fn finish(mut self, outcome: Outcome, rtt: Duration, now: Instant) {
        self.record(outcome, rtt, now);
    }

    /// Records an outcome but stays pending until dropped: an opaque connection counts against
    /// its endpoint's load for as long as it is open, and its connect time is the latency.
    pub fn record(&mut self, outcome: Outcome, rtt: Duration, now: Instant) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.state.observe(&self.config, outcome, rtt, now);
        if let Some(b) = &self.state.breaker {
            let response = match outcome {
                Outcome::Success => accrual::Response::Success,
                Outcome::Failure { rate_limited, retry_after } => accrual::Response::Failure { rate_limited, retry_after },
            };
            b.lock().unwrap_or_else(|p| p.into_inner()).record(response, now);
        }
    }
}

impl<E> Drop for Picked<E> {
    fn drop(&mut self) {
        self.state.pending.fetch_sub(1, Ordering::Relaxed);
        if !self.finished && self.probe {
            // The probe never got an answer (cancelled): let the next request probe.
            if let Some(b) = &self.state.breaker {
                b.lock().unwrap_or_else(|p| p.into_inner()).cancel_probe();
            }
        }
    }
}
