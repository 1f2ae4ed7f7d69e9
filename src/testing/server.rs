//! [`ReferenceServer`]: the listener, the connections, and the handle tests talk to.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::clock::{self, WallClock};
use super::handler::{self, OutageWindow, Shared, State, User};
use super::tokens::{RandomRevocations, Tokens, later};
use super::{Failure, Outage, Rejection, ServerStats, TimestampFormat, TokenFields, TokenPolicy};
use crate::Credentials;

const DEFAULT_USER: &str = "alice";
const DEFAULT_PASSWORD: &str = "wonderland";
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// A running `/authtoken` reference server on `127.0.0.1`; see the [module docs](super).
///
/// Dropping it stops the server: it stops accepting, and drops every open connection (a
/// [`Failure::Hang`] ends there). `Debug` lists user names, never passwords.
pub struct ReferenceServer {
    addr: SocketAddr,
    /// `"http"`, or `"https"` for a server started with [`ReferenceServerBuilder::tls`].
    scheme: &'static str,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
    /// Dropping it tells every connection task to stop.
    _shutdown: watch::Sender<()>,
}

impl ReferenceServer {
    /// A builder, to change the users or the defaults before the server starts.
    pub fn builder() -> ReferenceServerBuilder {
        ReferenceServerBuilder {
            users: Vec::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            login_delay: Duration::ZERO,
            login_delay_jitter: Duration::ZERO,
            login_failure_rate: 0.0,
            seed: None,
            timestamp_format: TimestampFormat::default(),
            token_fields: TokenFields::default(),
            timestamp_offset_minutes: 0,
            clock_offset: jiff::SignedDuration::ZERO,
            numeric_fields: false,
            whole_seconds: false,
            jwt_tokens: false,
            token_policy: TokenPolicy::default(),
            reject_all_tokens: false,
            spurious_rejection_at: None,
            random_revocations: None,
            oauth2_scopes: None,
            transport: Transport::default(),
        }
    }

    /// Starts a server with every default: the user `alice` with the password `wonderland`,
    /// one-hour tokens, no login delay, RFC 3339 timestamps.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime, or if no port on `127.0.0.1` can be bound.
    pub async fn start() -> ReferenceServer {
        Self::builder().start().await
    }

    /// The address the server listens on (`127.0.0.1` and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to hand to the client: `http://127.0.0.1:PORT`, or
    /// `https://127.0.0.1:PORT` for a server started with [`ReferenceServerBuilder::tls`].
    ///
    /// The login endpoint is `{base_url}/authtoken`; any path ending in `/authtoken` works too,
    /// so `{base_url}/api/v1` is a valid base URL as well.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The URL of the OAuth 2.0 token endpoint: `{base_url}/oauth2/token` (any path ending in
    /// `/oauth2/token` works too).
    ///
    /// It serves the client credentials grant (RFC 6749 §4.4) to the server's users: the client
    /// id is the user name and the secret the password (`alice` and `wonderland` by default).
    /// The client authenticates by HTTP Basic, its id and secret form-urldecoded after base64
    /// (RFC 6749 §2.3.1), or with `client_id` and `client_secret` in the form body; either
    /// works, both at once is an `invalid_request`. A success is `200` with
    /// `{"access_token","token_type":"Bearer","expires_in":3600}` (a JSON number; `scope` added
    /// when the request had one) and `Cache-Control: no-store`. Errors are RFC 6749 §5.2 JSON
    /// bodies:
    ///
    /// | Request | Answer |
    /// |---|---|
    /// | not a form, a repeated parameter, no `grant_type`, two authentication methods, `client_id` missing or differing from the Basic user | `400 invalid_request` |
    /// | no credentials, malformed Basic, unknown client, wrong secret, [expired account](Self::set_account_expired) | `401 invalid_client` (with `WWW-Authenticate: Basic` unless the secret came in the body) |
    /// | [forbidden account](Self::set_forbidden) | `400 unauthorized_client` |
    /// | `grant_type` other than `client_credentials` | `400 unsupported_grant_type` |
    /// | a scope outside [the allowed ones](ReferenceServerBuilder::oauth2_scopes) | `400 invalid_scope` |
    /// | `invalid_grant`, `temporarily_unavailable`, any other | queue a [`Failure::OAuth2Error`] |
    ///
    /// Logins here count like `/authtoken` logins, and outages, queued failures and delays apply
    /// to them alike. [`last_oauth2_form`](Self::last_oauth2_form) shows what the client sent.
    pub fn oauth2_token_url(&self) -> String {
        format!("{}{}", self.base_url(), handler::OAUTH2_TOKEN_PATH)
    }

    /// The scopes the OAuth2 endpoint grants from now on; `None` grants any scope. Default:
    /// `None`, or the builder's [`oauth2_scopes`](ReferenceServerBuilder::oauth2_scopes).
    pub fn set_oauth2_scopes(&self, scopes: Option<Vec<String>>) {
        self.shared.lock().oauth2_scopes = scopes;
    }

    /// The decoded form parameters of the most recent OAuth2 token request, in the order sent,
    /// if there was one with a readable form body. With
    /// `client_secret` in the body, this holds the secret: it is a test helper.
    pub fn last_oauth2_form(&self) -> Option<Vec<(String, String)>> {
        self.shared.lock().last_oauth2_form.clone()
    }

    /// The path of the most recent `POST` to either login endpoint, such as `/api/authtoken`.
    pub fn last_login_path(&self) -> Option<String> {
        self.shared.lock().last_login_path.clone()
    }

    /// A URL of the protected endpoint: `{base_url}/protected`. Every path other than the login
    /// endpoint is protected.
    pub fn protected_url(&self) -> String {
        format!("{}/protected", self.base_url())
    }

