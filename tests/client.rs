//! `AuthTokenSource` against the reference server (and, where the reference server cannot
//! misbehave in the right way, against a few bytes written straight to a socket).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::header;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_authtoken::testing::{Failure, ReferenceServer, TimestampFormat};
use tower_authtoken::token::MAX_LIFETIME;
use tower_authtoken::{AuthTokenSource, Credentials, Error, ErrorKind, TokenSource};

fn source_for(server: &ReferenceServer) -> AuthTokenSource {
    AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap()
}

async fn login_error(server: &ReferenceServer, credentials: Credentials) -> Error {
    AuthTokenSource::new(&server.base_url(), credentials)
        .unwrap()
        .fetch()
        .await
        .unwrap_err()
}

/// `Display` and `Debug` (plain and alternate) of an error, for leak checks.
fn all_text(error: &Error) -> String {
    format!("{error} {error:?} {error:#?}")
}

// ---------------------------------------------------------------------------------------------
// Success

#[tokio::test]
async fn successful_login_returns_a_token_with_the_servers_lifetime() {
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(900))
        .start()
        .await;
    let token = source_for(&server).fetch().await.unwrap();
    assert_eq!(token.lifetime(), Duration::from_secs(900));
    assert_eq!(token.token_type(), Some("Bearer"));
    assert_eq!(server.issued_tokens(), [token.expose_secret()]);
    assert_eq!(server.logins(), 1);
    let (issued, expires) = (token.issued().unwrap(), token.expires().unwrap());
    assert_eq!(
        expires.duration_since(issued).unwrap(),
        Duration::from_secs(900)
    );
}

#[tokio::test]
async fn successful_login_works_with_every_timestamp_format_and_numeric_fields() {
    for format in [
        TimestampFormat::Rfc3339,
        TimestampFormat::Rfc3339Millis,
        TimestampFormat::Iso8601NoOffset,
        TimestampFormat::HttpDate,
        TimestampFormat::EpochSeconds,
        TimestampFormat::EpochMillis,
    ] {
        for numeric in [false, true] {
            let server = ReferenceServer::builder()
                .timestamp_format(format)
                .numeric_fields(numeric)
                .jwt_tokens(numeric)
                .start()
                .await;
            let token = source_for(&server)
                .fetch()
                .await
                .unwrap_or_else(|e| panic!("{format:?} numeric={numeric}: {e}"));
            assert_eq!(token.lifetime(), Duration::from_secs(3600), "{format:?}");
        }
    }
}

#[tokio::test]
async fn successful_login_keeps_a_sub_second_lifetime() {
    for format in [TimestampFormat::Rfc3339, TimestampFormat::EpochMillis] {
        let server = ReferenceServer::builder()
            .token_lifetime(Duration::from_millis(1500))
            .timestamp_format(format)
            .jwt_tokens(true)
            .start()
            .await;
        let token = source_for(&server).fetch().await.unwrap();
        assert_eq!(token.lifetime(), Duration::from_millis(1500), "{format:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn successful_login_works_on_the_paused_clock_and_is_anchored_at_arrival() {
    let server = ReferenceServer::builder()
        .login_delay(Duration::from_secs(5))
        .start()
        .await;
    let before = tokio::time::Instant::now();
    let token = source_for(&server).fetch().await.unwrap();
    // The login delay passed on the paused clock before the answer arrived.
    assert!(token.received_at() >= before + Duration::from_secs(5));
    assert_eq!(
        token.expires_at(),
        token.received_at() + Duration::from_secs(3600)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_on_the_multi_thread_runtime_all_succeed() {
    let server = ReferenceServer::start().await;
    let source = std::sync::Arc::new(source_for(&server));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.fetch().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.logins(), 16);
    assert_eq!(server.issued_tokens().len(), 16);
}

// ---------------------------------------------------------------------------------------------
// Every seed status maps to its kind

#[tokio::test]
async fn status_400_maps_to_invalid_grant() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Status(400));
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidGrant);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(error.user(), Some("alice"));
    assert_eq!(error.detail(), Some("Invalid grant type"));
    assert!(!error.is_transient());
}

