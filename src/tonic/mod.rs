//! gRPC with [tonic]: [`GrpcBearerAuthLayer`] for a tonic `Channel`,
//! [`KeyedGrpcBearerAuthLayer`] for a channel that calls on behalf of many accounts, and
//! [`tonic::Status`] for the crate's [`Error`].
//!
//! [`BearerAuthLayer`] works over a `Channel` as it is, but three things differ for gRPC, and
//! [`GrpcBearerAuth`] handles them:
//!
//! - **Where requests go.** tonic's requests have relative URIs (`/pkg.Service/Method`); the
//!   channel adds its endpoint's scheme and host below the layer. [`GrpcBearerAuthLayer::new`]
//!   takes that endpoint, so the plain-HTTP rule holds: a token is never sent over `h2c`
//!   (`http://`) to a host that is not loopback unless the cache allows plain HTTP
//!   ([`TokenCacheBuilder::allow_insecure_http`](crate::TokenCacheBuilder::allow_insecure_http)).
//! - **How a server rejects a token.** A gRPC server answers an HTTP `200` whose `grpc-status`
//!   is `16` (`UNAUTHENTICATED`): in the response headers when the call failed before any message
//!   (a unary handler that returns an error: a "trailers-only" response), in the trailers after
//!   the messages otherwise (a stream that fails midway). Both take the token out of service
//!   exactly as an HTTP `401` does, with the same spacing of invalidations in a row.
//!   [`BearerAuth`] sees the headers too; only [`GrpcBearerAuth`]'s response body sees the
//!   trailers, when the call reads them (tonic does at the end of every unary call, and when a
//!   stream is read to its end).
//! - **What a failed login looks like.** A tonic client turns a layer's error into a
//!   [`Status`]; an error it does not know becomes `Code::Unknown`. [`GrpcBearerAuth`] fails with
//!   a `Status` whose code says what happened (`From<Error> for Status`, in the table below),
//!   whose message is the error's `Display` (never a secret), and whose
//!   [`source`](std::error::Error::source) is the [`Error`] itself.
//!
//! A gRPC request streams its messages, so it is never replayed:
//! [`retry_on_unauthorized`](BearerAuthLayer::retry_on_unauthorized) has nothing to do for gRPC;
//! retry the call on `Code::Unauthenticated` instead.
//!
//! For a client that calls on behalf of many accounts, [`KeyedGrpcBearerAuthLayer`] does all of
//! this per account over a [`KeyedTokenCache`](crate::KeyedTokenCache). Each call names its
//! account in a request extension, which tonic carries from the `tonic::Request` to the channel,
//! or through a closure over the request (a metadata entry, say).
//!
//! # Example
//!
//! ```no_run
//! use tonic::transport::Endpoint;
//! use tower::ServiceBuilder;
//! use tower_authtoken::tonic::GrpcBearerAuthLayer;
//! use tower_authtoken::{AuthTokenSource, Credentials, TokenCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let password = String::from("wonderland");
//! let source = AuthTokenSource::new(
//!     "https://api.example.com/v1",
//!     Credentials::new("alice", password),
//! )?;
//! let cache = TokenCache::new(source);
//!
//! let endpoint = Endpoint::from_static("https://grpc.example.com:443");
//! let channel = endpoint.connect_lazy();
//! let channel = ServiceBuilder::new()
//!     .layer(GrpcBearerAuthLayer::new(cache, endpoint.uri()))
//!     .service(channel);
//! // Any tonic client: `MyServiceClient::new(channel)`, or `tonic::client::Grpc::new(channel)`.
//! let client = tonic::client::Grpc::new(channel);
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! The status codes of [`Error`]s:
//!
//! | [`ErrorKind`] | [`Code`] |
//! |---|---|
//! | `AuthenticationFailed`, `UnknownUser`, `InvalidGrant` | `Unauthenticated` |
//! | `Forbidden` | `PermissionDenied` |
//! | every transient kind (`RateLimited`, `Server`, `Timeout`, `Transport`, `InvalidResponse`) | `Unavailable`, with `grpc-retry-pushback-ms` metadata when the error has a [`retry_after`](Error::retry_after) |
//! | `Config`, `InsecureTransport` | `FailedPrecondition` |
//! | `Runtime` | `Internal` |
//! | `NoAccount` (a keyed layer's request names no account) | `InvalidArgument` |
//! | `UnknownAccount` (the keyed cache's factory refused it) | `PermissionDenied` |

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use ::tonic::metadata::MetadataValue;
use ::tonic::{Code, Status};
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::BoxError;
use crate::layer::AuthorizeRequest;
use crate::layer::future::{ResponseFuture, rejected};
use crate::layer::grpc_unauthenticated;
use crate::{BearerAuth, BearerAuthLayer, Error, ErrorKind, TokenCache};

