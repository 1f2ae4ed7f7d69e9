//! OAuth 2.0 client credentials (RFC 6749 §4.4): [`OAuth2ClientCredentials`] gets an access
//! token from a token endpoint with a client id and a client secret. See
//! [`OAuth2ClientCredentials`] for the request, the error mapping and an example.
//!
//! It is built on the same client code as [`AuthTokenSource`](crate::AuthTokenSource): the same
//! URL and plain-HTTP rules, the same capped body that is zeroed when dropped, the same refusal
//! of redirects, the same timeout, the same response parser and the same cleaning of server
//! messages. Only the request and the meaning of an error answer differ.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};
use url::Url;
use zeroize::Zeroizing;

use crate::client::{
    Answer, EndpointNames, HttpOptions, LoginHttp, LoginHttpService, checked_url, clean_message,
    login_service, rate_limited, redacted_url, redirect_error, server_message, traced,
    wrong_url_error,
};
use crate::{Credentials, Error, ErrorKind, Token, TokenSource};

/// How a token endpoint is named in error messages.
const NAMES: EndpointNames = EndpointNames {
    configured: "token URL",
    called: "token URL",
    insecure_switch: "OAuth2ClientCredentialsBuilder::allow_insecure_http(true)",
    secret: "client secret",
};

/// The form parameters this source writes itself, which [`OAuth2ClientCredentialsBuilder::param`]
/// refuses.
const RESERVED_PARAMS: [&str; 4] = ["grant_type", "scope", "client_id", "client_secret"];

/// The longest error code shown in an error; a longer one is not an RFC 6749 code.
const MAX_CODE_CHARS: usize = 64;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
///
/// The default is [`Basic`](ClientAuth::Basic), which every server must support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic: `Authorization: Basic base64(id:secret)`, where the id and the secret are
    /// each `application/x-www-form-urlencoded` first, as RFC 6749 §2.3.1 requires (a space
    /// becomes `+`, a `:` becomes `%3A`).
    #[default]
    Basic,
    /// The `client_id` and `client_secret` form parameters in the request body.
    RequestBody,
}

