//! Parsing a `/authtoken` response body into a [`Token`].
//!
//! The body is a JSON object `{"type", "token", "expiresIn", "issued", "expires"}`. The parser is
//! lenient in format and strict in meaning:
//!
//! * **Format.** Unknown fields are ignored. Every field may be a JSON string or a JSON number;
//!   `null` and (except for `token`) a blank string count as absent. Any other JSON type (a
//!   boolean, an array, an object) is refused, and so is a field that appears twice.
//! * **`token`** is required and is not trimmed: it must be non-empty visible ASCII, or the
//!   response is refused (a CR/LF would be a header injection). A numeric token is taken as its
//!   JSON text.
//! * **`issued` / `expires`** may be RFC 3339 / ISO 8601 (with or without fractional seconds,
//!   `T` or a space; with `Z` or an offset, or without one and then read as UTC), RFC 2822,
//!   HTTP-date (including its obsolete RFC 850 and asctime forms), or Unix epoch seconds or
//!   milliseconds (see [`EPOCH_MILLIS_FROM`]). A timestamp that is present but unreadable or out
//!   of range is an error: a garbage timestamp means a broken server.
//! * **`expiresIn`** is seconds, as a number or a string (surrounding whitespace ignored,
//!   fractions kept to the nanosecond), or an ISO 8601 duration such as `PT1H` or `P1D` (days are
//!   24 hours; years and months are refused), or a Jiff "friendly" duration such as `1h 30m`.
//! * **JWT.** When the token looks like a JWT, its payload is decoded *without verification* and
//!   numeric `exp` and `iat` claims are read. A token that is not a decodable JWT is simply opaque.
//!
//! The lifetime is the smallest of the available readings — `expiresIn`, `expires - issued`, and
//! the JWT's `exp - iat` — and the caller's default when there is none. Every available reading
//! must be positive and at most [`MAX_LIFETIME`], or the response is refused. The server's clock
//! is never compared with ours: `expires` alone (without `issued`) gives no reading.
//!
//! No error detail ever contains the token, nor any string taken from the body.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::civil::Time;
use jiff::fmt::temporal::Pieces;
use jiff::fmt::{rfc2822, strtime};
use jiff::tz::Offset;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use tokio::time::Instant;

use super::MAX_LIFETIME;
use crate::{Error, Token};

/// The largest response body we accept: 64 KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Epoch numbers whose magnitude is at least 10^11 are milliseconds; smaller ones are seconds.
///
/// 10^11 seconds is the year 5138, while 10^11 milliseconds is March 1973, so every plausible
/// timestamp in either unit falls on the right side of the line.
const EPOCH_MILLIS_FROM: u64 = 100_000_000_000;

/// The RFC 2822 / HTTP-date parser. A wrong weekday is forgiven: the date itself is what counts.
static RFC2822: rfc2822::DateTimeParser = rfc2822::DateTimeParser::new().relaxed_weekday(true);

/// The obsolete HTTP-date forms that RFC 9110 still requires recipients to accept: RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`), both in UTC.
const OBSOLETE_HTTP_DATES: [&str; 2] = ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"];

/// The fields of a token response. A missing field and `null` both become `None`.
#[derive(Deserialize)]
struct RawResponse {
    #[serde(rename = "type")]
    token_type: Option<Value>,
    token: Option<Value>,
    #[serde(rename = "expiresIn")]
    expires_in: Option<Value>,
    issued: Option<Value>,
    expires: Option<Value>,
}

/// A field's value, once absent, `null` and blank fields are set aside.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Text(&'a str),
    Number(&'a Number),
}

/// A number read from JSON or from a decimal string.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Numeric {
    /// An integer; `i128` holds every JSON integer `serde_json` produces (`i64` and `u64`).
    Int(i128),
    /// A finite float.
    Float(f64),
}

/// Where a lifetime reading came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ExpiresIn,
    ExpiresMinusIssued,
    JwtExpMinusIat,
}

/// One statement in the response about how long the token lives.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    source: Source,
    value: SignedDuration,
}

