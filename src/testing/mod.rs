//! A faithful `/authtoken` reference server, for tests, examples and your own test suites.
//!
//! [`ReferenceServer`] is a real HTTP/1.1 server on `127.0.0.1` with a random port. It behaves
//! like the documented `/authtoken` API:
//!
//! - `POST /authtoken` (or any path ending in `/authtoken`, such as `/api/v1/authtoken`) with the
//!   JSON body `{"userName": ..., "password": ...}` answers `200` with
//!   `{"type":"Bearer","token":...,"expiresIn":"3600","issued":...,"expires":...}`, or `400`
//!   (`Invalid grant type`), `401` (`Authentication Failed or Account validity Expired`), `403`
//!   (`Forbidden - Access denied`) or `404` (`No user found with username: {userName}`), each
//!   with a JSON `{"message": ...}` body. Other methods get `405`.
//! - `POST /oauth2/token` (or any path ending in `/oauth2/token`) is an OAuth 2.0 token
//!   endpoint for the client credentials grant (RFC 6749 §4.4): see
//!   [`oauth2_token_url`](ReferenceServer::oauth2_token_url). Its clients are the users above
//!   (the client id is the user name, the secret the password); it answers
//!   `{"access_token","token_type":"Bearer","expires_in","scope"}`, or an RFC 6749 §5.2 error.
//!   Everything else about logins (outages, queued failures, delays, token policies, counters)
//!   applies to both endpoints.
//! - Every other path is a *protected endpoint*: a request with `Authorization: Bearer <token>`
//!   for a token this server issued, that is not revoked and not expired, gets `200`
//!   `{"ok":true}`; anything else gets `401` with `WWW-Authenticate: Bearer error="invalid_token"`.
//!
//! You can add users, expire or forbid accounts, change the token lifetime and the timestamp
//! format, slow logins down, queue failures ([`Failure`]) for the next logins, make a share of
//! logins fail at random with a jittered delay (seeded, for reproducible runs), revoke tokens,
//! and count what happened ([`ServerStats`]).
//!
//! # A zoo of server behaviours
//!
//! Login servers in the wild do not all behave like the default one. Each behaviour below is a
//! builder setter (and a runtime setter on [`ReferenceServer`]), so the same client can be
//! tested against all of them:
//!
//! | Behaviour | How |
//! |---|---|
//! | A new full-length token on every login (the default) | [`TokenPolicy::Fresh`] |
//! | One live token per user: the same token with what is left of its life | [`TokenPolicy::OneLivePerUser`] |
//! | A new token on every login, expiring with the session | [`TokenPolicy::SessionBound`] |
//! | Sliding expiry: the same token, its expiry pushed forward | [`TokenPolicy::Sliding`] |
//! | Revocation now, at a chosen instant, or at seeded random instants | [`revoke`], [`revoke_user`], [`revoke_all`], [`schedule_revocation`], [`random_revocations`] |
//! | A `401` for a token that is still good, once | [`reject_next_requests`], [`spurious_rejection_at`] |
//! | An API that refuses every token while the login works | [`reject_all_tokens`] |
//! | Very short lifetimes (`"expiresIn":"0.01"`) | [`token_lifetime`] |
//! | A login outage (an error status, a hang, or closed connections) for a while | [`start_login_outage`], [`schedule_login_outage`] |
//! | A server clock ahead of or behind ours | [`clock_ahead`], [`clock_behind`] |
//! | `issued` and `expires` written at another UTC offset | [`timestamp_offset_minutes`] |
//!
//! For model-based tests the server answers questions without a request:
//! [`accepts`](ReferenceServer::accepts) (would the protected endpoint take this token now,
//! one-off spurious refusals aside), [`verdict`](ReferenceServer::verdict) (what exactly it
//! would answer), [`token_expires_at`](ReferenceServer::token_expires_at),
//! [`revocations`](ReferenceServer::revocations) and
//! [`login_outage_ends`](ReferenceServer::login_outage_ends). It counts logins per user
//! ([`logins_of`](ReferenceServer::logins_of)), when each login attempt arrived
//! ([`login_attempt_instants`](ReferenceServer::login_attempt_instants),
//! [`max_login_attempts_within`](ReferenceServer::max_login_attempts_within)), and refusals by
//! reason ([`ServerStats::rejected`]).
//!
//! # Time
//!
//! Time runs on [`tokio::time`]: token expiry, delays, outages and scheduled revocations follow
//! Tokio's clock, so tests that pause it (`#[tokio::test(start_paused = true)]`) control them.
//! The server's wall clock, which writes `issued`, `expires` and the `Date` header of every
//! response, starts at [`SystemTime::now`](std::time::SystemTime::now) when the server starts
//! and then runs on Tokio's clock too (plus any [offset](ReferenceServerBuilder::clock_ahead)),
//! so it stays consistent with the instants at which tokens expire. `expires` is `issued` plus
//! the time the token has left, rounded up to the format's precision. The default user is
//! `alice` with the password `wonderland`; the default token lifetime is one hour.
//!
//! With the paused clock, Tokio jumps to the next timer whenever every task is idle. Loopback
//! I/O is ready at once, so a login to [`base_url`](ReferenceServer::base_url) (an IP address)
//! does not let the clock run past a client's timeout. Avoid `localhost` in such tests: resolving
//! it runs on a blocking thread, and the clock may jump while it does.
//!
//! Dropping the server stops it: the listener closes and open connections are dropped.
//!
//! ```
//! use std::time::Duration;
//! use tower_authtoken::testing::{Failure, ReferenceServer};
//! use tower_authtoken::{AuthTokenSource, ErrorKind, TokenSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_authtoken::Error> {
//! let server = ReferenceServer::builder()
//!     .token_lifetime(Duration::from_secs(600))
//!     .start()
//!     .await;
//! let source = AuthTokenSource::new(&server.base_url(), server.credentials())?;
//!
//! // The next login fails as the server was told to...
//! server.push_failure(Failure::Status(503));
//! let error = source.fetch().await.unwrap_err();
//! assert_eq!(error.kind(), ErrorKind::Server);
//!
//! // ...and the one after that succeeds.
//! let token = source.fetch().await?;
//! assert_eq!(token.lifetime(), Duration::from_secs(600));
//! assert_eq!(server.issued_tokens(), [token.expose_secret()]);
//! assert_eq!((server.login_attempts(), server.logins()), (2, 1));
//! # Ok(())
//! # }
//! ```
//!
//! A server that hands out one live token per user, and whose login endpoint goes down for
//! five seconds:
//!
//! ```
//! use std::time::Duration;
//! use tower_authtoken::testing::{Outage, ReferenceServer, TokenPolicy};
//! use tower_authtoken::{AuthTokenSource, TokenSource};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_authtoken::Error> {
//! let server = ReferenceServer::builder()
//!     .token_policy(TokenPolicy::OneLivePerUser)
//!     .token_lifetime(Duration::from_secs(600))
//!     .start()
//!     .await;
//! let source = AuthTokenSource::new(&server.base_url(), server.credentials())?;
//! let first = source.fetch().await?;
//!
//! tokio::time::advance(Duration::from_secs(100)).await;
//! let again = source.fetch().await?;
//! assert_eq!(again.expose_secret(), first.expose_secret());
//! assert_eq!(again.lifetime(), Duration::from_secs(500));
//! assert!(server.accepts(first.expose_secret()));
//!
//! let outage = server.start_login_outage(Outage::Status(503), Duration::from_secs(5));
//! assert!(source.fetch().await.is_err());
//! tokio::time::sleep_until(outage.end).await;
//! assert!(source.fetch().await.is_ok());
//! assert_eq!(server.login_outage_ends(), None);
//! # Ok(())
//! # }
//! ```
//!
//! [`revoke`]: ReferenceServer::revoke
//! [`revoke_user`]: ReferenceServer::revoke_user
//! [`revoke_all`]: ReferenceServer::revoke_all
//! [`schedule_revocation`]: ReferenceServer::schedule_revocation
//! [`random_revocations`]: ReferenceServerBuilder::random_revocations
//! [`reject_next_requests`]: ReferenceServer::reject_next_requests
//! [`spurious_rejection_at`]: ReferenceServerBuilder::spurious_rejection_at
//! [`reject_all_tokens`]: ReferenceServerBuilder::reject_all_tokens
//! [`token_lifetime`]: ReferenceServerBuilder::token_lifetime
//! [`start_login_outage`]: ReferenceServer::start_login_outage
//! [`schedule_login_outage`]: ReferenceServer::schedule_login_outage
//! [`clock_ahead`]: ReferenceServerBuilder::clock_ahead
//! [`clock_behind`]: ReferenceServerBuilder::clock_behind
//! [`timestamp_offset_minutes`]: ReferenceServerBuilder::timestamp_offset_minutes

