//! [`TokenCache`]: one shared token, read lock-free, renewed in the background.
//!
//! # How it works
//!
//! The current token lives in an [`arc_swap::ArcSwapOption`]. Reading it is the hot path of every
//! request: each service clone keeps an [`arc_swap::Cache`] and pays one relaxed pointer
//! comparison while the token is unchanged (no lock, no allocation), then one read of a coarse
//! monotonic clock (a few nanoseconds, `CLOCK_MONOTONIC_COARSE`) against the token's deadline,
//! and one reference-count bump of the header. A replaced token stays referenced by a clone's
//! cache until that clone's next request or its drop, and is zeroed when released.
//!
//! # The deadline holds without a timer
//!
//! Every reader refuses a token past its deadline by itself, so no token is ever handed out past
//! its deadline because a timer fired late: not after a `block_on` that returns after an idle
//! spell, not in a process thawed after a `SIGSTOP`, not on a starved machine, not while the
//! runtime running the renewal timer sits idle. A refused token sends the caller to the slow
//! path, which decides on Tokio's clock and waits for a login. The coarse clock is checked 20 ms
//! early, so its lag can only refuse a token early. Neither clock runs while the machine is
//! suspended: after a resume, a token may look valid to us that the server has let expire; the
//! server then answers `401`, which invalidates it (below).
//!
//! # The driver
//!
//! A background task, the *driver*, sees to timing. It is started by the first call that needs a
//! token, on that caller's Tokio runtime, and sleeps until the next thing that must happen:
//!
//! - at the **renewal** instant (`refresh_before` ahead of expiry, or half the life of a short
//!   token) it fetches a new token while requests keep using the current one;
//! - at the **deadline** (`expiry_margin` ahead of expiry) it takes the token out of the slot;
//! - when callers find the slot empty, they wake it and all wait for the **same** fetch.
//!
//! The driver is a convenience, not what correctness rests on. A reader that finds the renewal
//! due and not started pokes the driver, starting one on its own runtime if the old one has
//! stopped. A caller waiting for a fetch checks, after 250 ms, that the driver's runtime still
//! runs tasks (by spawning an empty one on it); if it does not within 250 ms (the runtime shut
//! down, or nobody drives it), the caller replaces the driver with one on its own runtime. A
//! replaced driver stops at its next step and its results are ignored.
//!
//! # Single flight and cancellation
//!
//! At most one fetch runs per cache while its runtime runs. It runs on the driver, detached from
//! every caller: cancelling or dropping the caller that triggered it cancels nothing, and the
//! result, success or error, reaches every caller that waited for it. Only when a runtime stops
//! running the fetch does a caller on another runtime start a second one.
//!
//! # What a server's answers mean
//!
//! - A renewal answered with a token that expires no later than the current one (the same token
//!   with what is left of its life, or a new one bound to the same session) is the server's
//!   answer, not an error: the token is served for the life the server reports, to
//!   `min(margin, 1 s)` before its expiry, and the next login is at its expiry, since the server
//!   hands out no replacement sooner. From then on the cache logs in at each expiry rather than
//!   before it. Callers arriving in that last second wait for the login instead of failing. A
//!   token with the same value and a later expiry (a sliding session) is an ordinary renewal.
//! - A lifetime written in whole seconds may have been cut to them (`"expiresIn":"63"` for 63.9 s
//!   left; OAuth2's `expires_in` always is), so a login at the expiry read may come early and
//!   find the token in its last second: the server writes `0`. That answer is no failure while
//!   no token is in service: the cache logs in again a second later (once) and waiting callers
//!   wait for it, and from then on a login at a token's expiry waits for the second its lifetime
//!   may hide. Callers at such an expiry wait up to two seconds and a login.
//! - A `401` from the API ([`TokenCache::invalidate`]) takes the token out and logs in at once.
//!   When the token is rejected soon after it came into service (sooner than 10 s, or half its
//!   life, and sooner than the current gap), invalidations in a row are spaced 1 s, 2 s, 4 s, ...
//!   up to 60 s apart: a `401` in between leaves the token in service until the gap has passed,
//!   and takes it out then (if it is still in service), not at the next `401`. An API that
//!   rejects every token costs a handful of logins a minute whatever the traffic, its `401`s
//!   reach the caller as they are, and a token the server said it rejects is not sent for longer
//!   than the gap. The cache's background task takes it out; if the runtime that runs that task
//!   shuts down within the gap, the token stays in service until a task runs again (the next
//!   `401` for it, or its renewal starts one on the caller's runtime).
//!
//! # Failures
//!
//! A failed renewal never discards a still-valid token: the driver keeps serving it and retries
//! until the deadline. A transient failure is retried about once per `min_backoff` (1 s) for as
//! long as it lasts; the first retry comes sooner (a quarter of it when callers have no token, a
//! tenth of the life of a still-valid short token): callers are served again within about a second of the endpoint's recovery,
//! however long the outage. Without a valid token, callers during a backoff get the last error at
//! once, with [`Error::retry_after`] saying when the next attempt will be, rather than each
//! starting a fetch. Permanent errors (400/401/403/404, a panicking source) wait `max_backoff`
//! (60 s); a 429 waits for its `Retry-After`.
//!
//! # The login budget
//!
//! Every login, whatever caused it, draws on a [`LoginBudget`]: by default 5 at once, then one
//! every 250 ms. When it is spent, the login waits. No lifetime, server answer or storm of `401`s
//! can make the cache log in faster.
//!
//! # Lifetime
//!
//! `TokenCache` is a cheap handle (one `Arc`). The driver stops as soon as the last handle, and
//! every layer and service holding one, is dropped.

mod budget;
mod clock;
mod driver;
pub(crate) mod schedule;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::source::SharedSource;
use crate::store::TokenStore;
use crate::{Error, ErrorKind, Token, TokenSource};
use schedule::{InvalidationGate, Plan, Renewal};

