//! [`KeyedTokenCache`]: one token per account, for a platform that holds many credentials.
//!
//! A Carrental credential belongs to one account. A platform that books for many agencies holds
//! one account per agency, each with its own token, all against the same API. A
//! `KeyedTokenCache<K>` keeps one [`TokenCache`] per key `K` (a tenant or account id), made on
//! first use from a factory the application gives, and [`KeyedBearerAuthLayer`] picks the
//! account of every request from the request itself.
//!
//! # What each account gets
//!
//! Every account is a [`TokenCache`] with the settings given to
//! [`configure`](KeyedTokenCacheBuilder::configure): the same renewal, `401` handling, backoff and
//! its own [`LoginBudget`]. On top of that:
//!
//! - **One budget for all.** Every login of every account also draws on one shared
//!   [`LoginBudget`] ([`shared_login_budget`](KeyedTokenCacheBuilder::shared_login_budget)): the
//!   API limits a client, not an account.
//! - **Renewals spread out.** An account whose token came from a login with no token in service
//!   (a cold start, a recovery, a `401`) renews it at a random point of the last
//!   [`renewal_spread`](KeyedTokenCacheBuilder::renewal_spread) of its life before the usual
//!   lead, so that tokens issued in the same second are renewed over minutes rather than all at
//!   once. Once spread, they stay spread: a token that renewed one in service is renewed at the
//!   usual lead, so an account in use logs in once per token lifetime.
//! - **Nothing runs for an idle account.** An account's background task stops as soon as nothing
//!   is ahead but the next renewal; the first request past the renewal instant starts one for
//!   the renewal (while it goes on using the current token). An idle account costs its memory
//!   and no task, timer or wake-up. An account nobody uses does not renew: if a request comes
//!   after its token's deadline, it waits for a login.
//!
//! # Bounds
//!
//! - **Idle timeout** (default 30 minutes): an account with no request for that long is dropped:
//!   its token is taken out of service and zeroed, and its task, if any, stops. A single
//!   background task per keyed cache checks every quarter of the timeout, so an account goes
//!   between 1 and 1.25 idle timeouts after its last request. That task runs on the runtime
//!   that made the first account; if that runtime shuts down, the next account made starts it
//!   again on its own (until then, idle accounts stay, their tokens still refused past their
//!   deadlines).
//! - **At most** [`max_accounts`](KeyedTokenCacheBuilder::max_accounts) accounts (default
//!   10,000): making one more first drops the least recently used sixteenth of them.
//!
//! A dropped account is made again, and logs in again, on its next request.
//!
//! # Runtimes and freezes
//!
//! An account is a [`TokenCache`], so what the cache promises about runtimes holds per account:
//! every reader checks the token's deadline itself (a frozen process or an idle runtime never
//! sends an expired token), and a login runs on a live runtime of a caller that needs it. A
//! keyed cache can outlive the runtime that made its accounts: their parked drivers need none,
//! and the sweeper starts again on the runtime that makes the next account
//! (`tests/keyed.rs`, `a_keyed_cache_outlives_the_runtime_that_made_its_accounts`). A process
//! frozen with `SIGSTOP` for longer than a token's life sends no expired token for any account
//! afterwards, through the map or a service's memo, on a current-thread or a multi-thread
//! runtime (`tests/freeze.rs`): an account's driver is usually parked by then, so the
//! request's own deadline check is what refuses it. The sweeper, waking late by many
//! intervals, sweeps once for all of them (dropping every account idle since), not once per
//! interval missed.
//!
//! # The hot path
//!
//! A warm request does one lookup in a concurrent hash map ([`papaya`], lock-free reads) and one
//! deadline check on the coarse clock, and marks the account used when it was not already in
//! the current quarter of the idle timeout. The account's value in the map holds its current
//! token itself: each renewal or withdrawal replaces that value, and the map frees the old one
//! once no reader can see it. Nothing is allocated and nothing is locked. A service that sends
//! a run of requests for one account (two in a row start it) reads that account without the
//! map, through a per-clone `arc_swap::Cache` as a single [`BearerAuth`](crate::BearerAuth)
//! does, until a request names another account; clones start without one.

mod layer;

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use foldhash::fast::RandomState;
use http::HeaderValue;

