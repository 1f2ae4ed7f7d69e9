//! The token model: a bearer token, what the server said about it, and how long we may use it.
//!
//! # How long a token lives: which reading wins
//!
//! A response may state the token's lifetime several ways. Every statement is a *reading*:
//!
//! 1. `expiresIn` and `expires_in`: the lifetime itself.
//! 2. `expires - issued`, and the JWT's `exp - iat`: an expiry measured against the issue
//!    instant written beside it, on the same server clock and at the same precision.
//! 3. An expiry without its issue instant (`expires` without `issued`, a JWT `exp` without
//!    `iat`) is measured against the response's `Date` header: the server's own clock at the
//!    moment it answered, so a server clock hours away from ours changes nothing. `Date` has
//!    whole seconds, so this reading may be up to one second long; the cache's expiry margin
//!    absorbs that.
//! 4. Without a `Date` header, such an expiry is measured against *our* wall clock. The two
//!    clocks may disagree, so this reading may only ever *shorten* the lifetime: it counts
//!    against the other readings, and when there is no other reading it is capped at the
//!    default lifetime rather than replacing it.
//!
//! **The smallest reading wins**, and the caller's default applies only when there is no reading
//! at all. The smallest, because each reading is the server's own statement of when the token
//! stops working, and using a token past *any* of them risks a 401; renewing a little early
//! costs one login. **Every reading must be positive and at most [`MAX_LIFETIME`]**, or the
//! response is refused with [`ErrorKind::InvalidResponse`](crate::ErrorKind::InvalidResponse):
//! a token that one reading says has already expired (an `expires` at or before the `Date`, or in
//! our past when there is no `Date`) is unusable, and a reading that makes no sense means a
//! broken server whose other readings are guesswork too.
//!
//! **Whole seconds.** A reading written without a fraction (`"expiresIn":"63"`, OAuth2's
//! `expires_in`, timestamps and `Date` in whole seconds) may have been cut to whole seconds, so
//! the token may live up to a second longer than the smallest reading says; the least any
//! reading allows (each whole-second one plus a second) is the latest it can expire. A `0` in
//! whole seconds is a token in its last second, not one without a life: still refused, but a
//! [`TokenCache`](crate::TokenCache) tells it apart: it logs in again a second later while its
//! callers wait, and from then on waits for the hidden second before a login that only a
//! token's expiry can answer (the README's "Servers that re-issue tokens").
//!
//! # Secrets in memory
//!
//! A [`Token`]'s value lives in one buffer, shared by every clone of the token and of its
//! [`header_value`](Token::header_value); it is zeroed when the last of them is dropped. The
//! parser's own copies of the value are zeroed too, on every path out of the parser, errors
//! included. Copies made by others are beyond this crate's reach: the HTTP stack's buffers that
//! received the response and that encode each request's head (the `Authorization` header among
//! them), TLS buffers, `serde_json`'s scratch buffer for a token written with JSON escapes, and
//! the kernel's socket buffers. The full list, for the password too, is in the docs of
//! `AuthTokenSource` (feature `reqwest`), under "Secrets in memory".

mod parse;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::Error;

pub(crate) use parse::parse_token_response;
pub(crate) use parse::{MAX_BODY, parse_timestamp, wipe_json};

/// The longest lifetime we believe. A server that claims more is misconfigured or hostile.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The lifetime used when a token response carries no expiry at all: 5 minutes.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A bearer token and what we know about it.
///
/// Cloning is one reference count. The secret value is never shown by `Debug`; get it with
/// [`expose_secret`](Token::expose_secret) or, ready to send, with
/// [`header_value`](Token::header_value).
///
/// The lifetime is anchored to the local monotonic clock ([`tokio::time::Instant`]) at the moment
/// the response arrived, so the server's wall clock never matters.
#[derive(Clone)]
pub struct Token {
    inner: Arc<TokenInner>,
}

pub(crate) struct TokenInner {
    pub(crate) id: u64,
    pub(crate) header: HeaderValue,
    token_type: Option<String>,
    issued: Option<SystemTime>,
    expires: Option<SystemTime>,
    received_at: Instant,
    lifetime: Duration,
    /// How much longer than `lifetime` the token may live, in nanoseconds (at most a second):
    /// see [`Token::hidden_life`]. Not a `Duration`, whose 16 bytes every account would pay.
    hidden_nanos: u32,
}

const BEARER_PREFIX: &str = "Bearer ";

