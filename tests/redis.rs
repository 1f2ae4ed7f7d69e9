//! A fleet of caches sharing tokens through a real Redis.
//!
//! Each test starts a `redis-server` of its own on a free loopback port (see
//! `support/redis_server.rs`); no environment variable is needed. Where `redis-server` is not on
//! the `PATH`, the build script leaves `cfg(has_redis)` unset and every test here shows as
//! *ignored*, with the reason, instead of "ok". Under `CI=true` they always run, so a CI machine
//! without Redis fails them. They run in real time, since Redis answers on its own clock.

#[path = "support/redis_proxy.rs"]
mod redis_proxy;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_proxy::{Fault, FaultProxy};
use redis_server::RedisServer;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, ServiceExt};
use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::{Failure, ReferenceServer};
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, Error, Token, TokenCache, TokenSource};

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
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    replica_with(source, url, prefix, key, fetch_timeout)
}

/// A cache over `source` sharing through its own connection to `url`.
fn replica_with<S: TokenSource>(
    source: S,
    url: &str,
    prefix: &str,
    key: &EncryptionKey,
    fetch_timeout: Duration,
) -> Replica {
    let store = RedisTokenStore::builder(url, prefix, key.clone())
        .retry_after(Duration::from_millis(300))
        .build()
        .unwrap();
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
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn eight_replicas_make_one_login_per_token_lifetime() {
    let redis = RedisServer::start();
    let url = redis.url();
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
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_dead_lock_holder_hands_the_renewal_over_when_its_lock_expires() {
    let redis = RedisServer::start();
    let url = redis.url();
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
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_tampered_ciphertext_is_ignored() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("tamper"), EncryptionKey::generate());
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let first = a.cache.token().await.unwrap();

    // Flip one bit of the stored ciphertext, keeping its expiry.
    let mut connection = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let token_key = format!("{{{prefix}:alice}}:token");
    let mut blob: Vec<u8> = redis::cmd("HGET")
        .arg(&token_key)
        .arg("sealed")
        .query_async(&mut connection)
        .await
        .unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    let _: () = redis::cmd("HSET")
        .arg(&token_key)
        .arg("sealed")
        .arg(blob)
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
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn one_invalidation_causes_one_fleet_wide_renewal() {
    let redis = RedisServer::start();
    let url = redis.url();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_redis_outage_falls_back_to_local_logins_and_sharing_resumes() {
    let mut redis = RedisServer::start();
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
    redis.restart();
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
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn three_demo_processes_share_one_login_per_lifetime() {
    let redis = RedisServer::start();
    let url = redis.url();
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

/// Stops a login after the server answered and before the store sees the token, while armed:
/// a replica frozen between its login and its publish, as by a long pause.
#[derive(Clone, Default)]
struct Freezer {
    armed: Arc<AtomicBool>,
    frozen: Arc<Notify>,
    release: Arc<Notify>,
}

struct Frozen<S> {
    inner: S,
    freezer: Freezer,
}

impl<S: TokenSource> TokenSource for Frozen<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        let result = self.inner.fetch().await;
        if self.freezer.armed.swap(false, Ordering::SeqCst) {
            self.freezer.frozen.notify_one();
            self.freezer.release.notified().await;
        }
        result
    }

    fn user_name(&self) -> Option<&str> {
        self.inner.user_name()
    }
}

/// A plain connection to look at and tamper with the store's keys.
async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The shared token's record (its hash fields), to put back later.
async fn saved_record(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(String, Vec<u8>)> {
    let record: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(connection)
        .await
        .unwrap();
    assert_eq!(record.len(), 3, "fingerprint, sealed token, login id");
    record
}

/// Puts a saved record back, with `ttl` left, as a stale writer would.
async fn put_back(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    record: &[(String, Vec<u8>)],
    ttl: Duration,
) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (field, value) in record {
        cmd.arg(field).arg(value);
    }
    let _: () = cmd.query_async(connection).await.unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(ttl.as_millis() as u64)
        .query_async(connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_stalled_lock_holder_never_overwrites_the_newer_token() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("fence"), EncryptionKey::generate());

    // Replica A takes the lock, logs in, and stalls before it publishes.
    let freezer = Freezer::default();
    freezer.armed.store(true, Ordering::SeqCst);
    let source = Frozen {
        inner: AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap(),
        freezer: freezer.clone(),
    };
    let a = replica_with(source, &url, &prefix, &key, Duration::from_secs(5));
    let a_task = tokio::spawn({
        let cache = a.cache.clone();
        async move { cache.token().await }
    });
    freezer.frozen.notified().await;
    let stale = server.issued_tokens().last().cloned().unwrap();

    // The stall outlasts A's lock (deleting it is what its expiry does), and B renews for the
    // fleet.
    let mut redis_connection = connection(&redis).await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{{{prefix}:alice}}:lock"))
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "A held the lock while it stalled");
    let b = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let newer = b.cache.token().await.unwrap();
    assert_ne!(newer.expose_secret(), stale);
    assert_eq!(server.login_attempts(), 2);
    // A one-live-token server revokes the older token when it issues the newer one.
    server.revoke(&stale);

    // A wakes: its publish is fenced off, and it uses the newer token instead of its own.
    freezer.release.notify_one();
    let a_token = a_task.await.unwrap().unwrap();
    assert_eq!(
        a_token.expose_secret(),
        newer.expose_secret(),
        "A adopted the newer token, not its own stale one"
    );

    // Redis kept the newer token: a newcomer adopts it without a login.
    let c = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let adopted = c.cache.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), newer.expose_secret());
    assert_eq!(server.login_attempts(), 2);
    assert_eq!(traffic(&a.cache, &server, 3).await, 3);
    assert_eq!(traffic(&c.cache, &server, 3).await, 3);
    assert_eq!(server.rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_rejected_token_put_back_in_redis_is_never_adopted_by_a_peer() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("tombstone"), EncryptionKey::generate());
    let token_key = format!("{{{prefix}:alice}}:token");
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let rejected = a.cache.token().await.unwrap();
    let mut redis_connection = connection(&redis).await;
    let record = saved_record(&mut redis_connection, &token_key).await;

    server.revoke(rejected.expose_secret());
    a.cache.invalidate(&rejected);
    let renewed = a.cache.token().await.unwrap();
    assert_ne!(renewed.expose_secret(), rejected.expose_secret());

    // The tombstone names the token by its fingerprint, never by its value.
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{{prefix}:alice}}:rejected"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    assert_eq!(members.len(), 1);
    assert!(!members[0].contains(rejected.expose_secret()));

    // A stale writer puts the rejected token back, longer-lived than anything: no peer takes it.
    put_back(
        &mut redis_connection,
        &token_key,
        &record,
        Duration::from_secs(7200),
    )
    .await;
    let c = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let token = c.cache.token().await.unwrap();
    assert_ne!(token.expose_secret(), rejected.expose_secret());
    assert_eq!(traffic(&c.cache, &server, 3).await, 3);
    assert_eq!(
        server.login_attempts(),
        3,
        "C logged in rather than adopt it"
    );
    assert_eq!(server.rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_replica_never_readopts_a_token_it_saw_rejected_even_without_the_tombstone() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("local-reject"), EncryptionKey::generate());
    let token_key = format!("{{{prefix}:alice}}:token");
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let rejected = a.cache.token().await.unwrap();
    let mut redis_connection = connection(&redis).await;
    let record = saved_record(&mut redis_connection, &token_key).await;
    server.revoke(rejected.expose_secret());
    a.cache.invalidate(&rejected);
    let second = a.cache.token().await.unwrap();

    // The shared tombstone is lost (as when Redis lost its data), and the rejected token comes
    // back; then A needs a token again.
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{prefix}:alice}}:rejected"))
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    put_back(
        &mut redis_connection,
        &token_key,
        &record,
        Duration::from_secs(7200),
    )
    .await;
    // Past the second that spaces invalidations of a token just put into service.
    sleep(Duration::from_millis(1100)).await;
    server.revoke(second.expose_secret());
    a.cache.invalidate(&second);
    let third = a.cache.token().await.unwrap();
    assert_ne!(third.expose_secret(), rejected.expose_secret());
    assert_eq!(traffic(&a.cache, &server, 3).await, 3);
    assert_eq!(server.login_attempts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_rejection_during_a_redis_freeze_is_recorded_once_redis_thaws() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("freeze-reject"), EncryptionKey::generate());
    let a = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let b = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let rejected = a.cache.token().await.unwrap();
    let b_token = b.cache.token().await.unwrap();
    assert_eq!(b_token.expose_secret(), rejected.expose_secret());

    // Redis freezes; the server rejects the token; A cannot record that in Redis and logs in on
    // its own.
    redis.freeze();
    server.revoke(rejected.expose_secret());
    a.cache.invalidate(&rejected);
    let local = a.cache.token().await.unwrap();
    assert_ne!(local.expose_secret(), rejected.expose_secret());
    assert_eq!(server.login_attempts(), 2);
    assert_eq!(traffic(&a.cache, &server, 2).await, 2);

    // Redis thaws: A records the rejection on its own, before anyone asks it to.
    redis.thaw();
    let mut redis_connection = connection(&redis).await;
    let rejected_key = format!("{{{prefix}:alice}}:rejected");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let tombstones: i64 = redis::cmd("ZCARD")
            .arg(&rejected_key)
            .query_async(&mut redis_connection)
            .await
            .unwrap();
        if tombstones == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no tombstone 3 s after the thaw");
        sleep(Duration::from_millis(20)).await;
    }

    // A newcomer does not adopt the rejected token.
    let c = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
    let token = c.cache.token().await.unwrap();
    assert_ne!(token.expose_secret(), rejected.expose_secret());
    assert_eq!(traffic(&c.cache, &server, 3).await, 3);
    assert_eq!(server.rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_rejection_lost_to_reset_connections_is_retried_until_redis_has_it() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let server = ReferenceServer::start().await;
    let (prefix, key) = (prefix("reset-reject"), EncryptionKey::generate());
    // A reaches Redis through the proxy, the others directly.
    let a = replica(&server, &proxy.url(), &prefix, &key, Duration::from_secs(5));
    let b = replica(&server, &redis.url(), &prefix, &key, Duration::from_secs(5));
    let rejected = a.cache.token().await.unwrap();
    assert_eq!(
        b.cache.token().await.unwrap().expose_secret(),
        rejected.expose_secret()
    );

    // A's connections to Redis are reset when the server rejects the token: the tombstone and
    // the removal never reach Redis, and A logs in on its own.
    proxy.set(Fault::Reset);
    server.revoke(rejected.expose_secret());
    a.cache.invalidate(&rejected);
    let local = a.cache.token().await.unwrap();
    assert_ne!(local.expose_secret(), rejected.expose_secret());
    let mut redis_connection = connection(&redis).await;
    let rejected_key = format!("{{{prefix}:alice}}:rejected");
    let tombstones = async |connection: &mut redis::aio::MultiplexedConnection| -> i64 {
        redis::cmd("ZCARD")
            .arg(&rejected_key)
            .query_async(connection)
            .await
            .unwrap()
    };
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tombstones(&mut redis_connection).await,
        0,
        "nothing got through"
    );

    // The path heals: A records the rejection by itself within a few polls.
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(3);
    while tombstones(&mut redis_connection).await == 0 {
        assert!(Instant::now() < deadline, "no tombstone 3 s after healing");
        sleep(Duration::from_millis(20)).await;
    }
    let c = replica(&server, &redis.url(), &prefix, &key, Duration::from_secs(5));
    let token = c.cache.token().await.unwrap();
    assert_ne!(token.expose_secret(), rejected.expose_secret());
    assert_eq!(traffic(&c.cache, &server, 3).await, 3);
    assert_eq!(server.rejections(), 0);
}

