//! Brotli on the wire and at rest (issue 11) against real services: the
//! Accept-Encoding matrix on object GETs, no double compression, Range on
//! a compressible object (identity bytes), weak/strong ETags with 304/412,
//! an object stored compressed served to clients with and without `br`,
//! and both sizes reported. Needs `source .stack/env`.

mod storage_support;
mod support;

use serde_json::json;
use storage_support::{Store, app_state, backend, create_bucket, settings};
use support::{Server, with_tenants};

struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Raw {
    let mut request = http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("m"),
            url,
        )
        .bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    let response = request.send().await.expect("send");
    Raw {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    strata_dataplane::http::compression::decompress_bytes(data, 64 << 20).expect("valid brotli")
}

fn json_corpus() -> Vec<u8> {
    (0..3000)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item {}\",\"tags\":[\"a\",\"b\"]}}\n",
                i % 17
            )
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn brotli_on_the_wire_and_at_rest() {
    with_tenants(
        "compression",
        &["cmp"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let server = Server::start(
                app_state(&catalog_url, tb.backend.clone(), None, settings()),
                1 << 20,
            )
            .await;
            let client = support::Client::new(&server.base);
            let a = &tenants[0];
            let admin = client.accept_invitation(a).await;
            let http = reqwest::Client::new();
            create_bucket(&catalog, a.id, "plain", json!({})).await;
            let packed = create_bucket(&catalog, a.id, "packed", json!({})).await;
            sqlx::query("UPDATE catalog.buckets SET compression = true WHERE id = $1")
                .bind(packed)
                .execute(catalog.pool())
                .await
                .expect("compression on");
            let url = |bucket: &str, key: &str| {
                format!(
                    "{}/v1/tenants/{}/buckets/{bucket}/objects/{key}",
                    server.base, a.name
                )
            };
            let corpus = json_corpus();

            for bucket in ["plain", "packed"] {
                let put = send(
                    &http,
                    "PUT",
                    &url(bucket, "data.json"),
                    &admin,
                    &[],
                    Some(("application/json", corpus.clone())),
                )
                .await;
                assert_eq!(put.status, 201, "{bucket}");
                let etag = put.header("etag").expect("etag").to_string();
                assert!(!etag.starts_with("W/"));
                let weak = format!("W/{etag}");

                // The Accept-Encoding matrix.
                for (accept, br) in [
                    (None, false),
                    (Some("br"), true),
                    (Some("gzip, deflate, br, zstd"), true),
                    (Some("br;q=0"), false),
                    (Some("br;q=0, *"), false),
                    (Some("*"), true),
                    (Some("gzip"), false),
                    (Some("identity"), false),
                    (Some("br;q=0.5, identity"), false),
                    (Some("br;q=0.5, identity;q=0.1"), true),
                    (Some("identity;q=0, br"), true),
                ] {
                    let headers: Vec<(&str, &str)> =
                        accept.map(|a| ("accept-encoding", a)).into_iter().collect();
                    let got = send(
                        &http,
                        "GET",
                        &url(bucket, "data.json"),
                        &admin,
                        &headers,
                        None,
                    )
                    .await;
                    assert_eq!(got.status, 200, "{bucket} {accept:?}");
                    assert_eq!(
                        got.header("vary")
                            .map(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                        Some(true),
                        "{bucket} {accept:?}"
                    );
                    if br {
                        assert_eq!(
                            got.header("content-encoding"),
                            Some("br"),
                            "{bucket} {accept:?}"
                        );
                        assert_eq!(
                            got.header("etag"),
                            Some(weak.as_str()),
                            "{bucket} {accept:?}"
                        );
                        assert!(got.body.len() * 3 < corpus.len(), "{bucket}: compressed");
                        assert_eq!(unbrotli(&got.body), corpus, "{bucket} {accept:?}");
                    } else {
                        assert_eq!(got.header("content-encoding"), None, "{bucket} {accept:?}");
                        assert_eq!(
                            got.header("etag"),
                            Some(etag.as_str()),
                            "{bucket} {accept:?}"
                        );
                        assert_eq!(got.body, corpus, "{bucket} {accept:?}");
                    }
                }
                // Identity refused and br refused: 406.
                let got = send(
                    &http,
                    "GET",
                    &url(bucket, "data.json"),
                    &admin,
                    &[("accept-encoding", "*;q=0")],
                    None,
                )
                .await;
                assert_eq!(got.status, 406, "{bucket}");

                // Range: identity bytes, even to br clients.
                let got = send(
                    &http,
                    "GET",
                    &url(bucket, "data.json"),
                    &admin,
                    &[("accept-encoding", "br"), ("range", "bytes=10-99")],
                    None,
                )
                .await;
                assert_eq!(got.status, 206, "{bucket}");
                assert_eq!(got.header("content-encoding"), None);
                assert_eq!(got.body, &corpus[10..100], "{bucket}");
                assert_eq!(
                    got.header("content-range").map(str::to_string),
                    Some(format!("bytes 10-99/{}", corpus.len()))
                );

                // Preconditions: If-None-Match matches either form (weak
                // comparison); If-Match takes the strong one only.
                for (name, value, accept, status) in [
                    ("if-none-match", weak.as_str(), "br", 304),
                    ("if-none-match", etag.as_str(), "br", 304),
                    ("if-none-match", weak.as_str(), "identity", 304),
                    ("if-match", etag.as_str(), "br", 200),
                    ("if-match", weak.as_str(), "br", 412),
                ] {
                    let got = send(
                        &http,
                        "GET",
                        &url(bucket, "data.json"),
                        &admin,
                        &[(name, value), ("accept-encoding", accept)],
                        None,
                    )
                    .await;
                    assert_eq!(got.status, status, "{bucket} {name}: {value} ({accept})");
                    if status == 304 && accept == "br" {
                        assert_eq!(got.header("etag"), Some(weak.as_str()));
                    }
                }
                let put = send(
                    &http,
                    "PUT",
                    &url(bucket, "data.json"),
                    &admin,
                    &[("if-match", &weak)],
                    Some(("application/json", corpus.clone())),
                )
                .await;
                assert_eq!(
                    put.status, 412,
                    "{bucket}: a weak tag never satisfies If-Match on a write"
                );

                // No double compression: already-compressed types and small bodies stay identity.
                let png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]
                    .into_iter()
                    .chain(std::iter::repeat_n(0u8, 4000))
                    .collect::<Vec<u8>>();
                let put = send(
                    &http,
                    "PUT",
                    &url(bucket, "x.png"),
                    &admin,
                    &[],
                    Some(("image/png", png.clone())),
                )
                .await;
                assert_eq!(put.status, 201, "{bucket}");
                let got = send(
                    &http,
                    "GET",
                    &url(bucket, "x.png"),
                    &admin,
                    &[("accept-encoding", "br")],
                    None,
                )
                .await;
                assert_eq!(got.header("content-encoding"), None);
                assert_eq!(got.body, png);
                let put = send(
                    &http,
                    "PUT",
                    &url(bucket, "small.txt"),
                    &admin,
                    &[],
                    Some(("text/plain", b"tiny".to_vec())),
                )
                .await;
                assert_eq!(put.status, 201);
                let got = send(
                    &http,
                    "GET",
                    &url(bucket, "small.txt"),
                    &admin,
                    &[("accept-encoding", "br")],
                    None,
                )
                .await;
                if bucket == "plain" {
                    assert_eq!(
                        got.header("content-encoding"),
                        None,
                        "small bodies are not worth it"
                    );
                    assert_eq!(got.body, b"tiny");
                } else {
                    // Stored compressed: served as stored.
                    assert_eq!(unbrotli(&got.body), b"tiny");
                }
            }

            // At rest: the blob holds Brotli, the row both sizes; the quota counts the user's bytes.
            let bucket = client
                .get(&format!("/v1/tenants/{}/buckets/packed", a.name), &admin)
                .await;
            assert_eq!(bucket.status, 200, "{}", bucket.text);
            let usage = &bucket.json["usage"];
            let user_bytes = usage["bytes"].as_i64().expect("bytes");
            let stored_bytes = usage["stored_bytes"].as_i64().expect("stored");
            assert_eq!(user_bytes, (corpus.len() + 4008 + 4) as i64);
            assert!(
                stored_bytes < user_bytes / 2,
                "{stored_bytes} vs {user_bytes}"
            );
            let view = send(
                &http,
                "HEAD",
                &url("packed", "data.json"),
                &admin,
                &[],
                None,
            )
            .await;
            assert_eq!(
                view.header("content-length").map(str::to_string),
                Some(corpus.len().to_string())
            );

            // JSON APIs: a list of keys compressed for br clients.
            let listing = send(
                &http,
                "GET",
                &format!("{}/v1/tenants/{}/keys", server.base, a.name),
                &admin,
                &[("accept-encoding", "br")],
                None,
            )
            .await;
            assert_eq!(listing.status, 200);
            if listing.header("content-encoding") == Some("br") {
                let body: serde_json::Value =
                    serde_json::from_slice(&unbrotli(&listing.body)).expect("json");
                assert!(body.is_object());
            }
        },
    )
    .await;
}
