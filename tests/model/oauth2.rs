//! The world's login spoken as an OAuth 2.0 token endpoint, for `tests/model_oauth2.rs`.
//!
//! [`TokenEndpoint`] is an in-memory `tower::Service<http::Request<Bytes>>`, the kind of client
//! `OAuth2ClientCredentials::builder_with_service` takes. It answers the client credentials
//! grant (RFC 6749 §4.4) from the world's own decisions, on the world's login latency:
//!
//! - **a token** ([`World::issue`], issued halfway through the latency, as `ModelLogin` does):
//!   `200` with the §5.1 JSON `access_token`, `token_type` and `expires_in`, a number of whole
//!   seconds (Appendix A.14: `1*DIGIT`) rounded down from what the world says is left, as a
//!   server that counts in seconds writes it; with `Cache-Control: no-store`;
//! - **an outage of 503s**: `503` after the latency, with the §5.2 body
//!   `{"error":"temporarily_unavailable"}`;
//! - **refused connections**: the service fails at once with `ConnectionRefused`;
//! - **a hung login**: the service answers nothing until the outage ends, then fails with
//!   `ConnectionReset` (the stalled connection reset), as `ModelLogin` does.
//!
//! No world refuses its client's credentials. The endpoint refuses, as a real one would, a
//! request that does not follow the grant: not a form `POST` (`400 invalid_request`), no or
//! another `grant_type` (`400 unsupported_grant_type`), another scope (`400 invalid_scope`),
//! another audience, a parameter twice or both client authentication methods at once
//! (`400 invalid_request`), and no, or wrong, client credentials (`401 invalid_client`, with
//! `WWW-Authenticate: Basic`). The source maps those to permanent errors, so a source that sent
//! a wrong request would fail every world's targets with caller errors.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::{Instant, sleep, sleep_until};
use tower::Service;
use tower_authtoken::{ClientAuth, OAuth2ClientCredentials};

use super::world::{OutageKind, World};

/// The token URL: `https`, so that no plain-HTTP switch is needed. Nothing connects to it.
pub const TOKEN_URL: &str = "https://auth.model.example/oauth2/token";
/// The client id: a space and a colon, which the Basic credentials must carry form-encoded
/// (RFC 6749 §2.3.1), so that the endpoint sees whether they were.
pub const CLIENT_ID: &str = "model client:1";
/// The client secret, with the characters form encoding changes. Never printed.
const CLIENT_SECRET: &str = "s3cr:t /é&=+%";
/// The one scope and the audience the endpoint grants.
pub const SCOPE: &str = "model:api";
pub const AUDIENCE: &str = "https://api.model.example";

/// `OAuth2ClientCredentials` for the world's token endpoint, authenticating with `auth`, with
/// the scope and the audience the endpoint grants and every other setting its default.
pub fn source(world: &Arc<World>, auth: ClientAuth) -> OAuth2ClientCredentials {
    OAuth2ClientCredentials::builder_with_service(
        TOKEN_URL,
        CLIENT_ID,
        CLIENT_SECRET,
        TokenEndpoint(Arc::clone(world)),
    )
    .client_auth(auth)
    .scope(SCOPE)
    .audience(AUDIENCE)
    .build()
    .expect("the source's settings are valid")
}

/// The world's login as an OAuth 2.0 token endpoint (see the module's docs).
#[derive(Debug, Clone)]
pub struct TokenEndpoint(pub Arc<World>);

type EndpointFuture = Pin<Box<dyn Future<Output = io::Result<Response<Full<Bytes>>>> + Send>>;

