//! The harness: traffic through any client stack, and what its users saw.
//!
//! It knows nothing of the model. It needs:
//!
//! - a client stack, any `tower::Service<http::Request<()>>` that answers `http::Response<_>`,
//!   with a [`Probe`] layered just above the transport (below `BearerAuthLayer`), so that it sees
//!   the token each request carries;
//! - an [`Oracle`]: "would the server accept this token now?" (a `Fn(&str) -> bool` will do);
//! - a [`LoginLog`], filled by wrapping the token source in [`Recorded`].
//!
//! Plugging in the real `ReferenceServer` takes about twenty lines, once the server can say
//! whether it would accept a token (`accepts` below is that missing method):
//!
//! ```text
//! let log = LoginLog::new();
//! let source = AuthTokenSource::new(&server.base_url(), server.credentials())?;
//! let cache = TokenCache::new(Recorded::new(source, &log));
//! let oracle = { let server = server.clone(); move |token: &str| server.accepts(token) };
//! let probe = Probe::new(Arc::new(oracle));
//! let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
//!     .build_http::<Empty<Bytes>>();
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(cache))
//!     .layer(probe.clone())
//!     .service(transport);
//! let url = server.protected_url();
//! let start = Instant::now();
//! let calls = drive_with(client, traffic, move || {
//!     Request::get(&url).body(Empty::new()).unwrap()
//! })
//! .await;
//! let report = Report::new("real server", start, lifetime, calls, &probe, &log);
//! Checks::new(&report).no_caller_errors().no_unexcused_rejections().finish();
//! ```
//!
//! [`drive`] runs `callers` tasks that each think for a random (seeded) time, send one request,
//! and again, until the run's end. [`Report`] turns what was recorded into the figures of issue 9:
//! caller errors, requests sent with a token the server would reject (excused or not), logins,
//! login attempts per window, and the longest wait of any caller.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tokio::time::{Instant, sleep};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_authtoken::{Error, ErrorKind, Token, TokenSource};

// ---------------------------------------------------------------------------------------------
// The oracle

/// What the server would do with a token now.
pub trait Oracle: Send + Sync + 'static {
    /// Whether the server would accept `token` at this instant.
    fn accepts(&self, token: &str) -> bool;

    /// Whether the server took `token` out of service before its announced expiry (a
    /// revocation): a client cannot know until a `401` tells it. Default: never.
    fn withdrawn_unannounced(&self, _token: &str) -> bool {
        false
    }
}

impl<F> Oracle for F
where
    F: Fn(&str) -> bool + Send + Sync + 'static,
{
    fn accepts(&self, token: &str) -> bool {
        self(token)
    }
}

// ---------------------------------------------------------------------------------------------
// Logins

/// How one login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Still running when the log was read.
    Running,
    /// A token that expires at this instant (the client's reading).
    Token(Instant),
    Failed(ErrorKind),
    /// Dropped before it finished (the cache's timeout, or its driver stopped).
    Cancelled,
}

/// One login attempt, as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub started: Instant,
    pub ended: Option<Instant>,
    pub end: AttemptEnd,
}

/// Every login attempt of a run.
#[derive(Debug, Default)]
pub struct LoginLog {
    attempts: Mutex<Vec<Attempt>>,
}

impl LoginLog {
    pub fn new() -> Arc<LoginLog> {
        Arc::new(LoginLog::default())
    }

    fn start(&self) -> usize {
        let mut attempts = self.attempts.lock().unwrap();
        attempts.push(Attempt {
            started: Instant::now(),
            ended: None,
            end: AttemptEnd::Running,
        });
        attempts.len() - 1
    }