/// A cache, and so its store, that outlives every runtime, as in a `static` client.
static STATIC_CACHE: std::sync::OnceLock<TokenCache> = std::sync::OnceLock::new();

#[test]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
fn a_static_store_keeps_sharing_after_the_runtime_that_first_used_it_shuts_down_mid_operation() {
    let redis = RedisServer::start();
    let url = redis.url();
    // The login server runs on a runtime of its own for the whole test.
    let background = tokio::runtime::Runtime::new().unwrap();
    let server = background.block_on(ReferenceServer::start());
    let (prefix, key) = (prefix("runtimes"), EncryptionKey::generate());
    let cache: &'static TokenCache = STATIC_CACHE
        .get_or_init(|| replica(&server, &url, &prefix, &key, Duration::from_secs(5)).cache);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    // The first runtime uses the store first, then shuts down while a renewal is waiting for a
    // frozen Redis.
    let first_runtime = runtime();
    let first = first_runtime.block_on(cache.token()).unwrap();
    redis.freeze();
    server.revoke(first.expose_secret());
    cache.invalidate(&first);
    first_runtime.spawn(cache.token());
    first_runtime.block_on(async { sleep(Duration::from_millis(100)).await });
    drop(first_runtime);
    redis.thaw();

    // On a second runtime, the same store shares the renewed token: a peer adopts it.
    let second = runtime().block_on(async {
        let renewed = cache.token().await.unwrap();
        assert_ne!(renewed.expose_secret(), first.expose_secret());
        let peer = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
        let adopted = peer.cache.token().await.unwrap();
        assert_eq!(adopted.expose_secret(), renewed.expose_secret());
        assert_eq!(traffic(cache, &server, 3).await, 3);
        renewed
    });
    assert_eq!(
        server.login_attempts(),
        2,
        "one login each, shared both times"
    );

    // And again on a third, after the second one has gone too.
    runtime().block_on(async {
        // Past the second that spaces invalidations of a token just put into service.
        sleep(Duration::from_millis(1100)).await;
        server.revoke(second.expose_secret());
        cache.invalidate(&second);
        let renewed = cache.token().await.unwrap();
        assert_ne!(renewed.expose_secret(), second.expose_secret());
        let peer = replica(&server, &url, &prefix, &key, Duration::from_secs(5));
        let adopted = peer.cache.token().await.unwrap();
        assert_eq!(adopted.expose_secret(), renewed.expose_secret());
    });
    assert_eq!(server.login_attempts(), 3);
    assert_eq!(server.rejections(), 0);
}

