//! Freezes longer than a token's life, in real time: no request may carry an expired token
//! afterwards, and none may fail.
//!
//! - A child process (`examples/freeze_child.rs`, which `cargo test` builds; `cargo test --test
//!   freeze` alone does not rebuild it: `cargo build --example freeze_child`) sends a steady
//!   stream of requests through `BearerAuthLayer`; the test stops it with `SIGSTOP`, resumes it
//!   with `SIGCONT`, and lets it run on. One child runs a current-thread runtime, one a
//!   multi-thread runtime; two more do the same through `KeyedBearerAuthLayer` for four
//!   accounts (through the account map and the service's memo alike).
//! - `std::thread::sleep` blocks a current-thread runtime in this process, from the task that
//!   sends the requests or from another task.
//! - A login whose answer arrives while the runtime stands still: the token is spent on arrival.
//! - `block_on` on a current-thread runtime after an idle spell outside it.
//!
//! The reference server runs on a runtime of its own ([`support::BackgroundServer`]), so that
//! it keeps time and answers while the client stands still; a `401` from its protected
//! endpoint, counted by [`ReferenceServer::rejections`], is a request sent with an expired
//! token.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tower::ServiceBuilder;
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuth, BearerAuthLayer, TokenCache};

use support::{BackgroundServer, HttpClient, get, http_client};

/// The tokens' lifetime: renewed after 0.75 to 1 s, withdrawn 200 ms before they expire.
const LIFETIME: Duration = Duration::from_secs(2);
/// Every freeze: longer than a token's whole life, so that whatever token the client held when
/// it froze has expired by the time it thaws.
const FREEZE: Duration = Duration::from_millis(2500);
/// The pause between two requests of one caller.
const PACE: Duration = Duration::from_millis(10);
/// The longest any one request may take before the test calls the client stuck.
const STUCK: Duration = Duration::from_secs(5);
/// The accounts of the keyed children: the users `frozen-0` ... `frozen-3`.
const ACCOUNTS: u32 = 4;

fn server() -> BackgroundServer {
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .user("frozen", "frozen-password")
            .token_lifetime(LIFETIME),
    );
    for account in 0..ACCOUNTS {
        server.add_user(
            &format!("frozen-{account}"),
            &format!("frozen-password-{account}"),
        );
    }
    server
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stack(server: &ReferenceServer) -> BearerAuth<HttpClient> {
    let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
    ServiceBuilder::new()
        .layer(BearerAuthLayer::new(TokenCache::new(source)))
        .service(http_client(true))
}

/// Sends requests through `client` for `traffic` (at least one) and returns every outcome.
async fn traffic(
    client: &mut BearerAuth<HttpClient>,
    url: &str,
    traffic: Duration,
) -> Vec<Result<StatusCode, String>> {
    let end = Instant::now() + traffic;
    let mut outcomes = Vec::new();
    while outcomes.is_empty() || Instant::now() < end {
        let outcome = match tokio::time::timeout(STUCK, get(client, url)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {STUCK:?}")),
        };
        outcomes.push(outcome);
        tokio::time::sleep(PACE).await;
    }
    outcomes
}

/// Fails unless every outcome is a `200`, listing those that are not.
fn assert_all_accepted(what: &str, outcomes: &[Result<StatusCode, String>]) {
    let bad: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| !matches!(outcome, Ok(StatusCode::OK)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} requests not accepted: {bad:?}",
        bad.len(),
        outcomes.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A child process frozen with SIGSTOP.

/// `target/<profile>/examples/freeze_child`, which `cargo test` builds with the tests.
fn child_binary() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    let child = profile_dir.join("examples").join("freeze_child");
    assert!(
        child.exists(),
        "{} is missing: cargo test builds the examples (or: cargo build --example freeze_child)",
        child.display()
    );
    child
}

/// A running `freeze_child`, its output read line by line on a thread of its own. Dropping it
/// kills the process, frozen or not.
struct Child {
    name: &'static str,
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Every result line so far (`ok ..`, `status ..`, `error ..`).
    results: Vec<String>,
    summary: Option<String>,
}

