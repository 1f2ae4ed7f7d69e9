//! [`BearerAuthMiddleware`]: the bearer token for clients built with
//! [`reqwest-middleware`](::reqwest_middleware), beside their retry and tracing middlewares;
//! [`KeyedBearerAuthMiddleware`] for a client that sends on behalf of many accounts.
//!
//! It is [`BearerAuth`] run as a [`Middleware`]: for each request it
//! wraps the rest of the chain ([`Next`]) in a [`BearerAuthLayer`] and sends the request through
//! it, so the rules are the layer's own code, not a copy:
//!
//! - the `Authorization: Bearer <token>` header, marked sensitive, with the cache's current
//!   token (or after its single-flight login when it has none);
//! - a `401` takes the token it carried out of service ([`TokenCache::invalidate`]), spaced out
//!   by the cache when every token is rejected, so an API that refuses every token costs a
//!   handful of logins a minute;
//! - with [`retry_on_unauthorized`](BearerAuthMiddleware::retry_on_unauthorized), a request
//!   rejected with `401` is sent once more with the renewed token, if its method is idempotent
//!   (or any method, when opted in), its body can be copied
//!   ([`Request::try_clone`](reqwest::Request::try_clone)), and a token other than the
//!   rejected one can be had;
//! - the token is never sent to plain `http://` on a host that is not loopback unless the cache
//!   allows it ([`ErrorKind::InsecureTransport`](crate::ErrorKind::InsecureTransport), before
//!   anything is sent);
//! - every login goes through the cache's [`LoginBudget`](crate::LoginBudget).
//!
//! Errors from the cache reach the caller as [`reqwest_middleware::Error::Middleware`], whose
//! [`anyhow::Error`] downcasts to [`tower_authtoken::Error`](crate::Error); errors from the rest
//! of the chain come back unchanged. A middleware added before this one may wrap them: behind
//! reqwest-retry's `RetryTransientMiddleware`, the error downcasts to its `RetryError`, whose
//! `RetryError::Error` holds the `reqwest_middleware::Error` above
//! (`examples/reqwest_middleware.rs` unwraps it).
//!
//! # Example
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
//! use reqwest_tracing::TracingMiddleware;
//! use tower_authtoken::reqwest_middleware::BearerAuthMiddleware;
//! use tower_authtoken::{AuthTokenSource, TokenCache};
//! # use tower_authtoken::testing::ReferenceServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let server = ReferenceServer::start().await;
//! # let (base_url, credentials) = (server.base_url(), server.credentials());
//! let cache = TokenCache::new(AuthTokenSource::new(&base_url, credentials)?);
//! let retry = ExponentialBackoff::builder().build_with_max_retries(3);
//!
//! // The first middleware added is the outermost. The token goes last, next to the transport,
//! // so that every attempt of the retry carries the token current when it leaves.
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(TracingMiddleware::default())
//!     .with(RetryTransientMiddleware::new_with_policy(retry))
//!     .with(BearerAuthMiddleware::new(cache).retry_on_unauthorized())
//!     .build();
//!
//! let response = client.get(format!("{base_url}/cars")).send().await?;
//! assert!(response.status().is_success());
//! # Ok(())
//! # }
//! ```
//!
//! # Where it goes in the chain
//!
//! Add it after [`RetryTransientMiddleware`](https://docs.rs/reqwest-retry) (so it runs inside
//! it): each attempt of the retry then passes through it and carries the token current at that
//! instant. Added before the retry, it sets the header once and the retry sends that same
//! header again after each backoff, even if the token expired or was renewed meanwhile; a
//! retry that waits past the token's expiry then gets `401`. The retry does not retry a `401`
//! or an error of this middleware (reqwest-retry treats both as fatal); the `401` is this
//! middleware's to handle, with
//! [`retry_on_unauthorized`](BearerAuthMiddleware::retry_on_unauthorized). `TracingMiddleware`
//! goes first, so its span covers the retries and any login; it does not record headers.
//!
//! # Cost
//!
//! A request with a warm token costs what [`BearerAuth`] costs (a pointer check, a clock read,
//! a header clone), plus, per request, a clone of the cache handle, a new token reader (one full
//! `ArcSwap` load, since a reader needs `&mut` and the middleware has `&self`), one small
//! allocation to share the chain's [`Extensions`] between the first attempt and a replay, and
//! one boxed future for the rest of the chain. With
//! [`retry_on_unauthorized`](BearerAuthMiddleware::retry_on_unauthorized), the copy of the
//! request to replay is made before the first attempt, as with the layer. That is small
//! against what the chain already does per request: one boxed future per middleware, and a
//! request whose URL and headers the client allocates.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use ::reqwest_middleware::{Middleware, Next};
use http::Extensions;
use reqwest::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::error::BoxError;
#[cfg(doc)]
use crate::layer::BearerAuth;
use crate::layer::{BearerAuthLayer, NoReplay, ReplayOnUnauthorized};
use crate::{Error, TokenCache};

mod keyed;

pub use keyed::KeyedBearerAuthMiddleware;

/// A [`Middleware`] that sets `Authorization: Bearer <token>` on every request, with the
/// token handling of [`BearerAuthLayer`].
///
/// See the [module docs](self) for an example and where it goes in the chain.
#[derive(Clone)]
pub struct BearerAuthMiddleware<P = NoReplay> {
    layer: BearerAuthLayer<P>,
}

