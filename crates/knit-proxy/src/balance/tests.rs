use super::*;
use crate::retry::Backoff;

fn ewma() -> Load {
    Load::PeakEwma { default_rtt: Duration::from_millis(30), decay: Duration::from_secs(10) }
}

fn penalty() -> Load {
    Load::PenaltyPeakEwma {
        default_rtt: Duration::from_millis(30),
        decay: Duration::from_secs(10),
        penalty: Duration::from_secs(5),
        max_retry_after: Duration::from_secs(300),
        penalty_decay: Duration::from_secs(10),
    }
}

/// Sends `n` requests, one at a time, answering with `respond(endpoint)`; returns picks per endpoint.
fn drive(pool: &Pool<u16>, n: usize, start: Instant, respond: impl Fn(u16) -> (Outcome, Duration)) -> std::collections::BTreeMap<u16, usize> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut counts = std::collections::BTreeMap::new();
    let mut now = start;
    for _ in 0..n {
        let p = pool.pick(now, &mut rng).expect("an endpoint");
        let ep = *p.endpoint();
        *counts.entry(ep).or_default() += 1;
        let (outcome, rtt) = respond(ep);
        now += rtt;
        p.finish(outcome, rtt, now);
    }
    counts
}

#[test]
fn classification_follows_the_load_biaser() {
    assert_eq!(classify(StatusCode::OK, None), Outcome::Success);
    assert_eq!(classify(StatusCode::NOT_FOUND, None), Outcome::Success);
    assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, None), Outcome::Failure { rate_limited: true, retry_after: None });
    assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, None), Outcome::Failure { rate_limited: true, retry_after: None });
    assert_eq!(classify(StatusCode::BAD_GATEWAY, None), Outcome::Failure { rate_limited: false, retry_after: None });
    assert_eq!(classify(StatusCode::OK, Some(8)), Outcome::Failure { rate_limited: true, retry_after: None });
    assert_eq!(classify(StatusCode::OK, Some(13)), Outcome::Failure { rate_limited: false, retry_after: None });
    assert_eq!(classify(StatusCode::OK, Some(5)), Outcome::Success, "NOT_FOUND is the application's answer");
}

#[test]
fn a_slow_endpoint_gets_a_small_share() {
    let pool = Pool::new(&ewma(), None);
    pool.reset(vec![1, 2, 3]);
    let counts = drive(&pool, 3000, Instant::now(), |ep| (Outcome::Success, Duration::from_millis(if ep == 3 { 100 } else { 5 })));
    assert!(counts.get(&3).copied().unwrap_or(0) < 150, "the slow endpoint got {counts:?}");
    assert!(counts[&1] > 1000 && counts[&2] > 1000, "{counts:?}");
}

#[test]
fn endpoints_faster_than_the_default_rtt_all_get_traffic() {
    // Two endpoints answering in 1 ms: the first to answer must not keep all the traffic while
    // the other's estimate stays at the default 30 ms (the demo's authors-1 got nothing so).
    let pool = Pool::new(&ewma(), None);
    pool.reset(vec![1, 2]);
    let counts = drive(&pool, 5000, Instant::now(), |_| (Outcome::Success, Duration::from_millis(1)));
    assert!(counts.get(&1).copied().unwrap_or(0) > 1500 && counts.get(&2).copied().unwrap_or(0) > 1500, "{counts:?}");
}

#[test]
fn pending_requests_count_toward_load() {
    let pool = Pool::new(&ewma(), None);
    pool.reset(vec![1, 2]);
    let mut rng = fastrand::Rng::with_seed(1);
    let now = Instant::now();
    let held = pool.pick(now, &mut rng).unwrap();
    let first = *held.endpoint();
    // With one request in flight on `first`, both candidates are compared and the other wins.
    for _ in 0..20 {
        let p = pool.pick(now, &mut rng).unwrap();
        assert_ne!(*p.endpoint(), first);
    }
    drop(held);
}