    /// The credentials of the default user: the first user given to the builder, or `alice`.
    pub fn credentials(&self) -> Credentials {
        let state = self.shared.lock();
        let password = state
            .users
            .get(&state.default_user)
            .map_or("", |user| user.password.as_str());
        Credentials::new(state.default_user.clone(), password)
    }

    /// Adds a user, or sets the password of an existing one (keeping its flags).
    pub fn add_user(&self, user: &str, password: &str) {
        let mut state = self.shared.lock();
        match state.users.get_mut(user) {
            Some(existing) => existing.password = password.to_owned(),
            None => {
                state.users.insert(user.to_owned(), User::new(password));
            }
        }
    }

    /// Marks the account's validity as expired (or valid again): its logins get `401`.
    ///
    /// # Panics
    ///
    /// If there is no such user.
    pub fn set_account_expired(&self, user: &str, expired: bool) {
        self.with_user("set_account_expired", user, |u| u.expired = expired);
    }

    /// Forbids the account to obtain tokens (or allows it again): its logins get `403`.
    ///
    /// # Panics
    ///
    /// If there is no such user.
    pub fn set_forbidden(&self, user: &str, forbidden: bool) {
        self.with_user("set_forbidden", user, |u| u.forbidden = forbidden);
    }

    fn with_user(&self, what: &str, user: &str, change: impl FnOnce(&mut User)) {
        let mut state = self.shared.lock();
        match state.users.get_mut(user) {
            Some(found) => change(found),
            None => {
                drop(state);
                panic!(
                    "ReferenceServer::{what}: there is no user '{user}'; add it with add_user first"
                );
            }
        }
    }

    /// The lifetime of tokens issued from now on (`expiresIn`). Default: one hour.
    ///
    /// `expiresIn` is written in seconds, with a decimal fraction when the lifetime has one
    /// (`"0.01"`, `"1.5"`); the server itself expires the token after exactly this duration on
    /// Tokio's clock. Tokens already granted keep their expiry.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Sleeps this long (on Tokio's clock) before answering each login. Default: no delay.
    pub fn set_login_delay(&self, delay: Duration) {
        self.shared.lock().login_delay = delay;
    }

    /// Adds up to this much random delay (on Tokio's clock) to each login, drawn uniformly
    /// from the server's random generator; see [`ReferenceServerBuilder::login_delay_jitter`].
    /// Default: none.
    pub fn set_login_delay_jitter(&self, jitter: Duration) {
        self.shared.lock().login_delay_jitter = jitter;
    }

    /// Answers this share of logins (`0.0` to `1.0`) with `500`, at random; see
    /// [`ReferenceServerBuilder::login_failure_rate`]. Default: `0.0`.
    ///
    /// # Panics
    ///
    /// If `rate` is not within `0.0..=1.0`.
    pub fn set_login_failure_rate(&self, rate: f64) {
        self.shared.lock().login_failure_rate = checked_rate(rate);
    }

    /// The format of `issued` and `expires` in token responses from now on. Default:
    /// [`TimestampFormat::Rfc3339`].
    pub fn set_timestamp_format(&self, format: TimestampFormat) {
        self.shared.lock().timestamp_format = format;
    }

    /// Which fields token responses carry from now on; see [`TokenFields`]. Default:
    /// [`TokenFields::Documented`].
    pub fn set_token_fields(&self, fields: TokenFields) {
        self.shared.lock().token_fields = fields;
    }

    /// Writes `issued` and `expires` at this offset from UTC from now on, in minutes east of
    /// UTC (`330` for `+05:30`, `-480` for `-08:00`); see
    /// [`ReferenceServerBuilder::timestamp_offset_minutes`]. Default: `0`, UTC.
    ///
    /// # Panics
    ///
    /// If the offset is a day or more either way.
    pub fn set_timestamp_offset_minutes(&self, minutes: i32) {
        self.shared.lock().timestamp_offset = clock::utc_offset(minutes);
    }

    /// Sets the server's wall clock this far ahead of ours from now on; see
    /// [`ReferenceServerBuilder::clock_ahead`]. Default: zero. Replaces any earlier offset;
    /// tokens already granted keep the `issued` and `expires` they were given.
    ///
    /// # Panics
    ///
    /// If `by` is more than 100 years.
    pub fn set_clock_ahead(&self, by: Duration) {
        self.shared.lock().clock.offset = clock::clock_offset(by, true);
    }

    /// Sets the server's wall clock this far behind ours from now on; see
    /// [`ReferenceServerBuilder::clock_behind`]. Default: zero. Replaces any earlier offset.
    ///
    /// # Panics
    ///
    /// If `by` is more than 100 years.
    pub fn set_clock_behind(&self, by: Duration) {
        self.shared.lock().clock.offset = clock::clock_offset(by, false);
    }

    /// What logins grant from now on; see [`TokenPolicy`]. Default: [`TokenPolicy::Fresh`].
    ///
    /// The policies share one record of each user's latest token, so after a switch to
    /// [`OneLivePerUser`](TokenPolicy::OneLivePerUser) the next login returns the token the user
    /// got last, if it is still valid.
    pub fn set_token_policy(&self, policy: TokenPolicy) {
        self.shared.lock().tokens.policy = policy;
    }

    /// Makes the protected endpoint refuse every token with `401` (or accept valid ones again),
    /// while logins keep succeeding: an API that has revoked the account's permission, or
    /// expects another audience. Default: `false`.
    pub fn set_reject_all_tokens(&self, reject: bool) {
        self.shared.lock().tokens.reject_all = reject;
    }

