//! One cache, many runtimes, in real time (separate runtimes cannot share a paused clock).
//!
//! - A `static` client (a `LazyLock`) used by many `#[tokio::test]`s of both flavours at once:
//!   each test runs on a runtime of its own that starts and shuts down while the 1 s tokens are
//!   renewed. Every request must be accepted. Run the binary in a loop to shake out races:
//!   `for i in $(seq 50); do cargo test --test runtimes -q || break; done`.
//! - The runtime that logged in first left idle, or shut down mid-login: callers on a live
//!   runtime are still served, promptly.
//! - `block_on` on current-thread runtimes from plain threads that sleep between calls.
//! - Single flight across live runtimes starting cold at once.
//!
//! The reference server runs on a runtime of its own ([`support::BackgroundServer`]), so what
//! a test does to its runtimes never slows the server down. The HTTP clients shared by several
//! runtimes do not pool connections: hyper-util (and reqwest) run a connection on the runtime
//! that opened it, so a pooled connection is dead once that runtime is dropped and stuck while
//! it sits idle. For the API client that is the user's choice; for the login client the cache
//! uses by default, it is ours: one test uses `AuthTokenSource::new` as it is.
//!
//! The tests that share the static client sort first, so that with the default two test
//! threads they run two at a time. The whole binary takes 3 to 4 s on two cores.

mod support;

use std::sync::{Arc, Barrier, LazyLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use tower::ServiceBuilder;
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuth, BearerAuthLayer, TokenCache};

use support::{BackgroundServer, HttpClient, get, http_client, unpooled_source};

/// The lifetime of every token in this file: the server's `expiresIn` is in whole seconds.
const LIFETIME: Duration = Duration::from_secs(1);
/// The longest any one request may take before the test calls the cache stuck. Today's failure
/// mode is a wait of the whole fetch timeout (30 s) followed by `Err(Timeout)`.
const STUCK: Duration = Duration::from_secs(5);
/// The pause between two requests of one caller.
const PACE: Duration = Duration::from_millis(10);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A cache over `server`'s logins, through a client that does not pool connections.
///
/// A 1 s token is withdrawn 300 ms before it expires rather than the default 100 ms, so that a
/// request that took the token just before that still reaches the server in time on a loaded
/// machine.
fn cache(server: &ReferenceServer) -> TokenCache {
    TokenCache::builder(unpooled_source(server))
        .expiry_margin(Duration::from_millis(300))
        .build()
        .unwrap()
}

fn stack(cache: &TokenCache, pooled: bool) -> BearerAuth<HttpClient> {
    ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(http_client(pooled))
}

/// One request, which must be accepted within [`STUCK`]; returns how long it took.
async fn accepted(client: &mut BearerAuth<HttpClient>, url: &str, what: &str) -> Duration {
    let started = Instant::now();
    match tokio::time::timeout(STUCK, get(client, url)).await {
        Ok(Ok(StatusCode::OK)) => started.elapsed(),
        Ok(Ok(status)) => panic!("{what}: the server answered {status}"),
        Ok(Err(error)) => panic!("{what}: the request failed: {error}"),
        Err(_) => panic!("{what}: no answer within {STUCK:?}: the cache is stuck"),
    }
}

// ---------------------------------------------------------------------------------------------
// A static client used by many tests at once.

/// The reference server and the client every test of [`a_static_client_used_by_many_tests`]
/// shares, created by whichever test comes first and never dropped.
struct StaticClient {
    server: BackgroundServer,
    client: BearerAuth<HttpClient>,
}

static STATIC_CLIENT: LazyLock<StaticClient> = LazyLock::new(|| {
    // A login takes a while, so that runtimes often shut down with one in flight.
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .token_lifetime(LIFETIME)
            .login_delay(Duration::from_millis(100)),
    );
    let cache = cache(&server);
    let client = stack(&cache, false);
    StaticClient { server, client }
});

/// Sends requests through the static client for `traffic`, each of which must be accepted.
async fn through_the_static_client(traffic: Duration) {
    let url = STATIC_CLIENT.server.protected_url();
    let mut client = STATIC_CLIENT.client.clone();
    let end = Instant::now() + traffic;
    let mut sent = 0;
    while sent == 0 || Instant::now() < end {
        accepted(&mut client, &url, &format!("request {sent}")).await;
        sent += 1;
        tokio::time::sleep(PACE).await;
    }
}

