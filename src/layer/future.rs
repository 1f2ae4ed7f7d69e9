//! Response futures for [`BearerAuth`](crate::BearerAuth).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::StatusCode;
use pin_project_lite::pin_project;
use tower::Service;

use super::request::{AuthorizeRequest, StatusResponse};
use crate::error::BoxError;
use crate::source::BoxFetch;
use crate::{Error, TokenCache};

pin_project! {
    /// The response future of [`BearerAuth`](crate::BearerAuth).
    ///
    /// With a warm token it is the inner service's future plus a status check; it waits for a
    /// token only when the cache has none to give.
    pub struct ResponseFuture<F, S, Req> {
        #[pin]
        state: State<F, S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req> {
        // The request went out with the token `id` of the cache `key`.
        Called {
            #[pin]
            fut: F,
            key: u64,
            id: u64,
        },
        // No token was ready: wait for one, then call the service that `poll_ready` prepared.
        // Boxed, so that the warm path's future stays as small as the inner one.
        Fetching {
            fetching: Box<Fetching<S, Req>>,
        },
        // Refused before sending.
        Failed {
            error: Option<Error>,
        },
    }
}

/// The cold path's state: the fetch to wait for, and what to send once it is done.
struct Fetching<S, Req> {
    token: BoxFetch<'static>,
    /// The service `poll_ready` prepared and the request, until the token arrives.
    ready: Option<(S, Req)>,
    cache: TokenCache,
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    pub(super) fn called(fut: F, key: u64, id: u64) -> Self {
        ResponseFuture {
            state: State::Called { fut, key, id },
        }
    }

    pub(super) fn fetching(inner: S, req: Req, cache: TokenCache) -> Self {
        let owned = cache.clone();
        ResponseFuture {
            state: State::Fetching {
                fetching: Box::new(Fetching {
                    token: Box::pin(async move { owned.token().await }),
                    ready: Some((inner, req)),
                    cache,
                }),
            },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, S, Req, R, E> Future for ResponseFuture<F, S, Req>
where
    S: Service<Req, Future = F, Response = R, Error = E>,
    F: Future<Output = Result<R, E>>,
    Req: AuthorizeRequest,
    R: StatusResponse,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Fetching { fetching } => {
                    let token = match ready!(fetching.token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let (mut inner, mut req) = fetching
                        .ready
                        .take()
                        .expect("ResponseFuture polled after completion");
                    req.set_authorization(token.header_value().clone());
                    let fut = inner.call(req);
                    let key = fetching.cache.key();
                    this.state.set(State::Called {
                        fut,
                        key,
                        id: token.id(),
                    });
                }
                StateProj::Called { fut, key, id } => {
                    return match ready!(fut.poll(cx)) {
                        Ok(response) => {
                            if response.response_status() == StatusCode::UNAUTHORIZED {
                                crate::cache::invalidate(*key, *id);
                            }
                            Poll::Ready(Ok(response))
                        }
                        Err(error) => Poll::Ready(Err(error.into())),
                    };
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

impl<F, S, Req> fmt::Debug for ResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Fetching { .. } => "fetching",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// The boxed replay of a request after a `401`.
pub(super) type BoxReplay<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`BearerAuth`](crate::BearerAuth) with
    /// [`retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized).
    ///
    /// The first attempt is a plain [`ResponseFuture`]. Only after a `401`, when the request
    /// could be replayed, does a boxed replay with the renewed token follow.
    pub struct RetryFuture<F, S, Req, R> {
        #[pin]
        state: RetryState<F, S, Req, R>,
    }
}

/// What a replay needs: a way to build it from the first response.
pub(super) type ReplayFn<R> = Box<dyn FnOnce(R) -> BoxReplay<R> + Send>;

pin_project! {
    #[project = RetryStateProj]
    enum RetryState<F, S, Req, R> {
        First {
            #[pin]
            fut: ResponseFuture<F, S, Req>,
            replay: Option<ReplayFn<R>>,
        },
        Replaying {
            fut: BoxReplay<R>,
        },
    }
}

impl<F, S, Req, R> RetryFuture<F, S, Req, R> {
    pub(super) fn new(fut: ResponseFuture<F, S, Req>, replay: Option<ReplayFn<R>>) -> Self {
        RetryFuture {
            state: RetryState::First { fut, replay },
        }
    }
}

impl<F, S, Req, R, E> Future for RetryFuture<F, S, Req, R>
where
    S: Service<Req, Future = F, Response = R, Error = E>,
    F: Future<Output = Result<R, E>>,
    Req: AuthorizeRequest,
    R: StatusResponse,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                RetryStateProj::First { fut, replay } => {
                    let response = ready!(fut.poll(cx))?;
                    let replay = match replay.take() {
                        Some(replay) if response.response_status() == StatusCode::UNAUTHORIZED => {
                            replay
                        }
                        _ => return Poll::Ready(Ok(response)),
                    };
                    this.state.set(RetryState::Replaying {
                        fut: replay(response),
                    });
                }
                RetryStateProj::Replaying { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

impl<F, S, Req, R> fmt::Debug for RetryFuture<F, S, Req, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            RetryState::First { .. } => "first",
            RetryState::Replaying { .. } => "replaying",
        };
        f.debug_struct("RetryFuture")
            .field("state", &state)
            .finish()
    }
}
