//! The keyed cache and layer: many accounts, each with its own token, against one API.
//!
//! The world here is an in-process login service (`Bank`) that issues per-account tokens and
//! records every login on Tokio's clock, and an API model that accepts a token while it is its
//! account's newest and unexpired. Time runs on Tokio's paused clock.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_authtoken::{
    Error, ErrorKind, KeyedBearerAuthLayer, KeyedTokenCache, LoginBudget, Token, TokenSource,
};

use support::now_or_never;

const S: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// The login service of every account: issues numbered tokens and records when.
struct Bank {
    lifetime: Duration,
    delay: Duration,
    logins: Mutex<HashMap<u32, Vec<Instant>>>,
    /// The newest token of each account, with its expiry: what the API accepts.
    newest: Mutex<HashMap<u32, (String, Instant)>>,
    /// Sources alive: made by the factory, not yet dropped with their account.
    live_sources: AtomicUsize,
    /// Accounts that may send plain HTTP.
    insecure_ok: Vec<u32>,
    /// Accounts whose password is wrong: every login fails with `AuthenticationFailed`.
    wrong_password: std::ops::Range<u32>,
    /// When set, every account's first token expires at this instant, as if all were issued
    /// in the same second.
    first_expiry: Option<Instant>,
    /// Logins fail with a 503 until this instant; every attempt is recorded.
    down_until: Mutex<Option<Instant>>,
    attempts: Mutex<Vec<Instant>>,
}

impl Bank {
    fn new(lifetime: Duration) -> Arc<Bank> {
        Arc::new(Bank {
            lifetime,
            delay: Duration::from_millis(10),
            logins: Mutex::default(),
            newest: Mutex::default(),
            live_sources: AtomicUsize::new(0),
            insecure_ok: Vec::new(),
            wrong_password: 0..0,
            first_expiry: None,
            down_until: Mutex::new(None),
            attempts: Mutex::default(),
        })
    }

    fn source(self: &Arc<Self>, account: u32) -> Login {
        self.live_sources.fetch_add(1, Ordering::SeqCst);
        Login {
            account,
            bank: Arc::clone(self),
        }
    }

    fn logins_of(&self, account: u32) -> usize {
        self.logins
            .lock()
            .unwrap()
            .get(&account)
            .map_or(0, Vec::len)
    }

    fn all_logins(&self) -> Vec<Instant> {
        let mut all: Vec<Instant> = self
            .logins
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect();
        all.sort();
        all
    }

    /// Whether the API would accept `header` for `account` now.
    fn accepts(&self, account: u32, header: &str) -> bool {
        let newest = self.newest.lock().unwrap();
        newest.get(&account).is_some_and(|(token, expires)| {
            header.strip_prefix("Bearer ") == Some(token) && Instant::now() < *expires
        })
    }

    /// Revokes `account`'s token at the API.
    fn revoke(&self, account: u32) {
        self.newest.lock().unwrap().remove(&account);
    }
}

/// The login of one account.
struct Login {
    account: u32,
    bank: Arc<Bank>,
}

