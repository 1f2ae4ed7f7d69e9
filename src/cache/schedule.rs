//! The cache's decisions about time, as pure functions of the instants passed in.
//!
//! Nothing here reads a clock or a random number generator: the driver passes `now` and a jitter
//! fraction in, so every boundary can be unit-tested exactly and property-tested.
//!
//! Every setting that reaches these functions has been bounded by
//! [`TokenCacheBuilder::build`](crate::TokenCacheBuilder::build) and every lifetime by the token
//! model (at most a year), so no addition below can overflow an `Instant`.

use std::time::Duration;

use tokio::time::Instant;

use crate::{ErrorKind, Token};

/// The default lead of a proactive renewal before expiry: 60 s.
pub(crate) const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// The default largest random extra lead: 5 s.
pub(crate) const DEFAULT_JITTER: Duration = Duration::from_secs(5);
/// The largest default hard margin: 10 s (or a tenth of the lifetime when that is smaller).
pub(crate) const DEFAULT_MAX_MARGIN: Duration = Duration::from_secs(10);
/// The default fetch timeout: 30 s.
pub(crate) const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The default wait between attempts after a transient failure: 1 s.
pub(crate) const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The default wait after a permanent failure: 60 s.
pub(crate) const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest `Retry-After` we obey, so that a hostile server cannot park us for a year.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// The largest margin kept before the expiry of a token the server will not replace before it
/// expires. With [`AT_EXPIRY_GRACE`], callers wait at most a second (plus a login) at each such
/// expiry; two when the server writes lifetimes in whole seconds ([`Lead::slack`]).
pub(crate) const AT_EXPIRY_MARGIN: Duration = Duration::from_millis(950);
/// How long after a token's expiry, as read on its arrival, the login that replaces it is made
/// when the server replaces tokens only once they expire: enough for the server's clock to agree
/// that it has expired.
pub(crate) const AT_EXPIRY_GRACE: Duration = Duration::from_millis(50);
/// The first pause between two honoured invalidations; it doubles with each one in a row.
pub(crate) const FIRST_INVALIDATION_GAP: Duration = Duration::from_secs(1);
/// The longest pause between two honoured invalidations.
pub(crate) const MAX_INVALIDATION_GAP: Duration = Duration::from_secs(60);

/// When the cache may get a replacement for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Renewal {
    /// Before it expires: the server hands out a new token, or extends this one, on every login.
    #[default]
    Early,
    /// Only once it has expired: the server answers a login with the live token (or one bound to
    /// the same expiry) until then, so an early login buys nothing.
    AtExpiry,
}

/// When a token stops being handed out, and when its renewal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Renew from this instant on; requests keep using the token meanwhile if it is before the
    /// deadline. For [`Renewal::AtExpiry`] it is the expiry itself, after the deadline.
    pub(crate) renew_at: Instant,
    /// Never hand the token out at or after this instant.
    pub(crate) deadline: Instant,
    /// When the token expires.
    pub(crate) expires_at: Instant,
    /// How this token is replaced.
    pub(crate) renewal: Renewal,
}

/// The hard margin before expiry: `configured`, or the smaller of 10 s and a tenth of the
/// lifetime. Never more than half the lifetime, so that every token is usable for a while.
pub(crate) fn hard_margin(lifetime: Duration, configured: Option<Duration>) -> Duration {
    let margin = configured.unwrap_or_else(|| DEFAULT_MAX_MARGIN.min(lifetime / 10));
    margin.min(lifetime / 2)
}

/// The settings a plan depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lead {
    pub(crate) refresh_before: Duration,
    pub(crate) jitter: Duration,
    pub(crate) margin: Option<Duration>,
    /// Moves the renewal earlier by up to this fraction (0 to 1) of the time between the token's
    /// arrival and the lead, drawn with the jitter: tokens issued together renew apart.
    pub(crate) spread: f64,
    /// How much longer than its lifetime the token may live, where the server is known to cut
    /// lifetimes to whole seconds ([`Token::hidden_life`]): the login that only the token's expiry
    /// can answer with a new one waits for it. Zero otherwise.
    pub(crate) slack: Duration,
}

impl Lead {
    /// These settings, for `token` from a server that writes lifetimes cut to whole seconds
    /// (`cuts`, as the cache learned it), or not.
    pub(crate) fn for_token(self, token: &Token, cuts: bool) -> Lead {
        let slack = if cuts {
            token.hidden_life()
        } else {
            Duration::ZERO
        };
        Lead { slack, ..self }
    }
}

