//! What the layer needs from a request and a response, for `http` and `reqwest` types alike.

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header::AUTHORIZATION,
};

use crate::loopback::is_loopback_host;

mod sealed {
    pub trait Sealed {}
}

/// A request [`BearerAuth`](crate::BearerAuth) can authorize: [`http::Request`] and, with the
/// `reqwest` feature, [`reqwest::Request`].
///
/// Sealed: it names the types this crate supports and cannot be implemented elsewhere.
pub trait AuthorizeRequest: sealed::Sealed {
    /// The host, when the request goes to an absolute `http://` URL on a non-loopback host.
    #[doc(hidden)]
    fn insecure_host(&self) -> Option<&str>;
    /// Whether the request's URI is relative (no scheme): where it goes is the transport's.
    #[doc(hidden)]
    fn is_relative(&self) -> bool;
    /// Sets the `Authorization` header, replacing any existing value.
    #[doc(hidden)]
    fn set_authorization(&mut self, value: HeaderValue);
    /// The request method.
    #[doc(hidden)]
    fn request_method(&self) -> &Method;
}

/// A request that may be replayable once, for
/// [`retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized).
///
/// `http::Request<B>` is one when its body type implements [`ReplayBody`]; a `reqwest::Request`
/// always is, and is replayed when [`try_clone`](reqwest::Request::try_clone) succeeds (not for
/// streaming bodies). A request that cannot be copied is sent once, as without the setting.
pub trait ReplayableRequest: AuthorizeRequest + Sized {
    /// A copy to send again, or `None` if the request cannot be replayed.
    #[doc(hidden)]
    fn try_replay(&self) -> Option<Self>;
}

