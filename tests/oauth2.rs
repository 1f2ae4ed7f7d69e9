//! `OAuth2ClientCredentials` against the reference server's OAuth2 token endpoint: the request
//! it sends, how every RFC 6749 §5.2 error maps, that the secret never shows, and recovery after
//! a login outage behind a `TokenCache` with its defaults. Also `AuthTokenSource::login_path`
//! end to end.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header;
use tokio::time::Instant;
use tower_authtoken::testing::{Failure, Outage, ReferenceServer, TokenPolicy};
use tower_authtoken::{
    AuthTokenSource, ClientAuth, Error, ErrorKind, KeyedTokenCache, OAuth2ClientCredentials,
    TokenCache, TokenSource,
};

const ID: &str = "alice";
const SECRET: &str = "wonderland";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn source_for(server: &ReferenceServer) -> OAuth2ClientCredentials {
    OAuth2ClientCredentials::new(&server.oauth2_token_url(), ID, SECRET).unwrap()
}

/// `Display` and `Debug` (plain and alternate) of an error, for leak checks.
fn all_text(error: &Error) -> String {
    format!("{error} {error:?} {error:#?}")
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// A token response of our own: the queued body, its token registered with the server.
fn token_body(server: &ReferenceServer, body: serde_json::Value) -> Failure {
    if let Some(token) = body["access_token"].as_str() {
        server.register_token(token, secs(3600));
    }
    Failure::Body {
        status: 200,
        content_type: "application/json".to_owned(),
        body: body.to_string(),
    }
}

fn jwt(claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

// ---------------------------------------------------------------------------------------------
// The request

#[tokio::test]
async fn basic_auth_sends_the_form_urlencoded_id_and_secret_base64_in_the_header() {
    let (id, secret) = ("my client:1", "s3cr:t +é&=%");
    let server = ReferenceServer::builder().user(id, secret).start().await;
    let source = OAuth2ClientCredentials::new(&server.oauth2_token_url(), id, secret).unwrap();
    assert_eq!(source.client_auth(), ClientAuth::Basic);
    let token = source.fetch().await.unwrap();
    assert!(server.accepts(token.expose_secret()));
    assert_eq!(server.logins_of(id), 1);

    let headers = server.last_login_headers().unwrap();
    let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
    let encoded = authorization.strip_prefix("Basic ").unwrap();
    assert_eq!(
        STANDARD.decode(encoded).unwrap(),
        b"my+client%3A1:s3cr%3At+%2B%C3%A9%26%3D%25",
        "RFC 6749 2.3.1: each of id and secret form-urlencoded, then base64"
    );
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(headers[header::ACCEPT], "application/json");
    assert!(
        headers[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("tower-authtoken/")
    );
    assert_eq!(
        server.last_oauth2_form().unwrap(),
        pairs(&[("grant_type", "client_credentials")]),
        "no credentials in the body with Basic"
    );
    assert_eq!(server.last_login_path().as_deref(), Some("/oauth2/token"));
}

#[tokio::test]
async fn request_body_auth_sends_id_and_secret_in_the_form_and_no_authorization_header() {
    let (id, secret) = ("my client:1", "s3cr:t +é&=%");
    let server = ReferenceServer::builder().user(id, secret).start().await;
    let source = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), id, secret)
        .client_auth(ClientAuth::RequestBody)
        .build()
        .unwrap();
    source.fetch().await.unwrap();
    assert!(
        server
            .last_login_headers()
            .unwrap()
            .get(header::AUTHORIZATION)
            .is_none()
    );
    assert_eq!(
        server.last_oauth2_form().unwrap(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
    );
}

#[tokio::test]
async fn scopes_and_extra_params_are_sent_in_order() {
    let server = ReferenceServer::builder()
        .oauth2_scopes(["cars:read", "cars:write"])
        .start()
        .await;
    let source = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), ID, SECRET)
        .scope("cars:read")
        .scopes(["cars:write"])
        .audience("https://api.example.com/")
        .resource("urn:a")
        .resource("urn:b")
        .param("tenant", "t 1")
        .build()
        .unwrap();
    let token = source.fetch().await.unwrap();
    assert_eq!(token.lifetime(), secs(3600));
    assert_eq!(
        server.last_oauth2_form().unwrap(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "cars:read cars:write"),
            ("audience", "https://api.example.com/"),
            ("resource", "urn:a"),
            ("resource", "urn:b"),
            ("tenant", "t 1"),
        ])
    );
}

