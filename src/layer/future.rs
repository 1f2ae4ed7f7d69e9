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
        // Waiting for a token, or refused before sending. Boxed, so that the warm path's future
        // stays as small as the inner one and dropping it is cheap.
        Cold {
            cold: Box<Cold<S, Req>>,
        },
    }
}

/// The cold path's states.
enum Cold<S, Req> {
    /// No token was ready: wait for one, then call the service that `poll_ready` prepared.
    Fetching {
        token: BoxFetch<'static>,
        /// The service `poll_ready` prepared and the request, until the token arrives.
        ready: Option<(S, Req)>,
        cache: TokenCache,
    },
    /// Refused before sending.
    Failed(Option<Error>),
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    #[inline]
    pub(super) fn called(fut: F, key: u64, id: u64) -> Self {
        ResponseFuture {
            state: State::Called { fut, key, id },
        }
    }

    pub(super) fn fetching(inner: S, req: Req, cache: TokenCache) -> Self {
        let owned = cache.clone();
        ResponseFuture {
            state: State::Cold {
                cold: Box::new(Cold::Fetching {
                    token: Box::pin(async move { owned.token().await }),
                    ready: Some((inner, req)),
                    cache,
                }),
            },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Cold {
                cold: Box::new(Cold::Failed(Some(error))),
            },
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
                StateProj::Called { fut, key, id } => {
                    return match ready!(fut.poll(cx)) {
                        Ok(response) => {
                            if response.response_status() == StatusCode::UNAUTHORIZED {
                                rejected(*key, *id);
                            }
                            Poll::Ready(Ok(response))
                        }
                        Err(error) => Poll::Ready(Err(error.into())),
                    };
                }
                StateProj::Cold { cold } => {
                    let called = ready!(cold.poll_cold(cx))?;
                    this.state.set(called);
                }
            }
        }
    }
}

/// Takes the token `id` of the cache `key` out of service after a `401`: the rare case, kept
/// out of the warm path's code.
#[cold]
#[inline(never)]
fn rejected(key: u64, id: u64) {
    crate::cache::invalidate(key, id);
}

impl<S, Req> Cold<S, Req> {
    /// Waits for the token, then calls the service; returns the state to go on with.
    #[inline(never)]
    fn poll_cold<F>(&mut self, cx: &mut Context<'_>) -> Poll<Result<State<F, S, Req>, Error>>
    where
        S: Service<Req, Future = F>,
        Req: AuthorizeRequest,
    {
        match self {
            Cold::Fetching {
                token,
                ready,
                cache,
            } => {
                let token = ready!(token.as_mut().poll(cx))?;
                let (mut inner, mut req) = ready
                    .take()
                    .expect("ResponseFuture polled after completion");
                req.set_authorization(token.header_value().clone());
                Poll::Ready(Ok(State::Called {
                    fut: inner.call(req),
                    key: cache.key(),
                    id: token.id(),
                }))
            }
            Cold::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F, S, Req> fmt::Debug for ResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Cold { cold } => match **cold {
                Cold::Fetching { .. } => "fetching",
                Cold::Failed(_) => "failed",
            },
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
