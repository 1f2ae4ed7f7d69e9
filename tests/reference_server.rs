//! The reference server's zoo of behaviours, each checked over real HTTP on the paused clock.
//!
//! The requests are written straight to a socket (one connection per request, `Connection:
//! close`), so no client timer can move the paused clock, and the answers are checked to the
//! byte: the same or another token, `expiresIn`, `issued`/`expires`, `Date`, and when an outage
//! starts and ends.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, advance};
use tower_authtoken::testing::{
    Outage, ReferenceServer, Rejection, TimestampFormat, TokenFields, TokenPolicy,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn token(&self) -> String {
        assert_eq!(self.status, 200, "{self:?}");
        self.json()["token"].as_str().unwrap().to_owned()
    }

    /// A string field of the JSON body.
    fn field(&self, name: &str) -> String {
        self.json()[name].as_str().unwrap().to_owned()
    }

    /// The `Date` header, which every answer carries.
    fn date(&self) -> Timestamp {
        let date = self.headers.get("date").expect("every answer has a Date");
        jiff::fmt::rfc2822::parse(date).unwrap().timestamp()
    }
}

/// Sends one request on a new connection and reads the answer; `None` if the server closed the
/// connection without answering.
async fn send(server: &ReferenceServer, head: &str, body: &str) -> Option<Reply> {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A connection closed mid-answer is a reset on some systems: also "no answer".
    if stream.read_to_end(&mut bytes).await.is_err() || bytes.is_empty() {
        return None;
    }
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Logs in as `user`, who has the password `pw-{user}` or is `alice`.
async fn login_as(server: &ReferenceServer, user: &str) -> Option<Reply> {
    let password = if user == "alice" {
        "wonderland".to_owned()
    } else {
        format!("pw-{user}")
    };
    let body = format!(r#"{{"userName":"{user}","password":"{password}"}}"#);
    send(server, "POST /authtoken HTTP/1.1", &body).await
}

async fn login(server: &ReferenceServer) -> Reply {
    login_as(server, "alice").await.expect("an answer")
}

/// The status the protected endpoint answers `token` with.
async fn call(server: &ReferenceServer, token: &str) -> u16 {
    let head = format!("GET /protected HTTP/1.1\r\nAuthorization: Bearer {token}");
    let reply = send(server, &head, "").await.expect("an answer");
    assert!(reply.headers.contains_key("date"), "{reply:?}");
    reply.status
}

fn timestamp(text: &str) -> Timestamp {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// `expires - issued` of a token response.
fn span(reply: &Reply) -> SignedDuration {
    timestamp(&reply.field("expires")).duration_since(timestamp(&reply.field("issued")))
}

fn our_clock() -> Timestamp {
    Timestamp::try_from(SystemTime::now()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1-4: what a login grants while the user holds a valid token

#[tokio::test(start_paused = true)]
async fn fresh_policy_grants_a_new_full_length_token_on_every_login() {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(60))
        .start()
        .await;
    let first = login(&server).await;
    advance(secs(20)).await;
    let second = login(&server).await;

    assert_ne!(first.token(), second.token());
    for reply in [&first, &second] {
        assert_eq!(reply.field("expiresIn"), "60");
        assert_eq!(span(reply), SignedDuration::from_secs(60));
    }
    assert_eq!(
        timestamp(&second.field("issued")).duration_since(timestamp(&first.field("issued"))),
        SignedDuration::from_secs(20)
    );
    advance(secs(40)).await;
    assert_eq!(call(&server, &first.token()).await, 401);
    assert_eq!(call(&server, &second.token()).await, 200);
    assert_eq!((server.logins_of("alice"), server.logins()), (2, 2));
    assert_eq!(server.issued_tokens(), [first.token(), second.token()]);
}

#[tokio::test(start_paused = true)]
async fn one_live_token_per_user_returns_the_same_token_with_what_is_left_of_its_life() {
    let server = ReferenceServer::builder()
        .user("alice", "wonderland")
        .user("bob", "pw-bob")
        .token_lifetime(secs(60))
        .token_policy(TokenPolicy::OneLivePerUser)
        .start()
        .await;
    let first = login(&server).await;
    advance(ms(20_500)).await;
    let again = login(&server).await;

    assert_eq!(again.token(), first.token());
    assert_eq!(again.field("expiresIn"), "39.5");
    assert_eq!(again.field("issued"), first.field("issued"));
    assert_eq!(again.field("expires"), first.field("expires"));
    // Another user has a token of their own.
    let bob = login_as(&server, "bob").await.unwrap();
    assert_ne!(bob.token(), first.token());
    assert_eq!(bob.field("expiresIn"), "60");

    advance(ms(39_499)).await;
    assert_eq!(call(&server, &first.token()).await, 200);
    advance(ms(1)).await;
    assert_eq!(call(&server, &first.token()).await, 401);
    let renewed = login(&server).await;
    assert_ne!(renewed.token(), first.token());
    assert_eq!(renewed.field("expiresIn"), "60");
    assert_eq!((server.logins_of("alice"), server.logins_of("bob")), (3, 1));
    assert_eq!(server.issued_tokens().len(), 3);
    assert_eq!(server.stats().rejected.expired, 1);
}

#[tokio::test(start_paused = true)]
async fn session_bound_tokens_are_new_on_every_login_but_expire_with_the_session() {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(60))
        .token_policy(TokenPolicy::SessionBound)
        .start()
        .await;
    let first = login(&server).await;
    advance(secs(45)).await;
    let second = login(&server).await;

    assert_ne!(second.token(), first.token());
    assert_eq!(second.field("expiresIn"), "15");
    assert_eq!(second.field("expires"), first.field("expires"));
    assert_eq!(span(&second), SignedDuration::from_secs(15));
    let session_end = Instant::now() + secs(15);
    assert_eq!(server.token_expires_at(&first.token()), Some(session_end));
    assert_eq!(server.token_expires_at(&second.token()), Some(session_end));

    advance(ms(14_999)).await;
    assert_eq!(call(&server, &first.token()).await, 200);
    assert_eq!(call(&server, &second.token()).await, 200);
    advance(ms(1)).await;
    assert_eq!(call(&server, &first.token()).await, 401);
    assert_eq!(call(&server, &second.token()).await, 401);
    // A login after the session ends starts a new one.
    let next = login(&server).await;
    assert_eq!(next.field("expiresIn"), "60");
    assert_eq!(span(&next), SignedDuration::from_secs(60));
    assert_eq!(server.issued_tokens().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn sliding_tokens_keep_their_value_and_push_their_expiry_forward() {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(60))
        .token_policy(TokenPolicy::Sliding)
        .start()
        .await;
    let first = login(&server).await;
    advance(secs(50)).await;
    let slid = login(&server).await;

    assert_eq!(slid.token(), first.token());
    assert_eq!(slid.field("expiresIn"), "60");
    assert_eq!(span(&slid), SignedDuration::from_secs(60));
    assert_eq!(
        timestamp(&slid.field("expires")).duration_since(timestamp(&first.field("expires"))),
        SignedDuration::from_secs(50)
    );
    // Past the first expiry, the slid token still works, until its new one.
    advance(secs(59)).await;
    assert_eq!(call(&server, &first.token()).await, 200);
    advance(secs(1)).await;
    assert_eq!(call(&server, &first.token()).await, 401);
    let fresh = login(&server).await;
    assert_ne!(fresh.token(), first.token());
    assert_eq!(server.logins(), 3);
    assert_eq!(server.issued_tokens().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5: revocation

#[tokio::test(start_paused = true)]
async fn a_scheduled_revocation_revokes_the_live_token_at_its_instant() {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(600))
        .token_policy(TokenPolicy::OneLivePerUser)
        .start()
        .await;
    let token = login(&server).await.token();
    let at = Instant::now() + secs(30);
    server.schedule_revocation(at);

    advance(ms(29_999)).await;
    assert!(server.accepts(&token));
    assert_eq!(call(&server, &token).await, 200);
    assert!(server.revocations().is_empty());
    advance(ms(1)).await;
    assert_eq!(server.verdict(&token), Err(Rejection::Revoked));
    assert!(!server.accepts(&token));
    assert_eq!(call(&server, &token).await, 401);
    assert_eq!(server.revocations(), [at]);
    // Even one live token per user: a revoked token is never handed out again.
    let next = login(&server).await;
    assert_ne!(next.token(), token);
    assert_eq!(next.field("expiresIn"), "600");
    assert_eq!(call(&server, &next.token()).await, 200);

    // Revoking the user's live token, now.
    assert_eq!(server.revoke_user("alice"), 1);
    assert_eq!(call(&server, &next.token()).await, 401);
    assert_eq!(server.revoke_user("alice"), 0);
    assert_eq!(server.revocations(), [at, Instant::now()]);
    assert_eq!(server.stats().rejected.revoked, 2);
}

/// Follows the random revocations of a server with `seed` for five minutes, logging in again
/// whenever the token is refused; returns the revocation instants (as offsets from the start)
/// and the logins.
async fn follow_random_revocations(seed: u64) -> (Vec<Duration>, u64) {
    let server = ReferenceServer::builder()
        .token_lifetime(secs(600))
        .token_policy(TokenPolicy::OneLivePerUser)
        .random_revocations(secs(30))
        .seed(seed)
        .start()
        .await;
    let start = Instant::now();
    let mut token = login(&server).await.token();
    for _ in 0..300 {
        advance(secs(1)).await;
        let accepted = server.accepts(&token);
        let status = call(&server, &token).await;
        assert_eq!(status == 200, accepted, "the model and the endpoint agree");
        if status == 401 {
            assert_eq!(server.verdict(&token), Err(Rejection::Revoked));
            // It was revoked within the last second.
            let last = *server.revocations().last().unwrap();
            assert!(
                Instant::now() - last < secs(1),
                "{:?}",
                Instant::now() - last
            );
            token = login(&server).await.token();
        }
    }
    let revocations: Vec<Duration> = server.revocations().iter().map(|&t| t - start).collect();
    assert_eq!(
        server.logins(),
        1 + revocations.len() as u64,
        "one login per revocation"
    );
    (revocations, server.logins())
}

#[tokio::test(start_paused = true)]
async fn seeded_random_revocations_revoke_the_live_token_at_the_same_instants_every_run() {
    let (first, logins) = follow_random_revocations(11).await;
    assert_eq!(follow_random_revocations(11).await, (first.clone(), logins));
    // Five minutes at a mean of 30 s: about ten.
    assert!((3..=20).contains(&first.len()), "{first:?}");
    assert_ne!(follow_random_revocations(12).await.0, first);
}

// ---------------------------------------------------------------------------------------------
// 6 and 7: 401s for tokens that are still good

#[tokio::test(start_paused = true)]
async fn spurious_rejections_refuse_a_valid_token_once_then_accept_it_again() {
    let server = ReferenceServer::builder()
        .token_policy(TokenPolicy::OneLivePerUser)
        .start()
        .await;
    let token = login(&server).await.token();
    server.reject_next_requests(1);
    assert_eq!(server.verdict(&token), Err(Rejection::Spurious));
    assert!(
        server.accepts(&token),
        "a spurious refusal leaves the token good"
    );
    // A request the server refuses anyway does not use it up.
    assert_eq!(call(&server, "made-up").await, 401);
    assert_eq!(call(&server, &token).await, 401);
    assert_eq!(call(&server, &token).await, 200);
    // The re-login returns the same token, which is accepted.
    assert_eq!(login(&server).await.token(), token);
    assert_eq!(call(&server, &token).await, 200);

    // Each token's third request, once.
    server.set_spurious_rejection_at(Some(3));
    server.revoke(&token);
    let next = login(&server).await.token();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(&server, &next).await);
    }
    assert_eq!(statuses, [200, 200, 401, 200, 200]);
    let rejected = server.stats().rejected;
    assert_eq!(
        (rejected.spurious, rejected.unknown, rejected.revoked),
        (2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_token_keeps_the_login_working() {
    let server = ReferenceServer::builder()
        .reject_all_tokens(true)
        .start()
        .await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let token = login(&server).await.token();
        assert_eq!(server.verdict(&token), Err(Rejection::RejectAll));
        assert!(!server.accepts(&token));
        assert_eq!(call(&server, &token).await, 401);
        tokens.push(token);
        advance(secs(1)).await;
    }
    // Expiry and revocation still come first.
    server.revoke(&tokens[0]);
    assert_eq!(call(&server, &tokens[0]).await, 401);
    let stats = server.stats();
    assert_eq!(
        (
            stats.logins,
            stats.rejected.reject_all,
            stats.rejected.revoked
        ),
        (3, 3, 1)
    );
    assert_eq!(stats.rejections, 4);
    server.set_reject_all_tokens(false);
    assert_eq!(call(&server, &tokens[2]).await, 200);
}

// ---------------------------------------------------------------------------------------------
// 8: very short lifetimes

#[tokio::test(start_paused = true)]
async fn short_lifetimes_carry_their_fraction_and_expire_exactly_on_tokios_clock() {
    let server = ReferenceServer::builder()
        .timestamp_format(TimestampFormat::Rfc3339Millis)
        .start()
        .await;
    for (lifetime, text) in [
        (ms(10), "0.01"),
        (ms(500), "0.5"),
        (secs(1), "1"),
        (secs(2), "2"),
    ] {
        server.set_token_lifetime(lifetime);
        let reply = login(&server).await;
        let token = reply.token();
        assert_eq!(reply.field("expiresIn"), text);
        assert_eq!(span(&reply), SignedDuration::try_from(lifetime).unwrap());
        assert_eq!(
            server.token_expires_at(&token),
            Some(Instant::now() + lifetime)
        );
        advance(lifetime - ms(1)).await;
        assert_eq!(call(&server, &token).await, 200, "{text}");
        advance(ms(1)).await;
        assert_eq!(call(&server, &token).await, 401, "{text}");
        assert_eq!(server.verdict(&token), Err(Rejection::Expired));
    }
    assert_eq!(server.stats().rejected.expired, 4);
}

#[tokio::test(start_paused = true)]
async fn one_live_token_per_user_reports_sub_second_remains_exactly() {
    let server = ReferenceServer::builder()
        .token_lifetime(ms(500))
        .token_policy(TokenPolicy::OneLivePerUser)
        .start()
        .await;
    let token = login(&server).await.token();
    advance(ms(490)).await;
    let again = login(&server).await;
    assert_eq!(
        (again.token(), again.field("expiresIn")),
        (token, "0.01".into())
    );
}

// ---------------------------------------------------------------------------------------------
// 9: login outages

#[tokio::test(start_paused = true)]
async fn a_503_outage_lasts_exactly_its_window_then_the_login_recovers() {
    let server = ReferenceServer::start().await;
    let start = Instant::now();
    let window = server.start_login_outage(Outage::Status(503), secs(5));
    assert_eq!(window, start..start + secs(5));
    assert_eq!(server.login_outage_ends(), Some(start + secs(5)));

    let reply = login(&server).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["message"], "Service Unavailable");
    assert!(!reply.headers.contains_key("retry-after"));
    advance(ms(4_999)).await;
    assert_eq!(login(&server).await.status, 503);
    assert_eq!(server.login_outage_window(), Some(window.clone()));
    // The protected endpoint keeps working through a login outage.
    server.register_token("kept", secs(60));
    assert_eq!(call(&server, "kept").await, 200);
    advance(ms(1)).await;
    assert_eq!(login(&server).await.status, 200);
    assert_eq!(server.login_outage_ends(), None);

    let stats = server.stats();
    assert_eq!(
        (stats.login_attempts, stats.outage_answers, stats.logins),
        (3, 2, 1)
    );
    assert_eq!(
        server.login_attempt_instants(),
        [start, start + ms(4_999), start + secs(5)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hang_outage_holds_logins_until_it_ends_then_closes_them() {
    let server = ReferenceServer::start().await;
    let start = Instant::now();
    let end = server.start_login_outage(Outage::Hang, secs(5)).end;
    advance(secs(2)).await;
    // Held for the last 3 s of the outage, then closed without an answer.
    assert!(login_as(&server, "alice").await.is_none());
    assert_eq!(Instant::now(), end);
    assert_eq!(login(&server).await.status, 200);

    // Ended early by hand: the held login is let go at once.
    server.start_login_outage(Outage::Hang, secs(60));
    let ended_at = Instant::now() + secs(1);
    let (held, ()) = tokio::join!(login_as(&server, "alice"), async {
        tokio::time::sleep_until(ended_at).await;
        server.end_login_outage();
    });
    assert!(held.is_none());
    assert_eq!(Instant::now(), ended_at);
    assert_eq!(server.login_outage_ends(), None);
    assert_eq!(login(&server).await.status, 200);
    assert_eq!(server.stats().outage_answers, 2);
    assert_eq!(server.login_attempt_instants()[0], start + secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_connection_closing_outage_answers_nothing_at_once_until_it_ends() {
    let server = ReferenceServer::start().await;
    let start = Instant::now() + secs(10);
    let window = server.schedule_login_outage(Outage::CloseConnection, start, secs(3));
    assert_eq!(server.login_outage_ends(), Some(start + secs(3)));
    assert_eq!(login(&server).await.status, 200, "not started yet");

    advance(secs(10)).await;
    let mut attempts = 0;
    while Instant::now() < window.end {
        let before = Instant::now();
        assert!(login_as(&server, "alice").await.is_none());
        assert_eq!(Instant::now(), before, "closed at once");
        attempts += 1;
        advance(ms(250)).await;
    }
    assert_eq!(attempts, 12);
    assert_eq!(login(&server).await.status, 200);
    assert_eq!(server.stats().outage_answers, 12);
    assert_eq!(server.max_login_attempts_within(secs(1)), 4);
}

// ---------------------------------------------------------------------------------------------
// 10: clocks and zones

#[tokio::test(start_paused = true)]
async fn a_server_clock_an_hour_ahead_shifts_issued_expires_and_the_date_header() {
    let server = ReferenceServer::builder()
        .clock_ahead(secs(3600))
        .token_lifetime(secs(600))
        .start()
        .await;
    let reply = login(&server).await;
    let ahead = reply.date().duration_since(our_clock());
    assert!(
        (SignedDuration::from_secs(3598)..=SignedDuration::from_secs(3601)).contains(&ahead),
        "{ahead:?}"
    );
    assert_eq!(timestamp(&reply.field("issued")), reply.date());
    assert_eq!(span(&reply), SignedDuration::from_secs(600));
    assert_eq!(reply.field("expiresIn"), "600");

    // Errors carry the server's Date too, and it follows Tokio's clock.
    advance(secs(90)).await;
    let failed = login_as(&server, "nobody").await.unwrap();
    assert_eq!(failed.status, 404);
    assert_eq!(
        failed.date().duration_since(reply.date()),
        SignedDuration::from_secs(90)
    );

    server.set_clock_behind(secs(3600));
    let behind = login(&server).await;
    let offset = behind.date().duration_since(our_clock());
    assert!(
        (SignedDuration::from_secs(-3512)..=SignedDuration::from_secs(-3509)).contains(&offset),
        "an hour behind, 90 s of Tokio's clock later: {offset:?}"
    );
    assert_eq!(timestamp(&behind.field("issued")), behind.date());
}

#[tokio::test(start_paused = true)]
async fn timestamps_in_another_zone_name_the_same_instant() {
    let server = ReferenceServer::builder()
        .timestamp_offset_minutes(330)
        .token_lifetime(secs(600))
        .start()
        .await;
    let reply = login(&server).await;
    let (issued, expires) = (reply.field("issued"), reply.field("expires"));
    assert!(
        issued.ends_with("+05:30") && expires.ends_with("+05:30"),
        "{issued} {expires}"
    );
    assert_eq!(timestamp(&issued), reply.date());
    assert_eq!(span(&reply), SignedDuration::from_secs(600));

    // A server that writes its local time with no offset: read as UTC, 8 h off.
    server.set_timestamp_offset_minutes(-480);
    server.set_timestamp_format(TimestampFormat::Iso8601NoOffset);
    let local = login(&server).await;
    let issued = local.field("issued");
    assert_eq!(issued.len(), "2024-05-01T04:00:00".len(), "{issued}");
    let as_utc = timestamp(&format!("{issued}Z"));
    assert_eq!(
        local.date().duration_since(as_utc),
        SignedDuration::from_hours(8)
    );
}

#[tokio::test(start_paused = true)]
async fn token_responses_can_carry_expires_alone_or_the_oauth2_names() {
    let server = ReferenceServer::builder()
        .token_fields(TokenFields::ExpiresOnly)
        .token_lifetime(secs(30))
        .start()
        .await;
    let reply = login(&server).await;
    let json = reply.json();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["expires", "token", "type"]);
    // Measured against the server's own Date, `expires` says 30 s.
    assert_eq!(
        timestamp(&reply.field("expires")).duration_since(reply.date()),
        SignedDuration::from_secs(30)
    );
    assert!(server.accepts(&reply.token()));

    server.set_token_fields(TokenFields::OAuth2);
    server.set_token_lifetime(ms(1500));
    let json = login(&server).await.json();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "token_type"]);
    // Whole seconds, rounded down, as RFC 6749 writes `expires_in`.
    assert_eq!(json["expires_in"], 1);
    assert_eq!(json["token_type"], "Bearer");
    assert!(server.accepts(json["access_token"].as_str().unwrap()));
}

#[tokio::test]
async fn whole_seconds_writes_expires_in_rounded_down() {
    let server = ReferenceServer::builder()
        .whole_seconds(true)
        .token_lifetime(ms(1900))
        .start()
        .await;
    assert_eq!(login(&server).await.json()["expiresIn"], "1");
    server.set_token_lifetime(ms(900));
    assert_eq!(login(&server).await.json()["expiresIn"], "0");
    // Without it, the fraction is kept.
    let server = ReferenceServer::builder()
        .token_lifetime(ms(1900))
        .start()
        .await;
    assert_eq!(login(&server).await.json()["expiresIn"], "1.9");
}

// ---------------------------------------------------------------------------------------------
// Counters and secrets

#[tokio::test(start_paused = true)]
async fn login_attempts_are_timed_and_counted_per_user() {
    let server = ReferenceServer::builder()
        .user("alice", "wonderland")
        .user("bob", "pw-bob")
        .start()
        .await;
    let start = Instant::now();
    for step in 0..10 {
        login(&server).await;
        if step % 2 == 0 {
            login_as(&server, "bob").await.unwrap();
        }
        advance(ms(200)).await;
    }
    assert_eq!(login_as(&server, "carol").await.unwrap().status, 404);
    assert_eq!(
        (server.logins_of("alice"), server.logins_of("bob")),
        (10, 5)
    );
    assert_eq!(server.logins_of("carol"), 0);
    let instants = server.login_attempt_instants();
    assert_eq!(instants.len(), 16);
    assert_eq!(instants[..3], [start, start, start + ms(200)]);
    // Within any second: five of alice's and three of bob's.
    assert_eq!(server.max_login_attempts_within(secs(1)), 8);
    assert_eq!(server.max_login_attempts_within(ms(1)), 2);
    assert_eq!(server.max_login_attempts_within(Duration::ZERO), 0);
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_zoo_settings_but_never_a_password_or_token() {
    let server = ReferenceServer::builder()
        .user("carol", "pa55-secret")
        .token_policy(TokenPolicy::Sliding)
        .spurious_rejection_at(2)
        .random_revocations(secs(30))
        .clock_behind(secs(3600))
        .start()
        .await;
    let body = r#"{"userName":"carol","password":"pa55-secret"}"#;
    let token = send(&server, "POST /authtoken HTTP/1.1", body)
        .await
        .unwrap()
        .token();
    server.start_login_outage(Outage::Hang, secs(5));
    let debug = format!("{server:?} {server:#?}");
    assert!(
        debug.contains("Sliding") && debug.contains("Hang"),
        "{debug}"
    );
    assert!(
        !debug.contains("pa55") && !debug.contains(&token),
        "{debug}"
    );
}
