//! `BearerAuth` against in-process inner services.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_authtoken::layer::ReplayBody;
use tower_authtoken::{BearerAuth, BearerAuthLayer, Error, ErrorKind, TokenCache};

use support::{Next, ScriptedSource, cache};

const HOUR: Duration = Duration::from_secs(3600);

/// What the inner service saw.
#[derive(Clone, Default)]
struct Seen {
    headers: Arc<Mutex<Vec<HeaderValue>>>,
    calls: Arc<AtomicUsize>,
}

impl Seen {
    fn last(&self) -> HeaderValue {
        self.headers.lock().unwrap().last().cloned().unwrap()
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// An inner service that records the Authorization header and, with `reject_first_token`,
/// answers `401` to the first token it saw.
fn upstream<B: Send + 'static>(
    seen: Seen,
    reject_first_token: bool,
) -> impl Service<Request<B>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<B>| {
        let seen = seen.clone();
        async move {
            let header = req.headers().get(AUTHORIZATION).cloned().unwrap();
            // Answer a moment later, so that concurrent requests are all in flight at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut headers = seen.headers.lock().unwrap();
            let first = headers.first().cloned().unwrap_or_else(|| header.clone());
            headers.push(header.clone());
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let status = if reject_first_token && header == first {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_header_is_bearer_sensitive_and_replaces_any_existing_value() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), false), cache(&source));
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Basic old"));
    service.oneshot(request).await.unwrap();
    let header = seen.last();
    assert_eq!(header, "Bearer token-1");
    assert!(header.is_sensitive(), "the header must be marked sensitive");
}

#[tokio::test(start_paused = true)]
async fn composes_with_service_builder_and_shares_one_token() {
    let source = ScriptedSource::new(HOUR).with_delay(Duration::from_millis(50));
    let seen = Seen::default();
    let service = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache(&source)))
        .concurrency_limit(64)
        .service(upstream::<()>(seen.clone(), false));
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(source.fetches(), 1);
    assert_eq!(seen.calls(), 200);
    assert!(
        seen.headers
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "Bearer token-1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_http_target_on_a_remote_host_is_refused_before_sending() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), false), cache(&source));
    let request = Request::get("http://api.example.com/cars")
        .body(())
        .unwrap();
    let err = service.clone().oneshot(request).await.unwrap_err();
    let err = err.downcast::<Error>().expect("a tower_authtoken::Error");
    assert_eq!(err.kind(), ErrorKind::InsecureTransport);
    let says = err.to_string();
    for named in [
        "'api.example.com'",
        "TokenCacheBuilder::allow_insecure_http(true)",
        "AuthTokenSourceBuilder::allow_insecure_http(true)",
    ] {
        assert!(says.contains(named), "{says} does not name {named}");
    }
    assert_eq!(seen.calls(), 0, "nothing was sent");

    for allowed in [
        "https://api.example.com/cars",
        "http://127.0.0.1:8080/cars",
        "http://localhost/cars",
        "/relative",
    ] {
        let request = Request::get(allowed).body(()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(seen.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn allow_insecure_http_lets_the_token_go_to_plain_http() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let cache = TokenCache::builder(source.clone())
        .allow_insecure_http(true)
        .build()
        .unwrap();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), false), cache);
    let request = Request::get("http://api.example.com/cars")
        .body(())
        .unwrap();
    service.oneshot(request).await.unwrap();
    assert_eq!(seen.calls(), 1);
}

/// A source whose login client was allowed plain http, as `AuthTokenSourceBuilder` does.
struct AllowsPlainHttp(ScriptedSource);

impl tower_authtoken::TokenSource for AllowsPlainHttp {
    async fn fetch(&self) -> Result<tower_authtoken::Token, Error> {
        self.0.fetch().await
    }

