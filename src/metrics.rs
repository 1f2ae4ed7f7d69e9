//! What the cache reports through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`).
//!
//! With the feature on, every [`TokenCache`](crate::TokenCache) records the metrics below with
//! whatever recorder the application installed (`metrics-exporter-prometheus`, an
//! OpenTelemetry bridge, ...). Without it, the cache records nothing and its recording calls
//! compile to nothing; the names below and [`describe`] stay, so code using them builds either
//! way. Nothing is recorded on the hot path: every metric counts a rare event (a login, a `401`, a
//! refused request), so a warm request costs exactly what it costs without the feature.
//!
//! | Name | Kind | Labels | What it counts |
//! |---|---|---|---|
//! | `authtoken_logins_total` | counter | `cache`, `outcome`, `error_kind` | Attempts to obtain a token, by `outcome`: `ok` (a usable token arrived) or `error`, with the error's [`ErrorKind::as_str`](crate::ErrorKind::as_str) as `error_kind` (only on `error`). With a shared store, an attempt may adopt a peer's token instead of logging in. |
//! | `authtoken_login_duration_seconds` | histogram | `cache`, `outcome` | How long each of those attempts took, in seconds, timeouts included. |
//! | `authtoken_renewals_total` | counter | `cache` | Tokens that replaced one still being handed out (renewals ahead of expiry). |
//! | `authtoken_invalidations_total` | counter | `cache`, `outcome` | Invalidations after a `401`, by `outcome`: `honoured` (the token was taken out of service and a login started), `ignored` (the token was rejected again soon after a renewal, and invalidations in a row are spaced out, so it stays in service until the spacing allows), `stale` (the token had already been replaced, usually by another request's `401`). Besides one outcome per `401`: `deferred` (a token an ignored `401` rejected was taken out once the spacing allowed, and a login started). |
//! | `authtoken_requests_refused_total` | counter | `cache`, `reason` | Requests refused before they were sent; `reason="insecure_http"`: the plain-HTTP rule kept a token off plain `http://` to a host that is not loopback. |
//! | `authtoken_backoff_answers_total` | counter | `cache`, `error_kind` | Callers that found no valid token while the cache waited after a failed login, and got the last error at once (with [`Error::retry_after`](crate::Error::retry_after)) rather than waiting. |
//! | `authtoken_token_expiry_timestamp_seconds` | gauge | `cache` | When the token being handed out expires, in seconds since the UNIX epoch; `0` while none is. |
//!
//! Labels hold no secret and no user name: `cache` is the label given to
//! [`TokenCacheBuilder::metrics_label`](crate::TokenCacheBuilder::metrics_label) (`"default"`
//! unless set), the others take the fixed values above. Give each cache its own label (the
//! account, if you want its name in your metrics), so several caches can be told apart: caches
//! with the same label add up in the counters and overwrite each other's gauge.
//!
//! # Why an expiry instant, not a remaining life
//!
//! A gauge is read whenever the exporter is scraped, but the cache writes it only when something
//! happens. A "seconds left" gauge would hold the value written at the last login and look
//! healthy until the next one: an alert on it would never fire for a token whose renewal is
//! stuck. The expiry instant is exact whenever it is read, and the remaining life is one
//! subtraction away, in the same convention as `process_start_time_seconds`:
//!
//! ```text
//! # seconds left on each cache's token; hugely negative (minus the UNIX time) when it has none
//! authtoken_token_expiry_timestamp_seconds - time()
//! # alert: a token within 30 s of expiry, or none at all
//! authtoken_token_expiry_timestamp_seconds - time() < 30
//! # login failures by kind
//! sum by (error_kind) (rate(authtoken_logins_total{outcome="error"}[5m]))
//! # login latency, 99th percentile
//! histogram_quantile(0.99, sum by (le) (rate(authtoken_login_duration_seconds_bucket[5m])))
//! ```
//!
//! The expiry is the cache's own reckoning on the local monotonic clock (the instant
//! [`CacheStats::expires_at`](crate::CacheStats::expires_at) reports), converted to the wall
//! clock when it is written; the server's clock plays no part.
//!
//! # Descriptions and units
//!
//! Call [`describe`] once, after installing your recorder, for `# HELP` lines and units.
//!
//! # Traces
//!
//! Independently of this feature, each login runs in an `authtoken.fetch` span on the cache's
//! background task, which [follows from](tracing::Span::follows_from) the span of the request
//! that made it necessary: the first caller (in a span) that found no token, the request that
//! found the renewal due, or the request whose `401` invalidated the token. Callers that join a
//! login already running are not linked. A trace shows why a request waited, and which request
//! a login was for. The cache holds a handle on that span from the moment the need arises until
//! the login starts (a span id alone could be reused by the subscriber once its span closed,
//! and the link would point at an unrelated request); usually microseconds, longer only when
//! the [`LoginBudget`](crate::LoginBudget) makes the login wait.

