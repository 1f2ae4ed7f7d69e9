//! Instructions per warm request, for `valgrind --tool=callgrind`: a count that does not move
//! with the machine's load, which the timed benches' ratios do by ±5 %. Run it with glibc's
//! per-thread cache off (`GLIBC_TUNABLES=glibc.malloc.tcache_count=0`): with the cache on, the
//! request's allocations take its fast path or the bins by the heap's state (about 235
//! instructions either way), and that state differs between variants and between builds. One
//! build of this session served the floor from the fast path and the layers from the bins, which
//! read as 235 more instructions per layer. With the cache off, every variant takes the bins and
//! what a layer adds over the floor is stable.
//!
//! Each run sends `N` requests of one variant through a no-op inner service, on a
//! current-thread runtime, after one warm-up login. Run each variant twice, with `N` and `2N`;
//! the difference of the two totals ("I refs"), over `N`, is the cost of one request:
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! bin=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! export GLIBC_TUNABLES=glibc.malloc.tcache_count=0
//! for v in floor bearer keyed-one keyed-8; do for n in 50000 100000; do
//!   echo "$v $n $(valgrind --tool=callgrind --callgrind-out-file=/dev/null $bin $v $n 2>&1 | grep refs)"
//! done; done
//! ```
//!
//! The variants, all on requests that carry an account extension (as the keyed layer needs):
//! - `floor`: tower-http's `AddAuthorization` with a static token;
//! - `bearer`: a single `BearerAuth` on one account's cache;
//! - `keyed-one`: the keyed layer, every request for one account (its memo);
//! - `keyed-8`: the keyed layer, eight accounts in turn (the account map).
//!
//! Without a variant (as `cargo bench` runs it) it does nothing.

mod common;

use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_authtoken::{BearerAuthLayer, Error, KeyedBearerAuthLayer, KeyedTokenCache, LoginBudget};
use tower_http::auth::AddAuthorization;

use common::{Account, AccountLogin};

/// Sends one request per entry of `accounts` through `service`.
#[inline(never)]
async fn send<S>(service: &mut S, accounts: &[Account])
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    for account in accounts {
        let mut request = Request::new(());
        request.extensions_mut().insert(*account);
        let ready = service.ready().await.expect("ready");
        let response = ready
            .call(std::hint::black_box(request))
            .await
            .expect("a response");
        std::hint::black_box(response);
    }
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"));
    let (Some(variant), Some(n)) = (args.next(), args.next()) else {
        println!("instructions: run under valgrind with a variant and a count (see its docs)");
        return;
    };
    let n: usize = n.parse().expect("a number of requests");
    let runtime = common::current_thread();
    let accounts = KeyedTokenCache::builder(|a: &Account| Ok::<_, Error>(AccountLogin(a.0)))
        .shared_login_budget(LoginBudget::new(1_000, Duration::from_micros(1)))
        .build()
        .expect("valid settings");
    runtime.block_on(async {
        for account in 0..8 {
            accounts.token(&Account(account)).await.expect("a token");
        }
    });
    let one: Vec<Account> = vec![Account(0); n];
    let eight: Vec<Account> = (0..n).map(|i| Account(i as u32 % 8)).collect();
    match variant.as_str() {
        "floor" => {
            let mut floor =
                AddAuthorization::bearer(common::NoOp, common::TOKEN).as_sensitive(true);
            runtime.block_on(send(&mut floor, &one));
        }
        "bearer" => {
            let cache = accounts.cache(&Account(0)).expect("a warm account");
            let mut bearer = BearerAuthLayer::new(cache).layer(common::NoOp);
            runtime.block_on(send(&mut bearer, &one));
        }
        "keyed-one" | "keyed-8" => {
            let mut keyed = KeyedBearerAuthLayer::new(accounts.clone()).layer(common::NoOp);
            let order = if variant == "keyed-one" { &one } else { &eight };
            runtime.block_on(send(&mut keyed, order));
        }
        other => panic!("no variant {other}: floor, bearer, keyed-one or keyed-8"),
    }
}
