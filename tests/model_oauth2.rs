//! The OAuth2 client-credentials source in the model worlds of `tests/model.rs`:
//! `OAuth2ClientCredentials`, over an in-memory token endpoint that answers from each world's
//! decisions (`tests/model/oauth2.rs`), under a default `TokenCache` and `BearerAuthLayer`, in
//! front of the world's API with the harness's probe.
//!
//! The promise under test: where tokens come from changes nothing the cache promises, so each
//! world's targets for `BearerAuthLayer` over the world itself as its source hold here too
//! (`tests/model/targets.rs`). The worlds are those `tests/model_grpc.rs` runs, and the outage
//! of `503`s, which reaches the source as an RFC 6749 §5.2 `temporarily_unavailable` and must
//! stay transient. World 1 runs twice, once with each client authentication (`ClientAuth`).
//!
//! What the OAuth2 wire format changes: `expires_in` is whole seconds (RFC 6749 Appendix A.14),
//! written rounded down, so the front runs every world with [`Setup::whole_seconds`]: a renewal
//! that returns a live token with what is left of its life (worlds 2, 3 and 6) says up to a
//! second less than is left, and callers may wait a second longer at that token's expiry
//! (`targets::boundary_bound`). Outages arrive as a `503` with a §5.2 body, a refused connection
//! and a reset one, as a Tower client reports them.
//!
//! Worlds not run here, because the wire format cannot say them:
//!
//! - **10, the server's clock**: a §5.1 answer carries no timestamp, only the relative
//!   `expires_in`, so a server clock off ours has nothing to act on (a JWT access token's
//!   `exp`/`iat` could carry one; the world issues opaque tokens);
//! - **8 under a second** (10 ms, 500 ms): `expires_in` in whole seconds would be `0`, which the
//!   source refuses as a token with no life. `tests/model_grpc.rs` does not run them either.
//!
//! What this suite found (fixed in the shared cache, so `AuthTokenSource` over a server writing
//! `expiresIn` in whole seconds has it too, and `tests/model.rs` runs those worlds now): once a
//! renewal had returned the live token with what is left of its life, the cache logged in at
//! the expiry it read, `received_at + expires_in`, and the rounding put that up to a second
//! before the server's. On seed 1 the renewal at 537.4 s finds 63.285 s left and reads 63; the
//! login at 600.647 s found the token 35 ms from its end, the server answered `expires_in: 0`,
//! the parser refused it as `invalid_response`, and the callers of the next second got that
//! error. Over seeds 1 to 30, 20 missed in worlds 2 and 3, 28 in 6; seed 9, the suites' own,
//! passed by luck (it loses 75 ms), so worlds 2, 3 and 6 also run on seed 1. The login now waits
//! for the latest the expiry can be (`whole_second_slack` in `src/cache/schedule.rs`).
//!
//! Everything runs on Tokio's paused clock, which the deadline checks follow, on the test's
//! current-thread runtime, seeded. No socket is opened: the token URL is a name the endpoint
//! service never resolves.

#[allow(dead_code)]
#[path = "model/harness.rs"]
mod harness;
#[path = "model/oauth2.rs"]
mod oauth2;
#[allow(dead_code)]
#[path = "model/targets.rs"]
mod targets;
#[allow(dead_code)]
#[path = "model/world.rs"]
mod world;

use std::sync::Arc;

use tokio::time::Instant;
use tower::{Layer, ServiceBuilder};
use tower_authtoken::{BearerAuthLayer, ClientAuth, TokenCache};

use harness::{LoginLog, Oracle, Probe, Recorded, Report, Traffic, drive};
use targets::{Front, Reseeded, SECOND};
use world::{ModelApi, OutageKind, Setup, World};

