//! The fault matrix: every way a login endpoint fails in the field, played by the reference
//! server over loopback on Tokio's paused clock, through `AuthTokenSource`, `TokenCache` and
//! `BearerAuth` around `reqwest::Client`.
//!
//! For each fault, two scenarios:
//!
//! - **During a renewal** ([`renewal_fault_keeps_the_valid_token`]): callers are answered at
//!   once with the valid token while the faulty renewal runs; after it, the cache records the
//!   typed failure, keeps handing out the same token, the protected endpoint accepts it, and a
//!   retry after the backoff renews it.
//! - **Cold** ([`cold_fault_fails_fast`]): with no token to fall back on, the caller gets the
//!   typed error with a useful message within the fetch timeout, and callers during the backoff
//!   get it at once, without a request reaching the protected endpoint.
//!
//! Every test also checks that nothing panicked, not even in a spawned task (a panic hook counts
//! panics on this thread, which runs every task of the test's current-thread runtime).
//!
//! TESTING.md has the matrix as a table.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::time::{Instant, sleep, sleep_until};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::{Failure, ReferenceServer};
use tower_authtoken::{
    AuthTokenSource, BearerAuth, BearerAuthLayer, Error, ErrorKind, Token, TokenCache, TokenSource,
};

use support::{assert_no_panics, count_panics, now_or_never};

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// The server's token lifetime: without jitter, renewed at 50 s, withdrawn at 90 s.
const LIFETIME: Duration = Duration::from_secs(100);
const RENEW_AT: Duration = Duration::from_secs(50);
const DEADLINE: Duration = Duration::from_secs(90);
/// The login's own timeout (`AuthTokenSource::timeout`).
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);
/// The cache's bound on one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first backoff: a retry comes 7.5 s to 10 s after a failure (a quarter off as jitter).
const MIN_BACKOFF: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Panics anywhere on the test's thread

// ---------------------------------------------------------------------------------------------
// The rig: a server, a source, a cache and a layer

/// A source that logs in to the reference server, except that the next `refuse` logins go to a
/// port where nothing listens.
struct Rerouted {
    live: AuthTokenSource,
    dead: AuthTokenSource,
    refuse: Arc<AtomicUsize>,
}

impl TokenSource for Rerouted {
    async fn fetch(&self) -> Result<Token, Error> {
        let refuse = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            self.dead.fetch().await
        } else {
            self.live.fetch().await
        }
    }
}

/// A loopback address where nothing listens.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[derive(Clone, Copy)]
struct Settings {
    source_timeout: Duration,
    fetch_timeout: Duration,
    min_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            source_timeout: SOURCE_TIMEOUT,
            fetch_timeout: FETCH_TIMEOUT,
            min_backoff: MIN_BACKOFF,
        }
    }
}

struct Rig {
    server: ReferenceServer,
    cache: TokenCache,
    service: BearerAuth<reqwest::Client>,
    refuse: Arc<AtomicUsize>,
    settings: Settings,
}

impl Rig {
    async fn start() -> Rig {
        Rig::with(Settings::default()).await
    }

    async fn with(settings: Settings) -> Rig {
        count_panics();
        let server = ReferenceServer::builder()
            .token_lifetime(LIFETIME)
            .start()
            .await;
        let source = |base: &str| {
            AuthTokenSource::builder(base, server.credentials())
                .timeout(settings.source_timeout)
                .build()
                .unwrap()
        };
        let refuse = Arc::new(AtomicUsize::new(0));
        let rerouted = Rerouted {
            live: source(&server.base_url()),
            dead: source(&dead_address()),
            refuse: Arc::clone(&refuse),
        };
        let cache = TokenCache::builder(rerouted)
            .jitter(Duration::ZERO)
            .fetch_timeout(settings.fetch_timeout)
            .min_backoff(settings.min_backoff)
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(cache.clone()))
            .service(reqwest::Client::new());
        Rig {
            server,
            cache,
            service,
            refuse,
            settings,
        }
    }

    fn inject(&self, fault: &Fault) {
        match fault {
            Fault::Refused => {
                self.refuse.fetch_add(1, Ordering::SeqCst);
            }
            Fault::Push(failure) => self.server.push_failure(failure.clone()),
        }
    }

    /// A `GET` of the protected endpoint through the layer: its status, or the layer's error.
    async fn get(&self) -> Result<StatusCode, BoxError> {
        let request = reqwest::Request::new(
            http::Method::GET,
            self.server.protected_url().parse().unwrap(),
        );
        let response = self.service.clone().oneshot(request).await?;
        Ok(response.status())
    }

    /// Asserts that a request through the layer is accepted upstream.
    async fn assert_accepted(&self) {
        let status = self.get().await.expect("the layer had a token to send");
        assert_eq!(status, StatusCode::OK, "the protected endpoint refused it");
    }

    /// The current token, which must be handed out without waiting.
    fn token_at_once(&self) -> Token {
        now_or_never(self.cache.token())
            .expect("a caller waited although a valid token was there")
            .expect("a valid token was there")
    }
}