/// Gets access tokens with the OAuth 2.0 client credentials grant (RFC 6749 §4.4).
///
/// Build one with [`OAuth2ClientCredentials::new`] or [`OAuth2ClientCredentials::builder`], and
/// hand it to the token cache like any [`TokenSource`]. Cloning copies the settings and the
/// secret (each copy is zeroed when dropped) and shares the HTTP client.
///
/// One login is one `POST` to the token URL with `Content-Type:
/// application/x-www-form-urlencoded`, `Accept: application/json` and the form body
/// `grant_type=client_credentials`, then `scope` (the [scopes](OAuth2ClientCredentialsBuilder::scope)
/// joined by spaces) if there are any, then the [extra parameters](OAuth2ClientCredentialsBuilder::param)
/// (`audience`, `resource`, ...) in the order given. The client authenticates by HTTP Basic or
/// with `client_id`/`client_secret` in the body; see [`ClientAuth`].
///
/// # The answer
///
/// A `2xx` answer is read as RFC 6749 §5.1 says, by the crate's token parser (see the
/// [`token`](crate::token) module):
///
/// - `access_token` is the token;
/// - `token_type` must be `Bearer`, in any case; another type (`MAC`, `DPoP`, `N_A`) is an
///   [`ErrorKind::Config`] error, since this crate can only send bearer tokens. A response
///   without `token_type` (RFC 6749 requires it, but some servers leave it out) is taken as a
///   bearer token;
/// - `expires_in` is the lifetime, a number or a string of seconds. A JWT access token's
///   `exp` (against its `iat`, or else the response's `Date`) is another reading, and the
///   shortest reading wins. With neither, the token lives for the
///   [default lifetime](OAuth2ClientCredentialsBuilder::default_lifetime), 5 minutes unless
///   set: RFC 6749 lets the server leave the lifetime to its documentation, so set it to what
///   your provider documents;
/// - any other field (`scope`, `refresh_token`, ...) is ignored.
///
/// An error answer is read as RFC 6749 §5.2 says: its JSON `error` code decides, and the
/// `error_description` is kept in [`Error::detail`] after the code (`"invalid_scope: unknown
/// scope"`), cleaned of control characters and of the client secret, cut to 200 characters.
///
/// | Answer | Result |
/// |---|---|
/// | `2xx` | the parsed [`Token`], or [`ErrorKind::InvalidResponse`] (a type other than Bearer: [`ErrorKind::Config`]) |
/// | `invalid_client`, `unauthorized_client` | [`ErrorKind::AuthenticationFailed`]: the client id or secret is wrong, or the client may not use this grant. Permanent |
/// | `invalid_scope`, `invalid_request`, `unsupported_grant_type` | [`ErrorKind::Config`]: the scopes, the parameters or the authentication method need changing; the detail says which. Permanent |
/// | `invalid_grant` | [`ErrorKind::InvalidGrant`]: the server refuses the grant itself. Permanent |
/// | `temporarily_unavailable`, `server_error`, whatever the status | [`ErrorKind::Server`]: transient |
/// | any `5xx` | [`ErrorKind::Server`]: transient, whatever the code |
/// | `429` | [`ErrorKind::RateLimited`], `Retry-After` in [`Error::retry_after`] |
/// | `404` | [`ErrorKind::Config`]: a wrong URL; the detail names the URL called |
/// | `3xx` (redirects are not followed) | [`ErrorKind::Config`]; the detail names the URL called and the `Location` |
/// | another code, or none: `400`, `401`, `403`, other | [`ErrorKind::InvalidGrant`], [`ErrorKind::AuthenticationFailed`], [`ErrorKind::Forbidden`], [`ErrorKind::Server`] |
/// | a body over 64 KiB | [`ErrorKind::InvalidResponse`] |
/// | no answer within the timeout | [`ErrorKind::Timeout`] |
/// | unreachable, connection broken | [`ErrorKind::Transport`] |
///
/// `invalid_scope`, `invalid_request` and `unsupported_grant_type` are configuration errors
/// rather than [`ErrorKind::InvalidGrant`] because the fix is in this source's configuration
/// (its scopes, its extra parameters, its [`ClientAuth`], its URL), and because the cache treats
/// them alike: permanent, retried only after its longest backoff.
///
/// Every error carries the client id as its [`Error::user`] and, once the server answered, the
/// status.
///
/// [`TokenSource::user_name`] is the client id, so a shared
/// [`TokenStore`](crate::store::TokenStore) keeps one token per client id: sources with the
/// same client id but other scopes, audience or token URL must not share a store's key prefix,
/// or one would be handed the other's token.
///
/// # Safety of the secret
///
/// The same as [`AuthTokenSource`](crate::AuthTokenSource)'s for the password (see its "Secrets
/// in memory"): the secret is held like a password (never printed, zeroed when dropped, and the
/// `String` handed to the builder is zeroed too); the request body and the `Authorization:
/// Basic` value are built in buffers that never reallocate and are zeroed when the HTTP client
/// drops them; the response body and the parser's copies of the token are zeroed. The header is
/// marked sensitive. `https` is required unless the host is loopback or you opt in with
/// [`allow_insecure_http`](OAuth2ClientCredentialsBuilder::allow_insecure_http); redirects are
/// never followed by our own HTTP client (one could carry the secret elsewhere). `Debug` shows
/// the URL, the client id, the authentication method, the scopes, the names of the extra
/// parameters and the timeout; never the secret or a parameter's value.
///
/// ```no_run
/// use tower_authtoken::{ClientAuth, OAuth2ClientCredentials, TokenCache};
///
/// # fn run() -> Result<(), tower_authtoken::Error> {
/// let source = OAuth2ClientCredentials::builder(
///     "https://auth.example.com/oauth2/token",
///     "my-client-id",
///     std::env::var("CLIENT_SECRET").unwrap_or_default(),
/// )
/// .scope("cars:read")
/// .audience("https://api.example.com")
/// .client_auth(ClientAuth::Basic)
/// .build()?;
/// let cache = TokenCache::new(source);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OAuth2ClientCredentials {
    http: LoginHttp,
    url: Url,
    /// The client id as the user name, and the client secret as the password.
    client: Credentials,
    auth: ClientAuth,
    /// The scopes joined by spaces, if there are any.
    scope: Option<String>,
    params: Vec<(String, String)>,
}

