//! Linkerd's annotations for retries, timeouts, failure accrual and load biasing
//! (LINKERD-WIRE.md §4.2, §8.2), parsed once when a manifest is read. On a Service they apply to
//! every route to it; on an HTTPRoute, they override the Service's for that route.

use knit_core::parse;
use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceConfig {
    pub retry: Option<RetryConfig>,
    pub timeouts: Timeouts,
    pub accrual: Option<Accrual>,
    /// `balancer.alpha.linkerd.io/penalize-failures=true`.
    pub penalty: Option<Penalty>,
    /// `config.linkerd.io/opaque-ports`; `None` when absent (the control plane's default opaque
    /// ports apply), which is not the same as an empty list (no port is opaque).
    pub opaque_ports: Option<BTreeSet<u16>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Inclusive status ranges (`retry.linkerd.io/http`).
    pub http: Vec<(u16, u16)>,
    /// gRPC codes by their names (`retry.linkerd.io/grpc`).
    pub grpc: BTreeSet<String>,
    pub limit: u32,
    /// Per attempt.
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Accrual {
    Consecutive { max_failures: u32, min_penalty: Duration, max_penalty: Duration, jitter: f32 },
    Unified { threshold: f64, window: Duration, min_requests: u32, max_failures: u32, min_penalty: Duration, max_penalty: Duration, jitter: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Penalty {
    pub penalty: Duration,
    pub max_retry_after: Duration,
}

const GRPC_CODES: [&str; 5] = ["cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable"];

/// Parses the annotations Knit reads; the error names the annotation and says what it expects.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<ServiceConfig, (String, String)> {
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    let field = |k: &str| format!("metadata.annotations[{k}]");
    let duration =
        |k: &str| -> Result<Option<Duration>, (String, String)> { get(k).map(|v| parse::duration(v).map_err(|e| (field(k), e.to_string()))).transpose() };
    let number = |k: &str, default: u32| -> Result<u32, (String, String)> {
        get(k).map_or(Ok(default), |v| v.parse().map_err(|_| (field(k), format!("expected a whole number, found {v:?}"))))
    };

    let http = get("retry.linkerd.io/http").map(|v| status_ranges(v).map_err(|e| (field("retry.linkerd.io/http"), e))).transpose()?;
    let grpc = get("retry.linkerd.io/grpc")
        .map(|v| {
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .map(|c| {
                    if GRPC_CODES.contains(&c.as_str()) {
                        Ok(c)
                    } else {
                        Err((field("retry.linkerd.io/grpc"), format!("unknown gRPC condition {c:?}; expected some of {}", GRPC_CODES.join(", "))))
                    }
                })
                .collect::<Result<BTreeSet<_>, _>>()
        })
        .transpose()?;
    let retry = if http.is_some() || grpc.is_some() || get("retry.linkerd.io/limit").is_some() {
        Some(RetryConfig {
            http: http.unwrap_or_default(),
            grpc: grpc.unwrap_or_default(),
            limit: number("retry.linkerd.io/limit", 1)?,
            timeout: duration("retry.linkerd.io/timeout")?,
        })
    } else {
        None
    };

    let timeouts = Timeouts {
        request: duration("timeout.linkerd.io/request")?,
        response: duration("timeout.linkerd.io/response")?,
        idle: duration("timeout.linkerd.io/idle")?,
    };

    let jitter = match get("balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio") {
        None => 0.5,
        Some(v) => v
            .parse::<f32>()
            .ok()
            .filter(|j| (0.0..=100.0).contains(j))
            .ok_or_else(|| (field("balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio"), format!("expected a ratio such as 0.5, found {v:?}")))?,
    };
    let min_penalty = duration("balancer.linkerd.io/failure-accrual-consecutive-min-penalty")?.unwrap_or(Duration::from_secs(1));
    let max_penalty = duration("balancer.linkerd.io/failure-accrual-consecutive-max-penalty")?.unwrap_or(Duration::from_secs(60));
    if max_penalty < min_penalty {
        return Err((field("balancer.linkerd.io/failure-accrual-consecutive-max-penalty"), "must not be below the min penalty".to_string()));
    }
    let max_failures = number("balancer.linkerd.io/failure-accrual-consecutive-max-failures", 7)?;
    let accrual = match get("balancer.linkerd.io/failure-accrual") {
        None => None,
        Some("consecutive") => Some(Accrual::Consecutive { max_failures, min_penalty, max_penalty, jitter }),
        Some("unified") => {
            let key = "balancer.alpha.linkerd.io/failure-accrual-success-rate-threshold";
            let threshold = match get(key) {
                None => 0.8,
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| (field(key), format!("expected a ratio between 0 and 1, found {v:?}")))?,
            };
            Some(Accrual::Unified {
                threshold,
                window: duration("balancer.alpha.linkerd.io/failure-accrual-success-rate-window")?.unwrap_or(Duration::from_secs(10)),
                min_requests: number("balancer.alpha.linkerd.io/failure-accrual-success-rate-min-requests", 5)?,
                max_failures,
                min_penalty,
                max_penalty,
                jitter,
            })
        }
        Some(other) => return Err((field("balancer.linkerd.io/failure-accrual"), format!("expected consecutive or unified, found {other:?}"))),
    };

    let penalty = match get("balancer.alpha.linkerd.io/penalize-failures") {
        None => None,
        Some(v) => match parse::boolean(v) {
            Ok(false) => None,
            Ok(true) => Some(Penalty {
                penalty: duration("balancer.alpha.linkerd.io/load-biaser-penalty")?.unwrap_or(Duration::from_secs(5)),
                max_retry_after: duration("balancer.alpha.linkerd.io/load-biaser-max-retry-after")?.unwrap_or(Duration::from_secs(300)),
            }),
            Err(e) => return Err((field("balancer.alpha.linkerd.io/penalize-failures"), e.to_string())),
        },
    };

    let opaque_ports =
        get("config.linkerd.io/opaque-ports").map(|v| parse::port_set(v).map_err(|e| (field("config.linkerd.io/opaque-ports"), e.to_string()))).transpose()?;
    Ok(ServiceConfig { retry, timeouts, accrual, penalty, opaque_ports })
}

/// `5xx`, `gateway-error` (502-504), `500`, `500-504`, comma-separated.
pub fn status_ranges(v: &str) -> Result<Vec<(u16, u16)>, String> {
    let code = |s: &str| -> Result<u16, String> {
        s.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| format!("expected a status code from 100 to 599, found {s:?}"))
    };
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.to_ascii_lowercase().as_str() {
            "5xx" => Ok((500, 599)),
            "gateway-error" => Ok((502, 504)),
            range => match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (code(a)?, code(b)?);
                    if a > b {
                        Err(format!("range {s:?} starts after it ends"))
                    } else {
                        Ok((a, b))
                    }
                }
                None => code(range).map(|c| (c, c)),
            },
        })
        .collect()
}