use crate::cache::{Config, Entry, Mirror};
use crate::error::BoxError;
use crate::source::SharedSource;
use crate::{Error, ErrorKind, LoginBudget, Token, TokenCache, TokenCacheBuilder, TokenSource};

pub use layer::{
    AccountFn, AccountFromRequest, FromExtension, KeyedBearerAuth, KeyedBearerAuthLayer,
};

/// The default [`KeyedTokenCacheBuilder::max_accounts`].
const DEFAULT_MAX_ACCOUNTS: usize = 10_000;
/// The default [`KeyedTokenCacheBuilder::idle_timeout`].
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The default [`KeyedTokenCacheBuilder::renewal_spread`].
const DEFAULT_SPREAD: f64 = 0.2;
/// The default shared budget: 10 logins at once, then 10 a second.
const DEFAULT_SHARED_BURST: u32 = 10;
const DEFAULT_SHARED_INTERVAL: Duration = Duration::from_millis(100);
/// Sweeps per idle timeout.
const SWEEPS_PER_TIMEOUT: u32 = 4;
/// The fraction of the accounts dropped when one more is needed and there is no room.
const EVICT_DIVISOR: usize = 16;

/// One [`TokenCache`] per account key `K`, made on first use. See the [module docs](self).
///
/// Clone it freely: clones share the accounts.
///
/// ```
/// use std::time::Duration;
/// use tower_authtoken::{Error, KeyedTokenCache, Token, TokenSource};
///
/// /// The login of one agency.
/// struct Agency(u32);
/// impl TokenSource for Agency {
///     async fn fetch(&self) -> Result<Token, Error> {
///         Token::new(format!("token-of-{}", self.0), Duration::from_secs(3600))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let accounts = KeyedTokenCache::builder(|agency: &u32| match *agency {
///     1..=1000 => Ok(Agency(*agency)),
///     _ => Err("no such agency"),
/// })
/// .idle_timeout(Duration::from_secs(600))
/// .build()?;
///
/// assert_eq!(accounts.token(&7).await?.header_value(), "Bearer token-of-7");
/// let refused = accounts.token(&5000).await.unwrap_err();
/// assert_eq!(refused.kind(), tower_authtoken::ErrorKind::UnknownAccount);
/// # Ok(())
/// # }
/// ```
pub struct KeyedTokenCache<K> {
    inner: Arc<Keyed<K>>,
}