/// Parses a token response body that arrived at `received_at`.
///
/// `default_lifetime` applies when the response says nothing about the token's lifetime. See the
/// [module documentation](self) for the rules.
pub(crate) fn parse_token_response(
    body: &[u8],
    default_lifetime: Duration,
    received_at: Instant,
) -> Result<Token, Error> {
    let raw = parse_body(body)?;
    let value = token_value(raw.token.as_ref())?;
    let token_type = scalar("type", raw.token_type.as_ref())?.map(|s| match s {
        Scalar::Text(text) => text.to_owned(),
        Scalar::Number(number) => number.to_string(),
    });
    let issued = timestamp_field("issued", raw.issued.as_ref())?;
    let expires = timestamp_field("expires", raw.expires.as_ref())?;
    let expires_in = expires_in_field(raw.expires_in.as_ref())?;

    let readings = [
        expires_in.map(|value| Reading {
            source: Source::ExpiresIn,
            value,
        }),
        issued.zip(expires).map(|(issued, expires)| Reading {
            source: Source::ExpiresMinusIssued,
            value: time_between(issued, expires),
        }),
        jwt_lifetime(&value).map(|value| Reading {
            source: Source::JwtExpMinusIat,
            value,
        }),
    ];
    let lifetime = choose_lifetime(readings.into_iter().flatten(), default_lifetime)?;
    Token::from_parts(&value, lifetime, received_at, token_type, issued, expires)
}

/// Checks the body's size and shape and reads its fields.
///
/// A leading UTF-8 byte order mark is skipped. Error details never quote the body: `serde_json`'s
/// syntax errors only name what was expected and where.
fn parse_body(body: &[u8]) -> Result<RawResponse, Error> {
    if body.len() > MAX_BODY {
        return Err(Error::invalid_response(format!(
            "the body of {} bytes is over the {} KiB limit",
            body.len(),
            MAX_BODY / 1024
        )));
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        None => return Err(Error::invalid_response("the body is empty")),
        Some(b'{') => {}
        Some(_) => return Err(Error::invalid_response("the body is not a JSON object")),
    }
    serde_json::from_slice(body).map_err(|e| json_error(&e))
}

/// Describes a JSON error without quoting the input.
fn json_error(error: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let quotes_nothing = match error.classify() {
        // Syntax and end-of-input messages are fixed texts plus a position.
        Category::Syntax | Category::Eof => true,
        // With `Value` fields, the only data error is a repeated field, which names the field
        // (one of ours), never its value. Anything else gets a generic message.
        Category::Data => error.to_string().starts_with("duplicate field"),
        Category::Io => false,
    };
    if quotes_nothing {
        Error::invalid_response(format!("malformed JSON: {error}"))
    } else {
        Error::invalid_response(format!(
            "malformed JSON at line {} column {}",
            error.line(),
            error.column()
        ))
    }
}

/// The token value: required, a string taken as is, or a number taken as its JSON text.
///
/// It is checked later by [`Token::from_parts`].
fn token_value(value: Option<&Value>) -> Result<Cow<'_, str>, Error> {
    match value {
        None | Some(Value::Null) => Err(Error::invalid_response("the response has no token")),
        Some(Value::String(token)) => Ok(Cow::Borrowed(token)),
        Some(Value::Number(number)) => Ok(Cow::Owned(number.to_string())),
        Some(_) => Err(Error::invalid_response(
            "the token is neither a string nor a number",
        )),
    }
}

/// An optional field that must be a string or a number; a blank string counts as absent.
fn scalar<'a>(field: &str, value: Option<&'a Value>) -> Result<Option<Scalar<'a>>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(Scalar::Text(text))),
        Some(Value::Number(number)) => Ok(Some(Scalar::Number(number))),
        Some(_) => Err(Error::invalid_response(format!(
            "{field} is neither a string nor a number"
        ))),
    }
}

