//! The reference server's state and how it answers one request.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::clock::{self, WallClock};
use super::tokens::Tokens;
use super::{Failure, Outage, Rejection, ServerStats, TimestampFormat, TokenFields};

/// The largest request body the server reads.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// The length of an opaque token: 43 url-safe characters, 258 random bits.
const TOKEN_CHARS: usize = 43;

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(super) const MSG_INVALID_GRANT: &str = "Invalid grant type";
pub(super) const MSG_AUTH_FAILED: &str = "Authentication Failed or Account validity Expired";
pub(super) const MSG_FORBIDDEN: &str = "Forbidden - Access denied";
pub(super) const MSG_INTERNAL: &str = "Internal Server Error";

/// What the server knows, shared by the handle and every connection.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Wakes the logins held by an [`Outage::Hang`] when the outage changes.
    pub(super) outage_changed: Notify,
}

pub(super) struct State {
    pub(super) users: HashMap<String, User>,
    pub(super) default_user: String,
    pub(super) token_lifetime: Duration,
    pub(super) login_delay: Duration,
    /// Up to this much extra delay, drawn uniformly from `rng` for each login.
    pub(super) login_delay_jitter: Duration,
    /// The share of logins, drawn from `rng`, answered `500` when no failure is queued.
    pub(super) login_failure_rate: f64,
    /// Draws the jitter and the random failures, two draws per login in arrival order.
    pub(super) rng: fastrand::Rng,
    /// The builder's seed, for the generator of random revocations.
    pub(super) revocation_seed: Option<u64>,
    /// Logins answered `500` by `login_failure_rate`.
    pub(super) injected_failures: u64,
    /// Login requests being answered right now, and the most there ever were at once.
    pub(super) logins_in_flight: u64,
    pub(super) max_logins_in_flight: u64,
    pub(super) timestamp_format: TimestampFormat,
    pub(super) token_fields: TokenFields,
    /// The offset from UTC that `issued` and `expires` are written at.
    pub(super) timestamp_offset: jiff::tz::Offset,
    pub(super) numeric_fields: bool,
    /// `expiresIn` in whole seconds, rounded down.
    pub(super) whole_seconds: bool,
    pub(super) jwt_tokens: bool,
    pub(super) failures: VecDeque<Failure>,
    pub(super) tokens: Tokens,
    /// The server's wall clock, for `issued`, `expires` and `Date`.
    pub(super) clock: WallClock,
    /// The current or coming login outage.
    pub(super) outage: Option<OutageWindow>,
    /// When each login attempt arrived, in order.
    pub(super) login_attempt_instants: Vec<Instant>,
    pub(super) stats: ServerStats,
    pub(super) last_login_headers: Option<HeaderMap>,
    /// The path of the most recent login request, on either endpoint.
    pub(super) last_login_path: Option<String>,
    /// The scopes the OAuth2 endpoint grants; `None`: any scope.
    pub(super) oauth2_scopes: Option<Vec<String>>,
    /// The decoded form of the most recent OAuth2 token request.
    pub(super) last_oauth2_form: Option<Vec<(String, String)>>,
}

/// Which login endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `POST .../authtoken` with a JSON body.
    AuthToken,
    /// `POST .../oauth2/token` with a form body (RFC 6749 §4.4).
    OAuth2,
}

/// The path of the OAuth2 token endpoint (any path that ends with it works too).
pub(super) const OAUTH2_TOKEN_PATH: &str = "/oauth2/token";

/// A login outage: logins during `window` get `kind`.
#[derive(Debug, Clone)]
pub(super) struct OutageWindow {
    pub(super) kind: Outage,
    pub(super) window: Range<Instant>,
}

impl State {
    /// Brings the state to `now`: applies the revocations due, and forgets an outage that has
    /// ended. Called before anything reads or changes the state.
    pub(super) fn catch_up(&mut self, now: Instant) {
        self.tokens.apply_due_revocations(now);
        if self.outage.as_ref().is_some_and(|o| o.window.end <= now) {
            self.outage = None;
        }
    }

    /// The outage answering a login at `now`, if one is going on.
    fn outage_at(&self, now: Instant) -> Option<&OutageWindow> {
        self.outage.as_ref().filter(|o| o.window.contains(&now))
    }

    /// What the protected endpoint answers `token` at `now`; with `count`, counted as a request.
    pub(super) fn verdict(
        &mut self,
        token: Option<&str>,
        now: Instant,
        count: bool,
    ) -> Result<(), Rejection> {
        self.catch_up(now);
        self.tokens.verdict(token, now, count)
    }
}