impl<K> Clone for KeyedTokenCache<K> {
    fn clone(&self) -> Self {
        KeyedTokenCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

type Factory<K> = dyn Fn(&K) -> Result<SharedSource, BoxError> + Send + Sync;
type Configure = dyn FnOnce(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync;

struct Keyed<K> {
    accounts: papaya::HashMap<K, Account, RandomState>,
    factory: Box<Factory<K>>,
    /// The settings of every account, shared.
    config: Arc<Config>,
    shared_budget: LoginBudget,
    spread: f64,
    max_accounts: usize,
    idle_timeout: Duration,
    /// Advanced by the sweeper every quarter of the idle timeout; accounts remember the epoch
    /// of their last request.
    epoch: AtomicU32,
    /// Makes accounts one at a time, so that each key's factory runs once.
    creating: Mutex<()>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    counters: KeyedCounters,
    /// Sweeps run, for tests.
    #[cfg(test)]
    sweeps: AtomicU64,
}

#[derive(Default)]
struct KeyedCounters {
    created: AtomicU64,
    refused: AtomicU64,
    dropped_idle: AtomicU64,
    dropped_full: AtomicU64,
    dropped_in_use: AtomicU64,
    /// The sweep epoch (plus one) of the last warning that accounts in use were dropped.
    warned_in_use: AtomicU32,
}

/// One account: its cache, and a copy of its cache's slot for the hot path.
///
/// The copy is kept by the cache's [`Mirror`] ([`mirror`]): every change of the slot replaces
/// this value in the map with one holding the new entry, and the map frees the old value once
/// no reader can see it. A request for the account thus reads its token under the map's own
/// guard: one lookup, then the entry, with no `ArcSwap` load and no hop through the cache.
pub(crate) struct Account {
    cache: TokenCache,
    entry: Option<Arc<Entry>>,
}

impl Account {
    /// The token's header and identity, if one may be sent now.
    #[inline]
    pub(crate) fn current(&self) -> Option<(HeaderValue, u64)> {
        self.cache.serve(self.entry.as_ref())
    }

    #[inline]
    pub(crate) fn cache_key(&self) -> u64 {
        self.cache.key()
    }

    pub(crate) fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

/// Counts of a [`KeyedTokenCache`]'s accounts, from [`KeyedTokenCache::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedStats {
    /// Accounts held now.
    pub accounts: usize,
    /// Accounts made so far (a dropped account made again counts again).
    pub created: u64,
    /// Keys the factory refused.
    pub refused: u64,
    /// Accounts dropped after the idle timeout.
    pub dropped_idle: u64,
    /// Accounts dropped to make room under `max_accounts`.
    pub dropped_full: u64,
    /// Of [`dropped_full`](Self::dropped_full), accounts used in the current or the previous
    /// sweep interval (each a quarter of the idle timeout: so within the last quarter to half of
    /// it): more accounts are in use than `max_accounts` holds, and each comes back with a new
    /// login. Raise `max_accounts` when this grows; a warning is logged too.
    pub dropped_in_use: u64,
}

impl<K> KeyedTokenCache<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A builder over `factory`, which turns a key into the [`TokenSource`] of its account
    /// (typically an [`AuthTokenSource`](crate::AuthTokenSource) with that account's
    /// credentials), or refuses it: the request then fails with [`ErrorKind::UnknownAccount`],
    /// carrying the factory's error as its source. The factory runs once per account, when the
    /// account is first needed (and again after it was dropped); it must not block. A source
    /// whose credentials must be looked up asynchronously can do so in its own `fetch`. An
    /// [`AuthTokenSource`](crate::AuthTokenSource) costs about 2 µs to make: sources without a
    /// client of their own share one.
    pub fn builder<F, S, E>(factory: F) -> KeyedTokenCacheBuilder<K>
    where
        F: Fn(&K) -> Result<S, E> + Send + Sync + 'static,
        S: TokenSource,
        E: Into<BoxError>,
    {
        KeyedTokenCacheBuilder {
            factory: Box::new(move |key: &K| match factory(key) {
                Ok(source) => Ok(Arc::new(source) as SharedSource),
                Err(error) => Err(error.into()),
            }),
            configure: Box::new(|builder| builder),
            shared_budget: LoginBudget::new(DEFAULT_SHARED_BURST, DEFAULT_SHARED_INTERVAL),
            spread: DEFAULT_SPREAD,
            max_accounts: DEFAULT_MAX_ACCOUNTS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// A valid token for the account `key`, made on first use; waits for a login when needed.
    pub async fn token(&self, key: &K) -> Result<Token, Error> {
        self.cache(key)?.token().await
    }

    /// The [`TokenCache`] of the account `key`, made on first use: to
    /// [`invalidate`](TokenCache::invalidate) a token or read its
    /// [`stats`](TokenCache::stats). Must be called from within a Tokio runtime the first time.
    pub fn cache(&self, key: &K) -> Result<TokenCache, Error> {
        self.inner
            .with_account(key, |account| account.cache.clone())
    }

    /// Drops the account `key` now, as the idle timeout would: its token is taken out of
    /// service and zeroed. Whether there was one.
    pub fn remove(&self, key: &K) -> bool {
        let accounts = self.inner.accounts.pin();
        let Some(account) = accounts.remove(key) else {
            return false;
        };
        account.cache.retire();
        flush(&self.inner.accounts);
        true
    }

    /// The number of accounts held now.
    pub fn len(&self) -> usize {
        self.inner.accounts.len()
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.inner.accounts.is_empty()
    }

    /// Counts of accounts made, refused and dropped.
    pub fn stats(&self) -> KeyedStats {
        let counters = &self.inner.counters;
        KeyedStats {
            accounts: self.len(),
            created: counters.created.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            dropped_idle: counters.dropped_idle.load(Ordering::Relaxed),
            dropped_full: counters.dropped_full.load(Ordering::Relaxed),
            dropped_in_use: counters.dropped_in_use.load(Ordering::Relaxed),
        }
    }

    /// The shared budget every account's logins draw on.
    pub fn shared_login_budget(&self) -> &LoginBudget {
        &self.inner.shared_budget
    }

    /// The current sweep epoch, for requests that reach an account without the map.
    #[inline]
    pub(crate) fn epoch(&self) -> u32 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Runs `f` on the account `key`, made first if there is none.
    #[inline]
    pub(crate) fn with_account<T>(
        &self,
        key: &K,
        f: impl FnOnce(&Account) -> T,
    ) -> Result<T, Error> {
        self.inner.with_account(key, f)
    }
}

impl<K> Keyed<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Runs `f` on the account `key`, made first if there is none. The warm case locks nothing.
    #[inline]
    pub(crate) fn with_account<T>(
        self: &Arc<Self>,
        key: &K,
        f: impl FnOnce(&Account) -> T,
    ) -> Result<T, Error> {
        let epoch = self.epoch.load(Ordering::Relaxed);
        {
            let accounts = self.accounts.pin();
            if let Some(account) = accounts.get(key) {
                account.cache.mark_used(epoch);
                return Ok(f(account));
            }
        }
        self.create(key, f)
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn create<T>(
        self: &Arc<Self>,
        key: &K,
        f: impl FnOnce(&Account) -> T,
    ) -> Result<T, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(ErrorKind::Runtime).with_detail(
                "no Tokio runtime: use the keyed token cache from within a Tokio runtime",
            )
        })?;
        let _one_at_a_time = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let accounts = self.accounts.pin();
        if let Some(account) = accounts.get(key) {
            return Ok(f(account));
        }
        let source = (self.factory)(key).map_err(|error| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            Error::new(ErrorKind::UnknownAccount)
                .with_detail("the account factory refused the request's account")
                .with_source(error)
        })?;
        if accounts.len() >= self.max_accounts {
            self.evict_least_recent(&accounts);
        }
        let mirror = mirror(Arc::downgrade(self), key.clone());
        let cache = TokenCacheBuilder::build_account(source, &self.config, mirror);
        cache.mark_used(self.epoch.load(Ordering::Relaxed));
        let account = Account { cache, entry: None };
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        let inserted = accounts.get_or_insert(key.clone(), account);
        let result = f(inserted);
        drop(accounts);
        start_sweeper(self, &runtime);
        Ok(result)
    }

