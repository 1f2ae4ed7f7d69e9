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

/// An account of the keyed benchmarks: the key its requests carry as an extension.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Account(pub u32);

/// An account's login, answered at once with a one-hour token of its own.
pub struct AccountLogin(pub u32);

impl TokenSource for AccountLogin {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new(format!("{TOKEN}-{:08}", self.0), HOUR)
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

/// The no-op inner service: it answers `200` at once with a [`std::future::Ready`]. It only
/// passes the request through [`std::hint::black_box`], so that the compiler must build it.
#[derive(Clone, Copy, Debug)]
pub struct NoOp;

impl Service<Request<()>> for NoOp {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        std::hint::black_box(&req);
        std::future::ready(Ok(Response::new(())))
    }
}

/// An inner service written as most are: a `service_fn` whose `async` block owns the request,
/// so that its future holds the request while it runs.
pub fn async_upstream()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|req: Request<()>| async move {
        std::hint::black_box(&req);
        Ok::<_, Infallible>(Response::new(()))
    })
}

/// Sends `n` `GET` requests to `url` one after another through `service` (hyper-util's client,
/// bare or wrapped), reads each body, and checks that each is accepted.
pub async fn send_http<S>(mut service: S, url: String, n: u64)
where
    S: Service<
            Request<http_body_util::Empty<bytes::Bytes>>,
            Response = Response<hyper::body::Incoming>,
        >,
    S::Error: Into<tower::BoxError>,
{
    use http_body_util::BodyExt;
    for _ in 0..n {
        let request = Request::get(&url)
            .body(http_body_util::Empty::new())
            .expect("a valid request");
        let response = service
            .ready()
            .await
            .map_err(Into::into)
            .expect("the client is ready")
            .call(request)
            .await
            .map_err(Into::into)
            .expect("a response");
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = response.into_body().collect().await.expect("the body");
        std::hint::black_box(body);
    }
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

pub fn bearer<S: Clone>(inner: S, cache: TokenCache) -> Bearer<S> {
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
        let response = client.send(std::hint::black_box(Request::new(()))).await;
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

// ---------------------------------------------------------------------------------------------
// Interleaved rounds: the ratio of two variants, robust to drift in the machine's load.
// ---------------------------------------------------------------------------------------------

/// How the interleaved-rounds section of a bench binary should run, from its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundsMode {
    /// `cargo bench`: the full number of rounds.
    Full,
    /// `cargo test --benches` or `cargo bench -- --test`: a few short rounds, to check that the
    /// section works.
    Smoke,
    /// `--list`, `--profile-time`, or a filter that does not select the section.
    Skip,
}

/// Criterion's options that take a value: the word after them is not a filter.
const OPTIONS_WITH_VALUE: &[&str] = &[
    "-c",
    "--color",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// Reads the command line as criterion does: `--bench` without `--test` benchmarks, anything
/// else tests. The section named `section` (say `hot_path/rounds`) runs when no filter is given
/// or when the filter is a part of its name (`rounds`, `hot_path`).
pub fn rounds_mode(section: &str) -> RoundsMode {
    let mut args = std::env::args().skip(1);
    let (mut bench, mut test, mut skip) = (false, false, false);
    let mut filter = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--test" => test = true,
            "--list" | "--profile-time" | "--ignored" => skip = true,
            option if OPTIONS_WITH_VALUE.contains(&option) => {
                args.next();
            }
            option if option.starts_with('-') => {}
            word => filter = filter.or(Some(word.to_owned())),
        }
    }
    if skip || filter.is_some_and(|filter| !section.contains(filter.as_str())) {
        RoundsMode::Skip
    } else if bench && !test {
        RoundsMode::Full
    } else {
        RoundsMode::Smoke
    }
}

/// The time one variant took for a round's requests, by two clocks.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Elapsed wall time.
    pub wall: Duration,
    /// CPU time of the measuring thread (the mean of the measuring threads, when there are
    /// several). Unlike wall time, it does not count the time other processes ran instead of
    /// ours, so it stays meaningful on a loaded machine. On platforms other than Linux it is the
    /// wall time.
    pub cpu: Duration,
}

impl Sample {
    /// Runs `work` on this thread and measures it by both clocks.
    pub fn measure(work: impl FnOnce()) -> Sample {
        let stopwatch = Stopwatch::start();
        work();
        stopwatch.stop()
    }

    /// The sample of several threads that ran at the same time: the longest wall time, and the
    /// mean CPU time.
    pub fn concurrent(samples: &[Sample]) -> Sample {
        let n = u32::try_from(samples.len()).expect("a few threads");
        Sample {
            wall: samples.iter().map(|s| s.wall).max().expect("one sample"),
            cpu: samples.iter().map(|s| s.cpu).sum::<Duration>() / n,
        }
    }
}

/// Measures the work this thread does between [`Stopwatch::start`] and [`Stopwatch::stop`].
pub struct Stopwatch {
    wall: std::time::Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            wall: std::time::Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// Call it on the thread that called `start`.
    pub fn stop(self) -> Sample {
        let cpu = thread_cpu_time();
        let wall = self.wall.elapsed();
        Sample {
            wall,
            cpu: match (self.cpu, cpu) {
                (Some(start), Some(end)) => end.saturating_sub(start),
                _ => wall,
            },
        }
    }
}

