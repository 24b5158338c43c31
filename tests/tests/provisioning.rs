//! Tenant provisioning end to end: the controller (in-process, scoped to the
//! test's namespace) against the real kube-apiserver and PostgreSQL.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use strata_api::{ConditionStatus, Tenant, TenantPhase};
use strata_operator::placement::TenantNames;
use strata_tests::operator_support::{
    OperatorHarness, drop_tenant_storage, has_condition, test_catalog, wait_deleted,
    wait_for_status,
};
use strata_tests::{TestNamespace, env, with_database};
use uuid::Uuid;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn example_tenant(ns: &str) -> Tenant {
    let text = std::fs::read_to_string(strata_tests::repo_root().join("examples/tenant.yaml"))
        .expect("read example");
    let mut t: Tenant = serde_yaml::from_str(&text).expect("parse example");
    t.metadata.namespace = Some(ns.to_string());
    t
}

fn tenant(name: &str, spec: serde_json::Value) -> Tenant {
    Tenant::new(name, serde_json::from_value(spec).expect("spec"))
}

async fn admin() -> PgPool {
    PgPool::connect(&env("STRATA_DATABASE_URL"))
        .await
        .expect("admin connection")
}

async fn tenant_db(uid: &str) -> PgPool {
    let names = TenantNames::for_tenant(Uuid::parse_str(uid).expect("uid"));
    PgPool::connect(&with_database(
        &env("STRATA_DATABASE_URL"),
        names.database.as_str(),
    ))
    .await
    .expect("tenant db")
}

async fn database_exists(admin: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .expect("query")
}

async fn role_exists(admin: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .expect("query")
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn drop_tenant_db(uid: &str) {
    drop_tenant_storage(Uuid::parse_str(uid).expect("uid")).await;
}

fn secret_value(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("secret has no {key}"));
    String::from_utf8(bytes.0.clone()).expect("utf-8")
}