    fn allows_insecure_http(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn one_opt_in_on_the_login_client_is_enough_for_the_layer() {
    let source = AllowsPlainHttp(ScriptedSource::new(HOUR));
    let seen = Seen::default();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), false), TokenCache::new(source));
    let request = Request::get("http://api.example.com/cars")
        .body(())
        .unwrap();
    service.oneshot(request).await.unwrap();
    assert_eq!(seen.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn token_failures_downcast_to_the_crate_error() {
    let source = ScriptedSource::new(HOUR);
    source.then(Next::Fail(
        Error::new(ErrorKind::AuthenticationFailed).with_user("alice"),
    ));
    let seen = Seen::default();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), false), cache(&source));
    let err: BoxError = service.oneshot(Request::new(())).await.unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(seen.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_401_invalidates_the_token_that_request_carried() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let cache = cache(&source);
    let service = BearerAuth::new(upstream::<()>(seen.clone(), true), cache.clone());
    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cache.stats().invalidations, 1);
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.last(), "Bearer token-2");
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_401s_cause_one_renewal() {
    let source = ScriptedSource::new(HOUR).with_delay(Duration::from_millis(20));
    let seen = Seen::default();
    let cache = cache(&source);
    cache.token().await.unwrap();
    let service = BearerAuth::new(upstream::<()>(seen.clone(), true), cache.clone());
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(cache.token().await.unwrap().expose_secret(), "token-2");
    assert_eq!(source.fetches(), 2, "one renewal for fifty rejections");
    assert_eq!(cache.stats().invalidations, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_replays_an_idempotent_replayable_request_once_with_the_new_token() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let service = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache(&source)).retry_on_unauthorized())
        .service(upstream::<String>(seen.clone(), true));
    let request = Request::get("/cars").body(String::new()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.calls(), 2);
    assert_eq!(seen.last(), "Bearer token-2");
}

#[tokio::test(start_paused = true)]
async fn retry_never_replays_a_non_idempotent_request_by_default() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let layer = BearerAuthLayer::new(cache(&source)).retry_on_unauthorized();
    let service = layer.layer(upstream::<String>(seen.clone(), true));
    let request = Request::post("/bookings")
        .body("{\"car\":1}".to_owned())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.calls(), 1, "a POST is not repeated");
}

#[tokio::test(start_paused = true)]
async fn retry_any_method_replays_a_post_when_asked_to() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let layer = BearerAuthLayer::new(cache(&source)).retry_on_unauthorized_any_method();
    let service = layer.layer(upstream::<String>(seen.clone(), true));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/bookings")
        .body("{}".to_owned())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_returns_the_original_401_when_no_new_token_can_be_had() {
    let source = ScriptedSource::new(HOUR);
    source
        .then(Next::Token)
        .then(Next::Fail(Error::new(ErrorKind::Server)));
    let seen = Seen::default();
    let layer = BearerAuthLayer::new(cache(&source)).retry_on_unauthorized();
    let service = layer.layer(upstream::<String>(seen.clone(), true));
    let response = service
        .oneshot(Request::get("/cars").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.calls(), 1);
}

/// A request body read as it is sent, like hyper's `Incoming` or a tonic stream: it is not
/// `Clone` and cannot be copied, so it is never replayed.
struct Streamed;

impl ReplayBody for Streamed {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn retry_sends_a_body_that_cannot_be_replayed_once_and_still_invalidates_its_token() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let cache = cache(&source);
    let service = BearerAuthLayer::new(cache.clone())
        .retry_on_unauthorized()
        .layer(upstream::<Streamed>(seen.clone(), true));
    let request = Request::get("/cars").body(Streamed).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.calls(), 1, "a body that cannot be copied is sent once");
    assert_eq!(cache.stats().invalidations, 1);

    let request = Request::get("/cars").body(Streamed).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.last(), "Bearer token-2");
}

/// What one request looked like when it reached the inner service.
#[derive(Debug, PartialEq)]
struct Sent {
    method: Method,
    uri: String,
    authorization: HeaderValue,
    trace: Option<HeaderValue>,
    extension: Option<&'static str>,
    body: Bytes,
}

