//! [`LoginBudget`]: a hard cap on how often a cache logs in, whatever the server says.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The default burst: 5 logins at once.
pub(crate) const DEFAULT_BURST: u32 = 5;
/// The default sustained pace: one login every 250 ms (4 a second).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);
/// The largest burst `build` accepts.
pub(crate) const MAX_BURST: u32 = 1_000_000;
/// The longest interval `build` accepts: one login an hour.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// A hard cap on logins: at most `burst` at once, then one per `interval`.
///
/// Every login a [`TokenCache`](crate::TokenCache) makes draws on its budget: proactive renewals,
/// logins after a `401`, retries after failures, and logins for callers with no token. When the
/// budget is spent the login waits (callers with no token wait with it; callers with a valid
/// token keep using it), so no server behaviour, API response or lifetime can drive the cache
/// into a login loop.
///
/// The default, burst 5 and then one login every 250 ms (4 a second), is generous enough that
/// a token living 1 s is renewed in time (it needs about 2 logins a second, with room for a
/// retry), and tight enough that a server issuing 10 ms tokens, or an API answering `401` to
/// everything, costs at most 4 logins a second rather than hundreds.
///
/// Clones share one budget, so several caches (one per account against the same API, for
/// example) can be capped together. Caches waiting for a shared budget take turns at it, one
/// interval apart, those whose callers wait with no token first, rather than all waking at each
/// login it allows:
///
/// ```
/// use std::time::Duration;
/// use tower_authtoken::{Error, LoginBudget, Token, TokenCache, TokenSource};
///
/// # struct Account(&'static str);
/// # impl TokenSource for Account {
/// #     async fn fetch(&self) -> Result<Token, Error> {
/// #         Token::new(self.0, Duration::from_secs(3600))
/// #     }
/// # }
/// # fn main() -> Result<(), Error> {
/// // Ten logins at most at once, then two a second, for both accounts together.
/// let budget = LoginBudget::new(10, Duration::from_millis(500));
/// let alice = TokenCache::builder(Account("a")).login_budget(budget.clone()).build()?;
/// let bob = TokenCache::builder(Account("b")).login_budget(budget).build()?;
/// # Ok(())
/// # }
/// ```
///
/// Time is Tokio's clock, so tests on the paused clock control it.
#[derive(Clone)]
pub struct LoginBudget {
    burst: u32,
    interval: Duration,
    /// The GCRA's theoretical arrival time (when the budget would be back to one login spent),
    /// and the turns of [`next_turn`](Self::next_turn), made when a login is first held back.
    /// Shared by every clone.
    tat: Arc<Mutex<Gcra>>,
    /// Calls of `ready_at` and `try_spend`, for tests that count how often waiting caches look
    /// at the budget.
    #[cfg(test)]
    pub(crate) looks: Arc<std::sync::atomic::AtomicU64>,
}

impl LoginBudget {
    /// A budget of `burst` logins at once, then one every `interval`.
    ///
    /// The values are checked by [`TokenCacheBuilder::build`](crate::TokenCacheBuilder::build):
    /// `burst` must be 1 to 1,000,000 and `interval` more than zero and at most an hour.
    pub fn new(burst: u32, interval: Duration) -> LoginBudget {
        LoginBudget {
            burst,
            interval,
            tat: Arc::default(),
            #[cfg(test)]
            looks: Arc::default(),
        }
    }