impl OAuth2ClientCredentials {
    /// A source that gets tokens from `token_url` as `client_id` with `client_secret`, with
    /// every default of [`OAuth2ClientCredentialsBuilder`]: HTTP Basic, no scope, our own
    /// reqwest client.
    ///
    /// # Errors
    ///
    /// As [`OAuth2ClientCredentialsBuilder::build`].
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn new(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<OAuth2ClientCredentials, Error> {
        Self::builder(token_url, client_id, client_secret).build()
    }

    /// A builder for a source that gets tokens from `token_url` as `client_id` with
    /// `client_secret`, over our own reqwest client. The `String` the secret arrives in is
    /// zeroed (spare capacity included).
    ///
    /// The URL is checked by [`build`](OAuth2ClientCredentialsBuilder::build).
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn builder(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> OAuth2ClientCredentialsBuilder {
        Self::builder_with_options(token_url, client_id, client_secret, HttpOptions::default())
    }

    /// A builder for a source that gets tokens from `token_url` as `client_id` with
    /// `client_secret`, over `service`: any Tower HTTP client (see
    /// [`http_service`](OAuth2ClientCredentialsBuilder::http_service)). The constructor
    /// without the `reqwest` feature, where the crate has no HTTP client of its own.
    pub fn builder_with_service<S, ReqBody, ResBody>(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        service: S,
    ) -> OAuth2ClientCredentialsBuilder
    where
        S: LoginHttpService<ReqBody, ResBody>,
    {
        let http = HttpOptions::with_client(login_service(service));
        Self::builder_with_options(token_url, client_id, client_secret, http)
    }

    fn builder_with_options(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        http: HttpOptions,
    ) -> OAuth2ClientCredentialsBuilder {
        OAuth2ClientCredentialsBuilder {
            token_url: token_url.to_owned(),
            client: Credentials::new(client_id, client_secret),
            auth: ClientAuth::default(),
            scopes: Vec::new(),
            params: Vec::new(),
            http,
        }
    }

    /// The token URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        self.client.user_name()
    }

    /// How the client authenticates.
    pub fn client_auth(&self) -> ClientAuth {
        self.auth
    }

    /// The `application/x-www-form-urlencoded` request body, in a buffer that is zeroed when the
    /// last reference to it drops. Sized for the worst case up front, so that it never
    /// reallocates (which would free a partial copy of the secret unwiped).
    fn request_body(&self, client_id: &str, secret: &str) -> Bytes {
        const GRANT: &[u8] = b"grant_type=client_credentials";
        let in_body = match self.auth {
            ClientAuth::RequestBody => Some([("client_id", client_id), ("client_secret", secret)]),
            ClientAuth::Basic => None,
        };
        let pairs = || {
            self.scope
                .as_deref()
                .map(|scope| ("scope", scope))
                .into_iter()
                .chain(self.params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .chain(in_body.into_iter().flatten())
        };
        let capacity = GRANT.len()
            + pairs()
                .map(|(name, value)| 2 + 3 * (name.len() + value.len()))
                .sum::<usize>();
        let mut body = Zeroizing::new(Vec::with_capacity(capacity));
        let allocated = body.capacity();
        body.extend_from_slice(GRANT);
        for (name, value) in pairs() {
            body.push(b'&');
            form_encode(&mut body, name);
            body.push(b'=');
            form_encode(&mut body, value);
        }
        debug_assert_eq!(body.capacity(), allocated, "the request body reallocated");
        Bytes::from_owner(body)
    }

    async fn login_inner(&self, client_id: &str) -> Result<Token, Error> {
        let secret = self.client.password();
        let body = self.request_body(client_id, secret);
        let mut request = self
            .http
            .post(&self.url, "application/x-www-form-urlencoded", body)
            .map_err(|e| e.with_user(client_id))?;
        if self.auth == ClientAuth::Basic {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                basic_authorization(client_id, secret)?,
            );
        }
        let answer = self.http.send(request, client_id).await?;
        if answer.status.is_success() {
            let token = self.http.parse_token(&answer, client_id)?;
            check_bearer(&token, client_id, answer.status)?;
            return Ok(token);
        }
        Err(error_answer(&answer, &self.url, client_id, secret))
    }
}

/// Appends `text` `application/x-www-form-urlencoded` (the WHATWG serializer that RFC 6749
/// Appendix B points to): ASCII letters, digits and `*-._` as they are, a space as `+`, every
/// other byte of the UTF-8 as `%XX`. At most three bytes out per byte in.
fn form_encode(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in text.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(byte),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, sensitive, in buffers that never
/// reallocate and are zeroed when dropped (the header's own buffer when the last clone of the
/// header drops).
fn basic_authorization(client_id: &str, secret: &str) -> Result<HeaderValue, Error> {
    const PREFIX: &[u8] = b"Basic ";
    let mut pair = Zeroizing::new(Vec::with_capacity(3 * (client_id.len() + secret.len()) + 1));
    form_encode(&mut pair, client_id);
    pair.push(b':');
    form_encode(&mut pair, secret);
    let encoded = base64::encoded_len(pair.len(), true)
        .ok_or_else(|| Error::config("the client id and secret are too long"))?;
    let mut value = Zeroizing::new(vec![0u8; PREFIX.len() + encoded]);
    value[..PREFIX.len()].copy_from_slice(PREFIX);
    STANDARD
        .encode_slice(&pair[..], &mut value[PREFIX.len()..])
        .map_err(|e| Error::config("could not encode the client credentials").with_source(e))?;
    // Base64 and the prefix are visible ASCII, so this never fails; the check keeps it honest.
    let mut header = HeaderValue::from_maybe_shared(Bytes::from_owner(value))
        .map_err(|e| Error::config("could not encode the client credentials").with_source(e))?;
    header.set_sensitive(true);
    Ok(header)
}

/// Refuses a token whose type is given and is not `Bearer` (in any case).
fn check_bearer(token: &Token, client_id: &str, status: StatusCode) -> Result<(), Error> {
    let Some(kind) = token.token_type() else {
        return Ok(());
    };
    if kind.eq_ignore_ascii_case("bearer") {
        return Ok(());
    }
    let shown = if kind.len() <= 32
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        format!("'{kind}'")
    } else {
        "an unrecognised type".to_owned()
    };
    Err(Error::config(format!(
        "the token endpoint issued a token of type {shown}, not Bearer: only bearer tokens can be \
         sent as `Authorization: Bearer`"
    ))
    .with_user(client_id)
    .with_status(status))
}

/// What an RFC 6749 §5.2 error body says, cleaned for an [`Error`].
struct ErrorBody {
    /// The `error` code, if there is one made of the characters RFC 6749 allows.
    code: Option<String>,
    /// `error_description`, cleaned.
    description: Option<String>,
}

impl ErrorBody {
    /// Reads `{"error": ..., "error_description": ...}`; every copy of the body's strings is
    /// zeroed when dropped (a description may echo the secret).
    fn read(body: &[u8], secret: &str) -> ErrorBody {
        let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorBody {
                code: None,
                description: None,
            };
        };
        let text = |name: &str| match value.get(name) {
            Some(serde_json::Value::String(text)) => clean_message(text, secret),
            _ => None,
        };
        let code = text("error").filter(|code| {
            code.chars().count() <= MAX_CODE_CHARS
                && code
                    .bytes()
                    .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e))
        });
        let description = text("error_description");
        crate::token::wipe_json(&mut value);
        ErrorBody { code, description }
    }
}