pub use budget::LoginBudget;

#[cfg(feature = "test-util")]
pub(crate) fn follow_tokio_clock() {
    clock::FOLLOW_TOKIO.store(true, Ordering::Relaxed);
}

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
pub struct TokenCache {
    /// The users' side of the cache: the handles are counted in `Shared::handles`; when the last
    /// one drops, it closes the cache, and the driver, which holds the shared state but no
    /// handle, stops.
    shared: Arc<Shared>,
}

impl Clone for TokenCache {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        TokenCache {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closed.store(true, Ordering::Release);
            self.shared.wake.notify_one();
        }
    }
}

/// State shared between the handles, the readers and the driver.
pub(crate) struct Shared {
    /// Finds this cache in the [registry](REGISTRY).
    key: u64,
    /// The token handed out, with its deadline on the coarse clock.
    slot: ArcSwapOption<Entry>,
    control: Mutex<Control>,
    /// Wakes the driver when callers need a token, one was invalidated, or the cache closed.
    wake: Notify,
    /// Wakes the callers waiting for an outcome when one is published (`Control::outcome`).
    published: Notify,
    /// The live [`TokenCache`] handles.
    handles: AtomicUsize,
    /// For an account of a keyed cache: the sweep epoch of its last request.
    last_used: AtomicU32,
    /// For an account of a keyed cache: told of every change of `slot`, so that the account
    /// map holds the entry itself (see [`Mirror`]).
    mirror: Option<Mirror>,
    /// Set when the last handle drops.
    closed: AtomicBool,
    source: SharedSource,
    /// Shared by all the accounts of a keyed cache.
    config: Arc<Config>,
    /// This cache's own login budget.
    budget: LoginBudget,
    counters: Counters,
}

/// What the hot path reads: the token's header and identity, and the coarse-clock instants at
/// which it is due for renewal and past its deadline.
pub(crate) struct Entry {
    header: HeaderValue,
    id: u64,
    /// From this coarse tick on, the first reader asks the driver to renew.
    renew_at: u64,
    /// From this coarse tick on, the token is refused.
    deadline: u64,
    /// Whether a reader already asked for the renewal.
    poked: AtomicBool,
    token: Token,
}

impl Entry {
    fn new(token: &Token, plan: &Plan, now: Instant) -> Entry {
        let ticks = clock::now();
        Entry {
            header: token.header_value().clone(),
            id: token.id(),
            renew_at: clock::ticks_at(plan.renew_at, now, ticks),
            deadline: clock::ticks_at(plan.deadline, now, ticks),
            poked: AtomicBool::new(false),
            token: token.clone(),
        }
    }

    /// Whether the token may still be handed out by the coarse clock; asks the driver for the
    /// renewal, once, when it is due and the driver's timer did not see to it (its runtime is
    /// frozen, idle or gone).
    #[inline]
    fn admit(&self, shared: &Arc<Shared>) -> bool {
        let now = clock::now();
        if now >= self.deadline {
            return false;
        }
        if now >= self.renew_at && !self.poked.load(Ordering::Relaxed) {
            self.poke(shared);
        }
        true
    }

    /// The header and the token's identity, if the token may still be handed out.
    #[inline]
    pub(crate) fn serve(&self, shared: &Arc<Shared>) -> Option<(HeaderValue, u64)> {
        self.admit(shared).then(|| (self.header.clone(), self.id))
    }

    #[cold]
    #[inline(never)]
    fn poke(&self, shared: &Arc<Shared>) {
        if !self.poked.swap(true, Ordering::Relaxed) {
            shared.poke();
        }
    }
}

/// Told, under the control lock, of every change of a keyed account's slot but its retirement
/// (whose account leaves the map anyway), so that the account map can keep the entry in the
/// account's own value: a request for that account then reads the map, under the map's guard,
/// and no `ArcSwap`.
///
/// The calls come in the order of the changes, since each is made under the lock.
pub(crate) type Mirror = Box<dyn Fn(&Shared, Option<&Arc<Entry>>) + Send + Sync>;

/// The result of the latest fetch, and how many have completed.
///
/// The result holds no token, so that a replaced token is not kept alive here: waiters read the
/// token itself from the cache once they are told the fetch succeeded.
#[derive(Clone, Default)]
struct Outcome {
    completed: u64,
    /// `None` when the driver went away before answering (its runtime shut down): the waiters
    /// go round again on their own runtimes.
    result: Option<Result<(), Error>>,
}

/// Everything off the hot path, behind a plain mutex that is never held across an `.await`.
#[derive(Default)]
struct Control {
    /// Every finished fetch (or immediate answer) is published here.
    outcome: Outcome,
    /// The running driver, if any.
    /// Boxed: an idle account has none, and its memory counts.
    driver: Option<Box<Driver>>,
    /// Counts the drivers started, so that an older driver knows it was replaced.
    generation: u64,
    demand: bool,
    /// The current token and its plan (mirrors `slot`).
    current: Option<(Token, Plan)>,
    /// When the last token adopted expires, and how long it lived, to tell whether the next one
    /// renews anything. Not the token itself: a replaced token is released at once.
    last: Option<(Instant, Duration)>,
    /// How the server replaces tokens, as learned from its answers to renewals.
    renewal: Renewal,
    /// A login due although no token is served (see [`schedule::View::due_at`]).
    due_at: Option<Instant>,
    /// The last login's answer came too late to trust, and the login was made again once.
    stale_answer: bool,
    /// The server cuts lifetimes to whole seconds, as learned when a login at a token's expiry
    /// found it with under a second left: later such logins wait for [`Token::hidden_life`].
    cuts_lifetimes: bool,
    /// The last login's answer was a token with under a second left, and the login is made
    /// again a second later, once.
    under_a_second: bool,
    /// How the login budgets hold the next login back, from the first time they do until that
    /// login ends. Boxed: most logins are never held back, and an idle account's memory counts.
    budget_wait: Option<Box<BudgetWait>>,
    /// A token the upstream rejected, for the next fetch to tell a shared store about.
    rejected: Option<Token>,
    /// The login in flight replaces a token the server rejected.
    replacing_rejected: bool,
    /// Saturates at 65,535: the backoff stops growing long before, and a `u32` would cost every
    /// account 8 bytes of this struct's padding.
    failures_in_row: u16,
    backoff: Option<Backoff>,
    /// What the `401`s so far have left. Boxed: an account that never saw one (most, and every
    /// idle one) pays a pointer for it.
    unauthorized: Option<Box<Unauthorized>>,
    /// When a waiter last checked that the driver's runtime still runs.
    last_probe: Option<Instant>,
    /// The span of the request that made the next login necessary, for the login's span to
    /// follow from. A handle, not an id: an id may be reused once its span closes.
    cause: Option<Box<tracing::Span>>,
}

