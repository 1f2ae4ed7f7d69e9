//! `TokenCache` behaviour, with tokio's paused clock controlling every timer.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};
use tower_authtoken::{ErrorKind, Token, TokenCache, TokenSource};

use support::{Next, ScriptedSource, cache, error, now_or_never};

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn cold_storm_of_ten_thousand_callers_makes_one_fetch() {
    let source = ScriptedSource::new(3600 * SECOND).with_delay(Duration::from_millis(50));
    let cache = cache(&source);
    let started = Instant::now();
    let callers: Vec<_> = (0..10_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    let mut values = std::collections::HashSet::new();
    for caller in callers {
        let token = caller.await.unwrap().unwrap();
        values.insert(token.expose_secret().to_owned());
    }
    assert_eq!(source.fetches(), 1);
    assert_eq!(values.len(), 1, "everyone shares the one token");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "one fetch, not a queue"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_runs_before_expiry_while_callers_keep_the_current_token() {
    let source = ScriptedSource::new(100 * SECOND).with_delay(Duration::from_millis(200));
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    // The lifetime counts from when the login started, 200 ms before the answer.
    let t0 = first.received_at() - Duration::from_millis(200);

    // A 100 s token renews at half its life. While that renewal is in flight, callers get the
    // current token at once: the first poll is ready.
    sleep_until(t0 + 50 * SECOND + Duration::from_millis(100)).await;
    assert_eq!(source.fetches(), 2, "the renewal is in flight");
    let during = now_or_never(cache.token())
        .expect("no caller waits for a renewal while its token is valid")
        .unwrap();
    assert_eq!(during.expose_secret(), first.expose_secret());

    sleep(Duration::from_millis(200)).await;
    let renewed = cache.token().await.unwrap();
    assert_ne!(renewed.expose_secret(), first.expose_secret());
    assert_eq!(source.fetches(), 2);
    assert_eq!(cache.stats().renewals, 1);
    assert!(renewed.expires_at() > Instant::now() + 90 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn no_token_is_handed_out_past_its_hard_margin() {
    let source = ScriptedSource::new(100 * SECOND);
    source.then(Next::Token);
    source.otherwise(Next::Fail(error(ErrorKind::Server)));
    let cache = cache(&source);
    let token = cache.token().await.unwrap();
    let t0 = token.received_at();

    // Every renewal fails; the default margin of a 100 s token is 10 s.
    sleep_until(t0 + 90 * SECOND - Duration::from_millis(1)).await;
    assert_eq!(
        cache.current().unwrap().expose_secret(),
        token.expose_secret()
    );
    sleep_until(t0 + 90 * SECOND).await;
    tokio::task::yield_now().await;
    assert!(
        cache.current().is_none(),
        "the driver's timer took the token out of service at its deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_trigger_leaves_its_fetch_to_the_other_callers() {
    let source = ScriptedSource::new(3600 * SECOND).with_delay(SECOND);
    let cache = cache(&source);

    // The first caller starts the fetch, then gives up.
    let mut trigger = Box::pin(cache.token());
    assert!(now_or_never(trigger.as_mut()).is_none());
    drop(trigger);
    let timed_out = tokio::time::timeout(Duration::from_millis(100), cache.token()).await;
    assert!(timed_out.is_err());

    let started = Instant::now();
    let token = cache.token().await.unwrap();
    assert_eq!(token.expose_secret(), "token-1");
    assert_eq!(source.fetches(), 1, "the fetch was reused, not restarted");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(900),
        "the waiter got the fetch the cancelled caller started"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_keeps_the_valid_token_and_retries_about_once_a_second() {
    let source = ScriptedSource::new(100 * SECOND);
    source.then(Next::Token);
    source.otherwise(Next::Fail(error(ErrorKind::Server)));
    let cache = cache(&source);
    let token = cache.token().await.unwrap();
    let t0 = token.received_at();

    // The renewal starts at 50 s and fails; from then on the endpoint is tried about once a
    // second (1 s to 1.1 s apart), neither a storm nor a growing silence.
    sleep_until(t0 + 80 * SECOND).await;
    let still = cache.token().await.unwrap();
    assert_eq!(still.expose_secret(), token.expose_secret());
    let stats = cache.stats();
    assert!(
        (26..=31).contains(&stats.failures),
        "about one retry a second for 30 s: {stats:?}"
    );
    assert_eq!(stats.last_error, Some(ErrorKind::Server));
}

#[tokio::test(start_paused = true)]
async fn the_error_of_a_failed_fetch_reaches_every_waiter() {
    let source = ScriptedSource::new(3600 * SECOND).with_delay(SECOND);
    source.then(Next::Fail(error(ErrorKind::Server)));
    let cache = cache(&source);
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for waiter in waiters {
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server);
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn wrong_credentials_back_off_so_logins_stay_bounded() {
    let source = ScriptedSource::new(3600 * SECOND);
    source.otherwise(Next::Fail(error(ErrorKind::AuthenticationFailed)));
    let cache = cache(&source);
    // Ten minutes of ten callers a second.
    for _ in 0..600 {
        for _ in 0..10 {
            let err = cache.token().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::AuthenticationFailed);
        }
        sleep(SECOND).await;
    }
    // A permanent error backs off to the 60 s maximum: one login a minute, not 6,000.
    assert!(source.fetches() <= 11, "{} logins", source.fetches());
    assert!(source.fetches() >= 10, "{} logins", source.fetches());
}

#[tokio::test(start_paused = true)]
async fn callers_during_a_backoff_fail_at_once_with_the_last_error() {
    let source = ScriptedSource::new(3600 * SECOND);
    source.then(Next::Fail(error(ErrorKind::Forbidden)));
    let cache = cache(&source);
    assert_eq!(
        cache.token().await.unwrap_err().kind(),
        ErrorKind::Forbidden
    );
    let immediate = now_or_never(cache.token()).expect("no waiting during a backoff");
    assert_eq!(immediate.unwrap_err().kind(), ErrorKind::Forbidden);
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_waits_for_retry_after() {
    let source = ScriptedSource::new(3600 * SECOND);
    source.then(Next::Fail(
        error(ErrorKind::RateLimited).with_retry_after(Some(7 * SECOND)),
    ));
    let cache = cache(&source);
    let t0 = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_after(), Some(7 * SECOND));

    sleep_until(t0 + 7 * SECOND - Duration::from_millis(1)).await;
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(source.fetches(), 1, "no login before Retry-After");

    sleep_until(t0 + 7 * SECOND).await;
    cache.token().await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn fifty_invalidations_of_one_token_cause_one_renewal() {
    let source = ScriptedSource::new(3600 * SECOND).with_delay(Duration::from_millis(10));
    let cache = cache(&source);
    let rejected = cache.token().await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let rejected = rejected.clone();
            tokio::spawn(async move {
                cache.invalidate(&rejected);
                cache.token().await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap();
        assert_ne!(token.expose_secret(), rejected.expose_secret());
    }
    assert_eq!(source.fetches(), 2);
    assert_eq!(cache.stats().invalidations, 1);
    // A late invalidation of the old token changes nothing.
    cache.invalidate(&rejected);
    assert!(cache.current().is_some());
    assert_eq!(cache.stats().invalidations, 1);
}

/// A `401` the spacing of invalidations refuses is not forgotten: the token it rejected is
/// taken out as soon as the spacing allows, not at the next `401` after that. Two revocations
/// in quick succession (the world of `tests/model_keyed.rs` where a request went out 1.6 s
/// after the spacing ended, with a token the server had said it rejects): the second token is
/// out of service 1 s after the first invalidation, with no further `401`.
#[tokio::test(start_paused = true)]
async fn a_401_refused_by_the_spacing_takes_the_token_out_once_the_spacing_allows() {
    let source = ScriptedSource::new(3600 * SECOND).with_delay(Duration::from_millis(200));
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    sleep(60 * SECOND).await;

    // The first revocation: the token had served a minute, so it is taken out at once.
    let invalidated = Instant::now();
    cache.invalidate(&first);
    let second = cache.token().await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(source.fetches(), 2);

    // The second, half a second later: within the 1 s spacing, so refused for now.
    sleep(300 * MS).await;
    cache.invalidate(&second);
    assert_eq!(cache.stats().ignored_invalidations, 1);
    assert_eq!(
        cache.current().map(|t| t.expose_secret().to_owned()),
        Some(second.expose_secret().to_owned()),
        "still in service within the spacing"
    );

    // No more 401s: once the spacing allows, the rejected token is out and a login replaces it.
    sleep_until(invalidated + SECOND + 250 * MS).await;
    assert_eq!(
        cache.stats().invalidations,
        2,
        "taken out when the spacing allowed"
    );
    assert_eq!(source.fetches(), 3);
    let third = cache.token().await.unwrap();
    assert_ne!(third.expose_secret(), second.expose_secret());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_driver() {
    let source = ScriptedSource::new(100 * SECOND);
    let cache = cache(&source);
    let clone = cache.clone();
    cache.token().await.unwrap();
    assert_eq!(source.handles(), 2, "the test's and the cache's");
    drop(cache);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(source.handles(), 2, "a clone is still alive");
    drop(clone);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(source.handles(), 1, "the driver released the cache's state");
    sleep(3600 * SECOND).await;
    assert_eq!(
        source.fetches(),
        1,
        "no renewal after the last handle dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_fetch_fails_with_a_timeout() {
    let source = ScriptedSource::new(3600 * SECOND);
    source.then(Next::Hang);
    let cache = TokenCache::builder(source.clone())
        .fetch_timeout(5 * SECOND)
        .min_backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(t0.elapsed(), 5 * SECOND);
    sleep(SECOND).await;
    cache.token().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_is_an_error_not_a_dead_cache() {
    let source = ScriptedSource::new(3600 * SECOND);
    source.then(Next::Panic);
    let cache = cache(&source);
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Runtime);
    assert!(
        !err.is_transient(),
        "a panicking source does not mend itself"
    );
    // It is treated like a permanent error: the source is not called again for a minute, and
    // callers meanwhile are told when it will be.
    let during = cache.token().await.unwrap_err();
    assert_eq!(during.retry_after(), Some(60 * SECOND));
    sleep(60 * SECOND).await;
    assert_eq!(cache.token().await.unwrap().expose_secret(), "token-2");
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_with_the_same_token_and_a_later_expiry_is_a_sliding_renewal() {
    // `SameToken` comes back with a fresh lifetime: the session was extended.
    let source = ScriptedSource::new(100 * SECOND);
    source.then(Next::Token).then(Next::SameToken);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    let t0 = first.received_at();

    sleep_until(t0 + 50 * SECOND + Duration::from_millis(1)).await;
    assert_eq!(source.fetches(), 2);
    let current = cache.current().unwrap();
    assert_eq!(current.expose_secret(), first.expose_secret());
    assert_eq!(
        current.expires_at(),
        t0 + 150 * SECOND,
        "the extended expiry"
    );
    assert_eq!(cache.stats().failures, 0, "not an error");
    // And it is renewed early again, half its life on.
    sleep_until(t0 + 100 * SECOND + Duration::from_millis(1)).await;
    assert_eq!(source.fetches(), 3);
}

/// A server that keeps one live token per user: a login before it expires returns the same
/// token with what is left of its life.
#[derive(Clone, Default)]
struct OneLiveToken {
    live: Arc<Mutex<Option<(String, Instant)>>>,
    logins: Arc<AtomicUsize>,
}

const ONE_LIVE_LIFETIME: Duration = Duration::from_secs(600);

impl TokenSource for OneLiveToken {
    async fn fetch(&self) -> Result<Token, tower_authtoken::Error> {
        let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        let mut live = self.live.lock().unwrap();
        let (value, expires) = match &*live {
            Some((value, expires)) if now < *expires => (value.clone(), *expires),
            _ => (format!("live-{n}"), now + ONE_LIVE_LIFETIME),
        };
        *live = Some((value.clone(), expires));
        Token::new(value, expires - now)
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_expires_no_later_is_served_to_its_expiry_and_the_next_login_is_at_expiry() {
    let source = OneLiveToken::default();
    let cache = TokenCache::builder(source.clone())
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let first = cache.token().await.unwrap();
    let t0 = first.received_at();
    let logins = || source.logins.load(Ordering::SeqCst);

    // The early renewal at 540 s gets the same token back: the server's answer, not an error.
    sleep_until(t0 + 540 * SECOND + Duration::from_millis(1)).await;
    assert_eq!(logins(), 2);
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.last_error), (0, None));
    // It is served to a second before it expires, not withdrawn at the 10 s margin.
    sleep_until(t0 + 598 * SECOND).await;
    assert_eq!(
        cache.current().map(|t| t.expose_secret().to_owned()),
        Some("live-1".to_owned())
    );
    assert_eq!(logins(), 2, "no login storm before expiry");
    // In the last second callers wait for the login at expiry rather than fail.
    sleep_until(t0 + 599 * SECOND + Duration::from_millis(500)).await;
    assert!(cache.current().is_none());
    let waited = Instant::now();
    let next = cache.token().await.unwrap();
    assert_eq!(next.expose_secret(), "live-3");
    assert_eq!(
        waited.elapsed(),
        Duration::from_millis(550),
        "to the expiry, and 50 ms for the server's clock to agree"
    );
    // From then on the cache logs in at each expiry only: one login per lifetime.
    sleep_until(t0 + 600 * SECOND + 3 * ONE_LIVE_LIFETIME + SECOND).await;
    assert_eq!(logins(), 3 + 3);
    assert_eq!(cache.stats().failures, 0);
}

/// A server that keeps one live token per user, as [`OneLiveToken`], living 600.5 s, and writes
/// `expiresIn` as whole seconds rounded down: `"600"` for a new token, and for the live one what
/// is left of it, so that in its last second it says `"0"`. Logins take 100 ms; the token is
/// decided halfway.
#[derive(Clone, Default)]
struct WholeSecondsOneLive {
    live: Arc<Mutex<Option<(String, Instant)>>>,
    logins: Arc<AtomicUsize>,
    in_last_second: Arc<AtomicUsize>,
}

impl TokenSource for WholeSecondsOneLive {
    async fn fetch(&self) -> Result<Token, tower_authtoken::Error> {
        sleep(50 * MS).await;
        let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        let body = {
            let mut live = self.live.lock().unwrap();
            let (value, expires) = match &*live {
                Some((value, expires)) if now < *expires => (value.clone(), *expires),
                _ => (format!("live-{n}"), now + 600 * SECOND + 500 * MS),
            };
            *live = Some((value.clone(), expires));
            let left = (expires - now).as_secs();
            if left == 0 {
                self.in_last_second.fetch_add(1, Ordering::SeqCst);
            }
            format!(r#"{{"token":"{value}","expiresIn":"{left}"}}"#)
        };
        sleep(50 * MS).await;
        Token::from_response_body(body.as_bytes(), Duration::from_secs(300))
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_cutting_lifetimes_to_whole_seconds_is_learned_once_and_never_fails_a_caller() {
    let source = WholeSecondsOneLive::default();
    let cache = TokenCache::builder(source.clone())
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    // A caller every 100 ms for ten lifetimes, each timing its wait on the paused clock.
    let start = Instant::now();
    let (mut errors, mut longest) = (Vec::new(), Duration::ZERO);
    while start.elapsed() < 6000 * SECOND {
        let asked = Instant::now();
        if let Err(error) = cache.token().await {
            errors.push((asked - start, error));
        }
        longest = longest.max(asked.elapsed());
        sleep(100 * MS).await;
    }
    let logins = source.logins.load(Ordering::SeqCst);
    let in_last_second = source.in_last_second.load(Ordering::SeqCst);
    println!(
        "logins {logins}, in a token's last second {in_last_second}, longest wait {longest:?}"
    );
    assert!(errors.is_empty(), "{errors:?}");
    // The renewal at 540 s finds the token with 60.5 s left, written "60": the login at that
    // expiry comes 0.45 s early and finds it in its last second ("0"). That answer teaches the
    // cache that the server cuts lifetimes; every later login at an expiry waits for the second
    // (without that, each of the nine later ones is early too).
    assert_eq!(in_last_second, 1, "the cut is learned once");
    assert_eq!(
        cache.stats().failures,
        0,
        "a token in its last second is no failure"
    );
    // The cold login, the renewal that finds out the server's way, the early one, then one per
    // lifetime: 10 lifetimes of 600.5 s.
    assert!(logins <= 3 + 10, "{logins} logins");
    // At the boundary that teaches it: to the expiry read (950 ms + 50 ms), the login that finds
    // the token in its last second (100 ms), a second and 50 ms, the login (100 ms); later ones
    // wait for at most the second the cut hides instead.
    assert!(longest <= 2300 * MS, "{longest:?}");
}

#[test]
fn using_a_cache_outside_a_runtime_is_a_clear_error() {
    let source = ScriptedSource::new(3600 * SECOND);
    let cache = cache(&source);
    let err = now_or_never(cache.token())
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Runtime);
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    // And it works lazily once inside one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { cache.token().await.unwrap() });
    assert_eq!(source.fetches(), 1);
}

#[test]
fn a_runtime_shutdown_keeps_the_token_which_the_readers_own_clock_guards() {
    let source = ScriptedSource::new(3600 * SECOND);
    let cache = cache(&source);
    let first_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = first_runtime.block_on(cache.token()).unwrap();
    drop(first_runtime);
    // The driver is gone with its runtime, but the token is not: readers check its deadline
    // themselves, so it needs no timer to be safe.
    assert_eq!(
        cache.current().map(|t| t.expose_secret().to_owned()),
        Some(token.expose_secret().to_owned())
    );
    let second_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let again = second_runtime.block_on(cache.token()).unwrap();
    assert_eq!(again.expose_secret(), token.expose_secret(), "nothing lost");
    assert_eq!(source.fetches(), 1);
}

#[test]
fn builder_checks_its_inputs() {
    let source = ScriptedSource::new(SECOND);
    let err = TokenCache::builder(source.clone())
        .fetch_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = TokenCache::builder(source)
        .min_backoff(10 * SECOND)
        .max_backoff(SECOND)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// A login right after a `401` gets a fresh token expiring a moment after the rejected one; that
/// is no sign of a server that replaces tokens only at expiry, and renewals stay early.
#[tokio::test(start_paused = true)]
async fn a_quick_login_after_a_401_does_not_switch_renewals_to_expiry() {
    let source = ScriptedSource::new(600 * SECOND);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    sleep(Duration::from_millis(2)).await;
    cache.invalidate(&first);
    let second = cache.token().await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(source.fetches(), 2);
    // The lead is 60 s: renewed 540 s into the second token's life, not at its expiry.
    sleep(545 * SECOND).await;
    assert_eq!(source.fetches(), 3, "renewed early");
    let third = now_or_never(cache.token()).expect("no wait").unwrap();
    assert_ne!(third.expose_secret(), second.expose_secret());
}