/// Maps an answer that is not a success; see the table on [`OAuth2ClientCredentials`].
fn error_answer(answer: &Answer, url: &Url, client_id: &str, secret: &str) -> Error {
    let status = answer.status;
    if status.is_redirection() {
        return redirect_error(status, &answer.headers, url, client_id, &NAMES);
    }
    let said = ErrorBody::read(&answer.body, secret);
    let message = match (&said.code, &said.description) {
        (Some(code), Some(description)) => Some(format!("{code}: {description}")),
        (Some(code), None) => Some(code.clone()),
        // Not an OAuth2 error body: a proxy's text or a `{"message"}`, as for /authtoken.
        (None, _) => {
            let content_type = answer
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            server_message(&answer.body, content_type, secret)
        }
    };
    if status == StatusCode::NOT_FOUND {
        return wrong_url_error(
            status,
            message.as_deref(),
            url,
            client_id,
            ", so the URL is wrong: check the token URL",
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return rate_limited(&answer.headers, client_id, status, message);
    }
    let (kind, fix) = if status.is_server_error() {
        (ErrorKind::Server, None)
    } else {
        match said.code.as_deref() {
            Some("invalid_client" | "unauthorized_client") => {
                (ErrorKind::AuthenticationFailed, None)
            }
            Some("invalid_grant") => (ErrorKind::InvalidGrant, None),
            Some("invalid_scope") => (ErrorKind::Config, Some("check the scopes")),
            Some("invalid_request") => (
                ErrorKind::Config,
                Some("check the extra parameters and the client authentication method"),
            ),
            Some("unsupported_grant_type") => (
                ErrorKind::Config,
                Some("the endpoint does not offer the client credentials grant"),
            ),
            Some("temporarily_unavailable" | "server_error") => (ErrorKind::Server, None),
            _ => match status.as_u16() {
                400 => (ErrorKind::InvalidGrant, None),
                401 => (ErrorKind::AuthenticationFailed, None),
                403 => (ErrorKind::Forbidden, None),
                _ => (ErrorKind::Server, None),
            },
        }
    };
    let detail = match (fix, said.code.as_deref()) {
        (Some(fix), Some(code)) => {
            let mut detail = format!("the token endpoint answered {code}: {fix}");
            if let Some(description) = &said.description {
                detail.push_str("; the server said: ");
                detail.push_str(description);
            }
            Some(detail)
        }
        _ => message,
    };
    let mut error = Error::new(kind).with_user(client_id).with_status(status);
    if let Some(detail) = detail {
        error = error.with_detail(detail);
    }
    error
}

impl TokenSource for OAuth2ClientCredentials {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        let client_id = self.client.user_name();
        traced(client_id, &self.url, self.login_inner(client_id))
    }

    /// The client id.
    fn user_name(&self) -> Option<&str> {
        Some(self.client.user_name())
    }

    fn allows_insecure_http(&self) -> bool {
        self.http.allow_insecure_http
    }
}

