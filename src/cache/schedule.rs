//! The cache's decisions about time, as pure functions of the instants passed in.
//!
//! Nothing here reads a clock or a random number generator: the driver passes `now` and a jitter
//! fraction in, so every boundary can be unit-tested exactly and property-tested.

use std::time::Duration;

use tokio::time::Instant;

use crate::ErrorKind;

/// The default lead of a proactive renewal before expiry: 60 s.
pub(crate) const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// The default largest random extra lead: 5 s.
pub(crate) const DEFAULT_JITTER: Duration = Duration::from_secs(5);
/// The largest default hard margin: 10 s (or a tenth of the lifetime when that is smaller).
pub(crate) const DEFAULT_MAX_MARGIN: Duration = Duration::from_secs(10);
/// The default fetch timeout: 30 s.
pub(crate) const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The default first backoff after a transient failure: 1 s.
pub(crate) const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The default longest backoff, used at once for permanent failures: 60 s.
pub(crate) const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest `Retry-After` we obey, so that a hostile server cannot park us for a year.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// When a token stops being handed out, and when its renewal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Renew from this instant on; requests keep using the token meanwhile.
    pub(crate) renew_at: Instant,
    /// Never hand the token out at or after this instant.
    pub(crate) deadline: Instant,
}

/// The hard margin before expiry: `configured`, or the smaller of 10 s and a tenth of the
/// lifetime. Never more than half the lifetime, so that every token is usable for a while.
pub(crate) fn hard_margin(lifetime: Duration, configured: Option<Duration>) -> Duration {
    let margin = configured.unwrap_or_else(|| DEFAULT_MAX_MARGIN.min(lifetime / 10));
    margin.min(lifetime / 2)
}

/// Plans a token's renewal and deadline.
///
/// - The deadline is `expires_at − hard_margin`.
/// - A token that lives at least twice `refresh_before` is renewed `refresh_before` before it
///   expires, plus up to `jitter` more (`jitter_fraction` in `[0, 1]` picks how much), so that a
///   fleet does not renew in lockstep.
/// - A shorter token is renewed at half its life, minus up to a quarter of that half as jitter.
/// - The renewal never starts after the deadline nor before the token arrived.
pub(crate) fn plan(
    received_at: Instant,
    lifetime: Duration,
    refresh_before: Duration,
    jitter: Duration,
    margin: Option<Duration>,
    jitter_fraction: f64,
) -> Plan {
    let expires_at = received_at + lifetime;
    let deadline = expires_at - hard_margin(lifetime, margin);
    let lead = if lifetime >= refresh_before.saturating_mul(2) {
        refresh_before
    } else {
        lifetime / 2
    };
    let jitter = jitter.min(lead / 4).mul_f64(unit(jitter_fraction));
    let lead = lead.saturating_add(jitter).min(lifetime);
    let renew_at = (expires_at - lead).min(deadline).max(received_at);
    Plan { renew_at, deadline }
}

/// How long to wait before the next fetch after `failures` failures in a row (1 for the first),
/// the last one being of `kind`.
///
/// - [`ErrorKind::RateLimited`] waits for the server's `Retry-After` (at most an hour), or backs
///   off like a transient error when there is none.
/// - Permanent errors (bad credentials, forbidden, unknown user, ...) wait `max` at once: trying
///   again sooner cannot help and only adds to the server's load.
/// - Transient errors double from `min` up to `max`, and `jitter_fraction` in `[0, 1]` takes up
///   to a quarter off, so that many clients spread out.
pub(crate) fn backoff(
    failures: u32,
    kind: ErrorKind,
    retry_after: Option<Duration>,
    min: Duration,
    max: Duration,
    jitter_fraction: f64,
) -> Duration {
    if kind == ErrorKind::RateLimited
        && let Some(wait) = retry_after
    {
        return wait.min(MAX_RETRY_AFTER).max(min);
    }
    if !kind.is_transient() {
        return max;
    }
    let doublings = failures.saturating_sub(1).min(31);
    let exponential = min.saturating_mul(1u32 << doublings).min(max);
    let off = exponential.mul_f64(0.25 * unit(jitter_fraction));
    (exponential - off).max(min.min(max))
}

