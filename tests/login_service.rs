//! The login over a Tower service: `AuthTokenSource` and `OAuth2ClientCredentials` logging in
//! through hyper-util's client and through layers around it, against the reference server (and a
//! few bytes written straight to a socket where it cannot misbehave in the right way).
//!
//! Where the same answer can reach the source through reqwest and through a Tower service, the
//! tests run both and require the same typed error: one implementation reads every answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_authtoken::testing::{Failure, ReferenceServer, TokenFields};
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, ErrorKind, OAuth2ClientCredentials,
    TokenCache, TokenSource,
};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, Trace, TraceLayer};
use tracing::Level;
use tracing::subscriber::DefaultGuard;

/// hyper-util's legacy client for plain HTTP, the login body sent as `Full<Bytes>`.
fn hyper_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The two ways a login reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The crate's own reqwest client.
    Reqwest,
    /// hyper-util's client, given as a Tower service.
    Hyper,
}

const BOTH: [Via; 2] = [Via::Reqwest, Via::Hyper];

/// A source for `base_url` over `via`, with `timeout`.
fn source_via(
    via: Via,
    base_url: &str,
    credentials: Credentials,
    timeout: Duration,
) -> AuthTokenSource {
    let builder = match via {
        Via::Reqwest => AuthTokenSource::builder(base_url, credentials),
        Via::Hyper => AuthTokenSource::builder_with_service(base_url, credentials, hyper_client()),
    };
    builder.timeout(timeout).build().unwrap()
}

/// What a caller can see of an error: its kind, status, detail and `Retry-After`.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: ErrorKind,
    status: Option<u16>,
    detail: Option<String>,
    retry_after: Option<Duration>,
    user: Option<String>,
}

impl Seen {
    fn of(error: &Error) -> Seen {
        Seen {
            kind: error.kind(),
            status: error.status().map(|s| s.as_u16()),
            detail: error.detail().map(str::to_owned),
            retry_after: error.retry_after(),
            user: error.user().map(str::to_owned),
        }
    }
}

/// A server on `127.0.0.1` that answers every connection's request with `answer`, verbatim,
/// then closes it (or, for `hold`, keeps it open without a word more).
async fn raw_server(answer: Vec<u8>, hold: bool) -> SocketAddr {
    raw_server_counting(answer, hold).await.0
}

/// [`raw_server`], with the number of requests it has read in full.
async fn raw_server_counting(answer: Vec<u8>, hold: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head and the small JSON body of a login.
                while !request.ends_with(b"}") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&answer).await;
                if hold {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, requests)
}

/// A `200` whose chunked body runs far past the 64 KiB cap.
fn endless_chunked_answer() -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                       Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..20 {
        answer.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        answer.extend_from_slice(&[b'x'; 8 * 1024]);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    answer
}

#[tokio::test]
async fn a_login_over_hyper_utils_client_gives_a_token_that_opens_the_api() {
    let server = ReferenceServer::start().await;
    let source = AuthTokenSource::builder_with_service(
        &server.base_url(),
        server.credentials(),
        hyper_client(),
    )
    .build()
    .unwrap();
    let token = source.fetch().await.unwrap();
    assert!(server.accepts(token.expose_secret()));
    assert_eq!(server.logins(), 1);

    // The same client, behind the bearer layer, reaches the protected API with the token.
    let api = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(TokenCache::new(source)))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let request = Request::get(server.protected_url())
        .body(Empty::new())
        .unwrap();
    let response = api.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_layer_around_the_login_sees_exactly_one_request_per_login() {
    let server = ReferenceServer::start().await;
    let seen: Arc<Mutex<Vec<(Method, String, bool)>>> = Arc::default();
    let record = seen.clone();
    let counted = ServiceBuilder::new()
        .map_request(move |request: Request<Full<Bytes>>| {
            record.lock().unwrap().push((
                request.method().clone(),
                request.uri().to_string(),
                request.headers().contains_key(header::AUTHORIZATION),
            ));
            request
        })
        .service(hyper_client());
    let source =
        AuthTokenSource::builder_with_service(&server.base_url(), server.credentials(), counted)
            .build()
            .unwrap();
    source.fetch().await.unwrap();
    source.fetch().await.unwrap();
    // A failed login is one request too: the source never retries on its own.
    server.push_failure(Failure::Status(503));
    assert_eq!(source.fetch().await.unwrap_err().kind(), ErrorKind::Server);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(server.login_attempts(), 3);
    let url = format!("{}/authtoken", server.base_url());
    for (method, uri, authorization) in seen.iter() {
        assert_eq!(method, Method::POST);
        assert_eq!(uri, &url);
        assert!(!authorization, "a login carries no Authorization header");
    }
}