/// Sends requests through the static client, blocks its thread with `std::thread::sleep` (as
/// sync code called from a test does: the runtime, and whatever it runs, stands still), then
/// sends more. Every request must be accepted.
async fn through_the_static_client_blocking_in_between(block: Duration) {
    through_the_static_client(Duration::from_millis(60)).await;
    std::thread::sleep(block);
    through_the_static_client(Duration::from_millis(60)).await;
}

/// Spawns tasks that send requests through the static client and ends after `lasts` while they
/// are still going, so that its runtime shuts down with requests, and at times the login other
/// tests wait for, in flight. Every request that completed before the end must have been
/// accepted.
async fn through_the_static_client_ending_mid_flight(lasts: Duration) {
    let url = STATIC_CLIENT.server.protected_url();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    for task in 0..3 {
        let mut client = STATIC_CLIENT.client.clone();
        let url = url.clone();
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            for n in 0.. {
                let failure = match tokio::time::timeout(STUCK, get(&mut client, &url)).await {
                    Ok(Ok(StatusCode::OK)) => None,
                    Ok(Ok(status)) => Some(format!("the server answered {status}")),
                    Ok(Err(error)) => Some(format!("the request failed: {error}")),
                    Err(_) => Some(format!("no answer within {STUCK:?}")),
                };
                if let Some(failure) = failure {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("task {task}, request {n}: {failure}"));
                }
                tokio::time::sleep(PACE).await;
            }
        });
    }
    tokio::time::sleep(lasts).await;
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Writes one test per line: its name, its runtime's flavour, what it does (`traffic`: awaits
/// its own requests; `mid_flight`: ends with requests in flight; `blocking`: blocks its thread)
/// and for how long. The lengths are staggered, so that runtimes shut down at all points of a
/// token's life and of a login.
macro_rules! static_client_tests {
    ($($name:ident: $flavor:literal, $kind:ident, $ms:literal;)*) => {
        $(
            #[tokio::test(flavor = $flavor)]
            async fn $name() {
                static_client_tests!(@run $kind, Duration::from_millis($ms));
            }
        )*
    };
    (@run traffic, $duration:expr) => { through_the_static_client($duration).await };
    (@run mid_flight, $duration:expr) => {
        through_the_static_client_ending_mid_flight($duration).await
    };
    (@run blocking, $duration:expr) => {
        through_the_static_client_blocking_in_between($duration).await
    };
}

mod a_static_client_used_by_many_tests {
    use super::*;

