//! The driver: the one background task per cache that fetches, renews and expires tokens.
//!
//! It holds the shared state and the receiving end of the handles' close signal, never a handle
//! itself, so it stops as soon as the last handle is dropped. It runs every fetch on a task of
//! its own under the fetch timeout: a panicking token source becomes an error, never a dead
//! driver.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::schedule::{self, Step, View};
use super::{Backoff, Control, Shared, runtime_error};
use crate::store::ObtainRequest;
use crate::{Error, ErrorKind, Token};

impl Shared {
    /// Starts the driver on the current runtime unless it is running.
    pub(super) fn ensure_driver(self: &Arc<Self>, control: &mut Control) -> Result<(), Error> {
        if control
            .driver
            .as_ref()
            .is_some_and(|driver| !driver.is_finished())
        {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            runtime_error("no Tokio runtime: use the token cache from within a Tokio runtime")
        })?;
        // The handle, not a flag: a driver dropped before its first poll (its runtime shut down
        // at once) never runs its exit guard, and must still be replaced.
        control.generation += 1;
        let generation = control.generation;
        control.driver = Some(runtime.spawn(run(Arc::clone(self), generation)));
        Ok(())
    }

    /// Publishes a result to every caller waiting on the current fetch. Call with the lock held.
    fn publish(&self, control: &mut Control, result: Result<Token, Error>) {
        control.demand = false;
        self.outcomes.send_modify(|outcome| {
            outcome.completed += 1;
            outcome.result = Some(result);
        });
    }
}

/// Empties the slot when the driver stops for any reason, so that a token is never handed out
/// without a live timer to take it back at its deadline. Does nothing if a newer driver has
/// already taken over.
struct ExitGuard {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut control = shared.lock();
        if control.generation != self.generation {
            return;
        }
        control.driver = None;
        shared.slot.store(None);
        if control.demand {
            shared.publish(
                &mut control,
                Err(runtime_error(
                    "the runtime running the token cache shut down",
                )),
            );
        }
    }
}