#[tokio::test(start_paused = true)]
async fn retry_replays_a_bytes_body_with_the_same_method_uri_headers_extensions_and_content() {
    let source = ScriptedSource::new(HOUR);
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let record = sent.clone();
    let upstream = service_fn(move |req: Request<Bytes>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let authorization = parts.headers[AUTHORIZATION].clone();
            let status = if authorization == "Bearer token-1" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            record.lock().unwrap().push(Sent {
                method: parts.method,
                uri: parts.uri.to_string(),
                authorization,
                trace: parts.headers.get("x-trace").cloned(),
                extension: parts.extensions.get::<&'static str>().copied(),
                body,
            });
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let service = BearerAuthLayer::new(cache(&source))
        .retry_on_unauthorized()
        .layer(upstream);
    let mut request = Request::put("/cars/7?x=1")
        .header("x-trace", "abc")
        .body(Bytes::from_static(b"{\"doors\":5}"))
        .unwrap();
    request.extensions_mut().insert("request extension");
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 2, "sent, then replayed once");
    assert_eq!(sent[0].authorization, "Bearer token-1");
    assert_eq!(sent[1].authorization, "Bearer token-2");
    for attempt in sent.iter() {
        assert_eq!(attempt.method, Method::PUT);
        assert_eq!(attempt.uri, "/cars/7?x=1");
        assert_eq!(attempt.trace.as_ref().unwrap(), "abc");
        assert_eq!(attempt.extension, Some("request extension"));
        assert_eq!(attempt.body, Bytes::from_static(b"{\"doors\":5}"));
    }
}

#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn retry_replays_a_buffered_reqwest_body_but_sends_a_streaming_one_once() {
    for (body, calls) in [
        (reqwest::Body::from("payload"), 2),
        (
            reqwest::Body::wrap(http_body_util::Full::new(Bytes::from_static(b"payload"))),
            1,
        ),
    ] {
        let source = ScriptedSource::new(HOUR);
        let seen = Seen::default();
        let service = BearerAuthLayer::new(cache(&source))
            .retry_on_unauthorized()
            .layer(upstream::<reqwest::Body>(seen.clone(), true));
        let request = Request::get("/cars").body(body).unwrap();
        service.oneshot(request).await.unwrap();
        assert_eq!(seen.calls(), calls);
    }
}