pub(super) struct User {
    pub(super) password: String,
    pub(super) expired: bool,
    pub(super) forbidden: bool,
    /// Successful logins of this user.
    pub(super) logins: u64,
}

impl User {
    pub(super) fn new(password: &str) -> User {
        User {
            password: password.to_owned(),
            expired: false,
            forbidden: false,
            logins: 0,
        }
    }
}

impl Shared {
    pub(super) fn new(state: State) -> Shared {
        Shared {
            state: Mutex::new(state),
            outage_changed: Notify::new(),
        }
    }

    /// Locks the state. Never held across an `.await`. A panic elsewhere while it was held (a
    /// failing assertion in a test) does not make the server unusable.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("State")
            .field("users", &users)
            .field("token_lifetime", &self.token_lifetime)
            .field("login_delay", &self.login_delay)
            .field("login_delay_jitter", &self.login_delay_jitter)
            .field("login_failure_rate", &self.login_failure_rate)
            .field("timestamp_format", &self.timestamp_format)
            .field("token_fields", &self.token_fields)
            .field("timestamp_offset", &self.timestamp_offset)
            .field("clock_offset", &self.clock.offset)
            .field("numeric_fields", &self.numeric_fields)
            .field("whole_seconds", &self.whole_seconds)
            .field("jwt_tokens", &self.jwt_tokens)
            .field("token_policy", &self.tokens.policy)
            .field("reject_all_tokens", &self.tokens.reject_all)
            .field("pending_spurious_rejections", &self.tokens.reject_next)
            .field("spurious_rejection_at", &self.tokens.spurious_at)
            .field(
                "random_revocations_mean",
                &self.tokens.random.as_ref().map(|r| r.mean()),
            )
            .field("login_outage", &self.outage)
            .field("queued_failures", &self.failures.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The error that makes hyper close the connection without answering.
#[derive(Debug)]
pub(super) struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed on purpose by the reference server")
    }
}

impl std::error::Error for CloseConnection {}

/// A response body: one chunk, with or without a known length.
///
/// Without a known length, hyper uses the `Content-Length` header we set (for a truncated body),
/// or chunked encoding when there is none.
pub(super) struct ResponseBody {
    data: Option<Bytes>,
    sized: bool,
}

impl ResponseBody {
    fn sized(data: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            data: Some(data.into()),
            sized: true,
        }
    }

    fn unknown_length(data: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            data: Some(data.into()),
            sized: false,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let data = self.get_mut().data.take().filter(|d| !d.is_empty());
        Poll::Ready(data.map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
        } else {
            SizeHint::default()
        }
    }
}

type Answer = Result<Response<ResponseBody>, CloseConnection>;

/// Answers one request, with a `Date` header from the server's wall clock.
pub(super) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    let endpoint = if path.ends_with(OAUTH2_TOKEN_PATH) {
        Some(Endpoint::OAuth2)
    } else if path.ends_with("/authtoken") {
        Some(Endpoint::AuthToken)
    } else {
        None
    };
    let mut answer = if let Some(endpoint) = endpoint {
        if request.method() == Method::POST {
            login(&shared, endpoint, request).await
        } else {
            let mut response = json_message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            Ok(response)
        }
    } else {
        protected(&shared, request).await
    };
    if let Ok(response) = &mut answer {
        let now = shared.lock().clock.at(Instant::now());
        let date = HeaderValue::try_from(clock::http_date(now)).expect("an HTTP date is ASCII");
        response.headers_mut().insert(header::DATE, date);
    }
    answer
}