/// Reads the timestamp field `field`; present but unreadable is an error.
fn timestamp_field(field: &str, value: Option<&Value>) -> Result<Option<SystemTime>, Error> {
    let parsed = match scalar(field, value)? {
        None => return Ok(None),
        Some(Scalar::Text(text)) => parse_timestamp(text),
        Some(Scalar::Number(number)) => Numeric::from_json(number)
            .and_then(Numeric::to_epoch_timestamp)
            .and_then(|ts| SystemTime::try_from(ts).ok()),
    };
    parsed.map(Some).ok_or_else(|| {
        Error::invalid_response(format!(
            "{field} is not a timestamp in a known format, or out of range"
        ))
    })
}

/// Reads the `expiresIn` field; present but unreadable is an error.
///
/// The sign is kept so that a negative value can be reported as such.
fn expires_in_field(value: Option<&Value>) -> Result<Option<SignedDuration>, Error> {
    let parsed = match scalar("expiresIn", value)? {
        None => return Ok(None),
        Some(Scalar::Text(text)) => parse_expires_in(text),
        Some(Scalar::Number(number)) => Numeric::from_json(number).map(Numeric::to_seconds),
    };
    parsed.map(Some).ok_or_else(|| {
        Error::invalid_response("expiresIn is neither a number of seconds nor an ISO 8601 duration")
    })
}

/// Parses a point in time, as found in `issued`, `expires` or an HTTP-date header.
///
/// Accepted, after trimming surrounding whitespace:
///
/// * Unix epoch seconds or milliseconds as decimal digits, optionally signed and with a
///   fraction; magnitudes of 10^11 and more are milliseconds (see [`EPOCH_MILLIS_FROM`]).
/// * RFC 3339 / ISO 8601, `T` or space separated, fractional seconds optional, with `Z` or a
///   numeric offset; without one it is read as UTC (a bare date is midnight UTC). A time zone
///   name without an offset is refused, since no time zone database is at hand.
/// * RFC 2822 (`Sun, 06 Nov 1994 08:49:37 +0000`), which covers HTTP-date's IMF-fixdate
///   (`... GMT`), and the obsolete RFC 850 and asctime HTTP-date forms.
///
/// Returns `None` for anything else and for instants outside Jiff's range (years -9999 to 9999).
/// A caller that also accepts a delta, such as `Retry-After: 120`, must try the delta first:
/// here `120` means two minutes after the epoch.
pub(crate) fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let timestamp = match Numeric::parse(s) {
        Some(number) => number.to_epoch_timestamp(),
        None => Pieces::parse(s)
            .ok()
            .and_then(|pieces| timestamp_from_pieces(&pieces))
            .or_else(|| RFC2822.parse_timestamp(s).ok())
            .or_else(|| parse_obsolete_http_date(s)),
    }?;
    SystemTime::try_from(timestamp).ok()
}

/// Resolves an ISO 8601 date and time, reading it as UTC when it carries no offset.
fn timestamp_from_pieces(pieces: &Pieces<'_>) -> Option<Timestamp> {
    let offset = match pieces.to_numeric_offset() {
        Some(offset) => offset,
        None if pieces.time_zone_annotation().is_some() => return None,
        None => Offset::UTC,
    };
    let datetime = pieces
        .date()
        .to_datetime(pieces.time().unwrap_or(Time::midnight()));
    offset.to_timestamp(datetime).ok()
}

/// Parses the obsolete HTTP-date forms (RFC 850 and asctime), which are always UTC.
fn parse_obsolete_http_date(s: &str) -> Option<Timestamp> {
    OBSOLETE_HTTP_DATES.iter().find_map(|format| {
        let datetime = strtime::parse(format, s).ok()?.to_datetime().ok()?;
        Offset::UTC.to_timestamp(datetime).ok()
    })
}

/// Parses an `expiresIn` string: seconds, or a duration such as `PT1H`, `P1D` or `1h 30m`.
///
/// Seconds may be signed and fractional (`"3600"`, `" 3600 "`, `"3600.5"`, `"-5"`); durations
/// follow ISO 8601 (days and weeks are taken as 24 hours and 7 days; years and months have no
/// fixed length and are refused) or Jiff's friendly format. The result keeps its sign so that the
/// caller can tell negative from unreadable. Returns `None` when the text is none of these.
pub(crate) fn parse_expires_in(s: &str) -> Option<SignedDuration> {
    let s = s.trim();
    if let Some(number) = Numeric::parse(s) {
        return Some(number.to_seconds());
    }
    s.parse::<SignedDuration>().ok().or_else(|| {
        s.parse::<Span>()
            .ok()?
            .to_duration(SpanRelativeTo::days_are_24_hours())
            .ok()
    })
}