mod clock;
mod handler;
mod server;
mod tokens;

use std::time::Duration;

#[doc(inline)]
pub use server::{ReferenceServer, ReferenceServerBuilder};

/// The most of `instants` (sorted, earliest first) that fall within any window of `window`:
/// the peak login rate of a run, for example. `0` for no instants or a zero window.
pub fn most_within(instants: &[tokio::time::Instant], window: Duration) -> usize {
    if window.is_zero() {
        return 0;
    }
    let (mut first, mut most) = (0, 0);
    for (last, &at) in instants.iter().enumerate() {
        while at.saturating_duration_since(instants[first]) >= window {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// Makes every token cache of this process check deadlines and renewal instants on Tokio's
/// clock instead of the coarse monotonic clock, for tests on a paused clock
/// (`#[tokio::test(start_paused = true)]`): a token then expires, and a reader asks for its
/// renewal, as the test advances time.
///
/// It is process-wide; call it first in every test of a test binary whose tests rely on it,
/// and in no binary that measures speed. Without this, readers keep the real-time deadlines,
/// which a paused clock never reaches, and only the background task's timers follow the test's
/// clock.
pub fn follow_tokio_clock() {
    crate::cache::follow_tokio_clock();
}

/// How the reference server writes the `issued` and `expires` timestamps of a token response.
///
/// The default is [`Rfc3339`](TimestampFormat::Rfc3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TimestampFormat {
    /// RFC 3339 in UTC, whole seconds: `2024-05-01T12:00:00Z`.
    #[default]
    Rfc3339,
    /// RFC 3339 in UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
    Rfc3339Millis,
    /// ISO 8601 without an offset (meaning UTC): `2024-05-01T12:00:00`.
    Iso8601NoOffset,
    /// An HTTP date (RFC 9110): `Wed, 01 May 2024 12:00:00 GMT`.
    HttpDate,
    /// Seconds since the Unix epoch: `"1714564800"` (a JSON number with
    /// [`numeric_fields`](ReferenceServerBuilder::numeric_fields)).
    EpochSeconds,
    /// Milliseconds since the Unix epoch: `"1714564800123"` (a JSON number with
    /// [`numeric_fields`](ReferenceServerBuilder::numeric_fields)).
    EpochMillis,
}

/// Which fields a token response carries; set with [`ReferenceServerBuilder::token_fields`].
///
/// The default is [`Documented`](TokenFields::Documented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TokenFields {
    /// The documented fields: `{"type","token","expiresIn","issued","expires"}`.
    #[default]
    Documented,
    /// The expiry only as a point in time: `{"type","token","expires"}`. A client can measure
    /// it only against the response's `Date` header (the server's clock), which has whole
    /// seconds: `expires - Date` may exceed the time left by up to a second.
    ExpiresOnly,
    /// The OAuth2 spelling (RFC 6749): `{"access_token","token_type","expires_in"}`, with
    /// `expires_in` always a JSON number (`3600`, `0.5`).
    OAuth2,
}

/// A failure the reference server answers the next login with, queued by
/// [`ReferenceServer::push_failure`].
///
/// Each queued failure is used by exactly one `POST /authtoken`, in the order they were pushed;
/// logins after the queue is empty are answered normally. The failure replaces the normal
/// answer whatever the request was, except [`Delay`](Failure::Delay), which delays it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Answer with this status and a JSON `{"message": ...}` body. `400`, `401`, `403`, `404`
    /// and `500` carry the API's own texts (`404` names the user of the request); other
    /// statuses carry their reason phrase.
    Status(u16),
    /// Answer `429 Too Many Requests` with this `Retry-After` header value, verbatim.
    RateLimited {
        /// The `Retry-After` header value, such as `"30"` or an HTTP date.
        retry_after: String,
    },
    /// Accept the request and never answer, until the server is dropped.
    Hang,
    /// Answer `200` with a body that is not valid JSON.
    MalformedJson,
    /// Answer `200` with a `Content-Length` larger than the bytes sent, then close the
    /// connection.
    TruncatedBody,
    /// Close the connection without answering.
    CloseConnection,
    /// Answer with exactly this status, `Content-Type` and body.
    Body {
        /// The status code.
        status: u16,
        /// The `Content-Type` header value.
        content_type: String,
        /// The body, sent verbatim.
        body: String,
    },
    /// Answer normally, after this extra delay (on Tokio's clock).
    Delay(Duration),
    /// Answer with an OAuth2 error (RFC 6749 §5.2): this status and the JSON body
    /// `{"error": error, "error_description": description}` (without `error_description` when
    /// `None`). On either endpoint; meant for the [OAuth2 one](ReferenceServer::oauth2_token_url),
    /// for the codes a well-behaved client never provokes, such as `invalid_grant` or
    /// `temporarily_unavailable`.
    OAuth2Error {
        /// The status code, such as `400` (RFC 6749's choice for every code but
        /// `invalid_client`) or `503`.
        status: u16,
        /// The `error` code, such as `"temporarily_unavailable"`.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
}

/// A snapshot of the reference server's counters, from [`ReferenceServer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Successful logins: `200` token responses. With [`TokenPolicy::OneLivePerUser`] or
    /// [`TokenPolicy::Sliding`] several of them may carry the same token.
    pub logins: u64,
    /// Every `POST` to the login endpoint, whatever its outcome.
    pub login_attempts: u64,
    /// Login attempts answered by a [login outage](ReferenceServer::start_login_outage).
    pub outage_answers: u64,
    /// Requests to the protected endpoint accepted with `200`.
    pub accepted: u64,
    /// Requests to the protected endpoint refused with `401`, for any reason: the sum of
    /// [`rejected`](Self::rejected)'s counters.
    pub rejections: u64,
    /// The refusals of the protected endpoint, by reason.
    pub rejected: RejectionCounts,
}