mod keyed;

pub use keyed::{KeyedGrpcBearerAuth, KeyedGrpcBearerAuthLayer};

/// Layer that wraps a tonic `Channel` (or any gRPC transport) in [`GrpcBearerAuth`].
///
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct GrpcBearerAuthLayer {
    inner: BearerAuthLayer,
}

impl GrpcBearerAuthLayer {
    /// A layer that authorizes every call with a token from `cache`, for a channel to
    /// `origin`: the channel's endpoint, such as `Endpoint::uri()`.
    ///
    /// Calls are refused before they reach the channel, with
    /// [`ErrorKind::InsecureTransport`] (arriving as `Code::FailedPrecondition`), when `origin` is plain `http://` to a host that is not
    /// loopback and the cache does not allow plain HTTP; see
    /// [`BearerAuthLayer::with_origin`]. For a channel balanced over several endpoints, give
    /// the one least safe to send a token to (a plain `http://` one, if any).
    pub fn new(cache: TokenCache, origin: &http::Uri) -> Self {
        GrpcBearerAuthLayer {
            inner: BearerAuthLayer::new(cache).with_origin(origin),
        }
    }

    /// The cache the layer takes tokens from.
    pub fn cache(&self) -> &TokenCache {
        self.inner.cache()
    }
}

impl<S: crate::layer::CloneService> Layer<S> for GrpcBearerAuthLayer {
    type Service = GrpcBearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcBearerAuth {
            inner: self.inner.layer(inner),
        }
    }
}

impl fmt::Debug for GrpcBearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBearerAuthLayer")
            .finish_non_exhaustive()
    }
}

/// [`BearerAuth`] for gRPC: sets `Authorization: Bearer <token>` on every call, takes the token
/// out of service when the server answers `grpc-status: 16` in the headers or the trailers, and
/// fails with a [`Status`] when no token can be had.
///
/// Its error is [`tower::BoxError`]: the inner service's errors as they are (tonic maps its
/// own), and the layer's as a boxed [`Status`], which a tonic client returns as it is. Its
/// response body is the inner one, watched for trailers. Built by [`GrpcBearerAuthLayer`].
#[derive(Clone)]
pub struct GrpcBearerAuth<S> {
    inner: BearerAuth<S>,
}

impl<S> GrpcBearerAuth<S> {
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