#[test]
fn a_rate_limited_endpoint_is_avoided_for_its_retry_after() {
    let pool = Pool::new(&penalty(), None);
    // Only endpoint 1 at first, so it is the one picked (P2C would otherwise keep to whichever
    // endpoint answered fastest); it answers 429 with Retry-After: 2s, then endpoint 2 joins.
    pool.reset(vec![1]);
    let mut rng = fastrand::Rng::with_seed(3);
    let t0 = Instant::now();
    let p = pool.pick(t0, &mut rng).unwrap();
    p.finish(Outcome::Failure { rate_limited: true, retry_after: Some(Duration::from_secs(2)) }, Duration::from_millis(1), t0);
    pool.update_add(vec![2]);
    // During the pause even a pile of requests in flight on endpoint 2 does not send one to 1.
    let held: Vec<_> = (0..20).map(|_| pool.pick(t0 + Duration::from_secs(1), &mut rng).unwrap()).collect();
    assert!(held.iter().all(|p| *p.endpoint() == 2), "still within Retry-After");
    drop(held);
    // After it, endpoint 1 is a candidate again: its estimate is still the default 30 ms (decayed
    // as endpoint 2's is), so it takes requests once endpoint 2's in-flight load outweighs that.
    let later = t0 + Duration::from_secs(3);
    let held: Vec<_> = (0..20).map(|_| pool.pick(later, &mut rng).unwrap()).collect();
    let to_1 = held.iter().filter(|p| *p.endpoint() == 1).count();
    assert!((1..20).contains(&to_1), "traffic returns once the pause is over: {to_1} of 20 to endpoint 1");
}

#[test]
fn without_penalties_a_429_is_just_a_fast_answer() {
    let pool = Pool::new(&ewma(), None);
    pool.reset(vec![1]);
    let t0 = Instant::now();
    let fail_fast = |ep| {
        if ep == 1 {
            (Outcome::Failure { rate_limited: true, retry_after: Some(Duration::from_secs(30)) }, Duration::from_millis(1))
        } else {
            (Outcome::Success, Duration::from_millis(5))
        }
    };
    drive(&pool, 1, t0, fail_fast);
    pool.update_add(vec![2]);
    let counts = drive(&pool, 400, t0, fail_fast);
    assert!(counts.get(&1).copied().unwrap_or(0) > 390, "Linkerd's plain PeakEWMA prefers the fast-failing endpoint: {counts:?}");
}

#[test]
fn ejected_endpoints_are_not_picked_and_updates_keep_state() {
    let accrual = FailureAccrual::Consecutive {
        max_failures: 2,
        backoff: Backoff { min: Duration::from_secs(10), max: Duration::from_secs(60), jitter: 0.0, respect_retry_after: false },
    };
    let pool = Pool::new(&ewma(), Some(&accrual));
    pool.reset(vec![1]);
    let t0 = Instant::now();
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..2 {
        let p = pool.pick(t0, &mut rng).unwrap();
        p.finish(Outcome::Failure { rate_limited: false, retry_after: None }, Duration::from_millis(1), t0);
    }
    pool.update_add(vec![2]);
    pool.update_add(vec![1, 3]);
    pool.update_remove(&[3]);
    for _ in 0..50 {
        assert_eq!(*pool.pick(t0, &mut rng).unwrap().endpoint(), 2, "endpoint 1 stays ejected across updates");
    }
    pool.update_remove(&[2]);
    assert_eq!(pool.pick(t0, &mut rng).err(), Some(NoEndpoints { total: 1, ejected: 1 }));
    let later = t0 + Duration::from_secs(11);
    let probe = pool.pick(later, &mut rng).expect("a probe after the backoff");
    assert_eq!(pool.pick(later, &mut rng).err().map(|e| e.total), Some(1), "one probe at a time");
    probe.finish(Outcome::Success, Duration::from_millis(1), later);
    assert!(pool.pick(later, &mut rng).is_ok());
}
