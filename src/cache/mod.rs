//! [`TokenCache`]: one shared token, read lock-free, renewed in the background.
//!
//! # How it works
//!
//! The current token lives in an [`arc_swap::ArcSwapOption`]. Reading it is the hot path of every
//! request: no lock, no allocation, no clock read, nothing to wait for. [`TokenCache::current`]
//! does one `load`; each [`BearerAuth`](crate::BearerAuth) clone keeps an [`arc_swap::Cache`] and
//! pays only one relaxed pointer comparison while the token is unchanged.
//!
//! A background task, the *driver*, owns every decision about time. It is started lazily by the
//! first call that needs a token, from within a Tokio runtime. It sleeps until the next thing
//! that must happen, and then does it:
//!
//! - at the **renewal** instant (`refresh_before` ahead of expiry, or half the life of a short
//!   token) it fetches a new token while requests keep using the current one;
//! - at the **deadline** (`expiry_margin` ahead of expiry) it takes the token out of the slot, so
//!   that an expiring token is never handed out. Because the timer removes the token, the hot path
//!   need not read the clock; and if the driver ever stops (its runtime shuts down), it empties the
//!   slot on its way out, so a token is only ever served while a live timer guards it;
//! - when callers find the slot empty, they wake it and all wait for the **same** fetch.
//!
//! # Single flight and cancellation
//!
//! At most one fetch runs per cache. It runs on the driver, detached from every caller:
//! cancelling or dropping the caller that triggered it cancels nothing, and the result, success or
//! error, reaches every caller that waited for it.
//!
//! # Failures
//!
//! A failed renewal never discards a still-valid token: the driver keeps serving it and retries
//! with exponential backoff and jitter until the deadline. Without a valid token, callers during
//! a backoff window get the last error at once rather than each starting a fetch. Permanent
//! errors (400/401/403/404) back off to the maximum; a 429 waits for its `Retry-After`. A renewal
//! answered with the same token, or with a token that expires no later than the one it replaces,
//! is not a renewal: the driver backs off instead of spinning.
//!
//! # Lifetime
//!
//! `TokenCache` is a cheap handle (one `Arc`). The driver stops as soon as the last handle, and
//! every layer and service holding one, is dropped.

mod driver;
pub(crate) mod schedule;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::source::SharedSource;
use crate::store::TokenStore;
use crate::{Error, ErrorKind, Token, TokenSource};

/// A shared, self-renewing bearer token.
///
/// Clone it freely: every clone shares one token, one driver and one single-flight fetch.
///
/// ```
/// use std::time::Duration;
/// use tower_authtoken::{Error, Token, TokenCache, TokenSource};
///
/// struct Fixed;
/// impl TokenSource for Fixed {
///     async fn fetch(&self) -> Result<Token, Error> {
///         Token::new("opaque", Duration::from_secs(3600))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let cache = TokenCache::builder(Fixed)
///     .refresh_before(Duration::from_secs(120))
///     .build()?;
/// let token = cache.token().await?;
/// assert_eq!(token.header_value(), "Bearer opaque");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    handle: Arc<Handle>,
}

/// The users' side of the cache. When the last one drops, its sender drops with it, and the
/// driver, which holds only the receiving end, stops.
struct Handle {
    shared: Arc<Shared>,
    _closed: watch::Sender<()>,
}

/// State shared between the handles and the driver.
pub(crate) struct Shared {
    /// Finds this cache in the [registry](REGISTRY).
    key: u64,
    /// The token handed out, present only between its arrival and its deadline.
    slot: ArcSwapOption<crate::token::TokenInner>,
    control: Mutex<Control>,
    /// Wakes the driver when callers need a token or one was invalidated.
    wake: Notify,
    /// Every finished fetch (or immediate answer) is published here.
    outcomes: watch::Sender<Outcome>,
    /// Closes when the last handle drops.
    closed: watch::Receiver<()>,
    source: SharedSource,
    config: Config,
    counters: Counters,
}

/// The result of the latest fetch, and how many have completed.
#[derive(Clone, Default)]
struct Outcome {
    completed: u64,
    result: Option<Result<Token, Error>>,
}

/// Everything off the hot path, behind a plain mutex that is never held across an `.await`.
#[derive(Default)]
struct Control {
    /// The running driver, if any.
    driver: Option<tokio::task::JoinHandle<()>>,
    /// Counts the drivers started, so that a stopping driver knows whether it is still the one.
    generation: u64,
    demand: bool,
    /// The current token and its plan (mirrors `slot`).
    current: Option<(Token, schedule::Plan)>,
    /// The last token we had, even once expired or invalidated, to notice a renewal that
    /// returns it again.
    last: Option<Token>,
    /// A token the upstream rejected, for the next fetch to tell a shared store about.
    rejected: Option<Token>,
    failures_in_row: u32,
    backoff: Option<Backoff>,
}