async fn events_for(ns: &TestNamespace, name: &str) -> Vec<Event> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test]
async fn example_tenant_becomes_ready_with_a_provisioned_database() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let catalog_pool = catalog.pool().clone();
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let tenants: Api<Tenant> = ns.api();
    tenants
        .create(&PostParams::default(), &example_tenant(&ns.name))
        .await
        .expect("apply example");

    let t = wait_for_status(&tenants, "acme", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let status = t.status.clone().expect("status");
    let uid = t.metadata.uid.clone().expect("uid");
    for type_ in [
        "DatabaseReady",
        "Migrated",
        "Seeded",
        "AdminInvited",
        "Ready",
    ] {
        let c = strata_api::condition::find(&status.conditions, type_)
            .unwrap_or_else(|| panic!("{type_} missing"));
        assert_eq!(c.status, ConditionStatus::True, "{type_}: {c:?}");
        assert_eq!(c.observed_generation, t.metadata.generation, "{type_}");
    }
    assert_eq!(status.observed_generation, t.metadata.generation);
    assert_eq!(status.tenant_id.as_deref(), Some(uid.as_str()));
    let names = TenantNames::for_tenant(Uuid::parse_str(&uid).expect("uid"));
    assert_eq!(
        status.database_name.as_deref(),
        Some(names.database.as_str())
    );
    assert_eq!(
        status.schema_version,
        Some(strata_db::migrations::latest_tenant_version())
    );
    assert!(
        t.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"strata.dev/tenant-cleanup".to_string())
    );

    // The tenant database: schema, seeds, one pending invitation (hash only), audit.
    let db = tenant_db(&uid).await;
    for table in [
        "collections",
        "documents",
        "embeddings",
        "roles",
        "config",
        "invitations",
        "audit_events",
        "outbox",
        "idempotency_keys",
    ] {
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = '{table}'")).await, 1, "{table}");
    }
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'documents'")
            .fetch_one(&db)
            .await
            .expect("owner");
    assert_eq!(
        owner,
        names.owner.as_str(),
        "objects are owned by the tenant's owner role, not its login role"
    );
    let roles: Vec<String> = sqlx::query_scalar("SELECT name FROM roles ORDER BY name")
        .fetch_all(&db)
        .await
        .expect("roles");
    assert_eq!(roles, ["admin", "editor", "owner", "viewer"]);
    assert!(count(&db, "SELECT count(*) FROM config WHERE source = 'default'").await >= 10);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
        )
        .await,
        1
    );
    let (email, hash, accepted): (String, Vec<u8>, Option<String>) =
        sqlx::query_as("SELECT email, token_hash, accepted_at::text FROM invitations")
            .fetch_one(&db)
            .await
            .expect("one invitation");
    assert_eq!(email, "admin@acme.example");
    assert!(accepted.is_none());
    let secrets: Api<Secret> = ns.api();
    let invite = secrets
        .get("acme-admin-invite")
        .await
        .expect("invite secret");
    let token = secret_value(&invite, "token");
    assert_eq!(
        hash,
        Sha256::digest(token.as_bytes()).to_vec(),
        "only the token's hash is stored"
    );
    let stored_anywhere = count(
        &db,
        &format!("SELECT count(*) FROM invitations WHERE token_hash::text LIKE '%{token}%'"),
    )
    .await
        + count(
            &db,
            &format!("SELECT count(*) FROM outbox WHERE payload::text LIKE '%{token}%'"),
        )
        .await;
    assert_eq!(stored_anywhere, 0, "the token itself is never stored");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE topic = 'tenant.admin_invited'"
        )
        .await,
        1
    );
    let audited: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_events WHERE actor = 'operator' AND outcome = 'success' ORDER BY id")
        .fetch_all(&db)
        .await
        .expect("audit");
    for action in [
        "provision.database",
        "provision.migrate",
        "provision.seed",
        "provision.invite",
    ] {
        assert!(
            audited.iter().any(|a| a == action),
            "{action} not audited: {audited:?}"
        );
    }
    db.close().await;

    // The credentials Secret connects, as the tenant role, to its database only.
    let creds = secrets
        .get(status.credentials_secret.as_deref().expect("secret name"))
        .await
        .expect("credentials");
    assert_eq!(
        creds.metadata.owner_references.as_ref().expect("owned")[0].uid,
        uid
    );
    let url = secret_value(&creds, "url");
    let as_tenant = PgPool::connect(&url).await.expect("credentials connect");
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&as_tenant)
        .await
        .expect("whoami");
    assert_eq!(who, names.role.as_str());
    assert_eq!(count(&as_tenant, "SELECT count(*) FROM roles").await, 4);
    as_tenant.close().await;
    let bad = url.replace(&secret_value(&creds, "password"), "wrong-password");
    assert!(
        PgPool::connect(&bad).await.is_err(),
        "a wrong password is refused"
    );
    assert!(
        PgPool::connect(&with_database(&url, &_catalog_db.name))
            .await
            .is_err(),
        "no access to other databases"
    );

    // Catalog and Events.
    let state: String = sqlx::query_scalar("SELECT state FROM catalog.tenants WHERE id = $1::uuid")
        .bind(&uid)
        .fetch_one(&catalog_pool)
        .await
        .expect("catalog row");
    assert_eq!(state, "ready");
    let reasons: Vec<String> = events_for(&ns, "acme")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in [
        "DatabaseCreated",
        "Migrated",
        "Seeded",
        "AdminInvited",
        "Ready",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event in {reasons:?}"
        );
    }

    // Deletion with the default Retain policy keeps the database.
    tenants
        .delete("acme", &DeleteParams::default())
        .await
        .expect("delete");
    wait_deleted(&tenants, "acme", Duration::from_secs(30)).await;
    let admin = admin().await;
    assert!(
        database_exists(&admin, names.database.as_str()).await,
        "Retain keeps the database"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM catalog.tenants WHERE id = $1::uuid")
        .bind(&uid)
        .fetch_one(&catalog_pool)
        .await
        .expect("catalog row");
    assert_eq!(state, "detached");
    operator.stop().await;
    drop_tenant_db(&uid).await;
}