/// What the `401`s have left in a cache's state.
#[derive(Default)]
struct Unauthorized {
    /// The spacing of invalidations in a row.
    gate: InvalidationGate,
    /// When the current token was first rejected with a `401`, honoured or not.
    first_401: Option<Instant>,
    /// A `401` the gate refused: the id of the token it rejected, and when the gate opens. The
    /// driver takes that token out then, if it is still in service.
    deferred_401: Option<(u64, Instant)>,
}

impl Control {
    /// The `401` the gate deferred, if any: its token's id and when the gate opens.
    fn deferred_401(&self) -> Option<(u64, Instant)> {
        self.unauthorized.as_ref().and_then(|u| u.deferred_401)
    }

    /// The driver acts on the deferred `401` now.
    fn forget_deferred_401(&mut self) {
        if let Some(unauthorized) = &mut self.unauthorized {
            unauthorized.deferred_401 = None;
        }
    }

    /// A new token is in service: its `401`s are yet to come.
    fn forget_401s(&mut self) {
        if let Some(unauthorized) = &mut self.unauthorized {
            unauthorized.first_401 = None;
            unauthorized.deferred_401 = None;
        }
    }
}

/// How the login budgets hold a login back.
#[derive(Default)]
struct BudgetWait {
    /// The driver would log in now but for the budgets.
    waiting: bool,
    /// When the budgets let the login through.
    let_through: Option<Instant>,
    /// When this cache next tries its turn budget ([`LoginBudget::next_turn`]), and whether
    /// that turn is urgent (its callers wait with no token).
    turn: Option<(Instant, bool)>,
}

/// The login budgets of a cache with a shared store, as
/// [`ObtainRequest::login`](crate::store::ObtainRequest::login) draws on them: only a login
/// spends them, never asking the store for a peer's token.
pub(crate) struct LoginGate(Weak<Shared>);

impl LoginGate {
    /// Spends one login, or refuses it with [`Error::held_back`] until the cache's turn.
    pub(crate) fn draw(&self) -> Result<(), Error> {
        let Some(shared) = self.0.upgrade() else {
            return Err(Error::new(ErrorKind::Runtime).with_detail("the token cache was dropped"));
        };
        let now = Instant::now();
        shared
            .spend_budget(now)
            .map_err(|()| shared.refuse_login(now))
    }
}

impl Control {
    /// Records that the login budgets hold the next login back.
    fn hold_back(&mut self) {
        let wait = self.budget_wait.get_or_insert_with(Box::default);
        wait.waiting = true;
        wait.let_through = None;
    }

    /// Records that the budgets do not hold the login back now (nothing is wanted, or it goes).
    fn not_held_back(&mut self) {
        if let Some(wait) = &mut self.budget_wait {
            wait.waiting = false;
        }
    }

    /// Whether the login budgets hold the next login back now.
    fn held_back(&self) -> bool {
        self.budget_wait.as_ref().is_some_and(|wait| wait.waiting)
    }

    fn turn(&self) -> Option<(Instant, bool)> {
        self.budget_wait.as_ref().and_then(|wait| wait.turn)
    }

    fn set_turn(&mut self, turn: Option<(Instant, bool)>) {
        if turn.is_some() || self.budget_wait.is_some() {
            self.budget_wait.get_or_insert_with(Box::default).turn = turn;
        }
    }
}

/// The driver task and the runtime it runs on.
struct Driver {
    join: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
    generation: u64,
}

#[derive(Clone)]
struct Backoff {
    until: Instant,
    error: Error,
}

impl Backoff {
    /// The error to hand a caller at `now`, saying when the next attempt will be.
    fn error_at(&self, now: Instant) -> Error {
        self.error
            .clone()
            .with_retry_after(Some(self.until.saturating_duration_since(now)))
    }
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
    pub(crate) budget: LoginBudget,
    /// A second budget shared with other caches (a [keyed cache](crate::KeyedTokenCache)'s
    /// accounts): every login draws on both.
    pub(crate) shared_budget: Option<LoginBudget>,
    /// Renewals are moved earlier by up to this fraction of what is left of the lifetime
    /// before the lead, so that many tokens issued together are not renewed together.
    pub(crate) spread: f64,
    /// The driver stops while the only thing ahead is a renewal that a reader will ask for
    /// (a keyed cache's accounts: no task or timer for an idle account).
    pub(crate) park_when_idle: bool,
    pub(crate) store: Option<Arc<dyn TokenStore>>,
    pub(crate) metrics: crate::metrics::CacheMetrics,
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