// ---------------------------------------------------------------------------------------------
// The two scenarios

enum Fault {
    /// Nothing listens where the next login goes.
    Refused,
    /// The reference server answers the next login so.
    Push(Failure),
}

/// What the caller must be told.
#[derive(Clone, Copy, Debug)]
struct Expect {
    kind: ErrorKind,
    /// A part of the error's `Display`, the useful part of the message.
    says: &'static str,
    /// Whether the error names the user (errors of the login itself do).
    names_user: bool,
}

const fn expect(kind: ErrorKind, says: &'static str) -> Expect {
    Expect {
        kind,
        says,
        names_user: true,
    }
}

fn check_error(error: &Error, expected: Expect) {
    assert_eq!(error.kind(), expected.kind, "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(expected.says),
        "the message {message:?} does not say {:?}",
        expected.says
    );
    if expected.names_user {
        assert_eq!(error.user(), Some("alice"), "{error:?}");
    }
}

/// The fault hits the renewal of a valid token: the token is kept, handed out at once, accepted
/// upstream, and renewed by a retry after the backoff.
async fn renewal_fault_keeps_the_valid_token(fault: Fault, expected: Expect) {
    let rig = Rig::start().await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    rig.assert_accepted().await;

    rig.inject(&fault);
    sleep_until(t0 + RENEW_AT + MS).await;
    assert_eq!(rig.cache.stats().fetches, 2, "the renewal has started");
    let during = rig.token_at_once();
    assert_eq!(during.expose_secret(), first.expose_secret());

    // The faulty renewal is over (it takes at most the fetch timeout) and its retry is at least
    // 7.5 s away.
    sleep_until(t0 + RENEW_AT + rig.settings.fetch_timeout + MS).await;
    let stats = rig.cache.stats();
    assert_eq!(stats.fetches, 2, "{stats:?}");
    assert_eq!(stats.last_error, Some(expected.kind), "{stats:?}");
    assert_eq!(stats.renewals, 0, "{stats:?}");
    let kept = rig.token_at_once();
    assert_eq!(kept.expose_secret(), first.expose_secret());
    assert_eq!(kept.expires_at(), first.expires_at(), "its clock was kept");
    rig.assert_accepted().await;

    // Before the deadline, the retry has renewed it.
    sleep_until(t0 + DEADLINE - SECOND).await;
    let renewed = rig.token_at_once();
    assert_ne!(renewed.expose_secret(), first.expose_secret());
    let stats = rig.cache.stats();
    assert_eq!((stats.renewals, stats.last_error), (1, None), "{stats:?}");
    rig.assert_accepted().await;

    assert_eq!(
        rig.server.rejections(),
        0,
        "a request was rejected upstream"
    );
    assert_no_panics();
}

/// The fault hits a cold cache: the caller gets the typed error within the fetch timeout, and
/// callers during the backoff get it at once; nothing goes upstream without a token.
async fn cold_fault_fails_fast(fault: Fault, expected: Expect) {
    cold_fault_fails_fast_with(Settings::default(), fault, expected).await;
}

async fn cold_fault_fails_fast_with(settings: Settings, fault: Fault, expected: Expect) {
    let rig = Rig::with(settings).await;
    rig.inject(&fault);
    // The driver's fetch timeout and this bound fire at the same instant of the paused clock;
    // a millisecond more lets the driver's answer arrive first.
    let error = tokio::time::timeout(settings.fetch_timeout + MS, rig.cache.token())
        .await
        .expect("the caller hung past the fetch timeout")
        .expect_err("no token can be had");
    check_error(&error, expected);

    // During the backoff, a request through the layer fails at once with the same error.
    let error = now_or_never(rig.get())
        .expect("a caller waited during the backoff")
        .expect_err("no token can be had");
    let error = error
        .downcast::<Error>()
        .expect("the layer's error is the crate's Error");
    check_error(&error, expected);
    assert_eq!(
        rig.cache.stats().fetches,
        1,
        "one login, not one per caller"
    );
    assert_eq!(
        (rig.server.accepted(), rig.server.rejections()),
        (0, 0),
        "a request went upstream without a token"
    );
    assert_no_panics();
}

