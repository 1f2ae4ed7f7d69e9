//! The targets every front-end meets in each world of `tests/model.rs`, shared by the suites
//! that put a front-end in those worlds (`tests/model.rs`: `BearerAuthLayer`;
//! `tests/model_keyed.rs`: the keyed layer; `tests/model_grpc.rs`: the gRPC layer).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::harness::{Checks, Report, Traffic};
use super::world::{Issuing, Outage, OutageKind, Setup, World};

pub const MS: Duration = Duration::from_millis(1);
pub const SECOND: Duration = Duration::from_secs(1);

/// A long lifetime, so that the default 60 s lead renews about once per lifetime.
pub const LONG: Duration = Duration::from_secs(600);

/// The default login budget of the cache: a burst of 5, then one login per 250 ms.
pub const BUDGET_BURST: usize = 5;
pub const BUDGET_INTERVAL: Duration = Duration::from_millis(250);

/// The run of a long-lived token: 20 callers for 3¼ lifetimes, thinking up to 15 s (about 2.7
/// requests per second, so that every expiry boundary sees a few).
pub fn long_traffic() -> Traffic {
    Traffic {
        callers: 20,
        duration: LONG * 13 / 4,
        think_min: Duration::ZERO,
        think_max: 15 * SECOND,
        seed: 9,
    }
}

/// Busy callers for short runs: 20 callers thinking up to `think_max`.
pub fn busy_traffic(duration: Duration, think_max: Duration) -> Traffic {
    Traffic {
        callers: 20,
        duration,
        think_min: Duration::ZERO,
        think_max,
        seed: 9,
    }
}

/// The longest a caller may wait at an expiry boundary: one login, 1 s, and its own request,
/// plus 10 ms for the timer wheel, which rounds every sleep up to the next millisecond.
///
/// Where the server writes lifetimes in whole seconds ([`Setup::whole_seconds`]), it hides its
/// token's expiry within a second, and a login that only that expiry can answer with a new token
/// must wait for the latest it can be: a second more. The cache learns that the server cuts
/// lifetimes from the first such login that comes early and finds the token in its last second
/// (`expiresIn: 0`); at that one boundary, callers also wait for that login and for the one
/// made a second (and the cache's 50 ms grace) after its answer: one login and 50 ms more.
pub fn boundary_bound(setup: &Setup) -> Duration {
    let hidden = if setup.whole_seconds {
        SECOND + setup.login_latency + 50 * MS
    } else {
        Duration::ZERO
    };
    setup.login_latency + SECOND + hidden + setup.api_round_trip() + 10 * MS
}

/// The targets of behaviours 1–6 and 10: no errors, no unexcused rejection, one login per
/// lifetime plus `extra`, short waits at expiry, and the login budget.
pub fn check_served<'a>(report: &'a Report, setup: &Setup, extra: usize) -> Checks<'a> {
    let mut checks = Checks::new(report);
    checks
        .no_caller_errors()
        .no_unexcused_rejections()
        .one_login_per_lifetime(extra)
        .failed_attempts_at_most(
            usize::from(setup.whole_seconds),
            "none, but where the server cuts lifetimes to whole seconds the one that learns it",
        )
        .boundary_wait_at_most(boundary_bound(setup))
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    checks
}

/// What every world of 7 (an API that rejects every token) asks: no caller error, at most 8
/// login attempts in any minute, every caller gets the API's 401, and the budget holds.
pub fn check_a_handful_of_logins_and_every_401_to_its_caller(report: &Report) {
    let mut checks = Checks::new(report);
    let per_minute = report.max_attempts(60 * SECOND);
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    checks
        .no_caller_errors()
        .target(
            per_minute <= 8,
            format!("at most 8 login attempts in any minute: {per_minute}"),
        )
        .target(
            to_callers == report.calls.len(),
            format!(
                "every caller gets the API's 401: {to_callers} of {} calls",
                report.calls.len()
            ),
        )
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    checks.finish();
}

/// Busy callers for a short-lived token: 20 callers thinking up to 200 ms for ten lifetimes.
pub fn short_lifetime_traffic(lifetime: Duration) -> Traffic {
    busy_traffic(10 * lifetime, 200 * MS)
}

/// From 1 s up, every caller is served. A token shorter than twice the 60 s lead is renewed at
/// half its life less up to a quarter of that as jitter, counted from when its login started
/// (the documented schedule: at least 3/8 of its life), so up to 8/3 logins per lifetime are
/// allowed.
pub fn check_short_lifetime(report: &Report, setup: &Setup) {
    let spans = (report.run_length().as_secs_f64() / setup.lifetime.as_secs_f64()).floor() as usize;
    let mut checks = Checks::new(report);
    checks
        .no_caller_errors()
        .no_unexcused_rejections()
        .logins_at_most(
            (8 * spans).div_ceil(3) + 1,
            "renewed at 3/8 to 1/2 of its life: 8/3 per lifetime + the cold one",
        )
        .boundary_wait_at_most(boundary_bound(setup))
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    checks.finish();
}