/// Aborts a spawned fetch when the driver stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(shared: Arc<Shared>, generation: u64) {
    let _exit = ExitGuard {
        shared: Arc::clone(&shared),
        generation,
    };
    restore(&shared);
    let mut closed = shared.closed.clone();
    loop {
        let step = {
            let control = shared.lock();
            let view = View {
                plan: control.current.as_ref().map(|(_, plan)| *plan),
                demand: control.demand,
                backoff_until: control.backoff.as_ref().map(|b| b.until),
            };
            schedule::next_step(view, Instant::now())
        };
        match step {
            Step::Expire => expire(&shared),
            Step::Answer => answer(&shared),
            Step::Fetch => {
                // The current token's deadline keeps its timer while the fetch runs: a hung
                // renewal must not keep an expiring token in service.
                let mut deadline = shared
                    .lock()
                    .current
                    .as_ref()
                    .map(|(_, plan)| plan.deadline);
                let fetch = fetch(&shared);
                tokio::pin!(fetch);
                loop {
                    let timer = async {
                        match deadline {
                            Some(at) => sleep_until(at).await,
                            None => pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = closed.changed() => return,
                        result = &mut fetch => {
                            complete(&shared, result);
                            break;
                        }
                        _ = timer => {
                            expire(&shared);
                            deadline = None;
                        }
                    }
                }
            }
            Step::Sleep(until) => {
                let timer = async {
                    match until {
                        Some(at) => sleep_until(at).await,
                        None => pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = closed.changed() => return,
                    _ = shared.wake.notified() => {}
                    _ = timer => {}
                }
            }
        }
    }
}

/// Serves again a token kept from a driver that stopped (its runtime shut down), now that this
/// driver's timer guards its deadline; drops it if the deadline has passed.
fn restore(shared: &Shared) {
    let mut control = shared.lock();
    if let Some((token, plan)) = &control.current {
        if Instant::now() < plan.deadline {
            shared.slot.store(Some(Arc::clone(token.as_arc())));
        } else {
            control.current = None;
        }
    }
}

/// Takes the current token out of service at its deadline.
fn expire(shared: &Shared) {
    let mut control = shared.lock();
    let now = Instant::now();
    if control
        .current
        .as_ref()
        .is_some_and(|(_, plan)| now >= plan.deadline)
    {
        shared.slot.store(None);
        control.current = None;
        tracing::warn!("token reached its expiry margin without a renewal; no longer handed out");
    }
}

/// Answers waiting callers without a fetch: with the current token, or the last error while
/// backing off.
fn answer(shared: &Shared) {
    let mut control = shared.lock();
    let result = match (&control.current, &control.backoff) {
        (Some((token, _)), _) => Ok(token.clone()),
        (None, Some(backoff)) => Err(backoff.error.clone()),
        (None, None) => Err(runtime_error("nothing to answer with")),
    };
    shared.publish(&mut control, result);
}

/// Runs one fetch on a task of its own, under the fetch timeout.
async fn fetch(shared: &Shared) -> Result<Token, Error> {
    let attempt = shared.counters.fetches.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!(
        "authtoken.fetch",
        attempt,
        outcome = tracing::field::Empty,
        error_kind = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let request = {
        let mut control = shared.lock();
        ObtainRequest {
            source: Arc::clone(&shared.source),
            fetch_timeout: shared.config.fetch_timeout,
            current: control.current.as_ref().map(|(token, _)| token.clone()),
            rejected: control.rejected.take(),
        }
    };
    let store = shared.config.store.clone();
    let limit = shared.config.attempt_limit();
    let started = Instant::now();
    let task = tokio::spawn(
        async move {
            let obtain = async {
                match &store {
                    Some(store) => store.obtain(&request).await,
                    None => request.login().await,
                }
            };
            tokio::time::timeout(limit, obtain).await
        }
        .instrument(span.clone()),
    );
    let mut task = AbortOnDrop(task);
    let result = match (&mut task.0).await {
        Ok(Ok(result)) => result,
        Ok(Err(_elapsed)) => Err(Error::new(ErrorKind::Timeout)
            .with_detail(format!("no token within the fetch timeout of {limit:?}"))),
        Err(join) if join.is_panic() => Err(runtime_error("the token source panicked")),
        Err(_) => Err(runtime_error("the fetch was cancelled")),
    };
    let elapsed = started.elapsed();
    span.record("duration_ms", elapsed.as_millis() as u64);
    match &result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(error) => {
            span.record("outcome", "error");
            span.record("error_kind", error.kind().as_str());
        }
    }
    result
}

/// Applies a fetch's result and wakes everyone who waited for it.
fn complete(shared: &Shared, result: Result<Token, Error>) {
    let now = Instant::now();
    let mut control = shared.lock();
    let outcome = match result {
        Err(error) => {
            fail(shared, &mut control, error.clone(), now);
            current_or(&control, error)
        }
        Ok(token) => match control.last.clone() {
            Some(last) if last.same_value(&token) => {
                // Keep serving the current token if it is this one; never restart its clock.
                let error = Error::invalid_response(
                    "the login endpoint answered the renewal with the same token",
                );
                back_off(shared, &mut control, error.clone(), now);
                current_or(&control, error)
            }
            Some(last) if token.expires_at() <= last.expires_at() => {
                // A new value that expires no later than the old one renews nothing: use it,
                // but back off so that its immediate renewal does not spin.
                match adopt(shared, &mut control, token, now) {
                    Ok(token) => {
                        let error = Error::invalid_response(
                            "the login endpoint answered the renewal with an unchanged expiry",
                        );
                        back_off(shared, &mut control, error, now);
                        Ok(token)
                    }
                    Err(error) => {
                        fail(shared, &mut control, error.clone(), now);
                        current_or(&control, error)
                    }
                }
            }
            _ => match adopt(shared, &mut control, token, now) {
                Ok(token) => Ok(token),
                Err(error) => {
                    fail(shared, &mut control, error.clone(), now);
                    current_or(&control, error)
                }
            },
        },
    };
    shared.publish(&mut control, outcome);
}

/// The token to hand waiters after a failed fetch: the current one if it is still valid.
fn current_or(control: &Control, error: Error) -> Result<Token, Error> {
    match &control.current {
        Some((token, _)) => Ok(token.clone()),
        None => Err(error),
    }
}

/// Puts a freshly fetched token into service and plans its renewal.
fn adopt(
    shared: &Shared,
    control: &mut Control,
    token: Token,
    now: Instant,
) -> Result<Token, Error> {
    let config = &shared.config;
    let plan = schedule::plan(
        token.received_at(),
        token.lifetime(),
        config.refresh_before,
        config.jitter,
        config.expiry_margin,
        fastrand::f64(),
    );
    if now >= plan.deadline {
        return Err(Error::invalid_response(
            "the token arrived too close to its expiry to be used",
        ));
    }
    let renewed = control.current.is_some();
    shared.slot.store(Some(Arc::clone(token.as_arc())));
    control.current = Some((token.clone(), plan));
    control.last = Some(token.clone());
    control.failures_in_row = 0;
    control.backoff = None;
    if renewed {
        shared.counters.renewals.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        renewed,
        lifetime_s = token.lifetime().as_secs_f64(),
        "token {}",
        if renewed { "renewed" } else { "fetched" }
    );
    tracing::debug!(
        renew_in_s = plan.renew_at.saturating_duration_since(now).as_secs_f64(),
        deadline_in_s = plan.deadline.saturating_duration_since(now).as_secs_f64(),
        "renewal scheduled"
    );
    Ok(token)
}

/// Records a failed fetch and starts a backoff.
fn fail(shared: &Shared, control: &mut Control, error: Error, now: Instant) {
    shared.counters.failures.fetch_add(1, Ordering::Relaxed);
    back_off(shared, control, error, now);
}

/// Starts a backoff; a fetch that returned a token that renews nothing calls this directly,
/// without counting a failure.
fn back_off(shared: &Shared, control: &mut Control, error: Error, now: Instant) {
    let config = &shared.config;
    control.failures_in_row = control.failures_in_row.saturating_add(1);
    let min = schedule::min_backoff(
        config.min_backoff,
        control.current.as_ref().map(|(token, _)| token.lifetime()),
    );
    let delay = schedule::backoff(
        control.failures_in_row,
        error.kind(),
        error.retry_after(),
        min,
        config.max_backoff.max(min),
        fastrand::f64(),
    );
    tracing::warn!(
        error_kind = error.kind().as_str(),
        retry_in_s = delay.as_secs_f64(),
        still_valid_token = control.current.is_some(),
        "token fetch failed: {error}"
    );
    control.backoff = Some(Backoff {
        until: now + delay,
        error,
    });
}