#[tokio::test]
async fn a_token_url_with_a_query_keeps_it() {
    let server = ReferenceServer::start().await;
    let url = format!("{}?tenant=a", server.oauth2_token_url());
    let source = OAuth2ClientCredentials::new(&url, ID, SECRET).unwrap();
    assert_eq!(source.url(), url);
    source.fetch().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The response (RFC 6749 5.1)

#[tokio::test]
async fn token_type_is_bearer_in_any_case_and_expires_in_a_number_or_a_string() {
    let server = ReferenceServer::start().await;
    let source = source_for(&server);
    for (token_type, expires_in, lifetime) in [
        ("Bearer", serde_json::json!(120), secs(120)),
        ("bearer", serde_json::json!("90"), secs(90)),
        ("BEARER", serde_json::json!(" 60 "), secs(60)),
        ("bEaReR", serde_json::json!(1.5), ms(1500)),
    ] {
        server.push_failure(token_body(
            &server,
            serde_json::json!({"access_token": "tok-1", "token_type": token_type, "expires_in": expires_in}),
        ));
        let token = source.fetch().await.unwrap();
        assert_eq!(token.expose_secret(), "tok-1");
        assert_eq!(token.lifetime(), lifetime, "{token_type} {expires_in}");
    }
}

#[tokio::test]
async fn a_missing_expires_in_gives_the_default_lifetime_or_the_one_set() {
    let server = ReferenceServer::start().await;
    let body = serde_json::json!({"access_token": "tok-1", "token_type": "Bearer"});
    server.push_failure(token_body(&server, body.clone()));
    assert_eq!(
        source_for(&server).fetch().await.unwrap().lifetime(),
        secs(300)
    );
    server.push_failure(token_body(&server, body));
    let documented = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), ID, SECRET)
        .default_lifetime(secs(90))
        .build()
        .unwrap();
    assert_eq!(documented.fetch().await.unwrap().lifetime(), secs(90));
}

#[tokio::test]
async fn a_missing_token_type_is_taken_as_bearer() {
    let server = ReferenceServer::start().await;
    server.push_failure(token_body(
        &server,
        serde_json::json!({"access_token": "tok-1", "expires_in": 60}),
    ));
    let token = source_for(&server).fetch().await.unwrap();
    assert_eq!(token.token_type(), None);
    assert_eq!(token.header_value(), "Bearer tok-1");
}

#[tokio::test]
async fn a_jwt_access_tokens_exp_counts_as_a_reading() {
    let server = ReferenceServer::start().await;
    let token = jwt(serde_json::json!({"sub": ID, "iat": 1_700_000_000, "exp": 1_700_000_045}));
    server.push_failure(token_body(
        &server,
        serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
    ));
    assert_eq!(
        source_for(&server).fetch().await.unwrap().lifetime(),
        secs(45),
        "the shortest reading wins"
    );
    // And the reference server's own JWTs.
    let server = ReferenceServer::builder()
        .jwt_tokens(true)
        .token_lifetime(secs(600))
        .start()
        .await;
    let token = source_for(&server).fetch().await.unwrap();
    assert_eq!(token.expose_secret().split('.').count(), 3);
    assert_eq!(token.lifetime(), secs(600));
}

#[tokio::test]
async fn a_token_type_other_than_bearer_is_a_config_error() {
    let server = ReferenceServer::start().await;
    server.push_failure(token_body(
        &server,
        serde_json::json!({"access_token": "tok-1", "token_type": "DPoP", "expires_in": 60}),
    ));
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.is_transient());
    assert!(
        err.detail().unwrap().contains("'DPoP', not Bearer"),
        "{err}"
    );
    assert!(!all_text(&err).contains("tok-1"));
}

#[tokio::test]
async fn a_response_without_an_access_token_is_an_invalid_response() {
    let server = ReferenceServer::start().await;
    server.push_failure(token_body(
        &server,
        serde_json::json!({"token_type": "Bearer", "expires_in": 60}),
    ));
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidResponse);
    assert_eq!(err.user(), Some(ID));
}

// ---------------------------------------------------------------------------------------------
// Errors (RFC 6749 5.2)

