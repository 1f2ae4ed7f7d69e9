//! The reference server's wall clock, and how it writes points in time.

use std::time::{Duration, SystemTime};

use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

use super::TimestampFormat;

/// The server's wall clock: the system time when the server started, advanced by Tokio's clock
/// since then, plus a deliberate offset from ours.
///
/// Following Tokio's clock keeps `issued`, `expires` and `Date` consistent with the instants at
/// which the server expires tokens, also when a test pauses or advances the clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct WallClock {
    started_at: Instant,
    started_wall: Timestamp,
    /// How far ahead of ours the server's clock is (negative: behind).
    pub(super) offset: SignedDuration,
}

impl WallClock {
    pub(super) fn start(offset: SignedDuration) -> WallClock {
        WallClock {
            started_at: Instant::now(),
            started_wall: Timestamp::try_from(SystemTime::now()).unwrap_or(Timestamp::UNIX_EPOCH),
            offset,
        }
    }

    /// The server's wall-clock time at `now` (a Tokio instant).
    pub(super) fn at(&self, now: Instant) -> Timestamp {
        let elapsed = now.saturating_duration_since(self.started_at);
        let elapsed = SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX);
        let shift = elapsed.saturating_add(self.offset);
        self.started_wall
            .checked_add(shift)
            .unwrap_or(if shift.is_negative() {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            })
    }
}

/// The longest clock offset the server accepts: about 100 years.
pub(super) const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `by` ahead (or behind) of ours, as a signed offset.
///
/// # Panics
///
/// If `by` is more than [`MAX_CLOCK_OFFSET`].
pub(super) fn clock_offset(by: Duration, ahead: bool) -> SignedDuration {
    assert!(
        by <= MAX_CLOCK_OFFSET,
        "ReferenceServer: a clock offset of {by:?} is more than 100 years"
    );
    let offset = SignedDuration::try_from(by).expect("at most 100 years fits");
    if ahead { offset } else { -offset }
}

/// The offset, `minutes` east of UTC, that timestamps are written in.
///
/// # Panics
///
/// If `minutes` is not within `-1439..=1439` (less than a day either way).
pub(super) fn utc_offset(minutes: i32) -> Offset {
    assert!(
        minutes.abs() < 24 * 60,
        "ReferenceServer: a UTC offset must be less than a day, not {minutes} minutes"
    );
    Offset::from_seconds(minutes * 60).expect("less than a day is a valid offset")
}

/// Whether `format` writes milliseconds; the others write whole seconds.
pub(super) fn millis_precision(format: TimestampFormat) -> bool {
    matches!(
        format,
        TimestampFormat::Rfc3339Millis | TimestampFormat::EpochMillis
    )
}

/// `timestamp` cut (rounded down) to whole milliseconds or whole seconds.
pub(super) fn round_down(timestamp: Timestamp, millis: bool) -> Timestamp {
    let rounded = if millis {
        Timestamp::from_millisecond(timestamp.as_millisecond())
    } else {
        Timestamp::from_second(timestamp.as_second())
    };
    rounded.unwrap_or(timestamp)
}

/// `timestamp` rounded up to whole milliseconds or whole seconds.
pub(super) fn round_up(timestamp: Timestamp, millis: bool) -> Timestamp {
    let nanos = timestamp.as_nanosecond();
    let unit: i128 = if millis { 1_000_000 } else { 1_000_000_000 };
    let rounded =
        nanos.div_euclid(unit) * unit + if nanos.rem_euclid(unit) == 0 { 0 } else { unit };
    Timestamp::from_nanosecond(rounded).unwrap_or(timestamp)
}

/// `timestamp` in `format`, at `offset` from UTC where the format has a place for it.
///
/// RFC 3339 writes the offset (`+05:30`, or `Z` for UTC); [`TimestampFormat::Iso8601NoOffset`]
/// writes the civil time at that offset with no marker, as a server that writes its local time
/// does; HTTP dates and epoch numbers ignore the offset.
pub(super) fn format_timestamp(
    timestamp: Timestamp,
    format: TimestampFormat,
    offset: Offset,
    numeric: bool,
) -> serde_json::Value {
    let civil = offset.to_datetime(timestamp);
    let text = match format {
        TimestampFormat::Rfc3339 => {
            format!(
                "{}{}",
                civil.strftime("%Y-%m-%dT%H:%M:%S"),
                offset_text(offset)
            )
        }
        TimestampFormat::Rfc3339Millis => format!(
            "{}{}",
            civil.strftime("%Y-%m-%dT%H:%M:%S%.3f"),
            offset_text(offset)
        ),
        TimestampFormat::Iso8601NoOffset => civil.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
        TimestampFormat::HttpDate => http_date(timestamp),
        TimestampFormat::EpochSeconds => {
            return number_or_string(timestamp.as_second().into(), numeric);
        }
        TimestampFormat::EpochMillis => {
            return number_or_string(timestamp.as_millisecond().into(), numeric);
        }
    };
    serde_json::Value::String(text)
}