impl Drop for Login {
    fn drop(&mut self) {
        self.bank.live_sources.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TokenSource for Login {
    async fn fetch(&self) -> Result<Token, Error> {
        tokio::time::sleep(self.bank.delay).await;
        let now = Instant::now();
        self.bank.attempts.lock().unwrap().push(now);
        if self
            .bank
            .down_until
            .lock()
            .unwrap()
            .is_some_and(|until| now < until)
        {
            return Err(Error::new(ErrorKind::Server).with_status(StatusCode::SERVICE_UNAVAILABLE));
        }
        if self.bank.wrong_password.contains(&self.account) {
            return Err(Error::new(ErrorKind::AuthenticationFailed));
        }
        let n = {
            let mut logins = self.bank.logins.lock().unwrap();
            let mine = logins.entry(self.account).or_default();
            mine.push(now);
            mine.len()
        };
        let value = format!("acct-{}-{n}", self.account);
        let expires = match self.bank.first_expiry {
            Some(at) if n == 1 => at,
            _ => now + self.bank.lifetime,
        };
        self.bank
            .newest
            .lock()
            .unwrap()
            .insert(self.account, (value.clone(), expires));
        Token::new(value, expires - now)
    }

    fn allows_insecure_http(&self) -> bool {
        self.bank.insecure_ok.contains(&self.account)
    }
}

/// Account ids this platform serves; others are refused by the factory.
const KNOWN: std::ops::Range<u32> = 0..200_000;

fn accounts(bank: &Arc<Bank>) -> tower_authtoken::KeyedTokenCacheBuilder<u32> {
    let bank = Arc::clone(bank);
    KeyedTokenCache::builder(move |account: &u32| {
        if KNOWN.contains(account) {
            Ok(bank.source(*account))
        } else {
            Err(format!("no agency {account}"))
        }
    })
}

/// Accounts of `bank` that renew exactly a lead (60 s) before expiry: no spread, no jitter.
fn renewing_on_time(bank: &Arc<Bank>) -> KeyedTokenCache<u32> {
    accounts(bank)
        .renewal_spread(0.0)
        .configure(|c| c.jitter(Duration::ZERO))
        .build()
        .unwrap()
}

/// The account of a request, as the application tags it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Agency(u32);

/// An API that checks each request's token against the bank.
fn api(
    bank: &Arc<Bank>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let bank = Arc::clone(bank);
    service_fn(move |req: Request<String>| {
        let bank = Arc::clone(&bank);
        async move {
            let account = req.extensions().get::<Agency>().map(|a| a.0);
            let header = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let ok = match (account, header) {
                (Some(account), Some(header)) => bank.accepts(account, header),
                _ => false,
            };
            let mut response = Response::new(header.unwrap_or_default().to_owned());
            if !ok {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(response)
        }
    })
}

/// The layer, reading each request's account from its `Agency` tag.
fn layer(
    accounts: KeyedTokenCache<u32>,
) -> KeyedBearerAuthLayer<
    u32,
    tower_authtoken::keyed::AccountFn<impl Fn(&Request<String>) -> Option<u32> + Clone>,
> {
    KeyedBearerAuthLayer::new(accounts)
        .account_from(|req: &Request<String>| req.extensions().get::<Agency>().map(|a| a.0))
}

fn request(account: Option<u32>, uri: &str) -> Request<String> {
    let mut request = Request::builder().uri(uri).body(String::new()).unwrap();
    if let Some(account) = account {
        request.extensions_mut().insert(Agency(account));
    }
    request
}

/// Unpacks the crate's error from a layer error.
fn kind(error: tower::BoxError) -> ErrorKind {
    error
        .downcast::<Error>()
        .expect("a tower_authtoken::Error")
        .kind()
}

/// The most of `instants` (sorted) that fall in any window of `window`.
fn peak(instants: &[Instant], window: Duration) -> usize {
    tower_authtoken::testing::most_within(instants, window)
}

#[tokio::test(start_paused = true)]
async fn each_account_has_its_own_token_made_on_first_use() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    assert!(accounts.is_empty(), "nothing is made before it is needed");
    let seven = accounts.token(&7).await.unwrap();
    let eight = accounts.token(&8).await.unwrap();
    assert_eq!(seven.header_value(), "Bearer acct-7-1");
    assert_eq!(eight.header_value(), "Bearer acct-8-1");
    assert_eq!(
        accounts.token(&7).await.unwrap().header_value(),
        "Bearer acct-7-1"
    );
    assert_eq!((bank.logins_of(7), bank.logins_of(8)), (1, 1));
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts.stats().created, 2);
}

#[tokio::test(start_paused = true)]
async fn a_key_the_factory_refuses_is_a_typed_error_with_the_factory_error_as_source() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    let error = accounts.token(&KNOWN.end).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnknownAccount);
    let source = std::error::Error::source(&error).expect("the factory's error");
    assert_eq!(source.to_string(), format!("no agency {}", KNOWN.end));
    assert!(accounts.is_empty(), "a refused key holds nothing");
    assert_eq!(accounts.stats().refused, 1);
    assert_eq!(bank.live_sources.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cold_storm_of_ten_callers_on_each_of_a_thousand_accounts_logs_each_in_once() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(1000, Duration::from_millis(10)))
        .build()
        .unwrap();
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..10 {
        for account in 0..1000u32 {
            let accounts = accounts.clone();
            // Interleave callers so that accounts are made while others wait.
            let account = (account + caller * 97) % 1000;
            callers.spawn(async move { accounts.token(&account).await.map(|t| (account, t)) });
        }
    }
    let mut failures = 0;
    while let Some(result) = callers.join_next().await {
        match result.unwrap() {
            Ok((account, token)) => assert_eq!(
                token.header_value().to_str().unwrap(),
                format!("Bearer acct-{account}-1")
            ),
            Err(_) => failures += 1,
        }
    }
    assert_eq!(failures, 0);
    for account in 0..1000 {
        assert_eq!(bank.logins_of(account), 1, "account {account}");
    }
    assert_eq!(accounts.stats().created, 1000, "each account made once");
}

