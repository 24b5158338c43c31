//! Issue 16: each defect found in review, reproduced as the hostile tenant or
//! the fault did it, and shown to fail safely now. The leader-election case
//! lives in `leader.rs`; name validation at admission in `crds.rs`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use strata_api::{ConditionStatus, Tenant, TenantPhase, TenantSpec};
use strata_db::TenantState;
use strata_operator::cluster::SessionLimits;
use strata_operator::controller;
use strata_operator::host::{LocalHost, TenantHost};
use strata_operator::placement::TenantNames;
use strata_operator::provision::{self, Provisioned, TenantInput};
use strata_tests::operator_support::{
    HarnessOptions, OperatorHarness, default_clusters, drop_tenant_storage, has_condition,
    provision_local, test_catalog, test_context, wait_deleted, wait_for_status,
};
use strata_tests::{TestNamespace, admin_client, env, unique, with_database};
use uuid::Uuid;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn spec(value: serde_json::Value) -> TenantSpec {
    serde_json::from_value(value).expect("spec")
}

fn input(name: &str, admin_email: &str) -> TenantInput {
    TenantInput {
        id: Uuid::new_v4(),
        name: name.into(),
        namespace: "hardening".into(),
        spec: spec(json!({"displayName": "Hardening", "adminEmail": admin_email})),
        rotation: Default::default(),
    }
}

/// Provisions `t` offline-style (Secrets as files) on the stack's cluster.
async fn provision(
    catalog: &strata_db::Catalog,
    host: &LocalHost,
    t: &TenantInput,
) -> Result<Provisioned, provision::Failure> {
    provision_local(catalog, host, t).await
}

fn local_host() -> LocalHost {
    LocalHost {
        dir: std::env::temp_dir().join(unique("strata-hardening-")),
    }
}

/// A pool logged in with the tenant's own credentials (its Secret's `url`).
async fn as_tenant(host: &dyn TenantHost, name: &str) -> PgPool {
    let secret = host
        .read_secret(&provision::credentials_secret_name(name))
        .await
        .expect("read credentials")
        .expect("credentials exist");
    PgPoolOptions::new()
        .max_connections(2)
        .connect(secret.get("url").expect("url"))
        .await
        .expect("tenant credentials connect")
}

async fn admin_on(database: &str) -> PgPool {
    PgPool::connect(&with_database(&env("STRATA_DATABASE_URL"), database))
        .await
        .expect("admin connection")
}

fn sqlstate(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()).unwrap_or_default(),
        other => format!("not a database error: {other}"),
    }
}

