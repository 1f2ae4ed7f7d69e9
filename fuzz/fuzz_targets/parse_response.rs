//! Fuzzes the `/authtoken` response parser, `Token::from_response_body`.
//!
//! Any input must give a token or an `InvalidResponse` error, never a panic, a hang or an
//! abort. Beyond not crashing, each outcome is checked against what the parser promises:
//!
//! - a token has a lifetime in (0, 1 year], a value of visible ASCII equal to the body's
//!   `token` field, and a sensitive `Bearer` header;
//! - an error is an `InvalidResponse` whose message never shows the body's token.
//!
//! Run it from the repository root (see TESTING.md):
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run parse_response -s none fuzz/corpus/parse_response \
//!     fuzz/seeds/parse_response -- -dict=fuzz/parse_response.dict -max_total_time=600
//! ```
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tower_authtoken::token::MAX_LIFETIME;
use tower_authtoken::{ErrorKind, Token};

const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

fuzz_target!(|data: &[u8]| {
    let outcome = Token::from_response_body(data, DEFAULT_LIFETIME);
    // The `token` field as the parser should have read it, when the body is a JSON object.
    let field = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|body| match body.get("token")? {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Number(number) => Some(number.to_string()),
            _ => None,
        });
    match outcome {
        Ok(token) => {
            assert!(!token.lifetime().is_zero(), "a zero lifetime was accepted");
            assert!(token.lifetime() <= MAX_LIFETIME, "a lifetime over a year");
            let value = token.expose_secret();
            assert!(!value.is_empty());
            assert!(
                value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{value:?}"
            );
            assert!(token.header_value().is_sensitive());
            assert_eq!(
                token.header_value().as_bytes(),
                format!("Bearer {value}").as_bytes()
            );
            if let Some(field) = field {
                assert_eq!(value, field, "the token is not the body's token field");
            }
        }
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{error:?}");
            let message = error.to_string();
            assert!(!message.is_empty());
            // Only tokens long and distinctive enough not to occur in a fixed message by chance.
            if let Some(field) =
                field.filter(|t| t.len() >= 16 && t.bytes().any(|b| b.is_ascii_alphabetic()))
            {
                assert!(
                    !message.contains(&field),
                    "the error shows the token: {message}"
                );
            }
        }
    }
});
