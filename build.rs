//! Says whether the Redis tests can run: sets `cfg(has_redis)` when `redis-server` is on the
//! `PATH`, so that `tests/redis*.rs` show as ignored, with the reason, when it is not, rather
//! than reporting "ok" for tests that never ran. Under `CI=true` the cfg is always set, so that a
//! CI machine without `redis-server` fails those tests instead of ignoring them.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_redis)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("redis-server").is_file())
    });
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if on_path || ci {
        println!("cargo::rustc-cfg=has_redis");
    }
}
