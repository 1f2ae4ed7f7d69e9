//! Model-based tests (issue 9 §1): the cache against models of the login servers users have.
//!
//! Each test starts a [`world::World`] (a model of one login server and the API it protects,
//! which decides at every instant whether it would accept a token), puts the crate's
//! `TokenCache` and `BearerAuthLayer` in front of it, and sends traffic from 20 callers with
//! random (seeded) think times across at least three token lifetimes, on Tokio's paused clock.
//! The [`harness`] counts what the users saw and each test asserts the targets that apply
//! to its behaviour. Every test prints a one-line summary of its figures (`--nocapture`), then
//! the targets it missed, if any.
//!
//! Common settings: the cache's defaults (`TokenCache::new`); a login takes 200 ms (the token is
//! issued halfway, so the client reads every expiry 100 ms later than the server); an API request
//! takes 25 ms each way and is judged when it arrives. Waits are measured from the call to the
//! response, so the bound at an expiry boundary is one login latency + 1 s + one API round trip.
//!
//! How the targets are counted:
//!
//! - **Logins per lifetime**: at most one per lifetime the run spans (3 in a run of 3¼), plus the
//!   cold login, plus one per event (revocation, spurious 401), plus one for a server that
//!   answers an early renewal with a token that expires no later (2, 3, 6): that renewal is how
//!   the cache finds out. Tokens under 2 min are renewed at 3/8 to 1/2 of their life (half life
//!   less jitter) by the documented schedule, so for 1 s and 2 s tokens the bound is 8/3 per
//!   lifetime.
//! - **Rejected sends**: judged by the model when the request is sent, and again when a `401`
//!   comes back. Excused: a revoked token sent before any `401` for it came back, or a token still
//!   valid when sent (in flight at a revocation, or a spurious 401). Unexcused: everything else,
//!   including a token that expired on its way.
//! - **Wait at an expiry boundary**: the longest call that ran within 1 s of a token's expiry
//!   (as the client read it).
//! - **Outages** (9): a hung login stays hung until the endpoint recovers, and is then reset (a
//!   transport error); with a login that never answers, the fetch timeout (30 s) would bound the
//!   recovery instead.
//!
//! Runs are deterministic: the world, the callers and the cache's jitter (`fastrand::seed`) are
//! seeded, and everything runs on the test's current-thread runtime.

#[path = "model/harness.rs"]
mod harness;
#[path = "model/ideal.rs"]
mod ideal;
#[path = "model/targets.rs"]
mod targets;
#[path = "model/world.rs"]
mod world;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use jiff::SignedDuration;
use jiff::tz::Offset;
use tokio::time::{Instant, sleep};
use tower::{Layer, ServiceBuilder};
use tower_authtoken::{BearerAuthLayer, TokenCache, TokenCacheBuilder};

use harness::{Checks, LoginLog, Oracle, Probe, Recorded, Report, Traffic, Verdict, drive};
use ideal::Ideal;
use targets::{
    BUDGET_BURST, BUDGET_INTERVAL, Front, LONG, MS, Reseeded, SECOND, WholeSeconds, busy_traffic,
    check_a_handful_of_logins_and_every_401_to_its_caller, check_served, long_traffic,
};
use world::{Issuing, ModelApi, ModelLogin, Outage, OutageKind, ServerClock, Setup, World};

/// `BearerAuthLayer` (default cache) in a world: [`run`].
struct Http;

impl Front for Http {
    async fn run(&self, name: &str, setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
        run(name, setup, traffic).await
    }
}

/// Runs `traffic` through `BearerAuthLayer` (default cache) over the world's API.
async fn run(name: &str, setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
    run_with(name, setup, traffic, false, |builder| builder).await
}

/// Like [`run`], with the cache's settings changed by `configure`, and with
/// `retry_on_unauthorized` if `replay`.
async fn run_with(
    name: &str,
    setup: Setup,
    traffic: Traffic,
    replay: bool,
    configure: impl FnOnce(TokenCacheBuilder) -> TokenCacheBuilder,
) -> (Report, Arc<World>) {
    fastrand::seed(setup.seed);
    let lifetime = setup.lifetime;
    let world = setup.start();
    let log = LoginLog::new();
    let source = Recorded::new(ModelLogin(Arc::clone(&world)), &log);
    let cache = configure(TokenCache::builder(source))
        .build()
        .expect("the cache's settings are valid");
    let probe = Probe::new(Arc::clone(&world) as Arc<dyn Oracle>);
    let api = ServiceBuilder::new()
        .layer(probe.clone())
        .service(ModelApi(Arc::clone(&world)));
    let layer = BearerAuthLayer::new(cache);
    let start = Instant::now();
    let calls = if replay {
        drive(layer.retry_on_unauthorized().layer(api), traffic).await
    } else {
        drive(layer.layer(api), traffic).await
    };
    (
        Report::new(name, start, lifetime, calls, &probe, &log),
        world,
    )
}

