//! [`RedisTokenStore`]: a fleet of processes shares one token through Redis.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

mod notifications;

use notifications::{Notifications, Subscription};

use super::{BoxFuture, ObtainRequest, TokenStore};
use crate::{Error, Token};

/// Releases the lock `KEYS[1]` only while it still holds our owner `ARGV[1]`, and then, when
/// `ARGV[2]` names a channel, tells the waiters on it to look again (the holder stored no token:
/// its login failed, or its login budget held it back).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    local released = redis.call('DEL', KEYS[1])
    if ARGV[2] ~= '' then
        redis.call('PUBLISH', ARGV[2], 'released')
    end
    return released
end
return 0
";

/// Takes the lock `KEYS[1]` for owner `ARGV[1]` for `ARGV[2]` ms, unless another owner holds
/// it. Returns 0 when the caller holds it (taking it again is harmless, so that a retried
/// command cannot lock its sender out), else the holder's time left in ms (at least 1).
const LOCK: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 0
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then
    return 1
end
return left
";

/// Extends the lock `KEYS[1]` to `ARGV[2]` ms while it still holds our owner `ARGV[1]`. 1 if it
/// did.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Redis's own clock in milliseconds, for the tombstones' expiry (never another machine's).
const NOW_MS: &str = r"
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function is_rejected(set, fp, now)
    local score = redis.call('ZSCORE', set, fp)
    return score and tonumber(score) > now
end
";

/// Reads the shared token (`KEYS[1]`): its fingerprint, sealed value, remaining life (`PTTL`),
/// whether a tombstone in `KEYS[2]` says it was rejected, and the id of the last login that
/// wrote it. Nil when there is none.
const LOAD: &str = r"
local record = redis.call('HMGET', KEYS[1], 'fp', 'sealed', 'login')
if not record[1] or not record[2] then
    return false
end
local pttl = redis.call('PTTL', KEYS[1])
local rejected = 0
if is_rejected(KEYS[2], record[1], now_ms()) then
    rejected = 1
end
return {record[1], record[2], pttl, rejected, record[3] or ''}
";

/// The fence: stores a token (`ARGV[2]` its fingerprint, `ARGV[3]` sealed, `ARGV[4]` its
/// remaining life in ms, `ARGV[6]` the id of the login that got it) in `KEYS[1]` only if the
/// caller still holds the lock `KEYS[2]` (owner `ARGV[1]`), the token is not rejected
/// (tombstones in `KEYS[3]`), and it outlives what `KEYS[1]` holds unless that was rejected. A
/// login that got the very token Redis holds (a server that keeps one live token) is the
/// fleet's answer too: it is recorded, and the expiry extended if it lives longer. Either way
/// the peers are notified on channel `ARGV[5]`. Returns what happened.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 'lost-lock'
end
local now = now_ms()
if is_rejected(KEYS[3], ARGV[2], now) then
    return 'rejected'
end
local held = redis.call('HGET', KEYS[1], 'fp')
local ttl = tonumber(ARGV[4])
if held == ARGV[2] then
    if redis.call('PTTL', KEYS[1]) < ttl then
        redis.call('HSET', KEYS[1], 'sealed', ARGV[3])
        redis.call('PEXPIRE', KEYS[1], ttl)
    end
    redis.call('HSET', KEYS[1], 'login', ARGV[6])
    redis.call('PUBLISH', ARGV[5], '1')
    return 'same'
end
if held and not is_rejected(KEYS[3], held, now) and redis.call('PTTL', KEYS[1]) >= ttl then
    return 'not-newer'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'sealed', ARGV[3], 'login', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[5], '1')
return 'stored'
";

