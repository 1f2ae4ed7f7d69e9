//! [`BearerAuthLayer`] and [`BearerAuth`]: the Tower pair that authorizes every request.
//!
//! The service sets `Authorization: Bearer <token>`, marked sensitive, replacing any existing
//! value. With a warm token, `call` checks with one relaxed atomic load that the token it holds is
//! still the cache's current one, checks the token's deadline on a coarse monotonic clock, clones
//! the header (a reference count) and calls the inner service, returning its future without
//! boxing. The future carries two integers to find the cache again should the upstream answer
//! `401`. When the cache has no token, or its token is past its deadline (a timer that fired
//! late, a frozen process), the request waits for the cache's single-flight fetch.
//!
//! When the upstream answers `401` (or, over HTTP/2 where gRPC runs, a `200` with
//! `grpc-status: 16`, gRPC's UNAUTHENTICATED), the token that request carried is
//! [invalidated](crate::TokenCache::invalidate), so the next request gets a fresh one. With
//! [`retry_on_unauthorized`](BearerAuthLayer::retry_on_unauthorized), the request is also replayed
//! once with the renewed token, if it can be replayed and its method is idempotent.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_authtoken::{BearerAuthLayer, Error, Token, TokenCache, TokenSource};
//!
//! struct Fixed;
//! impl TokenSource for Fixed {
//!     async fn fetch(&self) -> Result<Token, Error> {
//!         Token::new("opaque", Duration::from_secs(3600))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let echo = service_fn(|req: Request<()>| async move {
//!     let header = req.headers()[AUTHORIZATION].clone();
//!     Ok::<_, Infallible>(Response::new(header))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(TokenCache::new(Fixed)))
//!     .service(echo);
//! let response = client.oneshot(Request::new(())).await?;
//! assert_eq!(response.body(), "Bearer opaque");
//! # Ok(())
//! # }
//! ```
//!
//! # Where the layer goes
//!
//! `BearerAuthLayer` goes directly above the transport, below every layer that holds, repeats
//! or times a request. [`ServiceBuilder`](tower::ServiceBuilder) lists layers from the
//! outermost (the first to see a request) to the innermost:
//!
//! ```text
//! ServiceBuilder::new()                     // outermost: sees each request first
//!     .buffer(1024)                         // holds requests in a queue
//!     .retry(policy)                        // sends a request again
//!     .timeout(Duration::from_secs(10))     // bounds the whole wait, a login included
//!     .concurrency_limit(64)                // waits for a permit
//!     .layer(BearerAuthLayer::new(cache))   // sets the token current as each attempt leaves
//!     .service(transport)                   // hyper-util's client, reqwest::Client, a Channel
//! ```
//!
//! The layer sets the header in `call`, with the token that is current at that instant.
//! Whatever sits below it receives the request with the header already set:
//!
//! - A **retry** layer below it sends its copy of the request again with the header it was
//!   given, even if the token was renewed or rejected in between; a `401` retried that way gets
//!   another `401`. Above it, every attempt passes through `BearerAuth` and carries the current
//!   token (after a `401`, the renewed one).
//! - A **buffer** below it keeps requests in its queue with their headers set; a request that
//!   waits longer than the token's remaining life goes out with an expired token. Above it, the
//!   header is set when the request leaves the queue.
//! - A **timeout** above it also bounds the wait for a login when the cache has no token; below
//!   it, only the transport's part is bounded (the login has its own
//!   [`fetch_timeout`](crate::TokenCacheBuilder::fetch_timeout)).
//! - **Concurrency and rate limits** wait in `poll_ready`, before the header is set, so the token
//!   stays fresh on either side; above is the usual place, since below, a request that waits for
//!   a login holds one of their permits meanwhile.
//!
//! For the `401` itself, [`retry_on_unauthorized`](BearerAuthLayer::retry_on_unauthorized)
//! replays a request inside the layer with the renewed token; a general retry layer above can
//! retry a `401` too, since each of its attempts is authorized afresh.
//!
//! The same order, compiled (with tower's `timeout` and `limit` features):
//!
//! ```
//! # use std::convert::Infallible;
//! # use std::time::Duration;
//! # use http::{Request, Response};
//! # use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # use tower_authtoken::{BearerAuthLayer, Error, Token, TokenCache, TokenSource};
//! # struct Fixed;
//! # impl TokenSource for Fixed {
//! #     async fn fetch(&self) -> Result<Token, Error> {
//! #         Token::new("opaque", Duration::from_secs(3600))
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let cache = TokenCache::new(Fixed);
//! # let transport = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(10))
//!     .concurrency_limit(64)
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(transport);
//! client.oneshot(Request::new(())).await?;
//! # Ok(())
//! # }
//! ```