/// A JSON token response with these fields.
fn token_response(fields: serde_json::Value) -> Failure {
    Failure::Body {
        status: 200,
        content_type: "application/json".into(),
        body: fields.to_string(),
    }
}

/// An RFC 3339 timestamp `secs` seconds from now (negative: in the past).
fn rfc3339_from_now(secs: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs)).to_string()
}

// ---------------------------------------------------------------------------------------------
// The endpoint cannot be reached, or does not answer in time

#[tokio::test(start_paused = true)]
async fn refused_connection_is_a_transport_error_and_keeps_the_token() {
    let expected = expect(ErrorKind::Transport, "could not reach the login endpoint");
    renewal_fault_keeps_the_valid_token(Fault::Refused, expected).await;
    cold_fault_fails_fast(Fault::Refused, expected).await;
}

#[tokio::test(start_paused = true)]
async fn endpoint_that_accepts_and_never_answers_times_out_and_keeps_the_token() {
    let expected = expect(ErrorKind::Timeout, "login timed out");
    renewal_fault_keeps_the_valid_token(Fault::Push(Failure::Hang), expected).await;
    cold_fault_fails_fast(Fault::Push(Failure::Hang), expected).await;
}

#[tokio::test(start_paused = true)]
async fn hung_login_is_cut_by_the_caches_fetch_timeout_when_the_source_has_none_shorter() {
    let settings = Settings {
        source_timeout: Duration::from_secs(3600),
        ..Settings::default()
    };
    let expected = Expect {
        kind: ErrorKind::Timeout,
        says: "no token within the fetch timeout of 5s",
        names_user: false,
    };
    cold_fault_fails_fast_with(settings, Fault::Push(Failure::Hang), expected).await;
}