    static_client_tests! {
        accepts_every_request_as_it_ends_mid_flight_on_current_thread_1: "current_thread", mid_flight, 50;
        accepts_every_request_as_it_ends_mid_flight_on_multi_thread_1: "multi_thread", mid_flight, 80;
        accepts_every_request_as_it_ends_mid_flight_on_current_thread_2: "current_thread", mid_flight, 130;
        accepts_every_request_as_it_ends_mid_flight_on_multi_thread_2: "multi_thread", mid_flight, 60;
        accepts_every_request_as_it_ends_mid_flight_on_current_thread_3: "current_thread", mid_flight, 90;
        accepts_every_request_as_it_ends_mid_flight_on_multi_thread_3: "multi_thread", mid_flight, 170;
        accepts_every_request_as_it_ends_mid_flight_on_current_thread_4: "current_thread", mid_flight, 70;
        accepts_every_request_as_it_ends_mid_flight_on_multi_thread_4: "multi_thread", mid_flight, 110;
        accepts_every_request_on_current_thread_1: "current_thread", traffic, 120;
        accepts_every_request_on_multi_thread_1: "multi_thread", traffic, 170;
        accepts_every_request_on_current_thread_2: "current_thread", traffic, 230;
        accepts_every_request_on_multi_thread_2: "multi_thread", traffic, 90;
        accepts_every_request_before_and_after_blocking_its_thread_1: "current_thread", blocking, 1100;
        accepts_every_request_before_and_after_blocking_its_thread_2: "current_thread", blocking, 700;
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime that logged in first, left idle or shut down.

/// The first token is fetched on a current-thread runtime that is then left idle (alive, never
/// driven again); callers on a live runtime send requests past that token's expiry. Every
/// request must be accepted, none may wait much longer than a login.
fn served_while_the_runtime_that_logged_in_sits_idle(
    make_cache: fn(&ReferenceServer) -> TokenCache,
) {
    const LOGIN_DELAY: Duration = Duration::from_millis(100);
    const TRAFFIC: Duration = Duration::from_millis(1300);
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .token_lifetime(LIFETIME)
            .login_delay(LOGIN_DELAY),
    );
    let cache = make_cache(&server);

    let idle = current_thread();
    idle.block_on(cache.token()).expect("the first token");

    let live = multi_thread();
    let (sent, worst) = live.block_on(async {
        let url = server.protected_url();
        let mut client = stack(&cache, true);
        let end = Instant::now() + TRAFFIC;
        let (mut sent, mut worst) = (0, Duration::ZERO);
        while Instant::now() < end {
            let took = accepted(&mut client, &url, &format!("request {sent} on `live`")).await;
            worst = worst.max(took);
            sent += 1;
            tokio::time::sleep(PACE).await;
        }
        (sent, worst)
    });
    println!(
        "idle login runtime: {sent} requests on the live runtime, longest {worst:?}, {} logins",
        server.logins()
    );
    assert!(
        server.logins() >= 2,
        "the test ran past the first token's life, so it needed a second login"
    );
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
    let bound = LOGIN_DELAY + Duration::from_millis(1500);
    assert!(
        worst < bound,
        "a request waited {worst:?} for a token, more than one login plus {:?}",
        bound - LOGIN_DELAY
    );
    drop(idle);
}

#[test]
fn callers_on_a_live_runtime_are_served_while_the_runtime_that_logged_in_sits_idle() {
    served_while_the_runtime_that_logged_in_sits_idle(cache);
}

/// The same with `AuthTokenSource::new`'s own reqwest client, as most users build it: its
/// connection pool must not hand the live runtime's login a connection that only the idle
/// runtime drives.
#[test]
fn the_default_login_client_does_not_hang_a_live_runtime_behind_an_idle_one() {
    served_while_the_runtime_that_logged_in_sits_idle(|server| {
        let source = AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap();
        TokenCache::builder(source)
            .expiry_margin(Duration::from_millis(300))
            .build()
            .unwrap()
    });
}

#[test]
fn callers_on_a_live_runtime_get_a_token_when_the_runtime_running_the_login_shuts_down() {
    const LOGIN_DELAY: Duration = Duration::from_millis(300);
    const CALLERS: usize = 4;
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .token_lifetime(Duration::from_secs(60))
            .login_delay(LOGIN_DELAY),
    );
    let cache = cache(&server);

    // `doomed` starts the login and drives it until the server has it.
    let doomed = current_thread();
    doomed.block_on(async {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await });
        let give_up = Instant::now() + STUCK;
        while server.login_attempts() == 0 {
            assert!(
                Instant::now() < give_up,
                "the login never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // Callers on `live` wait for that login...
    let live = multi_thread();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let cache = cache.clone();
            live.spawn(async move { tokio::time::timeout(STUCK, cache.token()).await })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));

    // ...and `doomed` shuts down before it completes.
    let shut_down = Instant::now();
    drop(doomed);
    for (n, caller) in callers.into_iter().enumerate() {
        match live.block_on(caller).expect("the caller's task") {
            Ok(Ok(_token)) => {}
            Ok(Err(error)) => panic!("caller {n} got {:?}: {error}", error.kind()),
            Err(_) => panic!("caller {n} got no token within {STUCK:?}: the cache is stuck"),
        }
    }
    let waited = shut_down.elapsed();
    println!(
        "login runtime shut down mid-login: callers served {waited:?} after the shutdown, \
         {} login attempts, {} logins",
        server.login_attempts(),
        server.logins()
    );
    assert!(
        server.login_attempts() <= 2,
        "{} login attempts: the one cut short and at most one more",
        server.login_attempts()
    );
    let bound = LOGIN_DELAY + Duration::from_millis(1500);
    assert!(
        waited < bound,
        "callers waited {waited:?} after the shutdown, more than one login plus {:?}",
        bound - LOGIN_DELAY
    );
}

