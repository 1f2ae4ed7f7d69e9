//! Model-based tests over real HTTP (issue 9 §1): the harness of `tests/model.rs`, with the
//! crate's `ReferenceServer` as the server, the real login client (`AuthTokenSource`, reqwest)
//! and a real transport (hyper-util's client under `BearerAuthLayer`).
//!
//! The in-process model of `tests/model.rs` decides what a server of each kind would do; these
//! tests check the same targets against the server users' tests run against, for the behaviours
//! where the real server matters: the token policies (2, 3, 4), revocations (5), spurious `401`s
//! (6), an API that refuses every token (7), short lifetimes written as `"expiresIn":"1"` and
//! `"0.01"` (8), login outages answered with `503`, closed connections or hung logins, shorter
//! and longer than the token's life (9), and a server clock an hour ahead writing `+05:30`
//! timestamps (10). Behaviour 1 (a fresh token per login) runs as the control. Two things only a
//! real server brings get tests of their own: a login latency that varies (2 and 3), and
//! `issued`/`expires` written in whole seconds at every phase of the server's clock (3).
//!
//! Everything runs on Tokio's paused clock (the server's tokens, delays, outages and revocations
//! follow it), over loopback to `server.base_url()` (an IP address, so no name resolution lets
//! the clock jump). Each request is a real round trip, so the runs are sized to stay under about
//! 2500 requests each, across at least three token lifetimes (about 22 000 in all).
//!
//! How the figures are taken:
//!
//! - **Rejected sends**: the oracle is the server itself, [`ReferenceServer::accepts`], asked
//!   by the probe when the request leaves the client stack (and again when a `401` comes back).
//!   A token the server reports as revoked ([`Rejection::Revoked`]) is excused until a `401` for
//!   it came back.
//! - **Logins** come from the server's counters ([`ReferenceServer::stats`],
//!   [`ReferenceServer::login_attempt_instants`]); the client's own log (`Recorded`) gives the
//!   expiries it read, for the wait at an expiry boundary, and must agree with the server's
//!   count.
//! - **Login latency**: the server delays every login by 200 ms (5 ms for the 10 ms token; 100 to
//!   300 ms, seeded, where it varies), so the bound at an expiry boundary is the slowest login +
//!   1 s, plus 20 ms for the timer wheel and the loopback round trips (which take no time on the
//!   paused clock).
//! - **The server's wall clock** (which writes `issued`, `expires` and `Date`) starts at our
//!   system time; each test sets it ahead by less than a second so that it starts at a chosen
//!   phase (half a second past a whole second unless a test says otherwise), and the whole-second
//!   rounding is the same on every run.
//!
//! Each test prints the harness's summary line (`[model] ...`) and the server's figures
//! (`[model-http] ...`) with `--nocapture`, then the targets it missed, if any.

#[allow(dead_code)]
#[path = "model/harness.rs"]
mod harness;
mod support;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tokio::time::{Instant, sleep, sleep_until};
use tower::{BoxError, Layer, Service, ServiceBuilder};
use tower_authtoken::reqwest_middleware::{BearerAuthMiddleware, KeyedBearerAuthMiddleware};
use tower_authtoken::testing::{
    Outage, ReferenceServer, ReferenceServerBuilder, Rejection, TokenPolicy,
};
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, ErrorKind, KeyedTokenCache, TokenCache};

use harness::{
    AttemptEnd, BoxFuture, Checks, LoginLog, Oracle, Probe, Recorded, Report, Traffic, drive_with,
};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// The seed of the callers, the server and the cache's jitter.
const SEED: u64 = 9;

/// The lifetime of the long-lived runs, as in `tests/model.rs`: the cache's default 60 s lead
/// renews about once per lifetime.
const LONG: Duration = Duration::from_secs(600);

/// How long the server takes to answer a login.
const LOGIN_DELAY: Duration = Duration::from_millis(200);

/// The default login budget of the cache: a burst of 5, then one login per 250 ms.
const BUDGET_BURST: usize = 5;
const BUDGET_INTERVAL: Duration = Duration::from_millis(250);

/// The run of a long-lived token: 6 callers for 3¼ lifetimes, thinking up to 18 s (about 0.7
/// requests per second, so that every expiry boundary sees one or two; about 1300 requests).
fn long_traffic() -> Traffic {
    Traffic {
        callers: 6,
        duration: LONG * 13 / 4,
        think_min: Duration::ZERO,
        think_max: 18 * SECOND,
        seed: SEED,
    }
}

/// `callers` callers thinking up to `think_max`, for `duration`.
fn busy_traffic(callers: usize, duration: Duration, think_max: Duration) -> Traffic {
    Traffic {
        callers,
        duration,
        think_min: Duration::ZERO,
        think_max,
        seed: SEED,
    }
}

/// The longest a caller may wait at an expiry boundary: one login, 1 s, and 20 ms for the timer
/// wheel (which rounds every sleep up to the next millisecond) and the loopback round trips.
fn boundary_bound(login_delay: Duration) -> Duration {
    login_delay + SECOND + 20 * MS
}

/// A server with the defaults of these tests: seeded, `lifetime` tokens, 200 ms logins, and a
/// wall clock that starts at [`WALL_PHASE`] past a whole second.
fn server(lifetime: Duration) -> ReferenceServerBuilder {
    pinned_clock(
        ReferenceServer::builder()
            .seed(SEED)
            .token_lifetime(lifetime)
            .login_delay(LOGIN_DELAY),
        Duration::ZERO,
        WALL_PHASE,
    )
}

