//! Heap allocations per request: `BearerAuth` with a warm token must allocate exactly as often as
//! the floor, tower-http's static `AddAuthorization`, which allocates only for the request's own
//! header map.
//!
//! A counting wrapper around the system allocator counts the allocations of the measuring thread
//! only, so that the test harness's other threads cannot disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_authtoken::{BearerAuth, Error, Token, TokenCache, TokenSource};
use tower_http::auth::AddAuthorization;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn record() {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain thread-locals
// without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: as for `alloc`; `ptr` came from this allocator, hence from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocations (including reallocations) that `f` makes on this thread.
async fn allocations<F: Future>(f: F) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f.await;
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

const REQUESTS: u64 = 1000;

struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new("alloc-test-token", Duration::from_secs(3600))
    }
}

/// Sends `n` requests through `service`, one after another.
async fn send<S>(service: &mut S, n: u64)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        std::hint::black_box(response);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn bearer_auth_allocates_no_more_than_a_static_header() {
    let upstream = service_fn(|req: Request<()>| {
        std::hint::black_box(&req);
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    let cache = TokenCache::builder(Fixed)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let token = cache.token().await.unwrap();
    let mut floor = AddAuthorization::bearer(upstream, token.expose_secret()).as_sensitive(true);
    let mut bearer = BearerAuth::new(upstream, cache);

    // Warm up: the first clone of each header promotes its bytes to a shared buffer once, and
    // arc-swap's first load on a thread registers that thread.
    send(&mut floor, 10).await;
    send(&mut bearer, 10).await;

    let floor_count = allocations(send(&mut floor, REQUESTS)).await;
    let bearer_count = allocations(send(&mut bearer, REQUESTS)).await;
    eprintln!(
        "allocations per request: floor {}, BearerAuth {}",
        floor_count as f64 / REQUESTS as f64,
        bearer_count as f64 / REQUESTS as f64,
    );
    // The floor allocates for the request's header map; make sure the counter saw that.
    assert!(
        floor_count >= REQUESTS,
        "the counter missed the floor's allocations"
    );
    assert_eq!(
        bearer_count, floor_count,
        "BearerAuth allocated {bearer_count} times in {REQUESTS} requests, the floor {floor_count}"
    );
}
