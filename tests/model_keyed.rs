//! The keyed layer in the model worlds of `tests/model.rs` (issue 14: "the 401 handling, the
//! plain-HTTP guard and replay work per key exactly as today").
//!
//! Each test runs four accounts through one `KeyedBearerAuthLayer` over one client stack. Each
//! account has a world of its own: a model login server and API of the same kind (the servers of
//! `tests/model.rs`: fresh tokens, one live token, tokens bound to the session, sliding sessions,
//! revocations, spurious `401`s, an API that rejects every token, login outages, short lives),
//! seeded differently, so that events fall at different instants for each. Each world's tokens
//! carry its account's name, so a token sent for the wrong account is a token that account's
//! server would reject, and the probe counts it.
//!
//! Under the layer, the transport routes each request to its account's world, each behind a
//! probe of its own. Five callers per account (20 in all, as in `tests/model.rs`) send with the
//! same seeded think times. The harness then judges each account on its own, with the targets a
//! single `BearerAuthLayer` meets in that world, and all accounts' logins together against the
//! shared budget (10 at once, then 10 a second). That includes one login per token lifetime:
//! a keyed account spreads only the renewal of a token logged in for with none in service.
//!
//! Everything runs on Tokio's paused clock, which the deadline checks follow
//! (`testing::follow_tokio_clock`), on the test's current-thread runtime, seeded.

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

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_authtoken::tonic::KeyedGrpcBearerAuthLayer;
use tower_authtoken::{Error, KeyedBearerAuthLayer, KeyedTokenCache};

use grpc::GrpcModelApi;
use harness::{BoxFuture, Checks, LoginLog, Probe, Probed, Recorded, Report, Traffic, drive_with};
use targets::{
    LONG, SECOND, check_a_handful_of_logins_and_every_401_to_its_caller, check_outage,
    check_served, check_short_lifetime, outage_setup, short_lifetime_traffic,
};
use world::{Issuing, ModelApi, ModelLogin, OutageKind, Setup, World};

/// The accounts of every run.
const ACCOUNTS: usize = 4;
/// Callers per account.
const CALLERS: usize = 5;

/// The keyed cache's shared budget, its default: 10 at once, then one per 100 ms.
const SHARED_BURST: usize = 10;
const SHARED_INTERVAL: Duration = Duration::from_millis(100);

/// A request's account: the layer's default reads it from the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Account(usize);

/// The transport: each request goes to its account's world's API `A`, through that account's
/// probe.
struct ByAccount<A>(Arc<Vec<Probed<A>>>);

impl<A> Clone for ByAccount<A> {
    fn clone(&self) -> Self {
        ByAccount(Arc::clone(&self.0))
    }
}

impl<A> ByAccount<A> {
    /// Each world's API, made by `api`, under its account's probe.
    fn new(worlds: &[Arc<World>], probes: &[Probe], api: impl Fn(Arc<World>) -> A) -> Self {
        let stacks = worlds.iter().zip(probes).map(|(world, probe)| {
            ServiceBuilder::new()
                .layer(probe.clone())
                .service(api(Arc::clone(world)))
        });
        ByAccount(Arc::new(stacks.collect()))
    }
}

impl<A, B> Service<Request<()>> for ByAccount<A>
where
    A: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    A::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<B>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every world's API is always ready; each call readies its own below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let Account(account) = *req
            .extensions()
            .get::<Account>()
            .expect("the layer keeps the request's account");
        Box::pin(self.0[account].clone().oneshot(req))
    }
}

/// The front-end the accounts go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// `KeyedBearerAuthLayer`.
    Http,
    /// `KeyedBearerAuthLayer::retry_on_unauthorized`.
    HttpReplay,
    /// `KeyedGrpcBearerAuthLayer`, over each world's API spoken as gRPC.
    Grpc,
}

/// What one account saw, and its world.
struct Seen {
    report: Report,
    world: Arc<World>,
}