    /// Refuses the next `n` requests to the protected endpoint that carry a token it would
    /// otherwise accept ([`Rejection::Spurious`]); the tokens stay valid and are accepted again
    /// afterwards. Requests it refuses for another reason do not use them up. Replaces any count
    /// still pending; `0` cancels them. Default: none pending.
    pub fn reject_next_requests(&self, n: u64) {
        self.shared.lock().tokens.reject_next = n;
    }

    /// Refuses each token's `k`-th request (counting from 1 the requests that carried it while
    /// it was valid) once, spuriously, or stops doing so (`None`); see
    /// [`ReferenceServerBuilder::spurious_rejection_at`]. Default: `None`.
    ///
    /// # Panics
    ///
    /// If `k` is `Some(0)`.
    pub fn set_spurious_rejection_at(&self, k: Option<u64>) {
        self.shared.lock().tokens.spurious_at = checked_k(k);
    }

    /// Revokes every live token at random instants, at exponentially distributed intervals of
    /// this mean (a Poisson process, on Tokio's clock), from now on; `None` stops. The draws come
    /// from a generator of their own, seeded from the builder's [`seed`] when there is one, so
    /// the instants do not depend on the logins. [`revocations`](Self::revocations) lists the
    /// instants that hit a live token. Default: `None`.
    ///
    /// # Panics
    ///
    /// If the mean is zero.
    ///
    /// [`seed`]: ReferenceServerBuilder::seed
    pub fn set_random_revocations(&self, mean_interval: Option<Duration>) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.catch_up(now);
        let seed = state.revocation_seed;
        state.tokens.random =
            mean_interval.map(|mean| RandomRevocations::new(mean, now, revocation_rng(seed)));
    }

    /// Starts a login outage now, for `duration` on Tokio's clock: every login until then is
    /// answered as `kind` says, then the endpoint recovers by itself. Returns the outage's
    /// window, `now..now + duration`: a login at its end is answered normally. Replaces any
    /// outage going on or scheduled.
    ///
    /// Logins answered by an outage count in [`login_attempts`](Self::login_attempts) and in
    /// [`ServerStats::outage_answers`]; they are not delayed, take no draws from the random
    /// generator, and leave queued failures for later.
    ///
    /// # Panics
    ///
    /// If `kind` is an [`Outage::Status`] that is not an HTTP status code (`100..=999`).
    pub fn start_login_outage(&self, kind: Outage, duration: Duration) -> Range<Instant> {
        self.schedule_login_outage(kind, Instant::now(), duration)
    }

    /// Schedules a login outage from `start` for `duration` on Tokio's clock, as
    /// [`start_login_outage`](Self::start_login_outage) does from now. Returns its window.
    /// Replaces any outage going on or scheduled.
    ///
    /// # Panics
    ///
    /// If `kind` is an [`Outage::Status`] that is not an HTTP status code (`100..=999`).
    pub fn schedule_login_outage(
        &self,
        kind: Outage,
        start: Instant,
        duration: Duration,
    ) -> Range<Instant> {
        if let Outage::Status(status) = kind {
            assert!(
                StatusCode::from_u16(status).is_ok(),
                "ReferenceServer::schedule_login_outage: {status} is not an HTTP status code"
            );
        }
        let window = start..later(start, duration);
        self.shared.lock().outage = Some(OutageWindow {
            kind,
            window: window.clone(),
        });
        self.shared.outage_changed.notify_waiters();
        window
    }

    /// Ends the login outage now (or cancels a scheduled one). Logins held by an
    /// [`Outage::Hang`] have their connections closed.
    pub fn end_login_outage(&self) {
        self.shared.lock().outage = None;
        self.shared.outage_changed.notify_waiters();
    }

    /// The window of the login outage going on or scheduled, if any; `None` once it has ended.
    pub fn login_outage_window(&self) -> Option<Range<Instant>> {
        let mut state = self.shared.lock();
        state.catch_up(Instant::now());
        state.outage.as_ref().map(|outage| outage.window.clone())
    }

    /// When the login outage going on or scheduled ends (the first instant the login endpoint
    /// answers normally again), if there is one.
    pub fn login_outage_ends(&self) -> Option<Instant> {
        self.login_outage_window().map(|window| window.end)
    }

    /// Queues a failure for the next login; failures are used one per login, first in first
    /// out.
    ///
    /// # Panics
    ///
    /// If the failure's status is not a valid HTTP status (`100..=999`), or its `Retry-After`
    /// or `Content-Type` is not a valid header value: a misuse reported here rather than by a
    /// broken connection later.
    pub fn push_failure(&self, failure: Failure) {
        if let Failure::Status(status)
        | Failure::Body { status, .. }
        | Failure::OAuth2Error { status, .. } = &failure
        {
            assert!(
                StatusCode::from_u16(*status).is_ok(),
                "ReferenceServer::push_failure: {status} is not an HTTP status code"
            );
        }
        if let Failure::RateLimited { retry_after: value }
        | Failure::Body {
            content_type: value,
            ..
        } = &failure
        {
            assert!(
                HeaderValue::try_from(value.as_str()).is_ok(),
                "ReferenceServer::push_failure: {value:?} is not a valid header value"
            );
        }
        self.shared.lock().failures.push_back(failure);
    }

    /// Revokes a token: the protected endpoint refuses it from now on. Unknown and expired
    /// tokens are ignored.
    pub fn revoke(&self, token: &str) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.catch_up(now);
        state.tokens.revoke(token, now);
    }

    /// Revokes every live token of `user` (one, unless the policy grants several at once) and
    /// returns how many. The user's next login gets a new token, whatever the policy.
    pub fn revoke_user(&self, user: &str) -> usize {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.catch_up(now);
        state.tokens.revoke_live(Some(user), now)
    }

    /// Revokes every token live at `at` (on Tokio's clock), when that instant comes: the
    /// protected endpoint refuses them from `at` on, and a login at `at` or later gets a new
    /// token. An instant already past takes effect at once, as of that instant. Any number of
    /// revocations can be scheduled.
    pub fn schedule_revocation(&self, at: Instant) {
        let mut state = self.shared.lock();
        state.tokens.schedule_revocation(at);
        state.catch_up(Instant::now());
    }

    /// The instants (on Tokio's clock) at which a revocation revoked at least one live token,
    /// in order: from [`revoke`](Self::revoke), [`revoke_user`](Self::revoke_user),
    /// [`revoke_all`](Self::revoke_all), [scheduled](Self::schedule_revocation) and [random
    /// revocations](Self::set_random_revocations).
    pub fn revocations(&self) -> Vec<Instant> {
        let mut state = self.shared.lock();
        state.catch_up(Instant::now());
        state.tokens.revocations().to_vec()
    }

    /// What the protected endpoint would answer a request with `token` right now, without
    /// counting it: `Ok(())` for `200`, or why it would refuse. This includes a pending
    /// one-off [`Rejection::Spurious`]; [`accepts`](Self::accepts) leaves those out.
    pub fn verdict(&self, token: &str) -> Result<(), Rejection> {
        self.shared
            .lock()
            .verdict(Some(token), Instant::now(), false)
    }

    /// Whether the protected endpoint accepts `token` right now: a token this server issued,
    /// not revoked, not expired, and not refused by [`set_reject_all_tokens`]. One-off
    /// spurious refusals are left out (the token is still good); [`verdict`](Self::verdict)
    /// includes them.
    ///
    /// This is the server as a model, for tests that check a client never sends a token the
    /// server would refuse.
    ///
    /// [`set_reject_all_tokens`]: Self::set_reject_all_tokens
    pub fn accepts(&self, token: &str) -> bool {
        matches!(self.verdict(token), Ok(()) | Err(Rejection::Spurious))
    }

    /// The instant (on Tokio's clock) from which the server refuses `token` as expired, if it
    /// knows the token. A [sliding](TokenPolicy::Sliding) login moves it.
    pub fn token_expires_at(&self, token: &str) -> Option<Instant> {
        self.shared.lock().tokens.expires_at(token)
    }

    /// Makes the protected endpoint accept `token` for `lifetime` from now (on Tokio's clock),
    /// as if this server had issued it, and lists it in [`issued_tokens`](Self::issued_tokens).
    /// It does not count as a login.
    ///
    /// For tests that write a token response of their own with [`Failure::Body`] and still want
    /// its token to be accepted.
    pub fn register_token(&self, token: &str, lifetime: Duration) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.catch_up(now);
        state.tokens.register(token.to_owned(), now, lifetime);
    }

    /// Revokes every token issued so far.
    pub fn revoke_all(&self) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.catch_up(now);
        state.tokens.revoke_live(None, now);
    }

    /// A snapshot of all counters at once.
    pub fn stats(&self) -> ServerStats {
        self.shared.lock().stats.clone()
    }

    /// Successful logins: `200` token responses. With [`TokenPolicy::OneLivePerUser`] or
    /// [`TokenPolicy::Sliding`] several may carry the same token.
    pub fn logins(&self) -> u64 {
        self.shared.lock().stats.logins
    }

    /// Successful logins of `user`; `0` for an unknown user.
    pub fn logins_of(&self, user: &str) -> u64 {
        self.shared.lock().users.get(user).map_or(0, |u| u.logins)
    }

    /// When each `POST` to the login endpoint arrived (on Tokio's clock, once its body was
    /// read), whatever its outcome, in order.
    pub fn login_attempt_instants(&self) -> Vec<Instant> {
        self.shared.lock().login_attempt_instants.clone()
    }

    /// The most login attempts that arrived within any span of `window` (a sliding window
    /// `[t, t + window)`): with one second, the peak login rate per second. `0` for an empty
    /// window.
    pub fn max_login_attempts_within(&self, window: Duration) -> usize {
        super::most_within(&self.shared.lock().login_attempt_instants, window)
    }

    /// Every `POST` to the login endpoint, whatever its outcome.
    pub fn login_attempts(&self) -> u64 {
        self.shared.lock().stats.login_attempts
    }

    /// Requests to the protected endpoint accepted with `200`.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().stats.accepted
    }

    /// Requests to the protected endpoint refused with `401`.
    pub fn rejections(&self) -> u64 {
        self.shared.lock().stats.rejections
    }

    /// Logins answered `500` at random by the [login failure
    /// rate](ReferenceServerBuilder::login_failure_rate), not counting queued failures.
    pub fn injected_failures(&self) -> u64 {
        self.shared.lock().injected_failures
    }

    /// The most login requests the server was ever answering at once: `1` for a client that
    /// never has two logins in flight.
    pub fn max_concurrent_logins(&self) -> u64 {
        self.shared.lock().max_logins_in_flight
    }

    /// Every distinct token issued, in the order first granted. For tests that check a token
    /// never leaks into a log or an error.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.issued().to_vec()
    }

    /// The headers of the most recent `POST` to the login endpoint, if there was one.
    pub fn last_login_headers(&self) -> Option<HeaderMap> {
        self.shared.lock().last_login_headers.clone()
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        // Closes the listener; dropping `_shutdown` right after ends every connection.
        self.accept_task.abort();
    }
}

