//! Property tests of the schedule functions: whatever the inputs (any lifetime the parser lets
//! through, any setting, any jitter fraction including NaN, infinities and negatives), the plan
//! keeps its promises, backoffs stay within their bounds, and the driver's next step never
//! spins, never fetches early and never leaves a waiting caller without an answer.

use proptest::prelude::*;

use super::*;
use crate::token::MAX_LIFETIME;

/// The largest `Duration` a strategy below draws for a setting: far beyond any sane value, yet
/// small enough that adding it to an `Instant` cannot overflow.
const HUGE: Duration = Duration::from_secs(200 * 365 * 24 * 60 * 60);

/// Nanoseconds, with the edges (zero, one, huge) drawn often.
fn any_duration(max: Duration) -> impl Strategy<Value = Duration> {
    let max = u64::try_from(max.as_nanos()).expect("fits in u64 nanoseconds");
    prop_oneof![
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::from_nanos(max)),
        3 => (0..=1_000_000_000u64).prop_map(Duration::from_nanos),
        4 => (0..=max).prop_map(Duration::from_nanos),
    ]
}

/// A lifetime the parser accepts: (0, 1 year], edges often.
fn any_lifetime() -> impl Strategy<Value = Duration> {
    let max = u64::try_from(MAX_LIFETIME.as_nanos()).expect("fits in u64 nanoseconds");
    prop_oneof![
        1 => Just(Duration::from_nanos(1)),
        1 => Just(MAX_LIFETIME),
        2 => (1..=10_000_000_000u64).prop_map(Duration::from_nanos),
        2 => (1..=3_600u64).prop_map(Duration::from_secs),
        4 => (1..=max).prop_map(Duration::from_nanos),
    ]
}

/// Any `f64`: ordinary fractions, and every special value.
fn any_fraction() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..=1.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        1 => Just(f64::MIN_POSITIVE),
        2 => any::<f64>(),
    ]
}

fn any_kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(vec![
        ErrorKind::InvalidGrant,
        ErrorKind::AuthenticationFailed,
        ErrorKind::Forbidden,
        ErrorKind::UnknownUser,
        ErrorKind::RateLimited,
        ErrorKind::Server,
        ErrorKind::Timeout,
        ErrorKind::Transport,
        ErrorKind::InvalidResponse,
        ErrorKind::Config,
        ErrorKind::InsecureTransport,
        ErrorKind::Runtime,
    ])
}

fn any_renewal() -> impl Strategy<Value = Renewal> {
    prop::sample::select(vec![Renewal::Early, Renewal::AtExpiry])
}

fn lead(refresh_before: Duration, jitter: Duration, margin: Option<Duration>) -> Lead {
    Lead {
        refresh_before,
        jitter,
        margin,
        spread: 0.0,
        slack: Duration::ZERO,
    }
}

/// The longest transient interval `build` accepts.
const MAX_SETTING_WAIT: Duration = Duration::from_secs(60 * 60);