/// The CPU time this thread has used, from `CLOCK_THREAD_CPUTIME_ID`.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_time() -> Option<Duration> {
    /// `struct timespec` on 64-bit Linux.
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    unsafe extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    let mut time = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable `struct timespec`, and the clock ID is a constant the
    // kernel knows.
    let status = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) };
    (status == 0).then(|| {
        Duration::new(
            u64::try_from(time.tv_sec).unwrap_or(0),
            u32::try_from(time.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// Which clock a figure is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    Wall,
    Cpu,
}

impl Clock {
    fn read(self, sample: &Sample) -> Duration {
        match self {
            Clock::Wall => sample.wall,
            Clock::Cpu => sample.cpu,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Clock::Wall => "wall",
            Clock::Cpu => "cpu",
        }
    }
}

/// The two samples of one round: the floor's and `BearerAuth`'s, for the same number of
/// requests.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub floor: Sample,
    pub bearer: Sample,
}

/// Runs `warm_up` rounds it discards, then `rounds` rounds. Each round measures both variants
/// once, back to back: the floor first in even rounds, `BearerAuth` first in odd ones, so that
/// going first or second, and a slow drift in the machine's load, cost both the same.
pub fn interleave(
    warm_up: usize,
    rounds: usize,
    mut floor: impl FnMut() -> Sample,
    mut bearer: impl FnMut() -> Sample,
) -> Vec<Round> {
    (0..warm_up + rounds)
        .map(|i| {
            if i % 2 == 0 {
                let floor = floor();
                Round {
                    floor,
                    bearer: bearer(),
                }
            } else {
                let bearer = bearer();
                Round {
                    floor: floor(),
                    bearer,
                }
            }
        })
        .skip(warm_up)
        .collect()
}

/// The `q` quantile (0 to 1) of `sorted`, interpolated linearly between the two nearest ranks.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "a quantile of no rounds");
    let rank = q * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// The spread of one figure over the rounds.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            median: quantile(&values, 0.5),
            p25: quantile(&values, 0.25),
            p75: quantile(&values, 0.75),
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// Which ratio of the two variants a table reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ratio {
    /// Time per request, `BearerAuth` / floor: 1.10 means 10 % slower than the floor.
    Time,
    /// Requests/s, `BearerAuth` / floor: 0.99 means 1 % fewer requests per second.
    Throughput,
}

/// The rounds of one setting, ready to print.
#[derive(Clone, Debug)]
pub struct Rounds {
    pub label: String,
    pub threads: usize,
    pub requests: u64,
    pub rounds: Vec<Round>,
}

/// What a set of rounds shows by one clock: per-request times of each variant and the
/// per-round ratio.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Nanoseconds per request of the floor, over the rounds.
    pub floor_ns: Spread,
    /// Nanoseconds per request of `BearerAuth`, over the rounds.
    pub bearer_ns: Spread,
    /// The per-round ratio.
    pub ratio: Spread,
}

impl Summary {
    pub fn of(rounds: &Rounds, clock: Clock, ratio: Ratio) -> Summary {
        let per_request =
            |sample: &Sample| clock.read(sample).as_nanos() as f64 / rounds.requests as f64;
        let round_ratio = |round: &Round| {
            let floor = clock.read(&round.floor).as_secs_f64();
            let bearer = clock.read(&round.bearer).as_secs_f64();
            match ratio {
                Ratio::Time => bearer / floor,
                Ratio::Throughput => floor / bearer,
            }
        };
        Summary {
            floor_ns: Spread::of(
                rounds
                    .rounds
                    .iter()
                    .map(|r| per_request(&r.floor))
                    .collect(),
            ),
            bearer_ns: Spread::of(
                rounds
                    .rounds
                    .iter()
                    .map(|r| per_request(&r.bearer))
                    .collect(),
            ),
            ratio: Spread::of(rounds.rounds.iter().map(round_ratio).collect()),
        }
    }
}

/// Prints a table of `results`, one row per setting and clock: the medians of the per-request
/// times of both variants, then the per-round ratio's median, interquartile range and extremes.
pub fn print_table(title: &str, ratio: Ratio, clocks: &[Clock], results: &[Rounds]) {
    println!();
    println!("{title}");
    println!(
        "{:<28} {:>3} {:>5} {:>13} {:>10} {:>10} {:>7} {:>13} {:>13}",
        "inner service / setting",
        "thr",
        "clock",
        "rounds x reqs",
        "floor ns",
        "bearer ns",
        match ratio {
            Ratio::Time => "time",
            Ratio::Throughput => "req/s",
        },
        "p25-p75",
        "min-max"
    );
    for &clock in clocks {
        for result in results {
            let summary = Summary::of(result, clock, ratio);
            println!(
                "{:<28} {:>3} {:>5} {:>13} {:>10.1} {:>10.1} {:>7.3} {:>13} {:>13}",
                result.label,
                result.threads,
                clock.name(),
                format!("{} x {}", result.rounds.len(), result.requests),
                summary.floor_ns.median,
                summary.bearer_ns.median,
                summary.ratio.median,
                format!("{:.3}-{:.3}", summary.ratio.p25, summary.ratio.p75),
                format!("{:.3}-{:.3}", summary.ratio.min, summary.ratio.max),
            );
        }
    }
}
