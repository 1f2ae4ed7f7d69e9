//! Secrets wiped from memory: no heap block that this crate frees holds the password or a token
//! in clear.
//!
//! A global allocator scans every block as it is freed (while a test has it armed) for the
//! password and the token. For each block that holds one, it records a backtrace, and the test
//! names the code that freed it: the innermost frame of a crate that is not the standard library.
//! A block freed by this crate (`tower_authtoken`) fails the test; a block freed by the HTTP stack
//! is a copy beyond the crate's reach, which the tests list exactly.
//!
//! The reference server runs in this process, on a thread of its own whose frees are not
//! scanned: its copies of the password and the token are the server's, not the client's.
//!
//! Two facts make the attribution sound. Every `Bytes` this crate creates on the login path is
//! owner-backed with an owner that zeroes itself (the login body and the token's header), so a
//! secret-holding block released through `bytes`' shared-buffer machinery is the HTTP stack's
//! (hyper's read buffer), whoever drops the last reference. And every other buffer of ours is
//! freed by a frame of ours.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use tower_authtoken::testing::{Failure, ReferenceServer};
use tower_authtoken::{AuthTokenSource, Credentials, ErrorKind, Token, TokenSource};

const PASSWORD: &str = "Wipe-Me-P4ssw0rd-7f3a9c";
const TOKEN: &str = "wipe-me-token-5d1e8b2f0a61";
/// The secrets looked for, by name: a hit names the secret, never shows it (the test's own output
/// would otherwise put copies on the heap).
const SECRETS: [(&str, &str); 2] = [("password", PASSWORD), ("token", TOKEN)];

/// The allocator: `System`, plus a scan of each freed block while armed.
struct Scanning;

/// Whether frees are scanned.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Every freed block that held a secret while armed.
static HITS: Mutex<Vec<Hit>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records a hit: the recording allocates and frees too.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Set on the reference server's thread, whose frees are the server's business.
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

/// A freed block that held a secret.
struct Hit {
    secret: &'static str,
    /// Whether the block also held an HTTP/1.1 response head: then it is the HTTP stack's read
    /// buffer, into which the response arrived.
    read_buffer: bool,
    backtrace: Backtrace,
}

/// Whether the `size` bytes at `ptr` contain `needle`.
///
/// # Safety
///
/// `ptr` must be valid for reads of `size` bytes. Volatile reads, one byte at a time: the block
/// may hold bytes never written (spare capacity), which we only compare.
unsafe fn block_contains(ptr: *const u8, size: usize, needle: &[u8]) -> bool {
    if size < needle.len() {
        return false;
    }
    'start: for start in 0..=size - needle.len() {
        for (i, &byte) in needle.iter().enumerate() {
            // SAFETY: `start + i < size`, within the block.
            if unsafe { ptr.add(start + i).read_volatile() } != byte {
                continue 'start;
            }
        }
        return true;
    }
    false
}

fn scanning_here() -> bool {
    ARMED.load(Ordering::Relaxed)
        && !IN_HOOK.try_with(Cell::get).unwrap_or(true)
        && !EXEMPT.try_with(Cell::get).unwrap_or(true)
}

/// Records that a freed block held `secret`, with the backtrace of its free.
fn record(secret: &'static str, read_buffer: bool) {
    IN_HOOK.with(|hook| hook.set(true));
    let backtrace = Backtrace::force_capture();
    HITS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Hit {
            secret,
            read_buffer,
            backtrace,
        });
    IN_HOOK.with(|hook| hook.set(false));
}

// SAFETY: every allocation is `System`'s; `dealloc` only reads and zeroes the block before handing
// it back.
// `realloc` is the trait's default (allocate, copy, free), so a block left behind by a move is
// scanned like any other.
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let watched = WATCHED.load(Ordering::Relaxed);
        if watched != 0 && (ptr as usize..ptr as usize + layout.size()).contains(&watched) {
            WATCHED_FREED.store(true, Ordering::Relaxed);
        }
        if scanning_here() {
            for (name, secret) in SECRETS {
                // SAFETY: the block is live, `layout.size()` bytes, until `System.dealloc`.
                if unsafe { block_contains(ptr, layout.size(), secret.as_bytes()) } {
                    // SAFETY: as above.
                    let head = unsafe { block_contains(ptr, layout.size(), b"HTTP/1.1 ") };
                    record(name, head);
                }
            }
        }
        // Every freed block, scanned or not, is zeroed before it goes back: a block reused later
        // and freed with spare capacity would otherwise show a stale secret of an earlier login
        // (or of the exempt server) and blame whoever freed it last.
        // SAFETY: the block is live and writable, `layout.size()` bytes, until `System.dealloc`.
        unsafe { ptr.write_bytes(0, layout.size()) };
        // SAFETY: `ptr` came from this allocator, hence from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Scanning = Scanning;

