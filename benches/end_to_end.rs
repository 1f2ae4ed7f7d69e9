//! End to end: hyper-util's client sends `GET` requests over loopback to the reference server's
//! protected endpoint, through `BearerAuth` or through the floor, tower-http's `AddAuthorization`
//! with a static token fetched from the same server first. Both get `200`s.
//!
//! The server runs on a thread and runtime of its own; the client on the benchmark's thread, on
//! a single-threaded runtime. `end_to_end/sequential` sends one request at a time, so that every
//! nanosecond the layer adds shows in the latency; `end_to_end/concurrent_8` keeps 8 requests in
//! flight. The figure to compare is the throughput (requests/s) of the two variants of a group.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::{BoxError, Service, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuth, TokenCache, TokenSource};
use tower_http::auth::AddAuthorization;

use common::ServerThread;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends `n` requests one after another and checks that each is accepted.
async fn send<S>(mut service: S, url: String, n: u64)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    for _ in 0..n {
        let request = Request::get(&url)
            .body(Empty::new())
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
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.expect("the body");
        std::hint::black_box(body);
    }
}

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
            tokio::task::spawn_local(send(service.clone(), url.to_owned(), n))
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
        b.iter_custom(|iters| {
            let work = run(service, setting.url, concurrency, iters);
            setting.runtime.block_on(setting.local.run_until(work))
        })
    });
}

/// Where the client runs and what it calls.
struct Setting<'a> {
    runtime: &'a Runtime,
    local: &'a tokio::task::LocalSet,
    url: &'a str,
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
    // them shows up as a difference. Alternating short rounds of the two cancels that out.
    for concurrency in [1, 8] {
        let rounds = 15;
        let requests = 2_000;
        let mut ratios: Vec<f64> = (0..rounds)
            .map(|_| {
                let work = run(&floor, setting.url, concurrency, requests);
                let floor_time = runtime.block_on(local.run_until(work));
                let work = run(&bearer, setting.url, concurrency, requests);
                let bearer_time = runtime.block_on(local.run_until(work));
                // Requests/s with the layer divided by requests/s with the static header.
                floor_time.as_secs_f64() / bearer_time.as_secs_f64()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "end_to_end/{}: bearer_auth/floor requests/s = {:.3} (median of {rounds} alternating \
             rounds of {requests} requests; range {:.3}-{:.3})",
            match concurrency {
                1 => "sequential".to_owned(),
                n => format!("concurrent_{n}"),
            },
            ratios[rounds / 2],
            ratios[0],
            ratios[rounds - 1],
        );
    }
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
