//! A bounded soak, in real time: 200 workers send requests through `BearerAuthLayer` (half over
//! reqwest, half over hyper-util) to the reference server, which issues 1 s tokens, fails 10 % of
//! logins with a 500 and takes 0 to 300 ms per login.
//!
//! It asserts that no request is ever rejected upstream, nothing panics, logins stay single
//! flight and as few as the token lifetime calls for, every error a caller sees is the typed
//! error of a failed login, and that once everything is dropped, no task is left behind.
//!
//! `SOAK_SECS` sets the duration (default 30 s); `SOAK_MIN_BACKOFF_MS`, `SOAK_FETCH_TIMEOUT_MS`
//! and `SOAK_EXPIRY_MARGIN_MS` override the cache's settings, to try others. See TESTING.md.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Error, ErrorKind, Token, TokenCache, TokenSource,
};

const WORKERS: usize = 200;
const LIFETIME: Duration = Duration::from_secs(1);
const FAILURE_RATE: f64 = 0.1;
const LOGIN_JITTER: Duration = Duration::from_millis(300);
/// With SOAK_MIN_BACKOFF_MS, the maximum backoff is at least this.
const MAX_BACKOFF_FLOOR: Duration = Duration::from_secs(1);

/// A cache setting from the environment's `name`, in milliseconds; `None` (the library's
/// default) when unset or `default`.
fn setting(name: &str) -> Option<Duration> {
    match std::env::var(name) {
        Err(_) => None,
        Ok(value) if value == "default" => None,
        Ok(value) => Some(Duration::from_millis(value.parse().unwrap_or_else(|_| {
            panic!("{name}: {value:?} is neither a number of milliseconds nor `default`")
        }))),
    }
}

/// Every panic in the process: this binary holds only this test.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A source that counts logins in flight; its `probe` is alive as long as the cache's state is.
struct Probed<S> {
    inner: S,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    _probe: Arc<()>,
}

struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: TokenSource> TokenSource for Probed<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _leave = Leave(Arc::clone(&self.in_flight));
        self.inner.fetch().await
    }
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    /// Requests that failed because no token could be had: the cache's typed error.
    no_token: AtomicU64,
    /// Anything else: a transport error, an unexpected status, an error of another kind.
    unexpected: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_workers_with_one_second_tokens_and_a_flaky_login_never_get_rejected() {
    let duration = Duration::from_secs(
        std::env::var("SOAK_SECS")
            .ok()
            .map_or(30, |s| s.parse().expect("SOAK_SECS: a number of seconds")),
    );
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    let server = ReferenceServer::builder()
        .token_lifetime(LIFETIME)
        .login_failure_rate(FAILURE_RATE)
        .login_delay_jitter(LOGIN_JITTER)
        .seed(0x50a)
        .start()
        .await;
    let probe = Arc::new(());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let source = Probed {
        inner: AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap(),
        in_flight: Arc::clone(&in_flight),
        max_in_flight: Arc::clone(&max_in_flight),
        _probe: Arc::clone(&probe),
    };
    // The library's defaults. With 1 s tokens they renew at half-life, retry a failed renewal
    // after a tenth of the lifetime, and withdraw a token 100 ms before it expires, even while a
    // renewal is still in flight. Each can be overridden for experiments (TESTING.md):
    // SOAK_MIN_BACKOFF_MS, SOAK_FETCH_TIMEOUT_MS, SOAK_EXPIRY_MARGIN_MS.
    let min_backoff = setting("SOAK_MIN_BACKOFF_MS");
    let mut builder = TokenCache::builder(source);
    if let Some(min) = min_backoff {
        builder = builder
            .min_backoff(min)
            .max_backoff(min.max(MAX_BACKOFF_FLOOR));
    }
    if let Some(timeout) = setting("SOAK_FETCH_TIMEOUT_MS") {
        builder = builder.fetch_timeout(timeout);
    }
    if let Some(margin) = setting("SOAK_EXPIRY_MARGIN_MS") {
        builder = builder.expiry_margin(margin);
    }
    let cache = builder.build().unwrap();
    println!("soak: {cache:?}");

    let via_reqwest = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(reqwest::Client::new());
    let via_hyper = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    // Log in before the clock starts, as a service does at start-up (retrying: the login may
    // be one of the 10 % that fail).
    let ready = Instant::now() + Duration::from_secs(10);
    while let Err(error) = cache.token().await {
        assert!(Instant::now() < ready, "no first token: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let totals = Arc::new(Totals::default());
    let url = server.protected_url();
    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let totals = Arc::clone(&totals);
            let mut via_reqwest = via_reqwest.clone();
            let mut via_hyper = via_hyper.clone();
            let url = url.clone();
            let mut rng = fastrand::Rng::with_seed(n as u64);
            tokio::spawn(async move {
                while Instant::now() < end {
                    totals.sent.fetch_add(1, Ordering::Relaxed);
                    let outcome: Result<StatusCode, BoxError> = if n % 2 == 0 {
                        let request =
                            reqwest::Request::new(http::Method::GET, url.parse().unwrap());
                        match via_reqwest.ready().await {
                            Ok(service) => match service.call(request).await {
                                Ok(response) => {
                                    let status = response.status();
                                    response.bytes().await.map(|_| status).map_err(Into::into)
                                }
                                Err(error) => Err(error),
                            },
                            Err(error) => Err(error),
                        }
                    } else {
                        let request = http::Request::get(&url).body(Empty::new()).unwrap();
                        match via_hyper.ready().await {
                            Ok(service) => match service.call(request).await {
                                Ok(response) => {
                                    let status = response.status();
                                    response
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|_| status)
                                        .map_err(Into::into)
                                }
                                Err(error) => Err(error),
                            },
                            Err(error) => Err(error),
                        }
                    };
                    match outcome {
                        Ok(StatusCode::OK) => totals.ok.fetch_add(1, Ordering::Relaxed),
                        Ok(StatusCode::UNAUTHORIZED) => {
                            totals.rejected.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(status) => {
                            totals.unexpected.lock().unwrap().push(format!("{status}"));
                            0
                        }
                        Err(error) => match error.downcast::<Error>() {
                            // The failed login's error, handed to callers during its backoff.
                            Ok(error)
                                if error.kind() == ErrorKind::Server
                                    && error.status()
                                        == Some(StatusCode::INTERNAL_SERVER_ERROR) =>
                            {
                                totals.no_token.fetch_add(1, Ordering::Relaxed)
                            }
                            Ok(error) => {
                                totals.unexpected.lock().unwrap().push(format!("{error:?}"));
                                0
                            }
                            Err(error) => {
                                totals.unexpected.lock().unwrap().push(format!("{error}"));
                                0
                            }
                        },
                    };
                    // A little think time: ~10k requests/s on two cores, not a CPU-bound spin.
                    tokio::time::sleep(Duration::from_millis(rng.u64(5..=15))).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let elapsed = started.elapsed();

    let stats = cache.stats();
    let server_stats = server.stats();
    let injected = server.injected_failures();
    let max_logins_at_once = server.max_concurrent_logins();

    // Drop everything that holds the cache: the services and the cache itself, then the
    // server. Every task must end: the driver and its fetch tasks, the clients' connections,
    // the server's.
    drop((via_reqwest, via_hyper, cache));
    drop(server);
    let settle = Instant::now() + Duration::from_secs(10);
    while (metrics.num_alive_tasks() > baseline || Arc::strong_count(&probe) > 1)
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alive_after = metrics.num_alive_tasks();

    let sent = totals.sent.load(Ordering::Relaxed);
    let ok = totals.ok.load(Ordering::Relaxed);
    let rejected = totals.rejected.load(Ordering::Relaxed);
    let no_token = totals.no_token.load(Ordering::Relaxed);
    let unexpected = totals.unexpected.lock().unwrap().clone();
    let secs = elapsed.as_secs_f64();
    let successes = server_stats.logins;
    // The logins the lifetime implies. A token is renewed at 0.375 s to 0.5 s of its life
    // (half its life, up to a quarter of that earlier as jitter), mean 0.4375 s, and the login
    // takes 0 to 300 ms, mean 0.15 s: a new token every 0.5875 s on average when logins
    // succeed; a failure (10 %) adds a backoff of 75 ms to 100 ms and another login.
    let expected = secs / (0.4375 + 0.15);
    // The hard bound: a token is never renewed before 3/8 of its life (the schedule's
    // property), so no run can make more than this many successful logins, whatever the load.
    // A storm, one login per caller or per failure, would be far beyond it.
    let most = (secs / 0.375).ceil() as u64 + 2;
    // A driver that died or stalled would make far fewer: say half the expected rate.
    let fewest = (expected / 2.0) as u64;
    println!(
        "soak: {sent} requests in {secs:.1} s ({:.0}/s) by {WORKERS} workers: {ok} ok, \
         {rejected} rejected upstream, {no_token} without a token (the failed login's 500), \
         {} unexpected",
        sent as f64 / secs,
        unexpected.len(),
    );
    println!(
        "soak: {} login attempts: {successes} tokens and {injected} injected 500s \
         (expected ~{expected:.0} tokens, at most {most}); cache: {stats:?}",
        server_stats.login_attempts
    );
    println!(
        "soak: at most {} login(s) in flight (source), {max_logins_at_once} (server); \
         alive tasks: {baseline} before, {alive_after} after; panics: {}",
        max_in_flight.load(Ordering::SeqCst),
        PANICS.load(Ordering::SeqCst),
    );

    assert_eq!(rejected, 0, "requests were rejected upstream");
    assert_eq!(server_stats.rejections, 0, "the server refused a token");
    assert!(unexpected.is_empty(), "unexpected outcomes: {unexpected:?}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    assert_eq!(
        max_in_flight.load(Ordering::SeqCst),
        1,
        "logins were not single flight"
    );
    assert_eq!(max_logins_at_once, 1, "the server saw two logins at once");
    assert_eq!(
        stats.fetches, server_stats.login_attempts,
        "every fetch is one login"
    );
    assert!(
        (fewest..=most).contains(&successes),
        "{successes} tokens in {secs:.1} s: expected ~{expected:.0}, within {fewest}..={most}"
    );
    // Callers have no token only in the backoff after a failed login whose token already
    // reached its deadline (about 8 % of the requests with these settings): a cache that
    // threw tokens away, or stopped renewing, would fail far more.
    assert!(ok >= sent * 95 / 100, "requests succeed: {ok} of {sent}");
    assert_eq!(ok + no_token, sent);
    assert_eq!(
        Arc::strong_count(&probe),
        1,
        "the cache's state outlived it"
    );
    assert_eq!(
        alive_after, baseline,
        "a task outlived the cache and the server"
    );
}
