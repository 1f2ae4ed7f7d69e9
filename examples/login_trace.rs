//! The login over your own Tower HTTP client: hyper-util's `Client` wrapped by tower-http's
//! `TraceLayer` logs in for an `AuthTokenSource`, against the embedded reference server, and
//! the traced login is printed next to the crate's own login event.
//!
//! ```text
//! cargo run --example login_trace --features test-util
//! ```
//!
//! It uses only what a build without the `reqwest` feature has (`builder_with_service`), so a
//! hyper-only application writes exactly this.
//!
//! Any layer fits where `TraceLayer` is: a retry policy, a rate limit, a proxy connector. The
//! trace shows the method, the URI and the headers (none of which carries the password, which
//! travels in the body only); never put a layer that logs request bodies there.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // tower-http's trace events are at DEBUG, and so is the crate's "login succeeded".
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("tower_http=debug,tower_authtoken=debug")),
        )
        .init();

    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await;

    // The login client: hyper-util's, traced. No idle connection kept: a login happens once per
    // token life, and the renewal may run on another runtime than the one that opened it.
    let login_client = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .service(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http::<Full<Bytes>>(),
        );
    let source = AuthTokenSource::builder_with_service(
        &server.base_url(),
        server.credentials(),
        login_client,
    )
    .timeout(Duration::from_secs(5))
    .build()?;
    let cache = TokenCache::new(source);

    // The API client: the same kind of client, with the bearer layer.
    let api = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    for round in 1..=3 {
        let request = http::Request::get(server.protected_url()).body(Empty::new())?;
        let response = api.clone().oneshot(request).await?;
        println!(
            "request {round}: {} (logins so far: {})",
            response.status(),
            server.logins()
        );
        assert!(response.status().is_success());
        // 2 s tokens: the cache renews them in the background, each renewal traced too.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    Ok(())
}
