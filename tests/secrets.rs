//! Secrets never leak: not into `tracing` output at TRACE level (ours, and reqwest's through the
//! `log` bridge; hyper and hyper-util emit nothing in this build), not into `Debug` or `Display`
//! of any public type, not into any error or its sources.
//!
//! The password and every token the server issued are plain ASCII letters, digits, `-`, `_` and
//! `.`, which no `Debug` or JSON escaping changes, so a plain substring search finds any copy.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{sleep, sleep_until};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::{Failure, ReferenceServer, TimestampFormat};
use tower_authtoken::{
    AuthTokenSource, BearerAuth, BearerAuthLayer, Credentials, Error, ErrorKind, Token, TokenCache,
    TokenSource,
};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

const SECOND: Duration = Duration::from_secs(1);
const PASSWORD: &str = "Pa55-w0rd-that-must-never-be-seen";
const WRONG_PASSWORD: &str = "Wr0ng-pa55-also-secret";

/// The tests of this file run one at a time. `tracing` caches, per call site, whether any
/// subscriber is interested; a call site first reached on another thread while the TRACE test
/// installs its subscriber may cache "no one", and its events would be missed. One test at a
/// time, nothing races.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` alone, on a current-thread runtime (with Tokio's clock paused if `paused`).
fn serially<F: Future<Output = ()>>(paused: bool, test: impl FnOnce() -> F) {
    let _alone = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    runtime.block_on(test());
}

/// Everything written by a `fmt` subscriber, shared with the test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Asserts that `text` shows none of `secrets`, naming the one it shows.
fn assert_free_of(text: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert!(!secret.is_empty());
        if let Some(at) = text.find(secret.as_str()) {
            let from = text[..at].rfind('\n').map_or(0, |n| n + 1);
            let to = text[at..].find('\n').map_or(text.len(), |n| at + n);
            panic!(
                "{what} shows the secret {secret:?} in:\n{}",
                &text[from..to]
            );
        }
    }
}

/// The password, the wrong password, and every token the server issued (each JWT also by its
/// random signature alone).
fn secrets_of(server: &ReferenceServer) -> Vec<String> {
    let mut secrets = vec![PASSWORD.to_owned(), WRONG_PASSWORD.to_owned()];
    for token in server.issued_tokens() {
        if let Some((_, signature)) = token.rsplit_once('.') {
            secrets.push(signature.to_owned());
        }
        secrets.push(token);
    }
    secrets
}

// ---------------------------------------------------------------------------------------------
// tracing

/// A full session under a TRACE subscriber that also receives `log` records (reqwest logs
/// through `log`): logins, renewals, a 401 and its invalidation and replay, failed logins
/// (a 500, a 401 whose message echoes the password, a wrong password), over reqwest and
/// hyper-util, and the teardown. Nothing written may contain the password or a token.
#[test]
fn trace_output_of_a_whole_session_never_contains_the_password_or_a_token() {
    serially(true, trace_a_whole_session);
}

