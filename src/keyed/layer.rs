//! [`KeyedBearerAuthLayer`]: the account of each request picks its token.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

use super::KeyedTokenCache;
use crate::cache::SlotReader;
use crate::error::BoxError;
use crate::layer::future::{Replay, ResponseFuture, RetryFuture};
use crate::layer::{
    AuthorizeRequest, CloneService, NoReplay, ReplayOnUnauthorized, ReplayableRequest,
    StatusResponse, insecure_target, origin_insecure_host, refuse_insecure,
};
use crate::{Error, ErrorKind, TokenCache};

/// How a [`KeyedBearerAuth`] finds the account key `K` of a request.
///
/// Implemented by [`FromExtension`] (the default: the key is a request extension) and by
/// [`AccountFn`] (a closure, from [`KeyedBearerAuthLayer::account_from`]).
pub trait AccountFromRequest<Req, K> {
    /// Calls `f` with the account key of `req`, or with `None` when it names none.
    fn with_account<T>(&self, req: &Req, f: impl FnOnce(Option<&K>) -> T) -> T;
}

/// Takes the account key from the request's extensions:
/// `request.extensions_mut().insert(AgencyId(7))`. The default of [`KeyedBearerAuthLayer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtension;

impl<B, K: Send + Sync + Clone + 'static> AccountFromRequest<http::Request<B>, K>
    for FromExtension
{
    #[inline]
    fn with_account<T>(&self, req: &http::Request<B>, f: impl FnOnce(Option<&K>) -> T) -> T {
        f(req.extensions().get::<K>())
    }
}

/// Takes the account key from a closure over the request; from
/// [`KeyedBearerAuthLayer::account_from`].
#[derive(Clone)]
pub struct AccountFn<F>(F);

impl<F> fmt::Debug for AccountFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountFn")
    }
}

impl<Req, K, F> AccountFromRequest<Req, K> for AccountFn<F>
where
    F: Fn(&Req) -> Option<K>,
{
    #[inline]
    fn with_account<T>(&self, req: &Req, f: impl FnOnce(Option<&K>) -> T) -> T {
        f((self.0)(req).as_ref())
    }
}

/// A layer that authorizes each request with the token of the account the request names.
///
/// The account comes from a request extension of type `K` by default, or from
/// [`account_from`](Self::account_from). A request that names no account fails before it is
/// sent with [`ErrorKind::NoAccount`]; one whose account the factory refuses, with
/// [`ErrorKind::UnknownAccount`]. Everything else is as [`BearerAuthLayer`](crate::BearerAuthLayer):
/// a `401` invalidates that account's token, `retry_on_unauthorized` replays, and plain HTTP is
/// refused unless that account's cache or source allows it.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_authtoken::{Error, KeyedBearerAuthLayer, KeyedTokenCache, Token, TokenSource};
///
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct Agency(u32);
///
/// struct Login(u32);
/// impl TokenSource for Login {
///     async fn fetch(&self) -> Result<Token, Error> {
///         Token::new(format!("agency-{}", self.0), Duration::from_secs(3600))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let accounts = KeyedTokenCache::builder(|agency: &Agency| Ok::<_, Error>(Login(agency.0))).build()?;
/// let client = ServiceBuilder::new()
///     .layer(KeyedBearerAuthLayer::new(accounts))
///     .service(service_fn(|req: Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(Response::new(req.headers()["authorization"].clone()))
///     }));
///
/// let mut request = Request::new(());
/// request.extensions_mut().insert(Agency(7));
/// let response = client.oneshot(request).await?;
/// assert_eq!(response.body(), "Bearer agency-7");
/// # Ok(())
/// # }
/// ```
pub struct KeyedBearerAuthLayer<K, A = FromExtension, P = NoReplay> {
    accounts: KeyedTokenCache<K>,
    extract: A,
    policy: P,
    relative_insecure_host: Option<Arc<str>>,
}

impl<K, A: Clone, P: Clone> Clone for KeyedBearerAuthLayer<K, A, P> {
    fn clone(&self) -> Self {
        KeyedBearerAuthLayer {
            accounts: self.accounts.clone(),
            extract: self.extract.clone(),
            policy: self.policy.clone(),
            relative_insecure_host: self.relative_insecure_host.clone(),
        }
    }
}

impl<K> KeyedBearerAuthLayer<K> {
    /// A layer that authorizes each request with the token of the account named by its
    /// request extension of type `K`.
    pub fn new(accounts: KeyedTokenCache<K>) -> Self {
        KeyedBearerAuthLayer {
            accounts,
            extract: FromExtension,
            policy: NoReplay,
            relative_insecure_host: None,
        }
    }
}

