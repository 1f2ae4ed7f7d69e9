// `ServiceBuilder` with `BearerAuthLayer` over a service that is not `Clone`: the error names
// `Clone` where the service is wrapped.
use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_authtoken::{BearerAuthLayer, Error, Token, TokenCache, TokenSource};

struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new("opaque", Duration::from_secs(3600))
    }
}

/// A connection of one's own: not `Clone`.
struct Connection;

impl Service<Request<()>> for Connection {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

async fn send(cache: TokenCache) {
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(Connection);
    let _ = client.oneshot(Request::new(())).await;
}

fn main() {
    let _ = send(TokenCache::new(Fixed));
}
