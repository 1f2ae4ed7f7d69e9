//! Where tokens come from: the [`TokenSource`] trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Error, Token};

/// Something that can log in and produce a fresh [`Token`].
///
/// [`AuthTokenSource`](crate::AuthTokenSource) implements it for the `/authtoken` endpoint.
/// Implement it yourself for another login endpoint, or in tests:
///
/// ```
/// use std::time::Duration;
/// use tower_authtoken::{Error, Token, TokenSource};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     async fn fetch(&self) -> Result<Token, Error> {
///         Token::new("opaque-value", Duration::from_secs(300))
///     }
/// }
/// ```
///
/// The cache calls `fetch` from a background task, at most once at a time, under its own
/// timeout; the future may be dropped at any `.await` when that timeout fires or when the last
/// cache handle is dropped.
pub trait TokenSource: Send + Sync + 'static {
    /// Log in once and return the new token.
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send;

    /// The user the tokens are for, if there is one. A shared
    /// [`TokenStore`](crate::store::TokenStore) namespaces its keys with it, so that one store
    /// can serve many credentials. Default: `None`.
    fn user_name(&self) -> Option<&str> {
        None
    }

    /// Whether tokens from this source may be sent over plain `http://` to a host that is not
    /// loopback. A [`TokenCache`](crate::TokenCache) over it allows it when either this or
    /// [`TokenCacheBuilder::allow_insecure_http`](crate::TokenCacheBuilder::allow_insecure_http)
    /// says so, so that one opt-in on the login client is enough.
    /// [`AuthTokenSource`](crate::AuthTokenSource) answers with its own builder's
    /// `allow_insecure_http`. Default: `false`.
    fn allows_insecure_http(&self) -> bool {
        false
    }
}

/// A boxed, type-erased future of a fetch.
pub(crate) type BoxFetch<'a> = Pin<Box<dyn Future<Output = Result<Token, Error>> + Send + 'a>>;

/// The object-safe form of [`TokenSource`], so that the cache is not generic.
pub(crate) trait DynTokenSource: Send + Sync + 'static {
    fn fetch_boxed(&self) -> BoxFetch<'_>;
    fn user_name(&self) -> Option<&str>;
    fn allows_insecure_http(&self) -> bool;
}

impl<T: TokenSource> DynTokenSource for T {
    fn fetch_boxed(&self) -> BoxFetch<'_> {
        Box::pin(self.fetch())
    }

    fn user_name(&self) -> Option<&str> {
        TokenSource::user_name(self)
    }

    fn allows_insecure_http(&self) -> bool {
        TokenSource::allows_insecure_http(self)
    }
}

/// A shared, type-erased token source.
pub(crate) type SharedSource = Arc<dyn DynTokenSource>;

impl<T: TokenSource> TokenSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        (**self).fetch()
    }

    fn user_name(&self) -> Option<&str> {
        (**self).user_name()
    }

    fn allows_insecure_http(&self) -> bool {
        (**self).allows_insecure_http()
    }
}