impl<K, A> KeyedBearerAuthLayer<K, A, NoReplay> {
    /// Also replays a request once after a `401` with the account's renewed token, when its
    /// method is idempotent and its body can be replayed; as
    /// [`BearerAuthLayer::retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized).
    pub fn retry_on_unauthorized(self) -> KeyedBearerAuthLayer<K, A, ReplayOnUnauthorized> {
        self.with_policy(ReplayOnUnauthorized::new(false))
    }

    /// As [`retry_on_unauthorized`](Self::retry_on_unauthorized), for every method.
    pub fn retry_on_unauthorized_any_method(
        self,
    ) -> KeyedBearerAuthLayer<K, A, ReplayOnUnauthorized> {
        self.with_policy(ReplayOnUnauthorized::new(true))
    }

    fn with_policy<P>(self, policy: P) -> KeyedBearerAuthLayer<K, A, P> {
        KeyedBearerAuthLayer {
            accounts: self.accounts,
            extract: self.extract,
            policy,
            relative_insecure_host: self.relative_insecure_host,
        }
    }
}

impl<K, A, P> KeyedBearerAuthLayer<K, A, P> {
    /// Takes each request's account from `account` instead of a request extension. Requests
    /// for which it returns `None` fail with [`ErrorKind::NoAccount`].
    pub fn account_from<Req, F>(self, account: F) -> KeyedBearerAuthLayer<K, AccountFn<F>, P>
    where
        F: Fn(&Req) -> Option<K>,
    {
        KeyedBearerAuthLayer {
            accounts: self.accounts,
            extract: AccountFn(account),
            policy: self.policy,
            relative_insecure_host: self.relative_insecure_host,
        }
    }

    /// Judges requests with a relative URI (tonic's) as going to `origin`; as
    /// [`BearerAuthLayer::with_origin`](crate::BearerAuthLayer::with_origin). Default: none.
    pub fn with_origin(mut self, origin: &http::Uri) -> Self {
        self.relative_insecure_host = origin_insecure_host(origin);
        self
    }

    /// The accounts the layer takes tokens from.
    pub fn accounts(&self) -> &KeyedTokenCache<K> {
        &self.accounts
    }
}

impl<K: Hash + Eq, A: fmt::Debug, P: fmt::Debug> fmt::Debug for KeyedBearerAuthLayer<K, A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBearerAuthLayer")
            .field("accounts", &self.accounts)
            .field("account_from", &self.extract)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S: CloneService, K, A: Clone, P: Clone> Layer<S> for KeyedBearerAuthLayer<K, A, P> {
    type Service = KeyedBearerAuth<S, K, A, P>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBearerAuth {
            inner,
            layer: self.clone(),
            memo: None,
            previous: 0,
            _key: PhantomData,
        }
    }
}

/// The service of [`KeyedBearerAuthLayer`]. Its error is [`tower::BoxError`]; token and account
/// failures downcast to [`tower_authtoken::Error`](crate::Error).
pub struct KeyedBearerAuth<S, K, A = FromExtension, P = NoReplay> {
    inner: S,
    layer: KeyedBearerAuthLayer<K, A, P>,
    /// The account this service sent a run of requests for, read without the map while the
    /// run lasts.
    memo: Option<Memo<K>>,
    /// The cache key of the account of the previous request (0: none): two in a row start a
    /// memo. Not the account's address in the map, which changes at each of its renewals.
    previous: u64,
    _key: PhantomData<fn() -> K>,
}

/// A service's memo of one account: its key, a reader with a per-clone `arc_swap::Cache` (as a
/// single [`BearerAuth`](crate::BearerAuth) has), and its cache, for replays.
struct Memo<K> {
    key: K,
    reader: SlotReader,
    cache: TokenCache,
}

