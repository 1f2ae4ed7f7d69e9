//! The driver: the background task that fetches, renews and expires tokens on time.
//!
//! It holds the shared state and the receiving end of the handles' close signal, never a handle
//! itself, so it stops as soon as the last handle is dropped. It runs every fetch on a task of
//! its own under the fetch timeout: a panicking token source becomes an error, never a dead
//! driver.
//!
//! The driver is a convenience for timing, not what correctness rests on: readers refuse a token
//! past its deadline by themselves, the slow path expires it on the clock, and a caller whose
//! runtime runs replaces a driver whose runtime does not (see `Shared::wait`). Each driver has a
//! generation; one that was replaced stops at its next step and its results are ignored.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::schedule::{self, Renewal, Step, View};
use super::{Backoff, Control, Driver, Entry, LoginGate, Shared, runtime_error};
use crate::store::ObtainRequest;
use crate::{Error, ErrorKind, Token};

impl Shared {
    /// Starts the driver on the current runtime unless one is running.
    pub(super) fn ensure_driver(self: &Arc<Self>, control: &mut Control) -> Result<(), Error> {
        if control
            .driver
            .as_ref()
            .is_some_and(|driver| !driver.join.is_finished())
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
        control.driver = Some(Box::new(Driver {
            join: runtime.spawn(run(Arc::clone(self), generation)),
            runtime,
            generation,
        }));
        Ok(())
    }

    /// Publishes a result to every caller waiting on the current fetch. Call with the lock held.
    fn publish(&self, control: &mut Control, result: Option<Result<(), Error>>) {
        control.demand = false;
        control.cause = None;
        control.outcome.completed += 1;
        control.outcome.result = result;
        self.published.notify_waiters();
    }

    /// Takes an evicted account's token out of service now (it is zeroed when the last reader
    /// lets go of it) and stops its driver, whatever it was doing; callers waiting for it are
    /// handed back and start over. A reader that still holds the account logs in afresh.
    pub(crate) fn retire(&self) {
        let mut control = self.lock();
        control.generation += 1;
        if let Some(driver) = control.driver.take() {
            driver.join.abort();
        }
        // Not mirrored: a retired account has left the account map (its caller took it out).
        self.slot.store(None);
        control.current = None;
        control.rejected = None;
        control.due_at = None;
        if control.demand {
            self.publish(&mut control, None);
        }
    }

    /// Takes the current token out of service if `now` is past its deadline. A token the server
    /// replaces only once it expires leaves a login due at its expiry.
    pub(super) fn expire_due(&self, control: &mut Control, now: Instant) {
        let due = control
            .current
            .as_ref()
            .is_some_and(|(_, plan)| now >= plan.deadline);
        if !due {
            return;
        }
        self.set_slot(None);
        crate::metrics::token_withdrawn(&self.config.metrics);
        if let Some((_, plan)) = control.current.take() {
            match plan.renewal {
                Renewal::AtExpiry => {
                    control.due_at = Some(plan.renew_at);
                    tracing::debug!(
                        "token withdrawn just before its expiry; the next login is due at expiry"
                    );
                }
                Renewal::Early => tracing::warn!(
                    "token reached its expiry margin without a renewal; no longer handed out"
                ),
            }
        }
    }
}

