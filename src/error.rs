//! The crate's one error type.
//!
//! [`Error`] is an opaque, cheaply cloneable struct: the cache hands the *same* error to every
//! caller that waited on a failed fetch, so it is reference counted. Ask it what went wrong with
//! [`Error::kind`], and whether trying again later may help with [`Error::is_transient`].
//!
//! No error ever contains the password or a token: server messages are cleaned of the password
//! before they are stored, and the parser reports *what* was wrong with a token, never its value.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A boxed error as used by Tower (`tower::BoxError`).
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// What went wrong, as a plain enum to `match` on.
///
/// New kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `400 Bad Request`: the server rejected the grant (the request shape or grant type).
    InvalidGrant,
    /// `401 Unauthorized`: wrong password, or the account's validity has expired.
    AuthenticationFailed,
    /// `403 Forbidden`: the account may not obtain tokens.
    Forbidden,
    /// `404 Not Found` with the API's "No user found with username" message: the server knows no
    /// user with this user name. (Any other `404` means the URL is wrong: [`Config`](Self::Config).)
    UnknownUser,
    /// `429 Too Many Requests`: the login endpoint is rate limiting us.
    RateLimited,
    /// A `5xx` answer, or any other unexpected status (not a redirect: that is
    /// [`Config`](Self::Config)).
    Server,
    /// The login did not complete within its timeout.
    Timeout,
    /// The login endpoint could not be reached, or the connection broke.
    Transport,
    /// The server answered `200` with a body that is not a usable token response.
    InvalidResponse,
    /// The configuration is wrong: a setting out of its range, a URL that does not parse, or a
    /// login URL that answers with a redirect or with a `404` that is not the API's own.
    Config,
    /// The token would be sent to a plain `http://` URL on a non-loopback host.
    InsecureTransport,
    /// The cache was used outside a Tokio runtime, or a token source panicked.
    Runtime,
    /// A request to a [`KeyedBearerAuth`](crate::KeyedBearerAuth) named no account: it carried
    /// no account key.
    NoAccount,
    /// The [`KeyedTokenCache`](crate::KeyedTokenCache)'s factory refused the account; its error
    /// is this error's source.
    UnknownAccount,
}

impl ErrorKind {
    /// Whether trying again later may succeed without anyone changing anything.
    ///
    /// Transient: [`RateLimited`](Self::RateLimited), [`Server`](Self::Server),
    /// [`Timeout`](Self::Timeout), [`Transport`](Self::Transport) and
    /// [`InvalidResponse`](Self::InvalidResponse) (a proxy's error page or a half-sent body looks
    /// like one). Everything else needs a person to act, including [`Runtime`](Self::Runtime):
    /// code running outside a Tokio runtime, or a token source that panics, does not mend itself
    /// by waiting.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::Server
                | Self::Timeout
                | Self::Transport
                | Self::InvalidResponse
        )
    }

    /// A short stable name, for metrics and logs (`"authentication_failed"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidGrant => "invalid_grant",
            Self::AuthenticationFailed => "authentication_failed",
            Self::Forbidden => "forbidden",
            Self::UnknownUser => "unknown_user",
            Self::RateLimited => "rate_limited",
            Self::Server => "server",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::InvalidResponse => "invalid_response",
            Self::Config => "config",
            Self::InsecureTransport => "insecure_transport",
            Self::Runtime => "runtime",
            Self::NoAccount => "no_account",
            Self::UnknownAccount => "unknown_account",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in this crate.