/// Where within a second the server's wall clock starts. The server writes `issued` and
/// `expires` in whole seconds, rounded from its wall clock, which starts at our system time: so
/// that what the client reads from them does not depend on when the test started, the clock is
/// set ahead by less than a second to start at a chosen phase.
const WALL_PHASE: Duration = Duration::from_millis(500);

/// Sets the server's wall clock `ahead` of ours, plus less than a second, so that it starts at
/// `phase` past a whole second (to within the microseconds until the server starts).
fn pinned_clock(
    builder: ReferenceServerBuilder,
    ahead: Duration,
    phase: Duration,
) -> ReferenceServerBuilder {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the system clock is after 1970");
    let nanos = |d: Duration| d.as_nanos() % SECOND.as_nanos();
    let shift = (nanos(phase) + SECOND.as_nanos() - nanos(since_epoch)) % SECOND.as_nanos();
    let shift = Duration::from_nanos(u64::try_from(shift).expect("under a second"));
    builder.clock_ahead(ahead + shift)
}

// ---------------------------------------------------------------------------------------------
// The real stack

/// The server as the harness's oracle: it accepts what [`ReferenceServer::accepts`] says, and a
/// token it reports as revoked was withdrawn before its announced expiry.
struct ServerOracle(Arc<ReferenceServer>);

impl Oracle for ServerOracle {
    fn accepts(&self, token: &str) -> bool {
        self.0.accepts(token)
    }

    fn withdrawn_unannounced(&self, token: &str) -> bool {
        self.0.verdict(token) == Err(Rejection::Revoked)
    }
}

/// The client stack a run sends through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `BearerAuthLayer` over hyper-util's client; with `retry_on_unauthorized` if `replay`.
    Hyper { replay: bool },
    /// `BearerAuthMiddleware` in a `reqwest-middleware` client over `reqwest::Client`; with
    /// `retry_on_unauthorized` if `replay`.
    Middleware { replay: bool },
    /// `KeyedBearerAuthMiddleware` instead, every request naming the server's one account.
    KeyedMiddleware { replay: bool },
}

/// The account of a run through the keyed middleware: the server's one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TheAccount;

/// Runs `traffic` through `BearerAuthLayer` (the cache's defaults over the real login client)
/// and hyper-util's client, to the server's protected endpoint; with `retry_on_unauthorized` if
/// `replay`.
async fn run(
    name: &str,
    server: &Arc<ReferenceServer>,
    lifetime: Duration,
    traffic: Traffic,
    replay: bool,
) -> Report {
    run_through(Client::Hyper { replay }, name, server, lifetime, traffic).await
}

/// Runs `traffic` through `client` (the cache's defaults over the real login client), to the
/// server's protected endpoint, with the probe just above the transport.
async fn run_through(
    client: Client,
    name: &str,
    server: &Arc<ReferenceServer>,
    lifetime: Duration,
    traffic: Traffic,
) -> Report {
    fastrand::seed(SEED);
    let log = LoginLog::new();
    let source = {
        let (base_url, credentials, log) = (server.base_url(), server.credentials(), log.clone());
        move || {
            AuthTokenSource::new(&base_url, credentials.clone())
                .map(|source| Recorded::new(source, &log))
        }
    };
    let probe = Probe::new(Arc::new(ServerOracle(Arc::clone(server))));
    let url = server.protected_url();
    let request = move || {
        Request::get(&url)
            .body(Empty::new())
            .expect("the protected URL is valid")
    };
    let start = Instant::now();
    let calls = match client {
        Client::Hyper { replay } => {
            let api = ServiceBuilder::new()
                .layer(probe.clone())
                .service(support::reading_client());
            let cache = TokenCache::new(source().expect("the server's URL and credentials"));
            let layer = BearerAuthLayer::new(cache);
            if replay {
                drive_with(layer.retry_on_unauthorized().layer(api), traffic, request).await
            } else {
                drive_with(layer.layer(api), traffic, request).await
            }
        }
        Client::Middleware { replay } => {
            let builder = reqwest_middleware::ClientBuilder::new(reqwest::Client::new());
            let cache = TokenCache::new(source().expect("the server's URL and credentials"));
            let auth = BearerAuthMiddleware::new(cache);
            let builder = if replay {
                builder.with(auth.retry_on_unauthorized())
            } else {
                builder.with(auth)
            };
            let client = Reqwest(builder.with(ProbeMiddleware(probe.clone())).build(), false);
            drive_with(client, traffic, request).await
        }
        Client::KeyedMiddleware { replay } => {
            // A keyed account has no timer while its token is fresh: only the requests'
            // deadline checks withdraw it, and on the paused clock they must read Tokio's.
            tower_authtoken::testing::follow_tokio_clock();
            let accounts = KeyedTokenCache::builder(move |_: &TheAccount| source())
                .build()
                .expect("the keyed cache's settings are valid");
            let builder = reqwest_middleware::ClientBuilder::new(reqwest::Client::new());
            let auth = KeyedBearerAuthMiddleware::new(accounts);
            let builder = if replay {
                builder.with(auth.retry_on_unauthorized())
            } else {
                builder.with(auth)
            };
            let client = Reqwest(builder.with(ProbeMiddleware(probe.clone())).build(), true);
            drive_with(client, traffic, request).await
        }
    };
    Report::new(name, start, lifetime, calls, &probe, &log)
}

/// A `reqwest-middleware` client as a `tower::Service`, for the harness: it sends each request's
/// method and URL (naming [`TheAccount`] if asked) and answers with the response's status, its
/// body read.
#[derive(Clone)]
struct Reqwest(reqwest_middleware::ClientWithMiddleware, bool);

