//! `BearerAuthMiddleware` in a `reqwest-middleware` chain, against the reference server:
//! the layer's rules (401 invalidation, replay, plain-HTTP guard, login gate) hold through it,
//! and it composes with `reqwest-retry` and `reqwest-tracing`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Extensions, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_retry::{Jitter, RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
use reqwest_tracing::{SpanBackendWithUrl, TracingMiddleware};
use tower::ServiceExt;
use tower_authtoken::reqwest_middleware::{BearerAuthMiddleware, KeyedBearerAuthMiddleware};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, ErrorKind, KeyedBearerAuthLayer,
    KeyedTokenCache, TokenCache, TokenSource,
};

const SECOND: Duration = Duration::from_secs(1);

/// What the request looked like as it left the chain, attempt by attempt.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Vec<Attempt>>>);

#[derive(Clone, Debug)]
struct Attempt {
    authorization: Option<HeaderValue>,
    /// Whether the marker set by [`Outer`] reached this attempt through the extensions.
    saw_marker: bool,
}

impl Sent {
    fn attempts(&self) -> Vec<Attempt> {
        self.0.lock().unwrap().clone()
    }

    fn headers(&self) -> Vec<String> {
        self.attempts()
            .iter()
            .map(|a| match &a.authorization {
                Some(value) => value.to_str().unwrap().to_owned(),
                None => String::new(),
            })
            .collect()
    }
}

/// The last middleware of a chain: records each attempt, then sends it; with `fail_first`, the
/// first attempt gets a `503` without being sent, as from a load balancer that hiccups once.
struct Transport {
    sent: Sent,
    fail_first: bool,
}

#[derive(Clone, Copy)]
struct Marker;

#[async_trait::async_trait]
impl Middleware for Transport {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let first = {
            let mut attempts = self.sent.0.lock().unwrap();
            attempts.push(Attempt {
                authorization: req.headers().get(AUTHORIZATION).cloned(),
                saw_marker: extensions.get::<Marker>().is_some(),
            });
            attempts.len() == 1
        };
        if self.fail_first && first {
            let mut response = http::Response::new("busy");
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(Response::from(response));
        }
        next.run(req, extensions).await
    }
}

/// The first middleware of a chain: puts a [`Marker`] in the extensions.
struct Outer;

#[async_trait::async_trait]
impl Middleware for Outer {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        extensions.insert(Marker);
        next.run(req, extensions).await
    }
}

fn cache(server: &ReferenceServer) -> TokenCache {
    TokenCache::new(AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap())
}

/// `Outer`, then `auth`, then the recording transport.
fn client<M: Middleware>(auth: M, sent: &Sent) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(Outer)
        .with(auth)
        .with(Transport {
            sent: sent.clone(),
            fail_first: false,
        })
        .build()
}

