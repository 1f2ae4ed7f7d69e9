//! The reference server's model of its tokens: what a login grants under each
//! [`TokenPolicy`], which tokens are revoked and when, and what the protected endpoint answers.
//!
//! Everything here is a function of the Tokio instant passed in, so it answers the same for a
//! request over HTTP and for a test's question ([`ReferenceServer::verdict`]).
//!
//! [`ReferenceServer::verdict`]: super::ReferenceServer::verdict

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::clock::{round_down, round_up};
use super::{Rejection, TokenPolicy};

/// Far enough in the future to mean "never", without overflowing an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The shortest gap between two random revocations, so that a tiny mean cannot spin.
const MIN_REVOCATION_GAP: Duration = Duration::from_millis(1);

/// `now + d`, or far in the future if that overflows.
pub(super) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// One token the server issued (or was told about with `register_token`).
struct IssuedToken {
    /// The user it was issued to; `None` for a registered token.
    user: Option<String>,
    issued_at: Instant,
    /// The server refuses it from this instant on.
    expires_at: Instant,
    /// `issued` and `expires` as the token response writes them.
    issued_wall: Timestamp,
    expires_wall: Timestamp,
    revoked: bool,
    /// Requests that got past every lasting reason to refuse it (the spurious ones included).
    good_requests: u64,
}

impl IssuedToken {
    /// Whether the server would still accept it at `now`, spurious refusals aside.
    fn live(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires_at
    }
}

/// What one successful login answers.
pub(super) struct Grant {
    pub(super) token: String,
    /// Exactly the time left until the server refuses the token.
    pub(super) expires_in: Duration,
    pub(super) issued: Timestamp,
    pub(super) expires: Timestamp,
}

/// A seeded random schedule of revocations, at exponentially distributed gaps.
pub(super) struct RandomRevocations {
    mean: Duration,
    next: Instant,
    rng: fastrand::Rng,
}

impl RandomRevocations {
    /// A schedule whose first revocation is one random gap after `now`.
    pub(super) fn new(mean: Duration, now: Instant, rng: fastrand::Rng) -> RandomRevocations {
        assert!(
            !mean.is_zero(),
            "ReferenceServer: the mean interval between random revocations must be positive"
        );
        let mut schedule = RandomRevocations {
            mean,
            next: now,
            rng,
        };
        schedule.next = later(now, schedule.gap());
        schedule
    }

    fn gap(&mut self) -> Duration {
        // `1 - u` is within (0, 1], so the logarithm is finite and the factor at least 0.
        let factor = -(1.0 - self.rng.f64()).ln();
        Duration::try_from_secs_f64(self.mean.as_secs_f64() * factor)
            .unwrap_or(FAR_FUTURE)
            .max(MIN_REVOCATION_GAP)
    }

    pub(super) fn mean(&self) -> Duration {
        self.mean
    }
}

/// Every token, the policy that grants them, and the rules that refuse them.
pub(super) struct Tokens {
    by_value: HashMap<String, IssuedToken>,
    /// Every distinct token, in the order first granted.
    issued: Vec<String>,
    /// Each user's most recent token.
    latest: HashMap<String, String>,
    pub(super) policy: TokenPolicy,
    pub(super) reject_all: bool,
    /// The next this many requests that would be accepted are refused.
    pub(super) reject_next: u64,
    /// Each token's request with this number (from 1) is refused once.
    pub(super) spurious_at: Option<u64>,
    /// Revocations to come, in order.
    scheduled: Vec<Instant>,
    pub(super) random: Option<RandomRevocations>,
    /// When revocations that revoked at least one live token took effect.
    revocations: Vec<Instant>,
}

impl Tokens {
    pub(super) fn new(policy: TokenPolicy) -> Tokens {
        Tokens {
            by_value: HashMap::new(),
            issued: Vec::new(),
            latest: HashMap::new(),
            policy,
            reject_all: false,
            reject_next: 0,
            spurious_at: None,
            scheduled: Vec::new(),
            random: None,
            revocations: Vec::new(),
        }
    }

    /// Every distinct token, in the order first granted.
    pub(super) fn issued(&self) -> &[String] {
        &self.issued
    }

    /// The instants at which revocations took effect.
    pub(super) fn revocations(&self) -> &[Instant] {
        &self.revocations
    }

    /// When the server will refuse `token` for having expired, if it knows it.
    pub(super) fn expires_at(&self, token: &str) -> Option<Instant> {
        self.by_value.get(token).map(|t| t.expires_at)
    }

