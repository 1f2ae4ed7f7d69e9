//! The reference server's state and how it answers one request.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use tokio::time::Instant;

use super::{Failure, ServerStats, TimestampFormat};

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
    /// Logins answered `500` by `login_failure_rate`.
    pub(super) injected_failures: u64,
    /// Login requests being answered right now, and the most there ever were at once.
    pub(super) logins_in_flight: u64,
    pub(super) max_logins_in_flight: u64,
    pub(super) timestamp_format: TimestampFormat,
    pub(super) numeric_fields: bool,
    pub(super) jwt_tokens: bool,
    pub(super) failures: VecDeque<Failure>,
    pub(super) tokens: HashMap<String, IssuedToken>,
    pub(super) issued: Vec<String>,
    pub(super) stats: ServerStats,
    pub(super) last_login_headers: Option<HeaderMap>,
}

pub(super) struct User {
    pub(super) password: String,
    pub(super) expired: bool,
    pub(super) forbidden: bool,
}

impl User {
    pub(super) fn new(password: &str) -> User {
        User {
            password: password.to_owned(),
            expired: false,
            forbidden: false,
        }
    }
}

pub(super) struct IssuedToken {
    expires_at: Instant,
    pub(super) revoked: bool,
}

/// Records `token` as issued now and valid for `lifetime` on Tokio's clock.
pub(super) fn record_token(state: &mut State, token: String, lifetime: Duration) {
    let expires_at = Instant::now()
        .checked_add(lifetime)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 60 * 60));
    state.tokens.insert(
        token.clone(),
        IssuedToken {
            expires_at,
            revoked: false,
        },
    );
    state.issued.push(token);
}

