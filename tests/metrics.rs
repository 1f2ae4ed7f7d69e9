//! The `metrics` feature, read back through `metrics-util`'s `DebuggingRecorder`.
//!
//! Each test installs its own recorder for its thread (`set_default_local_recorder`) and runs on
//! a current-thread runtime, so the cache's background task, the login and the reference server
//! all record into it, and tests running in parallel never see each other's metrics.
//!
//! The recorder's snapshot drains what it reports (counters and gauges read as zero afterwards),
//! so each test reads its metrics once, at the end.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_authtoken::metrics as names;
use tower_authtoken::testing::{Outage, ReferenceServer};
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, ErrorKind, Token, TokenCache, TokenSource,
};

/// One metric series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// What the recorder holds, read once.
struct Recorded {
    values: BTreeMap<Series, DebugValue>,
    described: BTreeMap<String, bool>,
}

impl Recorded {
    fn read(snapshotter: &Snapshotter) -> Recorded {
        let mut values = BTreeMap::new();
        let mut described = BTreeMap::new();
        for (key, unit, description, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            described.insert(
                key.name().to_owned(),
                unit.is_some() && description.is_some(),
            );
            values.insert((key.name().to_owned(), labels), value);
        }
        Recorded { values, described }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.values.get(&(name.to_owned(), labels))
    }

    /// A counter's value; 0 if it was never recorded.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name} {labels:?} is not a recorded gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{name} {labels:?} is not a recorded histogram: {other:?}"),
        }
    }

    /// Every metric name, label name and label value recorded.
    fn strings(&self) -> Vec<&str> {
        self.values
            .keys()
            .flat_map(|(name, labels)| {
                std::iter::once(name.as_str())
                    .chain(labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
            })
            .collect()
    }
}

const OK: (&str, &str) = ("outcome", "ok");
const ERROR: (&str, &str) = ("outcome", "error");
const DEFAULT: (&str, &str) = ("cache", "default");

fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

fn cache_for(server: &ReferenceServer) -> TokenCache {
    TokenCache::new(AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap())
}

/// A source that hands out one-hour tokens without a server.
struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new("opaque-fixed-token", Duration::from_secs(3600))
    }
}

#[tokio::test(start_paused = true)]
async fn three_logins_count_three_with_one_latency_sample_each() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(30))
        .login_delay(Duration::from_millis(200))
        .start()
        .await;
    let cache = cache_for(&server);
    cache.token().await.unwrap();
    // A 30 s token is renewed at half its life: two renewals in the next 35 s.
    tokio::time::sleep(Duration::from_secs(35)).await;
    cache.token().await.unwrap();
    assert_eq!(server.logins(), 3);

    let recorded = Recorded::read(&snapshotter);
    assert_eq!(recorded.counter(names::LOGINS, &[DEFAULT, OK]), 3);
    assert_eq!(recorded.counter(names::RENEWALS, &[DEFAULT]), 2);
    let samples = recorded.histogram(names::LOGIN_DURATION, &[DEFAULT, OK]);
    assert_eq!(samples.len(), 3, "{samples:?}");
    for sample in samples {
        // The server's 200 ms login delay, on the paused clock.
        assert!((0.2..0.25).contains(&sample), "{sample}");
    }
}

