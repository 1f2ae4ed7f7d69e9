//! The user name and password that buy a token.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

/// A user name and a password for the `/authtoken` endpoint.
///
/// The password is held as a [`SecretString`]: it is zeroed when dropped (every clone too), and
/// `Debug` shows only the user name. [`new`](Credentials::new) also zeroes the `String` it is
/// given, spare capacity included; what it cannot reach is any copy made before (a config file's
/// buffer, an environment block).
///
/// ```
/// use tower_authtoken::Credentials;
///
/// let credentials = Credentials::new("alice", "correct horse battery staple");
/// assert_eq!(credentials.user_name(), "alice");
/// assert!(!format!("{credentials:?}").contains("horse"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    user_name: String,
    password: SecretString,
}

impl Credentials {
    /// Credentials for `user_name` with `password`.
    ///
    /// The password is copied into a buffer of its exact size, and the `String` it came in is
    /// zeroed (spare capacity included) before it is freed. (Handing the `String` to
    /// `SecretString` directly would shrink it in place when it has spare capacity, and the
    /// allocator would free the old block unwiped.)
    pub fn new(user_name: impl Into<String>, password: impl Into<String>) -> Self {
        let mut password: String = password.into();
        let exact: Box<str> = Box::from(password.as_str());
        password.zeroize();
        Credentials {
            user_name: user_name.into(),
            password: SecretString::from(exact),
        }
    }

    /// The user name.
    pub fn user_name(&self) -> &str {
        &self.user_name
    }

    /// The password, for the one place that must send it.
    pub(crate) fn password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user_name", &self.user_name)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_user_name_and_never_the_password() {
        let credentials = Credentials::new("alice", "s3cr3t-Pa55");
        let debug = format!("{credentials:?} {credentials:#?}");
        assert!(debug.contains("alice"));
        assert!(!debug.contains("s3cr3t-Pa55"));
        assert_eq!(credentials.password(), "s3cr3t-Pa55");
    }
}