/// Defect 1: tenant-authored SQL must never run as the cluster superuser (or
/// any role but the tenant's). The tenant tries each route the review used
/// (trigger, RLS policy, view, a function shadowing a name on the search
/// path, a temporary function); each is refused because the tenant can create
/// nothing. Then a hypothetical planted trigger shows that even code that did
/// exist would run, in operator sessions, as the tenant's owner role — whose
/// `RESET ROLE` leads nowhere above it.
#[tokio::test]
async fn tenant_authored_code_never_runs_with_more_privilege() {
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let t = input(&unique("pwn-"), "owner@pwn.example");
    provision(&catalog, &host, &t).await.expect("provision");
    let names = TenantNames::for_tenant(t.id);
    let tenant = as_tenant(&host, &t.name).await;
    let admin = admin_on(names.database.as_str()).await;

    // Evidence table anyone may write to, so a successful attack would show.
    sqlx::query(
        "CREATE TABLE public.pwn_evidence (via text, current_role_name text, session_role_name text)",
    )
    .execute(&admin)
    .await
    .expect("evidence table");
    sqlx::query("GRANT SELECT, INSERT ON public.pwn_evidence TO PUBLIC")
        .execute(&admin)
        .await
        .expect("grant evidence");

    let attempts = [
        (
            "function",
            "CREATE FUNCTION public.pwn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RESET ROLE; INSERT INTO public.pwn_evidence VALUES ('trigger', current_user, session_user); \
             RETURN NULL; END $$",
        ),
        (
            "trigger",
            "CREATE TRIGGER pwn BEFORE INSERT ON public.audit_events FOR EACH STATEMENT EXECUTE FUNCTION public.pwn()",
        ),
        (
            "rls policy",
            "ALTER TABLE public.audit_events ENABLE ROW LEVEL SECURITY",
        ),
        (
            "rls policy",
            "CREATE POLICY pwn ON public.audit_events USING (true)",
        ),
        (
            "view",
            "CREATE VIEW public.seed_history_v AS SELECT * FROM public.seed_history",
        ),
        (
            "search-path shadow",
            "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ \
             INSERT INTO public.pwn_evidence VALUES ('shadow', current_user, session_user) RETURNING 'x' $$",
        ),
        (
            "temporary function",
            "CREATE FUNCTION pg_temp.pwn() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        ),
        ("new schema", "CREATE SCHEMA pwn"),
        ("table", "CREATE TABLE public.pwn (x int)"),
        (
            "ownership",
            "ALTER TABLE public.documents OWNER TO CURRENT_USER",
        ),
    ];
    for (via, sql) in attempts {
        let err = sqlx::query(sql)
            .execute(&tenant)
            .await
            .expect_err(&format!("{via}: the tenant must not be able to run {sql}"));
        // 42501 insufficient_privilege; 42883/42P01 when a prerequisite was refused.
        assert!(
            ["42501", "42883", "42P01"].contains(&sqlstate(&err).as_str()),
            "{via}: unexpected error {err}"
        );
    }
    // The tenant still has its data rights.
    sqlx::query(
        "INSERT INTO public.config (key, value, source) VALUES ('pwn.ok', 'true', 'tenant')",
    )
    .execute(&tenant)
    .await
    .expect("the tenant writes its own data");
    let err = sqlx::query("DELETE FROM public.audit_events")
        .execute(&tenant)
        .await
        .expect_err("the audit trail is read-only for the tenant");
    assert_eq!(sqlstate(&err), "42501");
    // Storage and webhook bookkeeping too: usage counters, blob locations
    // and endpoints change only through the data plane's checks.
    for (table, sql) in [
        ("bucket_usage", "UPDATE public.bucket_usage SET bytes = 0"),
        ("objects", "UPDATE public.objects SET blobs = '[]'"),
        ("reservations", "DELETE FROM public.reservations"),
        ("signing_keys", "DELETE FROM public.signing_keys"),
        ("webhook_endpoints", "DELETE FROM public.webhook_endpoints"),
    ] {
        let err = sqlx::query(sql)
            .execute(&tenant)
            .await
            .expect_err(&format!("{table} is read-only for the tenant"));
        assert_eq!(sqlstate(&err), "42501", "{table}: {err}");
    }
    for table in strata_operator::placement::TENANT_READ_ONLY {
        sqlx::query(&format!("SELECT count(*) FROM public.{table}"))
            .execute(&tenant)
            .await
            .unwrap_or_else(|e| panic!("the tenant reads {table}: {e}"));
    }

    // Defence in depth: plant the trigger as the superuser (what the tenant
    // could do under the old model) and let the operator run again.
    for sql in [
        "CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RESET ROLE; INSERT INTO public.pwn_evidence VALUES ('planted', current_user, session_user); \
         RETURN NULL; END $$",
        "CREATE TRIGGER planted BEFORE INSERT ON public.audit_events FOR EACH STATEMENT EXECUTE FUNCTION public.planted()",
    ] {
        sqlx::query(sql).execute(&admin).await.expect("plant");
    }
    // A changed spec makes the operator write (and audit) again.
    let mut changed = t.clone();
    changed.spec.admin_email = "new-owner@pwn.example".into();
    provision(&catalog, &host, &changed)
        .await
        .expect("second run");
    let evidence: Vec<(String, String, String)> =
        sqlx::query_as("SELECT via, current_role_name, session_role_name FROM public.pwn_evidence")
            .fetch_all(&admin)
            .await
            .expect("evidence");
    assert!(
        !evidence.is_empty(),
        "the planted trigger fired during the second run"
    );
    for (via, current, session) in &evidence {
        assert_eq!(
            (current.as_str(), session.as_str()),
            (names.owner.as_str(), names.owner.as_str()),
            "{via}: operator sessions in a tenant database are the owner role, nothing more"
        );
    }
    let superuser: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = $1",
    )
    .bind(names.owner.as_str())
    .fetch_one(&admin)
    .await
    .expect("owner role");
    assert!(!superuser, "the owner role has no special rights");
    tenant.close().await;
    admin.close().await;
    drop_tenant_storage(t.id).await;
}