#[tokio::test(start_paused = true)]
async fn failed_login_is_counted_by_error_kind_and_callers_during_the_backoff_too() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::start().await;
    let source = AuthTokenSource::new(
        &server.base_url(),
        Credentials::new("alice", "not-her-password"),
    )
    .unwrap();
    let cache = TokenCache::new(source);
    let first = cache.token().await.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::AuthenticationFailed);
    // Within the 60 s backoff after a permanent failure: answered at once, no login.
    for _ in 0..2 {
        let again = cache.token().await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::AuthenticationFailed);
    }
    assert_eq!(server.login_attempts(), 1);

    let recorded = Recorded::read(&snapshotter);
    let kind = ("error_kind", "authentication_failed");
    assert_eq!(recorded.counter(names::LOGINS, &[DEFAULT, ERROR, kind]), 1);
    assert_eq!(recorded.counter(names::LOGINS, &[DEFAULT, OK]), 0);
    assert_eq!(
        recorded.counter(names::BACKOFF_ANSWERS, &[DEFAULT, kind]),
        2
    );
    assert_eq!(
        recorded
            .histogram(names::LOGIN_DURATION, &[DEFAULT, ERROR])
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn revoked_token_via_the_layer_counts_one_honoured_and_one_stale_invalidation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::start().await;
    let cache = cache_for(&server);
    let client = BearerAuthLayer::new(cache.clone()).layer(support::reading_client());
    let url = server.protected_url();
    let warm = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);

    server.revoke_all();
    // Both carry the revoked token: the first 401 takes it out, the second finds it gone.
    let (a, b) = tokio::join!(
        client.clone().oneshot(get(&url)),
        client.clone().oneshot(get(&url))
    );
    assert_eq!(a.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(b.unwrap().status(), StatusCode::UNAUTHORIZED);
    let after = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(cache.stats().invalidations, 1);

    let recorded = Recorded::read(&snapshotter);
    let honoured = ("outcome", "honoured");
    let stale = ("outcome", "stale");
    assert_eq!(
        recorded.counter(names::INVALIDATIONS, &[DEFAULT, honoured]),
        1
    );
    assert_eq!(recorded.counter(names::INVALIDATIONS, &[DEFAULT, stale]), 1);
    assert_eq!(recorded.counter(names::LOGINS, &[DEFAULT, OK]), 2);
}

#[tokio::test(start_paused = true)]
async fn api_rejecting_every_token_shows_the_ignored_invalidations() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::start().await;
    let cache = cache_for(&server);
    let client = BearerAuthLayer::new(cache.clone()).layer(support::reading_client());
    let url = server.protected_url();
    server.set_reject_all_tokens(true);
    let mut rejected = 0;
    for _ in 0..20 {
        let response = client.clone().oneshot(get(&url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        rejected += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = cache.stats();
    assert!(stats.ignored_invalidations > 0, "{stats:?}");

    let recorded = Recorded::read(&snapshotter);
    let count = |outcome| recorded.counter(names::INVALIDATIONS, &[DEFAULT, ("outcome", outcome)]);
    assert_eq!(count("ignored"), stats.ignored_invalidations);
    // Every 401 the layer saw is one of the three outcomes.
    assert_eq!(
        count("honoured") + count("ignored") + count("stale"),
        rejected
    );
    // A token is taken out at its 401, or once the spacing allows after an ignored one.
    assert!(count("deferred") > 0, "{stats:?}");
    assert_eq!(count("honoured") + count("deferred"), stats.invalidations);
}

#[tokio::test(start_paused = true)]
async fn request_refused_by_the_plain_http_rule_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let cache = TokenCache::builder(Fixed)
        .metrics_label("inventory")
        .build()
        .unwrap();
    let upstream = service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
    let client = BearerAuthLayer::new(cache).layer(upstream);
    for _ in 0..2 {
        let request = Request::get("http://api.example.com/cars")
            .body(())
            .unwrap();
        let error = client.clone().oneshot(request).await.unwrap_err();
        let error = error.downcast::<Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    }
    let allowed = Request::get("https://api.example.com/cars")
        .body(())
        .unwrap();
    client.clone().oneshot(allowed).await.unwrap();

    let recorded = Recorded::read(&snapshotter);
    let labels = [("cache", "inventory"), ("reason", "insecure_http")];
    assert_eq!(recorded.counter(names::REQUESTS_REFUSED, &labels), 2);
}

/// Seconds since the UNIX epoch, now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn expiry_gauge_holds_the_tokens_expiry_in_unix_seconds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let cache = TokenCache::new(Fixed);
    cache.token().await.unwrap();
    let expiry = Recorded::read(&snapshotter).gauge(names::TOKEN_EXPIRY, &[DEFAULT]);
    // The paused clock stood still during the login, so the token has its whole hour left.
    let left = expiry - unix_now();
    assert!((3598.0..=3600.5).contains(&left), "{left}");
}