impl fmt::Debug for OAuth2ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<&str> = self.params.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("OAuth2ClientCredentials")
            .field("url", &self.url.as_str())
            .field("client_id", &self.client.user_name())
            .field("client_auth", &self.auth)
            .field("scope", &self.scope)
            .field("params", &params)
            .field("timeout", &self.http.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuth2ClientCredentials`]; start with [`OAuth2ClientCredentials::builder`].
///
/// Every setter states its default. [`build`](OAuth2ClientCredentialsBuilder::build) checks
/// everything.
#[must_use = "call build() to get an OAuth2ClientCredentials"]
pub struct OAuth2ClientCredentialsBuilder {
    token_url: String,
    client: Credentials,
    auth: ClientAuth,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    http: HttpOptions,
}

impl OAuth2ClientCredentialsBuilder {
    /// How the client authenticates: HTTP Basic or in the request body.
    ///
    /// Default: [`ClientAuth::Basic`], which RFC 6749 §2.3.1 requires every server to support.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Adds a scope to request; the scopes are sent as one `scope` parameter, joined by spaces,
    /// in the order added.
    ///
    /// Default: no scope, and no `scope` parameter (the server's default scope). Each scope must
    /// be non-empty, printable ASCII without space, `"` or `\` (RFC 6749 §3.3), or
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming it.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds several scopes; see [`scope`](Self::scope). Default: no scope.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Adds an extra form parameter, such as `audience` or `resource` (RFC 8707), sent after
    /// `grant_type` and `scope`, in the order added. A name may be added more than once.
    ///
    /// Default: none. The name must be non-empty and not one this source writes itself
    /// (`grant_type`, `scope`, `client_id`, `client_secret`), or [`build`](Self::build) fails
    /// with [`ErrorKind::Config`] naming it. Values are not secret: they may appear in logs of
    /// the server; `Debug` shows the names only.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds `audience=<audience>`, the API the token is for (Auth0, Okta and others).
    /// Default: none. The same as `param("audience", audience)`.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds `resource=<resource>`, a resource indicator (RFC 8707); may be added more than once.
    /// Default: none. The same as `param("resource", resource)`.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
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

    /// The `User-Agent` header of the token request.
    ///
    /// Default: `tower-authtoken/<version>`, such as `tower-authtoken/0.1.0`. It is sent even
    /// with a caller-supplied [`client`](Self::client). Must be a valid header value.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.http.user_agent = Some(user_agent.into());
        self
    }

    /// Uses your own `reqwest::Client` (a proxy, extra root certificates, a shared pool).
    ///
    /// Default: a client of our own that follows no redirects (one could carry the secret
    /// elsewhere; a redirect fails with [`ErrorKind::Config`] naming the `Location`), speaks
    /// HTTP/1.1 only (the `h2` crate copies small request bodies into a buffer it never wipes),
    /// and keeps no idle connection (a pooled connection is driven by the runtime that opened
    /// it, and a token request from another runtime could wait on it while that one sits idle).
    /// With your client, its redirect policy applies; the [`timeout`](Self::timeout) and the
    /// user agent are still applied to every request. Never pass a client built with
    /// `connection_verbose(true)`: it logs the raw bytes, the secret and the token among them.
    /// Replaces any [`http_service`](Self::http_service) set before.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.http.client = Some(crate::client::reqwest_service(client));
        self
    }

    /// Gets tokens over `service`, any Tower HTTP client (hyper-util's `Client`, a stack with
    /// tracing, retry or proxy layers). Replaces any [`client`](Self::client) set before.
    ///
    /// Default: with the `reqwest` feature, our own reqwest client (see
    /// [`client`](Self::client)); without it, the service given to
    /// [`OAuth2ClientCredentials::builder_with_service`]. What the service must be, and what
    /// still holds over it (every rule of this source, by the same code), is said at
    /// [`AuthTokenSourceBuilder::http_service`](crate::AuthTokenSourceBuilder::http_service):
    /// in short, it must not follow redirects nor log request bodies or headers without their
    /// sensitivity marks (the `Authorization: Basic` header is marked sensitive).
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
    /// `::1`; anywhere else it would send the secret in clear text, so [`build`](Self::build)
    /// fails unless you opt in here.
    ///
    /// A [`TokenCache`](crate::TokenCache) over this source follows the same decision for the
    /// requests [`BearerAuth`](crate::BearerAuth) sends with its tokens: one opt-in is enough.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.http.allow_insecure_http = allow;
        self
    }

    /// The lifetime assumed for a token whose response has no `expires_in` and that is not a
    /// JWT with an `exp`.
    ///
    /// Default: [`DEFAULT_LIFETIME`](crate::token::DEFAULT_LIFETIME), 5 minutes. RFC 6749 §5.1
    /// lets a server leave `expires_in` out and document its lifetime instead: set that here.
    /// Must be more than zero and at most [`MAX_LIFETIME`](crate::token::MAX_LIFETIME), a year,
    /// or [`build`](Self::build) fails with [`ErrorKind::Config`] naming `default_lifetime`.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.http.default_lifetime = lifetime;
        self
    }

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a token URL that does not parse, is not `http(s)`, or carries
    /// user info or a fragment (a query is kept, as RFC 6749 §3.2 allows), an empty client id or
    /// secret, a scope or a parameter name that is not allowed, a timeout of zero or over one
    /// hour, a default lifetime of zero or over a year, an invalid user agent, or if the HTTP
    /// client cannot be built; each message names the setting. [`ErrorKind::InsecureTransport`]
    /// for plain `http://` to a non-loopback host without
    /// [`allow_insecure_http`](Self::allow_insecure_http).
    pub fn build(self) -> Result<OAuth2ClientCredentials, Error> {
        let url = checked_url(&self.token_url, &NAMES, true, self.http.allow_insecure_http)?;
        if self.client.user_name().is_empty() {
            return Err(Error::config("the client id is empty"));
        }
        if self.client.password().is_empty() {
            return Err(Error::config("the client secret is empty"));
        }
        for scope in &self.scopes {
            let allowed = |b: u8| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
            if scope.is_empty() || !scope.bytes().all(allowed) {
                return Err(Error::config(format!(
                    "scope {scope:?} is not a scope: a scope is printable ASCII without spaces, \
                     '\"' or '\\' (add several scopes one by one)"
                )));
            }
        }
        for (name, _) in &self.params {
            if name.is_empty() {
                return Err(Error::config("param: a parameter name is empty"));
            }
            if RESERVED_PARAMS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                return Err(Error::config(format!(
                    "param: {name:?} is written by the source itself; use scope() for scopes and \
                     client_auth() for how the client authenticates"
                )));
            }
        }
        let scope = (!self.scopes.is_empty()).then(|| self.scopes.join(" "));
        Ok(OAuth2ClientCredentials {
            http: self.http.build()?,
            url,
            client: self.client,
            auth: self.auth,
            scope,
            params: self.params,
        })
    }
}

