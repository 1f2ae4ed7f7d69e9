//! The main job: concurrent traffic through `BearerAuthLayer` around hyper-util's client, across
//! many token renewals, proving that no request is rejected and none stalls.
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --duration 30 --concurrency 100 --lifetime 10
//! CARRENTAL_PASSWORD=... cargo run --release --example demo -- \
//!     --base-url https://api.example.com/v1 --user alice --resource /cars
//! cargo run --release --example demo -- --redis redis://127.0.0.1:6379 --replicas 8
//! cargo run --release --example demo -- --accounts 1000
//! ```
//!
//! With `--accounts N`, the embedded server holds N accounts (`agency-0` ...), one
//! `KeyedTokenCache` holds a token for each, and every request names a random account through a
//! request extension read by `KeyedBearerAuthLayer`. The summary reports the logins per account
//! per token lifetime and the peak login rate against the shared login budget (`--login-rate`).
//!
//! With `--redis`, every replica (a cache with its own Redis connection, `--replicas` of them in
//! this process) shares tokens through a `RedisTokenStore`, and the summary reports the fleet's
//! logins per token lifetime. Processes sharing one Redis and one login endpoint need the same
//! `--redis-key` (or `TOKEN_KEY`); without one, the demo makes one up and prints it.
//!
//! Without `--base-url` it starts the crate's embedded reference server on loopback, with short
//! tokens and a slow login, so that renewals happen every few seconds. Set `RUST_LOG=info` to see
//! the cache's renewal events.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, KeyedBearerAuthLayer, KeyedTokenCache,
    LoginBudget, Token, TokenCache, TokenSource,
};

/// Drive concurrent traffic through the bearer-token layer and report what happened.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// How long to send traffic, in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// How many workers send requests back to back.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// The embedded server's token lifetime, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub lifetime: f64,
    /// The embedded server's login delay, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub login_delay_ms: u64,
    /// A real Carrental API base URL (the password comes from `CARRENTAL_PASSWORD`).
    #[arg(long, requires = "user")]
    pub base_url: Option<String>,
    /// The user name for `--base-url`.
    #[arg(long)]
    pub user: Option<String>,
    /// The protected path to call, relative to the base URL.
    #[arg(long, default_value = "/protected")]
    pub resource: String,
    /// How long before expiry a renewal starts, in seconds (the cache's default is 60, so short
    /// tokens renew at half their life).
    #[arg(long)]
    pub refresh_before: Option<f64>,
    /// Share tokens between replicas and processes through this Redis.
    #[arg(long)]
    pub redis: Option<String>,
    /// The 64-hex-digit key that seals tokens in Redis (or set `TOKEN_KEY`).
    #[arg(long, env = "TOKEN_KEY", hide_env_values = true)]
    pub redis_key: Option<String>,
    /// How many caches (replicas) share the work in this process.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Many accounts: this many users on the embedded server, one keyed cache for all.
    #[arg(long)]
    pub accounts: Option<u32>,
    /// With `--accounts`: the shared login budget, logins a second (also the burst).
    #[arg(long, default_value_t = 500)]
    pub login_rate: u32,
    /// Print only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run with `--accounts` measured.
#[derive(Debug, Clone)]
pub struct AccountsReport {
    pub accounts: u32,
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub logins: u64,
    /// The logins the accounts' caches started (their `CacheStats::fetches`), over the run.
    pub fetches: u64,
    /// Since the start, warm-up included: the logins the server saw, and the logins the caches
    /// started. A login reaches the server only after its cache started (and budgeted) it.
    pub all_logins: (u64, u64),
    /// Over the accounts: the fewest and the most logins per token lifetime during the run.
    pub logins_per_lifetime: (f64, f64),
    /// The most logins started in any one second (what the budget bounds), the most the server
    /// saw arrive in one, and the budget's limit for a second.
    pub peak_logins_per_s: usize,
    pub peak_arrivals_per_s: usize,
    pub budget_per_s: u32,
    pub token_lifetime: Duration,
    pub elapsed: Duration,
    pub p99: Duration,
    pub worst: Duration,
}

/// The account of a request, set by the application as a request extension.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Agency(pub u32);