#[tokio::test]
async fn wrong_password_maps_to_authentication_failed() {
    let server = ReferenceServer::start().await;
    let error = login_error(&server, Credentials::new("alice", "not-wonderland")).await;
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(401));
    assert_eq!(error.user(), Some("alice"));
    assert!(!all_text(&error).contains("not-wonderland"));
    assert_eq!((server.login_attempts(), server.logins()), (1, 0));
}

#[tokio::test]
async fn expired_account_maps_to_authentication_failed() {
    let server = ReferenceServer::start().await;
    server.set_account_expired("alice", true);
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(
        error.detail(),
        Some("Authentication Failed or Account validity Expired")
    );
}

#[tokio::test]
async fn forbidden_account_maps_to_forbidden() {
    let server = ReferenceServer::start().await;
    server.set_forbidden("alice", true);
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403));
}

#[tokio::test]
async fn unknown_user_maps_to_unknown_user_and_keeps_the_servers_message() {
    let server = ReferenceServer::start().await;
    let error = login_error(&server, Credentials::new("bob", "builder")).await;
    assert_eq!(error.kind(), ErrorKind::UnknownUser);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(error.user(), Some("bob"));
    assert_eq!(error.detail(), Some("No user found with username: bob"));
    assert!(
        error
            .to_string()
            .contains("No user found with username: bob")
    );
}

#[tokio::test]
async fn status_500_maps_to_server() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Status(500));
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(500));
    assert!(error.is_transient());
}

#[tokio::test]
async fn status_503_maps_to_server() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Status(503));
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(503));
}

#[tokio::test]
async fn unexpected_statuses_map_to_server() {
    let server = ReferenceServer::start().await;
    for status in [405, 418] {
        server.push_failure(Failure::Status(status));
        let error = source_for(&server).fetch().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Server, "{status}");
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
    }
}

#[tokio::test]
async fn rate_limited_with_seconds_reports_retry_after() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::RateLimited {
        retry_after: "42".into(),
    });
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(42)));
}

#[tokio::test]
async fn rate_limited_with_an_http_date_reports_retry_after() {
    let server = ReferenceServer::start().await;
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&at)
        .unwrap();
    server.push_failure(Failure::RateLimited { retry_after: date });
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    let wait = error.retry_after().expect("an HTTP date is understood");
    assert!(
        (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&wait),
        "{wait:?}"
    );
}

#[tokio::test]
async fn rate_limited_with_a_garbage_retry_after_has_none() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::RateLimited {
        retry_after: "later please".into(),
    });
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), None);
}

// ---------------------------------------------------------------------------------------------
// Timeouts and broken transports

#[tokio::test(start_paused = true)]
async fn hanging_server_times_out_on_the_paused_clock() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Hang);
    let source = AuthTokenSource::builder(&server.base_url(), server.credentials())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn slow_body_counts_against_the_timeout() {
    // The server sends the head at once and the body too late: the timeout covers the body.
    let addr = raw_server(|mut stream| async move {
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let source = AuthTokenSource::builder(&format!("http://{addr}"), Credentials::new("a", "b"))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error:?}");
}

#[tokio::test]
async fn caller_supplied_client_still_gets_the_timeout_and_user_agent() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Hang);
    let source = AuthTokenSource::builder(&server.base_url(), server.credentials())
        .client(reqwest::Client::new())
        .timeout(Duration::from_millis(200))
        .user_agent("my-app/1.2")
        .build()
        .unwrap();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    let headers = server.last_login_headers().unwrap();
    assert_eq!(headers[header::USER_AGENT], "my-app/1.2");
}

#[tokio::test]
async fn refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let source =
        AuthTokenSource::new(&format!("http://{addr}"), Credentials::new("alice", "pw")).unwrap();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport, "{error:?}");
    assert_eq!(error.status(), None);
    assert!(std::error::Error::source(&error).is_some());
    assert!(error.is_transient());
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::MalformedJson);
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{error:?}");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(200));
    assert_eq!(error.user(), Some("alice"));
}