/// Runs `traffic` through `BearerAuthLayer` (default cache) over the world's API, with tokens
/// from `OAuth2ClientCredentials` authenticating with `auth` at the world's token endpoint.
async fn run(name: &str, setup: Setup, traffic: Traffic, auth: ClientAuth) -> (Report, Arc<World>) {
    assert!(
        setup.clock.is_none(),
        "a §5.1 answer has no timestamps: world 10 cannot be spoken as OAuth2"
    );
    tower_authtoken::testing::follow_tokio_clock();
    fastrand::seed(setup.seed);
    let lifetime = setup.lifetime;
    let world = setup.start();
    let log = LoginLog::new();
    let cache = TokenCache::new(Recorded::new(oauth2::source(&world, auth), &log));
    let probe = Probe::new(Arc::clone(&world) as Arc<dyn Oracle>);
    let api = ServiceBuilder::new()
        .layer(probe.clone())
        .service(ModelApi(Arc::clone(&world)));
    let start = Instant::now();
    let calls = drive(BearerAuthLayer::new(cache).layer(api), traffic).await;
    (
        Report::new(name, start, lifetime, calls, &probe, &log),
        world,
    )
}

/// `OAuth2ClientCredentials` in a world, authenticating with its `ClientAuth`: [`run`].
struct OAuth2(ClientAuth);

impl Front for OAuth2 {
    async fn run(&self, name: &str, mut setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
        // What §5.1 can say: `expires_in` in whole seconds, rounded down.
        setup.whole_seconds = true;
        run(
            &format!("oauth2 {:?} {name}", self.0),
            setup,
            traffic,
            self.0,
        )
        .await
    }
}

/// The default: HTTP Basic, which every server must support (RFC 6749 §2.3.1).
const BASIC: OAuth2 = OAuth2(ClientAuth::Basic);

// The worlds of `tests/model.rs` (documented in `tests/model/targets.rs`), with tokens from the
// OAuth2 source.

#[tokio::test(start_paused = true)]
async fn oauth2_fresh_token_per_login_serves_every_caller_with_one_login_per_lifetime() {
    targets::fresh(&BASIC).await;
}

/// World 1 with `client_id` and `client_secret` in the form instead of HTTP Basic.
#[tokio::test(start_paused = true)]
async fn oauth2_fresh_token_per_login_with_the_credentials_in_the_request_body() {
    targets::fresh(&OAuth2(ClientAuth::RequestBody)).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_one_live_token_per_user_is_used_to_its_expiry_without_errors() {
    targets::one_live(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_tokens_bound_to_the_session_expiry_cost_one_login_per_session() {
    targets::bound_to_session(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_sliding_session_renews_the_same_token_without_errors() {
    targets::sliding(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_revocations_cost_one_login_each_and_no_errors() {
    targets::revocations(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_spurious_401s_cost_one_login_each_and_no_errors() {
    targets::spurious_401s(&BASIC).await;
}

/// Worlds 2, 3 and 6 on seed 1, where the renewal at 537.4 s finds 63.285 s left and reads
/// `expires_in: 63`: the login planned at that expiry must wait for the latest it can be
/// (see the module's docs). Seed 9 loses only 75 ms to the rounding.
#[tokio::test(start_paused = true)]
async fn oauth2_one_live_token_per_user_with_expires_in_rounded_down_by_most_of_a_second() {
    targets::one_live(&Reseeded(&BASIC, 1)).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_tokens_bound_to_the_session_with_expires_in_rounded_down_by_most_of_a_second() {
    targets::bound_to_session(&Reseeded(&BASIC, 1)).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_spurious_401s_with_expires_in_rounded_down_by_most_of_a_second() {
    targets::spurious_401s(&Reseeded(&BASIC, 1)).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    targets::rejects_all(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute_with_slow_logins()
{
    targets::rejects_all_slow_logins(&BASIC).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_one_second_tokens_serve_every_caller_within_the_budget() {
    targets::short_lifetime(&BASIC, "8 lifetime-1s", SECOND).await;
}

/// `503` with `{"error":"temporarily_unavailable"}`: transient, retried once a second.
#[tokio::test(start_paused = true)]
async fn oauth2_outage_of_503s_longer_than_the_token_is_retried_once_a_second_and_recovers() {
    targets::outage(
        &BASIC,
        "9 outage-503-30s",
        OutageKind::Unavailable,
        30 * SECOND,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_outage_of_hung_logins_longer_than_the_token_recovers_within_1_5s() {
    targets::outage(&BASIC, "9 outage-hang-30s", OutageKind::Hang, 30 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn oauth2_outage_of_refused_connections_longer_than_the_token_is_retried_once_a_second() {
    targets::outage(
        &BASIC,
        "9 outage-refused-30s",
        OutageKind::Refused,
        30 * SECOND,
    )
    .await;
}