    fn lead(&self) -> schedule::Lead {
        schedule::Lead {
            refresh_before: self.refresh_before,
            jitter: self.jitter,
            margin: self.expiry_margin,
            spread: self.spread,
            slack: Duration::ZERO,
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
            .field("login_budget", &self.budget)
            .field("shared_login_budget", &self.shared_budget)
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
    ignored_invalidations: AtomicU64,
}

/// A snapshot of a cache's activity, from [`TokenCache::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started: calls to the token source, or to the shared store (which may adopt a
    /// peer's token, or find its login held back by the budget, instead of logging in).
    pub fetches: u64,
    /// Fetches that failed, timed out, or returned an unusable token.
    pub failures: u64,
    /// Successful fetches that replaced a token that was still being handed out.
    pub renewals: u64,
    /// Tokens taken out of service by [`TokenCache::invalidate`].
    pub invalidations: u64,
    /// Calls to [`TokenCache::invalidate`] for the current token that were not acted on at once,
    /// because invalidations in a row are spaced out (1 s, 2 s, 4 s, ... up to 60 s apart). The
    /// token is taken out when the spacing allows, if it is still in service then, and that
    /// counts in [`invalidations`](Self::invalidations).
    pub ignored_invalidations: u64,
    /// When the current token expires, if there is one, counted from when the login that
    /// brought it started (the server issued it later, so this is never later than its expiry).
    pub expires_at: Option<Instant>,
    /// The kind of the last failure, until the next success.
    pub last_error: Option<ErrorKind>,
}

impl TokenCache {
    /// A cache over `source`, with the default settings of [`TokenCacheBuilder`].
    pub fn new<S: TokenSource>(source: S) -> TokenCache {
        TokenCache::from_config(
            Arc::new(source),
            Arc::new(TokenCacheBuilder::default_config()),
            LoginBudget::default(),
            None,
        )
    }

    /// A builder to configure a cache over `source`.
    pub fn builder<S: TokenSource>(source: S) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source: Arc::new(source),
            config: TokenCacheBuilder::default_config(),
        }
    }

    fn from_config(
        source: SharedSource,
        config: Arc<Config>,
        budget: LoginBudget,
        mirror: Option<Mirror>,
    ) -> TokenCache {
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            key,
            slot: ArcSwapOption::empty(),
            control: Mutex::new(Control::default()),
            wake: Notify::new(),
            published: Notify::new(),
            handles: AtomicUsize::new(1),
            last_used: AtomicU32::new(0),
            mirror,
            closed: AtomicBool::new(false),
            source,
            config,
            budget,
            counters: Counters::default(),
        });
        registry().insert(key, Arc::downgrade(&shared));
        TokenCache { shared }
    }

    /// The current valid token, fetching one if there is none.
    ///
    /// While a token is valid this returns at once, even while its renewal is in flight. When
    /// there is none, the caller joins the one fetch in flight (or starts it); dropping this
    /// future does not cancel that fetch for anyone else. During a backoff after a failure, it
    /// fails at once with the last error, whose [`Error::retry_after`] says when the next
    /// attempt will be.
    ///
    /// The fetch runs on a Tokio runtime: the one it was started on. If that runtime shuts down
    /// or stops running tasks while this caller's own runtime runs, this caller takes the fetch
    /// over on its own runtime. Fails with [`ErrorKind::Runtime`] only when called outside any
    /// Tokio runtime.
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
    /// once cause one renewal. Invalidations in a row are spaced out: after the first, the next
    /// is acted on only 1 s later, then 2 s, 4 s, ... up to 60 s (a call in between leaves the
    /// token in service until then, and takes it out then if it is still in service), so an API
    /// that rejects every token costs a handful of logins a minute.
    /// [`BearerAuth`](crate::BearerAuth) calls it for you.
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
            ignored_invalidations: counters.ignored_invalidations.load(Ordering::Relaxed),
            expires_at: control.current.as_ref().map(|(_, plan)| plan.expires_at),
            last_error: control.backoff.as_ref().map(|b| b.error.kind()),
        }
    }

    /// The current token, if one is being handed out. Never waits, never fetches.
    pub fn current(&self) -> Option<Token> {
        let shared = self.shared();
        let guard = shared.slot.load();
        let entry = guard.as_deref()?;
        entry.admit(shared).then(|| entry.token.clone())
    }

    /// The key that finds this cache in the registry.
    pub(crate) fn key(&self) -> u64 {
        self.shared().key
    }

    /// A reader of the current token for one service clone: the hot path.
    pub(crate) fn reader(&self) -> SlotReader {
        SlotReader {
            shared: Arc::clone(self.shared()),
            cache: arc_swap::Cache::new(SlotRef(Arc::clone(self.shared()))),
        }
    }

    /// Whether the cache may send tokens over plain `http://` to non-loopback hosts: when its
    /// builder or its source says so.
    pub(crate) fn allows_insecure_http(&self) -> bool {
        let shared = self.shared();
        shared.config.allow_insecure_http || shared.source.allows_insecure_http()
    }

    /// The cache's metrics, for the layer's refusals.
    pub(crate) fn metrics(&self) -> &crate::metrics::CacheMetrics {
        &self.shared().config.metrics
    }

    #[inline]
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
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

/// How long a waiter waits for a fetch before it checks that the runtime running it still runs.
const PROBE_AFTER: Duration = Duration::from_millis(250);
/// How long that runtime has to run a trivial task before it counts as idle or gone.
const PROBE_WAIT: Duration = Duration::from_millis(250);
/// How long after one check the next may happen, while the fetch goes on.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a waiter learned while it waited.
enum Waited {
    /// The fetch finished: with a token in the cache, or with this error.
    Finished(Result<(), Error>),
    /// The driver went away or was replaced: look again.
    Again,
}