pub mod future;
mod request;

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Method;
use tower::{Layer, Service};

use crate::cache::SlotReader;
use crate::error::BoxError;
use crate::{Error, ErrorKind, TokenCache};
use future::{Replay, ResponseFuture, RetryFuture};
#[cfg(feature = "tonic")]
pub(crate) use request::grpc_unauthenticated;
pub use request::{AuthorizeRequest, ReplayBody, ReplayableRequest, StatusResponse};

/// A service [`BearerAuth`] can wrap: one that is [`Clone`].
///
/// Implemented for every `Clone` type, and for nothing else; it exists so that the compiler's
/// error for a service that is not `Clone` says what is missing. `BearerAuth` calls a clone of
/// its inner service when a request must wait for a token (the service `poll_ready` prepared
/// goes with the request; the clone stays for the next one), and keeps one to replay a request
/// after a `401`. Clients are usually cheap to clone (hyper-util's `Client`, `reqwest::Client`
/// and tonic's `Channel` are handles); a service that is not `Clone`
/// (`tower::util::BoxService`, a connection you own) can be shared through
/// [`tower::buffer::Buffer`](https://docs.rs/tower/0.5/tower/buffer/struct.Buffer.html), whose
/// handles are.
///
/// A `BoxService` is not `Clone`, so this does not compile (the error is this trait's message,
/// which `tests/compile_fail.rs` checks word for word):
///
/// ```compile_fail
/// # use std::{convert::Infallible, time::Duration};
/// # use tower_authtoken::{BearerAuth, Error, Token, TokenCache, TokenSource};
/// # struct Fixed;
/// # impl TokenSource for Fixed {
/// #     async fn fetch(&self) -> Result<Token, Error> { Token::new("t", Duration::from_secs(60)) }
/// # }
/// let inner = tower::util::BoxService::new(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, Infallible>(http::Response::new(()))
/// }));
/// let client = BearerAuth::new(inner, TokenCache::new(Fixed));
/// ```
///
/// and the same service made shareable by a `Buffer` does (with tower's `buffer` feature):
///
/// ```
/// # use std::{convert::Infallible, time::Duration};
/// # use tower_authtoken::{BearerAuth, Error, Token, TokenCache, TokenSource};
/// # struct Fixed;
/// # impl TokenSource for Fixed {
/// #     async fn fetch(&self) -> Result<Token, Error> { Token::new("t", Duration::from_secs(60)) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::util::BoxService::new(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, Infallible>(http::Response::new(()))
/// }));
/// let client = BearerAuth::new(tower::buffer::Buffer::new(inner, 64), TokenCache::new(Fixed));
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`BearerAuth` needs an inner service that is `Clone`, and `{Self}` is not",
    label = "this service is not `Clone`",
    note = "`BearerAuth` calls a clone of the inner service when a request waits for a token",
    note = "implement `Clone` for it, or share it through `tower::buffer::Buffer::new(service, capacity)`, which is `Clone`"
)]
pub trait CloneService: Clone {}

#[diagnostic::do_not_recommend]
impl<S: Clone> CloneService for S {}

/// Marks a [`BearerAuth`] that does not replay requests (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReplay;

/// Marks a [`BearerAuth`] that replays a request once after a `401`; see
/// [`BearerAuthLayer::retry_on_unauthorized`].
#[derive(Debug, Clone, Copy)]
pub struct ReplayOnUnauthorized {
    any_method: bool,
}

impl ReplayOnUnauthorized {
    pub(crate) fn new(any_method: bool) -> Self {
        ReplayOnUnauthorized { any_method }
    }

    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.any_method || method.is_idempotent()
    }
}

/// Layer that wraps a service in [`BearerAuth`].
///
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct BearerAuthLayer<P = NoReplay> {
    cache: TokenCache,
    policy: P,
    /// For requests with a relative URI: the host of the origin they go to, when that origin is
    /// plain `http://` and not loopback (see [`with_origin`](Self::with_origin)).
    relative_insecure_host: Option<Arc<str>>,
}