/// The `tower_authtoken::Error` inside a middleware error.
fn crate_error(error: &reqwest_middleware::Error) -> &Error {
    match error {
        reqwest_middleware::Error::Middleware(error) => error
            .downcast_ref::<Error>()
            .expect("the middleware error downcasts to tower_authtoken::Error"),
        reqwest_middleware::Error::Reqwest(error) => panic!("a reqwest error: {error}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_token_is_injected_as_a_sensitive_bearer_header() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let auth = BearerAuthMiddleware::new(cache(&server));
    let debug = auth.clone();
    let client = client(auth, &sent);
    for _ in 0..3 {
        let response = client.get(server.protected_url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let issued = server.issued_tokens();
    assert_eq!(issued.len(), 1, "one login for three requests");
    let expected = format!("Bearer {}", issued[0]);
    assert_eq!(sent.headers(), [expected.as_str(); 3]);
    assert!(
        sent.attempts()
            .iter()
            .all(|a| a.authorization.as_ref().unwrap().is_sensitive())
    );
    assert_eq!(server.accepted(), 3);
    let debug = format!("{debug:?}");
    assert!(debug.starts_with("BearerAuthMiddleware") && !debug.contains(&issued[0]));
}

#[tokio::test(start_paused = true)]
async fn a_401_invalidates_the_token_and_the_next_request_gets_a_new_one() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let client = client(BearerAuthMiddleware::new(cache(&server)), &sent);
    client.get(server.protected_url()).send().await.unwrap();
    let first = server.issued_tokens()[0].clone();
    server.revoke(&first);

    let rejected = client.get(server.protected_url()).send().await.unwrap();
    assert_eq!(
        rejected.status(),
        StatusCode::UNAUTHORIZED,
        "not replayed by default"
    );
    let accepted = client.get(server.protected_url()).send().await.unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);

    let issued = server.issued_tokens();
    assert_eq!(issued.len(), 2);
    assert_ne!(issued[1], first);
    let headers = sent.headers();
    assert_eq!(headers[1], format!("Bearer {first}"));
    assert_eq!(headers[2], format!("Bearer {}", issued[1]));
}

#[tokio::test(start_paused = true)]
async fn a_get_rejected_after_a_revocation_is_replayed_and_succeeds_with_one_login() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let client = client(
        BearerAuthMiddleware::new(cache(&server)).retry_on_unauthorized(),
        &sent,
    );
    client.get(server.protected_url()).send().await.unwrap();
    server.revoke(&server.issued_tokens()[0]);
    let logins = server.logins();

    let response = client.get(server.protected_url()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.logins(), logins + 1, "one login for the replay");
    assert_eq!(server.stats().rejected.revoked, 1);
    let attempts = sent.attempts();
    assert_eq!(
        attempts.len(),
        3,
        "the warm-up, the rejected GET and its replay"
    );
    assert_ne!(attempts[1].authorization, attempts[2].authorization);
    assert!(
        attempts.iter().all(|a| a.saw_marker),
        "the chain's extensions reach the first attempt and the replay: {attempts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_is_replayed_only_when_any_method_is_opted_in() {
    for (any_method, expected, attempts) in [
        (false, StatusCode::UNAUTHORIZED, 2),
        (true, StatusCode::OK, 3),
    ] {
        let server = ReferenceServer::start().await;
        let auth = BearerAuthMiddleware::new(cache(&server));
        let auth = if any_method {
            auth.retry_on_unauthorized_any_method()
        } else {
            auth.retry_on_unauthorized()
        };
        let sent = Sent::default();
        let client = client(auth, &sent);
        client.get(server.protected_url()).send().await.unwrap();
        server.revoke(&server.issued_tokens()[0]);
        let response = client
            .post(server.protected_url())
            .body("order")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "any_method: {any_method}");
        assert_eq!(sent.attempts().len(), attempts, "any_method: {any_method}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_once_and_not_replayed() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let client = client(
        BearerAuthMiddleware::new(cache(&server)).retry_on_unauthorized_any_method(),
        &sent,
    );
    client.get(server.protected_url()).send().await.unwrap();
    server.revoke(&server.issued_tokens()[0]);

    let streaming = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from_static(
        b"payload",
    )));
    let response = client
        .put(server.protected_url())
        .body(streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sent.attempts().len(), 2, "the warm-up and the one PUT");

    // Its 401 still took the token out of service.
    let response = client.get(server.protected_url()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.logins(), 2);
}

#[tokio::test(start_paused = true)]
async fn plain_http_to_a_remote_host_is_refused_before_sending_with_the_layers_error() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let client = client(BearerAuthMiddleware::new(cache(&server)), &sent);
    let url = "http://api.example.com/cars";

    let error = client.get(url).send().await.unwrap_err();
    let error = crate_error(&error);
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    assert!(sent.attempts().is_empty(), "nothing was sent");
    assert_eq!(server.login_attempts(), 0, "no login either");

    // The Tower layer over the same client refuses with the very same error.
    let layer = BearerAuthLayer::new(cache(&server));
    let from_layer = tower::ServiceBuilder::new()
        .layer(layer)
        .service(reqwest::Client::new())
        .oneshot(Request::new(http::Method::GET, url.parse().unwrap()))
        .await
        .unwrap_err()
        .downcast::<Error>()
        .unwrap();
    assert_eq!(from_layer.kind(), error.kind());
    assert_eq!(from_layer.to_string(), error.to_string());
    assert!(error.to_string().contains("'api.example.com'"));
}

