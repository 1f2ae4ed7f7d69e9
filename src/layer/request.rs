//! What the layer needs from a request and a response, for `http` and `reqwest` types alike.

use http::{HeaderValue, Method, StatusCode, header::AUTHORIZATION};

use crate::loopback::is_loopback_host;

mod sealed {
    pub trait Sealed {}
}

/// A request [`BearerAuth`](crate::BearerAuth) can authorize: [`http::Request`] and, with the
/// `reqwest` feature, [`reqwest::Request`].
///
/// Sealed: it names the types this crate supports and cannot be implemented elsewhere.
pub trait AuthorizeRequest: sealed::Sealed {
    /// Whether the request goes to an absolute `http://` URL on a non-loopback host.
    #[doc(hidden)]
    fn is_insecure_target(&self) -> bool;
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
/// `http::Request<B>` is replayable when its body type is `Clone`; a `reqwest::Request` when
/// [`try_clone`](reqwest::Request::try_clone) succeeds (not for streaming bodies).
pub trait ReplayableRequest: AuthorizeRequest + Sized {
    /// A copy to send again, or `None` if the request cannot be replayed.
    #[doc(hidden)]
    fn try_replay(&self) -> Option<Self>;
}

/// A response whose status the layer inspects, to invalidate a token the server rejected.
pub trait StatusResponse: sealed::Sealed {
    /// The response status.
    #[doc(hidden)]
    fn response_status(&self) -> StatusCode;
}

impl<B> sealed::Sealed for http::Request<B> {}

impl<B> AuthorizeRequest for http::Request<B> {
    #[inline]
    fn is_insecure_target(&self) -> bool {
        let uri = self.uri();
        uri.scheme() == Some(&http::uri::Scheme::HTTP) && !uri.host().is_some_and(is_loopback_host)
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

impl<B: Clone> ReplayableRequest for http::Request<B> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> sealed::Sealed for http::Response<B> {}

impl<B> StatusResponse for http::Response<B> {
    #[inline]
    fn response_status(&self) -> StatusCode {
        self.status()
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_impls {
    use super::*;

    impl sealed::Sealed for reqwest::Request {}

    impl AuthorizeRequest for reqwest::Request {
        #[inline]
        fn is_insecure_target(&self) -> bool {
            let url = self.url();
            url.scheme() == "http" && !url.host_str().is_some_and(is_loopback_host)
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

    impl sealed::Sealed for reqwest::Response {}

    impl StatusResponse for reqwest::Response {
        #[inline]
        fn response_status(&self) -> StatusCode {
            self.status()
        }
    }
}
