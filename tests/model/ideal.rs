//! A minimal client that keeps the contract of issue 9, written only to check the harness: if it
//! meets every target against the model, the targets and the model are consistent, and a failure
//! of the crate's cache is the cache's.
//!
//! Its rules: renew early (60 s ahead, or at half life) and stop a margin (10 s or a tenth of the
//! life) before expiry; once a renewal returns a token that expires no later than the last one
//! (the same token, or one bound to the session), adopt it, stop renewing early, stop handing a
//! token out 1 s before it expires, and log in at expiry. A 401 withdraws the token it was sent
//! with. One login at a time. No budget, no backoff: it is not for failing servers.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use tokio::time::{Instant, sleep_until};
use tower::{BoxError, Service, ServiceExt};
use tower_authtoken::{Token, TokenSource};

use super::harness::BoxFuture;

const SECOND: Duration = Duration::from_secs(1);

/// The contract-keeping client over the transport `S`, logging in with `L`.
pub struct Ideal<S, L> {
    inner: S,
    shared: Arc<Shared<L>>,
}

impl<S: Clone, L> Clone for Ideal<S, L> {
    fn clone(&self) -> Self {
        Ideal {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<L> {
    login: L,
    state: Mutex<State>,
    flight: tokio::sync::Mutex<()>,
}

struct State {
    held: Option<Held>,
    last: Option<Token>,
    early: bool,
    renewing: bool,
}

#[derive(Clone)]
struct Held {
    token: Token,
    cutoff: Instant,
    renew_at: Instant,
}

impl<S, L: TokenSource> Ideal<S, L> {
    pub fn new(inner: S, login: L) -> Self {
        Ideal {
            inner,
            shared: Arc::new(Shared {
                login,
                state: Mutex::new(State {
                    held: None,
                    last: None,
                    early: true,
                    renewing: false,
                }),
                flight: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

impl<L: TokenSource> Shared<L> {
    /// Puts a token just received into service.
    fn adopt(&self, token: Token) {
        let mut state = self.state.lock().unwrap();
        let expires = token.expires_at();
        // Equal expiries may differ by the timer's rounding.
        let renews_nothing = state
            .last
            .as_ref()
            .is_some_and(|last| expires <= last.expires_at() + 10 * Duration::from_millis(1));
        if renews_nothing {
            state.early = false;
        }
        let life = token.lifetime();
        let margin = (10 * SECOND).min(life / 10);
        let held = if state.early {
            Held {
                cutoff: expires - margin,
                renew_at: expires - (60 * SECOND).min(life / 2),
                token: token.clone(),
            }
        } else {
            Held {
                cutoff: expires - margin.min(SECOND),
                renew_at: expires,
                token: token.clone(),
            }
        };
        state.held = Some(held);
        state.last = Some(token);
    }

    async fn token(self: &Arc<Self>) -> Result<Token, BoxError> {
        loop {
            let now = Instant::now();
            let expired = {
                let mut state = self.state.lock().unwrap();
                match state.held.clone() {
                    Some(held) if now < held.cutoff => {
                        if state.early && now >= held.renew_at && !state.renewing {
                            state.renewing = true;
                            let shared = Arc::clone(self);
                            tokio::spawn(async move {
                                let _flight = shared.flight.lock().await;
                                if let Ok(token) = shared.login.fetch().await {
                                    shared.adopt(token);
                                }
                                shared.state.lock().unwrap().renewing = false;
                            });
                        }
                        return Ok(held.token);
                    }
                    Some(held) => Some(held.token.expires_at()),
                    None => None,
                }
            };
            let _flight = self.flight.lock().await;
            let fresh = {
                let state = self.state.lock().unwrap();
                state
                    .held
                    .as_ref()
                    .is_some_and(|held| Instant::now() < held.cutoff)
            };
            if fresh {
                continue;
            }
            // A new token can be had only once the current one expired.
            if let Some(expires) = expired {
                sleep_until(expires).await;
            }
            let token = self.login.fetch().await?;
            self.adopt(token);
        }
    }

    fn invalidate(&self, rejected: &Token) {
        let mut state = self.state.lock().unwrap();
        let current = state.held.as_ref().is_some_and(|held| {
            held.token.expose_secret() == rejected.expose_secret()
                && held.token.expires_at() == rejected.expires_at()
        });
        if current {
            state.held = None;
        }
    }
}

impl<S, L> Service<Request<()>> for Ideal<S, L>
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    L: TokenSource,
{
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<()>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move {
            let token = shared.token().await?;
            req.headers_mut()
                .insert(AUTHORIZATION, token.header_value().clone());
            let response = inner.oneshot(req).await.map_err(Into::into)?;
            if response.status() == StatusCode::UNAUTHORIZED {
                shared.invalidate(&token);
            }
            Ok(response)
        })
    }
}