/// A tracing subscriber that writes every event and span at `TRACE` into `buffer`.
fn capture_into(buffer: Arc<Mutex<Vec<u8>>>) -> impl tracing::Subscriber + Send + Sync {
    struct Into(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Into {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    tracing_subscriber::fmt()
        .with_max_level(Level::TRACE)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(move || Into(buffer.clone()))
        .finish()
}

/// hyper-util's client in tower-http's `TraceLayer` at its most talkative.
type TracedClient = Trace<
    Client<HttpConnector, Full<Bytes>>,
    SharedClassifier<ServerErrorsAsFailures>,
    DefaultMakeSpan,
    DefaultOnRequest,
    DefaultOnResponse,
>;

/// Starts capturing every span and event at `TRACE` on this thread (until the guard drops), and
/// returns the capture with a [`TracedClient`]: spans and events at `INFO`, with every request
/// and response header.
fn traced_hyper_client() -> (Arc<Mutex<Vec<u8>>>, DefaultGuard, TracedClient) {
    let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
    let guard = tracing::subscriber::set_default(capture_into(buffer.clone()));
    let trace = TraceLayer::new_for_http()
        .make_span_with(
            DefaultMakeSpan::new()
                .level(Level::INFO)
                .include_headers(true),
        )
        .on_request(DefaultOnRequest::new().level(Level::INFO))
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .include_headers(true),
        );
    let client = ServiceBuilder::new().layer(trace).service(hyper_client());
    (buffer, guard, client)
}

#[tokio::test]
async fn a_trace_layer_around_the_login_never_logs_the_password_or_the_token() {
    const PASSWORD: &str = "Trace-Me-Not-P4ssw0rd-91c2";
    let server = ReferenceServer::builder()
        .user("alice", PASSWORD)
        .start()
        .await;
    let (buffer, _guard, traced) = traced_hyper_client();
    let source = AuthTokenSource::builder_with_service(
        &server.base_url(),
        Credentials::new("alice", PASSWORD),
        traced,
    )
    .build()
    .unwrap();
    let token = source.fetch().await.unwrap();
    // A refused login too, whose message the server makes from the request.
    server.push_failure(Failure::Status(401));
    source.fetch().await.unwrap_err();

    let output = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    // The capture works: the trace layer's span and the crate's own login event are there.
    assert!(output.contains("/authtoken"), "{output}");
    assert!(output.contains("status=200"), "{output}");
    assert!(output.contains("login succeeded"), "{output}");
    assert!(output.contains("login failed"), "{output}");
    assert!(
        !output.contains(PASSWORD),
        "the password was logged:\n{output}"
    );
    assert!(
        !output.contains(token.expose_secret()),
        "the token was logged:\n{output}"
    );
}

#[tokio::test]
async fn every_failure_gives_the_same_typed_error_over_reqwest_and_a_tower_service() {
    let oversized = "x".repeat(70 * 1024);
    let cases = [
        (Failure::Status(400), ErrorKind::InvalidGrant),
        (Failure::Status(401), ErrorKind::AuthenticationFailed),
        (Failure::Status(403), ErrorKind::Forbidden),
        (Failure::Status(404), ErrorKind::UnknownUser),
        (Failure::Status(500), ErrorKind::Server),
        (Failure::Status(503), ErrorKind::Server),
        (Failure::Status(418), ErrorKind::Server),
        (
            Failure::RateLimited {
                retry_after: "30".into(),
            },
            ErrorKind::RateLimited,
        ),
        (Failure::MalformedJson, ErrorKind::InvalidResponse),
        (Failure::TruncatedBody, ErrorKind::Transport),
        (Failure::CloseConnection, ErrorKind::Transport),
        (
            Failure::Body {
                status: 200,
                content_type: "application/json".into(),
                body: format!(r#"{{"token":"abc","expiresIn":60,"padding":"{oversized}"}}"#),
            },
            ErrorKind::InvalidResponse,
        ),
        (
            Failure::Body {
                status: 404,
                content_type: "text/html".into(),
                body: "<html><h1>Not Found</h1></html>".into(),
            },
            ErrorKind::Config,
        ),
        (
            Failure::Body {
                status: 401,
                content_type: "application/json".into(),
                body: r#"{"message":"bad password wonderland"}"#.into(),
            },
            ErrorKind::AuthenticationFailed,
        ),
    ];
    let server = ReferenceServer::start().await;
    for (failure, kind) in cases {
        let mut seen = Vec::new();
        for via in BOTH {
            server.push_failure(failure.clone());
            let source = source_via(
                via,
                &server.base_url(),
                server.credentials(),
                Duration::from_secs(10),
            );
            let error = source.fetch().await.unwrap_err();
            assert!(
                !format!("{error} {error:?}").contains("wonderland"),
                "{error:?}"
            );
            seen.push(Seen::of(&error));
        }
        assert_eq!(seen[0].kind, kind, "{failure:?}: {seen:?}");
        assert_eq!(
            seen[0], seen[1],
            "{failure:?}: reqwest and the Tower service differ"
        );
    }
}

#[tokio::test]
async fn redirects_and_endless_bodies_give_the_same_typed_error_over_both_clients() {
    let redirect = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/authtoken\r\n\
                     Content-Length: 0\r\n\r\n"
        .to_vec();
    for (answer, kind, detail_has) in [
        (
            redirect,
            ErrorKind::Config,
            "answered 307 Temporary Redirect to http://",
        ),
        (
            endless_chunked_answer(),
            ErrorKind::InvalidResponse,
            "body larger than 64 KiB",
        ),
    ] {
        let addr = raw_server(answer, false).await;
        let mut seen = Vec::new();
        for via in BOTH {
            let source = source_via(
                via,
                &format!("http://{addr}"),
                Credentials::new("alice", "pw"),
                Duration::from_secs(10),
            );
            seen.push(Seen::of(&source.fetch().await.unwrap_err()));
        }
        assert_eq!(seen[0].kind, kind, "{seen:?}");
        assert!(
            seen[0].detail.as_deref().unwrap().contains(detail_has),
            "{seen:?}"
        );
        assert_eq!(seen[0], seen[1], "reqwest and the Tower service differ");
    }
}

#[tokio::test]
async fn a_hyper_client_never_follows_a_redirect_so_the_password_stays_home() {
    let target = ReferenceServer::start().await;
    let answer = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: {}/authtoken\r\nContent-Length: 0\r\n\r\n",
        target.base_url()
    );
    let addr = raw_server(answer.into_bytes(), false).await;
    let source = source_via(
        Via::Hyper,
        &format!("http://{addr}"),
        target.credentials(),
        Duration::from_secs(10),
    );
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert_eq!(error.status(), Some(StatusCode::PERMANENT_REDIRECT));
    assert!(
        error
            .detail()
            .unwrap()
            .contains(&format!("to {}/authtoken", target.base_url())),
        "{error:?}"
    );
    assert_eq!(target.login_attempts(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_hung_answer_over_either_client_is_a_timeout_at_the_configured_time() {
    // The head arrives, the body never does: the timeout covers the body read too.
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{";
    let (addr, raw_requests) = raw_server_counting(head.to_vec(), true).await;
    let server = ReferenceServer::start().await;
    for via in BOTH {
        server.push_failure(Failure::Hang);
        for raw in [false, true] {
            let base_url = if raw {
                format!("http://{addr}")
            } else {
                server.base_url()
            };
            let requests = || {
                if raw {
                    raw_requests.load(Ordering::SeqCst) as u64
                } else {
                    server.login_attempts()
                }
            };
            let source = source_via(
                via,
                &base_url,
                server.credentials(),
                Duration::from_millis(300),
            );
            let before = requests();
            let started = tokio::time::Instant::now();
            let fetch = tokio::spawn(async move { source.fetch().await });
            // Real time until the server holds the request, then the paused clock: from there
            // only a timer can end the wait, and the clock jumps straight to it. The client's
            // timer started between `started` and the server's receipt, so it fires within
            // `[started + 300 ms, received + 300 ms]` whatever the machine's load, plus up to
            // the millisecond to which Tokio's timer wheel rounds a deadline up.
            while requests() == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let received = started.elapsed();
            tokio::time::pause();
            let error = fetch.await.unwrap().unwrap_err();
            let elapsed = started.elapsed();
            tokio::time::resume();
            assert_eq!(error.kind(), ErrorKind::Timeout, "{via:?} {base_url}");
            assert_eq!(error.user(), Some("alice"));
            let timeout = Duration::from_millis(300);
            assert!(
                elapsed >= timeout && elapsed <= received + timeout + Duration::from_millis(1),
                "{via:?} {base_url}: timed out after {elapsed:?}, the request held after \
                 {received:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_tower_service_that_never_answers_times_out_on_the_paused_clock() {
    let never = tower::service_fn(|_: Request<Bytes>| {
        std::future::pending::<Result<Response<Full<Bytes>>, std::io::Error>>()
    });
    let source =
        AuthTokenSource::builder_with_service("https://h/api", Credentials::new("a", "b"), never)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
    let started = tokio::time::Instant::now();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn a_tower_service_that_fails_is_a_transient_transport_error_or_a_timeout() {
    for (io_kind, kind) in [
        (std::io::ErrorKind::ConnectionRefused, ErrorKind::Transport),
        (std::io::ErrorKind::Other, ErrorKind::Transport),
        (std::io::ErrorKind::TimedOut, ErrorKind::Timeout),
    ] {
        let failing = tower::service_fn(move |_: Request<Bytes>| async move {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::new(io_kind, "no route"))
        });
        let source = AuthTokenSource::builder_with_service(
            "https://h/api",
            Credentials::new("alice", "s3cret"),
            failing,
        )
        .build()
        .unwrap();
        let error = source.fetch().await.unwrap_err();
        assert_eq!(error.kind(), kind, "{io_kind:?}: {error:?}");
        assert!(error.is_transient());
        assert_eq!(error.user(), Some("alice"));
        assert_eq!(error.status(), None);
        assert!(std::error::Error::source(&error).is_some());
        assert!(!format!("{error} {error:?}").contains("s3cret"));
    }
}

#[tokio::test]
async fn a_tower_service_gets_the_documented_request_with_its_own_body_type() {
    // Whatever the service's body type, it receives the login body as it is.
    let server = ReferenceServer::start().await;
    let bodies: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let record = bodies.clone();
    let client = hyper_client();
    let peek = tower::service_fn(move |request: Request<Bytes>| {
        let (parts, body) = request.into_parts();
        record
            .lock()
            .unwrap()
            .push((parts.headers.clone(), body.clone()));
        client
            .clone()
            .oneshot(Request::from_parts(parts, Full::new(body)))
    });
    let source = AuthTokenSource::builder_with_service(
        &server.base_url(),
        Credentials::new("alice", "wonderland"),
        peek,
    )
    .user_agent("my-app/2.0")
    .build()
    .unwrap();
    source.fetch().await.unwrap();
    let bodies = bodies.lock().unwrap();
    let (headers, body) = &bodies[0];
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"userName": "alice", "password": "wonderland"})
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::ACCEPT], "application/json");
    assert_eq!(headers[header::USER_AGENT], "my-app/2.0");
    assert_eq!(
        server.last_login_headers().unwrap()[header::USER_AGENT],
        "my-app/2.0"
    );
}

#[tokio::test]
async fn the_date_header_anchors_an_expires_without_issued_over_both_clients() {
    // The server's clock is an hour ahead and it sends only `expires`: measured against its
    // `Date`, the token lives an hour; against our clock, two (capped to 5 minutes).
    let server = ReferenceServer::start().await;
    server.set_token_fields(TokenFields::ExpiresOnly);
    server.set_clock_ahead(Duration::from_secs(3600));
    for via in BOTH {
        let source = source_via(
            via,
            &server.base_url(),
            server.credentials(),
            Duration::from_secs(10),
        );
        let lifetime = source.fetch().await.unwrap().lifetime();
        assert!(
            lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3601),
            "{via:?}: {lifetime:?}"
        );
    }
}

#[tokio::test]
async fn the_plain_http_rule_holds_for_a_tower_service() {
    let build = |allow: bool| {
        AuthTokenSource::builder_with_service(
            "http://api.example.com/v1",
            Credentials::new("alice", "pw"),
            hyper_client(),
        )
        .allow_insecure_http(allow)
        .build()
    };
    let error = build(false).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    assert!(
        error
            .detail()
            .unwrap()
            .contains("AuthTokenSourceBuilder::allow_insecure_http(true)")
    );
    assert!(build(true).unwrap().allows_insecure_http());
}

#[tokio::test]
async fn http_service_replaces_the_reqwest_client_and_debug_says_so_without_secrets() {
    let server = ReferenceServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let counted = ServiceBuilder::new()
        .map_request(move |request: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            request
        })
        .service(hyper_client());
    let builder = AuthTokenSource::builder(&server.base_url(), server.credentials())
        .client(reqwest::Client::new())
        .http_service(counted);
    let debug = format!("{builder:?}");
    assert!(debug.contains("custom_client: true"), "{debug}");
    assert!(!debug.contains("wonderland"), "{debug}");
    builder.build().unwrap().fetch().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn oauth2_over_a_traced_hyper_client_gets_a_token_and_logs_no_secret() {
    const SECRET: &str = "OAuth2-Secret-Not-In-Logs-55";
    let server = ReferenceServer::builder()
        .user("svc-client", SECRET)
        .start()
        .await;
    let (buffer, _guard, traced) = traced_hyper_client();
    let source = OAuth2ClientCredentials::builder_with_service(
        &server.oauth2_token_url(),
        "svc-client",
        SECRET,
        traced.clone(),
    )
    .scope("cars:read")
    .build()
    .unwrap();
    let token = source.fetch().await.unwrap();
    assert!(server.accepts(token.expose_secret()));

    // A wrong secret gives the same typed error over both clients.
    let mut seen = Vec::new();
    for via in BOTH {
        let builder = OAuth2ClientCredentials::builder(
            &server.oauth2_token_url(),
            "svc-client",
            "wrong-secret",
        );
        let builder = match via {
            Via::Reqwest => builder,
            Via::Hyper => builder.http_service(traced.clone()),
        };
        seen.push(Seen::of(
            &builder.build().unwrap().fetch().await.unwrap_err(),
        ));
    }
    assert_eq!(seen[0].kind, ErrorKind::AuthenticationFailed, "{seen:?}");
    assert_eq!(seen[0], seen[1]);

    let output = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    assert!(output.contains("/oauth2/token"), "{output}");
    // The Basic header is there, marked sensitive, so its value is not.
    assert!(output.contains("authorization"), "{output}");
    assert!(!output.contains(SECRET), "the secret was logged:\n{output}");
    let basic = base64_of(&format!("svc-client:{SECRET}"));
    assert!(!output.contains(&basic), "the Basic value was logged");
    assert!(
        !output.contains(token.expose_secret()),
        "the token was logged"
    );
}

/// Standard base64, padded.
fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