impl BearerAuthLayer {
    /// A layer that authorizes every request with a token from `cache`.
    pub fn new(cache: TokenCache) -> Self {
        BearerAuthLayer {
            cache,
            policy: NoReplay,
            relative_insecure_host: None,
        }
    }
}

impl<P> BearerAuthLayer<P> {
    /// Replays a request once, with the renewed token, when the upstream answers `401`.
    ///
    /// Only requests that can be copied are replayed: an `http::Request<B>` whose body's
    /// [`ReplayBody::try_clone_body`] returns a copy (`()`, `String`, `Vec<u8>`, `Bytes`,
    /// `&'static str`, `&'static [u8]`, a buffered `reqwest::Body`, or a body type of your own
    /// that implements [`ReplayBody`]), or a `reqwest::Request` whose
    /// [`try_clone`](reqwest::Request::try_clone) succeeds. A request whose body cannot be
    /// copied (a stream) is sent once, and its `401` reaches the caller after invalidating the
    /// token, exactly as without this setting. Method, URI, headers and extensions are copied
    /// with the body; the copy is made before the first attempt is sent.
    ///
    /// Only idempotent methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) are
    /// replayed, because replaying a `POST` may repeat its side effect; see
    /// [`retry_on_unauthorized_any_method`](Self::retry_on_unauthorized_any_method). If no
    /// other token than the rejected one can be had (the fetch fails, or the cache keeps the
    /// rejected token in service), the original `401` response is returned. Nothing is
    /// allocated for the replay until a `401` arrives, beyond the copy of the request.
    /// Default: off.
    #[must_use = "the layer with this setting is returned; the original is consumed"]
    pub fn retry_on_unauthorized(self) -> BearerAuthLayer<ReplayOnUnauthorized> {
        BearerAuthLayer {
            cache: self.cache,
            policy: ReplayOnUnauthorized { any_method: false },
            relative_insecure_host: self.relative_insecure_host,
        }
    }

    /// Like [`retry_on_unauthorized`](Self::retry_on_unauthorized), but replays requests of any
    /// method. Use it only when your non-idempotent endpoints tolerate a repeat, since the
    /// server may have acted on the first request before it answered `401`.
    #[must_use = "the layer with this setting is returned; the original is consumed"]
    pub fn retry_on_unauthorized_any_method(self) -> BearerAuthLayer<ReplayOnUnauthorized> {
        BearerAuthLayer {
            cache: self.cache,
            policy: ReplayOnUnauthorized { any_method: true },
            relative_insecure_host: self.relative_insecure_host,
        }
    }

    /// The origin that requests with a relative URI go to, such as a tonic `Channel`'s endpoint
    /// (`http://grpc.internal:50051`), so that the plain-HTTP rule applies to them too.
    ///
    /// A request with an absolute URI (hyper-util's client, reqwest) names its scheme and host,
    /// and the layer refuses to send a token to plain `http://` on a host that is not loopback
    /// unless plain HTTP was allowed. A request with a relative URI (`/pkg.Service/Method`, as
    /// tonic sends) names neither: without this setting the layer cannot tell where it goes, and
    /// the rule does not apply to it. With it, such requests are judged as if they went to
    /// `origin`: refused before sending when `origin` is plain `http://` to a non-loopback host
    /// and plain HTTP was not allowed. Default: none.
    #[must_use = "the layer with this setting is returned; the original is consumed"]
    pub fn with_origin(mut self, origin: &http::Uri) -> Self {
        self.relative_insecure_host = origin_insecure_host(origin);
        self
    }

    /// The cache the layer takes tokens from.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl<S: CloneService, P: Clone> Layer<S> for BearerAuthLayer<P> {
    type Service = BearerAuth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            reader: self.cache.reader(),
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            relative_insecure_host: self.relative_insecure_host.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for BearerAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Middleware that sets `Authorization: Bearer <token>` on every request.
///
/// It implements `Service<http::Request<B>>` for any inner service of `http` requests (hyper-util's
/// client, tonic channels, ...) and, with the `reqwest` feature, `Service<reqwest::Request>` for
/// [`reqwest::Client`]. Its error is [`tower::BoxError`]; token failures downcast to
/// [`tower_authtoken::Error`](crate::Error).
///
/// It refuses, before sending, to attach the token to an absolute `http://` URL whose host is not
/// loopback, unless the cache was built with
/// [`allow_insecure_http`](crate::TokenCacheBuilder::allow_insecure_http) (or its source allows
/// it). Requests with a relative URI are judged by the origin given to
/// [`BearerAuthLayer::with_origin`]; without one, the layer cannot see where they go.
///
/// The inner service must be `Clone` (see [`CloneService`]).
#[derive(Clone)]
pub struct BearerAuth<S, P = NoReplay> {
    inner: S,
    cache: TokenCache,
    reader: SlotReader,
    policy: P,
    relative_insecure_host: Option<Arc<str>>,
}

impl<S> BearerAuth<S> {
    /// Wraps `inner`, authorizing its requests with tokens from `cache`.
    pub fn new(inner: S, cache: TokenCache) -> Self
    where
        S: CloneService,
    {
        BearerAuthLayer::new(cache).layer(inner)
    }