#[tokio::test]
async fn delete_policy_drops_database_role_and_catalog_entry() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let catalog_pool = catalog.pool().clone();
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let tenants: Api<Tenant> = ns.api();
    let t = tenant(
        "doomed",
        json!({"displayName": "Doomed", "adminEmail": "x@doomed.example", "deletionPolicy": "Delete"}),
    );
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "doomed", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let uid = t.metadata.uid.expect("uid");
    let names = TenantNames::for_tenant(Uuid::parse_str(&uid).expect("uid"));
    // A pool holding a connection must not block the drop (WITH (FORCE)).
    let owned: Api<Secret> = ns.api();
    let before = owned
        .list(&ListParams::default().labels("strata.dev/tenant=doomed"))
        .await
        .expect("list secrets")
        .items
        .len();
    assert_eq!(before, 2, "credentials and invitation Secrets");
    let holder = tenant_db(&uid).await;
    sqlx::query("SELECT 1")
        .execute(&holder)
        .await
        .expect("hold a connection");

    tenants
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_deleted(&tenants, "doomed", Duration::from_secs(30)).await;
    let admin = admin().await;
    assert!(
        !database_exists(&admin, names.database.as_str()).await,
        "database dropped"
    );
    assert!(
        !role_exists(&admin, names.role.as_str()).await,
        "login role dropped"
    );
    assert!(
        !role_exists(&admin, names.owner.as_str()).await,
        "owner role dropped"
    );
    assert_eq!(
        count(
            &catalog_pool,
            &format!("SELECT count(*) FROM catalog.tenants WHERE id = '{uid}'")
        )
        .await,
        0
    );
    // The Secrets it owned are garbage-collected by the API server's GC.
    let secrets: Api<Secret> = ns.api();
    let mut left = usize::MAX;
    for _ in 0..60 {
        left = secrets
            .list(&ListParams::default().labels("strata.dev/tenant=doomed"))
            .await
            .expect("list secrets")
            .items
            .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(left, 0, "owned Secrets are deleted with their Tenant");
    operator.stop().await;
}