    /// Drops the least recently used sixteenth of the accounts (at least one).
    fn evict_least_recent(
        &self,
        accounts: &papaya::HashMapRef<'_, K, Account, RandomState, impl papaya::Guard>,
    ) {
        let mut ages: Vec<(u32, &K)> = accounts
            .iter()
            .map(|(key, account)| (account.cache.last_used(), key))
            .collect();
        let count = (ages.len() / EVICT_DIVISOR).max(1).min(ages.len());
        if count == 0 {
            return;
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        // Oldest first: the epoch wraps, so compare how long ago, not the raw value.
        ages.select_nth_unstable_by_key(count - 1, |(used, _)| {
            std::cmp::Reverse(epoch.wrapping_sub(*used))
        });
        let mut in_use = 0u64;
        for (used, key) in &ages[..count] {
            if let Some(account) = accounts.remove(*key) {
                account.cache.retire();
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                // Used in this sweep interval or the one before.
                in_use += u64::from(epoch.wrapping_sub(*used) <= 1);
            }
        }
        flush(&self.accounts);
        if in_use == 0 {
            tracing::info!(
                dropped = count,
                max_accounts = self.max_accounts,
                "the keyed token cache is full; dropped its least recently used accounts"
            );
            return;
        }
        self.counters
            .dropped_in_use
            .fetch_add(in_use, Ordering::Relaxed);
        // Once per sweep interval: a cache too small drops accounts at every new one.
        let warned = &self.counters.warned_in_use;
        if warned.swap(epoch.wrapping_add(1), Ordering::Relaxed) != epoch.wrapping_add(1) {
            tracing::warn!(
                dropped = count,
                in_use,
                max_accounts = self.max_accounts,
                "the keyed token cache is full of accounts in use; it dropped some that were used \
                 recently, and each will log in again on its next request: raise max_accounts"
            );
        }
    }

    /// Starts the epoch `elapsed` sweep intervals on, and drops the accounts not used for the
    /// idle timeout.
    fn sweep(&self, elapsed: u32) {
        #[cfg(test)]
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        let epoch = self
            .epoch
            .fetch_add(elapsed, Ordering::Relaxed)
            .wrapping_add(elapsed);
        let idle =
            |account: &Account| epoch.wrapping_sub(account.cache.last_used()) > SWEEPS_PER_TIMEOUT;
        let accounts = self.accounts.pin();
        let idle_keys: Vec<K> = accounts
            .iter()
            .filter(|(_, account)| idle(account))
            .map(|(key, _)| key.clone())
            .collect();
        let mut dropped = 0u64;
        for key in &idle_keys {
            // Still idle when taken out: a request may have come since.
            if let Ok(Some((_, account))) = accounts.remove_if(key, |_, account| idle(account)) {
                account.cache.retire();
                dropped += 1;
            }
        }
        if dropped > 0 {
            flush(&self.accounts);
            self.counters
                .dropped_idle
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(dropped, "dropped idle accounts");
        }
    }
}

/// The [`Mirror`] of the account `key`: puts each new entry of its cache's slot in the
/// account's value in the map, if the value there is still that cache's (the account may have
/// been dropped, or dropped and made again, since).
fn mirror<K>(keyed: Weak<Keyed<K>>, key: K) -> Mirror
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    Box::new(move |shared, entry| {
        let Some(keyed) = keyed.upgrade() else {
            return;
        };
        let accounts = keyed.accounts.pin();
        let replaced = accounts.compute(key.clone(), |found| match found {
            Some((_, account)) if account.cache.is(shared) => papaya::Operation::Insert(Account {
                cache: account.cache.clone(),
                entry: entry.cloned(),
            }),
            _ => papaya::Operation::Abort(()),
        });
        if let papaya::Compute::Updated { old: (_, old), .. } = replaced
            && old.entry.is_some()
        {
            flush(&keyed.accounts);
        }
    })
}