/// Lets the next stalled driver be noticed when this one stops for any reason (its runtime shut
/// down): readers ask again for the renewal, and waiting callers go round again on their own
/// runtimes. Does nothing if a newer driver has already taken over.
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
        if let Some(entry) = shared.slot.load().as_deref() {
            entry.poked.store(false, Ordering::Relaxed);
        }
        if control.demand {
            shared.publish(&mut control, None);
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
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Some(id) = due_401(&shared, generation) {
            // The spacing of invalidations now allows the `401` it refused.
            shared.invalidate_as(id, true);
            continue;
        }
        let (step, deferred_401) = {
            let mut control = shared.lock();
            if control.generation != generation {
                return;
            }
            let now = Instant::now();
            let mut view = View {
                plan: control.current.as_ref().map(|(_, plan)| *plan),
                demand: control.demand,
                backoff_until: control.backoff.as_ref().map(|b| b.until),
                due_at: control.due_at,
                budget_at: None,
            };
            // Whether the driver would log in now, were it not for the budgets.
            let wanted_now = schedule::next_step(view, now) == Step::Fetch;
            // With a shared store, the store is asked first; a turn is taken once its login
            // is refused.
            if wanted_now && (shared.config.store.is_none() || control.held_back()) {
                shared.take_turn(&mut control, now);
            }
            let budget_at = shared.budget_ready_at(&control, now);
            view.budget_at = Some(budget_at);
            let step = schedule::next_step(view, now);
            // Only the budget holds this login back: a caller that times out is told so. A
            // login about to draw on the budget is still held back until it does.
            match step {
                Step::Sleep(_) if wanted_now => control.hold_back(),
                Step::Fetch => {}
                _ => control.not_held_back(),
            }
            (step, control.deferred_401().map(|(_, at)| at))
        };
        match step {
            Step::Expire => {
                let mut control = shared.lock();
                shared.expire_due(&mut control, Instant::now());
            }
            Step::Answer => answer(&shared),
            Step::Fetch => {
                // With a shared store, the store's login draws on the budgets (`LoginGate`).
                if shared.config.store.is_none() && shared.spend_budget(Instant::now()).is_err() {
                    // A budget shared with another cache was spent meanwhile: decide again.
                    continue;
                }
                // The current token's deadline keeps its timer while the fetch runs: a hung
                // renewal must not keep an expiring token in service.
                let mut deadline = {
                    let mut control = shared.lock();
                    control.due_at = None;
                    control.current.as_ref().map(|(_, plan)| plan.deadline)
                };
                // The server issued whatever the fetch brings after this instant, so a lifetime
                // counted from here can only be shorter than the server's, never longer.
                let started = Instant::now();
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
                        () = shared.wake.notified() => {
                            if shared.closed.load(Ordering::Acquire) {
                                return;
                            }
                        }
                        result = &mut fetch => {
                            // No result: the runtime is shutting down under us. Stop; the exit
                            // guard hands the waiters back to their own runtimes.
                            let Some(result) = result else { return };
                            // The store found no token and the budgets refused its login:
                            // no failure; ask the store again at this cache's turn.
                            if !result.as_ref().is_err_and(Error::is_held_back) {
                                complete(&shared, generation, started, result);
                            }
                            break;
                        }
                        _ = timer => {
                            let mut control = shared.lock();
                            shared.expire_due(&mut control, Instant::now());
                            deadline = None;
                        }
                    }
                }
            }
            Step::Sleep(until) => {
                if shared.config.park_when_idle && park(&shared, generation) {
                    return;
                }
                let until = match (until, deferred_401) {
                    (Some(until), Some(at)) => Some(until.min(at)),
                    (until, at) => until.or(at),
                };
                let timer = async {
                    match until {
                        Some(at) => sleep_until(at).await,
                        None => pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = shared.wake.notified() => {}
                    _ = timer => {}
                }
            }
        }
    }
}

/// The token a deferred `401` rejected, once the spacing of invalidations allows it.
fn due_401(shared: &Shared, generation: u64) -> Option<u64> {
    let mut control = shared.lock();
    if control.generation != generation {
        return None;
    }
    match control.deferred_401() {
        Some((id, at)) if at <= Instant::now() => {
            control.forget_deferred_401();
            Some(id)
        }
        _ => None,
    }
}

/// Stops the driver of a cache that parks when idle, when nothing lies ahead but a renewal a
/// reader will ask for (or nothing at all): an idle account costs no task and no timer. Whether
/// it stopped.
fn park(shared: &Shared, generation: u64) -> bool {
    let mut control = shared.lock();
    if control.generation != generation {
        return true;
    }
    let now = Instant::now();
    let waiting = control.demand || control.due_at.is_some() || control.deferred_401().is_some();
    let idle = match &control.current {
        Some((_, plan)) => {
            now < plan.renew_at && control.backoff.as_ref().is_none_or(|b| b.until <= now)
        }
        // No token and nobody waiting: the next caller starts a driver; one arriving during a
        // backoff is answered with its error.
        None => true,
    };
    if waiting || !idle {
        return false;
    }
    control.driver = None;
    // The first reader past the renewal instant starts the next driver.
    if let Some(entry) = shared.slot.load().as_deref() {
        entry.poked.store(false, Ordering::Relaxed);
    }
    true
}

/// Answers waiting callers without a fetch: with the current token, or the last error while
/// backing off.
fn answer(shared: &Shared) {
    let mut control = shared.lock();
    let now = Instant::now();
    let result = match (&control.current, &control.backoff) {
        (Some(_), _) => Ok(()),
        (None, Some(backoff)) => Err(backoff.error_at(now)),
        (None, None) => Err(runtime_error("nothing to answer with")),
    };
    shared.publish(&mut control, Some(result));
}