    fn finish(&self, index: usize, end: AttemptEnd) {
        let mut attempts = self.attempts.lock().unwrap();
        attempts[index].ended = Some(Instant::now());
        attempts[index].end = end;
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

/// A token source whose every attempt is written to a [`LoginLog`].
pub struct Recorded<S> {
    source: S,
    log: Arc<LoginLog>,
}

impl<S> Recorded<S> {
    pub fn new(source: S, log: &Arc<LoginLog>) -> Self {
        Recorded {
            source,
            log: Arc::clone(log),
        }
    }
}

/// Marks an attempt cancelled if its future is dropped before it finished.
struct Pending {
    log: Arc<LoginLog>,
    index: usize,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.log.finish(self.index, AttemptEnd::Cancelled);
        }
    }
}

impl<S: TokenSource> TokenSource for Recorded<S> {
    async fn fetch(&self) -> Result<Token, Error> {
        let mut pending = Pending {
            log: Arc::clone(&self.log),
            index: self.log.start(),
            done: false,
        };
        let result = self.source.fetch().await;
        let end = match &result {
            Ok(token) => AttemptEnd::Token(token.expires_at()),
            Err(error) => AttemptEnd::Failed(error.kind()),
        };
        self.log.finish(pending.index, end);
        pending.done = true;
        result
    }
}

// ---------------------------------------------------------------------------------------------
// The probe: what each request carried

/// How a request's token stood with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent with a token the server accepted, and not refused.
    Fine,
    /// Refused, but the client could not have known: the token was revoked and no `401` had told
    /// the client yet, or it was still valid when sent (in flight at a revocation, or a
    /// spurious `401`).
    Excused,
    /// Sent with a token the server would reject, which the client could have known (expired,
    /// unknown, or revoked after a `401` said so), or expired in flight.
    Unexcused,
}

/// One request as it left the client stack.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Instant,
    token: Option<String>,
    accepted_when_sent: bool,
    pub status: Option<StatusCode>,
    pub verdict: Verdict,
}

#[derive(Default)]
struct ProbeState {
    sent: Vec<Sent>,
    /// Tokens a `401` was returned for, in the order the client learned of them.
    told: BTreeSet<String>,
}

/// Records every request that reaches the transport, and judges its token with the oracle.
#[derive(Clone)]
pub struct Probe {
    oracle: Arc<dyn Oracle>,
    state: Arc<Mutex<ProbeState>>,
}

impl Probe {
    pub fn new(oracle: Arc<dyn Oracle>) -> Probe {
        Probe {
            oracle,
            state: Arc::default(),
        }
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().unwrap().sent.clone()
    }

    /// Records a request leaving the client with `token`; its index, for [`on_response`](Self::on_response).
    pub fn on_send(&self, token: Option<String>) -> usize {
        let mut state = self.state.lock().unwrap();
        let (accepted, verdict) = match &token {
            None => (false, Verdict::Unexcused),
            Some(token) if self.oracle.accepts(token) => (true, Verdict::Fine),
            Some(token) => {
                let unannounced =
                    self.oracle.withdrawn_unannounced(token) && !state.told.contains(token);
                let verdict = if unannounced {
                    Verdict::Excused
                } else {
                    Verdict::Unexcused
                };
                (false, verdict)
            }
        };
        state.sent.push(Sent {
            at: Instant::now(),
            token,
            accepted_when_sent: accepted,
            status: None,
            verdict,
        });
        state.sent.len() - 1
    }

    /// Records the status the request `index` got back.
    pub fn on_response(&self, index: usize, status: StatusCode) {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let sent = &mut state.sent[index];
        sent.status = Some(status);
        if status != StatusCode::UNAUTHORIZED {
            return;
        }
        if let Some(token) = &sent.token {
            if sent.accepted_when_sent {
                // Valid when sent: a spurious 401 (still valid now) or a revocation while in
                // flight is excused; a token that expired on the way is not.
                sent.verdict =
                    if self.oracle.accepts(token) || self.oracle.withdrawn_unannounced(token) {
                        Verdict::Excused
                    } else {
                        Verdict::Unexcused
                    };
            }
            state.told.insert(token.clone());
        }
    }
}

impl<S> Layer<S> for Probe {
    type Service = Probed<S>;

