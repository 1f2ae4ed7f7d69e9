//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower_authtoken::{Error, ErrorKind, Token, TokenCache, TokenSource};

/// Polls `future` once, without a runtime's waker.
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What a [`ScriptedSource`] does on one fetch.
#[derive(Clone, Debug)]
pub enum Next {
    /// A new token with the source's lifetime.
    Token,
    /// The same value as the previous token, with a fresh lifetime.
    SameToken,
    /// This error.
    Fail(Error),
    /// Never answer.
    Hang,
    /// Panic.
    Panic,
}

/// A token source that follows a script, then issues fresh tokens, after a delay.
#[derive(Clone)]
pub struct ScriptedSource {
    state: Arc<State>,
}

struct State {
    fetches: AtomicUsize,
    delay: Mutex<Duration>,
    lifetime: Mutex<Duration>,
    script: Mutex<VecDeque<Next>>,
    /// What happens once the script is empty.
    otherwise: Mutex<Next>,
    last_value: Mutex<String>,
}

impl ScriptedSource {
    pub fn new(lifetime: Duration) -> Self {
        ScriptedSource {
            state: Arc::new(State {
                fetches: AtomicUsize::new(0),
                delay: Mutex::new(Duration::ZERO),
                lifetime: Mutex::new(lifetime),
                script: Mutex::new(VecDeque::new()),
                otherwise: Mutex::new(Next::Token),
                last_value: Mutex::new(String::new()),
            }),
        }
    }

    pub fn with_delay(self, delay: Duration) -> Self {
        *self.state.delay.lock().unwrap() = delay;
        self
    }

    pub fn then(&self, next: Next) -> &Self {
        self.state.script.lock().unwrap().push_back(next);
        self
    }

    pub fn otherwise(&self, next: Next) {
        *self.state.otherwise.lock().unwrap() = next;
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// How many handles to the source's state exist (the test's plus the cache's).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.state)
    }
}

/// A cache over `source` without jitter, so that every instant in a test is exact.
pub fn cache(source: &ScriptedSource) -> TokenCache {
    TokenCache::builder(source.clone())
        .jitter(Duration::ZERO)
        .build()
        .unwrap()
}

pub fn error(kind: ErrorKind) -> Error {
    Error::new(kind)
}

impl TokenSource for ScriptedSource {
    async fn fetch(&self) -> Result<Token, Error> {
        let n = self.state.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = *self.state.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let next = self
            .state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.state.otherwise.lock().unwrap().clone());
        let lifetime = *self.state.lifetime.lock().unwrap();
        match next {
            Next::Token => {
                let value = format!("token-{n}");
                *self.state.last_value.lock().unwrap() = value.clone();
                Token::new(value, lifetime)
            }
            Next::SameToken => {
                let value = self.state.last_value.lock().unwrap().clone();
                Token::new(value, lifetime)
            }
            Next::Fail(error) => Err(error),
            Next::Hang => std::future::pending().await,
            Next::Panic => panic!("scripted panic in a token source"),
        }
    }
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics on this thread from now on, including those Tokio catches in spawned tasks
/// (with a current-thread runtime they run on this thread).
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(|count| count.set(0));
}

/// Fails if anything counted by [`count_panics`] panicked.
pub fn assert_no_panics() {
    assert_eq!(
        PANICS.with(Cell::get),
        0,
        "something panicked (see the output above)"
    );
}

/// A [`ReferenceServer`](tower_authtoken::testing::ReferenceServer) on a multi-thread runtime of
/// its own, in real time, unaffected by what a test does to its own threads and runtimes
/// (blocking them, leaving them idle, dropping them, freezing a child process).
///
/// It can be created and dropped anywhere, inside a runtime or not.
pub struct BackgroundServer {
    server: Option<tower_authtoken::testing::ReferenceServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BackgroundServer {
    /// Starts the server `builder` describes, from a thread of its own so that this works from
    /// within a runtime too.
    pub fn start(builder: tower_authtoken::testing::ReferenceServerBuilder) -> BackgroundServer {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("reference-server")
                .enable_all()
                .build()
                .expect("a runtime for the reference server");
            let server = runtime.block_on(builder.start());
            BackgroundServer {
                server: Some(server),
                runtime: Some(runtime),
            }
        })
        .join()
        .expect("the reference server starts")
    }
}

impl std::ops::Deref for BackgroundServer {
    type Target = tower_authtoken::testing::ReferenceServer;

    fn deref(&self) -> &Self::Target {
        self.server.as_ref().expect("the server lives until drop")
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        drop(self.server.take());
        // Without blocking: the server may be dropped inside an async test.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The HTTP client of the real-time tests: hyper-util's, for bodiless requests.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A hyper-util client. `pooled: false` opens a connection per request: hyper-util runs each
/// connection on the runtime that opened it, so a pooled connection is dead or stuck once that
/// runtime is dropped or idle. A client shared by several runtimes must not pool.
pub fn http_client(pooled: bool) -> HttpClient {
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if !pooled {
        builder.pool_max_idle_per_host(0);
    }
    builder.build_http()
}

/// hyper-util's client as a Tower service that reads each body to its end (so that the
/// connection goes back to the pool) and answers with the whole body.
pub fn reading_client() -> impl tower::Service<
    http::Request<http_body_util::Empty<bytes::Bytes>>,
    Response = http::Response<bytes::Bytes>,
    Error = tower::BoxError,
    Future = impl Future<Output = Result<http::Response<bytes::Bytes>, tower::BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    use http_body_util::BodyExt;
    let client = http_client(true);
    tower::service_fn(
        move |request: http::Request<http_body_util::Empty<bytes::Bytes>>| {
            let client = client.clone();
            async move {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, tower::BoxError>(http::Response::from_parts(parts, body))
            }
        },
    )
}

/// An `AuthTokenSource` for `server` whose reqwest client opens a connection per login, for
/// caches shared by several runtimes (see [`http_client`] for why).
pub fn unpooled_source(
    server: &tower_authtoken::testing::ReferenceServer,
) -> tower_authtoken::AuthTokenSource {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client");
    tower_authtoken::AuthTokenSource::builder(&server.base_url(), server.credentials())
        .client(client)
        .build()
        .expect("a source for the reference server")
}

/// Sends `GET url` through `client` and reads the whole response: the status, or what went
/// wrong (with the cache's error kind when the error is the cache's).
pub async fn get<S>(client: &mut S, url: &str) -> Result<http::StatusCode, String>
where
    S: tower::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = tower::BoxError,
        >,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let request = http::Request::get(url)
        .body(http_body_util::Empty::new())
        .expect("a valid request");
    let response = client
        .ready()
        .await
        .map_err(describe)?
        .call(request)
        .await
        .map_err(describe)?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(status)
}

/// A request's error in one line, naming the cache's error kind when it is the cache's.
pub fn describe(error: tower::BoxError) -> String {
    match error.downcast_ref::<Error>() {
        Some(error) => format!("{:?}: {error}", error.kind()),
        None => format!("transport: {error}"),
    }
}