impl Shared {
    /// Puts `entry` in the slot, and tells the mirror (keyed accounts). Called with the control
    /// lock held, so that the changes reach the mirror in order.
    fn set_slot(&self, entry: Option<Arc<Entry>>) {
        if let Some(mirror) = &self.mirror {
            mirror(self, entry.as_ref());
        }
        self.slot.store(entry);
    }

    /// The budget this cache takes turns at ([`LoginBudget::next_turn`]): the one other caches
    /// may share. A keyed account's is the keyed cache's shared budget (its own is its own); a
    /// single cache's is its own, which clones given to other caches share.
    fn turn_budget(&self) -> &LoginBudget {
        self.config.shared_budget.as_ref().unwrap_or(&self.budget)
    }

    /// When the login budgets allow the next login: this cache's turn if it has one.
    ///
    /// With a shared store, only a login draws on the budgets ([`LoginGate`]), not asking the
    /// store for a peer's token: the driver asks the store at once, and waits for the budgets
    /// only once a login they refused holds it back.
    fn budget_ready_at(&self, control: &Control, now: Instant) -> Instant {
        if self.config.store.is_some() && !control.held_back() {
            return now;
        }
        let turn = match control.turn() {
            Some((turn, _)) => turn,
            None => self.turn_budget().ready_at(now),
        };
        match &self.config.shared_budget {
            Some(_) => self.budget.ready_at(now).max(turn),
            None => turn,
        }
    }

    /// Takes this cache's turn at its [turn budget](Self::turn_budget) when it wants a login
    /// the budget does not allow now: an urgent one when its callers wait with no token. A turn
    /// taken for a renewal is traded for an urgent one once the token is gone.
    fn take_turn(&self, control: &mut Control, now: Instant) {
        let urgent = control.current.is_none();
        if control
            .turn()
            .is_some_and(|(_, was_urgent)| was_urgent == urgent)
        {
            return;
        }
        let turn = self
            .turn_budget()
            .next_turn(now, urgent)
            .map(|at| (at, urgent));
        control.set_turn(turn);
    }