/// A replica's keyed cache over `server`'s users `agency-N` (password `pw-N`), sharing through
/// its own connection to `redis` under `prefix`, with `budget` shared by its accounts.
fn keyed_replica(
    redis: &RedisServer,
    server: &ReferenceServer,
    prefix: &str,
    key: &EncryptionKey,
    budget: tower_authtoken::LoginBudget,
) -> tower_authtoken::KeyedTokenCache<u32> {
    keyed_replica_polling(
        &redis.url(),
        server,
        prefix,
        key,
        budget,
        (Duration::from_millis(100), DEFAULT_COMMAND_TIMEOUT),
    )
}

/// The store's default command timeout, on which its default 2 s lock lease rests.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// As [`keyed_replica`], with waiters for a peer's login polling Redis every `poll` (besides
/// the notifications), and Redis counted as down when a command takes longer than
/// `command_timeout`.
fn keyed_replica_polling(
    redis_url: &str,
    server: &ReferenceServer,
    prefix: &str,
    key: &EncryptionKey,
    budget: tower_authtoken::LoginBudget,
    (poll, command_timeout): (Duration, Duration),
) -> tower_authtoken::KeyedTokenCache<u32> {
    use tower_authtoken::Credentials;

    let store = RedisTokenStore::builder(redis_url, prefix, key.clone())
        .poll_interval(poll)
        .command_timeout(command_timeout)
        .retry_after(Duration::from_millis(300))
        .build()
        .unwrap();
    let base_url = server.base_url();
    tower_authtoken::KeyedTokenCache::builder(move |account: &u32| {
        let credentials = Credentials::new(format!("agency-{account}"), format!("pw-{account}"));
        AuthTokenSource::new(&base_url, credentials)
    })
    .shared_login_budget(budget)
    .configure(move |cache| cache.shared(store))
    .build()
    .unwrap()
}