#[tokio::test(start_paused = true)]
async fn slow_answer_within_the_timeout_renews_while_callers_keep_the_token() {
    let rig = Rig::start().await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    rig.server
        .push_failure(Failure::Delay(SOURCE_TIMEOUT - SECOND));
    sleep_until(t0 + RENEW_AT + SECOND).await;
    // Mid-renewal: callers do not wait for it.
    assert_eq!(rig.token_at_once().expose_secret(), first.expose_secret());
    rig.assert_accepted().await;
    sleep_until(t0 + RENEW_AT + SOURCE_TIMEOUT).await;
    let renewed = rig.token_at_once();
    assert_ne!(renewed.expose_secret(), first.expose_secret());
    let stats = rig.cache.stats();
    assert_eq!(
        (stats.fetches, stats.failures, stats.renewals),
        (2, 0, 1),
        "{stats:?}"
    );
    rig.assert_accepted().await;

    // Cold, the caller simply waits for the slow login, within the fetch timeout.
    let rig = Rig::start().await;
    rig.server
        .push_failure(Failure::Delay(SOURCE_TIMEOUT - SECOND));
    let token = tokio::time::timeout(FETCH_TIMEOUT, rig.cache.token())
        .await
        .expect("the caller hung past the fetch timeout")
        .unwrap();
    assert_eq!(rig.server.issued_tokens(), [token.expose_secret()]);
    assert_eq!(rig.server.rejections(), 0);
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn answer_slower_than_the_timeout_is_a_timeout_and_keeps_the_token() {
    let expected = expect(ErrorKind::Timeout, "login timed out");
    let slow = || Fault::Push(Failure::Delay(SOURCE_TIMEOUT + SECOND));
    renewal_fault_keeps_the_valid_token(slow(), expected).await;
    cold_fault_fails_fast(slow(), expected).await;
}

// ---------------------------------------------------------------------------------------------
// Error statuses

#[tokio::test(start_paused = true)]
async fn burst_of_500s_is_retried_with_backoff_while_the_token_is_kept_then_recovers() {
    let settings = Settings {
        min_backoff: SECOND,
        ..Settings::default()
    };
    let rig = Rig::with(settings).await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    for _ in 0..4 {
        rig.server.push_failure(Failure::Status(500));
    }
    // Four failures are retried after 1 s, then about once a second: the fifth login, by
    // about 55 s, succeeds.
    let mut now = t0 + RENEW_AT;
    while now < t0 + DEADLINE {
        sleep_until(now).await;
        let token = rig.token_at_once();
        if token.expose_secret() == first.expose_secret() {
            rig.assert_accepted().await;
        } else {
            break;
        }
        now += Duration::from_millis(250);
    }
    // At most 1 + 3 × 1.1 s of backoff, and a moment to notice.
    assert!(now <= t0 + RENEW_AT + 5 * SECOND, "no recovery by {now:?}");
    let stats = rig.cache.stats();
    assert_eq!(
        (stats.fetches, stats.failures, stats.renewals),
        (6, 4, 1),
        "{stats:?}"
    );
    assert_eq!(stats.last_error, None);
    assert_eq!(rig.server.login_attempts(), 6, "no storm of retries");
    rig.assert_accepted().await;
    assert_eq!(rig.server.rejections(), 0);

    // Cold: every caller sees the 500 at once during the backoffs, the logins stay few, and
    // the first caller after recovery gets a token.
    let rig = Rig::with(settings).await;
    for _ in 0..4 {
        rig.server.push_failure(Failure::Status(500));
    }
    let started = Instant::now();
    let mut errors = 0;
    let token = loop {
        match rig.cache.token().await {
            Ok(token) => break token,
            Err(error) => {
                check_error(
                    &error,
                    expect(ErrorKind::Server, "login endpoint failed with 500"),
                );
                errors += 1;
            }
        }
        sleep(Duration::from_millis(100)).await;
        assert!(started.elapsed() < 30 * SECOND, "no recovery");
    };
    assert!(
        errors > 30,
        "callers were answered during the backoffs: {errors}"
    );
    assert!(
        started.elapsed() <= 5 * SECOND,
        "served again within an interval of the recovery: {:?}",
        started.elapsed()
    );
    assert_eq!(rig.server.login_attempts(), 5, "four failures, one success");
    assert_eq!(rig.server.issued_tokens(), [token.expose_secret()]);
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn rate_limit_with_retry_after_seconds_is_obeyed_and_keeps_the_token() {
    let limited = || {
        Fault::Push(Failure::RateLimited {
            retry_after: "20".into(),
        })
    };
    let expected = expect(
        ErrorKind::RateLimited,
        "rate limited (429): retry after 20 s",
    );
    renewal_fault_keeps_the_valid_token(limited(), expected).await;
    cold_fault_fails_fast(limited(), expected).await;

    // The retry comes exactly when the server asked, not before.
    let rig = Rig::start().await;
    let t0 = rig.cache.token().await.unwrap().received_at();
    rig.inject(&limited());
    sleep_until(t0 + RENEW_AT + 20 * SECOND - MS).await;
    assert_eq!(rig.server.login_attempts(), 2, "a login before Retry-After");
    sleep_until(t0 + RENEW_AT + 20 * SECOND + MS).await;
    assert_eq!(rig.server.login_attempts(), 3);
    assert_eq!(rig.cache.stats().renewals, 1);
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn rate_limit_with_retry_after_http_date_is_obeyed_and_keeps_the_token() {
    // An HTTP-date 20 s ahead of the wall clock, whole seconds: a wait of 19 s to 20 s.
    let limited = || {
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&at)
            .unwrap();
        Fault::Push(Failure::RateLimited { retry_after: date })
    };
    let expected = expect(ErrorKind::RateLimited, "rate limited (429): retry after");
    renewal_fault_keeps_the_valid_token(limited(), expected).await;
    cold_fault_fails_fast(limited(), expected).await;

    let rig = Rig::start().await;
    let t0 = rig.cache.token().await.unwrap().received_at();
    rig.inject(&limited());
    sleep_until(t0 + RENEW_AT + 18 * SECOND).await;
    assert_eq!(rig.server.login_attempts(), 2, "a login before Retry-After");
    sleep_until(t0 + RENEW_AT + 21 * SECOND).await;
    assert_eq!(rig.server.login_attempts(), 3);
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn service_unavailable_with_an_html_page_is_a_server_error_without_the_html() {
    let page = || {
        Fault::Push(Failure::Body {
            status: 503,
            content_type: "text/html; charset=utf-8".into(),
            body: "<html><head><title>503</title></head><body><h1>Service Unavailable</h1>\
                   <p>The proxy could not reach the upstream.</p></body></html>"
                .into(),
        })
    };
    let expected = expect(ErrorKind::Server, "login endpoint failed with 503");
    renewal_fault_keeps_the_valid_token(page(), expected).await;
    cold_fault_fails_fast(page(), expected).await;

    let rig = Rig::start().await;
    rig.inject(&page());
    let error = rig.cache.token().await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.detail(), None, "an HTML page says nothing useful");
    assert!(!format!("{error} {error:?}").contains("<html"));
}

#[tokio::test(start_paused = true)]
async fn password_rejected_at_renewal_keeps_the_token_to_its_deadline_then_fails_fast() {
    // A permanent error: no retry before the maximum backoff (60 s), so the token is used to
    // its deadline, after which callers get the error at once.
    let rig = Rig::start().await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    rig.server.set_account_expired("alice", true);
    sleep_until(t0 + DEADLINE - MS).await;
    assert_eq!(rig.token_at_once().expose_secret(), first.expose_secret());
    rig.assert_accepted().await;
    assert_eq!(
        rig.cache.stats().last_error,
        Some(ErrorKind::AuthenticationFailed)
    );
    sleep_until(t0 + DEADLINE + MS).await;
    let error = now_or_never(rig.cache.token())
        .expect("no waiting during the backoff")
        .unwrap_err();
    check_error(
        &error,
        expect(ErrorKind::AuthenticationFailed, "authentication failed"),
    );
    assert_eq!(
        rig.server.login_attempts(),
        2,
        "one failed renewal, no storm"
    );
    assert_eq!(rig.server.rejections(), 0);
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Broken bodies

#[tokio::test(start_paused = true)]
async fn malformed_json_is_an_invalid_response_and_keeps_the_token() {
    let expected = expect(ErrorKind::InvalidResponse, "malformed JSON");
    renewal_fault_keeps_the_valid_token(Fault::Push(Failure::MalformedJson), expected).await;
    cold_fault_fails_fast(Fault::Push(Failure::MalformedJson), expected).await;
}

#[tokio::test(start_paused = true)]
async fn body_truncated_by_a_closed_connection_is_a_transport_error_and_keeps_the_token() {
    let expected = expect(
        ErrorKind::Transport,
        "the connection broke while reading the response body",
    );
    renewal_fault_keeps_the_valid_token(Fault::Push(Failure::TruncatedBody), expected).await;
    cold_fault_fails_fast(Fault::Push(Failure::TruncatedBody), expected).await;
}

#[tokio::test(start_paused = true)]
async fn connection_closed_before_any_answer_is_a_transport_error_and_keeps_the_token() {
    let expected = expect(ErrorKind::Transport, "could not reach the login endpoint");
    renewal_fault_keeps_the_valid_token(Fault::Push(Failure::CloseConnection), expected).await;
    cold_fault_fails_fast(Fault::Push(Failure::CloseConnection), expected).await;
}

#[tokio::test(start_paused = true)]
async fn body_over_the_cap_is_an_invalid_response_and_keeps_the_token() {
    let huge = || {
        let padding = "x".repeat(70 * 1024);
        Fault::Push(token_response(
            serde_json::json!({"token": "big-token", "expiresIn": "100", "padding": padding}),
        ))
    };
    let expected = expect(ErrorKind::InvalidResponse, "body larger than 64 KiB");
    renewal_fault_keeps_the_valid_token(huge(), expected).await;
    cold_fault_fails_fast(huge(), expected).await;
}

#[tokio::test(start_paused = true)]
async fn login_page_served_with_200_is_an_invalid_response_and_keeps_the_token() {
    // A captive portal or a misrouted proxy: 200, the wrong content type, and no JSON.
    let portal = || {
        Fault::Push(Failure::Body {
            status: 200,
            content_type: "text/html".into(),
            body: "<!doctype html><form action=/login>Sign in</form>".into(),
        })
    };
    let expected = expect(ErrorKind::InvalidResponse, "the body is not a JSON object");
    renewal_fault_keeps_the_valid_token(portal(), expected).await;
    cold_fault_fails_fast(portal(), expected).await;
}

#[tokio::test(start_paused = true)]
async fn valid_token_json_under_a_wrong_content_type_is_accepted() {
    // The body decides, not the header: a valid token response labelled text/plain is used.
    let rig = Rig::start().await;
    rig.server.register_token("labelled-text-plain", LIFETIME);
    rig.server.push_failure(Failure::Body {
        status: 200,
        content_type: "text/plain".into(),
        body: r#"{"type":"Bearer","token":"labelled-text-plain","expiresIn":"100"}"#.into(),
    });
    let token = rig.cache.token().await.unwrap();
    assert_eq!(token.expose_secret(), "labelled-text-plain");
    rig.assert_accepted().await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Bad tokens

#[tokio::test(start_paused = true)]
async fn response_without_a_token_is_an_invalid_response_and_keeps_the_token() {
    let missing = || Fault::Push(token_response(serde_json::json!({"expiresIn": "100"})));
    let expected = expect(ErrorKind::InvalidResponse, "the response has no token");
    renewal_fault_keeps_the_valid_token(missing(), expected).await;
    cold_fault_fails_fast(missing(), expected).await;
}

#[tokio::test(start_paused = true)]
async fn empty_token_is_an_invalid_response_and_keeps_the_token() {
    let empty = || {
        Fault::Push(token_response(
            serde_json::json!({"token": "", "expiresIn": "100"}),
        ))
    };
    let expected = expect(ErrorKind::InvalidResponse, "the token is empty");
    renewal_fault_keeps_the_valid_token(empty(), expected).await;
    cold_fault_fails_fast(empty(), expected).await;
}

#[tokio::test(start_paused = true)]
async fn token_with_crlf_is_refused_as_header_injection_and_keeps_the_token() {
    let injected = "evil-token-value\r\nX-Injected: yes";
    let crlf = || {
        Fault::Push(token_response(
            serde_json::json!({"token": injected, "expiresIn": "100"}),
        ))
    };
    let expected = expect(
        ErrorKind::InvalidResponse,
        "the token contains a line break (header injection)",
    );
    renewal_fault_keeps_the_valid_token(crlf(), expected).await;
    cold_fault_fails_fast(crlf(), expected).await;

    let rig = Rig::start().await;
    rig.inject(&crlf());
    let error = rig.cache.token().await.unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("evil-token-value"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Bad lifetimes

/// A token response with this `expiresIn`, the other fields as the API sends them.
fn expires_in(value: serde_json::Value) -> Fault {
    Fault::Push(token_response(serde_json::json!({
        "type": "Bearer",
        "token": "lifetime-test-token",
        "expiresIn": value,
    })))
}

#[tokio::test(start_paused = true)]
async fn expires_in_zero_is_an_invalid_response_and_keeps_the_token() {
    let expected = expect(ErrorKind::InvalidResponse, "expiresIn is 0");
    renewal_fault_keeps_the_valid_token(expires_in("0".into()), expected).await;
    // With a fraction, zero is no life at all.
    cold_fault_fails_fast(expires_in("0.0".into()), expected).await;
}

/// `0` in whole seconds is under a second left: the token is at its end, and the server may have
/// another a second later. A cold cache's caller waits for that login rather than fail.
#[tokio::test(start_paused = true)]
async fn expires_in_zero_in_whole_seconds_to_a_cold_cache_is_waited_out() {
    let rig = Rig::with(Settings::default()).await;
    rig.inject(&expires_in(0.into()));
    let asked = Instant::now();
    let token = rig
        .cache
        .token()
        .await
        .expect("the next login serves the caller");
    assert_ne!(token.expose_secret(), "lifetime-test-token");
    let waited = asked.elapsed();
    assert!(
        (SECOND..2 * SECOND).contains(&waited),
        "a second after the answer, and a login: {waited:?}"
    );
    let stats = rig.cache.stats();
    assert_eq!((stats.fetches, stats.failures), (2, 0), "{stats:?}");
    rig.assert_accepted().await;
    assert_no_panics();
}

/// A server that answers every login with a token in its last second is broken, not slow: the
/// one quiet retry a second later gets the same, and the caller gets the typed error then,
/// without a hang or a login storm.
#[tokio::test(start_paused = true)]
async fn expires_in_zero_on_every_login_is_an_invalid_response_after_one_quiet_retry() {
    let rig = Rig::with(Settings::default()).await;
    for _ in 0..10 {
        rig.inject(&expires_in(0.into()));
    }
    let asked = Instant::now();
    let error = rig
        .cache
        .token()
        .await
        .expect_err("no usable token can be had");
    check_error(&error, expect(ErrorKind::InvalidResponse, "expiresIn is 0"));
    assert!(
        asked.elapsed() < 2 * SECOND,
        "one quiet retry, a second later: {:?}",
        asked.elapsed()
    );
    let stats = rig.cache.stats();
    assert_eq!((stats.fetches, stats.failures), (2, 1), "{stats:?}");
    // Callers during the backoff get the error at once, as for any failure.
    let again = now_or_never(rig.cache.token())
        .expect("a caller waited during the backoff")
        .expect_err("still no token");
    check_error(&again, expect(ErrorKind::InvalidResponse, "expiresIn is 0"));
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn negative_expires_in_is_an_invalid_response_and_keeps_the_token() {
    let expected = expect(ErrorKind::InvalidResponse, "expiresIn is negative");
    renewal_fault_keeps_the_valid_token(expires_in("-3600".into()), expected).await;
    cold_fault_fails_fast(expires_in((-1).into()), expected).await;
}

#[tokio::test(start_paused = true)]
async fn non_numeric_expires_in_is_an_invalid_response_and_keeps_the_token() {
    let expected = expect(
        ErrorKind::InvalidResponse,
        "expiresIn is neither a number of seconds nor an ISO 8601 duration",
    );
    renewal_fault_keeps_the_valid_token(expires_in("one hour".into()), expected).await;
    cold_fault_fails_fast(expires_in("3600s!".into()), expected).await;
}

#[tokio::test(start_paused = true)]
async fn ten_year_expires_in_is_an_invalid_response_and_keeps_the_token() {
    let ten_years = 10 * 365 * 24 * 3600;
    let expected = expect(ErrorKind::InvalidResponse, "over a year");
    renewal_fault_keeps_the_valid_token(expires_in(ten_years.to_string().into()), expected).await;
    cold_fault_fails_fast(expires_in(ten_years.into()), expected).await;
}

#[tokio::test(start_paused = true)]
async fn expires_before_issued_is_an_invalid_response_and_keeps_the_token() {
    let backwards = || {
        Fault::Push(token_response(serde_json::json!({
            "token": "backwards-token",
            "expiresIn": "100",
            "issued": rfc3339_from_now(0),
            "expires": rfc3339_from_now(-3600),
        })))
    };
    let expected = expect(ErrorKind::InvalidResponse, "expires is before issued");
    renewal_fault_keeps_the_valid_token(backwards(), expected).await;
    cold_fault_fails_fast(backwards(), expected).await;
}

#[tokio::test(start_paused = true)]
async fn expires_in_the_past_by_a_skewed_server_clock_is_still_used_for_its_lifetime() {
    // The server's clock is a day behind: `issued` and `expires` both lie in our past, an hour
    // apart. Only their difference counts, never our clock against theirs.
    let rig = Rig::start().await;
    rig.server.register_token("skewed-clock-token", LIFETIME);
    rig.server.push_failure(token_response(serde_json::json!({
        "token": "skewed-clock-token",
        "expiresIn": "100",
        "issued": rfc3339_from_now(-86_400),
        "expires": rfc3339_from_now(-86_400 + 3600),
    })));
    let token = rig.cache.token().await.unwrap();
    assert_eq!(
        token.lifetime(),
        LIFETIME,
        "the smallest reading, expiresIn"
    );
    assert!(token.expires().unwrap() < SystemTime::now());
    rig.assert_accepted().await;
    sleep(DEADLINE - SECOND).await;
    assert_ne!(
        rig.token_at_once().expose_secret(),
        "skewed-clock-token",
        "renewed at half its life, like any other"
    );
    rig.assert_accepted().await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// A renewal that renews nothing

#[tokio::test(start_paused = true)]
async fn renewal_returning_the_same_token_with_a_fresh_lifetime_extends_it() {
    // A sliding session: the login answers with the same token, valid 100 s from now.
    let rig = Rig::start().await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    rig.server.push_failure(token_response(serde_json::json!({
        "type": "Bearer",
        "token": first.expose_secret(),
        "expiresIn": "100",
    })));
    sleep_until(t0 + RENEW_AT).await;
    rig.server.register_token(first.expose_secret(), LIFETIME);
    sleep_until(t0 + RENEW_AT + MS).await;
    let stats = rig.cache.stats();
    assert_eq!(stats.fetches, 2, "{stats:?}");
    assert_eq!(
        (stats.failures, stats.last_error),
        (0, None),
        "not an error"
    );
    let kept = rig.token_at_once();
    assert_eq!(kept.expose_secret(), first.expose_secret());
    assert_eq!(kept.expires_at(), t0 + RENEW_AT + LIFETIME, "extended");
    // Past the first deadline (90 s) it is still served, and accepted.
    sleep_until(t0 + LIFETIME - SECOND).await;
    assert_eq!(rig.token_at_once().expose_secret(), first.expose_secret());
    rig.assert_accepted().await;
    assert_eq!(rig.server.login_attempts(), 2, "no spin");
    // And it is renewed early again, half its new life on (at 100 s).
    sleep_until(t0 + LIFETIME + MS).await;
    assert_eq!(rig.server.login_attempts(), 3);
    assert_eq!(rig.server.rejections(), 0);
    assert_no_panics();
}

#[tokio::test(start_paused = true)]
async fn renewal_returning_the_same_token_with_what_is_left_of_its_life_is_kept_to_expiry() {
    // One live token per user: the login answers with the same token and its remaining life.
    let rig = Rig::start().await;
    let first = rig.cache.token().await.unwrap();
    let t0 = first.received_at();
    rig.server.push_failure(token_response(serde_json::json!({
        "type": "Bearer",
        "token": first.expose_secret(),
        "expiresIn": (LIFETIME - RENEW_AT).as_secs().to_string(),
    })));
    sleep_until(t0 + RENEW_AT + MS).await;
    let stats = rig.cache.stats();
    assert_eq!(stats.fetches, 2, "{stats:?}");
    assert_eq!(
        (stats.failures, stats.last_error),
        (0, None),
        "not an error"
    );
    // Served past the usual 90 s deadline, up to a second before it expires, and accepted.
    sleep_until(t0 + LIFETIME - 2 * SECOND).await;
    assert_eq!(rig.token_at_once().expose_secret(), first.expose_secret());
    rig.assert_accepted().await;
    assert_eq!(rig.server.login_attempts(), 2, "no login before the expiry");
    // The next login is at its expiry (and 50 ms of grace), and gets a new token.
    sleep_until(t0 + LIFETIME + 40 * MS).await;
    assert_eq!(rig.server.login_attempts(), 2, "not before the grace");
    sleep_until(t0 + LIFETIME + 60 * MS).await;
    assert_eq!(rig.server.login_attempts(), 3);
    assert_ne!(rig.token_at_once().expose_secret(), first.expose_secret());
    rig.assert_accepted().await;
    assert_eq!(rig.server.rejections(), 0);
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Found while writing the matrix

/// A renewal that hangs past the token's deadline must not keep the token in service.
///
/// The driver takes a token out of service at its deadline only between fetches: while a fetch
/// is in flight it waits for that fetch alone. With the defaults (a 30 s fetch timeout) and a
/// 50 s token (renewed at 25 s, deadline at 45 s, expiry at 50 s), a renewal that hangs keeps
/// the token in the slot until 55 s, so requests go upstream with an expired token and are
/// rejected.
#[tokio::test(start_paused = true)]
async fn hung_renewal_never_serves_the_token_past_its_deadline() {
    let server = ReferenceServer::builder()
        .token_lifetime(50 * SECOND)
        .start()
        .await;
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    let cache = TokenCache::builder(source)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(reqwest::Client::new());
    let first = cache.token().await.unwrap();
    let t0 = first.received_at();
    server.push_failure(Failure::Hang);

    sleep_until(t0 + 45 * SECOND + MS).await;
    let served_past_deadline = cache.current().is_some();
    sleep_until(t0 + 51 * SECOND).await;
    let request = reqwest::Request::new(http::Method::GET, server.protected_url().parse().unwrap());
    let outcome = service.oneshot(request).await.map(|r| r.status());
    assert_eq!(
        server.rejections(),
        0,
        "an expired token went upstream: {outcome:?}"
    );
    assert!(
        !served_past_deadline,
        "the token was handed out past its deadline"
    );
}