use std::borrow::Cow;

/// The name of the counter of attempts to obtain a token.
pub const LOGINS: &str = "authtoken_logins_total";
/// The name of the histogram of login latency, in seconds.
pub const LOGIN_DURATION: &str = "authtoken_login_duration_seconds";
/// The name of the counter of renewals.
pub const RENEWALS: &str = "authtoken_renewals_total";
/// The name of the counter of invalidations after a `401`.
pub const INVALIDATIONS: &str = "authtoken_invalidations_total";
/// The name of the counter of requests refused before they were sent.
pub const REQUESTS_REFUSED: &str = "authtoken_requests_refused_total";
/// The name of the counter of callers answered with the last error during a backoff.
pub const BACKOFF_ANSWERS: &str = "authtoken_backoff_answers_total";
/// The name of the gauge of the current token's expiry, in seconds since the UNIX epoch.
pub const TOKEN_EXPIRY: &str = "authtoken_token_expiry_timestamp_seconds";

/// The `cache` label of a cache that was given none.
const DEFAULT_LABEL: &str = "default";

/// A cache's metrics: its `cache` label. Empty without the feature.
#[derive(Clone, Debug)]
pub(crate) struct CacheMetrics {
    #[cfg(feature = "metrics")]
    label: ::metrics::SharedString,
}

impl CacheMetrics {
    /// The metrics of a cache labelled `label`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(label: Cow<'static, str>) -> CacheMetrics {
        CacheMetrics {
            #[cfg(feature = "metrics")]
            label: match label {
                Cow::Borrowed(label) => ::metrics::SharedString::const_str(label),
                // Shared, so that each event clones a reference count rather than the string.
                Cow::Owned(label) => ::metrics::SharedString::from_shared(label.into()),
            },
        }
    }
}

impl Default for CacheMetrics {
    fn default() -> CacheMetrics {
        CacheMetrics::new(Cow::Borrowed(DEFAULT_LABEL))
    }
}

/// Registers every metric's description and unit with the installed recorder; without the
/// `metrics` feature, does nothing.
///
/// Call it once after installing the recorder (descriptions go to the recorder in force when it
/// runs); metrics are recorded whether or not it was called.
pub fn describe() {
    #[cfg(feature = "metrics")]
    describe_all();
}

#[cfg(feature = "metrics")]
fn describe_all() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        LOGINS,
        Unit::Count,
        "Attempts to obtain a token, by outcome (ok, error) and error kind"
    );
    describe_histogram!(
        LOGIN_DURATION,
        Unit::Seconds,
        "How long each attempt to obtain a token took"
    );
    describe_counter!(
        RENEWALS,
        Unit::Count,
        "Tokens that replaced one still being handed out"
    );
    describe_counter!(
        INVALIDATIONS,
        Unit::Count,
        "Invalidations after a 401, by outcome (honoured, ignored, stale; deferred: an ignored one acted on later)"
    );
    describe_counter!(
        REQUESTS_REFUSED,
        Unit::Count,
        "Requests refused before they were sent, by reason (insecure_http)"
    );
    describe_counter!(
        BACKOFF_ANSWERS,
        Unit::Count,
        "Callers answered with the last error while the cache backed off after a failed login"
    );
    describe_gauge!(
        TOKEN_EXPIRY,
        Unit::Seconds,
        "When the token being handed out expires, in seconds since the UNIX epoch; 0 if none"
    );
}

/// Remembers the current span as the cause of the next login, unless one is remembered already
/// or there is no current span. On the slow paths only: it clones a span handle.
pub(crate) fn remember_cause(cause: &mut Option<Box<tracing::Span>>) {
    if cause.is_none() {
        let current = tracing::Span::current();
        if !current.is_none() {
            *cause = Some(Box::new(current));
        }
    }
}

/// Links the login's `span` to the span that caused it, then lets go of that span, so that the
/// request's span is not kept open for as long as the login runs.
pub(crate) fn link_cause(span: &tracing::Span, cause: Option<Box<tracing::Span>>) {
    if let Some(cause) = cause {
        span.follows_from(&*cause);
    }
}

#[cfg(feature = "metrics")]
mod record {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use ::metrics::{counter, gauge, histogram};
    use tokio::time::Instant;