#[tokio::test]
async fn a_wrong_secret_is_invalid_client_by_either_authentication_method() {
    let server = ReferenceServer::start().await;
    for auth in [ClientAuth::Basic, ClientAuth::RequestBody] {
        for (id, secret) in [(ID, "not-the-secret"), ("nobody", SECRET)] {
            let err = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), id, secret)
                .client_auth(auth)
                .build()
                .unwrap()
                .fetch()
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{auth:?} {id}");
            assert!(!err.is_transient());
            assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
            assert_eq!(
                err.detail(),
                Some("invalid_client: client authentication failed")
            );
            assert_eq!(err.user(), Some(id));
            assert!(!all_text(&err).contains("not-the-secret"));
        }
    }
    let headers = server.last_login_headers().unwrap();
    assert!(headers.get(header::AUTHORIZATION).is_none());
}

#[tokio::test]
async fn an_expired_client_is_invalid_client_and_a_forbidden_one_unauthorized_client() {
    let server = ReferenceServer::start().await;
    server.set_account_expired(ID, true);
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed);
    assert!(err.detail().unwrap().starts_with("invalid_client"), "{err}");

    server.set_account_expired(ID, false);
    server.set_forbidden(ID, true);
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(
        err.detail(),
        Some("unauthorized_client: the client may not use this grant type")
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_scope_the_server_does_not_grant_is_a_config_error_naming_it() {
    let server = ReferenceServer::builder()
        .oauth2_scopes(["cars:read"])
        .start()
        .await;
    let source = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), ID, SECRET)
        .scopes(["cars:read", "admin"])
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.is_transient());
    assert_eq!(
        err.detail(),
        Some(
            "the token endpoint answered invalid_scope: check the scopes; the server said: \
             scope 'admin' is not allowed"
        )
    );
    server.set_oauth2_scopes(None);
    source.fetch().await.unwrap();
}

#[tokio::test]
async fn every_rfc6749_error_code_maps_to_its_kind() {
    let server = ReferenceServer::start().await;
    let source = source_for(&server);
    let cases: &[(u16, &str, ErrorKind, &str)] = &[
        (
            401,
            "invalid_client",
            ErrorKind::AuthenticationFailed,
            "invalid_client: why",
        ),
        (
            400,
            "unauthorized_client",
            ErrorKind::AuthenticationFailed,
            "unauthorized_client: why",
        ),
        (
            400,
            "invalid_scope",
            ErrorKind::Config,
            "the token endpoint answered invalid_scope: check the scopes; the server said: why",
        ),
        (
            400,
            "invalid_request",
            ErrorKind::Config,
            "the token endpoint answered invalid_request: check the extra parameters and the \
             client authentication method; the server said: why",
        ),
        (
            400,
            "unsupported_grant_type",
            ErrorKind::Config,
            "the token endpoint answered unsupported_grant_type: the endpoint does not offer \
             the client credentials grant; the server said: why",
        ),
        (
            400,
            "invalid_grant",
            ErrorKind::InvalidGrant,
            "invalid_grant: why",
        ),
        (
            400,
            "temporarily_unavailable",
            ErrorKind::Server,
            "temporarily_unavailable: why",
        ),
        (
            503,
            "temporarily_unavailable",
            ErrorKind::Server,
            "temporarily_unavailable: why",
        ),
        (500, "server_error", ErrorKind::Server, "server_error: why"),
        (
            502,
            "invalid_client",
            ErrorKind::Server,
            "invalid_client: why",
        ),
        (400, "x_unknown", ErrorKind::InvalidGrant, "x_unknown: why"),
        (
            401,
            "x_unknown",
            ErrorKind::AuthenticationFailed,
            "x_unknown: why",
        ),
        (403, "x_unknown", ErrorKind::Forbidden, "x_unknown: why"),
        (418, "x_unknown", ErrorKind::Server, "x_unknown: why"),
    ];
    for &(status, code, kind, detail) in cases {
        server.push_failure(Failure::OAuth2Error {
            status,
            error: code.to_owned(),
            description: Some("why".to_owned()),
        });
        let err = source.fetch().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{status} {code}");
        assert_eq!(
            err.is_transient(),
            kind == ErrorKind::Server,
            "{status} {code}"
        );
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.detail(), Some(detail), "{status} {code}");
        assert_eq!(err.user(), Some(ID));
    }
    // Without a description, the code alone.
    server.push_failure(Failure::OAuth2Error {
        status: 400,
        error: "invalid_grant".to_owned(),
        description: None,
    });
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.detail(), Some("invalid_grant"));
}