#[tokio::test]
async fn truncated_body_is_a_transport_error() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::TruncatedBody);
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport, "{error:?}");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(200));
}

#[tokio::test]
async fn closed_connection_is_a_transport_error() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::CloseConnection);
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport, "{error:?}");
    assert_eq!(error.status(), None);
    // The server is still fine afterwards.
    let error = login_error(&server, Credentials::new("bob", "x")).await;
    assert_eq!(error.kind(), ErrorKind::UnknownUser);
}

#[tokio::test]
async fn body_over_64_kib_with_content_length_is_an_invalid_response() {
    let server = ReferenceServer::start().await;
    let padding = "x".repeat(70 * 1024);
    server.push_failure(Failure::Body {
        status: 200,
        content_type: "application/json".into(),
        body: format!(r#"{{"token":"abc","expiresIn":"60","padding":"{padding}"}}"#),
    });
    let error = source_for(&server).fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse);
    assert_eq!(error.detail(), Some("body larger than 64 KiB"));
}

#[tokio::test]
async fn chunked_body_over_64_kib_is_an_invalid_response() {
    let addr = raw_server(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 8 * 1024];
        // Far more than the cap; the client must stop reading long before the end.
        for _ in 0..1024 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let source =
        AuthTokenSource::new(&format!("http://{addr}"), Credentials::new("alice", "pw")).unwrap();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{error:?}");
    assert_eq!(error.detail(), Some("body larger than 64 KiB"));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = ReferenceServer::start().await;
    let location = format!("{}/authtoken", target.base_url());
    let addr = raw_server(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
    })
    .await;
    let source = AuthTokenSource::new(&format!("http://{addr}"), target.credentials()).unwrap();
    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(!error.is_transient());
    assert_eq!(error.status().map(|s| s.as_u16()), Some(307));
    assert_eq!(
        error.detail(),
        Some(
            format!(
                "POST http://{addr}/authtoken answered 307 Temporary Redirect to \
                 {}/authtoken: check the base URL; redirects of a login are not followed, so \
                 that the password never goes elsewhere",
                target.base_url()
            )
            .as_str()
        )
    );
    assert_eq!(
        target.login_attempts(),
        0,
        "the password went to the redirect target"
    );
}

