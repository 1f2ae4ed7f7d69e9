//! Bearer tokens from a `/authtoken` login endpoint, cached lock-free, renewed before they
//! expire, and injected into every request by a Tower layer.
//!
//! A client of a token-protected API logs in once (`POST /authtoken` with a user name and a
//! password), then sends `Authorization: Bearer <token>` on every call until the token expires.
//! This crate does all of that behind one [`BearerAuthLayer`]:
//!
//! - [`AuthTokenSource`] logs in and parses the response into a [`Token`];
//! - [`TokenCache`] holds the current token, hands it out without a lock, renews it before it
//!   expires with one fetch shared by every caller, and keeps a valid token through failures;
//! - [`BearerAuthLayer`] sets the sensitive `Authorization` header on every request of any
//!   Tower client: hyper-util's `Client`, [`reqwest::Client`], tonic channels;
//! - [`KeyedTokenCache`] and [`KeyedBearerAuthLayer`] do the same for many accounts at once,
//!   each request with the token of the account it names ([`keyed`]).
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_authtoken::testing::ReferenceServer;
//! use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let server = ReferenceServer::start().await;
//! # let (base_url, credentials) = (server.base_url(), server.credentials());
//! // base_url: "https://api.example.com/v1", credentials: Credentials::new("alice", password)
//! let source = AuthTokenSource::new(&base_url, credentials)?;
//! let cache = TokenCache::new(source);
//!
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(reqwest::Client::new());
//!
//! let request = reqwest::Request::new(
//!     http::Method::GET,
//!     format!("{base_url}/cars").parse()?,
//! );
//! let response = client.oneshot(request).await?;
//! assert!(response.status().is_success());
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! Each holds against the servers and runtimes named here; the [`TokenCache`] docs say how, and
//! `TESTING.md` names the test that proves it and the world it runs in.
//!
//! - **Fast hot path.** A request with a warm token costs one atomic pointer check against the
//!   `ArcSwap` holding the token, one read of a coarse monotonic clock (a few nanoseconds), one
//!   header clone (a reference count) and no allocation or lock; the inner future is not boxed.
//! - **No stalls.** Renewal starts ahead of expiry (60 s by default, half the life of short
//!   tokens) in the background; requests keep using the current token meanwhile.
//! - **Single flight.** Any number of concurrent callers share one fetch, and cancelling the
//!   caller that started it cancels nothing for the others.
//! - **No expired token, whatever the runtime.** Every request checks its token's deadline on
//!   the clock itself, so a late timer never lets an expired token out: not after `block_on`
//!   returns from an idle spell, not in a process thawed after `SIGSTOP`, not when the runtime
//!   running the renewal is idle or gone. Lifetimes are measured on the local monotonic clock,
//!   which stops while the machine is suspended: after a resume, the server's `401` is what
//!   retires a token it let expire.
//! - **Any runtime, any number of runtimes.** A caller whose runtime runs gets a token within
//!   one login plus about half a second even if the runtime running the renewal shut down or
//!   stopped running tasks; never [`ErrorKind::Runtime`] while its own runtime runs.
//! - **Every server's answer understood.** A server that keeps one live token per user, binds
//!   new tokens to the session's expiry, or slides the expiry is served without errors and with
//!   one login per lifetime; a token it re-issues is never withdrawn before its expiry.
//! - **No login storms.** A [`LoginBudget`] (5 at once, then 4 a second) caps every login; `401`s
//!   of tokens rejected right after their login are spaced 1 s, 2 s, 4 s ... 60 s apart, so an
//!   API that rejects every token costs a handful of logins a minute.
//! - **Failures keep what works.** A failed renewal never discards a valid token; a transient
//!   failure is retried about once a second for as long as it lasts, so callers are served
//!   again within about a second of the endpoint's recovery; with no valid token, callers fail
//!   fast with the last typed [`Error`], whose `retry_after()` says when the next attempt is.
//! - **Settings cannot panic.** Builders refuse out-of-range settings by name.
//! - **Secrets stay secret.** Passwords and tokens never appear in `Debug`, `Display`, errors or
//!   logs, the `Authorization` header is marked sensitive, and the crate's own buffers holding
//!   them are zeroed before they are freed (a replaced token is freed once every service clone
//!   that used it has sent its next request or been dropped).
//! - **No leaks.** The background task stops when the last handle is dropped.
//!
//! # Features
//!
//! - `reqwest` (default): the default login client of [`AuthTokenSource`], and
//!   `Service<reqwest::Request>` for [`BearerAuth`]. TLS is reqwest's default rustls backend.
//! - `oauth2`: `OAuth2ClientCredentials`, a [`TokenSource`] for an OAuth 2.0 token endpoint
//!   (the client credentials grant, RFC 6749 §4.4), on the same client code as
//!   [`AuthTokenSource`].
//! - `reqwest-middleware`: `reqwest_middleware::BearerAuthMiddleware`, the same token handling
//!   as [`BearerAuthLayer`] for clients built with `reqwest-middleware` (beside its retry and
//!   tracing middlewares), and `KeyedBearerAuthMiddleware`, as [`KeyedBearerAuthLayer`] with
//!   the account set by `.with_extension(...)` on the request builder. Implies `reqwest`.
//! - Without `reqwest`, [`AuthTokenSource`] and `OAuth2ClientCredentials` log in over any Tower
//!   HTTP client you give them (`builder_with_service`: hyper-util's `Client`, a stack with
//!   tracing, retry or proxy layers); with it, over such a client too (`http_service`).
//! - `redis`: `store::RedisTokenStore`, a [`store::TokenStore`] through which a fleet of
//!   processes shares one token per account (encrypted at rest, one login per renewal for the
//!   fleet), on a single Redis server or a Redis Cluster.
//! - `test-util`: `testing`, an embedded reference server for your own tests.
//! - `test-util-tls`: the reference server over HTTPS (`ReferenceServerBuilder::tls`, rustls with
//!   the aws-lc-rs provider that reqwest uses), to test the https path. Implies `test-util`.
//! - `metrics`: counters, a gauge and a histogram of logins, renewals, invalidations and
//!   refusals through the [`metrics`](https://docs.rs/metrics) facade; the names are in
//!   [`metrics`](mod@metrics).
//! - `tonic`: the `tower_authtoken::tonic` module: `GrpcBearerAuthLayer` for tonic channels
//!   (`grpc-status: 16` in headers or trailers invalidates the token; login failures arrive as
//!   `tonic::Status` codes), `KeyedGrpcBearerAuthLayer` for the same per account, and
//!   `From<Error> for tonic::Status`; with `test-util`, a bytes codec
//!   for a gRPC service without protoc.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms, clippy::await_holding_lock)]