/// An address inside a block whose release a test waits for (0: none), and whether it was freed.
static WATCHED: AtomicUsize = AtomicUsize::new(0);
static WATCHED_FREED: AtomicBool = AtomicBool::new(false);

/// The tests of this file run one at a time: the allocator and its hits are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Who freed a block: the first crate named by the backtrace, innermost first, that is not the
/// standard library, this allocator, `bytes`' buffer machinery or `zeroize`.
///
/// `bytes` is skipped to see who released the buffer, but remembered: a block released through
/// it is a shared `Bytes`/`BytesMut` buffer, and this crate's only ones on the login path zero
/// themselves, so such a block belongs to the HTTP stack (hyper's read buffer) whoever dropped it
/// last.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freer {
    /// This crate's own code.
    Ours(String),
    /// A shared `bytes` buffer (hyper's read buffer), released from this frame.
    SharedBytes(String),
    /// Another crate (hyper, reqwest, serde_json, ...), with the frame.
    Other(String),
    /// This test file.
    TestCode(String),
    /// No crate frame at all.
    Unknown,
}

/// The crate a symbol belongs to: the type inside `drop_in_place<...>`, the type of
/// `<T as Trait>::f`, or the first path segment.
fn crate_of(symbol: &str) -> &str {
    let mut rest = symbol.trim();
    if let Some(inner) = rest.strip_prefix("core::ptr::drop_in_place<") {
        rest = inner;
    }
    rest = rest.trim_start_matches(['<', '&', '*']);
    rest = rest.trim_start_matches("mut ").trim_start_matches("const ");
    rest.split("::").next().unwrap_or_default()
}

fn freer(backtrace: &Backtrace) -> Freer {
    let text = backtrace.to_string();
    let symbols = text.lines().filter_map(|line| {
        let (number, symbol) = line.trim_start().split_once(": ")?;
        number.parse::<usize>().ok().map(|_| symbol.to_owned())
    });
    let mut through_bytes = false;
    for symbol in symbols {
        match crate_of(&symbol) {
            "std" | "core" | "alloc" | "__rustc" | "zeroize" | "" => {}
            "wipe" if symbol.contains("Scanning") || symbol.contains("wipe::record") => {}
            "wipe" if !through_bytes => return Freer::TestCode(symbol),
            name if name.starts_with("__") || name.starts_with("_") => {}
            "bytes" => through_bytes = true,
            name => {
                return if through_bytes {
                    Freer::SharedBytes(symbol)
                } else if name == "tower_authtoken" {
                    Freer::Ours(symbol)
                } else {
                    Freer::Other(symbol)
                };
            }
        }
    }
    Freer::Unknown
}

/// A freed block that held a secret, as a test sees it.
#[derive(Debug)]
struct Seen {
    /// `"password"` or `"token"`.
    secret: &'static str,
    /// The block also held an HTTP response head: the HTTP stack's read buffer.
    read_buffer: bool,
    freer: Freer,
}

/// Makes the calling test the only one running until the guard drops: the allocator and its
/// hits are global, and a test's setup must not free secrets while another one scans.
fn alone() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `test` with the allocator armed, and returns every hit with who freed it. Call it while
/// holding [`alone`].
fn scanned<T>(test: impl FnOnce() -> T) -> (T, Vec<Seen>) {
    HITS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    ARMED.store(true, Ordering::SeqCst);
    let out = test();
    ARMED.store(false, Ordering::SeqCst);
    let hits = std::mem::take(&mut *HITS.lock().unwrap_or_else(PoisonError::into_inner));
    let described = hits
        .iter()
        .map(|hit| Seen {
            secret: hit.secret,
            read_buffer: hit.read_buffer,
            freer: freer(&hit.backtrace),
        })
        .collect();
    (out, described)
}

