//! Failure accrual: a circuit breaker per endpoint (LINKERD-WIRE.md §8.2).
//!
//! Closed → Open when the endpoint fails N times in a row (`consecutive`), or (`unified`) N
//! consecutive 5xx or a success rate below the threshold over a sliding window → after a backoff,
//! Probation: one probe request at a time → a successful probe closes the breaker (the backoff
//! starts over), a failed one opens it again for the next backoff. An open endpoint is not ready,
//! so the balancer skips it.
//!
//! Linkerd's proxy discards `respect_retry_after_hint`; Knit honours it: an endpoint that answered
//! with `Retry-After` stays ejected at least that long (capped at the backoff's maximum).

use crate::{policy::outbound::FailureAccrual, retry::Backoff};
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// A response as the breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Success,
    /// A failure; `rate_limited` for 429 / RESOURCE_EXHAUSTED (they count against the success
    /// rate but not the consecutive-failure count of the unified mode).
    Failure {
        rate_limited: bool,
        retry_after: Option<Duration>,
    },
}

/// Whether the breaker lets a request through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The one probe request of probation.
    Probe,
    No,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    Probation { probing: bool },
}

/// Buckets of the unified mode's sliding window.
const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct Breaker {
    config: FailureAccrual,
    state: State,
    consecutive: u32,
    /// Ejections since the breaker last closed: the backoff's attempt number.
    ejections: u32,
    /// (bucket number, successes, failures), indexed by bucket number modulo BUCKETS.
    window: [(u64, u32, u32); BUCKETS],
    epoch: Instant,
    rng: fastrand::Rng,
}

impl Breaker {
    pub fn new(config: FailureAccrual, now: Instant) -> Self {
        Self { config, state: State::Closed, consecutive: 0, ejections: 0, window: [(0, 0, 0); BUCKETS], epoch: now, rng: fastrand::Rng::new() }
    }

    fn backoff(&self) -> &Backoff {
        match &self.config {
            FailureAccrual::Consecutive { backoff, .. } | FailureAccrual::Unified { backoff, .. } => backoff,
        }
    }

    /// Whether the endpoint may take a request now; a `Probe` must be followed by `record` (or
    /// `cancel_probe` when the request never reached the endpoint).
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Yes,
            State::Open { until } if now < until => Admit::No,
            State::Open { .. } | State::Probation { probing: false } => {
                self.state = State::Probation { probing: true };
                Admit::Probe
            }
            State::Probation { probing: true } => Admit::No,
        }
    }

    /// Whether the endpoint is ejected (open, or probing) at `now`, without changing state.
    pub fn is_ready(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::Probation { probing } => !probing,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn cancel_probe(&mut self) {
        if self.state == (State::Probation { probing: true }) {
            self.state = State::Probation { probing: false };
        }
    }

    pub fn record(&mut self, response: Response, now: Instant) {
        if let State::Probation { .. } = self.state {
            match response {
                Response::Success => self.close(),
                Response::Failure { retry_after, .. } => self.open(retry_after, now),
            }
            return;
        }
        self.count(response, now);
        let trips = match (&self.config, response) {
            (_, Response::Success) => false,
            (FailureAccrual::Consecutive { max_failures, .. }, Response::Failure { .. }) => *max_failures > 0 && self.consecutive >= *max_failures,
            (FailureAccrual::Unified { max_consecutive_failures, success_rate_threshold, min_requests, .. }, Response::Failure { .. }) => {
                let consecutive = *max_consecutive_failures > 0 && self.consecutive >= *max_consecutive_failures;
                let (ok, failed) = self.window_counts(now);
                let total = ok + failed;
                let rate_low = *success_rate_threshold > 0.0 && total >= u64::from(*min_requests).max(1) && (ok as f64) < success_rate_threshold * total as f64;
                consecutive || rate_low
            }
        };
        if trips && self.state == State::Closed {
            let retry_after = match response {
                Response::Failure { retry_after, .. } => retry_after,
                Response::Success => None,
            };
            self.open(retry_after, now);
        }
    }

    fn count(&mut self, response: Response, now: Instant) {
        let counts_consecutive = match (&self.config, response) {
            (_, Response::Success) => false,
            // Unified mode: rate limiting is not a fault of the endpoint's health.
            (FailureAccrual::Unified { .. }, Response::Failure { rate_limited, .. }) => !rate_limited,
            (FailureAccrual::Consecutive { .. }, Response::Failure { .. }) => true,
        };
        self.consecutive = if counts_consecutive {
            self.consecutive + 1
        } else if response == Response::Success {
            0
        } else {
            self.consecutive
        };
        if let FailureAccrual::Unified { window, .. } = &self.config {
            let n = self.bucket(*window, now);
            let slot = &mut self.window[(n % BUCKETS as u64) as usize];
            if slot.0 != n {
                *slot = (n, 0, 0);
            }
            match response {
                Response::Success => slot.1 += 1,
                Response::Failure { .. } => slot.2 += 1,
            }
        }
    }

    fn bucket(&self, window: Duration, now: Instant) -> u64 {
        let width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        (now.saturating_duration_since(self.epoch).as_nanos() / width.as_nanos()) as u64
    }

    fn window_counts(&self, now: Instant) -> (u64, u64) {
        let FailureAccrual::Unified { window, .. } = &self.config else { return (0, 0) };
        let n = self.bucket(*window, now);
        self.window
            .iter()
            .filter(|(b, _, _)| *b + (BUCKETS as u64) > n && *b <= n)
            .fold((0, 0), |(ok, failed), (_, s, f)| (ok + u64::from(*s), failed + u64::from(*f)))
    }

    fn open(&mut self, retry_after: Option<Duration>, now: Instant) {
        let backoff = self.backoff().clone();
        let hint = retry_after.filter(|_| backoff.respect_retry_after);
        let wait = backoff.delay(self.ejections, hint, &mut self.rng);
        self.ejections = self.ejections.saturating_add(1);
        self.state = State::Open { until: now + wait };
        self.consecutive = 0;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.ejections = 0;
        self.consecutive = 0;
        self.window = [(0, 0, 0); BUCKETS];
    }
}