#[tokio::test(start_paused = true)]
async fn logins_of_all_accounts_draw_on_one_shared_budget() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(5, S))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..20u32 {
        let accounts = accounts.clone();
        callers.spawn(async move { accounts.token(&account).await });
    }
    while let Some(result) = callers.join_next().await {
        result.unwrap().unwrap();
    }
    let logins = bank.all_logins();
    assert_eq!(logins.len(), 20);
    // Five at once, then one a second: 15 more take 15 s.
    assert_eq!(peak(&logins, S), 5, "the burst");
    assert!(logins[19] - start >= 15 * S, "{:?}", logins[19] - start);
    assert!(peak(&logins[5..], S) <= 1);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_tokens_issued_in_the_same_second_renew_within_the_shared_budget_and_nobody_waits()
 {
    tower_authtoken::testing::follow_tokio_clock();
    // The budget allows `rate` at once, then `rate` a second: at most 2 × rate in any second.
    let run = |accounts_n: u32, rate: u32, spread: f64| {
        let start = Instant::now();
        let mut bank = Bank::new(HOUR);
        // Every first token expires at the same instant: issued in the same second.
        Arc::get_mut(&mut bank).unwrap().first_expiry = Some(start + HOUR);
        let accounts = accounts(&bank)
            .shared_login_budget(LoginBudget::new(rate, S / rate))
            .renewal_spread(spread)
            .max_accounts(accounts_n as usize)
            .idle_timeout(2 * HOUR)
            .build()
            .unwrap();
        async move {
            // The first logins, at the budget's pace.
            for account in 0..accounts_n {
                accounts.token(&account).await.unwrap();
            }
            // Every account is used every 30 s, from before the first renewal can fall due
            // (0.8 of the life) until 1.5 h.
            tokio::time::sleep_until(start + 2700 * S).await;
            let (mut stalled, mut rejected) = (0, 0);
            while Instant::now() - start < HOUR + HOUR / 2 {
                tokio::time::sleep(30 * S).await;
                for account in 0..accounts_n {
                    let token = match now_or_never(accounts.token(&account)) {
                        Some(token) => token.unwrap(),
                        None => {
                            stalled += 1;
                            accounts.token(&account).await.unwrap()
                        }
                    };
                    if !bank.accepts(account, token.header_value().to_str().unwrap()) {
                        rejected += 1;
                    }
                }
            }
            let renewals: Vec<Instant> = bank.all_logins().split_off(accounts_n as usize);
            (renewals, stalled, rejected)
        }
    };

    // 10,000 accounts renewing within 0.2 of an hour need 14 logins a second; the budget
    // allows 20.
    let (renewals, stalled, rejected) = run(10_000, 20, 0.2).await;
    let busiest = peak(&renewals, S);
    println!(
        "spread 0.2: {} renewals over {:?}, busiest second {busiest}, stalled {stalled}, rejected {rejected}",
        renewals.len(),
        *renewals.last().unwrap() - renewals[0]
    );
    assert_eq!(renewals.len(), 10_000, "each account renewed once");
    assert_eq!(
        (stalled, rejected),
        (0, 0),
        "nobody waited, nothing was rejected"
    );
    assert!(
        busiest <= 40,
        "the budget allows 40 in a second, saw {busiest}"
    );

    // Without a spread, renewals all fall due within 5 s of jitter; the budget (2 a second
    // here, for 1,000 accounts) holds them back and tokens reach their deadline first:
    // callers wait (so this test can fail).
    let (renewals, stalled, rejected) = run(1_000, 2, 0.0).await;
    println!(
        "spread 0 (1,000 accounts, 2/s): busiest second {}, stalled {stalled}, rejected {rejected}",
        peak(&renewals, S)
    );
    assert!(stalled > 0);
    assert_eq!(rejected, 0, "waiting, never sending a rejected token");
}

#[tokio::test(start_paused = true)]
async fn an_idle_account_runs_no_task_and_is_dropped_with_its_token_after_the_idle_timeout() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).idle_timeout(60 * S).build().unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    for account in 0..3 {
        accounts.token(&account).await.unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        1,
        "only the sweeper: idle accounts park their drivers"
    );
    // Account 0 stays in use; 1 and 2 go idle.
    for _ in 0..8 {
        tokio::time::sleep(10 * S).await;
        accounts.token(&0).await.unwrap();
    }
    assert_eq!(accounts.len(), 1, "{:?}", accounts.stats());
    assert_eq!(accounts.stats().dropped_idle, 2);
    assert_eq!(
        bank.live_sources.load(Ordering::SeqCst),
        1,
        "the dropped accounts' caches are gone"
    );
    // A dropped account is made again and logs in again.
    accounts.token(&1).await.unwrap();
    assert_eq!(bank.logins_of(1), 2);
    // Dropping the keyed cache ends every task.
    drop(accounts);
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert_eq!(bank.live_sources.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_cache_drops_its_least_recently_used_accounts() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank)
        .max_accounts(16)
        .idle_timeout(4000 * S)
        .build()
        .unwrap();
    // Eight accounts used before a sweep (every 1000 s), eight after it.
    for account in 0..8 {
        accounts.token(&account).await.unwrap();
    }
    tokio::time::sleep(1001 * S).await;
    for account in 8..16 {
        accounts.token(&account).await.unwrap();
    }
    assert_eq!(accounts.len(), 16);
    // One more: a sixteenth (one) of them goes, one of the older eight.
    accounts.token(&100).await.unwrap();
    assert_eq!(accounts.stats().dropped_full, 1);
    assert_eq!(accounts.len(), 16);
    for account in 8..16 {
        accounts.token(&account).await.unwrap();
        assert_eq!(
            bank.logins_of(account),
            1,
            "recently used account {account} was kept"
        );
    }
    let mut logged_in_again = 0;
    for account in 0..8 {
        accounts.token(&account).await.unwrap();
        logged_in_again += usize::from(bank.logins_of(account) == 2);
    }
    assert!(
        logged_in_again >= 1,
        "the dropped one came back with a new login"
    );
}

