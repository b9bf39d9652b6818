//! Retry timing shared by every client loop: exponential backoff with jitter,
//! and the `Retry-After` header's seconds form.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is uniform in [d/2, d], d
/// doubling from `base` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    base: Duration,
    max: Duration,
    failures: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            next: base,
            base,
            max,
            failures: 0,
        }
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
        self.failures = 0;
    }

    /// The wait before the next attempt (counts a failure).
    pub fn next_delay(&mut self) -> Duration {
        use ring::rand::SecureRandom as _;
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures += 1;
        let mut b = [0u8; 4];
        let r = ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map(|()| u32::from_le_bytes(b))
            .unwrap_or(u32::MAX / 2);
        d.mul_f64(0.5 + 0.5 * f64::from(r) / f64::from(u32::MAX))
    }

    /// Whether to log this failure: the 1st, 2nd, 4th, 8th… of a run, so a
    /// long outage does not flood the log.
    pub fn should_log(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

/// A `Retry-After` value in seconds (the HTTP-date form is not honoured:
/// callers fall back to their backoff).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let bounds = [(50, 100), (100, 200), (175, 350), (175, 350)];
        for (lo, hi) in bounds {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi),
                "{d:?} not in {lo}..={hi} ms"
            );
        }
        assert!(b.should_log()); // 4th failure
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
    }
}
