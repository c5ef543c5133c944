use super::*;

fn backoff(respect_retry_after: bool) -> Backoff {
    Backoff { min: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.0, respect_retry_after }
}

fn consecutive(n: u32) -> Breaker {
    Breaker::new(FailureAccrual::Consecutive { max_failures: n, backoff: backoff(false) }, Instant::now())
}

const FAIL: Response = Response::Failure { rate_limited: false, retry_after: None };
const LIMITED: Response = Response::Failure { rate_limited: true, retry_after: None };

#[test]
fn consecutive_failures_eject_then_a_probe_decides() {
    let t0 = Instant::now();
    let mut b = consecutive(3);
    b.record(FAIL, t0);
    b.record(FAIL, t0);
    b.record(Response::Success, t0);
    b.record(FAIL, t0);
    b.record(FAIL, t0);
    assert_eq!(b.admit(t0), Admit::Yes, "a success in between resets the count");
    b.record(FAIL, t0);
    assert_eq!(b.admit(t0), Admit::No, "third consecutive failure ejects");
    assert!(!b.is_ready(t0));
    let t1 = t0 + Duration::from_millis(1001);
    assert!(b.is_ready(t1));
    assert_eq!(b.admit(t1), Admit::Probe);
    assert_eq!(b.admit(t1), Admit::No, "one probe at a time");
    b.record(FAIL, t1);
    // The second ejection backs off twice as long.
    assert_eq!(b.admit(t1 + Duration::from_millis(1500)), Admit::No);
    assert_eq!(b.admit(t1 + Duration::from_millis(2001)), Admit::Probe);
    b.record(Response::Success, t1 + Duration::from_millis(2001));
    assert!(b.is_closed());
    assert_eq!(b.admit(t1 + Duration::from_millis(2002)), Admit::Yes);
}

#[test]
fn a_cancelled_probe_lets_the_next_request_probe() {
    let t0 = Instant::now();
    let mut b = consecutive(1);
    b.record(FAIL, t0);
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(b.admit(t1), Admit::Probe);
    b.cancel_probe();
    assert_eq!(b.admit(t1), Admit::Probe);
}

#[test]
fn retry_after_extends_the_ejection_when_respected() {
    let t0 = Instant::now();
    let mut honoured = Breaker::new(FailureAccrual::Consecutive { max_failures: 1, backoff: backoff(true) }, t0);
    honoured.record(Response::Failure { rate_limited: true, retry_after: Some(Duration::from_secs(5)) }, t0);
    assert_eq!(honoured.admit(t0 + Duration::from_secs(4)), Admit::No);
    assert_eq!(honoured.admit(t0 + Duration::from_secs(5)), Admit::Probe);
    let mut ignored = consecutive(1);
    ignored.record(Response::Failure { rate_limited: true, retry_after: Some(Duration::from_secs(5)) }, t0);
    assert_eq!(ignored.admit(t0 + Duration::from_millis(1001)), Admit::Probe, "Linkerd's behaviour when not asked to respect it");
}

fn unified(threshold: f64, min_requests: u32, max_consecutive: u32) -> Breaker {
    Breaker::new(
        FailureAccrual::Unified {
            success_rate_threshold: threshold,
            window: Duration::from_secs(10),
            min_requests,
            max_consecutive_failures: max_consecutive,
            backoff: backoff(false),
        },
        Instant::now(),
    )
}

#[test]
fn unified_trips_on_a_low_success_rate_after_min_requests() {
    let t0 = Instant::now();
    let mut b = unified(0.8, 10, 0);
    for i in 0..9 {
        b.record(if i % 2 == 0 { FAIL } else { Response::Success }, t0);
    }
    assert!(b.is_closed(), "fewer than min_requests: no verdict");
    b.record(FAIL, t0);
    assert!(!b.is_closed(), "4/10 successes is below 0.8");
}

#[test]
fn unified_forgets_what_left_the_window() {
    let t0 = Instant::now();
    let mut b = unified(0.5, 4, 0);
    for _ in 0..3 {
        b.record(FAIL, t0);
    }
    let later = t0 + Duration::from_secs(11);
    for _ in 0..3 {
        b.record(Response::Success, later);
    }
    b.record(FAIL, later);
    assert!(b.is_closed(), "old failures left the 10 s window: 3 of 4 recent requests succeeded");
}

#[test]
fn unified_consecutive_count_ignores_rate_limiting() {
    let t0 = Instant::now();
    let mut b = unified(0.0, 1, 3);
    for _ in 0..10 {
        b.record(LIMITED, t0);
    }
    assert!(b.is_closed(), "429s do not count as consecutive failures");
    for _ in 0..3 {
        b.record(FAIL, t0);
    }
    assert!(!b.is_closed());
}
