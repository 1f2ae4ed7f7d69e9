//! The `/authtoken` client: [`AuthTokenSource`] logs in with a user name and a password and
//! returns a [`Token`]. See [`AuthTokenSource`] for the request, the status mapping and an
//! example.
//!
//! It also holds what every login client shares (the OAuth2 client of feature `oauth2` uses it
//! too): the URL checks and the plain-HTTP rule ([`checked_url`]; plain `http://` is accepted
//! only to a loopback host, by the crate's one loopback rule), the HTTP settings and their
//! checks ([`HttpOptions`]), one login's send and capped, wiped body read ([`LoginHttp`]), and
//! the errors for a redirect, a wrong URL and a `429`, with server messages cleaned of the
//! secret ([`clean_message`]).
//!
//! Every login goes through one type-erased Tower service ([`ErasedLogin`]): our own reqwest
//! client ([`reqwest_service`], feature `reqwest`) and any Tower HTTP client a user gives
//! ([`login_service`]) are wrapped alike, and their `http::Response` is read by one function
//! ([`read_answer`]), so that every guarantee holds over every client by the same code.

use std::fmt;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::Body as HttpBody;
use serde::Serialize;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};
use url::Url;
use zeroize::Zeroizing;

use crate::token::{DEFAULT_LIFETIME, MAX_LIFETIME};
use crate::{Credentials, Error, ErrorKind, Token, TokenSource};

use crate::loopback::is_loopback_host;
use crate::token::{MAX_BODY, parse_timestamp};

/// The default timeout of one login: 30 seconds.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest timeout of one login that [`AuthTokenSourceBuilder::build`] accepts: one hour.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The message with which the API's `404` names an unknown user (`... {userName}`).
const UNKNOWN_USER_MESSAGE: &str = "no user found";

/// The most characters of a server message kept in [`Error::detail`].
const MAX_MESSAGE_CHARS: usize = 200;

/// What replaces the password wherever a server message echoes it.
const REDACTED: &str = "[redacted]";

/// The default `User-Agent`: `tower-authtoken/<version>`.
const DEFAULT_USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// The login path appended to the base URL by default.
const DEFAULT_LOGIN_PATH: &str = "/authtoken";

/// How one kind of login endpoint is named in error messages, so that every login client gives
/// the same advice in its own words.
pub(crate) struct EndpointNames {
    /// The URL the user configures: `"base URL"`, `"token URL"`.
    pub(crate) configured: &'static str,
    /// The URL requests go to: `"login URL"`, `"token URL"`.
    pub(crate) called: &'static str,
    /// The builder switch that allows plain http, as the user would write it.
    pub(crate) insecure_switch: &'static str,
    /// The secret a redirect could carry elsewhere: `"password"`, `"client secret"`.
    pub(crate) secret: &'static str,
}

/// The names of the `/authtoken` endpoint.
const AUTHTOKEN_NAMES: EndpointNames = EndpointNames {
    configured: "base URL",
    called: "login URL",
    insecure_switch: "AuthTokenSourceBuilder::allow_insecure_http(true)",
    secret: "password",
};

/// Parses and checks the URL of a login endpoint, by the rules every login client shares.
///
/// Refuses (with [`ErrorKind::Config`]) a URL that does not parse, is not `http` or `https`,
/// has no host, carries user info or a fragment, or a query unless `allow_query`; refuses (with
/// [`ErrorKind::InsecureTransport`]) plain `http` to a non-loopback host unless
/// `allow_insecure_http`, naming the host and the switch. Messages never echo user info.
pub(crate) fn checked_url(
    raw: &str,
    names: &EndpointNames,
    allow_query: bool,
    allow_insecure_http: bool,
) -> Result<Url, Error> {
    let what = names.configured;
    let url = Url::parse(raw).map_err(|e| {
        Error::config(format!("the {what} does not parse as a URL: {e}")).with_source(e)
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo the URL here: its user info may hold a password.
        return Err(Error::config(format!(
            "the {what} contains user info (user:password@): pass the credentials to the builder instead"
        )));
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let host = url.host_str().unwrap_or_default();
            if !allow_insecure_http && !is_loopback_host(host) {
                return Err(
                    Error::new(ErrorKind::InsecureTransport).with_detail(format!(
                        "the {} is plain http to '{host}', which is not loopback: {} allows it",
                        names.called, names.insecure_switch
                    )),
                );
            }
        }
        other => {
            return Err(Error::config(format!(
                "the {what}'s scheme is '{other}': only http and https are supported"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!("the {what} has no host")));
    }
    if !allow_query && url.query().is_some() {
        return Err(Error::config(format!(
            "the {what} must not contain a query ('?...')"
        )));
    }
    if url.fragment().is_some() {
        return Err(Error::config(format!(
            "the {what} must not contain a fragment ('#...')"
        )));
    }
    Ok(url)
}

/// The segments of a login path (`/v2/auth/token` gives `["v2", "auth", "token"]`).
///
/// Refuses (with [`ErrorKind::Config`] naming `login_path`) an empty path, an empty, `.` or
/// `..` segment, and any character that is not allowed as is in a URL path: whitespace, a
/// control character, `?`, `#`, `\`, `%` or anything outside ASCII.
fn login_path_segments(path: &str) -> Result<Vec<&str>, Error> {
    let refuse = |why: &str| {
        Error::config(format!(
            "login_path must be a path such as \"/v2/auth/token\": {path:?} {why}"
        ))
    };
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err(refuse("is empty"));
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '\\' | '%'))
    {
        return Err(refuse(&format!("contains {c:?}")));
    }
    let segments: Vec<&str> = trimmed
        .strip_suffix('/')
        .unwrap_or(trimmed)
        .split('/')
        .collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(refuse("has an empty, '.' or '..' segment"));
    }
    Ok(segments)
}

/// Checks `base_url` and appends `login_path` to its path, unless the path already ends with
/// the same segments (compared ignoring ASCII case).
///
/// Refuses what [`checked_url`] refuses (a base URL must not have a query either), and a
/// `login_path` that [`login_path_segments`] refuses.
fn login_url(base_url: &str, login_path: &str, allow_insecure_http: bool) -> Result<Url, Error> {
    let mut url = checked_url(base_url, &AUTHTOKEN_NAMES, false, allow_insecure_http)?;
    let segments = login_path_segments(login_path)?;
    let base = url.path().trim_end_matches('/');
    let base_segments: Vec<&str> = base.split('/').collect();
    let already_there = base_segments.len() > segments.len()
        && base_segments[base_segments.len() - segments.len()..]
            .iter()
            .zip(&segments)
            .all(|(have, want)| have.eq_ignore_ascii_case(want));
    let path = if already_there {
        base.to_owned()
    } else {
        format!("{base}/{}", segments.join("/"))
    };
    url.set_path(&path);
    Ok(url)
}

