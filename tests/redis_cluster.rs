//! The Redis store against a real local Redis Cluster of three nodes, started by the test
//! support (`support/redis_server.rs`). Without `redis-server` on the `PATH` these tests show as
//! ignored (see `build.rs`); under `CI=true` they run, and fail without it.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisCluster;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, ServiceExt};
use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};

fn replica(
    server: &ReferenceServer,
    nodes: &[String],
    prefix: &str,
    key: &EncryptionKey,
) -> TokenCache {
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let store = RedisTokenStore::cluster_builder(&nodes, prefix, key.clone())
        .retry_after(Duration::from_millis(300))
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
        ok += usize::from(status.is_success());
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_redis), ignore = "redis-server is not on the PATH")]
async fn a_fleet_on_a_three_node_cluster_logs_in_once_per_renewal_and_shares_rejections() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls();
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(3))
        .login_delay(Duration::from_millis(50))
        .start()
        .await;
    let prefix = format!("cluster-{:08x}", fastrand::u32(..));
    let key = EncryptionKey::generate();
    let replicas: Vec<_> = (0..6)
        .map(|_| replica(&server, &nodes, &prefix, &key))
        .collect();

    // 3 s tokens renewed 1 s ahead: logins near 0, 2 and 4 s for the whole fleet.
    let end = Instant::now() + Duration::from_millis(5500);
    let workers: Vec<_> = replicas
        .iter()
        .map(|cache| {
            let (cache, server_url) = (cache.clone(), server.protected_url());
            tokio::spawn(async move {
                let client = ServiceBuilder::new()
                    .layer(BearerAuthLayer::new(cache))
                    .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
                let (mut sent, mut failed) = (0, 0);
                while Instant::now() < end {
                    let request = http::Request::get(&server_url).body(Empty::new()).unwrap();
                    let response = client.clone().oneshot(request).await.unwrap();
                    sent += 1;
                    failed += usize::from(!response.status().is_success());
                    response.into_body().collect().await.unwrap();
                    sleep(Duration::from_millis(20)).await;
                }
                (sent, failed)
            })
        })
        .collect();
    let (mut sent, mut failed) = (0, 0);
    for worker in workers {
        let (s, f) = worker.await.unwrap();
        sent += s;
        failed += f;
    }
    println!(
        "cluster fleet: {sent} requests, {failed} failed, {} logins",
        server.login_attempts()
    );
    assert_eq!(failed, 0);
    assert!(sent > 6 * 100, "{sent} requests");
    assert_eq!(
        server.login_attempts(),
        3,
        "one login per renewal for the whole fleet"
    );

    // The keys of one credential hash to one slot, so each script runs on one node.
    let client = redis::cluster::ClusterClient::new(nodes.clone()).unwrap();
    let mut connection = client.get_async_connection().await.unwrap();
    let mut slots = Vec::new();
    for suffix in ["token", "lock", "rejected"] {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{prefix}:alice}}:{suffix}"))
            .query_async(&mut connection)
            .await
            .unwrap();
        slots.push(slot);
    }
    assert!(slots.iter().all(|&slot| slot == slots[0]), "{slots:?}");

    // A rejection by one replica reaches the others through the cluster.
    let rejected = replicas[0].token().await.unwrap();
    server.revoke(rejected.expose_secret());
    replicas[0].invalidate(&rejected);
    let renewed = replicas[0].token().await.unwrap();
    assert_ne!(renewed.expose_secret(), rejected.expose_secret());
    let tombstones: i64 = redis::cmd("ZCARD")
        .arg(format!("{{{prefix}:alice}}:rejected"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(tombstones, 1);
    let newcomer = replica(&server, &nodes, &prefix, &key);
    let adopted = newcomer.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), renewed.expose_secret());
    assert_eq!(traffic(&newcomer, &server, 3).await, 3);
}
