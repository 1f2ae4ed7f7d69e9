//! The demo (the README's main job) runs end to end with short settings.

#[allow(dead_code)]
#[path = "../examples/demo.rs"]
mod demo;

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_across_renewals_without_a_rejected_request() {
    let args = demo::Args::parse_from([
        "demo",
        "--duration",
        "3",
        "--concurrency",
        "8",
        "--lifetime",
        "1",
        "--login-delay-ms",
        "100",
        "--quiet",
    ]);
    let report = demo::run(args).await.unwrap();
    assert!(report.sent > 100, "{report:?}");
    assert_eq!(
        report.rejected, 0,
        "no request was rejected upstream: {report:?}"
    );
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.ok, report.sent);
    // 1 s tokens renew at half their life; a renewal takes 100 ms: one login every ~0.6 s.
    assert!(report.renewals >= 3, "{report:?}");
    assert!(report.logins <= 8, "no login storm: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_demo_serves_every_account_within_the_login_budget() {
    let args = demo::Args::parse_from([
        "demo",
        "--accounts",
        "200",
        "--duration",
        "3",
        "--concurrency",
        "16",
        "--lifetime",
        "2",
        "--login-delay-ms",
        "20",
        "--login-rate",
        "150",
        "--quiet",
    ]);
    let report = demo::run_accounts(args).await.unwrap();
    assert!(report.sent > 100, "{report:?}");
    assert_eq!((report.rejected, report.errors), (0, 0), "{report:?}");
    assert!(
        report.peak_logins_per_s <= report.budget_per_s as usize,
        "{report:?}"
    );
    // Every login the server saw was started (and budgeted) by a cache: read the server first,
    // so that a login on its way can only make the caches' count the larger.
    let (seen, started) = report.all_logins;
    assert!(seen <= started, "{report:?}");
    assert!(
        started - seen <= 150,
        "at most a budget's worth on their way: {report:?}"
    );
    // A 2 s token renews at about half its life, less jitter and spread: two to four logins
    // a lifetime; more would be a storm.
    assert!(report.logins_per_lifetime.1 <= 4.0, "{report:?}");
}
