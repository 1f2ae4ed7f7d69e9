//! The embedded reference server. (Being written.)