/// Identifies one token instance, so that `invalidate` compares identities rather than secrets.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Checks a token value and builds its sensitive `Bearer` header.
///
/// The value must be non-empty visible ASCII: a CR, LF or any other control character would be a
/// header injection, and a space would split the credentials.
fn bearer_header(value: &str) -> Result<HeaderValue, Error> {
    if value.is_empty() {
        return Err(Error::invalid_response("the token is empty"));
    }
    if let Some(position) = value.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        let what = match value.as_bytes()[position] {
            b'\r' | b'\n' => "a line break (header injection)",
            b' ' | b'\t' => "whitespace",
            b if b.is_ascii_control() => "a control character",
            _ => "a non-ASCII character",
        };
        return Err(Error::invalid_response(format!(
            "the token contains {what} at byte {position}"
        )));
    }
    // An owner-backed `Bytes`: every clone is one reference count, and the first one does not
    // allocate (a `Vec`-backed one would, to become shareable). The owner zeroes the bytes when
    // the last reference drops. Sized exactly, so that building it never reallocates and leaves
    // no partial copy behind.
    let mut text = Vec::with_capacity(BEARER_PREFIX.len() + value.len());
    text.extend_from_slice(BEARER_PREFIX.as_bytes());
    text.extend_from_slice(value.as_bytes());
    let bytes = Bytes::from_owner(Zeroizing::new(text));
    let mut header = HeaderValue::from_maybe_shared(bytes)
        .map_err(|_| Error::invalid_response("the token is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

fn check_lifetime(lifetime: Duration) -> Result<Duration, Error> {
    if lifetime.is_zero() {
        return Err(Error::invalid_response("the token's lifetime is zero"));
    }
    if lifetime > MAX_LIFETIME {
        return Err(Error::invalid_response(format!(
            "the token's lifetime of {} s is over a year",
            lifetime.as_secs()
        )));
    }
    Ok(lifetime)
}

impl Token {
    /// A token with the given secret `value`, valid for `lifetime` from now.
    ///
    /// For [`TokenSource`](crate::TokenSource) implementations. Fails if the value is empty or
    /// not visible ASCII (a CR/LF would be a header injection), or if the lifetime is zero or
    /// over a year.
    ///
    /// The value given is wiped once the token is built (or refused): pass an owned `String`
    /// (read from a response, or `format!`ed) and no copy of the secret is left behind in it. A
    /// `&str` is copied into a buffer that is wiped the same way; the caller's own stays theirs.
    pub fn new(value: impl Into<String>, lifetime: Duration) -> Result<Token, Error> {
        let value = Zeroizing::new(value.into());
        Self::from_parts(
            &value,
            lifetime,
            Duration::ZERO,
            Instant::now(),
            None,
            None,
            None,
        )
    }

    /// Parses a `/authtoken` response body that came without a `Date` header.
    ///
    /// Lenient in format (numbers or strings, many timestamp formats, OAuth2 field names, unknown
    /// fields ignored), strict in meaning (a usable token and a believable lifetime).
    /// `default_lifetime` applies when the response carries no expiry at all. The lifetime is
    /// anchored to now.
    ///
    /// Without a `Date` header, an `expires` without `issued` can only be measured against this
    /// machine's clock, which may only shorten the lifetime. If you have the response's `Date`
    /// header, use [`from_response_body_with_date`](Token::from_response_body_with_date).
    pub fn from_response_body(body: &[u8], default_lifetime: Duration) -> Result<Token, Error> {
        parse_token_response(body, default_lifetime, Instant::now(), None)
    }

    /// Parses a `/authtoken` response body, as [`AuthTokenSource`](crate::AuthTokenSource) does,
    /// with the instant of the response's `Date` header (`server_date`), if it had one.
    ///
    /// The `Date` is the server's clock at the moment it answered: an `expires` given without
    /// `issued` (or a JWT `exp` without `iat`) is measured against it, so a server clock far from
    /// ours changes nothing. Parse the header as an HTTP-date (RFC 9110), or pass `None` for
    /// [`from_response_body`](Token::from_response_body)'s rules. Which reading of the lifetime
    /// wins is explained in the [module docs](self).
    pub fn from_response_body_with_date(
        body: &[u8],
        default_lifetime: Duration,
        server_date: Option<SystemTime>,
    ) -> Result<Token, Error> {
        parse_token_response(body, default_lifetime, Instant::now(), server_date)
    }

    /// A token from its parts; `hidden`: see [`hidden_life`](Self::hidden_life).
    pub(crate) fn from_parts(
        value: &str,
        lifetime: Duration,
        hidden: Duration,
        received_at: Instant,
        token_type: Option<String>,
        issued: Option<SystemTime>,
        expires: Option<SystemTime>,
    ) -> Result<Token, Error> {
        let header = bearer_header(value)?;
        let lifetime = check_lifetime(lifetime)?;
        Ok(Token {
            inner: Arc::new(TokenInner {
                id: next_id(),
                header,
                token_type,
                issued,
                expires,
                received_at,
                lifetime,
                // At most a second: fits.
                hidden_nanos: u32::try_from(hidden.min(Duration::from_secs(1)).as_nanos())
                    .unwrap_or(u32::MAX),
            }),
        })
    }

    /// The secret token value. Handle with care: never log it.
    pub fn expose_secret(&self) -> &str {
        let bytes = &self.inner.header.as_bytes()[BEARER_PREFIX.len()..];
        // Checked to be visible ASCII when the token was built.
        std::str::from_utf8(bytes).expect("token values are ASCII")
    }

    /// The ready-made `Bearer <token>` header value, marked sensitive. Cloning it is a reference
    /// count, so it costs nothing per request.
    pub fn header_value(&self) -> &HeaderValue {
        &self.inner.header
    }

    /// The token `type` the server reported, such as `"Bearer"`.
    pub fn token_type(&self) -> Option<&str> {
        self.inner.token_type.as_deref()
    }

    /// When the server says it issued the token (its wall clock).
    pub fn issued(&self) -> Option<SystemTime> {
        self.inner.issued
    }

    /// When the server says the token expires (its wall clock). Informational: the cache uses
    /// [`expires_at`](Token::expires_at), which does not depend on the server's clock.
    pub fn expires(&self) -> Option<SystemTime> {
        self.inner.expires
    }

    /// How long the token is valid, measured from [`received_at`](Token::received_at).
    pub fn lifetime(&self) -> Duration {
        self.inner.lifetime
    }

    /// How much longer than [`lifetime`](Self::lifetime) the token may live, by what the server
    /// wrote: up to a second when it wrote the lifetime in whole seconds (an `expiresIn` without
    /// a fraction, or timestamps without one), which it may have cut to them; zero when a reading
    /// with a fraction bounds it, or for [`Token::new`]. The lifetime is the earliest the token
    /// may expire, this the latest.
    pub(crate) fn hidden_life(&self) -> Duration {
        Duration::from_nanos(self.inner.hidden_nanos.into())
    }

    /// When the response carrying this token arrived, on the local monotonic clock.
    pub fn received_at(&self) -> Instant {
        self.inner.received_at
    }

    /// When the token expires, on the local monotonic clock.
    pub fn expires_at(&self) -> Instant {
        self.inner.received_at + self.inner.lifetime
    }

    /// An identity for this token instance, unique within the process.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether two tokens carry the same secret value.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn same_value(&self, other: &Token) -> bool {
        self.inner.header == other.inner.header
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("token_type", &self.inner.token_type)
            .field("issued", &self.inner.issued)
            .field("expires", &self.inner.expires)
            .field("lifetime", &self.inner.lifetime)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn header_is_bearer_and_sensitive() {
        let token = Token::new("abc.def-ghi", Duration::from_secs(60)).unwrap();
        assert_eq!(token.header_value(), "Bearer abc.def-ghi");
        assert!(token.header_value().is_sensitive());
        assert_eq!(token.expose_secret(), "abc.def-ghi");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let token = Token::new("super-secret-token", Duration::from_secs(60)).unwrap();
        let debug = format!("{token:?} {token:#?}");
        assert!(!debug.contains("super-secret-token"), "{debug}");
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn control_characters_and_empty_values_are_refused() {
        for bad in [
            "",
            "abc\r\nX-Evil: 1",
            "abc\n",
            "a\tb",
            "a b",
            "a\u{7f}",
            "é",
            "a\0",
        ] {
            let err = Token::new(bad, Duration::from_secs(60)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidResponse, "{bad:?}");
            assert!(!err.to_string().contains(bad) || bad.is_empty());
        }
    }

    #[test]
    fn lifetime_must_be_positive_and_believable() {
        assert!(Token::new("t", Duration::ZERO).is_err());
        assert!(Token::new("t", MAX_LIFETIME + Duration::from_secs(1)).is_err());
        assert!(Token::new("t", MAX_LIFETIME).is_ok());
    }

    #[test]
    fn every_token_has_its_own_identity() {
        let a = Token::new("same", Duration::from_secs(60)).unwrap();
        let b = Token::new("same", Duration::from_secs(60)).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(a.same_value(&b));
        assert_eq!(a.id(), a.clone().id());
    }
}