/// Clamps a jitter fraction into `[0, 1]`, reading NaN as 0.
fn unit(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// The first backoff: `configured`, but while a token is still valid at most a tenth of its
/// lifetime (and at least a millisecond), so that a short token gets several retries before its
/// deadline. A 1 s token whose renewal fails is retried after 100 ms, not after a whole second.
pub(crate) fn min_backoff(configured: Duration, current_lifetime: Option<Duration>) -> Duration {
    match current_lifetime {
        Some(lifetime) => configured.min(lifetime / 10).max(Duration::from_millis(1)),
        None => configured,
    }
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The token reached its deadline: stop handing it out.
    Expire,
    /// Start a fetch.
    Fetch,
    /// Callers are waiting, but a fetch would not help: answer them with the current token or,
    /// when there is none, the last error.
    Answer,
    /// Nothing to do until this instant (or forever), unless woken.
    Sleep(Option<Instant>),
}

/// What the driver knows when it decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The current token's plan, if there is a current token.
    pub(crate) plan: Option<Plan>,
    /// Callers are waiting for a fetch.
    pub(crate) demand: bool,
    /// No fetch may start before this instant.
    pub(crate) backoff_until: Option<Instant>,
}

/// Decides the driver's next step at `now`.
pub(crate) fn next_step(view: View, now: Instant) -> Step {
    if let Some(plan) = view.plan
        && now >= plan.deadline
    {
        return Step::Expire;
    }
    let backing_off = view.backoff_until.is_some_and(|until| now < until);
    if view.demand {
        return if view.plan.is_some() || backing_off {
            Step::Answer
        } else {
            Step::Fetch
        };
    }
    let Some(plan) = view.plan else {
        // No token and nobody waiting: stay idle until a caller asks.
        return Step::Sleep(None);
    };
    let renew_from = match view.backoff_until {
        Some(until) => plan.renew_at.max(until),
        None => plan.renew_at,
    };
    if now >= renew_from {
        return Step::Fetch;
    }
    Step::Sleep(Some(renew_from.min(plan.deadline)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn plan_for(lifetime: Duration, jitter_fraction: f64) -> (Instant, Plan) {
        let t0 = Instant::now();
        let plan = plan(
            t0,
            lifetime,
            DEFAULT_REFRESH_BEFORE,
            DEFAULT_JITTER,
            None,
            jitter_fraction,
        );
        (t0, plan)
    }

    #[test]
    fn hard_margin_is_ten_seconds_or_a_tenth_of_the_lifetime() {
        assert_eq!(hard_margin(3600 * S, None), 10 * S);
        assert_eq!(hard_margin(100 * S, None), 10 * S);
        assert_eq!(hard_margin(50 * S, None), 5 * S);
        assert_eq!(hard_margin(5 * S, None), S / 2);
        assert_eq!(hard_margin(3600 * S, Some(30 * S)), 30 * S);
        assert_eq!(
            hard_margin(20 * S, Some(30 * S)),
            10 * S,
            "never over half the life"
        );
    }

    #[test]
    fn long_tokens_renew_refresh_before_ahead_of_expiry() {
        let (t0, p) = plan_for(3600 * S, 0.0);
        assert_eq!(p.renew_at, t0 + 3540 * S);
        assert_eq!(p.deadline, t0 + 3590 * S);
    }

    #[test]
    fn jitter_moves_the_renewal_earlier_by_at_most_the_jitter() {
        let (t0, p) = plan_for(3600 * S, 1.0);
        assert_eq!(p.renew_at, t0 + 3535 * S);
        let (_, half) = plan_for(3600 * S, 0.5);
        assert!(half.renew_at > p.renew_at && half.renew_at < t0 + 3540 * S);
    }

    #[test]
    fn short_tokens_renew_at_half_their_life() {
        let (t0, p) = plan_for(100 * S, 0.0);
        assert_eq!(p.renew_at, t0 + 50 * S);
        assert_eq!(p.deadline, t0 + 90 * S);
        let (t0, p) = plan_for(5 * S, 0.0);
        assert_eq!(p.renew_at, t0 + 2500 * Duration::from_millis(1));
        assert_eq!(p.deadline, t0 + 4500 * Duration::from_millis(1));
        // exactly twice the lead is a long token
        let (t0, p) = plan_for(120 * S, 0.0);
        assert_eq!(p.renew_at, t0 + 60 * S);
    }

    #[test]
    fn short_token_jitter_is_at_most_a_quarter_of_the_lead() {
        let (t0, p) = plan_for(8 * S, 1.0);
        assert_eq!(p.renew_at, t0 + 3 * S);
    }

    #[test]
    fn renewal_never_falls_after_the_deadline() {
        let t0 = Instant::now();
        // a lead shorter than the margin would renew after the deadline: clamp it
        let p = plan(t0, 3600 * S, S, Duration::ZERO, Some(30 * S), 0.0);
        assert_eq!(p.renew_at, p.deadline);
        assert_eq!(p.deadline, t0 + 3570 * S);
    }

    #[test]
    fn a_valid_short_token_shortens_the_first_backoff() {
        assert_eq!(min_backoff(S, None), S);
        assert_eq!(min_backoff(S, Some(3600 * S)), S);
        assert_eq!(min_backoff(S, Some(S)), S / 10);
        assert_eq!(
            min_backoff(S, Some(Duration::from_millis(5))),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn permanent_errors_back_off_to_the_maximum_at_once() {
        for kind in [
            ErrorKind::AuthenticationFailed,
            ErrorKind::InvalidGrant,
            ErrorKind::Forbidden,
            ErrorKind::UnknownUser,
        ] {
            assert_eq!(backoff(1, kind, None, S, 60 * S, 0.0), 60 * S);
        }
    }

    #[test]
    fn transient_errors_double_from_the_minimum_up_to_the_maximum() {
        let delays: Vec<_> = (1..=8)
            .map(|n| backoff(n, ErrorKind::Server, None, S, 60 * S, 0.0))
            .collect();
        let secs: Vec<_> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            backoff(u32::MAX, ErrorKind::Timeout, None, S, 60 * S, 0.0),
            60 * S
        );
    }

    #[test]
    fn transient_jitter_takes_at_most_a_quarter_off() {
        let d = backoff(4, ErrorKind::Transport, None, S, 60 * S, 1.0);
        assert_eq!(d, 6 * S);
        let d = backoff(1, ErrorKind::Transport, None, S, 60 * S, 1.0);
        assert_eq!(d, S, "never below the minimum");
    }

    #[test]
    fn rate_limits_wait_for_retry_after_within_bounds() {
        let d = backoff(1, ErrorKind::RateLimited, Some(7 * S), S, 60 * S, 1.0);
        assert_eq!(d, 7 * S);
        let d = backoff(
            1,
            ErrorKind::RateLimited,
            Some(10 * 365 * 86400 * S),
            S,
            60 * S,
            0.0,
        );
        assert_eq!(d, MAX_RETRY_AFTER);
        let d = backoff(2, ErrorKind::RateLimited, None, S, 60 * S, 0.0);
        assert_eq!(d, 2 * S, "no Retry-After: like a transient error");
    }

    fn view(plan: Option<Plan>, demand: bool, backoff_until: Option<Instant>) -> View {
        View {
            plan,
            demand,
            backoff_until,
        }
    }

    #[test]
    fn idle_without_token_or_demand() {
        let now = Instant::now();
        assert_eq!(next_step(View::default(), now), Step::Sleep(None));
    }

    #[test]
    fn demand_fetches_unless_backing_off() {
        let now = Instant::now();
        assert_eq!(next_step(view(None, true, None), now), Step::Fetch);
        assert_eq!(
            next_step(view(None, true, Some(now + S)), now),
            Step::Answer
        );
        assert_eq!(next_step(view(None, true, Some(now)), now), Step::Fetch);
    }

    #[test]
    fn fresh_token_sleeps_until_renewal() {
        let (t0, p) = plan_for(3600 * S, 0.0);
        assert_eq!(
            next_step(view(Some(p), false, None), t0),
            Step::Sleep(Some(p.renew_at))
        );
        assert_eq!(
            next_step(view(Some(p), false, None), p.renew_at),
            Step::Fetch
        );
        assert_eq!(
            next_step(view(Some(p), false, None), p.deadline),
            Step::Expire
        );
    }

    #[test]
    fn backoff_delays_renewal_but_never_the_deadline() {
        let (_, p) = plan_for(3600 * S, 0.0);
        let now = p.renew_at + S;
        let until = now + 5 * S;
        assert_eq!(
            next_step(view(Some(p), false, Some(until)), now),
            Step::Sleep(Some(until))
        );
        let late = p.deadline + 100 * S;
        assert_eq!(
            next_step(view(Some(p), false, Some(late)), now),
            Step::Sleep(Some(p.deadline))
        );
        assert_eq!(
            next_step(view(Some(p), false, Some(late)), p.deadline),
            Step::Expire
        );
    }

    #[test]
    fn demand_with_a_token_is_answered_without_a_fetch() {
        let (t0, p) = plan_for(3600 * S, 0.0);
        assert_eq!(next_step(view(Some(p), true, None), t0), Step::Answer);
    }
}

#[cfg(test)]
#[path = "schedule_props.rs"]
mod props;
