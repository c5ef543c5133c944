//! A retry budget, as tower's `TpsBudget` and Linkerd's ServiceProfile budget: over a sliding
//! window of `ttl`, retries may number at most `min_per_sec * ttl` plus `retry_ratio` times the
//! original requests. The floor lets a quiet destination retry at all; the ratio keeps retries
//! from multiplying the load of a busy one when it starts failing.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The window is kept as this many slots, so it slides in steps of `ttl / SLOTS`.
const SLOTS: usize = 10;

#[derive(Debug)]
pub struct Budget {
    slot_width: Duration,
    /// Retries the window always allows: `min_per_sec * ttl`.
    reserve: f64,
    retry_ratio: f64,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Time is measured from the first call, so callers may pass any `Instant`s.
    origin: Option<Instant>,
    slots: [Slot; SLOTS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Which `slot_width`-long period since the origin this slot counts.
    generation: u64,
    deposits: u64,
    withdrawals: u64,
}

impl Budget {
    /// `ttl` is the window (10s in tower and Linkerd), `min_per_sec` the retries per second always
    /// allowed (10), `retry_ratio` the fraction of requests that may be retried on top (0.2).
    /// A negative or NaN ratio counts as 0.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> Self {
        let ttl = ttl.max(Duration::from_millis(SLOTS as u64));
        let ratio = if retry_ratio.is_finite() && retry_ratio > 0.0 { f64::from(retry_ratio) } else { 0.0 };
        Self { slot_width: ttl / SLOTS as u32, reserve: f64::from(min_per_sec) * ttl.as_secs_f64(), retry_ratio: ratio, window: Mutex::new(Window::default()) }
    }

    /// What every destination gets: retries may add at most a fifth to its load, plus 10 per
    /// second, over 10 s.
    pub fn default_per_destination() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self, now: Instant) {
        self.with_current(now, |slot, _| slot.deposits += 1);
    }

    /// Asks to send one retry; `false` means the budget is spent and the retry must not happen.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.with_current(now, |slot, (deposits, withdrawals)| {
            let balance = self.reserve + self.retry_ratio * deposits as f64 - withdrawals as f64;
            let allowed = balance >= 1.0;
            if allowed {
                slot.withdrawals += 1;
            }
            allowed
        })
    }

    /// Runs `f` on the slot for `now`, with the window's totals (deposits, withdrawals).
    fn with_current<T>(&self, now: Instant, f: impl FnOnce(&mut Slot, (u64, u64)) -> T) -> T {
        // A panic while holding this lock left only counters behind, which stay meaningful.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let origin = *w.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin);
        let generation = (elapsed.as_nanos() / self.slot_width.as_nanos().max(1)) as u64;
        let mut totals = (0, 0);
        for slot in &w.slots {
            // Slots from the future (an `Instant` earlier than one already seen) count too: time
            // passed in by callers is only roughly ordered.
            if slot.generation + (SLOTS as u64) > generation {
                totals.0 += slot.deposits;
                totals.1 += slot.withdrawals;
            }
        }
        let current = &mut w.slots[(generation % SLOTS as u64) as usize];
        if current.generation != generation {
            // The slot held a period that has left the window.
            let stale = if current.generation + (SLOTS as u64) > generation { (current.deposits, current.withdrawals) } else { (0, 0) };
            totals = (totals.0 - stale.0, totals.1 - stale.1);
            *current = Slot { generation, deposits: 0, withdrawals: 0 };
        }
        f(current, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &Budget, now: Instant) -> usize {
        (0..100_000).take_while(|_| b.withdraw(now)).count()
    }

    #[test]
    fn the_reserve_allows_min_per_sec_times_ttl() {
        let t0 = Instant::now();
        let b = Budget::new(Duration::from_secs(10), 10, 0.2);
        assert_eq!(drain(&b, t0), 100);
        assert!(!b.withdraw(t0 + Duration::from_secs(5)), "still within the window");
    }

    #[test]
    fn deposits_add_the_ratio() {
        let t0 = Instant::now();
        let b = Budget::new(Duration::from_secs(10), 0, 0.2);
        assert!(!b.withdraw(t0), "no reserve, no deposits");
        for _ in 0..50 {
            b.deposit(t0);
        }
        assert_eq!(drain(&b, t0), 10, "a fifth of 50 requests");
        for _ in 0..5 {
            b.deposit(t0 + Duration::from_secs(1));
        }
        assert_eq!(drain(&b, t0 + Duration::from_secs(1)), 1);
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let b = Budget::new(Duration::from_secs(10), 1, 0.0);
        assert_eq!(drain(&b, t0), 10);
        assert_eq!(drain(&b, t0 + Duration::from_secs(9)), 0, "the first withdrawals are still in the window");
        assert_eq!(drain(&b, t0 + Duration::from_secs(10)), 10, "they left it");
        assert_eq!(drain(&b, t0 + Duration::from_secs(60)), 10, "long after, the whole window is new");

        let b = Budget::new(Duration::from_secs(10), 0, 1.0);
        for _ in 0..4 {
            b.deposit(t0);
        }
        assert_eq!(drain(&b, t0), 4);
        assert_eq!(drain(&b, t0 + Duration::from_millis(9_999)), 0);
        for _ in 0..4 {
            b.deposit(t0 + Duration::from_secs(10));
        }
        assert_eq!(drain(&b, t0 + Duration::from_secs(10)), 4, "the old deposits and withdrawals left together");
    }

    #[test]
    fn nonsense_ratios_count_as_zero() {
        let t0 = Instant::now();
        for ratio in [-1.0, f32::NAN, f32::INFINITY] {
            let b = Budget::new(Duration::from_secs(1), 0, ratio);
            b.deposit(t0);
            assert!(!b.withdraw(t0), "{ratio}");
        }
    }

    #[test]
    fn shared_between_threads() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(Budget::new(Duration::from_secs(10), 10, 0.0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn({
                    let b = b.clone();
                    move || drain(&b, t0)
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 100);
    }
}
