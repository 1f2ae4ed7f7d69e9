//! Token stores: where a [`TokenCache`](crate::TokenCache) gets a token when it needs one.
//!
//! By default a cache logs in through its own [`TokenSource`](crate::TokenSource): one login per
//! token lifetime *per process*. A service running as twenty replicas then logs in twenty times
//! per lifetime, and if the login endpoint keeps only one live token per user, the replicas revoke
//! each other's tokens.
//!
//! A shared store fixes that. Give the cache one with
//! [`TokenCacheBuilder::shared`](crate::TokenCacheBuilder::shared), and every renewal first asks
//! the store, which may hand out a token another replica fetched, or decide that this replica
//! logs in for the whole fleet. With the `redis` feature, `RedisTokenStore` is such a store, on
//! one Redis server or a Redis Cluster.
//!
//! The cache keeps its own in-process behaviour around the store: the lock-free hot path, the
//! single flight within the process, the renewal schedule, the backoff. A store only changes
//! where a fresh token comes from.

#[cfg(feature = "redis")]
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::cache::LoginGate;
use crate::source::SharedSource;
use crate::{Error, ErrorKind, Token};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{EncryptionKey, RedisTokenStore, RedisTokenStoreBuilder};

/// A boxed future, as returned by [`TokenStore::obtain`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place shared by several caches, possibly in several processes, that decides where their
/// tokens come from.
///
/// The cache calls [`obtain`](TokenStore::obtain) whenever it needs a token, at most once at a
/// time per cache, from a background task. An implementation must never fail where a plain
/// login would have succeeded: when the store itself is unavailable, it logs in with
/// [`ObtainRequest::login`].
///
/// The cache's [login budget](crate::LoginBudget) applies to [`ObtainRequest::login`] only:
/// the cache asks the store as soon as it needs a token, and a peer's token costs no budget.
/// When the budget refuses a login, `login` says so at once; the store returns that error, and
/// the cache asks again at its turn. Before returning it, a store may wait for a peer's token
/// until that turn (as `RedisTokenStore` does), for no longer than the fetch timeout.
pub trait TokenStore: Send + Sync + 'static {
    /// Returns a token for the cache that sent `request`: one a peer stored, or one from
    /// [`request.login()`](ObtainRequest::login), shared with the peers.
    fn obtain<'a>(&'a self, request: &'a ObtainRequest) -> BoxFuture<'a, Result<Token, Error>>;
}

/// What a cache asks of its [`TokenStore`].
pub struct ObtainRequest {
    pub(crate) source: SharedSource,
    pub(crate) fetch_timeout: Duration,
    pub(crate) current: Option<Token>,
    pub(crate) rejected: Option<Token>,
    /// The cache's login budgets, which [`login`](Self::login) draws on.
    pub(crate) budget: Option<LoginGate>,
}

impl ObtainRequest {
    /// Logs in through the cache's token source, under the cache's fetch timeout.
    ///
    /// The login draws on the cache's [login budget](crate::LoginBudget) (and a keyed cache's
    /// shared one); asking the store for a peer's token does not. When the budget holds the
    /// login back, this returns at once an [`ErrorKind::RateLimited`] error whose
    /// [`retry_after`](Error::retry_after) is the cache's turn: return it as it is (release
    /// any lock first), and the cache asks the store again at its turn, without counting a
    /// failure, while its callers wait on or keep using a still-valid token.
    pub async fn login(&self) -> Result<Token, Error> {
        if let Some(budget) = &self.budget {
            budget.draw()?;
        }
        login(&self.source, self.fetch_timeout).await
    }

    /// The token the cache is handing out now, if any. A token from the store is only worth
    /// adopting if it expires later than this one.
    pub fn current(&self) -> Option<&Token> {
        self.current.as_ref()
    }

    /// A token the upstream rejected with `401` since the last request. Peers must stop using
    /// it too.
    pub fn rejected(&self) -> Option<&Token> {
        self.rejected.as_ref()
    }

    /// How long one login may take; also a fair bound on waiting for a peer's login.
    pub fn fetch_timeout(&self) -> Duration {
        self.fetch_timeout
    }

    /// The user the tokens are for, from [`TokenSource::user_name`](crate::TokenSource::user_name).
    pub fn user_name(&self) -> Option<&str> {
        self.source.user_name()
    }
}

impl std::fmt::Debug for ObtainRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObtainRequest")
            .field("user_name", &self.user_name())
            .field("fetch_timeout", &self.fetch_timeout)
            .field("current", &self.current)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// One login through `source`, under `limit`.
pub(crate) async fn login(source: &SharedSource, limit: Duration) -> Result<Token, Error> {
    match tokio::time::timeout(limit, source.fetch_boxed()).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Error::new(ErrorKind::Timeout)
            .with_detail(format!(
                "no token within the fetch timeout of {limit:?}: the login endpoint is slow or unreachable"
            ))),
    }
}