async fn trace_a_whole_session() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_target(true)
        .finish();
    // The current-thread runtime runs every task of this test on this thread, so a thread-local
    // default sees them all; `set_default` of `SubscriberInitExt` also bridges `log` records.
    let _guard = subscriber.set_default();

    let server = ReferenceServer::builder()
        .user("alice", PASSWORD)
        .token_lifetime(100 * SECOND)
        .jwt_tokens(true)
        .timestamp_format(TimestampFormat::HttpDate)
        .start()
        .await;
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    let cache = TokenCache::builder(source)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let mut via_reqwest = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()).retry_on_unauthorized())
        .service(reqwest::Client::new());
    let mut via_hyper = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let url = server.protected_url();
    let reqwest_get = |service: &mut BearerAuth<_, _>| {
        let request = reqwest::Request::new(http::Method::GET, url.parse().unwrap());
        service.call(request)
    };
    let hyper_get = |service: &mut BearerAuth<_>| {
        let request = http::Request::get(&url).body(Empty::new()).unwrap();
        service.call(request)
    };

    // A login, over both clients.
    let response = reqwest_get(via_reqwest.ready().await.unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = hyper_get(via_hyper.ready().await.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = cache.current().unwrap();

    // A renewal.
    sleep_until(first.received_at() + 50 * SECOND + SECOND).await;
    assert_eq!(cache.stats().renewals, 1);
    let response = hyper_get(via_hyper.ready().await.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A 401: the token is invalidated, renewed, and the request replayed.
    server.revoke(cache.current().unwrap().expose_secret());
    let response = reqwest_get(via_reqwest.ready().await.unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cache.stats().invalidations, 1);

    // A 401 over hyper, whose renewal fails with a 500, then with a 401 that echoes the
    // password; callers in the backoff get the error. (The renewed token serves for a while
    // first: a 401 right after a renewal would count as part of a storm and be spaced out.)
    sleep(11 * SECOND).await;
    server.push_failure(Failure::Status(500));
    server.push_failure(Failure::Body {
        status: 401,
        content_type: "application/json".into(),
        body: format!(r#"{{"message":"bad password {PASSWORD} for alice"}}"#),
    });
    server.revoke(cache.current().unwrap().expose_secret());
    let response = hyper_get(via_hyper.ready().await.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let error = hyper_get(via_hyper.ready().await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.downcast::<Error>().unwrap().kind(), ErrorKind::Server);
    sleep(2 * SECOND).await;
    let error = reqwest_get(via_reqwest.ready().await.unwrap())
        .await
        .unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(error.detail(), Some("bad password [redacted] for alice"));
    tracing::error!(%error, ?error, "the application logs the error it got");

    // The maximum backoff later, the cache recovers.
    sleep(61 * SECOND).await;
    let response = reqwest_get(via_reqwest.ready().await.unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A login with the wrong password, straight from a source.
    let wrong = AuthTokenSource::new(
        &server.base_url(),
        Credentials::new("alice", WRONG_PASSWORD),
    )
    .unwrap();
    let error = wrong.fetch().await.unwrap_err();
    tracing::error!(%error, ?error, source = ?wrong, "a failed login");

    // The application logs what it holds, as applications do.
    tracing::info!(?cache, stats = ?cache.stats(), token = ?cache.current(), "state");
    tracing::debug!(?via_reqwest, ?via_hyper, ?server, "services");
    drop((via_reqwest, via_hyper, cache));
    sleep(SECOND).await;

    let text = capture.text();
    assert!(server.issued_tokens().len() >= 4, "{:?}", server.stats());
    // The capture saw the session, so that the test can fail.
    for expected in [
        "authtoken.fetch",
        "token fetched",
        "token renewed",
        "token invalidated after the server rejected it",
        "token fetch failed",
        "login failed",
        "authentication_failed",
        "[redacted]",
        // reqwest's own events, through the `log` bridge.
        "starting new connection",
    ] {
        assert!(
            text.contains(expected),
            "the capture lacks {expected:?}:\n{text}"
        );
    }
    assert_free_of(&text, &secrets_of(&server), "the TRACE output");
}

// ---------------------------------------------------------------------------------------------
// Debug and Display

/// `Debug` (plain and alternate) of a value.
fn debug(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}\n{value:#?}")
}

/// `Display`, `Debug` and alternate `Debug` of an error and of each error in its `source` chain.
fn all_of_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        text.push_str(&format!("{error}\n{error:?}\n{error:#?}\n"));
        next = error.source();
    }
    text
}

/// One error of every kind, each made the way a user meets it.
async fn an_error_of_every_kind(server: &ReferenceServer) -> Vec<Error> {
    let source = || {
        AuthTokenSource::builder(&server.base_url(), server.credentials())
            .timeout(SECOND)
            .build()
            .unwrap()
    };
    let echo = |status: u16| Failure::Body {
        status,
        content_type: "text/plain".into(),
        body: format!("you sent {PASSWORD}, which is wrong"),
    };
    let mut errors = Vec::new();
    for failure in [
        echo(400),
        echo(401),
        echo(403),
        // The API's own 404 (an unknown user), echoing the password...
        Failure::Body {
            status: 404,
            content_type: "text/plain".into(),
            body: format!(
                "No user found with username: alice; you sent {PASSWORD}, which is wrong"
            ),
        },
        // ...and a foreign one (a wrong base URL), which is a configuration error.
        echo(404),
        Failure::RateLimited {
            retry_after: "30".into(),
        },
        echo(500),
        Failure::Hang,
        Failure::TruncatedBody,
        Failure::CloseConnection,
        Failure::MalformedJson,
        Failure::Body {
            status: 200,
            content_type: "application/json".into(),
            body: format!(r#"{{"token":"{PASSWORD}\r\nX: y","expiresIn":"60"}}"#),
        },
        Failure::Body {
            status: 200,
            content_type: "application/json".into(),
            body: format!(r#"{{"token":"{PASSWORD}","expiresIn":"-1"}}"#),
        },
    ] {
        server.push_failure(failure);
        errors.push(source().fetch().await.unwrap_err());
    }
    // Config: a password in the URL. InsecureTransport: plain http to a remote host.
    errors.push(
        AuthTokenSource::new(
            &format!("https://alice:{PASSWORD}@api.example.com"),
            server.credentials(),
        )
        .unwrap_err(),
    );
    errors.push(AuthTokenSource::new("http://api.example.com", server.credentials()).unwrap_err());
    // Transport: nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    errors.push(
        AuthTokenSource::new(&dead, server.credentials())
            .unwrap()
            .fetch()
            .await
            .unwrap_err(),
    );
    // Runtime: a cache used outside a runtime, on another thread.
    let outside = TokenCache::new(source());
    let runtime = std::thread::spawn(move || {
        let mut poll = std::pin::pin!(outside.token());
        match poll
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(result) => result.unwrap_err(),
            std::task::Poll::Pending => panic!("outside a runtime, token() fails at once"),
        }
    })
    .join()
    .unwrap();
    errors.push(runtime);
    errors
}

#[test]
fn every_error_and_its_sources_are_free_of_secrets() {
    serially(false, check_every_error);
}

async fn check_every_error() {
    let server = ReferenceServer::builder()
        .user("alice", PASSWORD)
        .start()
        .await;
    // A real token exists, so that an error echoing it would show.
    AuthTokenSource::new(&server.base_url(), server.credentials())
        .unwrap()
        .fetch()
        .await
        .unwrap();
    let errors = an_error_of_every_kind(&server).await;
    let mut kinds: Vec<ErrorKind> = errors.iter().map(Error::kind).collect();
    kinds.sort_by_key(|kind| kind.as_str());
    kinds.dedup();
    assert_eq!(kinds.len(), 12, "every kind but none missing: {kinds:?}");
    let secrets = secrets_of(&server);
    for error in &errors {
        let text = all_of_error(error);
        assert_free_of(&text, &secrets, &format!("{:?} error", error.kind()));
        // Still useful: every message says what happened.
        assert!(error.to_string().len() > 20, "{error}");
    }
    // The echoed password was replaced, not dropped silently.
    let unknown = errors
        .iter()
        .find(|e| e.kind() == ErrorKind::UnknownUser)
        .unwrap();
    assert_eq!(
        unknown.detail(),
        Some("No user found with username: alice; you sent [redacted], which is wrong")
    );
}

#[test]
fn debug_and_display_of_every_public_type_are_free_of_secrets() {
    serially(false, check_every_public_type);
}

async fn check_every_public_type() {
    let server = ReferenceServer::builder()
        .user("alice", PASSWORD)
        .user("bob", WRONG_PASSWORD)
        .start()
        .await;
    let credentials = server.credentials();
    let builder = AuthTokenSource::builder(&server.base_url(), credentials.clone())
        .user_agent("secrets-test/1")
        .timeout(SECOND);
    let mut text = vec![debug(&credentials), debug(&builder)];
    let source = builder.build().unwrap();
    text.push(debug(&source));
    let token = source.fetch().await.unwrap();
    let made = Token::new(format!("made-{PASSWORD}"), 60 * SECOND).unwrap();
    text.extend([
        debug(&token),
        debug(token.header_value()),
        debug(&made),
        debug(made.header_value()),
    ]);

    let cache_builder = TokenCache::builder(source.clone()).jitter(Duration::ZERO);
    text.push(debug(&cache_builder));
    let cache = cache_builder.build().unwrap();
    let held = cache.token().await.unwrap();
    text.extend([debug(&cache), debug(&cache.stats()), debug(&held)]);

    let layer = BearerAuthLayer::new(cache.clone());
    let replaying = layer.clone().retry_on_unauthorized();
    text.extend([debug(&layer), debug(&replaying)]);
    let mut plain = ServiceBuilder::new()
        .layer(layer)
        .service(reqwest::Client::new());
    let mut replay = ServiceBuilder::new()
        .layer(replaying)
        .service(reqwest::Client::new());
    let mut hyper = BearerAuth::new(
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>(),
        cache.clone(),
    );
    text.extend([debug(&plain), debug(&replay), debug(&hyper)]);
    let request =
        || reqwest::Request::new(http::Method::GET, server.protected_url().parse().unwrap());
    // Response futures, in every state they can be seen in.
    let warm = plain.ready().await.unwrap().call(request());
    let retrying = replay.ready().await.unwrap().call(request());
    let via_hyper = hyper.ready().await.unwrap().call(
        http::Request::get(server.protected_url())
            .body(Empty::new())
            .unwrap(),
    );
    text.extend([debug(&warm), debug(&retrying), debug(&via_hyper)]);
    assert_eq!(warm.await.unwrap().status(), 200);
    assert_eq!(retrying.await.unwrap().status(), 200);
    assert_eq!(via_hyper.await.unwrap().status(), 200);
    cache.invalidate(&held);
    let fetching = plain.ready().await.unwrap().call(request());
    text.push(debug(&fetching));
    assert_eq!(fetching.await.unwrap().status(), 200);

    // The testing module.
    let failure = Failure::Delay(SECOND);
    text.extend([
        debug(&server),
        debug(&ReferenceServer::builder().user("carol", PASSWORD)),
        debug(&server.stats()),
        debug(&failure),
        debug(&TimestampFormat::HttpDate),
    ]);
    for kind in [ErrorKind::AuthenticationFailed, ErrorKind::Runtime] {
        text.push(format!("{kind} {kind:?}"));
    }

    let secrets = secrets_of(&server);
    assert!(secrets.len() >= 4, "{secrets:?}");
    let mut secrets = secrets;
    secrets.push(made.expose_secret().to_owned());
    for (i, shown) in text.iter().enumerate() {
        assert!(!shown.is_empty());
        assert_free_of(shown, &secrets, &format!("value #{i}"));
    }
    // And the `Debug` that does show something still says what it is.
    assert!(text.iter().any(|t| t.contains("[redacted]")));
    assert!(text.iter().any(|t| t.contains("Sensitive")));
}

/// A password in the base URL is refused by `build()` without echoing it; the builder's own
/// `Debug`, which a user may log before calling `build()`, must not show it either.
#[test]
fn debug_of_a_source_builder_never_shows_a_password_in_the_base_url() {
    let _alone = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let builder = AuthTokenSource::builder(
        &format!("https://alice:{PASSWORD}@api.example.com/v1"),
        Credentials::new("alice", "elsewhere"),
    );
    let shown = debug(&builder);
    assert!(shown.contains("api.example.com"), "{shown}");
    assert_free_of(
        &shown,
        &[PASSWORD.to_owned()],
        "AuthTokenSourceBuilder's Debug",
    );
    let error = builder.build().unwrap_err();
    assert_free_of(
        &all_of_error(&error),
        &[PASSWORD.to_owned()],
        "the Config error",
    );
}
