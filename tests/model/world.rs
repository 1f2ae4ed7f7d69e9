//! The world: a model of one login server and the API it protects, on Tokio's clock.
//!
//! [`World`] decides, at every instant, whether the API would accept a token
//! ([`World::accepts`]). Its login is a [`TokenSource`] ([`ModelLogin`]) that answers after a
//! simulated latency with a real JSON body, parsed by [`Token::from_response_body`] as
//! `AuthTokenSource` would. Its API ([`ModelApi`]) is a `tower::Service<http::Request<()>>` that
//! reads the `Authorization` header, asks the model when the request arrives, and answers `200` or
//! `401`.
//!
//! The server issues a token halfway through the login's latency, so the client, which measures
//! the lifetime from the response's arrival, sees every expiry half a latency later than the server
//! does, as it would on a real network.
//!
//! Everything random (revocation instants, spurious 401 instants) comes from one seeded
//! `fastrand::Rng`, so a run is replayed exactly by its seed.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use tokio::time::{Instant, sleep, sleep_until};
use tower::Service;
use tower_authtoken::{Error, ErrorKind, Token, TokenSource};

use super::harness::Oracle;

/// How the login server hands out tokens (behaviours 1–4 of issue 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuing {
    /// 1. A fresh, full-length token on every login.
    Fresh,
    /// 2. One live token per user: a login before it expires returns the same token with what is
    ///    left of its life; a new one only after it expired.
    OneLive,
    /// 3. A new token on every login, all bound to the session's expiry; a new session (a new
    ///    full lifetime) only after the session expired.
    BoundToSession,
    /// 4. Sliding: the same token, its expiry pushed a full lifetime ahead by each login.
    Sliding,
}

/// How the login endpoint fails during an outage (behaviour 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageKind {
    /// Answers `503 Service Unavailable` after the usual latency.
    Unavailable,
    /// Accepts the connection and never answers while it is down; when it comes back, the
    /// stalled connection is reset (a transport error).
    Hang,
    /// Refuses the connection at once (a transport error).
    Refused,
}

/// A login outage, relative to the world's start.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub kind: OutageKind,
    pub from: Duration,
    pub until: Duration,
}

/// The server's wall clock and how it writes timestamps (behaviour 10).
#[derive(Debug, Clone, Copy)]
pub struct ServerClock {
    /// How far the server's clock is from ours.
    pub skew: SignedDuration,
    /// The zone its `issued`/`expires` are written in.
    pub offset: Offset,
    /// Whether the body also carries `expiresIn`.
    pub expires_in: bool,
}

/// Our wall clock at the world's start: the server clocks are skewed from it.
const EPOCH: Timestamp = Timestamp::constant(1_795_000_000, 0);

/// The world's settings. Build with [`Setup::new`] and the setters, start with [`Setup::start`].
#[derive(Debug, Clone)]
pub struct Setup {
    pub issuing: Issuing,
    pub lifetime: Duration,
    /// The login's round trip; the token is issued halfway through.
    pub login_latency: Duration,
    /// One way of an API request; the API decides when the request arrives.
    pub api_latency: Duration,
    /// Revocations of the live token at random instants within `horizon`.
    pub revocations: usize,
    /// Spurious 401s (a valid token rejected once) at random instants within `horizon`.
    pub spurious: usize,
    /// The API rejects every token while logins succeed (behaviour 7).
    pub rejects_all: bool,
    pub outages: Vec<Outage>,
    pub clock: Option<ServerClock>,
    /// The `expiresIn` the server writes, as a multiple of the token's real life (1 is honest).
    pub advertised: f64,
    /// The server writes `expiresIn` in whole seconds, rounded down (as OAuth2's `expires_in`
    /// always is): a token with 63.285 s left says 63. Otherwise with its fraction.
    pub whole_seconds: bool,
    /// Random events fall within this span after the start.
    pub horizon: Duration,
    pub seed: u64,
    /// What the server's token values start with: one world per account gives each its own,
    /// so that no account's token is ever another's.
    pub token_prefix: String,
}

impl Setup {
    pub fn new(issuing: Issuing, lifetime: Duration) -> Setup {
        Setup {
            issuing,
            lifetime,
            login_latency: Duration::from_millis(200),
            api_latency: Duration::from_millis(25),
            revocations: 0,
            spurious: 0,
            rejects_all: false,
            outages: Vec::new(),
            clock: None,
            advertised: 1.0,
            whole_seconds: false,
            horizon: lifetime * 3,
            seed: 9,
            token_prefix: "tok".to_owned(),
        }
    }

