//! Many accounts (`KeyedTokenCache`, `KeyedBearerAuthLayer`) at scale.
//!
//! - `keyed/hot_path`: the time of one request for a warm account against the static-header
//!   floor (tower-http's `AddAuthorization`), with 1, 1,000 and 100,000 live accounts, on one
//!   thread and on two, for four shapes of traffic: every request for one account (a run, as
//!   a service sending for one agency), the same through a fresh clone of the service per
//!   request (`clone().oneshot()`, the floor's too), eight accounts in turn (several warm ones,
//!   in the CPU caches), and every live account in a shuffled order (each lookup misses the
//!   CPU caches).
//!   The shuffled shape is also compared with a per-account floor: a static header per account
//!   in a read-only `HashMap`. Every variant builds the same request, account extension
//!   included. Interleaved rounds, as in `hot_path/rounds`; the allocations per request of
//!   both variants are counted too. For one account, the cost is also split in two: a single
//!   `BearerAuth` on that account's cache against the floor (what any one-token layer costs
//!   on these requests), and the keyed layer against that `BearerAuth` (what the account
//!   adds). `KEYED_SHAPE=shuffled` (or `one`, `cloned`, `8`) runs the shapes whose name
//!   contains it.
//! - `keyed/scale`: 100,000 accounts made and warmed (their logins answered at once by an
//!   in-process source), the memory each holds while idle, the process's CPU time over 10 s of
//!   idleness, the tasks alive, and what is left after the keyed cache is dropped; and the time
//!   to make one `AuthTokenSource`, which a platform's factory pays per account.
//!
//! `cargo bench --bench keyed` runs both; `-- hot_path` or `-- scale` one of them;
//! `cargo test --bench keyed` a quick smoke run of both.

mod common;

use std::collections::HashMap;
use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, KeyedBearerAuth, KeyedBearerAuthLayer,
    KeyedTokenCache, LoginBudget,
};
use tower_http::auth::AddAuthorization;

use common::{
    Account, AccountLogin, Clock, Ratio, Rounds, RoundsMode, Sample, Stopwatch, interleave,
    print_table,
};

// ---------------------------------------------------------------------------------------------
// Counting allocations, only while `COUNTING` is set: one relaxed load otherwise.
// ---------------------------------------------------------------------------------------------

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{ALLOCATIONS, COUNTING, Counting, LIVE_BYTES};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// The accounts.
// ---------------------------------------------------------------------------------------------

fn keyed(max: usize) -> KeyedTokenCache<Account> {
    KeyedTokenCache::builder(|account: &Account| Ok::<_, Error>(AccountLogin(account.0)))
        .max_accounts(max)
        // Room for every first login at once: this measures the cache, not the budget.
        .shared_login_budget(LoginBudget::new(1_000_000, Duration::from_micros(1)))
        .configure(|cache| {
            cache.login_budget(LoginBudget::new(1_000_000, Duration::from_micros(1)))
        })
        .build()
        .expect("valid settings")
}

/// Makes and warms `n` accounts, all at once as a platform's start-up traffic would; returns
/// how long it took.
async fn warm(accounts: &KeyedTokenCache<Account>, n: u32) -> Duration {
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..n {
        let accounts = accounts.clone();
        callers.spawn(async move { accounts.token(&Account(account)).await });
    }
    while let Some(token) = callers.join_next().await {
        token.expect("a caller").expect("a token");
    }
    start.elapsed()
}

/// The least a keyed client can do: a static header per account, looked up in a read-only
/// `HashMap` by the request's account extension, as a hand-written client with every token
/// known in advance would.
#[derive(Clone)]
struct KeyedFloor {
    headers: std::sync::Arc<HashMap<Account, HeaderValue, foldhash::fast::RandomState>>,
}

impl Service<Request<()>> for KeyedFloor {
    type Response = Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<()>, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        let account = req.extensions().get::<Account>().copied();
        if let Some(header) = account.and_then(|account| self.headers.get(&account)) {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, header.clone());
        }
        std::hint::black_box(&req);
        std::future::ready(Ok(Response::new(())))
    }
}

fn keyed_floor(live: u32) -> KeyedFloor {
    let headers = (0..live)
        .map(|a| {
            let mut value = HeaderValue::try_from(format!("Bearer {}-{a:08}", common::TOKEN))
                .expect("a header");
            value.set_sensitive(true);
            (Account(a), value)
        })
        .collect();
    KeyedFloor {
        headers: std::sync::Arc::new(headers),
    }
}

