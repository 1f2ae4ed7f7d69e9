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
//!   per replica for each token the fleet needs while it is not (two in the faulty lifetime:
//!   the expiry and the revocation below), and back to 1 within one lifetime after it heals;
//! - no replica adopts a token the server rejected: halfway through the fault the server revokes
//!   the fleet's token; each replica's next request is refused once and replayed with a new
//!   token, and the server refuses no more than one request per replica in the whole run (a
//!   replica that adopted the revoked token again would be refused a second time).
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
    // 500 ms per command (the default is 250 ms): this machine is shared, and a healthy Redis
    // that answers late counts as down.
    let store = RedisTokenStore::builder(url, prefix, key.clone())
        .command_timeout(Duration::from_millis(500))
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
                    .layer(BearerAuthLayer::new(cache).retry_on_unauthorized())
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
    // Halfway through the fault, the server revokes the token the fleet uses: every replica
    // sees it rejected once (its request is replayed with a new token), and none may adopt it
    // again, although Redis may still hold it.
    sleep_until(start + LIFETIME * 2 + LIFETIME / 2).await;
    let revoked = server
        .issued_tokens()
        .last()
        .cloned()
        .expect("a token issued");
    server.revoke(&revoked);
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

fn check(injection: Injection, figures: &Figures) {
    let run = format!("{injection:?}: {figures:?}");
    assert_eq!(figures.failed, 0, "no request failed: {run}");
    assert!(
        figures.rejections <= REPLICAS as u64,
        "one rejection per replica, for the revoked token, and no more: {run}"
    );
    let logins = &figures.logins_per_lifetime;
    assert!(logins[0] <= 2, "the first login and one to learn: {run}");
    assert_eq!(logins[1], 1, "one login while healthy: {run}");
    // Under the fault the fleet needs two tokens (one at the expiry, one after the
    // revocation), and each replica may log in for each on its own, never more.
    assert!(
        logins[2] <= 2 * REPLICAS,
        "at most one login per replica per token needed under the fault: {run}"
    );
    assert!(logins[3] <= REPLICAS, "{run}");
    assert_eq!(
        logins[4], 1,
        "back to one login within a lifetime of healing: {run}"
    );
    // The traffic kept flowing (a request every 40 ms per replica, for 15 s).
    assert!(figures.requests > REPLICAS * 150, "{run}");
}

/// The five runs go side by side, to keep the suite short; each has its own `redis-server`,
/// proxy and login server. All figures are printed before any assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn fleet_under_each_redis_fault_keeps_serving_and_logs_in_once_per_lifetime_when_healthy() {
    let injections = [
        Injection::Proxy(Fault::Latency(Duration::from_millis(100))),
        Injection::Proxy(Fault::BlackHole),
        Injection::Proxy(Fault::Reset),
        Injection::Proxy(Fault::Pause),
        Injection::Sigstop,
    ];
    let runs: Vec<_> = injections
        .into_iter()
        .map(|injection| tokio::spawn(async move { (injection, run(injection).await) }))
        .collect();
    let mut results = Vec::new();
    for run in runs {
        let (injection, figures) = run.await.unwrap();
        println!("{injection:?}: {figures:?}");
        results.push((injection, figures));
    }
    for (injection, figures) in results {
        check(injection, &figures);
    }
}

/// What the replica process of [`a_replica_killed_while_holding_the_lock_hands_over`] is told.
const REPLICA_ENV: &str = "AUTHTOKEN_CHAOS_REPLICA";