async fn login(shared: &Shared, endpoint: Endpoint, request: Request<Incoming>) -> Answer {
    let _in_flight = InFlight::enter(shared);
    let (parts, body) = request.into_parts();
    // A body that breaks off or is too large is answered like any other bad grant.
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();

    let now = Instant::now();
    let (failure, delay) = {
        let mut state = shared.lock();
        state.catch_up(now);
        state.stats.login_attempts += 1;
        state.login_attempt_instants.push(now);
        state.last_login_headers = Some(parts.headers.clone());
        state.last_login_path = Some(parts.uri.path().to_owned());
        if let Some(outage) = state.outage_at(now) {
            let kind = outage.kind;
            state.stats.outage_answers += 1;
            (Err(kind), Duration::ZERO)
        } else {
            // Two draws for every login, whatever is queued, so that a seed fixes the whole sequence.
            let roll = state.rng.f64();
            let jitter = state.login_delay_jitter.mul_f64(state.rng.f64());
            let queued = state.failures.pop_front();
            let failure = match queued {
                None if roll < state.login_failure_rate => {
                    state.injected_failures += 1;
                    Some(Failure::Status(500))
                }
                queued => queued,
            };
            (Ok(failure), state.login_delay.saturating_add(jitter))
        }
    };
    let failure = match failure {
        Ok(failure) => failure,
        Err(outage) => return answer_outage(shared, outage).await,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let answer = |body: &[u8]| match endpoint {
        Endpoint::AuthToken => answer_login(shared, body),
        Endpoint::OAuth2 => answer_oauth2(shared, &parts.headers, body),
    };
    let Some(failure) = failure else {
        return Ok(answer(&body));
    };
    match failure {
        Failure::Delay(extra) => {
            tokio::time::sleep(extra).await;
            Ok(answer(&body))
        }
        Failure::OAuth2Error {
            status,
            error,
            description,
        } => {
            let status = StatusCode::from_u16(status).expect("checked by push_failure");
            Ok(oauth2_error(status, &error, description.as_deref()))
        }
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).expect("checked by push_failure");
            let message = match code {
                400 => MSG_INVALID_GRANT.to_owned(),
                401 => MSG_AUTH_FAILED.to_owned(),
                403 => MSG_FORBIDDEN.to_owned(),
                404 => unknown_user_message(
                    &serde_json::from_slice::<LoginRequest>(&body)
                        .map(|login| login.user_name)
                        .unwrap_or_default(),
                ),
                500 => MSG_INTERNAL.to_owned(),
                _ => status
                    .canonical_reason()
                    .map_or_else(|| format!("Error {code}"), str::to_owned),
            };
            Ok(json_message(status, &message))
        }
        Failure::RateLimited { retry_after } => {
            let mut response = json_message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            let value = HeaderValue::try_from(retry_after).expect("checked by push_failure");
            response.headers_mut().insert(header::RETRY_AFTER, value);
            Ok(response)
        }
        Failure::Hang => std::future::pending().await,
        Failure::MalformedJson => Ok(response(
            StatusCode::OK,
            "application/json",
            ResponseBody::sized(r#"{"type":"Bearer","token":"abc","expiresIn":"3600""#),
        )),
        Failure::TruncatedBody => {
            let sent = r#"{"type":"Bearer","token":"#;
            let mut response = response(
                StatusCode::OK,
                "application/json",
                ResponseBody::unknown_length(sent),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(sent.len() + 100));
            Ok(response)
        }
        Failure::CloseConnection => Err(CloseConnection),
        Failure::Body {
            status,
            content_type,
            body,
        } => {
            let status = StatusCode::from_u16(status).expect("checked by push_failure");
            let mut response = Response::new(ResponseBody::sized(body));
            *response.status_mut() = status;
            let value = HeaderValue::try_from(content_type).expect("checked by push_failure");
            response.headers_mut().insert(header::CONTENT_TYPE, value);
            Ok(response)
        }
    }
}

/// Answers a login that arrived during an outage of this kind.
async fn answer_outage(shared: &Shared, kind: Outage) -> Answer {
    match kind {
        Outage::Status(code) => {
            let status = StatusCode::from_u16(code).expect("checked by start_login_outage");
            let message = status
                .canonical_reason()
                .map_or_else(|| format!("Error {code}"), str::to_owned);
            Ok(json_message(status, &message))
        }
        Outage::CloseConnection => Err(CloseConnection),
        Outage::Hang => loop {
            // Register for a change before reading the window, so that no change is missed.
            let changed = shared.outage_changed.notified();
            let end = {
                let now = Instant::now();
                let mut state = shared.lock();
                state.catch_up(now);
                match state.outage_at(now) {
                    Some(outage) if outage.kind == Outage::Hang => outage.window.end,
                    _ => return Err(CloseConnection),
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(end) => {}
                () = changed => {}
            }
        },
    }
}

/// Counts a login request as in flight until it is answered or dropped (a [`Failure::Hang`]
/// ends when its connection does).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let mut state = shared.lock();
        state.logins_in_flight += 1;
        state.max_logins_in_flight = state.max_logins_in_flight.max(state.logins_in_flight);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().logins_in_flight -= 1;
    }
}