#[tokio::test(start_paused = true)]
async fn a_login_failure_reaches_the_caller_as_a_downcastable_crate_error() {
    let server = ReferenceServer::start().await;
    let wrong = Credentials::new("alice", "not-the-password");
    let source = AuthTokenSource::new(&server.base_url(), wrong.clone()).unwrap();
    let expected = source.fetch().await.unwrap_err().kind();
    let auth = BearerAuthMiddleware::new(TokenCache::new(
        AuthTokenSource::new(&server.base_url(), wrong).unwrap(),
    ));
    let sent = Sent::default();
    let client = client(auth, &sent);

    let error = client.get(server.protected_url()).send().await.unwrap_err();
    assert!(error.is_middleware());
    assert_eq!(crate_error(&error).kind(), expected);
    assert!(!error.to_string().contains("not-the-password"));
    assert!(sent.attempts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn behind_the_retry_a_login_failure_is_not_retried_and_its_crate_error_is_in_a_retry_error() {
    let server = ReferenceServer::start().await;
    let wrong = Credentials::new("alice", "not-the-password");
    let source = AuthTokenSource::new(&server.base_url(), wrong).unwrap();
    let sent = Sent::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(one_slow_retry())
        .with(BearerAuthMiddleware::new(TokenCache::new(source)))
        .with(Transport {
            sent: sent.clone(),
            fail_first: false,
        })
        .build();

    let error = client.get(server.protected_url()).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(outer) = &error else {
        panic!("a middleware error: {error}");
    };
    // RetryTransientMiddleware wraps the errors of the middlewares after it; a cache error is
    // fatal to it, so it comes as `RetryError::Error`.
    let Some(RetryError::Error(inner)) = outer.downcast_ref::<RetryError>() else {
        panic!("a RetryError::Error: {error:?}");
    };
    let found = crate_error(inner);
    assert_eq!(found.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(
        server.login_attempts(),
        1,
        "the retry did not retry the login failure"
    );
    assert!(sent.attempts().is_empty());
}

/// With every token refused, a minute of calls (one a second, each allowed a replay) costs a
/// handful of logins, as with the layer (`tests/model_http.rs` 7), not one per call; and a
/// replay never goes out with the token just rejected.
#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_token_costs_a_handful_of_logins_not_one_per_call() {
    let server = ReferenceServer::builder()
        .reject_all_tokens(true)
        .start()
        .await;
    let sent = Sent::default();
    let client = client(
        BearerAuthMiddleware::new(cache(&server)).retry_on_unauthorized(),
        &sent,
    );
    let calls = 60;
    for _ in 0..calls {
        let response = client.get(server.protected_url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        tokio::time::sleep(SECOND).await;
    }
    let logins = server.login_attempts() as usize;
    assert!(
        (2..=8).contains(&logins),
        "a handful of logins in a minute, and more than one (401s do invalidate): {logins}"
    );
    let replays = sent.attempts().len() - calls;
    println!("{calls} calls over a minute: {logins} logins, {replays} replays");
    assert!(
        replays < logins,
        "each replay carries a token newer than the rejected one: {replays} replays, {logins} logins"
    );
}

/// The retry policy of the composed tests: one retry, after a 20 s backoff.
fn one_slow_retry() -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(20 * SECOND, 20 * SECOND)
        .jitter(Jitter::None)
        .build_with_max_retries(1);
    RetryTransientMiddleware::new_with_policy(policy)
}

/// A 10 s token, and a `503` whose retry waits 20 s: past the first token's expiry.
async fn retry_across_an_expiry(auth_inside_retry: bool) -> (StatusCode, Vec<String>, u64) {
    let server = ReferenceServer::builder()
        .token_lifetime(10 * SECOND)
        .start()
        .await;
    let sent = Sent::default();
    let auth = BearerAuthMiddleware::new(cache(&server));
    let transport = Transport {
        sent: sent.clone(),
        fail_first: true,
    };
    let builder = ClientBuilder::new(reqwest::Client::new());
    let client = if auth_inside_retry {
        builder.with(one_slow_retry()).with(auth)
    } else {
        builder.with(auth).with(one_slow_retry())
    }
    .with(transport)
    .build();
    let response = client.get(server.protected_url()).send().await.unwrap();
    (
        response.status(),
        sent.headers(),
        server.stats().rejected.expired,
    )
}

#[tokio::test(start_paused = true)]
async fn with_the_auth_middleware_inside_the_retry_each_attempt_carries_the_current_token() {
    let (status, headers, expired) = retry_across_an_expiry(true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.len(), 2);
    assert_ne!(
        headers[0], headers[1],
        "the retry went out with the renewed token"
    );
    assert_eq!(expired, 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_auth_middleware_outside_the_retry_a_retry_resends_an_expired_token() {
    let (status, headers, expired) = retry_across_an_expiry(false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.len(), 2);
    assert_eq!(
        headers[0], headers[1],
        "the retry resent the header it was given"
    );
    assert_eq!(expired, 1, "the server refused the expired token");
}

/// A `MakeWriter` that appends everything to one buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every event and span of this test binary from the first call on, at every level, in one
/// buffer. Global, because a subscriber set for one thread misses events whose callsites other
/// test threads registered first (tracing caches each callsite's interest process-wide).
fn captured_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        captured
    })
}

#[tokio::test(start_paused = true)]
async fn composed_with_tracing_and_retry_no_token_or_password_reaches_the_log() {
    let captured = captured_log();
    let server = ReferenceServer::start().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::<SpanBackendWithUrl>::new())
        .with(one_slow_retry())
        .with(BearerAuthMiddleware::new(cache(&server)).retry_on_unauthorized())
        .build();
    // A cold login, a warm request, then a revoked token: invalidation, a login and a replay.
    client.get(server.protected_url()).send().await.unwrap();
    client.get(server.protected_url()).send().await.unwrap();
    server.revoke(&server.issued_tokens()[0]);
    let response = client.get(server.protected_url()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.issued_tokens().len(), 2);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let url = format!("url.full={}", server.protected_url());
    assert!(
        log.contains("HTTP request") && log.contains(&url) && log.contains("replaying"),
        "the log holds this test's request spans and the crate's own events"
    );
    for token in server.issued_tokens() {
        assert!(!log.contains(&token), "a token is in the log");
    }
    let password = "wonderland";
    assert!(!log.contains(password), "the password is in the log");
}