/// A reference server with the users `agency-0` to `agency-{accounts - 1}` (password `pw-N`),
/// its tokens living `lifetime`, its logins slowed by `delay`.
async fn agency_server(accounts: u32, lifetime: Duration, delay: Duration) -> ReferenceServer {
    let server = ReferenceServer::builder()
        .token_lifetime(lifetime)
        .login_delay(delay)
        .start()
        .await;
    for account in 0..accounts {
        server.add_user(&format!("agency-{account}"), &format!("pw-{account}"));
    }
    server
}

/// Every replica asks for every account of `accounts`, all at once. Each token (a caller's
/// error fails the test, naming its replica and account), with its replica's index, its
/// account, and when it came.
async fn ask_all(
    replicas: &[tower_authtoken::KeyedTokenCache<u32>],
    accounts: std::ops::Range<u32>,
) -> Vec<(usize, u32, Token, Duration)> {
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for (index, replica) in replicas.iter().enumerate() {
        for account in accounts.clone() {
            let replica = replica.clone();
            callers.spawn(async move {
                let token = replica.token(&account).await;
                (index, account, token, started.elapsed())
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(caller) = callers.join_next().await {
        let (replica, account, token, took) = caller.unwrap();
        let token = token.unwrap_or_else(|e| panic!("replica {replica}, account {account}: {e}"));
        answers.push((replica, account, token, took));
    }
    answers
}

/// The longest wait among `answers`.
fn longest(answers: &[(usize, u32, Token, Duration)]) -> Duration {
    answers
        .iter()
        .map(|answer| answer.3)
        .max()
        .unwrap_or_default()
}

/// A keyed cache's default shared budget: 10 at once, then 10 a second.
fn keyed_default_budget() -> tower_authtoken::LoginBudget {
    tower_authtoken::LoginBudget::new(10, Duration::from_millis(100))
}

/// Many accounts in a fleet: each replica holds a keyed cache, every account shares its token
/// through one Redis (the keys are per user), so each account logs in once for the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn keyed_caches_of_three_replicas_log_each_account_in_once_through_redis() {
    use tower_authtoken::KeyedTokenCache;

    let redis = RedisServer::start();
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(30))
        .login_delay(Duration::from_millis(100))
        .start()
        .await;
    const ACCOUNTS: u32 = 5;
    for account in 0..ACCOUNTS {
        server.add_user(&format!("agency-{account}"), &format!("pw-{account}"));
    }
    let (prefix, key) = (prefix("keyed"), EncryptionKey::generate());
    let replicas: Vec<KeyedTokenCache<u32>> = (0..3)
        .map(|_| keyed_replica(&redis, &server, &prefix, &key, keyed_default_budget()))
        .collect();
    // Every replica asks for every account, the replicas concurrently.
    let mut values = std::collections::HashMap::new();
    for (_, _, token, _) in ask_all(&replicas, 0..ACCOUNTS).await {
        assert!(server.accepts(token.expose_secret()));
        values
            .entry(token.expose_secret().to_owned())
            .and_modify(|n| *n += 1)
            .or_insert(1);
    }
    assert_eq!(
        values.len(),
        ACCOUNTS as usize,
        "one token per account: {values:?}"
    );
    assert!(values.values().all(|n| *n == 3), "shared by the 3 replicas");
    for account in 0..ACCOUNTS {
        assert_eq!(server.logins_of(&format!("agency-{account}")), 1);
    }
}

/// Many accounts in a fleet whose shared login budget queues them: three replicas start cold
/// on 60 accounts at once, each replica's keyed cache allowed 5 logins at once and then 10 a
/// second (about 5.5 s to get through its 60 accounts), the logins slowed to 300 ms. Whichever
/// replica's turn comes first logs an account in; the others find its token in Redis when their
/// turn comes. Each account logs in once for the fleet, every caller gets a token the server
/// accepts, and all three replicas hold the same token for each account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn keyed_replicas_queued_by_their_budgets_still_log_each_account_in_once() {
    use tower_authtoken::{KeyedTokenCache, LoginBudget};

    const ACCOUNTS: u32 = 60;
    const REPLICAS: usize = 3;
    let redis = RedisServer::start();
    let server = agency_server(
        ACCOUNTS,
        Duration::from_secs(600),
        Duration::from_millis(300),
    )
    .await;
    let (prefix, key) = (prefix("keyed-queued"), EncryptionKey::generate());
    // A budget per replica (clones of one budget would share it).
    let replicas: Vec<KeyedTokenCache<u32>> = (0..REPLICAS)
        .map(|_| {
            let budget = LoginBudget::new(5, Duration::from_millis(100));
            keyed_replica(&redis, &server, &prefix, &key, budget)
        })
        .collect();
    let answers = ask_all(&replicas, 0..ACCOUNTS).await;
    let longest = longest(&answers);
    let mut tokens = std::collections::HashMap::new();
    for (_, account, token, _) in answers {
        assert!(server.accepts(token.expose_secret()));
        tokens
            .entry(account)
            .or_insert_with(std::collections::HashSet::new)
            .insert(token.expose_secret().to_owned());
    }
    for account in 0..ACCOUNTS {
        assert_eq!(
            tokens[&account].len(),
            1,
            "account {account}: one token for the fleet"
        );
    }
    let logins: u64 = (0..ACCOUNTS)
        .map(|account| server.logins_of(&format!("agency-{account}")))
        .sum();
    eprintln!("logins {logins}, longest wait {longest:?}");
    assert_eq!(
        logins,
        u64::from(ACCOUNTS),
        "one login per account for the fleet"
    );
    assert_eq!(server.rejections(), 0);
}

/// A replica whose login budget holds its login back listens for a peer's token meanwhile: it
/// releases the lock, tells the waiting peers, and adopts the token a peer whose budget allows
/// it logs in for, as soon as it is stored, rather than at its own turn 10 s later. Polling is
/// set to 10 s, so only the notification can end the wait early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_replica_held_back_by_its_budget_adopts_a_peers_token_as_soon_as_it_is_stored() {
    use tower_authtoken::LoginBudget;

    let redis = RedisServer::start();
    let server = agency_server(2, Duration::from_secs(600), Duration::from_millis(300)).await;
    let (prefix, key) = (prefix("held-back"), EncryptionKey::generate());
    let replica = |budget| {
        keyed_replica_polling(
            &redis.url(),
            &server,
            &prefix,
            &key,
            budget,
            (Duration::from_secs(10), Duration::from_secs(1)),
        )
    };
    // One login, then one every 10 s: its login for account 1 spends it.
    let spent = replica(LoginBudget::new(1, Duration::from_secs(10)));
    spent.token(&1).await.unwrap();
    let peer = replica(keyed_default_budget());

    let started = Instant::now();
    let held_back = {
        let spent = spent.clone();
        tokio::spawn(async move { (spent.token(&0).await, started.elapsed()) })
    };
    let from_peer = peer.token(&0).await.unwrap();
    let (token, waited) = held_back.await.unwrap();
    let token = token.unwrap();
    eprintln!("held-back replica served after {waited:?}");
    assert_eq!(
        token.expose_secret(),
        from_peer.expose_secret(),
        "the peer's token"
    );
    assert_eq!(server.logins_of("agency-0"), 1, "one login for the fleet");
    assert!(
        waited < Duration::from_secs(5),
        "served at {waited:?}: at its turn, not when the peer's token was stored"
    );
}

