//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower_authtoken::{Error, ErrorKind, Token, TokenCache, TokenSource};

/// Polls `future` once, without a runtime's waker.
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What a [`ScriptedSource`] does on one fetch.
#[derive(Clone, Debug)]
pub enum Next {
    /// A new token with the source's lifetime.
    Token,
    /// The same value as the previous token, with a fresh lifetime.
    SameToken,
    /// This error.
    Fail(Error),
    /// Never answer.
    Hang,
    /// Panic.
    Panic,
}

/// A token source that follows a script, then issues fresh tokens, after a delay.
#[derive(Clone)]
pub struct ScriptedSource {
    state: Arc<State>,
}

struct State {
    fetches: AtomicUsize,
    delay: Mutex<Duration>,
    lifetime: Mutex<Duration>,
    script: Mutex<VecDeque<Next>>,
    /// What happens once the script is empty.
    otherwise: Mutex<Next>,
    last_value: Mutex<String>,
}

impl ScriptedSource {
    pub fn new(lifetime: Duration) -> Self {
        ScriptedSource {
            state: Arc::new(State {
                fetches: AtomicUsize::new(0),
                delay: Mutex::new(Duration::ZERO),
                lifetime: Mutex::new(lifetime),
                script: Mutex::new(VecDeque::new()),
                otherwise: Mutex::new(Next::Token),
                last_value: Mutex::new(String::new()),
            }),
        }
    }

    pub fn with_delay(self, delay: Duration) -> Self {
        *self.state.delay.lock().unwrap() = delay;
        self
    }

    pub fn then(&self, next: Next) -> &Self {
        self.state.script.lock().unwrap().push_back(next);
        self
    }

    pub fn otherwise(&self, next: Next) {
        *self.state.otherwise.lock().unwrap() = next;
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// How many handles to the source's state exist (the test's plus the cache's).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.state)
    }
}

/// A cache over `source` without jitter, so that every instant in a test is exact.
pub fn cache(source: &ScriptedSource) -> TokenCache {
    TokenCache::builder(source.clone())
        .jitter(Duration::ZERO)
        .build()
        .unwrap()
}

pub fn error(kind: ErrorKind) -> Error {
    Error::new(kind)
}

impl TokenSource for ScriptedSource {
    async fn fetch(&self) -> Result<Token, Error> {
        let n = self.state.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = *self.state.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let next = self
            .state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.state.otherwise.lock().unwrap().clone());
        let lifetime = *self.state.lifetime.lock().unwrap();
        match next {
            Next::Token => {
                let value = format!("token-{n}");
                *self.state.last_value.lock().unwrap() = value.clone();
                Token::new(value, lifetime)
            }
            Next::SameToken => {
                let value = self.state.last_value.lock().unwrap().clone();
                Token::new(value, lifetime)
            }
            Next::Fail(error) => Err(error),
            Next::Hang => std::future::pending().await,
            Next::Panic => panic!("scripted panic in a token source"),
        }
    }
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics on this thread from now on, including those Tokio catches in spawned tasks
/// (with a current-thread runtime they run on this thread).
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(|count| count.set(0));
}

/// Fails if anything counted by [`count_panics`] panicked.
pub fn assert_no_panics() {
    assert_eq!(
        PANICS.with(Cell::get),
        0,
        "something panicked (see the output above)"
    );
}