/// Runs `traffic` for each of [`ACCOUNTS`] accounts through one keyed layer, each account over
/// a world like `setup` (seeded by account): what each account saw, and every account's login
/// attempts together, as a report of their own.
async fn run(name: &str, setup: &Setup, traffic: Traffic, front: Front) -> (Vec<Seen>, Report) {
    // An account with a fresh token has no task and no timer: only the requests' own deadline
    // checks withdraw its token, and on the paused clock they must read Tokio's clock.
    tower_authtoken::testing::follow_tokio_clock();
    fastrand::seed(setup.seed);
    let worlds: Vec<Arc<World>> = (0..ACCOUNTS)
        .map(|account| {
            let mut setup = setup.clone();
            setup.seed += account as u64;
            setup.token_prefix = format!("account-{account}");
            setup.start()
        })
        .collect();
    let logs: Vec<Arc<LoginLog>> = (0..ACCOUNTS).map(|_| LoginLog::new()).collect();
    let all_logins = LoginLog::new();
    let probes: Vec<Probe> = worlds
        .iter()
        .map(|world| Probe::new(Arc::clone(world) as Arc<dyn harness::Oracle>))
        .collect();
    let accounts = {
        let (worlds, logs, all_logins) = (worlds.clone(), logs.clone(), Arc::clone(&all_logins));
        KeyedTokenCache::builder(move |&Account(account): &Account| {
            let login = ModelLogin(Arc::clone(&worlds[account]));
            Ok::<_, Error>(Recorded::new(
                Recorded::new(login, &logs[account]),
                &all_logins,
            ))
        })
        .build()
        .expect("the keyed cache's settings are valid")
    };
    let http = ByAccount::new(&worlds, &probes, ModelApi);
    let grpc = ByAccount::new(&worlds, &probes, GrpcModelApi);
    let layer = KeyedBearerAuthLayer::new(accounts.clone());
    let grpc_layer = KeyedGrpcBearerAuthLayer::new(accounts, &grpc::origin());
    let start = Instant::now();
    let mut drivers = Vec::new();
    for account in 0..ACCOUNTS {
        let traffic = Traffic {
            seed: traffic.seed + account as u64,
            ..traffic
        };
        let request = move || {
            let mut request = match front {
                Front::Grpc => grpc::call(),
                Front::Http | Front::HttpReplay => Request::new(()),
            };
            request.extensions_mut().insert(Account(account));
            request
        };
        drivers.push(match front {
            Front::Http => {
                let client = layer.clone().layer(http.clone());
                tokio::spawn(drive_with(client, traffic, request))
            }
            Front::HttpReplay => {
                let client = layer.clone().retry_on_unauthorized().layer(http.clone());
                tokio::spawn(drive_with(client, traffic, request))
            }
            Front::Grpc => {
                let channel = grpc_layer.clone().layer(grpc.clone());
                let client = ServiceExt::<Request<()>>::and_then(channel, grpc::read_status);
                tokio::spawn(drive_with(client, traffic, request))
            }
        });
    }
    let mut seen = Vec::new();
    for (account, driver) in drivers.into_iter().enumerate() {
        let calls = driver.await.expect("an account's callers panicked");
        let name = format!("{name}, account {account}");
        seen.push(Seen {
            report: Report::new(
                &name,
                start,
                setup.lifetime,
                calls,
                &probes[account],
                &logs[account],
            ),
            world: Arc::clone(&worlds[account]),
        });
    }
    // Only the logins count here: no calls, and a probe that saw nothing.
    let together = Report::new(
        &format!("{name}, all accounts"),
        start,
        setup.lifetime,
        Vec::new(),
        &Probe::new(Arc::new(|_: &str| true)),
        &all_logins,
    );
    (seen, together)
}

/// `tests/model.rs`'s traffic, with [`CALLERS`] callers per account.
fn per_account(traffic: Traffic) -> Traffic {
    Traffic {
        callers: CALLERS,
        ..traffic
    }
}

/// Every account's logins together keep to the keyed cache's shared budget.
fn check_shared_budget(together: &Report) {
    Checks::new(together)
        .within_budget(SHARED_BURST, SHARED_INTERVAL)
        .finish();
}

/// The targets of `tests/model.rs` behaviours 1–6 for each account: no errors, no unexcused
/// rejection, one login per lifetime plus `extra(world)`, short waits at expiry, and the
/// account's own budget; then the shared budget.
async fn each_account_served(
    name: &str,
    setup: Setup,
    front: Front,
    extra: impl Fn(&World) -> usize,
) -> Vec<Seen> {
    let (seen, together) = run(name, &setup, per_account(targets::long_traffic()), front).await;
    for Seen { report, world } in &seen {
        check_served(report, &setup, extra(world)).finish();
    }
    check_shared_budget(&together);
    seen
}