/// A replica that joins a warm fleet (a rolling restart): every account's token is in Redis,
/// so the new replica adopts each at once instead of waiting in line at its login budget, which
/// only logins draw on: 60 accounts on a budget of 5 at once then 10 a second are served within
/// a second (26 ms here), with no login at all. When asking Redis drew on the budget too, the
/// last account waited 5.5 s for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_keyed_replica_joining_a_warm_fleet_adopts_every_token_without_waiting_for_its_budget() {
    use tower_authtoken::LoginBudget;

    const ACCOUNTS: u32 = 60;
    let redis = RedisServer::start();
    let server = agency_server(ACCOUNTS, Duration::from_secs(600), Duration::ZERO).await;
    let (prefix, key) = (prefix("keyed-join"), EncryptionKey::generate());
    let replica = || {
        let budget = LoginBudget::new(5, Duration::from_millis(100));
        keyed_replica(&redis, &server, &prefix, &key, budget)
    };
    let warm = replica();
    for account in 0..ACCOUNTS {
        warm.token(&account).await.unwrap();
    }
    let logins = |server: &ReferenceServer| -> u64 {
        (0..ACCOUNTS)
            .map(|account| server.logins_of(&format!("agency-{account}")))
            .sum()
    };
    assert_eq!(logins(&server), u64::from(ACCOUNTS));

    let joining = replica();
    let longest = longest(&ask_all(&[joining], 0..ACCOUNTS).await);
    eprintln!("longest wait {longest:?}");
    assert_eq!(
        logins(&server),
        u64::from(ACCOUNTS),
        "no login: all adopted"
    );
    assert!(
        longest < Duration::from_secs(1),
        "the last account served at {longest:?}"
    );
}