#[tokio::test]
async fn unreachable_cluster_reports_and_recovers_by_itself() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let secrets: Api<Secret> = ns.api();
    let real = env("STRATA_DATABASE_URL");
    // Port 1 on loopback: nothing listens there.
    let broken = real.replacen(
        &format!(
            ":{}",
            real.split(':')
                .nth(3)
                .and_then(|p| p.split('/').next())
                .unwrap_or("55432")
        ),
        ":1",
        1,
    );
    assert_ne!(broken, real);
    // The platform team declares a cluster with the documented example
    // (examples/cluster-secret.yaml); the harness reads cluster declarations
    // from the test's namespace. First with an address nothing answers on.
    let mut secret: Secret = serde_yaml::from_str(
        &std::fs::read_to_string(strata_tests::repo_root().join("examples/cluster-secret.yaml"))
            .expect("read example"),
    )
    .expect("example is a Secret");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("strata-cluster-analytics")
    );
    let example_url = secret
        .string_data
        .as_mut()
        .and_then(|d| d.get_mut("url"))
        .expect("example has a url");
    assert!(example_url.starts_with("postgres://"), "{example_url}");
    *example_url = broken;
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("cluster secret");
    let tenants: Api<Tenant> = ns.api();
    let t = tenant(
        "remote",
        json!({"displayName": "Remote", "adminEmail": "r@remote.example", "cluster": "analytics"}),
    );
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "remote", Duration::from_secs(30), |s| {
        has_condition(
            s,
            "DatabaseReady",
            ConditionStatus::False,
            Some("ClusterUnreachable"),
        )
    })
    .await;
    let status = t.status.expect("status");
    assert_eq!(
        status.phase,
        Some(TenantPhase::Provisioning),
        "retryable, not failed"
    );
    let ready = strata_api::condition::find(&status.conditions, "Ready").expect("Ready");
    assert!(
        ready.message.contains("retrying in"),
        "backoff in status: {}",
        ready.message
    );
    assert!(has_condition(
        &status,
        "Ready",
        ConditionStatus::False,
        Some("ClusterUnreachable")
    ));
    let warnings: Vec<Event> = events_for(&ns, "remote")
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.reason.as_deref() == Some("ClusterUnreachable")),
        "warning event"
    );

    // The cluster "comes back": the operator recovers on its own backoff.
    secret
        .string_data
        .as_mut()
        .expect("string data")
        .insert("url".to_string(), real);
    secret.metadata.resource_version = secrets
        .get("strata-cluster-analytics")
        .await
        .expect("get")
        .metadata
        .resource_version;
    secrets
        .replace("strata-cluster-analytics", &PostParams::default(), &secret)
        .await
        .expect("fix secret");
    let t = wait_for_status(&tenants, "remote", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let uid = t.metadata.uid.expect("uid");
    operator.stop().await;
    tenants
        .patch(
            "remote",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
    drop_tenant_db(&uid).await;
}

#[tokio::test]
async fn duplicate_name_and_colliding_database_are_refused() {
    let (_catalog_db, catalog) = test_catalog().await;
    let first = TestNamespace::new().await;
    let second = TestNamespace::new().await;
    let op1 = OperatorHarness::start(first.client.clone(), &first.name, catalog.clone()).await;
    let op2 = OperatorHarness::start(second.client.clone(), &second.name, catalog.clone()).await;
    let spec = json!({"displayName": "Twin", "adminEmail": "t@twin.example"});
    let api1: Api<Tenant> = first.api();
    let api2: Api<Tenant> = second.api();
    api1.create(&PostParams::default(), &tenant("twin", spec.clone()))
        .await
        .expect("create first");
    let t1 = wait_for_status(&api1, "twin", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    api2.create(&PostParams::default(), &tenant("twin", spec.clone()))
        .await
        .expect("create second");
    let t2 = wait_for_status(&api2, "twin", Duration::from_secs(30), |s| {
        s.phase == Some(TenantPhase::Failed)
    })
    .await;
    let status = t2.status.expect("status");
    assert!(
        has_condition(
            &status,
            "DatabaseReady",
            ConditionStatus::False,
            Some("DuplicateTenantName")
        ),
        "{status:?}"
    );
    let message = &strata_api::condition::find(&status.conditions, "DatabaseReady")
        .expect("condition")
        .message;
    assert!(
        message.contains("twin") && message.contains(&first.name),
        "{message}"
    );

    // A database that exists under the derived name but is not ours.
    let squatted = tenant(
        "squatted",
        json!({"displayName": "Squatted", "adminEmail": "s@sq.example", "suspend": true}),
    );
    api2.create(&PostParams::default(), &squatted)
        .await
        .expect("create suspended");
    let t3 = wait_for_status(&api2, "squatted", Duration::from_secs(30), |s| {
        s.phase == Some(TenantPhase::Suspended)
    })
    .await;
    let uid3 = t3.metadata.uid.clone().expect("uid");
    let names = TenantNames::for_tenant(Uuid::parse_str(&uid3).expect("uid"));
    let admin = admin().await;
    sqlx::query(&format!("CREATE DATABASE {}", names.database.quoted()))
        .execute(&admin)
        .await
        .expect("squat");
    api2.patch(
        "squatted",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    let t3 = wait_for_status(&api2, "squatted", Duration::from_secs(30), |s| {
        has_condition(
            s,
            "DatabaseReady",
            ConditionStatus::False,
            Some("DatabaseConflict"),
        )
    })
    .await;
    assert_eq!(t3.status.expect("status").phase, Some(TenantPhase::Failed));
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(names.database.as_str())
    .fetch_one(&admin)
    .await
    .expect("still there");
    assert_ne!(
        owner,
        names.role.as_str(),
        "a foreign database is never adopted"
    );

    op1.stop().await;
    op2.stop().await;
    for (api, name) in [(&api1, "twin"), (&api2, "twin"), (&api2, "squatted")] {
        let _ = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    sqlx::query(&format!(
        "DROP DATABASE {} WITH (FORCE)",
        names.database.quoted()
    ))
    .execute(&admin)
    .await
    .expect("unsquat");
    drop_tenant_db(t1.metadata.uid.as_deref().expect("uid")).await;
    drop_tenant_db(&uid3).await;
}

#[tokio::test]
async fn suspend_stops_reconciliation_and_marks_the_tenant() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let catalog_pool = catalog.pool().clone();
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let tenants: Api<Tenant> = ns.api();
    tenants
        .create(
            &PostParams::default(),
            &tenant(
                "sleepy",
                json!({"displayName": "Sleepy", "adminEmail": "z@sleepy.example"}),
            ),
        )
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "sleepy", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let uid = t.metadata.uid.expect("uid");
    tenants
        .patch(
            "sleepy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend");
    let t = wait_for_status(&tenants, "sleepy", Duration::from_secs(30), |s| {
        s.phase == Some(TenantPhase::Suspended)
    })
    .await;
    let status = t.status.expect("status");
    assert!(has_condition(
        &status,
        "Ready",
        ConditionStatus::False,
        Some("Suspended")
    ));
    assert_eq!(status.observed_generation, t.metadata.generation);
    let state: String = sqlx::query_scalar("SELECT state FROM catalog.tenants WHERE id = $1::uuid")
        .bind(&uid)
        .fetch_one(&catalog_pool)
        .await
        .expect("row");
    assert_eq!(state, "suspended");
    operator.stop().await;
    tenants
        .patch(
            "sleepy",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
    drop_tenant_db(&uid).await;
}

#[tokio::test]
async fn rotation_annotation_replaces_the_password_everywhere() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let tenants: Api<Tenant> = ns.api();
    let secrets: Api<Secret> = ns.api();
    tenants
        .create(
            &PostParams::default(),
            &tenant(
                "rotor",
                json!({"displayName": "Rotor", "adminEmail": "r@rotor.example"}),
            ),
        )
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "rotor", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let uid = t.metadata.uid.expect("uid");
    let old_url = secret_value(&secrets.get("rotor-database").await.expect("creds"), "url");
    PgPool::connect(&old_url)
        .await
        .expect("old password works")
        .close()
        .await;

    // An annotation change is not a spec change: nudge the generation too,
    // the way `kubectl annotate` + any spec edit would; the controller also
    // picks it up on its resync.
    tenants
        .patch(
            "rotor",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"strata.dev/rotate-credentials": "2026-11-28T1"}},
                "spec": {"displayName": "Rotor (rotated)"},
            })),
        )
        .await
        .expect("annotate");
    let t = wait_for_status(&tenants, "rotor", READY_TIMEOUT, |s| {
        s.credentials_rotation.as_deref() == Some("2026-11-28T1")
            && s.phase == Some(TenantPhase::Ready)
    })
    .await;
    assert_eq!(
        t.status.expect("status").observed_generation,
        t.metadata.generation
    );
    let creds = secrets.get("rotor-database").await.expect("creds");
    let new_url = secret_value(&creds, "url");
    assert_ne!(new_url, old_url, "the Secret holds a new password");
    // The Secret says which rotation its password came from, so a reconcile
    // that reads a stale status does not rotate a second time.
    assert_eq!(secret_value(&creds, "rotation"), "2026-11-28T1");
    let err = PgPool::connect(&old_url)
        .await
        .expect_err("the old password stops working");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    let as_tenant = PgPool::connect(&new_url).await.expect("new password works");
    let rotated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'credentials.rotated'",
    )
    .fetch_one(&as_tenant)
    .await
    .expect("audit");
    assert_eq!(rotated, 1, "the rotation is audited once");
    as_tenant.close().await;
    let reasons: Vec<String> = events_for(&ns, "rotor")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "CredentialsRotated"),
        "{reasons:?}"
    );

    // The same value again rotates nothing.
    tenants
        .patch(
            "rotor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"displayName": "Rotor again"}})),
        )
        .await
        .expect("patch");
    wait_for_status(&tenants, "rotor", READY_TIMEOUT, |s| {
        s.observed_generation == Some(3) && s.phase == Some(TenantPhase::Ready)
    })
    .await;
    assert_eq!(
        secret_value(&secrets.get("rotor-database").await.expect("creds"), "url"),
        new_url
    );
    operator.stop().await;
    tenants
        .patch(
            "rotor",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
    drop_tenant_db(&uid).await;
}