// ---------------------------------------------------------------------------------------------
// 1–4: how the server issues tokens

/// World 1: a fresh full-length token on every login.
#[tokio::test(start_paused = true)]
async fn keyed_fresh_token_per_login_serves_every_account_with_one_login_per_lifetime() {
    let setup = Setup::new(Issuing::Fresh, LONG);
    each_account_served("keyed 1 fresh", setup, Front::Http, |_| 0).await;
}

/// World 2: one live token per user: each account's renewal returns the same token with its
/// remaining life. One extra login per account: the early renewal that finds out.
#[tokio::test(start_paused = true)]
async fn keyed_one_live_token_per_user_is_used_to_its_expiry_for_every_account() {
    let setup = Setup::new(Issuing::OneLive, LONG);
    each_account_served("keyed 2 one-live", setup, Front::Http, |_| 1).await;
}

/// World 3: a new token on every login, bound to the session's expiry.
#[tokio::test(start_paused = true)]
async fn keyed_tokens_bound_to_the_session_expiry_cost_one_login_per_session_per_account() {
    let setup = Setup::new(Issuing::BoundToSession, LONG);
    each_account_served("keyed 3 bound-to-session", setup, Front::Http, |_| 1).await;
}

/// World 4: sliding: the same token, its expiry pushed forward by each login.
#[tokio::test(start_paused = true)]
async fn keyed_sliding_sessions_renew_the_same_token_for_every_account() {
    let setup = Setup::new(Issuing::Sliding, LONG);
    each_account_served("keyed 4 sliding", setup, Front::Http, |_| 0).await;
}