impl fmt::Debug for ReferenceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReferenceServer")
            .field("addr", &self.addr)
            .field("state", &*self.shared.lock())
            .finish()
    }
}

/// Configures a [`ReferenceServer`] before it starts; from [`ReferenceServer::builder`].
#[derive(Clone)]
#[must_use = "call start() to run the server"]
pub struct ReferenceServerBuilder {
    users: Vec<(String, String)>,
    token_lifetime: Duration,
    login_delay: Duration,
    login_delay_jitter: Duration,
    login_failure_rate: f64,
    seed: Option<u64>,
    timestamp_format: TimestampFormat,
    token_fields: TokenFields,
    timestamp_offset_minutes: i32,
    clock_offset: jiff::SignedDuration,
    numeric_fields: bool,
    whole_seconds: bool,
    jwt_tokens: bool,
    token_policy: TokenPolicy,
    reject_all_tokens: bool,
    spurious_rejection_at: Option<u64>,
    random_revocations: Option<Duration>,
    oauth2_scopes: Option<Vec<String>>,
    transport: Transport,
}

impl ReferenceServerBuilder {
    /// The scopes the [OAuth2 endpoint](ReferenceServer::oauth2_token_url) grants: a request
    /// for any other scope gets `400 invalid_scope`. Default: any scope is granted.
    pub fn oauth2_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.oauth2_scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Adds a user. The first call replaces the default user `alice` (password `wonderland`),
    /// and its user becomes the one [`ReferenceServer::credentials`] returns; later calls add
    /// more users.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// The lifetime of issued tokens. Default: one hour (`"expiresIn":"3600"`).
    ///
    /// Sub-second lifetimes work: `Duration::from_millis(10)` gives `"expiresIn":"0.01"`, and
    /// the server refuses the token exactly 10 ms after the login on Tokio's clock.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sleeps this long (on Tokio's clock) before answering each login. Default: no delay.
    pub fn login_delay(mut self, delay: Duration) -> Self {
        self.login_delay = delay;
        self
    }