/// How many values taken out of the map a thread collects before reclaiming them.
const RECLAIM_BATCH: usize = 256;

/// Starts reclaiming the values taken out of the map so far on this thread, rather than when
/// their batch is full: for values that held a token, so that it is zeroed once no reader can
/// see it. (seize needs a value in the batch for each thread inside a guard at that moment; if
/// another thread is mid-lookup then, the batch waits for this thread's next retirement.)
fn flush<K>(accounts: &papaya::HashMap<K, Account, RandomState>) {
    papaya::Guard::flush(&accounts.guard());
}

impl<K> Drop for Keyed<K> {
    fn drop(&mut self) {
        if let Some(sweeper) = self
            .sweeper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            sweeper.abort();
        }
    }
}

impl<K: Hash + Eq> fmt::Debug for KeyedTokenCache<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenCache")
            .field("accounts", &self.inner.accounts.len())
            .field("max_accounts", &self.inner.max_accounts)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("shared_login_budget", &self.inner.shared_budget)
            .field("renewal_spread", &self.inner.spread)
            .finish_non_exhaustive()
    }
}

/// Builds a [`KeyedTokenCache`]; from [`KeyedTokenCache::builder`].
#[must_use = "call build() to get a KeyedTokenCache"]
pub struct KeyedTokenCacheBuilder<K> {
    factory: Box<Factory<K>>,
    configure: Box<Configure>,
    shared_budget: LoginBudget,
    spread: f64,
    max_accounts: usize,
    idle_timeout: Duration,
}

