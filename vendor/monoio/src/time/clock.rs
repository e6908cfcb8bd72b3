//! Source of time abstraction.
//!
//! By default, `std::time::Instant::now()` is used. However, when the
//! `test-util` feature flag is enabled, the values returned for `now()` are
//! configurable.
//!
//! ringgate: the time driver also keeps the instant it read when the
//! event loop last woke (`recent`), so that timers and deadlines set during
//! a loop turn cost no clock read of their own (nginx keeps its time the
//! same way, read once per loop iteration).

use std::cell::Cell;

use crate::time::Instant;

thread_local! {
    /// The instant the current thread's time driver last woke at: set after
    /// every park and cold-path submit, cleared when the driver drops.
    static TURN: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Clock {}

pub(crate) fn now() -> Instant {
    Instant::from_std(std::time::Instant::now())
}

/// Reads the clock and keeps what it read as the loop turn's time.
pub(crate) fn mark_turn() -> Instant {
    let now = std::time::Instant::now();
    TURN.with(|t| t.set(Some(now)));
    Instant::from_std(now)
}

/// Forgets the loop turn's time (its driver is gone).
pub(crate) fn clear_turn() {
    TURN.with(|t| t.set(None));
}

/// The time the current thread's event loop last woke at (the start of
/// this loop turn), or the clock read now where no time driver runs. It
/// lags the clock by how long the turn has run so far: right for
/// deadlines and timeouts, which it makes early by at most that much, not
/// for measuring a short interval.
pub fn recent() -> std::time::Instant {
    TURN.with(Cell::get)
        .unwrap_or_else(std::time::Instant::now)
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {}
    }

    pub(crate) fn now(&self) -> Instant {
        now()
    }
}
