//! The local stack's services are real: each test talks to the running server
//! the way the platform does.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use strata_tests::{TestBucket, TestDb, TestRedis};

#[tokio::test]
async fn pgvector_returns_the_nearest_row() {
    let db = TestDb::new().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
        .execute(&db.pool)
        .await
        .expect("pgvector installs");
    sqlx::query("CREATE TABLE items (id text PRIMARY KEY, embedding vector(3))")
        .execute(&db.pool)
        .await
        .expect("table");
    sqlx::query("INSERT INTO items VALUES ('east', '[1,0,0]'), ('north', '[0,1,0]'), ('up', '[0,0,1]'), ('north-east', '[0.7,0.7,0]')")
        .execute(&db.pool)
        .await
        .expect("insert");
    sqlx::query("CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops)")
        .execute(&db.pool)
        .await
        .expect("hnsw index");
    let nearest: Vec<(String, f64)> = sqlx::query_as(
        "SELECT id, embedding <=> '[0.1,0.9,0.05]' AS d FROM items ORDER BY embedding <=> '[0.1,0.9,0.05]' LIMIT 2",
    )
    .fetch_all(&db.pool)
    .await
    .expect("ANN query");
    assert_eq!(nearest[0].0, "north");
    assert_eq!(nearest[1].0, "north-east");
    assert!(nearest[0].1 < nearest[1].1);
    let version: String =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .fetch_one(&db.pool)
            .await
            .expect("version");
    assert!(version.starts_with("0.8"), "pgvector {version}");
}

#[tokio::test]
async fn postgres_is_version_18() {
    let db = TestDb::new().await;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&db.pool)
        .await
        .expect("version");
    assert!(
        (180000..190000).contains(&version),
        "server_version_num {version}"
    );
}

#[tokio::test]
async fn redis_round_trip_with_expiry() {
    let redis = TestRedis::new().await;
    let mut conn = redis.conn.clone();
    let key = redis.key("greeting");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hello")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(value.as_deref(), Some("hello"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");
    let n: i64 = redis::cmd("INCR")
        .arg(redis.key("counter"))
        .query_async(&mut conn)
        .await
        .expect("INCR");
    assert_eq!(n, 1);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    assert!(
        info.contains("redis_version:7."),
        "expected Redis 7: {}",
        info.lines()
            .find(|l| l.starts_with("redis_version"))
            .unwrap_or("")
    );
}

#[tokio::test]
async fn s3_put_get_delete_and_presigned_get() {
    let bucket = TestBucket::new().await;
    let s3 = &bucket.client;
    let body = b"strata object body".to_vec();
    s3.put_object()
        .bucket(&bucket.name)
        .key("docs/hello.txt")
        .content_type("text/plain")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("PUT");
    let got = s3
        .get_object()
        .bucket(&bucket.name)
        .key("docs/hello.txt")
        .send()
        .await
        .expect("GET");
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        got.body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .as_ref(),
        body.as_slice()
    );

    // A presigned GET works with no credentials but the URL.
    let presigned = s3
        .get_object()
        .bucket(&bucket.name)
        .key("docs/hello.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).expect("presign config"))
        .await
        .expect("presign");
    let response = reqwest::get(presigned.uri())
        .await
        .expect("fetch presigned URL");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.expect("bytes").as_ref(),
        body.as_slice()
    );
    // A tampered signature is refused.
    let tampered = presigned
        .uri()
        .replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(reqwest::get(tampered).await.expect("fetch").status(), 403);

    s3.delete_object()
        .bucket(&bucket.name)
        .key("docs/hello.txt")
        .send()
        .await
        .expect("DELETE");
    let missing = s3
        .get_object()
        .bucket(&bucket.name)
        .key("docs/hello.txt")
        .send()
        .await;
    let err = missing.expect_err("object is gone");
    assert!(err.into_service_error().is_no_such_key());
}