/// More accounts in use than `max_accounts` holds: 1,100 used in turn, 1,000 held. Each account
/// dropped to make room is about to be used again, and comes back with a new login. The stats
/// count them as `dropped_in_use` (and a warning is logged), so a platform sees that
/// `max_accounts` is too small; at 1,100 nothing is dropped and each account logs in once.
#[tokio::test(start_paused = true)]
async fn accounts_dropped_while_in_use_are_counted_when_max_accounts_is_too_small() {
    tower_authtoken::testing::follow_tokio_clock();
    const IN_USE: u32 = 1_100;
    for max in [1_000, 1_100] {
        let bank = Bank::new(HOUR);
        let accounts = accounts(&bank)
            .max_accounts(max)
            .shared_login_budget(LoginBudget::new(100, S / 100))
            .build()
            .unwrap();
        // Five passes over the accounts, a request every 10 ms.
        for _ in 0..5 {
            for account in 0..IN_USE {
                accounts.token(&account).await.unwrap();
                tokio::time::sleep(S / 100).await;
            }
        }
        let stats = accounts.stats();
        let logins = bank.all_logins().len();
        println!("max_accounts {max}, {IN_USE} in use: {logins} logins, {stats:?}");
        if max < IN_USE as usize {
            assert!(stats.dropped_full > 0, "{stats:?}");
            assert_eq!(
                stats.dropped_in_use, stats.dropped_full,
                "every one was in use"
            );
            // Every account made again cost a login: about 900 more than the 1,100 needed.
            assert_eq!(logins as u64, stats.created);
            let again = stats.created - u64::from(IN_USE);
            assert!(again > 0 && again <= stats.dropped_in_use, "{stats:?}");
        } else {
            assert_eq!((stats.dropped_full, stats.dropped_in_use), (0, 0));
            assert_eq!(logins, IN_USE as usize);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_layer_takes_the_account_from_a_request_extension() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let agencies = {
        let bank = Arc::clone(&bank);
        KeyedTokenCache::builder(move |agency: &Agency| Ok::<_, Error>(bank.source(agency.0)))
            .build()
            .unwrap()
    };
    let client = ServiceBuilder::new()
        .layer(KeyedBearerAuthLayer::new(agencies))
        .service(api(&bank));
    let response = client
        .oneshot(request(Some(12), "https://api.example/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "Bearer acct-12-1");
}

#[tokio::test(start_paused = true)]
async fn the_layer_sends_each_request_with_its_accounts_token() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer(accounts.clone()))
        .service(api(&bank));
    for account in [3, 4, 3, 4, 5] {
        let response = client
            .ready()
            .await
            .unwrap()
            .call(request(Some(account), "https://api.example/cars"))
            .await
            .map_err(kind)
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), &format!("Bearer acct-{account}-1"));
    }
    assert_eq!(
        (bank.logins_of(3), bank.logins_of(4), bank.logins_of(5)),
        (1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_without_an_account_or_with_a_refused_one_fails_before_it_is_sent() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = {
        let sent = Arc::clone(&sent);
        let api = api(&bank);
        service_fn(move |req: Request<String>| {
            sent.fetch_add(1, Ordering::SeqCst);
            api.clone().oneshot(req)
        })
    };
    let client = ServiceBuilder::new()
        .layer(layer(accounts(&bank).build().unwrap()))
        .service(counted);
    let error = client
        .clone()
        .oneshot(request(None, "https://api.example/"))
        .await
        .unwrap_err();
    assert_eq!(kind(error), ErrorKind::NoAccount);
    let error = client
        .clone()
        .oneshot(request(Some(KNOWN.end + 1), "https://api.example/"))
        .await
        .unwrap_err();
    assert_eq!(kind(error), ErrorKind::UnknownAccount);
    assert_eq!(sent.load(Ordering::SeqCst), 0, "nothing was sent");
    assert!(bank.all_logins().is_empty(), "no login either");
}

#[tokio::test(start_paused = true)]
async fn a_401_renews_only_that_accounts_token_and_a_replay_succeeds() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(layer(accounts.clone()).retry_on_unauthorized())
        .service(api(&bank));
    for account in [1, 2] {
        let response = client
            .clone()
            .oneshot(request(Some(account), "https://api.example/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    bank.revoke(1);
    let response = client
        .clone()
        .oneshot(request(Some(1), "https://api.example/"))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "replayed with a new token"
    );
    assert_eq!(response.body(), "Bearer acct-1-2");
    let response = client
        .clone()
        .oneshot(request(Some(2), "https://api.example/"))
        .await
        .unwrap();
    assert_eq!(
        response.body(),
        "Bearer acct-2-1",
        "the other account kept its token"
    );
    assert_eq!((bank.logins_of(1), bank.logins_of(2)), (2, 1));
    assert_eq!(accounts.cache(&1).unwrap().stats().invalidations, 1);
}

#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_an_accounts_every_token_costs_a_handful_of_logins() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    // This API rejects account 9 always.
    let rejecting = service_fn(|req: Request<String>| async move {
        let status = if req.extensions().get::<Agency>() == Some(&Agency(9)) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(String::new());
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    });
    let client = ServiceBuilder::new()
        .layer(layer(accounts.clone()))
        .service(rejecting);
    let mut unauthorized = 0;
    for _ in 0..600 {
        let response = client
            .clone()
            .oneshot(request(Some(9), "https://api.example/"))
            .await
            .unwrap();
        unauthorized += usize::from(response.status() == StatusCode::UNAUTHORIZED);
        client
            .clone()
            .oneshot(request(Some(10), "https://api.example/"))
            .await
            .unwrap();
        tokio::time::sleep(S / 10).await;
    }
    assert_eq!(unauthorized, 600, "the API's 401s reach the caller");
    // 60 s of 401s: spaced 1, 2, 4, 8, 16, 32 s: at most 7 logins.
    assert!(bank.logins_of(9) <= 7, "{} logins", bank.logins_of(9));
    assert_eq!(bank.logins_of(10), 1);
}

/// An API that rejects every token of every account (its auth is down, say), with 200 accounts
/// each sending a request a second for two minutes. Each account's invalidations are spaced as
/// for one cache, and all of them draw on the shared budget: the login rate stays within it,
/// every `401` reaches its caller unchanged, and no request waits longer than the budget needs
/// to serve every account once (200 logins at 10 a second).
#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_accounts_every_token_stays_within_the_shared_budget() {
    tower_authtoken::testing::follow_tokio_clock();
    const ACCOUNTS: u32 = 200;
    const ROUNDS: u32 = 120;
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(10, S / 10))
        .build()
        .unwrap();
    let rejecting = service_fn(|_: Request<String>| async move {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, Infallible>(response)
    });
    let client = ServiceBuilder::new()
        .layer(layer(accounts.clone()))
        .service(rejecting);

    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..ACCOUNTS {
        let client = client.clone();
        callers.spawn(async move {
            let (mut unauthorized, mut errors, mut longest) = (0, Vec::new(), Duration::ZERO);
            for round in 0..ROUNDS {
                tokio::time::sleep_until(start + round * S).await;
                let sent = Instant::now();
                match client
                    .clone()
                    .oneshot(request(Some(account), "https://api.example/"))
                    .await
                {
                    Ok(response) => {
                        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                        unauthorized += 1;
                    }
                    Err(error) => errors.push(kind(error)),
                }
                longest = longest.max(sent.elapsed());
            }
            (unauthorized, errors, longest)
        });
    }
    let (mut unauthorized, mut errors, mut longest) = (0, Vec::new(), Duration::ZERO);
    while let Some(caller) = callers.join_next().await {
        let (u, e, l) = caller.unwrap();
        unauthorized += u;
        errors.extend(e);
        longest = longest.max(l);
    }
    let elapsed = start.elapsed();
    let logins = bank.all_logins();
    let busiest = peak(&logins, S);
    let most_for_one = (0..ACCOUNTS).map(|a| bank.logins_of(a)).max().unwrap();
    println!(
        "{} requests over {elapsed:?}: {unauthorized} 401s, {} errors ({:?}), \
         {} logins (busiest second {busiest}, most for one account {most_for_one}), \
         longest request {longest:?}",
        ACCOUNTS * ROUNDS,
        errors.len(),
        errors.first(),
        logins.len()
    );
    assert_eq!(unauthorized + errors.len() as u32, ACCOUNTS * ROUNDS);
    assert!(
        errors.is_empty(),
        "the API's 401s, not errors, reach callers: {errors:?}"
    );
    assert!(
        busiest <= 20,
        "the budget allows 10 at once and 10 a second: {busiest}"
    );
    let budget = 10 + (elapsed.as_millis() / 100) as usize;
    assert!(
        logins.len() <= budget,
        "{} logins, the budget allows {budget}",
        logins.len()
    );
    // Two minutes of 401s, spaced 1, 2, 4, ... 64 s: at most 8 logins an account.
    assert!(most_for_one <= 8, "{most_for_one} logins for one account");
    assert!(
        longest <= 21 * S,
        "200 logins at 10 a second, and no more: {longest:?}"
    );
}

