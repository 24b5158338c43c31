//! The `strata-dataplane` binary as users run it.

use std::process::Command;
use std::time::Duration;

use strata_tests::process::{Running, free_port};
use strata_tests::{TestDb, env};

#[tokio::test]
async fn ready_with_its_dependencies_and_stops_on_sigterm() {
    let catalog = TestDb::new().await;
    let port = free_port();
    let mut dataplane = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_strata-dataplane"))
            .env("STRATA_CATALOG_URL", &catalog.url)
            .env("STRATA_REDIS_URL", env("STRATA_REDIS_URL"))
            .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}")),
    );
    let base = format!("http://127.0.0.1:{port}");
    dataplane
        .wait_ready(&format!("{base}/readyz"), Duration::from_secs(30))
        .await;
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .expect("healthz")
            .status(),
        200
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let missing = reqwest::get(format!("{base}/v1/nothing"))
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = missing.json().await.expect("problem body");
    assert_eq!(problem["status"], 404);
    let status = dataplane.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn not_ready_while_a_dependency_is_down() {
    let port = free_port();
    let dead = free_port();
    let mut dataplane = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_strata-dataplane"))
            .env(
                "STRATA_CATALOG_URL",
                format!("postgres://nobody:x@127.0.0.1:{dead}/none"),
            )
            .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}")),
    );
    let base = format!("http://127.0.0.1:{port}");
    dataplane
        .wait_ready(&format!("{base}/healthz"), Duration::from_secs(30))
        .await;
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.expect("body").contains("catalog"));
}
