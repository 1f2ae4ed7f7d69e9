//! hyper-util's client over TLS (hyper-rustls) behind `BearerAuthLayer`, against the embedded
//! reference server serving HTTPS with a self-signed certificate made at start.
//!
//! ```text
//! cargo run --example https --features test-util-tls
//! ```
//!
//! The login goes through `AuthTokenSource`, whose client is a `reqwest::Client`: here one that
//! trusts the test certificate. Against a real API, drop the certificate: reqwest's default
//! client trusts the platform's roots, and hyper-rustls has `with_platform_verifier()` (or
//! `with_native_roots()`, `with_webpki_roots()`, each behind a hyper-rustls feature) in place of
//! `with_tls_config` below.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // A certificate for the address the server listens on, trusted by the two clients below.
    let certified = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()])?;
    let server = ReferenceServer::builder()
        .tls(certified.cert.pem(), certified.signing_key.serialize_pem())
        .start()
        .await;
    println!("server: {}", server.base_url());

    // The login client: reqwest, trusting the test certificate only. HTTP/1.1 and no redirects,
    // like the client AuthTokenSource builds when it is given none.
    let login_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(certified.cert.der())?])
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let source = AuthTokenSource::builder(&server.base_url(), server.credentials())
        .client(login_client)
        .build()?;
    let cache = TokenCache::new(source);

    // The API client: hyper-util's legacy client on hyper-rustls, https only.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone())?;
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let transport = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);

    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(transport);

    for round in 1..=3 {
        let request = Request::get(server.protected_url()).body(Empty::new())?;
        let response = client.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "request {round}: {status} {} (logins so far: {})",
            String::from_utf8_lossy(&body),
            server.logins()
        );
        assert!(status.is_success());
    }
    Ok(())
}