    use super::{
        BACKOFF_ANSWERS, CacheMetrics, INVALIDATIONS, LOGIN_DURATION, LOGINS, RENEWALS,
        REQUESTS_REFUSED, TOKEN_EXPIRY,
    };
    use crate::{Error, ErrorKind};

    /// An attempt to obtain a token finished after `elapsed`, with `result`.
    pub(crate) fn login_finished<T>(
        m: &CacheMetrics,
        result: &Result<T, Error>,
        elapsed: Duration,
    ) {
        let cache = m.label.clone();
        let outcome = match result {
            Ok(_) => {
                counter!(LOGINS, "cache" => cache.clone(), "outcome" => "ok").increment(1);
                "ok"
            }
            Err(error) => {
                let kind = error.kind().as_str();
                counter!(LOGINS, "cache" => cache.clone(), "outcome" => "error", "error_kind" => kind)
                    .increment(1);
                "error"
            }
        };
        histogram!(LOGIN_DURATION, "cache" => cache, "outcome" => outcome)
            .record(elapsed.as_secs_f64());
    }

    /// A token that expires at `expires_at` (Tokio's clock) is handed out from now on;
    /// `renewed` when it replaced one still handed out.
    pub(crate) fn token_served(m: &CacheMetrics, expires_at: Instant, renewed: bool) {
        if renewed {
            counter!(RENEWALS, "cache" => m.label.clone()).increment(1);
        }
        let left = expires_at.saturating_duration_since(Instant::now());
        let at = SystemTime::now()
            .checked_add(left)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        gauge!(TOKEN_EXPIRY, "cache" => m.label.clone()).set(at.as_secs_f64());
    }

    /// No token is handed out any more (withdrawn at its deadline, invalidated, cache dropped).
    pub(crate) fn token_withdrawn(m: &CacheMetrics) {
        gauge!(TOKEN_EXPIRY, "cache" => m.label.clone()).set(0.0);
    }

    /// A `401` took the current token out of service.
    pub(crate) fn invalidation_honoured(m: &CacheMetrics) {
        invalidation(m, "honoured");
    }

    /// A `401` for the current token was not acted on at once: invalidations in a row are spaced
    /// out, and the token is taken out when the spacing allows.
    pub(crate) fn invalidation_ignored(m: &CacheMetrics) {
        invalidation(m, "ignored");
    }

    /// A token an ignored `401` rejected was taken out of service once the spacing allowed.
    pub(crate) fn invalidation_deferred(m: &CacheMetrics) {
        invalidation(m, "deferred");
    }

    /// A `401` came for a token already out of service.
    pub(crate) fn invalidation_stale(m: &CacheMetrics) {
        invalidation(m, "stale");
    }

    fn invalidation(m: &CacheMetrics, outcome: &'static str) {
        counter!(INVALIDATIONS, "cache" => m.label.clone(), "outcome" => outcome).increment(1);
    }

    /// The plain-HTTP rule refused a request before it was sent.
    pub(crate) fn insecure_refused(m: &CacheMetrics) {
        counter!(REQUESTS_REFUSED, "cache" => m.label.clone(), "reason" => "insecure_http")
            .increment(1);
    }

    /// A caller got the last error, of `kind`, at once during a backoff.
    pub(crate) fn backoff_answered(m: &CacheMetrics, kind: ErrorKind) {
        counter!(BACKOFF_ANSWERS, "cache" => m.label.clone(), "error_kind" => kind.as_str())
            .increment(1);
    }
}

/// The same functions, doing nothing, so that call sites need no `cfg`.
#[cfg(not(feature = "metrics"))]
mod record {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::CacheMetrics;
    use crate::{Error, ErrorKind};

    #[inline(always)]
    pub(crate) fn login_finished<T>(_: &CacheMetrics, _: &Result<T, Error>, _: Duration) {}
    #[inline(always)]
    pub(crate) fn token_served(_: &CacheMetrics, _: Instant, _: bool) {}
    #[inline(always)]
    pub(crate) fn token_withdrawn(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn invalidation_honoured(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn invalidation_ignored(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn invalidation_deferred(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn invalidation_stale(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn insecure_refused(_: &CacheMetrics) {}
    #[inline(always)]
    pub(crate) fn backoff_answered(_: &CacheMetrics, _: ErrorKind) {}
}

pub(crate) use record::{
    backoff_answered, insecure_refused, invalidation_deferred, invalidation_honoured,
    invalidation_ignored, invalidation_stale, login_finished, token_served, token_withdrawn,
};