impl Child {
    /// A child on a runtime of `flavor`; as `ACCOUNTS` accounts through a keyed cache when
    /// `keyed`.
    fn spawn(server: &ReferenceServer, name: &'static str, flavor: &str, keyed: bool) -> Child {
        let accounts = ACCOUNTS.to_string();
        let keyed_args: &[&str] = match keyed {
            true => &["--accounts", &accounts],
            false => &[],
        };
        let mut process = Command::new(child_binary())
            .args(["--base-url", &server.base_url(), "--user", "frozen"])
            .args(["--flavor", flavor, "--pause-ms", "50"])
            .args(keyed_args)
            .env("FREEZE_CHILD_PASSWORD", "frozen-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the freeze_child example starts");
        let stdout = process.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            name,
            process,
            lines,
            results: Vec::new(),
            summary: None,
        }
    }

    /// Waits up to `limit` for the next line and records it; `false` at the end of the output.
    fn read_line(&mut self, limit: Duration) -> bool {
        match self.lines.recv_timeout(limit) {
            Ok(line) if line.starts_with("summary ") => {
                self.summary = Some(line);
                true
            }
            Ok(line) => {
                self.results.push(line);
                true
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => false,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{}: no output within {limit:?}", self.name)
            }
        }
    }

    /// Records every line already printed.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            match line.starts_with("summary ") {
                true => self.summary = Some(line),
                false => self.results.push(line),
            }
        }
    }

    /// Freezes the child right after it printed a result: it is then in its 50 ms pause between
    /// two requests, so that no request is half-way out of the process while it stands still (a
    /// request that left the layer before the freeze and the socket after it would carry a
    /// token that expired meanwhile, through no fault of the cache's).
    fn freeze_between_requests(&mut self) -> usize {
        self.drain();
        self.read_line(STUCK);
        self.signal("STOP");
        self.results.len()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Closes the child's standard input, reads the rest of its output, and waits for it.
    fn finish(&mut self) {
        drop(self.process.stdin.take());
        while self.read_line(STUCK) {}
        let status = self.process.wait().expect("the child exits");
        assert!(status.success(), "{}: exited with {status}", self.name);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn a_process_frozen_with_sigstop_longer_than_a_token_life_sends_no_expired_token() {
    let server = server();
    let mut children = [
        Child::spawn(&server, "current-thread", "current-thread", false),
        Child::spawn(&server, "multi-thread", "multi-thread", false),
        Child::spawn(&server, "keyed, current-thread", "current-thread", true),
        Child::spawn(&server, "keyed, multi-thread", "multi-thread", true),
    ];
    for child in &mut children {
        child.read_line(STUCK);
    }
    std::thread::sleep(Duration::from_secs(1));

    let mut before = Vec::new();
    for child in &mut children {
        before.push(child.freeze_between_requests());
    }
    let logins_before = server.logins();
    std::thread::sleep(FREEZE);
    for (child, before) in children.iter_mut().zip(&mut before) {
        // A line written just before the freeze may arrive late.
        child.drain();
        *before = child.results.len();
        child.signal("CONT");
    }
    std::thread::sleep(Duration::from_millis(1500));
    for child in &mut children {
        child.finish();
    }

    let stats = server.stats();
    for (child, before) in children.iter().zip(&before) {
        let after = child.results.len() - before;
        let summary = child.summary.as_deref().unwrap_or("no summary");
        println!(
            "{}: {before} requests before the freeze, {after} after; {summary}",
            child.name
        );
    }
    println!(
        "server: {} logins ({logins_before} before the freeze), {} accepted, {} rejections",
        stats.logins, stats.accepted, stats.rejections
    );
    assert_eq!(
        stats.rejections, 0,
        "requests sent with an expired token after the freeze"
    );
    for (child, before) in children.iter().zip(&before) {
        let bad: Vec<_> = child
            .results
            .iter()
            .enumerate()
            .filter(|(_, line)| !line.starts_with("ok "))
            .collect();
        assert!(
            bad.is_empty(),
            "{}: requests not accepted (request number, result): {bad:?}",
            child.name
        );
        assert!(
            child.results.len() > before + 10,
            "{}: hardly any requests after the freeze: {:?}",
            child.name,
            &child.results[*before..]
        );
        assert!(child.summary.is_some(), "{}: no summary", child.name);
    }
    assert!(
        stats.logins > logins_before,
        "every token had expired during the freeze, yet nobody logged in again"
    );
}

// ---------------------------------------------------------------------------------------------
// A runtime blocked by std::thread::sleep, in this process.

#[test]
fn a_runtime_blocked_by_thread_sleep_in_the_sending_task_sends_no_expired_token() {
    let server = server();
    let url = server.protected_url();
    let runtime = current_thread();
    let (before, after) = runtime.block_on(async {
        let mut client = stack(&server);
        let before = traffic(&mut client, &url, Duration::from_millis(500)).await;
        // The thread stands still, and with it the runtime and everything it runs.
        std::thread::sleep(FREEZE);
        let after = traffic(&mut client, &url, Duration::from_millis(500)).await;
        (before, after)
    });
    println!(
        "thread::sleep in the sending task: {} requests before, {} after; {} logins, {} rejections",
        before.len(),
        after.len(),
        server.logins(),
        server.rejections()
    );
    assert_all_accepted("before the freeze", &before);
    assert_all_accepted("after the freeze", &after);
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
    assert!(server.logins() >= 2, "a new token after the freeze");
}

/// Another task blocks the thread while the sending task pauses between two requests. (Had a
/// request been half-way out, between the layer and the socket, it would carry a token that
/// expired meanwhile: that is beyond any cache, like a queue below the layer.)
#[test]
fn a_runtime_blocked_by_thread_sleep_in_another_task_sends_no_expired_token() {
    let server = server();
    let url = server.protected_url();
    let runtime = current_thread();
    let outcomes = runtime.block_on(async {
        let mut client = stack(&server);
        let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
        let blocker = tokio::spawn(async move {
            if frozen.await.is_ok() {
                std::thread::sleep(FREEZE);
            }
        });
        let mut outcomes = traffic(&mut client, &url, Duration::from_millis(500)).await;
        // The blocker runs while this task sleeps, with no request in flight.
        freeze.send(()).unwrap();
        tokio::time::sleep(PACE).await;
        outcomes.extend(traffic(&mut client, &url, Duration::from_millis(500)).await);
        blocker.await.unwrap();
        outcomes
    });
    println!(
        "thread::sleep in another task: {} requests; {} logins, {} rejections",
        outcomes.len(),
        server.logins(),
        server.rejections()
    );
    assert_all_accepted("around the freeze", &outcomes);
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
    assert!(server.logins() >= 2, "a new token after the freeze");
}

/// The login's answer arrives while the runtime stands still, so the token has spent its whole
/// life by the time the runtime reads it (the server counts it from when it answered). The
/// cache must neither send it nor fail the request: it logs in again.
#[test]
fn a_login_answered_while_its_runtime_stood_still_yields_no_expired_token_and_no_error() {
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .user("frozen", "frozen-password")
            .token_lifetime(LIFETIME)
            .login_delay(Duration::from_millis(100)),
    );
    let url = server.protected_url();
    let runtime = current_thread();
    let outcomes = runtime.block_on(async {
        let mut client = stack(&server);
        let first = {
            let (mut client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&mut client, &url).await })
        };
        let give_up = Instant::now() + STUCK;
        while server.login_attempts() == 0 {
            assert!(
                Instant::now() < give_up,
                "the login never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The server answers 100 ms later, with a token that expires 2 s after that.
        std::thread::sleep(FREEZE);
        let mut outcomes = vec![first.await.expect("the first request's task")];
        outcomes.extend(traffic(&mut client, &url, Duration::from_millis(300)).await);
        outcomes
    });
    println!(
        "a login answered during a freeze: {} requests; {} login attempts, {} logins, \
         {} rejections",
        outcomes.len(),
        server.login_attempts(),
        server.logins(),
        server.rejections()
    );
    assert_all_accepted("after the freeze", &outcomes);
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
}

// ---------------------------------------------------------------------------------------------
// block_on after an idle spell.

#[test]
fn block_on_after_an_idle_spell_longer_than_a_token_life_sends_no_expired_token() {
    let server = server();
    let url = server.protected_url();
    let runtime = current_thread();
    let mut client = stack(&server);
    let first = runtime.block_on(get(&mut client, &url));
    // Outside `block_on` the runtime runs nothing: no timer fires.
    std::thread::sleep(FREEZE);
    let second = runtime.block_on(get(&mut client, &url));
    let third = runtime.block_on(get(&mut client, &url));
    println!(
        "block_on after an idle spell: {first:?}, then {second:?}, {third:?}; {} logins, \
         {} rejections",
        server.logins(),
        server.rejections()
    );
    assert_all_accepted("block_on", &[first, second, third]);
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
    assert_eq!(
        server.logins(),
        2,
        "one login before the idle spell, one after"
    );
}