    fn layer(&self, inner: S) -> Probed<S> {
        Probed {
            inner,
            probe: self.clone(),
        }
    }
}

/// A transport under a [`Probe`].
#[derive(Clone)]
pub struct Probed<S> {
    inner: S,
    probe: Probe,
}

/// Set on a response by an API whose protocol rejects a token otherwise than with a `401` (a
/// gRPC `UNAUTHENTICATED`): the probe counts it as a `401`, one the client is told of.
#[derive(Debug, Clone, Copy)]
pub struct Rejected;

/// The bearer token a request carries, if any.
pub fn bearer_token<B>(req: &Request<B>) -> Option<String> {
    bearer_token_in(req.headers())
}

/// The bearer token in a request's headers, if any.
pub fn bearer_token_in(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Probed<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let token = bearer_token(&req);
        let index = self.probe.on_send(token);
        let probe = self.probe.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            if let Ok(response) = &result {
                // A protocol whose rejection is not a 401 (gRPC's `grpc-status: 16`) says so.
                let status = match response.extensions().get::<Rejected>() {
                    Some(Rejected) => StatusCode::UNAUTHORIZED,
                    None => response.status(),
                };
                probe.on_response(index, status);
            }
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// The callers of a run.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    pub callers: usize,
    /// How long callers keep sending, from the start of [`drive`].
    pub duration: Duration,
    /// Each caller thinks for a uniformly random time in this range before each request.
    pub think_min: Duration,
    pub think_max: Duration,
    pub seed: u64,
}

/// What a caller got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Status(StatusCode),
    /// The service failed; the kind when it is a `tower_authtoken::Error`.
    Error(Option<ErrorKind>),
}

/// One request, as its caller saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

impl Call {
    pub fn wait(&self) -> Duration {
        self.ended - self.started
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Error(_))
    }
}

/// Runs the traffic through `client`, each request an empty `Request<()>`, and returns every
/// call in the order they started.
pub async fn drive<C, B>(client: C, traffic: Traffic) -> Vec<Call>
where
    C: Service<Request<()>, Response = Response<B>> + Clone + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    B: Send + 'static,
{
    drive_with(client, traffic, || Request::new(())).await
}

/// Like [`drive`], with each request made by `request`: for a real transport, a request to the
/// protected URL with the transport's body type.
pub async fn drive_with<C, Q, B>(
    client: C,
    traffic: Traffic,
    request: impl Fn() -> Request<Q> + Send + Sync + 'static,
) -> Vec<Call>
where
    C: Service<Request<Q>, Response = Response<B>> + Clone + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    Q: Send + 'static,
    B: Send + 'static,
{
    let request = Arc::new(request);
    let mut rng = fastrand::Rng::with_seed(traffic.seed);
    let end = Instant::now() + traffic.duration;
    let think = traffic.think_min.as_micros() as u64..=traffic.think_max.as_micros() as u64;
    let mut tasks = Vec::new();
    for _ in 0..traffic.callers {
        let mut rng = rng.fork();
        let client = client.clone();
        let think = think.clone();
        let request = Arc::clone(&request);
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            loop {
                sleep(Duration::from_micros(rng.u64(think.clone()))).await;
                if Instant::now() >= end {
                    return calls;
                }
                let started = Instant::now();
                let result = client.clone().oneshot(request()).await;
                let outcome = match result {
                    Ok(response) => Outcome::Status(response.status()),
                    Err(error) => {
                        let error: BoxError = error.into();
                        Outcome::Error(error.downcast_ref::<Error>().map(Error::kind))
                    }
                };
                calls.push(Call {
                    started,
                    ended: Instant::now(),
                    outcome,
                });
            }
        }));
    }
    let mut calls = Vec::new();
    for task in tasks {
        calls.extend(task.await.expect("a caller task panicked"));
    }
    calls.sort_by_key(|call| call.started);
    calls
}

// ---------------------------------------------------------------------------------------------
// The report