/// A cold start of more accounts than the shared budget serves within the fetch timeout (500
/// accounts at once, 10 logins a second, a 30 s timeout): the callers served in time get their
/// tokens, and the others a `Timeout` that names the budget (and its settings), not the
/// endpoint.
#[tokio::test(start_paused = true)]
async fn callers_left_waiting_by_the_shared_budget_get_a_timeout_that_names_it() {
    tower_authtoken::testing::follow_tokio_clock();
    const ACCOUNTS: u32 = 500;
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(10, S / 10))
        .build()
        .unwrap();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..ACCOUNTS {
        let accounts = accounts.clone();
        callers.spawn(async move { accounts.token(&account).await });
    }
    let (mut served, mut timed_out) = (0, 0);
    while let Some(caller) = callers.join_next().await {
        match caller.unwrap() {
            Ok(_) => served += 1,
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
                let text = error.to_string();
                assert!(text.contains("login budget"), "{text}");
                assert!(!text.contains("endpoint"), "{text}");
                if timed_out == 0 {
                    println!("{text}");
                }
                timed_out += 1;
            }
        }
    }
    println!("{served} served within the fetch timeout, {timed_out} timed out");
    assert_eq!(served + timed_out, ACCOUNTS);
    // 10 at once, then 10 a second for 31 s.
    assert!((300..=330).contains(&served), "{served} served");
}

