//! The proxies' own request headers, `l5d-*`. The application never chooses a protocol, a
//! destination or an identity with them (docs/security.md):
//! - outbound, every `l5d-*` header is removed from the application's request; those a route
//!   may opt in to (its rule's `allow_l5d_request_headers`, as Linkerd's) are read first and
//!   applied only there: `l5d-dst-override`, `l5d-timeout` / `l5d-request-timeout`,
//!   `l5d-response-timeout`, `l5d-retry-limit`, `l5d-retry-http`, `l5d-retry-grpc`,
//!   `l5d-retry-timeout`;
//! - inbound, every `l5d-*` header is removed too, after `l5d-orig-proto` was read from requests
//!   that a peer proxy sent over the mesh protocol; the proxy then sets `l5d-client-id` itself.

use crate::{
    policy::outbound::{Rule, Timeouts},
    retry::{Backoff, Conditions, RetryPolicy},
};
use http::HeaderMap;
use knit_core::{destination::Authority, parse};
use std::{ops::RangeInclusive, time::Duration};

/// Whether `name` is one of the proxies' own headers.
pub fn is_l5d(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("l5d-")
}

/// Removes every `l5d-*` header.
pub fn strip(headers: &mut HeaderMap) {
    let names: Vec<http::HeaderName> = headers.keys().filter(|n| is_l5d(n)).cloned().collect();
    for n in names {
        headers.remove(n);
    }
}

/// What the application asked for with the headers a route may allow. A value that does not
/// parse is ignored, as if absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub dst: Option<Authority>,
    pub request_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub retry_limit: Option<u32>,
    pub retry_conditions: Option<Conditions>,
    pub retry_timeout: Option<Duration>,
}

/// Reads the overrides a route may allow and removes every `l5d-*` header.
pub fn take(headers: &mut HeaderMap) -> Overrides {
    // Most requests carry none: one pass over the names instead of eight lookups by name.
    if !headers.keys().any(is_l5d) {
        return Overrides::default();
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let duration = |name: &str| get(name).and_then(|v| parse::duration(v).ok());
    let o = Overrides {
        dst: get("l5d-dst-override").and_then(|v| Authority::parse(v, Some(80)).ok()),
        request_timeout: duration("l5d-request-timeout").or_else(|| duration("l5d-timeout")),
        response_timeout: duration("l5d-response-timeout"),
        retry_limit: get("l5d-retry-limit").and_then(|v| v.parse().ok()),
        retry_conditions: get("l5d-retry-http").and_then(http_conditions).or_else(|| get("l5d-retry-grpc").and_then(grpc_conditions)),
        retry_timeout: duration("l5d-retry-timeout"),
    };
    strip(headers);
    o
}

/// Linkerd's status list: `5xx`, `gateway-error` (502-504), a code, or `a-b`, comma-separated.
fn http_conditions(v: &str) -> Option<Conditions> {
    let mut ranges: Vec<RangeInclusive<u16>> = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part {
            "5xx" => 500..=599,
            "gateway-error" => 502..=504,
            _ => match part.split_once('-') {
                Some((a, b)) => a.trim().parse().ok()?..=b.trim().parse().ok()?,
                None => {
                    let code = part.parse().ok()?;
                    code..=code
                }
            },
        };
        if range.is_empty() || *range.start() < 100 || *range.end() > 599 {
            return None;
        }
        ranges.push(range);
    }
    (!ranges.is_empty()).then_some(Conditions::Http(ranges))
}

fn grpc_conditions(v: &str) -> Option<Conditions> {
    let (mut cancelled, mut deadline_exceeded, mut resource_exhausted, mut internal, mut unavailable) = (false, false, false, false, false);
    for part in v.split(',').map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()) {
        match part.as_str() {
            "cancelled" => cancelled = true,
            "deadline-exceeded" => deadline_exceeded = true,
            "resource-exhausted" => resource_exhausted = true,
            "internal" => internal = true,
            "unavailable" => unavailable = true,
            _ => return None,
        }
    }
    Some(Conditions::Grpc { cancelled, deadline_exceeded, resource_exhausted, internal, unavailable })
}

/// Linkerd sends these with every retry policy; an override that enables retries uses them.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

impl Overrides {
    /// The rule's timeouts and retries with these overrides applied (the caller checks that the
    /// rule allows them).
    pub fn apply(&self, rule: &Rule) -> (Timeouts, Option<RetryPolicy>) {
        let timeouts = Timeouts {
            request: self.request_timeout.or(rule.timeouts.request).filter(|d| !d.is_zero()),
            response: self.response_timeout.or(rule.timeouts.response).filter(|d| !d.is_zero()),
            idle: rule.timeouts.idle,
        };
        let asked = self.retry_limit.is_some() || self.retry_conditions.is_some() || self.retry_timeout.is_some();
        let retry = match (&rule.retry, asked) {
            (r, false) => r.clone(),
            (base, true) => {
                let base = base.clone().unwrap_or_else(|| RetryPolicy {
                    max_retries: 1,
                    max_request_bytes: MAX_REQUEST_BYTES,
                    conditions: Conditions::Http(vec![500..=599]),
                    timeout: None,
                    backoff: Some(Backoff { min: Duration::from_millis(25), max: Duration::from_millis(250), jitter: 1.0, respect_retry_after: false }),
                });
                Some(RetryPolicy {
                    max_retries: self.retry_limit.unwrap_or(base.max_retries),
                    conditions: self.retry_conditions.clone().unwrap_or(base.conditions),
                    timeout: self.retry_timeout.or(base.timeout),
                    ..base
                })
            }
        };
        (timeouts, retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::outbound::Distribution;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn every_l5d_header_is_removed_and_the_allowed_ones_are_read() {
        let mut h = headers(&[
            ("l5d-orig-proto", "HTTP/1.1"),
            ("l5d-client-id", "admin.forged"),
            ("l5d-proxy-error", "x"),
            ("l5d-dst-override", "books.demo.svc.cluster.local:8080"),
            ("l5d-timeout", "2s"),
            ("l5d-retry-http", "5xx,429"),
            ("l5d-retry-limit", "3"),
            ("x-app", "kept"),
        ]);
        let o = take(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-app"]);
        assert_eq!(o.dst, Some("books.demo.svc.cluster.local:8080".parse().unwrap()));
        assert_eq!(o.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.retry_limit, Some(3));
        assert_eq!(o.retry_conditions, Some(Conditions::Http(vec![500..=599, 429..=429])));
    }

    #[test]
    fn bad_values_are_ignored() {
        let mut h = headers(&[("l5d-timeout", "soon"), ("l5d-retry-http", "700"), ("l5d-retry-grpc", "everything"), ("l5d-dst-override", "not a name")]);
        assert_eq!(take(&mut h), Overrides::default());
    }

    #[test]
    fn overrides_replace_the_rule_and_can_enable_retries() {
        let rule = Rule {
            matches: vec![],
            filters: vec![],
            backends: Distribution::Empty,
            timeouts: Timeouts { request: Some(Duration::from_secs(10)), response: None, idle: None },
            retry: None,
            allow_l5d_request_headers: true,
        };
        let o = Overrides { request_timeout: Some(Duration::from_secs(1)), retry_limit: Some(2), ..Default::default() };
        let (t, r) = o.apply(&rule);
        assert_eq!(t.request, Some(Duration::from_secs(1)));
        let r = r.expect("retries enabled");
        assert_eq!((r.max_retries, r.conditions), (2, Conditions::Http(vec![500..=599])));
        assert_eq!(Overrides::default().apply(&rule), (rule.timeouts.clone(), None));
    }
}