/// Worlds 2, 3 and 6 with `expiresIn` written in whole seconds, rounded down: each account's
/// cache learns on its own that its server cuts lifetimes, and no caller of any fails.
#[tokio::test(start_paused = true)]
async fn keyed_servers_writing_whole_seconds_fail_no_caller_of_any_account() {
    for (name, issuing, spurious) in [
        ("keyed 2 one-live whole-seconds", Issuing::OneLive, 0),
        (
            "keyed 3 bound-to-session whole-seconds",
            Issuing::BoundToSession,
            0,
        ),
        ("keyed 6 spurious-401 whole-seconds", Issuing::OneLive, 3),
    ] {
        let mut setup = Setup::new(issuing, LONG);
        setup.whole_seconds = true;
        setup.spurious = spurious;
        each_account_served(name, setup, Front::Http, |world| {
            1 + world.counts().spurious_401s as usize
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5–6: the API says 401

/// World 5: each account's server revokes its live token at 3 random instants of its own: one login
/// per revocation for that account, and no other account's token touched.
#[tokio::test(start_paused = true)]
async fn keyed_revocations_cost_the_revoked_account_one_login_each() {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.revocations = 3;
    let seen = each_account_served("keyed 5 revocation", setup, Front::Http, |world| {
        world.counts().revocations as usize
    })
    .await;
    for Seen { report, world } in &seen {
        let revocations = world.counts().revocations;
        assert_eq!(revocations, 3, "{}: 3 revocations took place", report.name);
    }
}

/// World 6, with `retry_on_unauthorized`: spurious 401s against one-live-token servers are replayed
/// with the token the re-login returned, so no 401 reaches any caller of any account.
#[tokio::test(start_paused = true)]
async fn keyed_spurious_401s_are_replayed_per_account_and_never_reach_callers() {
    let mut setup = Setup::new(Issuing::OneLive, LONG);
    setup.spurious = 3;
    let seen = each_account_served(
        "keyed 6 spurious-401 replay",
        setup,
        Front::HttpReplay,
        |world| 1 + world.counts().spurious_401s as usize,
    )
    .await;
    for Seen { report, world } in &seen {
        let spurious = world.counts().spurious_401s;
        let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
        assert_eq!(spurious, 3, "{}: 3 spurious 401s took place", report.name);
        assert_eq!(to_callers, 0, "{}: no 401 reaches a caller", report.name);
    }
}

/// World 7: every account's API rejects every token while logins succeed, busy callers for 5
/// minutes: a handful of login attempts a minute per account, every 401 to its caller unchanged,
/// never an error, with and without replays.
async fn keyed_rejects_all(name: &str, front: Front) {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.rejects_all = true;
    let (seen, together) = run(
        name,
        &setup,
        per_account(targets::busy_traffic(300 * SECOND, 2 * SECOND)),
        front,
    )
    .await;
    for Seen { report, .. } in &seen {
        check_a_handful_of_logins_and_every_401_to_its_caller(report);
    }
    check_shared_budget(&together);
}

#[tokio::test(start_paused = true)]
async fn keyed_api_that_rejects_every_token_gets_a_handful_of_logins_per_account_per_minute() {
    keyed_rejects_all("keyed 7 rejects-all", Front::Http).await;
}

#[tokio::test(start_paused = true)]
async fn keyed_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute_with_replays() {
    keyed_rejects_all("keyed 7 rejects-all replay", Front::HttpReplay).await;
}

// ---------------------------------------------------------------------------------------------
// 8–9: short lives and login outages

/// World 8: one-second tokens for every account: every caller served, at most 8/3 logins per
/// lifetime per account (the documented schedule), within every budget.
#[tokio::test(start_paused = true)]
async fn keyed_one_second_tokens_serve_every_caller_within_the_budgets() {
    let setup = Setup::new(Issuing::Fresh, SECOND);
    let traffic = per_account(short_lifetime_traffic(SECOND));
    let (seen, together) = run("keyed 8 lifetime-1s", &setup, traffic, Front::Http).await;
    for Seen { report, .. } in &seen {
        check_short_lifetime(report, &setup);
    }
    check_shared_budget(&together);
}

/// World 9: a hung login endpoint for 30 s, longer than the 4 s tokens, for every account at
/// once: at most one attempt a second per account while it lasts (+2), every account served
/// again within 1.5 s of the recovery, no unexcused rejected send.
#[tokio::test(start_paused = true)]
async fn keyed_outage_of_hung_logins_longer_than_the_token_recovers_every_account_within_1_5s() {
    let length = 30 * SECOND;
    let (setup, traffic) = outage_setup(OutageKind::Hang, length);
    let traffic = per_account(traffic);
    let (seen, together) = run("keyed 9 outage-hang-30s", &setup, traffic, Front::Http).await;
    for Seen { report, world } in &seen {
        check_outage(report, world, length);
    }
    check_shared_budget(&together);
}

// ---------------------------------------------------------------------------------------------
// The keyed gRPC layer

/// World 5 through `KeyedGrpcBearerAuthLayer`: each account's revoked tokens come back as
/// `UNAUTHENTICATED`, in the headers and in the trailers in turn, and cost that account one
/// login each.
#[tokio::test(start_paused = true)]
async fn keyed_grpc_revocations_cost_the_revoked_account_one_login_each() {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.revocations = 3;
    each_account_served("keyed grpc 5 revocation", setup, Front::Grpc, |world| {
        world.counts().revocations as usize
    })
    .await;
}

/// World 6 through `KeyedGrpcBearerAuthLayer`: spurious `UNAUTHENTICATED`s reach their callers
/// (gRPC does not replay), cost one login each, and nobody else fails.
#[tokio::test(start_paused = true)]
async fn keyed_grpc_spurious_unauthenticated_cost_one_login_each() {
    let mut setup = Setup::new(Issuing::OneLive, LONG);
    setup.spurious = 3;
    let seen = each_account_served("keyed grpc 6 spurious", setup, Front::Grpc, |world| {
        1 + world.counts().spurious_401s as usize
    })
    .await;
    for Seen { report, world } in &seen {
        let spurious = world.counts().spurious_401s as usize;
        let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
        assert!(
            to_callers <= spurious,
            "{}: {to_callers} for {spurious}",
            report.name
        );
    }
}

/// World 7 through `KeyedGrpcBearerAuthLayer`: an API that rejects every token, in the headers
/// and the trailers in turn, costs each account a handful of logins a minute.
#[tokio::test(start_paused = true)]
async fn keyed_grpc_api_that_rejects_every_token_gets_a_handful_of_logins_per_account() {
    keyed_rejects_all("keyed grpc 7 rejects-all", Front::Grpc).await;
}