#[derive(Clone)]
struct Backoff {
    until: Instant,
    error: Error,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) refresh_before: Duration,
    pub(crate) jitter: Duration,
    pub(crate) expiry_margin: Option<Duration>,
    pub(crate) fetch_timeout: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) allow_insecure_http: bool,
    pub(crate) store: Option<Arc<dyn TokenStore>>,
}

impl Config {
    /// The longest one attempt to obtain a token may take: a login, or with a shared store, a
    /// wait for a peer's login followed by our own.
    pub(crate) fn attempt_limit(&self) -> Duration {
        match self.store {
            None => self.fetch_timeout,
            Some(_) => self.fetch_timeout.saturating_mul(2) + Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("refresh_before", &self.refresh_before)
            .field("jitter", &self.jitter)
            .field("expiry_margin", &self.expiry_margin)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("shared_store", &self.store.is_some())
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    failures: AtomicU64,
    renewals: AtomicU64,
    invalidations: AtomicU64,
}

/// A snapshot of a cache's activity, from [`TokenCache::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started (calls to the token source).
    pub fetches: u64,
    /// Fetches that failed, timed out, or returned an unusable token.
    pub failures: u64,
    /// Successful fetches that replaced a token that was still being handed out.
    pub renewals: u64,
    /// Tokens taken out of service by [`TokenCache::invalidate`].
    pub invalidations: u64,
    /// When the current token expires, if there is one.
    pub expires_at: Option<Instant>,
    /// The kind of the last failure, until the next success.
    pub last_error: Option<ErrorKind>,
}

impl TokenCache {
    /// A cache over `source`, with the default settings of [`TokenCacheBuilder`].
    pub fn new<S: TokenSource>(source: S) -> TokenCache {
        TokenCache::from_config(Arc::new(source), TokenCacheBuilder::default_config())
    }

