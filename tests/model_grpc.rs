//! The gRPC layer in the model worlds of `tests/model.rs`: `GrpcBearerAuthLayer` in front of each
//! world's API spoken as gRPC over HTTP/2 (`world::GrpcModelApi`), where a rejected token is a
//! `200` carrying `grpc-status: 16`, in turn in the headers (a unary call that failed) and in the
//! trailers after a message (a stream that failed midway). Every caller reads its response to
//! the end, as tonic does, and counts `UNAUTHENTICATED` as the harness counts a `401`.
//!
//! The promise under test: what a `401` means is the same for every front-end, so each world's
//! targets for `BearerAuthLayer` hold here too (`tests/model/targets.rs`), except replays, which
//! gRPC does not make (a call streams its messages).
//!
//! Everything runs on Tokio's paused clock, which the deadline checks follow, on the test's
//! current-thread runtime, seeded.

#[path = "model/grpc.rs"]
mod grpc;
#[allow(dead_code)]
#[path = "model/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "model/targets.rs"]
mod targets;
#[allow(dead_code)]
#[path = "model/world.rs"]
mod world;

use std::sync::Arc;

use http::Request;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_authtoken::TokenCache;
use tower_authtoken::tonic::GrpcBearerAuthLayer;

use grpc::GrpcModelApi;
use harness::{LoginLog, Probe, Recorded, Report, Traffic, drive_with};
use targets::{Front, SECOND};
use world::{ModelLogin, OutageKind, Setup, World};

/// Runs `traffic` through `GrpcBearerAuthLayer` (default cache) over the world's gRPC API. Each
/// caller reads the response to its trailers; an `UNAUTHENTICATED` call counts as a `401`.
async fn run(name: &str, setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
    tower_authtoken::testing::follow_tokio_clock();
    fastrand::seed(setup.seed);
    let lifetime = setup.lifetime;
    let world = setup.start();
    let log = LoginLog::new();
    let cache = TokenCache::new(Recorded::new(ModelLogin(Arc::clone(&world)), &log));
    let probe = Probe::new(Arc::clone(&world) as Arc<dyn harness::Oracle>);
    let api = ServiceBuilder::new()
        .layer(probe.clone())
        .service(GrpcModelApi(Arc::clone(&world)));
    let grpc = GrpcBearerAuthLayer::new(cache, &grpc::origin()).layer(api);
    let client = ServiceExt::<Request<()>>::and_then(grpc, grpc::read_status);
    let start = tokio::time::Instant::now();
    let calls = drive_with(client, traffic, grpc::call).await;
    (
        Report::new(name, start, lifetime, calls, &probe, &log),
        world,
    )
}

/// `GrpcBearerAuthLayer` in a world: [`run`].
struct Grpc;

impl Front for Grpc {
    async fn run(&self, name: &str, setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
        run(&format!("grpc {name}"), setup, traffic).await
    }
}

// The worlds of `tests/model.rs` (documented in `tests/model/targets.rs`), through the gRPC
// layer. Worlds 6 and 7 reject in the headers and in the trailers in turn.

#[tokio::test(start_paused = true)]
async fn grpc_fresh_token_per_login_serves_every_call_with_one_login_per_lifetime() {
    targets::fresh(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_one_live_token_per_user_is_used_to_its_expiry_without_errors() {
    targets::one_live(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_tokens_bound_to_the_session_expiry_cost_one_login_per_session() {
    targets::bound_to_session(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_sliding_session_renews_the_same_token_without_errors() {
    targets::sliding(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_revocations_cost_one_login_each_and_no_errors() {
    targets::revocations(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_spurious_unauthenticated_cost_one_login_each_and_no_errors() {
    targets::spurious_401s(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    targets::rejects_all(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute_with_slow_logins() {
    targets::rejects_all_slow_logins(&Grpc).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_one_second_tokens_serve_every_call_within_the_budget() {
    targets::short_lifetime(&Grpc, "8 lifetime-1s", SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_outage_of_hung_logins_longer_than_the_token_recovers_within_1_5s() {
    targets::outage(&Grpc, "9 outage-hang-30s", OutageKind::Hang, 30 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn grpc_outage_of_refused_connections_longer_than_the_token_is_retried_once_a_second() {
    targets::outage(
        &Grpc,
        "9 outage-refused-30s",
        OutageKind::Refused,
        30 * SECOND,
    )
    .await;
}
