//! Where `BearerAuthLayer` goes in a stack. A layer above it (retry, buffer) hands it each
//! attempt as the attempt leaves, so each carries the token current at that moment; a layer
//! below it works with the header it was given, which may have been replaced meanwhile.
//!
//! Every test runs on Tokio's paused clock, with tokens that live 60 s: a wait of 120 s between
//! the moment a request enters the stack and the moment it is sent always spans a renewal.

mod support;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::retry::Policy;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_authtoken::{BearerAuthLayer, TokenCache};

use support::{ScriptedSource, cache};

const LIFETIME: Duration = Duration::from_secs(60);
/// Longer than a token's life: whatever waits this long outlives the token it started with.
const WAIT: Duration = Duration::from_secs(120);

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
struct Arrival {
    path: String,
    authorization: HeaderValue,
    /// Whether that header carried the cache's current token when the request arrived.
    current: bool,
    at: Instant,
}

/// What the upstream saw, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Arrival>>>);

impl Log {
    fn arrivals(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().clone()
    }

    fn at(&self, path: &str) -> Vec<Arrival> {
        self.arrivals()
            .into_iter()
            .filter(|arrival| arrival.path == path)
            .collect()
    }
}

/// The upstream: it logs each request and whether its token was the cache's current one, then
/// answers with the status `answer` picks from the header and the number of earlier arrivals.
/// A request to `/slow` takes [`WAIT`] to answer.
fn upstream(
    cache: TokenCache,
    log: Log,
    answer: fn(&HeaderValue, usize) -> StatusCode,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request<()>| {
        let authorization = req.headers()[AUTHORIZATION].clone();
        let current = cache
            .current()
            .is_some_and(|token| token.header_value() == authorization);
        let path = req.uri().path().to_owned();
        let status = {
            let mut arrivals = log.0.lock().unwrap();
            let status = answer(&authorization, arrivals.len());
            arrivals.push(Arrival {
                path: path.clone(),
                authorization,
                current,
                at: Instant::now(),
            });
            status
        };
        async move {
            if path == "/slow" {
                tokio::time::sleep(WAIT).await;
            }
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

fn ok_always(_: &HeaderValue, _: usize) -> StatusCode {
    StatusCode::OK
}

fn unavailable_first(_: &HeaderValue, earlier: usize) -> StatusCode {
    if earlier == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

fn reject_token_1(authorization: &HeaderValue, _: usize) -> StatusCode {
    if authorization == "Bearer token-1" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

/// A cache over a source of 60 s tokens, already holding token-1.
async fn warm_cache() -> (ScriptedSource, TokenCache) {
    let source = ScriptedSource::new(LIFETIME);
    let cache = cache(&source);
    let token = cache.token().await.unwrap();
    assert_eq!(token.expose_secret(), "token-1");
    (source, cache)
}

/// A `tower::retry` policy: one more attempt after a `503` or a `401`, after `backoff`.
#[derive(Clone)]
struct RetryOnce {
    backoff: Duration,
    left: usize,
}

impl RetryOnce {
    fn after(backoff: Duration) -> Self {
        RetryOnce { backoff, left: 1 }
    }
}

impl<E> Policy<Request<()>, Response<()>, E> for RetryOnce {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<()>,
        result: &mut Result<Response<()>, E>,
    ) -> Option<Self::Future> {
        let status = result.as_ref().ok()?.status();
        let again = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::UNAUTHORIZED;
        if !again || self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(tokio::time::sleep(self.backoff))
    }

    fn clone_request(&mut self, req: &Request<()>) -> Option<Request<()>> {
        Some(req.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_above_sends_each_attempt_with_the_token_current_at_that_attempt() {
    let (source, cache) = warm_cache().await;
    let log = Log::default();
    let client = ServiceBuilder::new()
        .retry(RetryOnce::after(WAIT))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(upstream(cache.clone(), log.clone(), unavailable_first));

    let response = client.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let arrivals = log.arrivals();
    assert_eq!(arrivals.len(), 2, "one attempt, then one retry");
    assert_eq!(arrivals[0].authorization, "Bearer token-1");
    assert!(arrivals[1].at - arrivals[0].at >= WAIT);
    assert!(
        source.fetches() >= 2,
        "token-1 was renewed during the backoff"
    );
    assert_ne!(arrivals[1].authorization, "Bearer token-1");
    assert!(
        arrivals.iter().all(|arrival| arrival.current),
        "every attempt carried the token current when it was sent: {arrivals:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_above_retries_a_401_with_the_renewed_token() {
    let (source, cache) = warm_cache().await;
    let log = Log::default();
    let client = ServiceBuilder::new()
        .retry(RetryOnce::after(Duration::ZERO))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(upstream(cache.clone(), log.clone(), reject_token_1));

    let response = client.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers: Vec<_> = log
        .arrivals()
        .into_iter()
        .map(|arrival| arrival.authorization)
        .collect();
    assert_eq!(headers, ["Bearer token-1", "Bearer token-2"]);
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_below_resends_the_header_it_was_given_after_the_token_was_replaced() {
    // The wrong order, to show why it is wrong.
    let (source, cache) = warm_cache().await;
    let log = Log::default();
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .retry(RetryOnce::after(WAIT))
        .service(upstream(cache.clone(), log.clone(), unavailable_first));

    let response = client.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let arrivals = log.arrivals();
    assert_eq!(arrivals.len(), 2);
    assert!(
        source.fetches() >= 2,
        "token-1 was renewed during the backoff"
    );
    assert_eq!(arrivals[1].authorization, "Bearer token-1");
    assert!(
        !arrivals[1].current,
        "the retry went out with a replaced token"
    );
}

/// What `tower::buffer::Buffer` does, reduced to what these tests need (tower's `buffer` feature
/// is not among the dev-dependencies): `call` puts the request in a queue; one worker task takes
/// requests out in order, waits until the inner service is ready, calls it, and hands the
/// response future back to the caller.
struct Queue<F> {
    sender: mpsc::UnboundedSender<(Request<()>, oneshot::Sender<F>)>,
}

impl<F> Clone for Queue<F> {
    fn clone(&self) -> Self {
        Queue {
            sender: self.sender.clone(),
        }
    }
}

impl<F: Send + 'static> Queue<F> {
    fn new<S>(mut inner: S) -> Self
    where
        S: Service<Request<()>, Future = F> + Send + 'static,
        S::Error: fmt::Debug,
    {
        let (sender, mut receiver) = mpsc::unbounded_channel::<(Request<()>, oneshot::Sender<F>)>();
        tokio::spawn(async move {
            while let Some((request, reply)) = receiver.recv().await {
                let ready = inner.ready().await.expect("the inner service stays usable");
                let _ = reply.send(ready.call(request));
            }
        });
        Queue { sender }
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

impl<F, E> Service<Request<()>> for Queue<F>
where
    F: Future<Output = Result<Response<()>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BoxResponse;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> BoxResponse {
        let (reply, response) = oneshot::channel();
        let queued = self.sender.send((request, reply));
        Box::pin(async move {
            queued.map_err(|_| "the queue's worker is gone")?;
            let response = response
                .await
                .map_err(|_| "the worker dropped the request")?;
            response.await.map_err(Into::into)
        })
    }
}

/// Sends `/slow`, which holds the single permit below the queue for [`WAIT`], then `/queued`,
/// which waits in the queue until that permit is free.
async fn slow_then_queued<C>(client: C)
where
    C: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send,
{
    let slow = tokio::spawn(
        client
            .clone()
            .oneshot(Request::get("/slow").body(()).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    let queued = client.oneshot(Request::get("/queued").body(()).unwrap());
    assert_eq!(queued.await.unwrap().status(), StatusCode::OK);
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_buffer_above_sends_the_token_current_when_the_request_leaves_the_queue() {
    let (source, cache) = warm_cache().await;
    let log = Log::default();
    let start = Instant::now();
    let client = Queue::new(
        ServiceBuilder::new()
            .concurrency_limit(1)
            .layer(BearerAuthLayer::new(cache.clone()))
            .service(upstream(cache.clone(), log.clone(), ok_always)),
    );

    slow_then_queued(client).await;
    let queued = &log.at("/queued")[0];
    assert!(queued.at - start >= WAIT, "the request waited in the queue");
    assert!(source.fetches() >= 2, "token-1 was renewed while it waited");
    assert_ne!(queued.authorization, "Bearer token-1");
    assert!(queued.current, "it left with the token current then");
}

#[tokio::test(start_paused = true)]
async fn a_buffer_below_sends_the_header_it_was_given_after_the_token_was_replaced() {
    // The wrong order, to show why it is wrong.
    let (source, cache) = warm_cache().await;
    let log = Log::default();
    let start = Instant::now();
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Queue::new(
            ServiceBuilder::new().concurrency_limit(1).service(upstream(
                cache.clone(),
                log.clone(),
                ok_always,
            )),
        ));

    slow_then_queued(client).await;
    let queued = &log.at("/queued")[0];
    assert!(queued.at - start >= WAIT, "the request waited in the queue");
    assert!(source.fetches() >= 2, "token-1 was renewed while it waited");
    assert_eq!(queued.authorization, "Bearer token-1");
    assert!(!queued.current, "it left with a replaced token");
}
