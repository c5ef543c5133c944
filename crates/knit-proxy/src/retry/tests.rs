use super::*;
use api::{
    grpc_route::retry::Conditions as GrpcConditions,
    http_route::retry::{conditions::StatusRange, Conditions as HttpConditions},
    ExponentialBackoff,
};

/// A protobuf duration, its type inferred from the field it fills (this crate has no direct
/// `prost-types` dependency to name it).
pub(crate) fn pb<T>(d: Duration) -> Option<T>
where
    Duration: TryInto<T>,
    <Duration as TryInto<T>>::Error: std::fmt::Debug,
{
    Some(d.try_into().unwrap())
}

fn backoff(min_ms: u64, max_ms: u64, jitter: f32) -> ExponentialBackoff {
    ExponentialBackoff {
        min_backoff: pb(Duration::from_millis(min_ms)),
        max_backoff: pb(Duration::from_millis(max_ms)),
        jitter_ratio: jitter,
        respect_retry_after_hint: false,
    }
}

/// What Linkerd's controller sends for `retry.linkerd.io/http: 5xx,429` and `retry.linkerd.io/limit: 3`.
fn linkerd_http_retry() -> api::http_route::Retry {
    api::http_route::Retry {
        max_retries: 3,
        max_request_bytes: 64 * 1024,
        conditions: Some(HttpConditions { status_ranges: vec![StatusRange { start: 500, end: 599 }, StatusRange { start: 429, end: 429 }] }),
        timeout: pb(Duration::from_millis(500)),
        backoff: Some(backoff(25, 250, 1.0)),
    }
}

#[test]
fn converts_http_retries_as_linkerd_sends_them() {
    let r = RetryPolicy::try_from(&linkerd_http_retry()).unwrap();
    assert_eq!(r.max_retries, 3);
    assert_eq!(r.max_request_bytes, 65_536);
    assert_eq!(r.conditions, Conditions::Http(vec![500..=599, 429..=429]));
    assert_eq!(r.timeout, Some(Duration::from_millis(500)));
    assert_eq!(r.backoff, Some(Backoff { min: Duration::from_millis(25), max: Duration::from_millis(250), jitter: 1.0, respect_retry_after: false }));
    for (status, retry) in [(500, true), (503, true), (599, true), (429, true), (428, false), (200, false), (404, false)] {
        assert_eq!(r.retryable(StatusCode::from_u16(status).unwrap(), None), retry, "{status}");
    }
}

#[test]
fn unset_timeout_and_backoff_are_none() {
    let mut proto = linkerd_http_retry();
    proto.timeout = pb(Duration::ZERO);
    proto.backoff = None;
    let r = RetryPolicy::try_from(&proto).unwrap();
    assert_eq!((r.timeout, r.backoff), (None, None));
}

#[test]
fn grpc_conditions_read_grpc_status() {
    let proto = api::grpc_route::Retry {
        max_retries: 2,
        conditions: Some(GrpcConditions { cancelled: false, deadine_exceeded: true, resource_exhausted: false, internal: false, unavailable: true }),
        ..Default::default()
    };
    let r = RetryPolicy::try_from(&proto).unwrap();
    assert!(r.retryable(StatusCode::OK, Some(14)));
    assert!(r.retryable(StatusCode::OK, Some(4)));
    for code in [0, 1, 8, 13, 2] {
        assert!(!r.retryable(StatusCode::OK, Some(code)), "{code}");
    }
    assert!(!r.retryable(StatusCode::SERVICE_UNAVAILABLE, None), "gRPC retries need a gRPC status");
    let all = Conditions::Grpc { cancelled: true, deadline_exceeded: true, resource_exhausted: true, internal: true, unavailable: true };
    let r = RetryPolicy { conditions: all, ..r };
    for code in [1, 4, 8, 13, 14] {
        assert!(r.retryable(StatusCode::OK, Some(code)), "{code}");
    }
}