/// Connected clients of `redis`, as its `INFO clients` reports them.
async fn connected_clients(connection: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))?
        .trim()
        .parse()
        .ok()
}

/// Three keyed replicas start cold on 300 accounts at once: many of each replica's accounts
/// wait for a peer's login at the same time. They listen for the peers' notifications through
/// one pubsub connection per store, not one per wait: Redis sees a handful of clients, where
/// with a connection per wait it saw 1,193 for 600 accounts, 1,978 for 1,000, and 10,000 (its
/// default `maxclients`, after which it refuses every new client) for 6,000. Polling is set to
/// 10 s, so the waits end on notifications: the last account is served at the budgets' pace
/// (1–2 s), not at a poll (over 10 s with notifications turned off: 11.5 s for 600 accounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn keyed_replicas_waiting_for_many_peer_logins_share_one_pubsub_connection_each() {
    use tower_authtoken::LoginBudget;

    const ACCOUNTS: u32 = 300;
    const REPLICAS: usize = 3;
    let redis = RedisServer::start();
    let server = agency_server(
        ACCOUNTS,
        Duration::from_secs(600),
        Duration::from_millis(50),
    )
    .await;
    let (prefix, key) = (prefix("keyed-pubsub"), EncryptionKey::generate());
    let replicas: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let budget = LoginBudget::new(50, Duration::from_millis(5));
            // 1,800 callers at once on two cores can slow Redis past the default 250 ms
            // command timeout, and a replica that counts Redis as down logs in on its own. This
            // test is about connections and notifications, so Redis is given 2 s: its lock
            // leases then last 16 s, and a wait that missed its notification would last until
            // the 10 s poll.
            let waiting = (Duration::from_secs(10), Duration::from_secs(2));
            keyed_replica_polling(&redis.url(), &server, &prefix, &key, budget, waiting)
        })
        .collect();
    // Samples Redis's client count while the replicas start.
    let mut watcher_connection = connection(&redis).await;
    let idle_clients = connected_clients(&mut watcher_connection).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(clients) = connected_clients(&mut watcher_connection).await {
                    peak = peak.max(clients);
                }
                sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let longest = longest(&ask_all(&replicas, 0..ACCOUNTS).await);
    done.store(true, Ordering::Relaxed);
    let peak = watcher.await.unwrap();
    let logins: u64 = (0..ACCOUNTS)
        .map(|account| server.logins_of(&format!("agency-{account}")))
        .sum();
    eprintln!(
        "logins {logins}, longest wait {longest:?}, clients {idle_clients} idle, peak {peak}"
    );
    assert_eq!(
        logins,
        u64::from(ACCOUNTS),
        "one login per account for the fleet"
    );
    // Each replica: its command connection and one pubsub connection.
    assert!(
        peak <= idle_clients + 2 * REPLICAS as u64,
        "{peak} clients at the peak, {idle_clients} before"
    );
    assert!(
        longest < Duration::from_secs(9),
        "the last served at {longest:?}"
    );
}