/// Traffic across `--accounts` accounts of the embedded server through one keyed cache.
pub async fn run_accounts(args: Args) -> Result<AccountsReport, BoxError> {
    let accounts_n = args.accounts.ok_or("--accounts")?.max(1);
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs_f64(args.lifetime))
        .login_delay(Duration::from_millis(args.login_delay_ms))
        .start()
        .await;
    for account in 0..accounts_n {
        server.add_user(&format!("agency-{account}"), &format!("password-{account}"));
    }
    let base_url = server.base_url();
    let rate = args.login_rate.max(1);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let login_starts = Arc::clone(&starts);
    let keyed = KeyedTokenCache::builder(move |agency: &Agency| {
        if agency.0 >= accounts_n {
            return Err(BoxError::from(format!("no agency {}", agency.0)));
        }
        let credentials = Credentials::new(
            format!("agency-{}", agency.0),
            format!("password-{}", agency.0),
        );
        let inner = AuthTokenSource::new(&base_url, credentials).map_err(BoxError::from)?;
        Ok(Started {
            inner,
            starts: Arc::clone(&login_starts),
        })
    })
    .max_accounts(accounts_n as usize)
    .shared_login_budget(LoginBudget::new(rate, Duration::from_secs(1) / rate))
    .build()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(KeyedBearerAuthLayer::new(keyed.clone()))
        .service(client);

    // Log every account in before the clock starts, as a platform would at start-up.
    let mut warm = tokio::task::JoinSet::new();
    for account in 0..accounts_n {
        let keyed = keyed.clone();
        warm.spawn(async move { keyed.token(&Agency(account)).await });
    }
    let mut token_lifetime = Duration::ZERO;
    while let Some(token) = warm.join_next().await {
        token_lifetime = token??.lifetime();
    }

    let resource = format!("{}{}", server.base_url(), args.resource);
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(histogram()));
    let logins_before = server.login_attempts();
    let fetches = |keyed: &KeyedTokenCache<Agency>| -> Result<u64, BoxError> {
        let mut sum = 0;
        for account in 0..accounts_n {
            sum += keyed.cache(&Agency(account))?.stats().fetches;
        }
        Ok(sum)
    };
    let fetches_before = fetches(&keyed)?;
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let mut service = service.clone();
            let (counters, latencies) = (Arc::clone(&counters), Arc::clone(&latencies));
            let resource = resource.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    let mut request = Request::get(&resource)
                        .body(Empty::new())
                        .expect("a valid request");
                    request
                        .extensions_mut()
                        .insert(Agency(fastrand::u32(..accounts_n)));
                    let begin = Instant::now();
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    let result = exchange(&mut service, request).await;
                    latencies
                        .lock()
                        .unwrap()
                        .record(micros(begin.elapsed()))
                        .ok();
                    counters.count(result);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let lifetimes = (elapsed.as_secs_f64() / token_lifetime.as_secs_f64()).max(1.0);
    let per_account: Vec<f64> = (0..accounts_n)
        // Less the login before the clock started.
        .map(|account| {
            server
                .logins_of(&format!("agency-{account}"))
                .saturating_sub(1) as f64
                / lifetimes
        })
        .collect();
    let latencies = latencies.lock().unwrap();
    Ok(AccountsReport {
        accounts: accounts_n,
        sent: counters.sent.load(Ordering::Relaxed),
        ok: counters.ok.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        logins: server.login_attempts() - logins_before,
        fetches: fetches(&keyed)? - fetches_before,
        all_logins: (server.login_attempts(), fetches(&keyed)?),
        logins_per_lifetime: (
            per_account.iter().copied().fold(f64::INFINITY, f64::min),
            per_account.iter().copied().fold(0.0, f64::max),
        ),
        peak_logins_per_s: peak(&starts.lock().unwrap(), Duration::from_secs(1)),
        peak_arrivals_per_s: server.max_login_attempts_within(Duration::from_secs(1)),
        budget_per_s: 2 * rate,
        token_lifetime,
        elapsed,
        p99: Duration::from_micros(latencies.value_at_quantile(0.99)),
        worst: Duration::from_micros(latencies.max()),
    })
}

/// A source that records when each of its logins started.
struct Started<S> {
    inner: S,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl<S: TokenSource> TokenSource for Started<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        self.starts.lock().unwrap().push(Instant::now());
        self.inner.fetch().await
    }

    fn user_name(&self) -> Option<&str> {
        self.inner.user_name()
    }
}

