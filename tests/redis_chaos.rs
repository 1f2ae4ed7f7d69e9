//! Chaos between a fleet and Redis: 8 replicas share one token on a one-live-token login server,
//! through a fault-injecting proxy in front of a real `redis-server`, for at least three token
//! lifetimes per fault.
//!
//! For each fault (latency, black hole, reset, pause, and `SIGSTOP` of the `redis-server`
//! process), the run is five lifetimes: a warm-up, one healthy, one under the fault, two healed.
//! The warm-up holds the first login and, on this server, one renewal answered with the same
//! token, which teaches the fleet to log in at each expiry (as it teaches a single cache). It
//! asserts that:
//!
//! - zero requests fail: callers keep being served whatever Redis does;
//! - fleet-wide logins per lifetime are exactly 1 while Redis is healthy, never more than one
//!   per replica while it is not, and back to 1 within one lifetime after it heals;
//! - no replica presents a token the server rejected (the server counts no rejection at all).
//!
//! Each test starts its own `redis-server`; without one on the `PATH` they show as ignored (see
//! `build.rs`). They run in real time and print their figures (`--nocapture` to see them).

#[path = "support/redis_proxy.rs"]
mod redis_proxy;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_proxy::{Fault, FaultProxy};
use redis_server::RedisServer;
use tokio::time::{Instant, sleep, sleep_until};
use tower::{ServiceBuilder, ServiceExt};
use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::{ReferenceServer, TokenPolicy};
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};

const REPLICAS: usize = 8;
/// The token lifetime: five of them per run.
const LIFETIME: Duration = Duration::from_secs(3);

/// What is done to Redis during the second lifetime.
#[derive(Debug, Clone, Copy)]
enum Injection {
    Proxy(Fault),
    Sigstop,
}

/// What a run saw.
#[derive(Debug)]
struct Figures {
    requests: usize,
    failed: usize,
    rejections: u64,
    /// Logins in each lifetime, counted from the first login.
    logins_per_lifetime: Vec<usize>,
}

fn replica(server: &ReferenceServer, url: &str, prefix: &str, key: &EncryptionKey) -> TokenCache {
    let store = RedisTokenStore::builder(url, prefix, key.clone())
        .retry_after(Duration::from_millis(500))
        .build()
        .unwrap();
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    TokenCache::builder(source)
        .shared(store)
        .refresh_before(Duration::from_millis(1000))
        .expiry_margin(Duration::from_millis(500))
        .jitter(Duration::ZERO)
        .fetch_timeout(Duration::from_secs(2))
        .min_backoff(Duration::from_millis(100))
        .build()
        .unwrap()
}

async fn run(injection: Injection) -> Figures {
    // RUST_LOG=tower_authtoken=debug shows what each replica did.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init()
        .ok();
    let mut redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let server = ReferenceServer::builder()
        .token_policy(TokenPolicy::OneLivePerUser)
        .token_lifetime(LIFETIME)
        .login_delay(Duration::from_millis(50))
        .start()
        .await;
    let prefix = format!("chaos-{:08x}", fastrand::u32(..));
    let key = EncryptionKey::generate();
    let caches: Vec<_> = (0..REPLICAS)
        .map(|_| replica(&server, &proxy.url(), &prefix, &key))
        .collect();

    let start = Instant::now();
    let end = start + LIFETIME * 5;
    let workers: Vec<_> = caches
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            let url = server.protected_url();
            tokio::spawn(async move {
                let client = ServiceBuilder::new()
                    .layer(BearerAuthLayer::new(cache))
                    .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
                let (mut requests, mut failed) = (0, 0);
                while Instant::now() < end {
                    let request = http::Request::get(&url).body(Empty::new()).unwrap();
                    requests += 1;
                    match client.clone().oneshot(request).await {
                        Ok(response) if response.status().is_success() => {
                            response.into_body().collect().await.ok();
                        }
                        Ok(response) => {
                            eprintln!("request failed: {}", response.status());
                            failed += 1;
                        }
                        Err(error) => {
                            eprintln!("request failed: {error}");
                            failed += 1;
                        }
                    }
                    sleep(Duration::from_millis(40)).await;
                }
                (requests, failed)
            })
        })
        .collect();

    // A warm-up and a healthy lifetime, one under the fault, then healed.
    sleep_until(start + LIFETIME * 2).await;
    match injection {
        Injection::Proxy(fault) => proxy.set(fault),
        Injection::Sigstop => redis.freeze(),
    }
    sleep_until(start + LIFETIME * 3).await;
    match injection {
        Injection::Proxy(_) => proxy.heal(),
        Injection::Sigstop => redis.thaw(),
    }

    let (mut requests, mut failed) = (0, 0);
    for worker in workers {
        let (r, f) = worker.await.unwrap();
        requests += r;
        failed += f;
    }
    let instants = server.login_attempt_instants();
    let first = instants.first().copied().unwrap_or(start);
    let mut logins_per_lifetime = vec![0; 5];
    for at in instants {
        let k = ((at - first).as_secs_f64() / LIFETIME.as_secs_f64()) as usize;
        if k < logins_per_lifetime.len() {
            logins_per_lifetime[k] += 1;
        }
    }
    redis.thaw_if_frozen();
    drop(caches);
    let _ = &mut redis;
    Figures {
        requests,
        failed,
        rejections: server.rejections(),
        logins_per_lifetime,
    }
}

async fn check(injection: Injection) {
    let figures = run(injection).await;
    println!("{injection:?}: {figures:?}");
    assert_eq!(figures.failed, 0, "no request failed: {figures:?}");
    assert_eq!(
        figures.rejections, 0,
        "no rejected token was used: {figures:?}"
    );
    let logins = &figures.logins_per_lifetime;
    assert!(
        logins[0] <= 2,
        "the first login and one to learn: {figures:?}"
    );
    assert_eq!(logins[1], 1, "one login while healthy: {figures:?}");
    assert!(
        logins[2] <= REPLICAS,
        "at most one login per replica under the fault: {figures:?}"
    );
    assert!(logins[3] <= REPLICAS, "{figures:?}");
    assert_eq!(
        logins[4], 1,
        "back to one login within a lifetime of healing: {figures:?}"
    );
    assert!(figures.requests > REPLICAS * 250, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_redis_latency() {
    check(Injection::Proxy(Fault::Latency(Duration::from_millis(100)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_a_redis_black_hole() {
    check(Injection::Proxy(Fault::BlackHole)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_redis_connection_resets() {
    check(Injection::Proxy(Fault::Reset)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_a_redis_pause() {
    check(Injection::Proxy(Fault::Pause)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_a_sigstopped_redis_server() {
    check(Injection::Sigstop).await;
}