/// Plans a token's renewal and deadline.
///
/// - [`Renewal::Early`]: the deadline is `expires_at − hard_margin`. A token that lives at least
///   twice `refresh_before` is renewed `refresh_before` before it expires, plus up to `jitter`
///   more (`jitter_fraction` in `[0, 1]` picks how much), so that a fleet does not renew in
///   lockstep. A shorter token is renewed at half its life, minus up to a quarter of that half as
///   jitter. The renewal never starts after the deadline nor before the token arrived.
/// - [`Renewal::AtExpiry`]: the server will not hand out a new token before this one expires, so
///   the token is served until `expires_at − min(hard_margin, 950 ms)` (the configured margin,
///   if there is one, is kept as it is), and the next login is planned at the latest the
///   expiry can be, plus [`AT_EXPIRY_GRACE`]: earlier, the server would still answer with the
///   token it is about to let expire. For such a token the caller passes the answer's arrival as
///   `received_at`, since the server counted the life before it answered; and a lifetime in
///   whole seconds may have been cut to them, so the token may live up to [`Lead::slack`]
///   longer than it says.
pub(crate) fn plan(
    received_at: Instant,
    lifetime: Duration,
    lead: Lead,
    renewal: Renewal,
    jitter_fraction: f64,
) -> Plan {
    let expires_at = received_at + lifetime;
    if renewal == Renewal::AtExpiry {
        let margin = match lead.margin {
            Some(_) => hard_margin(lifetime, lead.margin),
            None => hard_margin(lifetime, None).min(AT_EXPIRY_MARGIN),
        };
        return Plan {
            renew_at: expires_at + lead.slack + AT_EXPIRY_GRACE,
            deadline: expires_at - margin,
            expires_at,
            renewal,
        };
    }
    let deadline = expires_at - hard_margin(lifetime, lead.margin);
    let base = if lifetime >= lead.refresh_before.saturating_mul(2) {
        lead.refresh_before
    } else {
        lifetime / 2
    };
    let jitter = lead.jitter.min(base / 4).mul_f64(unit(jitter_fraction));
    let spread = lifetime
        .saturating_sub(base)
        .mul_f64(lead.spread.clamp(0.0, 1.0) * unit(jitter_fraction));
    let ahead = base
        .saturating_add(jitter)
        .saturating_add(spread)
        .min(lifetime);
    let renew_at = (expires_at - ahead).min(deadline).max(received_at);
    Plan {
        renew_at,
        deadline,
        expires_at,
        renewal,
    }
}

/// Whether a token that replaced one expiring at `previous` renews anything: it must expire
/// later by more than the noise of measuring one expiry twice (a login's latency), which is
/// taken as a tenth of the previous lifetime, at most 5 s.
///
/// A server that answers a login with the live token and what is left of its life, or with a new
/// token bound to the same session expiry, renews nothing; a sliding session, which pushes the
/// expiry forward on each login, does.
pub(crate) fn extends(previous: Instant, previous_lifetime: Duration, next: Instant) -> bool {
    let noise = (previous_lifetime / 10).min(Duration::from_secs(5));
    next > previous + noise
}

/// How long to wait before the next attempt after `failures` failures in a row (1 for the
/// first), the last one being of `kind`.
///
/// - [`ErrorKind::RateLimited`] waits for the server's `Retry-After` (at most an hour), or backs
///   off like a transient error when there is none.
/// - Permanent errors (bad credentials, forbidden, unknown user, a panicking source, ...) wait
///   `max` at once: trying again sooner cannot help and only adds to the server's load.
/// - Transient errors: the first retry comes after `first`, every later one after `interval`
///   plus up to a tenth more (`jitter_fraction` in `[0, 1]`), so that many clients spread out.
///   The wait never grows: the endpoint is tried about once per `interval` however long it has
///   been down, and callers are served again at most one interval after it recovers. The login
///   budget, not the backoff, is what bounds the load.
pub(crate) fn backoff(
    failures: u32,
    kind: ErrorKind,
    retry_after: Option<Duration>,
    first: Duration,
    interval: Duration,
    max: Duration,
    jitter_fraction: f64,
) -> Duration {
    if kind == ErrorKind::RateLimited
        && let Some(wait) = retry_after
    {
        return wait.min(MAX_RETRY_AFTER).max(first);
    }
    if !kind.is_transient() {
        return max;
    }
    if failures <= 1 {
        return first.min(interval);
    }
    interval + (interval / 10).mul_f64(unit(jitter_fraction))
}

