//! Peak-EWMA latency estimates, as linkerd2-proxy balances: each endpoint keeps an exponentially
//! weighted moving average of its response times that jumps straight up to a slower sample (the
//! peak) and decays toward faster ones, and toward zero while idle, with time constant `decay`. The
//! balancer compares `estimate x (requests in flight + 1)` of two random endpoints and takes the
//! cheaper, so a slow or overloaded endpoint gets little traffic and is tried again as it recovers.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Times are kept as nanoseconds since this instant, so an estimate is two atomics, no lock.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// No sample yet: the policy's default RTT stands in.
const NONE: u64 = u64::MAX;

/// One endpoint's response-time estimate (shared by every version of the endpoint). Two samples
/// landing at once may lose one; an estimate does not mind.
#[derive(Debug)]
pub struct RttEstimate {
    /// Nanoseconds, as `f64` bits, or `NONE`.
    estimate: AtomicU64,
    /// When it was last updated, nanoseconds since `EPOCH`.
    updated: AtomicU64,
}

impl Default for RttEstimate {
    fn default() -> Self {
        RttEstimate { estimate: AtomicU64::new(NONE), updated: AtomicU64::new(since_epoch(Instant::now())) }
    }
}

fn since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_nanos() as u64
}

impl RttEstimate {
    fn current(&self, default: Duration) -> f64 {
        match self.estimate.load(Ordering::Relaxed) {
            NONE => default.as_nanos() as f64,
            bits => f64::from_bits(bits),
        }
    }

    /// The estimate decayed toward `toward` for the time from the last update to `now`.
    fn decayed(&self, now: u64, toward: f64, decay: Duration, default: Duration) -> f64 {
        let estimate = self.current(default);
        let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed)) as f64;
        let weight = (-elapsed / decay.as_nanos().max(1) as f64).exp();
        estimate * weight + toward * (1.0 - weight)
    }

    /// Takes one response time: a slower one becomes the estimate at once (the peak), a faster one
    /// pulls it down by how long ago the last sample was.
    pub fn observe(&self, rtt: Duration, decay: Duration, default: Duration) {
        let now = since_epoch(Instant::now());
        let sample = rtt.as_nanos() as f64;
        let next = if sample > self.current(default) { sample } else { self.decayed(now, sample, decay, default) };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// The balancer's cost of sending one more request: the estimate, decayed toward zero for the
    /// time without samples, times the requests in flight plus one.
    pub fn cost(&self, in_flight: u64, now: Instant, decay: Duration, default: Duration) -> f64 {
        self.decayed(since_epoch(now), 0.0, decay, default) * (in_flight + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);
    const DEFAULT: Duration = Duration::from_millis(30);

    #[test]
    fn a_slow_sample_is_taken_at_once_and_fast_ones_pull_it_down_over_time() {
        let e = RttEstimate::default();
        let now = Instant::now();
        let ms = |d: f64| d / 1e6;
        assert!((ms(e.cost(0, now, DECAY, DEFAULT)) - 30.0).abs() < 0.1, "the default stands in at first");
        e.observe(Duration::from_millis(200), DECAY, DEFAULT);
        let peak = ms(e.cost(0, Instant::now(), DECAY, DEFAULT));
        assert!((199.0..=200.0).contains(&peak), "the peak: {peak}");
        // A fast sample right after barely moves it; in flight requests multiply the cost.
        e.observe(Duration::from_millis(1), DECAY, DEFAULT);
        let after = ms(e.cost(0, Instant::now(), DECAY, DEFAULT));
        assert!(after > 190.0, "{after}");
        let busy = ms(e.cost(3, Instant::now(), DECAY, DEFAULT));
        assert!((busy / after - 4.0).abs() < 0.01, "{busy} vs {after}");
        // Idle for one time constant: about 1/e of the estimate is left.
        let later = ms(e.cost(0, Instant::now() + DECAY, DECAY, DEFAULT));
        assert!((later - after / std::f64::consts::E).abs() < 2.0, "{later}");
    }
}
