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
}

/// A boxed, type-erased future of a fetch.
pub(crate) type BoxFetch<'a> = Pin<Box<dyn Future<Output = Result<Token, Error>> + Send + 'a>>;

/// The object-safe form of [`TokenSource`], so that the cache is not generic.
pub(crate) trait DynTokenSource: Send + Sync + 'static {
    fn fetch_boxed(&self) -> BoxFetch<'_>;
}

impl<T: TokenSource> DynTokenSource for T {
    fn fetch_boxed(&self) -> BoxFetch<'_> {
        Box::pin(self.fetch())
    }
}

/// A shared, type-erased token source.
pub(crate) type SharedSource = Arc<dyn DynTokenSource>;

impl<T: TokenSource> TokenSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        (**self).fetch()
    }
}