/// Runs one fetch on a task of its own, under the fetch timeout. `None` when that task was
/// cancelled: its runtime (the driver's) is shutting down.
async fn fetch(shared: &Arc<Shared>) -> Option<Result<Token, Error>> {
    let attempt = shared.counters.fetches.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!(
        "authtoken.fetch",
        attempt,
        outcome = tracing::field::Empty,
        error_kind = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let cause = shared.lock().cause.take();
    crate::metrics::link_cause(&span, cause);
    let request = {
        let mut control = shared.lock();
        let request = ObtainRequest {
            source: Arc::clone(&shared.source),
            fetch_timeout: shared.config.fetch_timeout,
            current: control.current.as_ref().map(|(token, _)| token.clone()),
            rejected: control.rejected.take(),
            budget: shared
                .config
                .store
                .as_ref()
                .map(|_| LoginGate(Arc::downgrade(shared))),
        };
        // Until a token is adopted: a failed fetch's retry still replaces the rejected token.
        control.replacing_rejected |= request.rejected.is_some();
        request
    };
    // For the next fetch to tell the store again, if the budgets hold this one's login back.
    let rejected = request.rejected.clone();
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
            .with_detail(format!(
                "no token within the fetch timeout of {limit:?}: the login endpoint is slow or unreachable"
            ))),
        Err(join) if join.is_panic() => Err(runtime_error("the token source panicked")),
        Err(_) => return None,
    };
    if result.as_ref().is_err_and(Error::is_held_back) {
        span.record("outcome", "held_back");
        let mut control = shared.lock();
        if control.rejected.is_none() {
            control.rejected = rejected;
        }
        return Some(result);
    }
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
    Some(result)
}

/// What became of a fetched token.
enum Adopted {
    /// It is being handed out.
    Yes,
    /// It is not handed out, and another login is due (`Control::due_at`) that waiting callers
    /// wait for: the token is valid but already inside the margin of a token the server replaces
    /// only at expiry, or it arrived too late after its login started to be trusted.
    AtItsExpiry,
}

/// Applies the result of a fetch that started at `started` and wakes everyone who waited for it,
/// unless a newer driver took over meanwhile.
fn complete(shared: &Shared, generation: u64, started: Instant, result: Result<Token, Error>) {
    let now = Instant::now();
    let mut control = shared.lock();
    if control.generation != generation {
        return;
    }
    // The login ended: whatever held it back no longer does.
    control.budget_wait = None;
    let adopted = result
        .and_then(|token| adopt(shared, &mut control, token, started, now))
        .or_else(|error| under_a_second_left(&mut control, error, now));
    crate::metrics::login_finished(&shared.config.metrics, &adopted, now - started);
    let outcome = match adopted {
        Ok(Adopted::Yes) => Ok(()),
        Ok(Adopted::AtItsExpiry) => return,
        Err(error) => {
            fail(shared, &mut control, error.clone(), now);
            match control.current {
                Some(_) => Ok(()),
                None => Err(error),
            }
        }
    };
    shared.publish(&mut control, Some(outcome));
}