/// Plan contract (the lead's cache rewrite): an invalidation that follows another within 1 s is
/// ignored and the token stays in service. Until it lands, the second invalidation withdraws
/// token-2 as well and this test fails with 4 calls.
#[tokio::test(start_paused = true)]
async fn retry_does_not_replay_with_the_token_the_server_just_rejected() {
    let source = ScriptedSource::new(HOUR);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let always_401 = service_fn(move |_: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let service = BearerAuthLayer::new(cache(&source))
        .retry_on_unauthorized()
        .layer(always_401);
    // token-1 is rejected and withdrawn; the replay carries token-2, which is rejected too.
    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // At once, token-2 is still in service: its 401 is returned, not replayed with token-2.
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_works_with_a_service_and_future_that_are_not_send() {
    // An `Rc` makes the service and its future `!Send`, as on a current-thread runtime; the
    // replay needs neither `Send` nor `'static`.
    let source = ScriptedSource::new(HOUR);
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::<HeaderValue>::new()));
    let record = seen.clone();
    let upstream = service_fn(move |req: Request<()>| {
        let record = record.clone();
        async move {
            let header = req.headers()[AUTHORIZATION].clone();
            let status = if header == "Bearer token-1" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            record.borrow_mut().push(header);
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let service = BearerAuthLayer::new(cache(&source))
        .retry_on_unauthorized()
        .layer(upstream);
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*seen.borrow(), ["Bearer token-1", "Bearer token-2"]);
}

/// An inner service that is ready only once, then must be cloned: it proves the layer calls the
/// very service `poll_ready` prepared.
#[derive(Clone)]
struct ReadyOnce {
    ready: bool,
}

impl Service<Request<()>> for ReadyOnce {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        assert!(self.ready, "poll_ready must be called first");
        self.ready = false;
        std::future::ready(Ok(Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn the_service_made_ready_is_the_one_called_even_when_waiting_for_a_token() {
    let source = ScriptedSource::new(HOUR).with_delay(Duration::from_millis(10));
    let mut service = BearerAuth::new(ReadyOnce { ready: false }, cache(&source));
    // Cold: the call waits for the token, holding the service that was made ready.
    service.ready().await.unwrap();
    let cold = service.call(Request::new(()));
    // Warm: the clone left behind is made ready and called directly.
    cold.await.unwrap();
    service.ready().await.unwrap();
    service.call(Request::new(())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn accessors_reach_the_inner_service() {
    let source = ScriptedSource::new(HOUR);
    let mut service = BearerAuth::new(ReadyOnce { ready: false }, cache(&source));
    assert!(!service.get_ref().ready);
    service.get_mut().ready = true;
    assert!(service.into_inner().ready);
}

/// Sends a request with `body` through a replaying layer over an upstream that rejects the
/// first token; returns how many times the upstream saw it.
async fn attempts_with<B: ReplayBody + Send + 'static>(body: B) -> usize {
    let source = ScriptedSource::new(HOUR);
    let seen = Arc::new(Mutex::new(0usize));
    let count = seen.clone();
    let upstream = service_fn(move |req: Request<B>| {
        *count.lock().unwrap() += 1;
        let status = if req.headers()[AUTHORIZATION] == "Bearer token-1" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let service = BearerAuthLayer::new(cache(&source))
        .retry_on_unauthorized()
        .layer(upstream);
    let request = Request::get("/cars").body(body).unwrap();
    service.oneshot(request).await.unwrap();
    *seen.lock().unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_replays_hyper_utils_full_and_empty_bodies_but_never_a_boxed_stream() {
    use http_body_util::{BodyExt, Empty, Full};
    assert_eq!(attempts_with(Full::new(Bytes::from_static(b"{}"))).await, 2);
    assert_eq!(attempts_with(Empty::<Bytes>::new()).await, 2);
    let boxed = Full::new(Bytes::from_static(b"{}"))
        .map_err(|never| match never {})
        .boxed();
    let boxed: http_body_util::combinators::BoxBody<Bytes, Infallible> = boxed;
    assert_eq!(attempts_with(boxed).await, 1, "a stream is sent once");
}

#[tokio::test(start_paused = true)]
async fn relative_requests_are_judged_by_the_origin_given_to_the_layer() {
    let source = ScriptedSource::new(HOUR);
    let seen = Seen::default();
    let layer = |origin: Option<&str>| {
        let layer = BearerAuthLayer::new(cache(&source));
        let layer = match origin {
            Some(origin) => layer.with_origin(&origin.parse().unwrap()),
            None => layer,
        };
        layer.layer(upstream::<()>(seen.clone(), false))
    };
    let relative = || Request::post("/pkg.Cars/List").body(()).unwrap();

    // A tonic-like channel to plain http on a remote host: refused before sending.
    let err = layer(Some("http://grpc.example.com:50051"))
        .oneshot(relative())
        .await
        .unwrap_err();
    let err = err.downcast::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::InsecureTransport);
    assert!(err.to_string().contains("'grpc.example.com'"), "{err}");
    assert_eq!(seen.calls(), 0, "nothing was sent");

    // https, loopback, and (the documented limit) no origin at all: sent.
    for origin in [
        Some("https://grpc.example.com"),
        Some("http://127.0.0.1:50051"),
        None,
    ] {
        layer(origin).oneshot(relative()).await.unwrap();
    }
    assert_eq!(seen.calls(), 3);

    // The origin is kept when the layer turns on replays.
    let replaying = BearerAuthLayer::new(cache(&source))
        .with_origin(&"http://grpc.example.com".parse().unwrap())
        .retry_on_unauthorized()
        .layer(upstream::<()>(seen.clone(), false));
    let err = replaying.oneshot(relative()).await.unwrap_err();
    assert_eq!(
        err.downcast::<Error>().unwrap().kind(),
        ErrorKind::InsecureTransport
    );
    assert_eq!(seen.calls(), 3);
}