impl BearerAuthMiddleware {
    /// A middleware that authorizes every request with a token from `cache`.
    ///
    /// A `401` invalidates the token it carried and reaches the caller; requests are not
    /// replayed unless [`retry_on_unauthorized`](Self::retry_on_unauthorized) is set.
    #[must_use]
    pub fn new(cache: TokenCache) -> Self {
        BearerAuthMiddleware {
            layer: BearerAuthLayer::new(cache),
        }
    }
}

impl<P> BearerAuthMiddleware<P> {
    /// Sends a request once more, with the renewed token, when the upstream answers `401`.
    ///
    /// Only requests whose [`try_clone`](reqwest::Request::try_clone) succeeds are replayed (not
    /// those with a streaming body), and only for idempotent methods (`GET`, `HEAD`, `OPTIONS`,
    /// `TRACE`, `PUT`, `DELETE`), since replaying a `POST` may repeat its side effect. If no
    /// token other than the rejected one can be had, the first `401` is returned. The same
    /// rule as [`BearerAuthLayer::retry_on_unauthorized`], which it uses. Default: off.
    #[must_use]
    pub fn retry_on_unauthorized(self) -> BearerAuthMiddleware<ReplayOnUnauthorized> {
        BearerAuthMiddleware {
            layer: self.layer.retry_on_unauthorized(),
        }
    }

    /// Like [`retry_on_unauthorized`](Self::retry_on_unauthorized), but replays requests of any
    /// method. Use it only when your non-idempotent endpoints tolerate a repeat, since the
    /// server may have acted on the first request before it answered `401`. Default: off.
    #[must_use]
    pub fn retry_on_unauthorized_any_method(self) -> BearerAuthMiddleware<ReplayOnUnauthorized> {
        BearerAuthMiddleware {
            layer: self.layer.retry_on_unauthorized_any_method(),
        }
    }

    /// The cache the middleware takes tokens from.
    pub fn cache(&self) -> &TokenCache {
        self.layer.cache()
    }
}

/// The middleware with the settings of `layer` (its replay policy included).
impl<P> From<BearerAuthLayer<P>> for BearerAuthMiddleware<P> {
    fn from(layer: BearerAuthLayer<P>) -> Self {
        BearerAuthMiddleware { layer }
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for BearerAuthMiddleware<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuthMiddleware")
            .field("layer", &self.layer)
            .finish()
    }
}

/// Calls `$impl_for!(Policy)` for each replay policy, so that each middleware writes its
/// `Middleware` impl once. (One generic impl over the policy would need a bound naming the
/// crate-private `Downstream`, which the `private_bounds` lint refuses.)
macro_rules! for_each_replay_policy {
    ($impl_for:ident) => {
        $impl_for!(NoReplay);
        $impl_for!(ReplayOnUnauthorized);
    };
}
use for_each_replay_policy;

macro_rules! middleware {
    ($policy:ident) => {
        #[async_trait::async_trait]
        impl Middleware for BearerAuthMiddleware<$policy> {
            async fn handle(
                &self,
                req: Request,
                extensions: &mut Extensions,
                next: Next<'_>,
            ) -> ::reqwest_middleware::Result<Response> {
                authorize(&self.layer, req, extensions, next).await
            }
        }
    };
}
for_each_replay_policy!(middleware);

/// Sends `req` through `layer` (a [`BearerAuth`] or a [`KeyedBearerAuth`](crate::KeyedBearerAuth))
/// over the rest of the chain: the one path of every middleware of this module.
async fn authorize<'n, L>(
    layer: &L,
    req: Request,
    extensions: &mut Extensions,
    next: Next<'n>,
) -> ::reqwest_middleware::Result<Response>
where
    L: Layer<Downstream<'n>>,
    L::Service: Service<Request, Response = Response, Error = BoxError>,
{
    let shared = Arc::new(Mutex::new(mem::take(extensions)));
    let service = layer.layer(Downstream {
        next,
        extensions: Arc::clone(&shared),
    });
    let result = service.oneshot(req).await;
    *extensions = mem::take(&mut *lock(&shared));
    result.map_err(into_middleware_error)
}

/// The rest of the chain as a Tower service, for [`BearerAuth`] to call once, or twice when it
/// replays. Each call borrows the chain's extensions in turn.
#[derive(Clone)]
struct Downstream<'n> {
    next: Next<'n>,
    extensions: Arc<Mutex<Extensions>>,
}

type DownstreamFuture<'n> =
    Pin<Box<dyn Future<Output = ::reqwest_middleware::Result<Response>> + Send + 'n>>;

impl<'n> Service<Request> for Downstream<'n> {
    type Response = Response;
    type Error = ::reqwest_middleware::Error;
    type Future = DownstreamFuture<'n>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let next = self.next.clone();
        let shared = Arc::clone(&self.extensions);
        Box::pin(async move {
            let mut extensions = mem::take(&mut *lock(&shared));
            let result = next.run(req, &mut extensions).await;
            *lock(&shared) = extensions;
            result
        })
    }
}

/// Never contended: the attempts run one after the other, and no guard is held across `.await`.
fn lock(extensions: &Mutex<Extensions>) -> MutexGuard<'_, Extensions> {
    extensions.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The chain's own errors unchanged; the cache's as `Error::Middleware`, downcastable to
/// [`crate::Error`].
fn into_middleware_error(error: BoxError) -> ::reqwest_middleware::Error {
    let error = match error.downcast::<::reqwest_middleware::Error>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    match error.downcast::<Error>() {
        Ok(error) => ::reqwest_middleware::Error::Middleware(anyhow::Error::new(*error)),
        Err(other) => ::reqwest_middleware::Error::Middleware(anyhow::Error::from_boxed(other)),
    }
}