/// Logs in to a `/authtoken` endpoint with a user name and a password.
///
/// Build one with [`AuthTokenSource::new`] or [`AuthTokenSource::builder`], then call
/// [`fetch`](TokenSource::fetch) — or hand it to the token cache, which calls it for you.
/// Cloning is cheap-ish: the HTTP client is shared, the credentials are copied.
///
/// One login is one `POST {base_url}/authtoken` (or the
/// [`login_path`](AuthTokenSourceBuilder::login_path) you set) with the JSON body
/// `{"userName": ..., "password": ...}` and the headers `Accept: application/json` and
/// `Content-Type: application/json` (never an `Authorization` header). The answer is mapped to
/// a [`Token`] or to an [`Error`] whose [`ErrorKind`] says what went wrong:
///
/// | Answer                         | Result                                                   |
/// |--------------------------------|----------------------------------------------------------|
/// | any `2xx`                      | the parsed [`Token`], or [`ErrorKind::InvalidResponse`]  |
/// | `400`                          | [`ErrorKind::InvalidGrant`]                              |
/// | `401`                          | [`ErrorKind::AuthenticationFailed`]                      |
/// | `403`                          | [`ErrorKind::Forbidden`]                                 |
/// | `404` "No user found with username: ..." | [`ErrorKind::UnknownUser`], the server's message in [`Error::detail`] |
/// | any other `404` (HTML, empty, other text) | [`ErrorKind::Config`]: a wrong URL; the detail names the URL called and says "check the base URL" |
/// | `3xx` (redirects are not followed) | [`ErrorKind::Config`]; the detail names the URL called and the `Location` |
/// | `429`                          | [`ErrorKind::RateLimited`], `Retry-After` in [`Error::retry_after`] |
/// | `5xx` or any other status      | [`ErrorKind::Server`]                                    |
/// | a body over 64 KiB             | [`ErrorKind::InvalidResponse`]                           |
/// | no answer within the timeout   | [`ErrorKind::Timeout`]                                   |
/// | unreachable, connection broken | [`ErrorKind::Transport`]                                 |
///
/// Every error carries the user name ([`Error::user`]) and, once the server answered, its
/// status ([`Error::status`]). The server's message (the JSON `message` field, or a text body)
/// is kept in [`Error::detail`], cut to 200 characters.
///
/// The token's lifetime is anchored at the moment the response head arrived. The response's
/// `Date` header is the server's clock: an `expires` without `issued` is measured against it
/// (see [`Token::from_response_body_with_date`]); a `Date` that does not parse counts as absent.
///
/// # Secrets in memory
///
/// What this crate wipes (zeroes before the memory is freed), checked by an allocator that scans
/// every freed block (`tests/wipe.rs`):
///
/// - the password in [`Credentials`] and all its clones, and the `String` handed to
///   [`Credentials::new`] (spare capacity included);
/// - the login request body: one buffer, built without reallocating, that `reqwest` and `hyper`
///   hold by reference and send as it is (HTTP/1.1 on a plain TCP or rustls connection writes
///   it with vectored I/O, without copying it); it is zeroed when the last reference drops;
/// - the response body as read (and every buffer it outgrows), the parser's copies of the token,
///   and the token's one `Bearer` header buffer, shared by every clone of the [`Token`] and of
///   its header value, zeroed when the last of them drops;
/// - every intermediate copy of an error message that echoes the password.
///
/// What is beyond this crate's reach, and stays in freed memory until it is reused:
///
/// - `hyper`'s read buffer for the connection (8 KiB), into which the response arrives: it holds
///   the token (or an echoed password) until the connection closes and the last slice of the
///   buffer is dropped; `reqwest` keeps an idle connection for 90 s by default;
/// - with TLS, rustls's receive buffers: records are decrypted in place and copied into its
///   plaintext queue, so the response (the token) is there in clear too. Sent data is copied into
///   a record buffer sized for it and encrypted in place, so no clear copy of the password stays
///   in rustls;
/// - over HTTP/2 (only with your own [`client`](AuthTokenSourceBuilder::client) or
///   [`http_service`](AuthTokenSourceBuilder::http_service): ours speaks HTTP/1.1 only), `h2` copies a request body under 256 bytes, the password with it, into its
///   connection's write buffer;
/// - `serde_json`'s scratch buffer, when the server writes the token with JSON escapes such as
///   `\/`;
/// - the kernel's socket buffers, and any copy of the password made before it reached
///   [`Credentials::new`] (a configuration file's buffer, the environment).
///
/// The password is sent in the request body only, never in a header or the URL, and it never
/// appears in an error, a log event or a `Debug` output: a server message that echoes it has it
/// replaced by `[redacted]`. `Debug` shows the URL, the user name and the timeout.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_authtoken::{AuthTokenSource, Credentials, TokenSource};
///
/// # async fn run() -> Result<(), tower_authtoken::Error> {
/// let source = AuthTokenSource::builder(
///     "https://api.example.com/v1",
///     Credentials::new("alice", "wonderland"),
/// )
/// .timeout(Duration::from_secs(10))
/// .build()?;
/// assert_eq!(source.url(), "https://api.example.com/v1/authtoken");
///
/// let token = source.fetch().await?;
/// println!("valid for {:?}", token.lifetime());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AuthTokenSource {
    http: LoginHttp,
    url: Url,
    credentials: Credentials,
}

impl AuthTokenSource {
    /// A source that logs in at `{base_url}/authtoken` with `credentials`, with every default
    /// of [`AuthTokenSourceBuilder`].
    ///
    /// Any path prefix of `base_url` is kept: `https://h/api/v1` and `https://h/api/v1/` both
    /// log in at `https://h/api/v1/authtoken`. A base URL that already ends with `/authtoken` is
    /// the login URL itself: `https://h/api/v1/authtoken` logs in there, not at
    /// `.../authtoken/authtoken`. Another path: [`AuthTokenSourceBuilder::login_path`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if the URL does not parse, is not `http(s)`, or carries user info,
    /// a query or a fragment; [`ErrorKind::InsecureTransport`] for `http://` to a host that is
    /// not loopback (see [`AuthTokenSourceBuilder::allow_insecure_http`]).
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn new(base_url: &str, credentials: Credentials) -> Result<AuthTokenSource, Error> {
        Self::builder(base_url, credentials).build()
    }

    /// A builder for a source that logs in at `{base_url}/authtoken` (or another
    /// [`login_path`](AuthTokenSourceBuilder::login_path)) with `credentials`, over our own
    /// reqwest client (see [`client`](AuthTokenSourceBuilder::client) and
    /// [`http_service`](AuthTokenSourceBuilder::http_service) for others).
    ///
    /// The URL is checked by [`build`](AuthTokenSourceBuilder::build).
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn builder(base_url: &str, credentials: Credentials) -> AuthTokenSourceBuilder {
        Self::builder_with_options(base_url, credentials, HttpOptions::default())
    }

    /// A builder for a source that logs in at `{base_url}/authtoken` (or another
    /// [`login_path`](AuthTokenSourceBuilder::login_path)) with `credentials`, over `service`:
    /// any Tower HTTP client, such as hyper-util's `Client` or a `ServiceBuilder` stack with
    /// tracing, retry or proxy layers around it. See
    /// [`http_service`](AuthTokenSourceBuilder::http_service) for what it must be and what
    /// still holds.
    ///
    /// This is the constructor without the `reqwest` feature, where the crate has no HTTP
    /// client of its own: the service is an argument, so a source without one cannot be built.
    ///
    /// ```
    /// use http_body_util::Full;
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    /// use tower_authtoken::{AuthTokenSource, Credentials};
    ///
    /// # fn run() -> Result<(), tower_authtoken::Error> {
    /// let http = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    /// let source = AuthTokenSource::builder_with_service(
    ///     "http://127.0.0.1:8080/api",
    ///     Credentials::new("alice", "wonderland"),
    ///     http,
    /// )
    /// .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder_with_service<S, ReqBody, ResBody>(
        base_url: &str,
        credentials: Credentials,
        service: S,
    ) -> AuthTokenSourceBuilder
    where
        S: LoginHttpService<ReqBody, ResBody>,
    {
        let http = HttpOptions::with_client(login_service(service));
        Self::builder_with_options(base_url, credentials, http)
    }

    fn builder_with_options(
        base_url: &str,
        credentials: Credentials,
        http: HttpOptions,
    ) -> AuthTokenSourceBuilder {
        AuthTokenSourceBuilder {
            base_url: base_url.to_owned(),
            login_path: DEFAULT_LOGIN_PATH.to_owned(),
            credentials,
            http,
        }
    }

    /// The full login URL: `{base_url}/authtoken`, or `{base_url}{login_path}`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The user name this source logs in as.
    pub fn user_name(&self) -> &str {
        self.credentials.user_name()
    }

    async fn login_inner(&self, user: &str) -> Result<Token, Error> {
        let password = self.credentials.password();
        // The only copy of the password outside `Credentials`: it goes straight into the request
        // body, is never logged or formatted, and is zeroed when the HTTP client drops it.
        let body = login_body(user, password).map_err(|e| {
            Error::new(ErrorKind::Config)
                .with_user(user)
                .with_detail("could not encode the login request")
                .with_source(e)
        })?;
        let request = self
            .http
            .post(&self.url, "application/json", body)
            .map_err(|e| e.with_user(user))?;
        let answer = self.http.send(request, user).await?;
        if answer.status.is_success() {
            return self.http.parse_token(&answer, user);
        }
        Err(status_error(
            answer.status,
            &answer.headers,
            &answer.body,
            &self.url,
            user,
            password,
        ))
    }
}