    /// Adds up to this much random delay (on Tokio's clock) to each login, on top of
    /// [`login_delay`](Self::login_delay). Default: none.
    ///
    /// With `login_delay(100 ms)` and `login_delay_jitter(200 ms)`, each login takes between
    /// 100 ms and 300 ms, drawn uniformly.
    pub fn login_delay_jitter(mut self, jitter: Duration) -> Self {
        self.login_delay_jitter = jitter;
        self
    }

    /// Answers this share of logins (`0.0` to `1.0`) with `500 Internal Server Error`, at
    /// random, as a flaky login endpoint would. Default: `0.0`.
    ///
    /// Failures queued with [`ReferenceServer::push_failure`] come first; the dice decide only
    /// logins with nothing queued. [`ReferenceServer::injected_failures`] counts them.
    ///
    /// # Panics
    ///
    /// If `rate` is not within `0.0..=1.0`.
    pub fn login_failure_rate(mut self, rate: f64) -> Self {
        self.login_failure_rate = checked_rate(rate);
        self
    }

    /// Seeds the server's random generator, which draws the [login delay
    /// jitter](Self::login_delay_jitter) and the [random failures](Self::login_failure_rate),
    /// two draws per login in the order logins arrive. With a seed, a client that logs in one
    /// login at a time sees the same delays and failures on every run. The [random
    /// revocations](Self::random_revocations) have a generator of their own, seeded from this
    /// seed too. Default: a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The format of `issued` and `expires`. Default: [`TimestampFormat::Rfc3339`].
    pub fn timestamp_format(mut self, format: TimestampFormat) -> Self {
        self.timestamp_format = format;
        self
    }

    /// Which fields token responses carry: the documented ones, `expires` alone, or the OAuth2
    /// names. See [`TokenFields`]. Default: [`TokenFields::Documented`].
    pub fn token_fields(mut self, fields: TokenFields) -> Self {
        self.token_fields = fields;
        self
    }

    /// Writes `issued` and `expires` at this offset from UTC, in minutes east of UTC: `330`
    /// writes `2024-05-01T17:30:00+05:30` for noon UTC, `-480` writes
    /// `2024-05-01T04:00:00-08:00`. Default: `0`, UTC (`2024-05-01T12:00:00Z`).
    ///
    /// The instant stays the same in the RFC 3339 formats, which write the offset.
    /// [`TimestampFormat::Iso8601NoOffset`] writes the civil time at the offset with no marker,
    /// as a server that writes its local time does: read as UTC, it is off by the offset. HTTP
    /// dates are always GMT and epoch numbers have no zone, so the offset does not change them.
    ///
    /// # Panics
    ///
    /// If the offset is a day or more either way.
    pub fn timestamp_offset_minutes(mut self, minutes: i32) -> Self {
        clock::utc_offset(minutes);
        self.timestamp_offset_minutes = minutes;
        self
    }

    /// Sets the server's wall clock this far ahead of ours: `issued`, `expires` and the `Date`
    /// header of every response are shifted by it. Tokens still expire after their lifetime on
    /// Tokio's clock, as `expiresIn` says. Default: zero. Replaces an earlier
    /// [`clock_behind`](Self::clock_behind).
    ///
    /// # Panics
    ///
    /// If `by` is more than 100 years.
    pub fn clock_ahead(mut self, by: Duration) -> Self {
        self.clock_offset = clock::clock_offset(by, true);
        self
    }

    /// Sets the server's wall clock this far behind ours; see [`clock_ahead`](Self::clock_ahead).
    /// Default: zero.
    ///
    /// # Panics
    ///
    /// If `by` is more than 100 years.
    pub fn clock_behind(mut self, by: Duration) -> Self {
        self.clock_offset = clock::clock_offset(by, false);
        self
    }

    /// What a login grants while the user already holds a valid token: a new token each time,
    /// the same one with what is left of its life, a new one bound to the session's expiry, or
    /// the same one with its expiry pushed forward. See [`TokenPolicy`]. Default:
    /// [`TokenPolicy::Fresh`].
    pub fn token_policy(mut self, policy: TokenPolicy) -> Self {
        self.token_policy = policy;
        self
    }