/// What the users of one run saw.
pub struct Report {
    pub name: String,
    pub start: Instant,
    pub end: Instant,
    pub lifetime: Duration,
    pub calls: Vec<Call>,
    pub sent: Vec<Sent>,
    pub attempts: Vec<Attempt>,
}

impl Report {
    pub fn new(
        name: &str,
        start: Instant,
        lifetime: Duration,
        calls: Vec<Call>,
        probe: &Probe,
        log: &LoginLog,
    ) -> Report {
        Report {
            name: name.to_owned(),
            start,
            end: Instant::now(),
            lifetime,
            calls,
            sent: probe.sent(),
            attempts: log.attempts(),
        }
    }

    pub fn run_length(&self) -> Duration {
        self.end - self.start
    }

    pub fn caller_errors(&self) -> usize {
        self.calls.iter().filter(|call| call.failed()).count()
    }

    /// The kinds of the caller errors, with their counts.
    pub fn error_kinds(&self) -> String {
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for call in &self.calls {
            if let Outcome::Error(kind) = &call.outcome {
                let name = kind.map_or("other", ErrorKind::as_str).to_owned();
                *kinds.entry(name).or_default() += 1;
            }
        }
        let mut text = String::new();
        for (kind, count) in kinds {
            let _ = write!(
                text,
                "{}{kind}:{count}",
                if text.is_empty() { "" } else { "," }
            );
        }
        if text.is_empty() {
            "-".to_owned()
        } else {
            text
        }
    }

    /// Responses with this status that reached the callers.
    pub fn caller_statuses(&self, status: StatusCode) -> usize {
        self.calls
            .iter()
            .filter(|call| call.outcome == Outcome::Status(status))
            .count()
    }

    /// Responses with this status that the transport returned.
    pub fn transport_statuses(&self, status: StatusCode) -> usize {
        self.sent
            .iter()
            .filter(|s| s.status == Some(status))
            .count()
    }

    pub fn rejected(&self, verdict: Verdict) -> usize {
        self.sent.iter().filter(|s| s.verdict == verdict).count()
    }

    /// The first unexcused rejected send, for the failure message.
    pub fn first_unexcused(&self) -> Option<Duration> {
        self.sent
            .iter()
            .find(|s| s.verdict == Verdict::Unexcused)
            .map(|s| s.at - self.start)
    }