/// A lock holder whose login fails lets the lock go and tells the waiters at once: a peer
/// waiting for it takes over then, not when the lock's lease would have run out. Here every
/// login takes 800 ms and A's fails (500); the stores' 1 s command timeout makes the lease 8 s,
/// and B polls only every 10 s. B is served about 1.6 s after it started; without the notice,
/// at the end of A's lease, about 9 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_holder_whose_login_fails_hands_the_lock_to_a_waiting_peer_at_once() {
    let redis = RedisServer::start();
    let server = ReferenceServer::builder()
        .login_delay(Duration::from_millis(800))
        .start()
        .await;
    let (prefix, key) = (prefix("failed-holder"), EncryptionKey::generate());
    let cache = || {
        let store = RedisTokenStore::builder(&redis.url(), &prefix, key.clone())
            .poll_interval(Duration::from_secs(10))
            .command_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
        TokenCache::builder(source).shared(store).build().unwrap()
    };

    server.push_failure(Failure::Status(500));
    let a = cache();
    let a_caller = tokio::spawn({
        let a = a.clone();
        async move { a.token().await }
    });
    while server.login_attempts() == 0 {
        sleep(Duration::from_millis(10)).await;
    }

    // B finds A's lock and waits for A's token, which never comes.
    let b = cache();
    let started = Instant::now();
    let token = b.token().await.unwrap();
    let waited = started.elapsed();
    assert!(a_caller.await.unwrap().is_err(), "A's login failed");
    assert!(server.accepts(token.expose_secret()));
    assert_eq!(server.login_attempts(), 2, "A's failed login and B's");
    assert!(
        waited < Duration::from_secs(5),
        "B took over {waited:?} after it started, not at A's failure"
    );
}