/// Clamps a jitter fraction into `[0, 1]`, reading NaN as 0.
fn unit(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// The first retry after a transient failure. While a token is still valid: `configured`, but at
/// most a tenth of its lifetime (and at least a millisecond), so that a short token gets a retry
/// before its deadline (a 1 s token whose renewal fails is retried after 100 ms). Without one,
/// callers are failing meanwhile: a quarter of `configured` (250 ms by default), so that one
/// failed login costs them a quarter of a second, not a whole one. Later retries come once per
/// `configured` either way.
pub(crate) fn first_retry(configured: Duration, current_lifetime: Option<Duration>) -> Duration {
    match current_lifetime {
        Some(lifetime) => configured.min(lifetime / 10).max(Duration::from_millis(1)),
        None => (configured / 4)
            .max(Duration::from_millis(1))
            .min(configured),
    }
}

/// How far invalidations after a `401` are spaced, so that an API that rejects every token costs
/// a handful of logins per minute, not one per request, while a token revoked after it served for
/// a while is always renewed at once.
///
/// An invalidation is *quick* when the token was rejected soon after it came into service:
/// sooner than the current gap, and sooner than [`SETTLED`] (or half its lifetime, for a short
/// token). Quick invalidations in a row are spaced out: each is honoured only once the gap after
/// the previous one has passed (1 s, 2 s, 4 s, ... up to 60 s). The others leave the token in
/// service until then, and take it out when the gap has passed if it is still in service (the
/// cache defers the first of them), so a token the server said it rejects is not sent for longer
/// than the gap. An invalidation that is not quick (the token served a while before
/// its first `401`) ends the streak and is honoured at once.
///
/// Only the token's own service counts as quiet, not the time since the last honoured
/// invalidation: a login that takes long (a slow login endpoint, or a login budget shared by
/// many accounts that all lost their tokens at once) brings a token that an API rejecting every
/// token rejects at once, and the streak goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InvalidationGate {
    /// Invalidations honoured in a row.
    streak: u32,
    /// The last honoured one.
    last: Option<Instant>,
}

/// How long a token must have been in service before its first `401` for that `401` to count as
/// news (a revocation) rather than part of a storm, unless half its lifetime is shorter.
pub(crate) const SETTLED: Duration = Duration::from_secs(10);

impl InvalidationGate {
    /// The pause that must follow the `streak`-th invalidation in a row.
    fn gap(streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1).min(16);
        FIRST_INVALIDATION_GAP
            .saturating_mul(1 << doublings)
            .min(MAX_INVALIDATION_GAP)
    }

    /// From when on an invalidation refused now is honoured whatever its token's service: the
    /// end of the pause that follows the last honoured one.
    pub(crate) fn opens_at(&self) -> Option<Instant> {
        self.last.map(|last| last + Self::gap(self.streak))
    }

    /// Whether an invalidation at `now` is honoured, for a token that had served for `served`
    /// (from its arrival to the first `401` for it) and lives `lifetime`; records it if it is.
    pub(crate) fn admit(&mut self, now: Instant, served: Duration, lifetime: Duration) -> bool {
        if let Some(last) = self.last {
            let gap = Self::gap(self.streak);
            if served >= gap.max(SETTLED.min(lifetime / 2)) {
                self.streak = 0;
            } else if now.saturating_duration_since(last) < gap {
                return false;
            }
        }
        self.streak = self.streak.saturating_add(1);
        self.last = Some(now);
        true
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
    /// No fetch may start before this instant, and callers get the last error meanwhile.
    pub(crate) backoff_until: Option<Instant>,
    /// A login is due at this instant although no token is being served: the last token was
    /// withdrawn before its expiry because the server would not replace it earlier. Callers
    /// wait for it rather than fail.
    pub(crate) due_at: Option<Instant>,
    /// The login budget allows the next login from this instant on.
    pub(crate) budget_at: Option<Instant>,
}