    /// A [`BearerAuthLayer`] over `cache`.
    pub fn layer(cache: TokenCache) -> BearerAuthLayer {
        BearerAuthLayer::new(cache)
    }
}

impl<S, P> BearerAuth<S, P> {
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

    /// The cache the service takes tokens from.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Authorizes `req` and calls the inner service, or waits for a token first.
    #[inline]
    fn authorize<Req>(&mut self, mut req: Req) -> ResponseFuture<S::Future, S, Req>
    where
        S: Service<Req> + Clone,
        Req: AuthorizeRequest,
    {
        if let Some(host) = insecure_target(&req, self.relative_insecure_host.as_deref())
            && !self.cache.allows_insecure_http()
        {
            return ResponseFuture::failed(refuse_insecure(host, &self.cache));
        }
        match self.reader.current() {
            Some((value, id)) => {
                req.set_authorization(value);
                ResponseFuture::called(self.inner.call(req), self.reader.cache_key(), id)
            }
            None => {
                // Call the service that `poll_ready` prepared, once the token is here; leave a
                // fresh clone in its place for the next request.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::fetching(inner, req, self.cache.clone())
            }
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for BearerAuth<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for BearerAuth<S, NoReplay>
where
    S: Service<Req> + CloneService,
    S::Response: StatusResponse,
    S::Error: Into<BoxError>,
    Req: AuthorizeRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.authorize(req)
    }
}

impl<S, Req> Service<Req> for BearerAuth<S, ReplayOnUnauthorized>
where
    S: Service<Req> + CloneService,
    S::Response: StatusResponse,
    S::Error: Into<BoxError>,
    Req: ReplayableRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S::Future, S, Req, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let replay = if self.policy.allows(req.request_method()) {
            req.try_replay().map(|request| Replay {
                inner: self.inner.clone(),
                cache: self.cache.clone(),
                request,
            })
        } else {
            None
        };
        RetryFuture::new(self.authorize(req), replay)
    }
}

/// The host of `origin` when it is plain `http://` to a host that is not loopback: what
/// [`insecure_target`] judges relative URIs by.
pub(crate) fn origin_insecure_host(origin: &http::Uri) -> Option<Arc<str>> {
    let host = origin.host().unwrap_or_default();
    (origin.scheme() == Some(&http::uri::Scheme::HTTP) && !crate::loopback::is_loopback_host(host))
        .then(|| Arc::from(host))
}

/// The plain-HTTP rule, for every front-end: the host `req` would carry the token to in clear
/// text, if it goes to plain `http://` on a host that is not loopback. A relative URI is judged
/// by `relative_insecure_host`, the host of the layer's plain-http origin when it has one.
#[inline]
pub(crate) fn insecure_target<'r, Req: AuthorizeRequest>(
    req: &'r Req,
    relative_insecure_host: Option<&'r str>,
) -> Option<&'r str> {
    match req.insecure_host() {
        Some(host) => Some(host),
        // Only a layer given a plain-http origin needs to look at relative URIs.
        None if relative_insecure_host.is_some() && req.is_relative() => relative_insecure_host,
        None => None,
    }
}

/// Refuses a request to plain `http://` on `host` for `cache`, which does not allow it: counts
/// the refusal in the metrics, and returns the error naming both switches that would allow it.
#[cold]
pub(crate) fn refuse_insecure(host: &str, cache: &TokenCache) -> Error {
    crate::metrics::insecure_refused(cache.metrics());
    Error::new(ErrorKind::InsecureTransport).with_detail(format!(
        "the request URL is plain http to '{host}', which is not loopback: \
         TokenCacheBuilder::allow_insecure_http(true), or \
         AuthTokenSourceBuilder::allow_insecure_http(true) on the cache's source, allows it"
    ))
}
