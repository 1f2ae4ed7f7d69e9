//! [`KeyedGrpcBearerAuthLayer`]: gRPC calls on behalf of many accounts.
//!
//! [`KeyedBearerAuthLayer`] for a tonic `Channel`, as [`GrpcBearerAuthLayer`] is
//! [`BearerAuthLayer`](crate::BearerAuthLayer) for one: the account of each call picks its
//! token, and the three things gRPC changes are handled as for one account, by the same code.

use std::fmt;
use std::hash::Hash;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::GrpcResponseFuture;
#[cfg(doc)]
use super::{GrpcBearerAuth, GrpcBearerAuthLayer};
use crate::KeyedTokenCache;
use crate::error::BoxError;
use crate::keyed::{AccountFn, FromExtension, KeyedBearerAuth, KeyedBearerAuthLayer};
use crate::layer::CloneService;
#[cfg(doc)]
use crate::{Error, ErrorKind};

/// Layer that wraps a tonic `Channel` in [`KeyedGrpcBearerAuth`]: each call carries the token
/// of the account it names.
///
/// The account comes from a request extension of type `K` by default, which tonic carries from
/// the `tonic::Request` to the channel (`request.extensions_mut().insert(Agency(7))`), or from
/// [`account_from`](Self::account_from). Everything else is as [`GrpcBearerAuthLayer`], per
/// account: `grpc-status: 16` in the headers or the trailers takes that account's token out of
/// service, a plain `http://` origin to a host that is not loopback is refused unless that
/// account's cache allows it, and the layer's errors arrive as [`Status`](::tonic::Status) codes:
/// a call that names no account as `InvalidArgument` ([`ErrorKind::NoAccount`]), one whose
/// account the factory refuses as `PermissionDenied` ([`ErrorKind::UnknownAccount`]), both before
/// anything is sent.
///
/// ```no_run
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::uri::PathAndQuery;
/// use tonic::transport::Endpoint;
/// use tower_authtoken::tonic::{BytesCodec, KeyedGrpcBearerAuthLayer};
/// use tower_authtoken::{Error, KeyedTokenCache, Token, TokenSource};
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
/// let endpoint = Endpoint::from_static("https://grpc.example.com:443");
/// let layer = KeyedGrpcBearerAuthLayer::new(accounts, endpoint.uri());
/// let mut client = tonic::client::Grpc::new(tower::Layer::layer(&layer, endpoint.connect_lazy()));
///
/// let mut request = tonic::Request::new(Bytes::from_static(b"hello"));
/// request.extensions_mut().insert(Agency(7));
/// client.ready().await?;
/// let path = PathAndQuery::from_static("/pkg.Service/Method");
/// let response = client.unary(request, path, BytesCodec).await?;
/// # drop(response);
/// # Ok(())
/// # }
/// ```
pub struct KeyedGrpcBearerAuthLayer<K, A = FromExtension> {
    inner: KeyedBearerAuthLayer<K, A>,
}

impl<K> KeyedGrpcBearerAuthLayer<K> {
    /// A layer that authorizes each call with the token of the account named by its request
    /// extension of type `K`, for a channel to `origin`: the channel's endpoint, such as
    /// `Endpoint::uri()`. The origin is judged as in [`GrpcBearerAuthLayer::new`].
    pub fn new(accounts: KeyedTokenCache<K>, origin: &http::Uri) -> Self {
        KeyedGrpcBearerAuthLayer {
            inner: KeyedBearerAuthLayer::new(accounts).with_origin(origin),
        }
    }
}

impl<K, A> KeyedGrpcBearerAuthLayer<K, A> {
    /// Takes each call's account from `account` instead of a request extension: for example
    /// from a metadata entry, which is a header of the `http::Request` the closure sees. Calls
    /// for which it returns `None` fail with [`ErrorKind::NoAccount`].
    pub fn account_from<Req, F>(self, account: F) -> KeyedGrpcBearerAuthLayer<K, AccountFn<F>>
    where
        F: Fn(&Req) -> Option<K>,
    {
        KeyedGrpcBearerAuthLayer {
            inner: self.inner.account_from(account),
        }
    }

    /// The accounts the layer takes tokens from.
    pub fn accounts(&self) -> &KeyedTokenCache<K> {
        self.inner.accounts()
    }
}

impl<K, A: Clone> Clone for KeyedGrpcBearerAuthLayer<K, A> {
    fn clone(&self) -> Self {
        KeyedGrpcBearerAuthLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<K, A> fmt::Debug for KeyedGrpcBearerAuthLayer<K, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedGrpcBearerAuthLayer")
            .finish_non_exhaustive()
    }
}

impl<S: CloneService, K, A: Clone> Layer<S> for KeyedGrpcBearerAuthLayer<K, A> {
    type Service = KeyedGrpcBearerAuth<S, K, A>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedGrpcBearerAuth {
            inner: self.inner.layer(inner),
        }
    }
}

/// [`KeyedBearerAuth`] for gRPC, as [`GrpcBearerAuth`] is for one account: its response body
/// watches the trailers for `grpc-status: 16`, and its own errors are boxed
/// [`Status`](::tonic::Status)es, which a tonic client returns as they are. Built by
/// [`KeyedGrpcBearerAuthLayer`].
pub struct KeyedGrpcBearerAuth<S, K, A = FromExtension> {
    inner: KeyedBearerAuth<S, K, A>,
}

impl<S, K, A> KeyedGrpcBearerAuth<S, K, A> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S: Clone, K, A: Clone> Clone for KeyedGrpcBearerAuth<S, K, A> {
    fn clone(&self) -> Self {
        KeyedGrpcBearerAuth {
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, K, A> fmt::Debug for KeyedGrpcBearerAuth<S, K, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedGrpcBearerAuth")
            .field("inner", self.inner.get_ref())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, ReqBody, ResBody> Service<http::Request<ReqBody>> for KeyedGrpcBearerAuth<S, K, A>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: crate::keyed::AccountFromRequest<http::Request<ReqBody>, K>,
{
    type Response = http::Response<super::GrpcResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = GrpcResponseFuture<S::Future, S, http::Request<ReqBody>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // As `GrpcBearerAuth::call`: every refusal (no account, a refused one, plain HTTP) is
        // the response future's error, which becomes a `Status`, never a readiness error.
        GrpcResponseFuture {
            inner: self.inner.call(req),
        }
    }
}