/// The login body the API expects.
#[derive(serde::Deserialize)]
struct LoginRequest {
    #[serde(rename = "userName")]
    user_name: String,
    password: String,
}

fn unknown_user_message(user_name: &str) -> String {
    format!("No user found with username: {user_name}")
}

/// The normal answer to a login.
fn answer_login(shared: &Shared, body: &[u8]) -> Response<ResponseBody> {
    let Ok(login) = serde_json::from_slice::<LoginRequest>(body) else {
        return json_message(StatusCode::BAD_REQUEST, MSG_INVALID_GRANT);
    };
    let mut state = shared.lock();
    let Some(user) = state.users.get(&login.user_name) else {
        return json_message(
            StatusCode::NOT_FOUND,
            &unknown_user_message(&login.user_name),
        );
    };
    if user.password != login.password || user.expired {
        return json_message(StatusCode::UNAUTHORIZED, MSG_AUTH_FAILED);
    }
    if user.forbidden {
        return json_message(StatusCode::FORBIDDEN, MSG_FORBIDDEN);
    }
    if let Some(user) = state.users.get_mut(&login.user_name) {
        user.logins += 1;
    }
    let fields = state.token_fields;
    let body = issue_token(&mut state, &login.user_name, fields, None);
    response(
        StatusCode::OK,
        "application/json",
        ResponseBody::sized(body),
    )
}