/// The most of `instants` in any window of `window`.
fn peak(instants: &[Instant], window: Duration) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort();
    tower_authtoken::testing::most_within(&sorted, window)
}

fn print_accounts_summary(args: &Args, report: &AccountsReport) {
    let secs = report.elapsed.as_secs_f64();
    println!(
        "summary: {} requests over {} accounts in {:.1} s ({:.0}/s) with {} workers; {} ok, {} rejected upstream, {} errors",
        report.sent,
        report.accounts,
        secs,
        report.sent as f64 / secs,
        args.concurrency,
        report.ok,
        report.rejected,
        report.errors,
    );
    // Tokens shorter than twice the renewal lead (60 s by default) renew at half their life less
    // a jitter of up to an eighth, and a keyed cache spreads renewals up to a fifth of the life
    // earlier still: about 3 logins per lifetime on average is the policy at work, not a storm.
    // An hour-long token is renewed about once.
    let why = if report.token_lifetime < Duration::from_secs(120) {
        " (tokens under 2 min renew at half their life or earlier: about 3 is the policy)"
    } else {
        ""
    };
    println!(
        "summary: {} logins during the run for {:.1} s tokens; per account per token lifetime: {:.2} to {:.2}{why}",
        report.logins,
        report.token_lifetime.as_secs_f64(),
        report.logins_per_lifetime.0,
        report.logins_per_lifetime.1,
    );
    println!(
        "summary: peak login rate {} started in a second ({} arrived at the server in one); the shared budget allows at most {} in a second ({} at once, then {}/s)",
        report.peak_logins_per_s,
        report.peak_arrivals_per_s,
        report.budget_per_s,
        args.login_rate,
        args.login_rate,
    );
    println!(
        "summary: latency p99 {:.2} ms, worst {:.2} ms",
        report.p99.as_secs_f64() * 1000.0,
        report.worst.as_secs_f64() * 1000.0,
    );
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub logins: u64,
    pub renewals: u64,
    pub failures: u64,
    pub elapsed: Duration,
    pub renewal_windows: usize,
    pub replicas: usize,
    pub token_lifetime: Duration,
    pub worst_in_renewal: Duration,
    pub worst_outside_renewal: Duration,
    pub p99_in_renewal: Duration,
    pub p99_outside_renewal: Duration,
}

/// One request: when it started (since the run began) and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    start: Duration,
    latency: Duration,
}

/// A token source that records when each fetch ran, to tell renewal windows apart.
struct Timed<S> {
    inner: S,
    origin: Instant,
    windows: Arc<Mutex<Vec<(Duration, Duration)>>>,
}

impl<S: TokenSource> TokenSource for Timed<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        let start = self.origin.elapsed();
        let result = self.inner.fetch().await;
        self.windows
            .lock()
            .unwrap()
            .push((start, self.origin.elapsed()));
        result
    }

    fn user_name(&self) -> Option<&str> {
        self.inner.user_name()
    }
}

/// One replica: a cache, with its own Redis connection when sharing.
fn replica(
    args: &Args,
    source: Timed<AuthTokenSource>,
    key: Option<&EncryptionKey>,
) -> Result<TokenCache, BoxError> {
    let mut builder = TokenCache::builder(source);
    if let Some(lead) = args.refresh_before {
        builder = builder.refresh_before(Duration::from_secs_f64(lead));
    }
    if let (Some(url), Some(key)) = (&args.redis, key) {
        builder = builder.shared(RedisTokenStore::new(
            url,
            "tower-authtoken-demo",
            key.clone(),
        )?);
    }
    Ok(builder.build()?)
}