// ---------------------------------------------------------------------------------------------
// Many accounts: `KeyedBearerAuthMiddleware`.

/// The account a request is sent for, as the application tags it on the request builder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Agency(u32);

/// Accounts `1` and `2` are users `agency-N` of `server`; the factory refuses any other.
fn accounts(server: &ReferenceServer) -> KeyedTokenCache<Agency> {
    for account in 1..=2 {
        server.add_user(&format!("agency-{account}"), &format!("pw-{account}"));
    }
    let base_url = server.base_url();
    KeyedTokenCache::builder(move |&Agency(account): &Agency| {
        if !(1..=2).contains(&account) {
            return Err(format!("no agency {account}"));
        }
        let credentials = Credentials::new(format!("agency-{account}"), format!("pw-{account}"));
        AuthTokenSource::new(&base_url, credentials).map_err(|error| error.to_string())
    })
    .build()
    .unwrap()
}

async fn send_for(
    client: &ClientWithMiddleware,
    url: &str,
    account: Option<u32>,
) -> reqwest_middleware::Result<Response> {
    let request = client.get(url);
    match account {
        Some(account) => request.with_extension(Agency(account)).send().await,
        None => request.send().await,
    }
}

/// Each request carries the token of the account set with `with_extension`, marked sensitive;
/// one login per account; `Debug` shows no token.
#[tokio::test(start_paused = true)]
async fn keyed_requests_carry_the_token_of_the_account_set_with_with_extension() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let auth = KeyedBearerAuthMiddleware::new(accounts(&server));
    let debug = auth.clone();
    let client = client(auth, &sent);
    for account in [1, 2, 1, 2] {
        let response = send_for(&client, &server.protected_url(), Some(account)).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let headers = sent.headers();
    assert_ne!(headers[0], headers[1], "each account has its own token");
    assert_eq!(headers[2..], headers[..2]);
    assert!(
        sent.attempts()
            .iter()
            .all(|a| a.authorization.as_ref().unwrap().is_sensitive() && a.saw_marker)
    );
    assert_eq!(server.logins_of("agency-1"), 1);
    assert_eq!(server.logins_of("agency-2"), 1);
    assert_eq!(server.accepted(), 4);
    let debug = format!("{debug:?}");
    assert!(debug.starts_with("KeyedBearerAuthMiddleware"), "{debug}");
    for header in &headers {
        assert!(!debug.contains(header.trim_start_matches("Bearer ")));
    }
}

