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

mod common;

use std::sync::Barrier;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

use common::{Client, bearer, floor, run, upstream};

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
/// their own clone of `client`; returns the longer of their two times.
fn contended<C: Client + Clone + Send>(
    runtimes: &[Runtime; 2],
    client: &C,
    iters: u64,
) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let threads = runtimes.each_ref().map(|runtime| {
            let mut client = client.clone();
            let barrier = &barrier;
            scope.spawn(move || {
                runtime.block_on(async {
                    // First requests on a new thread set up its thread-locals.
                    run(&mut client, 64).await;
                    barrier.wait();
                    run(&mut client, iters).await
                })
            })
        });
        threads
            .map(|thread| thread.join().expect("the benchmark thread"))
            .into_iter()
            .max()
            .expect("two threads")
    })
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
        b.iter_custom(|iters| contended(&runtimes, &floor, iters))
    });
    let bearer = bearer(upstream(), cache.clone());
    group.bench_function("bearer_auth", |b| {
        b.iter_custom(|iters| contended(&runtimes, &bearer, iters))
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
        b.iter_custom(|iters| contended(&runtimes, &hand_written, iters))
    });
    group.bench_function("hand_written_layer", |b| {
        b.iter_custom(|iters| contended(&runtimes, &hand_written_layer, iters))
    });
    group.finish();
    // The caches' background tasks live on `main`: keep it until the end.
    drop(main);
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
