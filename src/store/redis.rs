//! [`RedisTokenStore`]: a fleet of processes shares one token through Redis.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::{Instant, sleep_until, timeout};

use super::{BoxFuture, ObtainRequest, TokenStore};
use crate::{Error, Token};

/// Deletes `KEYS[1]` only while it still holds `ARGV[1]`: releases a lock we own, or removes a
/// token only if it is still the one that was rejected.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// The format version written before each sealed token.
const FORMAT: u8 = 1;
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
/// 1. adopts a fresher token from Redis, if another replica stored one;
/// 2. otherwise takes a short lock (`SET NX PX` with a random owner, released by a
///    compare-and-delete script), logs in once, stores the token with its lifetime as the key's
///    expiry, and publishes a notification;
/// 3. or, if another replica holds the lock, waits for its notification (polling as a fallback)
///    for at most the fetch timeout, then logs in itself: liveness beats perfect deduplication.
///    A lock whose holder died expires and hands the renewal to the next replica.
///
/// A replica learns a shared token's remaining lifetime from Redis itself (`PTTL`), never from
/// another machine's wall clock. A `401` seen by any replica removes the token from Redis only if
/// Redis still holds that very token, and one replica renews.
///
/// Tokens are sealed with ChaCha20-Poly1305 under the [`EncryptionKey`] the application supplies,
/// bound to their key name. A value that fails to decrypt or parse is logged and treated as a
/// miss, never trusted.
///
/// Redis is never a new way to fail: every call has a short timeout, and when Redis is down, slow
/// or flaky the replica logs in on its own, warns, and tries Redis again a few seconds later.
///
/// Keys are `{prefix}:{user}:token` and `{prefix}:{user}:lock`, and notifications go to
/// `{prefix}:{user}:renewed`, so one Redis can serve many credentials and applications.
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
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    cipher: ChaCha20Poly1305,
    command_timeout: Duration,
    poll_interval: Duration,
    retry_after: Duration,
    /// While set and in the future, Redis is considered down and skipped.
    down_until: Mutex<Option<Instant>>,
}

/// Builds a [`RedisTokenStore`]; every setter states its default.
pub struct RedisTokenStoreBuilder {
    url: String,
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
    /// notification. Default: 100 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long Redis is skipped after a failure, before it is tried again. Default: 5 s.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Checks the settings and builds the store. Nothing connects until the first renewal.
    pub fn build(self) -> Result<RedisTokenStore, Error> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|_| Error::config("the Redis URL is not valid"))?;
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
        Ok(RedisTokenStore {
            client,
            connection: OnceCell::new(),
            prefix: self.prefix,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&self.key.0)),
            command_timeout: self.command_timeout,
            poll_interval: self.poll_interval,
            retry_after: self.retry_after,
            down_until: Mutex::new(None),
        })
    }
}

impl fmt::Debug for RedisTokenStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStoreBuilder")
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
}

/// The names of one user's keys.
struct Keys {
    token: String,
    lock: String,
    channel: String,
}