impl Numeric {
    /// Takes a JSON number; `None` only for a non-finite float, which `serde_json` never produces.
    fn from_json(number: &Number) -> Option<Numeric> {
        if let Some(int) = number.as_i64() {
            Some(Numeric::Int(int.into()))
        } else if let Some(int) = number.as_u64() {
            Some(Numeric::Int(int.into()))
        } else {
            number
                .as_f64()
                .filter(|float| float.is_finite())
                .map(Numeric::Float)
        }
    }

    /// Parses a plain decimal: an optional sign, digits, and an optional fraction.
    ///
    /// No exponent, no `inf` or `NaN`, no inner whitespace. Integers too large for `i128` become
    /// floats, so that they still read as "very large" rather than "not a number".
    fn parse(s: &str) -> Option<Numeric> {
        let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        let has_digits = !whole.is_empty() || fraction.is_some_and(|f| !f.is_empty());
        if !has_digits || !all_digits(whole) || !fraction.is_none_or(all_digits) {
            return None;
        }
        if fraction.is_none()
            && let Ok(int) = s.parse::<i128>()
        {
            return Some(Numeric::Int(int));
        }
        s.parse::<f64>()
            .ok()
            .filter(|float| float.is_finite())
            .map(Numeric::Float)
    }

    /// This many seconds as a signed duration, saturating at the duration's bounds.
    fn to_seconds(self) -> SignedDuration {
        let saturated = |negative: bool| {
            if negative {
                SignedDuration::MIN
            } else {
                SignedDuration::MAX
            }
        };
        match self {
            Numeric::Int(int) => {
                i64::try_from(int).map_or_else(|_| saturated(int < 0), SignedDuration::from_secs)
            }
            Numeric::Float(float) => {
                SignedDuration::try_from_secs_f64(float).unwrap_or_else(|_| saturated(float < 0.0))
            }
        }
    }

    /// This number as a Unix epoch time: seconds below 10^11 in magnitude, milliseconds above.
    fn to_epoch_timestamp(self) -> Option<Timestamp> {
        match self {
            Numeric::Int(int) => {
                let int = i64::try_from(int).ok()?;
                if int.unsigned_abs() < EPOCH_MILLIS_FROM {
                    Timestamp::from_second(int).ok()
                } else {
                    Timestamp::from_millisecond(int).ok()
                }
            }
            Numeric::Float(float) => {
                // Exact: 10^11 is well within f64's integer range.
                let seconds = if float.abs() < EPOCH_MILLIS_FROM as f64 {
                    float
                } else {
                    float / 1000.0
                };
                let since_epoch = SignedDuration::try_from_secs_f64(seconds).ok()?;
                Timestamp::from_duration(since_epoch).ok()
            }
        }
    }

    /// The seconds from `self` to `later`, saturating; `later - self`.
    fn seconds_until(self, later: Numeric) -> SignedDuration {
        match (self, later) {
            // Both come from i64 or u64, so the difference fits in i128.
            (Numeric::Int(from), Numeric::Int(to)) => Numeric::Int(to.saturating_sub(from)),
            (from, to) => Numeric::Float(to.as_f64() - from.as_f64()),
        }
        .to_seconds()
    }

    /// The nearest float.
    fn as_f64(self) -> f64 {
        match self {
            Numeric::Int(int) => int as f64,
            Numeric::Float(float) => float,
        }
    }
}

/// `later - earlier`, signed and saturating.
fn time_between(earlier: SystemTime, later: SystemTime) -> SignedDuration {
    let signed =
        |duration: Duration| SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    match later.duration_since(earlier) {
        Ok(forward) => signed(forward),
        Err(backward) => -signed(backward.duration()),
    }
}