    /// The API's round trip: what a request costs when no login is in its way.
    pub fn api_round_trip(&self) -> Duration {
        self.api_latency * 2
    }

    /// Starts the world now (on Tokio's clock).
    pub fn start(self) -> Arc<World> {
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let horizon_ms = self.horizon.as_millis().max(1) as u64;
        let mut events: Vec<(Instant, Event)> = Vec::new();
        for _ in 0..self.revocations {
            // Not in the first lifetime's first tenth, so that a token is in service.
            let at = rng.u64(horizon_ms / 10..horizon_ms);
            events.push((now + Duration::from_millis(at), Event::Revoke));
        }
        for _ in 0..self.spurious {
            let at = rng.u64(horizon_ms / 10..horizon_ms);
            events.push((now + Duration::from_millis(at), Event::Spurious));
        }
        events.sort_by_key(|(at, _)| *at);
        Arc::new(World {
            setup: self,
            started: now,
            state: Mutex::new(State {
                events: events.into(),
                ..State::default()
            }),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Revoke,
    Spurious,
}

/// What the server knows about one token it issued.
#[derive(Debug)]
struct Issued {
    expires: Instant,
    revoked: bool,
}

#[derive(Debug, Default)]
struct State {
    tokens: BTreeMap<String, Issued>,
    /// The user's current token (one-live and sliding servers).
    live: Option<String>,
    /// The current session's expiry (bound-to-session server).
    session: Option<Instant>,
    next: u64,
    events: VecDeque<(Instant, Event)>,
    /// How many of the next requests with a valid token are rejected once.
    spurious_pending: u32,
    counts: Counts,
}

/// What the server saw.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub login_attempts: u64,
    pub logins: u64,
    pub api_requests: u64,
    pub api_401s: u64,
    pub revocations: u64,
    pub spurious_401s: u64,
    /// When each revocation and spurious 401 happened.
    pub events: Vec<Instant>,
}

/// The server model. Shared by its login, its API and the test's oracle.
#[derive(Debug)]
pub struct World {
    setup: Setup,
    started: Instant,
    state: Mutex<State>,
}

impl World {
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn counts(&self) -> Counts {
        self.lock(Instant::now()).counts.clone()
    }

    /// Locks the state, after applying every event due by `now`.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap();
        while state.events.front().is_some_and(|(at, _)| *at <= now) {
            let (at, event) = state.events.pop_front().unwrap();
            match event {
                Event::Revoke => {
                    // Every token still valid is revoked; the session ends with it.
                    let mut revoked = 0;
                    for issued in state.tokens.values_mut() {
                        if !issued.revoked && at < issued.expires {
                            issued.revoked = true;
                            revoked += 1;
                        }
                    }
                    state.live = None;
                    state.session = None;
                    if revoked > 0 {
                        state.counts.revocations += 1;
                        state.counts.events.push(at);
                    }
                }
                Event::Spurious => state.spurious_pending += 1,
            }
        }
        state
    }

    /// Whether the API would accept `token` now.
    pub fn accepts(&self, token: &str) -> bool {
        let now = Instant::now();
        let state = self.lock(now);
        !self.setup.rejects_all && valid(&state, token, now)
    }

    /// Whether `token` was revoked before its expiry: a client cannot know until told by a 401.
    pub fn revoked(&self, token: &str) -> bool {
        let now = Instant::now();
        let state = self.lock(now);
        state
            .tokens
            .get(token)
            .is_some_and(|issued| issued.revoked && now < issued.expires)
    }

    /// The outage going on now, if any.
    pub fn outage(&self, now: Instant) -> Option<Outage> {
        let since = now.duration_since(self.started);
        self.setup
            .outages
            .iter()
            .find(|outage| outage.from <= since && since < outage.until)
            .copied()
    }

    /// Issues a token at `now` and writes the login's response body.
    pub fn issue(&self, now: Instant) -> Vec<u8> {
        let lifetime = self.setup.lifetime;
        let mut state = self.lock(now);
        let state = &mut *state;
        state.counts.logins += 1;
        let live = state.live.clone().filter(|value| valid(state, value, now));
        let (value, expires) = match (self.setup.issuing, live) {
            (Issuing::Fresh, _) => (new_value(state, &self.setup.token_prefix), now + lifetime),
            (Issuing::OneLive, Some(value)) => {
                let expires = state.tokens[&value].expires;
                (value, expires)
            }
            (Issuing::Sliding, Some(value)) => (value, now + lifetime),
            (Issuing::OneLive | Issuing::Sliding, None) => {
                let value = new_value(state, &self.setup.token_prefix);
                state.live = Some(value.clone());
                (value, now + lifetime)
            }
            (Issuing::BoundToSession, _) => {
                let session = match state.session {
                    Some(end) if now < end => end,
                    _ => now + lifetime,
                };
                state.session = Some(session);
                (new_value(state, &self.setup.token_prefix), session)
            }
        };
        state.tokens.insert(
            value.clone(),
            Issued {
                expires,
                revoked: false,
            },
        );
        let remaining = expires.duration_since(now);
        self.body(&value, remaining, now)
    }

    /// The JSON body of a successful login.
    fn body(&self, value: &str, remaining: Duration, now: Instant) -> Vec<u8> {
        let advertised = remaining.mul_f64(self.setup.advertised);
        let mut body = serde_json::json!({ "type": "Bearer", "token": value });
        let expires_in = if self.setup.whole_seconds {
            serde_json::json!(advertised.as_secs())
        } else {
            serde_json::json!(advertised.as_secs_f64())
        };
        match self.setup.clock {
            None => body["expiresIn"] = expires_in,
            Some(clock) => {
                let since = SignedDuration::try_from(now.duration_since(self.started)).unwrap();
                let issued = EPOCH
                    .checked_add(since)
                    .and_then(|t| t.checked_add(clock.skew))
                    .unwrap();
                let expires = issued
                    .checked_add(SignedDuration::try_from(advertised).unwrap())
                    .unwrap();
                body["issued"] = issued.display_with_offset(clock.offset).to_string().into();
                body["expires"] = expires.display_with_offset(clock.offset).to_string().into();
                if clock.expires_in {
                    body["expiresIn"] = expires_in;
                }
            }
        }
        serde_json::to_vec(&body).unwrap()
    }

    /// Decides an API request that arrived now carrying `token`.
    /// What the API answers a request carrying `token` now: `200`, or `401`.
    pub fn decide(&self, token: Option<&str>) -> StatusCode {
        let now = Instant::now();
        let mut state = self.lock(now);
        state.counts.api_requests += 1;
        let accepted = match token {
            Some(token) if !self.setup.rejects_all && valid(&state, token, now) => {
                if state.spurious_pending > 0 {
                    state.spurious_pending -= 1;
                    state.counts.spurious_401s += 1;
                    state.counts.events.push(now);
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        if accepted {
            StatusCode::OK
        } else {
            state.counts.api_401s += 1;
            StatusCode::UNAUTHORIZED
        }
    }
}

impl Oracle for World {
    fn accepts(&self, token: &str) -> bool {
        World::accepts(self, token)
    }

    fn withdrawn_unannounced(&self, token: &str) -> bool {
        self.revoked(token)
    }
}

fn valid(state: &State, token: &str, now: Instant) -> bool {
    state
        .tokens
        .get(token)
        .is_some_and(|issued| !issued.revoked && now < issued.expires)
}

fn new_value(state: &mut State, prefix: &str) -> String {
    state.next += 1;
    format!("{prefix}-{}", state.next)
}

/// The world's login endpoint, as a [`TokenSource`].
#[derive(Debug, Clone)]
pub struct ModelLogin(pub Arc<World>);

impl TokenSource for ModelLogin {
    async fn fetch(&self) -> Result<Token, Error> {
        let world = &self.0;
        let latency = world.setup.login_latency;
        let now = Instant::now();
        world.lock(now).counts.login_attempts += 1;
        if let Some(outage) = world.outage(now) {
            return match outage.kind {
                OutageKind::Refused => {
                    Err(Error::new(ErrorKind::Transport).with_detail("model: connection refused"))
                }
                OutageKind::Unavailable => {
                    sleep(latency).await;
                    Err(Error::new(ErrorKind::Server).with_status(StatusCode::SERVICE_UNAVAILABLE))
                }
                OutageKind::Hang => {
                    sleep_until(world.started + outage.until).await;
                    Err(Error::new(ErrorKind::Transport)
                        .with_detail("model: the stalled connection was reset"))
                }
            };
        }
        sleep(latency / 2).await;
        let body = world.issue(Instant::now());
        sleep(latency - latency / 2).await;
        Token::from_response_body(&body, tower_authtoken::token::DEFAULT_LIFETIME)
    }
}

/// The world's protected API: `200` for a token the model accepts on arrival, `401` otherwise.
#[derive(Debug, Clone)]
pub struct ModelApi(pub Arc<World>);

impl Service<Request<()>> for ModelApi {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let world = Arc::clone(&self.0);
        let token = super::harness::bearer_token(&req);
        Box::pin(async move {
            let latency = world.setup.api_latency;
            sleep(latency).await;
            let status = world.decide(token.as_deref());
            sleep(latency).await;
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok(response)
        })
    }
}