/// Runs this process as one replica: `base_url redis_url prefix key_hex seconds` in
/// [`REPLICA_ENV`]; prints `sent=N failed=M` when done.
async fn replica_process(spec: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    let parts: Vec<&str> = spec.split(' ').collect();
    let [base_url, redis_url, prefix, key, seconds] = parts[..] else {
        panic!("bad {REPLICA_ENV}: {spec}")
    };
    let store = RedisTokenStore::builder(redis_url, prefix, EncryptionKey::from_hex(key).unwrap())
        .retry_after(Duration::from_millis(500))
        .build()
        .unwrap();
    let source = AuthTokenSource::new(
        base_url,
        tower_authtoken::Credentials::new("fleet", "fleet-password"),
    )
    .unwrap();
    let cache = TokenCache::builder(source)
        .shared(store)
        .refresh_before(Duration::from_millis(1000))
        .expiry_margin(Duration::from_millis(500))
        .jitter(Duration::ZERO)
        .fetch_timeout(Duration::from_secs(2))
        .min_backoff(Duration::from_millis(100))
        .build()
        .unwrap();
    let end = Instant::now() + Duration::from_secs_f64(seconds.parse().unwrap());
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let (mut sent, mut failed) = (0, 0);
    while Instant::now() < end {
        let request = http::Request::get(format!("{base_url}/protected"))
            .body(Empty::new())
            .unwrap();
        sent += 1;
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
        sleep(Duration::from_millis(20)).await;
    }
    println!("sent={sent} failed={failed}");
}

fn spawn_replica(spec: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_replica_killed_while_holding_the_lock_hands_over",
            "--nocapture",
            "--include-ignored",
        ])
        .env(REPLICA_ENV, spec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_replica_killed_while_holding_the_lock_hands_over() {
    if let Ok(spec) = std::env::var(REPLICA_ENV) {
        return replica_process(&spec).await;
    }
    let redis = RedisServer::start();
    // Logins take 300 ms, so that the first replica is caught holding the lock.
    let server = ReferenceServer::builder()
        .user("fleet", "fleet-password")
        .token_policy(TokenPolicy::OneLivePerUser)
        .token_lifetime(Duration::from_secs(4))
        .login_delay(Duration::from_millis(300))
        .start()
        .await;
    let prefix = format!("kill-{:08x}", fastrand::u32(..));
    let key: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let spec = |seconds: u32| {
        format!(
            "{} {} {prefix} {key} {seconds}",
            server.base_url(),
            redis.url()
        )
    };

    // The first replica takes the lock for the first login and is killed while it holds it.
    let mut first = spawn_replica(&spec(30));
    let mut connection = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lock = format!("{{{prefix}:fleet}}:lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: bool = redis::cmd("EXISTS")
            .arg(&lock)
            .query_async(&mut connection)
            .await
            .unwrap();
        if held {
            break;
        }
        assert!(Instant::now() < deadline, "the first replica never locked");
        sleep(Duration::from_millis(2)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let killed_at = Instant::now();

    // Two replicas start while the dead one's lock is held; one takes over when it expires.
    let survivors = [spawn_replica(&spec(10)), spawn_replica(&spec(10))];
    for survivor in survivors {
        let output = survivor.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("sent="))
            .unwrap_or_else(|| panic!("no summary: {stdout}\n{stderr}"));
        println!("survivor: {line}");
        if std::env::var_os("RUST_LOG").is_some() {
            println!("{stderr}");
        }
        assert!(line.ends_with(" failed=0"), "{line}\n{stderr}");
    }
    let instants = server.login_attempt_instants();
    let after_kill: Vec<f64> = instants
        .iter()
        .map(|at| at.saturating_duration_since(killed_at).as_secs_f64())
        .collect();
    println!("login attempts, seconds after the kill: {after_kill:.2?}");
    // The dead holder's login, at most one per survivor to take over, then one to learn the
    // server keeps one live token, then one per 4 s lifetime.
    let within_takeover = after_kill.iter().filter(|&&s| s < 2.5).count();
    assert!(within_takeover <= 3, "{after_kill:.2?}");
    let last_lifetime = after_kill
        .iter()
        .filter(|&&s| (6.0..10.0).contains(&s))
        .count();
    assert_eq!(
        last_lifetime, 1,
        "one login per lifetime again: {after_kill:.2?}"
    );
    assert_eq!(server.rejections(), 0);
}
