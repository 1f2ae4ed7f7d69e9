//! Response futures for [`BearerAuth`](crate::BearerAuth).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
    pub(crate) fn called(fut: F, key: u64, id: u64) -> Self {
        ResponseFuture {
            state: State::Called { fut, key, id },
        }
    }

    pub(crate) fn fetching(inner: S, req: Req, cache: TokenCache) -> Self {
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

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Cold {
                cold: Box::new(Cold::Failed(Some(error))),
            },
        }
    }

    /// The identity of the token the request went out with, once it went out.
    fn token_id(&self) -> Option<u64> {
        self.sent_with().map(|(_, id)| id)
    }

    /// The cache key and the identity of the token the request went out with, once it went out:
    /// what [`rejected`] needs, for a rejection seen later (gRPC trailers).
    #[inline]
    pub(crate) fn sent_with(&self) -> Option<(u64, u64)> {
        match &self.state {
            State::Called { key, id, .. } => Some((*key, *id)),
            State::Cold { .. } => None,
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

    // Always inlined: the cold states are out of line (`poll_cold`), so what is left is the
    // warm path, and as a call of its own it copied the response twice more (28 instructions
    // a request of the 170 a `BearerAuth` adds to a static header, `benches/instructions.rs`).
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Called { fut, key, id } => {
                    return match ready!(fut.poll(cx)) {
                        Ok(response) => {
                            if response.rejects_token() {
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

/// Takes the token `id` of the cache `key` out of service after the server rejected it (a `401`,
/// or `grpc-status: 16`; see [`StatusResponse`]): the rare case, kept out of the warm path's code.
/// The cache decides whether to act on it (the spacing of invalidations in a row).
#[cold]
#[inline(never)]
pub(crate) fn rejected(key: u64, id: u64) {
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

/// What a replay needs: a clone of the service, the cache, and a copy of the request.
pub(crate) struct Replay<S, Req> {
    pub(crate) inner: S,
    pub(crate) cache: TokenCache,
    pub(crate) request: Req,
}

pin_project! {
    /// The response future of [`BearerAuth`](crate::BearerAuth) with
    /// [`retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized).
    ///
    /// The first attempt is a plain [`ResponseFuture`], beside the copy of the request to replay
    /// if it may be replayed. Only after a `401` does it wait for a renewed token and send the
    /// copy with it; nothing is boxed until then.
    pub struct RetryFuture<F, S, Req, R> {
        #[pin]
        state: RetryState<F, S, Req, R>,
    }
}

pin_project! {
    #[project = RetryStateProj]
    enum RetryState<F, S, Req, R> {
        First {
            #[pin]
            fut: ResponseFuture<F, S, Req>,
            replay: Option<Replay<S, Req>>,
        },
        // The first attempt got `401`: waiting for a renewed token. Boxed, since it is rare.
        Renewing {
            renewing: Box<Renewing<S, Req, R>>,
        },
        // The copy went out with the token `id` of the cache `key`.
        Replayed {
            #[pin]
            fut: F,
            key: u64,
            id: u64,
        },
    }
}

/// Waiting for the token to replay with, then for the service to be ready.
struct Renewing<S, Req, R> {
    token: BoxFetch<'static>,
    /// The token the first attempt carried, which the server rejected.
    rejected: u64,
    /// The `401` to return if no other token can be had.
    first: Option<R>,
    replay: Option<Replay<S, Req>>,
    /// The renewed token, once it is set on the copy.
    renewed: Option<u64>,
}

impl<F, S, Req, R> RetryFuture<F, S, Req, R> {
    #[inline]
    pub(crate) fn new(fut: ResponseFuture<F, S, Req>, replay: Option<Replay<S, Req>>) -> Self {
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
                RetryStateProj::First { mut fut, replay } => {
                    let response = ready!(fut.as_mut().poll(cx))?;
                    if !response.rejects_token() {
                        return Poll::Ready(Ok(response));
                    }
                    let (Some(replay), Some(rejected)) = (replay.take(), fut.token_id()) else {
                        return Poll::Ready(Ok(response));
                    };
                    let cache = replay.cache.clone();
                    this.state.set(RetryState::Renewing {
                        renewing: Box::new(Renewing {
                            token: Box::pin(async move { cache.token().await }),
                            rejected,
                            first: Some(response),
                            replay: Some(replay),
                            renewed: None,
                        }),
                    });
                }
                RetryStateProj::Renewing { renewing } => {
                    let id = match renewing.renewed {
                        Some(id) => id,
                        None => match ready!(renewing.poll_token(cx)) {
                            Some(id) => id,
                            None => {
                                let first = renewing.first.take();
                                return Poll::Ready(Ok(
                                    first.expect("RetryFuture polled after completion")
                                ));
                            }
                        },
                    };
                    let replay = renewing
                        .replay
                        .as_mut()
                        .expect("RetryFuture polled after completion");
                    ready!(replay.inner.poll_ready(cx)).map_err(Into::into)?;
                    let Replay {
                        mut inner,
                        cache,
                        request,
                    } = renewing
                        .replay
                        .take()
                        .expect("RetryFuture polled after completion");
                    this.state.set(RetryState::Replayed {
                        fut: inner.call(request),
                        key: cache.key(),
                        id,
                    });
                }
                RetryStateProj::Replayed { fut, key, id } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if response.rejects_token() {
                        rejected(*key, *id);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, Req: AuthorizeRequest, R> Renewing<S, Req, R> {
    /// Waits for a token other than the rejected one and sets it on the copy; returns its
    /// identity, or `None` if there is none and the first `401` is the answer.
    fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let token = match ready!(self.token.as_mut().poll(cx)) {
            Ok(token) if token.id() != self.rejected => token,
            Ok(_) => {
                tracing::debug!("the cache kept the rejected token; not replaying");
                return Poll::Ready(None);
            }
            Err(error) => {
                tracing::debug!(
                    error_kind = error.kind().as_str(),
                    "no renewed token to replay with"
                );
                return Poll::Ready(None);
            }
        };
        // The first response is no longer needed: release it before sending again.
        self.first = None;
        tracing::debug!("replaying a request rejected with 401 with the renewed token");
        let replay = self
            .replay
            .as_mut()
            .expect("RetryFuture polled after completion");
        replay
            .request
            .set_authorization(token.header_value().clone());
        self.renewed = Some(token.id());
        Poll::Ready(Some(token.id()))
    }
}

impl<F, S, Req, R> fmt::Debug for RetryFuture<F, S, Req, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            RetryState::First { .. } => "first",
            RetryState::Renewing { .. } => "renewing",
            RetryState::Replayed { .. } => "replayed",
        };
        f.debug_struct("RetryFuture")
            .field("state", &state)
            .finish()
    }
}