/// Puts a freshly fetched token into service and plans its renewal.
///
/// Without a shared store, its lifetime is counted from when the fetch started, not from when
/// the answer arrived: the server counts it from some instant in between, so the token is never
/// planned to outlive the server's idea of its expiry by a slow answer's transit time.
///
/// A token that expires no later than the last one renews nothing: the server hands out a
/// replacement only once its token expires. It is still the server's answer, so it is served for
/// the life the server reports, and from then on the cache logs in at each expiry rather than
/// before it.
fn adopt(
    shared: &Shared,
    control: &mut Control,
    token: Token,
    started: Instant,
    now: Instant,
) -> Result<Adopted, Error> {
    // Whether it renews anything, on the cautious reading of its expiry (below).
    let cautious = match shared.config.store {
        // A token from a shared store may be a peer's, read with its remaining life (`PTTL`) at
        // `received_at`: that reading is exact, and counting from an earlier start would make
        // this replica renew before its peers and log in needlessly.
        Some(_) => token.received_at(),
        None => token.received_at().min(started),
    };
    // A login that replaces a token the server rejected is no renewal: a fresh token from a
    // server that issues full-length tokens expires only a moment later than the rejected one
    // (within the noise when `expires` is in whole seconds), and proves nothing about how the
    // server renews.
    let after_rejection = std::mem::take(&mut control.replacing_rejected);
    if let Some((last_expiry, last_lifetime)) = control.last
        && !after_rejection
        && !schedule::extends(last_expiry, last_lifetime, cautious + token.lifetime())
        && control.renewal == Renewal::Early
    {
        control.renewal = Renewal::AtExpiry;
        tracing::info!(
            "the login endpoint answered a renewal with a token that expires no later than the \
             last one: it replaces tokens only once they expire, so logins now happen at expiry"
        );
    }
    // A token the server replaces only at expiry is planned from the answer's arrival: the
    // latest its expiry can be, so that the login that replaces it does not come too early.
    let anchor = match control.renewal {
        Renewal::Early => cautious,
        Renewal::AtExpiry => token.received_at(),
    };
    let expires_at = anchor + token.lifetime();
    // The spread keeps apart the renewals of tokens logged in for together (a cold start, a
    // recovery, a mass revocation). A token that renewed one still in service came at an
    // instant of its own, already spread: renewing it at the usual lead keeps it apart and costs
    // one login per lifetime, where spreading every renewal costs up to a quarter more.
    let mut lead = shared
        .config
        .lead()
        .for_token(&token, control.cuts_lifetimes);
    if control.current.is_some() {
        lead.spread = 0.0;
    }
    let plan = schedule::plan(
        anchor,
        token.lifetime(),
        lead,
        control.renewal,
        fastrand::f64(),
    );
    if now >= plan.deadline {
        if plan.renewal == Renewal::AtExpiry && now < plan.renew_at {
            // The server answered with the token it is about to let expire: not replaced yet.
            control.due_at = Some(plan.renew_at);
            control.last = Some((expires_at, token.lifetime()));
            return Ok(Adopted::AtItsExpiry);
        }
        let arrived_fresh = token.received_at() + token.lifetime() / 2 > now;
        if plan.renewal == Renewal::Early && arrived_fresh && !control.stale_answer {
            // The answer came so late after its login started (the process or its runtime
            // stood still meanwhile) that the token may have expired at the server on the way:
            // log in once more at once, without counting a failure; waiting callers wait on.
            control.stale_answer = true;
            control.due_at = Some(now);
            tracing::info!(
                "a login answered too late to trust its token (the process stood still?); \
                 logging in again"
            );
            return Ok(Adopted::AtItsExpiry);
        }
        return Err(Error::invalid_response(
            "the token arrived too close to its expiry to be used",
        ));
    }
    control.stale_answer = false;
    control.under_a_second = false;
    let renewed = control.current.is_some();
    shared.set_slot(Some(Arc::new(Entry::new(&token, &plan, now))));
    crate::metrics::token_served(&shared.config.metrics, plan.expires_at, renewed);
    control.last = Some((expires_at, token.lifetime()));
    control.current = Some((token.clone(), plan));
    control.forget_401s();
    control.failures_in_row = 0;
    control.backoff = None;
    control.due_at = None;
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
        at_expiry = plan.renewal == Renewal::AtExpiry,
        "renewal scheduled"
    );
    Ok(Adopted::Yes)
}

/// A login answered with a token in its last second (a lifetime of `0` in whole seconds,
/// [`Error::under_a_second_left`]) while no token is in service: the server has no other until
/// that one expires, which is within the second. The login is made again a second later, once,
/// and waiting callers wait for it rather than fail. The login came early because the server cut
/// the last token's lifetime to whole seconds: from now on, a login at a token's expiry waits for
/// the second the cut may hide ([`Token::hidden_life`]).
fn under_a_second_left(
    control: &mut Control,
    error: Error,
    now: Instant,
) -> Result<Adopted, Error> {
    if !error.is_under_a_second_left() || control.current.is_some() || control.under_a_second {
        return Err(error);
    }
    control.under_a_second = true;
    control.cuts_lifetimes = true;
    control.due_at = Some(now + Duration::from_secs(1) + schedule::AT_EXPIRY_GRACE);
    tracing::info!(
        "the login endpoint answered with a token in its last second (its lifetime cut to whole \
         seconds): logging in again in a second, and waiting for that second at each expiry"
    );
    Ok(Adopted::AtItsExpiry)
}

/// Records a failed fetch and starts a backoff.
fn fail(shared: &Shared, control: &mut Control, error: Error, now: Instant) {
    shared.counters.failures.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    control.failures_in_row = control.failures_in_row.saturating_add(1);
    let first = schedule::first_retry(
        config.min_backoff,
        control.current.as_ref().map(|(token, _)| token.lifetime()),
    );
    let mut delay = schedule::backoff(
        control.failures_in_row.into(),
        error.kind(),
        error.retry_after(),
        first,
        config.min_backoff,
        config.max_backoff.max(config.min_backoff),
        fastrand::f64(),
    );
    if error.is_transient()
        && error.kind() != ErrorKind::RateLimited
        && let Some((_, plan)) = &control.current
    {
        // Retry no later than the valid token's deadline: after it, callers would be told the
        // last error until the retry, where at the deadline they wait for it instead.
        delay = delay.min(plan.deadline.saturating_duration_since(now));
    }
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