/// The normal answer to an OAuth2 token request (RFC 6749 §4.4), with the errors of §5.2.
///
/// The client authenticates by HTTP Basic (its id and secret form-urlencoded, then base64) or
/// with `client_id` and `client_secret` in the body, not both; clients are the server's users,
/// the secret their password. An expired account is an `invalid_client`, a forbidden one an
/// `unauthorized_client`.
fn answer_oauth2(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response<ResponseBody> {
    let bad_request = |error: &str, description: &str| {
        oauth2_error(StatusCode::BAD_REQUEST, error, Some(description))
    };
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let Some(form) = form_type.then(|| parse_form(body)).flatten() else {
        return bad_request(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    };
    shared.lock().last_oauth2_form = Some(form.clone());
    let get = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    for name in ["grant_type", "scope", "client_id", "client_secret"] {
        if form.iter().filter(|(n, _)| n == name).count() > 1 {
            return bad_request("invalid_request", &format!("{name} is repeated"));
        }
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .map(|value| basic_credentials(value.as_bytes()));
    let (client_id, secret, by_basic) = match (basic, get("client_secret")) {
        (Some(None), _) => {
            return invalid_client("the Basic credentials are malformed", true);
        }
        (Some(Some(_)), Some(_)) => {
            return bad_request(
                "invalid_request",
                "the client authenticated by more than one method",
            );
        }
        (Some(Some((id, secret))), None) => {
            if get("client_id").is_some_and(|body_id| body_id != id) {
                return bad_request(
                    "invalid_request",
                    "client_id differs from the Basic user name",
                );
            }
            (id, secret, true)
        }
        (None, Some(secret)) => match get("client_id") {
            Some(id) => (id.to_owned(), secret.to_owned(), false),
            None => return bad_request("invalid_request", "client_id is missing"),
        },
        (None, None) => return invalid_client("the client did not authenticate", true),
    };
    match get("grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return bad_request(
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => return bad_request("invalid_request", "grant_type is missing"),
    }
    let mut state = shared.lock();
    let known = state
        .users
        .get(&client_id)
        .filter(|user| user.password == secret && !user.expired);
    let Some(user) = known else {
        drop(state);
        return invalid_client("client authentication failed", by_basic);
    };
    if user.forbidden {
        drop(state);
        return bad_request(
            "unauthorized_client",
            "the client may not use this grant type",
        );
    }
    let scope = get("scope");
    let refused = match (scope, &state.oauth2_scopes) {
        (Some(scope), Some(allowed)) => scope
            .split(' ')
            .find(|s| !allowed.iter().any(|a| a == s))
            .map(|unknown| format!("scope '{unknown}' is not allowed")),
        _ => None,
    };
    if let Some(description) = refused {
        drop(state);
        return bad_request("invalid_scope", &description);
    }
    if let Some(user) = state.users.get_mut(&client_id) {
        user.logins += 1;
    }
    let body = issue_token(&mut state, &client_id, TokenFields::OAuth2, scope);
    let mut response = response(
        StatusCode::OK,
        "application/json",
        ResponseBody::sized(body),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A `401 invalid_client`, with `WWW-Authenticate: Basic` when the client tried Basic or did
/// not authenticate at all (RFC 6749 §5.2).
fn invalid_client(description: &str, challenge: bool) -> Response<ResponseBody> {
    let mut response = oauth2_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        Some(description),
    );
    if challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="reference-server""#),
        );
    }
    response
}

/// An RFC 6749 §5.2 error: `{"error": ..., "error_description": ...}`, not to be cached.
pub(super) fn oauth2_error(
    status: StatusCode,
    error: &str,
    description: Option<&str>,
) -> Response<ResponseBody> {
    let mut body = serde_json::json!({ "error": error });
    if let Some(description) = description {
        body["error_description"] = description.into();
    }
    let mut response = response(
        status,
        "application/json",
        ResponseBody::sized(body.to_string()),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The client id and secret of an `Authorization: Basic` value, each form-urldecoded as RFC 6749
/// §2.3.1 says; `None` if it is not Basic or does not decode.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs, in order; `None` if a
/// `%` escape is broken or a value is not UTF-8.
pub(super) fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

/// Decodes one form-urlencoded string: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Grants `user_name` a token under the server's policy, and returns the response body.
/// `fields` says which fields the body has; `scope`, if any, is added as the OAuth2 `scope`.
fn issue_token(
    state: &mut State,
    user_name: &str,
    fields: TokenFields,
    scope: Option<&str>,
) -> Vec<u8> {
    let now = Instant::now();
    let lifetime = state.token_lifetime;
    let format = state.timestamp_format;
    let numeric = state.numeric_fields;
    let whole = state.whole_seconds;
    let jwt = state.jwt_tokens;
    let wall_now = state.clock.at(now);

    let grant = state.tokens.grant(
        user_name,
        now,
        lifetime,
        wall_now,
        clock::millis_precision(format),
        |issued, expires| {
            if jwt {
                // Whole seconds, `exp` rounded up, so that the claims never promise too much.
                let expires = clock::round_up(expires, false);
                jwt_token(user_name, issued.as_second(), expires.as_second())
            } else {
                random_url_safe(TOKEN_CHARS)
            }
        },
    );
    let offset = state.timestamp_offset;
    let timestamp = |t| clock::format_timestamp(t, format, offset, numeric);
    let mut body = match fields {
        TokenFields::Documented => serde_json::json!({
            "type": "Bearer",
            "token": grant.token,
            "expiresIn": expires_in(grant.expires_in, numeric, whole),
            "issued": timestamp(grant.issued),
            "expires": timestamp(grant.expires),
        }),
        TokenFields::ExpiresOnly => serde_json::json!({
            "type": "Bearer",
            "token": grant.token,
            "expires": timestamp(grant.expires),
        }),
        TokenFields::OAuth2 => serde_json::json!({
            "access_token": grant.token,
            "token_type": "Bearer",
            // RFC 6749 §5.1 and Appendix A.14: whole seconds.
            "expires_in": expires_in(grant.expires_in, true, true),
        }),
    };
    if let (Some(scope), Some(map)) = (scope, body.as_object_mut()) {
        map.insert("scope".to_owned(), scope.into());
    }
    state.stats.logins += 1;
    serde_json::to_vec(&body).expect("a token response always serializes")
}

/// `expiresIn`: whole seconds (`"3600"`), or seconds with a decimal fraction (`"1.5"`) for a
/// lifetime that is not a whole number of seconds, unless `whole`: then rounded down.
fn expires_in(lifetime: Duration, numeric: bool, whole: bool) -> serde_json::Value {
    if whole || lifetime.subsec_nanos() == 0 {
        return clock::number_or_string(lifetime.as_secs().into(), numeric);
    }
    let text = format!("{}.{:09}", lifetime.as_secs(), lifetime.subsec_nanos());
    let text = text.trim_end_matches('0');
    if numeric {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
    } else {
        serde_json::Value::String(text.to_owned())
    }
}

/// `len` random characters from the URL-safe base64 alphabet.
fn random_url_safe(len: usize) -> String {
    (0..len)
        .map(|_| char::from(URL_SAFE[fastrand::usize(..URL_SAFE.len())]))
        .collect()
}

/// A JWT-shaped token: `header.claims.signature`, with a random (meaningless) signature.
fn jwt_token(user_name: &str, issued_at: i64, expires_at: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "sub": user_name, "iat": issued_at, "exp": expires_at });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}.{}", random_url_safe(TOKEN_CHARS))
}

/// Answers a request to the protected endpoint.
async fn protected(shared: &Shared, request: Request<Incoming>) -> Answer {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    // Read the body, so that the connection stays usable for the next request.
    let _ = Limited::new(request.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await;

    let now = Instant::now();
    let mut state = shared.lock();
    let verdict = state.verdict(token.as_deref(), now, true);
    if let Err(reason) = verdict {
        let counts = &mut state.stats.rejected;
        *match reason {
            Rejection::Unknown => &mut counts.unknown,
            Rejection::Revoked => &mut counts.revoked,
            Rejection::Expired => &mut counts.expired,
            Rejection::RejectAll => &mut counts.reject_all,
            Rejection::Spurious => &mut counts.spurious,
        } += 1;
    }
    if verdict.is_ok() {
        state.stats.accepted += 1;
        Ok(response(
            StatusCode::OK,
            "application/json",
            ResponseBody::sized(r#"{"ok":true}"#),
        ))
    } else {
        state.stats.rejections += 1;
        let mut response = json_message(StatusCode::UNAUTHORIZED, "Unauthorized");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        Ok(response)
    }
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `status` with the body `{"message": message}`.
fn json_message(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    response(status, "application/json", ResponseBody::sized(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as STANDARD_B64;

    #[test]
    fn tokens_are_long_and_url_safe() {
        let a = random_url_safe(TOKEN_CHARS);
        let b = random_url_safe(TOKEN_CHARS);
        assert_eq!(a.len(), TOKEN_CHARS);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| URL_SAFE.contains(&c)));
    }

    #[test]
    fn jwt_tokens_have_three_parts_and_readable_claims() {
        let token = jwt_token("alice", 100, 3700);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "alice", "iat": 100, "exp": 3700})
        );
    }

    #[test]
    fn expires_in_keeps_fractions_of_a_second_unless_written_in_whole_seconds() {
        let secs = |s: u64| Duration::from_secs(s);
        let ms = Duration::from_millis;
        assert_eq!(
            expires_in(secs(3600), false, false),
            serde_json::json!("3600")
        );
        assert_eq!(expires_in(secs(3600), true, false), serde_json::json!(3600));
        assert_eq!(expires_in(ms(1500), false, false), serde_json::json!("1.5"));
        assert_eq!(expires_in(ms(250), true, false), serde_json::json!(0.25));
        assert_eq!(
            expires_in(Duration::from_nanos(1), false, false),
            serde_json::json!("0.000000001")
        );
        // Whole seconds, rounded down.
        assert_eq!(expires_in(ms(63_900), false, true), serde_json::json!("63"));
        assert_eq!(expires_in(ms(63_900), true, true), serde_json::json!(63));
        assert_eq!(expires_in(ms(900), false, true), serde_json::json!("0"));
    }

    #[test]
    fn forms_and_basic_credentials_are_form_urldecoded() {
        assert_eq!(
            parse_form(b"grant_type=client_credentials&scope=a+b%3Ac&&empty=&bare").unwrap(),
            [
                ("grant_type", "client_credentials"),
                ("scope", "a b:c"),
                ("empty", ""),
                ("bare", ""),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        for bad in [&b"a=%zz"[..], b"a=%4", b"a=%C3", b"\xff=1"] {
            assert_eq!(parse_form(bad), None, "{bad:?}");
        }
        let header = format!("Basic {}", STANDARD_B64.encode("my+id%3A1:p%26ss:w"));
        assert_eq!(
            basic_credentials(header.as_bytes()),
            Some(("my id:1".to_owned(), "p&ss:w".to_owned()))
        );
        let bearer = format!("Bearer {}", STANDARD_B64.encode("a:b"));
        assert_eq!(basic_credentials(bearer.as_bytes()), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        let no_colon = format!("basic {}", STANDARD_B64.encode("ab"));
        assert_eq!(basic_credentials(no_colon.as_bytes()), None);
    }

    #[test]
    fn login_bodies_need_string_user_name_and_password() {
        assert!(
            serde_json::from_slice::<LoginRequest>(br#"{"userName":"a","password":"b"}"#).is_ok()
        );
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            br#"{"userName":"a"}"#,
            br#"{"userName":1,"password":"b"}"#,
            br#"{"username":"a","password":"b"}"#,
        ] {
            assert!(serde_json::from_slice::<LoginRequest>(bad).is_err());
        }
    }
}
