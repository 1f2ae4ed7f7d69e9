//! The token response parser, through the public `Token::from_response_body`.
//!
//! Tables of named cases, one rule each, then property tests: no input panics or yields an
//! error of another kind, no error shows the token, and the lifetime is always the smallest
//! reading.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower_authtoken::token::MAX_LIFETIME;
use tower_authtoken::{Error, ErrorKind, Token};

/// The default lifetime passed to the parser; deliberately not the crate's default.
const DEFAULT: Duration = Duration::from_secs(420);

/// `2026-11-28T10:00:00Z` as Unix seconds.
const NOV_28_10H: u64 = 1_795_860_000;

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn at(unix_secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(unix_secs)
}

fn parse(body: impl AsRef<[u8]>) -> Result<Token, Error> {
    Token::from_response_body(body.as_ref(), DEFAULT)
}

/// An unsigned JWT carrying these claims.
fn jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

/// A JWT issued at `NOV_28_10H` and valid for `lifetime` seconds.
fn jwt_for(lifetime: u64) -> String {
    jwt(&json!({"sub": "alice", "iat": NOV_28_10H, "exp": NOV_28_10H + lifetime}))
}

/// What a case should produce.
enum Expect {
    /// A token with exactly this lifetime.
    Lifetime(Duration),
    /// An `InvalidResponse` error whose detail contains this text.
    Refused(&'static str),
}
use Expect::{Lifetime, Refused};

/// Runs named cases; reports every failure, not just the first.
fn check(cases: Vec<(&str, String, Expect)>) {
    let mut failures = Vec::new();
    for (name, body, expect) in cases {
        let outcome = parse(&body);
        let ok = match (&expect, &outcome) {
            (Lifetime(want), Ok(token)) => token.lifetime() == *want,
            (Refused(want), Err(err)) => {
                err.kind() == ErrorKind::InvalidResponse
                    && err.detail().is_some_and(|d| d.contains(want))
            }
            _ => false,
        };
        if !ok {
            let want = match expect {
                Lifetime(lifetime) => format!("lifetime {lifetime:?}"),
                Refused(detail) => format!("refused with {detail:?}"),
            };
            failures.push(format!("{name}: wanted {want}, got {outcome:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn expires_in_rules() {
    check(vec![
        (
            "no expiry at all uses the default lifetime",
            json!({"token": "abc"}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "expiresIn as a number",
            json!({"token": "abc", "expiresIn": 3600}).to_string(),
            Lifetime(secs(3600)),
        ),
        (
            "expiresIn as a string",
            json!({"token": "abc", "expiresIn": "3600"}).to_string(),
            Lifetime(secs(3600)),
        ),
        (
            "expiresIn as a string with surrounding whitespace",
            json!({"token": "abc", "expiresIn": " 3600 "}).to_string(),
            Lifetime(secs(3600)),
        ),
        (
            "expiresIn as an ISO 8601 duration in hours",
            json!({"token": "abc", "expiresIn": "PT1H"}).to_string(),
            Lifetime(secs(3600)),
        ),
        (
            "expiresIn as an ISO 8601 duration in minutes",
            json!({"token": "abc", "expiresIn": "PT30M"}).to_string(),
            Lifetime(secs(1800)),
        ),
        (
            "expiresIn as an ISO 8601 duration in days",
            json!({"token": "abc", "expiresIn": "P1D"}).to_string(),
            Lifetime(secs(86_400)),
        ),
        (
            "fractional expiresIn keeps its fraction",
            json!({"token": "abc", "expiresIn": 3600.5}).to_string(),
            Lifetime(Duration::from_millis(3_600_500)),
        ),
        (
            "fractional expiresIn string keeps its fraction",
            json!({"token": "abc", "expiresIn": "0.25"}).to_string(),
            Lifetime(Duration::from_millis(250)),
        ),
        (
            "expiresIn of exactly one year is believed",
            json!({"token": "abc", "expiresIn": MAX_LIFETIME.as_secs()}).to_string(),
            Lifetime(MAX_LIFETIME),
        ),
        (
            "expiresIn null is absent",
            json!({"token": "abc", "expiresIn": null}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "expiresIn empty string is absent",
            json!({"token": "abc", "expiresIn": ""}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "expiresIn 0 is refused",
            json!({"token": "abc", "expiresIn": 0}).to_string(),
            Refused("expiresIn is 0"),
        ),
        (
            "expiresIn \"0\" is refused",
            json!({"token": "abc", "expiresIn": "0"}).to_string(),
            Refused("expiresIn is 0"),
        ),
        (
            "expiresIn PT0S is refused",
            json!({"token": "abc", "expiresIn": "PT0S"}).to_string(),
            Refused("expiresIn is 0"),
        ),
        (
            "negative expiresIn is refused",
            json!({"token": "abc", "expiresIn": -60}).to_string(),
            Refused("expiresIn is negative"),
        ),
        (
            "negative expiresIn string is refused",
            json!({"token": "abc", "expiresIn": "-60"}).to_string(),
            Refused("expiresIn is negative"),
        ),
        (
            "non-numeric expiresIn is refused",
            json!({"token": "abc", "expiresIn": "abc"}).to_string(),
            Refused("expiresIn is neither a number of seconds nor an ISO 8601 duration"),
        ),
        (
            "expiresIn in years has no fixed length and is refused",
            json!({"token": "abc", "expiresIn": "P1Y"}).to_string(),
            Refused("expiresIn is neither"),
        ),
        (
            "expiresIn of ten years is refused",
            json!({"token": "abc", "expiresIn": 10 * 365 * 86_400}).to_string(),
            Refused("expiresIn is 315360000 s, over a year"),
        ),
        (
            "expiresIn one second over a year is refused",
            json!({"token": "abc", "expiresIn": MAX_LIFETIME.as_secs() + 1}).to_string(),
            Refused("over a year"),
        ),
        (
            "an astronomically large expiresIn is refused",
            r#"{"token":"abc","expiresIn":1e300}"#.to_owned(),
            Refused("over a year"),
        ),
        (
            "an expiresIn beyond u64 is refused",
            r#"{"token":"abc","expiresIn":"99999999999999999999999999"}"#.to_owned(),
            Refused("over a year"),
        ),
        (
            "a boolean expiresIn is refused",
            r#"{"token":"abc","expiresIn":true}"#.to_owned(),
            Refused("expiresIn is neither a string nor a number"),
        ),
    ]);
}

#[test]
fn token_and_field_rules() {
    check(vec![
        (
            "unknown fields are ignored",
            json!({
                "token": "abc", "expiresIn": 60, "scope": ["read", "write"],
                "refresh": {"token": "other", "expiresIn": 1}, "Token": "wrong case",
            })
            .to_string(),
            Lifetime(secs(60)),
        ),
        (
            "null fields count as absent",
            json!({"token": "abc", "type": null, "expiresIn": null, "issued": null, "expires": null})
                .to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "a missing token is refused",
            json!({"type": "Bearer", "expiresIn": 60}).to_string(),
            Refused("the response has no token"),
        ),
        (
            "a null token is refused",
            json!({"token": null, "expiresIn": 60}).to_string(),
            Refused("the response has no token"),
        ),
        (
            "an empty token is refused",
            json!({"token": "", "expiresIn": 60}).to_string(),
            Refused("the token is empty"),
        ),
        (
            "a token with surrounding whitespace is refused, not trimmed",
            json!({"token": " abc ", "expiresIn": 60}).to_string(),
            Refused("whitespace"),
        ),
        (
            "a token object is refused",
            json!({"token": {"value": "abc"}}).to_string(),
            Refused("the token is neither a string nor a number"),
        ),
        (
            "a numeric token is accepted",
            json!({"token": 12345, "expiresIn": 60}).to_string(),
            Lifetime(secs(60)),
        ),
        (
            "a numeric type is accepted",
            json!({"token": "abc", "type": 1}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "an array type is refused",
            json!({"token": "abc", "type": ["Bearer"]}).to_string(),
            Refused("type is neither a string nor a number"),
        ),
        (
            "a repeated token field is refused",
            r#"{"token":"first","token":"second"}"#.to_owned(),
            Refused("duplicate field `token`"),
        ),
    ]);
}

#[test]
fn body_rules() {
    check(vec![
        (
            "a body over 64 KiB is refused",
            json!({"token": "abc", "padding": "x".repeat(64 * 1024)}).to_string(),
            Refused("over the 64 KiB limit"),
        ),
        (
            "a body of exactly 64 KiB is read",
            {
                let frame = r#"{"token":"abc","expiresIn":60,"padding":""}"#.len();
                let padding = "x".repeat(64 * 1024 - frame);
                let body = format!(r#"{{"token":"abc","expiresIn":60,"padding":"{padding}"}}"#);
                assert_eq!(body.len(), 64 * 1024);
                body
            },
            Lifetime(secs(60)),
        ),
        (
            "malformed JSON is refused",
            r#"{"token": abc}"#.to_owned(),
            Refused("malformed JSON"),
        ),
        (
            "a JSON array is refused",
            r#"[{"token":"abc"}]"#.to_owned(),
            Refused("not a JSON object"),
        ),
        (
            "a JSON string is refused",
            r#""abc""#.to_owned(),
            Refused("not a JSON object"),
        ),
        (
            "an HTML error page is refused",
            "<html><body>Bad Gateway</body></html>".to_owned(),
            Refused("not a JSON object"),
        ),
        (
            "truncated JSON is refused",
            r#"{"token":"abc","expiresIn":36"#.to_owned(),
            Refused("malformed JSON: EOF"),
        ),
        (
            "trailing data after the object is refused",
            r#"{"token":"abc"}{"token":"def"}"#.to_owned(),
            Refused("trailing characters"),
        ),
        (
            "an empty body is refused",
            String::new(),
            Refused("the body is empty"),
        ),
        (
            "a byte order mark is skipped",
            "\u{feff}{\"token\":\"abc\",\"expiresIn\":60}".to_owned(),
            Lifetime(secs(60)),
        ),
    ]);
}

#[test]
fn lifetime_selection_rules() {
    let issued = "2026-11-28T10:00:00Z";
    check(vec![
        (
            "expires - issued alone is the lifetime",
            json!({"token": "abc", "issued": issued, "expires": "2026-11-28T10:45:00Z"})
                .to_string(),
            Lifetime(secs(2700)),
        ),
        (
            "the JWT's exp - iat alone is the lifetime",
            json!({"token": jwt_for(1800)}).to_string(),
            Lifetime(secs(1800)),
        ),
        (
            "the JWT's exp - iat wins when smaller than expiresIn",
            json!({"token": jwt_for(900), "expiresIn": 3600}).to_string(),
            Lifetime(secs(900)),
        ),
        (
            "expiresIn wins when smaller than the other readings",
            json!({
                "token": jwt_for(7200), "expiresIn": 600,
                "issued": issued, "expires": "2026-11-28T11:00:00Z",
            })
            .to_string(),
            Lifetime(secs(600)),
        ),
        (
            "expires - issued wins when smaller than the other readings",
            json!({
                "token": jwt_for(7200), "expiresIn": 3600,
                "issued": issued, "expires": "2026-11-28T10:20:00Z",
            })
            .to_string(),
            Lifetime(secs(1200)),
        ),
        (
            "expires without issued and without a Date, in our past, is refused",
            json!({"token": "abc", "expires": "2001-01-01T00:00:00Z", "expiresIn": 60}).to_string(),
            Refused("expires is in the past by our clock"),
        ),
        (
            "expires without issued and without a Date, far ahead, is capped at the default",
            json!({"token": "abc", "expires": "2999-01-01T00:00:00Z"}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "expires without issued and without a Date never lengthens another reading",
            json!({"token": "abc", "expires": "2999-01-01T00:00:00Z", "expiresIn": 3600})
                .to_string(),
            Lifetime(secs(3600)),
        ),
        (
            "issued without expires gives no reading",
            json!({"token": "abc", "issued": issued}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "a JWT with exp but no iat, in our past and without a Date, is refused",
            json!({"token": jwt(&json!({"exp": NOV_28_10H}))}).to_string(),
            Refused("the JWT's exp is in the past by our clock"),
        ),
        (
            "a JWT with exp but no iat, far ahead and without a Date, is capped at the default",
            json!({"token": jwt(&json!({"exp": 32_503_680_000_u64}))}).to_string(),
            Lifetime(DEFAULT),
        ),
        (
            "a JWT with float claims is read",
            json!({"token": jwt(&json!({"iat": 1000.5, "exp": 1600.5}))}).to_string(),
            Lifetime(secs(600)),
        ),
        (
            "a token that only looks like a JWT is opaque",
            json!({"token": "aaaa.bbbb.cccc", "expiresIn": 60}).to_string(),
            Lifetime(secs(60)),
        ),
        (
            "expires before issued is refused",
            json!({"token": "abc", "issued": issued, "expires": "2026-11-28T09:00:00Z"})
                .to_string(),
            Refused("expires is before issued"),
        ),
        (
            "expires equal to issued is refused",
            json!({"token": "abc", "issued": issued, "expires": issued}).to_string(),
            Refused("expires equals issued"),
        ),
        (
            "expires before issued is refused even when expiresIn is fine",
            json!({
                "token": "abc", "expiresIn": 60,
                "issued": issued, "expires": "2026-11-28T09:00:00Z",
            })
            .to_string(),
            Refused("expires is before issued"),
        ),
        (
            "expires - issued over a year is refused",
            json!({"token": "abc", "issued": issued, "expires": "2036-11-28T10:00:00Z"})
                .to_string(),
            Refused("expires - issued is"),
        ),
        (
            "a JWT whose exp is before its iat is refused",
            json!({"token": jwt(&json!({"iat": 2000, "exp": 1000})), "expiresIn": 60}).to_string(),
            Refused("the JWT's exp is before its iat"),
        ),
        (
            "a JWT with a huge exp is refused",
            json!({"token": jwt(&json!({"iat": 0, "exp": 1e300})), "expiresIn": 60}).to_string(),
            Refused("the JWT's exp - iat is"),
        ),
        (
            "an unreadable issued is refused",
            json!({"token": "abc", "issued": "yesterday"}).to_string(),
            Refused("issued is not a timestamp"),
        ),
        (
            "an out-of-range expires is refused",
            json!({"token": "abc", "expires": "99999-01-01T00:00:00Z"}).to_string(),
            Refused("expires is not a timestamp"),
        ),
    ]);
}

/// Parses `body` as if its response carried `Date: <date>`.
fn parse_dated(body: &Value, date: SystemTime) -> Result<Token, Error> {
    Token::from_response_body_with_date(body.to_string().as_bytes(), DEFAULT, Some(date))
}

/// `instant` in RFC 3339, and with an offset of `offset_hours`.
fn rfc3339(instant: SystemTime, offset_hours: i8) -> String {
    jiff::Timestamp::try_from(instant)
        .unwrap()
        .display_with_offset(jiff::tz::Offset::constant(offset_hours))
        .to_string()
}

#[test]
fn expires_without_issued_is_read_against_the_servers_date_whatever_its_clock() {
    // The server's clock is an hour behind ours, in step, an hour ahead, or in 1994; its
    // timestamps in UTC or another zone. Every time, `expires` is 30 s after its `Date`.
    let now = SystemTime::now();
    let hour = secs(3600);
    let whole = |t: SystemTime| at(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
    for server_now in [now - hour, now, now + hour, at(784_111_777)] {
        let date = whole(server_now);
        let expires = date + secs(30);
        for offset in [0, 5, -8] {
            let body = json!({"token": "abc", "expires": rfc3339(expires, offset)});
            let token = parse_dated(&body, date).unwrap();
            assert_eq!(token.lifetime(), secs(30), "{body} against {date:?}");
            assert_eq!(token.expires(), Some(expires));
        }
        // The same with an `expiresIn` that is longer: the Date reading is smaller and wins.
        let body = json!({"token": "abc", "expires": rfc3339(expires, 0), "expiresIn": 600});
        assert_eq!(parse_dated(&body, date).unwrap().lifetime(), secs(30));
    }
}

#[test]
fn a_token_expired_by_the_servers_date_is_an_invalid_response_not_a_default_lifetime() {
    let date = at(NOV_28_10H);
    for (expires, detail) in [
        (
            at(NOV_28_10H),
            "expires equals the response's Date: the token has expired",
        ),
        (
            at(NOV_28_10H - 1),
            "expires is before the response's Date: the token has expired",
        ),
        (
            at(NOV_28_10H - 86_400),
            "expires is before the response's Date: the token has expired",
        ),
    ] {
        let body = json!({"token": "abc", "expires": rfc3339(expires, 2), "expiresIn": 3600});
        let err = parse_dated(&body, date).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        assert_eq!(err.detail(), Some(detail));
    }
    // With `issued` beside it, `expires` is measured against `issued`, not the Date.
    let body = json!({
        "token": "abc", "issued": "2026-11-28T09:00:00Z", "expires": "2026-11-28T09:10:00Z",
    });
    assert_eq!(parse_dated(&body, date).unwrap().lifetime(), secs(600));
}

#[test]
fn oauth2_field_names_are_read_as_aliases() {
    let date = at(NOV_28_10H);
    let token = parse_dated(
        &json!({"access_token": "abc", "token_type": "bearer", "expires_in": 900}),
        date,
    )
    .unwrap();
    assert_eq!(token.expose_secret(), "abc");
    assert_eq!(token.token_type(), Some("bearer"));
    assert_eq!(token.lifetime(), secs(900));
    check(vec![
        (
            "expires_in as a string",
            json!({"access_token": "abc", "expires_in": "PT2M"}).to_string(),
            Lifetime(secs(120)),
        ),
        (
            "both token names with the same value",
            json!({"token": "abc", "access_token": "abc", "expiresIn": 60}).to_string(),
            Lifetime(secs(60)),
        ),
        (
            "expiresIn and expires_in are two readings: the smaller wins",
            json!({"token": "abc", "expiresIn": 60, "expires_in": 3600}).to_string(),
            Lifetime(secs(60)),
        ),
        (
            "expires_in is held to the same rules as expiresIn",
            json!({"token": "abc", "expiresIn": 60, "expires_in": 0}).to_string(),
            Refused("expires_in is 0"),
        ),
        (
            "different token and access_token are ambiguous",
            json!({"token": "SECRETone", "access_token": "SECRETtwo"}).to_string(),
            Refused("token and access_token differ"),
        ),
        (
            "different type and token_type are ambiguous",
            json!({"token": "abc", "type": "Bearer", "token_type": "DPoP"}).to_string(),
            Refused("type and token_type differ"),
        ),
        (
            "an access_token of the wrong type is refused",
            json!({"access_token": {"v": 1}}).to_string(),
            Refused("the access_token is neither a string nor a number"),
        ),
        (
            "a null access_token is absent",
            json!({"token": "abc", "access_token": null, "expiresIn": 60}).to_string(),
            Lifetime(secs(60)),
        ),
    ]);
    let both_types =
        parse(json!({"token": "a", "type": "Bearer", "token_type": "bearer"}).to_string());
    assert_eq!(both_types.unwrap().token_type(), Some("Bearer"));
}

#[test]
fn every_timestamp_format_is_read() {
    let expires = NOV_28_10H + 3600;
    let formats: Vec<(&str, Value, SystemTime)> = vec![
        (
            "RFC 3339 with Z",
            json!("2026-11-28T10:00:00Z"),
            at(NOV_28_10H),
        ),
        (
            "RFC 3339 with fractional seconds",
            json!("2026-11-28T10:00:00.250Z"),
            at(NOV_28_10H) + Duration::from_millis(250),
        ),
        (
            "RFC 3339 with an offset",
            json!("2026-11-28T11:30:00+01:30"),
            at(NOV_28_10H),
        ),
        (
            "RFC 3339 with a negative offset",
            json!("2026-11-28T05:00:00-05:00"),
            at(NOV_28_10H),
        ),
        (
            "ISO 8601 without offset is UTC",
            json!("2026-11-28T10:00:00"),
            at(NOV_28_10H),
        ),
        (
            "ISO 8601 with a space is UTC",
            json!("2026-11-28 10:00:00"),
            at(NOV_28_10H),
        ),
        (
            "RFC 2822",
            json!("Sat, 28 Nov 2026 11:00:00 +0100"),
            at(NOV_28_10H),
        ),
        (
            "HTTP-date",
            json!("Sat, 28 Nov 2026 10:00:00 GMT"),
            at(NOV_28_10H),
        ),
        (
            "RFC 850 HTTP-date",
            json!("Saturday, 28-Nov-26 10:00:00 GMT"),
            at(NOV_28_10H),
        ),
        (
            "asctime HTTP-date",
            json!("Sat Nov 28 10:00:00 2026"),
            at(NOV_28_10H),
        ),
        (
            "epoch seconds as a string",
            json!("1795860000"),
            at(NOV_28_10H),
        ),
        (
            "epoch seconds as a number",
            json!(1_795_860_000),
            at(NOV_28_10H),
        ),
        (
            "epoch seconds as a float",
            json!(1_795_860_000.0),
            at(NOV_28_10H),
        ),
        (
            "epoch milliseconds as a string",
            json!("1795860000000"),
            at(NOV_28_10H),
        ),
        (
            "epoch milliseconds as a number",
            json!(1_795_860_000_000_u64),
            at(NOV_28_10H),
        ),
    ];
    let mut failures = Vec::new();
    for (name, issued, want) in formats {
        let body = json!({"token": "abc", "issued": issued, "expires": expires});
        match parse(body.to_string()) {
            Ok(token) if token.issued() == Some(want) => {
                let lifetime = at(expires)
                    .duration_since(want)
                    .expect("issued before expires");
                if token.lifetime() != lifetime {
                    failures.push(format!("{name}: lifetime {:?}", token.lifetime()));
                }
                if token.expires() != Some(at(expires)) {
                    failures.push(format!("{name}: expires {:?}", token.expires()));
                }
            }
            other => failures.push(format!("{name}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn what_the_server_reported_is_kept() {
    let token = parse(
        json!({
            "type": "Bearer", "token": "A90324XXZUZUgpO0dd6npHcM83CJ", "expiresIn": "3600",
            "issued": "2026-11-28T10:00:00Z", "expires": "2026-11-28T11:00:00Z",
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(token.token_type(), Some("Bearer"));
    assert_eq!(token.expose_secret(), "A90324XXZUZUgpO0dd6npHcM83CJ");
    assert_eq!(token.header_value(), "Bearer A90324XXZUZUgpO0dd6npHcM83CJ");
    assert_eq!(token.issued(), Some(at(NOV_28_10H)));
    assert_eq!(token.expires(), Some(at(NOV_28_10H + 3600)));
    assert_eq!(token.lifetime(), secs(3600));

    let numeric = parse(r#"{"token":12345,"type":1}"#).unwrap();
    assert_eq!(numeric.expose_secret(), "12345");
    assert_eq!(numeric.token_type(), Some("1"));
}

#[test]
fn header_injection_is_refused_without_showing_the_token() {
    for token in [
        "SECRETabc\r\nX-Evil: 1",
        "SECRETabc\nX-Evil: 1",
        "SECRETabc\r",
        "SECRET\u{0}abc",
        "SECRET abc",
        "SECRET\tabc",
        "SECRET\u{7f}abc",
        "SECRETé",
    ] {
        let body = json!({"token": token, "expiresIn": 3600}).to_string();
        let err = parse(&body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse, "{token:?}");
        let shown = format!("{err} {err:?} {err:#?}");
        assert!(!shown.contains("SECRET"), "{token:?} leaked: {shown}");
        assert!(!shown.contains("X-Evil"), "{token:?} leaked: {shown}");
    }
}

#[test]
fn other_errors_never_show_the_token() {
    for body in [
        json!({"token": "SECRETjwt.eyJ9.x", "expiresIn": 0}),
        json!({"token": "SECRETabc", "expiresIn": "SECRETabc"}),
        json!({"token": "SECRETabc", "issued": "SECRETabc"}),
        json!({"token": "SECRETabc", "expires": ["SECRETabc"]}),
        json!({"token": ["SECRETabc"]}),
        json!(["SECRETabc"]),
        json!("SECRETabc"),
    ] {
        let err = parse(body.to_string()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("SECRET"), "{body} leaked: {shown}");
    }
    let truncated = r#"{"token":"SECRETabc"#;
    let err = parse(truncated).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("SECRET"));
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Asserts the outcome is a token or an `InvalidResponse` that does not show `secret`.
fn assert_well_behaved(outcome: &Result<Token, Error>, secret: &str) -> Result<(), TestCaseError> {
    match outcome {
        Ok(token) => {
            prop_assert!(!token.lifetime().is_zero());
            prop_assert!(token.lifetime() <= MAX_LIFETIME);
        }
        Err(err) => {
            prop_assert_eq!(err.kind(), ErrorKind::InvalidResponse);
            let shown = format!("{err} {err:?}");
            prop_assert!(!shown.contains(secret), "leaked: {}", shown);
        }
    }
    Ok(())
}

/// Field values of every JSON type, biased towards ones the parser reads.
fn any_field() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-10i64..100_000).prop_map(Value::from),
        (1_000_000_000i64..2_000_000_000_000).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        "[ +-]?[0-9]{0,22}(\\.[0-9]{0,4})?[ ]?".prop_map(Value::from),
        "-?P(T?[0-9]{1,20}[YMWDHS]){1,3}".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,12})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(Value::from),
        "(Mon|Sun), [0-9]{1,2} (Jan|Nov) [0-9]{2,5} [0-9]{2}:[0-9]{2}(:[0-9]{2})? (GMT|[+-][0-9]{4})"
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Tokens that carry a `SECRET` marker, some of them valid, some JWTs, some with bad bytes.
fn any_token() -> impl Strategy<Value = Value> {
    let claim = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (1_000_000_000i64..2_000_000_000).prop_map(Value::from),
        Just(Value::Null),
        "[0-9]{1,12}".prop_map(Value::from),
    ];
    prop_oneof![
        "SECRET[A-Za-z0-9._~+/=-]{0,40}".prop_map(Value::from),
        "SECRET\\PC{0,10}".prop_map(Value::from),
        "SECRET[a-z]{0,4}[\r\n\t \u{0}\u{7f}][a-z]{0,4}".prop_map(Value::from),
        (claim.clone(), claim).prop_map(|(iat, exp)| {
            let token = jwt(&json!({"iat": iat, "exp": exp}));
            Value::from(format!("SECRET{token}"))
        }),
        Just(Value::Null),
        any_field(),
    ]
}

/// One of the five known field names, an unknown one, or a name differing only in case.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("type".to_owned()),
        Just("expiresIn".to_owned()),
        Just("issued".to_owned()),
        Just("expires".to_owned()),
        Just("Token".to_owned()),
        "[a-zA-Z]{1,10}",
    ]
}

/// Renders an epoch-seconds instant in one of the accepted encodings.
fn encode_instant(unix_secs: i64, encoding: u8) -> Value {
    let rfc3339 = || {
        jiff::Timestamp::from_second(unix_secs)
            .map(|ts| ts.to_string())
            .unwrap_or_default()
    };
    match encoding % 5 {
        0 => json!(unix_secs),
        1 => json!(unix_secs.to_string()),
        2 => json!(unix_secs * 1000),
        3 => json!((unix_secs * 1000).to_string()),
        _ => json!(rfc3339()),
    }
}

/// A lifetime reading in seconds: mostly valid, sometimes at or just past the edges.
fn any_reading() -> impl Strategy<Value = i64> {
    let max = i64::try_from(MAX_LIFETIME.as_secs()).unwrap();
    prop_oneof![
        6 => 1..=max,
        1 => 1i64..=120,
        1 => -3i64..=0,
        1 => (max - 2)..=(max + 2),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        assert_well_behaved(&parse(&body), "\u{0}never\u{0}")?;
    }

    #[test]
    fn arbitrary_objects_are_a_token_or_invalid_response(
        token in any_token(),
        fields in prop::collection::vec((any_name(), any_field()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in prop::bool::weighted(0.2),
    ) {
        let mut object = serde_json::Map::new();
        object.insert("token".to_owned(), token);
        for (name, value) in fields {
            object.insert(name, value);
        }
        let mut body = Value::Object(object).to_string().into_bytes();
        if truncate {
            body.truncate(cut.index(body.len() + 1));
        }
        assert_well_behaved(&parse(&body), "SECRET")?;
    }

    #[test]
    fn an_expiry_without_issued_is_read_against_any_server_date(
        date in 1_000_000_000i64..4_000_000_000,
        reading in any_reading(),
        encoding in any::<u8>(),
        expires_in in prop::option::of(any_reading()),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("token".to_owned(), json!("opaque-token"));
        body.insert("expires".to_owned(), encode_instant(date + reading, encoding));
        let mut readings = vec![reading];
        if let Some(expires_in) = expires_in {
            readings.push(expires_in);
            body.insert("expiresIn".to_owned(), json!(expires_in));
        }
        let server_date = SystemTime::UNIX_EPOCH + secs(date.unsigned_abs());
        let outcome = Token::from_response_body_with_date(
            Value::Object(body).to_string().as_bytes(),
            DEFAULT,
            Some(server_date),
        );
        let max = i64::try_from(MAX_LIFETIME.as_secs()).unwrap();
        if readings.iter().all(|&r| 0 < r && r <= max) {
            let token = outcome.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let smallest = readings.iter().min().map(|&r| secs(r.unsigned_abs()));
            prop_assert_eq!(Some(token.lifetime()), smallest);
        } else {
            let err = outcome.err().ok_or_else(|| TestCaseError::fail("accepted a bad reading"))?;
            prop_assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        }
    }

    #[test]
    fn the_lifetime_is_the_smallest_reading(
        expires_in in prop::option::of((any_reading(), any::<bool>())),
        window in prop::option::of((1_000_000_000i64..2_000_000_000, any_reading(), any::<u8>(), any::<u8>())),
        claims in prop::option::of((1_000_000_000i64..2_000_000_000, any_reading(), any::<bool>())),
    ) {
        let mut body = serde_json::Map::new();
        let mut readings = Vec::new();
        let token = match claims {
            Some((iat, lifetime, float)) => {
                readings.push(lifetime);
                let exp = iat + lifetime;
                if float {
                    jwt(&json!({"iat": iat as f64, "exp": exp as f64}))
                } else {
                    jwt(&json!({"iat": iat, "exp": exp}))
                }
            }
            None => "opaque-token".to_owned(),
        };
        body.insert("token".to_owned(), json!(token));
        if let Some((lifetime, as_string)) = expires_in {
            readings.push(lifetime);
            let value = if as_string { json!(lifetime.to_string()) } else { json!(lifetime) };
            body.insert("expiresIn".to_owned(), value);
        }
        if let Some((issued, lifetime, issued_encoding, expires_encoding)) = window {
            readings.push(lifetime);
            body.insert("issued".to_owned(), encode_instant(issued, issued_encoding));
            body.insert("expires".to_owned(), encode_instant(issued + lifetime, expires_encoding));
        }

        let max = i64::try_from(MAX_LIFETIME.as_secs()).unwrap();
        let outcome = parse(Value::Object(body).to_string());
        if readings.iter().all(|&r| 0 < r && r <= max) {
            let token = outcome.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            for &reading in &readings {
                prop_assert!(token.lifetime() <= secs(reading.unsigned_abs()));
            }
            let smallest = readings.iter().min().map_or(DEFAULT, |&r| secs(r.unsigned_abs()));
            prop_assert_eq!(token.lifetime(), smallest);
        } else {
            let err = outcome.err().ok_or_else(|| TestCaseError::fail("accepted a bad reading"))?;
            prop_assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        }
    }
}