/// sqlx's migration advisory-lock key for a database (sqlx-postgres
/// `generate_lock_id`): a tenant can compute and take it.
fn sqlx_migration_lock(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// Defect 2: tenants holding locks (the migration advisory lock, exclusive
/// table locks) for minutes occupy every worker only up to the lock timeout;
/// a new tenant still becomes Ready promptly.
#[tokio::test]
async fn lock_holding_tenants_do_not_stall_others() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let lock_timeout = Duration::from_secs(2);
    let options = HarnessOptions {
        limits: SessionLimits {
            lock_timeout,
            ..SessionLimits::default()
        },
        concurrency: 4,
        ..HarnessOptions::default()
    };
    let operator =
        OperatorHarness::start_with(ns.client.clone(), &ns.name, catalog.clone(), options).await;
    let tenants: Api<Tenant> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let hostile: Vec<String> = (0..4).map(|i| format!("hostile-{i}")).collect();
    for name in &hostile {
        let t = Tenant::new(
            name,
            spec(json!({"displayName": name, "adminEmail": format!("a@{name}.example")})),
        );
        tenants
            .create(&PostParams::default(), &t)
            .await
            .expect("create");
    }
    // Baseline in the same run: how long a tenant takes to become Ready
    // here when nobody holds locks.
    let started = Instant::now();
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(
                "baseline",
                spec(json!({"displayName": "Baseline", "adminEmail": "b@baseline.example"})),
            ),
        )
        .await
        .expect("create baseline");
    let baseline_tenant = wait_for_status(&tenants, "baseline", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let baseline = started.elapsed();
    let mut holds = Vec::new();
    let mut uids = vec![baseline_tenant.metadata.uid.expect("uid")];
    for name in &hostile {
        let t = wait_for_status(&tenants, name, READY_TIMEOUT, |s| {
            s.phase == Some(TenantPhase::Ready)
        })
        .await;
        let uid = t.metadata.uid.expect("uid");
        let names = TenantNames::for_tenant(Uuid::parse_str(&uid).expect("uid"));
        uids.push(uid);
        let creds = secrets
            .get(&format!("{name}-database"))
            .await
            .expect("credentials");
        let url = String::from_utf8(creds.data.expect("data")["url"].0.clone()).expect("utf-8");
        // One session per hostile tenant holding locks for far longer than
        // the test: what the review did with LOCK TABLE + pg_sleep(200).
        let mut conn = sqlx::PgConnection::connect_with(&url.parse().expect("url"))
            .await
            .expect("tenant connects");
        sqlx::query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(sqlx_migration_lock(names.database.as_str()))
            .execute(&mut conn)
            .await
            .expect("advisory lock");
        for table in ["roles", "config", "collections"] {
            sqlx::query(&format!(
                "LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE"
            ))
            .execute(&mut conn)
            .await
            .expect("lock");
        }
        holds.push(conn);
    }
    // Every hostile tenant is reconciled again (a spec change), taking all 4 workers.
    for name in &hostile {
        tenants
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"displayName": "changed"}})),
            )
            .await
            .expect("patch");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(
                "victim",
                spec(json!({"displayName": "Victim", "adminEmail": "v@victim.example"})),
            ),
        )
        .await
        .expect("create victim");
    let victim = wait_for_status(&tenants, "victim", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let waited = started.elapsed();
    // The hostile reconciles fail on the lock timeout and are retried later.
    let first = wait_for_status(&tenants, "hostile-0", Duration::from_secs(30), |s| {
        s.observed_generation == Some(2) && s.phase == Some(TenantPhase::Provisioning)
    })
    .await;
    let ready =
        strata_api::condition::find(&first.status.as_ref().expect("status").conditions, "Ready")
            .expect("Ready")
            .message
            .clone();
    assert!(ready.contains("lock timeout"), "{ready}");
    // The locks are held for the whole test; without timeouts the victim
    // would wait for them. With them, it waits at most for one lock timeout
    // (a worker frees up when its hostile reconcile gives up), plus slack for
    // this shared 2-core machine.
    let bound = baseline + lock_timeout + Duration::from_secs(5);
    println!(
        "victim Ready after {waited:?} with 4 lock-holding tenants; baseline {baseline:?}, lock timeout {lock_timeout:?}"
    );
    assert!(
        waited <= bound,
        "a tenant behind lock holders became Ready after {waited:?} (baseline {baseline:?}, bound {bound:?})"
    );
    drop(holds);
    operator.stop().await;
    for name in hostile
        .iter()
        .chain(["victim".to_string(), "baseline".to_string()].iter())
    {
        let _ = tenants
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    for uid in uids
        .iter()
        .chain([victim.metadata.uid.expect("uid")].iter())
    {
        drop_tenant_storage(Uuid::parse_str(uid).expect("uid")).await;
    }
}

/// Defect 4: deleting a namespace whose Tenant uses `Delete` and a named
/// cluster completes: clusters are declared in the operator's namespace,
/// which the tenant's namespace deletion cannot take away.
#[tokio::test]
async fn namespace_deletion_with_delete_policy_completes() {
    let operator_ns = TestNamespace::new().await;
    let client = admin_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let tenant_ns = unique("test-");
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(tenant_ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("tenant namespace");
    // The platform team declares cluster "main" in the operator's namespace.
    let cluster = Secret {
        metadata: ObjectMeta {
            name: Some("strata-cluster-main".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "url".to_string(),
            env("STRATA_DATABASE_URL"),
        )])),
        ..Default::default()
    };
    operator_ns
        .api::<Secret>()
        .create(&PostParams::default(), &cluster)
        .await
        .expect("cluster secret");
    let (_catalog_db, catalog) = test_catalog().await;
    let catalog_pool = catalog.pool().clone();
    // The controller watches the tenant namespace; clusters come from the
    // operator namespace.
    let ctx = test_context(
        client.clone(),
        &operator_ns.name,
        catalog,
        HarnessOptions::default(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let watch_ns = tenant_ns.clone();
    let shutdown = stop.clone().cancelled_owned();
    let task =
        tokio::spawn(async move { controller::run(ctx, Some(&watch_ns), 4, shutdown).await });

    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &tenant_ns);
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(
                "leaving",
                spec(
                    json!({"displayName": "Leaving", "adminEmail": "l@leaving.example",
                            "cluster": "main", "deletionPolicy": "Delete"}),
                ),
            ),
        )
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "leaving", READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await;
    let uid = t.metadata.uid.expect("uid");
    let names = TenantNames::for_tenant(Uuid::parse_str(&uid).expect("uid"));
    let cluster_name: String =
        sqlx::query_scalar("SELECT cluster FROM catalog.tenants WHERE id = $1::uuid")
            .bind(&uid)
            .fetch_one(&catalog_pool)
            .await
            .expect("catalog row");
    assert_eq!(
        cluster_name, "main",
        "the catalog records the cluster's name"
    );

    namespaces
        .delete(&tenant_ns, &DeleteParams::background())
        .await
        .expect("delete namespace");
    let deadline = Instant::now() + Duration::from_secs(90);
    while namespaces.get_opt(&tenant_ns).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "namespace {tenant_ns} is still terminating: {:?}",
            tenants
                .get_opt("leaving")
                .await
                .ok()
                .flatten()
                .and_then(|t| t.status)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admin = admin_on("postgres").await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(names.database.as_str())
            .fetch_one(&admin)
            .await
            .expect("query");
    assert!(!exists, "the database is dropped with the namespace");
    stop.cancel();
    let _ = task.await;
}