    /// Draws one login from the budgets, or says it may not log in yet. A cache that finds its
    /// turn budget spent (at its turn, or without one) takes a turn. A keyed account's own
    /// budget is spent by its single driver only, so it cannot run out between the look and
    /// the draw.
    fn spend_budget(&self, now: Instant) -> Result<(), ()> {
        let mut control = self.lock();
        let keyed = self.config.shared_budget.is_some();
        let drawn = 'draw: {
            if keyed && self.budget.ready_at(now) > now {
                break 'draw false;
            }
            control.set_turn(None);
            if self.turn_budget().try_spend(now).is_err() {
                self.take_turn(&mut control, now);
                break 'draw false;
            }
            !keyed || self.budget.try_spend(now).is_ok()
        };
        if !drawn {
            control.hold_back();
            return Err(());
        }
        if let Some(wait) = &mut control.budget_wait {
            wait.waiting = false;
            wait.let_through.get_or_insert(now);
        }
        Ok(())
    }

    /// The budgets' refusal of a login now, as [`Error::held_back`] until this cache's turn.
    fn refuse_login(&self, now: Instant) -> Error {
        let control = self.lock();
        let at = self.budget_ready_at(&control, now);
        Error::held_back(at.saturating_duration_since(now))
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        // The lock guards plain data and no code panics while holding it; if one ever did, the
        // data is still consistent enough to go on with.
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn token_slow(self: &Arc<Self>) -> Result<Token, Error> {
        loop {
            let (seen, generation) = {
                let mut control = self.lock();
                let now = Instant::now();
                // The driver's timer may be late (a frozen process, an idle runtime): decide on
                // the clock, not on whether the timer fired.
                self.expire_due(&mut control, now);
                if let Some((token, _)) = &control.current {
                    return Ok(token.clone());
                }
                if let Some(backoff) = &control.backoff
                    && now < backoff.until
                {
                    crate::metrics::backoff_answered(&self.config.metrics, backoff.error.kind());
                    return Err(backoff.error_at(now));
                }
                self.ensure_driver(&mut control)?;
                control.demand = true;
                crate::metrics::remember_cause(&mut control.cause);
                (control.outcome.completed, control.generation)
            };
            self.wake.notify_one();
            match self.wait(seen, generation).await {
                Waited::Finished(Err(error)) => return Err(error),
                Waited::Finished(Ok(())) | Waited::Again => continue,
            }
        }
    }

    /// Waits for the outcome of the fetch after `seen`, checking now and then that the driver's
    /// runtime still runs tasks, and taking the fetch over on this runtime if it does not.
    async fn wait(self: &Arc<Self>, seen: u64, generation: u64) -> Waited {
        let started = Instant::now();
        let limit = started + self.config.attempt_limit() + Duration::from_secs(1);
        let mut probe_at = started + PROBE_AFTER;
        loop {
            // Register for the next publication before looking, so that none is missed.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            {
                let control = self.lock();
                if control.outcome.completed > seen {
                    return match control.outcome.result.clone() {
                        Some(result) => Waited::Finished(result),
                        None => Waited::Again,
                    };
                }
            }
            tokio::select! {
                biased;
                () = published => {}
                () = tokio::time::sleep_until(probe_at) => {
                    if self.driver_stalled(generation).await {
                        return match self.take_over(generation) {
                            Ok(()) => Waited::Again,
                            Err(error) => Waited::Finished(Err(error)),
                        };
                    }
                    probe_at = Instant::now() + PROBE_EVERY;
                }
                () = tokio::time::sleep_until(limit) => {
                    return Waited::Finished(Err(self.waited_too_long(started, Instant::now())));
                }
            }
        }
    }

    /// The error of a caller that waited past the fetch timeout for a token: the login budget
    /// is named when it is what holds the login back (more logins wait for it than its rate
    /// serves in time: a cold start of many accounts on one shared budget, say), the endpoint
    /// otherwise.
    fn waited_too_long(&self, started: Instant, now: Instant) -> Error {
        let error = Error::new(ErrorKind::Timeout);
        let control = self.lock();
        // Still waiting for the budget, or let through by it only in the second half of the
        // caller's wait (a login that started as the caller gave up, say).
        let midway = started + (now - started) / 2;
        let held = control
            .budget_wait
            .as_ref()
            .is_some_and(|wait| wait.waiting || wait.let_through.is_some_and(|at| at > midway));
        drop(control);
        if held {
            let budget = self.turn_budget();
            return error.with_detail(format!(
                "no token within the fetch timeout: the login waits for the login budget of {} \
                 at once then one every {:?}, and more logins wait for it than it serves in time; \
                 raise the budget, or spread the logins out",
                budget.burst(),
                budget.interval()
            ));
        }
        error.with_detail(
            "no token arrived within the fetch timeout: the login endpoint is slow or unreachable",
        )
    }

    /// Whether the driver of `generation` has stopped, or sits on a runtime that did not run a
    /// trivial task within [`PROBE_WAIT`] (a runtime nobody drives, or one shutting down).
    /// One waiter checks at a time; the others trust its answer.
    async fn driver_stalled(&self, generation: u64) -> bool {
        let runtime = {
            let mut control = self.lock();
            let now = Instant::now();
            let Some(driver) = control
                .driver
                .as_ref()
                .filter(|d| d.generation == generation)
            else {
                // Replaced already: not ours to judge.
                return false;
            };
            if driver.join.is_finished() {
                return true;
            }
            let runtime = driver.runtime.clone();
            if control
                .last_probe
                .is_some_and(|at| now.saturating_duration_since(at) < PROBE_AFTER)
            {
                return false;
            }
            control.last_probe = Some(now);
            runtime
        };
        let probe = runtime.spawn(async {});
        !matches!(tokio::time::timeout(PROBE_WAIT, probe).await, Ok(Ok(())))
    }

    /// Replaces a stalled driver of `generation` with one on the caller's runtime.
    fn take_over(self: &Arc<Self>, generation: u64) -> Result<(), Error> {
        let mut control = self.lock();
        if control
            .driver
            .as_ref()
            .is_some_and(|d| d.generation == generation)
        {
            if let Some(stalled) = control.driver.take() {
                stalled.join.abort();
            }
            tracing::warn!(
                "the token cache's background task sits on a runtime that no longer runs it; \
                 continuing on the caller's runtime"
            );
        }
        self.ensure_driver(&mut control)
    }

    /// Asks the driver to look at the clock: a reader saw the renewal was due. Starts a driver
    /// on the reader's runtime if none runs.
    fn poke(self: &Arc<Self>) {
        let mut control = self.lock();
        if self.ensure_driver(&mut control).is_ok() {
            crate::metrics::remember_cause(&mut control.cause);
            drop(control);
            self.wake.notify_one();
        }
    }

    /// Takes the token `id` out of service after a `401` for it, if it is still current and the
    /// spacing of invalidations allows; otherwise defers it until the spacing allows.
    fn invalidate(self: &Arc<Self>, id: u64) {
        self.invalidate_as(id, false);
    }

    /// As [`invalidate`](Self::invalidate); `deferred` when the driver acts on a `401` the
    /// spacing refused earlier (already counted then, as ignored).
    pub(crate) fn invalidate_as(self: &Arc<Self>, id: u64, deferred: bool) {
        let mut control = self.lock();
        let is_current = control
            .current
            .as_ref()
            .is_some_and(|(token, _)| token.id() == id);
        if !is_current {
            if !deferred {
                crate::metrics::invalidation_stale(&self.config.metrics);
            }
            return;
        }
        let now = Instant::now();
        let unauthorized = control.unauthorized.get_or_insert_with(Box::default);
        let first_401 = *unauthorized.first_401.get_or_insert(now);
        let (served, lifetime) = match &control.current {
            Some((token, _)) => (
                first_401.saturating_duration_since(token.received_at()),
                token.lifetime(),
            ),
            None => return,
        };
        let unauthorized = control.unauthorized.get_or_insert_with(Box::default);
        if !unauthorized.gate.admit(now, served, lifetime) {
            if deferred {
                // Not yet (the clock may read a hair early): the driver looks again.
                unauthorized.deferred_401 = unauthorized.gate.opens_at().map(|at| (id, at));
                return;
            }
            self.counters
                .ignored_invalidations
                .fetch_add(1, Ordering::Relaxed);
            crate::metrics::invalidation_ignored(&self.config.metrics);
            tracing::debug!(
                "the server rejected the current token again soon after a renewal; \
                 invalidations in a row are spaced out, so it stays in service until the \
                 spacing allows"
            );
            // Taken out when the spacing allows, rather than at the first `401` after that: a
            // token the server said it rejects is not sent for longer than the spacing.
            if unauthorized.deferred_401.is_none()
                && let Some(at) = unauthorized.gate.opens_at()
            {
                unauthorized.deferred_401 = Some((id, at));
                if self.ensure_driver(&mut control).is_ok() {
                    drop(control);
                    self.wake.notify_one();
                }
            }
            return;
        }
        unauthorized.deferred_401 = None;
        self.set_slot(None);
        control.rejected = control.current.take().map(|(token, _)| token);
        control.due_at = None;
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        if deferred {
            crate::metrics::invalidation_deferred(&self.config.metrics);
        } else {
            crate::metrics::invalidation_honoured(&self.config.metrics);
        }
        crate::metrics::token_withdrawn(&self.config.metrics);
        tracing::info!("token invalidated after the server rejected it; renewing");
        // Renew now rather than on the next caller, if a driver can run.
        if self.ensure_driver(&mut control).is_ok() {
            control.demand = true;
            crate::metrics::remember_cause(&mut control.cause);
            drop(control);
            self.wake.notify_one();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        crate::metrics::token_withdrawn(&self.config.metrics);
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

/// One service clone's view of the current token: the hot path.
///
/// It keeps the entry it last read (an [`arc_swap::Cache`]) and, on each request, compares it
/// with the slot's pointer: one relaxed atomic load while the token is unchanged, a full load
/// when it changed or was withdrawn. Then it checks the token's deadline on the coarse clock and
/// clones the header (a reference count).
///
/// The price of the cache is that a replaced or withdrawn token stays referenced by each service
/// clone that read it until that clone's next request or its drop; its memory is zeroed when the
/// last reference goes. A plain `load` per request would release it at once, but costs about 70
/// more instructions per request (callgrind: 1003 against 935, where the static-header floor is
/// 859), past the hot path's budget.
#[derive(Clone)]
pub(crate) struct SlotReader {
    shared: Arc<Shared>,
    cache: arc_swap::Cache<SlotRef, Option<Arc<Entry>>>,
}

/// Lets an [`arc_swap::Cache`] reach the slot inside the shared state.
#[derive(Clone)]
pub(crate) struct SlotRef(Arc<Shared>);

impl std::ops::Deref for SlotRef {
    type Target = ArcSwapOption<Entry>;

    fn deref(&self) -> &Self::Target {
        &self.0.slot
    }
}

impl SlotReader {
    /// The current header value and the identity of its token, unless the token is past its
    /// deadline.
    #[inline]
    pub(crate) fn current(&mut self) -> Option<(HeaderValue, u64)> {
        self.cache.load().as_deref()?.serve(&self.shared)
    }

    /// The key of the cache this reader reads.
    #[inline]
    pub(crate) fn cache_key(&self) -> u64 {
        self.shared.key
    }

    /// As [`TokenCache::mark_used`].
    #[inline]
    pub(crate) fn mark_used(&self, epoch: u32) {
        mark_used(&self.shared, epoch);
    }
}

/// What a [keyed cache](crate::KeyedTokenCache) needs of each account's cache.
impl TokenCache {
    /// The current token's header and identity, from `entry` (the account map's copy of the
    /// slot), unless it is past its deadline.
    #[inline]
    pub(crate) fn serve(&self, entry: Option<&Arc<Entry>>) -> Option<(HeaderValue, u64)> {
        entry?.serve(&self.shared)
    }

    /// Whether `shared` is this cache's state: a [`Mirror`] checks that the account it updates
    /// is still the one whose slot changed.
    pub(crate) fn is(&self, shared: &Shared) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.shared), shared)
    }

    /// See [`Shared::retire`].
    pub(crate) fn retire(&self) {
        self.shared.retire();
    }

    /// The sweep epoch of the account's last request.
    pub(crate) fn last_used(&self) -> u32 {
        self.shared.last_used.load(Ordering::Relaxed)
    }

    /// Records a request in sweep epoch `epoch`; writes only when the epoch changed.
    #[inline]
    pub(crate) fn mark_used(&self, epoch: u32) {
        mark_used(&self.shared, epoch);
    }
}