    /// The cache the service takes tokens from.
    pub fn cache(&self) -> &TokenCache {
        self.inner.cache()
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcBearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBearerAuth")
            .field("inner", self.inner.get_ref())
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcBearerAuth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<GrpcResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = GrpcResponseFuture<S::Future, S, http::Request<ReqBody>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // A call to a plain-http origin that may not carry the token is refused inside, in
        // `call` rather than `poll_ready`: tonic's generated clients turn a readiness error into
        // `Code::Unknown`. A `Channel` connects when a call reaches it, so none is opened.
        GrpcResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcBearerAuth`] and [`KeyedGrpcBearerAuth`]: that of
    /// [`BearerAuth`] (or [`KeyedBearerAuth`](crate::KeyedBearerAuth)), with the response body
    /// wrapped to watch the trailers and the layer's errors turned into a [`Status`].
    pub struct GrpcResponseFuture<F, S, Req> {
        #[pin]
        inner: ResponseFuture<F, S, Req>,
    }
}

impl<F, S, Req, ResBody, E> Future for GrpcResponseFuture<F, S, Req>
where
    S: Service<Req, Future = F, Response = http::Response<ResBody>, Error = E>,
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    Req: AuthorizeRequest,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<GrpcResponseBody<ResBody>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll(cx)) {
            Ok(response) => {
                let sent_with = this.inner.sent_with();
                Poll::Ready(Ok(response.map(|body| GrpcResponseBody { body, sent_with })))
            }
            Err(error) => Poll::Ready(Err(layer_error_as_status(error))),
        }
    }
}

impl<F, S, Req> fmt::Debug for GrpcResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcResponseFuture")
            .field(&self.inner)
            .finish()
    }
}

pin_project! {
    /// The response body of [`GrpcBearerAuth`] and [`KeyedGrpcBearerAuth`]: the inner body,
    /// unchanged, except that trailers carrying `grpc-status: 16` take the token the call
    /// carried out of service (its account's, for the keyed layer).
    pub struct GrpcResponseBody<B> {
        #[pin]
        body: B,
        // The cache key and token identity the call went out with, until trailers reject it.
        sent_with: Option<(u64, u64)>,
    }
}

impl<B: Body> Body for GrpcResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && grpc_unauthenticated(trailers)
            && let Some((key, id)) = this.sent_with.take()
        {
            rejected(key, id);
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for GrpcResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcResponseBody").finish_non_exhaustive()
    }
}

/// The layer's own errors as a boxed [`Status`], which tonic's client returns as it is; the inner
/// service's errors unchanged, for tonic to map as it does without the layer.
fn layer_error_as_status(error: BoxError) -> BoxError {
    match error.downcast::<Error>() {
        Ok(error) => Box::new(Status::from(*error)),
        Err(other) => other,
    }
}

/// A [`Status`] for an error of [`BearerAuth`] or [`GrpcBearerAuth`]: the mapped code for the
/// crate's [`Error`], and [`Status::from_error`] (tonic's own mapping) for anything else.
///
/// For a `BearerAuth` used with tonic without [`GrpcBearerAuth`], or for the login of your own
/// tonic code, such as a `map_err` in a `ServiceBuilder`.
pub fn into_status(error: BoxError) -> Status {
    match error.downcast::<Error>() {
        Ok(error) => Status::from(*error),
        Err(other) => Status::from_error(other),
    }
}

/// The gRPC code for a kind of error; the table is in the [module docs](self).
fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::AuthenticationFailed | ErrorKind::UnknownUser | ErrorKind::InvalidGrant => {
            Code::Unauthenticated
        }
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::Config | ErrorKind::InsecureTransport => Code::FailedPrecondition,
        ErrorKind::Runtime => Code::Internal,
        ErrorKind::NoAccount => Code::InvalidArgument,
        ErrorKind::UnknownAccount => Code::PermissionDenied,
        ErrorKind::RateLimited
        | ErrorKind::Server
        | ErrorKind::Timeout
        | ErrorKind::Transport
        | ErrorKind::InvalidResponse => Code::Unavailable,
    }
}

/// The metadata key for how long to wait before trying again, in milliseconds: gRPC's own
/// retry pushback key.
const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

impl From<Error> for Status {
    /// The code from the table in the [module docs](self); the message is the error's
    /// `Display` (never a password or a token); a transient error's
    /// [`retry_after`](Error::retry_after) is the `grpc-retry-pushback-ms` metadata; the
    /// [`source`](std::error::Error::source) is the error itself.
    fn from(error: Error) -> Status {
        let mut status = Status::new(code(error.kind()), error.to_string());
        if let Some(wait) = error.retry_after().filter(|_| error.is_transient())
            && let Ok(millis) = MetadataValue::try_from(wait.as_millis().to_string())
        {
            status.metadata_mut().insert(RETRY_PUSHBACK, millis);
        }
        status.set_source(Arc::new(error));
        status
    }
}

/// A gRPC codec whose messages are raw [`Bytes`](bytes::Bytes), for tests and examples: a tonic service and
/// client without protoc or generated code (feature `test-util`).
///
/// The message is the frame's payload as it is; pass it to `tonic::server::Grpc::new` and to
/// `tonic::client::Grpc::unary` and friends. `examples/grpc.rs` serves and calls a unary method
/// with it.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

#[cfg(feature = "test-util")]
mod bytes_codec {
    use ::tonic::Status;
    use ::tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use bytes::{Buf, BufMut, Bytes};

    use super::BytesCodec;

    impl Codec for BytesCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = BytesCodec;
        type Decoder = BytesCodec;

        fn encoder(&mut self) -> BytesCodec {
            BytesCodec
        }

        fn decoder(&mut self) -> BytesCodec {
            BytesCodec
        }
    }

    impl Encoder for BytesCodec {
        type Item = Bytes;
        type Error = Status;

        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for BytesCodec {
        type Item = Bytes;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every kind, with the code a tonic client sees for it.
    const TABLE: [(ErrorKind, Code); 14] = [
        (ErrorKind::AuthenticationFailed, Code::Unauthenticated),
        (ErrorKind::UnknownUser, Code::Unauthenticated),
        (ErrorKind::InvalidGrant, Code::Unauthenticated),
        (ErrorKind::Forbidden, Code::PermissionDenied),
        (ErrorKind::RateLimited, Code::Unavailable),
        (ErrorKind::Server, Code::Unavailable),
        (ErrorKind::Timeout, Code::Unavailable),
        (ErrorKind::Transport, Code::Unavailable),
        (ErrorKind::InvalidResponse, Code::Unavailable),
        (ErrorKind::Config, Code::FailedPrecondition),
        (ErrorKind::InsecureTransport, Code::FailedPrecondition),
        (ErrorKind::Runtime, Code::Internal),
        (ErrorKind::NoAccount, Code::InvalidArgument),
        (ErrorKind::UnknownAccount, Code::PermissionDenied),
    ];

    #[test]
    fn every_error_kind_maps_to_its_grpc_code_with_the_error_as_source() {
        for (kind, expected) in TABLE {
            let status = Status::from(Error::new(kind).with_user("alice"));
            assert_eq!(status.code(), expected, "{kind}");
            assert_eq!(
                status.message(),
                Error::new(kind).with_user("alice").to_string()
            );
            let source = std::error::Error::source(&status)
                .and_then(|source| source.downcast_ref::<Error>())
                .map(Error::kind);
            assert_eq!(source, Some(kind), "the source is the crate's error");
        }
    }

    #[test]
    fn exactly_the_transient_kinds_are_unavailable() {
        for (kind, _) in TABLE {
            assert_eq!(
                code(kind) == Code::Unavailable,
                kind.is_transient(),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_transient_error_carries_its_retry_after_as_pushback_metadata() {
        let error = Error::new(ErrorKind::RateLimited)
            .with_retry_after(Some(Duration::from_millis(30_500)));
        let status = Status::from(error);
        let pushback = status.metadata().get(RETRY_PUSHBACK);
        assert_eq!(pushback.and_then(|v| v.to_str().ok()), Some("30500"));

        let permanent = Error::new(ErrorKind::AuthenticationFailed)
            .with_retry_after(Some(Duration::from_secs(5)));
        assert!(
            Status::from(permanent)
                .metadata()
                .get(RETRY_PUSHBACK)
                .is_none()
        );
        assert!(
            Status::from(Error::new(ErrorKind::Server))
                .metadata()
                .get(RETRY_PUSHBACK)
                .is_none()
        );
    }

    #[test]
    fn into_status_maps_the_crates_error_and_leaves_others_to_tonic() {
        let ours: BoxError = Box::new(Error::new(ErrorKind::Timeout));
        assert_eq!(into_status(ours).code(), Code::Unavailable);
        let theirs: BoxError = "connection reset".into();
        let status = into_status(theirs);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unknown, "connection reset")
        );
    }

    #[test]
    fn the_layers_errors_become_a_status_and_others_pass_through() {
        let ours: BoxError = Box::new(Error::new(ErrorKind::AuthenticationFailed));
        let status = layer_error_as_status(ours).downcast::<Status>();
        assert_eq!(status.map(|s| s.code()).ok(), Some(Code::Unauthenticated));
        let theirs: BoxError = "broken pipe".into();
        let passed = layer_error_as_status(theirs);
        assert!(passed.downcast_ref::<Status>().is_none());
        assert_eq!(passed.to_string(), "broken pipe");
    }
}