#[tokio::test]
async fn rate_limiting_keeps_the_retry_after() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::RateLimited {
        retry_after: "30".to_owned(),
    });
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_after(), Some(secs(30)));
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_5xx_without_an_oauth2_body_is_a_transient_server_error() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Body {
        status: 503,
        content_type: "text/html".to_owned(),
        body: "<html><h1>Service Unavailable</h1></html>".to_owned(),
    });
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert!(err.is_transient());
    assert_eq!(err.detail(), None, "an HTML page says nothing useful");
}

#[tokio::test]
async fn a_404_and_a_redirect_are_config_errors_naming_the_token_url() {
    let server = ReferenceServer::start().await;
    let source = source_for(&server);
    server.push_failure(Failure::Body {
        status: 404,
        content_type: "text/plain".to_owned(),
        body: "Not Found".to_owned(),
    });
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        err.detail().unwrap(),
        format!(
            "POST {} answered 404 Not Found, so the URL is wrong: check the token URL; the \
             server said: Not Found",
            server.oauth2_token_url()
        )
    );
    server.push_failure(Failure::Body {
        status: 307,
        content_type: "text/plain".to_owned(),
        body: String::new(),
    });
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.detail().unwrap().ends_with(
            "answered 307 Temporary Redirect without a Location: check the token URL; \
             redirects of a login are not followed, so that the client secret never goes \
             elsewhere"
        ),
        "{err}"
    );
    assert_eq!(server.login_attempts(), 2, "the redirect was not followed");
}

#[tokio::test]
async fn a_body_over_64_kib_is_an_invalid_response() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Body {
        status: 200,
        content_type: "application/json".to_owned(),
        body: format!(r#"{{"access_token":"{}"}}"#, "a".repeat(70 * 1024)),
    });
    let err = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidResponse);
    assert_eq!(err.detail(), Some("body larger than 64 KiB"));
}

#[tokio::test(start_paused = true)]
async fn a_token_endpoint_slower_than_the_timeout_is_a_timeout() {
    let server = ReferenceServer::builder()
        .login_delay(secs(10))
        .start()
        .await;
    let source = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), ID, SECRET)
        .timeout(secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(started.elapsed(), secs(2));
}

