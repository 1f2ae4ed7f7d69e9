//! `BearerAuthMiddleware` in a `reqwest-middleware` chain with tracing and retries, against the
//! embedded reference server: a few calls with `.send()`, one after the server revoked the
//! token (replayed once with a new one), and a plain-HTTP URL refused before sending.
//!
//! ```text
//! cargo run --example reqwest_middleware --features test-util,reqwest-middleware
//! ```

use reqwest_middleware::ClientBuilder;
use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
use reqwest_tracing::TracingMiddleware;
use tower_authtoken::reqwest_middleware::BearerAuthMiddleware;
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, TokenCache};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let server = ReferenceServer::start().await;
    let cache = TokenCache::new(AuthTokenSource::new(
        &server.base_url(),
        server.credentials(),
    )?);

    // Outermost first: one span per call, retries inside it, the token set on each attempt.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(3),
        ))
        .with(BearerAuthMiddleware::new(cache.clone()).retry_on_unauthorized())
        .build();

    for call in 1..=2 {
        let response = client.get(server.protected_url()).send().await?;
        println!("call {call}: {}", response.status());
    }

    server.revoke_all();
    let response = client.get(server.protected_url()).send().await?;
    println!(
        "after a revocation: {} (replayed with a new token; {} logins in all)",
        response.status(),
        server.logins()
    );

    // The retry middleware wraps the errors of the middlewares after it in a `RetryError`.
    if let Err(error) = client.get("http://api.example.com/cars").send().await {
        println!("plain http: {:?}", token_error(&error).map(|e| e.kind()));
    }
    println!("{:?}", cache.stats());
    Ok(())
}

/// The `tower_authtoken::Error` in an error of the chain, if it is one.
fn token_error(error: &reqwest_middleware::Error) -> Option<&tower_authtoken::Error> {
    let reqwest_middleware::Error::Middleware(error) = error else {
        return None;
    };
    if let Some(error) = error.downcast_ref::<tower_authtoken::Error>() {
        return Some(error);
    }
    match error.downcast_ref::<RetryError>()? {
        RetryError::Error(inner) | RetryError::WithRetries { err: inner, .. } => token_error(inner),
    }
}