/// Defect 5: a tenant that creates a large object in `postgres` (reachable
/// through PUBLIC's CONNECT) no longer makes its deletion fail forever.
#[tokio::test]
async fn large_object_in_another_database_does_not_block_deletion() {
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let t = input(&unique("lo-"), "owner@lo.example");
    provision(&catalog, &host, &t).await.expect("provision");
    let names = TenantNames::for_tenant(t.id);
    let creds = host
        .read_secret(&provision::credentials_secret_name(&t.name))
        .await
        .expect("read")
        .expect("credentials");
    let elsewhere = PgPool::connect(&with_database(creds.get("url").expect("url"), "postgres"))
        .await
        .expect("the tenant reaches postgres");
    let oid: i64 = sqlx::query_scalar("SELECT lo_create(0)::bigint")
        .fetch_one(&elsewhere)
        .await
        .expect("lo_create");
    elsewhere.close().await;

    let cluster = provision::resolve_cluster(&default_clusters(), "default")
        .await
        .expect("cluster");
    provision::destroy(&catalog, &cluster, t.id)
        .await
        .expect("deletion completes");
    let admin = admin_on("postgres").await;
    let left: (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), \
                EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = $2::oid)",
    )
    .bind(names.role.as_str())
    .bind(oid)
    .fetch_one(&admin)
    .await
    .expect("query");
    assert_eq!(left, (false, false), "role and its large object are gone");
    assert_eq!(catalog.state(t.id).await.expect("state"), None);
}

