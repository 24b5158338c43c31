//! The Citus path of provisioning, against a real Citus coordinator given by
//! `STRATA_CITUS_URL` (an admin URL of a coordinator with at least one worker).
//! Citus is not in any package registry, so this test is ignored by default;
//! run it with `STRATA_CITUS_URL=... cargo test -p strata-tests --test citus -- --ignored`.
//!
//! The cluster it expects is the production setup (docs/clusters.md): every
//! node authenticates every connection with `scram-sha-256`, no `trust` rule
//! anywhere (checked below), the admin's node-to-node password given to the
//! servers (a password file in the servers' environment, and
//! `citus.local_hostname` set to the address that file names), Citus and
//! pgvector installed on every node, the workers registered on the
//! coordinator's `postgres` database. The operator supplies node
//! authentication for every role it creates, per tenant database.

use sqlx::PgPool;
use strata_api::TenantSpec;
use strata_operator::host::{LocalHost, TenantHost};
use strata_operator::placement::TenantNames;
use strata_operator::provision::{self, Provisioner, TenantInput};
use strata_tests::operator_support::{clusters_at, settings, test_catalog};
use strata_tests::{unique, with_database};
use uuid::Uuid;

#[tokio::test]
#[ignore = "needs STRATA_CITUS_URL: a Citus coordinator with a worker"]
async fn provisioning_on_citus_distributes_and_colocates_tenant_tables() {
    let citus_url = std::env::var("STRATA_CITUS_URL").expect("STRATA_CITUS_URL");
    let (_catalog_db, catalog) = test_catalog().await;
    let settings = settings(None);
    let spec: TenantSpec = serde_json::from_value(
        serde_json::json!({"displayName": "Citus", "adminEmail": "c@citus.example"}),
    )
    .expect("spec");
    let t = TenantInput {
        id: Uuid::new_v4(),
        name: unique("citus-"),
        namespace: "citus".into(),
        spec,
        rotation: Default::default(),
    };
    let host = LocalHost {
        dir: std::env::temp_dir().join(&t.name),
    };
    let cluster = provision::resolve_cluster(&clusters_at(&citus_url), "default")
        .await
        .expect("cluster");
    // No trust rule on any worker: nodes must authenticate with passwords.
    let admin = PgPool::connect(&citus_url).await.expect("admin");
    let workers: Vec<(String, i32)> = sqlx::query_as(
        "SELECT nodename::text, nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary'",
    )
    .fetch_all(&admin)
    .await
    .expect("workers");
    assert!(!workers.is_empty(), "the coordinator has workers");
    for (host, port) in &workers {
        let options: sqlx::postgres::PgConnectOptions = citus_url.parse().expect("url");
        let worker = PgPool::connect_with(options.host(host).port(*port as u16))
            .await
            .expect("worker");
        let trust: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'trust'",
        )
        .fetch_one(&worker)
        .await
        .expect("pg_hba_file_rules");
        assert_eq!(trust, 0, "worker {host}:{port} has a trust rule");
        worker.close().await;
    }
    let provisioner = Provisioner {
        settings: &settings,
        catalog: &catalog,
        cluster: &cluster,
        host: &host,
    };
    provisioner
        .provision(&t)
        .await
        .unwrap_or_else(|f| panic!("first run: {f}"));
    // Idempotent on Citus too.
    provisioner
        .provision(&t)
        .await
        .unwrap_or_else(|f| panic!("second run: {f}"));

    let names = TenantNames::for_tenant(t.id);
    let db = PgPool::connect(&with_database(&citus_url, names.database.as_str()))
        .await
        .expect("tenant db");
    let tables: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT logicalrelid::text, partmethod::text, colocationid FROM pg_dist_partition ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .expect("pg_dist_partition");
    let method = |name: &str| {
        tables
            .iter()
            .find(|(t, _, _)| t == name)
            .map(|(_, m, c)| (m.clone(), *c))
    };
    let (docs_method, docs_coloc) = method("documents").expect("documents is distributed");
    let (emb_method, emb_coloc) = method("embeddings").expect("embeddings is distributed");
    assert_eq!(docs_method, "h");
    assert_eq!(emb_method, "h");
    assert_eq!(
        docs_coloc, emb_coloc,
        "documents and embeddings are colocated"
    );
    // Object metadata is distributed by bucket, everything a write to one
    // bucket touches on the same shard group.
    let (objects_method, objects_coloc) = method("objects").expect("objects is distributed");
    assert_eq!(objects_method, "h");
    for table in [
        "uploads",
        "upload_parts",
        "reservations",
        "blob_intents",
        "bucket_usage",
        "variants",
    ] {
        assert_eq!(
            method(table),
            Some(("h".to_string(), objects_coloc)),
            "{table} is distributed by bucket and colocated with objects"
        );
    }
    for reference in ["roles", "config", "collections", "signing_keys"] {
        assert_eq!(
            method(reference).map(|m| m.0).as_deref(),
            Some("n"),
            "{reference} is a reference table"
        );
    }
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_dist_node WHERE groupid <> 0")
        .fetch_one(&db)
        .await
        .expect("nodes");
    assert!(workers >= 1, "workers registered in the tenant database");
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM roles")
        .fetch_one(&db)
        .await
        .expect("roles");
    assert_eq!(roles, 4);
    db.close().await;

    // The tenant's own credentials write and read through the coordinator.
    let creds = host
        .read_secret(&provision::credentials_secret_name(&t.name))
        .await
        .expect("read credentials")
        .expect("credentials secret");
    let tenant = PgPool::connect(creds.get("url").expect("url"))
        .await
        .expect("tenant credentials connect");
    let collection: Uuid =
        sqlx::query_scalar("INSERT INTO collections (name) VALUES ('notes') RETURNING id")
            .fetch_one(&tenant)
            .await
            .expect("insert collection");
    sqlx::query("INSERT INTO documents (collection_id, id, data) VALUES ($1, 'n1', '{\"x\": 1}')")
        .bind(collection)
        .execute(&tenant)
        .await
        .expect("insert distributed row");
    let x: i64 = sqlx::query_scalar(
        "SELECT (data->>'x')::bigint FROM documents WHERE collection_id = $1 AND id = 'n1'",
    )
    .bind(collection)
    .fetch_one(&tenant)
    .await
    .expect("read distributed row");
    assert_eq!(x, 1);
    tenant.close().await;

    // Rotation: the role, the Secret and the node authentication change
    // together; the old password stops working and the new one reaches the
    // workers.
    let old_url = creds.get("url").expect("url").to_string();
    let mut rotated = t.clone();
    rotated.rotation.requested = Some("r1".into());
    provisioner
        .provision(&rotated)
        .await
        .unwrap_or_else(|f| panic!("rotation: {f}"));
    let creds = host
        .read_secret(&provision::credentials_secret_name(&t.name))
        .await
        .expect("read credentials")
        .expect("credentials secret");
    let new_url = creds.get("url").expect("url").to_string();
    assert_ne!(new_url, old_url);
    let err = PgPool::connect(&old_url)
        .await
        .expect_err("the old password stops working");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    let tenant = PgPool::connect(&new_url).await.expect("new password");
    sqlx::query("INSERT INTO documents (collection_id, id, data) VALUES ($1, 'n2', '{\"x\": 2}')")
        .bind(collection)
        .execute(&tenant)
        .await
        .expect("distributed write after rotation");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE collection_id = $1")
        .bind(collection)
        .fetch_one(&tenant)
        .await
        .expect("distributed read after rotation");
    assert_eq!(n, 2);
    tenant.close().await;

    provision::destroy(&catalog, &cluster, t.id)
        .await
        .unwrap_or_else(|f| panic!("release: {f}"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(names.database.as_str())
        .fetch_one(&admin)
        .await
        .expect("query");
    assert_eq!(left, 0, "database dropped on the coordinator");
    let _ = std::fs::remove_dir_all(&host.dir);
}
