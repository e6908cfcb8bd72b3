//! Retry budgets: retries on one worker for one route may be at most a share
//! of that route's recent requests (plus a small floor), so retries cannot
//! multiply the load on upstreams during an outage.

use std::time::{Duration, Instant};

use crate::config::RetryPolicy;

/// Requests and retries are counted over two consecutive windows of this length.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RetryBudget {
    started: Instant,
    requests: u64,
    retries: u64,
    previous_requests: u64,
    previous_retries: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            started: Instant::now(),
            requests: 0,
            retries: 0,
            previous_requests: 0,
            previous_retries: 0,
        }
    }
}

impl RetryBudget {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= WINDOW * 2 {
            *self = RetryBudget {
                started: now,
                ..RetryBudget::default()
            };
        } else if elapsed >= WINDOW {
            self.previous_requests = self.requests;
            self.previous_retries = self.retries;
            self.requests = 0;
            self.retries = 0;
            self.started += WINDOW;
        }
    }

    pub fn record_request(&mut self, now: Instant) {
        self.roll(now);
        self.requests += 1;
    }

    /// Whether one more retry fits the budget (without spending it).
    pub fn allows(&mut self, policy: &RetryPolicy, now: Instant) -> bool {
        self.roll(now);
        let requests = self.requests + self.previous_requests;
        let retries = self.retries + self.previous_retries;
        let floor = u64::from(policy.min_per_second) * (WINDOW * 2).as_secs();
        let allowed = ((requests as f64 * policy.budget) as u64).max(floor);
        retries < allowed
    }

    /// Spends one retry if it fits.
    pub fn try_take(&mut self, policy: &RetryPolicy, now: Instant) -> bool {
        if self.allows(policy, now) {
            self.retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget: f64, min_per_second: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            on_connect_failure: true,
            on_reset: true,
            statuses: vec![],
            budget,
            min_per_second,
        }
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let now = Instant::now();
        let mut b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(now);
        }
        let p = policy(0.2, 0);
        let taken = (0..100).filter(|_| b.try_take(&p, now)).count();
        assert_eq!(taken, 20);
    }

    #[test]
    fn the_floor_allows_a_few_retries_on_a_quiet_route() {
        let now = Instant::now();
        let mut b = RetryBudget::default();
        b.record_request(now);
        let p = policy(0.2, 1);
        assert_eq!((0..100).filter(|_| b.try_take(&p, now)).count(), 20);
    }

    #[test]
    fn a_zero_budget_allows_none() {
        let now = Instant::now();
        let mut b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(now);
        }
        assert!(!b.try_take(&policy(0.0, 0), now));
    }

    #[test]
    fn old_windows_are_forgotten() {
        let now = Instant::now();
        let mut b = RetryBudget::default();
        let p = policy(0.5, 0);
        for _ in 0..10 {
            b.record_request(now);
        }
        assert!((0..5).all(|_| b.try_take(&p, now)));
        assert!(!b.try_take(&p, now));
        let later = now + WINDOW * 3;
        b.record_request(later);
        b.record_request(later);
        assert!(b.try_take(&p, later), "a new window has budget again");
    }
}