impl<K> KeyedTokenCacheBuilder<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Settings for every account's [`TokenCache`], as on a [`TokenCacheBuilder`]:
    /// `refresh_before`, `expiry_margin`, backoffs, `allow_insecure_http`, a shared store, and
    /// the account's own `login_budget` (each account gets a budget of its own with that burst
    /// and interval). Default: the [`TokenCacheBuilder`] defaults. `build()` applies them once
    /// and checks them; every account shares the result, a shared store included:
    /// `.configure(move |cache| cache.shared(redis_store))`, whose keys are per user.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_authtoken::{Error, KeyedTokenCache, Token, TokenSource};
    /// # struct Agency;
    /// # impl TokenSource for Agency {
    /// #     async fn fetch(&self) -> Result<Token, Error> { Token::new("t", Duration::from_secs(60)) }
    /// # }
    /// let accounts = KeyedTokenCache::builder(|_: &u64| Ok::<_, Error>(Agency))
    ///     .configure(|cache| cache.refresh_before(Duration::from_secs(300)))
    ///     .build()?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn configure<F>(mut self, configure: F) -> Self
    where
        F: FnOnce(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync + 'static,
    {
        self.configure = Box::new(configure);
        self
    }

    /// The budget every login of every account draws on, besides the account's own. Default:
    /// 10 at once, then 10 a second.
    ///
    /// Size it for the number of accounts in use: `n` accounts with tokens of life `L` renew
    /// about `n / (renewal_spread × L)` times a second at worst, right after they all logged
    /// in together.
    pub fn shared_login_budget(mut self, budget: LoginBudget) -> Self {
        self.shared_budget = budget;
        self
    }

    /// The fraction (0 to 1) of a token's life, before the usual renewal lead, over which the
    /// accounts' renewals are spread at random. Default: 0.2. With 1-hour tokens and the
    /// default 60 s lead, the first renewal after a login with no token in service (a cold
    /// start, a recovery, a `401`) falls between 48 and 59 minutes into the token's life; the
    /// renewals after it come at the lead, as a single [`TokenCache`]'s do, since the tokens
    /// they replace were issued apart already. 0 renews every account at the lead.
    pub fn renewal_spread(mut self, fraction: f64) -> Self {
        self.spread = fraction;
        self
    }

    /// The most accounts held at once. Default: 10,000. Making one more first drops the least
    /// recently used sixteenth.
    pub fn max_accounts(mut self, max: usize) -> Self {
        self.max_accounts = max;
        self
    }

    /// How long an account may go without a request before it is dropped, token and all.
    /// Default: 30 minutes. It goes between 1 and 1.25 times this after its last request.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Checks the settings and builds the keyed cache. Nothing starts until the first account
    /// is needed.
    ///
    /// Fails with [`ErrorKind::Config`], naming the setting, when one is out of range:
    /// `max_accounts` 1 to 10,000,000, `idle_timeout` 1 s to 1 week, `renewal_spread` 0 to
    /// 0.9, and the per-account settings as [`TokenCacheBuilder::build`] checks them.
    pub fn build(self) -> Result<KeyedTokenCache<K>, Error> {
        if !(1..=10_000_000).contains(&self.max_accounts) {
            return Err(Error::config("max_accounts must be 1 to 10000000"));
        }
        if self.idle_timeout < Duration::from_secs(1)
            || self.idle_timeout > Duration::from_secs(7 * 24 * 60 * 60)
        {
            return Err(Error::config("idle_timeout must be 1 s to 1 week"));
        }
        if !(0.0..=0.9).contains(&self.spread) {
            return Err(Error::config("renewal_spread must be 0 to 0.9"));
        }
        self.shared_budget
            .check()
            .map_err(|problem| Error::config(format!("shared_{problem}")))?;
        // The per-account settings, checked once, on a stand-in source.
        let template = (self.configure)(TokenCacheBuilder::for_source(Arc::new(NoSource)));
        template.validate()?;
        let config = template.account_config(&self.shared_budget, self.spread);
        Ok(KeyedTokenCache {
            inner: Arc::new(Keyed {
                // Values are reclaimed in batches (seize's default size): each reclamation
                // costs a process-wide memory barrier (`membarrier`), which 100,000 first
                // logins at once must not pay one by one. A value that held a token, or a
                // dropped account, starts its batch's reclamation at once ([`flush`]), so that
                // its token is zeroed without waiting for others to fill the batch.
                accounts: papaya::HashMap::builder()
                    .hasher(RandomState::default())
                    .collector(seize::Collector::new().batch_size(RECLAIM_BATCH))
                    .build(),
                factory: self.factory,
                config,
                shared_budget: self.shared_budget,
                spread: self.spread,
                max_accounts: self.max_accounts,
                idle_timeout: self.idle_timeout,
                epoch: AtomicU32::new(0),
                creating: Mutex::new(()),
                sweeper: Mutex::new(None),
                counters: KeyedCounters::default(),
                #[cfg(test)]
                sweeps: AtomicU64::new(0),
            }),
        })
    }
}

impl<K> fmt::Debug for KeyedTokenCacheBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenCacheBuilder")
            .field("max_accounts", &self.max_accounts)
            .field("idle_timeout", &self.idle_timeout)
            .field("shared_login_budget", &self.shared_budget)
            .field("renewal_spread", &self.spread)
            .finish_non_exhaustive()
    }
}

/// The stand-in source `build()` checks the per-account settings with.
struct NoSource;

impl TokenSource for NoSource {
    async fn fetch(&self) -> Result<Token, Error> {
        Err(Error::config("no source"))
    }
}

