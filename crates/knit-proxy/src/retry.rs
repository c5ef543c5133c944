//! Retries as pure decisions, plus the one piece of I/O they need.
//!
//! - [`RetryPolicy`]: a route rule's retry settings (from `HttpRoute.Retry` / `GrpcRoute.Retry`,
//!   LINKERD-WIRE.md §4.2) and whether a response may be retried.
//! - [`Backoff`]: how long to wait before the next attempt (also what failure accrual ejects for).
//! - [`parse_retry_after`]: a server's `Retry-After` / `grpc-retry-pushback-ms` hint.
//! - [`Budget`]: retries may add only a fraction to a destination's load, so that a struggling
//!   backend is not buried under retries of the requests it already failed.
//! - [`buffer_body`]: holds a request body (up to a limit) so it can be sent again.

mod body;
mod budget;
mod retry_after;

pub use body::{buffer_body, Buffered, ReplayBody, Streamed};
pub use budget::Budget;
pub use retry_after::{parse_http_date, parse_retry_after};

use http::StatusCode;
use linkerd2_proxy_api::outbound as api;
use std::{ops::RangeInclusive, time::Duration};

#[cfg(test)]
mod tests;

/// A route rule's retry settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retries.
    pub max_retries: u32,
    /// A request whose body is larger is sent once, never retried.
    pub max_request_bytes: usize,
    pub conditions: Conditions,
    /// Per attempt; `None` leaves attempts bounded only by the route's timeouts.
    pub timeout: Option<Duration>,
    /// `None`: retry at once.
    pub backoff: Option<Backoff>,
}

/// Which responses are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conditions {
    /// HTTP status codes, as inclusive ranges.
    Http(Vec<RangeInclusive<u16>>),
    /// gRPC status codes (from `grpc-status`).
    Grpc { cancelled: bool, deadline_exceeded: bool, resource_exhausted: bool, internal: bool, unavailable: bool },
}