/// The JWT's `exp - iat`, read without verification; `None` unless the token is a JWT whose
/// payload has both claims as numbers.
fn jwt_lifetime(token: &str) -> Option<SignedDuration> {
    let claims = jwt_claims(token)?;
    let numeric_claim = |name: &str| match claims.get(name)? {
        Value::Number(number) => Numeric::from_json(number),
        _ => None,
    };
    let exp = numeric_claim("exp")?;
    let iat = numeric_claim("iat")?;
    Some(iat.seconds_until(exp))
}

/// Decodes a JWT's payload, if the token looks like one: three base64url segments separated by
/// dots (the signature may be empty, as in an unsecured JWT), whose middle one decodes to a
/// JSON object. Padding is tolerated.
fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let is_segment = |segment: &str| {
        segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    };
    let mut segments = token.split('.');
    let (header, payload, signature) = (segments.next()?, segments.next()?, segments.next()?);
    if segments.next().is_some()
        || header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature].into_iter().all(is_segment)
    {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&json).ok()
}

impl Reading {
    /// The reading as a lifetime, or an error when it is not positive or is over a year.
    fn lifetime(self) -> Result<Duration, Error> {
        let (name, zero, negative) = match self.source {
            Source::ExpiresIn => ("expiresIn", "expiresIn is 0", "expiresIn is negative"),
            Source::ExpiresMinusIssued => (
                "expires - issued",
                "expires equals issued",
                "expires is before issued",
            ),
            Source::JwtExpMinusIat => (
                "the JWT's exp - iat",
                "the JWT's exp equals its iat",
                "the JWT's exp is before its iat",
            ),
        };
        if self.value.is_zero() {
            return Err(Error::invalid_response(zero));
        }
        if self.value.is_negative() {
            return Err(Error::invalid_response(negative));
        }
        match Duration::try_from(self.value) {
            Ok(lifetime) if lifetime <= MAX_LIFETIME => Ok(lifetime),
            _ => Err(Error::invalid_response(format!(
                "{name} is {} s, over a year",
                self.value.as_secs()
            ))),
        }
    }
}