/// The token's life in the outage tests.
pub const OUTAGE_LIFETIME: Duration = Duration::from_secs(4);
/// When the outage starts: after two and a half lifetimes of normal service.
pub const OUTAGE_FROM: Duration = Duration::from_secs(10);

/// A login outage of `kind` lasting `length`, with 4 s tokens; the run goes on for three
/// lifetimes after the recovery.
pub fn outage_setup(kind: OutageKind, length: Duration) -> (Setup, Traffic) {
    let mut setup = Setup::new(Issuing::Fresh, OUTAGE_LIFETIME);
    let until = OUTAGE_FROM + length;
    setup.outages = vec![Outage {
        kind,
        from: OUTAGE_FROM,
        until,
    }];
    (setup, busy_traffic(until + 3 * OUTAGE_LIFETIME, 500 * MS))
}

/// Targets of an outage of `length` ([`outage_setup`]): at most one login attempt per second
/// during the outage (+2 for the first quick retries of a still-valid token), callers all
/// served again within 1.5 s of the recovery, and no unexcused rejected send.
pub fn check_outage(report: &Report, world: &World, length: Duration) {
    let (down, up) = (
        world.started() + OUTAGE_FROM,
        world.started() + OUTAGE_FROM + length,
    );
    let normal = world.setup().api_round_trip() + MS;
    let during = report.attempts_between(down, up);
    let allowed = length.as_secs_f64().ceil() as usize + 2;
    let densest = report.max_attempts_in(SECOND, down, up);
    let served = report.served_again_after(up, normal);
    println!(
        "[model] {}: outage {length:?}: attempts during={during} (allowed {allowed}) \
         max/1s during={densest} served_again_after={served:?} attempts at {} (down {:.1}-{:.1} s)",
        report.name,
        report.attempt_times(down - 2 * SECOND, up + 5 * SECOND),
        (down - report.start).as_secs_f64(),
        (up - report.start).as_secs_f64(),
    );
    Checks::new(report)
        .outage_targets(during, allowed, densest, served, up)
        .no_unexcused_rejections()
        .finish();
}

// ---------------------------------------------------------------------------------------------
// The worlds, for any front-end

/// A front-end of the crate, put in a world: runs `traffic` through it over the world `setup`
/// starts, and reports what its callers saw.
pub trait Front {
    fn run(
        &self,
        name: &str,
        setup: Setup,
        traffic: Traffic,
    ) -> impl Future<Output = (Report, Arc<World>)>;
}

/// A front whose worlds run on another seed: the world's events and the cache's jitter (so the
/// instant of each renewal, and what is left of a token then) follow it.
pub struct Reseeded<'a, F>(pub &'a F, pub u64);

impl<F: Front> Front for Reseeded<'_, F> {
    async fn run(&self, name: &str, mut setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
        setup.seed = self.1;
        self.0
            .run(&format!("{name} seed {}", self.1), setup, traffic)
            .await
    }
}

/// A front in worlds whose server writes `expiresIn` in whole seconds, rounded down
/// ([`Setup::whole_seconds`]), as many servers (and every OAuth2 server) do.
pub struct WholeSeconds<'a, F>(pub &'a F);

impl<F: Front> Front for WholeSeconds<'_, F> {
    async fn run(&self, name: &str, mut setup: Setup, traffic: Traffic) -> (Report, Arc<World>) {
        setup.whole_seconds = true;
        self.0
            .run(&format!("{name} whole-seconds"), setup, traffic)
            .await
    }
}

/// World 1: A fresh full-length token on every login (the server the cache was written for).
pub async fn fresh(front: &impl Front) {
    let setup = Setup::new(Issuing::Fresh, LONG);
    let (report, world) = front.run("1 fresh", setup, long_traffic()).await;
    check_served(&report, world.setup(), 0).finish();
}

/// World 2: one live token per user: the renewal returns the same token with its remaining life.
/// One extra login: the early renewal that finds out the server works this way.
pub async fn one_live(front: &impl Front) {
    let setup = Setup::new(Issuing::OneLive, LONG);
    let (report, world) = front.run("2 one-live", setup, long_traffic()).await;
    check_served(&report, world.setup(), 1).finish();
}