/// Records a rejection: a tombstone for fingerprint `ARGV[1]` in `KEYS[2]` for `ARGV[2]` ms, and
/// removes the shared token `KEYS[1]` if it is that token. Returns 1 if it removed it.
const REJECT: &str = r"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local expiry = now + tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not old or tonumber(old) < expiry then
    redis.call('ZADD', KEYS[2], expiry, ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
";

/// How long a tombstone outlives the rejected token's own expiry, as seen by the replica that
/// rejected it: covers the difference between replicas' readings of its life.
const TOMBSTONE_SLACK: Duration = Duration::from_secs(5);

/// A shared token with no more life left than the cache's default expiry margin (the smaller of
/// this and a tenth of its lifetime) is not adopted: every cache would refuse it at once.
const MAX_DEFAULT_MARGIN: Duration = Duration::from_secs(10);

/// The format version written before each sealed token.
const FORMAT: u8 = 2;
const NONCE_LEN: usize = 12;

/// A 256-bit key for ChaCha20-Poly1305, which seals tokens before they reach Redis.
///
/// Every process of a fleet must use the same key. Keep it with your other secrets; its `Debug`
/// shows nothing.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey(bytes)
    }

    /// A key from 64 hexadecimal digits, as stored in an environment variable or a secret
    /// manager. Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) on anything else.
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::config(
                "an encryption key must be exactly 64 hexadecimal digits (32 bytes)",
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::config("invalid hexadecimal digit in the encryption key"))?;
        }
        Ok(EncryptionKey(bytes))
    }

    /// A new random key, for tests and for generating one to store.
    pub fn generate() -> Self {
        EncryptionKey(ChaCha20Poly1305::generate_key(&mut OsRng).into())
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// A [`TokenStore`] in Redis, so that a fleet of processes logs in once per token lifetime.
///
/// When a replica needs a token it:
///
/// 1. adopts a fresher token from Redis, if another replica stored one and nobody rejected it;
/// 2. otherwise takes a short lock (`SET NX PX` with a random owner, released by a
///    compare-and-delete script), logs in once, stores the token, and publishes a notification.
///    The lock is a lease the holder extends while its login runs, so a holder that dies or
///    loses Redis frees it within the lease (2 s by default), and a waiter looks again as it
///    runs out;
/// 3. or, if another replica holds the lock, waits for its notification (polling as a fallback)
///    for at most the fetch timeout, then logs in itself: liveness beats perfect deduplication.
///    A lock whose holder died expires and hands the renewal to the next replica; a holder
///    whose login failed (or whose login budget held it back) releases the lock and tells the
///    waiters, one of which takes over at once. A holder held back by its budget then listens
///    for a peer's token until its turn (or for at most the fetch timeout since it asked) and
///    adopts it as soon as it is stored; in a cluster, it polls.
///
/// A store holds two connections to a single Redis: one for commands, and one pubsub
/// connection, opened at the first wait, on which every waiter listens, however many accounts
/// wait at once.
///
/// # Guarantees under faults
///
/// - **Fencing.** A token reaches Redis only through one Lua script that checks, atomically,
///   that the writer still holds the lock and that the token outlives the one Redis holds (unless
///   that one was rejected). A holder that stalled past its lock's expiry (a pause, a starved
///   machine) can never overwrite the newer token of the replica that took over; it adopts that
///   newer token instead of its own when it wakes.
/// - **Shared rejections.** A `401` seen by any replica leaves a tombstone in Redis, keyed by a
///   keyed 128-bit fingerprint of the token (never the token), for the rest of the token's life
///   plus 5 s, and removes the token if Redis still holds it. No replica adopts a token with a
///   tombstone. The replica also keeps the fingerprint locally, so that it never adopts the token
///   again even while Redis is unreachable, and records the tombstone in Redis as soon as Redis
///   answers again (retried in the background every `poll_interval`).
/// - **Any runtime.** The store's connections live on a small runtime of its own (one thread,
///   started at the first use, stopped when the store is dropped), so a store used from several
///   Tokio runtimes keeps working when any of them shuts down.
/// - **Redis is never a new way to fail.** Every command has a short timeout; when Redis is down,
///   slow or flaky the replica logs in on its own, warns, and tries Redis again a few seconds
///   later. At most one local login per replica per renewal results.
///
/// A replica learns a shared token's remaining lifetime from Redis itself (`PTTL`), never from
/// another machine's wall clock, and tombstones expire on Redis's clock.
///
/// Tokens are sealed with ChaCha20-Poly1305 under the [`EncryptionKey`] the application supplies,
/// bound to their key name. A value that fails to decrypt or parse is logged and treated as a
/// miss, never trusted.
///
/// # Keys
///
/// For a key prefix `carrental` and user `alice`, all keys share the hash tag
/// `{carrental:alice}`, so that they live in one slot of a Redis Cluster:
///
/// | Key | Type | Holds | Expires |
/// |---|---|---|---|
/// | `{carrental:alice}:token` | hash | `fp` (fingerprint), `sealed` (the sealed token), `login` (a random id of the login that last wrote it) | with the token |
/// | `{carrental:alice}:lock` | string | the random owner of the renewal lock | a lease of 8 command timeouts (at least 2 s, at most the fetch timeout + 0.5 s), extended by its holder every quarter of it while its login runs |
/// | `{carrental:alice}:rejected` | sorted set | fingerprints of rejected tokens, scored by their tombstone's expiry (Redis ms) | with the last tombstone |
///
/// Notifications go to the channel `{carrental:alice}:renewed`.
///
/// ```no_run
/// use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
/// use tower_authtoken::{AuthTokenSource, Credentials, TokenCache};
///
/// # fn main() -> Result<(), tower_authtoken::Error> {
/// let key = EncryptionKey::from_hex(&std::env::var("TOKEN_KEY").unwrap_or_default())?;
/// let store = RedisTokenStore::new("redis://127.0.0.1:6379", "carrental", key)?;
/// let source = AuthTokenSource::new(
///     "https://api.example.com/v1",
///     Credentials::new("alice", "from your secret store"),
/// )?;
/// let cache = TokenCache::builder(source).shared(store).build()?;
/// # Ok(())
/// # }
/// ```
pub struct RedisTokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Target,
    /// The store's own runtime, started at the first command.
    io: OnceLock<Result<Io, String>>,
    /// The connection, created on (and driven by) the store's runtime.
    connection: Arc<tokio::sync::OnceCell<Connection>>,
    prefix: String,
    cipher: ChaCha20Poly1305,
    /// Keys the fingerprints of tokens.
    fingerprints: ChaCha20Poly1305,
    command_timeout: Duration,
    poll_interval: Duration,
    retry_after: Duration,
    /// While set and in the future, Redis is considered down and skipped.
    down_until: Mutex<Option<Instant>>,
    /// Tokens this replica saw rejected, until they expire.
    rejections: Mutex<Vec<Rejection>>,
    /// Whether a background task is retrying the unshared tombstones.
    flushing: AtomicBool,
    /// Per token key, the id of the login that wrote the token we last adopted or stored.
    logins: Mutex<Logins>,
    /// The pubsub connection waiters listen on for a peer's renewal.
    notifications: Notifications,
}

/// Per token key, the id of the login that wrote the token we last adopted or stored, until
/// that token has expired: a keyed fleet's accounts come and go, and what this replica
/// remembers of them must go with them.
#[derive(Default)]
struct Logins {
    known: std::collections::HashMap<String, KnownLogin>,
    /// How many entries trigger the next sweep of the expired ones: twice what the last sweep
    /// kept, so that sweeping costs O(1) per login remembered.
    sweep_at: usize,
}

struct KnownLogin {
    login: String,
    /// The expiry of the token that login wrote. Past it, the cache holds that token no
    /// longer, and nothing asks which login wrote it.
    expires: Instant,
}

/// The fewest entries [`Logins`] sweeps at.
const LOGINS_SWEPT_FROM: usize = 64;

impl Logins {
    fn get(&self, key: &str) -> Option<&str> {
        self.known.get(key).map(|known| known.login.as_str())
    }

    fn insert(&mut self, key: &str, login: &str, expires: Instant) {
        if self.known.len() >= self.sweep_at {
            let now = Instant::now();
            self.known.retain(|_, known| known.expires > now);
            self.sweep_at = (self.known.len() * 2).max(LOGINS_SWEPT_FROM);
        }
        let known = KnownLogin {
            login: login.to_owned(),
            expires,
        };
        match self.known.get_mut(key) {
            Some(entry) => *entry = known,
            None => {
                self.known.insert(key.to_owned(), known);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.len()
    }
}

/// A token this replica saw rejected.
struct Rejection {
    keys: Keys,
    fingerprint: String,
    /// Until when nobody must adopt it.
    until: Instant,
    /// Whether Redis has its tombstone.
    shared: bool,
}

/// Where the store's Redis is: one server, or a cluster.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A connection that follows its server or cluster: reconnects after a failure, and for a
/// cluster, follows the slots as they move.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn open(target: Target, limit: Duration) -> Result<Connection, redis::RedisError> {
        match target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(Some(limit))
                    .set_number_of_retries(1)
                    .set_max_delay(limit);
                ConnectionManager::new_lazy_with_config(client, config).map(Connection::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Single(connection) => cmd.query_async(connection).await,
            Connection::Cluster(connection) => cmd.query_async(connection).await,
        }
    }
}