impl Service<Request<Empty<Bytes>>> for Reqwest {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Empty<Bytes>>) -> Self::Future {
        let mut request = self.0.request(req.method().clone(), req.uri().to_string());
        if self.1 {
            request = request.with_extension(TheAccount);
        }
        Box::pin(async move {
            let response = request.send().await?;
            let status = response.status();
            response.bytes().await?;
            Ok(http::Response::builder().status(status).body(())?)
        })
    }
}

/// The harness's probe as the last middleware of the chain, just above the transport.
struct ProbeMiddleware(Probe);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for ProbeMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let index = self.0.on_send(harness::bearer_token_in(req.headers()));
        let result = next.run(req, extensions).await;
        if let Ok(response) = &result {
            self.0.on_response(index, response.status());
        }
        result
    }
}

/// The server's side of a run, printed after the harness's summary, and the targets on its
/// counters.
struct ServerFigures<'a> {
    server: &'a ReferenceServer,
    report: &'a Report,
}

impl<'a> ServerFigures<'a> {
    fn new(server: &'a ReferenceServer, report: &'a Report) -> Self {
        let stats = server.stats();
        let r = stats.rejected;
        println!(
            "[model-http] {}: server logins={} attempts={} outage_answers={} accepted={} \
             401s={} (unknown={} expired={} revoked={} reject_all={} spurious={}) \
             revocations={} max_attempts/1s={} max_attempts/60s={}",
            report.name,
            stats.logins,
            stats.login_attempts,
            stats.outage_answers,
            stats.accepted,
            stats.rejections,
            r.unknown,
            r.expired,
            r.revoked,
            r.reject_all,
            r.spurious,
            server.revocations().len(),
            server.max_login_attempts_within(SECOND),
            server.max_login_attempts_within(60 * SECOND),
        );
        ServerFigures { server, report }
    }

    fn logins(&self) -> usize {
        self.server.stats().logins as usize
    }

    /// The server counted the logins and attempts the client made, and answered every request
    /// the probe saw.
    fn agrees(&self, checks: &mut Checks<'_>) {
        let stats = self.server.stats();
        let (logins, attempts) = (stats.logins as usize, stats.login_attempts as usize);
        let answered = (stats.accepted + stats.rejections) as usize;
        // A token the server granted and the client refused (one in its last second).
        let refused = self
            .report
            .attempts
            .iter()
            .filter(|a| matches!(a.end, AttemptEnd::Failed(ErrorKind::InvalidResponse)))
            .count();
        checks
            .target(
                logins == self.report.logins() + refused,
                format!(
                    "the server counted the client's logins: server {logins}, client {} and \
                     {refused} refused",
                    self.report.logins()
                ),
            )
            .target(
                attempts == self.report.attempts.len(),
                format!(
                    "the server counted the client's login attempts: server {attempts}, client {}",
                    self.report.attempts.len()
                ),
            )
            .target(
                answered == self.report.sent.len(),
                format!(
                    "the server answered every request sent: {answered} of {}",
                    self.report.sent.len()
                ),
            );
    }

    /// At most one login per lifetime the run spans, plus the cold login, plus `extra`, by the
    /// server's count.
    fn one_login_per_lifetime(&self, checks: &mut Checks<'_>, extra: usize) {
        let report = self.report;
        let spans = (report.run_length().as_secs_f64() / report.lifetime.as_secs_f64()).floor();
        let allowed = spans as usize + 1 + extra;
        let logins = self.logins();
        checks.target(
            logins <= allowed,
            format!(
                "server logins <= {allowed} (one per lifetime: {spans} lifetimes + the cold login + {extra}): {logins}"
            ),
        );
    }

    /// The server never saw login attempts faster than the cache's budget: windows of 1 s, 10 s
    /// and the whole run.
    fn within_budget(&self, checks: &mut Checks<'_>) {
        for width in [SECOND, 10 * SECOND, self.report.run_length() + SECOND] {
            let allowed = BUDGET_BURST
                + (width.as_secs_f64() / BUDGET_INTERVAL.as_secs_f64()).ceil() as usize;
            let most = self.server.max_login_attempts_within(width);
            checks.target(
                most <= allowed,
                format!(
                    "login budget by the server's count: at most {allowed} attempts in any {width:?}, saw {most}"
                ),
            );
        }
    }
}

/// The targets of behaviours 1–6 and 10: no errors, no unexcused rejection, one login per
/// lifetime plus `extra` (by the client's and the server's counts, which must agree), short
/// waits at expiry, and the login budget.
fn check_served<'a>(report: &'a Report, server: &ReferenceServer, extra: usize) -> Checks<'a> {
    check_served_writing(report, server, extra, Written::Fractions)
}

/// How the server writes `expiresIn`.
#[derive(Clone, Copy, PartialEq)]
enum Written {
    /// With the fraction of a second a token has left.
    Fractions,
    /// In whole seconds, rounded down ([`ReferenceServerBuilder::whole_seconds`]).
    WholeSeconds,
}