/// Fails, showing every hit, if any block holding a secret was freed by this crate.
fn assert_none_of_ours(hits: &[Seen]) {
    let ours: Vec<_> = hits
        .iter()
        .filter(|seen| matches!(seen.freer, Freer::Ours(_) | Freer::Unknown))
        .collect();
    assert!(
        ours.is_empty(),
        "this crate freed blocks holding a secret: {ours:#?}\nall hits: {hits:#?}"
    );
}

/// A reference server on a thread of its own (exempt from scanning), for `alice` / [`PASSWORD`],
/// answering its first login with `first_answer`. Returns the base URL and a guard that stops it.
fn server_thread(first_answer: Failure) -> (String, mpsc::Sender<()>) {
    let (url_tx, url_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        EXEMPT.with(|exempt| exempt.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = ReferenceServer::builder()
                .user("alice", PASSWORD)
                .start()
                .await;
            server.push_failure(first_answer);
            url_tx.send(server.base_url()).unwrap();
            // Serve until the test is done.
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
        });
    });
    (url_rx.recv().unwrap(), stop_tx)
}

/// Logs in once as the application would, then drops everything: the token, the source with its
/// HTTP client and pooled connection, and the runtime with its tasks.
fn log_in_and_drop_everything(base_url: &str) -> Result<String, tower_authtoken::Error> {
    log_in_with_and_drop_everything(base_url, AuthTokenSource::new)
}

/// Like [`log_in_and_drop_everything`], over hyper-util's client wrapped in tower-http's
/// `TraceLayer`, given as the source's Tower service.
fn log_in_over_a_traced_hyper_client_and_drop_everything(
    base_url: &str,
) -> Result<String, tower_authtoken::Error> {
    log_in_with_and_drop_everything(base_url, |base_url, credentials| {
        let client = tower::ServiceBuilder::new()
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .service(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>(),
            );
        AuthTokenSource::builder_with_service(base_url, credentials, client).build()
    })
}

/// Builds a source with `source` inside a fresh runtime, logs in once, then drops everything:
/// the token, the source with its HTTP client and pooled connection, and the runtime with its
/// tasks.
fn log_in_with_and_drop_everything(
    base_url: &str,
    source: impl FnOnce(&str, Credentials) -> Result<AuthTokenSource, tower_authtoken::Error>,
) -> Result<String, tower_authtoken::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let source = source(base_url, Credentials::new("alice", PASSWORD)).unwrap();
        let outcome = source.fetch().await.map(|token| {
            let value = token.expose_secret() == TOKEN;
            let header = token.header_value().clone();
            drop(token);
            drop(header);
            value
        });
        drop(source);
        // Let the connection task see its client go and end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        outcome
    });
    drop(runtime);
    outcome.map(|same| if same { "the token" } else { "another" }.to_owned())
}

