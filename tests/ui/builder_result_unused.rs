// A builder setter whose result is dropped is a mistake the compiler points out.
#![deny(unused_must_use)]

use std::time::Duration;

use tower_authtoken::store::{EncryptionKey, RedisTokenStore};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, Error, Token, TokenCache, TokenSource,
};

struct Fixed;

impl TokenSource for Fixed {
    async fn fetch(&self) -> Result<Token, Error> {
        Token::new("opaque", Duration::from_secs(3600))
    }
}

fn main() {
    let credentials = Credentials::new("alice", "wonderland");
    TokenCache::builder(Fixed).refresh_before(Duration::from_secs(30));
    AuthTokenSource::builder("https://api.example.com", credentials).timeout(Duration::from_secs(5));
    RedisTokenStore::builder("redis://127.0.0.1", "app:", EncryptionKey::generate())
        .poll_interval(Duration::from_millis(100));
    ReferenceServer::builder().token_lifetime(Duration::from_secs(60));
    BearerAuthLayer::new(TokenCache::new(Fixed)).retry_on_unauthorized();
}