/// Why a Redis step did not give a token.
enum Miss {
    /// Redis answered, without a usable token.
    Empty,
    /// Redis failed or timed out.
    Down(String),
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
            url: url.to_owned(),
            prefix: key_prefix.to_owned(),
            key,
            command_timeout: Duration::from_millis(250),
            poll_interval: Duration::from_millis(100),
            retry_after: Duration::from_secs(5),
        }
    }

    fn keys(&self, user: Option<&str>) -> Keys {
        let user = user.unwrap_or("default");
        let base = format!("{}:{}", self.prefix, user);
        Keys {
            token: format!("{base}:token"),
            lock: format!("{base}:lock"),
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

    async fn connection(&self) -> Result<ConnectionManager, Miss> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.command_timeout);
        self.connection
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| Miss::Down(format!("connect: {:?}", e.kind())))
    }

    /// Runs one Redis command under the command timeout.
    async fn run<T, F>(&self, what: &str, command: F) -> Result<T, Miss>
    where
        F: AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    {
        let mut connection = self.connection().await?;
        match timeout(self.command_timeout, command(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Miss::Down(format!("{what}: {:?}", e.kind()))),
            Err(_) => Err(Miss::Down(format!("{what}: timed out"))),
        }
    }

    fn seal(&self, keys: &Keys, token: &Token) -> Option<Vec<u8>> {
        let sealed = Sealed {
            v: token.expose_secret().to_owned(),
            l: u64::try_from(token.lifetime().as_millis()).unwrap_or(u64::MAX),
            t: token.token_type().map(str::to_owned),
            i: token.issued().and_then(unix_millis),
            e: token.expires().and_then(unix_millis),
        };
        let plain = serde_json::to_vec(&sealed).ok()?;
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
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// Reads the shared token with its remaining lifetime, as measured by Redis.
    async fn load(&self, keys: &Keys) -> Result<Option<(Token, Vec<u8>)>, Miss> {
        let sent_at = Instant::now();
        let (blob, pttl): (Option<Vec<u8>>, i64) = self
            .run("load", async |c| {
                redis::pipe()
                    .atomic()
                    .get(&keys.token)
                    .cmd("PTTL")
                    .arg(&keys.token)
                    .query_async(c)
                    .await
            })
            .await?;
        let Some(blob) = blob else {
            return Ok(None);
        };
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
            received_at,
            sealed.t,
            sealed.i.and_then(from_unix_millis),
            sealed.e.and_then(from_unix_millis),
        );
        match token {
            Ok(token) => Ok(Some((token, blob))),
            Err(_) => {
                tracing::warn!(key = keys.token, "shared token is unusable; ignoring it");
                Ok(None)
            }
        }
    }

    /// A token from Redis that is worth adopting: not one we have or rejected, and expiring later
    /// than ours.
    async fn fresher(&self, keys: &Keys, request: &ObtainRequest) -> Result<Token, Miss> {
        let Some((token, _)) = self.load(keys).await? else {
            return Err(Miss::Empty);
        };
        let known = [request.current(), request.rejected()]
            .into_iter()
            .flatten()
            .any(|t| t.same_value(&token));
        let later = request
            .current()
            .is_none_or(|current| token.expires_at() > current.expires_at());
        if known || !later {
            return Err(Miss::Empty);
        }
        Ok(token)
    }

    /// Removes the shared token if it is still the one the upstream rejected.
    async fn forget(&self, keys: &Keys, rejected: &Token) -> Result<(), Miss> {
        if let Some((token, blob)) = self.load(keys).await?
            && token.same_value(rejected)
        {
            let script = redis::Script::new(COMPARE_AND_DELETE);
            let _: i64 = self
                .run("invalidate", async |c| {
                    script.key(&keys.token).arg(blob).invoke_async(c).await
                })
                .await?;
            tracing::info!("rejected token removed from the shared store");
        }
        Ok(())
    }

    async fn try_lock(&self, keys: &Keys, owner: &str, ttl: Duration) -> Result<bool, Miss> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Option<String> = self
            .run("lock", async |c| {
                redis::cmd("SET")
                    .arg(&keys.lock)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(reply.is_some())
    }

    async fn unlock(&self, keys: &Keys, owner: &str) -> Result<(), Miss> {
        let script = redis::Script::new(COMPARE_AND_DELETE);
        let _: i64 = self
            .run("unlock", async |c| {
                script.key(&keys.lock).arg(owner).invoke_async(c).await
            })
            .await?;
        Ok(())
    }

    /// Stores `token` with its remaining lifetime as the key's expiry, and tells the peers.
    async fn publish(&self, keys: &Keys, token: &Token) -> Result<(), Miss> {
        let remaining = token.expires_at().saturating_duration_since(Instant::now());
        let remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        if remaining_ms == 0 {
            return Ok(());
        }
        let Some(blob) = self.seal(keys, token) else {
            return Err(Miss::Down("seal: could not encrypt".into()));
        };
        let _: () = self
            .run("store", async |c| {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&keys.token)
                    .arg(blob)
                    .arg("PX")
                    .arg(remaining_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&keys.channel)
                    .arg(1)
                    .ignore()
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Logs in while holding the lock, then shares the token and releases the lock.
    async fn login_for_fleet(
        &self,
        keys: &Keys,
        owner: &str,
        request: &ObtainRequest,
    ) -> Result<Token, Error> {
        // A peer may have stored a token and released the lock between our last look and our
        // taking the lock: look again before logging in.
        let result = match self.fresher(keys, request).await {
            Ok(token) => {
                tracing::debug!("adopted the token a peer fetched just before we took the lock");
                Ok(token)
            }
            Err(miss) => {
                if let Miss::Down(why) = miss {
                    self.mark_down(&why);
                }
                let result = request.login().await;
                if let Ok(token) = &result {
                    match self.publish(keys, token).await {
                        Ok(()) => tracing::debug!("token shared with the fleet"),
                        Err(Miss::Down(why)) => self.mark_down(&why),
                        Err(Miss::Empty) => {}
                    }
                }
                result
            }
        };
        if let Err(Miss::Down(why)) = self.unlock(keys, owner).await {
            // The lock expires on its own.
            tracing::debug!(reason = why, "could not release the renewal lock");
        }
        result
    }

    /// Waits for the lock holder's token, taking the lock over if it expires, for at most the
    /// fetch timeout; then logs in locally.
    async fn wait_for_peer(&self, keys: &Keys, request: &ObtainRequest) -> Result<Token, Error> {
        let deadline = Instant::now() + request.fetch_timeout();
        // Subscribe before checking again, so that a notification cannot slip between.
        let mut notifications = match timeout(self.command_timeout, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&keys.channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        })
        .await
        {
            Ok(Ok(stream)) => Some(stream),
            _ => None,
        };
        let owner = new_owner();
        loop {
            match self.fresher(keys, request).await {
                Ok(token) => {
                    tracing::debug!("adopted the token a peer fetched");
                    return Ok(token);
                }
                Err(Miss::Down(why)) => {
                    self.mark_down(&why);
                    return request.login().await;
                }
                Err(Miss::Empty) => {}
            }
            match self
                .try_lock(keys, &owner, lock_ttl(request.fetch_timeout()))
                .await
            {
                Ok(true) => return self.login_for_fleet(keys, &owner, request).await,
                Ok(false) => {}
                Err(Miss::Down(why)) => {
                    self.mark_down(&why);
                    return request.login().await;
                }
                Err(Miss::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "no peer shared a token within the fetch timeout; logging in locally"
                );
                return request.login().await;
            }
            let next_poll = (now + self.poll_interval).min(deadline);
            match &mut notifications {
                Some(stream) => {
                    tokio::select! {
                        message = stream.next() => {
                            if message.is_none() {
                                notifications = None;
                            }
                        }
                        _ = sleep_until(next_poll) => {}
                    }
                }
                None => sleep_until(next_poll).await,
            }
        }
    }

    async fn obtain_shared(&self, request: &ObtainRequest) -> Result<Token, Error> {
        if self.is_down() {
            return request.login().await;
        }
        let keys = self.keys(request.user_name());
        if let Some(rejected) = request.rejected()
            && let Err(Miss::Down(why)) = self.forget(&keys, rejected).await
        {
            self.mark_down(&why);
            return request.login().await;
        }
        match self.fresher(&keys, request).await {
            Ok(token) => {
                self.mark_up();
                tracing::debug!("adopted a fresher token from the shared store");
                return Ok(token);
            }
            Err(Miss::Down(why)) => {
                self.mark_down(&why);
                return request.login().await;
            }
            Err(Miss::Empty) => self.mark_up(),
        }
        let owner = new_owner();
        match self
            .try_lock(&keys, &owner, lock_ttl(request.fetch_timeout()))
            .await
        {
            Ok(true) => self.login_for_fleet(&keys, &owner, request).await,
            Ok(false) => self.wait_for_peer(&keys, request).await,
            Err(Miss::Down(why)) => {
                self.mark_down(&why);
                request.login().await
            }
            Err(Miss::Empty) => request.login().await,
        }
    }
}

impl TokenStore for RedisTokenStore {
    fn obtain<'a>(&'a self, request: &'a ObtainRequest) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(self.obtain_shared(request))
    }
}

impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("down", &self.is_down())
            .finish_non_exhaustive()
    }
}

/// The lock outlives a healthy login a little, and expires soon after a dead holder's would have
/// ended.
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

    #[test]
    fn sealed_tokens_open_only_under_their_own_key_name() {
        let store = store();
        let alice = store.keys(Some("alice"));
        let bob = store.keys(Some("bob"));
        let token = Token::new("secret-token-value", Duration::from_secs(60)).unwrap();
        let blob = store.seal(&alice, &token).unwrap();
        assert!(
            !blob
                .windows(b"secret-token-value".len())
                .any(|w| w == b"secret-token-value"),
            "the token is not readable at rest"
        );
        let opened = store.open(&alice, &blob).unwrap();
        assert_eq!(opened.v, "secret-token-value");
        assert_eq!(opened.l, 60_000);
        assert!(
            store.open(&bob, &blob).is_none(),
            "a blob moved to another key fails"
        );
    }

    #[test]
    fn tampered_or_foreign_blobs_do_not_open() {
        let store = store();
        let keys = store.keys(None);
        let token = Token::new("abc", Duration::from_secs(60)).unwrap();
        let mut blob = store.seal(&keys, &token).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert!(store.open(&keys, &blob).is_none());
        assert!(store.open(&keys, b"").is_none());
        assert!(store.open(&keys, b"\x01short").is_none());
        let other = RedisTokenStore::new(
            "redis://127.0.0.1:1",
            "test",
            EncryptionKey::from_bytes([8; 32]),
        )
        .unwrap();
        let blob = store.seal(&keys, &token).unwrap();
        assert!(
            other.open(&keys, &blob).is_none(),
            "another key cannot open it"
        );
    }

    #[test]
    fn keys_are_namespaced_by_prefix_and_user() {
        let keys = store().keys(Some("alice"));
        assert_eq!(keys.token, "test:alice:token");
        assert_eq!(keys.lock, "test:alice:lock");
        assert_eq!(keys.channel, "test:alice:renewed");
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
            RedisTokenStore::builder("redis://127.0.0.1", "p", key)
                .command_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
    }
}