#[tokio::test(start_paused = true)]
async fn expiry_gauge_drops_to_zero_when_the_token_is_withdrawn() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(30))
        .start()
        .await;
    let cache = cache_for(&server);
    cache.token().await.unwrap();
    // Every renewal fails, so the token reaches its deadline and is withdrawn.
    server.start_login_outage(Outage::Status(503), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(cache.current().is_none());

    let recorded = Recorded::read(&snapshotter);
    assert_eq!(recorded.gauge(names::TOKEN_EXPIRY, &[DEFAULT]), 0.0);
    let unavailable = ("error_kind", "server");
    assert!(recorded.counter(names::LOGINS, &[DEFAULT, ERROR, unavailable]) > 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_gauge_drops_to_zero_when_a_401_takes_the_token_out() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::start().await;
    let cache = cache_for(&server);
    let token = cache.token().await.unwrap();
    server.start_login_outage(Outage::Status(503), Duration::from_secs(3600));
    cache.invalidate(&token);
    assert!(cache.token().await.is_err());

    let recorded = Recorded::read(&snapshotter);
    assert_eq!(recorded.gauge(names::TOKEN_EXPIRY, &[DEFAULT]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn expiry_gauge_drops_to_zero_when_the_cache_is_dropped() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let cache = TokenCache::new(Fixed);
    cache.token().await.unwrap();
    drop(cache);
    // The background task lets go of the cache at its next step.
    tokio::task::yield_now().await;

    let recorded = Recorded::read(&snapshotter);
    assert_eq!(recorded.gauge(names::TOKEN_EXPIRY, &[DEFAULT]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn metrics_label_tells_two_caches_apart() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = ReferenceServer::start().await;
    let source = || AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    let billing = TokenCache::builder(source())
        .metrics_label("billing")
        .build()
        .unwrap();
    let shipping = TokenCache::builder(source())
        .metrics_label(String::from("shipping"))
        .build()
        .unwrap();
    billing.token().await.unwrap();
    shipping.token().await.unwrap();
    shipping.invalidate(&shipping.current().unwrap());
    shipping.token().await.unwrap();

    let recorded = Recorded::read(&snapshotter);
    assert_eq!(
        recorded.counter(names::LOGINS, &[("cache", "billing"), OK]),
        1
    );
    assert_eq!(
        recorded.counter(names::LOGINS, &[("cache", "shipping"), OK]),
        2
    );
    assert_eq!(recorded.counter(names::LOGINS, &[DEFAULT, OK]), 0);
}

#[tokio::test(start_paused = true)]
async fn labels_never_carry_the_password_the_token_or_the_user_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    tower_authtoken::metrics::describe();

    let (user, password) = ("carol-the-user", "pa55-word-of-carol");
    let server = ReferenceServer::builder()
        .user(user, password)
        .token_lifetime(Duration::from_secs(30))
        .start()
        .await;
    let source = AuthTokenSource::new(&server.base_url(), Credentials::new(user, password));
    let cache = TokenCache::new(source.unwrap());
    // Every metric once: logins that work and fail, renewals, a withdrawal, invalidations,
    // a refusal and a backoff answer.
    let client = BearerAuthLayer::new(cache.clone()).layer(support::reading_client());
    let url = server.protected_url();
    client.clone().oneshot(get(&url)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    server.revoke_all();
    client.clone().oneshot(get(&url)).await.unwrap();
    client.clone().oneshot(get(&url)).await.unwrap();
    server.start_login_outage(Outage::Status(503), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(60)).await;
    // The second caller comes during the backoff after the first one's failed login.
    assert!(cache.token().await.is_err());
    assert!(cache.token().await.is_err());
    let insecure = get("http://api.example.com/cars");
    assert!(client.clone().oneshot(insecure).await.is_err());

    let recorded = Recorded::read(&snapshotter);
    let all = [
        names::LOGINS,
        names::LOGIN_DURATION,
        names::RENEWALS,
        names::INVALIDATIONS,
        names::REQUESTS_REFUSED,
        names::BACKOFF_ANSWERS,
        names::TOKEN_EXPIRY,
    ];
    let seen: Vec<&str> = recorded.described.keys().map(String::as_str).collect();
    let mut expected = all.to_vec();
    expected.sort();
    assert_eq!(seen, expected, "every metric was recorded");
    assert!(
        recorded.described.values().all(|described| *described),
        "describe() gave every metric a unit and a description: {:?}",
        recorded.described
    );

    let tokens = server.issued_tokens();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let strings = recorded.strings();
    for secret in tokens.iter().map(String::as_str).chain([password, user]) {
        for string in &strings {
            assert!(!string.contains(secret), "{string:?} holds {secret:?}");
        }
    }
    for (name, labels) in recorded.values.keys() {
        assert!(name.starts_with("authtoken_"), "{name}");
        assert!(labels.contains(&("cache".to_owned(), "default".to_owned())));
    }
}