/// 500 tenants whose passwords are wrong, beside 50 good ones with 2-minute tokens, every account
/// asked for its token once a second for 5 minutes, one budget of 10 logins a second. The bad
/// tenants' callers get `AuthenticationFailed`; their logins, spaced by the permanent-error
/// backoff, take a share of the budget, but the good accounts renew in time: after the cold
/// start (1,050 logins at 10 a second) no good caller waits or fails.
#[tokio::test(start_paused = true)]
async fn tenants_with_wrong_passwords_do_not_hold_up_the_others_logins() {
    tower_authtoken::testing::follow_tokio_clock();
    const GOOD: u32 = 50;
    const BAD: u32 = 500;
    let mut bank = Bank::new(120 * S);
    Arc::get_mut(&mut bank).unwrap().wrong_password = GOOD..GOOD + BAD;
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(10, S / 10))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..GOOD + BAD {
        let accounts = accounts.clone();
        callers.spawn(async move {
            let (mut errors, mut longest_after_start) = (Vec::new(), Duration::ZERO);
            for round in 0..300u32 {
                let at = start + round * S + Duration::from_millis(u64::from(account));
                tokio::time::sleep_until(at).await;
                let sent = Instant::now();
                if let Err(error) = accounts.token(&account).await {
                    errors.push((round, error.kind()));
                }
                if round >= 60 {
                    longest_after_start = longest_after_start.max(sent.elapsed());
                }
            }
            (account, errors, longest_after_start)
        });
    }
    let (mut good_errors, mut good_wait, mut bad_errors) = (0, Duration::ZERO, 0);
    while let Some(caller) = callers.join_next().await {
        let (account, errors, longest) = caller.unwrap();
        if account < GOOD {
            good_errors += errors.len();
            good_wait = good_wait.max(longest);
        } else {
            // After the cold start, whose queue outlasts the fetch timeout (a `Timeout`
            // naming the budget), the tenant's own error.
            let other = errors
                .iter()
                .find(|(round, kind)| *round >= 60 && *kind != ErrorKind::AuthenticationFailed);
            assert!(other.is_none(), "{other:?} ({} errors)", errors.len());
            bad_errors += errors.len();
        }
    }
    let attempts = bank.attempts.lock().unwrap().len();
    let good_logins: usize = (0..GOOD).map(|account| bank.logins_of(account)).sum();
    println!(
        "{attempts} login attempts in 5 min; good accounts: {good_logins} logins, {good_errors} \
         errors, longest wait after the first minute {good_wait:?}; bad: {bad_errors} errors"
    );
    assert_eq!(good_errors, 0);
    assert_eq!(good_wait, Duration::ZERO, "the good accounts renew in time");
    assert_eq!(
        bad_errors,
        BAD as usize * 300,
        "every bad caller is told, each time"
    );
    // The permanent-error backoff spaces each bad tenant's attempts a minute apart, or more.
    assert!(
        attempts <= (GOOD * 4 + BAD * 6) as usize,
        "{attempts} attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn plain_http_is_refused_per_account_unless_that_accounts_source_allows_it() {
    tower_authtoken::testing::follow_tokio_clock();
    let mut bank = Bank::new(HOUR);
    Arc::get_mut(&mut bank).unwrap().insecure_ok = vec![2];
    let client = ServiceBuilder::new()
        .layer(layer(accounts(&bank).build().unwrap()))
        .service(api(&bank));
    let error = client
        .clone()
        .oneshot(request(Some(1), "http://api.example/cars"))
        .await
        .unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(error.kind(), ErrorKind::InsecureTransport);
    assert!(error.to_string().contains("api.example"), "{error}");
    assert_eq!(bank.logins_of(1), 0, "refused before any login");
    let response = client
        .clone()
        .oneshot(request(Some(2), "http://api.example/cars"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_busy_account_renews_before_expiry_while_its_requests_go_on_with_the_old_token() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(600 * S);
    let accounts = renewing_on_time(&bank);
    accounts.token(&1).await.unwrap();
    // Lead 60 s: due at 540 s. The driver is parked; the first request after it asks.
    tokio::time::sleep(545 * S).await;
    let token = now_or_never(accounts.token(&1)).expect("no wait").unwrap();
    assert_eq!(token.header_value(), "Bearer acct-1-1");
    tokio::time::sleep(S).await;
    assert_eq!(bank.logins_of(1), 2, "renewed in the background");
    let token = now_or_never(accounts.token(&1)).expect("no wait").unwrap();
    assert_eq!(token.header_value(), "Bearer acct-1-2");
}

/// Only the first renewal is spread: an account in use logs in once per token lifetime after
/// it, as a single cache does. 600 s tokens, the default spread and jitter, a request every 5 s
/// for 20 lifetimes: at most the cold login, the spread first renewal (at 420 s at the
/// earliest) and one renewal per 534 s after it (the lead less the most jitter): 23. Spreading
/// every renewal made one every 480 s on average: 25 or 26.
#[tokio::test(start_paused = true)]
async fn an_account_in_use_renews_once_per_lifetime_after_its_first_spread_renewal() {
    tower_authtoken::testing::follow_tokio_clock();
    fastrand::seed(14);
    let bank = Bank::new(600 * S);
    let accounts = accounts(&bank).build().unwrap();
    let run = 20 * 600 * S;
    let start = Instant::now();
    while start.elapsed() < run {
        accounts.token(&1).await.unwrap();
        tokio::time::sleep(5 * S).await;
    }
    let logins = bank.logins_of(1);
    let most = 2 + ((run - 420 * S).as_secs() / 534) as usize;
    assert!(
        logins <= most,
        "{logins} logins in 20 lifetimes, at most {most}"
    );
    assert!(logins >= 20, "{logins} logins: it renews");
}

#[tokio::test(start_paused = true)]
async fn an_account_unused_past_its_deadline_logs_in_again_on_its_next_request() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(100 * S);
    let accounts = accounts(&bank).build().unwrap();
    accounts.token(&1).await.unwrap();
    tokio::time::sleep(200 * S).await;
    assert_eq!(bank.logins_of(1), 1, "an idle account does not renew");
    let token = accounts.token(&1).await.unwrap();
    assert_eq!(token.header_value(), "Bearer acct-1-2");
    assert!(bank.accepts(1, token.header_value().to_str().unwrap()));
}

#[test]
fn settings_out_of_range_are_refused_by_name() {
    let bank = Bank::new(HOUR);
    let cases: [(tower_authtoken::KeyedTokenCacheBuilder<u32>, &str); 5] = [
        (accounts(&bank).max_accounts(0), "max_accounts"),
        (accounts(&bank).idle_timeout(Duration::ZERO), "idle_timeout"),
        (accounts(&bank).renewal_spread(1.5), "renewal_spread"),
        (
            accounts(&bank).shared_login_budget(LoginBudget::new(0, S)),
            "shared_login_budget",
        ),
        (
            accounts(&bank).configure(|c| c.fetch_timeout(Duration::ZERO)),
            "fetch_timeout",
        ),
    ];
    for (builder, setting) in cases {
        let error = builder.build().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(setting), "{error}");
    }
}

