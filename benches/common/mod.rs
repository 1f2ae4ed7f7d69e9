//! What the benchmarks share: token sources, the inner service, the three clients compared, and
//! the hand-written baseline cache.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_authtoken::{BearerAuth, Error, Token, TokenCache, TokenSource};
use tower_http::auth::AddAuthorization;

/// The lifetime of the tokens of the hot-path benchmarks: long enough never to renew.
pub const HOUR: Duration = Duration::from_secs(3600);

/// The token value every hot-path variant sends.
pub const TOKEN: &str = "benchmark-token-0123456789abcdefghijklmnopqrstuvwxyz";

/// A token source that answers at once with a one-hour token.
pub struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new(TOKEN, HOUR)
    }
}

/// A token source that counts its fetches, each of which takes `delay`.
#[derive(Clone)]
pub struct Slow {
    pub delay: Duration,
    pub lifetime: Duration,
    pub fetches: Arc<AtomicU64>,
    /// When the last fetch started and finished.
    pub last: Arc<std::sync::Mutex<Option<(std::time::Instant, std::time::Instant)>>>,
}

impl Slow {
    pub fn new(delay: Duration, lifetime: Duration) -> Self {
        Slow {
            delay,
            lifetime,
            fetches: Arc::new(AtomicU64::new(0)),
            last: Arc::default(),
        }
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// When the last fetch started and finished.
    pub fn last_fetch(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        *self.last.lock().unwrap()
    }
}

impl TokenSource for Slow {
    async fn fetch(&self) -> Result<Token, Error> {
        let start = std::time::Instant::now();
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        let token = Token::new(format!("slow-token-{n}"), self.lifetime);
        *self.last.lock().unwrap() = Some((start, std::time::Instant::now()));
        token
    }
}

/// The inner service of the in-process benchmarks: it looks at the request and answers `200`.
pub fn upstream()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|req: Request<()>| {
        std::hint::black_box(&req);
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    })
}

/// One way of sending an authorized request: `ready().await` then `call(req).await`.
pub trait Client {
    fn send(&mut self, req: Request<()>) -> impl Future<Output = Response<()>> + Send;
}

/// Any Tower service of `http` requests is a client: this covers `BearerAuth` and the floor,
/// tower-http's `AddAuthorization`.
#[derive(Clone)]
pub struct Tower<S>(pub S);

impl<S> Client for Tower<S>
where
    S: Service<Request<()>, Response = Response<()>> + Send,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    async fn send(&mut self, req: Request<()>) -> Response<()> {
        let service = self.0.ready().await.expect("the service is ready");
        service.call(req).await.expect("the request succeeds")
    }
}

/// The floor: tower-http's static `Authorization` header. Nothing that sets a header does less.
pub type Floor<S> = Tower<AddAuthorization<S>>;

/// Our layer.
pub type Bearer<S> = Tower<BearerAuth<S>>;

pub fn floor<S>(inner: S, token: &str) -> Floor<S> {
    Tower(AddAuthorization::bearer(inner, token).as_sensitive(true))
}

pub fn bearer<S>(inner: S, cache: TokenCache) -> Bearer<S> {
    Tower(BearerAuth::new(inner, cache))
}

/// The typical hand-written token cache, as found in the wild: an async `RwLock` around the
/// header and its expiry, a clock read and an expiry check on every request, and a renewal
/// under the write lock when the token is about to expire.
pub struct HandWrittenCache<T> {
    slot: tokio::sync::RwLock<Option<(HeaderValue, std::time::Instant)>>,
    source: T,
}

impl<T: TokenSource> HandWrittenCache<T> {
    pub fn new(source: T) -> Self {
        HandWrittenCache {
            slot: tokio::sync::RwLock::new(None),
            source,
        }
    }

    /// The current header, fetching a new token when there is none or it is about to expire.
    pub async fn header(&self) -> Result<HeaderValue, Error> {
        {
            let slot = self.slot.read().await;
            if let Some((header, refresh_at)) = slot.as_ref()
                && std::time::Instant::now() < *refresh_at
            {
                return Ok(header.clone());
            }
        }
        let mut slot = self.slot.write().await;
        // Another caller may have renewed it while we waited for the write lock.
        if let Some((header, refresh_at)) = slot.as_ref()
            && std::time::Instant::now() < *refresh_at
        {
            return Ok(header.clone());
        }
        let token = self.source.fetch().await?;
        // Stop using it a tenth of its life before it expires, as `TokenCache` does.
        let refresh_at = std::time::Instant::now() + token.lifetime() - token.lifetime() / 10;
        let header = token.header_value().clone();
        *slot = Some((header.clone(), refresh_at));
        Ok(header)
    }
}