/// Decides the driver's next step at `now`.
pub(crate) fn next_step(view: View, now: Instant) -> Step {
    if let Some(plan) = view.plan
        && now >= plan.deadline
    {
        return Step::Expire;
    }
    let backing_off = view.backoff_until.filter(|until| now < *until);
    // The earliest a fetch may start, and whether one is wanted at all.
    let wanted_from = match (view.plan, view.demand) {
        (Some(_), true) => return Step::Answer,
        (None, true) if backing_off.is_some() => return Step::Answer,
        (None, true) => Some(view.due_at.map_or(now, |due| due.max(now))),
        (Some(plan), false) => Some(plan.renew_at),
        (None, false) => view.due_at,
    };
    let Some(wanted_from) = wanted_from else {
        // No token and nobody waiting: stay idle until a caller asks.
        return Step::Sleep(None);
    };
    let mut from = wanted_from;
    if let Some(until) = view.backoff_until {
        from = from.max(until);
    }
    if let Some(at) = view.budget_at {
        from = from.max(at);
    }
    if now >= from {
        return Step::Fetch;
    }
    let wake = match view.plan {
        Some(plan) => from.min(plan.deadline),
        None => from,
    };
    Step::Sleep(Some(wake))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn lead() -> Lead {
        Lead {
            refresh_before: DEFAULT_REFRESH_BEFORE,
            jitter: DEFAULT_JITTER,
            margin: None,
            spread: 0.0,
            slack: Duration::ZERO,
        }
    }

    fn plan_for(lifetime: Duration, jitter_fraction: f64) -> (Instant, Plan) {
        let t0 = Instant::now();
        (
            t0,
            plan(t0, lifetime, lead(), Renewal::Early, jitter_fraction),
        )
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
        assert_eq!(p.expires_at, t0 + 3600 * S);
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
        assert_eq!(p.renew_at, t0 + 2500 * MS);
        assert_eq!(p.deadline, t0 + 4500 * MS);
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
        let lead = Lead {
            refresh_before: S,
            jitter: Duration::ZERO,
            margin: Some(30 * S),
            spread: 0.0,
            slack: Duration::ZERO,
        };
        let p = plan(t0, 3600 * S, lead, Renewal::Early, 0.0);
        assert_eq!(p.renew_at, p.deadline);
        assert_eq!(p.deadline, t0 + 3570 * S);
    }

    #[test]
    fn a_token_the_server_replaces_only_at_expiry_is_served_to_just_before_it() {
        let t0 = Instant::now();
        let life = 600 * S + 250 * MS;
        let p = plan(t0, life, lead(), Renewal::AtExpiry, 1.0);
        assert_eq!(
            p.renew_at,
            t0 + life + AT_EXPIRY_GRACE,
            "the next login just after expiry"
        );
        assert_eq!(p.deadline, t0 + life - 950 * MS, "served until just before");
        assert_eq!(p.renew_at - p.deadline, S, "callers wait a second at most");
        // A lifetime in whole seconds may have been rounded down (600.9 s written as 600): the
        // login waits for the latest the expiry can be, and callers up to two seconds.
        let whole = Lead { slack: S, ..lead() };
        let p = plan(t0, 600 * S, whole, Renewal::AtExpiry, 1.0);
        assert_eq!(p.renew_at, t0 + 601 * S + AT_EXPIRY_GRACE);
        assert_eq!(
            p.deadline,
            t0 + 600 * S - 950 * MS,
            "not served past the earliest"
        );
        assert_eq!(p.renew_at - p.deadline, 2 * S);
        // a short one keeps its tenth
        let p = plan(t0, 2 * S, lead(), Renewal::AtExpiry, 0.0);
        assert_eq!(p.deadline, t0 + 1800 * MS);
        // a configured margin is the user's choice
        let configured = Lead {
            margin: Some(5 * S),
            ..lead()
        };
        let p = plan(t0, 600 * S, configured, Renewal::AtExpiry, 0.0);
        assert_eq!(p.deadline, t0 + 595 * S);
    }

    #[test]
    fn a_spread_moves_renewals_earlier_over_that_fraction_of_the_life_before_the_lead() {
        let t0 = Instant::now();
        let spread = Lead {
            jitter: Duration::ZERO,
            spread: 0.25,
            ..lead()
        };
        // 3600 s, lead 60 s: renewals fall between 3540 s and 3540 - 0.25 * 3540 = 2655 s.
        let earliest = plan(t0, 3600 * S, spread, Renewal::Early, 1.0);
        let latest = plan(t0, 3600 * S, spread, Renewal::Early, 0.0);
        let middle = plan(t0, 3600 * S, spread, Renewal::Early, 0.5);
        assert_eq!(latest.renew_at, t0 + 3540 * S);
        assert_eq!(earliest.renew_at, t0 + 2655 * S);
        assert!(earliest.renew_at < middle.renew_at && middle.renew_at < latest.renew_at);
        assert_eq!(
            earliest.deadline, latest.deadline,
            "the deadline never moves"
        );
        // a token replaced only at expiry is not spread: nothing can be had sooner
        let at_expiry = plan(t0, 3600 * S, spread, Renewal::AtExpiry, 1.0);
        assert_eq!(at_expiry.renew_at, t0 + 3600 * S + AT_EXPIRY_GRACE);
    }

    #[test]
    fn only_a_clearly_later_expiry_is_a_renewal() {
        let t0 = Instant::now();
        let old = t0 + 600 * S;
        assert!(!extends(old, 600 * S, old), "the same expiry");
        assert!(
            !extends(old, 600 * S, old + 300 * MS),
            "measured again a login later"
        );
        assert!(!extends(old, 600 * S, old - 10 * S), "earlier");
        assert!(extends(old, 600 * S, old + 540 * S), "a sliding session");
        assert!(extends(old, S, old + S / 2), "a short sliding session");
        assert!(!extends(old, S, old + 50 * MS));
    }

    #[test]
    fn a_valid_short_token_or_none_at_all_shortens_the_first_retry() {
        assert_eq!(
            first_retry(S, None),
            S / 4,
            "callers are failing: retry soon"
        );
        assert_eq!(first_retry(S, Some(3600 * S)), S);
        assert_eq!(first_retry(S, Some(S)), S / 10);
        assert_eq!(first_retry(S, Some(5 * MS)), MS);
    }

    #[test]
    fn permanent_errors_back_off_to_the_maximum_at_once() {
        for kind in [
            ErrorKind::AuthenticationFailed,
            ErrorKind::InvalidGrant,
            ErrorKind::Forbidden,
            ErrorKind::UnknownUser,
            ErrorKind::Runtime,
        ] {
            assert_eq!(backoff(1, kind, None, S, S, 60 * S, 0.0), 60 * S, "{kind}");
        }
    }

    #[test]
    fn transient_errors_are_retried_about_once_an_interval_however_long_they_last() {
        let delays: Vec<_> = (1..=8)
            .map(|n| backoff(n, ErrorKind::Server, None, S / 10, S, 60 * S, 0.0))
            .collect();
        assert_eq!(delays[0], S / 10, "the first retry is quick");
        assert!(delays[1..].iter().all(|d| *d == S), "{delays:?}");
        let late = backoff(u32::MAX, ErrorKind::Timeout, None, S, S, 60 * S, 1.0);
        assert_eq!(late, S + S / 10, "jitter adds at most a tenth");
    }

    #[test]
    fn rate_limits_wait_for_retry_after_within_bounds() {
        let d = backoff(1, ErrorKind::RateLimited, Some(7 * S), S, S, 60 * S, 1.0);
        assert_eq!(d, 7 * S);
        let year = 365 * 86400 * S;
        let d = backoff(1, ErrorKind::RateLimited, Some(year), S, S, 60 * S, 0.0);
        assert_eq!(d, MAX_RETRY_AFTER);
        let d = backoff(2, ErrorKind::RateLimited, None, S, S, 60 * S, 0.0);
        assert_eq!(d, S, "no Retry-After: like a transient error");
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn quick_invalidations_in_a_row_are_spaced_one_two_four_seconds_up_to_a_minute() {
        let t0 = Instant::now();
        let mut gate = InvalidationGate::default();
        let quick = Duration::ZERO;
        assert!(gate.admit(t0, quick, LONG), "the first is honoured at once");
        assert!(!gate.admit(t0 + 999 * MS, quick, LONG));
        assert!(gate.admit(t0 + S, quick, LONG));
        assert!(!gate.admit(t0 + 2 * S, quick, LONG));
        assert!(gate.admit(t0 + 3 * S, quick, LONG));
        let mut at = t0 + 3 * S;
        let mut honoured = vec![];
        for _ in 0..200 {
            at += S;
            if gate.admit(at, quick, LONG) {
                honoured.push(at - t0);
            }
        }
        let gaps: Vec<u64> = honoured
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        assert_eq!(&gaps[..3], [8, 16, 32]);
        assert!(gaps[3..].iter().all(|g| *g == 60), "{gaps:?}");
    }

    #[test]
    fn only_a_token_that_served_until_settled_ends_an_invalidation_streak() {
        let t0 = Instant::now();
        let mut gate = InvalidationGate::default();
        assert!(gate.admit(t0, Duration::ZERO, LONG));
        assert!(gate.admit(t0 + S, Duration::ZERO, LONG));
        assert!(gate.admit(t0 + 3 * S, Duration::ZERO, LONG));
        // the gap is now 4 s: a token that served 8 s is honoured, still in the streak (8 s gap)
        assert!(gate.admit(t0 + 11 * S, 8 * S, LONG));
        assert!(!gate.admit(t0 + 18 * S, Duration::ZERO, LONG));
        // one that served 10 s (`SETTLED`) ends it
        assert!(gate.admit(t0 + 30 * S, 10 * S, LONG));
        assert!(
            gate.admit(t0 + 31 * S, Duration::ZERO, LONG),
            "back to a 1 s gap"
        );
    }

    /// A login slower than twice the gap (here 20 s, as when 200 accounts wait for a shared
    /// budget of 10 logins a second) brings a token the API rejects at once: the streak goes on,
    /// so an API that rejects every token still costs a handful of logins, not one per request.
    #[test]
    fn a_slow_login_is_not_a_quiet_spell() {
        let t0 = Instant::now();
        let mut gate = InvalidationGate::default();
        let mut honoured = vec![];
        let mut at = t0;
        while at < t0 + 300 * S {
            // Each honoured invalidation is followed by a 20 s login; a rejected token is
            // reported every second meanwhile and after.
            if gate.admit(at, Duration::ZERO, LONG) {
                honoured.push((at - t0).as_secs());
                at += 20 * S;
            } else {
                at += S;
            }
        }
        assert_eq!(honoured, [0, 20, 40, 60, 80, 100, 132, 192, 252]);
    }

    #[test]
    fn a_token_that_served_a_while_before_its_first_401_is_renewed_at_once() {
        let t0 = Instant::now();
        let mut gate = InvalidationGate::default();
        assert!(gate.admit(t0, Duration::ZERO, LONG));
        assert!(
            !gate.admit(t0 + 100 * MS, 9 * S, LONG),
            "quick: in the storm"
        );
        assert!(
            gate.admit(t0 + 100 * MS, 10 * S, LONG),
            "settled: a revocation"
        );
        // a short token settles in half its life
        assert!(gate.admit(t0 + 200 * MS, S, 2 * S));
        assert!(!gate.admit(t0 + 300 * MS, 900 * MS, 2 * S));
    }

    fn view(plan: Option<Plan>, demand: bool, backoff_until: Option<Instant>) -> View {
        View {
            plan,
            demand,
            backoff_until,
            ..View::default()
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

    #[test]
    fn callers_wait_for_a_login_that_is_due_at_expiry_instead_of_failing() {
        let now = Instant::now();
        let due = View {
            demand: true,
            due_at: Some(now + S),
            ..View::default()
        };
        assert_eq!(next_step(due, now), Step::Sleep(Some(now + S)));
        assert_eq!(next_step(due, now + S), Step::Fetch);
        // and without callers, the login still happens at expiry
        let idle = View {
            demand: false,
            ..due
        };
        assert_eq!(next_step(idle, now + S), Step::Fetch);
    }

    #[test]
    fn the_login_budget_delays_a_fetch_but_never_the_deadline() {
        let (_, p) = plan_for(100 * S, 0.0);
        let budget = View {
            plan: Some(p),
            budget_at: Some(p.deadline + S),
            ..View::default()
        };
        assert_eq!(next_step(budget, p.renew_at), Step::Sleep(Some(p.deadline)));
        let waiting = View {
            plan: None,
            demand: true,
            budget_at: Some(p.renew_at + S),
            ..View::default()
        };
        assert_eq!(
            next_step(waiting, p.renew_at),
            Step::Sleep(Some(p.renew_at + S))
        );
        assert_eq!(next_step(waiting, p.renew_at + S), Step::Fetch);
    }
}

#[cfg(test)]
#[path = "schedule_props.rs"]
mod props;
