//! Renewal boundary: does a renewal stall traffic?
//!
//! Steady traffic (8 tasks, each sending one request per millisecond to an in-process upstream)
//! runs for 6.5 s while tokens that live 2 s are renewed against the reference server, whose
//! login takes 200 ms. A request is *in the renewal window* when a login was in flight at any
//! moment between its start and its end. The table compares the latency of the requests in those
//! windows with that of all the others, for `BearerAuth` and for the hand-written cache, which
//! renews under its write lock.
//!
//! Not a criterion benchmark: it prints its own table (`harness = false`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Request;
use tokio::time::MissedTickBehavior;
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, Error, Token, TokenCache, TokenSource};

use common::{Client, HandWritten, HandWrittenCache, ServerThread, bearer, upstream};

const LIFETIME: Duration = Duration::from_secs(2);
const LOGIN: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_millis(6500);
const WORKERS: usize = 8;
const PERIOD: Duration = Duration::from_millis(1);

/// Counts the logins started and finished, so that each request can tell whether one overlapped
/// it.
#[derive(Clone, Default)]
struct Logins {
    started: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
}

impl Logins {
    fn snapshot(&self) -> (u64, u64) {
        // `finished` first: a login that finishes in between is then seen as in flight.
        let finished = self.finished.load(Ordering::SeqCst);
        (self.started.load(Ordering::SeqCst), finished)
    }
}

struct Windowed<S> {
    inner: S,
    logins: Logins,
}

impl<S: TokenSource> TokenSource for Windowed<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        self.logins.started.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.fetch().await;
        self.logins.finished.fetch_add(1, Ordering::SeqCst);
        result
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

struct Latencies {
    renewal: Histogram<u64>,
    outside: Histogram<u64>,
}

/// Runs the traffic through clones of `client`; returns the latencies, in nanoseconds.
async fn traffic<C>(client: C, logins: Logins) -> Latencies
where
    C: Client + Clone + Send + 'static,
{
    let end = Instant::now() + RUN;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let mut client = client.clone();
            let logins = logins.clone();
            tokio::spawn(async move {
                let mut latencies = Latencies {
                    renewal: histogram(),
                    outside: histogram(),
                };
                let mut tick = tokio::time::interval(PERIOD);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                while Instant::now() < end {
                    tick.tick().await;
                    let before = logins.snapshot();
                    let start = Instant::now();
                    let response = client.send(Request::new(())).await;
                    let latency = start.elapsed();
                    let after = logins.snapshot();
                    std::hint::black_box(response);
                    let in_flight = |(started, finished): (u64, u64)| started != finished;
                    let in_window = in_flight(before) || in_flight(after) || before.0 != after.0;
                    let target = if in_window {
                        &mut latencies.renewal
                    } else {
                        &mut latencies.outside
                    };
                    target.saturating_record(latency.as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Latencies {
        renewal: histogram(),
        outside: histogram(),
    };
    for worker in workers {
        let latencies = worker.await.expect("a worker");
        all.renewal.add(&latencies.renewal).expect("same bounds");
        all.outside.add(&latencies.outside).expect("same bounds");
    }
    all
}

fn server() -> ServerThread {
    ServerThread::start(
        ReferenceServer::builder()
            .token_lifetime(LIFETIME)
            .login_delay(LOGIN),
    )
}

fn source(server: &ServerThread, logins: &Logins) -> Windowed<AuthTokenSource> {
    Windowed {
        inner: AuthTokenSource::new(&server.base_url, server.credentials.clone())
            .expect("a valid source"),
        logins: logins.clone(),
    }
}

struct Row {
    variant: &'static str,
    renewals: u64,
    latencies: Latencies,
}

fn bearer_auth(runtime: &tokio::runtime::Runtime) -> Row {
    let server = server();
    let logins = Logins::default();
    let latencies = runtime.block_on(async {
        let cache = TokenCache::builder(source(&server, &logins))
            .jitter(Duration::ZERO)
            .build()
            .expect("a valid configuration");
        cache.token().await.expect("a token");
        traffic(bearer(upstream(), cache), logins.clone()).await
    });
    Row {
        variant: "bearer_auth",
        renewals: logins.snapshot().1 - 1,
        latencies,
    }
}

fn hand_written(runtime: &tokio::runtime::Runtime) -> Row {
    let server = server();
    let logins = Logins::default();
    let latencies = runtime.block_on(async {
        let cache = Arc::new(HandWrittenCache::new(source(&server, &logins)));
        cache.header().await.expect("a token");
        let client = HandWritten {
            inner: upstream(),
            cache,
        };
        traffic(client, logins.clone()).await
    });
    Row {
        variant: "hand_written",
        renewals: logins.snapshot().1 - 1,
        latencies,
    }
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

fn main() {
    // `cargo bench -- FILTER` runs this only if FILTER is part of its name.
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    if !"renewal_boundary".contains(filter.as_str()) {
        return;
    }
    let runtime = common::multi_thread(2);
    println!(
        "renewal_boundary: {WORKERS} tasks x 1 request/{PERIOD:?}, {LIFETIME:?} tokens, {LOGIN:?} login, {RUN:?} per variant, 2 worker threads"
    );
    let rows = [bearer_auth(&runtime), hand_written(&runtime)];
    println!(
        "{:<14} {:>8} {:<9} {:>9} {:>11} {:>11} {:>11}",
        "variant", "renewals", "window", "requests", "p50 (us)", "p99 (us)", "max (us)"
    );
    for row in &rows {
        for (window, h) in [
            ("renewal", &row.latencies.renewal),
            ("outside", &row.latencies.outside),
        ] {
            println!(
                "{:<14} {:>8} {:<9} {:>9} {:>11.1} {:>11.1} {:>11.1}",
                row.variant,
                row.renewals,
                window,
                h.len(),
                micros(h.value_at_quantile(0.5)),
                micros(h.value_at_quantile(0.99)),
                micros(h.max()),
            );
        }
        let (inside, outside) = (&row.latencies.renewal, &row.latencies.outside);
        println!(
            "{:<14} renewal/outside: p99 x{:.2}, max x{:.2}",
            row.variant,
            inside.value_at_quantile(0.99) as f64 / outside.value_at_quantile(0.99) as f64,
            inside.max() as f64 / outside.max() as f64,
        );
    }
    let bearer = &rows[0];
    assert!(bearer.renewals >= 3, "the run spans several renewals");
}