    /// Records a token as valid from `now` for `lifetime`.
    pub(super) fn register(&mut self, token: String, now: Instant, lifetime: Duration) {
        let record = IssuedToken {
            user: None,
            issued_at: now,
            expires_at: later(now, lifetime),
            issued_wall: Timestamp::UNIX_EPOCH,
            expires_wall: Timestamp::UNIX_EPOCH,
            revoked: false,
            good_requests: 0,
        };
        self.insert(token, record);
    }

    fn insert(&mut self, token: String, record: IssuedToken) {
        if let Some(user) = &record.user {
            self.latest.insert(user.clone(), token.clone());
        }
        if self.by_value.insert(token.clone(), record).is_none() {
            self.issued.push(token);
        }
    }

    /// What a successful login of `user` at `now` gets under the current policy.
    ///
    /// `wall_now` is the server's wall clock at `now`; `millis` whether the timestamp format
    /// keeps milliseconds; `mint` makes a new token value from its `issued` and `expires`.
    pub(super) fn grant(
        &mut self,
        user: &str,
        now: Instant,
        lifetime: Duration,
        wall_now: Timestamp,
        millis: bool,
        mint: impl FnOnce(Timestamp, Timestamp) -> String,
    ) -> Grant {
        let issued = round_down(wall_now, millis);
        let full_expiry = round_up(
            issued.checked_add(lifetime).unwrap_or(Timestamp::MAX),
            millis,
        );
        let latest = self
            .latest
            .get(user)
            .and_then(|token| Some((token.clone(), self.by_value.get_mut(token)?)));

        match (self.policy, latest) {
            (TokenPolicy::OneLivePerUser, Some((token, record))) if record.live(now) => Grant {
                token,
                expires_in: record.expires_at - now,
                issued: record.issued_wall,
                expires: record.expires_wall,
            },
            (TokenPolicy::Sliding, Some((token, record))) if record.live(now) => {
                record.expires_at = later(now, lifetime);
                record.issued_wall = issued;
                record.expires_wall = full_expiry;
                Grant {
                    token,
                    expires_in: record.expires_at - now,
                    issued,
                    expires: full_expiry,
                }
            }
            (TokenPolicy::SessionBound, Some((_, session))) if now < session.expires_at => {
                let (expires_at, expires) = (session.expires_at, session.expires_wall);
                self.mint(user, now, expires_at, issued, expires, mint)
            }
            _ => self.mint(user, now, later(now, lifetime), issued, full_expiry, mint),
        }
    }

    /// Records and returns a new token value.
    fn mint(
        &mut self,
        user: &str,
        now: Instant,
        expires_at: Instant,
        issued: Timestamp,
        expires: Timestamp,
        mint: impl FnOnce(Timestamp, Timestamp) -> String,
    ) -> Grant {
        let token = mint(issued, expires);
        let record = IssuedToken {
            user: Some(user.to_owned()),
            issued_at: now,
            expires_at,
            issued_wall: issued,
            expires_wall: expires,
            revoked: false,
            good_requests: 0,
        };
        self.insert(token.clone(), record);
        Grant {
            token,
            expires_in: expires_at - now,
            issued,
            expires,
        }
    }

    /// Revokes, at `at`, every token that exists and is live then and that `pick` picks.
    /// Returns how many, and remembers `at` if there was at least one.
    fn revoke_where(&mut self, at: Instant, pick: impl Fn(&str, &IssuedToken) -> bool) -> usize {
        let mut revoked = 0;
        for (value, token) in &mut self.by_value {
            if token.issued_at <= at && token.live(at) && pick(value, token) {
                token.revoked = true;
                revoked += 1;
            }
        }
        if revoked > 0 {
            self.revocations.push(at);
        }
        revoked
    }

    /// Revokes `token` at `now`, if it is live. Returns whether it was.
    pub(super) fn revoke(&mut self, token: &str, now: Instant) -> bool {
        self.revoke_where(now, |value, _| value == token) > 0
    }

    /// Revokes every live token at `now`, or every live token of `user`.
    pub(super) fn revoke_live(&mut self, user: Option<&str>, now: Instant) -> usize {
        self.revoke_where(now, |_, token| {
            user.is_none_or(|user| token.user.as_deref() == Some(user))
        })
    }

