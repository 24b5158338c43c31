//! The `strata-operator` binary as users run it.

use std::process::Command;
use std::time::Duration;

use strata_tests::process::{Running, free_port};
use strata_tests::{TestDb, TestNamespace, env, unique};

#[tokio::test]
async fn serves_probes_and_metrics_and_stops_on_sigterm() {
    let ns = TestNamespace::new().await; // the API server is up
    let catalog = TestDb::new().await;
    let port = free_port();
    let mut operator = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_strata-operator"))
            .env("STRATA_DATABASE_URL", env("STRATA_DATABASE_URL"))
            .env("STRATA_PLATFORM_DATABASE", &catalog.name)
            .env("KUBECONFIG", env("STRATA_OPERATOR_KUBECONFIG"))
            .env("STRATA_OPERATOR_PROBE_ADDR", format!("127.0.0.1:{port}"))
            .env("STRATA_LEASE_NAME", unique("lease-"))
            // Its own namespace only: with a catalog of its own, it must not
            // reconcile (and fight over) other tests' tenants.
            .env("STRATA_WATCH_NAMESPACE", &ns.name)
            .env("STRATA_LOG_FORMAT", "json"),
    );
    let base = format!("http://127.0.0.1:{port}");
    operator
        .wait_ready(&format!("{base}/readyz"), Duration::from_secs(60))
        .await;
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .expect("healthz")
            .status(),
        200
    );
    // Leader election through a Lease with the operator's own (RBAC-limited) identity.
    let mut leader = false;
    for _ in 0..50 {
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if metrics.contains("strata_operator_leader 1") {
            leader = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leader, "operator never became leader");
    let status = operator.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn offline_apply_provisions_the_example_tenant_and_is_repeatable() {
    let catalog = TestDb::new().await;
    let state = std::env::temp_dir().join(unique("strata-offline-"));
    // A uniquely named copy of the example, so parallel runs do not collide.
    let name = unique("offline-");
    let manifest = std::fs::read_to_string(strata_tests::repo_root().join("examples/tenant.yaml"))
        .expect("example")
        .replace("name: acme", &format!("name: {name}"));
    let file = state.with_extension("yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let apply = || {
        Command::new(env!("CARGO_BIN_EXE_strata-operator"))
            .args(["apply", "-f"])
            .arg(&file)
            .arg("--state-dir")
            .arg(&state)
            .env("STRATA_DATABASE_URL", env("STRATA_DATABASE_URL"))
            .env("STRATA_PLATFORM_DATABASE", &catalog.name)
            .output()
            .expect("run apply")
    };
    let first = apply();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "apply failed: {stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for step in [
        "DatabaseCreated",
        "Migrated",
        "Seeded",
        "AdminInvited",
        "Ready",
    ] {
        assert!(stdout.contains(step), "step {step} not printed:\n{stdout}");
    }
    let second = apply();
    let again = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "second apply failed: {again}");
    assert!(
        !again.contains("DatabaseCreated") && !again.contains("Seeded"),
        "second apply changed nothing:\n{again}"
    );

    // The credentials file connects.
    let creds: std::collections::BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(state.join("default").join(format!("{name}-database.json")))
            .expect("credentials file"),
    )
    .expect("json");
    let pool = sqlx::PgPool::connect(&creds["url"])
        .await
        .expect("credentials connect");
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM roles")
        .fetch_one(&pool)
        .await
        .expect("roles");
    assert_eq!(roles, 4);
    pool.close().await;
    let admin = sqlx::PgPool::connect(&env("STRATA_DATABASE_URL"))
        .await
        .expect("admin");
    let db = creds["database"].clone();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&admin)
        .await;
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{}\"", creds["username"]))
        .execute(&admin)
        .await;
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&file);
}