/// Exponential backoff: `min * 2^attempt`, capped at `max`, plus up to `jitter` times that at
/// random (still capped at `max`).
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    /// Non-negative and finite.
    pub jitter: f64,
    /// Wait at least as long as the server's `Retry-After` hint (capped at `max`).
    pub respect_retry_after: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidRetry {
    #[error("conditions: missing (required even when empty)")]
    MissingConditions,
    #[error("conditions.status_ranges[{index}]: expected 1 <= start <= end <= 599, found {start}..={end}")]
    StatusRange { index: usize, start: u32, end: u32 },
    #[error("{field}: {reason}")]
    Duration { field: &'static str, reason: String },
    #[error("backoff.{0}")]
    Backoff(#[from] InvalidBackoff),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidBackoff {
    #[error("{0}: missing")]
    Missing(&'static str),
    #[error("{field}: {reason}")]
    Duration { field: &'static str, reason: String },
    #[error("max_backoff: expected at least min_backoff ({min:?}) and more than zero, found {max:?}")]
    MaxBelowMin { min: Duration, max: Duration },
    #[error("jitter_ratio: expected a finite number >= 0, found {0}")]
    Jitter(f32),
}

// gRPC status codes that retries may name.
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
const GRPC_INTERNAL: i32 = 13;
const GRPC_UNAVAILABLE: i32 = 14;

impl RetryPolicy {
    /// Whether a response with this status (and `grpc-status`, when the response carries one in
    /// its headers) may be retried. A gRPC route retries only on the gRPC status: a gRPC error
    /// travels in an HTTP 200.
    pub fn retryable(&self, status: StatusCode, grpc_status: Option<i32>) -> bool {
        match &self.conditions {
            Conditions::Http(ranges) => ranges.iter().any(|r| r.contains(&status.as_u16())),
            Conditions::Grpc { cancelled, deadline_exceeded, resource_exhausted, internal, unavailable } => match grpc_status {
                Some(GRPC_CANCELLED) => *cancelled,
                Some(GRPC_DEADLINE_EXCEEDED) => *deadline_exceeded,
                Some(GRPC_RESOURCE_EXHAUSTED) => *resource_exhausted,
                Some(GRPC_INTERNAL) => *internal,
                Some(GRPC_UNAVAILABLE) => *unavailable,
                _ => false,
            },
        }
    }
}

impl TryFrom<&api::http_route::Retry> for RetryPolicy {
    type Error = InvalidRetry;

    fn try_from(r: &api::http_route::Retry) -> Result<Self, InvalidRetry> {
        let conditions = r.conditions.as_ref().ok_or(InvalidRetry::MissingConditions)?;
        let mut ranges = Vec::with_capacity(conditions.status_ranges.len());
        for (index, range) in conditions.status_ranges.iter().enumerate() {
            let (start, end) = (range.start, range.end);
            if !(1..=599).contains(&start) || !(1..=599).contains(&end) || start > end {
                return Err(InvalidRetry::StatusRange { index, start, end });
            }
            // Both are at most 599 (checked above), so the casts cannot truncate.
            ranges.push(start as u16..=end as u16);
        }
        retry_policy(r.max_retries, r.max_request_bytes, Conditions::Http(ranges), r.timeout.as_ref(), r.backoff.as_ref())
    }
}

impl TryFrom<&api::grpc_route::Retry> for RetryPolicy {
    type Error = InvalidRetry;

    fn try_from(r: &api::grpc_route::Retry) -> Result<Self, InvalidRetry> {
        let c = r.conditions.as_ref().ok_or(InvalidRetry::MissingConditions)?;
        let conditions = Conditions::Grpc {
            cancelled: c.cancelled,
            deadline_exceeded: c.deadine_exceeded,
            resource_exhausted: c.resource_exhausted,
            internal: c.internal,
            unavailable: c.unavailable,
        };
        retry_policy(r.max_retries, r.max_request_bytes, conditions, r.timeout.as_ref(), r.backoff.as_ref())
    }
}

fn retry_policy<D>(
    max_retries: u32,
    max_request_bytes: u32,
    conditions: Conditions,
    timeout: Option<&D>,
    backoff: Option<&api::ExponentialBackoff>,
) -> Result<RetryPolicy, InvalidRetry>
where
    D: Clone + std::fmt::Debug,
    Duration: TryFrom<D>,
    <Duration as TryFrom<D>>::Error: std::fmt::Display,
{
    let timeout = timeout.map(|t| duration(t).map_err(|reason| InvalidRetry::Duration { field: "timeout", reason })).transpose()?;
    Ok(RetryPolicy {
        max_retries,
        max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX),
        conditions,
        // Zero is proto3's "unset".
        timeout: timeout.filter(|t| !t.is_zero()),
        backoff: backoff.map(Backoff::try_from).transpose()?,
    })
}

/// A protobuf duration as a std one; negative durations are invalid. Generic so that this crate
/// needs no `prost-types` dependency of its own for a type it only ever converts.
pub(crate) fn duration<D>(d: &D) -> Result<Duration, String>
where
    D: Clone + std::fmt::Debug,
    Duration: TryFrom<D>,
    <Duration as TryFrom<D>>::Error: std::fmt::Display,
{
    Duration::try_from(d.clone()).map_err(|e| format!("expected a non-negative duration, found {d:?} ({e})"))
}

impl TryFrom<&api::ExponentialBackoff> for Backoff {
    type Error = InvalidBackoff;

    fn try_from(b: &api::ExponentialBackoff) -> Result<Self, InvalidBackoff> {
        let min = b.min_backoff.as_ref().ok_or(InvalidBackoff::Missing("min_backoff"))?;
        let min = duration(min).map_err(|reason| InvalidBackoff::Duration { field: "min_backoff", reason })?;
        let max = b.max_backoff.as_ref().ok_or(InvalidBackoff::Missing("max_backoff"))?;
        let max = duration(max).map_err(|reason| InvalidBackoff::Duration { field: "max_backoff", reason })?;
        if max < min || max.is_zero() {
            return Err(InvalidBackoff::MaxBelowMin { min, max });
        }
        if !b.jitter_ratio.is_finite() || b.jitter_ratio < 0.0 {
            return Err(InvalidBackoff::Jitter(b.jitter_ratio));
        }
        Ok(Self { min, max, jitter: f64::from(b.jitter_ratio), respect_retry_after: b.respect_retry_after_hint })
    }
}

impl Backoff {
    /// The wait before retry number `attempt + 1` (attempt 0 is the wait after the first failure).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        let base = self.min.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(self.max);
        let jitter = if self.jitter > 0.0 { base.mul_f64((self.jitter * rng.f64()).min(1e9)) } else { Duration::ZERO };
        let delay = base.saturating_add(jitter).min(self.max);
        match retry_after {
            Some(hint) if self.respect_retry_after => delay.max(hint.min(self.max)),
            _ => delay,
        }
    }
}