impl<S: Clone, K, A: Clone, P: Clone> Clone for KeyedBearerAuth<S, K, A, P> {
    /// A clone starts without a memo: cloning one would cost every clone (one per request, with
    /// `oneshot`) a reference count, for runs a fresh clone has not seen yet.
    fn clone(&self) -> Self {
        KeyedBearerAuth {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            memo: None,
            previous: 0,
            _key: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K: Hash + Eq, A: fmt::Debug, P: fmt::Debug> fmt::Debug
    for KeyedBearerAuth<S, K, A, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBearerAuth")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, K, A, P> KeyedBearerAuth<S, K, A, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the lookup of a request's account found.
enum Found {
    /// A token to send now, with its cache's key (for a `401`) and the cache (for a replay).
    Warm {
        value: HeaderValue,
        id: u64,
        key: u64,
        cache: Option<TokenCache>,
    },
    /// No token yet: wait for this cache.
    Cold(TokenCache),
}

impl<S, K, A, P> KeyedBearerAuth<S, K, A, P>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Finds the request's account and its token; `want_cache` asks for the account's cache
    /// even when warm (for a replay).
    ///
    /// A request for the account of this service's memo, with a token to send, reads it through
    /// the memo's per-clone cache and skips the map; anything else goes through the map, and a
    /// second request in a row for the same account makes that account the memo.
    #[inline]
    fn find<Req>(&mut self, req: &Req, want_cache: bool) -> Result<Found, Error>
    where
        Req: AuthorizeRequest,
        A: AccountFromRequest<Req, K>,
    {
        let Self {
            layer,
            memo,
            previous,
            ..
        } = self;
        let insecure = insecure_target(req, layer.relative_insecure_host.as_deref());
        // One look at the request's account, for the memo and the map alike.
        layer.extract.with_account(req, |key| {
            let key = key.ok_or_else(no_account)?;
            if insecure.is_none()
                && let Some(memo) = memo.as_mut()
                && memo.key == *key
                && let Some((value, id)) = memo.reader.current()
            {
                memo.reader.mark_used(layer.accounts.epoch());
                return Ok(Found::Warm {
                    value,
                    id,
                    key: memo.reader.cache_key(),
                    cache: want_cache.then(|| memo.cache.clone()),
                });
            }
            layer.accounts.with_account(key, |account| {
                if let Some(host) = insecure
                    && !account.cache().allows_insecure_http()
                {
                    return Err(refuse_insecure(host, account.cache()));
                }
                let cache_key = account.cache_key();
                if std::mem::replace(previous, cache_key) == cache_key
                    && memo
                        .as_ref()
                        .is_none_or(|memo| memo.reader.cache_key() != cache_key)
                {
                    remember(memo, key, account.cache());
                }
                Ok(match account.current() {
                    Some((value, id)) => Found::Warm {
                        value,
                        id,
                        key: cache_key,
                        cache: want_cache.then(|| account.cache().clone()),
                    },
                    None => Found::Cold(account.cache().clone()),
                })
            })?
        })
    }

    #[inline]
    fn authorize<Req>(&mut self, mut req: Req, found: Found) -> ResponseFuture<S::Future, S, Req>
    where
        S: Service<Req> + CloneService,
        Req: AuthorizeRequest,
    {
        match found {
            Found::Warm { value, id, key, .. } => {
                req.set_authorization(value);
                ResponseFuture::called(self.inner.call(req), key, id)
            }
            Found::Cold(cache) => self.wait_for(req, cache),
        }
    }

    /// The cold path: waits for `cache`'s token, then calls the service `poll_ready` prepared,
    /// leaving a fresh clone in its place for the next request.
    #[inline(never)]
    fn wait_for<Req>(&mut self, req: Req, cache: TokenCache) -> ResponseFuture<S::Future, S, Req>
    where
        S: Service<Req> + CloneService,
    {
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::fetching(inner, req, cache)
    }
}

/// Makes `key`'s account the memo: the start of a run of requests for it.
#[cold]
#[inline(never)]
fn remember<K: Clone>(memo: &mut Option<Memo<K>>, key: &K, cache: &TokenCache) {
    *memo = Some(Memo {
        key: key.clone(),
        reader: cache.reader(),
        cache: cache.clone(),
    });
}

#[cold]
fn no_account() -> Error {
    Error::new(ErrorKind::NoAccount)
}

impl<S, K, A, Req> Service<Req> for KeyedBearerAuth<S, K, A, NoReplay>
where
    S: Service<Req> + CloneService,
    S::Response: StatusResponse,
    S::Error: Into<BoxError>,
    Req: AuthorizeRequest,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: AccountFromRequest<Req, K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        // The header is set here, on the request as it came in, rather than in `authorize`:
        // moving the request into `authorize` after `find` has looked at it cost one more copy
        // of it (224 bytes for an `http::Request<()>`) per request.
        match self.find(&req, false) {
            Ok(Found::Warm { value, id, key, .. }) => {
                req.set_authorization(value);
                ResponseFuture::called(self.inner.call(req), key, id)
            }
            Ok(Found::Cold(cache)) => self.wait_for(req, cache),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl<S, K, A, Req> Service<Req> for KeyedBearerAuth<S, K, A, ReplayOnUnauthorized>
where
    S: Service<Req> + CloneService,
    S::Response: StatusResponse,
    S::Error: Into<BoxError>,
    Req: ReplayableRequest,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: AccountFromRequest<Req, K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S::Future, S, Req, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let replayable = self.layer.policy.allows(req.request_method());
        let found = match self.find(&req, replayable) {
            Ok(found) => found,
            Err(error) => return RetryFuture::new(ResponseFuture::failed(error), None),
        };
        let cache = match &found {
            Found::Warm { cache, .. } => cache.clone(),
            Found::Cold(cache) => Some(cache.clone()),
        };
        let replay = match cache {
            Some(cache) if replayable => req.try_replay().map(|request| Replay {
                inner: self.inner.clone(),
                cache,
                request,
            }),
            _ => None,
        };
        RetryFuture::new(self.authorize(req, found), replay)
    }
}
