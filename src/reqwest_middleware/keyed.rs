//! [`KeyedBearerAuthMiddleware`]: a reqwest-middleware client on behalf of many accounts.

use std::fmt;
use std::hash::Hash;

use ::reqwest_middleware::{Middleware, Next};
use http::Extensions;
use reqwest::{Request, Response};

use super::{authorize, for_each_replay_policy};
use crate::KeyedTokenCache;
use crate::keyed::{FromExtension, KeyedBearerAuthLayer};
use crate::layer::{NoReplay, ReplayOnUnauthorized};
#[cfg(doc)]
use crate::{Error, ErrorKind};

/// A [`Middleware`] that sets `Authorization: Bearer <token>` with the token of the account each
/// request names, with the token handling of [`KeyedBearerAuthLayer`].
///
/// A `reqwest::Request` has no extensions of its own to set; the account is an extension of
/// the middleware chain, set on the request builder:
/// `client.get(url).with_extension(Agency(7))`. A request that names no account fails before it
/// is sent with [`ErrorKind::NoAccount`], one whose account the factory refuses with
/// [`ErrorKind::UnknownAccount`]; both arrive as [`reqwest_middleware::Error::Middleware`],
/// whose error downcasts to [`Error`]. Everything else is as
/// [`BearerAuthMiddleware`](super::BearerAuthMiddleware), per account: a `401` takes that
/// account's token out of service, [`retry_on_unauthorized`](Self::retry_on_unauthorized)
/// replays with its renewed token, plain HTTP is refused unless that account's cache or source
/// allows it, and every login draws on the account's budget and on the shared one. Place it in
/// the chain as `BearerAuthMiddleware` (inside the retry).
///
/// Per request it costs what `BearerAuthMiddleware` costs, plus a clone of the key and the
/// account's lookup in the keyed cache's map (each request gets a fresh service, so there is no
/// run of requests to remember).
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use tower_authtoken::reqwest_middleware::KeyedBearerAuthMiddleware;
/// use tower_authtoken::{AuthTokenSource, Credentials, KeyedTokenCache};
/// # use tower_authtoken::testing::ReferenceServer;
///
/// #[derive(Clone, Copy, PartialEq, Eq, Hash)]
/// struct Agency(u32);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # let server = ReferenceServer::start().await;
/// # server.add_user("agency-7", "pw-7");
/// # let base_url = server.base_url();
/// # fn password_of(agency: Agency) -> Option<String> { Some(format!("pw-{}", agency.0)) }
/// let accounts = KeyedTokenCache::builder(move |agency: &Agency| {
///     let password = password_of(*agency).ok_or("no such agency")?;
///     let credentials = Credentials::new(format!("agency-{}", agency.0), password);
///     AuthTokenSource::new(&base_url, credentials).map_err(tower::BoxError::from)
/// })
/// .build()?;
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(KeyedBearerAuthMiddleware::new(accounts).retry_on_unauthorized())
///     .build();
///
/// let response = client
///     .get(format!("{}/cars", server.base_url()))
///     .with_extension(Agency(7)) // this request goes with agency 7's token
///     .send()
///     .await?;
/// assert!(response.status().is_success());
/// # Ok(())
/// # }
/// ```
pub struct KeyedBearerAuthMiddleware<K, P = NoReplay> {
    layer: KeyedBearerAuthLayer<K, FromExtension, P>,
}

impl<K> KeyedBearerAuthMiddleware<K> {
    /// A middleware that authorizes each request with the token of the account named by the
    /// chain's extension of type `K`.
    #[must_use]
    pub fn new(accounts: KeyedTokenCache<K>) -> Self {
        KeyedBearerAuthMiddleware {
            layer: KeyedBearerAuthLayer::new(accounts),
        }
    }
}

impl<K> KeyedBearerAuthMiddleware<K, NoReplay> {
    /// Sends a request once more, with its account's renewed token, when the upstream answers
    /// `401`; the rule of
    /// [`BearerAuthMiddleware::retry_on_unauthorized`](super::BearerAuthMiddleware::retry_on_unauthorized).
    /// Default: off.
    #[must_use]
    pub fn retry_on_unauthorized(self) -> KeyedBearerAuthMiddleware<K, ReplayOnUnauthorized> {
        KeyedBearerAuthMiddleware {
            layer: self.layer.retry_on_unauthorized(),
        }
    }

    /// As [`retry_on_unauthorized`](Self::retry_on_unauthorized), for every method. Default: off.
    #[must_use]
    pub fn retry_on_unauthorized_any_method(
        self,
    ) -> KeyedBearerAuthMiddleware<K, ReplayOnUnauthorized> {
        KeyedBearerAuthMiddleware {
            layer: self.layer.retry_on_unauthorized_any_method(),
        }
    }
}

impl<K, P> KeyedBearerAuthMiddleware<K, P> {
    /// The accounts the middleware takes tokens from.
    pub fn accounts(&self) -> &KeyedTokenCache<K> {
        self.layer.accounts()
    }
}

impl<K: Clone, P: Clone> Clone for KeyedBearerAuthMiddleware<K, P> {
    fn clone(&self) -> Self {
        KeyedBearerAuthMiddleware {
            layer: self.layer.clone(),
        }
    }
}

/// The middleware with the accounts and the replay policy of `layer`.
impl<K, P> From<KeyedBearerAuthLayer<K, FromExtension, P>> for KeyedBearerAuthMiddleware<K, P> {
    fn from(layer: KeyedBearerAuthLayer<K, FromExtension, P>) -> Self {
        KeyedBearerAuthMiddleware { layer }
    }
}

impl<K: Hash + Eq, P> fmt::Debug for KeyedBearerAuthMiddleware<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBearerAuthMiddleware")
            .field("accounts", self.layer.accounts())
            .finish_non_exhaustive()
    }
}

/// The account the chain's extensions name, for the layer to read (once per attempt).
fn named_by<K>(extensions: &Extensions) -> impl Fn(&Request) -> Option<K> + Clone + use<K>
where
    K: Clone + Send + Sync + 'static,
{
    let account = extensions.get::<K>().cloned();
    move |_| account.clone()
}

macro_rules! middleware {
    ($policy:ident) => {
        #[async_trait::async_trait]
        impl<K> Middleware for KeyedBearerAuthMiddleware<K, $policy>
        where
            K: Hash + Eq + Clone + Send + Sync + 'static,
        {
            async fn handle(
                &self,
                req: Request,
                extensions: &mut Extensions,
                next: Next<'_>,
            ) -> ::reqwest_middleware::Result<Response> {
                let layer = self.layer.clone().account_from(named_by::<K>(extensions));
                authorize(&layer, req, extensions, next).await
            }
        }
    };
}
for_each_replay_policy!(middleware);
