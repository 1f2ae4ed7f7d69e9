//! [`ReferenceServer`]: the listener, the connections, and the handle tests talk to.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handler::{self, Shared, State, User};
use super::{Failure, ServerStats, TimestampFormat};
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
            timestamp_format: TimestampFormat::default(),
            numeric_fields: false,
            jwt_tokens: false,
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

    /// The base URL to hand to the client: `http://127.0.0.1:PORT`.
    ///
    /// The login endpoint is `{base_url}/authtoken`; any path ending in `/authtoken` works too,
    /// so `{base_url}/api/v1` is a valid base URL as well.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
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
    /// `expiresIn` is written in whole seconds; the server itself expires the token after
    /// exactly this duration on Tokio's clock.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Sleeps this long (on Tokio's clock) before answering each login. Default: no delay.
    pub fn set_login_delay(&self, delay: Duration) {
        self.shared.lock().login_delay = delay;
    }

    /// The format of `issued` and `expires` in token responses from now on.
    pub fn set_timestamp_format(&self, format: TimestampFormat) {
        self.shared.lock().timestamp_format = format;
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
        if let Failure::Status(status) | Failure::Body { status, .. } = &failure {
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

    /// Revokes a token: the protected endpoint refuses it from now on. Unknown tokens are
    /// ignored.
    pub fn revoke(&self, token: &str) {
        if let Some(issued) = self.shared.lock().tokens.get_mut(token) {
            issued.revoked = true;
        }
    }

    /// Revokes every token issued so far.
    pub fn revoke_all(&self) {
        for issued in self.shared.lock().tokens.values_mut() {
            issued.revoked = true;
        }
    }

    /// A snapshot of all counters at once.
    pub fn stats(&self) -> ServerStats {
        self.shared.lock().stats.clone()
    }

    /// Successful logins: how many tokens were issued.
    pub fn logins(&self) -> u64 {
        self.shared.lock().stats.logins
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

    /// Every token issued, in order. For tests that check a token never leaks into a log or an
    /// error.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
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
    timestamp_format: TimestampFormat,
    numeric_fields: bool,
    jwt_tokens: bool,
}

impl ReferenceServerBuilder {
    /// Adds a user. The first call replaces the default user `alice` (password `wonderland`),
    /// and its user becomes the one [`ReferenceServer::credentials`] returns; later calls add
    /// more users.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// The lifetime of issued tokens. Default: one hour (`"expiresIn":"3600"`).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sleeps this long (on Tokio's clock) before answering each login. Default: no delay.
    pub fn login_delay(mut self, delay: Duration) -> Self {
        self.login_delay = delay;
        self
    }

    /// The format of `issued` and `expires`. Default: [`TimestampFormat::Rfc3339`].
    pub fn timestamp_format(mut self, format: TimestampFormat) -> Self {
        self.timestamp_format = format;
        self
    }

    /// Writes `expiresIn` (and epoch timestamps) as JSON numbers rather than strings.
    /// Default: `false`, strings as in the API's example (`"expiresIn":"3600"`).
    pub fn numeric_fields(mut self, numeric: bool) -> Self {
        self.numeric_fields = numeric;
        self
    }

    /// Issues JWT-shaped tokens, `base64url(header).base64url({"sub","iat","exp"}).signature`,
    /// with a random signature that nothing checks. Default: `false`, opaque random tokens of
    /// 43 URL-safe characters.
    pub fn jwt_tokens(mut self, jwt: bool) -> Self {
        self.jwt_tokens = jwt;
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
        let shared = Arc::new(Shared::new(State {
            users,
            default_user,
            token_lifetime: self.token_lifetime,
            login_delay: self.login_delay,
            timestamp_format: self.timestamp_format,
            numeric_fields: self.numeric_fields,
            jwt_tokens: self.jwt_tokens,
            failures: VecDeque::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            stats: ServerStats::default(),
            last_login_headers: None,
        }));

        let (shutdown, stopped) = watch::channel(());
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        ReferenceServer {
            addr,
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
            .field("timestamp_format", &self.timestamp_format)
            .field("numeric_fields", &self.numeric_fields)
            .field("jwt_tokens", &self.jwt_tokens)
            .finish()
    }
}

/// Accepts connections until the server is dropped, one task per connection.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stopped: watch::Receiver<()>) {
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
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| handler::handle(Arc::clone(&shared), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                // A connection error (the client went away, a deliberate close) just ends it.
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

    #[tokio::test]
    #[should_panic(expected = "is not an HTTP status code")]
    async fn pushing_an_invalid_status_panics() {
        ReferenceServer::start()
            .await
            .push_failure(Failure::Status(42));
    }
}