    /// Makes the protected endpoint refuse every token with `401` while logins keep succeeding;
    /// see [`ReferenceServer::set_reject_all_tokens`]. Default: `false`.
    pub fn reject_all_tokens(mut self, reject: bool) -> Self {
        self.reject_all_tokens = reject;
        self
    }

    /// Refuses each token's `k`-th request once, spuriously: counting from 1 the requests that
    /// carried the token while it was valid, the `k`-th gets `401` ([`Rejection::Spurious`]),
    /// and the `k + 1`-th is accepted again. With `k = 1`, each new token's first request is
    /// refused. Default: no spurious refusals.
    ///
    /// # Panics
    ///
    /// If `k` is `0`.
    pub fn spurious_rejection_at(mut self, k: u64) -> Self {
        self.spurious_rejection_at = checked_k(Some(k));
        self
    }

    /// Revokes every live token at random instants, at exponentially distributed intervals of
    /// this mean on Tokio's clock, from the server's start; see
    /// [`ReferenceServer::set_random_revocations`]. Seeded by [`seed`](Self::seed). Default: no
    /// random revocations.
    ///
    /// # Panics
    ///
    /// If the mean is zero.
    pub fn random_revocations(mut self, mean_interval: Duration) -> Self {
        assert!(
            !mean_interval.is_zero(),
            "ReferenceServer: the mean interval between random revocations must be positive"
        );
        self.random_revocations = Some(mean_interval);
        self
    }

    /// Writes `expiresIn` (and epoch timestamps) as JSON numbers rather than strings.
    /// Default: `false`, strings as in the API's example (`"expiresIn":"3600"`).
    pub fn numeric_fields(mut self, numeric: bool) -> Self {
        self.numeric_fields = numeric;
        self
    }

    /// Writes `expiresIn` in whole seconds, rounded down (`"63"` for a token with 63.9 s left), as
    /// many servers do; OAuth2's `expires_in` always is. Default: `false`, with the fraction of
    /// a second a token has left (`"63.9"`), and whole seconds only for a whole lifetime.
    pub fn whole_seconds(mut self, whole: bool) -> Self {
        self.whole_seconds = whole;
        self
    }

    /// Issues JWT-shaped tokens, `base64url(header).base64url({"sub","iat","exp"}).signature`,
    /// with a random signature that nothing checks. Default: `false`, opaque random tokens of
    /// 43 URL-safe characters.
    pub fn jwt_tokens(mut self, jwt: bool) -> Self {
        self.jwt_tokens = jwt;
        self
    }

    /// Serves HTTPS instead of plain HTTP, with the certificate chain and the private key given
    /// in PEM (the server's certificate first). Default: plain HTTP.
    ///
    /// [`base_url`](ReferenceServer::base_url) becomes `https://127.0.0.1:PORT`, so a client
    /// that connects by that URL needs a certificate naming the IP address `127.0.0.1`; one
    /// that resolves a name of its own to `127.0.0.1` needs the certificate to name that name.
    /// The server speaks HTTP/1.1 (ALPN `http/1.1`), on rustls with the aws-lc-rs provider. A
    /// client that refuses the certificate ends the connection during the handshake; nothing
    /// reaches the handler or its counters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower_authtoken::testing::ReferenceServer;
    ///
    /// let cert = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    /// let server = ReferenceServer::builder()
    ///     .tls(cert.cert.pem(), cert.signing_key.serialize_pem())
    ///     .start()
    ///     .await;
    /// assert!(server.base_url().starts_with("https://127.0.0.1:"));
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `cert_chain_pem` holds no certificate, `private_key_pem` holds no private key, or
    /// rustls refuses the pair.
    #[cfg(feature = "test-util-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util-tls")))]
    pub fn tls(
        mut self,
        cert_chain_pem: impl AsRef<[u8]>,
        private_key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.transport = Transport::tls(cert_chain_pem.as_ref(), private_key_pem.as_ref());
        self
    }

    /// Binds `127.0.0.1` on a free port and starts serving.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime, or if no port on `127.0.0.1` can be bound.
    pub async fn start(self) -> ReferenceServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("ReferenceServer: could not bind a port on 127.0.0.1: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("ReferenceServer: the listener has no address: {e}"));

        let mut users = HashMap::new();
        let mut list = self.users;
        if list.is_empty() {
            list.push((DEFAULT_USER.to_owned(), DEFAULT_PASSWORD.to_owned()));
        }
        let default_user = list[0].0.clone();
        for (name, password) in list {
            users.insert(name, User::new(&password));
        }
        let now = Instant::now();
        let mut tokens = Tokens::new(self.token_policy);
        tokens.reject_all = self.reject_all_tokens;
        tokens.spurious_at = self.spurious_rejection_at;
        tokens.random = self
            .random_revocations
            .map(|mean| RandomRevocations::new(mean, now, revocation_rng(self.seed)));
        let shared = Arc::new(Shared::new(State {
            users,
            default_user,
            token_lifetime: self.token_lifetime,
            login_delay: self.login_delay,
            login_delay_jitter: self.login_delay_jitter,
            login_failure_rate: self.login_failure_rate,
            rng: match self.seed {
                Some(seed) => fastrand::Rng::with_seed(seed),
                None => fastrand::Rng::new(),
            },
            injected_failures: 0,
            logins_in_flight: 0,
            max_logins_in_flight: 0,
            revocation_seed: self.seed,
            timestamp_format: self.timestamp_format,
            token_fields: self.token_fields,
            timestamp_offset: clock::utc_offset(self.timestamp_offset_minutes),
            numeric_fields: self.numeric_fields,
            whole_seconds: self.whole_seconds,
            jwt_tokens: self.jwt_tokens,
            failures: VecDeque::new(),
            tokens,
            clock: WallClock::start(self.clock_offset),
            outage: None,
            login_attempt_instants: Vec::new(),
            stats: ServerStats::default(),
            last_login_headers: None,
            last_login_path: None,
            oauth2_scopes: self.oauth2_scopes,
            last_oauth2_form: None,
        }));

        let (shutdown, stopped) = watch::channel(());
        let scheme = self.transport.scheme();
        let accept_task = tokio::spawn(accept_loop(
            listener,
            self.transport,
            Arc::clone(&shared),
            stopped,
        ));
        ReferenceServer {
            addr,
            scheme,
            shared,
            accept_task,
            _shutdown: shutdown,
        }
    }
}