async fn open_invitations(db: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT email, expires_at <= now() FROM public.invitations \
         WHERE accepted_at IS NULL AND revoked_at IS NULL ORDER BY email",
    )
    .fetch_all(db)
    .await
    .expect("invitations")
}

/// Defect 6: a new adminEmail revokes the previous owner invitation; an
/// expired invitation is reissued with a new token.
#[tokio::test]
async fn invitations_follow_admin_email_and_expiry() {
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let mut t = input(&unique("inv-"), "first@inv.example");
    provision(&catalog, &host, &t).await.expect("provision");
    let names = TenantNames::for_tenant(t.id);
    let db = admin_on(names.database.as_str()).await;
    assert_eq!(
        open_invitations(&db).await,
        [("first@inv.example".to_string(), false)]
    );

    t.spec.admin_email = "second@inv.example".into();
    provision(&catalog, &host, &t).await.expect("email change");
    assert_eq!(
        open_invitations(&db).await,
        [("second@inv.example".to_string(), false)],
        "only the new address's invitation is open"
    );
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.audit_events WHERE action = 'invitation.revoked'",
    )
    .fetch_one(&db)
    .await
    .expect("audit");
    assert_eq!(revoked, 1, "the revocation is audited");

    // Expire the open invitation; the next run reissues it with a new token.
    let secret_name = provision::invite_secret_name(&t.name);
    let old_token = host
        .read_secret(&secret_name)
        .await
        .expect("read")
        .expect("invite secret")
        .get("token")
        .expect("token")
        .to_string();
    sqlx::query("UPDATE public.invitations SET expires_at = now() - interval '1 hour' WHERE revoked_at IS NULL AND accepted_at IS NULL")
        .execute(&db)
        .await
        .expect("expire");
    provision(&catalog, &host, &t).await.expect("reissue");
    let new_token = host
        .read_secret(&secret_name)
        .await
        .expect("read")
        .expect("invite secret")
        .get("token")
        .expect("token")
        .to_string();
    assert_ne!(new_token, old_token, "a new token replaces the expired one");
    assert_eq!(
        open_invitations(&db).await,
        [("second@inv.example".to_string(), false)],
        "one open, unexpired invitation"
    );
    db.close().await;
    drop_tenant_storage(t.id).await;
}

