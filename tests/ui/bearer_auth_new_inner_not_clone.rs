// `BearerAuth::new` over a service that is not `Clone` (a `BoxService`), then `call`: the error
// names `Clone` at `new`.
use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tower::util::BoxService;
use tower::{Service, service_fn};
use tower_authtoken::{BearerAuth, Error, Token, TokenCache, TokenSource};

struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new("opaque", Duration::from_secs(3600))
    }
}

fn main() {
    let inner = BoxService::new(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let mut client = BearerAuth::new(inner, TokenCache::new(Fixed));
    let _ = client.call(Request::new(()));
}