/// The smallest of the readings, or `default` when there is none.
///
/// Every reading must be positive and at most [`MAX_LIFETIME`]: one that is not means the server
/// is broken, and trusting the others would be guesswork.
fn choose_lifetime(
    readings: impl IntoIterator<Item = Reading>,
    default: Duration,
) -> Result<Duration, Error> {
    readings
        .into_iter()
        .map(Reading::lifetime)
        .try_fold(None, |shortest: Option<Duration>, lifetime| {
            let lifetime = lifetime?;
            Ok(Some(shortest.map_or(lifetime, |s| s.min(lifetime))))
        })
        .map(|shortest| shortest.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// `secs` seconds after the Unix epoch.
    fn epoch(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// `2026-11-28T10:00:00Z`.
    const NOV_28: u64 = 1_795_860_000;

    #[test]
    fn timestamp_formats() {
        let cases: &[(&str, SystemTime)] = &[
            ("2026-11-28T10:00:00Z", epoch(NOV_28)),
            ("2026-11-28T10:00:00z", epoch(NOV_28)),
            (
                "2026-11-28T10:00:00.250Z",
                epoch(NOV_28) + Duration::from_millis(250),
            ),
            ("2026-11-28T12:00:00+02:00", epoch(NOV_28)),
            ("2026-11-28T05:30:00-04:30", epoch(NOV_28)),
            ("2026-11-28T10:00:00+00:00[UTC]", epoch(NOV_28)),
            ("2026-11-28T10:00:00", epoch(NOV_28)),
            ("2026-11-28 10:00:00", epoch(NOV_28)),
            (
                "2026-11-28T10:00:00.5",
                epoch(NOV_28) + Duration::from_millis(500),
            ),
            ("2026-11-28", epoch(NOV_28 - 10 * 3600)),
            ("  2026-11-28T10:00:00Z\n", epoch(NOV_28)),
            ("Sat, 28 Nov 2026 10:00:00 GMT", epoch(NOV_28)),
            ("Sat, 28 Nov 2026 11:00:00 +0100", epoch(NOV_28)),
            // A wrong weekday is forgiven.
            ("Mon, 28 Nov 2026 10:00:00 GMT", epoch(NOV_28)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", epoch(784_111_777)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", epoch(784_111_777)),
            ("Sun Nov  6 08:49:37 1994", epoch(784_111_777)),
            ("1795860000", epoch(NOV_28)),
            ("1795860000000", epoch(NOV_28)),
            ("1795860000.5", epoch(NOV_28) + Duration::from_millis(500)),
            ("+1795860000", epoch(NOV_28)),
            ("0", epoch(0)),
            ("-1", SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_timestamp(text), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn epoch_numbers_switch_to_milliseconds_at_ten_to_the_eleventh() {
        let below = EPOCH_MILLIS_FROM - 1;
        assert_eq!(
            Numeric::Int(below.into()).to_epoch_timestamp(),
            Timestamp::from_second(i64::try_from(below).unwrap()).ok()
        );
        assert_eq!(
            Numeric::Int(EPOCH_MILLIS_FROM.into()).to_epoch_timestamp(),
            Timestamp::from_millisecond(i64::try_from(EPOCH_MILLIS_FROM).unwrap()).ok()
        );
        assert_eq!(
            Numeric::Float(1.0e11).to_epoch_timestamp(),
            Timestamp::from_second(100_000_000).ok()
        );
        assert_eq!(
            Numeric::Int(-1_000_000_000_000).to_epoch_timestamp(),
            Timestamp::from_second(-1_000_000_000).ok()
        );
    }

    #[test]
    fn unreadable_timestamps_are_none() {
        for text in [
            "",
            "   ",
            "soon",
            "2026-13-01T00:00:00Z",
            "2026-11-28T25:00:00Z",
            "2026-11-28T10:00:00[Europe/Berlin]",
            "1e9",
            "inf",
            "NaN",
            "0x10",
            "1 795 860 000",
            "99999999999999999999999999999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "1e300",
            "12345-01-01T00:00:00Z",
            ".",
            "-",
            "+.",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text:?}");
        }
    }

    #[test]
    fn expires_in_forms() {
        let secs = SignedDuration::from_secs;
        let cases: &[(&str, Option<SignedDuration>)] = &[
            ("3600", Some(secs(3600))),
            (" 3600 ", Some(secs(3600))),
            ("+3600", Some(secs(3600))),
            ("3600.5", Some(SignedDuration::from_millis(3_600_500))),
            ("0", Some(secs(0))),
            ("-5", Some(secs(-5))),
            ("PT1H", Some(secs(3600))),
            ("PT30M", Some(secs(1800))),
            ("pt1h30m", Some(secs(5400))),
            ("P1D", Some(secs(86_400))),
            ("P1W", Some(secs(7 * 86_400))),
            ("1h 30m", Some(secs(5400))),
            ("-PT1H", Some(secs(-3600))),
            (
                "99999999999999999999999999999999999999999",
                Some(SignedDuration::MAX),
            ),
            ("P1Y", None),
            ("P1M", None),
            ("abc", None),
            ("", None),
            ("1e3", None),
            ("inf", None),
            ("NaN", None),
            ("36 00", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_expires_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn numbers_become_saturating_seconds() {
        assert_eq!(Numeric::Int(60).to_seconds(), SignedDuration::from_secs(60));
        assert_eq!(Numeric::Int(i128::MAX).to_seconds(), SignedDuration::MAX);
        assert_eq!(Numeric::Int(i128::MIN).to_seconds(), SignedDuration::MIN);
        assert_eq!(Numeric::Float(1e300).to_seconds(), SignedDuration::MAX);
        assert_eq!(Numeric::Float(-1e300).to_seconds(), SignedDuration::MIN);
        assert_eq!(
            Numeric::Float(1.5).to_seconds(),
            SignedDuration::from_millis(1500)
        );
        let big = serde_json::from_str::<Number>("18446744073709551615").unwrap();
        assert_eq!(
            Numeric::from_json(&big),
            Some(Numeric::Int(u64::MAX.into()))
        );
    }

    /// An unsigned JWT with this payload.
    fn jwt(payload: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn jwt_exp_minus_iat() {
        let secs = SignedDuration::from_secs;
        let cases: &[(String, Option<SignedDuration>)] = &[
            (jwt(r#"{"iat":1000,"exp":4600}"#), Some(secs(3600))),
            (
                jwt(r#"{"iat":1000.5,"exp":4600}"#),
                Some(SignedDuration::from_millis(3_599_500)),
            ),
            (jwt(r#"{"iat":4600,"exp":1000}"#), Some(secs(-3600))),
            (jwt(r#"{"iat":0,"exp":1e300}"#), Some(SignedDuration::MAX)),
            (
                jwt(r#"{"iat":-9223372036854775808,"exp":18446744073709551615}"#),
                Some(SignedDuration::MAX),
            ),
            (jwt(r#"{"sub":"x","exp":4600}"#), None),
            (jwt(r#"{"iat":"1000","exp":"4600"}"#), None),
            (jwt(r#"{"iat":null,"exp":4600}"#), None),
            (jwt(r#"[1000,4600]"#), None),
            (jwt("not json"), None),
            // Padding is tolerated.
            (
                format!(
                    "a.{}.s",
                    base64::engine::general_purpose::URL_SAFE.encode(r#"{"iat":1,"exp":61}"#)
                ),
                Some(secs(60)),
            ),
            // An empty signature is an unsecured JWT.
            (
                format!("a.{}.", URL_SAFE_NO_PAD.encode(r#"{"iat":1,"exp":61}"#)),
                Some(secs(60)),
            ),
            ("opaque-token".to_owned(), None),
            ("a.b".to_owned(), None),
            ("a.b.c.d".to_owned(), None),
            (".e30.".to_owned(), None),
            ("a.!!!.c".to_owned(), None),
            (format!("{}.extra", jwt(r#"{"iat":1,"exp":61}"#)), None),
        ];
        for (token, expected) in cases {
            assert_eq!(jwt_lifetime(token), *expected, "{token:?}");
        }
    }

    fn reading(source: Source, secs: i64) -> Reading {
        Reading {
            source,
            value: SignedDuration::from_secs(secs),
        }
    }

    #[test]
    fn the_shortest_reading_wins() {
        let default = Duration::from_secs(300);
        assert_eq!(choose_lifetime([], default).unwrap(), default);
        let readings = [
            reading(Source::ExpiresIn, 3600),
            reading(Source::ExpiresMinusIssued, 1800),
            reading(Source::JwtExpMinusIat, 2700),
        ];
        assert_eq!(
            choose_lifetime(readings, default).unwrap(),
            Duration::from_secs(1800)
        );
        // The default is not a reading: a longer reading is used as is.
        assert_eq!(
            choose_lifetime([reading(Source::JwtExpMinusIat, 7200)], default).unwrap(),
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn lifetime_boundaries() {
        let default = Duration::from_secs(300);
        let max = i64::try_from(MAX_LIFETIME.as_secs()).unwrap();
        assert_eq!(
            choose_lifetime([reading(Source::ExpiresIn, 1)], default).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            choose_lifetime([reading(Source::ExpiresIn, max)], default).unwrap(),
            MAX_LIFETIME
        );
        let just_over = Reading {
            source: Source::ExpiresIn,
            value: SignedDuration::from_secs(max) + SignedDuration::from_nanos(1),
        };
        let tiny = Reading {
            source: Source::ExpiresIn,
            value: SignedDuration::from_nanos(1),
        };
        assert_eq!(
            choose_lifetime([tiny], default).unwrap(),
            Duration::from_nanos(1)
        );
        let refused: &[(&[Reading], &str)] = &[
            (&[just_over], "expiresIn is 31536000 s, over a year"),
            (&[reading(Source::ExpiresIn, 0)], "expiresIn is 0"),
            (&[reading(Source::ExpiresIn, -1)], "expiresIn is negative"),
            (
                &[reading(Source::ExpiresMinusIssued, 0)],
                "expires equals issued",
            ),
            (
                &[reading(Source::ExpiresMinusIssued, -1)],
                "expires is before issued",
            ),
            (
                &[reading(Source::JwtExpMinusIat, -1)],
                "the JWT's exp is before its iat",
            ),
            (
                &[
                    reading(Source::ExpiresIn, 60),
                    reading(Source::JwtExpMinusIat, 0),
                ],
                "the JWT's exp equals its iat",
            ),
            (
                &[
                    reading(Source::ExpiresIn, 60),
                    Reading {
                        source: Source::ExpiresMinusIssued,
                        value: SignedDuration::MAX,
                    },
                ],
                "expires - issued is 9223372036854775807 s, over a year",
            ),
        ];
        for &(readings, detail) in refused {
            let err = choose_lifetime(readings.iter().copied(), default).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidResponse);
            assert_eq!(err.detail(), Some(detail));
        }
    }

    #[test]
    fn time_between_is_signed() {
        assert_eq!(
            time_between(epoch(100), epoch(160)),
            SignedDuration::from_secs(60)
        );
        assert_eq!(
            time_between(epoch(160), epoch(100)),
            SignedDuration::from_secs(-60)
        );
        assert_eq!(time_between(epoch(5), epoch(5)), SignedDuration::ZERO);
    }

    fn parse(body: &str) -> Result<Token, Error> {
        parse_token_response(body.as_bytes(), Duration::from_secs(300), Instant::now())
    }

    fn detail(body: &str) -> String {
        let err = parse(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        err.detail().unwrap_or_default().to_owned()
    }

    #[test]
    fn body_shape() {
        assert_eq!(
            parse("\u{feff} {\"token\":\"t\"}").unwrap().lifetime(),
            Duration::from_secs(300)
        );
        assert_eq!(detail(""), "the body is empty");
        assert_eq!(detail(" \r\n"), "the body is empty");
        assert_eq!(detail("[1]"), "the body is not a JSON object");
        assert_eq!(detail("\"secret\""), "the body is not a JSON object");
        assert!(detail(r#"{"token":"t""#).starts_with("malformed JSON: EOF"));
        assert!(detail(r#"{"token":"t"} x"#).contains("trailing characters"));
        let duplicate = detail(r#"{"token":"first","token":"second"}"#);
        assert!(duplicate.contains("duplicate field `token`"), "{duplicate}");
        assert!(!duplicate.contains("first") && !duplicate.contains("second"));
        let too_big = format!(r#"{{"token":"t","pad":"{}"}}"#, "x".repeat(MAX_BODY));
        assert!(detail(&too_big).contains("over the 64 KiB limit"));
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let depth = MAX_BODY / 2 - 32;
        let nested = |field: &str| {
            format!(
                r#"{{"token":"t","{field}":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        // serde_json skips an unknown field without recursing.
        let ignored = nested("unknown");
        assert!(ignored.len() <= MAX_BODY);
        assert_eq!(
            parse(&ignored).unwrap().lifetime(),
            Duration::from_secs(300)
        );
        // A known field is read as a `Value`, within serde_json's recursion limit.
        let detail = detail(&nested("expiresIn"));
        assert!(detail.contains("recursion limit"), "{detail}");
    }

    #[test]
    fn fields_of_the_wrong_type_are_refused() {
        assert_eq!(
            detail(r#"{"token":true}"#),
            "the token is neither a string nor a number"
        );
        assert_eq!(
            detail(r#"{"token":"t","expiresIn":[60]}"#),
            "expiresIn is neither a string nor a number"
        );
        assert_eq!(
            detail(r#"{"token":"t","type":{}}"#),
            "type is neither a string nor a number"
        );
        assert_eq!(
            detail(r#"{"token":"t","issued":"yesterday"}"#),
            "issued is not a timestamp in a known format, or out of range"
        );
        assert_eq!(
            detail(r#"{"token":"t","expires":1e300}"#),
            "expires is not a timestamp in a known format, or out of range"
        );
    }

    #[test]
    fn blank_optional_fields_are_absent() {
        let token =
            parse(r#"{"token":"t","type":" ","expiresIn":"","issued":"","expires":null}"#).unwrap();
        assert_eq!(token.lifetime(), Duration::from_secs(300));
        assert_eq!(token.token_type(), None);
        assert_eq!(token.issued(), None);
    }
}