#[test]
fn using_a_keyed_cache_outside_a_runtime_is_a_typed_error() {
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    let error = accounts.cache(&1).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Runtime);
    assert_eq!(bank.live_sources.load(Ordering::SeqCst), 0);
}

/// Sends `request` through `client` itself (no clone), so that its memo of the last account
/// is in play.
async fn send_on<S>(client: &mut S, request: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = tower::BoxError>,
{
    client.ready().await.unwrap().call(request).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_run_of_requests_for_one_account_keeps_every_promise_of_the_map_path() {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).idle_timeout(60 * S).build().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer(accounts.clone()))
        .service(api(&bank));
    // A run for account 1: from the second request on, the service reads it without the map.
    for _ in 0..5 {
        let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
        assert_eq!(response.body(), "Bearer acct-1-1");
    }
    // Used only through the memo for two idle timeouts: still held, no new login.
    for _ in 0..12 {
        tokio::time::sleep(10 * S).await;
        let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        accounts.stats().dropped_idle,
        0,
        "the memo's requests count as use"
    );
    assert_eq!(bank.logins_of(1), 1);
    // A 401 on the memo's token invalidates it: the next request has a new one.
    bank.revoke(1);
    let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
    assert_eq!(response.body(), "Bearer acct-1-2");
    // An account dropped while in the memo: the next request logs in afresh, through the map.
    assert!(accounts.remove(&1));
    let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
    assert_eq!(response.body(), "Bearer acct-1-3");
    let response = send_on(&mut client, request(Some(1), "https://api.example/")).await;
    assert_eq!(response.body(), "Bearer acct-1-3");
    // Another account, and no account at all, go through the map as before.
    let response = send_on(&mut client, request(Some(2), "https://api.example/")).await;
    assert_eq!(response.body(), "Bearer acct-2-1");
    let error = client
        .ready()
        .await
        .unwrap()
        .call(request(None, "https://api.example/"))
        .await
        .unwrap_err();
    assert_eq!(kind(error), ErrorKind::NoAccount);
    assert_eq!(bank.logins_of(1), 3);
}

/// Requests through a fresh clone each (no memo) read each account's token from the account's
/// value in the map, a copy its cache keeps up to date: the copy must follow every renewal and
/// withdrawal, and a dropped account's cache must not write over the account made after it.
#[tokio::test(start_paused = true)]
async fn the_map_follows_every_change_of_an_accounts_token_and_a_dropped_accounts_cache_cannot_overwrite_its_successor()
 {
    tower_authtoken::testing::follow_tokio_clock();
    let bank = Bank::new(600 * S);
    let accounts = renewing_on_time(&bank);
    let client = ServiceBuilder::new()
        .layer(layer(accounts.clone()))
        .service(api(&bank));
    let send = |account| {
        client
            .clone()
            .oneshot(request(Some(account), "https://api.example/"))
    };
    let ok = |response: Response<String>| {
        assert_eq!(response.status(), StatusCode::OK, "{}", response.body());
        response.into_body()
    };
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-1");

    // A renewal (lead 60 s: due at 540 s), asked for by a request that still sends the old token.
    tokio::time::sleep(545 * S).await;
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-1");
    tokio::time::sleep(S).await;
    assert_eq!(bank.logins_of(1), 2);
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-2");

    // A withdrawal after a 401: no later request carries the rejected token.
    bank.revoke(1);
    assert_eq!(send(1).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-3");

    // A withdrawal at the deadline of an account nobody used: the next request waits for a
    // login rather than sending the expired token.
    tokio::time::sleep(700 * S).await;
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-4");

    // The account is dropped and made again; its old cache, still held, logs in afresh. That
    // token is the old cache's own: the new account's requests go on with theirs (which this
    // bank, one live token per account, now rejects; the 401 renews the new account's).
    let old = accounts.cache(&1).unwrap();
    assert!(accounts.remove(&1));
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-5");
    let stray = old.token().await.unwrap();
    assert_eq!(stray.header_value(), "Bearer acct-1-6");
    let response = send(1).await.unwrap();
    assert_eq!(
        response.body(),
        "Bearer acct-1-5",
        "the old cache's token reached the map"
    );
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ok(send(1).await.unwrap()), "Bearer acct-1-7");
    assert_eq!(bank.logins_of(1), 7);
}

