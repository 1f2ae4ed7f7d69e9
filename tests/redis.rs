//! A fleet of caches sharing tokens through a real Redis.
//!
//! These tests run whenever `REDIS_URL` is set (`.ci/run` starts a server and sets it). Under
//! `CI=true` a missing `REDIS_URL` fails them: they must never be skipped silently in CI. They run
//! in real time, since Redis answers on its own clock.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, ServiceExt};
use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::{Failure, ReferenceServer};
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};

/// The Redis to use, or `None` to skip (never under `CI=true`).
fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("REDIS_URL must be set in CI: .ci/run starts redis-server and exports it")
        }
        _ => {
            eprintln!("REDIS_URL is not set: skipping this Redis test");
            None
        }
    }
}

/// A key prefix no other test uses.
fn prefix(test: &str) -> String {
    format!("test-{test}-{:08x}", fastrand::u32(..))
}

struct Replica {
    cache: TokenCache,
}

/// A cache over `server` sharing through its own connection to `url`.
fn replica(
    server: &ReferenceServer,
    url: &str,
    prefix: &str,
    key: &EncryptionKey,
    fetch_timeout: Duration,
) -> Replica {
    let store = RedisTokenStore::builder(url, prefix, key.clone())
        .retry_after(Duration::from_millis(300))
        .build()
        .unwrap();
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    // With 4 s tokens, a 1 s margin leaves room for the other tests and processes that load the
    // machine while these run: the token must not expire at the server while a request is on
    // its way.
    let cache = TokenCache::builder(source)
        .shared(store)
        .refresh_before(Duration::from_millis(1500))
        .expiry_margin(Duration::from_secs(1))
        .jitter(Duration::ZERO)
        .fetch_timeout(fetch_timeout)
        .min_backoff(Duration::from_millis(100))
        .build()
        .unwrap();
    Replica { cache }
}