/// [`check_served`], for a server writing `expiresIn` as `written`. In whole seconds the server
/// hides a one-live token's expiry within a second, and the cache learns that it cuts lifetimes
/// from the one login that finds a token in its last second (`"0"`): that login is one the
/// server counts and the client refuses, and callers may wait a second more, and at that one
/// boundary that login and 50 ms more (`targets::boundary_bound` in the in-process suites).
fn check_served_writing<'a>(
    report: &'a Report,
    server: &ReferenceServer,
    extra: usize,
    written: Written,
) -> Checks<'a> {
    let (cut, hidden) = match written {
        Written::Fractions => (0, Duration::ZERO),
        Written::WholeSeconds => (1, SECOND + LOGIN_DELAY + 50 * MS),
    };
    let mut checks = Checks::new(report);
    let figures = ServerFigures::new(server, report);
    checks
        .no_caller_errors()
        .no_unexcused_rejections()
        .one_login_per_lifetime(extra)
        .failed_attempts_at_most(cut, "none, but the one that learns the cut")
        .boundary_wait_at_most(boundary_bound(LOGIN_DELAY) + hidden)
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    figures.agrees(&mut checks);
    figures.one_login_per_lifetime(&mut checks, extra + cut);
    figures.within_budget(&mut checks);
    checks
}

/// `count` seeded instants after `start`, within `horizon` but not in its first tenth (so that a
/// token is in service), in order.
fn event_instants(start: Instant, horizon: Duration, count: usize) -> Vec<Instant> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let horizon_ms = horizon.as_millis() as u64;
    let mut instants: Vec<Instant> = (0..count)
        .map(|_| start + Duration::from_millis(rng.u64(horizon_ms / 10..horizon_ms)))
        .collect();
    instants.sort();
    instants
}

// ---------------------------------------------------------------------------------------------
// 1–4: how the server issues tokens

async fn policy_serves_every_caller(name: &str, policy: TokenPolicy, extra: usize) {
    policy_serves_every_caller_through(Client::Hyper { replay: false }, name, policy, extra).await;
}

async fn policy_serves_every_caller_through(
    client: Client,
    name: &str,
    policy: TokenPolicy,
    extra: usize,
) {
    let server = Arc::new(server(LONG).token_policy(policy).start().await);
    let report = run_through(client, name, &server, LONG, long_traffic()).await;
    check_served(&report, &server, extra).finish();
}

/// 1. A fresh full-length token on every login: the control.
#[tokio::test(start_paused = true)]
async fn http_fresh_token_per_login_serves_every_caller_with_one_login_per_lifetime() {
    policy_serves_every_caller("http 1 fresh", TokenPolicy::Fresh, 0).await;
}

/// 2. One live token per user: the renewal returns the same token with its remaining life. One
/// extra login: the early renewal that finds out the server works this way.
#[tokio::test(start_paused = true)]
async fn http_one_live_token_per_user_is_used_to_its_expiry_without_errors() {
    policy_serves_every_caller("http 2 one-live", TokenPolicy::OneLivePerUser, 1).await;
}

/// 3. A new token on every login, bound to the session's expiry. One extra login, as in 2.
#[tokio::test(start_paused = true)]
async fn http_tokens_bound_to_the_session_expiry_cost_one_login_per_session() {
    policy_serves_every_caller("http 3 session-bound", TokenPolicy::SessionBound, 1).await;
}

/// 4. Sliding: the same token, its expiry pushed forward by each login (a normal renewal).
#[tokio::test(start_paused = true)]
async fn http_sliding_session_renews_the_same_token_without_errors() {
    policy_serves_every_caller("http 4 sliding", TokenPolicy::Sliding, 0).await;
}

/// 2, 3 and 6 against a server writing `expiresIn` in whole seconds, rounded down (`"63"`), as
/// many do, through the real `AuthTokenSource`: no caller fails, on this suite's seed and on
/// seed 1.
async fn whole_seconds_serve_every_caller(name: &str, policy: TokenPolicy, seed: u64) {
    let server = Arc::new(
        server(LONG)
            .seed(seed)
            .token_policy(policy)
            .whole_seconds(true)
            .start()
            .await,
    );
    let traffic = Traffic {
        seed,
        ..long_traffic()
    };
    let name = format!("{name} whole-seconds seed {seed}");
    let report = run_through(
        Client::Hyper { replay: false },
        &name,
        &server,
        LONG,
        traffic,
    )
    .await;
    check_served_writing(&report, &server, 1, Written::WholeSeconds).finish();
}