impl Service<Request<Bytes>> for TokenEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let world = Arc::clone(&self.0);
        Box::pin(async move {
            let latency = world.setup().login_latency;
            if let Some(outage) = world.outage(Instant::now()) {
                return match outage.kind {
                    OutageKind::Refused => Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "model: connection refused",
                    )),
                    OutageKind::Unavailable => {
                        sleep(latency).await;
                        Ok(refusal(Refusal(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            "the token endpoint is down",
                        )))
                    }
                    OutageKind::Hang => {
                        sleep_until(world.started() + outage.until).await;
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "model: the stalled connection was reset",
                        ))
                    }
                };
            }
            if let Err(refused) = check_grant(&req) {
                sleep(latency).await;
                return Ok(refusal(refused));
            }
            sleep(latency / 2).await;
            let issued = world.issue(Instant::now());
            sleep(latency - latency / 2).await;
            Ok(token_response(&issued))
        })
    }
}

/// The §5.1 answer for the token the world issued: its `/authtoken` body (`token`, `type`,
/// `expiresIn` in seconds) rewritten as `access_token`, `token_type` and `expires_in` in whole
/// seconds, rounded down.
fn token_response(issued: &[u8]) -> Response<Full<Bytes>> {
    let issued: serde_json::Value = serde_json::from_slice(issued).expect("the world writes JSON");
    let expires_in = issued["expiresIn"]
        .as_f64()
        .expect("a world without a server clock writes expiresIn");
    let body = serde_json::json!({
        "access_token": issued["token"],
        "token_type": issued["type"],
        "expires_in": expires_in.floor() as u64,
        "scope": SCOPE,
    });
    let mut response = json_response(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A §5.2 error: the status, the `error` code and a description that never holds the secret.
struct Refusal(StatusCode, &'static str, &'static str);

/// The §5.2 answer of a refusal.
fn refusal(Refusal(status, code, description): Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "error_description": description });
    let mut response = json_response(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"model\""),
        );
    }
    response
}

/// A JSON answer with `status`.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// Checks that `req` asks for the client credentials grant as RFC 6749 §4.4 and §2.3.1 say,
/// for this endpoint's client, scope and audience; the §5.2 error if it does not.
fn check_grant(req: &Request<Bytes>) -> Result<(), Refusal> {
    let bad = |code, description| Refusal(StatusCode::BAD_REQUEST, code, description);
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value == "application/x-www-form-urlencoded");
    if req.method() != Method::POST || !form {
        return Err(bad("invalid_request", "a form POST is expected"));
    }
    let mut params = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(req.body()) {
        if params
            .insert(name.into_owned(), value.into_owned())
            .is_some()
        {
            return Err(bad("invalid_request", "a parameter is repeated"));
        }
    }
    if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Err(bad(
            "unsupported_grant_type",
            "only client_credentials is offered",
        ));
    }
    let in_body = match (params.get("client_id"), params.get("client_secret")) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        (None, None) => None,
        _ => return Err(bad("invalid_request", "half of the client credentials")),
    };
    let in_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(basic_credentials);
    let client = match (in_header, in_body) {
        (Some(_), Some(_)) => {
            return Err(bad("invalid_request", "two client authentication methods"));
        }
        (Some(credentials), None) => credentials,
        (None, Some(credentials)) => Some(credentials),
        (None, None) => None,
    };
    let known = client.is_some_and(|(id, secret)| id == CLIENT_ID && secret == CLIENT_SECRET);
    if !known {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        ));
    }
    if params.get("scope").map(String::as_str) != Some(SCOPE) {
        return Err(bad("invalid_scope", "the scope is not granted"));
    }
    if params.get("audience").map(String::as_str) != Some(AUDIENCE) {
        return Err(bad("invalid_request", "unknown audience"));
    }
    Ok(())
}

/// The client id and secret of an `Authorization: Basic` header, each form-decoded after the
/// base64 (RFC 6749 §2.3.1); `None` if it is not that.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let pair = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = pair.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Decodes one form-encoded string: an encoded `&` or `=` is `%26` or `%3D`, so the string
/// parses as a single name.
fn form_decode(encoded: &str) -> String {
    url::form_urlencoded::parse(encoded.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}
