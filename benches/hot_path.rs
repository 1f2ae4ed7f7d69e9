//! The cost of one request with a warm token: `ready().await` + `call(http::Request<()>)` against
//! a trivial inner service, for four clients compared in the same group:
//!
//! - `floor`: tower-http's `AddAuthorization::bearer` with a static token. Nothing that sets a
//!   header can do less.
//! - `bearer_auth`: this crate's `BearerAuth` over a warm `TokenCache`.
//! - `hand_written`: the typical hand-written cache, a `tokio::sync::RwLock` with a clock read and
//!   an expiry check on every request (`common::HandWrittenCache`), looked up inline before the
//!   inner service is called: its cheapest form, and the baseline of the targets.
//! - `hand_written_layer`: the same cache packaged as a Tower service, which boxes its future as
//!   hand-written async middleware does; for reference.
//!
//! `hot_path/one_thread` sends the requests from one thread. `hot_path/two_threads` has two
//! threads, each on its own single-threaded runtime, hammer clones of one shared client; each
//! sample is the time per request on each thread while the other one runs too.
//!
//! Criterion measures one variant after the other, so a change in the machine's load between
//! them shows up as a difference between variants. After the criterion groups, the section
//! `hot_path/rounds` therefore measures the ratio `BearerAuth` / floor the robust way: many short
//! rounds, each timing the floor and `BearerAuth` back to back (in alternating order), and the
//! median and spread of the per-round ratios, for each of these inner services:
//!
//! - a no-op whose future is a `std::future::Ready` ([`common::NoOp`]);
//! - a `service_fn` returning a `Ready` (`common::upstream`, the inner service of the criterion
//!   groups);
//! - a `service_fn` returning an `async` block that owns the request (`common::async_upstream`);
//! - hyper-util's legacy client, calling the reference server over loopback (fewer rounds: each
//!   request takes tens of microseconds).
//!
//! The cheap ones run on one thread and on two (as in `hot_path/two_threads`). Each time is read
//! by the wall clock and by the measuring thread's CPU clock, which does not count the time other
//! processes ran instead of ours: on a shared machine, read the CPU figures. It prints a table;
//! `cargo bench --bench hot_path -- rounds` runs this section alone.

mod common;

use std::convert::Infallible;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use http::{Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::Service;
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuth, TokenCache, TokenSource};
use tower_http::auth::AddAuthorization;

use common::{
    Client, Clock, Ratio, Rounds, RoundsMode, Sample, ServerThread, Stopwatch, bearer, floor,
    interleave, print_table, run, send_http, upstream,
};

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
}

fn one_thread(c: &mut Criterion) {
    let runtime = common::current_thread();
    let cache = runtime.block_on(common::warm_cache());
    let hand_written = runtime.block_on(common::warm_hand_written());

    let mut group = c.benchmark_group("hot_path/one_thread");
    configure(&mut group);
    group.bench_function("floor", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut client = floor(upstream(), common::TOKEN);
            async move { run(&mut client, iters).await }
        })
    });
    group.bench_function("bearer_auth", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut client = bearer(upstream(), cache.clone());
            async move { run(&mut client, iters).await }
        })
    });
    group.bench_function("hand_written", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut client = common::HandWritten {
                inner: upstream(),
                cache: hand_written.clone(),
            };
            async move { run(&mut client, iters).await }
        })
    });
    group.bench_function("hand_written_layer", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut client = common::Tower(common::HandWrittenLayer {
                inner: upstream(),
                cache: hand_written.clone(),
            });
            async move { run(&mut client, iters).await }
        })
    });
    group.finish();
}

/// Two threads, each on its own single-threaded runtime, send `iters` requests each through
/// their own clone of `client`; returns what each thread measured.
fn contended<C: Client + Clone + Send>(
    runtimes: &[Runtime; 2],
    client: &C,
    iters: u64,
) -> [Sample; 2] {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        runtimes
            .each_ref()
            .map(|runtime| {
                let mut client = client.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    runtime.block_on(async {
                        // First requests on a new thread set up its thread-locals.
                        run(&mut client, 64).await;
                        barrier.wait();
                        let stopwatch = Stopwatch::start();
                        run(&mut client, iters).await;
                        stopwatch.stop()
                    })
                })
            })
            .map(|thread| thread.join().expect("the benchmark thread"))
    })
}

/// The longer of the two threads' times, for criterion.
fn contended_wall<C: Client + Clone + Send>(
    runtimes: &[Runtime; 2],
    client: &C,
    iters: u64,
) -> Duration {
    Sample::concurrent(&contended(runtimes, client, iters)).wall
}

fn two_threads(c: &mut Criterion) {
    let main = common::current_thread();
    let cache = main.block_on(common::warm_cache());
    let hand_written = main.block_on(common::warm_hand_written());
    let runtimes = [common::current_thread(), common::current_thread()];

    let mut group = c.benchmark_group("hot_path/two_threads");
    configure(&mut group);
    group.sample_size(30);
    let floor = floor(upstream(), common::TOKEN);
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| contended_wall(&runtimes, &floor, iters))
    });
    let bearer = bearer(upstream(), cache.clone());
    group.bench_function("bearer_auth", |b| {
        b.iter_custom(|iters| contended_wall(&runtimes, &bearer, iters))
    });
    let hand_written_layer = common::Tower(common::HandWrittenLayer {
        inner: upstream(),
        cache: hand_written.clone(),
    });
    let hand_written = common::HandWritten {
        inner: upstream(),
        cache: hand_written,
    };
    group.bench_function("hand_written", |b| {
        b.iter_custom(|iters| contended_wall(&runtimes, &hand_written, iters))
    });
    group.bench_function("hand_written_layer", |b| {
        b.iter_custom(|iters| contended_wall(&runtimes, &hand_written_layer, iters))
    });
    group.finish();
    // The caches' background tasks live on `main`: keep it until the end.
    drop(main);
}