#[tokio::test]
async fn plain_http_is_refused_for_a_remote_token_url_and_allowed_for_loopback() {
    let err = OAuth2ClientCredentials::new("http://auth.example.com/oauth2/token", ID, SECRET)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InsecureTransport);
    let server = ReferenceServer::start().await;
    assert!(server.oauth2_token_url().starts_with("http://127.0.0.1:"));
    source_for(&server).fetch().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn the_secret_never_appears_in_debug_display_or_errors() {
    const LEAKY: &str = "s3cr3t-Va1ue-xyz";
    let server = ReferenceServer::builder().user(ID, LEAKY).start().await;
    for auth in [ClientAuth::Basic, ClientAuth::RequestBody] {
        let builder = OAuth2ClientCredentials::builder(&server.oauth2_token_url(), ID, LEAKY)
            .client_auth(auth)
            .audience("aud");
        let debug = format!("{builder:?} {builder:#?}");
        assert!(!debug.contains(LEAKY), "{debug}");
        let source = builder.build().unwrap();
        let debug = format!("{source:?} {source:#?}");
        assert!(!debug.contains(LEAKY), "{debug}");
        assert!(
            debug.contains(ID) && debug.contains("oauth2/token"),
            "{debug}"
        );
        assert!(
            debug.contains("audience") && !debug.contains("\"aud\""),
            "{debug}"
        );

        // A server that echoes the secret, in the description, the code or a plain message.
        for failure in [
            Failure::OAuth2Error {
                status: 401,
                error: "invalid_client".to_owned(),
                description: Some(format!("secret {LEAKY} is wrong")),
            },
            Failure::OAuth2Error {
                status: 400,
                error: LEAKY.to_owned(),
                description: None,
            },
            Failure::Body {
                status: 500,
                content_type: "text/plain".to_owned(),
                body: format!("boom: {LEAKY}"),
            },
        ] {
            server.push_failure(failure);
            let err = source.fetch().await.unwrap_err();
            let text = all_text(&err);
            assert!(!text.contains(LEAKY), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        let token = source.fetch().await.unwrap();
        assert!(!format!("{token:?}").contains(LEAKY));
        assert!(!format!("{token:?}").contains(token.expose_secret()));
    }
    let headers = {
        let source = OAuth2ClientCredentials::new(&server.oauth2_token_url(), ID, LEAKY).unwrap();
        source.fetch().await.unwrap();
        server.last_login_headers().unwrap()
    };
    // The server got the secret (base64 of "alice:s3cr3t-Va1ue-xyz"), so it was sent, and only
    // in the header.
    assert_eq!(
        STANDARD
            .decode(
                headers[header::AUTHORIZATION]
                    .to_str()
                    .unwrap()
                    .trim_start_matches("Basic ")
            )
            .unwrap(),
        format!("{ID}:{LEAKY}").as_bytes()
    );
}

#[tokio::test]
async fn the_source_names_the_client_id_as_its_user() {
    let server = ReferenceServer::start().await;
    let source = source_for(&server);
    assert_eq!(TokenSource::user_name(&source), Some(ID));
    assert_eq!(source.client_id(), ID);
}

// ---------------------------------------------------------------------------------------------
// Behind the cache

/// A login outage of `kind` for 30 s, from 10 s in, with 4 s tokens and a `TokenCache` with
/// every default; callers ask for a token every 100 ms until 10 s after the recovery. Checks:
/// every token served is one the server accepts at that moment; at most one login attempt per
/// second during the outage (+2 for the first quick retries), at most 3 in any one second; callers
/// served again within 1.5 s of the recovery.
async fn recovers_after_an_outage_that_outlives_the_token(kind: Outage) {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(4))
        .start()
        .await;
    let cache = TokenCache::new(source_for(&server));
    let start = Instant::now();
    let (down, outage) = (start + secs(10), secs(30));
    let window = server.schedule_login_outage(kind, down, outage);
    let up = window.end;
    let mut served = Vec::new();
    while Instant::now() < up + secs(10) {
        if let Ok(token) = cache.token().await {
            assert!(
                server.accepts(token.expose_secret()),
                "{kind:?}: a token the server refuses was served at {:?}",
                Instant::now() - start
            );
            served.push(Instant::now());
        }
        tokio::time::sleep(ms(100)).await;
    }
    let attempts: Vec<Instant> = server
        .login_attempt_instants()
        .into_iter()
        .filter(|at| window.contains(at))
        .collect();
    let densest = attempts
        .iter()
        .map(|&from| {
            attempts
                .iter()
                .filter(|&&at| at >= from && at < from + secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let first_after = served
        .iter()
        .find(|&&at| at >= up)
        .map(|&at| at - up)
        .expect("callers are served after the recovery");
    println!(
        "{kind:?}: {} attempts in the 30 s outage, at most {densest} in 1 s; served again {:?} after the recovery",
        attempts.len(),
        first_after
    );
    assert!(
        served.iter().any(|&at| at < down)
            && !served.iter().any(|&at| at > down + secs(4) && at < up),
        "{kind:?}: served before the outage, and not once the token's life had run out"
    );
    assert!(
        attempts.len() <= 32,
        "{kind:?}: {} attempts in 30 s",
        attempts.len()
    );
    // A hung login is one attempt that lasts the whole outage.
    let least = if kind == Outage::Hang { 1 } else { 15 };
    assert!(
        attempts.len() >= least,
        "{kind:?}: kept trying: {}",
        attempts.len()
    );
    assert!(
        densest <= 3,
        "{kind:?}: {densest} attempts within one second"
    );
    assert!(
        first_after <= ms(1500),
        "{kind:?}: served again {first_after:?} after the recovery"
    );
}

#[tokio::test(start_paused = true)]
async fn outage_of_503s_longer_than_the_token_recovers_within_1_5s_at_one_attempt_a_second() {
    recovers_after_an_outage_that_outlives_the_token(Outage::Status(503)).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_hung_logins_longer_than_the_token_recovers_within_1_5s() {
    recovers_after_an_outage_that_outlives_the_token(Outage::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn outage_of_closed_connections_longer_than_the_token_recovers_within_1_5s() {
    recovers_after_an_outage_that_outlives_the_token(Outage::CloseConnection).await;
}

#[tokio::test(start_paused = true)]
async fn behind_the_cache_every_token_policy_serves_only_tokens_the_server_accepts() {
    for policy in [
        TokenPolicy::Fresh,
        TokenPolicy::OneLivePerUser,
        TokenPolicy::SessionBound,
        TokenPolicy::Sliding,
    ] {
        let server = ReferenceServer::builder()
            .token_policy(policy)
            .token_lifetime(secs(4))
            .start()
            .await;
        let cache = TokenCache::new(source_for(&server));
        let until = Instant::now() + secs(20);
        let (mut served, mut longest) = (0, Duration::ZERO);
        while Instant::now() < until {
            let asked = Instant::now();
            let token = cache.token().await.unwrap();
            longest = longest.max(asked.elapsed());
            assert!(
                server.accepts(token.expose_secret()),
                "{policy:?}: a refused token at {:?}",
                until - Instant::now()
            );
            served += 1;
            tokio::time::sleep(ms(250)).await;
        }
        println!(
            "{policy:?}: {served} served, longest wait {longest:?}, {} logins",
            server.logins()
        );
        // `expires_in` is whole seconds (RFC 6749), so a server that replaces a token only at
        // its expiry hides that expiry within a second: the cache waits for it (README, "Servers
        // that re-issue tokens"), up to 2 s at each of the five expiries of 4 s tokens.
        let (min_served, max_wait) = match policy {
            TokenPolicy::OneLivePerUser | TokenPolicy::SessionBound => (55, secs(2)),
            _ => (70, secs(1)),
        };
        assert!(served >= min_served, "{policy:?}: {served} served");
        assert!(
            longest <= max_wait,
            "{policy:?}: a caller waited {longest:?}"
        );
        assert!(
            server.logins() >= 5,
            "{policy:?}: renewed: {}",
            server.logins()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// AuthTokenSource's login path

#[tokio::test]
async fn auth_token_source_logs_in_at_the_login_path_it_was_given() {
    let server = ReferenceServer::start().await;
    let source =
        AuthTokenSource::builder(&format!("{}/api", server.base_url()), server.credentials())
            .login_path("/v2/authtoken")
            .build()
            .unwrap();
    assert_eq!(
        source.url(),
        format!("{}/api/v2/authtoken", server.base_url())
    );
    source.fetch().await.unwrap();
    assert_eq!(
        server.last_login_path().as_deref(),
        Some("/api/v2/authtoken")
    );

    let default = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    default.fetch().await.unwrap();
    assert_eq!(server.last_login_path().as_deref(), Some("/authtoken"));
}

// ---------------------------------------------------------------------------------------------
// Behind a keyed cache

/// One OAuth2 client per tenant behind one `KeyedTokenCache`: each tenant logs in once with its
/// own client id and gets its own token; a tenant whose secret is wrong gets `invalid_client`
/// as its own typed error, and revoking one tenant's token renews that tenant only.
#[tokio::test]
async fn a_keyed_cache_of_oauth2_clients_logs_each_tenant_in_once_with_its_own_client_id() {
    let server = ReferenceServer::start().await;
    for tenant in 1..=2 {
        server.add_user(&format!("client-{tenant}"), &format!("secret-{tenant}"));
    }
    let token_url = server.oauth2_token_url();
    let tenants = KeyedTokenCache::builder(move |tenant: &u32| {
        let secret = if *tenant == 3 {
            "wrong".to_owned()
        } else {
            format!("secret-{tenant}")
        };
        OAuth2ClientCredentials::new(&token_url, format!("client-{tenant}"), secret)
    })
    .build()
    .unwrap();

    let (one, two) = (
        tenants.token(&1).await.unwrap(),
        tenants.token(&2).await.unwrap(),
    );
    assert_ne!(one.expose_secret(), two.expose_secret());
    assert!(server.accepts(one.expose_secret()) && server.accepts(two.expose_secret()));
    assert_eq!(
        tenants.token(&1).await.unwrap().expose_secret(),
        one.expose_secret()
    );
    assert_eq!(
        (server.logins_of("client-1"), server.logins_of("client-2")),
        (1, 1)
    );

    let error = tenants.token(&3).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");
    assert_eq!(error.user(), Some("client-3"));
    assert!(!all_text(&error).contains("tenant-3-leaky"));

    assert_eq!(server.revoke_user("client-1"), 1);
    tenants.cache(&1).unwrap().invalidate(&one);
    let renewed = tenants.token(&1).await.unwrap();
    assert_ne!(renewed.expose_secret(), one.expose_secret());
    assert!(server.accepts(renewed.expose_secret()));
    assert_eq!(
        tenants.token(&2).await.unwrap().expose_secret(),
        two.expose_secret()
    );
    assert_eq!(
        (server.logins_of("client-1"), server.logins_of("client-2")),
        (2, 1)
    );
}