/// Runs one login, and logs its outcome at `DEBUG` (the user, the URL, the status and the kind
/// of error, never a secret).
pub(crate) async fn traced(
    user: &str,
    url: &Url,
    login: impl Future<Output = Result<Token, Error>>,
) -> Result<Token, Error> {
    let started = Instant::now();
    let result = login.await;
    let elapsed = started.elapsed();
    match &result {
        Ok(_) => tracing::debug!(user, url = %url, ?elapsed, "login succeeded"),
        Err(error) => tracing::debug!(
            user,
            url = %url,
            status = error.status().map(|s| s.as_u16()),
            kind = %error.kind(),
            ?elapsed,
            "login failed"
        ),
    }
    result
}

/// The login's HTTP client, type-erased: it sends one login request and returns the answer with
/// its body already read (capped, into a buffer zeroed when dropped). Its errors carry no user
/// yet: [`LoginHttp::send`] adds it.
///
/// Every client, reqwest's and any Tower service a user gives, is turned into one by
/// [`login_service`], so that what the answer means is decided by one implementation.
pub(crate) type ErasedLogin = BoxCloneSyncService<http::Request<Bytes>, Answer, Error>;

mod sealed {
    /// A login client, type-erased: only this crate can make or open one.
    pub struct Erased(pub(super) super::ErasedLogin);

    /// What makes a [`LoginHttpService`](super::LoginHttpService): implemented for every Tower
    /// service that qualifies, and nothing else.
    pub trait Sealed<ReqBody, ResBody> {
        fn erase(self) -> Erased;
    }
}

/// A Tower HTTP client that a login can run over:
/// [`AuthTokenSourceBuilder::http_service`], [`AuthTokenSource::builder_with_service`] and their
/// `OAuth2ClientCredentials` twins take one.
///
/// It is implemented for every `S` with
///
/// - `S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send +
///   Sync + 'static`, its `Error: Into<BoxError>` and its `Future: Send + 'static`;
/// - `ReqBody: From<Bytes> + Send + 'static`: the login body arrives as one [`Bytes`], held by
///   reference in `http_body_util::Full<Bytes>`, `reqwest::Body` and the like, so the buffer
///   sent is the crate's own, zeroed when the last reference drops;
/// - `ResBody:` [`http_body::Body`]` + Send + 'static`, its `Data: Send` and its
///   `Error: Into<BoxError>`.
///
/// hyper-util's legacy `Client<_, Full<Bytes>>`, and any `ServiceBuilder` stack around it that
/// keeps those types (tower-http's `TraceLayer`, tower's `retry`, `timeout`, `rate_limit`,
/// `map_request`), qualify. The trait is sealed: there is nothing to implement yourself.
pub trait LoginHttpService<ReqBody, ResBody>: sealed::Sealed<ReqBody, ResBody> {}

impl<S, ReqBody, ResBody> LoginHttpService<ReqBody, ResBody> for S where
    S: sealed::Sealed<ReqBody, ResBody>
{
}

/// Turns a Tower HTTP client into the login's [`ErasedLogin`]: the request body `Bytes` is
/// converted into the client's body type (`Full<Bytes>`, `reqwest::Body`, ... hold it by
/// reference, so the zeroing buffer is sent as it is), and the answer is read by
/// [`read_answer`].
impl<S, ReqBody, ResBody> sealed::Sealed<ReqBody, ResBody> for S
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqBody: From<Bytes> + Send + 'static,
    ResBody: HttpBody + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    fn erase(self) -> sealed::Erased {
        let service = self;
        sealed::Erased(BoxCloneSyncService::new(tower::service_fn(
            move |request: http::Request<Bytes>| {
                // `oneshot` on a clone: the clone that `poll_ready` made ready is the one called.
                let service = service.clone();
                async move {
                    let response = service
                        .oneshot(request.map(ReqBody::from))
                        .await
                        .map_err(|e| transport_error(e.into(), None))?;
                    read_answer(response).await
                }
            },
        )))
    }
}

/// A Tower HTTP client as the login's [`ErasedLogin`].
pub(crate) fn login_service<S, ReqBody, ResBody>(service: S) -> ErasedLogin
where
    S: LoginHttpService<ReqBody, ResBody>,
{
    sealed::Sealed::erase(service).0
}

/// A `reqwest::Client` as a [`ErasedLogin`]: the request converted to a `reqwest::Request`,
/// the response back to an `http::Response`, whose body [`read_answer`] reads as any other.
#[cfg(feature = "reqwest")]
pub(crate) fn reqwest_service(client: reqwest::Client) -> ErasedLogin {
    login_service(tower::service_fn(move |request: http::Request<Bytes>| {
        let client = client.clone();
        async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            Ok::<_, reqwest::Error>(http::Response::from(response))
        }
    }))
}

/// Our own reqwest client: one that follows no redirect, speaks HTTP/1.1 only and keeps no idle
/// connection.
#[cfg(feature = "reqwest")]
fn default_service() -> Result<ErasedLogin, Error> {
    Ok(reqwest_service(default_client()?.clone()))
}

/// The one reqwest client of the process, shared by every source without a client of its own.
///
/// Building a reqwest client loads its TLS roots, about 5 ms of CPU here: paid once per source,
/// a platform with thousands of accounts (a source each) would spend seconds making them. It
/// can be shared because it keeps no idle connection, so nothing in it belongs to a runtime: each
/// login opens its connection on the runtime that runs it.
#[cfg(feature = "reqwest")]
fn default_client() -> Result<&'static reqwest::Client, Error> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    // HTTP/1.1 only: a login is one small request, and h2 would copy a body under 256 bytes
    // (ours, with the secret) into its connection's write buffer, unwiped.
    // No idle connections kept: a login happens once per token life, and a pooled connection is
    // driven by the runtime that opened it, so a login from another runtime could wait on a
    // connection that nobody drives (a runtime left idle).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| Error::config("could not build the HTTP client").with_source(e))?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Without the `reqwest` feature there is no client of our own: the builders' constructors take
/// one, so this is never reached; if it were, it is a clear configuration error, not a panic.
#[cfg(not(feature = "reqwest"))]
fn default_service() -> Result<ErasedLogin, Error> {
    Err(Error::config(
        "no HTTP client: without the `reqwest` feature, give a Tower service to \
         builder_with_service",
    ))
}

/// The HTTP settings every login client's builder has, with their defaults.
#[derive(Clone)]
pub(crate) struct HttpOptions {
    pub(crate) timeout: Duration,
    pub(crate) user_agent: Option<String>,
    /// The caller's client; `None`: our own reqwest client.
    pub(crate) client: Option<ErasedLogin>,
    pub(crate) allow_insecure_http: bool,
    pub(crate) default_lifetime: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: DEFAULT_TIMEOUT,
            user_agent: None,
            client: None,
            allow_insecure_http: false,
            default_lifetime: DEFAULT_LIFETIME,
        }
    }
}

impl HttpOptions {
    /// The defaults, with the caller's client.
    pub(crate) fn with_client(client: ErasedLogin) -> Self {
        HttpOptions {
            client: Some(client),
            ..HttpOptions::default()
        }
    }