#[inline]
fn mark_used(shared: &Shared, epoch: u32) {
    if shared.last_used.load(Ordering::Relaxed) != epoch {
        shared.last_used.store(epoch, Ordering::Relaxed);
    }
}

fn runtime_error(detail: &str) -> Error {
    Error::new(ErrorKind::Runtime).with_detail(detail)
}

/// Builds a [`TokenCache`]; every setter states its default.
#[must_use = "call build() to get a TokenCache"]
pub struct TokenCacheBuilder {
    source: SharedSource,
    config: Config,
}

/// The longest lead, margin or lifetime-like setting `build` accepts: a year, the longest
/// lifetime a token may have.
const MAX_SETTING: Duration = crate::token::MAX_LIFETIME;
/// The longest timeout or backoff `build` accepts: an hour.
const MAX_WAIT: Duration = Duration::from_secs(60 * 60);
/// The longest wait after a permanent failure `build` accepts: a day.
const MAX_PERMANENT_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

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
            budget: LoginBudget::default(),
            shared_budget: None,
            spread: 0.0,
            park_when_idle: false,
            store: None,
            metrics: crate::metrics::CacheMetrics::default(),
        }
    }

    /// How long before expiry a renewal starts. Default: 60 s. At most a year.
    ///
    /// A token valid for 1 hour is renewed after 59 minutes (a little earlier with jitter), while
    /// requests keep using it. A token whose whole lifetime is under twice this lead is renewed
    /// at half its life instead: a 90 s token after 45 s.
    ///
    /// A server that answers a renewal with the live token (or a new one bound to the same
    /// expiry) will not replace a token before it expires; once the cache has seen that, it logs
    /// in at each token's expiry instead, and this lead no longer applies.
    pub fn refresh_before(mut self, lead: Duration) -> Self {
        self.config.refresh_before = lead;
        self
    }

    /// The largest random extra lead added to each renewal, so that a fleet does not renew in
    /// lockstep. Default: 5 s, and never more than a quarter of the lead. Zero disables it. At
    /// most an hour.
    ///
    /// With the defaults, a 1 hour token is renewed between 65 s and 60 s before it expires; a
    /// 20 s token (lead 10 s) between 12.5 s and 10 s before.
    pub fn jitter(mut self, max: Duration) -> Self {
        self.config.jitter = max;
        self
    }

    /// How long before expiry a token stops being handed out, even if its renewal failed.
    /// Default: the smaller of 10 s and a tenth of the token's lifetime (never more than half);
    /// for a token the server replaces only once it has expired, at most 1 s. At most a year.
    ///
    /// A 1 hour token is handed out for at most 59 min 50 s; a 30 s token for at most 27 s.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.config.expiry_margin = Some(margin);
        self
    }

    /// How long one fetch may take before it fails with [`ErrorKind::Timeout`]. Default: 30 s.
    /// More than zero, at most an hour.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// The wait between attempts after a transient failure (a 5xx, a timeout, an unreachable
    /// endpoint). Default: 1 s (plus up to a tenth more at random). More than zero, at most an
    /// hour and at most [`max_backoff`](Self::max_backoff).
    ///
    /// The wait does not grow while the endpoint stays down: it is tried about once per this
    /// interval, so callers are served again within about this long after it recovers, however
    /// long the outage. The [login budget](Self::login_budget) bounds the load. The first retry
    /// comes sooner: without a valid token (callers are failing meanwhile), after a quarter of
    /// this interval; while a still-valid token is being renewed, after at most a tenth of that
    /// token's lifetime, so that a short token gets a retry before its deadline: a 1 s token
    /// whose renewal fails is retried after 100 ms, then every second.
    pub fn min_backoff(mut self, interval: Duration) -> Self {
        self.config.min_backoff = interval;
        self
    }

    /// The wait after a permanent failure, such as a wrong password or an unknown user, and
    /// after a token source panicked. Default: 60 s. At most a day.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.config.max_backoff = max;
        self
    }

    /// Caps how often the cache logs in, renewals, logins after a `401` and retries together.
    /// Default: [`LoginBudget::default`], 5 at once, then one every 250 ms.
    ///
    /// Share one budget between caches (clone it) to cap them together.
    pub fn login_budget(mut self, budget: LoginBudget) -> Self {
        self.config.budget = budget;
        self
    }

    /// Lets [`BearerAuth`](crate::BearerAuth) attach the token to plain `http://` URLs on
    /// non-loopback hosts. Default: `false`, such requests fail before they are sent, with an
    /// error naming the host; unless the source allows it
    /// ([`TokenSource::allows_insecure_http`], which
    /// [`AuthTokenSourceBuilder::allow_insecure_http`](crate::AuthTokenSourceBuilder::allow_insecure_http)
    /// sets), so that one opt-in is enough.
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

    /// The value of the `cache` label on this cache's [metrics](crate::metrics) (feature
    /// `metrics`; without it, the label is kept and unused). Default: `"default"`.
    ///
    /// Give each cache its own label when a process has several (one per account or API), so
    /// that their metrics can be told apart: caches with the same label add up in the counters
    /// and overwrite each other's expiry gauge. It is the only label that carries anything of
    /// yours: no user name is recorded unless you put it here, and no secret ever is.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_authtoken::{Error, Token, TokenCache, TokenSource};
    /// # struct Fixed;
    /// # impl TokenSource for Fixed {
    /// #     async fn fetch(&self) -> Result<Token, Error> {
    /// #         Token::new("opaque", Duration::from_secs(3600))
    /// #     }
    /// # }
    /// # fn main() -> Result<(), Error> {
    /// let billing = TokenCache::builder(Fixed).metrics_label("billing-api").build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn metrics_label(mut self, label: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.config.metrics = crate::metrics::CacheMetrics::new(label.into());
        self
    }

    /// Checks the settings and builds the cache. Nothing starts until the first token is needed.
    ///
    /// Fails with [`ErrorKind::Config`], naming the setting, when one is out of its range (each
    /// setter gives it): no setting that passes can make the cache panic or overflow later.
    pub fn build(self) -> Result<TokenCache, Error> {
        self.check().map_err(Error::config)?;
        let budget = self.config.budget.clone();
        Ok(TokenCache::from_config(
            self.source,
            Arc::new(self.config),
            budget,
            None,
        ))
    }

    /// A builder over an already shared source: for a keyed cache's accounts.
    pub(crate) fn for_source(source: SharedSource) -> Self {
        TokenCacheBuilder {
            source,
            config: TokenCacheBuilder::default_config(),
        }
    }

    /// Checks the settings without building anything.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::config)
    }

    /// The settings of a keyed cache's accounts, shared by all of them: every login also draws
    /// on `shared_budget`, renewals are spread, and the driver parks while the account is idle.
    pub(crate) fn account_config(
        mut self,
        shared_budget: &LoginBudget,
        spread: f64,
    ) -> Arc<Config> {
        self.config.shared_budget = Some(shared_budget.clone());
        self.config.spread = spread;
        self.config.park_when_idle = true;
        Arc::new(self.config)
    }

    /// One account's cache: `source` with the shared `config`, and a login budget of its own
    /// with the configured burst and interval.
    pub(crate) fn build_account(
        source: SharedSource,
        config: &Arc<Config>,
        mirror: Mirror,
    ) -> TokenCache {
        let budget = LoginBudget::new(config.budget.burst(), config.budget.interval());
        TokenCache::from_config(source, Arc::clone(config), budget, Some(mirror))
    }

    fn check(&self) -> Result<(), &'static str> {
        let c = &self.config;
        if c.refresh_before > MAX_SETTING {
            return Err("refresh_before must be at most a year");
        }
        if c.jitter > MAX_WAIT {
            return Err("jitter must be at most an hour");
        }
        if c.expiry_margin.is_some_and(|m| m > MAX_SETTING) {
            return Err("expiry_margin must be at most a year");
        }
        if c.fetch_timeout.is_zero() || c.fetch_timeout > MAX_WAIT {
            return Err("fetch_timeout must be more than zero and at most an hour");
        }
        if c.min_backoff.is_zero() || c.min_backoff > MAX_WAIT {
            return Err("min_backoff must be more than zero and at most an hour");
        }
        if c.max_backoff > MAX_PERMANENT_WAIT {
            return Err("max_backoff must be at most a day");
        }
        if c.min_backoff > c.max_backoff {
            return Err("min_backoff must not exceed max_backoff");
        }
        c.budget.check()
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
