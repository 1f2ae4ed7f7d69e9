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
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, Credentials, Error, TokenCache};

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
}

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

    let credentials = Credentials::new(args.user.clone(), args.password.clone());
    let cache = TokenCache::new(AuthTokenSource::new(&args.base_url, credentials)?);
    let url = format!("{}{}", args.base_url, args.path);
    let pause = Duration::from_millis(args.pause_ms);

    let totals = runtime.block_on(async {
        let mut client = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(cache.clone()))
            .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
        let mut totals = Totals::default();
        let mut out = std::io::stdout().lock();
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let result = send(&mut client, &url).await;
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
        Ok::<_, BoxError>(totals)
    })?;
    let stats = cache.stats();
    println!(
        "summary sent={} ok={} status={} error={} fetches={} renewals={}",
        totals.sent, totals.ok, totals.status, totals.error, stats.fetches, stats.renewals
    );
    Ok(())
}

/// Sends one `GET` and reads the whole response: its status, or the kind of error.
async fn send<S>(client: &mut S, url: &str) -> Result<u16, String>
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let request = http::Request::get(url)
        .body(Empty::new())
        .map_err(|_| "request".to_owned())?;
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