    /// Checks the settings, and builds our own client unless one was given: one that follows
    /// no redirect and speaks HTTP/1.1 only.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the setting: a timeout of zero or over an hour, a default
    /// lifetime of zero or over [`MAX_LIFETIME`], an invalid user agent, or a client that cannot
    /// be built.
    pub(crate) fn build(self) -> Result<LoginHttp, Error> {
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(Error::config(format!(
                "timeout must be more than zero and at most {} s (an hour), not {:?}",
                MAX_TIMEOUT.as_secs(),
                self.timeout
            )));
        }
        if self.default_lifetime.is_zero() || self.default_lifetime > MAX_LIFETIME {
            return Err(Error::config(format!(
                "default_lifetime must be more than zero and at most {} s (a year), not {:?}",
                MAX_LIFETIME.as_secs(),
                self.default_lifetime
            )));
        }
        let user_agent = match self.user_agent {
            None => HeaderValue::from_static(DEFAULT_USER_AGENT),
            Some(ua) => HeaderValue::try_from(ua).map_err(|e| {
                Error::config("the user agent is not a valid header value").with_source(e)
            })?,
        };
        let client = match self.client {
            Some(client) => client,
            None => default_service()?,
        };
        Ok(LoginHttp {
            client,
            timeout: self.timeout,
            user_agent,
            default_lifetime: self.default_lifetime,
            allow_insecure_http: self.allow_insecure_http,
        })
    }

    /// Adds the settings to a builder's `Debug`.
    pub(crate) fn debug_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) {
        d.field("timeout", &self.timeout)
            .field("user_agent", &self.user_agent)
            .field("custom_client", &self.client.is_some())
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("default_lifetime", &self.default_lifetime);
    }
}

/// The checked HTTP settings of a login client: sends one login and reads its answer, by the
/// rules every login client shares.
#[derive(Clone)]
pub(crate) struct LoginHttp {
    client: ErasedLogin,
    pub(crate) timeout: Duration,
    user_agent: HeaderValue,
    pub(crate) default_lifetime: Duration,
    /// Whether plain `http://` to a host that is not loopback was allowed, for the layer too.
    pub(crate) allow_insecure_http: bool,
}

/// The answer to one login: its status, its headers, and its body, read with a cap into a buffer
/// zeroed when dropped.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// When the response head arrived: the token's lifetime runs from here.
    pub(crate) received_at: Instant,
    /// The server's clock when it answered (the `Date` header), if it parses.
    pub(crate) server_date: Option<SystemTime>,
    /// The body. For an error answer, at most [`MAX_BODY`] bytes of it, and empty if it could
    /// not be read: it only feeds the message.
    pub(crate) body: Zeroizing<Vec<u8>>,
}

impl LoginHttp {
    /// A `POST` to `url` with `Accept: application/json`, the user agent, this `Content-Type`
    /// and `body`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if the URL is not a valid URI for `http` (a URL that
    /// [`checked_url`] accepted always is).
    pub(crate) fn post(
        &self,
        url: &Url,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<http::Request<Bytes>, Error> {
        let uri = http::Uri::try_from(url.as_str())
            .map_err(|e| Error::config("the login URL is not a valid URI").with_source(e))?;
        let mut request = http::Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        Ok(request)
    }

    /// Sends a login request and reads the answer, within the timeout.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] or [`ErrorKind::Transport`] when no answer comes, and for a
    /// successful status whose body breaks off; [`ErrorKind::InvalidResponse`] for a successful
    /// status whose body is over [`MAX_BODY`].
    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
        user: &str,
    ) -> Result<Answer, Error> {
        let exchange = self.client.clone().oneshot(request);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(error.with_user(user)),
            Err(elapsed) => Err(Error::new(ErrorKind::Timeout)
                .with_user(user)
                .with_detail("the login endpoint did not answer in time: it is slow or unreachable")
                .with_source(elapsed)),
        }
    }

    /// Parses a successful answer into a token (see the [`token`](crate::token) module for the
    /// rules), with the user and the status on any error.
    pub(crate) fn parse_token(&self, answer: &Answer, user: &str) -> Result<Token, Error> {
        crate::token::parse_token_response(
            &answer.body,
            self.default_lifetime,
            answer.received_at,
            answer.server_date,
        )
        .map_err(|e| e.with_user(user).with_status(answer.status))
    }
}

/// Reads the answer of any HTTP client: the status, the headers, the `Date` and the body, by the
/// one set of rules every login client shares.
///
/// The body of a successful answer is read whole, up to [`MAX_BODY`]: a larger one (by its
/// announced length or as it arrives) is [`ErrorKind::InvalidResponse`], and one that breaks
/// off is [`ErrorKind::Transport`] (or [`ErrorKind::Timeout`]). The body of an error answer only
/// feeds the message: what fits is read, and a failure leaves it empty.
async fn read_answer<B>(response: http::Response<B>) -> Result<Answer, Error>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    // The token's lifetime runs from the moment the answer arrived.
    let received_at = Instant::now();
    let (parts, body) = response.into_parts();
    let status = parts.status;
    // The server's clock when it answered, to measure an `expires` without `issued` against.
    let server_date = parts
        .headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timestamp);
    let announced = body.size_hint().exact();
    let body = if status.is_success() {
        if announced.is_some_and(|len| len > MAX_BODY as u64) {
            return Err(too_large(status));
        }
        match read_capped(body, announced, MAX_BODY).await {
            Ok(Capped::Complete(body)) => body,
            Ok(Capped::Overflow(_)) => return Err(too_large(status)),
            Err(e) => return Err(transport_error(e, Some(status))),
        }
    } else {
        match read_capped(body, announced, MAX_BODY).await {
            Ok(Capped::Complete(body) | Capped::Overflow(body)) => body,
            Err(_) => Zeroizing::new(Vec::new()),
        }
    };
    Ok(Answer {
        status,
        headers: parts.headers,
        received_at,
        server_date,
        body,
    })
}

/// The login request body, `{"userName": ..., "password": ...}`, in a buffer that is zeroed when
/// the last reference to it drops (`reqwest` and `hyper` hold references, not copies).
fn login_body(user_name: &str, password: &str) -> Result<Bytes, serde_json::Error> {
    // JSON writes a byte as at most 6 (`\u00XX`). With that much room, serializing never
    // reallocates: a reallocation would free a partial copy of the password without wiping it.
    let capacity = 32 + 6 * (user_name.len() + password.len());
    let mut body = Zeroizing::new(Vec::with_capacity(capacity));
    let allocated = body.capacity();
    serde_json::to_writer(
        &mut *body,
        &LoginRequest {
            user_name,
            password,
        },
    )?;
    debug_assert_eq!(body.capacity(), allocated, "the login body reallocated");
    Ok(Bytes::from_owner(body))
}

/// The login request body. Deliberately not `Debug`: it holds the password.
#[derive(Serialize)]
struct LoginRequest<'a> {
    #[serde(rename = "userName")]
    user_name: &'a str,
    password: &'a str,
}

/// A body read with a cap, in a buffer zeroed when dropped (it holds the token, or a server
/// message that may echo the password).
enum Capped {
    /// The whole body, at most the cap.
    Complete(Zeroizing<Vec<u8>>),
    /// The body was longer than the cap: its first `cap` bytes.
    Overflow(Zeroizing<Vec<u8>>),
}

/// Reads the body frame by frame, and stops as soon as it grows over `cap`. `announced` is the
/// length the body announced, if any, to size the buffer.
///
/// The buffer never reallocates in place: it grows into a new buffer and the old one is zeroed,
/// so no unwiped copy of the body is ever freed.
async fn read_capped<B>(body: B, announced: Option<u64>, cap: usize) -> Result<Capped, BoxError>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    let expected = announced.map_or(1024, |len| usize::try_from(len).unwrap_or(cap));
    let mut buffer = Zeroizing::new(Vec::with_capacity(expected.min(cap)));
    let mut body = pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(mut data) = frame.map_err(Into::into)?.into_data() else {
            // Trailers say nothing about the token.
            continue;
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            let room = cap - buffer.len();
            let take = chunk.len().min(room);
            reserve_wiped(&mut buffer, take, cap);
            buffer.extend_from_slice(&chunk[..take]);
            if chunk.len() > room {
                return Ok(Capped::Overflow(buffer));
            }
            let advance = chunk.len();
            data.advance(advance);
        }
    }
    Ok(Capped::Complete(buffer))
}