/// How the protected endpoint's `401`s split by reason; in [`ServerStats::rejected`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectionCounts {
    /// No bearer token, or one this server never issued ([`Rejection::Unknown`]).
    pub unknown: u64,
    /// An expired token ([`Rejection::Expired`]).
    pub expired: u64,
    /// A revoked token ([`Rejection::Revoked`]).
    pub revoked: u64,
    /// A valid token refused because the server rejects every token
    /// ([`Rejection::RejectAll`]).
    pub reject_all: u64,
    /// A valid token refused once, spuriously ([`Rejection::Spurious`]).
    pub spurious: u64,
}

/// Why the protected endpoint refuses a token; from [`ReferenceServer::verdict`].
///
/// When several reasons hold, the first in this order wins: `Unknown`, `Revoked`, `Expired`,
/// `RejectAll`, `Spurious`. So `RejectAll` and `Spurious` are only ever given for a token the
/// server would otherwise accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// No bearer token, or one this server never issued.
    Unknown,
    /// The token was revoked.
    Revoked,
    /// The token's lifetime has ended (on Tokio's clock).
    Expired,
    /// The server refuses every token
    /// ([`set_reject_all_tokens`](ReferenceServer::set_reject_all_tokens)).
    RejectAll,
    /// A one-off refusal of a valid token: one of the [next requests to be
    /// refused](ReferenceServer::reject_next_requests), or the token's [k-th
    /// request](ReferenceServer::set_spurious_rejection_at). The same token is accepted again
    /// afterwards.
    Spurious,
}

