//! End to end: hyper-util's client sends `GET` requests over loopback to the reference server's
//! protected endpoint, through `BearerAuth` or through the floor, tower-http's `AddAuthorization`
//! with a static token fetched from the same server first. Both get `200`s.
//!
//! The server runs on a thread and runtime of its own; the client on the benchmark's thread, on
//! a single-threaded runtime. `end_to_end/sequential` sends one request at a time, so that every
//! nanosecond the layer adds shows in the latency; `end_to_end/concurrent_8` keeps 8 requests in
//! flight. The figure to compare is the throughput (requests/s) of the two variants of a group.
//!
//! After the criterion groups, the section `end_to_end/rounds` measures the ratio the robust way:
//! many short rounds, each timing the floor and `BearerAuth` back to back (in alternating order),
//! and the median and spread of the per-round ratios of requests/s. It prints a table;
//! `cargo bench --bench end_to_end -- rounds` runs it alone.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::{BoxError, Service};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuth, TokenCache, TokenSource};
use tower_http::auth::AddAuthorization;

use common::{Clock, Ratio, Rounds, RoundsMode, Sample, ServerThread, interleave, print_table};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends `iters` requests with `concurrency` of them in flight at a time; returns how long that
/// took.
async fn run<S>(service: &S, url: &str, concurrency: u64, iters: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + 'static,
    S::Error: Into<BoxError>,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let n = iters / concurrency + u64::from(i < iters % concurrency);
            tokio::task::spawn_local(common::send_http(service.clone(), url.to_owned(), n))
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task");
    }
    start.elapsed()
}

/// Adds `service` to `group` as `variant`.
fn bench<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    variant: &str,
    service: &S,
    setting: &Setting<'_>,
    concurrency: u64,
) where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + 'static,
    S::Error: Into<BoxError>,
{
    group.bench_function(variant, |b| {
        b.iter_custom(|iters| setting.time(service, concurrency, iters))
    });
}

/// Where the client runs and what it calls.
struct Setting<'a> {
    runtime: &'a Runtime,
    local: &'a tokio::task::LocalSet,
    url: &'a str,
}

impl Setting<'_> {
    /// Sends `iters` requests through `service`, `concurrency` at a time; returns how long that
    /// took.
    fn time<S>(&self, service: &S, concurrency: u64, iters: u64) -> Duration
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + 'static,
        S::Error: Into<BoxError>,
    {
        let work = run(service, self.url, concurrency, iters);
        self.runtime.block_on(self.local.run_until(work))
    }
}

fn end_to_end(c: &mut Criterion) {
    let server = ServerThread::start(ReferenceServer::builder());
    let runtime = common::current_thread();
    let local = tokio::task::LocalSet::new();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let (token, cache) = runtime.block_on(async {
        let token = AuthTokenSource::new(&server.base_url, server.credentials.clone())
            .expect("a valid source")
            .fetch()
            .await
            .expect("a token");
        let source = AuthTokenSource::new(&server.base_url, server.credentials.clone())
            .expect("a valid source");
        let cache = TokenCache::builder(source)
            .jitter(Duration::ZERO)
            .build()
            .expect("a valid configuration");
        cache.token().await.expect("a token");
        (token, cache)
    });
    let floor = AddAuthorization::bearer(client.clone(), token.expose_secret()).as_sensitive(true);
    let bearer = BearerAuth::new(client, cache);
    let setting = Setting {
        runtime: &runtime,
        local: &local,
        url: &server.protected_url,
    };

    for concurrency in [1, 8] {
        let name = match concurrency {
            1 => "end_to_end/sequential".to_owned(),
            n => format!("end_to_end/concurrent_{n}"),
        };
        let mut group = c.benchmark_group(name);
        group
            .throughput(Throughput::Elements(1))
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30);
        bench(&mut group, "floor", &floor, &setting, concurrency);
        bench(&mut group, "bearer_auth", &bearer, &setting, concurrency);
        group.finish();
    }

    // Criterion measures one variant after the other, so a change in the machine's load between
    // them shows up as a difference. Short rounds that time both back to back, in alternating
    // order, cancel that out: report the median and spread of their per-round ratios.
    let mode = common::rounds_mode("end_to_end/rounds");
    if mode == RoundsMode::Skip {
        return;
    }
    let (warm_up, rounds, requests) = match mode {
        RoundsMode::Smoke => (1, 2, 20),
        // More rounds of fewer requests pin the median down better than the reverse on a
        // loaded machine.
        _ => (6, 150, 200),
    };
    let started = Instant::now();
    let results: Vec<Rounds> = [1, 8]
        .into_iter()
        .map(|concurrency| Rounds {
            label: match concurrency {
                1 => "sequential".to_owned(),
                n => format!("{n} in flight"),
            },
            threads: 1,
            requests,
            rounds: interleave(
                warm_up,
                rounds,
                || Sample::measure(|| _ = setting.time(&floor, concurrency, requests)),
                || Sample::measure(|| _ = setting.time(&bearer, concurrency, requests)),
            ),
        })
        .collect();
    print_table(
        "end_to_end/rounds: BearerAuth/floor requests/s. Each round times the floor and \
         BearerAuth back to back, in alternating order; ratio = median of the per-round ratios; \
         ns = median time per request; cpu = the client thread's CPU time",
        Ratio::Throughput,
        &[Clock::Wall, Clock::Cpu],
        &results,
    );
    println!(
        "end_to_end/rounds took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    // The HTML plots take longer to draw than the measurements on this machine; the estimates
    // are still written to `target/criterion`.
    config = Criterion::default().without_plots();
    targets = end_to_end
}
criterion_main!(benches);