/// Makes room for `additional` more bytes (at most `cap` in all), by moving into a larger buffer
/// and zeroing the old one, never by `Vec`'s own reallocation.
fn reserve_wiped(buffer: &mut Zeroizing<Vec<u8>>, additional: usize, cap: usize) {
    let needed = buffer.len() + additional;
    if needed <= buffer.capacity() {
        return;
    }
    let mut grown = Zeroizing::new(Vec::with_capacity(
        needed
            .max(buffer.capacity().saturating_mul(2))
            .min(cap.max(needed)),
    ));
    grown.extend_from_slice(buffer);
    // The old buffer is zeroed as it drops.
    *buffer = grown;
}

fn too_large(status: StatusCode) -> Error {
    Error::new(ErrorKind::InvalidResponse)
        .with_status(status)
        .with_detail(format!("body larger than {} KiB", MAX_BODY / 1024))
}

/// Maps a failed exchange (`status`: `None`) or body read (`status`: the answer's): a timeout
/// anywhere in the error's chain (reqwest's, Tokio's, an I/O `TimedOut`) is
/// [`ErrorKind::Timeout`], a request reqwest could not build is [`ErrorKind::Config`], anything
/// else [`ErrorKind::Transport`].
fn transport_error(error: BoxError, status: Option<StatusCode>) -> Error {
    let kind = transport_kind(&*error);
    let mut out = Error::new(kind);
    if let Some(status) = status {
        out = out.with_status(status);
    }
    if kind == ErrorKind::Transport && status.is_some() {
        out = out.with_detail("the connection broke while reading the response body");
    }
    // The error names at most the login URL, which carries no secret (user info is refused).
    out.with_source(error)
}

/// The kind of a transport failure, from the first error in the chain that says.
fn transport_kind(error: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut next = Some(error);
    while let Some(error) = next {
        #[cfg(feature = "reqwest")]
        if let Some(error) = error.downcast_ref::<reqwest::Error>() {
            if error.is_timeout() {
                return ErrorKind::Timeout;
            }
            if error.is_builder() {
                return ErrorKind::Config;
            }
        }
        if error.is::<tokio::time::error::Elapsed>()
            || error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return ErrorKind::Timeout;
        }
        next = error.source();
    }
    ErrorKind::Transport
}

/// Maps a non-success status to its error.
///
/// A redirect, and a `404` without the API's "No user found" message, mean the URL is wrong:
/// those are [`ErrorKind::Config`] errors that name the URL called (`url`, which carries no user
/// info: [`checked_url`] refuses it).
fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    url: &Url,
    user: &str,
    password: &str,
) -> Error {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let message = server_message(body, content_type, password);
    let kind = match status.as_u16() {
        300..=399 => return redirect_error(status, headers, url, user, &AUTHTOKEN_NAMES),
        400 => ErrorKind::InvalidGrant,
        401 => ErrorKind::AuthenticationFailed,
        403 => ErrorKind::Forbidden,
        404 if message
            .as_deref()
            .is_some_and(|m| m.to_lowercase().contains(UNKNOWN_USER_MESSAGE)) =>
        {
            ErrorKind::UnknownUser
        }
        404 => {
            return wrong_url_error(
                status,
                message.as_deref(),
                url,
                user,
                " without the login endpoint's \"No user found with username\" message, so the \
                 URL is wrong: check the base URL",
            );
        }
        429 => return rate_limited(headers, user, status, message),
        _ => ErrorKind::Server,
    };
    let mut error = Error::new(kind).with_user(user).with_status(status);
    if let Some(message) = message {
        error = error.with_detail(message);
    }
    error
}

/// A `429`: [`ErrorKind::RateLimited`], with the wait its `Retry-After` asks for, if it has a
/// readable one.
pub(crate) fn rate_limited(
    headers: &HeaderMap,
    user: &str,
    status: StatusCode,
    message: Option<String>,
) -> Error {
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut error = Error::new(ErrorKind::RateLimited)
        .with_user(user)
        .with_status(status)
        .with_retry_after(retry_after);
    if let Some(message) = message {
        error = error.with_detail(message);
    }
    error
}

/// The status with its reason phrase, such as `404 Not Found`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// A status that means the URL points somewhere else than a login endpoint: a
/// [`ErrorKind::Config`] error whose detail is `POST {url} answered {status}{why}`, then what
/// the server said, if anything.
pub(crate) fn wrong_url_error(
    status: StatusCode,
    message: Option<&str>,
    url: &Url,
    user: &str,
    why: &str,
) -> Error {
    let mut detail = format!("POST {url} answered {}{why}", status_text(status));
    if let Some(message) = message {
        detail.push_str("; the server said: ");
        detail.push_str(message);
    }
    Error::config(detail).with_user(user).with_status(status)
}

/// A redirect, which is never followed (it could carry the secret elsewhere): the configured URL
/// should be where it points.
pub(crate) fn redirect_error(
    status: StatusCode,
    headers: &HeaderMap,
    url: &Url,
    user: &str,
    names: &EndpointNames,
) -> Error {
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|location| match url.join(location) {
            Ok(mut target) => {
                // Never show user info, which may hold a password.
                let _ = target.set_username("");
                let _ = target.set_password(None);
                target.to_string()
            }
            // Not shown: we cannot tell what in it might be secret.
            Err(_) => "a Location that is not a URL".to_owned(),
        })
        .map(|location| {
            let mut shown: String = location.chars().take(MAX_MESSAGE_CHARS).collect();
            if shown.len() < location.len() {
                shown.push('…');
            }
            shown
        });
    let target = match &location {
        Some(location) => format!("to {location}"),
        None => "without a Location".to_owned(),
    };
    Error::config(format!(
        "POST {url} answered {} {target}: check the {}; redirects of a login are not \
         followed, so that the {} never goes elsewhere",
        status_text(status),
        names.configured,
        names.secret,
    ))
    .with_user(user)
    .with_status(status)
}

/// The server's message from an error body, safe to keep in an [`Error`].
///
/// That is the JSON `message` field if the body is a JSON object with one, else the body as text
/// (unless it is HTML: a proxy's error page says nothing useful). Control characters are removed,
/// every occurrence of `password` is replaced by `[redacted]`, and the result is cut to 200
/// characters. `None` if nothing is left.
///
/// Every intermediate copy, which may hold an echoed password, is zeroed when dropped.
pub(crate) fn server_message(
    body: &[u8],
    content_type: Option<&str>,
    password: &str,
) -> Option<String> {
    let raw: Zeroizing<String> = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            let message = match &value {
                serde_json::Value::Object(map) => match map.get("message") {
                    Some(serde_json::Value::String(message)) => Some(message.clone()),
                    _ => None,
                },
                serde_json::Value::String(message) => Some(message.clone()),
                _ => None,
            };
            crate::token::wipe_json(&mut value);
            Zeroizing::new(message?)
        }
        Err(_) => {
            if content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("html")) {
                return None;
            }
            Zeroizing::new(String::from_utf8_lossy(body).into_owned())
        }
    };
    clean_message(&raw, password)
}