/// A runtime of the store's own on a thread of its own, which stops when this is dropped.
struct Io {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl Io {
    fn start() -> Result<Io, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the Redis runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("authtoken-redis".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("could not start the Redis thread: {e}"))?;
        Ok(Io {
            handle,
            _stop: stop,
        })
    }
}

/// Aborts a task on the store's runtime when the caller stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds a [`RedisTokenStore`]; every setter states its default.
#[must_use = "call build() to get a RedisTokenStore"]
pub struct RedisTokenStoreBuilder {
    nodes: Vec<String>,
    cluster: bool,
    prefix: String,
    key: EncryptionKey,
    command_timeout: Duration,
    poll_interval: Duration,
    retry_after: Duration,
}

impl RedisTokenStoreBuilder {
    /// How long one Redis command may take before Redis counts as down. Default: 250 ms.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How often a replica waiting for a peer's login checks Redis, in case it missed the
    /// notification, and how often an unshared tombstone is retried while Redis is unreachable.
    /// Default: 100 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long Redis is skipped after a failure, before it is tried again. Default: 5 s.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Checks the settings and builds the store. Nothing connects, and no thread starts, until
    /// the first renewal.
    pub fn build(self) -> Result<RedisTokenStore, Error> {
        let client = if self.cluster {
            let client =
                redis::cluster::ClusterClientBuilder::new(self.nodes.iter().map(String::as_str))
                    .connection_timeout(self.command_timeout.max(Duration::from_millis(1)))
                    .response_timeout(self.command_timeout.max(Duration::from_millis(1)))
                    .build()
                    .map_err(|_| Error::config("the Redis Cluster node URLs are not valid"))?;
            Target::Cluster(Box::new(client))
        } else {
            let url = self.nodes.first().map(String::as_str).unwrap_or_default();
            Target::Single(
                redis::Client::open(url)
                    .map_err(|_| Error::config("the Redis URL is not valid"))?,
            )
        };
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(Error::config(
                "the key prefix must be non-empty and without whitespace",
            ));
        }
        if self.command_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err(Error::config(
                "the command timeout and poll interval must be positive",
            ));
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key.0));
        // A key for fingerprints, derived from the encryption key: the keystream under a nonce
        // that sealing never uses (sealing draws random nonces).
        let derived = cipher
            .encrypt(
                Nonce::from_slice(b"fingerprints"),
                Payload {
                    msg: &[0u8; 32],
                    aad: b"tower-authtoken fingerprint key",
                },
            )
            .map_err(|_| Error::config("could not derive the fingerprint key"))?;
        let fingerprints = ChaCha20Poly1305::new(Key::from_slice(&derived[..32]));
        Ok(RedisTokenStore {
            inner: Arc::new(Inner {
                client,
                io: OnceLock::new(),
                connection: Arc::new(tokio::sync::OnceCell::new()),
                prefix: self.prefix,
                cipher,
                fingerprints,
                command_timeout: self.command_timeout,
                poll_interval: self.poll_interval,
                retry_after: self.retry_after,
                down_until: Mutex::new(None),
                rejections: Mutex::new(Vec::new()),
                flushing: AtomicBool::new(false),
                logins: Mutex::new(Logins::default()),
                notifications: Notifications::default(),
            }),
        })
    }
}

impl fmt::Debug for RedisTokenStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStoreBuilder")
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

/// What Redis holds for a token, sealed.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The token value.
    v: String,
    /// Its whole lifetime, in milliseconds.
    l: u64,
    /// The server-reported type, issued and expires (Unix milliseconds).
    t: Option<String>,
    i: Option<i64>,
    e: Option<i64>,
    /// How much longer than `l` it may live, in milliseconds (absent when zero, and in records
    /// of older versions).
    #[serde(default, skip_serializing_if = "is_zero")]
    h: u64,
}

fn is_zero(millis: &u64) -> bool {
    *millis == 0
}

/// The names of one user's keys.
#[derive(Clone, PartialEq, Eq)]
struct Keys {
    token: String,
    lock: String,
    rejected: String,
    channel: String,
}

/// Why a Redis step failed: Redis failed or timed out.
enum Miss {
    Down(String),
}

/// The token Redis holds, and the id of the login that wrote it.
struct Record {
    token: Token,
    login: String,
}

/// Why [`fresher`](Inner::fresher) found nothing to adopt.
enum Fresh {
    /// Redis failed.
    Miss(Miss),
    /// Redis holds nothing worth adopting; the id of the login that wrote what it holds.
    Stale(String),
}

impl Fresh {
    /// Redis's failure, if that is why.
    fn down(self) -> Option<String> {
        match self {
            Fresh::Miss(Miss::Down(why)) => Some(why),
            Fresh::Stale(_) => None,
        }
    }

    /// The login id seen, empty if none.
    fn seen(&self) -> &str {
        match self {
            Fresh::Stale(login) => login,
            Fresh::Miss(_) => "",
        }
    }
}

/// Whether we got the renewal lock.
enum Lock {
    Ours,
    /// Another replica holds it, for at most this long.
    Held(Duration),
}

/// What the fenced publish did.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    Stored,
    /// Refused, with the script's reason: the lock was lost, the token was rejected, or Redis
    /// holds one that lives longer.
    Refused(String),
}

impl RedisTokenStore {
    /// A store at `url` (`redis://host:port/db`), with keys under `key_prefix`, sealing tokens
    /// with `key`. Default settings; see [`builder`](Self::builder).
    pub fn new(url: &str, key_prefix: &str, key: EncryptionKey) -> Result<Self, Error> {
        Self::builder(url, key_prefix, key).build()
    }

    /// A builder for a store at `url` with keys under `key_prefix`, sealing tokens with `key`.
    pub fn builder(url: &str, key_prefix: &str, key: EncryptionKey) -> RedisTokenStoreBuilder {
        RedisTokenStoreBuilder {
            nodes: vec![url.to_owned()],
            cluster: false,
            prefix: key_prefix.to_owned(),
            key,
            command_timeout: Duration::from_millis(250),
            poll_interval: Duration::from_millis(100),
            retry_after: Duration::from_secs(5),
        }
    }