// ---------------------------------------------------------------------------------------------
// 1–4: how the server issues tokens

/// 1. A fresh full-length token on every login (the server the cache was written for).
#[tokio::test(start_paused = true)]
async fn fresh_token_per_login_serves_every_caller_with_one_login_per_lifetime() {
    targets::fresh(&Http).await;
}

/// 2. One live token per user: the renewal returns the same token with its remaining life.
/// One extra login: the early renewal that finds out the server works this way.
#[tokio::test(start_paused = true)]
async fn one_live_token_per_user_is_used_to_its_expiry_without_errors() {
    targets::one_live(&Http).await;
}

/// 3. A new token on every login, bound to the session's expiry. One extra login, as in 2.
#[tokio::test(start_paused = true)]
async fn tokens_bound_to_the_session_expiry_cost_one_login_per_session() {
    targets::bound_to_session(&Http).await;
}

/// 4. Sliding: the same token, its expiry pushed forward by each login (a normal renewal).
#[tokio::test(start_paused = true)]
async fn sliding_session_renews_the_same_token_without_errors() {
    targets::sliding(&Http).await;
}

/// 2, 3 and 6 with `expiresIn` in whole seconds, rounded down, as many servers write it: a
/// renewal that returns the live token says up to a second less than is left, so the login that
/// replaces it at its expiry must wait for the latest that expiry can be, or it finds the token
/// still live (and `expiresIn: 0`). Seed 1 loses most of a second (63.285 s written as 63).
#[tokio::test(start_paused = true)]
async fn one_live_token_written_in_whole_seconds_is_replaced_after_its_latest_expiry() {
    targets::one_live(&WholeSeconds(&Http)).await;
    targets::one_live(&Reseeded(&WholeSeconds(&Http), 1)).await;
}

#[tokio::test(start_paused = true)]
async fn tokens_bound_to_a_session_written_in_whole_seconds_cost_one_login_per_session() {
    targets::bound_to_session(&WholeSeconds(&Http)).await;
    targets::bound_to_session(&Reseeded(&WholeSeconds(&Http), 1)).await;
}

#[tokio::test(start_paused = true)]
async fn spurious_401s_on_a_server_writing_whole_seconds_cost_one_login_each_and_no_errors() {
    targets::spurious_401s(&WholeSeconds(&Http)).await;
    targets::spurious_401s(&Reseeded(&WholeSeconds(&Http), 1)).await;
}