/// A server's text made safe to keep in an [`Error`]: control characters removed, every
/// occurrence of `secret` replaced by `[redacted]`, cut to 200 characters. `None` if nothing is
/// left.
///
/// Every intermediate copy, which may hold an echoed secret, is zeroed when dropped.
pub(crate) fn clean_message(raw: &str, password: &str) -> Option<String> {
    // Redact the password as it is, then again without control characters once they are
    // removed (so that none hidden inside an echoed password defeats the redaction), and all of
    // it before truncating, so that no prefix of the password survives.
    let strip = |s: &str| -> Zeroizing<String> {
        // Sized up front: growing would free partial copies without wiping them.
        let mut out = Zeroizing::new(String::with_capacity(s.len()));
        out.extend(s.chars().filter(|c| !c.is_control()));
        out
    };
    let mut text = Zeroizing::new(raw.to_owned());
    if !password.is_empty() {
        text = Zeroizing::new(text.replace(password, REDACTED));
    }
    let mut text = strip(&text);
    let password = strip(password);
    if !password.is_empty() {
        text = Zeroizing::new(text.replace(password.as_str(), REDACTED));
    }
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    Some(out)
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP-date (any of the three forms RFC 9110
/// asks receivers to accept) turned into the wait from `now`, zero if the date has passed.
/// `None` if it is neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    // Only a date from here on: a bare number would read as seconds since 1970.
    if !value.bytes().any(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let date = parse_timestamp(value)?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

impl TokenSource for AuthTokenSource {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        let user = self.credentials.user_name();
        traced(user, &self.url, self.login_inner(user))
    }

    fn user_name(&self) -> Option<&str> {
        Some(self.credentials.user_name())
    }

    fn allows_insecure_http(&self) -> bool {
        self.http.allow_insecure_http
    }
}

impl fmt::Debug for AuthTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthTokenSource")
            .field("url", &self.url.as_str())
            .field("user_name", &self.credentials.user_name())
            .field("timeout", &self.http.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AuthTokenSource`]; start with [`AuthTokenSource::builder`].
///
/// Every setter states its default. [`build`](AuthTokenSourceBuilder::build) checks everything.
#[must_use = "call build() to get an AuthTokenSource"]
pub struct AuthTokenSourceBuilder {
    base_url: String,
    login_path: String,
    credentials: Credentials,
    http: HttpOptions,
}

impl AuthTokenSourceBuilder {
    /// The path of the login endpoint, relative to the base URL.
    ///
    /// Default: `/authtoken`. With `login_path("/v2/auth/token")`, the base URL
    /// `https://h/api` logs in at `https://h/api/v2/auth/token`. A base URL that already ends
    /// with the path (compared ignoring ASCII case) is the login URL itself: `https://h/api/v2/auth/token`
    /// is not extended. The leading `/` is optional. The path must be non-empty, of ASCII
    /// characters allowed in a URL path (no whitespace, `?`, `#`, `\`, `%`), without empty,
    /// `.` or `..` segments, or [`build`](Self::build) fails with [`ErrorKind::Config`] naming
    /// `login_path`.
    pub fn login_path(mut self, path: impl Into<String>) -> Self {
        self.login_path = path.into();
        self
    }

    /// The longest one login may take, from connecting until the whole response body is read.
    ///
    /// Default: 30 seconds. A login that takes longer fails with [`ErrorKind::Timeout`]. Must be
    /// more than zero and at most one hour, or [`build`](Self::build) fails with
    /// [`ErrorKind::Config`] naming `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.http.timeout = timeout;
        self
    }

    /// The `User-Agent` header of the login request.
    ///
    /// Default: `tower-authtoken/<version>`, such as `tower-authtoken/0.1.0`. It is sent even
    /// with a caller-supplied [`client`](Self::client). Must be a valid header value.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.http.user_agent = Some(user_agent.into());
        self
    }

    /// Uses your own `reqwest::Client`, for example to share its connection pool or to configure
    /// a proxy or extra root certificates.
    ///
    /// Default: a client of our own, one per process shared by every source without a client of
    /// its own (so that making a source costs microseconds, not the milliseconds of loading TLS
    /// roots: a keyed cache makes one per account). It follows no redirects (a redirect of a
    /// login could carry the password elsewhere; it fails with [`ErrorKind::Config`] naming the
    /// `Location` instead), speaks HTTP/1.1 only (over HTTP/2, the `h2` crate copies small request bodies,
    /// the password among them, into its connection's write buffer, which is never wiped), and
    /// keeps no idle connection (a pooled connection is driven by the runtime that opened it, and
    /// a login from another runtime could wait on it while that one sits idle). With your
    /// client, its redirect policy applies; the [`timeout`](Self::timeout) and the user agent
    /// are still applied to every login request. If the cache is used from several runtimes,
    /// give your client `pool_max_idle_per_host(0)` for the same reason.
    ///
    /// Do not pass a client built with `connection_verbose(true)`: it logs the raw bytes of
    /// every request and response at `TRACE`, the password and the token among them.
    ///
    /// Replaces any [`http_service`](Self::http_service) set before.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.http.client = Some(reqwest_service(client));
        self
    }

    /// Logs in over `service`, any Tower HTTP client: hyper-util's `Client`, or a
    /// `ServiceBuilder` stack around one with tracing (tower-http's `TraceLayer`), retry, rate
    /// limit or proxy layers. Replaces any [`client`](Self::client) set before.
    ///
    /// Default: with the `reqwest` feature, our own reqwest client (see
    /// [`client`](Self::client)); without it, the service given to
    /// [`AuthTokenSource::builder_with_service`].
    ///
    /// What qualifies is said at [`LoginHttpService`]: in short, a `Clone + Send + Sync`
    /// service of `http::Request<B>` with `B: From<Bytes>` (such as `Full<Bytes>`) to an
    /// `http::Response` of any body. Each login calls a clone, made ready first. Everything else holds
    /// as with our own client, by the same code: the request (absolute URI, `POST`, the
    /// headers), the [`timeout`](Self::timeout) around the whole exchange (the body read
    /// included), the body cap of 64 KiB and its zeroing, the status mapping, the `Date`
    /// handling, the plain-HTTP rule, and no secret in errors or in this crate's logs. A
    /// service that fails gives [`ErrorKind::Transport`] (or [`ErrorKind::Timeout`] when a
    /// timeout in its error's chain says so), which the cache retries.
    ///
    /// What the service does is yours to check:
    /// - do not let it follow redirects (tower-http's `FollowRedirect` would send the password
    ///   to the `Location` of a `307`/`308`); hyper-util's `Client` never does, so a redirect
    ///   fails with [`ErrorKind::Config`] naming the `Location`;
    /// - do not log request bodies, or headers without their sensitivity marks;
    /// - an HTTP/2 connection copies the small login body into a write buffer that is never
    ///   wiped: prefer HTTP/1.1 for the login;
    /// - if the cache is used from several runtimes, keep no idle connection
    ///   (hyper-util: `pool_max_idle_per_host(0)`), for the reason given at
    ///   [`client`](Self::client).
    pub fn http_service<S, ReqBody, ResBody>(mut self, service: S) -> Self
    where
        S: LoginHttpService<ReqBody, ResBody>,
    {
        self.http.client = Some(login_service(service));
        self
    }

    /// Allows plain `http://` to a host that is not loopback. This is the switch that the
    /// [`ErrorKind::InsecureTransport`] error of [`build`](Self::build) names.
    ///
    /// Default: `false`. Plain `http://` is always allowed to `localhost`, `127.0.0.0/8` and
    /// `::1`, where the traffic never leaves the machine; anywhere else it would send the
    /// password in clear text, so [`build`](Self::build) fails with
    /// [`ErrorKind::InsecureTransport`] unless you opt in here.
    ///
    /// A [`TokenCache`](crate::TokenCache) over this source follows the same decision for the
    /// requests [`BearerAuth`](crate::BearerAuth) sends with its tokens: one opt-in is enough.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.http.allow_insecure_http = allow;
        self
    }

    /// The lifetime assumed for a token whose response says nothing about its expiry.
    ///
    /// Default: [`DEFAULT_LIFETIME`](crate::token::DEFAULT_LIFETIME), 5 minutes: a response with
    /// only a `token` gives a token valid for 5 minutes from its arrival. It also caps an
    /// `expires` measured against our own clock (see the [`token`](crate::token) module). Must
    /// be more than zero and at most [`MAX_LIFETIME`](crate::token::MAX_LIFETIME), a year, or
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming `default_lifetime`.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.http.default_lifetime = lifetime;
        self
    }

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a base URL that does not parse, is not `http(s)`, or carries
    /// user info, a query or a fragment, for an empty user name, a timeout of zero or over one
    /// hour, a default lifetime of zero or over [`MAX_LIFETIME`](crate::token::MAX_LIFETIME), an
    /// invalid user agent, or if the HTTP client cannot be built; each message names the
    /// setting. [`ErrorKind::InsecureTransport`] for plain `http://` to a non-loopback host
    /// without [`allow_insecure_http`](Self::allow_insecure_http); its message names the host
    /// and that switch.
    pub fn build(self) -> Result<AuthTokenSource, Error> {
        let url = login_url(
            &self.base_url,
            &self.login_path,
            self.http.allow_insecure_http,
        )?;
        if self.credentials.user_name().is_empty() {
            return Err(Error::config("the user name is empty"));
        }
        Ok(AuthTokenSource {
            http: self.http.build()?,
            url,
            credentials: self.credentials,
        })
    }
}