/// Which accounts a run of requests names, among the live ones.
#[derive(Clone, Copy)]
enum Shape {
    /// Every request names the same account: a service's run for one account.
    One,
    /// Eight accounts in turn: several warm accounts, all in the CPU caches.
    Eight,
    /// Every live account in a shuffled order, repeated: each lookup misses the CPU caches, as
    /// a platform's traffic over many accounts would.
    Shuffled,
    /// One account, each request through a fresh clone of the service (`clone().oneshot()`, as
    /// most Tower clients are used), the floor's too: clones start without a memo, so every
    /// request goes through the account map.
    Cloned,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::One => "one account",
            Shape::Eight => "8 in turn",
            Shape::Shuffled => "all shuffled",
            Shape::Cloned => "one, cloned",
        }
    }
}

/// The accounts of `n` requests of `shape` over `live` accounts.
fn schedule(live: u32, shape: Shape, n: usize) -> Vec<Account> {
    let mut order: Vec<u32> = (0..live).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    let used = match shape {
        Shape::One | Shape::Cloned => 1,
        Shape::Eight => 8,
        Shape::Shuffled => order.len(),
    };
    order.truncate(used);
    order.iter().cycle().take(n).map(|a| Account(*a)).collect()
}

/// Sends each request through a fresh clone of `S`, as `service.clone().oneshot(request)` does.
#[derive(Clone)]
struct Cloned<S>(S);

impl<S> Service<Request<()>> for Cloned<S>
where
    S: Service<Request<()>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, Request<()>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.0.clone().oneshot(req)
    }
}

fn request(account: Account) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(account);
    request
}

/// Sends one request per entry of `accounts` through `service`.
async fn send<S>(service: &mut S, accounts: &[Account])
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    for account in accounts {
        let ready = service.ready().await.expect("ready");
        let response = ready
            .call(std::hint::black_box(request(*account)))
            .await
            .expect("a response");
        std::hint::black_box(response);
    }
}

type Floor = AddAuthorization<common::NoOp>;
type Keyed = KeyedBearerAuth<common::NoOp, Account>;

fn floor() -> Floor {
    AddAuthorization::bearer(common::NoOp, common::TOKEN).as_sensitive(true)
}

// ---------------------------------------------------------------------------------------------
// keyed/hot_path
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Plan {
    warm_up: usize,
    rounds: usize,
    requests: usize,
}

impl Plan {
    fn of(mode: RoundsMode) -> Plan {
        match mode {
            RoundsMode::Smoke => Plan {
                warm_up: 1,
                rounds: 2,
                requests: 200,
            },
            _ => Plan {
                warm_up: 5,
                rounds: 100,
                requests: 20_000,
            },
        }
    }
}

/// Two threads, each on its own runtime, send `accounts` through their clone of `service`.
fn two_threads<S>(runtimes: &[Runtime; 2], service: &S, accounts: &[Account]) -> Sample
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let barrier = Barrier::new(2);
    let samples = std::thread::scope(|scope| {
        runtimes
            .each_ref()
            .map(|runtime| {
                let mut service = service.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    runtime.block_on(async {
                        send(&mut service, &accounts[..64.min(accounts.len())]).await;
                        barrier.wait();
                        let stopwatch = Stopwatch::start();
                        send(&mut service, accounts).await;
                        stopwatch.stop()
                    })
                })
            })
            .map(|thread| thread.join().expect("the benchmark thread"))
    });
    Sample::concurrent(&samples)
}

/// Interleaved rounds of `floor` and `keyed` over `order`, on one thread, then on two.
fn compare<F, K>(
    (main, runtimes, plan, label, order): (&Runtime, &[Runtime; 2], Plan, &str, &[Account]),
    floor: &mut F,
    keyed: &mut K,
) -> [Rounds; 2]
where
    F: Service<Request<()>, Response = Response<()>> + Clone + Send,
    F::Error: std::fmt::Debug,
    K: Service<Request<()>, Response = Response<()>> + Clone + Send,
    K::Error: std::fmt::Debug,
{
    let one = interleave(
        plan.warm_up,
        plan.rounds,
        || Sample::measure(|| main.block_on(send(floor, order))),
        || Sample::measure(|| main.block_on(send(keyed, order))),
    );
    let (floor, keyed) = (floor.clone(), keyed.clone());
    let two = interleave(
        plan.warm_up,
        plan.rounds,
        || two_threads(runtimes, &floor, order),
        || two_threads(runtimes, &keyed, order),
    );
    [(1, one), (2, two)].map(|(threads, rounds)| Rounds {
        label: label.to_owned(),
        threads,
        requests: plan.requests as u64,
        rounds,
    })
}