    /// How many logins may happen at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The sustained pace: one login per this interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A description of what is wrong with the settings, if anything.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !(1..=MAX_BURST).contains(&self.burst) {
            return Err("login_budget: burst must be 1 to 1000000");
        }
        if self.interval.is_zero() || self.interval > MAX_INTERVAL {
            return Err("login_budget: interval must be more than zero and at most 1 hour");
        }
        Ok(())
    }

    /// From when on a login is allowed, without spending anything.
    pub(crate) fn ready_at(&self, now: Instant) -> Instant {
        #[cfg(test)]
        self.looks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match gcra(self.lock().tat, now, self.interval, self.burst) {
            Ok(_) => now,
            Err(at) => at,
        }
    }

    /// Spends one login if the budget allows it at `now`; otherwise says from when on it will.
    pub(crate) fn try_spend(&self, now: Instant) -> Result<(), Instant> {
        #[cfg(test)]
        self.looks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        let next = gcra(state.tat, now, self.interval, self.burst)?;
        state.tat = Some(next);
        Ok(())
    }

    /// When a cache waiting for this budget should next try it: a turn in line, so that the
    /// caches waiting for a budget shared by many wake one at a time, at about the pace it
    /// allows logins, instead of all at each of them (N² wake-ups for N caches waiting).
    ///
    /// A turn spends nothing: the login is still drawn with [`try_spend`](Self::try_spend)
    /// when the turn comes, so the cap stays exact, and a cache that finds the budget spent
    /// takes another turn. Turns are one interval apart, from when the budget next allows a
    /// login, in the order asked; an `urgent` turn (callers waiting with no token) comes before
    /// every turn of a renewal (a token still in service, which can wait). `None` when the
    /// budget allows a login now: no turn is needed.
    pub(crate) fn next_turn(&self, now: Instant, urgent: bool) -> Option<Instant> {
        let ready = self.ready_at(now);
        if ready <= now {
            return None;
        }
        let mut state = self.lock();
        let turns = state.turns.get_or_insert_with(Box::default);
        let lane = if urgent { turns.urgent } else { turns.all };
        let turn = lane.map_or(ready, |lane| lane.max(ready));
        let after = turn + self.interval;
        if urgent {
            turns.urgent = Some(after);
        }
        turns.all = Some(turns.all.map_or(after, |all| all.max(after)));
        Some(turn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gcra> {
        self.tat.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What clones of a budget share.
#[derive(Debug, Default)]
struct Gcra {
    tat: Option<Instant>,
    turns: Option<Box<Turns>>,
}

/// The next free turn for any cache, and for a cache whose callers wait with no token.
#[derive(Debug, Default)]
struct Turns {
    all: Option<Instant>,
    urgent: Option<Instant>,
}

impl Default for LoginBudget {
    /// Burst 5, then one login every 250 ms.
    fn default() -> Self {
        LoginBudget::new(DEFAULT_BURST, DEFAULT_INTERVAL)
    }
}

impl fmt::Debug for LoginBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginBudget")
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .finish()
    }
}

/// The generic cell rate algorithm: given the theoretical arrival time `tat`, whether one more
/// login fits at `now`. `Ok` carries the new arrival time; `Err` the instant it will fit.
///
/// Each login pushes `tat` one `interval` further; a login fits while `tat` is at most
/// `(burst − 1) × interval` ahead of `now`.
pub(crate) fn gcra(
    tat: Option<Instant>,
    now: Instant,
    interval: Duration,
    burst: u32,
) -> Result<Instant, Instant> {
    let tat = tat.map_or(now, |tat| tat.max(now));
    let tolerance = interval.saturating_mul(burst.saturating_sub(1));
    let fits_from = tat.checked_sub(tolerance).unwrap_or(now);
    if now >= fits_from {
        Ok(tat + interval)
    } else {
        Err(fits_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_passes_then_one_login_per_interval() {
        let t0 = Instant::now();
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(gcra(tat, t0, 250 * MS, 5).expect("within the burst"));
        }
        assert_eq!(gcra(tat, t0, 250 * MS, 5), Err(t0 + 250 * MS));
        tat = Some(gcra(tat, t0 + 250 * MS, 250 * MS, 5).expect("one more after an interval"));
        assert_eq!(gcra(tat, t0 + 400 * MS, 250 * MS, 5), Err(t0 + 500 * MS));
    }

    #[test]
    fn an_idle_budget_refills_to_the_burst_and_no_further() {
        let t0 = Instant::now();
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(gcra(tat, t0, 250 * MS, 5).unwrap());
        }
        let later = t0 + Duration::from_secs(3600);
        let mut passed = 0;
        while let Ok(next) = gcra(tat, later, 250 * MS, 5) {
            tat = Some(next);
            passed += 1;
        }
        assert_eq!(passed, 5);
    }

    #[test]
    fn over_any_window_the_count_stays_within_burst_plus_window_over_interval() {
        let t0 = Instant::now();
        let budget = LoginBudget::new(3, 100 * MS);
        let mut granted = vec![];
        for step in 0..2_000u64 {
            let now = t0 + Duration::from_millis(step);
            if budget.try_spend(now).is_ok() {
                granted.push(now);
            }
        }
        for (i, start) in granted.iter().enumerate() {
            let window = Duration::from_millis(500);
            let inside = granted[i..]
                .iter()
                .take_while(|at| **at < *start + window)
                .count();
            assert!(inside <= 3 + 5, "{inside} logins in 500 ms");
        }
        assert!(granted.len() >= 20, "{}", granted.len());
    }

    #[test]
    fn turns_are_one_interval_apart_from_the_next_login_urgent_ones_first_and_spend_nothing() {
        let t0 = Instant::now();
        let budget = LoginBudget::new(2, 100 * MS);
        assert!(budget.try_spend(t0).is_ok() && budget.try_spend(t0).is_ok());
        let turn = |urgent| budget.next_turn(t0, urgent).expect("the budget is spent") - t0;
        assert_eq!(
            [turn(false), turn(false), turn(false)],
            [100 * MS, 200 * MS, 300 * MS]
        );
        assert_eq!(
            [turn(true), turn(true)],
            [100 * MS, 200 * MS],
            "ahead of the renewals"
        );
        assert_eq!(turn(false), 400 * MS, "renewals go behind every turn");
        assert!(
            budget.try_spend(t0 + 100 * MS).is_ok(),
            "a turn spends nothing"
        );
    }

    #[test]
    fn clones_share_one_budget() {
        let t0 = Instant::now();
        let a = LoginBudget::new(1, Duration::from_secs(1));
        let b = a.clone();
        assert!(a.try_spend(t0).is_ok());
        assert_eq!(b.try_spend(t0), Err(t0 + Duration::from_secs(1)));
        assert_eq!(b.ready_at(t0), t0 + Duration::from_secs(1));
    }

    #[test]
    fn out_of_range_settings_are_named() {
        assert!(LoginBudget::default().check().is_ok());
        for bad in [
            LoginBudget::new(0, MS),
            LoginBudget::new(MAX_BURST + 1, MS),
            LoginBudget::new(1, Duration::ZERO),
            LoginBudget::new(1, Duration::MAX),
        ] {
            assert!(bad.check().unwrap_err().starts_with("login_budget"));
        }
    }

    struct Login(u32);

    impl crate::TokenSource for Login {
        async fn fetch(&self) -> Result<crate::Token, crate::Error> {
            crate::Token::new(format!("account-{}", self.0), Duration::from_secs(3600))
        }
    }

    /// 250 single caches sharing one budget (one per account, as the type's docs show), cold
    /// at once: they take turns as a keyed cache's accounts do, and never log in faster than
    /// the budget allows. Before turns applied to a cache's own budget, every waiting cache
    /// woke at each login: 30,160 looks, where turns take 760.
    #[tokio::test(start_paused = true)]
    async fn caches_sharing_a_budget_take_turns_and_keep_to_it() {
        const CACHES: u32 = 250;
        let budget = LoginBudget::new(10, 100 * MS);
        let started = tokio::time::Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for account in 0..CACHES {
            let cache = crate::TokenCache::builder(Login(account))
                .login_budget(budget.clone())
                .build()
                .unwrap();
            callers.spawn(async move { cache.token().await.map(|_| (started.elapsed(), cache)) });
        }
        let mut served = Vec::new();
        let mut caches = Vec::new();
        while let Some(caller) = callers.join_next().await {
            let (at, cache) = caller.unwrap().unwrap();
            served.push(at);
            caches.push(cache);
        }
        served.sort();
        let looks = budget.looks.load(std::sync::atomic::Ordering::Relaxed);
        let longest = *served.last().unwrap();
        // Never faster than the budget: 10 at once, then one every 100 ms.
        for (n, at) in served.iter().enumerate().skip(10) {
            assert!(*at >= (n as u32 - 9) * 100 * MS, "login {n} at {at:?}");
        }
        assert!(
            looks <= 5 * u64::from(CACHES),
            "{looks} looks at the budget"
        );
        assert!(longest <= Duration::from_millis(24_100), "{longest:?}");
    }
}