impl fmt::Debug for OAuth2ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<&str> = self.params.iter().map(|(name, _)| name.as_str()).collect();
        let mut d = f.debug_struct("OAuth2ClientCredentialsBuilder");
        d.field("token_url", &redacted_url(&self.token_url))
            .field("client_id", &self.client.user_name())
            .field("client_auth", &self.auth)
            .field("scopes", &self.scopes)
            .field("params", &params);
        self.http.debug_fields(&mut d);
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_the_whatwg_serializer() {
        let encode = |text: &str| {
            let mut out = Vec::new();
            form_encode(&mut out, text);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(encode("az AZ09*-._"), "az+AZ09*-._");
        assert_eq!(encode("a:b/c?d&e=f+g%h"), "a%3Ab%2Fc%3Fd%26e%3Df%2Bg%25h");
        assert_eq!(encode("é~"), "%C3%A9%7E");
        assert_eq!(
            encode(&"\u{1}".repeat(10)).len(),
            30,
            "three bytes per byte at most"
        );
    }

    #[test]
    fn basic_authorization_encodes_id_and_secret_before_base64() {
        let header = basic_authorization("my client", "s3:cr/t é").unwrap();
        assert!(header.is_sensitive());
        let value = header.to_str().unwrap();
        let decoded = STANDARD
            .decode(value.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+client:s3%3Acr%2Ft+%C3%A9");
    }

    fn source(auth: ClientAuth) -> OAuth2ClientCredentials {
        OAuth2ClientCredentials::builder("https://h/token?tenant=a", "id 1", "p&ss=wörd")
            .client_auth(auth)
            .scopes(["read", "write:all"])
            .audience("https://api.example.com/")
            .resource("urn:a")
            .resource("urn:b")
            .build()
            .unwrap()
    }

    #[test]
    fn the_request_body_is_the_grant_scope_params_then_the_body_credentials() {
        let basic = source(ClientAuth::Basic);
        assert_eq!(basic.url(), "https://h/token?tenant=a");
        let body = basic.request_body("id 1", "p&ss=wörd");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "grant_type=client_credentials&scope=read+write%3Aall\
             &audience=https%3A%2F%2Fapi.example.com%2F&resource=urn%3Aa&resource=urn%3Ab"
        );
        let in_body = source(ClientAuth::RequestBody);
        let body = in_body.request_body("id 1", "p&ss=wörd");
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .ends_with("&resource=urn%3Ab&client_id=id+1&client_secret=p%26ss%3Dw%C3%B6rd"),
        );
        // Worst case: every byte escaped.
        let nasty = "\u{1}".repeat(50);
        let worst = OAuth2ClientCredentials::builder("https://h/t", &*nasty, &*nasty)
            .client_auth(ClientAuth::RequestBody)
            .param(&*nasty, &*nasty)
            .build()
            .unwrap();
        // 29 for the grant, then "&" name "=" value with every byte as %XX (50 bytes: 150).
        let expected = 29 + (2 + 150 + 150) + (11 + 150) + (15 + 150);
        assert_eq!(worst.request_body(&nasty, &nasty).len(), expected);
    }

    fn answer(status: u16, body: &str) -> Answer {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            received_at: tokio::time::Instant::now(),
            server_date: None,
            body: Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    fn mapped(status: u16, body: &str) -> Error {
        let url = Url::parse("https://h/token").unwrap();
        error_answer(&answer(status, body), &url, "client-1", "hunter2-secret")
    }

    #[test]
    fn a_5xx_is_transient_whatever_its_code() {
        let err = mapped(503, r#"{"error":"invalid_client"}"#);
        assert_eq!(err.kind(), ErrorKind::Server);
        assert_eq!(err.detail(), Some("invalid_client"));
    }

    #[test]
    fn descriptions_are_kept_without_the_secret_and_odd_codes_are_dropped() {
        let err = mapped(
            401,
            r#"{"error":"invalid_client","error_description":"secret hunter2-secret is wrong"}"#,
        );
        assert_eq!(err.kind(), ErrorKind::AuthenticationFailed);
        assert_eq!(
            err.detail(),
            Some("invalid_client: secret [redacted] is wrong")
        );
        assert_eq!(err.user(), Some("client-1"));
        // A code with a character RFC 6749 forbids (`"`), or far too long, is not shown, and the
        // status decides.
        for body in [
            r#"{"error":"bad\"code"}"#.to_owned(),
            format!(r#"{{"error":"{}"}}"#, "x".repeat(65)),
        ] {
            let err = mapped(400, &body);
            assert_eq!(err.kind(), ErrorKind::InvalidGrant, "{body}");
            assert_eq!(err.detail(), None, "{body}");
        }
        // Not an OAuth2 body: the message is read as for /authtoken.
        let err = mapped(403, r#"{"message":"Forbidden - Access denied"}"#);
        assert_eq!(err.kind(), ErrorKind::Forbidden);
        assert_eq!(err.detail(), Some("Forbidden - Access denied"));
    }

    #[test]
    fn build_refuses_bad_scopes_reserved_params_and_empty_credentials() {
        let builder = || OAuth2ClientCredentials::builder("https://h/token", "id", "secret");
        let detail = |b: OAuth2ClientCredentialsBuilder| {
            let err = b.build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            err.detail().unwrap().to_owned()
        };
        for scope in ["", "a b", "quo\"te", "back\\slash", "tab\t", "é"] {
            assert!(
                detail(builder().scope(scope)).starts_with("scope "),
                "{scope:?}"
            );
        }
        for name in ["grant_type", "scope", "client_id", "CLIENT_SECRET"] {
            assert!(
                detail(builder().param(name, "x")).starts_with("param: "),
                "{name}"
            );
        }
        assert!(detail(builder().param("", "x")).contains("empty"));
        let empty = OAuth2ClientCredentials::builder("https://h/token", "", "s");
        assert_eq!(detail(empty), "the client id is empty");
        let empty = OAuth2ClientCredentials::builder("https://h/token", "id", "");
        assert_eq!(detail(empty), "the client secret is empty");
        assert_eq!(
            detail(builder().timeout(Duration::ZERO)).split(' ').next(),
            Some("timeout")
        );
        let err =
            OAuth2ClientCredentials::new("http://auth.example.com/token", "id", "s").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InsecureTransport);
        assert!(
            err.detail()
                .unwrap()
                .contains("OAuth2ClientCredentialsBuilder::allow_insecure_http(true)")
        );
        assert!(
            OAuth2ClientCredentials::builder("http://auth.example.com/token", "id", "s")
                .allow_insecure_http(true)
                .build()
                .is_ok()
        );
        for url in [
            "https://h/token#f",
            "https://u:p@h/token",
            "ftp://h/token",
            "nope",
        ] {
            assert_eq!(
                OAuth2ClientCredentials::new(url, "id", "s")
                    .unwrap_err()
                    .kind(),
                ErrorKind::Config,
                "{url}"
            );
        }
    }
}