/// Defect 7: an existing Secret the Tenant did not create is never taken
/// over (SecretConflict, not retried; the Secret is untouched and survives
/// the Tenant's deletion); and credential URLs are percent-encoded.
#[tokio::test]
async fn foreign_secret_is_never_adopted() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let secrets: Api<Secret> = ns.api();
    let victim = Secret {
        metadata: ObjectMeta {
            name: Some("victim-database".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "password".to_string(),
            "the victim's own".to_string(),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &victim)
        .await
        .expect("pre-existing secret");
    let operator = OperatorHarness::start(ns.client.clone(), &ns.name, catalog).await;
    let tenants: Api<Tenant> = ns.api();
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(
                "victim",
                spec(json!({"displayName": "Victim", "adminEmail": "v@victim.example"})),
            ),
        )
        .await
        .expect("create");
    let t = wait_for_status(&tenants, "victim", Duration::from_secs(30), |s| {
        has_condition(
            s,
            "DatabaseReady",
            ConditionStatus::False,
            Some("SecretConflict"),
        )
    })
    .await;
    assert_eq!(
        t.status.as_ref().and_then(|s| s.phase),
        Some(TenantPhase::Failed),
        "a conflict needs a human: not retried as temporary"
    );
    let after = secrets.get("victim-database").await.expect("still there");
    assert!(
        after.metadata.owner_references.is_none(),
        "never given an owner"
    );
    assert_eq!(
        after.data.as_ref().expect("data")["password"].0,
        b"the victim's own"
    );
    tenants
        .delete("victim", &DeleteParams::default())
        .await
        .expect("delete");
    wait_deleted(&tenants, "victim", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        secrets
            .get_opt("victim-database")
            .await
            .expect("get")
            .is_some(),
        "the foreign Secret survives the Tenant"
    );
    operator.stop().await;
    drop_tenant_storage(Uuid::parse_str(&t.metadata.uid.expect("uid")).expect("uid")).await;

    // URL parts are percent-encoded: a password with @ / # ? : round-trips.
    let url = provision::postgres_url("u", "p@ss/w#rd?x:y", "127.0.0.1", 5432, "db");
    let parsed: sqlx::postgres::PgConnectOptions = url.parse().expect("parses");
    assert_eq!(parsed.get_host(), "127.0.0.1");
    assert_eq!(parsed.get_database(), Some("db"));
    assert!(!url.contains("p@ss"), "{url}");
}

/// Defect 8: a name the catalog refuses is a permanent failure, reported as
/// such and not retried (names are refused at admission too, see crds.rs).
#[tokio::test]
async fn names_the_catalog_refuses_fail_permanently() {
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let t = input("has.dot", "d@dot.example");
    let failure = provision(&catalog, &host, &t)
        .await
        .expect_err("a dotted name cannot be provisioned");
    assert_eq!(failure.reason, "InvalidTenantName", "{failure}");
    assert!(!failure.retryable, "permanent, not retried");
    assert_eq!(catalog.state(t.id).await.expect("state"), None);
}

