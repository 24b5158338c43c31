//! Crash safety of provisioning: fail right after each step in turn (the
//! fault-injection switch), then run again; the end state is the same as an
//! uninterrupted run, with no duplicate rows. Also: a migration changed after
//! it was applied stops the tenant with a clear reason, and the offline
//! provisioning path is the same code.

use sqlx::PgPool;
use strata_api::TenantSpec;
use strata_operator::host::LocalHost;
use strata_operator::placement::TenantNames;
use strata_operator::provision::{self, Provisioner, Step, TenantInput};
use strata_tests::operator_support::{
    default_clusters, drop_tenant_storage, settings, test_catalog,
};
use strata_tests::{env, unique, with_database};
use uuid::Uuid;

fn input(name: &str) -> TenantInput {
    let spec: TenantSpec = serde_json::from_value(serde_json::json!({
        "displayName": "Crash test",
        "adminEmail": "owner@crash.example",
    }))
    .expect("spec");
    TenantInput {
        id: Uuid::new_v4(),
        name: name.into(),
        namespace: "crash".into(),
        spec,
        rotation: Default::default(),
    }
}

/// Row counts that describe a tenant database's end state.
async fn fingerprint(db: &PgPool) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (label, sql) in [
        ("migrations", "SELECT count(*) FROM _sqlx_migrations"),
        ("roles", "SELECT count(*) FROM roles"),
        ("config", "SELECT count(*) FROM config"),
        ("seed_history", "SELECT count(*) FROM seed_history"),
        ("invitations", "SELECT count(*) FROM invitations"),
        (
            "open_invitations",
            "SELECT count(*) FROM invitations WHERE revoked_at IS NULL AND accepted_at IS NULL",
        ),
        ("outbox", "SELECT count(*) FROM outbox"),
        (
            "audit_success",
            "SELECT count(*) FROM audit_events WHERE outcome = 'success'",
        ),
        (
            "audit_success_distinct",
            "SELECT count(DISTINCT dedupe_key) FROM audit_events WHERE outcome = 'success'",
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.push((label.to_string(), n));
    }
    out
}

/// Provisions `t`, optionally failing after `fault`; returns the run's result.
async fn run(
    catalog: &strata_db::Catalog,
    host: &LocalHost,
    t: &TenantInput,
    fault: Option<Step>,
) -> Result<provision::Provisioned, provision::Failure> {
    let settings = settings(fault);
    let cluster = provision::resolve_cluster(&default_clusters(), "default").await?;
    Provisioner {
        settings: &settings,
        catalog,
        cluster: &cluster,
        host,
    }
    .provision(t)
    .await
}

#[tokio::test]
async fn a_crash_after_any_step_converges_to_the_same_state() {
    let (_catalog_db, catalog) = test_catalog().await;
    let state_dir = std::env::temp_dir().join(unique("strata-crash-"));

    // The reference: one uninterrupted run.
    let reference = input("reference");
    let host = LocalHost {
        dir: state_dir.join("reference"),
    };
    run(&catalog, &host, &reference, None)
        .await
        .expect("uninterrupted run");
    let db = PgPool::connect(&with_database(
        &env("STRATA_DATABASE_URL"),
        TenantNames::for_tenant(reference.id).database.as_str(),
    ))
    .await
    .expect("tenant db");
    let expected = fingerprint(&db).await;
    db.close().await;
    assert_eq!(
        expected
            .iter()
            .find(|(k, _)| k == "audit_success")
            .map(|x| x.1),
        expected
            .iter()
            .find(|(k, _)| k == "audit_success_distinct")
            .map(|x| x.1)
    );
    drop_tenant_storage(reference.id).await;

    for step in Step::ALL {
        let t = input(&unique("crash-"));
        let host = LocalHost {
            dir: state_dir.join(&t.name),
        };
        let failure = run(&catalog, &host, &t, Some(step))
            .await
            .expect_err("fault fires");
        assert!(failure.is_injected(), "{step}: {failure}");
        assert_eq!(failure.step, step);
        // Next reconcile converges; a third changes nothing.
        run(&catalog, &host, &t, None)
            .await
            .unwrap_or_else(|f| panic!("after a crash at {step}: {f}"));
        run(&catalog, &host, &t, None)
            .await
            .unwrap_or_else(|f| panic!("third run after {step}: {f}"));
        let db = PgPool::connect(&with_database(
            &env("STRATA_DATABASE_URL"),
            TenantNames::for_tenant(t.id).database.as_str(),
        ))
        .await
        .expect("tenant db");
        assert_eq!(
            fingerprint(&db).await,
            expected,
            "end state after a crash at {step}"
        );
        db.close().await;
        let state: String = sqlx::query_scalar("SELECT state FROM catalog.tenants WHERE id = $1")
            .bind(t.id)
            .fetch_one(catalog.pool())
            .await
            .expect("catalog");
        assert_eq!(state, "ready", "{step}");
        drop_tenant_storage(t.id).await;
    }
    let _ = std::fs::remove_dir_all(state_dir);
}

#[tokio::test]
async fn a_changed_applied_migration_stops_the_tenant() {
    let (_catalog_db, catalog) = test_catalog().await;
    let state_dir = std::env::temp_dir().join(unique("strata-mig-"));
    let t = input(&unique("mig-"));
    let host = LocalHost {
        dir: state_dir.clone(),
    };
    run(&catalog, &host, &t, None).await.expect("first run");
    let db = PgPool::connect(&with_database(
        &env("STRATA_DATABASE_URL"),
        TenantNames::for_tenant(t.id).database.as_str(),
    ))
    .await
    .expect("tenant db");
    // What an edited, already-released migration looks like to the database.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 1")
        .execute(&db)
        .await
        .expect("tamper");
    db.close().await;
    let failure = run(&catalog, &host, &t, None).await.expect_err("refused");
    assert_eq!(failure.step, Step::Migrate);
    assert_eq!(failure.reason, "MigrationChanged");
    assert!(!failure.retryable, "needs a human, not a retry loop");
    assert!(
        failure.message.contains("migration 1"),
        "{}",
        failure.message
    );
    let db = PgPool::connect(&with_database(
        &env("STRATA_DATABASE_URL"),
        TenantNames::for_tenant(t.id).database.as_str(),
    ))
    .await
    .expect("tenant db");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE outcome = 'failure' AND action = 'provision.migrate'")
        .fetch_one(&db)
        .await
        .expect("audit");
    assert_eq!(audited, 1, "the failure is audited");
    db.close().await;
    drop_tenant_storage(t.id).await;
    let _ = std::fs::remove_dir_all(state_dir);
}

#[tokio::test]
async fn concurrent_provisioning_of_many_tenants_shares_the_template() {
    let (_catalog_db, catalog) = test_catalog().await;
    let state_dir = std::env::temp_dir().join(unique("strata-par-"));
    let tenants: Vec<TenantInput> = (0..6).map(|_| input(&unique("par-"))).collect();
    let runs = tenants.iter().map(|t| {
        let catalog = catalog.clone();
        let host = LocalHost {
            dir: state_dir.join(&t.name),
        };
        let t = t.clone();
        async move { run(&catalog, &host, &t, None).await.map(|_| ()) }
    });
    let results = futures::future::join_all(runs).await;
    for (t, r) in tenants.iter().zip(&results) {
        assert!(
            r.is_ok(),
            "{}: {:?}",
            t.name,
            r.as_ref().err().map(ToString::to_string)
        );
    }
    for t in &tenants {
        drop_tenant_storage(t.id).await;
    }
    let _ = std::fs::remove_dir_all(state_dir);
}
