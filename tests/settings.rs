//! Settings that cannot panic: every `TokenCacheBuilder` setter, given any `Duration` at all,
//! either makes `build()` fail with `ErrorKind::Config` naming the setting, or gives a cache that
//! works through fetches, renewals, failures, backoffs and invalidations without panicking.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use tower_authtoken::{ErrorKind, LoginBudget, TokenCache, TokenCacheBuilder};

use support::{Next, ScriptedSource, error};

/// Any `Duration`, with the edges (zero, one nanosecond, `MAX`) drawn often.
fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::MAX),
        2 => (0..=u64::MAX).prop_map(Duration::from_secs),
        2 => (0..=10_000_000_000u64).prop_map(Duration::from_nanos),
        2 => (0..=7_200u64).prop_map(Duration::from_secs),
        1 => (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Setter {
    RefreshBefore,
    Jitter,
    ExpiryMargin,
    FetchTimeout,
    MinBackoff,
    MaxBackoff,
    BudgetInterval,
}

impl Setter {
    const ALL: [Setter; 7] = [
        Setter::RefreshBefore,
        Setter::Jitter,
        Setter::ExpiryMargin,
        Setter::FetchTimeout,
        Setter::MinBackoff,
        Setter::MaxBackoff,
        Setter::BudgetInterval,
    ];

    fn name(self) -> &'static str {
        match self {
            Setter::RefreshBefore => "refresh_before",
            Setter::Jitter => "jitter",
            Setter::ExpiryMargin => "expiry_margin",
            Setter::FetchTimeout => "fetch_timeout",
            Setter::MinBackoff => "min_backoff",
            Setter::MaxBackoff => "max_backoff",
            Setter::BudgetInterval => "login_budget",
        }
    }

    fn apply(self, builder: TokenCacheBuilder, value: Duration) -> TokenCacheBuilder {
        match self {
            Setter::RefreshBefore => builder.refresh_before(value),
            Setter::Jitter => builder.jitter(value),
            Setter::ExpiryMargin => builder.expiry_margin(value),
            Setter::FetchTimeout => builder.fetch_timeout(value),
            Setter::MinBackoff => builder.min_backoff(value),
            Setter::MaxBackoff => builder.max_backoff(value),
            Setter::BudgetInterval => builder.login_budget(LoginBudget::new(3, value)),
        }
    }
}

/// Drives a built cache through a cold fetch, a failed renewal and its retries, a successful
/// renewal, an invalidation, and a token's expiry, on the paused clock.
async fn exercise(cache: TokenCache, source: &ScriptedSource) {
    let first = cache.token().await;
    if let Ok(token) = &first {
        cache.invalidate(token);
    }
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = cache.token().await;
        let _ = cache.stats();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = cache.token().await;
    assert!(source.fetches() >= 1, "the cache never fetched");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_duration_for_any_setter_is_refused_by_name_or_works(
        setter in prop::sample::select(Setter::ALL.to_vec()),
        value in any_duration(),
    ) {
        let source = ScriptedSource::new(Duration::from_secs(2));
        source
            .then(Next::Token)
            .then(Next::Fail(error(ErrorKind::Server)))
            .then(Next::Fail(error(ErrorKind::Timeout)));
        let built = setter.apply(TokenCache::builder(source.clone()), value).build();
        match built {
            Err(error) => {
                prop_assert_eq!(error.kind(), ErrorKind::Config);
                prop_assert!(
                    error.to_string().contains(setter.name()),
                    "{} does not name {}", error, setter.name()
                );
            }
            Ok(cache) => runtime().block_on(exercise(cache, &source)),
        }
    }

    #[test]
    fn any_login_budget_burst_is_refused_by_name_or_works(burst in any::<u32>()) {
        let source = ScriptedSource::new(Duration::from_secs(2));
        let built = TokenCache::builder(source.clone())
            .login_budget(LoginBudget::new(burst, Duration::from_millis(100)))
            .build();
        match built {
            Err(error) => {
                prop_assert_eq!(error.kind(), ErrorKind::Config);
                prop_assert!(error.to_string().contains("login_budget"), "{error}");
                prop_assert!(burst == 0 || burst > 1_000_000, "{burst} refused");
            }
            Ok(cache) => runtime().block_on(exercise(cache, &source)),
        }
    }
}

#[test]
fn the_largest_accepted_settings_all_at_once_still_work() {
    let source = ScriptedSource::new(Duration::from_secs(2));
    let hour = Duration::from_secs(3600);
    let year = Duration::from_secs(365 * 24 * 3600);
    let cache = TokenCache::builder(source.clone())
        .refresh_before(year)
        .jitter(hour)
        .expiry_margin(year)
        .fetch_timeout(hour)
        .min_backoff(hour)
        .max_backoff(Duration::from_secs(24 * 3600))
        .login_budget(LoginBudget::new(1_000_000, hour))
        .build()
        .unwrap();
    runtime().block_on(exercise(cache, &source));
}

#[test]
fn each_refusal_names_its_setting() {
    let source = ScriptedSource::new(Duration::from_secs(2));
    for setter in Setter::ALL {
        let error = setter
            .apply(TokenCache::builder(source.clone()), Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(setter.name()), "{error}");
    }
}