    /// A store in the Redis Cluster reachable at any of `nodes` (`redis://host:port` each), with
    /// keys under `key_prefix`, sealing tokens with `key`. Default settings; see
    /// [`cluster_builder`](Self::cluster_builder).
    ///
    /// All keys of one credential share a hash tag, so they live in one slot and every script
    /// runs on one node. Replicas waiting for a peer's login poll (every `poll_interval`) rather
    /// than subscribe.
    pub fn cluster(nodes: &[&str], key_prefix: &str, key: EncryptionKey) -> Result<Self, Error> {
        Self::cluster_builder(nodes, key_prefix, key).build()
    }

    /// A builder for a store in the Redis Cluster reachable at any of `nodes`.
    pub fn cluster_builder(
        nodes: &[&str],
        key_prefix: &str,
        key: EncryptionKey,
    ) -> RedisTokenStoreBuilder {
        RedisTokenStoreBuilder {
            nodes: nodes.iter().map(|node| (*node).to_owned()).collect(),
            cluster: true,
            prefix: key_prefix.to_owned(),
            key,
            command_timeout: Duration::from_millis(250),
            poll_interval: Duration::from_millis(100),
            retry_after: Duration::from_secs(5),
        }
    }
}

impl Inner {
    fn keys(&self, user: Option<&str>) -> Keys {
        let user = user.unwrap_or("default");
        let base = format!("{{{}:{}}}", self.prefix, user);
        Keys {
            token: format!("{base}:token"),
            lock: format!("{base}:lock"),
            rejected: format!("{base}:rejected"),
            channel: format!("{base}:renewed"),
        }
    }

    fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self, why: &str) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        let was_down = down.is_some_and(|until| Instant::now() < until);
        *down = Some(Instant::now() + self.retry_after);
        if !was_down {
            tracing::warn!(
                reason = why,
                retry_in_s = self.retry_after.as_secs_f64(),
                "redis unavailable; logging in locally until it is back"
            );
        }
    }

    fn mark_up(&self) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.take().is_some() {
            tracing::info!("redis reachable again; sharing tokens");
        }
    }

    fn io(&self) -> Result<&Io, Miss> {
        self.io
            .get_or_init(Io::start)
            .as_ref()
            .map_err(|why| Miss::Down(why.clone()))
    }

    /// Runs `cmd` on the store's runtime under the command timeout.
    async fn exec<T>(&self, what: &'static str, cmd: redis::Cmd) -> Result<T, Miss>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let io = self.io()?;
        let connection = Arc::clone(&self.connection);
        let client = self.client.clone();
        let limit = self.command_timeout;
        let task = AbortOnDrop(io.handle.spawn(async move {
            let mut connection = match timeout(
                limit,
                connection.get_or_try_init(|| Connection::open(client, limit)),
            )
            .await
            {
                Ok(Ok(connection)) => connection.clone(),
                Ok(Err(e)) => return Err(format!("connect: {:?}", e.kind())),
                Err(_) => return Err("connect: timed out".to_owned()),
            };
            // A connection that broke (a reset, a restarted server) fails its next command and
            // reconnects: that command is tried once more on the new connection, within the
            // same time limit. Every command we send may run twice.
            let attempts = async {
                match connection.query::<T>(&cmd).await {
                    Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                        connection.query::<T>(&cmd).await
                    }
                    result => result,
                }
            };
            match timeout(limit, attempts).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(format!("{what}: {:?}", e.kind())),
                Err(_) => Err(format!("{what}: timed out")),
            }
        }));
        match (&mut { task }.0).await {
            Ok(result) => result.map_err(Miss::Down),
            Err(_) => Err(Miss::Down(format!("{what}: the Redis runtime stopped"))),
        }
    }

    /// Runs one of the Lua scripts with the shared helpers.
    async fn script<T>(
        &self,
        what: &'static str,
        body: &str,
        keys: &[&str],
        args: Vec<Vec<u8>>,
    ) -> Result<T, Miss>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{NOW_MS}{body}")).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(arg);
        }
        self.exec(what, cmd).await
    }

    /// A keyed 128-bit fingerprint of the token: the Poly1305 tag of its value under the derived
    /// fingerprint key, in hex. It says nothing about the token to anyone without the key.
    fn fingerprint(&self, token: &Token) -> String {
        let tag = self
            .fingerprints
            .encrypt(
                Nonce::from_slice(&[0u8; NONCE_LEN]),
                Payload {
                    msg: b"",
                    aad: token.expose_secret().as_bytes(),
                },
            )
            .unwrap_or_default();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn seal(&self, keys: &Keys, token: &Token) -> Option<Vec<u8>> {
        let sealed = Sealed {
            v: token.expose_secret().to_owned(),
            l: u64::try_from(token.lifetime().as_millis()).unwrap_or(u64::MAX),
            t: token.token_type().map(str::to_owned),
            i: token.issued().and_then(unix_millis),
            e: token.expires().and_then(unix_millis),
            h: u64::try_from(token.hidden_life().as_millis()).unwrap_or(u64::MAX),
        };
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&sealed).ok()?);
        let mut sealed = sealed;
        zeroize::Zeroize::zeroize(&mut sealed.v);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: &plain,
            aad: keys.token.as_bytes(),
        };
        let cipher = self.cipher.encrypt(&nonce, payload).ok()?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + cipher.len());
        blob.push(FORMAT);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&cipher);
        Some(blob)
    }

    fn open(&self, keys: &Keys, blob: &[u8]) -> Option<Sealed> {
        let (&format, rest) = blob.split_first()?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, cipher) = rest.split_at(NONCE_LEN);
        let payload = Payload {
            msg: cipher,
            aad: keys.token.as_bytes(),
        };
        let plain = zeroize::Zeroizing::new(
            self.cipher
                .decrypt(Nonce::from_slice(nonce), payload)
                .ok()?,
        );
        serde_json::from_slice(&plain).ok()
    }

    /// Whether this replica saw the token with this fingerprint rejected (and forgets the
    /// rejections of tokens that have expired).
    fn rejected_here(&self, fingerprint: &str) -> bool {
        let now = Instant::now();
        let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        rejections.retain(|r| r.until > now);
        rejections.iter().any(|r| r.fingerprint == fingerprint)
    }

    /// Reads the shared token with its remaining lifetime, as measured by Redis, and the id of
    /// the login that last wrote it. A token with a tombstone, in Redis or here, is no token.
    async fn load(&self, keys: &Keys) -> Result<Option<Record>, Miss> {
        let sent_at = Instant::now();
        let record: Option<(String, Vec<u8>, i64, i64, String)> = self
            .script("load", LOAD, &[&keys.token, &keys.rejected], Vec::new())
            .await?;
        let Some((fingerprint, blob, pttl, tombstone, login)) = record else {
            return Ok(None);
        };
        if tombstone != 0 || self.rejected_here(&fingerprint) {
            tracing::debug!("the shared token was rejected; not adopting it");
            return Ok(None);
        }
        let Ok(remaining) = u64::try_from(pttl) else {
            // -1: no expiry (not ours), -2: gone meanwhile.
            return Ok(None);
        };
        let Some(sealed) = self.open(keys, &blob) else {
            tracing::warn!(
                key = keys.token,
                "shared token failed to decrypt or parse; ignoring it"
            );
            return Ok(None);
        };
        let remaining = Duration::from_millis(remaining);
        let lifetime = Duration::from_millis(sealed.l);
        // Anchor at the moment we asked: Redis measured the remaining time later than that, so
        // the token cannot outlive what we compute.
        let (received_at, lifetime) = match lifetime
            .checked_sub(remaining)
            .and_then(|age| sent_at.checked_sub(age))
        {
            Some(received_at) if remaining <= lifetime => (received_at, lifetime),
            _ => (sent_at, remaining),
        };
        let token = Token::from_parts(
            &sealed.v,
            lifetime,
            Duration::from_millis(sealed.h),
            received_at,
            sealed.t.clone(),
            sealed.i.and_then(from_unix_millis),
            sealed.e.and_then(from_unix_millis),
        );
        let mut sealed = sealed;
        zeroize::Zeroize::zeroize(&mut sealed.v);
        match token {
            // A token whose fingerprint does not match its value was not written by us.
            Ok(token) if self.fingerprint(&token) == fingerprint => {
                Ok(Some(Record { token, login }))
            }
            _ => {
                tracing::warn!(key = keys.token, "shared token is unusable; ignoring it");
                Ok(None)
            }
        }
    }

    /// A token from Redis that is worth adopting: not rejected, and either expiring later than
    /// `current`, or written by a login since we saw the login `seen` (a peer's login on our
    /// behalf, even if the server answered it with the token we have). On a miss, the id of the
    /// login that wrote what Redis holds (empty if nothing).
    async fn fresher(
        &self,
        keys: &Keys,
        current: Option<&Token>,
        seen: Option<&str>,
    ) -> Result<Token, Fresh> {
        let Some(Record { token, login }) = self.load(keys).await.map_err(Fresh::Miss)? else {
            return Err(Fresh::Stale(String::new()));
        };
        let known = current.is_some_and(|t| t.same_value(&token));
        let later = current.is_none_or(|current| token.expires_at() > current.expires_at());
        // A peer's login since we last looked answered our need, even with the token we have
        // (a server that keeps one live token): within this wait, whatever it got; since our
        // last renewal, only if it is the token we have.
        let answered = seen.is_some_and(|seen| seen != login)
            || (known && self.last_login(keys).is_some_and(|last| last != login));
        // A token about to leave Redis (our reading of its expiry is a little earlier than
        // Redis's) would be refused by the cache as too close to its expiry: it is no token.
        let left = token.expires_at().saturating_duration_since(Instant::now());
        let usable = left > MAX_DEFAULT_MARGIN.min(token.lifetime() / 10);
        if usable && (answered || (later && !known)) {
            self.remember_login(keys, &login, &token);
            return Ok(token);
        }
        Err(Fresh::Stale(login))
    }

    /// The id of the login that wrote the token we last adopted or stored for `keys`.
    fn last_login(&self, keys: &Keys) -> Option<String> {
        let logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        logins.get(&keys.token).map(str::to_owned)
    }

    /// Remembers that `login` wrote `token`, the token we adopted or stored for `keys`, until
    /// it expires.
    fn remember_login(&self, keys: &Keys, login: &str, token: &Token) {
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        logins.insert(&keys.token, login, token.expires_at());
    }

    /// Remembers that `rejected` was rejected, here at once and in Redis as soon as it answers.
    fn remember_rejection(&self, keys: &Keys, rejected: &Token) {
        let fingerprint = self.fingerprint(rejected);
        let until = rejected.expires_at().max(Instant::now()) + TOMBSTONE_SLACK;
        let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = rejections
            .iter_mut()
            .find(|r| r.fingerprint == fingerprint && r.keys == *keys)
        {
            known.until = known.until.max(until);
            return;
        }
        rejections.push(Rejection {
            keys: keys.clone(),
            fingerprint,
            until,
            shared: false,
        });
    }

    /// Records in Redis every tombstone it does not have yet.
    async fn share_rejections(&self) -> Result<(), Miss> {
        let pending: Vec<(Keys, String, Duration)> = {
            let now = Instant::now();
            let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            rejections.retain(|r| r.until > now);
            rejections
                .iter()
                .filter(|r| !r.shared)
                .map(|r| (r.keys.clone(), r.fingerprint.clone(), r.until - now))
                .collect()
        };
        for (keys, fingerprint, ttl) in pending {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let removed: i64 = self
                .script(
                    "reject",
                    REJECT,
                    &[&keys.token, &keys.rejected],
                    vec![
                        fingerprint.clone().into_bytes(),
                        ttl_ms.to_string().into_bytes(),
                    ],
                )
                .await?;
            if removed == 1 {
                tracing::info!("rejected token removed from the shared store");
            }
            let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            for r in rejections.iter_mut() {
                if r.fingerprint == fingerprint && r.keys == keys {
                    r.shared = true;
                }
            }
        }
        Ok(())
    }

    /// Retries the unshared tombstones in the background until Redis has them all.
    fn retry_rejections_later(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(io) = self.io() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        let interval = self.poll_interval;
        io.handle.spawn(async move {
            loop {
                sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                match inner.share_rejections().await {
                    Ok(()) => {
                        tracing::info!("rejections recorded in redis after it came back");
                        inner.flushing.store(false, Ordering::Release);
                        return;
                    }
                    Err(_) => continue,
                }
            }
        });
    }

    /// Takes the renewal lock, or says how long its holder has left.
    async fn try_lock(&self, keys: &Keys, owner: &str, ttl: Duration) -> Result<Lock, Miss> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let left: i64 = self
            .script(
                "lock",
                LOCK,
                &[&keys.lock],
                vec![owner.as_bytes().to_vec(), ttl_ms.to_string().into_bytes()],
            )
            .await?;
        Ok(match u64::try_from(left) {
            Ok(0) => Lock::Ours,
            Ok(ms) => Lock::Held(Duration::from_millis(ms)),
            Err(_) => Lock::Held(ttl),
        })
    }

    /// How long our lock lasts unless we extend it: long enough for a few command timeouts (2 s
    /// at least), at most the fetch timeout and a half second. A lock as long as the fetch
    /// timeout kept a peer's callers waiting that long (30 s by default) whenever its holder
    /// lost Redis mid-login.
    fn lease(&self, fetch_timeout: Duration) -> Duration {
        self.command_timeout
            .saturating_mul(8)
            .max(MIN_LEASE)
            .min(lock_ttl(fetch_timeout))
    }

    /// Extends our lock every quarter of its lease, for as long as it is ours; never returns
    /// (the caller drops it when its login ends).
    async fn hold(&self, keys: &Keys, owner: &str, lease: Duration) -> std::convert::Infallible {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        loop {
            sleep(lease / 4).await;
            let extended: Result<i64, Miss> = self
                .script(
                    "extend",
                    EXTEND,
                    &[&keys.lock],
                    vec![owner.as_bytes().to_vec(), lease_ms.to_string().into_bytes()],
                )
                .await;
            if !matches!(extended, Ok(1)) {
                // Lost (a peer took over) or Redis is unreachable: the lease runs out, and
                // the fence keeps our token from overwriting a newer one.
                tracing::debug!("could not extend the renewal lock");
                return std::future::pending().await;
            }
        }
    }

    /// Releases our lock; `tell_waiters` when we stored no token, so that a peer waiting for
    /// it looks again now (and may take the lock over) instead of at its next poll.
    async fn unlock(&self, keys: &Keys, owner: &str, tell_waiters: bool) -> Result<(), Miss> {
        let channel = if tell_waiters {
            keys.channel.as_str()
        } else {
            ""
        };
        let _: i64 = self
            .script(
                "unlock",
                UNLOCK,
                &[&keys.lock],
                vec![owner.as_bytes().to_vec(), channel.as_bytes().to_vec()],
            )
            .await?;
        Ok(())
    }

    /// Stores `token` with its remaining lifetime as the key's expiry and tells the peers, if the
    /// fence lets it through.
    async fn publish(&self, keys: &Keys, owner: &str, token: &Token) -> Result<Published, Miss> {
        let remaining = token.expires_at().saturating_duration_since(Instant::now());
        let remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        if remaining_ms == 0 {
            return Ok(Published::Refused("expired".into()));
        }
        let Some(blob) = self.seal(keys, token) else {
            return Err(Miss::Down("seal: could not encrypt".into()));
        };
        let login = new_owner();
        let outcome: String = self
            .script(
                "store",
                PUBLISH,
                &[&keys.token, &keys.lock, &keys.rejected],
                vec![
                    owner.as_bytes().to_vec(),
                    self.fingerprint(token).into_bytes(),
                    blob,
                    remaining_ms.to_string().into_bytes(),
                    keys.channel.clone().into_bytes(),
                    login.clone().into_bytes(),
                ],
            )
            .await?;
        Ok(match outcome.as_str() {
            "stored" | "same" => {
                self.remember_login(keys, &login, token);
                Published::Stored
            }
            _ => Published::Refused(outcome),
        })
    }

    /// Logs in while holding the lock, then shares the token and releases the lock. `seen` is
    /// the login that wrote what Redis held when we last looked.
    async fn login_for_fleet(
        &self,
        keys: &Keys,
        owner: &str,
        request: &ObtainRequest,
        seen: &str,
        limit: Instant,
    ) -> Result<Token, Error> {
        // A peer may have stored a token and released the lock between our last look and our
        // taking the lock: look again before logging in.
        let result = match self.fresher(keys, request.current(), Some(seen)).await {
            Ok(token) => {
                tracing::debug!("adopted the token a peer fetched just before we took the lock");
                Ok(token)
            }
            Err(fresh) => {
                if let Some(why) = fresh.down() {
                    self.mark_down(&why);
                }
                // The lock is a short lease, extended while the login runs: if we lose Redis
                // (or die) meanwhile, it expires soon and a peer takes over.
                let lease = self.lease(request.fetch_timeout());
                let login = tokio::select! {
                    biased;
                    result = request.login() => result,
                    never = self.hold(keys, owner, lease) => match never {},
                };
                match login {
                    Ok(token) => Ok(self.share(keys, owner, token).await),
                    Err(error) => Err(error),
                }
            }
        };
        if let Err(Miss::Down(why)) = self.unlock(keys, owner, result.is_err()).await {
            // The lock expires on its own.
            tracing::debug!(reason = why, "could not release the renewal lock");
        }
        match result {
            Err(error) if error.is_held_back() => {
                self.wait_while_held_back(keys, request, seen, error, limit)
                    .await
            }
            result => result,
        }
    }

    /// Waits out this cache's login budget, which holds its login back, listening for a peer's
    /// token meanwhile: the lock is released and a waiting peer told, so a peer whose budget
    /// allows it logs in, and its token is ours at once rather than at our turn. Ends with the
    /// `held_back` error at the turn, or at `limit` (the fetch must not time out: it would count
    /// as a failure); the cache then asks again.
    async fn wait_while_held_back(
        &self,
        keys: &Keys,
        request: &ObtainRequest,
        seen: &str,
        held_back: Error,
        limit: Instant,
    ) -> Result<Token, Error> {
        let turn = Instant::now() + held_back.retry_after().unwrap_or_default();
        let until = turn.min(limit);
        if until <= Instant::now() {
            return Err(held_back);
        }
        // Subscribe before looking, so that a notification cannot slip between.
        let mut notifications = self.subscribe(keys).await;
        loop {
            match self.fresher(keys, request.current(), Some(seen)).await {
                Ok(token) => {
                    tracing::debug!("adopted a peer's token while the login budget held ours back");
                    return Ok(token);
                }
                Err(fresh) => {
                    if let Some(why) = fresh.down() {
                        self.mark_down(&why);
                        return Err(held_back);
                    }
                }
            }
            let next_poll = (Instant::now() + self.poll_interval).min(until);
            news_or(&mut notifications, next_poll).await;
            if Instant::now() >= until {
                return Err(held_back);
            }
        }
    }

    /// Shares the token we logged in for, through the fence. When the fence refuses it (we
    /// stalled and lost the lock, or a peer stored a newer token meanwhile), the peer's newer
    /// token wins, and is the one we use too.
    async fn share(&self, keys: &Keys, owner: &str, token: Token) -> Token {
        match self.publish(keys, owner, &token).await {
            Ok(Published::Stored) => {
                tracing::debug!("token shared with the fleet");
                token
            }
            Ok(Published::Refused(why)) => match self.fresher(keys, Some(&token), None).await {
                Ok(newer) => {
                    tracing::warn!(
                        reason = why,
                        "a peer stored a newer token while we logged in; using it, not ours"
                    );
                    newer
                }
                Err(_) => {
                    tracing::debug!(reason = why, "our token was not shared");
                    token
                }
            },
            Err(Miss::Down(why)) => {
                self.mark_down(&why);
                token
            }
        }
    }

    /// Subscribes to the renewal notifications of `keys`, through the store's one pubsub
    /// connection. `None` if the subscription failed, and in a cluster: the waiter polls.
    async fn subscribe(&self, keys: &Keys) -> Option<Subscription> {
        let io = self.io().ok()?;
        let Target::Single(client) = &self.client else {
            return None;
        };
        self.notifications
            .listen(client, &io.handle, &keys.channel, self.command_timeout)
            .await
    }

    /// Waits for the lock holder's token, taking the lock over if it expires; then logs in
    /// locally. It waits for at least the fetch timeout, and for as long as a live holder may
    /// still be logging in (its lock's time left), so that when a holder dies, one waiter takes
    /// over rather than every waiter logging in; never longer than twice the fetch timeout.
    /// `seen` is the login that wrote what Redis held when we last looked: whatever a later
    /// login writes is the fleet's answer, and ours.
    async fn wait_for_peer(
        &self,
        keys: &Keys,
        request: &ObtainRequest,
        seen: &str,
        limit: Instant,
    ) -> Result<Token, Error> {
        let started = Instant::now();
        let cap = started + request.fetch_timeout().saturating_mul(2);
        let mut deadline = started + request.fetch_timeout();
        // Subscribe before checking again, so that a notification cannot slip between.
        let mut notifications = self.subscribe(keys).await;
        let owner = new_owner();
        loop {
            match self.fresher(keys, request.current(), Some(seen)).await {
                Ok(token) => {
                    tracing::debug!("adopted the token a peer fetched");
                    return Ok(token);
                }
                Err(fresh) => {
                    if let Some(why) = fresh.down() {
                        self.mark_down(&why);
                        return request.login().await;
                    }
                }
            }
            let left = match self
                .try_lock(keys, &owner, self.lease(request.fetch_timeout()))
                .await
            {
                Ok(Lock::Ours) => {
                    return self
                        .login_for_fleet(keys, &owner, request, seen, limit)
                        .await;
                }
                Ok(Lock::Held(left)) => left,
                Err(Miss::Down(why)) => {
                    self.mark_down(&why);
                    return request.login().await;
                }
            };
            let now = Instant::now();
            deadline = deadline.max((now + left + self.poll_interval).min(cap));
            if now >= deadline {
                tracing::warn!(
                    "no peer shared a token within the fetch timeout; logging in locally"
                );
                return request.login().await;
            }
            // The holder's lease ends then unless it extends it: look again at once (a holder
            // that lost Redis or died frees its lock no later).
            let next_poll = (now + self.poll_interval)
                .min(deadline)
                .min(now + left + LEASE_SLACK);
            news_or(&mut notifications, next_poll).await;
        }
    }

    async fn obtain_shared(self: &Arc<Self>, request: &ObtainRequest) -> Result<Token, Error> {
        // How long a login the budgets hold back may wait for a peer's token instead.
        let limit = Instant::now() + request.fetch_timeout();
        let keys = self.keys(request.user_name());
        if let Some(rejected) = request.rejected() {
            self.remember_rejection(&keys, rejected);
        }
        if self.is_down() {
            self.retry_rejections_later();
            return request.login().await;
        }
        if let Err(Miss::Down(why)) = self.share_rejections().await {
            self.mark_down(&why);
            self.retry_rejections_later();
            return request.login().await;
        }
        let seen = match self.fresher(&keys, request.current(), None).await {
            Ok(token) => {
                self.mark_up();
                tracing::debug!("adopted a fresher token from the shared store");
                return Ok(token);
            }
            Err(fresh) => {
                let seen = fresh.seen().to_owned();
                if let Some(why) = fresh.down() {
                    self.mark_down(&why);
                    return request.login().await;
                }
                self.mark_up();
                seen
            }
        };
        let owner = new_owner();
        match self
            .try_lock(&keys, &owner, self.lease(request.fetch_timeout()))
            .await
        {
            Ok(Lock::Ours) => {
                self.login_for_fleet(&keys, &owner, request, &seen, limit)
                    .await
            }
            Ok(Lock::Held(_)) => self.wait_for_peer(&keys, request, &seen, limit).await,
            Err(Miss::Down(why)) => {
                self.mark_down(&why);
                request.login().await
            }
        }
    }
}