#[test]
fn invalid_retries_say_which_field() {
    let err = |f: &dyn Fn(&mut api::http_route::Retry)| {
        let mut r = linkerd_http_retry();
        f(&mut r);
        RetryPolicy::try_from(&r).unwrap_err()
    };
    assert_eq!(err(&|r| r.conditions = None), InvalidRetry::MissingConditions);
    for (start, end) in [(0, 500), (500, 600), (503, 500), (600, 700)] {
        let e = err(&|r| r.conditions.as_mut().unwrap().status_ranges[1] = StatusRange { start, end });
        assert_eq!(e, InvalidRetry::StatusRange { index: 1, start, end });
        assert!(e.to_string().starts_with("conditions.status_ranges[1]: expected 1 <= start <= end <= 599"), "{e}");
    }
    let e = err(&|r| r.backoff.as_mut().unwrap().min_backoff = None);
    assert_eq!(e.to_string(), "backoff.min_backoff: missing");
    let e = err(&|r| r.backoff = Some(backoff(300, 200, 0.0)));
    assert!(matches!(e, InvalidRetry::Backoff(InvalidBackoff::MaxBelowMin { .. })), "{e}");
    let e = err(&|r| r.backoff = Some(backoff(0, 0, 0.0)));
    assert!(matches!(e, InvalidRetry::Backoff(InvalidBackoff::MaxBelowMin { .. })), "{e}");
    for jitter in [-0.5, f32::NAN, f32::INFINITY] {
        let e = err(&|r| r.backoff = Some(backoff(1, 2, jitter)));
        assert!(matches!(e, InvalidRetry::Backoff(InvalidBackoff::Jitter(_))), "{e}");
    }
    let e = err(&|r| r.timeout.as_mut().unwrap().seconds = -1);
    assert!(e.to_string().starts_with("timeout: expected a non-negative duration"), "{e}");
    let grpc = api::grpc_route::Retry { conditions: None, ..Default::default() };
    assert_eq!(RetryPolicy::try_from(&grpc).unwrap_err(), InvalidRetry::MissingConditions);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn backoff_doubles_up_to_max_without_jitter() {
    let b = Backoff { min: ms(25), max: ms(250), jitter: 0.0, respect_retry_after: false };
    let mut rng = fastrand::Rng::with_seed(1);
    let delays: Vec<_> = (0..6).map(|a| b.delay(a, None, &mut rng)).collect();
    assert_eq!(delays, [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]);
    assert_eq!(b.delay(u32::MAX, None, &mut rng), ms(250), "no overflow on huge attempts");
    assert_eq!(b.delay(0, Some(ms(100)), &mut rng), ms(25), "hints are ignored unless asked for");
}

#[test]
fn jitter_adds_up_to_the_ratio_of_the_base() {
    let b = Backoff { min: ms(100), max: ms(10_000), jitter: 0.5, respect_retry_after: false };
    let mut rng = fastrand::Rng::with_seed(7);
    let delays: Vec<_> = (0..1_000).map(|_| b.delay(1, None, &mut rng)).collect();
    assert!(delays.iter().all(|d| (ms(200)..=ms(300)).contains(d)), "base 200ms plus at most 100ms");
    let mean = delays.iter().sum::<Duration>() / 1_000;
    assert!((ms(240)..=ms(260)).contains(&mean), "uniform jitter averages half its range: {mean:?}");
    let capped = Backoff { min: ms(100), max: ms(150), jitter: 1.0, respect_retry_after: false };
    assert!((0..100).all(|_| capped.delay(0, None, &mut rng) <= ms(150)), "jitter never passes max");
}

#[test]
fn retry_after_is_a_floor_capped_at_max() {
    let b = Backoff { min: ms(25), max: ms(1_000), jitter: 0.0, respect_retry_after: true };
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(b.delay(0, Some(ms(400)), &mut rng), ms(400));
    assert_eq!(b.delay(0, Some(ms(10)), &mut rng), ms(25), "a shorter hint does not shorten the backoff");
    assert_eq!(b.delay(0, Some(Duration::from_secs(60)), &mut rng), ms(1_000));
    assert_eq!(b.delay(3, None, &mut rng), ms(200));
}
