//! Parsing a `/authtoken` response body into a [`Token`].
//!
//! The body is a JSON object `{"type", "token", "expiresIn", "issued", "expires"}`. The parser is
//! lenient in format and strict in meaning:
//!
//! * **Format.** Unknown fields are ignored. Every field may be a JSON string or a JSON number;
//!   `null` and (except for `token`) a blank string count as absent. Any other JSON type (a
//!   boolean, an array, an object) is refused, and so is a field that appears twice.
//! * **OAuth2 names.** `access_token`, `token_type` and `expires_in` are read as aliases of
//!   `token`, `type` and `expiresIn`. A field given under both names must say the same thing:
//!   `token` and `access_token` must be equal, `type` and `token_type` equal ignoring ASCII case
//!   (then `type` is kept), or the response is refused as ambiguous, since we cannot tell which
//!   one the server means. `expiresIn` and `expires_in` are two readings of the lifetime, like any
//!   other (below).
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
//! The lifetime is chosen from every reading the response gives, as the [`token` module
//! docs](super) explain: the smallest positive reading wins.
//!
//! No error detail ever contains the token, nor any string taken from the body. The parsed
//! strings that may hold the token are wiped (zeroed) when they are dropped; see
//! [`SecretValue`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::civil::Time;
use jiff::fmt::temporal::Pieces;
use jiff::fmt::{rfc2822, strtime};
use jiff::tz::Offset;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

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

/// The fields of a token response, under our API's names and the OAuth2 ones. A missing field
/// and `null` both become `None`.
#[derive(Deserialize)]
struct RawResponse {
    #[serde(rename = "type")]
    token_type: Option<Value>,
    #[serde(rename = "token_type")]
    oauth_token_type: Option<Value>,
    token: Option<SecretValue>,
    access_token: Option<SecretValue>,
    #[serde(rename = "expiresIn")]
    expires_in: Option<Value>,
    #[serde(rename = "expires_in")]
    oauth_expires_in: Option<Value>,
    issued: Option<Value>,
    expires: Option<Value>,
}

/// A JSON value that may hold the token: every string in it is zeroed when it is dropped.
///
/// `serde_json` allocates each string of a `Value` to its exact length, so the string's buffer
/// is the only copy this crate makes while parsing; wiping it on drop covers every path out of
/// the parse, errors included. What `serde_json` cannot hand over is its scratch buffer, used
/// only for a string written with JSON escapes (`\/`, `\u0041`): that buffer is freed unwiped.
struct SecretValue(Value);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(SecretValue)
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        wipe_json(&mut self.0);
    }
}

/// Zeroes every string in `value`, in place.
pub(crate) fn wipe_json(value: &mut Value) {
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
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
    OAuthExpiresIn,
    ExpiresMinusIssued,
    ExpiresMinusDate,
    ExpiresMinusLocalClock,
    JwtExpMinusIat,
    JwtExpMinusDate,
    JwtExpMinusLocalClock,
}

impl Source {
    /// Whether the reading compares the server's clock with ours, so that it may only shorten
    /// the lifetime.
    fn is_local(self) -> bool {
        matches!(
            self,
            Source::ExpiresMinusLocalClock | Source::JwtExpMinusLocalClock
        )
    }

    /// Whether the reading is a difference of two timestamps, which may be cut to whole seconds.
    fn is_difference(self) -> bool {
        !matches!(self, Source::ExpiresIn | Source::OAuthExpiresIn)
    }
}

/// What an expiry given without its issue instant is measured against.
#[derive(Debug, Clone, Copy)]
enum Reference {
    /// The response's `Date` header: the server's clock.
    ServerDate(SystemTime),
    /// Our wall clock, for a response without a `Date` header.
    LocalClock(SystemTime),
}

/// One statement in the response about how long the token lives.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    source: Source,
    value: SignedDuration,
    /// Written in whole seconds (an integer, or a timestamp without a fraction), so possibly
    /// cut to them: the token may live up to a second longer.
    whole_seconds: bool,
}