/// Worlds 1 to 6 on seeds 1 to 30, with `expiresIn` in fractions and in whole seconds. Every
/// other test runs one seed or two, and seed 9 once hid a bug that 2 runs in 3 showed (see
/// TESTING.md): a sweep for a nightly job, too slow for `cargo test` (about 1.5 min in debug).
#[tokio::test(start_paused = true)]
#[ignore = "30 seeds of six worlds, about 1.5 min in debug: cargo test --test model -- --ignored seeds"]
async fn worlds_1_to_6_meet_their_targets_on_seeds_1_to_30_in_fractions_and_whole_seconds() {
    for seed in 1..=30 {
        let fractions = Reseeded(&Http, seed);
        let whole = WholeSeconds(&fractions);
        targets::fresh(&fractions).await;
        targets::one_live(&fractions).await;
        targets::bound_to_session(&fractions).await;
        targets::sliding(&fractions).await;
        targets::revocations(&fractions).await;
        targets::spurious_401s(&fractions).await;
        targets::one_live(&whole).await;
        targets::bound_to_session(&whole).await;
        targets::spurious_401s(&whole).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5–6: the API says 401

/// 5. The server revokes the live token at 3 random instants. The requests in flight and those
/// sent before the first 401 came back are excused; one login per revocation.
#[tokio::test(start_paused = true)]
async fn revocations_at_random_instants_cost_one_login_each_and_no_errors() {
    targets::revocations(&Http).await;
}

/// 6. Spurious 401s against a one-live-token server: at 3 random instants, the API rejects a
/// still-valid token once, and the re-login returns that same token. The 401 reaches its caller;
/// nobody else fails; one login per event, plus one as in 2.
#[tokio::test(start_paused = true)]
async fn spurious_401s_cost_one_login_each_and_no_errors() {
    targets::spurious_401s(&Http).await;
}

/// 7. The API rejects every token while the login keeps succeeding. Busy callers (20, thinking
/// up to 2 s) for 5 minutes: at most a handful of logins in any minute (the cold login and
/// invalidations honoured after 1, 2, 4, 8, 16, 32 s: 7, so 8 allowed), and every 401 reaches
/// its caller unchanged, never an error.
#[tokio::test(start_paused = true)]
async fn api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    targets::rejects_all(&Http).await;
}

/// 7 with 5 s logins (a slow login endpoint, or a busy shared budget): the time a login takes is
/// not a quiet spell, so the invalidations go on spacing out and the logins stay a handful a
/// minute. Before the fix, each 5 s login reset the spacing and the cache logged in every 5 s.
#[tokio::test(start_paused = true)]
async fn api_that_rejects_every_token_gets_a_handful_of_logins_per_minute_with_slow_logins() {
    targets::rejects_all_slow_logins(&Http).await;
}

/// 6, with `retry_on_unauthorized`: the request rejected by a spurious 401 is replayed with the
/// token the re-login returned (the same one), so no 401 reaches any caller.
#[tokio::test(start_paused = true)]
async fn spurious_401s_are_replayed_and_never_reach_callers_with_retry_on_unauthorized() {
    let mut setup = Setup::new(Issuing::OneLive, LONG);
    setup.spurious = 3;
    let (report, world) = run_with(
        "6 spurious-401 replay",
        setup.clone(),
        long_traffic(),
        true,
        |builder| builder,
    )
    .await;
    let spurious = world.counts().spurious_401s as usize;
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    let mut checks = check_served(&report, &setup, 1 + spurious);
    checks
        .target(
            spurious == 3,
            format!("3 spurious 401s took place: {spurious}"),
        )
        .target(
            to_callers == 0,
            format!("no 401 reaches a caller: {to_callers}"),
        );
    checks.finish();
}

/// 7, with `retry_on_unauthorized`: each request is sent twice, and still at most a handful of
/// logins in any minute; the replay's 401 reaches the caller, never an error.
#[tokio::test(start_paused = true)]
async fn api_that_rejects_every_token_gets_a_handful_of_logins_per_minute_with_replays() {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.rejects_all = true;
    let traffic = busy_traffic(300 * SECOND, 2 * SECOND);
    let (report, _) = run_with("7 rejects-all replay", setup, traffic, true, |builder| {
        builder
    })
    .await;
    check_a_handful_of_logins_and_every_401_to_its_caller(&report);
}

// ---------------------------------------------------------------------------------------------
// 8: very short lifetimes

/// Below 1 s only the login rate is asserted: it stays within the budget. The login takes 5 ms
/// (a server next door), the worst case for a budget: a slow login limits the rate by itself.
async fn short_lifetime_within_budget(name: &str, lifetime: Duration, callers: bool) {
    let mut setup = Setup::new(Issuing::Fresh, lifetime);
    setup.login_latency = 5 * MS;
    let run_for = 10 * SECOND;
    let report = if callers {
        run(name, setup, busy_traffic(run_for, 200 * MS)).await.0
    } else {
        // No traffic: one caller starts the cache, then nobody asks for 10 s.
        fastrand::seed(setup.seed);
        let world = setup.start();
        let log = LoginLog::new();
        let cache = TokenCache::new(Recorded::new(ModelLogin(Arc::clone(&world)), &log));
        let probe = Probe::new(Arc::clone(&world) as Arc<dyn Oracle>);
        let start = Instant::now();
        // Only to start the cache: whether this first token is still usable does not matter.
        let _ = cache.token().await;
        sleep(run_for).await;
        Report::new(name, start, lifetime, Vec::new(), &probe, &log)
    };
    let mut checks = Checks::new(&report);
    checks.within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    checks.finish();
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_10ms_keeps_logins_within_the_budget_with_callers() {
    short_lifetime_within_budget("8 lifetime-10ms callers", 10 * MS, true).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_10ms_keeps_logins_within_the_budget_without_callers() {
    short_lifetime_within_budget("8 lifetime-10ms idle", 10 * MS, false).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_500ms_keeps_logins_within_the_budget_with_callers() {
    short_lifetime_within_budget("8 lifetime-500ms callers", 500 * MS, true).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_500ms_keeps_logins_within_the_budget_without_callers() {
    short_lifetime_within_budget("8 lifetime-500ms idle", 500 * MS, false).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_1s_serves_every_caller_within_the_budget() {
    targets::short_lifetime(&Http, "8 lifetime-1s", SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_of_2s_serves_every_caller_within_the_budget() {
    targets::short_lifetime(&Http, "8 lifetime-2s", 2 * SECOND).await;
}

// ---------------------------------------------------------------------------------------------
// 9: login outages

/// A login outage of `kind` lasting `length` ([`targets::outage`]).
async fn outage(name: &str, kind: OutageKind, length: Duration) {
    targets::outage(&Http, name, kind, length).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_503s_shorter_than_the_token_is_retried_once_a_second_and_recovers() {
    outage("9 outage-503-3s", OutageKind::Unavailable, 3 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_503s_longer_than_the_token_is_retried_once_a_second_and_recovers() {
    outage("9 outage-503-30s", OutageKind::Unavailable, 30 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_hung_logins_shorter_than_the_token_recovers_within_1_5s() {
    outage("9 outage-hang-3s", OutageKind::Hang, 3 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_hung_logins_longer_than_the_token_recovers_within_1_5s() {
    outage("9 outage-hang-30s", OutageKind::Hang, 30 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_refused_connections_shorter_than_the_token_is_retried_once_a_second() {
    outage("9 outage-refused-3s", OutageKind::Refused, 3 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_refused_connections_longer_than_the_token_is_retried_once_a_second() {
    outage("9 outage-refused-30s", OutageKind::Refused, 30 * SECOND).await;
}

// ---------------------------------------------------------------------------------------------
// 10: the server's clock

/// 10. The server's clock is an hour ahead and writes `issued`/`expires` in +05:30, with
/// `expiresIn`.
#[tokio::test(start_paused = true)]
async fn server_clock_an_hour_ahead_in_another_zone_changes_nothing() {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.clock = Some(ServerClock {
        skew: SignedDuration::from_hours(1),
        offset: Offset::from_seconds(5 * 3600 + 1800).unwrap(),
        expires_in: true,
    });
    let (report, _) = run("10 clock+1h +05:30", setup.clone(), long_traffic()).await;
    check_served(&report, &setup, 0).finish();
}

/// 10. The server's clock is an hour behind and writes `issued`/`expires` in -08:00, without
/// `expiresIn`: the lifetime is `expires - issued`.
#[tokio::test(start_paused = true)]
async fn server_clock_an_hour_behind_without_expires_in_changes_nothing() {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.clock = Some(ServerClock {
        skew: SignedDuration::from_hours(-1),
        offset: Offset::constant(-8),
        expires_in: false,
    });
    let (report, _) = run("10 clock-1h -08:00", setup.clone(), long_traffic()).await;
    check_served(&report, &setup, 0).finish();
}

// ---------------------------------------------------------------------------------------------
// The harness itself

/// The harness catches a cache that sends dead tokens: a server that says its tokens live twice
/// as long as they do makes the cache use each one past its real expiry. The oracle here is a
/// plain closure, as it would be for the real server.
#[tokio::test(start_paused = true)]
async fn harness_counts_sends_with_a_token_the_server_would_reject() {
    let mut setup = Setup::new(Issuing::Fresh, 100 * SECOND);
    setup.advertised = 2.0;
    fastrand::seed(setup.seed);
    let world = setup.clone().start();
    let log = LoginLog::new();
    let cache = TokenCache::new(Recorded::new(ModelLogin(Arc::clone(&world)), &log));
    let oracle = {
        let world = Arc::clone(&world);
        move |token: &str| world.accepts(token)
    };
    let probe = Probe::new(Arc::new(oracle));
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .layer(probe.clone())
        .service(ModelApi(Arc::clone(&world)));
    let start = Instant::now();
    let calls = drive(client, busy_traffic(400 * SECOND, 2 * SECOND)).await;
    let report = Report::new(
        "harness overstated-lifetime",
        start,
        setup.lifetime,
        calls,
        &probe,
        &log,
    );
    println!("{}", report.summary());
    let unexcused = report.rejected(Verdict::Unexcused);
    assert!(unexcused > 0, "the harness saw no dead token sent");
    assert_eq!(
        unexcused,
        report.transport_statuses(StatusCode::UNAUTHORIZED),
        "every dead token sent was answered 401, and only those"
    );
    assert!(report.logins() >= 4, "one login per real lifetime at least");
}

/// The harness counts caller errors and measures waits: with the login refused for the whole
/// run, every call fails and no login succeeds.
#[tokio::test(start_paused = true)]
async fn harness_counts_caller_errors_when_no_login_succeeds() {
    let mut setup = Setup::new(Issuing::Fresh, 10 * SECOND);
    setup.outages = vec![Outage {
        kind: OutageKind::Refused,
        from: Duration::ZERO,
        until: 3600 * SECOND,
    }];
    let (report, _) = run("harness refused", setup, busy_traffic(30 * SECOND, SECOND)).await;
    println!("{}", report.summary());
    assert!(!report.calls.is_empty());
    assert_eq!(report.caller_errors(), report.calls.len());
    assert_eq!(report.logins(), 0);
    assert!(!report.attempts.is_empty());
    assert!(report.sent.is_empty(), "no request reached the API");
}

/// The harness measures the wait at an expiry boundary, and the target catches a cache that makes
/// callers wait for a slow login there: renewing only at expiry (1 ms lead and margin) with a
/// 2 s login makes every caller at each boundary wait the whole login.
#[tokio::test(start_paused = true)]
async fn harness_catches_callers_waiting_for_a_login_at_expiry() {
    let mut setup = Setup::new(Issuing::Fresh, 60 * SECOND);
    setup.login_latency = 2 * SECOND;
    let traffic = busy_traffic(200 * SECOND, SECOND);
    let (report, _) = run_with(
        "harness wait-at-expiry",
        setup.clone(),
        traffic,
        false,
        |builder| builder.refresh_before(MS).expiry_margin(MS),
    )
    .await;
    let wait = report.longest_wait_at_expiry();
    assert!(wait >= 2 * SECOND, "callers at expiry waited only {wait:?}");
    let mut checks = Checks::new(&report);
    checks.boundary_wait_at_most(SECOND + setup.api_round_trip());
    assert_eq!(checks.missed().len(), 1, "the target must catch the wait");
}

/// The targets are reachable: a minimal client that keeps the contract of issue 9
/// ([`ideal::Ideal`]) meets every one of them against the servers the cache fails today (2, 3, 4
/// and 6), so a missed target is the cache's, not the harness's.
#[tokio::test(start_paused = true)]
async fn harness_targets_are_met_by_a_client_that_keeps_the_contract() {
    let mut missed = Vec::new();
    for (name, issuing, spurious) in [
        ("2 one-live", Issuing::OneLive, 0),
        ("3 bound-to-session", Issuing::BoundToSession, 0),
        ("4 sliding", Issuing::Sliding, 0),
        ("6 spurious-401", Issuing::OneLive, 3),
    ] {
        let mut setup = Setup::new(issuing, LONG);
        setup.spurious = spurious;
        fastrand::seed(setup.seed);
        let world = setup.clone().start();
        let log = LoginLog::new();
        let probe = Probe::new(Arc::clone(&world) as Arc<dyn Oracle>);
        let api = ServiceBuilder::new()
            .layer(probe.clone())
            .service(ModelApi(Arc::clone(&world)));
        let client = Ideal::new(api, Recorded::new(ModelLogin(Arc::clone(&world)), &log));
        let start = Instant::now();
        let calls = drive(client, long_traffic()).await;
        let name = format!("ideal {name}");
        let report = Report::new(&name, start, LONG, calls, &probe, &log);
        let learned = usize::from(issuing != Issuing::Sliding);
        let events = world.counts().spurious_401s as usize;
        let checks = check_served(&report, &setup, learned + events);
        missed.extend(checks.missed().iter().map(|m| format!("{name}: {m}")));
    }
    assert!(missed.is_empty(), "{missed:#?}");
}