// ---------------------------------------------------------------------------------------------
// `block_on` from plain threads.

/// Thread 0 logs in first, so today's background task lives on its runtime, and then naps
/// longer than a token's life between its calls (its runtime idle); the other threads nap
/// briefly. Every thread's requests must be accepted.
#[test]
fn current_thread_runtimes_on_plain_threads_share_one_cache_across_renewals() {
    const THREADS: usize = 4;
    const TRAFFIC: Duration = Duration::from_millis(1500);
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .token_lifetime(LIFETIME)
            .login_delay(Duration::from_millis(20)),
    );
    let cache = cache(&server);
    let start = Arc::new(Barrier::new(THREADS));
    let end = Instant::now() + TRAFFIC;

    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let cache = cache.clone();
            let url = server.protected_url();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let runtime = current_thread();
                // Each thread's connections live on its own runtime, so they may be pooled.
                let mut client = stack(&cache, true);
                let naps_ms = if thread == 0 {
                    runtime.block_on(cache.token()).expect("the first token");
                    1100..=1300
                } else {
                    0..=100
                };
                start.wait();
                let mut sent = 0;
                while Instant::now() < end {
                    runtime.block_on(async {
                        for _ in 0..2 {
                            let what = format!("thread {thread}, request {sent}");
                            accepted(&mut client, &url, &what).await;
                            sent += 1;
                        }
                    });
                    // Outside `block_on` the runtime is idle: nothing it runs makes progress.
                    let nap = Duration::from_millis(fastrand::u64(naps_ms.clone()));
                    std::thread::sleep(nap.min(end.saturating_duration_since(Instant::now())));
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for thread in threads {
        match thread.join() {
            Ok(n) => sent += n,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    println!(
        "block_on from {THREADS} threads: {sent} requests, {} logins, {} rejections",
        server.logins(),
        server.rejections()
    );
    assert!(
        server.logins() >= 2,
        "the test ran past the first token's life, so it needed renewals"
    );
    assert_eq!(
        server.rejections(),
        0,
        "requests sent with an expired token"
    );
}

// ---------------------------------------------------------------------------------------------
// Single flight across live runtimes.

/// `runtimes` runtimes (alternately current-thread and multi-thread), each on a thread of its
/// own, ask the same cold cache for a token at once and wait for it: every one of them is live
/// throughout. Exactly one login may happen.
fn cold_start_at_once(runtimes: usize, login_delay: Duration) {
    let server = BackgroundServer::start(
        ReferenceServer::builder()
            .token_lifetime(Duration::from_secs(60))
            .login_delay(login_delay),
    );
    let cache = cache(&server);
    let start = Arc::new(Barrier::new(runtimes));
    let threads: Vec<_> = (0..runtimes)
        .map(|n| {
            let cache = cache.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let runtime = if n % 2 == 0 {
                    current_thread()
                } else {
                    multi_thread()
                };
                start.wait();
                match runtime.block_on(async { tokio::time::timeout(STUCK, cache.token()).await }) {
                    Ok(Ok(token)) => token.expose_secret().to_owned(),
                    Ok(Err(error)) => panic!("runtime {n} got {:?}: {error}", error.kind()),
                    Err(_) => panic!("runtime {n} got no token within {STUCK:?}"),
                }
            })
        })
        .collect();
    let tokens: Vec<String> = threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
        .collect();
    assert!(
        tokens.iter().all(|token| *token == tokens[0]),
        "the runtimes got different tokens"
    );
    assert_eq!(server.login_attempts(), 1, "login attempts");
    assert_eq!(server.logins(), 1, "logins");
    assert_eq!(server.max_concurrent_logins(), 1, "logins at once");
}

#[test]
fn runtimes_starting_cold_at_once_share_one_login() {
    cold_start_at_once(6, Duration::from_millis(100));
}

/// A login slower than the ~0.5 s after which a live runtime may take over from an idle one:
/// while the runtime running it is live, nobody takes over.
#[test]
fn runtimes_starting_cold_at_once_share_one_slow_login() {
    cold_start_at_once(6, Duration::from_millis(700));
}
