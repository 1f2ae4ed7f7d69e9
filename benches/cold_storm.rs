//! A cold storm: N callers at once through `BearerAuth` over a cold cache whose token source takes
//! 50 ms. Each iteration builds a new cache, starts the N callers, and measures the time until the
//! last of them has its response. It asserts that the N callers caused exactly one fetch.
//!
//! With single flight the time stays at about one fetch (50 ms) whatever N is: the callers wait
//! together for the same fetch rather than in a queue.

mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use http::Request;
use tower::ServiceExt;
use tower_authtoken::TokenCache;

use common::{HOUR, Slow, upstream};

const FETCH: Duration = Duration::from_millis(50);

/// When the milestones of one storm happened, measured from its start.
struct Storm {
    /// The last caller was started.
    spawned: Duration,
    /// The one fetch started and finished.
    fetch: (Duration, Duration),
    /// The last caller had its response.
    served: Duration,
}

/// One storm of `callers`.
async fn storm(callers: usize) -> Storm {
    let source = Slow::new(FETCH, HOUR);
    let cache = TokenCache::builder(source.clone())
        .jitter(Duration::ZERO)
        .build()
        .expect("a valid configuration");
    let service = tower_authtoken::BearerAuth::new(upstream(), cache);

    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(Request::new(())).await;
                (response.is_ok(), Instant::now())
            })
        })
        .collect();
    let spawned = start.elapsed();
    let mut last = start;
    for task in tasks {
        let (ok, served) = task.await.expect("a caller");
        assert!(ok, "every caller gets a response");
        last = last.max(served);
    }
    assert_eq!(source.fetches(), 1, "{callers} callers caused one fetch");
    let (fetch_start, fetch_end) = source.last_fetch().expect("a fetch");
    Storm {
        spawned,
        fetch: (fetch_start - start, fetch_end - start),
        served: last - start,
    }
}

fn cold_storm(c: &mut Criterion) {
    let runtime = common::multi_thread(2);
    let mut group = c.benchmark_group("cold_storm");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for callers in [1, 100, 1_000, 10_000] {
        group.bench_with_input(
            BenchmarkId::from_parameter(callers),
            &callers,
            |b, &callers| {
                b.to_async(&runtime).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += storm(callers).await.served;
                    }
                    total
                })
            },
        );
    }
    group.finish();

    // Where the time of one storm of each size goes.
    for callers in [1, 100, 1_000, 10_000] {
        let storm = runtime.block_on(storm(callers));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "cold_storm/{callers}: 1 fetch from {:.2} to {:.2} ms; all callers started by {:.2} ms; \
             the last served at {:.2} ms, {:.2} ms after the fetch",
            ms(storm.fetch.0),
            ms(storm.fetch.1),
            ms(storm.spawned),
            ms(storm.served),
            ms(storm.served - storm.fetch.1),
        );
    }
}

criterion_group!(benches, cold_storm);
criterion_main!(benches);