/// An instant up to a century after a fixed origin.
fn at(origin: Instant, offset: Duration) -> Instant {
    origin + offset
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn plan_keeps_its_promises_for_any_input(
        offset in any_duration(HUGE),
        lifetime in any_lifetime(),
        refresh_before in any_duration(HUGE),
        jitter in any_duration(HUGE),
        margin in prop::option::of(any_duration(HUGE)),
        renewal in any_renewal(),
        fraction in any_fraction(),
        whole_seconds in any::<bool>(),
    ) {
        let received_at = at(Instant::now(), offset);
        let expires_at = received_at + lifetime;
        let slack = if whole_seconds { Duration::from_secs(1) } else { Duration::ZERO };
        let settings = Lead { slack, ..lead(refresh_before, jitter, margin) };
        let p = plan(received_at, lifetime, settings, renewal, fraction);

        // The renewal starts no earlier than the token arrived: before the hard margin while the
        // server replaces tokens early, just after the latest its expiry can be when it does
        // not (a second later for a lifetime in whole seconds, which may have been cut).
        prop_assert!(received_at <= p.renew_at, "{p:?}");
        match renewal {
            Renewal::Early => prop_assert!(p.renew_at <= p.deadline, "{p:?}"),
            Renewal::AtExpiry => prop_assert_eq!(p.renew_at, expires_at + slack + AT_EXPIRY_GRACE),
        }
        prop_assert_eq!(p.expires_at, expires_at);
        // The token is withdrawn no later than it expires, and strictly before whenever the
        // margin is not zero (a configured zero, or a lifetime of a few nanoseconds).
        prop_assert!(p.deadline <= expires_at, "{p:?}");
        if !hard_margin(lifetime, margin).is_zero() {
            prop_assert!(p.deadline < expires_at, "{p:?}");
        }
        // Every token is usable for at least half its life.
        prop_assert!(p.deadline - received_at >= lifetime / 2, "{p:?}");
    }

    #[test]
    fn default_margin_always_withdraws_a_token_before_it_expires(
        lifetime in (10u64..=u64::try_from(MAX_LIFETIME.as_nanos()).unwrap())
            .prop_map(Duration::from_nanos),
        fraction in any_fraction(),
    ) {
        let t0 = Instant::now();
        for renewal in [Renewal::Early, Renewal::AtExpiry] {
            let p = plan(t0, lifetime, lead(DEFAULT_REFRESH_BEFORE, DEFAULT_JITTER, None), renewal, fraction);
            prop_assert!(p.deadline < t0 + lifetime);
            prop_assert!(t0 + lifetime - p.deadline <= DEFAULT_MAX_MARGIN);
            if renewal == Renewal::AtExpiry {
                prop_assert!(t0 + lifetime - p.deadline <= AT_EXPIRY_MARGIN);
            }
        }
    }

    #[test]
    fn a_token_is_never_renewed_before_three_eighths_of_its_life(
        lifetime in any_lifetime(),
        refresh_before in any_duration(HUGE),
        jitter in any_duration(HUGE),
        margin in prop::option::of(any_duration(HUGE)),
        fraction in any_fraction(),
    ) {
        // No early-renewal storm: whatever the settings and the jitter, the lead is at most half
        // the life plus a quarter of that, so one token buys at least 3/8 of its life before the
        // next login. (A microsecond of slack for the float rounding of the jitter.)
        let t0 = Instant::now();
        let p = plan(t0, lifetime, lead(refresh_before, jitter, margin), Renewal::Early, fraction);
        prop_assert!(
            p.renew_at - t0 + Duration::from_micros(1) >= lifetime * 3 / 8,
            "{p:?} for {lifetime:?}"
        );
    }

    #[test]
    fn without_jitter_a_long_token_renews_exactly_refresh_before_its_expiry(
        refresh_before in (1u64..=3_600).prop_map(Duration::from_secs),
        extra in (0u64..=MAX_LIFETIME.as_secs() / 2).prop_map(Duration::from_secs),
        jitter in any_duration(HUGE),
    ) {
        let lifetime = (refresh_before * 2 + extra).min(MAX_LIFETIME);
        let t0 = Instant::now();
        // A margin no larger than the lead, so that the deadline does not clamp the renewal.
        let margin = Some(refresh_before);
        let p = plan(t0, lifetime, lead(refresh_before, jitter, margin), Renewal::Early, 0.0);
        prop_assert_eq!(p.renew_at, t0 + lifetime - refresh_before);
        prop_assert_eq!(p.deadline, t0 + lifetime - refresh_before);
    }

    #[test]
    fn more_jitter_never_renews_later(
        lifetime in any_lifetime(),
        refresh_before in any_duration(HUGE),
        jitter in any_duration(HUGE),
        margin in prop::option::of(any_duration(HUGE)),
        a in 0.0..=1.0f64,
        b in 0.0..=1.0f64,
    ) {
        let t0 = Instant::now();
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let settings = lead(refresh_before, jitter, margin);
        let early = plan(t0, lifetime, settings, Renewal::Early, high);
        let late = plan(t0, lifetime, settings, Renewal::Early, low);
        prop_assert!(early.renew_at <= late.renew_at);
        prop_assert_eq!(early.deadline, late.deadline, "jitter never moves the deadline");
    }

    #[test]
    fn backoff_stays_within_its_bounds(
        failures in prop_oneof![Just(0u32), Just(1u32), 0u32..64, Just(u32::MAX)],
        kind in any_kind(),
        retry_after in prop::option::of(prop_oneof![
            any_duration(HUGE),
            Just(Duration::MAX),
            any::<u64>().prop_map(Duration::from_secs),
        ]),
        first in any_duration(HUGE),
        interval in any_duration(MAX_SETTING_WAIT),
        max in any_duration(HUGE),
        fraction in any_fraction(),
    ) {
        let wait = backoff(failures, kind, retry_after, first, interval, max, fraction);
        match (kind, retry_after) {
            (ErrorKind::RateLimited, Some(asked)) => {
                // The server's word, capped at an hour, never below our own first retry.
                prop_assert_eq!(wait, asked.min(MAX_RETRY_AFTER).max(first));
            }
            _ if !kind.is_transient() => {
                prop_assert_eq!(wait, max, "a permanent error waits the maximum");
            }
            _ => {
                // Never more than an interval and a tenth: the endpoint is tried again soon
                // after it recovers, however long it was down.
                prop_assert!(wait <= interval + interval / 10, "{wait:?} > {interval:?}");
                if failures > 1 {
                    prop_assert!(wait >= interval, "{wait:?} < {interval:?}");
                } else {
                    prop_assert_eq!(wait, first.min(interval));
                }
            }
        }
    }

    #[test]
    fn next_step_never_spins_fetches_early_or_strands_a_waiter(
        has_plan in any::<bool>(),
        lifetime in any_lifetime(),
        refresh_before in any_duration(HUGE),
        margin in prop::option::of(any_duration(HUGE)),
        renewal in any_renewal(),
        fraction in any_fraction(),
        demand in any::<bool>(),
        backoff_offset in prop::option::of(any_duration(HUGE)),
        due_offset in prop::option::of(any_duration(HUGE)),
        budget_offset in prop::option::of(any_duration(HUGE)),
        now_offset in any_duration(HUGE),
    ) {
        let t0 = Instant::now();
        let plan = has_plan.then(|| {
            plan(t0, lifetime, lead(refresh_before, DEFAULT_JITTER, margin), renewal, fraction)
        });
        let backoff_until = backoff_offset.map(|offset| t0 + offset);
        let due_at = due_offset.map(|offset| t0 + offset);
        let budget_at = budget_offset.map(|offset| t0 + offset);
        let now = t0 + now_offset;
        let view = View { plan, demand, backoff_until, due_at, budget_at };
        let step = next_step(view, now);
        let backing_off = backoff_until.is_some_and(|until| now < until);

        match step {
            Step::Expire => {
                prop_assert!(plan.is_some_and(|p| now >= p.deadline), "{view:?} {step:?}");
            }
            Step::Fetch => {
                // Never while backing off, whoever asks: that is what keeps a failing login
                // endpoint from a storm; never beyond the login budget; never before a login
                // that is due at an expiry.
                prop_assert!(!backing_off, "{view:?} {step:?}");
                prop_assert!(budget_at.is_none_or(|at| now >= at), "{view:?} {step:?}");
                prop_assert!(due_at.is_none_or(|at| now >= at) || plan.is_some(), "{view:?} {step:?}");
                // With a token, never before its renewal instant nor at its deadline.
                if let Some(p) = plan {
                    prop_assert!(now >= p.renew_at && now < p.deadline, "{view:?} {step:?}");
                    prop_assert!(!demand, "a valid token answers waiters without a fetch");
                }
            }
            Step::Answer => {
                prop_assert!(demand, "{view:?} {step:?}");
            }
            Step::Sleep(until) => {
                match until {
                    // A timer in the future: sleeping until now or earlier would spin.
                    Some(at) => prop_assert!(at > now, "{view:?} {step:?}"),
                    // Idle forever only with nothing to renew, expire, answer or log in for.
                    None => prop_assert!(
                        plan.is_none() && !demand && due_at.is_none(),
                        "{view:?} {step:?}"
                    ),
                }
                // Waiters sleep only until a login due at expiry or the budget allows one.
                if demand {
                    let allowed = [due_at, budget_at].into_iter().flatten().max();
                    prop_assert!(allowed.is_some_and(|at| Some(at) == until), "{view:?} {step:?}");
                }
                // The timer never oversleeps the deadline.
                if let (Some(p), Some(at)) = (plan, until) {
                    prop_assert!(at <= p.deadline, "{view:?} {step:?}");
                }
            }
        }
        // A deadline that has passed always comes first.
        if plan.is_some_and(|p| now >= p.deadline) {
            prop_assert_eq!(step, Step::Expire);
        }
        // Without a token, a waiter outside a backoff gets a fetch as soon as it may have one.
        let may = due_at.is_none_or(|at| now >= at) && budget_at.is_none_or(|at| now >= at);
        if plan.is_none() && demand && !backing_off && may {
            prop_assert_eq!(step, Step::Fetch);
        }
    }

    #[test]
    fn a_driver_following_next_step_never_storms_nor_spins(
        lifetime in prop_oneof![
            (1u64..=10).prop_map(Duration::from_secs),
            (1u64..=7_200).prop_map(Duration::from_secs),
        ],
        outcomes in prop::collection::vec(prop::bool::weighted(0.7), 1..40),
        fraction in 0.0..=1.0f64,
    ) {
        // The driver's loop, run over the pure functions alone, with logins that take no time
        // and succeed or fail as `outcomes` says, and no caller asking. After a failure the next
        // login waits at least the first retry, and after two in a row at least the interval;
        // after a success, at least 3/8 of the token's life; and every step makes progress (no
        // step repeats at the same instant forever).
        let t0 = Instant::now();
        let (min, max) = (DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF);
        let settings = lead(DEFAULT_REFRESH_BEFORE, DEFAULT_JITTER, None);
        let new_plan = |at| plan(at, lifetime, settings, Renewal::Early, fraction);
        let mut now = t0;
        let mut current = Some(new_plan(t0));
        let mut backoff_until: Option<Instant> = None;
        let mut in_row = 0u32;
        let mut last_success = Some(t0);
        let mut last_failure: Option<Instant> = None;
        let mut outcomes = outcomes.into_iter();
        let mut finished = false;
        for _ in 0..1_000 {
            let view = View { plan: current, backoff_until, ..View::default() };
            match next_step(view, now) {
                Step::Expire => current = None,
                Step::Answer => prop_assert!(false, "answered with nobody waiting"),
                Step::Sleep(None) => {
                    finished = true;
                    break;
                }
                Step::Sleep(Some(at)) => {
                    prop_assert!(at > now, "a sleep that ends at once spins");
                    now = at;
                }
                Step::Fetch => {
                    if let Some(failed) = last_failure {
                        let floor = if in_row > 1 { min } else { first_retry(min, Some(lifetime)) };
                        prop_assert!(now - failed >= floor, "retry storm at {:?}", now - t0);
                    }
                    if let Some(fetched) = last_success {
                        prop_assert!(
                            now - fetched + Duration::from_micros(1) >= lifetime * 3 / 8,
                            "renewal storm at {:?}",
                            now - t0
                        );
                    }
                    let Some(succeeded) = outcomes.next() else {
                        finished = true;
                        break;
                    };
                    if succeeded {
                        in_row = 0;
                        backoff_until = None;
                        current = Some(new_plan(now));
                        last_success = Some(now);
                        last_failure = None;
                    } else {
                        in_row += 1;
                        let first = first_retry(min, current.map(|_| lifetime));
                        let wait = backoff(in_row, ErrorKind::Server, None, first, min, max, fraction);
                        backoff_until = Some(now + wait);
                        last_failure = Some(now);
                    }
                }
            }
        }
        prop_assert!(finished, "the driver never settled: it spins");
    }
}