    /// A builder to configure a cache over `source`.
    pub fn builder<S: TokenSource>(source: S) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source: Arc::new(source),
            config: TokenCacheBuilder::default_config(),
        }
    }

    fn from_config(source: SharedSource, config: Config) -> TokenCache {
        let (closed_tx, closed_rx) = watch::channel(());
        let (outcomes, _) = watch::channel(Outcome::default());
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            key,
            slot: ArcSwapOption::empty(),
            control: Mutex::new(Control::default()),
            wake: Notify::new(),
            outcomes,
            closed: closed_rx,
            source,
            config,
            counters: Counters::default(),
        });
        registry().insert(key, Arc::downgrade(&shared));
        TokenCache {
            handle: Arc::new(Handle {
                shared,
                _closed: closed_tx,
            }),
        }
    }

    /// The current valid token, fetching one if there is none.
    ///
    /// While a token is valid this returns at once, even while its renewal is in flight. When
    /// there is none, the caller joins the one fetch in flight (or starts it); dropping this
    /// future does not cancel that fetch for anyone else. During a backoff after a failure, it
    /// fails at once with the last error.
    ///
    /// Fails with [`ErrorKind::Runtime`] when called outside a Tokio runtime.
    pub async fn token(&self) -> Result<Token, Error> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.shared().token_slow().await,
        }
    }

    /// Takes `rejected` out of service, if it is still the current token, and starts a renewal.
    ///
    /// Call it when the server answered `401` to a request that carried `rejected`. Only the
    /// first of many such calls for the same token has an effect, so fifty requests rejected at
    /// once cause one renewal. [`BearerAuth`](crate::BearerAuth) calls it for you.
    pub fn invalidate(&self, rejected: &Token) {
        self.shared().invalidate(rejected.id());
    }

    /// A snapshot of the cache's counters and current state.
    pub fn stats(&self) -> CacheStats {
        let shared = self.shared();
        let control = shared.lock();
        let counters = &shared.counters;
        CacheStats {
            fetches: counters.fetches.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            renewals: counters.renewals.load(Ordering::Relaxed),
            invalidations: counters.invalidations.load(Ordering::Relaxed),
            expires_at: control.current.as_ref().map(|(t, _)| t.expires_at()),
            last_error: control.backoff.as_ref().map(|b| b.error.kind()),
        }
    }

    /// The current token, if one is being handed out. Never waits, never fetches.
    pub fn current(&self) -> Option<Token> {
        self.shared().current_token()
    }

    /// The key that finds this cache in the registry.
    pub(crate) fn key(&self) -> u64 {
        self.shared().key
    }

    /// A reader of the current token for one service clone: the hot path.
    pub(crate) fn reader(&self) -> SlotReader {
        SlotReader {
            key: self.shared().key,
            cache: arc_swap::Cache::new(SlotRef(Arc::clone(self.shared()))),
        }
    }

    /// Whether the cache may send tokens over plain `http://` to non-loopback hosts.
    pub(crate) fn allows_insecure_http(&self) -> bool {
        self.shared().config.allow_insecure_http
    }

    #[inline]
    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.shared().config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // The lock guards plain data and no code panics while holding it; if one ever did, the
        // data is still consistent enough to go on with.
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current_token(&self) -> Option<Token> {
        self.slot
            .load()
            .as_ref()
            .map(|inner| Token::from_arc(Arc::clone(inner)))
    }

    async fn token_slow(self: &Arc<Self>) -> Result<Token, Error> {
        let mut outcomes = self.outcomes.subscribe();
        let seen = {
            let mut control = self.lock();
            // The driver fills the slot under this lock, so this check cannot miss a token.
            if let Some(token) = self.current_token() {
                return Ok(token);
            }
            if let Some(backoff) = &control.backoff
                && Instant::now() < backoff.until
            {
                return Err(backoff.error.clone());
            }
            // A new driver puts back a token kept from one that stopped, and answers the demand
            // with it.
            self.ensure_driver(&mut control)?;
            control.demand = true;
            outcomes.borrow_and_update().completed
        };
        self.wake.notify_one();

        // The fetch has its own timeout; this bound only matters if the driver died with the
        // runtime it ran on while we wait on another.
        let limit = self.config.attempt_limit() + Duration::from_secs(1);
        match tokio::time::timeout(limit, outcomes.wait_for(|o| o.completed > seen)).await {
            Ok(Ok(outcome)) => outcome
                .result
                .clone()
                .unwrap_or_else(|| Err(runtime_error("no outcome was published"))),
            Ok(Err(_)) => Err(runtime_error("the token cache was dropped")),
            Err(_) => Err(Error::new(ErrorKind::Timeout)
                .with_detail("no token arrived within the fetch timeout")),
        }
    }

    fn invalidate(self: &Arc<Self>, id: u64) {
        let mut control = self.lock();
        let is_current = control
            .current
            .as_ref()
            .is_some_and(|(token, _)| token.id() == id);
        if !is_current {
            return;
        }
        self.slot.store(None);
        control.rejected = control.current.take().map(|(token, _)| token);
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        tracing::info!("token invalidated after the server rejected it; renewing");
        // Renew now rather than on the next caller, if a driver can run.
        if self.ensure_driver(&mut control).is_ok() {
            control.demand = true;
            drop(control);
            self.wake.notify_one();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        registry().remove(&self.key);
    }
}

/// The source of cache keys.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Every live cache by key, so that a response future that saw a `401` can reach its cache while
/// carrying nothing but two integers on the hot path.
static REGISTRY: Mutex<BTreeMap<u64, Weak<Shared>>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<u64, Weak<Shared>>> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the token `id` out of service in the cache `key`, if both still exist and the token is
/// still current. For the rare `401`.
pub(crate) fn invalidate(key: u64, id: u64) {
    // Upgrade under the registry lock, act after releasing it: dropping the last strong
    // reference runs `Shared::drop`, which takes the lock again.
    let shared = registry().get(&key).and_then(Weak::upgrade);
    if let Some(shared) = shared {
        shared.invalidate(id);
    }
}

/// Lets an [`arc_swap::Cache`] reach the slot inside the shared state.
#[derive(Clone)]
pub(crate) struct SlotRef(Arc<Shared>);

impl std::ops::Deref for SlotRef {
    type Target = ArcSwapOption<crate::token::TokenInner>;

    fn deref(&self) -> &Self::Target {
        &self.0.slot
    }
}

/// One service clone's view of the current token.
///
/// It keeps the `Arc` of the token it last saw and, on each request, compares it with the slot's
/// pointer: one relaxed atomic load while the token is unchanged, a full load when it changed or
/// was withdrawn. It therefore never hands out a token the driver has withdrawn. The price is that
/// a replaced token's memory is released on the next request through this clone rather than at
/// once; the cache itself keeps the last token for as long anyway.
#[derive(Clone)]
pub(crate) struct SlotReader {
    key: u64,
    cache: arc_swap::Cache<SlotRef, Option<Arc<crate::token::TokenInner>>>,
}

