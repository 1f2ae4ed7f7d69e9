//! Bearer tokens from a `/authtoken` login endpoint, cached lock-free, renewed before they
//! expire, and injected into every request by a Tower layer.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms, clippy::await_holding_lock)]

mod cache;
mod credentials;
mod error;
pub mod layer;
mod loopback;
mod source;
pub mod token;

#[cfg(feature = "reqwest")]
mod client;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[doc(inline)]
pub use cache::{CacheStats, TokenCache, TokenCacheBuilder};
#[doc(inline)]
pub use credentials::Credentials;
#[doc(inline)]
pub use layer::{BearerAuth, BearerAuthLayer};
#[doc(inline)]
pub use error::{Error, ErrorKind};
#[doc(inline)]
pub use source::TokenSource;
#[doc(inline)]
pub use token::Token;

#[cfg(feature = "reqwest")]
#[doc(inline)]
pub use client::{AuthTokenSource, AuthTokenSourceBuilder};
