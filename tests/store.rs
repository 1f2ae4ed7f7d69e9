//! The `TokenStore` contract, on the paused clock, with an in-memory store: only a store's
//! login draws on the login budgets; asking the store for a peer's token does not.
//!
//! The world: a fleet whose store already holds every account's token (a replica restarting
//! into a warm fleet), and one whose store is empty (the whole fleet starting cold). Counted:
//! logins, when each caller is served, failures, and what callers see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_authtoken::store::{BoxFuture, ObtainRequest, TokenStore};
use tower_authtoken::{Error, ErrorKind, KeyedTokenCache, LoginBudget, Token, TokenSource};

const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

/// One account's login, counted.
struct Login {
    user: String,
    logins: Arc<AtomicU64>,
}

impl TokenSource for Login {
    async fn fetch(&self) -> Result<Token, Error> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        Token::new(format!("{}-{}", self.user, fastrand::u64(..)), HOUR)
    }

    fn user_name(&self) -> Option<&str> {
        Some(&self.user)
    }
}

/// A store in memory: adopts the stored token of the request's user unless it is the rejected
/// one or no later than the current one; otherwise logs in through the request and stores what
/// it got. The login's error, a held-back one included, goes back to the cache as it is.
#[derive(Clone, Default)]
struct Memory {
    tokens: Arc<Mutex<HashMap<String, Token>>>,
    asks: Arc<AtomicU64>,
}

impl TokenStore for Memory {
    fn obtain<'a>(&'a self, request: &'a ObtainRequest) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(async move {
            self.asks.fetch_add(1, Ordering::Relaxed);
            let user = request.user_name().unwrap_or_default().to_owned();
            let stored = self.tokens.lock().unwrap().get(&user).cloned();
            if let Some(token) = stored
                && request
                    .rejected()
                    .is_none_or(|rejected| rejected.expose_secret() != token.expose_secret())
                && request
                    .current()
                    .is_none_or(|current| token.expires_at() > current.expires_at())
            {
                return Ok(token);
            }
            let token = request.login().await?;
            self.tokens.lock().unwrap().insert(user, token.clone());
            Ok(token)
        })
    }
}

/// A keyed cache over `store` with a shared budget of `burst` at once, then one every
/// `interval`.
fn replica(
    store: &Memory,
    logins: &Arc<AtomicU64>,
    burst: u32,
    interval: Duration,
) -> KeyedTokenCache<u32> {
    let (store, logins) = (store.clone(), Arc::clone(logins));
    KeyedTokenCache::builder(move |account: &u32| {
        Ok::<_, Error>(Login {
            user: format!("agency-{account}"),
            logins: Arc::clone(&logins),
        })
    })
    .shared_login_budget(LoginBudget::new(burst, interval))
    .configure(move |cache| cache.shared(store))
    .build()
    .unwrap()
}

/// Asks `replica` for every account at once; when each was served.
async fn serve_all(replica: &KeyedTokenCache<u32>, accounts: u32) -> Vec<Duration> {
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..accounts {
        let replica = replica.clone();
        callers.spawn(async move {
            let token = replica.token(&account).await;
            (account, token, started.elapsed())
        });
    }
    let mut served = Vec::new();
    while let Some(caller) = callers.join_next().await {
        let (account, token, at) = caller.unwrap();
        let token = token.unwrap_or_else(|error| panic!("account {account}: {error}"));
        assert!(
            token
                .expose_secret()
                .starts_with(&format!("agency-{account}-"))
        );
        served.push(at);
    }
    served.sort();
    served
}

/// A replica joining a fleet whose store holds all 1,000 accounts' tokens serves them all at
/// once, with no login. Before only logins drew on the budget, every ask of the store did: the
/// last account waited 99 s for its turn, and a caller's 30 s fetch timeout ran out first.
#[tokio::test(start_paused = true)]
async fn a_replica_joining_a_warm_fleet_adopts_every_token_at_once_without_its_budget() {
    const ACCOUNTS: u32 = 1000;
    let (store, logins) = (Memory::default(), Arc::new(AtomicU64::new(0)));
    // The fleet, warmed up on a budget that allows it.
    let warm = replica(&store, &logins, ACCOUNTS, MS);
    serve_all(&warm, ACCOUNTS).await;
    assert_eq!(logins.load(Ordering::Relaxed), u64::from(ACCOUNTS));

    // The replica that joins has the default shared budget: 10 at once, then 10 a second.
    let joining = replica(&store, &logins, 10, 100 * MS);
    let served = serve_all(&joining, ACCOUNTS).await;
    assert_eq!(
        logins.load(Ordering::Relaxed),
        u64::from(ACCOUNTS),
        "the joining replica logged in"
    );
    assert_eq!(
        *served.last().unwrap(),
        Duration::ZERO,
        "all served at once"
    );
    for account in 0..ACCOUNTS {
        let stats = joining.cache(&account).unwrap().stats();
        assert_eq!(stats.failures, 0, "account {account}");
    }
}

/// Against an empty store, the logins keep to the budget: the store's login is held back
/// until the cache's turn, the caller waits on (it never sees the hold-back), no failure is
/// counted, and each account logs in once.
#[tokio::test(start_paused = true)]
async fn a_stores_logins_keep_to_the_budget_and_a_held_back_login_is_no_failure() {
    const ACCOUNTS: u32 = 100;
    let (store, logins) = (Memory::default(), Arc::new(AtomicU64::new(0)));
    let cold = replica(&store, &logins, 10, 100 * MS);
    let served = serve_all(&cold, ACCOUNTS).await;
    assert_eq!(logins.load(Ordering::Relaxed), u64::from(ACCOUNTS));
    for (n, at) in served.iter().enumerate().skip(10) {
        let earliest = (n as u32 - 9) * 100 * MS;
        assert!(*at >= earliest, "login {n} at {at:?}, before {earliest:?}");
    }
    assert!(*served.last().unwrap() <= Duration::from_millis(9_100));
    for account in 0..ACCOUNTS {
        let stats = cold.cache(&account).unwrap().stats();
        assert_eq!(stats.failures, 0, "account {account}");
        assert_eq!(stats.last_error, None::<ErrorKind>);
    }
    // Each account asked the store once, and once more at each turn its login was refused:
    // at most a few asks per account, not one per budget refill.
    let asks = store.asks.load(Ordering::Relaxed);
    assert!(asks <= 3 * u64::from(ACCOUNTS), "{asks} asks of the store");
}