    /// Schedules a revocation of every live token at `at`.
    pub(super) fn schedule_revocation(&mut self, at: Instant) {
        let index = self.scheduled.partition_point(|&t| t <= at);
        self.scheduled.insert(index, at);
    }

    /// Applies, in order, every scheduled and random revocation due by `now`. Called before
    /// anything reads or changes the tokens, so that a revocation at `r` hits exactly the tokens
    /// live at `r`, and a token granted at `r` itself comes after it.
    pub(super) fn apply_due_revocations(&mut self, now: Instant) {
        loop {
            let scheduled = self.scheduled.first().copied().filter(|&t| t <= now);
            let random = self.random.as_ref().map(|r| r.next).filter(|&t| t <= now);
            let at = match (scheduled, random) {
                (Some(s), Some(r)) if r < s => {
                    self.advance_random();
                    r
                }
                (Some(s), _) => {
                    self.scheduled.remove(0);
                    s
                }
                (None, Some(r)) => {
                    self.advance_random();
                    r
                }
                (None, None) => return,
            };
            self.revoke_live(None, at);
        }
    }

    fn advance_random(&mut self) {
        if let Some(random) = &mut self.random {
            let gap = random.gap();
            random.next = later(random.next, gap);
        }
    }

    /// What the protected endpoint answers `token` at `now`. With `count`, this is a real
    /// request: it counts towards the token's k-th request and uses up a pending spurious
    /// refusal; without, it only looks.
    pub(super) fn verdict(
        &mut self,
        token: Option<&str>,
        now: Instant,
        count: bool,
    ) -> Result<(), Rejection> {
        let Some(record) = token.and_then(|token| self.by_value.get_mut(token)) else {
            return Err(Rejection::Unknown);
        };
        if record.revoked {
            return Err(Rejection::Revoked);
        }
        if now >= record.expires_at {
            return Err(Rejection::Expired);
        }
        if self.reject_all {
            return Err(Rejection::RejectAll);
        }
        let nth = record.good_requests + 1;
        if count {
            record.good_requests = nth;
        }
        if self.reject_next > 0 {
            if count {
                self.reject_next -= 1;
            }
            return Err(Rejection::Spurious);
        }
        if self.spurious_at == Some(nth) {
            return Err(Rejection::Spurious);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A grant for alice at `now`, with a wall clock that reads `now` as seconds since the epoch
    /// (whole seconds, as in RFC 3339), and a counter for the token values.
    fn grant(tokens: &mut Tokens, start: Instant, now: Instant, lifetime: Duration) -> Grant {
        let wall = Timestamp::UNIX_EPOCH
            .checked_add(now - start)
            .expect("small");
        let next = tokens.issued.len();
        tokens.grant("alice", now, lifetime, wall, false, |_, _| {
            format!("t{next}")
        })
    }

    #[test]
    fn each_policy_grants_what_it_documents() {
        let start = Instant::now();
        let at = |s: u64| start + secs(s);
        let ts = |s: i64| Timestamp::from_second(s).unwrap();
        let summary = |g: Grant| (g.token, g.expires_in, g.issued, g.expires);

        let mut fresh = Tokens::new(TokenPolicy::Fresh);
        assert_eq!(summary(grant(&mut fresh, start, at(0), secs(60))).0, "t0");
        let second = summary(grant(&mut fresh, start, at(20), secs(60)));
        assert_eq!(second, ("t1".into(), secs(60), ts(20), ts(80)));

        let mut one = Tokens::new(TokenPolicy::OneLivePerUser);
        grant(&mut one, start, at(0), secs(60));
        let again = summary(grant(&mut one, start, at(20), secs(60)));
        assert_eq!(again, ("t0".into(), secs(40), ts(0), ts(60)));
        let after = summary(grant(&mut one, start, at(60), secs(60)));
        assert_eq!(after, ("t1".into(), secs(60), ts(60), ts(120)));
        one.revoke("t1", at(61));
        assert_eq!(summary(grant(&mut one, start, at(62), secs(60))).0, "t2");

        let mut session = Tokens::new(TokenPolicy::SessionBound);
        grant(&mut session, start, at(0), secs(60));
        let bound = summary(grant(&mut session, start, at(45), secs(60)));
        assert_eq!(bound, ("t1".into(), secs(15), ts(45), ts(60)));
        let renewed = summary(grant(&mut session, start, at(60), secs(60)));
        assert_eq!(renewed, ("t2".into(), secs(60), ts(60), ts(120)));

        let mut sliding = Tokens::new(TokenPolicy::Sliding);
        grant(&mut sliding, start, at(0), secs(60));
        let slid = summary(grant(&mut sliding, start, at(50), secs(60)));
        assert_eq!(slid, ("t0".into(), secs(60), ts(50), ts(110)));
        assert_eq!(sliding.expires_at("t0"), Some(at(110)));
        assert_eq!(
            summary(grant(&mut sliding, start, at(110), secs(60))).0,
            "t1"
        );
        assert_eq!(sliding.issued(), ["t0", "t1"]);
    }

    #[test]
    fn verdicts_give_the_first_reason_and_spurious_refusals_are_one_off() {
        let start = Instant::now();
        let mut tokens = Tokens::new(TokenPolicy::Fresh);
        grant(&mut tokens, start, start, secs(10));
        let t0 = Some("t0");
        assert_eq!(
            tokens.verdict(Some("nope"), start, true),
            Err(Rejection::Unknown)
        );
        assert_eq!(tokens.verdict(None, start, true), Err(Rejection::Unknown));

        tokens.spurious_at = Some(2);
        assert_eq!(tokens.verdict(t0, start, true), Ok(()));
        // Looking does not count: the second request is still to come.
        assert_eq!(tokens.verdict(t0, start, false), Err(Rejection::Spurious));
        assert_eq!(tokens.verdict(t0, start, false), Err(Rejection::Spurious));
        assert_eq!(tokens.verdict(t0, start, true), Err(Rejection::Spurious));
        assert_eq!(tokens.verdict(t0, start, true), Ok(()));

        tokens.reject_next = 2;
        assert_eq!(
            tokens.verdict(Some("nope"), start, true),
            Err(Rejection::Unknown)
        );
        assert_eq!(tokens.verdict(t0, start, true), Err(Rejection::Spurious));
        assert_eq!(tokens.verdict(t0, start, true), Err(Rejection::Spurious));
        assert_eq!(tokens.verdict(t0, start, true), Ok(()));

        tokens.reject_all = true;
        assert_eq!(tokens.verdict(t0, start, true), Err(Rejection::RejectAll));
        let end = start + secs(10);
        assert_eq!(tokens.verdict(t0, end, true), Err(Rejection::Expired));
        tokens.revoke_live(None, start);
        assert_eq!(tokens.verdict(t0, start, true), Err(Rejection::Revoked));
    }

    #[test]
    fn a_scheduled_revocation_hits_the_tokens_live_at_its_instant_only() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tokens = Tokens::new(TokenPolicy::Fresh);
        grant(&mut tokens, start, at(0), Duration::from_millis(500)); // expires before
        grant(&mut tokens, start, at(100), secs(10)); // live at the revocation
        tokens.schedule_revocation(at(1000));
        tokens.schedule_revocation(at(700));
        tokens.apply_due_revocations(at(999));
        assert_eq!(tokens.revocations(), [at(700)]);
        assert_eq!(
            tokens.verdict(Some("t0"), at(999), false),
            Err(Rejection::Expired)
        );
        assert_eq!(
            tokens.verdict(Some("t1"), at(999), false),
            Err(Rejection::Revoked)
        );
        // Granted at the instant of the next revocation, after it took effect.
        tokens.apply_due_revocations(at(1000));
        grant(&mut tokens, start, at(1000), secs(10));
        assert_eq!(tokens.verdict(Some("t2"), at(1000), false), Ok(()));
        // The revocation at 1000 found nothing live, so it is not listed.
        assert_eq!(tokens.revocations(), [at(700)]);
    }

    #[test]
    fn seeded_random_revocations_repeat_and_average_their_mean() {
        let start = Instant::now();
        let run = || {
            let mut tokens = Tokens::new(TokenPolicy::Sliding);
            tokens.random = Some(RandomRevocations::new(
                secs(10),
                start,
                fastrand::Rng::with_seed(3),
            ));
            for s in 0..1000 {
                let now = start + secs(s);
                tokens.apply_due_revocations(now);
                grant(&mut tokens, start, now, secs(60));
            }
            tokens.revocations().to_vec()
        };
        let revocations = run();
        assert_eq!(revocations, run());
        // 1000 s at a mean of 10 s: about 100, with one live token at every instant.
        assert!(
            (70..130).contains(&revocations.len()),
            "{}",
            revocations.len()
        );
        assert!(revocations.windows(2).all(|w| w[0] < w[1]));
    }
}