/// A base URL fit to print: without any user info, which may hold a password; not at all when it
/// does not parse, since then we cannot tell what in it is secret.
pub(crate) fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            format!("{parsed} (user info redacted)")
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[not a valid URL]".to_owned(),
    }
}

impl fmt::Debug for AuthTokenSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuthTokenSourceBuilder");
        d.field("base_url", &redacted_url(&self.base_url))
            .field("login_path", &self.login_path)
            .field("user_name", &self.credentials.user_name());
        self.http.debug_fields(&mut d);
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(base: &str) -> Result<String, Error> {
        login_url(base, DEFAULT_LOGIN_PATH, false).map(|u| u.to_string())
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn sources_without_a_client_of_their_own_share_one() {
        let first = default_client().unwrap();
        let second = default_client().unwrap();
        assert!(
            std::ptr::eq(first, second),
            "a reqwest client built per source"
        );
    }

    #[test]
    fn url_joining_keeps_the_path_prefix_without_double_slashes() {
        for (base, expected) in [
            ("https://h", "https://h/authtoken"),
            ("https://h/", "https://h/authtoken"),
            ("https://h/api/v1", "https://h/api/v1/authtoken"),
            ("https://h/api/v1/", "https://h/api/v1/authtoken"),
            ("https://h/api/v1//", "https://h/api/v1/authtoken"),
            ("https://h:8443/x", "https://h:8443/x/authtoken"),
            (
                "HTTPS://H.Example.COM/A",
                "https://h.example.com/A/authtoken",
            ),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000/authtoken"),
            ("http://[::1]:9000/p/", "http://[::1]:9000/p/authtoken"),
            ("  https://h/api  ", "https://h/api/authtoken"),
            ("https://h/authtoken", "https://h/authtoken"),
            ("https://h/api/authtoken", "https://h/api/authtoken"),
            ("https://h/api/authtoken/", "https://h/api/authtoken"),
            ("https://h/api/AuthToken", "https://h/api/AuthToken"),
            (
                "https://h/api/authtokens",
                "https://h/api/authtokens/authtoken",
            ),
            ("https://h/myauthtoken", "https://h/myauthtoken/authtoken"),
        ] {
            assert_eq!(url_of(base).unwrap(), expected, "{base}");
        }
    }

    #[test]
    fn login_path_is_appended_unless_the_base_url_already_ends_with_it() {
        let url = |base: &str, path: &str| login_url(base, path, false).map(|u| u.to_string());
        for (base, path, expected) in [
            ("https://h", "/v2/auth/token", "https://h/v2/auth/token"),
            (
                "https://h/api/",
                "/v2/auth/token",
                "https://h/api/v2/auth/token",
            ),
            (
                "https://h/api",
                "v2/auth/token/",
                "https://h/api/v2/auth/token",
            ),
            ("https://h/api", "/login", "https://h/api/login"),
            (
                "https://h/api/v2/auth/token",
                "/v2/auth/token",
                "https://h/api/v2/auth/token",
            ),
            (
                "https://h/V2/Auth/Token/",
                "/v2/auth/token",
                "https://h/V2/Auth/Token",
            ),
            (
                "https://h/auth/token",
                "/v2/auth/token",
                "https://h/auth/token/v2/auth/token",
            ),
            (
                "https://h/api/token",
                "/v2/auth/token",
                "https://h/api/token/v2/auth/token",
            ),
            (
                "https://h/api/authtoken",
                "/authtoken",
                "https://h/api/authtoken",
            ),
        ] {
            assert_eq!(url(base, path).unwrap(), expected, "{base} + {path}");
        }
        for path in [
            "", "/", "//", "/a//b", "/a/../b", "./a", "/a b", "/a?x=1", "/a#f", "/a\\b", "/%2e%2e",
            "/é",
        ] {
            let err = url("https://h", path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{path:?}");
            assert!(
                err.detail().unwrap().starts_with("login_path must be"),
                "{err}"
            );
        }
    }

    #[test]
    fn builder_login_path_changes_the_login_url() {
        let source = AuthTokenSource::builder("https://h/api", Credentials::new("alice", "pw"))
            .login_path("/v2/auth/token")
            .build()
            .unwrap();
        assert_eq!(source.url(), "https://h/api/v2/auth/token");
        let err = AuthTokenSource::builder("https://h/api", Credentials::new("alice", "pw"))
            .login_path("/a?b")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn bad_urls_are_refused_as_config_errors() {
        for base in [
            "",
            "not a url",
            "h/api",
            "ftp://h/api",
            "file:///etc/passwd",
            "https://h/api?x=1",
            "https://h/api?",
            "https://h/api#frag",
            "https://user@h/api",
            "https://user:pw@h/api",
            "https://:pw@h/api",
        ] {
            let err = url_of(base).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{base}: {err}");
            assert!(err.detail().is_some(), "{base}");
        }
    }

    #[test]
    fn userinfo_refusal_never_echoes_the_password() {
        for base in [
            "https://alice:hunter2-secret@h/api",
            "http://alice:hunter2-secret@example.com/api",
        ] {
            let err = url_of(base).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{base}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("hunter2-secret"), "{text}");
            assert!(text.contains("user info"), "{text}");
        }
    }

    #[test]
    fn plain_http_is_refused_unless_loopback_or_allowed() {
        for base in [
            "http://example.com",
            "http://10.0.0.1/api",
            "http://[2001:db8::1]/",
            "http://localhost.example.com",
            "http://evil-localhost",
            "http://128.0.0.1",
        ] {
            let err = url_of(base).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InsecureTransport, "{base}");
            assert!(login_url(base, DEFAULT_LOGIN_PATH, true).is_ok(), "{base}");
        }
        for base in [
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://127.0.0.1",
            "http://127.255.0.9/x",
            "http://[::1]:1234",
            "http://127.1",
        ] {
            assert!(url_of(base).is_ok(), "{base}");
        }
    }

    #[test]
    fn insecure_transport_error_names_the_host_and_the_switch() {
        let err = url_of("http://api.example.com:8080/v1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InsecureTransport);
        assert_eq!(
            err.detail(),
            Some(
                "the login URL is plain http to 'api.example.com', which is not loopback: \
                 AuthTokenSourceBuilder::allow_insecure_http(true) allows it"
            )
        );
    }

    fn api_login_url() -> Url {
        login_url("https://h/api", DEFAULT_LOGIN_PATH, false).unwrap()
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn a_404_without_the_unknown_user_message_is_a_wrong_url() {
        let url = api_login_url();
        let html = headers(&[(header::CONTENT_TYPE, "text/html")]);
        let json = headers(&[(header::CONTENT_TYPE, "application/json")]);
        let cases: &[(&HeaderMap, &[u8], Option<&str>)] = &[
            (&html, b"<html><h1>Not Found</h1></html>", None),
            (&json, b"", None),
            (
                &json,
                br#"{"timestamp":"x","status":404,"error":"Not Found"}"#,
                None,
            ),
            (
                &json,
                b"Cannot POST /api/authtoken",
                Some("Cannot POST /api/authtoken"),
            ),
        ];
        for &(headers, body, said) in cases {
            let err = status_error(StatusCode::NOT_FOUND, headers, body, &url, "alice", "pw");
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
            let detail = err.detail().unwrap();
            assert!(
                detail.starts_with(
                    "POST https://h/api/authtoken answered 404 Not Found without the login \
                     endpoint's \"No user found with username\" message, so the URL is wrong: \
                     check the base URL"
                ),
                "{detail}"
            );
            match said {
                Some(said) => assert!(detail.ends_with(&format!("; the server said: {said}"))),
                None => assert!(!detail.contains("server said"), "{detail}"),
            }
        }
        for body in [
            &br#"{"message":"No user found with username: alice"}"#[..],
            b"no user found with username: alice",
        ] {
            let err = status_error(StatusCode::NOT_FOUND, &json, body, &url, "alice", "pw");
            assert_eq!(err.kind(), ErrorKind::UnknownUser, "{err}");
        }
    }

    #[test]
    fn a_redirect_is_a_config_error_naming_the_location() {
        let url = api_login_url();
        let cases = [
            (
                StatusCode::MOVED_PERMANENTLY,
                Some("https://new.example.com/v2/authtoken"),
                "POST https://h/api/authtoken answered 301 Moved Permanently to \
                 https://new.example.com/v2/authtoken: check the base URL; redirects of a login \
                 are not followed, so that the password never goes elsewhere",
            ),
            (
                StatusCode::TEMPORARY_REDIRECT,
                Some("/login?next=%2Fapi"),
                "POST https://h/api/authtoken answered 307 Temporary Redirect to \
                 https://h/login?next=%2Fapi: check the base URL; redirects of a login are not \
                 followed, so that the password never goes elsewhere",
            ),
            (
                StatusCode::FOUND,
                Some("https://bob:hunter2@evil.example.com/"),
                "POST https://h/api/authtoken answered 302 Found to https://evil.example.com/: \
                 check the base URL; redirects of a login are not followed, so that the \
                 password never goes elsewhere",
            ),
            (
                StatusCode::PERMANENT_REDIRECT,
                None,
                "POST https://h/api/authtoken answered 308 Permanent Redirect without a \
                 Location: check the base URL; redirects of a login are not followed, so that \
                 the password never goes elsewhere",
            ),
        ];
        for (status, location, expected) in cases {
            let headers = match location {
                Some(location) => headers(&[(header::LOCATION, location)]),
                None => HeaderMap::new(),
            };
            let err = status_error(status, &headers, b"", &url, "alice", "pw");
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(!err.is_transient());
            assert_eq!(err.status(), Some(status));
            assert_eq!(err.detail(), Some(expected));
            assert!(!format!("{err} {err:?}").contains("hunter2"));
        }
    }

    #[test]
    fn the_login_body_is_json_in_a_buffer_that_never_reallocated() {
        let body = login_body("al\"ice", "p\u{1}w\\").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"userName": "al\"ice", "password": "p\u{1}w\\"})
        );
        // The worst case: every byte escaped to six.
        let nasty = "\u{1}".repeat(100);
        let body = login_body(&nasty, &nasty).unwrap();
        assert_eq!(body.len(), 29 + 2 * 600);
    }

    #[test]
    fn build_checks_its_inputs() {
        let creds = || Credentials::new("alice", "pw");
        let base = "https://h";
        let kind = |b: AuthTokenSourceBuilder| b.build().unwrap_err().kind();
        assert_eq!(
            kind(AuthTokenSource::builder(base, Credentials::new("", "pw"))),
            ErrorKind::Config
        );
        assert_eq!(
            kind(AuthTokenSource::builder(base, creds()).timeout(Duration::ZERO)),
            ErrorKind::Config
        );
        assert_eq!(
            kind(AuthTokenSource::builder(base, creds()).default_lifetime(Duration::ZERO)),
            ErrorKind::Config
        );
        assert_eq!(
            kind(
                AuthTokenSource::builder(base, creds())
                    .default_lifetime(MAX_LIFETIME + Duration::from_secs(1))
            ),
            ErrorKind::Config
        );
        assert_eq!(
            kind(AuthTokenSource::builder(base, creds()).user_agent("bad\nagent")),
            ErrorKind::Config
        );
        for timeout in [
            Duration::ZERO,
            MAX_TIMEOUT + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            let err = AuthTokenSource::builder(base, creds())
                .timeout(timeout)
                .build()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(
                err.detail().unwrap().starts_with("timeout must be"),
                "{err}"
            );
        }
        let err = AuthTokenSource::builder(base, creds())
            .default_lifetime(Duration::MAX)
            .build()
            .unwrap_err();
        assert!(
            err.detail()
                .unwrap()
                .starts_with("default_lifetime must be"),
            "{err}"
        );
        AuthTokenSource::builder(base, creds())
            .timeout(MAX_TIMEOUT)
            .default_lifetime(MAX_LIFETIME)
            .build()
            .unwrap();
        let source = AuthTokenSource::new("https://h/api/", creds()).unwrap();
        assert_eq!(source.url(), "https://h/api/authtoken");
        assert_eq!(source.user_name(), "alice");
        assert_eq!(source.http.timeout, DEFAULT_TIMEOUT);
        assert_eq!(source.http.default_lifetime, DEFAULT_LIFETIME);
        assert_eq!(source.http.user_agent, DEFAULT_USER_AGENT);
        assert!(DEFAULT_USER_AGENT.starts_with("tower-authtoken/"));
    }

    #[test]
    fn debug_shows_url_user_and_timeout_but_never_the_password() {
        let credentials = Credentials::new("alice", "s3cr3t-Pa55w0rd");
        let builder =
            AuthTokenSource::builder("https://h/api", credentials).timeout(Duration::from_secs(7));
        let builder_debug = format!("{builder:?} {builder:#?}");
        assert!(
            !builder_debug.contains("s3cr3t-Pa55w0rd"),
            "{builder_debug}"
        );
        let source = builder.build().unwrap();
        let debug = format!("{source:?} {source:#?}");
        assert!(debug.contains("https://h/api/authtoken"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(debug.contains("7s"), "{debug}");
        assert!(!debug.contains("s3cr3t-Pa55w0rd"), "{debug}");
    }

    #[test]
    fn server_messages_are_cleaned_redacted_and_truncated() {
        let json = br#"{"message":"No user found with username: bob"}"#;
        assert_eq!(
            server_message(json, Some("application/json"), "pw").as_deref(),
            Some("No user found with username: bob")
        );
        assert_eq!(
            server_message(b"  plain\ttext\r\n ", Some("text/plain"), "pw").as_deref(),
            Some("plaintext")
        );
        assert_eq!(
            server_message(b"bad password: hun\x07ter2!", None, "hunter2").as_deref(),
            Some("bad password: [redacted]!")
        );
        assert_eq!(
            server_message(b"echo tab\tpw and tabpw", None, "tab\tpw").as_deref(),
            Some("echo [redacted] and [redacted]")
        );
        // A JSON escape does not hide the password either.
        let escaped = br#"{"message":"echo \u0068unter2"}"#;
        assert_eq!(
            server_message(escaped, None, "hunter2").as_deref(),
            Some("echo [redacted]")
        );
        let long = "x".repeat(1000) + "hunter2";
        let message = server_message(long.as_bytes(), None, "hunter2").unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(!message.contains("hunter"));
        assert_eq!(
            server_message(b"<html>oops</html>", Some("text/html"), "p"),
            None
        );
        assert_eq!(server_message(b"", None, "p"), None);
        assert_eq!(server_message(br#"{"error":"x"}"#, None, "p"), None);
        assert_eq!(
            server_message(b"pw", None, "").as_deref(),
            Some("pw"),
            "an empty password redacts nothing"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800); // 2024-05-01T12:00:00Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 01 May 2024 12:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Wednesday, 01-May-24 12:01:30 GMT", now),
            Some(Duration::from_secs(90)),
            "the obsolete RFC 850 form"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