/// A full login over `log_in`: no block of ours holds a secret, and what remains is exactly the
/// HTTP stack's read buffer, holding the response with the token. The password is in no freed
/// block at all: hyper writes our (self-wiping) body buffer to the socket with vectored writes,
/// without copying it.
fn assert_a_full_login_leaves_only_the_read_buffer(
    log_in: fn(&str) -> Result<String, tower_authtoken::Error>,
) {
    let _alone = alone();
    let body = format!(r#"{{"type":"Bearer","token":"{TOKEN}","expiresIn":3600}}"#);
    let (base_url, _stop) = server_thread(Failure::Body {
        status: 200,
        content_type: "application/json".to_owned(),
        body,
    });
    let (outcome, hits) = scanned(|| log_in(&base_url));
    assert_eq!(outcome.unwrap(), "the token");
    assert_none_of_ours(&hits);
    assert!(
        !hits.is_empty(),
        "hyper now wipes its read buffer? update the docs"
    );
    for seen in &hits {
        assert_eq!(seen.secret, "token", "{hits:#?}");
        assert!(seen.read_buffer, "{hits:#?}");
        assert!(matches!(seen.freer, Freer::SharedBytes(_)), "{hits:#?}");
    }
    eprintln!("copies beyond reach after a login: {hits:#?}");
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_full_login_frees_no_block_of_ours_holding_the_password_or_the_token() {
    assert_a_full_login_leaves_only_the_read_buffer(log_in_and_drop_everything);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_full_login_over_a_traced_hyper_client_frees_no_block_of_ours_holding_a_secret() {
    assert_a_full_login_leaves_only_the_read_buffer(
        log_in_over_a_traced_hyper_client_and_drop_everything,
    );
}

/// A bare HTTP/1.1 server on a thread of its own (exempt from scanning) that answers one request
/// with `200` and `body`, sent as chunks of `chunk` bytes, 20 ms apart. Returns the base URL and
/// a guard that stops it.
fn chunked_server_thread(body: String, chunk: usize) -> (String, mpsc::Sender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (url_tx, url_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        EXEMPT.with(|exempt| exempt.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            url_tx
                .send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then the body (its length is in the head; the body is small).
            while !request.ends_with(b"}") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client went away");
                request.extend_from_slice(&buf[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            for part in body.as_bytes().chunks(chunk) {
                let framed = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
                stream.write_all(&framed).await.unwrap();
                stream.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stream.write_all(b"0\r\n\r\n").await.unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
        });
    });
    (url_rx.recv().unwrap(), stop_tx)
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_response_that_arrives_in_many_chunks_leaves_no_copy_of_ours_with_the_token() {
    assert_a_chunked_response_leaves_no_copy_of_ours(log_in_and_drop_everything);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_response_in_many_chunks_over_a_traced_hyper_client_leaves_no_copy_of_ours() {
    assert_a_chunked_response_leaves_no_copy_of_ours(
        log_in_over_a_traced_hyper_client_and_drop_everything,
    );
}

/// A login over `log_in` whose response arrives in many chunks, so that the body buffer must
/// grow several times: no block of ours holds the token.
///
/// One login per test: the scanner reads whole freed blocks, spare capacity included, and a
/// second login in the same test thread can meet stale bytes of the first one's (unscanned)
/// server in a block reused since, a false alarm.
fn assert_a_chunked_response_leaves_no_copy_of_ours(
    log_in: fn(&str) -> Result<String, tower_authtoken::Error>,
) {
    let _alone = alone();
    // The token first, then enough padding that the body buffer must grow several times.
    let padding = "p".repeat(6000);
    let body = format!(r#"{{"token":"{TOKEN}","expiresIn":3600,"padding":"{padding}"}}"#);
    let (base_url, _stop) = chunked_server_thread(body, 700);
    let (outcome, hits) = scanned(|| log_in(&base_url));
    assert_eq!(outcome.unwrap(), "the token");
    assert_none_of_ours(&hits);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_login_whose_error_echoes_the_password_frees_no_block_of_ours_holding_it() {
    assert_an_echoed_password_is_only_in_the_read_buffer(log_in_and_drop_everything);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn an_echoed_password_over_a_traced_hyper_client_frees_no_block_of_ours_holding_it() {
    assert_an_echoed_password_is_only_in_the_read_buffer(
        log_in_over_a_traced_hyper_client_and_drop_everything,
    );
}

/// A login over `log_in` whose `401` echoes the password: the error has it redacted, no block
/// of ours holds it, and the one copy left is the HTTP stack's read buffer.
fn assert_an_echoed_password_is_only_in_the_read_buffer(
    log_in: fn(&str) -> Result<String, tower_authtoken::Error>,
) {
    let _alone = alone();
    let body = format!(r#"{{"message":"wrong password {PASSWORD} for alice"}}"#);
    let (base_url, _stop) = server_thread(Failure::Body {
        status: 401,
        content_type: "application/json".to_owned(),
        body,
    });
    let (outcome, hits) = scanned(|| log_in(&base_url));
    let error = outcome.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(
        error.detail(),
        Some("wrong password [redacted] for alice"),
        "{error:?}"
    );
    assert_none_of_ours(&hits);
    // The one copy left is the HTTP stack's read buffer, which received the echo.
    for seen in &hits {
        assert_eq!(seen.secret, "password", "{hits:#?}");
        assert!(seen.read_buffer, "{hits:#?}");
    }
    eprintln!("copies beyond reach after an echoing error: {hits:#?}");
}

#[test]
fn a_dropped_token_and_all_its_clones_leave_no_freed_block_with_its_value() {
    let _alone = alone();
    let body = br#"{"type":"Bearer","token":"wipe-me-token-5d1e8b2f0a61","expiresIn":60}"#;
    let ((), hits) = scanned(|| {
        for token in [
            Token::from_response_body(body, Duration::from_secs(300)).unwrap(),
            Token::new(TOKEN, Duration::from_secs(60)).unwrap(),
        ] {
            assert_eq!(token.expose_secret(), TOKEN);
            let clone = token.clone();
            let header = clone.header_value().clone();
            drop(token);
            drop(clone);
            assert_eq!(header.as_bytes().len(), "Bearer ".len() + TOKEN.len());
            drop(header);
        }
    });
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn an_owned_value_given_to_token_new_is_wiped_whether_built_or_refused() {
    let _alone = alone();
    let ((), hits) = scanned(|| {
        // As a source builds it: read into a `String` with spare capacity.
        let mut value = String::with_capacity(64);
        value.push_str(TOKEN);
        let token = Token::new(value, Duration::from_secs(60)).unwrap();
        drop(token);
        // Refused (a line break is a header injection): the value is still wiped.
        let mut refused = String::with_capacity(64);
        refused.push_str(TOKEN);
        refused.push_str("\r\nX-Injected: 1");
        let error = Token::new(refused, Duration::from_secs(60)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidResponse);
        drop(error);
        // A borrowed value is the caller's; the crate's copy of it is wiped.
        drop(Token::new(TOKEN, Duration::from_secs(60)).unwrap());
    });
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
fn refused_responses_leave_no_freed_block_with_the_token() {
    let _alone = alone();
    // Errors after the token was read: the parser's copies are wiped on every path out.
    let bodies: [&[u8]; 4] = [
        br#"{"token":"wipe-me-token-5d1e8b2f0a61","expiresIn":-1}"#,
        br#"{"token":"wipe-me-token-5d1e8b2f0a61","issued":"garbage"}"#,
        br#"{"token":"wipe-me-token-5d1e8b2f0a61","access_token":"other"}"#,
        br#"{"token":"wipe-me-token-5d1e8b2f0a61","token":"twice"}"#,
    ];
    let ((), hits) = scanned(|| {
        for body in bodies {
            let error = Token::from_response_body(body, Duration::from_secs(300)).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidResponse);
        }
    });
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_token_written_with_json_escapes_leaves_one_copy_in_serde_jsons_scratch_buffer() {
    let _alone = alone();
    // `\/` is how some servers write `/`. serde_json unescapes such a string into a scratch
    // buffer of its own, which it frees unwiped: the one copy the parser cannot reach.
    let body = br#"{"token":"wipe-me-token-5d1e8b2f0a61\/x","expiresIn":60}"#;
    let ((), hits) = scanned(|| {
        let token = Token::from_response_body(body, Duration::from_secs(300)).unwrap();
        assert_eq!(token.expose_secret(), "wipe-me-token-5d1e8b2f0a61/x");
    });
    assert_none_of_ours(&hits);
    assert!(
        !hits.is_empty(),
        "serde_json no longer needs a scratch copy: update the docs"
    );
    for seen in &hits {
        let Freer::Other(symbol) = &seen.freer else {
            panic!("{hits:#?}")
        };
        assert!(symbol.contains("serde_json"), "{hits:#?}");
    }
}

#[test]
fn credentials_leave_no_freed_block_with_the_password() {
    let _alone = alone();
    let ((), hits) = scanned(|| {
        // A password with spare capacity, as read from a file or built with `push_str`.
        let mut password = String::with_capacity(64);
        password.push_str(PASSWORD);
        let credentials = Credentials::new("alice", password);
        let clone = credentials.clone();
        drop(credentials);
        drop(clone);
        let borrowed = Credentials::new("alice", PASSWORD);
        drop(borrowed);
    });
    assert!(hits.is_empty(), "{hits:#?}");
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn the_scanner_sees_an_unwiped_copy() {
    let _alone = alone();
    // The allocator must be able to fail the tests above: a plain `String` holding the password
    // is found when freed, and attributed to this test file, not to the crate.
    let ((), hits) = scanned(|| {
        let copy = String::from(PASSWORD);
        drop(std::hint::black_box(copy));
    });
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0].secret, "password");
    assert!(
        matches!(&hits[0].freer, Freer::TestCode(symbol) if symbol.contains("the_scanner_sees")),
        "{hits:#?}"
    );
}

/// A source of distinct 100 s tokens, `replaced-1`, `replaced-2`, ...
struct Numbered(AtomicUsize);

impl TokenSource for Numbered {
    async fn fetch(&self) -> Result<Token, tower_authtoken::Error> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Token::new(format!("replaced-{n}"), Duration::from_secs(100))
    }
}

#[test]
fn a_replaced_token_is_released_once_every_clone_that_used_it_has_moved_on() {
    use tower::{Layer, Service, ServiceExt};
    let _alone = alone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = tower_authtoken::TokenCache::new(Numbered(AtomicUsize::new(0)));
        let upstream = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let service = tower_authtoken::BearerAuthLayer::new(cache.clone()).layer(upstream);
        // Two clones send a request with the first token, then sit idle.
        let mut first_clone = service.clone();
        let mut second_clone = service.clone();
        let send = |clone: &mut tower_authtoken::BearerAuth<_>| clone.call(http::Request::new(()));
        send(first_clone.ready().await.unwrap()).await.unwrap();
        send(second_clone.ready().await.unwrap()).await.unwrap();

        let first = cache.current().unwrap();
        assert_eq!(first.expose_secret(), "replaced-1");
        WATCHED_FREED.store(false, Ordering::SeqCst);
        WATCHED.store(first.expose_secret().as_ptr() as usize, Ordering::SeqCst);
        drop(first);

        // The renewal at half its life replaces it. The cache itself lets go at once; each clone
        // that read it keeps it until its next request (the documented price of the clones'
        // lock-free read cache), and no longer.
        tokio::time::sleep(Duration::from_secs(51)).await;
        tokio::task::yield_now().await;
        assert_eq!(cache.current().unwrap().expose_secret(), "replaced-2");
        assert!(
            !WATCHED_FREED.load(Ordering::SeqCst),
            "the idle clones hold it"
        );
        send(first_clone.ready().await.unwrap()).await.unwrap();
        assert!(
            !WATCHED_FREED.load(Ordering::SeqCst),
            "one clone still holds it"
        );
        drop(second_clone);
        let freed = WATCHED_FREED.load(Ordering::SeqCst);
        WATCHED.store(0, Ordering::SeqCst);
        assert!(
            freed,
            "the replaced token outlived every clone that used it"
        );
        drop((service, first_clone));
    });
}

/// The token of account `n` of the keyed test: holds [`TOKEN`], so the scan looks for it.
struct AccountLogin(u32);

impl TokenSource for AccountLogin {
    async fn fetch(&self) -> Result<Token, tower_authtoken::Error> {
        // Wiped on drop: the test's own copy is not what the scan is after.
        let value = zeroize::Zeroizing::new(format!("{TOKEN}-{}", self.0));
        Token::new(value.as_str(), Duration::from_secs(3600))
    }
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "names who freed a block from backtraces, which need the debug profile's frames"
)]
fn a_keyed_caches_renewed_and_dropped_accounts_free_no_block_of_ours_with_their_tokens() {
    use tower::{Layer, Service, ServiceExt};
    use tower_authtoken::{KeyedBearerAuthLayer, KeyedTokenCache};

    let _alone = alone();
    let ((), hits) = scanned(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let accounts = KeyedTokenCache::builder(|n: &u32| {
                Ok::<_, tower_authtoken::Error>(AccountLogin(*n))
            })
            .build()
            .unwrap();
            let api = tower::service_fn(|req: http::Request<()>| async move {
                let sent = req.headers().contains_key(http::header::AUTHORIZATION);
                Ok::<_, std::convert::Infallible>(http::Response::new(sent))
            });
            let mut client = KeyedBearerAuthLayer::new(accounts.clone()).layer(api);
            let request = |n: u32| {
                let mut request = http::Request::new(());
                request.extensions_mut().insert(n);
                request
            };
            // Through the map (fresh clones) and through a service's memo (a run of three).
            for n in [1, 2, 1, 2] {
                assert!(*client.clone().oneshot(request(n)).await.unwrap().body());
            }
            for _ in 0..3 {
                let response = client.ready().await.unwrap().call(request(1)).await;
                assert!(*response.unwrap().body());
            }
            // A renewal replaces account 1's value in the map; account 2 is dropped.
            let cache = accounts.cache(&1).unwrap();
            cache.invalidate(&cache.current().unwrap());
            assert!(*client.clone().oneshot(request(1)).await.unwrap().body());
            assert_eq!(cache.stats().fetches, 2);
            assert!(accounts.remove(&2));
            drop((cache, client, accounts));
        });
        drop(runtime);
    });
    // `format!` in the test's source frees partial copies as it grows its string: test code.
    assert_none_of_ours(&hits);
}
