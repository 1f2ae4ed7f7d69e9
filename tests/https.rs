//! The https path end to end: the reference server over TLS with a self-signed certificate made
//! by rcgen, the login over TLS with reqwest, and API calls over TLS with hyper-util's client on
//! hyper-rustls, authorized by `BearerAuth`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, Error, ErrorKind, TokenCache};

/// A host name that is not loopback, which the clients below resolve to the server's address.
const API_HOST: &str = "api.test";

/// A self-signed certificate for `127.0.0.1` and [`API_HOST`], named `common_name`, with its key.
fn self_signed(common_name: &str) -> SelfSigned {
    let mut params = rcgen::CertificateParams::new(["127.0.0.1".to_owned(), API_HOST.to_owned()])
        .expect("valid names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("a certificate");
    SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// A certificate and its key.
struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

async fn https_server(cert: &SelfSigned) -> ReferenceServer {
    ReferenceServer::builder()
        .tls(&cert.cert_pem, &cert.key_pem)
        .start()
        .await
}

/// `https://api.test:PORT`: the server under a name that is not loopback.
fn api_host_url(server: &ReferenceServer) -> String {
    format!("https://{API_HOST}:{}", server.addr().port())
}

/// The login client: reqwest trusting `trusted` only, resolving [`API_HOST`] to the server.
fn login_client(trusted: &SelfSigned, server: &ReferenceServer) -> reqwest::Client {
    let root = reqwest::Certificate::from_der(&trusted.cert_der).expect("a DER certificate");
    reqwest::Client::builder()
        .tls_certs_only([root])
        .resolve(API_HOST, server.addr())
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

/// Resolves every name to the server's address, as a DNS entry for [`API_HOST`] would.
#[derive(Clone, Copy)]
struct ToServer(SocketAddr);

impl Service<Name> for ToServer {
    type Response = std::iter::Once<SocketAddr>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// The API client: hyper-util's client over hyper-rustls (https only), trusting `trusted` only,
/// resolving every name to `addr`.
fn api_client(
    trusted: &SelfSigned,
    addr: SocketAddr,
) -> Client<HttpsConnector<HttpConnector<ToServer>>, Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.cert_der.clone()).expect("a valid root");
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(ToServer(addr));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// A cache logging in at `base_url` with a reqwest client that trusts `trusted` only.
fn login_cache(base_url: &str, server: &ReferenceServer, trusted: &SelfSigned) -> TokenCache {
    let source = AuthTokenSource::builder(base_url, server.credentials())
        .client(login_client(trusted, server))
        .build()
        .expect("an https base URL");
    TokenCache::new(source)
}

/// What rustls says of a certificate signed by no root the client trusts.
fn unknown_issuer() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
}

fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).expect("a request")
}

/// Every error in `error`'s chain, the errors an `io::Error` wraps included.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut errors = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        errors.push(error);
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => error.source(),
        };
    }
    errors
}

/// The rustls error in `error`'s chain, if there is one.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    chain(error)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
}

#[tokio::test]
async fn login_and_api_call_both_go_over_tls_with_the_bearer_header() {
    let cert = self_signed("reference server");
    let server = https_server(&cert).await;
    assert!(server.base_url().starts_with("https://127.0.0.1:"));
    let cache = login_cache(&server.base_url(), &server, &cert);
    let transport = api_client(&cert, server.addr());

    // The server over TLS refuses a request without a token, so a 200 below is the token's.
    let bare = transport
        .clone()
        .oneshot(get(&server.protected_url()))
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(transport);
    for _ in 0..2 {
        let response = client
            .clone()
            .oneshot(get(&server.protected_url()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats = server.stats();
    assert_eq!(
        (stats.logins, stats.accepted, stats.rejections),
        (1, 2, 1),
        "{stats:?}"
    );
    assert!(server.last_login_headers().is_some());
}

#[tokio::test]
async fn hyper_rustls_client_rejects_an_untrusted_certificate() {
    let cert = self_signed("reference server");
    let server = https_server(&cert).await;
    let cache = login_cache(&server.base_url(), &server, &cert);
    let stranger = self_signed("another server");
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(api_client(&stranger, server.addr()));

    let error: BoxError = client
        .oneshot(get(&server.protected_url()))
        .await
        .expect_err("a certificate the client does not trust");
    assert_eq!(rustls_error(&*error), Some(&unknown_issuer()), "{error:?}");
    let rendered: Vec<String> = chain(&*error).iter().map(|e| e.to_string()).collect();
    assert!(
        rendered
            .iter()
            .any(|m| m.contains("invalid peer certificate")),
        "{rendered:?}"
    );
    // The login went through (its client trusts the certificate); the API request never
    // reached the handler.
    let stats = server.stats();
    assert_eq!((stats.logins, stats.accepted, stats.rejections), (1, 0, 0));
}

#[tokio::test]
async fn login_client_that_does_not_trust_the_certificate_fails_with_a_transport_error() {
    let cert = self_signed("reference server");
    let server = https_server(&cert).await;
    let stranger = self_signed("another server");
    let cache = login_cache(&server.base_url(), &server, &stranger);

    let error: Error = cache.token().await.expect_err("an untrusted certificate");
    assert_eq!(error.kind(), ErrorKind::Transport, "{error}");
    assert_eq!(rustls_error(&error), Some(&unknown_issuer()), "{error:?}");
    assert_eq!(server.stats().login_attempts, 0);
}

#[tokio::test]
async fn the_plain_http_guard_lets_https_to_a_non_loopback_host_through() {
    let cert = self_signed("reference server");
    let server = https_server(&cert).await;
    // No allow_insecure_http anywhere: the guard is on, for the login and for the API calls.
    let cache = login_cache(&api_host_url(&server), &server, &cert);
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(api_client(&cert, server.addr()));

    let url = format!("{}/protected", api_host_url(&server));
    let response = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // The same host over plain http is refused before anything is sent.
    let plain = url.replacen("https://", "http://", 1);
    let error = client.oneshot(get(&plain)).await.expect_err("plain http");
    let error = error.downcast::<Error>().expect("a tower_authtoken::Error");
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    let stats = server.stats();
    assert_eq!((stats.logins, stats.accepted), (1, 1));
}