impl TokenStore for RedisTokenStore {
    fn obtain<'a>(&'a self, request: &'a ObtainRequest) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(self.inner.obtain_shared(request))
    }
}

impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.inner.prefix)
            .field("command_timeout", &self.inner.command_timeout)
            .field("down", &self.inner.is_down())
            .finish_non_exhaustive()
    }
}

/// How long after a holder's lease would end a waiter looks again: Redis rounds `PTTL` to the
/// millisecond.
const LEASE_SLACK: Duration = Duration::from_millis(5);

/// The shortest lease of a renewal lock ([`Inner::lease`]).
const MIN_LEASE: Duration = Duration::from_secs(2);

/// The longest lease of a renewal lock: it outlives a healthy login a little.
/// Waits for a renewal notification on `notifications`, or until `next_poll`, whichever comes
/// first. A subscription whose connection closed is dropped: the waiter polls from then on.
async fn news_or(notifications: &mut Option<Subscription>, next_poll: Instant) {
    match notifications {
        Some(subscription) => {
            tokio::select! {
                message = subscription.messages.recv() => {
                    if message.is_none() {
                        *notifications = None;
                    }
                }
                _ = sleep_until(next_poll) => {}
            }
        }
        None => sleep_until(next_poll).await,
    }
}

fn lock_ttl(fetch_timeout: Duration) -> Duration {
    fetch_timeout + Duration::from_millis(500)
}

