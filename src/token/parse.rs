//! Parsing a `/authtoken` response body into a [`Token`]. (Being written.)

use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, Token};

/// Parses a token response body that arrived at `received_at`.
pub(crate) fn parse_token_response(
    body: &[u8],
    default_lifetime: Duration,
    received_at: Instant,
) -> Result<Token, Error> {
    let _ = (body, default_lifetime, received_at);
    Err(Error::invalid_response("parser not written yet"))
}