/// A `401` takes only that account's token out of service, and with `retry_on_unauthorized`
/// the request is replayed with the account's new token; the other account keeps its token.
#[tokio::test(start_paused = true)]
async fn keyed_a_401_renews_only_that_accounts_token_and_the_replay_succeeds() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    // Built from a layer's settings, as `BearerAuthMiddleware` can be.
    let layer = KeyedBearerAuthLayer::new(accounts(&server)).retry_on_unauthorized();
    let client = client(KeyedBearerAuthMiddleware::from(layer), &sent);
    let url = server.protected_url();
    for account in [1, 2] {
        send_for(&client, &url, Some(account)).await.unwrap();
    }
    assert_eq!(server.revoke_user("agency-1"), 1);

    let response = send_for(&client, &url, Some(1)).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "replayed with a new token"
    );
    let response = send_for(&client, &url, Some(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let headers = sent.headers();
    assert_eq!(
        headers.len(),
        5,
        "two warm-ups, the rejected GET, its replay, account 2"
    );
    assert_eq!(
        headers[2], headers[0],
        "the rejected GET carried account 1's old token"
    );
    assert_ne!(headers[3], headers[0], "the replay carries a new one");
    assert_eq!(headers[4], headers[1], "account 2 keeps its token");
    assert_eq!(server.logins_of("agency-1"), 2);
    assert_eq!(server.logins_of("agency-2"), 1);
    assert!(sent.attempts().iter().all(|a| a.saw_marker));
}

/// No account, an account the factory refuses, or plain HTTP to a remote host: the request
/// fails with the crate's error inside `Error::Middleware`, nothing is sent, nobody logs in.
#[tokio::test(start_paused = true)]
async fn keyed_requests_without_an_account_or_refused_fail_before_anything_is_sent() {
    let server = ReferenceServer::start().await;
    let sent = Sent::default();
    let client = client(KeyedBearerAuthMiddleware::new(accounts(&server)), &sent);
    let (local, remote) = (
        server.protected_url(),
        "http://api.example.com/cars".to_owned(),
    );

    let cases = [
        (&local, None, ErrorKind::NoAccount),
        (&local, Some(9), ErrorKind::UnknownAccount),
        (&remote, Some(1), ErrorKind::InsecureTransport),
    ];
    for (url, account, kind) in cases {
        let error = send_for(&client, url, account).await.unwrap_err();
        assert_eq!(crate_error(&error).kind(), kind, "{account:?}: {error}");
    }
    assert!(sent.attempts().is_empty(), "nothing was sent");
    assert_eq!(server.login_attempts(), 0, "no login either");
}
