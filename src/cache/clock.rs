//! The hot path's own clock: a coarse monotonic reading, so that a token past its deadline is
//! refused even when no timer fired to withdraw it.
//!
//! `CLOCK_MONOTONIC_COARSE` (through [`coarsetime`], read without touching any shared state)
//! costs a few nanoseconds: the kernel's last timer tick, a few milliseconds behind the precise
//! clock. The deadline it is compared with is brought forward by [`SLACK`], more than a tick, so
//! the coarse clock can only refuse a token early, never late. A refused token is not an error:
//! the request takes the slow path, which decides on Tokio's clock.
//!
//! Like Tokio's clock, this clock does not advance while the machine is suspended (it runs on
//! through a `SIGSTOP`, a debugger stop, or a starved process).

use std::time::Duration;

use tokio::time::Instant;

/// How much earlier than the real deadline the coarse clock refuses a token: more than one
/// kernel tick (1 to 10 ms), so that the coarse reading lagging behind can never let a token
/// through after its deadline.
pub(crate) const SLACK: Duration = Duration::from_millis(20);

/// The coarse clock now, in its own ticks.
#[inline]
pub(crate) fn now() -> u64 {
    #[cfg(feature = "test-util")]
    if FOLLOW_TOKIO.load(std::sync::atomic::Ordering::Relaxed) {
        return tokio_ticks();
    }
    coarsetime::Instant::now_without_cache_update().as_ticks()
}

/// Set by [`crate::testing::follow_tokio_clock`]: the deadline checks read Tokio's clock, so
/// that a test on a paused clock sees tokens expire and renewals fall due as time advances.
#[cfg(feature = "test-util")]
pub(crate) static FOLLOW_TOKIO: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Tokio's clock in coarse ticks, from a fixed origin well before any test's runtime.
#[cfg(feature = "test-util")]
#[cold]
fn tokio_ticks() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| {
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    });
    let since = Instant::now().into_std().saturating_duration_since(origin);
    coarsetime::Duration::from(since).as_ticks()
}

/// The coarse tick at which `at` (on Tokio's clock) falls, less [`SLACK`], given that Tokio's
/// `now` and the coarse `ticks_now` were read together.
///
/// On the paused clock the two clocks drift apart; that only sends requests to the slow path,
/// which then decides on Tokio's clock.
pub(crate) fn ticks_at(at: Instant, now: Instant, ticks_now: u64) -> u64 {
    let ahead = at.saturating_duration_since(now).saturating_sub(SLACK);
    if ahead.is_zero() {
        return 0;
    }
    ticks_now.saturating_add(coarsetime::Duration::from(ahead).as_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_in_the_past_or_within_the_slack_is_already_due() {
        let now = Instant::now();
        let ticks = self::now();
        assert_eq!(ticks_at(now, now, ticks), 0);
        assert_eq!(ticks_at(now + SLACK, now, ticks), 0);
        assert!(ticks_at(now + Duration::from_secs(60), now, ticks) > ticks);
    }
}