impl fmt::Debug for ReferenceServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ReferenceServerBuilder")
            .field("users", &users)
            .field("token_lifetime", &self.token_lifetime)
            .field("login_delay", &self.login_delay)
            .field("login_delay_jitter", &self.login_delay_jitter)
            .field("login_failure_rate", &self.login_failure_rate)
            .field("seed", &self.seed)
            .field("timestamp_format", &self.timestamp_format)
            .field("token_fields", &self.token_fields)
            .field("timestamp_offset_minutes", &self.timestamp_offset_minutes)
            .field("clock_offset", &self.clock_offset)
            .field("numeric_fields", &self.numeric_fields)
            .field("whole_seconds", &self.whole_seconds)
            .field("jwt_tokens", &self.jwt_tokens)
            .field("token_policy", &self.token_policy)
            .field("reject_all_tokens", &self.reject_all_tokens)
            .field("spurious_rejection_at", &self.spurious_rejection_at)
            .field("random_revocations", &self.random_revocations)
            .field("oauth2_scopes", &self.oauth2_scopes)
            .field("scheme", &self.transport.scheme())
            .finish()
    }
}

/// `rate` if it is a share, `0.0..=1.0`.
fn checked_rate(rate: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&rate),
        "ReferenceServer: the login failure rate must be within 0.0..=1.0, not {rate}"
    );
    rate
}

/// `k` if it numbers a request (from 1).
fn checked_k(k: Option<u64>) -> Option<u64> {
    assert!(
        k != Some(0),
        "ReferenceServer: requests are counted from 1, so a spurious rejection at 0 never happens"
    );
    k
}

/// The generator of random revocations: from the builder's seed if there is one, kept apart
/// from the login draws.
fn revocation_rng(seed: Option<u64>) -> fastrand::Rng {
    match seed {
        Some(seed) => fastrand::Rng::with_seed(seed ^ 0x7265_766f_6b65_2121),
        None => fastrand::Rng::new(),
    }
}

/// How the server speaks on a connection: plain HTTP, or HTTPS with the `test-util-tls` feature.
#[derive(Clone, Default)]
struct Transport {
    #[cfg(feature = "test-util-tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Transport {
    /// HTTPS with this certificate chain and key, both PEM; panics on bad input.
    #[cfg(feature = "test-util-tls")]
    fn tls(cert_chain_pem: &[u8], private_key_pem: &[u8]) -> Transport {
        use tokio_rustls::rustls::ServerConfig;
        use tokio_rustls::rustls::crypto::aws_lc_rs;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("ReferenceServer: the certificate chain is not PEM: {e}"));
        assert!(
            !certs.is_empty(),
            "ReferenceServer: the certificate chain holds no certificate"
        );
        // The error names what is wrong with the PEM, never the key's bytes.
        let key = PrivateKeyDer::from_pem_slice(private_key_pem)
            .unwrap_or_else(|e| panic!("ReferenceServer: no private key in the PEM given: {e}"));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
                .unwrap_or_else(|e| panic!("ReferenceServer: rustls refused the certificate: {e}"));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Transport {
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        }
    }

    fn scheme(&self) -> &'static str {
        #[cfg(feature = "test-util-tls")]
        if self.tls.is_some() {
            return "https";
        }
        "http"
    }

    /// Serves one connection until it ends: after the TLS handshake, if there is one.
    async fn serve(self, stream: TcpStream, shared: Arc<Shared>) {
        #[cfg(feature = "test-util-tls")]
        if let Some(acceptor) = self.tls {
            // A client that refuses the certificate ends the handshake, and the connection.
            if let Ok(stream) = acceptor.accept(stream).await {
                serve_http(TokioIo::new(stream), shared).await;
            }
            return;
        }
        serve_http(TokioIo::new(stream), shared).await;
    }
}

/// Serves HTTP/1.1 on one connection until it ends; a connection error (the client went away, a
/// deliberate close) just ends it.
async fn serve_http<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let service = service_fn(move |request| handler::handle(Arc::clone(&shared), request));
    // The handler writes `Date` from the server's own (possibly offset) clock.
    let _ = http1::Builder::new()
        .auto_date_header(false)
        .serve_connection(io, service)
        .await;
}