#[tokio::test]
async fn every_redirect_status_is_a_config_error_naming_the_location() {
    for status in [301, 302, 303, 307, 308] {
        let addr = raw_server(move |mut stream| async move {
            let head = format!(
                "HTTP/1.1 {status} Moved\r\nLocation: /v2/authtoken\r\nContent-Length: 0\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
        })
        .await;
        let source = AuthTokenSource::new(
            &format!("http://{addr}/v1"),
            Credentials::new("alice", "pw"),
        )
        .unwrap();
        let error = source.fetch().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{status}: {error}");
        let detail = error.detail().unwrap();
        assert!(
            detail.starts_with(&format!(
                "POST http://{addr}/v1/authtoken answered {status}"
            )),
            "{detail}"
        );
        assert!(
            detail.contains(&format!(
                " to http://{addr}/v2/authtoken: check the base URL"
            )),
            "{detail}"
        );
    }
}

/// The login URL of a raw server whose every answer is `404` with this content type and body.
async fn not_found_with(content_type: &'static str, body: &'static str) -> Error {
    let addr = raw_server(move |mut stream| async move {
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
    })
    .await;
    AuthTokenSource::new(
        &format!("http://{addr}/wrong/prefix"),
        Credentials::new("alice", "S3cret-in-404"),
    )
    .unwrap()
    .fetch()
    .await
    .unwrap_err()
}

#[tokio::test]
async fn a_404_that_is_not_no_user_found_is_a_wrong_url_showing_the_url_called() {
    for (content_type, body) in [
        (
            "text/html",
            "<html><body><h1>404 Not Found</h1></body></html>",
        ),
        ("text/plain", ""),
        ("text/plain", "Cannot POST /wrong/prefix/authtoken"),
        (
            "application/json",
            r#"{"timestamp":"2026-11-28T10:00:00Z","status":404,"error":"Not Found","path":"/wrong/prefix/authtoken"}"#,
        ),
    ] {
        let error = not_found_with(content_type, body).await;
        assert_eq!(error.kind(), ErrorKind::Config, "{body}: {error}");
        assert!(!error.is_transient());
        assert_eq!(error.status().map(|s| s.as_u16()), Some(404));
        let text = error.to_string();
        assert!(
            text.contains("/wrong/prefix/authtoken answered 404 Not Found"),
            "{text}"
        );
        assert!(text.contains("check the base URL"), "{text}");
        assert!(!all_text(&error).contains("S3cret-in-404"), "{error:?}");
        assert!(!text.contains("<html>"), "{text}");
    }
    // The documented answer is still an unknown user, as plain text too.
    let error = not_found_with("text/plain", "No user found with username: alice").await;
    assert_eq!(error.kind(), ErrorKind::UnknownUser, "{error}");
}

#[tokio::test]
async fn a_base_url_that_already_ends_in_authtoken_is_not_extended() {
    let server = ReferenceServer::start().await;
    for (base, login_url) in [
        (
            format!("{}/authtoken", server.base_url()),
            format!("{}/authtoken", server.base_url()),
        ),
        (
            format!("{}/api/authtoken/", server.base_url()),
            format!("{}/api/authtoken", server.base_url()),
        ),
    ] {
        let source = AuthTokenSource::new(&base, server.credentials()).unwrap();
        assert_eq!(source.url(), login_url);
        source.fetch().await.unwrap();
    }
    assert_eq!(server.logins(), 2);
    // And on the wire, the request line is the URL given, once.
    let (request_tx, request_rx) = tokio::sync::oneshot::channel();
    let addr = raw_server_with_request(move |request, mut stream| async move {
        let _ = request_tx.send(request);
        let _ = stream
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let source = AuthTokenSource::new(
        &format!("http://{addr}/v1/authtoken"),
        Credentials::new("a", "b"),
    )
    .unwrap();
    let _ = source.fetch().await;
    let request = String::from_utf8(request_rx.await.unwrap()).unwrap();
    assert!(
        request.starts_with("POST /v1/authtoken HTTP/1.1\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn insecure_transport_error_names_the_host_and_the_switch() {
    let error = AuthTokenSource::new(
        "http://api.example.com:8080/v1",
        Credentials::new("alice", "pw"),
    )
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    let text = error.to_string();
    assert!(text.contains("'api.example.com'"), "{text}");
    assert!(
        text.contains("AuthTokenSourceBuilder::allow_insecure_http(true)"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The server's clock

/// An HTTP date for `instant`.
fn http_date(instant: SystemTime) -> String {
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&jiff::Timestamp::try_from(instant).unwrap())
        .unwrap()
}

/// A login URL whose one answer is `200` with `body`, and a `Date` header if given.
async fn answering(body: String, date: Option<String>) -> String {
    let addr = raw_server(move |mut stream| async move {
        let date = date.map_or_else(String::new, |date| format!("Date: {date}\r\n"));
        let head = format!(
            "HTTP/1.1 200 OK\r\n{date}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
    })
    .await;
    format!("http://{addr}")
}

/// `instant` cut to whole seconds, as an HTTP date carries it.
fn whole_seconds(instant: SystemTime) -> SystemTime {
    let since = instant.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[tokio::test]
async fn expires_without_issued_is_read_against_the_date_header_whatever_the_servers_clock() {
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    for server_now in [now - hour, now + hour, now] {
        let date = whole_seconds(server_now);
        let expires = jiff::Timestamp::try_from(date + Duration::from_secs(30)).unwrap();
        let body = serde_json::json!({"token": "t", "expires": expires.to_string()}).to_string();
        let base = answering(body, Some(http_date(date))).await;
        let token = AuthTokenSource::new(&base, Credentials::new("a", "b"))
            .unwrap()
            .fetch()
            .await
            .unwrap();
        assert_eq!(token.lifetime(), Duration::from_secs(30), "{date:?}");
    }
}

#[tokio::test]
async fn a_token_expired_by_the_date_header_is_an_invalid_response() {
    // The server's clock is an hour ahead of ours; by it, the token expired a minute ago.
    let date = whole_seconds(SystemTime::now() + Duration::from_secs(3600));
    let expires = jiff::Timestamp::try_from(date - Duration::from_secs(60)).unwrap();
    let body = serde_json::json!({"token": "t", "expires": expires.to_string()}).to_string();
    let base = answering(body, Some(http_date(date))).await;
    let error = AuthTokenSource::new(&base, Credentials::new("a", "b"))
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse);
    assert_eq!(
        error.detail(),
        Some("expires is before the response's Date: the token has expired")
    );
}

#[tokio::test]
async fn without_a_date_header_our_clock_only_shortens_the_lifetime() {
    let now = SystemTime::now();
    let soon = jiff::Timestamp::try_from(now + Duration::from_secs(20)).unwrap();
    let body = serde_json::json!({"token": "t", "expires": soon.to_string()}).to_string();
    let token = AuthTokenSource::new(&answering(body, None).await, Credentials::new("a", "b"))
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert!(token.lifetime() <= Duration::from_secs(20), "{token:?}");
    assert!(token.lifetime() > Duration::from_secs(15), "{token:?}");
    let later = jiff::Timestamp::try_from(now + Duration::from_secs(7200)).unwrap();
    let body = serde_json::json!({"token": "t", "expires": later.to_string()}).to_string();
    let token = AuthTokenSource::new(&answering(body, None).await, Credentials::new("a", "b"))
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(
        token.lifetime(),
        Duration::from_secs(300),
        "capped at the default"
    );
}

// ---------------------------------------------------------------------------------------------
// Settings

/// Durations of every size, the edges of the accepted ranges among them.
fn any_duration() -> impl Strategy<Value = Duration> {
    let edges = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(3600),
        Duration::from_secs(3600) + Duration::from_nanos(1),
        MAX_LIFETIME,
        MAX_LIFETIME + Duration::from_nanos(1),
        Duration::MAX,
    ];
    prop_oneof![
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..4000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..40_000_000).prop_map(Duration::from_secs),
        prop::sample::select(edges.to_vec()),
    ]
}

#[test]
fn build_refuses_out_of_range_durations_by_name_and_accepted_ones_never_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A port nobody listens on: a login fails at once with a transport error.
    let closed = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    });
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(timeout in any_duration(), lifetime in any_duration())| {
        let built = AuthTokenSource::builder(&format!("http://{closed}"), Credentials::new("a", "b"))
            .timeout(timeout)
            .default_lifetime(lifetime)
            .build();
        let timeout_ok = !timeout.is_zero() && timeout <= Duration::from_secs(3600);
        let lifetime_ok = !lifetime.is_zero() && lifetime <= MAX_LIFETIME;
        match built {
            Ok(source) => {
                prop_assert!(timeout_ok && lifetime_ok, "{timeout:?} {lifetime:?} accepted");
                // Refused at once, or timed out first when the timeout is a few nanoseconds.
                let error = runtime.block_on(source.fetch()).unwrap_err();
                prop_assert!(
                    matches!(error.kind(), ErrorKind::Transport | ErrorKind::Timeout),
                    "{error:?}"
                );
            }
            Err(error) => {
                prop_assert_eq!(error.kind(), ErrorKind::Config);
                let detail = error.detail().unwrap_or_default();
                if !timeout_ok {
                    prop_assert!(detail.starts_with("timeout must be"), "{detail}");
                } else {
                    prop_assert!(!lifetime_ok, "{timeout:?} {lifetime:?} refused: {detail}");
                    prop_assert!(detail.starts_with("default_lifetime must be"), "{detail}");
                }
            }
        }
    });
}

#[tokio::test]
async fn the_largest_accepted_settings_log_in_and_give_a_usable_token() {
    let base = answering(r#"{"token":"t"}"#.to_owned(), None).await;
    let token = AuthTokenSource::builder(&base, Credentials::new("a", "b"))
        .timeout(Duration::from_secs(3600))
        .default_lifetime(MAX_LIFETIME)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(token.lifetime(), MAX_LIFETIME);
    assert!(token.expires_at() > token.received_at());
}

// ---------------------------------------------------------------------------------------------
// The request

#[tokio::test]
async fn login_request_sends_json_headers_and_no_authorization() {
    let server = ReferenceServer::start().await;
    let _ = source_for(&server).fetch().await;
    let headers = server.last_login_headers().expect("a login arrived");
    assert_eq!(headers[header::ACCEPT], "application/json");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(
        headers[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("tower-authtoken/")
    );
    assert!(!headers.contains_key(header::AUTHORIZATION));
    assert_eq!(server.login_attempts(), 1);
}

#[tokio::test]
async fn login_request_body_is_the_documented_json() {
    let (body_tx, body_rx) = tokio::sync::oneshot::channel();
    let addr = raw_server_with_request(move |request, mut stream| async move {
        let _ = body_tx.send(request);
        let _ = stream
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let source = AuthTokenSource::new(
        &format!("http://{addr}/api/"),
        Credentials::new("al\"ice", "wonder\\land"),
    )
    .unwrap();
    let _ = source.fetch().await;
    let request = body_rx.await.unwrap();
    let text = String::from_utf8(request).unwrap();
    assert!(
        text.starts_with("POST /api/authtoken HTTP/1.1\r\n"),
        "{text}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"userName": "al\"ice", "password": "wonder\\land"})
    );
}

#[tokio::test]
async fn path_prefix_is_kept() {
    let server = ReferenceServer::start().await;
    for prefix in ["/api/v1", "/api/v1/"] {
        let base = format!("{}{prefix}", server.base_url());
        let source = AuthTokenSource::new(&base, Credentials::new("bob", "x")).unwrap();
        assert_eq!(
            source.url(),
            format!("{}/api/v1/authtoken", server.base_url())
        );
        // A 404 with the login endpoint's message shows the prefixed path reached the login
        // endpoint (the protected endpoint would answer 401).
        let error = source.fetch().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnknownUser, "{prefix}: {error:?}");
    }
    assert_eq!(server.login_attempts(), 2);
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_unless_allowed() {
    let credentials = || Credentials::new("alice", "pw");
    let error = AuthTokenSource::new("http://api.example.com", credentials()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    AuthTokenSource::builder("http://api.example.com", credentials())
        .allow_insecure_http(true)
        .build()
        .unwrap();
    AuthTokenSource::new("http://localhost:8080", credentials()).unwrap();
    AuthTokenSource::new("http://[::1]:8080", credentials()).unwrap();
    AuthTokenSource::new("https://api.example.com", credentials()).unwrap();
}

#[tokio::test]
async fn urls_with_user_info_query_or_fragment_are_refused() {
    for base in [
        "https://alice:pw@api.example.com",
        "https://api.example.com/?x=1",
        "https://api.example.com/#top",
        "ftp://api.example.com",
        "::not a url::",
    ] {
        let error = AuthTokenSource::new(base, Credentials::new("alice", "pw")).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{base}");
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets never leak

#[tokio::test]
async fn echoed_password_is_redacted_from_errors() {
    let password = "Sup3r-S3cret-Pw!";
    let server = ReferenceServer::builder()
        .user("alice", password)
        .start()
        .await;
    server.push_failure(Failure::Body {
        status: 404,
        content_type: "text/plain".into(),
        body: format!("No user found with username: alice (you sent {password})"),
    });
    server.push_failure(Failure::Body {
        status: 401,
        content_type: "application/json".into(),
        body: serde_json::json!({ "message": format!("bad password {password}") }).to_string(),
    });
    let source = source_for(&server);

    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnknownUser);
    assert_eq!(
        error.detail(),
        Some("No user found with username: alice (you sent [redacted])")
    );
    assert!(!all_text(&error).contains(password), "{error:?}");

    let error = source.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(error.detail(), Some("bad password [redacted]"));
    assert!(!all_text(&error).contains(password), "{error:?}");
}

#[tokio::test]
async fn no_error_of_any_kind_contains_the_password() {
    let password = "Another-S3cret-Pw";
    let server = ReferenceServer::builder()
        .user("alice", password)
        .start()
        .await;
    for failure in [
        Failure::Status(400),
        Failure::Status(403),
        Failure::Status(404),
        Failure::Status(500),
        Failure::MalformedJson,
        Failure::TruncatedBody,
        Failure::CloseConnection,
        Failure::RateLimited {
            retry_after: "1".into(),
        },
    ] {
        server.push_failure(failure.clone());
        let error = source_for(&server).fetch().await.unwrap_err();
        assert!(
            !all_text(&error).contains(password),
            "{failure:?}: {error:?}"
        );
    }
    let error = login_error(&server, Credentials::new("alice", "wrong-S3cret")).await;
    assert!(!all_text(&error).contains("wrong-S3cret"));
}

#[tokio::test]
async fn debug_of_source_and_credentials_redacts_the_password() {
    let credentials = Credentials::new("alice", "Pa55-in-Debug?");
    let source = AuthTokenSource::builder("https://h/api", credentials.clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let text = format!("{source:?} {source:#?} {credentials:?} {credentials:#?}");
    assert!(!text.contains("Pa55-in-Debug?"), "{text}");
    assert!(text.contains("alice"));
    assert!(text.contains("https://h/api/authtoken"));
    let server = ReferenceServer::builder()
        .user("alice", "Pa55-in-Debug?")
        .start()
        .await;
    assert!(!format!("{server:?}").contains("Pa55-in-Debug?"));
}

#[tokio::test]
async fn issued_tokens_never_appear_in_errors_of_later_logins() {
    let server = ReferenceServer::start().await;
    let source = source_for(&server);
    let _ = source.fetch().await;
    server.push_failure(Failure::Status(500));
    let error = source.fetch().await.unwrap_err();
    for token in server.issued_tokens() {
        assert!(!all_text(&error).contains(&token));
    }
}

// ---------------------------------------------------------------------------------------------
// The reference server itself (checked with a plain reqwest client, independent of the parser)

async fn raw_login(server: &ReferenceServer, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/authtoken", server.base_url()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn protected_status(server: &ReferenceServer, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(server.protected_url());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    if response.status() == 401 {
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
    }
    response.status().as_u16()
}

#[tokio::test]
async fn reference_server_answers_a_login_exactly_as_documented() {
    let server = ReferenceServer::start().await;
    let (status, json) =
        raw_login(&server, r#"{"userName":"alice","password":"wonderland"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(json["type"], "Bearer");
    assert_eq!(json["expiresIn"], "3600");
    let token = json["token"].as_str().unwrap();
    assert!(token.len() >= 32);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let issued: jiff::Timestamp = json["issued"].as_str().unwrap().parse().unwrap();
    let expires: jiff::Timestamp = json["expires"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires.duration_since(issued),
        jiff::SignedDuration::from_secs(3600)
    );
    assert_eq!(server.issued_tokens(), [token]);

    for (body, status, message) in [
        ("not json", 400, "Invalid grant type"),
        (r#"{"userName":"alice"}"#, 400, "Invalid grant type"),
        (
            r#"{"userName":"bob","password":"x"}"#,
            404,
            "No user found with username: bob",
        ),
        (
            r#"{"userName":"alice","password":"x"}"#,
            401,
            "Authentication Failed or Account validity Expired",
        ),
    ] {
        assert_eq!(
            raw_login(&server, body).await,
            (status, serde_json::json!({ "message": message }))
        );
    }
    server.set_forbidden("alice", true);
    let (status, json) =
        raw_login(&server, r#"{"userName":"alice","password":"wonderland"}"#).await;
    assert_eq!(
        (status, json["message"].as_str()),
        (403, Some("Forbidden - Access denied"))
    );
    server.push_failure(Failure::Status(500));
    let (status, json) = raw_login(&server, "{}").await;
    assert_eq!(
        (status, json["message"].as_str()),
        (500, Some("Internal Server Error"))
    );

    let stats = server.stats();
    assert_eq!((stats.logins, stats.login_attempts), (1, 7));

    let response = reqwest::get(format!("{}/authtoken", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(server.login_attempts(), 7);
}

#[tokio::test]
async fn reference_server_numeric_fields_and_jwt_tokens() {
    let server = ReferenceServer::builder()
        .numeric_fields(true)
        .jwt_tokens(true)
        .timestamp_format(TimestampFormat::EpochMillis)
        .token_lifetime(Duration::from_secs(120))
        .start()
        .await;
    let (status, json) =
        raw_login(&server, r#"{"userName":"alice","password":"wonderland"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(json["expiresIn"], 120);
    assert_eq!(
        json["expires"].as_i64().unwrap() - json["issued"].as_i64().unwrap(),
        120_000
    );
    let token = json["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
}

#[tokio::test]
async fn reference_server_protected_endpoint_accepts_only_live_issued_tokens() {
    let server = ReferenceServer::start().await;
    let (_, json) = raw_login(&server, r#"{"userName":"alice","password":"wonderland"}"#).await;
    let token = json["token"].as_str().unwrap().to_owned();
    assert_eq!(protected_status(&server, Some(&token)).await, 200);
    assert_eq!(protected_status(&server, Some("made-up")).await, 401);
    assert_eq!(protected_status(&server, None).await, 401);
    server.revoke(&token);
    assert_eq!(protected_status(&server, Some(&token)).await, 401);
    assert_eq!((server.accepted(), server.rejections()), (1, 3));
}

#[tokio::test(start_paused = true)]
async fn reference_server_tokens_expire_on_the_paused_clock() {
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await;
    let (_, json) = raw_login(&server, r#"{"userName":"alice","password":"wonderland"}"#).await;
    let token = json["token"].as_str().unwrap().to_owned();
    assert_eq!(protected_status(&server, Some(&token)).await, 200);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(protected_status(&server, Some(&token)).await, 200);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(protected_status(&server, Some(&token)).await, 401);
}

#[tokio::test]
async fn reference_server_revoke_all_and_failures_are_fifo() {
    let server = ReferenceServer::start().await;
    let login = r#"{"userName":"alice","password":"wonderland"}"#;
    let (_, a) = raw_login(&server, login).await;
    let (_, b) = raw_login(&server, login).await;
    server.revoke_all();
    for json in [a, b] {
        assert_eq!(protected_status(&server, json["token"].as_str()).await, 401);
    }
    server.push_failure(Failure::Status(403));
    server.push_failure(Failure::Delay(Duration::from_millis(1)));
    server.push_failure(Failure::Status(500));
    assert_eq!(raw_login(&server, login).await.0, 403);
    assert_eq!(raw_login(&server, login).await.0, 200);
    assert_eq!(raw_login(&server, login).await.0, 500);
    assert_eq!(raw_login(&server, login).await.0, 200);
    assert_eq!(server.logins(), 4);
}

#[tokio::test]
async fn reference_server_stops_when_dropped() {
    let server = ReferenceServer::start().await;
    server.push_failure(Failure::Hang);
    let url = format!("{}/authtoken", server.base_url());
    let hung = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body("{}")
            .send()
            .await
            .map(|r| r.status())
    });
    // Wait until the hanging request has arrived, then drop the server.
    while server.login_attempts() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = server.addr();
    drop(server);
    let result = tokio::time::timeout(Duration::from_secs(5), hung)
        .await
        .expect("the hung request ends when the server is dropped")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    // Give the aborted accept task a moment to release the listener.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Helpers: a one-shot raw HTTP server

/// Accepts one connection, reads one whole request, and hands the stream to `answer`.
async fn raw_server<F, Fut>(answer: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    raw_server_with_request(|_, stream| answer(stream)).await
}

/// Like [`raw_server`], also handing over the raw request bytes.
async fn raw_server_with_request<F, Fut>(answer: F) -> SocketAddr
where
    F: FnOnce(Vec<u8>, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await;
        answer(request, stream).await;
    });
    addr
}

/// Reads a request head and a `Content-Length` body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return buf;
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
