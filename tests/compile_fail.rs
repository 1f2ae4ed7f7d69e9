//! Mistakes the compiler catches, and what it says about them: each `tests/ui/*.rs` must fail to
//! compile with the message in its `.stderr` file.
//!
//! The messages are rustc's, so a new compiler may word them differently: run
//! `TRYBUILD=overwrite cargo test --test compile_fail` and review the diff of the `.stderr` files.

//!
//! trybuild builds every dev-dependency again for its test crate (about 6 minutes of CPU on the
//! project's 2-core machine), which would more than double the suite's time, so this test runs
//! on request: `cargo test --test compile_fail -- --ignored`. The default suite still checks
//! that a non-`Clone` inner service does not compile, through the `compile_fail` doctest of
//! `CloneService`; only the wording is left to this test.

#[test]
#[ignore = "rebuilds every dev-dependency (minutes); run with --ignored after a compiler upgrade or a change to the diagnostics"]
fn compile_errors_name_what_is_missing() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