/// Parses a token response body that arrived at `received_at`, with the response's `Date`
/// header (`server_date`) if it had one.
///
/// `default_lifetime` applies when the response says nothing about the token's lifetime. See the
/// [module documentation](self) for the rules.
pub(crate) fn parse_token_response(
    body: &[u8],
    default_lifetime: Duration,
    received_at: Instant,
    server_date: Option<SystemTime>,
) -> Result<Token, Error> {
    let reference = match server_date {
        Some(date) => Reference::ServerDate(date),
        None => Reference::LocalClock(SystemTime::now()),
    };
    parse_with_reference(body, default_lifetime, received_at, reference)
}

/// [`parse_token_response`], with the instant an expiry without an issue instant is measured
/// against given explicitly.
fn parse_with_reference(
    body: &[u8],
    default_lifetime: Duration,
    received_at: Instant,
    reference: Reference,
) -> Result<Token, Error> {
    let raw = parse_body(body)?;
    let value = token_value(
        raw.token.as_ref().map(|v| &v.0),
        raw.access_token.as_ref().map(|v| &v.0),
    )?;
    let token_type = type_field(raw.token_type.as_ref(), raw.oauth_token_type.as_ref())?;
    let issued = timestamp_field("issued", raw.issued.as_ref())?;
    let expires = timestamp_field("expires", raw.expires.as_ref())?;
    let expires_in = expires_in_field("expiresIn", raw.expires_in.as_ref())?;
    let oauth_expires_in = expires_in_field("expires_in", raw.oauth_expires_in.as_ref())?;
    let (jwt_iat, jwt_exp) = jwt_times(&value).unwrap_or_default();

    let reading = |source, value, whole_seconds| Reading {
        source,
        value,
        whole_seconds,
    };
    let readings = [
        expires_in.map(|(value, whole)| reading(Source::ExpiresIn, value, whole)),
        oauth_expires_in.map(|(value, whole)| reading(Source::OAuthExpiresIn, value, whole)),
        match (issued, expires) {
            (Some(issued), Some(expires)) => Some(reading(
                Source::ExpiresMinusIssued,
                time_between(issued, expires),
                epoch_seconds(issued).is_int() || epoch_seconds(expires).is_int(),
            )),
            (None, Some(expires)) => Some(match reference {
                // A `Date` header is always in whole seconds.
                Reference::ServerDate(date) => {
                    reading(Source::ExpiresMinusDate, time_between(date, expires), true)
                }
                Reference::LocalClock(now) => reading(
                    Source::ExpiresMinusLocalClock,
                    time_between(now, expires),
                    epoch_seconds(expires).is_int(),
                ),
            }),
            (_, None) => None,
        },
        match (jwt_iat, jwt_exp) {
            (Some(iat), Some(exp)) => Some(reading(
                Source::JwtExpMinusIat,
                iat.seconds_until(exp),
                iat.is_int() || exp.is_int(),
            )),
            (None, Some(exp)) => Some(match reference {
                Reference::ServerDate(date) => reading(
                    Source::JwtExpMinusDate,
                    epoch_seconds(date).seconds_until(exp),
                    true,
                ),
                Reference::LocalClock(now) => reading(
                    Source::JwtExpMinusLocalClock,
                    epoch_seconds(now).seconds_until(exp),
                    exp.is_int(),
                ),
            }),
            (_, None) => None,
        },
    ];
    let readings: Vec<Reading> = readings.into_iter().flatten().collect();
    let lifetime = choose_lifetime(readings.iter().copied(), default_lifetime)?;
    // How much longer the token may live: a reading in whole seconds may be up to a second
    // short, and the least any reading allows is the latest the expiry can be.
    let latest = readings
        .iter()
        .filter_map(|r| {
            let slack = if r.whole_seconds {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            Some(Duration::try_from(r.value).ok()? + slack)
        })
        .min();
    // At most a second: `Token::from_parts` keeps it so.
    let hidden = latest.map_or(Duration::ZERO, |latest| latest.saturating_sub(lifetime));
    Token::from_parts(
        &value,
        lifetime,
        hidden,
        received_at,
        token_type,
        issued,
        expires,
    )
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

/// The token value: required, under `token` or `access_token` (equal if both are given); a
/// string taken as is, or a number taken as its JSON text.
///
/// The copy returned is wiped when dropped. It is checked later by [`Token::from_parts`].
fn token_value(
    token: Option<&Value>,
    access_token: Option<&Value>,
) -> Result<Zeroizing<String>, Error> {
    let read = |field: &str, value: Option<&Value>| match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => Ok(Some(Zeroizing::new(token.clone()))),
        Some(Value::Number(number)) => {
            // Room for any JSON number's text, so that writing it never reallocates and leaves
            // no unwiped partial copy behind.
            let mut text = Zeroizing::new(String::with_capacity(64));
            let _ = write!(text, "{number}");
            Ok(Some(text))
        }
        Some(_) => Err(Error::invalid_response(format!(
            "the {field} is neither a string nor a number"
        ))),
    };
    match (read("token", token)?, read("access_token", access_token)?) {
        (Some(token), Some(access_token)) if *token != *access_token => Err(
            Error::invalid_response("token and access_token differ: the token is ambiguous"),
        ),
        (Some(token), _) | (None, Some(token)) => Ok(token),
        (None, None) => Err(Error::invalid_response("the response has no token")),
    }
}

/// The token type, under `type` or `token_type` (equal but for ASCII case if both are given;
/// then `type` is kept).
fn type_field(
    token_type: Option<&Value>,
    oauth_token_type: Option<&Value>,
) -> Result<Option<String>, Error> {
    let read = |field: &str, value: Option<&Value>| {
        Ok::<_, Error>(scalar(field, value)?.map(|s| match s {
            Scalar::Text(text) => text.to_owned(),
            Scalar::Number(number) => number.to_string(),
        }))
    };
    match (
        read("type", token_type)?,
        read("token_type", oauth_token_type)?,
    ) {
        (Some(a), Some(b)) if !a.trim().eq_ignore_ascii_case(b.trim()) => Err(
            Error::invalid_response("type and token_type differ: the token type is ambiguous"),
        ),
        (a, b) => Ok(a.or(b)),
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

/// Reads the `expiresIn` field (or its alias `field`); present but unreadable is an error.
///
/// The sign is kept so that a negative value can be reported as such.
///
/// With the duration, whether it was written in whole seconds: without a fraction.
fn expires_in_field(
    field: &str,
    value: Option<&Value>,
) -> Result<Option<(SignedDuration, bool)>, Error> {
    let parsed = match scalar(field, value)? {
        None => return Ok(None),
        Some(Scalar::Text(text)) => {
            parse_expires_in(text).map(|value| (value, !text.contains(['.', ','])))
        }
        Some(Scalar::Number(number)) => {
            Numeric::from_json(number).map(|n| (n.to_seconds(), n.is_int()))
        }
    };
    parsed.map(Some).ok_or_else(|| {
        Error::invalid_response(format!(
            "{field} is neither a number of seconds nor an ISO 8601 duration"
        ))
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

    /// Whether it was written as an integer.
    fn is_int(self) -> bool {
        matches!(self, Numeric::Int(_))
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

/// An instant as seconds since the Unix epoch, to measure a JWT's `exp` against.
fn epoch_seconds(instant: SystemTime) -> Numeric {
    let since_epoch = time_between(SystemTime::UNIX_EPOCH, instant);
    if since_epoch.subsec_nanos() == 0 {
        Numeric::Int(since_epoch.as_secs().into())
    } else {
        Numeric::Float(since_epoch.as_secs_f64())
    }
}

/// The JWT's numeric `iat` and `exp` claims (seconds since the epoch), read without
/// verification; `None` unless the token is a JWT, and each claim `None` unless it is a number.
fn jwt_times(token: &str) -> Option<(Option<Numeric>, Option<Numeric>)> {
    let claims = jwt_claims(token)?;
    let numeric_claim = |name: &str| match claims.get(name)? {
        Value::Number(number) => Numeric::from_json(number),
        _ => None,
    };
    Some((numeric_claim("iat"), numeric_claim("exp")))
}

/// The JWT's `exp - iat`, read without verification; `None` unless the token is a JWT whose
/// payload has both claims as numbers.
#[cfg(test)]
fn jwt_lifetime(token: &str) -> Option<SignedDuration> {
    let (iat, exp) = jwt_times(token)?;
    Some(iat?.seconds_until(exp?))
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
            Source::OAuthExpiresIn => ("expires_in", "expires_in is 0", "expires_in is negative"),
            Source::ExpiresMinusIssued => (
                "expires - issued",
                "expires equals issued",
                "expires is before issued",
            ),
            Source::ExpiresMinusDate => (
                "expires - the response's Date",
                "expires equals the response's Date: the token has expired",
                "expires is before the response's Date: the token has expired",
            ),
            Source::ExpiresMinusLocalClock => (
                "expires - our clock's now",
                "expires is now by our clock (the response has no Date header)",
                "expires is in the past by our clock (the response has no Date header)",
            ),
            Source::JwtExpMinusIat => (
                "the JWT's exp - iat",
                "the JWT's exp equals its iat",
                "the JWT's exp is before its iat",
            ),
            Source::JwtExpMinusDate => (
                "the JWT's exp - the response's Date",
                "the JWT's exp equals the response's Date: the token has expired",
                "the JWT's exp is before the response's Date: the token has expired",
            ),
            Source::JwtExpMinusLocalClock => (
                "the JWT's exp - our clock's now",
                "the JWT's exp is now by our clock (the response has no Date header)",
                "the JWT's exp is in the past by our clock (the response has no Date header)",
            ),
        };
        if self.value.is_zero() {
            // In whole seconds, `0` is anything under a second: the token is at its end, not
            // unusable from the start, and the server may have a new one a second later.
            return Err(if self.whole_seconds && !self.source.is_local() {
                Error::under_a_second_left(zero)
            } else {
                Error::invalid_response(zero)
            });
        }
        if self.value.is_negative() {
            return Err(Error::invalid_response(negative));
        }
        match Duration::try_from(self.value) {
            Ok(lifetime) if lifetime <= MAX_LIFETIME => Ok(lifetime),
            // Our clock far behind the server's (a device without a real-time clock) is no
            // reason to refuse: a local reading only ever shortens, so a long one just says
            // nothing.
            _ if self.source.is_local() => Ok(MAX_LIFETIME),
            _ => Err(Error::invalid_response(format!(
                "{name} is {} s, over a year",
                self.value.as_secs()
            ))),
        }
    }
}

/// The smallest of the readings; `default` when there is none.
///
/// Every reading must be positive and at most [`MAX_LIFETIME`]: one that is not means the server
/// is broken (or the token already expired), and trusting the others would be guesswork. A
/// reading against our own clock ([`Source::is_local`]) may only shorten the lifetime: alone,
/// it is capped at `default`.
fn choose_lifetime(
    readings: impl IntoIterator<Item = Reading>,
    default: Duration,
) -> Result<Duration, Error> {
    let readings: Vec<Reading> = readings.into_iter().collect();
    // Timestamps in whole seconds that are equal say "under a second", not "zero": when an
    // `expiresIn` under a second agrees, that difference is no reading at all. (A server that
    // binds new tokens to a session's expiry answers a login in the session's last second so.)
    let sub_second_expires_in = readings.iter().any(|r| {
        matches!(r.source, Source::ExpiresIn | Source::OAuthExpiresIn)
            && r.value.is_positive()
            && r.value < SignedDuration::from_secs(1)
    });
    let (mut server, mut local) = (None::<Duration>, None::<Duration>);
    for reading in readings {
        if sub_second_expires_in && reading.value.is_zero() && reading.source.is_difference() {
            continue;
        }
        let lifetime = reading.lifetime()?;
        let shortest = if reading.source.is_local() {
            &mut local
        } else {
            &mut server
        };
        *shortest = Some(shortest.map_or(lifetime, |s| s.min(lifetime)));
    }
    Ok(match (server, local) {
        (Some(server), local) => local.map_or(server, |local| server.min(local)),
        (None, Some(local)) => local.min(default),
        (None, None) => default,
    })
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
            whole_seconds: true,
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
    fn equal_whole_second_timestamps_defer_to_a_sub_second_expires_in() {
        let default = Duration::from_secs(300);
        let zero = reading(Source::ExpiresMinusIssued, 0);
        let short = Reading {
            source: Source::ExpiresIn,
            value: SignedDuration::from_millis(300),
            whole_seconds: false,
        };
        assert_eq!(
            choose_lifetime([short, zero], default).unwrap(),
            Duration::from_millis(300),
            "the session's last second: under a second, as expiresIn says"
        );
        // Alone, or against an expiresIn of a second or more, equal timestamps are refused.
        assert!(choose_lifetime([zero], default).is_err());
        assert!(choose_lifetime([reading(Source::ExpiresIn, 5), zero], default).is_err());
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
            whole_seconds: false,
        };
        let tiny = Reading {
            source: Source::ExpiresIn,
            value: SignedDuration::from_nanos(1),
            whole_seconds: false,
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
                        whole_seconds: false,
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
        parse_token_response(
            body.as_bytes(),
            Duration::from_secs(300),
            Instant::now(),
            None,
        )
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

    /// Parses `body` as if it arrived with `reference` for an expiry without an issue instant.
    fn parse_against(body: &str, reference: Reference) -> Result<Duration, Error> {
        parse_with_reference(
            body.as_bytes(),
            Duration::from_secs(300),
            Instant::now(),
            reference,
        )
        .map(|token| token.lifetime())
    }

    #[test]
    fn a_lifetime_written_in_whole_seconds_may_hide_up_to_a_second_more() {
        let date = Reference::ServerDate(epoch(NOV_28));
        let local = Reference::LocalClock(epoch(NOV_28) + Duration::from_millis(250));
        let read = |body: &str, reference| {
            parse_with_reference(
                body.as_bytes(),
                Duration::from_secs(300),
                Instant::now(),
                reference,
            )
            .map(|token| (token.lifetime(), token.hidden_life()))
            .unwrap()
        };
        let (secs, ms) = (Duration::from_secs, Duration::from_millis);
        let cases: &[(&str, Reference, (Duration, Duration))] = &[
            // `expiresIn`/`expires_in` as written: an integer may have been rounded down.
            (
                r#"{"token":"t","expiresIn":"63"}"#,
                date,
                (secs(63), secs(1)),
            ),
            (r#"{"token":"t","expiresIn":63}"#, date, (secs(63), secs(1))),
            (
                r#"{"access_token":"t","expires_in":63}"#,
                date,
                (secs(63), secs(1)),
            ),
            (
                r#"{"token":"t","expiresIn":"PT63S"}"#,
                date,
                (secs(63), secs(1)),
            ),
            (
                r#"{"token":"t","expiresIn":"63.285"}"#,
                date,
                (ms(63_285), ms(0)),
            ),
            (
                r#"{"token":"t","expiresIn":600.0}"#,
                date,
                (secs(600), ms(0)),
            ),
            // Timestamps: `Date` has whole seconds, and so may `issued` and `expires`.
            (
                r#"{"token":"t","expires":"2026-11-28T10:01:03Z"}"#,
                date,
                (secs(63), secs(1)),
            ),
            (
                r#"{"token":"t","issued":"2026-11-28T10:00:00.5Z","expires":"2026-11-28T10:01:03.5Z"}"#,
                date,
                (secs(63), ms(0)),
            ),
            (
                r#"{"token":"t","expires":"2026-11-28T10:01:03.75Z"}"#,
                local,
                (ms(63_500), ms(0)),
            ),
            // The shortest reading is the lifetime, the least any reading allows the latest.
            (
                r#"{"token":"t","expiresIn":"62.5","expires":"2026-11-28T10:01:03Z"}"#,
                date,
                (ms(62_500), ms(0)),
            ),
            (
                r#"{"token":"t","expiresIn":"63","issued":"2026-11-28T10:00:00.5Z","expires":"2026-11-28T10:01:03.8Z"}"#,
                date,
                (secs(63), ms(300)),
            ),
            // No reading: the default is the caller's, taken as exact.
            (r#"{"token":"t"}"#, date, (secs(300), ms(0))),
        ];
        for (body, reference, expected) in cases {
            assert_eq!(read(body, *reference), *expected, "{body}");
        }
    }

    #[test]
    fn a_lifetime_of_0_in_whole_seconds_is_a_token_in_its_last_second() {
        let date = Reference::ServerDate(epoch(NOV_28));
        let refused = |body: &str| {
            parse_with_reference(
                body.as_bytes(),
                Duration::from_secs(300),
                Instant::now(),
                date,
            )
            .unwrap_err()
        };
        for body in [
            r#"{"token":"t","expiresIn":"0"}"#,
            r#"{"access_token":"t","expires_in":0}"#,
            r#"{"token":"t","expires":"2026-11-28T10:00:00Z"}"#,
        ] {
            let error = refused(body);
            assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{body}");
            assert!(error.is_under_a_second_left(), "{body}: {error:?}");
        }
        // Written with a fraction, zero is zero: no token at all.
        for body in [
            r#"{"token":"t","expiresIn":"0.0"}"#,
            r#"{"token":"t","expiresIn":0.0}"#,
        ] {
            assert!(!refused(body).is_under_a_second_left(), "{body}");
        }
    }

    #[test]
    fn expires_without_issued_is_measured_against_the_servers_date_whatever_its_offset() {
        // The server's clock is an hour behind ours, in step, or an hour ahead: only
        // `expires - Date` counts, so the lifetime is 30 s every time.
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        for date in [now - hour, now, now + hour] {
            let date = date
                - Duration::from_nanos(u64::from(
                    date.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .subsec_nanos(),
                ));
            let expires = date + Duration::from_secs(30);
            let expires_text = jiff::Timestamp::try_from(expires).unwrap().to_string();
            let expires_epoch = expires.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            for body in [
                format!(r#"{{"token":"t","expires":"{expires_text}"}}"#),
                format!(r#"{{"token":"t","expires":{}}}"#, expires_epoch.as_secs()),
                format!(
                    r#"{{"token":"{}"}}"#,
                    jwt(&format!(r#"{{"exp":{}}}"#, expires_epoch.as_secs()))
                ),
            ] {
                let token = parse_token_response(
                    body.as_bytes(),
                    Duration::from_secs(300),
                    Instant::now(),
                    Some(date),
                )
                .unwrap();
                assert_eq!(token.lifetime(), Duration::from_secs(30), "{body}");
            }
        }
    }

    #[test]
    fn a_token_that_expired_by_the_servers_date_is_refused() {
        let date = Reference::ServerDate(epoch(NOV_28));
        let at_date = r#"{"token":"t","expires":"2026-11-28T10:00:00Z","expiresIn":60}"#;
        let err = parse_against(at_date, date).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        assert_eq!(
            err.detail(),
            Some("expires equals the response's Date: the token has expired")
        );
        let before = r#"{"token":"t","expires":"2026-11-28T09:59:59Z"}"#;
        assert_eq!(
            parse_against(before, date).unwrap_err().detail(),
            Some("expires is before the response's Date: the token has expired")
        );
        // `issued` takes precedence over Date as what `expires` is measured against.
        let with_issued =
            r#"{"token":"t","issued":"2026-11-28T09:00:00Z","expires":"2026-11-28T09:30:00Z"}"#;
        assert_eq!(
            parse_against(with_issued, date).unwrap(),
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn without_a_date_our_clock_may_only_shorten_the_lifetime() {
        let now = Reference::LocalClock(epoch(NOV_28));
        // Alone, a local reading is capped at the default lifetime (300 s here) ...
        let far = r#"{"token":"t","expires":"2026-11-28T12:00:00Z"}"#;
        assert_eq!(parse_against(far, now).unwrap(), Duration::from_secs(300));
        // ... shortens it when it is shorter ...
        let near = r#"{"token":"t","expires":"2026-11-28T10:00:30Z"}"#;
        assert_eq!(parse_against(near, now).unwrap(), Duration::from_secs(30));
        // ... never lengthens another reading ...
        let longer = r#"{"token":"t","expires":"2026-11-28T12:00:00Z","expiresIn":600}"#;
        assert_eq!(
            parse_against(longer, now).unwrap(),
            Duration::from_secs(600)
        );
        // ... and shortens one.
        let shorter = r#"{"token":"t","expires":"2026-11-28T10:01:00Z","expiresIn":600}"#;
        assert_eq!(
            parse_against(shorter, now).unwrap(),
            Duration::from_secs(60)
        );
        let past = r#"{"token":"t","expires":"2026-11-28T09:00:00Z","expiresIn":600}"#;
        assert_eq!(
            parse_against(past, now).unwrap_err().detail(),
            Some("expires is in the past by our clock (the response has no Date header)")
        );
    }

    #[test]
    fn a_jwt_exp_without_iat_is_measured_like_expires() {
        let token = jwt(&format!(r#"{{"exp":{}}}"#, NOV_28 + 90));
        let body = format!(r#"{{"token":"{token}"}}"#);
        assert_eq!(
            parse_against(&body, Reference::ServerDate(epoch(NOV_28))).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_against(&body, Reference::ServerDate(epoch(NOV_28 + 90)))
                .unwrap_err()
                .detail(),
            Some("the JWT's exp equals the response's Date: the token has expired")
        );
        assert_eq!(
            parse_against(&body, Reference::LocalClock(epoch(NOV_28))).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_against(&body, Reference::LocalClock(epoch(NOV_28 + 100)))
                .unwrap_err()
                .detail(),
            Some("the JWT's exp is in the past by our clock (the response has no Date header)")
        );
    }

    #[test]
    fn oauth2_names_are_aliases_and_must_agree() {
        let date = Reference::ServerDate(epoch(NOV_28));
        let oauth = r#"{"access_token":"t","token_type":"bearer","expires_in":120}"#;
        let token = parse_with_reference(
            oauth.as_bytes(),
            Duration::from_secs(300),
            Instant::now(),
            date,
        )
        .unwrap();
        assert_eq!(token.expose_secret(), "t");
        assert_eq!(token.token_type(), Some("bearer"));
        assert_eq!(token.lifetime(), Duration::from_secs(120));
        // Both names, the same meaning: accepted; `type` is kept.
        let both = r#"{"token":"t","access_token":"t","type":"Bearer","token_type":"bearer"}"#;
        let token = parse(both).unwrap();
        assert_eq!(token.token_type(), Some("Bearer"));
        // Two lifetimes are two readings: the smaller wins.
        let two = r#"{"token":"t","expiresIn":600,"expires_in":"60"}"#;
        assert_eq!(parse(two).unwrap().lifetime(), Duration::from_secs(60));
        assert_eq!(
            detail(r#"{"token":"SECRETa","access_token":"SECRETb"}"#),
            "token and access_token differ: the token is ambiguous"
        );
        assert_eq!(
            detail(r#"{"token":"t","type":"Bearer","token_type":"MAC"}"#),
            "type and token_type differ: the token type is ambiguous"
        );
        assert_eq!(
            detail(r#"{"token":"t","expires_in":-1}"#),
            "expires_in is negative"
        );
        assert_eq!(
            detail(r#"{"access_token":[]}"#),
            "the access_token is neither a string nor a number"
        );
    }

    #[test]
    fn a_local_reading_alone_is_capped_at_the_default() {
        let default = Duration::from_secs(300);
        let local = |secs| reading(Source::ExpiresMinusLocalClock, secs);
        assert_eq!(choose_lifetime([local(3600)], default).unwrap(), default);
        assert_eq!(
            choose_lifetime([local(30)], default).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            choose_lifetime([local(3600), reading(Source::ExpiresIn, 900)], default).unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(
            choose_lifetime([local(60), reading(Source::ExpiresIn, 900)], default).unwrap(),
            Duration::from_secs(60)
        );
        // Decades ahead by our clock (ours is far behind): no error, and still capped.
        assert_eq!(
            choose_lifetime([local(i64::MAX)], default).unwrap(),
            default
        );
    }

    #[test]
    fn wipe_json_empties_every_string() {
        // `zeroize` zeroes a string's whole buffer and then empties it; that the bytes are
        // zeroed before the buffer is freed is checked by an allocator in `tests/wipe.rs`.
        let mut value = SecretValue(Value::String("SECRET".to_owned()));
        wipe_json(&mut value.0);
        assert_eq!(value.0, Value::String(String::new()));
        let mut nested: Value =
            serde_json::from_str(r#"{"a":["SECRET",{"b":"xy"}],"n":1}"#).unwrap();
        wipe_json(&mut nested);
        assert_eq!(nested, serde_json::json!({"a": ["", {"b": ""}], "n": 1}));
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