#[tokio::test(start_paused = true)]
async fn http_one_live_token_written_in_whole_seconds_serves_every_caller() {
    for seed in [SEED, 1] {
        whole_seconds_serve_every_caller("http 2 one-live", TokenPolicy::OneLivePerUser, seed)
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn http_session_bound_tokens_written_in_whole_seconds_serve_every_caller() {
    for seed in [SEED, 1] {
        whole_seconds_serve_every_caller("http 3 session-bound", TokenPolicy::SessionBound, seed)
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2–3 with what only a real server brings

/// The targets of [`check_served`] with logins of up to `slowest`, and no token response the
/// client refused.
fn check_served_refusing_nothing<'a>(
    report: &'a Report,
    server: &ReferenceServer,
    extra: usize,
    slowest: Duration,
) -> Checks<'a> {
    let mut checks = Checks::new(report);
    let figures = ServerFigures::new(server, report);
    let refused = report
        .attempts
        .iter()
        .filter(|a| matches!(a.end, AttemptEnd::Failed(_)))
        .count();
    checks
        .no_caller_errors()
        .no_unexcused_rejections()
        .one_login_per_lifetime(extra)
        .boundary_wait_at_most(boundary_bound(slowest))
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL)
        .target(
            refused == 0,
            format!("no login failed (the server never failed one): {refused} failed"),
        );
    figures.agrees(&mut checks);
    figures.one_login_per_lifetime(&mut checks, extra);
    figures.within_budget(&mut checks);
    checks
}

/// The fewer callers of the edge cases below: 4, thinking up to 18 s, for 3¼ lifetimes (about
/// 850 requests).
fn light_traffic() -> Traffic {
    Traffic {
        callers: 4,
        ..long_traffic()
    }
}

/// 2 and 3 with a login latency that varies from login to login, as real ones do: 100 to 300 ms,
/// seeded. A login planned at the token's expiry (as the cache reads it, counted from when the
/// last login started) may then reach the server before the server's own expiry, and get the
/// dying token (one-live) or a new one bound to the dying session, with a few milliseconds left.
/// That answer is the server's, not an error: callers at the boundary must still be served
/// within one login + 1 s, with one login per lifetime (+1 as in 2).
async fn varying_latency_serves_every_caller(name: &str, policy: TokenPolicy) {
    let server = Arc::new(
        server(LONG)
            .token_policy(policy)
            .login_delay(100 * MS)
            .login_delay_jitter(200 * MS)
            .start()
            .await,
    );
    let report = run(name, &server, LONG, light_traffic(), false).await;
    check_served_refusing_nothing(&report, &server, 1, 300 * MS).finish();
}

#[tokio::test(start_paused = true)]
async fn http_one_live_token_per_user_with_a_varying_login_latency_serves_every_caller() {
    varying_latency_serves_every_caller(
        "http 2 one-live latency 100-300ms",
        TokenPolicy::OneLivePerUser,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn http_session_bound_tokens_with_a_varying_login_latency_serve_every_caller() {
    varying_latency_serves_every_caller(
        "http 3 session-bound latency 100-300ms",
        TokenPolicy::SessionBound,
    )
    .await;
}

/// 3 with whole-second timestamps, at ten phases of the server's clock (0, 0.1, ..., 0.9 s past
/// a whole second when it starts), with 10 s tokens and 4 callers thinking up to 1 s for 3¼
/// lifetimes each (about 2600 requests in all).
///
/// The session's `expires` is its real end rounded down to the second (it promises no more than
/// the server keeps). When the renewal lands earlier within its second than the session's first
/// login did, its `expires - issued` reads shorter than `expiresIn`; the client keeps the smaller
/// reading, logs in at that expiry, and reaches the server within the session's last second,
/// where the new token bound to the session has `issued` and `expires` in the same whole second.
/// That token is the server's answer all the same: every caller must be served, with one login
/// per session (+1 as in 2), at every phase.
#[tokio::test(start_paused = true)]
async fn http_session_bound_tokens_written_in_whole_seconds_serve_every_caller_at_any_clock_phase()
{
    let lifetime = 10 * SECOND;
    let mut missed = Vec::new();
    for tenths in 0..10 {
        let phase = tenths * 100 * MS;
        let server = Arc::new(
            pinned_clock(
                server(lifetime).token_policy(TokenPolicy::SessionBound),
                Duration::ZERO,
                phase,
            )
            .start()
            .await,
        );
        let name = format!("http 3 session-bound whole seconds, clock phase {phase:?}");
        let traffic = busy_traffic(4, lifetime * 13 / 4, SECOND);
        let report = run(&name, &server, lifetime, traffic, false).await;
        let checks = check_served_refusing_nothing(&report, &server, 1, LOGIN_DELAY);
        missed.extend(checks.missed().iter().map(|m| format!("{name}: {m}")));
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5–6: the API says 401

/// 5. The server revokes the live token at random instants (a seeded Poisson process, one per
/// lifetime on average). The requests in flight and those sent before the first 401 came back
/// are excused; one login per revocation.
#[tokio::test(start_paused = true)]
async fn http_revocations_at_random_instants_cost_one_login_each_and_no_errors() {
    revocations(Client::Hyper { replay: false }, "http 5 revocation").await;
}

async fn revocations(client: Client, name: &str) {
    let server = Arc::new(server(LONG).random_revocations(LONG).start().await);
    let report = run_through(client, name, &server, LONG, long_traffic()).await;
    let revoked = server.revocations().len();
    let mut checks = check_served(&report, &server, revoked);
    checks.target(
        revoked >= 2,
        format!("at least 2 revocations took place: {revoked}"),
    );
    checks.finish();
}

/// Runs behaviour 6: a one-live-token server whose API rejects a still-valid token once, at 3
/// seeded instants within three lifetimes.
async fn spurious_401s(name: &str, client: Client) -> (Report, Arc<ReferenceServer>, usize) {
    let server = Arc::new(
        server(LONG)
            .token_policy(TokenPolicy::OneLivePerUser)
            .start()
            .await,
    );
    let instants = event_instants(Instant::now(), 3 * LONG, 3);
    let injector = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            for at in instants {
                sleep_until(at).await;
                server.reject_next_requests(1);
            }
        })
    };
    let report = run_through(client, name, &server, LONG, long_traffic()).await;
    injector.abort();
    let spurious = server.stats().rejected.spurious as usize;
    (report, server, spurious)
}

/// 6. Spurious 401s against a one-live-token server: the re-login returns that same token. The
/// 401 reaches its caller; nobody else fails; one login per event, plus one as in 2.
#[tokio::test(start_paused = true)]
async fn http_spurious_401s_cost_one_login_each_and_no_errors() {
    let client = Client::Hyper { replay: false };
    let (report, server, spurious) = spurious_401s("http 6 spurious-401", client).await;
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    let mut checks = check_served(&report, &server, 1 + spurious);
    checks
        .target(
            spurious == 3,
            format!("3 spurious 401s took place: {spurious}"),
        )
        .target(
            to_callers <= spurious,
            format!("only the spurious 401s reach callers: {to_callers} for {spurious}"),
        );
    checks.finish();
}

/// 6, with `retry_on_unauthorized`: the rejected request is replayed with the token the
/// re-login returned (the same one), so no 401 reaches any caller.
#[tokio::test(start_paused = true)]
async fn http_spurious_401s_are_replayed_and_never_reach_callers_with_retry_on_unauthorized() {
    spurious_401s_replayed(Client::Hyper { replay: true }, "http 6 spurious-401 replay").await;
}

async fn spurious_401s_replayed(client: Client, name: &str) {
    let (report, server, spurious) = spurious_401s(name, client).await;
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    let mut checks = check_served(&report, &server, 1 + spurious);
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

/// 7. The API rejects every token while the login keeps succeeding. 10 callers thinking up to
/// 3 s for 4 minutes (four 60 s lifetimes): at most a handful of logins in any minute (8, as in
/// `tests/model.rs`), and every 401 reaches its caller unchanged, never an error.
#[tokio::test(start_paused = true)]
async fn http_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    rejects_all(Client::Hyper { replay: false }, "http 7 rejects-all").await;
}

async fn rejects_all(client: Client, name: &str) {
    let lifetime = 60 * SECOND;
    let server = Arc::new(server(lifetime).reject_all_tokens(true).start().await);
    let traffic = busy_traffic(10, 240 * SECOND, 3 * SECOND);
    let report = run_through(client, name, &server, lifetime, traffic).await;
    let mut checks = Checks::new(&report);
    let figures = ServerFigures::new(&server, &report);
    let per_minute = server.max_login_attempts_within(60 * SECOND);
    let from_api = server.stats().rejected.reject_all as usize;
    let to_callers = report.caller_statuses(StatusCode::UNAUTHORIZED);
    checks
        .no_caller_errors()
        .target(
            per_minute <= 8,
            format!("at most 8 login attempts in any minute (server's count): {per_minute}"),
        )
        .target(
            from_api == to_callers && from_api == report.calls.len(),
            format!(
                "every 401 reaches its caller unchanged: {from_api} from the API, {to_callers} to callers, {} calls",
                report.calls.len()
            ),
        )
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    figures.agrees(&mut checks);
    figures.within_budget(&mut checks);
    checks.finish();
}

// ---------------------------------------------------------------------------------------------
// 8: short lifetimes

/// 8. A 1 s token (`"expiresIn":"1"`) and 200 ms logins, with 20 busy callers for 10
/// lifetimes: every caller served, within the budget. A token shorter than twice the 60 s lead
/// is renewed at half its life less up to a quarter of that as jitter, counted from when its
/// login started (at least 3/8 of its life), so up to 8/3 logins per lifetime are allowed, as in
/// `tests/model.rs`.
#[tokio::test(start_paused = true)]
async fn http_lifetime_of_1s_serves_every_caller_within_the_budget() {
    let lifetime = SECOND;
    let server = Arc::new(server(lifetime).start().await);
    let traffic = busy_traffic(20, 10 * lifetime, 200 * MS);
    let report = run("http 8 lifetime-1s", &server, lifetime, traffic, false).await;
    let spans = (report.run_length().as_secs_f64() / lifetime.as_secs_f64()).floor() as usize;
    let mut checks = Checks::new(&report);
    let figures = ServerFigures::new(&server, &report);
    let logins = figures.logins();
    let allowed = (8 * spans).div_ceil(3) + 1;
    checks
        .no_caller_errors()
        .no_unexcused_rejections()
        .logins_at_most(
            allowed,
            "renewed at 3/8 to 1/2 of its life: 8/3 per lifetime + the cold one",
        )
        .target(
            logins <= allowed,
            format!("server logins <= {allowed} (8/3 per lifetime + the cold one): {logins}"),
        )
        .boundary_wait_at_most(boundary_bound(LOGIN_DELAY))
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    figures.agrees(&mut checks);
    figures.within_budget(&mut checks);
    checks.finish();
}

/// 8. A 10 ms token (`"expiresIn":"0.01"`) and 5 ms logins (a server next door, the worst case
/// for a budget), with 20 busy callers for 10 s: only the login rate is asserted, and it stays
/// within the budget.
#[tokio::test(start_paused = true)]
async fn http_lifetime_of_10ms_keeps_logins_within_the_budget_with_callers() {
    let lifetime = 10 * MS;
    let server = Arc::new(
        pinned_clock(
            ReferenceServer::builder()
                .seed(SEED)
                .token_lifetime(lifetime)
                .login_delay(5 * MS),
            Duration::ZERO,
            WALL_PHASE,
        )
        .start()
        .await,
    );
    let traffic = busy_traffic(20, 10 * SECOND, 200 * MS);
    let report = run(
        "http 8 lifetime-10ms callers",
        &server,
        lifetime,
        traffic,
        false,
    )
    .await;
    let mut checks = Checks::new(&report);
    let figures = ServerFigures::new(&server, &report);
    checks
        .target(
            report.logins() >= 10,
            format!("the 10 ms tokens were read: {} logins", report.logins()),
        )
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    figures.agrees(&mut checks);
    figures.within_budget(&mut checks);
    checks.finish();
}

/// 8. A 10 ms token (`"expiresIn":"0.01"`) and 5 ms logins, and no callers after the first: the
/// login rate stays within the budget for 10 s.
#[tokio::test(start_paused = true)]
async fn http_lifetime_of_10ms_keeps_logins_within_the_budget_without_callers() {
    let lifetime = 10 * MS;
    let server = Arc::new(
        pinned_clock(
            ReferenceServer::builder()
                .seed(SEED)
                .token_lifetime(lifetime)
                .login_delay(5 * MS),
            Duration::ZERO,
            WALL_PHASE,
        )
        .start()
        .await,
    );
    fastrand::seed(SEED);
    let log = LoginLog::new();
    let source = AuthTokenSource::new(&server.base_url(), server.credentials())
        .expect("the server's URL and credentials are valid");
    let cache = TokenCache::new(Recorded::new(source, &log));
    let probe = Probe::new(Arc::new(ServerOracle(Arc::clone(&server))));
    let start = Instant::now();
    // Only to start the cache: whether this first token is still usable does not matter.
    let _ = cache.token().await;
    sleep(10 * SECOND).await;
    let name = "http 8 lifetime-10ms idle";
    let report = Report::new(name, start, lifetime, Vec::new(), &probe, &log);
    drop(cache);
    let mut checks = Checks::new(&report);
    let figures = ServerFigures::new(&server, &report);
    checks
        .target(
            report.logins() >= 1,
            format!("the 10 ms token was read: {} logins", report.logins()),
        )
        .within_budget(BUDGET_BURST, BUDGET_INTERVAL);
    figures.agrees(&mut checks);
    figures.within_budget(&mut checks);
    checks.finish();
}

// ---------------------------------------------------------------------------------------------
// 9: login outages

/// The token's life in the outage tests.
const OUTAGE_LIFETIME: Duration = Duration::from_secs(4);
/// When the outage starts: after two and a half lifetimes of normal service.
const OUTAGE_FROM: Duration = Duration::from_secs(10);

/// A login outage of `kind` lasting `length`, with 4 s tokens; the run goes on for three
/// lifetimes after the recovery, 10 callers thinking up to 1 s. Targets, on the server's
/// count of attempts: at most one login attempt per second during the outage (+2 for the first
/// quick retries of a still-valid token), at most 3 in any second; callers all served again
/// within 1.5 s of `login_outage_ends()`; no unexcused rejected send.
async fn outage(name: &str, kind: Outage, length: Duration) {
    let server = Arc::new(server(OUTAGE_LIFETIME).start().await);
    let window = server.schedule_login_outage(kind, Instant::now() + OUTAGE_FROM, length);
    let (down, up) = (window.start, window.end);
    let announced = server.login_outage_ends();
    let traffic = busy_traffic(10, OUTAGE_FROM + length + 3 * OUTAGE_LIFETIME, SECOND);
    let report = run(name, &server, OUTAGE_LIFETIME, traffic, false).await;
    let instants: Vec<Instant> = server
        .login_attempt_instants()
        .into_iter()
        .filter(|at| (down..up).contains(at))
        .collect();
    let during = instants.len();
    let densest = instants
        .iter()
        .enumerate()
        .map(|(i, first)| {
            instants[i..]
                .iter()
                .take_while(|at| **at - *first < SECOND)
                .count()
        })
        .max()
        .unwrap_or(0);
    let allowed = length.as_secs_f64().ceil() as usize + 2;
    let served = report.served_again_after(up, 10 * MS);
    println!(
        "[model-http] {name}: outage {length:?}: server attempts during={during} (allowed {allowed}) \
         max/1s during={densest} served_again_after={served:?} attempts at {} (down {:.1}-{:.1} s)",
        report.attempt_times(down - 2 * SECOND, up + 5 * SECOND),
        (down - report.start).as_secs_f64(),
        (up - report.start).as_secs_f64(),
    );
    let mut checks = Checks::new(&report);
    let figures = ServerFigures::new(&server, &report);
    checks
        .target(
            announced == Some(up),
            format!("login_outage_ends() announced the recovery: {announced:?}"),
        )
        .target(
            server.stats().outage_answers as usize == during,
            format!(
                "the outage answered every attempt during it: {} of {during}",
                server.stats().outage_answers
            ),
        )
        .outage_targets(during, allowed, densest, served, up)
        .no_unexcused_rejections();
    figures.agrees(&mut checks);
    checks.finish();
}

#[tokio::test(start_paused = true)]
async fn http_outage_of_503s_shorter_than_the_token_is_retried_once_a_second_and_recovers() {
    outage("http 9 outage-503-3s", Outage::Status(503), 3 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn http_outage_of_503s_longer_than_the_token_is_retried_once_a_second_and_recovers() {
    outage("http 9 outage-503-30s", Outage::Status(503), 30 * SECOND).await;
}

#[tokio::test(start_paused = true)]
async fn http_outage_of_closed_connections_shorter_than_the_token_is_retried_once_a_second() {
    outage(
        "http 9 outage-close-3s",
        Outage::CloseConnection,
        3 * SECOND,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn http_outage_of_closed_connections_longer_than_the_token_is_retried_once_a_second() {
    outage(
        "http 9 outage-close-30s",
        Outage::CloseConnection,
        30 * SECOND,
    )
    .await;
}

/// A hung login stays hung until the endpoint recovers and closes its connection (a transport
/// error); the next attempt, about a second later, is served. Callers without a token wait for
/// the hung login meanwhile (up to the 30 s fetch timeout): only the recovery is asserted.
#[tokio::test(start_paused = true)]
async fn http_outage_of_hung_logins_longer_than_the_token_recovers_within_1_5s() {
    outage("http 9 outage-hang-30s", Outage::Hang, 30 * SECOND).await;
}

// ---------------------------------------------------------------------------------------------
// 10: the server's clock

/// 10. The server's clock is an hour ahead and writes `issued`/`expires` at +05:30 (with
/// `expiresIn`, and a `Date` header an hour ahead).
#[tokio::test(start_paused = true)]
async fn http_server_clock_an_hour_ahead_in_another_zone_changes_nothing() {
    let server = Arc::new(
        pinned_clock(server(LONG), 3600 * SECOND, WALL_PHASE)
            .timestamp_offset_minutes(330)
            .start()
            .await,
    );
    let report = run(
        "http 10 clock+1h +05:30",
        &server,
        LONG,
        long_traffic(),
        false,
    )
    .await;
    check_served(&report, &server, 0).finish();
}

// ---------------------------------------------------------------------------------------------
// The harness over HTTP

/// The oracle over HTTP catches dead tokens: a client that keeps using its first token after
/// the server revoked it (the cache told nothing) is counted unexcused once a 401 told it.
#[tokio::test(start_paused = true)]
async fn http_harness_counts_sends_with_a_token_the_server_would_reject() {
    let server = Arc::new(server(LONG).start().await);
    let oracle = ServerOracle(Arc::clone(&server));
    let probe = Probe::new(Arc::new(oracle));
    let source = AuthTokenSource::new(&server.base_url(), server.credentials())
        .expect("the server's URL and credentials are valid");
    let log = LoginLog::new();
    let token = tower_authtoken::TokenSource::fetch(&Recorded::new(source, &log))
        .await
        .expect("the login succeeds");
    let header = token.header_value().clone();
    // A fixed token, never renewed: valid for 300 s, revoked at 100 s.
    let fixed = tower::util::MapRequestLayer::new(move |mut request: Request<Empty<Bytes>>| {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, header.clone());
        request
    });
    let api = ServiceBuilder::new()
        .layer(fixed)
        .layer(probe.clone())
        .service(support::reading_client());
    server.schedule_revocation(Instant::now() + 100 * SECOND);
    let url = server.protected_url();
    let start = Instant::now();
    let calls = drive_with(api, busy_traffic(5, 400 * SECOND, 10 * SECOND), move || {
        Request::get(&url).body(Empty::new()).expect("valid URL")
    })
    .await;
    let report = Report::new("http harness fixed-token", start, LONG, calls, &probe, &log);
    println!("{}", report.summary());
    let excused = report.rejected(harness::Verdict::Excused);
    let unexcused = report.rejected(harness::Verdict::Unexcused);
    assert!(
        excused >= 1,
        "the first 401 after the revocation is excused"
    );
    assert!(unexcused > 0, "the harness saw no dead token sent");
    assert_eq!(
        excused + unexcused,
        report.transport_statuses(StatusCode::UNAUTHORIZED),
        "every dead token sent was answered 401, and only those"
    );
    assert_eq!(
        report.transport_statuses(StatusCode::UNAUTHORIZED) as u64,
        server.rejections(),
        "the probe saw every 401 the server gave"
    );
}

// ---------------------------------------------------------------------------------------------
// The same worlds through `BearerAuthMiddleware` (reqwest-middleware over `reqwest::Client`)

/// 2 through the middleware: one live token per user, used to its expiry, no error.
#[tokio::test(start_paused = true)]
async fn middleware_one_live_token_per_user_is_used_to_its_expiry_without_errors() {
    let client = Client::Middleware { replay: false };
    let name = "middleware 2 one-live";
    policy_serves_every_caller_through(client, name, TokenPolicy::OneLivePerUser, 1).await;
}

/// 5 through the middleware: each revocation costs one login and no error.
#[tokio::test(start_paused = true)]
async fn middleware_revocations_cost_one_login_each_and_no_errors() {
    revocations(
        Client::Middleware { replay: false },
        "middleware 5 revocation",
    )
    .await;
}

/// 6 through the middleware with `retry_on_unauthorized`: no spurious 401 reaches a caller.
#[tokio::test(start_paused = true)]
async fn middleware_spurious_401s_are_replayed_and_never_reach_callers() {
    let client = Client::Middleware { replay: true };
    spurious_401s_replayed(client, "middleware 6 spurious-401 replay").await;
}

/// 7 through the middleware: a handful of logins a minute, every 401 to its caller.
#[tokio::test(start_paused = true)]
async fn middleware_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    rejects_all(
        Client::Middleware { replay: false },
        "middleware 7 rejects-all",
    )
    .await;
}

/// 5 through the keyed middleware, one account: each revocation costs one login and no error.
#[tokio::test(start_paused = true)]
async fn keyed_middleware_revocations_cost_one_login_each_and_no_errors() {
    let client = Client::KeyedMiddleware { replay: false };
    revocations(client, "keyed middleware 5 revocation").await;
}

/// 6 through the keyed middleware with `retry_on_unauthorized`: no spurious 401 reaches a
/// caller.
#[tokio::test(start_paused = true)]
async fn keyed_middleware_spurious_401s_are_replayed_and_never_reach_callers() {
    let client = Client::KeyedMiddleware { replay: true };
    spurious_401s_replayed(client, "keyed middleware 6 spurious-401 replay").await;
}

/// 7 through the keyed middleware: a handful of logins a minute, every 401 to its caller.
#[tokio::test(start_paused = true)]
async fn keyed_middleware_api_that_rejects_every_token_gets_a_handful_of_logins_per_minute() {
    let client = Client::KeyedMiddleware { replay: false };
    rejects_all(client, "keyed middleware 7 rejects-all").await;
}
