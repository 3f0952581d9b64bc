//! The one rate limit: answers to rejected packets (shared by the workers)
//! and the log lines the logging thread writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// A token bucket of `burst` tokens refilled at `per_second`, as one atomic
/// (the generic cell rate algorithm: the time at which the bucket is next
/// full), so that threads share it without a lock. Time is the caller's, in
/// nanoseconds of a monotonic clock.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds one answer's token takes to come back; 0: never.
    interval: u64,
    /// How far ahead of now the bucket may be drawn: burst − 1 intervals.
    tolerance: u64,
    /// When the bucket, drawn as it is, is full again (engine clock, ns).
    full_at: AtomicU64,
}

impl RateLimit {
    /// `per_second` tokens a second, bursts of `burst` (at least one); a
    /// rate of 0 allows none.
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        let interval = match per_second {
            0 => 0,
            n => (1_000_000_000 / u64::from(n)).max(1),
        };
        let burst = u64::from(burst.max(1));
        RateLimit {
            interval,
            tolerance: burst.saturating_sub(1).saturating_mul(interval),
            full_at: AtomicU64::new(0),
        }
    }

    /// A rate of 0: nothing is ever allowed.
    pub fn is_off(&self) -> bool {
        self.interval == 0
    }

    /// Takes a token at `now` (nanoseconds), if there is one.
    pub fn allow(&self, now: u64) -> bool {
        if self.interval == 0 {
            return false;
        }
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let from = full_at.max(now);
            if from - now > self.tolerance {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                from.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SECOND: u64 = 1_000_000_000;

    fn allowed(l: &RateLimit, at: u64, tries: usize) -> usize {
        (0..tries).filter(|_| l.allow(at)).count()
    }

    #[test]
    fn the_bucket_holds_twice_the_rate_and_refills_at_the_rate() {
        let l = RateLimit::new(100, 200);
        let start = 5 * SECOND;
        assert_eq!(allowed(&l, start, 1000), 200, "a burst of twice the rate");
        // A tenth of a second later: ten tokens back.
        assert_eq!(allowed(&l, start + SECOND / 10, 1000), 10);
        // Idle for long: full again, and no more than full.
        assert_eq!(allowed(&l, start + 60 * SECOND, 1000), 200);
        // Then, tried twice every 10 ms for 3 s: one of each two passes,
        // 100 a second.
        let t0 = start + 60 * SECOND;
        let steady: usize = (1..=300)
            .map(|i| allowed(&l, t0 + i * SECOND / 100, 2))
            .sum();
        assert_eq!(steady, 300);
    }

    #[test]
    fn rate_zero_allows_nothing_and_a_huge_rate_does_not_overflow() {
        let l = RateLimit::new(0, 0);
        assert_eq!(allowed(&l, 0, 10), 0);
        assert_eq!(allowed(&l, 100 * SECOND, 10), 0);
        let l = RateLimit::new(u32::MAX, u32::MAX);
        assert_eq!(allowed(&l, u64::MAX / 2, 1000), 1000);
    }

    #[test]
    fn workers_share_one_bucket() {
        let l = Arc::new(RateLimit::new(1000, 2000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || allowed(&l, SECOND, 1000))
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 2000);
    }
}