impl SlotReader {
    /// The current header value and the identity of its token.
    #[inline]
    pub(crate) fn current(&mut self) -> Option<(HeaderValue, u64)> {
        self.cache
            .load()
            .as_deref()
            .map(|inner| (inner.header.clone(), inner.id))
    }

    /// The key of the cache this reader reads.
    #[inline]
    pub(crate) fn cache_key(&self) -> u64 {
        self.key
    }
}

fn runtime_error(detail: &str) -> Error {
    Error::new(ErrorKind::Runtime).with_detail(detail)
}

/// Builds a [`TokenCache`]; every setter states its default.
pub struct TokenCacheBuilder {
    source: SharedSource,
    config: Config,
}

impl TokenCacheBuilder {
    fn default_config() -> Config {
        Config {
            refresh_before: schedule::DEFAULT_REFRESH_BEFORE,
            jitter: schedule::DEFAULT_JITTER,
            expiry_margin: None,
            fetch_timeout: schedule::DEFAULT_FETCH_TIMEOUT,
            min_backoff: schedule::DEFAULT_MIN_BACKOFF,
            max_backoff: schedule::DEFAULT_MAX_BACKOFF,
            allow_insecure_http: false,
            store: None,
        }
    }

    /// How long before expiry a renewal starts. Default: 60 s.
    ///
    /// A token valid for 1 hour is renewed after 59 minutes (a little earlier with jitter), while
    /// requests keep using it. A token whose whole lifetime is under twice this lead is renewed
    /// at half its life instead: a 90 s token after 45 s.
    pub fn refresh_before(mut self, lead: Duration) -> Self {
        self.config.refresh_before = lead;
        self
    }

    /// The largest random extra lead added to each renewal, so that a fleet does not renew in
    /// lockstep. Default: 5 s, and never more than a quarter of the lead. Zero disables it.
    ///
    /// With the defaults, a 1 hour token is renewed between 65 s and 60 s before it expires; a
    /// 20 s token (lead 10 s) between 12.5 s and 10 s before.
    pub fn jitter(mut self, max: Duration) -> Self {
        self.config.jitter = max;
        self
    }

    /// How long before expiry a token stops being handed out, even if its renewal failed.
    /// Default: the smaller of 10 s and a tenth of the token's lifetime (never more than half).
    ///
    /// A 1 hour token is handed out for at most 59 min 50 s; a 30 s token for at most 27 s.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.config.expiry_margin = Some(margin);
        self
    }

    /// How long one fetch may take before it fails with [`ErrorKind::Timeout`]. Default: 30 s.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// The first wait after a transient failure, doubled on each further failure.
    /// Default: 1 s (then 2 s, 4 s, ... up to [`max_backoff`](Self::max_backoff)).
    ///
    /// While a still-valid token is being renewed, the first wait is at most a tenth of that
    /// token's lifetime, so that a short token gets retries before its deadline: a 1 s token
    /// whose renewal fails is retried after 100 ms.
    pub fn min_backoff(mut self, min: Duration) -> Self {
        self.config.min_backoff = min;
        self
    }

    /// The longest wait between failed fetches, and the wait after a permanent failure such as
    /// a wrong password. Default: 60 s.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.config.max_backoff = max;
        self
    }

    /// Lets [`BearerAuth`](crate::BearerAuth) attach the token to plain `http://` URLs on
    /// non-loopback hosts. Default: `false`, such requests fail before they are sent.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.config.allow_insecure_http = allow;
        self
    }

    /// Shares tokens through `store`, for example a
    /// `RedisTokenStore` (feature `redis`), so that a fleet of processes logs in
    /// once per token lifetime instead of once per process. Default: none, each cache logs in
    /// on its own.
    ///
    /// Every renewal first asks the store, which may return a token a peer fetched. The hot path
    /// is unchanged: requests still read the token from this process's memory.
    pub fn shared<T: TokenStore>(mut self, store: T) -> Self {
        self.config.store = Some(Arc::new(store));
        self
    }

    /// Checks the settings and builds the cache. Nothing starts until the first token is needed.
    ///
    /// Fails with [`ErrorKind::Config`] if the fetch timeout or the minimum backoff is zero, or the
    /// minimum backoff exceeds the maximum.
    pub fn build(self) -> Result<TokenCache, Error> {
        let c = &self.config;
        if c.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be positive"));
        }
        if c.min_backoff.is_zero() {
            return Err(Error::config("min_backoff must be positive"));
        }
        if c.min_backoff > c.max_backoff {
            return Err(Error::config("min_backoff must not exceed max_backoff"));
        }
        Ok(TokenCache::from_config(self.source, self.config))
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