/// A replica loses Redis in the middle of a cold start: B's connections are reset for half a
/// second while it holds renewal locks and while many of its waits listen on its pubsub
/// connection.
///
/// - B logs in on its own; A's callers waiting for B's locks are served once B's short leases
///   run out (B cannot extend them), within the first wave's 4 s. With a lock as long as the
///   fetch timeout, A's callers waited 30–40 s for it.
/// - B's waiters fall back to polling; once Redis answers again, the next waits open a new
///   pubsub connection and end on notifications (polling is set to 10 s, so a wait that missed
///   its notification would show), with one login per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_replica_losing_redis_mid_start_frees_its_locks_soon_and_reopens_its_pubsub() {
    use tower_authtoken::LoginBudget;

    const ACCOUNTS: u32 = 400;
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let server = agency_server(
        ACCOUNTS,
        Duration::from_secs(600),
        Duration::from_millis(200),
    )
    .await;
    let (prefix, key) = (prefix("pubsub-reset"), EncryptionKey::generate());
    let budget = || LoginBudget::new(20, Duration::from_millis(20));
    let poll = (Duration::from_secs(10), DEFAULT_COMMAND_TIMEOUT);
    // A reaches Redis directly, B through the proxy.
    let a = keyed_replica_polling(&redis.url(), &server, &prefix, &key, budget(), poll);
    let b = keyed_replica_polling(&proxy.url(), &server, &prefix, &key, budget(), poll);

    // Both ask for the same accounts at once; returns the longest wait.
    let serve = |accounts: std::ops::Range<u32>| {
        let replicas = [a.clone(), b.clone()];
        async move { longest(&ask_all(&replicas, accounts).await) }
    };

    // First wave: B's connections are reset while its waits listen.
    let first = tokio::spawn(serve(0..ACCOUNTS / 2));
    sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Reset);
    sleep(Duration::from_millis(500)).await;
    proxy.heal();
    let first = first.await.unwrap();

    // Second wave, Redis healthy: new pubsub connections, waits end on notifications.
    let second = serve(ACCOUNTS / 2..ACCOUNTS).await;
    let logins: u64 = (0..ACCOUNTS)
        .map(|account| server.logins_of(&format!("agency-{account}")))
        .sum();
    let second_logins: u64 = (ACCOUNTS / 2..ACCOUNTS)
        .map(|account| server.logins_of(&format!("agency-{account}")))
        .sum();
    eprintln!(
        "first wave {first:?}, second wave {second:?}, logins {logins} ({second_logins} in the second)"
    );
    assert_eq!(server.rejections(), 0);
    assert!(first < Duration::from_secs(15), "first wave took {first:?}");
    assert_eq!(
        second_logins,
        u64::from(ACCOUNTS / 2),
        "one login per account when healthy"
    );
    assert!(
        second < Duration::from_secs(8),
        "second wave took {second:?}"
    );
}