/// A random lock owner, so that only the holder can release the lock.
fn new_owner() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn unix_millis(time: SystemTime) -> Option<i64> {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_millis();
    i64::try_from(millis).ok()
}

fn from_unix_millis(millis: i64) -> Option<SystemTime> {
    let millis = u64::try_from(millis).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RedisTokenStore {
        RedisTokenStore::new(
            "redis://127.0.0.1:1",
            "test",
            EncryptionKey::from_bytes([7; 32]),
        )
        .unwrap()
    }

    /// A keyed fleet's accounts come and go: what a replica remembers of each account's last
    /// login goes with the account's token. Five waves of 10,000 accounts, each wave's tokens
    /// expired before the next: at most twice a wave is remembered (it was all 50,000), and an
    /// account whose token lives on is still known.
    #[tokio::test(start_paused = true)]
    async fn the_logins_remembered_go_when_their_tokens_expire() {
        const WAVE: usize = 10_000;
        let store = store();
        let inner = &store.inner;
        let steady = inner.keys(Some("steady"));
        let lasting = Token::new("lasting", Duration::from_secs(3600)).unwrap();
        inner.remember_login(&steady, "steady-login", &lasting);
        for wave in 0..5 {
            for account in 0..WAVE {
                let keys = inner.keys(Some(&format!("agency-{wave}-{account}")));
                let token = Token::new(format!("token-{account}"), Duration::from_secs(60));
                inner.remember_login(&keys, "a-login", &token.unwrap());
            }
            let remembered = inner.logins.lock().unwrap().len();
            assert!(
                remembered <= 2 * WAVE + 1,
                "wave {wave}: {remembered} logins remembered"
            );
            tokio::time::advance(Duration::from_secs(61)).await;
        }
        assert_eq!(inner.last_login(&steady).as_deref(), Some("steady-login"));
        let last = inner.keys(Some(&format!("agency-4-{}", WAVE - 1)));
        assert_eq!(inner.last_login(&last).as_deref(), Some("a-login"));
    }

    #[test]
    fn sealed_tokens_open_only_under_their_own_key_name() {
        let store = store();
        let alice = store.inner.keys(Some("alice"));
        let bob = store.inner.keys(Some("bob"));
        let token = Token::new("secret-token-value", Duration::from_secs(60)).unwrap();
        let blob = store.inner.seal(&alice, &token).unwrap();
        assert!(
            !blob
                .windows(b"secret-token-value".len())
                .any(|w| w == b"secret-token-value"),
            "the token is not readable at rest"
        );
        let opened = store.inner.open(&alice, &blob).unwrap();
        assert_eq!(opened.v, "secret-token-value");
        assert_eq!(opened.l, 60_000);
        assert!(
            store.inner.open(&bob, &blob).is_none(),
            "a blob moved to another key fails"
        );
    }

    #[test]
    fn tampered_or_foreign_blobs_do_not_open() {
        let store = store();
        let keys = store.inner.keys(None);
        let token = Token::new("abc", Duration::from_secs(60)).unwrap();
        let mut blob = store.inner.seal(&keys, &token).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert!(store.inner.open(&keys, &blob).is_none());
        assert!(store.inner.open(&keys, b"").is_none());
        assert!(store.inner.open(&keys, b"\x01short").is_none());
        let other = RedisTokenStore::new(
            "redis://127.0.0.1:1",
            "test",
            EncryptionKey::from_bytes([8; 32]),
        )
        .unwrap();
        let blob = store.inner.seal(&keys, &token).unwrap();
        assert!(
            other.inner.open(&keys, &blob).is_none(),
            "another key cannot open it"
        );
    }

    #[test]
    fn keys_are_namespaced_by_prefix_and_user() {
        let keys = store().inner.keys(Some("alice"));
        assert_eq!(keys.token, "{test:alice}:token");
        assert_eq!(keys.lock, "{test:alice}:lock");
        assert_eq!(keys.rejected, "{test:alice}:rejected");
        assert_eq!(keys.channel, "{test:alice}:renewed");
    }

    #[test]
    fn fingerprints_are_keyed_stable_and_never_the_token() {
        let store = store();
        let token = Token::new("secret-token-value", Duration::from_secs(60)).unwrap();
        let again = Token::new("secret-token-value", Duration::from_secs(5)).unwrap();
        let other = Token::new("another-token-value", Duration::from_secs(60)).unwrap();
        let fingerprint = store.inner.fingerprint(&token);
        assert_eq!(fingerprint.len(), 32, "128 bits in hex");
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            fingerprint,
            store.inner.fingerprint(&again),
            "same value, same print"
        );
        assert_ne!(fingerprint, store.inner.fingerprint(&other));
        assert!(!fingerprint.contains("secret"));
        let foreign = RedisTokenStore::new(
            "redis://127.0.0.1:1",
            "test",
            EncryptionKey::from_bytes([8; 32]),
        )
        .unwrap();
        assert_ne!(
            fingerprint,
            foreign.inner.fingerprint(&token),
            "another key, another print"
        );
    }

    #[test]
    fn encryption_keys_parse_from_hex_and_never_show() {
        let key = EncryptionKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(key.0, [0xab; 32]);
        assert!(EncryptionKey::from_hex("abc").is_err());
        assert!(EncryptionKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "EncryptionKey([redacted])");
    }

    #[test]
    fn builder_refuses_bad_settings() {
        let key = EncryptionKey::from_bytes([1; 32]);
        assert!(RedisTokenStore::new("not a url", "p", key.clone()).is_err());
        assert!(RedisTokenStore::new("redis://127.0.0.1", "", key.clone()).is_err());
        assert!(
            RedisTokenStore::builder("redis://127.0.0.1", "p", key.clone())
                .command_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(RedisTokenStore::cluster(&[], "p", key.clone()).is_err());
        assert!(RedisTokenStore::cluster(&["not a url"], "p", key.clone()).is_err());
        assert!(RedisTokenStore::cluster(&["redis://127.0.0.1:7000"], "p", key).is_ok());
    }
}