/// How many rounds of how many requests.
#[derive(Clone, Copy)]
struct Plan {
    /// Rounds run first and discarded.
    warm_up: usize,
    rounds: usize,
    requests: u64,
}

impl Plan {
    /// The plan for in-process inner services: about 2 ms per variant and round.
    fn cheap(mode: RoundsMode) -> Plan {
        match mode {
            RoundsMode::Smoke => Plan {
                warm_up: 1,
                rounds: 2,
                requests: 100,
            },
            _ => Plan {
                warm_up: 10,
                rounds: 200,
                requests: 20_000,
            },
        }
    }

    /// The plan for hyper-util's client over loopback: about 4 ms per variant and round on an
    /// idle machine. More rounds of fewer requests pin the median down better than the reverse
    /// on a loaded machine.
    fn loopback(mode: RoundsMode) -> Plan {
        match mode {
            RoundsMode::Smoke => Plan {
                warm_up: 1,
                rounds: 2,
                requests: 5,
            },
            _ => Plan {
                warm_up: 6,
                rounds: 150,
                requests: 100,
            },
        }
    }

    fn run(
        &self,
        label: &str,
        threads: usize,
        floor: impl FnMut() -> Sample,
        bearer: impl FnMut() -> Sample,
    ) -> Rounds {
        Rounds {
            label: label.to_owned(),
            threads,
            requests: self.requests,
            rounds: interleave(self.warm_up, self.rounds, floor, bearer),
        }
    }
}

/// Interleaved rounds of the floor and `BearerAuth` over `inner`, on one thread and on two.
fn cheap_rounds<S>(
    label: &str,
    inner: S,
    cache: &TokenCache,
    runtimes: &[Runtime; 2],
    plan: Plan,
) -> [Rounds; 2]
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut floor = floor(inner.clone(), common::TOKEN);
    let mut bearer = bearer(inner, cache.clone());
    let runtime = &runtimes[0];
    let n = plan.requests;

    let one = plan.run(
        label,
        1,
        || Sample::measure(|| _ = runtime.block_on(run(&mut floor, n))),
        || Sample::measure(|| _ = runtime.block_on(run(&mut bearer, n))),
    );
    let two = plan.run(
        label,
        2,
        || Sample::concurrent(&contended(runtimes, &floor, n)),
        || Sample::concurrent(&contended(runtimes, &bearer, n)),
    );
    [one, two]
}

/// Interleaved rounds of the floor and `BearerAuth` over hyper-util's client, against the
/// reference server on a thread of its own. The CPU time is the client thread's.
fn loopback_rounds(plan: Plan) -> Rounds {
    let server = ServerThread::start(ReferenceServer::builder());
    let runtime = common::current_thread();
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let (token, cache) = runtime.block_on(async {
        let source = || {
            AuthTokenSource::new(&server.base_url, server.credentials.clone())
                .expect("a valid source")
        };
        let token = source().fetch().await.expect("a token");
        let cache = TokenCache::builder(source())
            .jitter(Duration::ZERO)
            .build()
            .expect("a valid configuration");
        cache.token().await.expect("a token");
        (token, cache)
    });
    let mut floor =
        AddAuthorization::bearer(client.clone(), token.expose_secret()).as_sensitive(true);
    let mut bearer = BearerAuth::new(client, cache);
    let url = &server.protected_url;
    let n = plan.requests;

    plan.run(
        "hyper-util client, loopback",
        1,
        || Sample::measure(|| runtime.block_on(send_http(&mut floor, url.clone(), n))),
        || Sample::measure(|| runtime.block_on(send_http(&mut bearer, url.clone(), n))),
    )
}

/// The section `hot_path/rounds`: prints the tables of per-round ratios.
fn rounds_section(mode: RoundsMode) {
    let started = Instant::now();
    let main = common::current_thread();
    let cache = main.block_on(common::warm_cache());
    let runtimes = [common::current_thread(), common::current_thread()];

    let cheap = Plan::cheap(mode);
    let mut results = Vec::new();
    results.extend(cheap_rounds(
        "Ready no-op",
        common::NoOp,
        &cache,
        &runtimes,
        cheap,
    ));
    results.extend(cheap_rounds(
        "service_fn -> Ready",
        upstream(),
        &cache,
        &runtimes,
        cheap,
    ));
    results.extend(cheap_rounds(
        "service_fn -> async block",
        common::async_upstream(),
        &cache,
        &runtimes,
        cheap,
    ));
    results.push(loopback_rounds(Plan::loopback(mode)));
    // One thread first, then two.
    results.sort_by_key(|result| result.threads);

    print_table(
        "hot_path/rounds: BearerAuth/floor time per request. Each round times the floor and \
         BearerAuth back to back, in alternating order; ratio = median of the per-round ratios; \
         ns = median ns per request; cpu = the measuring thread's CPU time",
        Ratio::Time,
        &[Clock::Cpu, Clock::Wall],
        &results,
    );
    println!(
        "hot_path/rounds took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The cache's background task lives on `main`: keep it until the end.
    drop(main);
}

criterion_group! {
    name = benches;
    // The HTML plots take longer to draw than the measurements on this machine; the estimates
    // are still written to `target/criterion`.
    config = Criterion::default().without_plots();
    targets = one_thread, two_threads
}

fn main() {
    benches();
    match common::rounds_mode("hot_path/rounds") {
        RoundsMode::Skip => {}
        mode => rounds_section(mode),
    }
    Criterion::default().configure_from_args().final_summary();
}