/// Starts the sweeper task on `runtime`: it holds the keyed cache weakly and stops when it is
/// dropped (its `Drop` also aborts it).
fn start_sweeper<K>(keyed: &Arc<Keyed<K>>, runtime: &tokio::runtime::Handle)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    let mut sweeper = keyed.sweeper.lock().unwrap_or_else(PoisonError::into_inner);
    if sweeper.as_ref().is_some_and(|task| !task.is_finished()) {
        return;
    }
    let every = keyed.idle_timeout / SWEEPS_PER_TIMEOUT;
    let weak: Weak<Keyed<K>> = Arc::downgrade(keyed);
    *sweeper = Some(runtime.spawn(async move {
        let mut next = tokio::time::Instant::now() + every;
        loop {
            tokio::time::sleep_until(next).await;
            // Late by whole intervals (a frozen process, a runtime nobody drove): one sweep for
            // all of them, not one per interval in a burst, each over every account.
            // (More than the idle timeout late drops every account not used since: so many
            // intervals are as good as any more.)
            let now = tokio::time::Instant::now();
            let late = now.saturating_duration_since(next);
            let every_ns = every.as_nanos().max(1);
            let missed = late.as_nanos() / every_ns;
            let elapsed = u32::try_from(missed + 1)
                .unwrap_or(u32::MAX)
                .min(SWEEPS_PER_TIMEOUT + 1);
            // The next sweep keeps the schedule's phase.
            let into = u64::try_from(late.as_nanos() % every_ns).unwrap_or(0);
            next = now + every.saturating_sub(Duration::from_nanos(into));
            match weak.upgrade() {
                Some(keyed) => keyed.sweep(elapsed),
                None => return,
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Login(u32);

    impl TokenSource for Login {
        async fn fetch(&self) -> Result<Token, Error> {
            Token::new(format!("account-{}", self.0), Duration::from_secs(3600))
        }
    }

    /// A process that stood still for 10 hours (`SIGSTOP`, a laptop asleep) wakes with its
    /// sweeper 2,400 intervals late: it sweeps once, dropping every account idle since, not
    /// 2,400 times in a burst over every account, and then goes on once per interval.
    #[tokio::test(start_paused = true)]
    async fn a_sweeper_hours_late_sweeps_once_and_keeps_its_schedule() {
        let accounts = KeyedTokenCache::builder(|account: &u32| Ok::<_, Error>(Login(*account)))
            .idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        for account in 0..100 {
            accounts.token(&account).await.unwrap();
        }
        let sweeps = || accounts.inner.sweeps.load(Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(10 * 3600)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(sweeps(), 1, "sweeps after the freeze");
        assert_eq!(accounts.len(), 0);
        assert_eq!(accounts.stats().dropped_idle, 100);
        // The schedule goes on: a sweep every quarter of the idle timeout.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sweeps(), 5);
    }

    /// 250 accounts cold at once on a shared budget of 10 logins a second (25 s to serve them
    /// all): each cache that loses the race for a login takes a turn in line and logs in at it.
    /// Without turns every waiting cache woke and looked at the budget at each of its logins:
    /// 29,910 looks (about 250² / 2), where turns take 760 (about three per account).
    #[tokio::test(start_paused = true)]
    async fn caches_waiting_for_a_shared_budget_take_turns_instead_of_all_waking_at_each_login() {
        const ACCOUNTS: u32 = 250;
        let budget = LoginBudget::new(10, Duration::from_millis(100));
        let accounts = KeyedTokenCache::builder(|account: &u32| Ok::<_, Error>(Login(*account)))
            .shared_login_budget(budget.clone())
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for account in 0..ACCOUNTS {
            let accounts = accounts.clone();
            callers.spawn(async move { accounts.token(&account).await.map(|_| started.elapsed()) });
        }
        let mut longest = Duration::ZERO;
        while let Some(caller) = callers.join_next().await {
            longest = longest.max(caller.unwrap().unwrap());
        }
        let looks = budget.looks.load(Ordering::Relaxed);
        assert!(
            looks <= 5 * u64::from(ACCOUNTS),
            "{looks} looks at the budget"
        );
        // In turn, at the budget's pace: 10 at once, then one every 100 ms.
        assert!(longest <= Duration::from_millis(24_100), "{longest:?}");
    }
}