/// What a login returns when the user asks again before the token expires; set with
/// [`ReferenceServerBuilder::token_policy`].
///
/// The default is [`Fresh`](TokenPolicy::Fresh). In every policy a token is valid from its
/// login until its expiry on Tokio's clock unless revoked, and `expiresIn` is exactly the time
/// the server will still accept the token. A revoked token is never handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TokenPolicy {
    /// Every login gets a new token with the full lifetime, whatever the user holds already.
    #[default]
    Fresh,
    /// One live token per user: a login while the user's latest token is still valid (not
    /// expired, not revoked) returns that same token, with `expiresIn` what is left of its life
    /// and `issued`/`expires` unchanged. Once it has expired (or was revoked), the next login
    /// gets a new token with the full lifetime.
    OneLivePerUser,
    /// Sessions: every login gets a new token value, but while the user's session lasts, the
    /// token expires with the session: `expires` is the session's first token's, `expiresIn` what
    /// is left of the session. `issued` is the time of the login. A login after the session has
    /// expired starts a new one with the full lifetime. Revoking a token does not end its
    /// session.
    SessionBound,
    /// Sliding expiry: a login while the user's latest token is valid returns that same token,
    /// its expiry pushed to the full lifetime from now (`expiresIn` the full lifetime, `issued`
    /// now, `expires` moved). An expired or revoked token is replaced by a new one. With
    /// [`jwt_tokens`](ReferenceServerBuilder::jwt_tokens), the token's claims keep its first
    /// expiry.
    Sliding,
}

/// How the login endpoint fails during a login outage; see
/// [`ReferenceServer::start_login_outage`].
///
/// An outage concerns the login endpoint only: the protected endpoint keeps answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outage {
    /// Answer every login at once with this status (such as `503`) and a JSON
    /// `{"message": ...}` body carrying the reason phrase, without `Retry-After`.
    Status(u16),
    /// Hold every login without answering until the outage ends, then close its connection
    /// without answering (as a proxy in front of a dead backend does). A client's own timeout
    /// usually fires first.
    Hang,
    /// Close the connection at once without answering, as a crashing or restarting server
    /// does. (A real `connection refused` would need the port closed, and another process could
    /// take it meanwhile.)
    CloseConnection,
}
