//! An OAuth 2.0 client credentials source behind `BearerAuthLayer`, against the embedded
//! reference server's token endpoint: a few requests, one across a renewal, one after the
//! server rejected a token, and what a wrong secret looks like.
//!
//! ```text
//! cargo run --example oauth2 --features test-util,oauth2
//! ```
//!
//! Against a real provider, replace the server with its token URL, client id and secret (from
//! the environment, never from the source code), and the scopes and audience it documents.

use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{
    BearerAuthLayer, ClientAuth, OAuth2ClientCredentials, TokenCache, TokenSource,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let server = ReferenceServer::builder()
        .user("inventory-service", "client-secret-from-your-vault")
        .oauth2_scopes(["cars:read", "cars:write"])
        .token_lifetime(Duration::from_secs(3))
        .start()
        .await;
    println!("token endpoint: {}", server.oauth2_token_url());

    let source = OAuth2ClientCredentials::builder(
        &server.oauth2_token_url(),
        "inventory-service",
        "client-secret-from-your-vault",
    )
    .scope("cars:read")
    .audience("https://api.example.com")
    .client_auth(ClientAuth::Basic)
    .build()?;
    // Debug shows the URL, the client id, the scopes and the parameter names; never the secret.
    println!("source: {source:?}");

    let cache = TokenCache::new(source);
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(reqwest::Client::new());

    for round in 1..=4 {
        let request = reqwest::Request::new(http::Method::GET, server.protected_url().parse()?);
        let response = client.clone().oneshot(request).await?;
        println!(
            "request {round}: {} (logins so far: {})",
            response.status(),
            server.logins()
        );
        assert!(response.status().is_success());
        // 3 s tokens: the cache renews them in the background every second or two.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // The API rejects the next request once: the layer drops that token and the next request
    // carries a new one.
    server.reject_next_requests(1);
    for _ in 0..2 {
        let request = reqwest::Request::new(http::Method::GET, server.protected_url().parse()?);
        let response = client.clone().oneshot(request).await?;
        println!("after a rejection: {}", response.status());
    }

    // A wrong secret: a permanent, typed error with the server's description, secret-free.
    let wrong = OAuth2ClientCredentials::new(
        &server.oauth2_token_url(),
        "inventory-service",
        "not-the-secret",
    )?;
    let error = wrong.fetch().await.unwrap_err();
    println!(
        "wrong secret: {:?} (transient: {}): {error}",
        error.kind(),
        error.is_transient()
    );
    println!(
        "logins: {}, login attempts: {}",
        server.logins(),
        server.login_attempts()
    );
    Ok(())
}