/// The key that seals tokens in Redis: given, or made up and printed for the other processes.
fn redis_key(args: &Args) -> Result<Option<EncryptionKey>, BoxError> {
    if args.redis.is_none() {
        return Ok(None);
    }
    match &args.redis_key {
        Some(hex) => Ok(Some(EncryptionKey::from_hex(hex)?)),
        None => {
            let bytes: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("no --redis-key given; for other processes of this fleet: TOKEN_KEY={hex}");
            Ok(Some(EncryptionKey::from_bytes(bytes)))
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// Counts the outcome of one request: ok, rejected upstream (a `401`), or an error (any
    /// other status, or a failure), which is logged.
    fn count(&self, result: Result<StatusCode, BoxError>) {
        match result {
            Ok(StatusCode::UNAUTHORIZED) => &self.rejected,
            Ok(status) if status.is_success() => &self.ok,
            Ok(status) => {
                tracing::warn!(%status, "unexpected status");
                &self.errors
            }
            Err(error) => {
                tracing::warn!(%error, "request failed");
                &self.errors
            }
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `request` through `service` and reads the whole response: its status.
async fn exchange<S, B>(
    service: &mut S,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let response = service
        .ready()
        .await
        .map_err(Into::into)?
        .call(request)
        .await
        .map_err(Into::into)?;
    let status = response.status();
    response.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().clamp(1, 60_000_000) as u64
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Runs the demo and returns its report.
pub async fn run(args: Args) -> Result<Report, BoxError> {
    let origin = Instant::now();
    let (server, base_url, credentials) = match &args.base_url {
        Some(url) => {
            let password = std::env::var("CARRENTAL_PASSWORD")
                .map_err(|_| "set CARRENTAL_PASSWORD to the password for --user")?;
            let user = args.user.clone().ok_or("--base-url needs --user")?;
            (
                None,
                url.trim_end_matches('/').to_owned(),
                Credentials::new(user, password),
            )
        }
        None => {
            let server = ReferenceServer::builder()
                .token_lifetime(Duration::from_secs_f64(args.lifetime))
                .login_delay(Duration::from_millis(args.login_delay_ms))
                .start()
                .await;
            let base = server.base_url();
            let credentials = server.credentials();
            (Some(server), base, credentials)
        }
    };
    let resource = format!("{base_url}{}", args.resource);

    let windows = Arc::new(Mutex::new(Vec::new()));
    let key = redis_key(&args)?;
    let mut caches = Vec::new();
    for _ in 0..args.replicas.max(1) {
        let source = Timed {
            inner: AuthTokenSource::new(&base_url, credentials.clone())?,
            origin,
            windows: Arc::clone(&windows),
        };
        caches.push(replica(&args, source, key.as_ref())?);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let services: Vec<_> = caches
        .iter()
        .map(|cache| {
            ServiceBuilder::new()
                .layer(BearerAuthLayer::new(cache.clone()))
                .service(client.clone())
        })
        .collect();

    // Log in before the clock starts, as a service would at start-up.
    let mut token_lifetime = Duration::ZERO;
    for cache in &caches {
        token_lifetime = cache.token().await?.lifetime();
    }

    let counters = Arc::new(Counters::default());
    let interval = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|n| {
            let mut service = services[n % services.len()].clone();
            let counters = Arc::clone(&counters);
            let interval = Arc::clone(&interval);
            let resource = resource.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < end {
                    let request = Request::get(&resource)
                        .body(Empty::new())
                        .expect("a valid request");
                    let begin = Instant::now();
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    let result = exchange(&mut service, request).await;
                    let latency = begin.elapsed();
                    counters.count(result);
                    interval.lock().unwrap().record(micros(latency)).ok();
                    samples.push(Sample {
                        start: begin - origin,
                        latency,
                    });
                }
                samples
            })
        })
        .collect();

    // A live line a second.
    let ticker = {
        let counters = Arc::clone(&counters);
        let interval = Arc::clone(&interval);
        let caches = caches.clone();
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            let mut last_sent = 0;
            loop {
                let now = tick.tick().await;
                if now > end {
                    break;
                }
                let histogram = std::mem::replace(&mut *interval.lock().unwrap(), histogram());
                let sent = counters.sent.load(Ordering::Relaxed);
                let stats = fleet_stats(&caches);
                if !quiet {
                    println!(
                        "t={:>3.0}s  req/s={:>7}  p50={:>6.2}ms  p99={:>6.2}ms  tokens={}  renewals={}  failures={}  rejected={}",
                        (now - started).as_secs_f64(),
                        sent - last_sent,
                        ms(histogram.value_at_quantile(0.5)),
                        ms(histogram.value_at_quantile(0.99)),
                        stats.tokens,
                        stats.renewals,
                        stats.failures,
                        counters.rejected.load(Ordering::Relaxed),
                    );
                }
                last_sent = sent;
            }
        })
    };

    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await?);
    }
    let elapsed = started.elapsed();
    ticker.abort();

    // Split the requests by whether they overlapped a fetch (a renewal in flight).
    let windows = windows.lock().unwrap().clone();
    let renewal_windows: Vec<_> = windows
        .iter()
        .copied()
        .filter(|(start, _)| *start >= started - origin)
        .collect();
    let mut inside = histogram();
    let mut outside = histogram();
    for sample in &samples {
        let end = sample.start + sample.latency;
        let overlaps = renewal_windows
            .iter()
            .any(|(from, to)| sample.start <= *to && end >= *from);
        let target = if overlaps { &mut inside } else { &mut outside };
        target.record(micros(sample.latency)).ok();
    }
    let stats = fleet_stats(&caches);
    let logins = windows.len() as u64;
    let as_duration = |micros: u64| Duration::from_micros(micros);
    let report = Report {
        sent: counters.sent.load(Ordering::Relaxed),
        ok: counters.ok.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        logins: match &server {
            Some(server) => server.login_attempts(),
            None => logins,
        },
        renewals: stats.renewals,
        failures: stats.failures,
        elapsed,
        renewal_windows: renewal_windows.len(),
        replicas: caches.len(),
        token_lifetime,
        worst_in_renewal: as_duration(inside.max()),
        worst_outside_renewal: as_duration(outside.max()),
        p99_in_renewal: as_duration(inside.value_at_quantile(0.99)),
        p99_outside_renewal: as_duration(outside.value_at_quantile(0.99)),
    };
    if let Some(server) = &server {
        // The server's own count of refusals must agree with what the clients saw.
        assert_eq!(server.rejections(), report.rejected);
    }
    Ok(report)
}