/// Sends `count` requests through the layer to the protected endpoint; returns how many
/// succeeded.
async fn traffic(cache: &TokenCache, server: &ReferenceServer, count: usize) -> usize {
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let mut ok = 0;
    for _ in 0..count {
        let request = http::Request::get(server.protected_url())
            .body(Empty::new())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        if status.is_success() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_replicas_make_one_login_per_token_lifetime() {
    let Some(url) = redis_url() else { return };
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(4))
        .login_delay(Duration::from_millis(100))
        .start()
        .await;
    let (prefix, key) = (prefix("eight"), EncryptionKey::generate());
    let replicas: Vec<_> = (0..8)
        .map(|_| replica(&server, &url, &prefix, &key, Duration::from_secs(5)))
        .collect();

    // 4 s tokens are renewed 1.5 s before they expire: logins near 0 s, 2.6 s and 5.2 s, so
    // three tokens cover seven seconds of traffic from the whole fleet.
    let end = Instant::now() + Duration::from_secs(7);
    let workers: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let cache = replica.cache.clone();
            let server_url = server.protected_url();
            tokio::spawn(async move {
                let client = ServiceBuilder::new()
                    .layer(BearerAuthLayer::new(cache))
                    .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
                let mut statuses = Vec::new();
                while Instant::now() < end {
                    let request = http::Request::get(&server_url).body(Empty::new()).unwrap();
                    let response = client.clone().oneshot(request).await.unwrap();
                    statuses.push(response.status());
                    response.into_body().collect().await.unwrap();
                    sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        let failed: Vec<_> = statuses.iter().filter(|s| !s.is_success()).collect();
        assert!(
            failed.is_empty(),
            "every request carried a valid token: {failed:?}"
        );
        total += statuses.len();
    }
    assert!(total > 500, "{total} requests");
    assert_eq!(server.rejections(), 0);
    assert_eq!(
        server.login_attempts(),
        3,
        "one login per token lifetime for the whole fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_hands_the_renewal_over_when_its_lock_expires() {
    let Some(url) = redis_url() else { return };
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("dead-holder"), EncryptionKey::generate());

    // Replica A takes the lock and its login hangs; then A dies with the lock held.
    server.push_failure(Failure::Hang);
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(1));
    let a_task = tokio::spawn({
        let cache = a.cache.clone();
        async move { cache.token().await }
    });
    while server.login_attempts() == 0 {
        sleep(Duration::from_millis(10)).await;
    }
    a_task.abort();
    drop(a);

    // Replica B waits for A, then takes the expired lock over and logs in for the fleet.
    let b = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let token = b.cache.token().await.unwrap();
    assert_eq!(server.login_attempts(), 2, "A's hung login and B's");
    assert_eq!(server.logins(), 1);
    assert_eq!(traffic(&b.cache, &server, 3).await, 3);

    // B shared it: C adopts it without logging in.
    let c = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let adopted = c.cache.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), token.expose_secret());
    assert_eq!(server.login_attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ciphertext_is_ignored() {
    let Some(url) = redis_url() else { return };
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("tamper"), EncryptionKey::generate());
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let first = a.cache.token().await.unwrap();

    // Flip one bit of the stored ciphertext, keeping its expiry.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let token_key = format!("{prefix}:alice:token");
    let (mut blob, pttl): (Vec<u8>, i64) = redis::pipe()
        .get(&token_key)
        .cmd("PTTL")
        .arg(&token_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    let _: () = redis::cmd("SET")
        .arg(&token_key)
        .arg(blob)
        .arg("PX")
        .arg(pttl)
        .query_async(&mut connection)
        .await
        .unwrap();

    let b = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let second = b.cache.token().await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(
        server.login_attempts(),
        2,
        "B logged in instead of trusting it"
    );
    assert_eq!(traffic(&b.cache, &server, 2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalidation_causes_one_fleet_wide_renewal() {
    let Some(url) = redis_url() else { return };
    let server = ReferenceServer::builder()
        .login_delay(Duration::from_millis(100))
        .start()
        .await;
    let (prefix, key) = (prefix("invalidate"), EncryptionKey::generate());
    let replicas: Vec<_> = (0..4)
        .map(|_| replica(&server, &url, &prefix, &key, Duration::from_secs(5)))
        .collect();
    let mut first = Vec::new();
    for replica in &replicas {
        first.push(replica.cache.token().await.unwrap());
    }
    assert_eq!(server.login_attempts(), 1);
    let rejected = first[0].clone();
    assert!(
        first
            .iter()
            .all(|t| t.expose_secret() == rejected.expose_secret())
    );

    // The server revokes the token; every replica sees a 401 for it.
    server.revoke(rejected.expose_secret());
    let tasks: Vec<_> = replicas
        .iter()
        .zip(first)
        .map(|(replica, token)| {
            let cache = replica.cache.clone();
            tokio::spawn(async move {
                cache.invalidate(&token);
                cache.token().await.unwrap()
            })
        })
        .collect();
    let mut renewed = Vec::new();
    for task in tasks {
        renewed.push(task.await.unwrap());
    }
    assert_eq!(
        server.login_attempts(),
        2,
        "one renewal for the whole fleet"
    );
    assert!(
        renewed
            .iter()
            .all(|t| t.expose_secret() == renewed[0].expose_secret())
    );
    assert_ne!(renewed[0].expose_secret(), rejected.expose_secret());
    for replica in &replicas {
        assert_eq!(traffic(&replica.cache, &server, 1).await, 1);
    }
}

/// A redis-server of our own, to stop and restart.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (see .ci/run)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_logins_and_sharing_resumes() {
    if redis_url().is_none() {
        return;
    }
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut redis = OwnRedis::start(port);
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("outage"), EncryptionKey::generate());
    let a = replica(&server, &redis.url(), &prefix, &key, Duration::from_secs(5));
    let b = replica(&server, &redis.url(), &prefix, &key, Duration::from_secs(5));
    let shared = a.cache.token().await.unwrap();
    let b_shared = b.cache.token().await.unwrap();
    assert_eq!(b_shared.expose_secret(), shared.expose_secret());
    assert_eq!(server.login_attempts(), 1);

    // Redis goes away: renewals fall back to local logins, requests never fail.
    redis.stop();
    a.cache.invalidate(&shared);
    b.cache.invalidate(&b_shared);
    assert_eq!(traffic(&a.cache, &server, 5).await, 5);
    assert_eq!(traffic(&b.cache, &server, 5).await, 5);
    assert_eq!(
        server.login_attempts(),
        3,
        "each replica logged in on its own"
    );

    // Redis comes back (empty); after the retry delay (300 ms) the fleet shares again. (The
    // wait is a little over a second: a second invalidation within a second of the first, of a
    // token that just came into service, would be ignored as part of a storm of 401s.)
    let _redis = OwnRedis::start(port);
    sleep(Duration::from_millis(1100)).await;
    let a_token = a.cache.current().unwrap();
    a.cache.invalidate(&a_token);
    let renewed = a.cache.token().await.unwrap();
    assert_eq!(server.login_attempts(), 4);
    let b_token = b.cache.current().unwrap();
    b.cache.invalidate(&b_token);
    let adopted = b.cache.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), renewed.expose_secret());
    assert_eq!(server.login_attempts(), 4, "B adopted A's token");
    assert_eq!(traffic(&b.cache, &server, 3).await, 3);
    assert_eq!(server.rejections(), 0);
}

/// The demo binary, which `cargo test` builds alongside the tests.
fn demo_binary() -> std::path::PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    let demo = profile_dir.join("examples").join("demo");
    assert!(
        demo.exists(),
        "{} is missing: cargo test builds the examples",
        demo.display()
    );
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_demo_processes_share_one_login_per_lifetime() {
    let Some(url) = redis_url() else { return };
    let server = ReferenceServer::builder()
        .user("fleet", "fleet-password")
        .token_lifetime(Duration::from_secs(4))
        .login_delay(Duration::from_millis(100))
        .start()
        .await;
    let key: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let demo = demo_binary();
    let processes: Vec<_> = (0..3)
        .map(|_| {
            tokio::process::Command::new(&demo)
                .args(["--base-url", &server.base_url(), "--user", "fleet"])
                .args(["--resource", "/protected", "--redis", &url])
                .args([
                    "--duration",
                    "9",
                    "--concurrency",
                    "4",
                    "--refresh-before",
                    "0.5",
                ])
                .arg("--quiet")
                .env("CARRENTAL_PASSWORD", "fleet-password")
                .env("TOKEN_KEY", &key)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();
    for process in processes {
        let output = process.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(" 0 rejected upstream, 0 errors"),
            "{stdout}"
        );
    }
    // 4 s tokens renewed 1.5 s ahead: logins near 0 s, 2.6 s and 5.2 s for the three processes
    // together (each process logs in at start-up; all but the first adopt that token).
    assert_eq!(server.login_attempts(), 3);
    assert_eq!(server.rejections(), 0);
    assert!(server.accepted() > 100);
}