/// Accepts connections until the server is dropped, one task per connection.
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    stopped: watch::Receiver<()>,
) {
    loop {
        let mut stop = stopped.clone();
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let connection = transport.clone().serve(stream, Arc::clone(&shared));
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = stop.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_lists_users_but_never_passwords() {
        let server = ReferenceServer::builder()
            .user("carol", "pa55-carol-secret")
            .user("dave", "pa55-dave-secret")
            .start()
            .await;
        let debug = format!("{server:?} {server:#?}");
        assert!(debug.contains("carol") && debug.contains("dave"), "{debug}");
        assert!(!debug.contains("pa55"), "{debug}");
        let builder = ReferenceServer::builder().user("erin", "pa55-erin");
        assert!(!format!("{builder:?}").contains("pa55"));
    }

    #[cfg(feature = "test-util-tls")]
    #[test]
    #[should_panic(expected = "the certificate chain holds no certificate")]
    fn tls_without_a_certificate_panics_naming_what_is_missing() {
        let _ = ReferenceServer::builder().tls("", "");
    }

    #[cfg(feature = "test-util-tls")]
    #[test]
    #[should_panic(expected = "no private key in the PEM given")]
    fn tls_without_a_private_key_panics_naming_what_is_missing() {
        // A certificate's PEM where the key should be: no key in it.
        const CERT: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let _ = ReferenceServer::builder().tls(CERT, CERT);
    }

    #[tokio::test]
    async fn the_first_builder_user_replaces_alice() {
        let server = ReferenceServer::builder()
            .user("carol", "c")
            .user("dave", "d")
            .start()
            .await;
        assert_eq!(server.credentials().user_name(), "carol");
        assert_eq!(server.credentials().password(), "c");
        assert!(!server.shared.lock().users.contains_key("alice"));
        let default = ReferenceServer::start().await;
        assert_eq!(default.credentials().user_name(), "alice");
        assert_eq!(default.credentials().password(), "wonderland");
        assert!(default.base_url().starts_with("http://127.0.0.1:"));
        assert_eq!(default.protected_url(), default.base_url() + "/protected");
    }

    #[tokio::test]
    #[should_panic(expected = "there is no user 'nobody'")]
    async fn flagging_an_unknown_user_panics_with_a_clear_message() {
        ReferenceServer::start().await.set_forbidden("nobody", true);
    }

    /// Sends one login for `alice` over a raw socket and returns the status code.
    async fn raw_login(addr: SocketAddr) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = r#"{"userName":"alice","password":"wonderland"}"#;
        let request = format!(
            "POST /authtoken HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// The statuses of `n` logins in a row.
    async fn statuses(server: &ReferenceServer, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(raw_login(server.addr()).await);
        }
        out
    }

    #[tokio::test]
    async fn a_seeded_failure_rate_fails_the_same_logins_on_every_run() {
        let start = || {
            ReferenceServer::builder()
                .login_failure_rate(0.3)
                .seed(7)
                .start()
        };
        let (a, b) = (start().await, start().await);
        let first = statuses(&a, 40).await;
        assert_eq!(first, statuses(&b, 40).await);
        let failed = first.iter().filter(|&&s| s == 500).count() as u64;
        assert!((1..40).contains(&failed), "{first:?}");
        assert!(first.iter().all(|&s| s == 200 || s == 500), "{first:?}");
        assert_eq!(a.injected_failures(), failed);
        assert_eq!(a.logins(), 40 - failed);
    }

    #[tokio::test]
    async fn queued_failures_come_before_random_ones_and_rates_can_change() {
        let server = ReferenceServer::builder()
            .login_failure_rate(1.0)
            .start()
            .await;
        server.push_failure(Failure::Status(403));
        assert_eq!(statuses(&server, 3).await, [403, 500, 500]);
        assert_eq!(server.injected_failures(), 2);
        server.set_login_failure_rate(0.0);
        assert_eq!(statuses(&server, 2).await, [200, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_logins_take_between_the_delay_and_the_delay_plus_the_jitter() {
        let server = ReferenceServer::builder()
            .login_delay(Duration::from_millis(100))
            .login_delay_jitter(Duration::from_millis(200))
            .seed(1)
            .start()
            .await;
        let mut took = Vec::new();
        for _ in 0..20 {
            let started = tokio::time::Instant::now();
            assert_eq!(raw_login(server.addr()).await, 200);
            took.push(started.elapsed());
        }
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(300));
        assert!(took.iter().all(|t| (min..=max).contains(t)), "{took:?}");
        assert!(took.iter().any(|t| *t != took[0]), "jittered: {took:?}");
        server.set_login_delay_jitter(Duration::ZERO);
        server.set_login_delay(Duration::ZERO);
        let started = tokio::time::Instant::now();
        raw_login(server.addr()).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_logins_are_counted_at_their_peak() {
        let server = ReferenceServer::builder()
            .login_delay(Duration::from_millis(50))
            .start()
            .await;
        raw_login(server.addr()).await;
        assert_eq!(server.max_concurrent_logins(), 1);
        let addr = server.addr();
        let logins: Vec<_> = (0..3).map(|_| tokio::spawn(raw_login(addr))).collect();
        for login in logins {
            assert_eq!(login.await.unwrap(), 200);
        }
        assert_eq!(server.max_concurrent_logins(), 3);
        assert_eq!(server.shared.lock().logins_in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn registered_tokens_are_accepted_until_their_lifetime_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = ReferenceServer::start().await;
        server.register_token("hand-made-token", Duration::from_secs(10));
        assert_eq!(server.issued_tokens(), ["hand-made-token"]);
        assert_eq!(server.logins(), 0);
        let status = || async {
            let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
            stream
                .write_all(b"GET /protected HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer hand-made-token\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response[9..12].to_owned()
        };
        assert_eq!(status().await, "200");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(status().await, "401");
    }

    #[test]
    #[should_panic(expected = "must be within 0.0..=1.0")]
    fn a_failure_rate_outside_zero_to_one_panics() {
        let _ = ReferenceServer::builder().login_failure_rate(1.5);
    }

    #[tokio::test]
    #[should_panic(expected = "is not an HTTP status code")]
    async fn pushing_an_invalid_status_panics() {
        ReferenceServer::start()
            .await
            .push_failure(Failure::Status(42));
    }
}