/// Allocations per request of `service` over `accounts`.
fn allocations_per_request<S>(runtime: &Runtime, service: &mut S, accounts: &[Account]) -> f64
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    runtime.block_on(send(service, accounts));
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / accounts.len() as f64
}

fn hot_path(mode: RoundsMode) {
    let started = Instant::now();
    let plan = Plan::of(mode);
    let main = common::current_thread();
    let runtimes = [common::current_thread(), common::current_thread()];
    let mut results = Vec::new();
    let mut keyed_results = Vec::new();
    let mut parts = Vec::new();
    let mut allocations = Vec::new();
    let sizes: &[u32] = match mode {
        RoundsMode::Smoke => &[1, 1_000],
        _ => &[1, 1_000, 100_000],
    };
    for &live in sizes {
        let accounts = keyed(live as usize);
        main.block_on(warm(&accounts, live));
        let mut floor = floor();
        let mut keyed: Keyed = KeyedBearerAuthLayer::new(accounts.clone()).layer(common::NoOp);
        // Every account is used once before measuring, so that none is made during a round.
        main.block_on(send(
            &mut keyed,
            &schedule(live, Shape::Shuffled, live as usize),
        ));
        let mut per_account = keyed_floor(live);
        let shapes: &[Shape] = match live {
            1 => &[Shape::One, Shape::Cloned],
            _ => &[Shape::One, Shape::Cloned, Shape::Eight, Shape::Shuffled],
        };
        for &shape in shapes {
            if std::env::var("KEYED_SHAPE").is_ok_and(|only| !shape.name().contains(&only)) {
                continue;
            }
            let order = schedule(live, shape, plan.requests);
            let label = format!("{live} live, {}", shape.name());
            let fixed = (&main, &runtimes, plan, label.as_str(), order.as_slice());
            if matches!(shape, Shape::Cloned) {
                let (mut floor, mut keyed) = (Cloned(floor.clone()), Cloned(keyed.clone()));
                results.extend(compare(fixed, &mut floor, &mut keyed));
                allocations.push((
                    label,
                    allocations_per_request(&main, &mut floor, &order),
                    allocations_per_request(&main, &mut keyed, &order),
                ));
                continue;
            }
            results.extend(compare(fixed, &mut floor, &mut keyed));
            if matches!(shape, Shape::Shuffled) {
                keyed_results.extend(compare(fixed, &mut per_account, &mut keyed));
            }
            if matches!(shape, Shape::One) {
                // Where the cost goes: what any single-token layer costs on these requests,
                // and what the account adds on top of it.
                let cache = accounts.cache(&order[0]).expect("a warm account");
                let mut single = BearerAuthLayer::new(cache).layer(common::NoOp);
                let label = format!("{live} live, BearerAuth/floor");
                let fixed = (&main, &runtimes, plan, label.as_str(), order.as_slice());
                parts.extend(compare(fixed, &mut floor, &mut single));
                let label = format!("{live} live, keyed/BearerAuth");
                let fixed = (&main, &runtimes, plan, label.as_str(), order.as_slice());
                parts.extend(compare(fixed, &mut single, &mut keyed));
            }
            allocations.push((
                label,
                allocations_per_request(&main, &mut floor, &order),
                allocations_per_request(&main, &mut keyed, &order),
            ));
        }
        assert_eq!(
            accounts.stats().created,
            u64::from(live),
            "no account was made twice"
        );
    }
    results.sort_by_key(|r| r.threads);
    keyed_results.sort_by_key(|r| r.threads);
    parts.sort_by_key(|r| r.threads);
    print_table(
        "keyed/hot_path: KeyedBearerAuth/floor time per request, each request for a warm \
         account (one, 8 in turn, or all live ones shuffled); interleaved rounds; ratio = \
         median of the per-round ratios",
        Ratio::Time,
        &[Clock::Cpu, Clock::Wall],
        &results,
    );
    print_table(
        "keyed/hot_path: KeyedBearerAuth against the per-account floor (a static header per \
         account, looked up in a read-only HashMap by the same extension), all accounts \
         shuffled; 'floor ns' is that floor",
        Ratio::Time,
        &[Clock::Cpu],
        &keyed_results,
    );
    print_table(
        "keyed/hot_path: where the cost of one account's run goes. BearerAuth/floor: a single \
         BearerAuth on that account's cache against the floor, on the same requests; \
         keyed/BearerAuth: the keyed layer against that BearerAuth ('floor ns' is the first, \
         'bearer ns' the second of each pair)",
        Ratio::Time,
        &[Clock::Cpu],
        &parts,
    );
    println!();
    println!(
        "{:<28} {:>18} {:>18}",
        "allocations per request", "floor", "keyed"
    );
    for (label, floor, keyed) in &allocations {
        println!("{label:<28} {floor:>18.3} {keyed:>18.3}");
        assert!(
            (keyed - floor).abs() < 0.01,
            "the keyed layer allocated: {keyed} per request against the floor's {floor}"
        );
    }
    println!(
        "keyed/hot_path took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// keyed/scale
// ---------------------------------------------------------------------------------------------

/// The CPU time (user + system) the whole process has used.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports them in clock ticks of 1/100 s (USER_HZ).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The time to make the first `AuthTokenSource` (which builds the client every source without
/// one of its own shares), and then one more, averaged over `n`: what a platform's factory pays
/// for each new account.
fn source_cost(n: u32) -> (Duration, Duration) {
    let source = |i: u32| {
        let credentials = Credentials::new(format!("agency-{i}"), "password");
        AuthTokenSource::new("https://api.example.com/v1", credentials).expect("a source")
    };
    let start = Instant::now();
    let first = source(0);
    let first_took = start.elapsed();
    let start = Instant::now();
    let sources: Vec<AuthTokenSource> = (1..=n).map(source).collect();
    let each = start.elapsed() / n;
    drop((first, sources));
    (first_took, each)
}

fn scale(mode: RoundsMode) {
    let (n, idle) = match mode {
        RoundsMode::Smoke => (1_000u32, Duration::from_millis(200)),
        _ => (100_000u32, Duration::from_secs(10)),
    };
    let runtime = common::multi_thread(2);
    let metrics = runtime.metrics();
    let accounts = keyed(n as usize);

    LIVE_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let made_in = runtime.block_on(warm(&accounts, n));
    // Let the accounts' drivers park.
    runtime.block_on(async {
        while metrics.num_alive_tasks() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let held = LIVE_BYTES.load(Ordering::Relaxed);
    let tasks = metrics.num_alive_tasks();

    let cpu_before = process_cpu();
    runtime.block_on(async { tokio::time::sleep(idle).await });
    let idle_cpu = process_cpu().saturating_sub(cpu_before);
    let tasks_idle = metrics.num_alive_tasks();

    drop(accounts);
    runtime.block_on(async {
        for _ in 0..100 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let left = LIVE_BYTES.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);
    let tasks_after = metrics.num_alive_tasks();

    let (first_source, source) = source_cost(1_000);
    println!();
    println!("keyed/scale: {n} accounts, each warm with its own one-hour token");
    println!(
        "  an AuthTokenSource made in   {:>10.1} µs (over 1,000; the first, {:.1} ms)",
        source.as_secs_f64() * 1e6,
        first_source.as_secs_f64() * 1e3
    );
    println!(
        "  made and warm in            {:>10.3} s",
        made_in.as_secs_f64()
    );
    println!(
        "  memory held while idle      {:>10.1} MB, {:.0} bytes per account",
        held as f64 / 1e6,
        held as f64 / f64::from(n)
    );
    println!(
        "  tasks alive while idle      {tasks:>10} (the sweeper; no task or timer per account)"
    );
    println!(
        "  process CPU over {:>4.1} s idle {:>8} ms",
        idle.as_secs_f64(),
        idle_cpu.as_millis()
    );
    println!("  tasks alive after the idle  {tasks_idle:>10}");
    println!("  after drop: tasks {tasks_after}, bytes still held {left}");
    // At 100,000 only: 1,000 accounts fill their map to another share of its capacity.
    assert!(
        !matches!(mode, RoundsMode::Full) || held as f64 / f64::from(n) <= 1024.0,
        "over 1 KiB per idle account (issue 14)"
    );
    assert_eq!(
        tasks, 1,
        "only the sweeper runs while the accounts are idle"
    );
    assert_eq!(tasks_after, 0, "every task is gone with the keyed cache");
}

fn main() {
    match common::rounds_mode("keyed/hot_path") {
        RoundsMode::Skip => {}
        mode => hot_path(mode),
    }
    match common::rounds_mode("keyed/scale") {
        RoundsMode::Skip => {}
        mode => scale(mode),
    }
}