    /// Logins that returned a token.
    pub fn logins(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(a.end, AttemptEnd::Token(_)))
            .count()
    }

    /// Logins per token lifetime over the run.
    pub fn logins_per_lifetime(&self) -> f64 {
        self.logins() as f64 / (self.run_length().as_secs_f64() / self.lifetime.as_secs_f64())
    }

    /// The most login attempts that started within any window of `width`, among those that
    /// started in `[from, until)`.
    pub fn max_attempts_in(&self, width: Duration, from: Instant, until: Instant) -> usize {
        let starts: Vec<Instant> = self
            .attempts
            .iter()
            .map(|a| a.started)
            .filter(|at| (from..until).contains(at))
            .collect();
        tower_authtoken::testing::most_within(&starts, width)
    }

    /// The most login attempts in any window of `width` over the whole run.
    pub fn max_attempts(&self, width: Duration) -> usize {
        self.max_attempts_in(width, self.start, self.end + Duration::from_secs(3600))
    }

    /// Login attempts that started in `[from, until)`.
    pub fn attempts_between(&self, from: Instant, until: Instant) -> usize {
        self.attempts
            .iter()
            .filter(|a| (from..until).contains(&a.started))
            .count()
    }

    pub fn longest_wait(&self) -> Duration {
        self.calls.iter().map(Call::wait).max().unwrap_or_default()
    }

    /// The expiry instants of the tokens the client received, as it read them.
    pub fn expiries(&self) -> Vec<Instant> {
        let mut expiries: Vec<Instant> = self
            .attempts
            .iter()
            .filter_map(|a| match a.end {
                AttemptEnd::Token(at) => Some(at),
                _ => None,
            })
            .collect();
        expiries.sort();
        expiries.dedup();
        expiries
    }

    /// The longest wait of a call that ran within a second of a token's expiry.
    pub fn longest_wait_at_expiry(&self) -> Duration {
        let expiries = self.expiries();
        let near = Duration::from_secs(1);
        self.calls
            .iter()
            .filter(|call| {
                // The first expiry not before the call's start minus a second.
                let i = expiries.partition_point(|e| *e + near < call.started);
                expiries.get(i).is_some_and(|e| *e <= call.ended + near)
            })
            .map(Call::wait)
            .max()
            .unwrap_or_default()
    }

    /// How long after `recovered` the callers were all served again: the latest end, after
    /// `recovered`, of a call that failed, that was already waiting at `recovered`, or that waited
    /// longer than `normal`; zero if there is none.
    pub fn served_again_after(&self, recovered: Instant, normal: Duration) -> Duration {
        self.calls
            .iter()
            .filter(|call| call.ended >= recovered)
            .filter(|call| call.failed() || call.started < recovered || call.wait() > normal)
            .map(|call| call.ended - recovered)
            .max()
            .unwrap_or_default()
    }

    /// When the login attempts that started in `[from, until)` started, in seconds since the
    /// start of the run.
    pub fn attempt_times(&self, from: Instant, until: Instant) -> String {
        let times: Vec<String> = self
            .attempts
            .iter()
            .filter(|a| (from..until).contains(&a.started))
            .map(|a| format!("{:.2}", (a.started - self.start).as_secs_f64()))
            .collect();
        format!("[{}]", times.join(" "))
    }

    /// Whether any call succeeded after `at`.
    pub fn served_after(&self, at: Instant) -> bool {
        self.calls
            .iter()
            .any(|call| call.started >= at && call.outcome == Outcome::Status(StatusCode::OK))
    }

    /// The one-line summary the lead pastes into the issue.
    pub fn summary(&self) -> String {
        format!(
            "[model] {}: run={:.1}s lifetime={:?} requests={} caller_errors={} ({}) 401s_to_callers={} \
             rejected_sends excused={} unexcused={} logins={} attempts={} logins/lifetime={:.2} \
             longest_wait={:?} at_expiry={:?} max_attempts/1s={} max_attempts/60s={}",
            self.name,
            self.run_length().as_secs_f64(),
            self.lifetime,
            self.calls.len(),
            self.caller_errors(),
            self.error_kinds(),
            self.caller_statuses(StatusCode::UNAUTHORIZED),
            self.rejected(Verdict::Excused),
            self.rejected(Verdict::Unexcused),
            self.logins(),
            self.attempts.len(),
            self.logins_per_lifetime(),
            self.longest_wait(),
            self.longest_wait_at_expiry(),
            self.max_attempts(Duration::from_secs(1)),
            self.max_attempts(Duration::from_secs(60)),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Targets

/// Collects every target a run missed, so that one failing test names all of them.
pub struct Checks<'a> {
    report: &'a Report,
    missed: Vec<String>,
}

impl<'a> Checks<'a> {
    pub fn new(report: &'a Report) -> Self {
        println!("{}", report.summary());
        Checks {
            report,
            missed: Vec::new(),
        }
    }

    /// Records a missed target unless `ok`.
    pub fn target(&mut self, ok: bool, what: impl fmt::Display) -> &mut Self {
        if !ok {
            self.missed.push(what.to_string());
        }
        self
    }

    /// Zero caller errors.
    pub fn no_caller_errors(&mut self) -> &mut Self {
        let errors = self.report.caller_errors();
        let first = self
            .report
            .calls
            .iter()
            .find(|c| c.failed())
            .map(|c| c.started - self.report.start);
        self.target(
            errors == 0,
            format!(
                "zero caller errors: {errors} ({}), first at {first:?}",
                self.report.error_kinds()
            ),
        )
    }

    /// Zero requests sent with a token the server would reject, except excused ones.
    pub fn no_unexcused_rejections(&mut self) -> &mut Self {
        let unexcused = self.report.rejected(Verdict::Unexcused);
        self.target(
            unexcused == 0,
            format!(
                "zero unexcused rejected sends: {unexcused}, first at {:?}",
                self.report.first_unexcused()
            ),
        )
    }

    /// At most `allowed` logins over the run.
    pub fn logins_at_most(&mut self, allowed: usize, why: &str) -> &mut Self {
        let logins = self.report.logins();
        self.target(
            logins <= allowed,
            format!("logins <= {allowed} ({why}): {logins}"),
        )
    }

    /// At most `allowed` login attempts that brought no token.
    pub fn failed_attempts_at_most(&mut self, allowed: usize, why: &str) -> &mut Self {
        let failed = self.report.attempts.len() - self.report.logins();
        self.target(
            failed <= allowed,
            format!("login attempts without a token <= {allowed} ({why}): {failed}"),
        )
    }

    /// Logins per lifetime at most one per lifetime the run spans, plus the cold login, plus
    /// `extra` (events, or the renewal that finds out how the server issues tokens).
    pub fn one_login_per_lifetime(&mut self, extra: usize) -> &mut Self {
        let report = self.report;
        let spans = (report.run_length().as_secs_f64() / report.lifetime.as_secs_f64()).floor();
        let allowed = spans as usize + 1 + extra;
        self.logins_at_most(
            allowed,
            &format!("one per lifetime: {spans} lifetimes + the cold login + {extra}"),
        )
    }

    /// The targets of a login outage that ended at `up`: at most `allowed` login attempts
    /// during it (`during`) and at most 3 in any second (`densest`), callers served again
    /// within 1.5 s of the recovery (`served`), and some caller served after that.
    pub fn outage_targets(
        &mut self,
        during: usize,
        allowed: usize,
        densest: usize,
        served: Duration,
        up: Instant,
    ) -> &mut Self {
        let report = self.report;
        let soon = Duration::from_millis(1500);
        self.target(
            during <= allowed,
            format!("at most 1 attempt per second during the outage (+2): {during} > {allowed}"),
        )
        .target(
            densest <= 3,
            format!("at most 3 attempts in any second of the outage: {densest}"),
        )
        .target(
            served <= soon,
            format!("callers served again within 1.5 s of the recovery: {served:?}"),
        )
        .target(
            report.served_after(up + soon),
            "some caller served after the recovery",
        )
    }

    /// The longest wait at an expiry boundary is at most `bound`.
    pub fn boundary_wait_at_most(&mut self, bound: Duration) -> &mut Self {
        let wait = self.report.longest_wait_at_expiry();
        self.target(
            wait <= bound,
            format!("longest wait at an expiry boundary <= {bound:?}: {wait:?}"),
        )
    }

    /// Login attempts never exceed a budget of `burst`, then one per `interval`: checked over
    /// windows of 1 s, 10 s and the whole run.
    pub fn within_budget(&mut self, burst: usize, interval: Duration) -> &mut Self {
        let report = self.report;
        for width in [
            Duration::from_secs(1),
            Duration::from_secs(10),
            report.run_length() + Duration::from_secs(1),
        ] {
            let allowed = burst + (width.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
            let most = report.max_attempts(width);
            self.target(
                most <= allowed,
                format!(
                    "login budget (burst {burst}, one per {interval:?}): at most {allowed} attempts in any {width:?}, saw {most}"
                ),
            );
        }
        self
    }

    /// The targets missed so far.
    pub fn missed(&self) -> &[String] {
        &self.missed
    }

    /// Panics naming every missed target.
    pub fn finish(&self) {
        if self.missed.is_empty() {
            println!("[model] {}: every target met", self.report.name);
            return;
        }
        let mut text = format!("[model] {}: missed targets:", self.report.name);
        for missed in &self.missed {
            let _ = write!(text, "\n  - {missed}");
        }
        panic!("{text}");
    }
}