/// World 3: A new token on every login, bound to the session's expiry. One extra login, as in 2.
pub async fn bound_to_session(front: &impl Front) {
    let setup = Setup::new(Issuing::BoundToSession, LONG);
    let (report, world) = front.run("3 bound-to-session", setup, long_traffic()).await;
    check_served(&report, world.setup(), 1).finish();
}

/// World 4: sliding: the same token, its expiry pushed forward by each login (a normal renewal).
pub async fn sliding(front: &impl Front) {
    let setup = Setup::new(Issuing::Sliding, LONG);
    let (report, world) = front.run("4 sliding", setup, long_traffic()).await;
    check_served(&report, world.setup(), 0).finish();
}

/// World 5: the server revokes the live token at 3 random instants. The requests in flight and those
/// sent before the first 401 came back are excused; one login per revocation.
pub async fn revocations(front: &impl Front) {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.revocations = 3;
    let (report, world) = front.run("5 revocation", setup, long_traffic()).await;
    let revoked = world.counts().revocations as usize;
    let mut checks = check_served(&report, world.setup(), revoked);
    checks.target(revoked == 3, format!("3 revocations took place: {revoked}"));
    checks.finish();
}

/// World 6: spurious 401s against a one-live-token server: at 3 random instants, the API rejects a
/// still-valid token once, and the re-login returns that same token. The 401 reaches its caller;
/// nobody else fails; one login per event, plus one as in 2.
pub async fn spurious_401s(front: &impl Front) {
    let mut setup = Setup::new(Issuing::OneLive, LONG);
    setup.spurious = 3;
    let (report, world) = front.run("6 spurious-401", setup, long_traffic()).await;
    let spurious = world.counts().spurious_401s as usize;
    let mut checks = check_served(&report, world.setup(), 1 + spurious);
    checks.target(
        spurious == 3,
        format!("3 spurious 401s took place: {spurious}"),
    );
    checks.target(
        report.caller_statuses(StatusCode::UNAUTHORIZED) <= spurious,
        format!(
            "only the spurious 401s reach callers: {} for {spurious}",
            report.caller_statuses(StatusCode::UNAUTHORIZED)
        ),
    );
    checks.finish();
}

/// World 7: the API rejects every token while the login keeps succeeding. Busy callers (20, thinking
/// up to 2 s) for 5 minutes: at most a handful of logins in any minute (the cold login and
/// invalidations honoured after 1, 2, 4, 8, 16, 32 s: 7, so 8 allowed), and every 401 reaches
/// its caller unchanged, never an error.
pub async fn rejects_all(front: &impl Front) {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.rejects_all = true;
    let traffic = busy_traffic(300 * SECOND, 2 * SECOND);
    let (report, _) = front.run("7 rejects-all", setup, traffic).await;
    check_a_handful_of_logins_and_every_401_to_its_caller(&report);
    let from_api = report.transport_statuses(StatusCode::UNAUTHORIZED);
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    Checks::new(&report)
        .target(
            from_api == to_callers,
            format!(
                "every 401 reaches its caller unchanged: {from_api} from the API, {to_callers} to callers"
            ),
        )
        .finish();
}

/// 7 with 5 s logins (a slow login endpoint, or a busy shared budget): the time a login takes is
/// not a quiet spell, so the invalidations go on spacing out and the logins stay a handful a
/// minute. Before the fix, each 5 s login reset the spacing and the cache logged in every 5 s.
pub async fn rejects_all_slow_logins(front: &impl Front) {
    let mut setup = Setup::new(Issuing::Fresh, LONG);
    setup.rejects_all = true;
    setup.login_latency = 5 * SECOND;
    let traffic = busy_traffic(300 * SECOND, 2 * SECOND);
    let (report, _) = front.run("7 rejects-all slow logins", setup, traffic).await;
    check_a_handful_of_logins_and_every_401_to_its_caller(&report);
}

/// World 8: from 1 s up, every caller is served ([`check_short_lifetime`]).
pub async fn short_lifetime(front: &impl Front, name: &str, lifetime: Duration) {
    let setup = Setup::new(Issuing::Fresh, lifetime);
    let (report, world) = front
        .run(name, setup, short_lifetime_traffic(lifetime))
        .await;
    check_short_lifetime(&report, world.setup());
}

/// World 9: A login outage of `kind` lasting `length` ([`outage_setup`], [`check_outage`]).
pub async fn outage(front: &impl Front, name: &str, kind: OutageKind, length: Duration) {
    let (setup, traffic) = outage_setup(kind, length);
    let (report, world) = front.run(name, setup, traffic).await;
    check_outage(&report, &world, length);
}