/// The hand-written baseline as a client: look the header up, then call the inner service.
///
/// It calls the inner service directly rather than through a Tower layer of its own, which would
/// also have to box its future; so this is the cheapest form of the hand-written design.
pub struct HandWritten<S, T> {
    pub inner: S,
    pub cache: Arc<HandWrittenCache<T>>,
}

impl<S: Clone, T> Clone for HandWritten<S, T> {
    fn clone(&self) -> Self {
        HandWritten {
            inner: self.inner.clone(),
            cache: Arc::clone(&self.cache),
        }
    }
}

impl<S, T> Client for HandWritten<S, T>
where
    S: Service<Request<()>, Response = Response<()>> + Send,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    T: TokenSource,
{
    async fn send(&mut self, mut req: Request<()>) -> Response<()> {
        let service = self.inner.ready().await.expect("the service is ready");
        let header = self.cache.header().await.expect("a token");
        req.headers_mut().insert(AUTHORIZATION, header);
        service.call(req).await.expect("the request succeeds")
    }
}

/// The same hand-written cache packaged as a Tower layer's service, as such middleware is usually
/// written: `call` clones what the async block needs and returns it boxed, since the type of an
/// async block cannot be named.
pub struct HandWrittenLayer<S, T> {
    pub inner: S,
    pub cache: Arc<HandWrittenCache<T>>,
}

impl<S: Clone, T> Clone for HandWrittenLayer<S, T> {
    fn clone(&self) -> Self {
        HandWrittenLayer {
            inner: self.inner.clone(),
            cache: Arc::clone(&self.cache),
        }
    }
}

impl<S, T> Service<Request<()>> for HandWrittenLayer<S, T>
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
    T: TokenSource,
{
    type Response = Response<()>;
    type Error = tower::BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<()>, tower::BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        let cache = Arc::clone(&self.cache);
        // Call the service that `poll_ready` prepared; leave a clone for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let header = cache.header().await?;
            req.headers_mut().insert(AUTHORIZATION, header);
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// Sends `iters` requests one after another and returns how long they took.
pub async fn run<C: Client>(client: &mut C, iters: u64) -> Duration {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        let response = client.send(Request::new(())).await;
        std::hint::black_box(response);
    }
    start.elapsed()
}

/// A single-threaded Tokio runtime with timers, as a client application would run.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// A multi-threaded Tokio runtime with `workers` threads.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// A cache holding a one-hour token from [`Fixed`]. Call it within the runtime that will outlive
/// the benchmark: the cache's background task runs there, and a cache whose runtime shut down
/// stops handing out its token.
pub async fn warm_cache() -> TokenCache {
    let cache = TokenCache::builder(Fixed)
        .jitter(Duration::ZERO)
        .build()
        .expect("a valid configuration");
    cache.token().await.expect("a token");
    cache
}

/// A hand-written cache that already holds a one-hour token.
pub async fn warm_hand_written() -> Arc<HandWrittenCache<Fixed>> {
    let cache = Arc::new(HandWrittenCache::new(Fixed));
    cache.header().await.expect("a token");
    cache
}

/// A reference server on a thread and runtime of its own, so that its work is not mixed with the
/// client's. It stops when dropped.
pub struct ServerThread {
    pub base_url: String,
    pub protected_url: String,
    pub credentials: tower_authtoken::Credentials,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub fn start(builder: tower_authtoken::testing::ReferenceServerBuilder) -> ServerThread {
        let (started, addresses) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let server = builder.start().await;
                started
                    .send((
                        server.base_url(),
                        server.protected_url(),
                        server.credentials(),
                    ))
                    .expect("the benchmark waits for the server");
                let _ = stopped.await;
            })
        });
        let (base_url, protected_url, credentials) =
            addresses.recv().expect("the reference server starts");
        ServerThread {
            base_url,
            protected_url,
            credentials,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