///
/// Cloning is cheap (one reference count). The `Display` is one lowercase sentence that says
/// what to do; [`source`](StdError::source) gives the underlying cause where there is one.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    user: Option<String>,
    status: Option<StatusCode>,
    detail: Option<String>,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl Error {
    /// An error of `kind`, for [`TokenSource`](crate::TokenSource) implementations. Add what is
    /// known with the `with_*` methods.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_authtoken::{Error, ErrorKind};
    ///
    /// let error = Error::new(ErrorKind::RateLimited).with_retry_after(Some(Duration::from_secs(30)));
    /// assert!(error.is_transient());
    /// assert_eq!(error.to_string(), "login rate limited (429): retry after 30 s");
    /// ```
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                user: None,
                status: None,
                detail: None,
                retry_after: None,
                source: None,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Names the user the failed login was for.
    pub fn with_user(mut self, user: &str) -> Self {
        self.inner_mut().user = Some(user.to_owned());
        self
    }

    /// Records the HTTP status the login endpoint answered with.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.inner_mut().status = Some(status);
        self
    }

    /// Adds a human-readable detail, shown in parentheses after the message. It must hold no
    /// secret: never put a password or a token in it.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.inner_mut().detail = Some(detail.into());
        self
    }

    /// Records how long the server asked us to wait before trying again.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.inner_mut().retry_after = retry_after;
        self
    }

    /// Records the underlying cause, returned by [`source`](StdError::source).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner_mut().source = Some(Arc::from(source.into()));
        self
    }

    /// An invalid token response, saying what was wrong with it.
    pub(crate) fn invalid_response(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse).with_detail(detail)
    }

    /// A login the cache's login budget holds back, from
    /// [`ObtainRequest::login`](crate::store::ObtainRequest::login): the cache logs in at its
    /// turn, `wait` from now. Not a failure: no backoff, and waiting callers wait on.
    pub(crate) fn held_back(wait: Duration) -> Self {
        Self::new(ErrorKind::RateLimited)
            .with_detail("the cache's login budget holds this login back until its turn")
            .with_retry_after(Some(wait))
            .with_source(HeldBack)
    }

    /// Whether this is a [`held_back`](Self::held_back) login, as a store returned it.
    pub(crate) fn is_held_back(&self) -> bool {
        self.inner
            .source
            .as_deref()
            .is_some_and(|source| source.is::<HeldBack>())
    }

    /// A token response whose lifetime, written in whole seconds, is `0`: the token has under a
    /// second left, and the server hands out no other before it expires. An
    /// [`InvalidResponse`](ErrorKind::InvalidResponse) to whoever fetched it; the cache logs in
    /// again a second later, and its waiting callers wait on.
    pub(crate) fn under_a_second_left(detail: impl Into<String>) -> Self {
        Self::invalid_response(detail).with_source(UnderASecondLeft)
    }

    /// Whether this is an [`under_a_second_left`](Self::under_a_second_left) response.
    pub(crate) fn is_under_a_second_left(&self) -> bool {
        self.inner
            .source
            .as_deref()
            .is_some_and(|source| source.is::<UnderASecondLeft>())
    }

    /// A refused configuration, saying what was wrong with it.
    pub(crate) fn config(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config).with_detail(detail)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether trying again later may succeed; see [`ErrorKind::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.inner.kind.is_transient()
    }

    /// The HTTP status the login endpoint answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// How long the server asked us to wait (`Retry-After`), for [`ErrorKind::RateLimited`].
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The server's own message, or what was wrong with its response.
    ///
    /// For [`ErrorKind::UnknownUser`] this is the server's text, such as
    /// `"No user found with username: alice"`. Never contains the password or a token.
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The user name the failed login was for, if known.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(user) = &self.inner.user {
            d.field("user", user);
        }
        if let Some(status) = &self.inner.status {
            d.field("status", status);
        }
        if let Some(detail) = &self.inner.detail {
            d.field("detail", detail);
        }
        if let Some(retry_after) = &self.inner.retry_after {
            d.field("retry_after", retry_after);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let user = UserSuffix(inner.user.as_deref());
        match inner.kind {
            ErrorKind::InvalidGrant => write!(
                f,
                "login{user} rejected as an invalid grant (400): check the request shape the endpoint expects"
            )?,
            ErrorKind::AuthenticationFailed => write!(
                f,
                "authentication failed{user}: check the password or the account's validity"
            )?,
            ErrorKind::Forbidden => write!(
                f,
                "access denied{user} (403): the account is not allowed to obtain tokens"
            )?,
            ErrorKind::UnknownUser => {
                write!(f, "unknown user{user}: check the user name")?;
            }
            ErrorKind::RateLimited => {
                write!(f, "login{user} rate limited")?;
                if !self.is_held_back() {
                    f.write_str(" (429)")?;
                }
                match inner.retry_after {
                    Some(wait) => write!(f, ": retry after {} s", wait.as_secs_f64().ceil())?,
                    None => f.write_str(": retry later")?,
                }
            }
            ErrorKind::Server => match inner.status {
                Some(status) => write!(
                    f,
                    "login endpoint failed with {}: retry later or contact the API provider",
                    status.as_u16()
                )?,
                None => f.write_str("login endpoint failed: retry later")?,
            },
            // The detail says what was slow: the endpoint, or a login budget with more logins
            // waiting than its rate serves in time.
            ErrorKind::Timeout => f.write_str("login timed out: retry later or raise the timeout")?,
            ErrorKind::Transport => f.write_str(
                "could not reach the login endpoint: check the URL and the network",
            )?,
            ErrorKind::InvalidResponse => {
                f.write_str("the login endpoint sent an unusable token response")?
            }
            ErrorKind::Config => f.write_str("invalid configuration")?,
            ErrorKind::InsecureTransport => f.write_str(
                "refusing to send credentials or a token over plain http to a non-loopback host: use https or opt in with allow_insecure_http",
            )?,
            ErrorKind::Runtime => f.write_str("token cache unavailable")?,
            ErrorKind::NoAccount => f.write_str(
                "the request names no account: set its account key before sending it",
            )?,
            ErrorKind::UnknownAccount => f.write_str("unknown account")?,
        }
        if let Some(detail) = &inner.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

struct UserSuffix<'a>(Option<&'a str>);

impl fmt::Display for UserSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(user) => write!(f, " for user '{user}'"),
            None => Ok(()),
        }
    }
}

/// The source of a [held-back](Error::held_back) login: the cache's own budget, not the server.
#[derive(Debug)]
struct HeldBack;

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("held back by the login budget")
    }
}

impl StdError for HeldBack {}

/// The source of an [under-a-second](Error::under_a_second_left) token response.
#[derive(Debug)]
struct UnderASecondLeft;

impl fmt::Display for UnderASecondLeft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the token has under a second left, in the server's whole seconds")
    }
}

impl StdError for UnderASecondLeft {}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_permanent_kinds_are_told_apart() {
        for kind in [
            ErrorKind::RateLimited,
            ErrorKind::Server,
            ErrorKind::Timeout,
            ErrorKind::Transport,
        ] {
            assert!(kind.is_transient(), "{kind} should be transient");
        }
        for kind in [
            ErrorKind::InvalidGrant,
            ErrorKind::AuthenticationFailed,
            ErrorKind::Forbidden,
            ErrorKind::UnknownUser,
            ErrorKind::Config,
            ErrorKind::InsecureTransport,
            ErrorKind::Runtime,
            ErrorKind::NoAccount,
            ErrorKind::UnknownAccount,
        ] {
            assert!(!kind.is_transient(), "{kind} should be permanent");
        }
    }

    /// What a store sees when the budget holds its login back: the cache's own limit, not a
    /// `429` from the server, with the wait until the cache's turn.
    #[test]
    fn a_held_back_login_names_the_budget_and_no_429() {
        let error = Error::held_back(Duration::from_millis(1500));
        assert!(error.is_held_back());
        assert_eq!(error.kind(), ErrorKind::RateLimited);
        assert_eq!(error.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(
            error.to_string(),
            "login rate limited: retry after 2 s (the cache's login budget holds this login \
             back until its turn)"
        );
        // The same kind from the server is not held back, and says 429.
        let server = Error::new(ErrorKind::RateLimited);
        assert!(!server.is_held_back());
        assert!(server.to_string().contains("(429)"));
    }

    #[test]
    fn display_is_lowercase_and_says_what_to_do() {
        let err = Error::new(ErrorKind::AuthenticationFailed).with_user("alice");
        assert_eq!(
            err.to_string(),
            "authentication failed for user 'alice': check the password or the account's validity"
        );
        let err = Error::new(ErrorKind::RateLimited).with_retry_after(Some(Duration::from_secs(7)));
        assert_eq!(err.to_string(), "login rate limited (429): retry after 7 s");
        let err = Error::new(ErrorKind::UnknownUser)
            .with_user("bob")
            .with_detail("No user found with username: bob");
        assert!(err.to_string().contains("No user found with username: bob"));
        for kind in [ErrorKind::Server, ErrorKind::Timeout, ErrorKind::Transport] {
            let text = Error::new(kind).to_string();
            assert!(text.starts_with(char::is_lowercase), "{text}");
        }
    }

    #[test]
    fn clones_share_one_allocation() {
        let err = Error::new(ErrorKind::Timeout);
        let clone = err.clone();
        assert!(Arc::ptr_eq(&err.inner, &clone.inner));
    }
}