impl Shared {
    pub(super) fn new(state: State) -> Shared {
        Shared {
            state: Mutex::new(state),
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
            .field("numeric_fields", &self.numeric_fields)
            .field("jwt_tokens", &self.jwt_tokens)
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

/// Answers one request.
pub(super) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    if path == "/authtoken" || path.ends_with("/authtoken") {
        if request.method() != Method::POST {
            let mut response = json_message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(response);
        }
        login(&shared, request).await
    } else {
        protected(&shared, request).await
    }
}

async fn login(shared: &Shared, request: Request<Incoming>) -> Answer {
    let _in_flight = InFlight::enter(shared);
    let (parts, body) = request.into_parts();
    // A body that breaks off or is too large is answered like any other bad grant.
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();

    let (failure, delay) = {
        let mut state = shared.lock();
        state.stats.login_attempts += 1;
        state.last_login_headers = Some(parts.headers);
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
        (failure, state.login_delay.saturating_add(jitter))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let Some(failure) = failure else {
        return Ok(answer_login(shared, &body));
    };
    match failure {
        Failure::Delay(extra) => {
            tokio::time::sleep(extra).await;
            Ok(answer_login(shared, &body))
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
    let body = issue_token(&mut state, &login.user_name);
    response(
        StatusCode::OK,
        "application/json",
        ResponseBody::sized(body),
    )
}

/// The token response as the API writes it.
#[derive(Serialize)]
struct TokenResponse {
    #[serde(rename = "type")]
    token_type: &'static str,
    token: String,
    #[serde(rename = "expiresIn")]
    expires_in: serde_json::Value,
    issued: serde_json::Value,
    expires: serde_json::Value,
}

/// Mints a token for `user_name`, records it, and returns the response body.
fn issue_token(state: &mut State, user_name: &str) -> Vec<u8> {
    let lifetime = state.token_lifetime;
    let format = state.timestamp_format;
    let numeric = state.numeric_fields;

    let now = jiff::Timestamp::try_from(SystemTime::now()).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    // Cut `issued` to the format's precision, so that `expires - issued` is exactly the lifetime.
    let issued = if millis_precision(format) {
        jiff::Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
    } else {
        jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
    };
    // Round `expires` *up* to the format's precision: for a whole-second lifetime (the usual
    // case) this changes nothing and `expires - issued` is exact; for a sub-second one it keeps
    // `expires - issued` from claiming less than `expiresIn`, which carries the fraction.
    let expires = round_up(
        issued.checked_add(lifetime).unwrap_or(jiff::Timestamp::MAX),
        millis_precision(format),
    );

    let token = if state.jwt_tokens {
        // Whole seconds, with `exp - iat` the lifetime rounded up, so it never claims less.
        let lifetime_secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
        let issued_at = issued.as_second();
        let lifetime_secs = i64::try_from(lifetime_secs).unwrap_or(i64::MAX);
        jwt_token(
            user_name,
            issued_at,
            issued_at.saturating_add(lifetime_secs),
        )
    } else {
        random_url_safe(TOKEN_CHARS)
    };
    let body = TokenResponse {
        token_type: "Bearer",
        token: token.clone(),
        expires_in: expires_in(lifetime, numeric),
        issued: format_timestamp(issued, format, numeric),
        expires: format_timestamp(expires, format, numeric),
    };
    let body = serde_json::to_vec(&body).expect("a token response always serializes");

    record_token(state, token, lifetime);
    state.stats.logins += 1;
    body
}

/// Whether `format` writes milliseconds; the others write whole seconds.
fn millis_precision(format: TimestampFormat) -> bool {
    matches!(
        format,
        TimestampFormat::Rfc3339Millis | TimestampFormat::EpochMillis
    )
}

/// `timestamp` rounded up to whole milliseconds or whole seconds.
fn round_up(timestamp: jiff::Timestamp, millis: bool) -> jiff::Timestamp {
    let nanos = timestamp.as_nanosecond();
    let unit: i128 = if millis { 1_000_000 } else { 1_000_000_000 };
    let rounded =
        nanos.div_euclid(unit) * unit + if nanos.rem_euclid(unit) == 0 { 0 } else { unit };
    jiff::Timestamp::from_nanosecond(rounded).unwrap_or(timestamp)
}

/// `expiresIn`: whole seconds (`"3600"`), or seconds with a decimal fraction (`"1.5"`) for a
/// lifetime that is not a whole number of seconds.
fn expires_in(lifetime: Duration, numeric: bool) -> serde_json::Value {
    if lifetime.subsec_nanos() == 0 {
        return number_or_string(lifetime.as_secs().into(), numeric);
    }
    let text = format!("{}.{:09}", lifetime.as_secs(), lifetime.subsec_nanos());
    let text = text.trim_end_matches('0');
    if numeric {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
    } else {
        serde_json::Value::String(text.to_owned())
    }
}

fn number_or_string(number: serde_json::Number, numeric: bool) -> serde_json::Value {
    if numeric {
        serde_json::Value::Number(number)
    } else {
        serde_json::Value::String(number.to_string())
    }
}

fn format_timestamp(
    timestamp: jiff::Timestamp,
    format: TimestampFormat,
    numeric: bool,
) -> serde_json::Value {
    let text = match format {
        TimestampFormat::Rfc3339 => timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        TimestampFormat::Rfc3339Millis => timestamp.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        TimestampFormat::Iso8601NoOffset => timestamp.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
        TimestampFormat::HttpDate => jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&timestamp)
            .expect("a timestamp within jiff's range prints as an HTTP date"),
        TimestampFormat::EpochSeconds => {
            return number_or_string(timestamp.as_second().into(), numeric);
        }
        TimestampFormat::EpochMillis => {
            return number_or_string(timestamp.as_millisecond().into(), numeric);
        }
    };
    serde_json::Value::String(text)
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
    let valid = token
        .and_then(|token| state.tokens.get(&token))
        .is_some_and(|issued| !issued.revoked && now < issued.expires_at);
    if valid {
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
    fn timestamps_are_written_in_every_format() {
        let ts = jiff::Timestamp::from_millisecond(1_714_564_800_123).unwrap();
        let cases = [
            (TimestampFormat::Rfc3339, "2024-05-01T12:00:00Z"),
            (TimestampFormat::Rfc3339Millis, "2024-05-01T12:00:00.123Z"),
            (TimestampFormat::Iso8601NoOffset, "2024-05-01T12:00:00"),
            (TimestampFormat::HttpDate, "Wed, 01 May 2024 12:00:00 GMT"),
            (TimestampFormat::EpochSeconds, "1714564800"),
            (TimestampFormat::EpochMillis, "1714564800123"),
        ];
        for (format, expected) in cases {
            assert_eq!(
                format_timestamp(ts, format, false),
                serde_json::Value::String(expected.to_owned()),
                "{format:?}"
            );
        }
        assert_eq!(
            format_timestamp(ts, TimestampFormat::EpochSeconds, true),
            serde_json::json!(1_714_564_800)
        );
    }

    #[test]
    fn expires_in_keeps_fractions_of_a_second() {
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(expires_in(secs(3600), false), serde_json::json!("3600"));
        assert_eq!(expires_in(secs(3600), true), serde_json::json!(3600));
        assert_eq!(
            expires_in(Duration::from_millis(1500), false),
            serde_json::json!("1.5")
        );
        assert_eq!(
            expires_in(Duration::from_millis(250), true),
            serde_json::json!(0.25)
        );
        assert_eq!(
            expires_in(Duration::from_nanos(1), false),
            serde_json::json!("0.000000001")
        );
    }

    #[test]
    fn expires_is_rounded_up_to_the_formats_precision() {
        let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap();
        assert_eq!(round_up(ts(5_000), false), ts(5_000));
        assert_eq!(round_up(ts(5_001), false), ts(6_000));
        assert_eq!(round_up(ts(5_001), true), ts(5_001));
        let nanos = jiff::Timestamp::from_nanosecond(5_000_000_001).unwrap();
        assert_eq!(round_up(nanos, true), ts(5_001));
        assert_eq!(round_up(ts(-1_500), false), ts(-1_000));
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