/// The fleet's counters, summed over its replicas.
struct FleetStats {
    tokens: u64,
    renewals: u64,
    failures: u64,
}

fn fleet_stats(caches: &[TokenCache]) -> FleetStats {
    caches.iter().map(TokenCache::stats).fold(
        FleetStats {
            tokens: 0,
            renewals: 0,
            failures: 0,
        },
        |sum, stats| FleetStats {
            tokens: sum.tokens + stats.fetches - stats.failures,
            renewals: sum.renewals + stats.renewals,
            failures: sum.failures + stats.failures,
        },
    )
}

fn print_summary(args: &Args, report: &Report) {
    let secs = report.elapsed.as_secs_f64();
    println!();
    println!(
        "summary: {} requests in {:.1} s ({:.0}/s) with {} workers; {} ok, {} rejected upstream, {} errors",
        report.sent,
        secs,
        report.sent as f64 / secs,
        args.concurrency,
        report.ok,
        report.rejected,
        report.errors,
    );
    println!(
        "summary: {} /authtoken calls ({} renewals, {} failures) for {:.1} s tokens",
        report.logins,
        report.renewals,
        report.failures,
        report.token_lifetime.as_secs_f64(),
    );
    let lifetimes = (report.elapsed.as_secs_f64() / report.token_lifetime.as_secs_f64()).max(1.0);
    println!(
        "summary: fleet of {} replica(s){}: {:.2} logins per token lifetime",
        report.replicas,
        if args.redis.is_some() {
            " sharing through redis"
        } else {
            ""
        },
        report.logins as f64 / lifetimes,
    );
    println!(
        "summary: around the {} renewals: worst {:.2} ms, p99 {:.2} ms; elsewhere: worst {:.2} ms, p99 {:.2} ms",
        report.renewal_windows,
        report.worst_in_renewal.as_secs_f64() * 1000.0,
        report.p99_in_renewal.as_secs_f64() * 1000.0,
        report.worst_outside_renewal.as_secs_f64() * 1000.0,
        report.p99_outside_renewal.as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    // Whether every request got through: nothing rejected upstream, no error.
    let clean = if args.accounts.is_some() {
        run_accounts(args.clone()).await.map(|report| {
            print_accounts_summary(&args, &report);
            report.rejected == 0 && report.errors == 0
        })
    } else {
        run(args.clone()).await.map(|report| {
            print_summary(&args, &report);
            report.rejected == 0 && report.errors == 0
        })
    };
    match clean {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