/// A request body that [`retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized)
/// can copy, to send a request again after a `401`.
///
/// [`try_clone_body`](Self::try_clone_body) returns a copy of the body, or `None` when the body
/// cannot be sent twice (a stream read as it is sent); a request whose body returns `None` is
/// sent once and its `401` reaches the caller, exactly as without the setting.
///
/// Implemented for the buffered bodies of `std`, [`bytes`] and `http`: `()`, [`String`],
/// `Vec<u8>`, [`Bytes`], `&'static str` and `&'static [u8]`, which are always copied; for
/// `http-body-util`'s [`Full`](http_body_util::Full) and [`Empty`](http_body_util::Empty), which
/// are copied too (hyper-util's client usually sends one of these); for hyper's
/// [`Incoming`](hyper::body::Incoming) and `http-body-util`'s boxed bodies
/// ([`BoxBody`](http_body_util::combinators::BoxBody),
/// [`UnsyncBoxBody`](http_body_util::combinators::UnsyncBoxBody)), which are streams and never
/// replayed; and, with the `reqwest` feature, for [`reqwest::Body`], copied when it is buffered
/// ([`as_bytes`](reqwest::Body::as_bytes) is `Some`) and not replayed when it streams.
///
/// Implement it for a body type of your own, returning `None` if it streams; such a body
/// then works with `retry_on_unauthorized` and is simply not replayed:
///
/// ```
/// # use std::convert::Infallible;
/// # use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_authtoken::layer::ReplayBody;
/// use tower_authtoken::{BearerAuthLayer, TokenCache};
/// # use tower_authtoken::{Error, Token, TokenSource};
/// # struct Fixed;
/// # impl TokenSource for Fixed {
/// #     async fn fetch(&self) -> Result<Token, Error> {
/// #         Token::new("opaque", Duration::from_secs(3600))
/// #     }
/// # }
///
/// /// A body read from a file as it is sent: not `Clone`, and it cannot be sent twice.
/// struct Upload {
///     // ...
/// }
///
/// impl ReplayBody for Upload {
///     fn try_clone_body(&self) -> Option<Self> {
///         None
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let upstream =
///     service_fn(|_: Request<Upload>| async { Ok::<_, Infallible>(Response::new(())) });
/// let client = BearerAuthLayer::new(TokenCache::new(Fixed))
///     .retry_on_unauthorized()
///     .layer(upstream);
/// client.oneshot(Request::put("/files/1").body(Upload {})?).await?;
/// # Ok(())
/// # }
/// ```
///
/// A body type from another crate needs its implementation here (the orphan rule keeps you
/// from writing it). With the `tonic` feature, tonic's `tonic::body::Body` has one that returns
/// `None`: a gRPC request streams its messages, and is never replayed.
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` if it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

/// Bodies that are plain values, copied with `Clone`.
macro_rules! replay_by_clone {
    ($($body:ty),* $(,)?) => {
        $(
            impl ReplayBody for $body {
                #[inline]
                fn try_clone_body(&self) -> Option<Self> {
                    Some(self.clone())
                }
            }
        )*
    };
}

replay_by_clone!((), String, Vec<u8>, Bytes, &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    #[inline]
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    #[inline]
    fn try_clone_body(&self) -> Option<Self> {
        Some(Self::new())
    }
}

/// Bodies that stream: sent once, never replayed.
macro_rules! never_replayed {
    ($(<$($param:ident),*> $body:ty),* $(,)?) => {
        $(
            impl<$($param),*> ReplayBody for $body {
                #[inline]
                fn try_clone_body(&self) -> Option<Self> {
                    None
                }
            }
        )*
    };
}

#[cfg(feature = "tonic")]
never_replayed!(<> ::tonic::body::Body);

never_replayed!(
    <> hyper::body::Incoming,
    <D, E> http_body_util::combinators::BoxBody<D, E>,
    <D, E> http_body_util::combinators::UnsyncBoxBody<D, E>,
);

/// A response the layer inspects, to invalidate a token the server rejected.
///
/// The server rejected the token when the response is `401 Unauthorized`, or an HTTP/2 (or
/// later) `200` whose headers carry `grpc-status: 16` (gRPC's `UNAUTHENTICATED`, sent as an
/// HTTP `200`; gRPC runs over HTTP/2 only). A gRPC status that arrives in trailers is seen by
/// the response body of `GrpcBearerAuth` (feature `tonic`).
pub trait StatusResponse: sealed::Sealed {
    /// Whether the server rejected the token the request carried.
    #[doc(hidden)]
    fn rejects_token(&self) -> bool;
}

/// `grpc-status`, the header (or trailer) holding a gRPC call's status code.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether a response with `status`, `version` and `headers` rejects the token its request
/// carried: the one definition, shared by every front-end.
///
/// A `401`, or an HTTP/2 (or later) `200` carrying `grpc-status: 16` (`UNAUTHENTICATED`).
/// gRPC runs over HTTP/2 only, so an HTTP/1 `200`, the common answer of a REST API, costs two
/// comparisons and no header lookup (the lookup was 36 of the 206 instructions the layer added
/// to a static header, `benches/instructions.rs`); nothing is allocated.
#[inline]
pub(crate) fn rejects_token(status: StatusCode, version: Version, headers: &HeaderMap) -> bool {
    match status {
        StatusCode::UNAUTHORIZED => true,
        StatusCode::OK => version >= Version::HTTP_2 && grpc_unauthenticated(headers),
        _ => false,
    }
}

/// Whether gRPC headers or trailers carry `grpc-status: 16` (`UNAUTHENTICATED`).
#[inline]
pub(crate) fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get(GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"16")
}

impl<B> sealed::Sealed for http::Request<B> {}

impl<B> AuthorizeRequest for http::Request<B> {
    #[inline]
    fn insecure_host(&self) -> Option<&str> {
        let uri = self.uri();
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let host = uri.host().unwrap_or_default();
        (!is_loopback_host(host)).then_some(host)
    }

    #[inline]
    fn is_relative(&self) -> bool {
        self.uri().scheme().is_none()
    }

    #[inline]
    fn set_authorization(&mut self, value: HeaderValue) {
        self.headers_mut().insert(AUTHORIZATION, value);
    }

    #[inline]
    fn request_method(&self) -> &Method {
        self.method()
    }
}

impl<B: ReplayBody> ReplayableRequest for http::Request<B> {
    fn try_replay(&self) -> Option<Self> {
        let mut copy = http::Request::new(self.body().try_clone_body()?);
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }
}

impl<B> sealed::Sealed for http::Response<B> {}

impl<B> StatusResponse for http::Response<B> {
    #[inline]
    fn rejects_token(&self) -> bool {
        rejects_token(self.status(), self.version(), self.headers())
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_impls {
    use super::*;

    impl sealed::Sealed for reqwest::Request {}

    impl AuthorizeRequest for reqwest::Request {
        #[inline]
        fn insecure_host(&self) -> Option<&str> {
            let url = self.url();
            if url.scheme() != "http" {
                return None;
            }
            let host = url.host_str().unwrap_or_default();
            (!is_loopback_host(host)).then_some(host)
        }

        #[inline]
        fn is_relative(&self) -> bool {
            false
        }

        #[inline]
        fn set_authorization(&mut self, value: HeaderValue) {
            self.headers_mut().insert(AUTHORIZATION, value);
        }

        #[inline]
        fn request_method(&self) -> &Method {
            self.method()
        }
    }

    impl ReplayableRequest for reqwest::Request {
        fn try_replay(&self) -> Option<Self> {
            self.try_clone()
        }
    }

    impl ReplayBody for reqwest::Body {
        fn try_clone_body(&self) -> Option<Self> {
            self.as_bytes()
                .map(|bytes| Bytes::copy_from_slice(bytes).into())
        }
    }

    impl sealed::Sealed for reqwest::Response {}

    impl StatusResponse for reqwest::Response {
        #[inline]
        fn rejects_token(&self) -> bool {
            rejects_token(self.status(), self.version(), self.headers())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(grpc_status: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(code) = grpc_status {
            headers.insert(GRPC_STATUS, HeaderValue::from_static(code));
        }
        headers
    }

    #[test]
    fn a_401_or_an_http2_200_with_grpc_status_16_rejects_the_token_and_nothing_else_does() {
        use Version as V;
        let cases = [
            (StatusCode::UNAUTHORIZED, V::HTTP_11, None, true),
            (StatusCode::UNAUTHORIZED, V::HTTP_2, Some("0"), true),
            (StatusCode::UNAUTHORIZED, V::HTTP_10, Some("0"), true),
            (StatusCode::OK, V::HTTP_2, Some("16"), true),
            (StatusCode::OK, V::HTTP_3, Some("16"), true),
            // gRPC runs over HTTP/2 only: an HTTP/1 answer is not a gRPC status.
            (StatusCode::OK, V::HTTP_11, Some("16"), false),
            (StatusCode::OK, V::HTTP_10, Some("16"), false),
            (StatusCode::OK, V::HTTP_2, None, false),
            (StatusCode::OK, V::HTTP_2, Some("0"), false),
            (StatusCode::OK, V::HTTP_2, Some("7"), false),
            (StatusCode::OK, V::HTTP_2, Some("160"), false),
            (StatusCode::OK, V::HTTP_2, Some("1"), false),
            (StatusCode::FORBIDDEN, V::HTTP_11, None, false),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                V::HTTP_2,
                Some("16"),
                false,
            ),
        ];
        for (status, version, grpc_status, rejects) in cases {
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers(grpc_status);
            assert_eq!(
                response.rejects_token(),
                rejects,
                "{status} {version:?} with grpc-status {grpc_status:?}"
            );
        }
    }

    #[test]
    fn trailers_reject_the_token_only_with_grpc_status_16() {
        assert!(grpc_unauthenticated(&headers(Some("16"))));
        assert!(!grpc_unauthenticated(&headers(Some("14"))));
        assert!(!grpc_unauthenticated(&headers(None)));
    }
}