/// The catalog converges with reality: entries whose Tenant is gone get
/// their recorded deletion policy applied by the sweeper.
#[tokio::test]
async fn sweeper_releases_entries_of_vanished_tenants() {
    let ns = TestNamespace::new().await;
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let mut keep = input(&unique("keep-"), "k@keep.example");
    keep.namespace = ns.name.clone();
    let mut gone = input(&unique("gone-"), "g@gone.example");
    gone.namespace = ns.name.clone();
    gone.spec.deletion_policy = strata_api::DeletionPolicy::Delete;
    provision(&catalog, &host, &keep).await.expect("keep");
    provision(&catalog, &host, &gone).await.expect("gone");
    // A live tenant (by uid) that the sweeper must leave alone.
    let mut live = input(&unique("live-"), "l@live.example");
    live.namespace = ns.name.clone();
    provision(&catalog, &host, &live).await.expect("live");

    let ctx = test_context(
        ns.client.clone(),
        &ns.name,
        catalog.clone(),
        HarnessOptions::default(),
    );
    let existing: HashSet<Uuid> = [live.id].into();
    let report = controller::sweep_catalog(&ctx, &existing, Some(&ns.name), Duration::ZERO)
        .await
        .expect("sweep");
    assert_eq!(report.detached, [keep.id]);
    assert_eq!(report.deleted, [gone.id]);
    assert!(report.failed.is_empty());
    assert_eq!(
        catalog.state(keep.id).await.expect("state"),
        Some(TenantState::Detached)
    );
    assert_eq!(catalog.state(gone.id).await.expect("state"), None);
    assert_eq!(
        catalog.state(live.id).await.expect("state"),
        Some(TenantState::Ready)
    );
    let admin = admin_on("postgres").await;
    let gone_db: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(TenantNames::for_tenant(gone.id).database.as_str())
            .fetch_one(&admin)
            .await
            .expect("query");
    assert!(!gone_db, "Delete policy dropped the database");
    // Entries of other namespaces are out of this operator's scope.
    let report =
        controller::sweep_catalog(&ctx, &HashSet::new(), Some("elsewhere"), Duration::ZERO)
            .await
            .expect("sweep");
    assert_eq!(report, controller::SweepReport::default());
    for id in [keep.id, live.id] {
        drop_tenant_storage(id).await;
    }
}

/// `--dataplane-role` (the chart's `database.dataplaneRole`) names the data
/// plane's role on the default cluster: a tenant provisioned with another
/// name grants that role its rights — SET ROLE to the owner, the data
/// tables — and the default `strata_dataplane` gets nothing there.
#[tokio::test]
async fn the_data_planes_role_name_is_configurable() {
    let (_catalog_db, catalog) = test_catalog().await;
    let host = local_host();
    let role = unique("strata_dp_").replace('-', "_");
    let clusters = default_clusters().with_default_dataplane_role(role.clone());
    let cluster = provision::resolve_cluster(&clusters, "default")
        .await
        .expect("cluster");
    let t = input(&unique("dprole-"), "owner@dprole.example");
    let settings = strata_tests::operator_support::settings(None);
    provision::Provisioner {
        settings: &settings,
        catalog: &catalog,
        cluster: &cluster,
        host: &host,
    }
    .provision(&t)
    .await
    .expect("provision");
    let names = TenantNames::for_tenant(t.id);
    let admin = admin_on(names.database.as_str()).await;
    let rights = |who: &str| {
        let admin = admin.clone();
        let (who, owner) = (who.to_string(), names.owner.as_str().to_string());
        async move {
            sqlx::query_as::<_, (bool, bool)>(
                "SELECT pg_has_role($1, $2, 'SET'),
                        has_table_privilege($1, 'public.outbox', 'INSERT')",
            )
            .bind(&who)
            .bind(&owner)
            .fetch_one(&admin)
            .await
            .expect("rights")
        }
    };
    assert_eq!(rights(&role).await, (true, true), "the configured role");
    assert_eq!(
        rights("strata_dataplane").await,
        (false, false),
        "the default name gets nothing in this tenant"
    );
    admin.close().await;
    drop_tenant_storage(t.id).await;
    if let Ok(server) = PgPool::connect(&env("STRATA_DATABASE_URL")).await {
        let _ = sqlx::query(&format!("DROP OWNED BY \"{role}\""))
            .execute(&server)
            .await;
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\""))
            .execute(&server)
            .await;
    }
}