/// An HTTP date (RFC 9110), always in GMT: `Wed, 01 May 2024 12:00:00 GMT`.
pub(super) fn http_date(timestamp: Timestamp) -> String {
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&timestamp)
        .expect("a timestamp within jiff's range prints as an HTTP date")
}

/// `Z` for UTC, `+05:30` or `-08:00` otherwise.
fn offset_text(offset: Offset) -> String {
    let seconds = offset.seconds();
    if seconds == 0 {
        return "Z".to_owned();
    }
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

pub(super) fn number_or_string(number: serde_json::Number, numeric: bool) -> serde_json::Value {
    if numeric {
        serde_json::Value::Number(number)
    } else {
        serde_json::Value::String(number.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_in_every_format() {
        let ts = Timestamp::from_millisecond(1_714_564_800_123).unwrap();
        let cases = [
            (TimestampFormat::Rfc3339, "2024-05-01T12:00:00Z"),
            (TimestampFormat::Rfc3339Millis, "2024-05-01T12:00:00.123Z"),
            (TimestampFormat::Iso8601NoOffset, "2024-05-01T12:00:00"),
            (TimestampFormat::HttpDate, "Wed, 01 May 2024 12:00:00 GMT"),
            (TimestampFormat::EpochSeconds, "1714564800"),
            (TimestampFormat::EpochMillis, "1714564800123"),
        ];
        for (format, expected) in cases {
            assert_eq!(
                format_timestamp(ts, format, Offset::UTC, false),
                serde_json::Value::String(expected.to_owned()),
                "{format:?}"
            );
        }
        assert_eq!(
            format_timestamp(ts, TimestampFormat::EpochSeconds, Offset::UTC, true),
            serde_json::json!(1_714_564_800)
        );
    }

    #[test]
    fn timestamps_carry_a_non_utc_offset_where_the_format_has_one() {
        let ts = Timestamp::from_millisecond(1_714_564_800_123).unwrap();
        let cases = [
            (330, TimestampFormat::Rfc3339, "2024-05-01T17:30:00+05:30"),
            (-480, TimestampFormat::Rfc3339, "2024-05-01T04:00:00-08:00"),
            (-570, TimestampFormat::Rfc3339, "2024-05-01T02:30:00-09:30"),
            (
                330,
                TimestampFormat::Rfc3339Millis,
                "2024-05-01T17:30:00.123+05:30",
            ),
            // A server writing its local time without saying so.
            (330, TimestampFormat::Iso8601NoOffset, "2024-05-01T17:30:00"),
            (
                330,
                TimestampFormat::HttpDate,
                "Wed, 01 May 2024 12:00:00 GMT",
            ),
            (330, TimestampFormat::EpochSeconds, "1714564800"),
        ];
        for (minutes, format, expected) in cases {
            assert_eq!(
                format_timestamp(ts, format, utc_offset(minutes), false),
                serde_json::json!(expected),
                "{minutes} {format:?}"
            );
            if matches!(
                format,
                TimestampFormat::Rfc3339 | TimestampFormat::Rfc3339Millis
            ) {
                let back: Timestamp = expected.parse().unwrap();
                assert_eq!(
                    back,
                    round_down(ts, format == TimestampFormat::Rfc3339Millis)
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "less than a day")]
    fn a_utc_offset_of_a_day_panics() {
        utc_offset(-24 * 60);
    }

    #[test]
    #[should_panic(expected = "more than 100 years")]
    fn a_clock_offset_beyond_a_century_panics() {
        clock_offset(Duration::MAX, true);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_follows_tokios_clock_and_its_offset() {
        let clock = WallClock::start(clock_offset(Duration::from_secs(3600), false));
        let start = clock.at(Instant::now());
        let ours = Timestamp::try_from(SystemTime::now()).unwrap();
        let behind = ours.duration_since(start);
        assert!(
            (SignedDuration::from_secs(3599)..=SignedDuration::from_secs(3601)).contains(&behind),
            "{behind:?}"
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            clock.at(Instant::now()).duration_since(start),
            SignedDuration::from_millis(1500)
        );
    }

    #[test]
    fn rounding_cuts_down_or_up_to_the_formats_precision() {
        let ts = |ms: i64| Timestamp::from_millisecond(ms).unwrap();
        assert_eq!(round_up(ts(5_000), false), ts(5_000));
        assert_eq!(round_up(ts(5_001), false), ts(6_000));
        assert_eq!(round_up(ts(5_001), true), ts(5_001));
        let nanos = Timestamp::from_nanosecond(5_000_000_001).unwrap();
        assert_eq!(round_up(nanos, true), ts(5_001));
        assert_eq!(round_up(ts(-1_500), false), ts(-1_000));
        assert_eq!(round_down(ts(5_999), false), ts(5_000));
        assert_eq!(round_down(nanos, true), ts(5_000));
    }
}
