//! The `/authtoken` client. (Being written.)

/// Logs in to a `/authtoken` endpoint. (Being written.)
#[derive(Debug)]
pub struct AuthTokenSource {}

/// Builds an [`AuthTokenSource`]. (Being written.)
#[derive(Debug)]
pub struct AuthTokenSourceBuilder {}