/// A keyed cache shared by runtimes: the runtime that made the first accounts (and runs the
/// sweeper) goes away, and another one carries on with the same accounts.
#[test]
fn a_keyed_cache_outlives_the_runtime_that_made_its_accounts() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let bank = Bank::new(HOUR);
    let accounts = accounts(&bank).build().unwrap();
    let first = runtime();
    let token = first.block_on(accounts.token(&1)).unwrap();
    drop(first);

    let second = runtime();
    second.block_on(async {
        // The account's token is still served; its driver had parked and needs no runtime.
        let again = accounts.token(&1).await.unwrap();
        assert_eq!(again.header_value(), token.header_value());
        // A new account is made here, and the sweeper starts again on this runtime.
        accounts.token(&2).await.unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let mut alive = metrics.num_alive_tasks();
        for _ in 0..100 {
            if alive == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            alive = metrics.num_alive_tasks();
        }
        assert_eq!(alive, 1, "the sweeper, and no driver left behind");
        // A 401 for the first account logs in on this runtime.
        accounts.cache(&1).unwrap().invalidate(&token);
        let renewed = accounts.token(&1).await.unwrap();
        assert_eq!(renewed.header_value(), "Bearer acct-1-2");
    });
    assert_eq!((bank.logins_of(1), bank.logins_of(2)), (2, 1));
}

/// A 60 s outage of the login endpoint while 100 accounts with 2 s tokens are in use: the
/// accounts' retries together stay within the shared budget, callers get transient errors and
/// never a rejected token, and after the recovery every account is served again as fast as the
/// budget allows (100 logins at 20 a second: 5 s).
#[tokio::test(start_paused = true)]
async fn an_outage_costs_no_more_logins_than_the_shared_budget_and_all_accounts_recover() {
    tower_authtoken::testing::follow_tokio_clock();
    const ACCOUNTS: u32 = 100;
    let bank = Bank::new(2 * S);
    let accounts = accounts(&bank)
        .shared_login_budget(LoginBudget::new(20, S / 20))
        .build()
        .unwrap();
    for account in 0..ACCOUNTS {
        accounts.token(&account).await.unwrap();
    }
    let start = Instant::now();
    let (outage_from, outage_until) = (start + 5 * S, start + 65 * S);
    *bank.down_until.lock().unwrap() = Some(outage_until);
    tokio::time::sleep_until(outage_from).await;
    bank.attempts.lock().unwrap().clear();
    // Every account is asked for every 100 ms; during the outage callers get errors (the
    // token expired), never a token the API rejects.
    let (mut rejected, mut last_failure) = (0, None);
    let mut recovered_at = std::collections::HashMap::new();
    let mut failing: std::collections::HashSet<u32> = std::collections::HashSet::new();
    while Instant::now() < outage_until + 10 * S {
        tokio::time::sleep(S / 10).await;
        for account in 0..ACCOUNTS {
            match accounts.token(&account).await {
                Ok(token) => {
                    failing.remove(&account);
                    if Instant::now() >= outage_until {
                        recovered_at.entry(account).or_insert_with(Instant::now);
                    }
                    if !bank.accepts(account, token.header_value().to_str().unwrap()) {
                        rejected += 1;
                    }
                }
                Err(error) => {
                    assert!(error.is_transient(), "{error}");
                    failing.insert(account);
                    last_failure = Some(Instant::now());
                }
            }
        }
    }
    assert_eq!(rejected, 0, "no token the API would reject");
    assert!(failing.is_empty(), "every account recovered: {failing:?}");
    let attempts = bank.attempts.lock().unwrap().clone();
    let busiest = peak(&attempts, S);
    let last_served = recovered_at.values().max().copied().unwrap();
    let all_served_after = last_served.saturating_duration_since(outage_until);
    let failed_after = last_failure.map(|at| at.saturating_duration_since(outage_until));
    println!(
        "outage: {} attempts in 70 s for {ACCOUNTS} accounts, busiest second {busiest}; \
         last caller error {failed_after:?} after the recovery, every account served again \
         {all_served_after:?} after it",
        attempts.len()
    );
    assert!(
        busiest <= 40,
        "the shared budget allows 40 in a second: {busiest}"
    );
    assert!(
        all_served_after <= 7 * S,
        "100 logins at 20 a second, plus a retry interval: {all_served_after:?}"
    );
}
