//! A traffic generator for `tests/freeze.rs`: a child process that the test freezes with
//! `SIGSTOP` and thaws with `SIGCONT`.
//!
//! It sends a steady stream of `GET` requests through [`BearerAuthLayer`] (over hyper-util's
//! client) to a protected URL, one at a time with a pause between them, and prints one line per
//! result as soon as it has it:
//!
//! - `ok <ms>`: `200`, and how long the request took;
//! - `status <code> <ms>`: any other status (a `401` means a request carried an expired token);
//! - `error <kind> <ms>`: the request failed (`<kind>` is the cache's error kind, or
//!   `transport`).
//!
//! When its standard input closes it stops and prints `summary sent=.. ok=.. status=..
//! error=.. fetches=.. renewals=..`, then exits with 0.
//!
//! With `--accounts N` it sends through [`KeyedBearerAuthLayer`] instead, as the users
//! `<user>-0` ... `<user>-(N-1)` (passwords `<password>-0` ...), three requests in a row for
//! each account in turn: the first two read the account map (the second makes the account the
//! service's memo), the third reads the memo. The summary then adds up the accounts' counters.
//!
//! ```text
//! FREEZE_CHILD_PASSWORD=wonderland cargo run --example freeze_child -- \
//!     --base-url http://127.0.0.1:PORT --user alice --flavor current-thread
//! ```

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, KeyedBearerAuthLayer, KeyedTokenCache,
    TokenCache,
};

/// Sends requests through `BearerAuthLayer` until standard input closes.
#[derive(Parser)]
struct Args {
    /// The reference server's base URL, such as `http://127.0.0.1:8080`.
    #[arg(long)]
    base_url: String,
    /// The user to log in as.
    #[arg(long, default_value = "alice")]
    user: String,
    /// The password (from the environment, so that it is not on the command line).
    #[arg(long, env = "FREEZE_CHILD_PASSWORD", hide_env_values = true)]
    password: String,
    /// The path of the protected endpoint.
    #[arg(long, default_value = "/protected")]
    path: String,
    /// The runtime the requests run on.
    #[arg(long, value_enum, default_value_t = Flavor::CurrentThread)]
    flavor: Flavor,
    /// The pause after each result, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// Sends as this many accounts through one keyed cache, instead of as `--user`.
    #[arg(long)]
    accounts: Option<u32>,
}

/// The account a request is for, with `--accounts`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Account(u32);

#[derive(Clone, Copy, ValueEnum)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    ok: u64,
    status: u64,
    error: u64,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = match args.flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    }
    .enable_all()
    .build()?;

    // Standard input closing is the signal to stop.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    let url = format!("{}{}", args.base_url, args.path);
    let pause = Duration::from_millis(args.pause_ms);
    let http = || Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    let (totals, fetches, renewals) = match args.accounts {
        None => {
            let credentials = Credentials::new(args.user.clone(), args.password.clone());
            let cache = TokenCache::new(AuthTokenSource::new(&args.base_url, credentials)?);
            let client = ServiceBuilder::new()
                .layer(BearerAuthLayer::new(cache.clone()))
                .service(http());
            let totals = runtime.block_on(drive(client, &url, pause, &stop, |_| None))?;
            let stats = cache.stats();
            (totals, stats.fetches, stats.renewals)
        }
        Some(n) => {
            let n = n.max(1);
            let (base_url, user, password) = (args.base_url.clone(), args.user, args.password);
            let accounts = KeyedTokenCache::builder(move |account: &Account| {
                let credentials = Credentials::new(
                    format!("{user}-{}", account.0),
                    format!("{password}-{}", account.0),
                );
                AuthTokenSource::new(&base_url, credentials)
            })
            .build()?;
            let client = ServiceBuilder::new()
                .layer(KeyedBearerAuthLayer::new(accounts.clone()))
                .service(http());
            let account_of = |sent: u64| Some(Account((sent / 3 % u64::from(n)) as u32));
            let totals = runtime.block_on(drive(client, &url, pause, &stop, account_of))?;
            let (mut fetches, mut renewals) = (0, 0);
            for account in 0..n {
                let stats = runtime
                    .block_on(async { accounts.cache(&Account(account)) })?
                    .stats();
                fetches += stats.fetches;
                renewals += stats.renewals;
            }
            (totals, fetches, renewals)
        }
    };
    println!(
        "summary sent={} ok={} status={} error={} fetches={fetches} renewals={renewals}",
        totals.sent, totals.ok, totals.status, totals.error
    );
    Ok(())
}

/// Sends requests through `client` until `stop`, printing one line per result; the request
/// number `n` (from 0) goes to the account `account_of(n)`, if any.
async fn drive<S>(
    mut client: S,
    url: &str,
    pause: Duration,
    stop: &AtomicBool,
    account_of: impl Fn(u64) -> Option<Account>,
) -> Result<Totals, BoxError>
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let mut totals = Totals::default();
    let mut out = std::io::stdout().lock();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result = send(&mut client, url, account_of(totals.sent)).await;
        let ms = started.elapsed().as_millis();
        totals.sent += 1;
        let line = match result {
            Ok(200) => {
                totals.ok += 1;
                format!("ok {ms}")
            }
            Ok(status) => {
                totals.status += 1;
                format!("status {status} {ms}")
            }
            Err(kind) => {
                totals.error += 1;
                format!("error {kind} {ms}")
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        tokio::time::sleep(pause).await;
    }
    Ok(totals)
}

/// Sends one `GET` (for `account`, if any) and reads the whole response: its status, or the
/// kind of error.
async fn send<S>(client: &mut S, url: &str, account: Option<Account>) -> Result<u16, String>
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let mut request = http::Request::get(url)
        .body(Empty::new())
        .map_err(|_| "request".to_owned())?;
    if let Some(account) = account {
        request.extensions_mut().insert(account);
    }
    let response = client
        .ready()
        .await
        .map_err(kind)?
        .call(request)
        .await
        .map_err(kind)?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|_| "transport".to_owned())?;
    Ok(status)
}

/// The cache's error kind, or `transport` for any other error.
fn kind(error: BoxError) -> String {
    match error.downcast_ref::<Error>() {
        Some(error) => error.kind().as_str().to_owned(),
        None => "transport".to_owned(),
    }
}