mod cache;
mod credentials;
mod error;
pub mod keyed;
pub mod layer;
mod loopback;
pub mod metrics;
mod source;
pub mod store;
pub mod token;

mod client;
#[cfg(feature = "oauth2")]
mod oauth2;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub mod reqwest_middleware;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

#[doc(inline)]
pub use cache::{CacheStats, LoginBudget, TokenCache, TokenCacheBuilder};
#[doc(inline)]
pub use credentials::Credentials;
#[doc(inline)]
pub use error::{Error, ErrorKind};
#[doc(inline)]
pub use keyed::{
    KeyedBearerAuth, KeyedBearerAuthLayer, KeyedStats, KeyedTokenCache, KeyedTokenCacheBuilder,
};
#[doc(inline)]
pub use layer::{BearerAuth, BearerAuthLayer, ReplayBody};
#[doc(inline)]
pub use source::TokenSource;
#[doc(inline)]
pub use token::Token;

#[doc(inline)]
pub use client::LoginHttpService;
#[doc(inline)]
pub use client::{AuthTokenSource, AuthTokenSourceBuilder};
#[cfg(feature = "oauth2")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth2")))]
#[doc(inline)]
pub use oauth2::{ClientAuth, OAuth2ClientCredentials, OAuth2ClientCredentialsBuilder};

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
