//! What an idle account costs, as a tripwire for changes to the cache's state (issue 14 §3):
//! `cargo bench --bench keyed -- scale` measures it over 100,000 accounts, but nothing ran it
//! after each change, and one change went from 1,002 to 1,026 bytes per account unnoticed.
//!
//! A counting wrapper around the system allocator tracks the bytes held while armed. The
//! accounts are made and warmed on Tokio's paused clock, as the bench does on a real one. 12,500
//! accounts fill the account map to the same share of its capacity as 100,000 do (both 76 % of
//! a power of two), so the bytes per account are those of the bench's count; sizes of types and
//! allocations do not depend on the build's optimisation.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tower_authtoken::{Error, KeyedTokenCache, LoginBudget, Token, TokenSource};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{COUNTING, Counting, LIVE_BYTES};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The ceiling for an idle account with a live token.
const MAX_BYTES_PER_ACCOUNT: f64 = 1024.0;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Account(u32);

/// An in-process login, answered at once with a one-hour token of the bench's length.
struct Login(u32);

impl TokenSource for Login {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new(
            format!("bench-token-value-{:08}", self.0),
            Duration::from_secs(3600),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_account_with_a_live_token_holds_at_most_one_kib_and_nothing_after_drop() {
    const N: u32 = 12_500;
    tower_authtoken::testing::follow_tokio_clock();
    let metrics = tokio::runtime::Handle::current().metrics();
    let base_tasks = metrics.num_alive_tasks();

    // The runtime's run queue grows to hold N tasks at once and keeps its capacity (128 KiB at
    // 12,500): grow it before counting, so that what is left after the drop is ours alone.
    let mut warm_up = tokio::task::JoinSet::new();
    for _ in 0..N {
        warm_up.spawn(tokio::task::yield_now());
    }
    while warm_up.join_next().await.is_some() {}

    LIVE_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let accounts = KeyedTokenCache::builder(|account: &Account| Ok::<_, Error>(Login(account.0)))
        .max_accounts(N as usize)
        // Room for every first login at once: this measures the cache, not the budget.
        .shared_login_budget(LoginBudget::new(1_000_000, Duration::from_micros(1)))
        .configure(|cache| {
            cache.login_budget(LoginBudget::new(1_000_000, Duration::from_micros(1)))
        })
        .build()
        .expect("valid settings");
    let mut callers = tokio::task::JoinSet::new();
    for account in 0..N {
        let accounts = accounts.clone();
        callers.spawn(async move { accounts.token(&Account(account)).await });
    }
    while let Some(token) = callers.join_next().await {
        token.expect("a caller").expect("a token");
    }
    // Let the accounts' drivers park: a second of the paused clock is far more than they need.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = LIVE_BYTES.load(Ordering::Relaxed);
    let idle_tasks = metrics.num_alive_tasks() - base_tasks;

    drop(accounts);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left = LIVE_BYTES.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);
    let tasks_after = metrics.num_alive_tasks() - base_tasks;

    let per_account = held as f64 / f64::from(N);
    println!(
        "{N} idle accounts: {held} bytes held, {per_account:.0} per account; {idle_tasks} \
         task(s) while idle; after drop {left} bytes and {tasks_after} task(s)"
    );
    assert!(
        per_account <= MAX_BYTES_PER_ACCOUNT,
        "{per_account:.0} bytes per idle account, over {MAX_BYTES_PER_ACCOUNT}"
    );
    assert_eq!(
        idle_tasks, 1,
        "only the sweeper runs while the accounts are idle"
    );
    assert_eq!(tasks_after, 0, "every task is gone with the keyed cache");
    assert!(
        left < i64::from(N),
        "{left} bytes still held after the drop: something per account outlived the cache"
    );
}
