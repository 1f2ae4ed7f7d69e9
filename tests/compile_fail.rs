//! Mistakes the compiler catches, and what it says about them: each `tests/ui/*.rs` must fail to
//! compile with the message in its `.stderr` file.
//!
//! The messages are rustc's, so a new compiler may word them differently: run
//! `TRYBUILD=overwrite cargo test --test compile_fail` and review the diff of the `.stderr` files.

#[test]
fn compile_errors_name_what_is_missing() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
