//! The storage API against real services: tenants provisioned by the
//! operator's provisioner, buckets as the Bucket reconcile writes them,
//! PostgreSQL, and both backends (the filesystem and the stack's S3
//! server). Needs `source .stack/env`.

mod storage_support;
mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;
use storage_support::{Store, app_state, backend, bytes, chunked, create_bucket, raw, settings};
use support::{Body, Checked, Client, Reply, Server, with_tenants};

fn obj(tenant: &str, bucket: &str, key: &str) -> String {
    format!("/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}")
}

async fn put(
    client: &Client,
    path: &str,
    key: &str,
    ct: &'static str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Reply {
    client
        .send(
            "PUT",
            path,
            Some(key),
            Body::Raw(Some(ct), body.to_vec()),
            headers,
        )
        .await
}

async fn get(client: &Client, path: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    client.send("GET", path, key, Body::None, headers).await
}

#[tokio::test]
async fn object_api_on_fs() {
    object_api(Store::Fs).await;
}

#[tokio::test]
async fn object_api_on_s3() {
    object_api(Store::S3).await;
}

async fn object_api(store: Store) {
    with_tenants("storage-api", &["sta", "stb"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(store).await;
        let server = Server::start(app_state(&catalog_url, tb.backend.clone(), None, settings()), 1 << 20).await;
        let client = Client::new(&server.base);
        let (a, b) = (&tenants[0], &tenants[1]);
        let admin_a = client.accept_invitation(a).await;
        let admin_b = client.accept_invitation(b).await;
        let viewer_a = client.new_key(&a.name, &admin_a, "viewer").await;
        let checked = Checked::new(client.clone(), b, &["blob_key", "backend_prefix", "blob_intents", "reservations"]);
        create_bucket(&catalog, a.id, "photos", json!({})).await;
        create_bucket(&catalog, b.id, "photos", json!({})).await;
        let at = |key: &str| obj(&a.name, "photos", key);

        // Create, read, head.
        let created = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain; charset=utf-8", b"hello world",
            &[("x-strata-meta-color", "blue"), ("cache-control", "max-age=60"), ("content-disposition", "inline; filename=\"h.txt\"")]).await;
        let view = checked.ok(&created, 201);
        assert_eq!(view["size"], 11);
        assert_eq!(view["content_type"], "text/plain; charset=utf-8");
        assert_eq!(view["metadata"]["color"], "blue");
        let etag = created.header("etag").expect("etag").to_string();
        assert_eq!(view["etag"], etag.as_str());
        let got = get(&client, &at("docs/hello.txt"), Some(&viewer_a), &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text, "hello world");
        assert_eq!(got.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(got.header("etag"), Some(etag.as_str()));
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        assert!(got.header("content-security-policy").is_some_and(|c| c.contains("sandbox")));
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert_eq!(got.header("x-strata-meta-color"), Some("blue"));
        // The stored Cache-Control, made `private` by the gateway: an
        // authenticated answer never goes in a shared cache.
        assert_eq!(got.header("cache-control"), Some("private, max-age=60"));
        assert_eq!(got.header("content-disposition"), Some("inline; filename=\"h.txt\""));
        let last_modified = got.header("last-modified").expect("last-modified").to_string();
        let head = client.send("HEAD", &at("docs/hello.txt"), Some(&viewer_a), Body::None, &[]).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("11"));
        assert!(head.text.is_empty());

        // Ranges.
        for (range, status, body, content_range) in [
            ("bytes=0-4", 206, "hello", Some("bytes 0-4/11")),
            ("bytes=6-", 206, "world", Some("bytes 6-10/11")),
            ("bytes=-3", 206, "rld", Some("bytes 8-10/11")),
            ("bytes=-100", 206, "hello world", Some("bytes 0-10/11")),
            ("bytes=10-99", 206, "d", Some("bytes 10-10/11")),
            ("bytes=0-1,4-5", 200, "hello world", None),
            ("bytes=x-y", 200, "hello world", None),
        ] {
            let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[("range", range)]).await;
            assert_eq!(reply.status, status, "{range}");
            assert_eq!(reply.text, body, "{range}");
            assert_eq!(reply.header("content-range"), content_range, "{range}");
        }
        for range in ["bytes=11-", "bytes=20-30", "bytes=-0"] {
            let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[("range", range)]).await;
            checked.problem(&reply, 416, "range-not-satisfiable");
            assert_eq!(reply.header("content-range"), Some("bytes */11"), "{range}");
        }
        let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[("range", "bytes=0-4"), ("if-range", "\"stale\"")]).await;
        assert_eq!(reply.status, 200, "a stale If-Range gives the whole object");
        let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[("range", "bytes=0-4"), ("if-range", &etag)]).await;
        assert_eq!(reply.status, 206);

        // Preconditions on reads.
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        let cases: [(&str, &str, u16); 7] = [
            ("if-none-match", etag.as_str(), 304),
            ("if-none-match", "\"other\"", 200),
            ("if-match", "\"other\"", 412),
            ("if-match", etag.as_str(), 200),
            ("if-modified-since", future.as_str(), 304),
            ("if-modified-since", past.as_str(), 200),
            ("if-unmodified-since", past.as_str(), 412),
        ];
        for (name, value, status) in cases {
            let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[(name, value)]).await;
            assert_eq!(reply.status, status, "{name}: {value}");
            if status == 412 {
                checked.problem(&reply, 412, "precondition-failed");
            }
            if status == 304 {
                assert_eq!(reply.header("etag"), Some(etag.as_str()));
            }
        }
        let reply = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[("if-unmodified-since", &last_modified)]).await;
        assert_eq!(reply.status, 200);

        // Preconditions on writes; atomic overwrite.
        let reply = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"x", &[("if-match", "\"other\"")]).await;
        checked.problem(&reply, 412, "precondition-failed");
        let reply = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"x", &[("if-none-match", "*")]).await;
        checked.problem(&reply, 412, "precondition-failed");
        let reply = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"x", &[("if-unmodified-since", &past)]).await;
        checked.problem(&reply, 412, "precondition-failed");
        let reply = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"x", &[("if-match", "not a tag")]).await;
        checked.problem(&reply, 400, "invalid-header");
        let replaced = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"second version", &[("if-match", &etag)]).await;
        checked.ok(&replaced, 200);
        let etag2 = replaced.header("etag").expect("etag").to_string();
        assert_ne!(etag, etag2);
        let got = get(&client, &at("docs/hello.txt"), Some(&admin_a), &[]).await;
        assert_eq!(got.text, "second version");
        assert_eq!(got.header("x-strata-meta-color"), None, "an overwrite replaces metadata");
        // Same bytes again: a new version, a new tag.
        let again = put(&client, &at("docs/hello.txt"), &admin_a, "text/plain", b"second version", &[]).await;
        assert_ne!(again.header("etag"), Some(etag2.as_str()));
        let created = put(&client, &at("docs/new.txt"), &admin_a, "text/plain", b"new", &[("if-none-match", "*")]).await;
        checked.ok(&created, 201);

        // Active types are attachments; hostile dispositions refused.
        checked.ok(&put(&client, &at("page.html"), &admin_a, "text/html", b"<script>alert(1)</script>", &[("content-disposition", "inline")]).await, 201);
        let got = get(&client, &at("page.html"), Some(&admin_a), &[]).await;
        assert!(got.header("content-disposition").is_some_and(|d| d.starts_with("attachment; filename=\"page.html\"")), "{:?}", got.headers);
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        checked.ok(&put(&client, &at("img/logo.svg"), &admin_a, "image/svg+xml", b"<svg onload=alert(1)></svg>", &[]).await, 201);
        let got = get(&client, &at("img/logo.svg"), Some(&admin_a), &[]).await;
        assert!(got.header("content-disposition").is_some_and(|d| d.starts_with("attachment")));
        let reply = put(&client, &at("x.txt"), &admin_a, "text/plain", b"x", &[("content-disposition", "evil")]).await;
        assert_eq!(reply.status, 400);
        let reply = put(&client, &at("x.txt"), &admin_a, "not a type", b"x", &[]).await;
        checked.problem(&reply, 400, "invalid-header");
        let big_meta = "v".repeat(3000);
        let reply = put(&client, &at("x.txt"), &admin_a, "text/plain", b"x", &[("x-strata-meta-big", &big_meta)]).await;
        checked.problem(&reply, 400, "invalid-header");

        // Chunked upload (no Content-Length).
        let body = bytes(100_000, 7);
        let reply = raw(&server.base, &format!(
            "PUT {} HTTP/1.1\r\nAuthorization: Bearer {admin_a}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked",
            at("chunked.bin")), &chunked(&body, 7000)).await;
        assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
        let got = raw(&server.base, &format!("GET {} HTTP/1.1\r\nAuthorization: Bearer {admin_a}", at("chunked.bin")), b"").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, body);

        // A length past i64::MAX is too large (never a negative quota reservation).
        let reply = raw(&server.base, &format!(
            "PUT {} HTTP/1.1\r\nAuthorization: Bearer {admin_a}\r\nContent-Type: text/plain\r\nContent-Length: 9223372036854775808",
            at("huge.txt")), b"x").await;
        assert_eq!(reply.status, 413, "{}", String::from_utf8_lossy(&reply.body));

        // Copy inside the store.
        let copied = client.send("PUT", &at("copies/hello.txt"), Some(&admin_a), Body::None,
            &[("x-strata-copy-source", "photos/docs/hello.txt")]).await;
        checked.ok(&copied, 201);
        assert_eq!(get(&client, &at("copies/hello.txt"), Some(&admin_a), &[]).await.text, "second version");
        let missing = client.send("PUT", &at("copies/none"), Some(&admin_a), Body::None,
            &[("x-strata-copy-source", "photos/nothing/here")]).await;
        checked.problem(&missing, 404, "not-found");
        let bad = client.send("PUT", &at("copies/none"), Some(&admin_a), Body::None,
            &[("x-strata-copy-source", "photos/../x")]).await;
        checked.problem(&bad, 400, "invalid-header");
        // Deleting the source leaves the copy whole.
        assert_eq!(client.send("DELETE", &at("copies/hello.txt"), Some(&admin_a), Body::None, &[]).await.status, 204);
        checked.ok(&client.send("PUT", &at("copies/hello.txt"), Some(&admin_a), Body::None,
            &[("x-strata-copy-source", "photos/docs/hello.txt")]).await, 201);

        // Lists: prefixes, delimiter, pages.
        for key in ["list/a/1", "list/a/2", "list/b/1", "list/c", "list/d", "list/e/1"] {
            checked.ok(&put(&client, &at(key), &admin_a, "text/plain", key.as_bytes(), &[]).await, 201);
        }
        let mut items = Vec::new();
        let mut prefixes = Vec::new();
        let mut next = Some(format!("/v1/tenants/{}/buckets/photos/objects?prefix=list/&delimiter=/&limit=2", a.name));
        let mut pages = 0;
        while let Some(path) = next {
            let reply = get(&client, &path, Some(&viewer_a), &[]).await;
            let page = checked.ok(&reply, 200);
            pages += 1;
            for item in page["items"].as_array().expect("items") {
                items.push(item["key"].as_str().expect("key").to_string());
            }
            for p in page["common_prefixes"].as_array().expect("prefixes") {
                prefixes.push(p.as_str().expect("prefix").to_string());
            }
            assert!(page["items"].as_array().map_or(0, Vec::len) + page["common_prefixes"].as_array().map_or(0, Vec::len) <= 2);
            next = reply.next_link();
            assert!(pages < 10);
        }
        assert_eq!(items, ["list/c", "list/d"]);
        assert_eq!(prefixes, ["list/a/", "list/b/", "list/e/"]);
        let page = checked.ok(&get(&client, &format!("/v1/tenants/{}/buckets/photos/objects?prefix=list/a/", a.name), Some(&admin_a), &[]).await, 200);
        let keys: Vec<&str> = page["items"].as_array().expect("items").iter().filter_map(|i| i["key"].as_str()).collect();
        assert_eq!(keys, ["list/a/1", "list/a/2"]);
        let reply = get(&client, &format!("/v1/tenants/{}/buckets/photos/objects?prefix=list/&cursor=forged", a.name), Some(&admin_a), &[]).await;
        checked.problem(&reply, 400, "invalid-cursor");
        let reply = get(&client, &format!("/v1/tenants/{}/buckets/photos/objects?limit=0", a.name), Some(&admin_a), &[]).await;
        checked.problem(&reply, 400, "invalid-parameter");

        // Delete with preconditions.
        let reply = client.send("DELETE", &at("docs/new.txt"), Some(&admin_a), Body::None, &[("if-match", "\"other\"")]).await;
        checked.problem(&reply, 412, "precondition-failed");
        assert_eq!(client.send("DELETE", &at("docs/new.txt"), Some(&admin_a), Body::None, &[]).await.status, 204);
        checked.problem(&get(&client, &at("docs/new.txt"), Some(&admin_a), &[]).await, 404, "not-found");
        checked.problem(&client.send("DELETE", &at("docs/new.txt"), Some(&admin_a), Body::None, &[]).await, 404, "not-found");

        // Permissions and isolation.
        checked.problem(&put(&client, &at("v.txt"), &viewer_a, "text/plain", b"v", &[]).await, 403, "forbidden");
        checked.problem(&client.send("DELETE", &at("list/c"), Some(&viewer_a), Body::None, &[]).await, 403, "forbidden");
        checked.problem(&get(&client, &at("list/c"), None, &[]).await, 401, "unauthenticated");
        checked.problem(&client.send("PUT", &at("anon.txt"), None, Body::Raw(Some("text/plain"), b"x".to_vec()), &[]).await, 401, "unauthenticated");
        // B's credential on A's objects, A's on B's, and A's bucket name in B.
        let checked_b = Checked::new(client.clone(), a, &[]);
        checked_b.problem(&get(&client, &at("list/c"), Some(&admin_b), &[]).await, 404, "not-found");
        checked_b.problem(&put(&client, &at("list/c"), &admin_b, "text/plain", b"x", &[]).await, 404, "not-found");
        checked.problem(&get(&client, &obj(&b.name, "photos", "list/c"), Some(&admin_a), &[]).await, 404, "not-found");
        checked_b.problem(&get(&client, &obj(&b.name, "photos", "list/c"), Some(&admin_b), &[]).await, 404, "not-found");
        checked.problem(&get(&client, &obj(&a.name, "nosuchbucket", "x"), Some(&admin_a), &[]).await, 404, "not-found");
        let b_list = checked_b.ok(&get(&client, &format!("/v1/tenants/{}/buckets/photos/objects", b.name), Some(&admin_b), &[]).await, 200);
        assert_eq!(b_list["items"], json!([]));

        // Public buckets: GET/HEAD without a credential, nothing else.
        create_bucket(&catalog, a.id, "public-site", json!({"public": true})).await;
        let public = |key: &str| obj(&a.name, "public-site", key);
        checked.ok(&put(&client, &public("index.txt"), &admin_a, "text/plain", b"welcome", &[]).await, 201);
        let got = get(&client, &public("index.txt"), None, &[]).await;
        assert_eq!((got.status, got.text.as_str()), (200, "welcome"));
        assert_eq!(client.send("HEAD", &public("index.txt"), None, Body::None, &[]).await.status, 200);
        checked.problem(&client.send("PUT", &public("index.txt"), None, Body::Raw(Some("text/plain"), b"x".to_vec()), &[]).await, 401, "unauthenticated");
        checked.problem(&client.send("DELETE", &public("index.txt"), None, Body::None, &[]).await, 401, "unauthenticated");
        checked.problem(&get(&client, &format!("/v1/tenants/{}/buckets/public-site/objects", a.name), None, &[]).await, 401, "unauthenticated");

        // Type rules: allow-list with wildcards, sniffing, polyglots.
        create_bucket(&catalog, a.id, "images", json!({"allowed_content_types": ["image/*", "application/pdf"], "max_object_size": 1000})).await;
        let img = |key: &str| obj(&a.name, "images", key);
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
        checked.ok(&put(&client, &img("a.png"), &admin_a, "image/png", png, &[]).await, 201);
        let reply = put(&client, &img("a.txt"), &admin_a, "text/plain", b"text", &[]).await;
        checked.problem(&reply, 415, "unsupported-media-type");
        let reply = put(&client, &img("b.jpg"), &admin_a, "image/jpeg", png, &[]).await;
        let problem = checked.problem(&reply, 415, "unsupported-media-type");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("image/png") && detail.contains("image/jpeg"), "{detail}");
        let mut polyglot = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        polyglot.extend_from_slice(b"<script>alert(document.domain)</script>");
        checked.problem(&put(&client, &img("p.gif"), &admin_a, "image/gif", &polyglot, &[]).await, 415, "unsupported-media-type");
        checked.problem(&put(&client, &img("no.pdf"), &admin_a, "application/pdf", png, &[]).await, 415, "unsupported-media-type");
        // Size limit: declared, and counted on a chunked body.
        checked.problem(&put(&client, &img("big.png"), &admin_a, "image/png", &[png.as_slice(), &[0u8; 1000]].concat(), &[]).await, 413, "payload-too-large");
        let reply = raw(&server.base, &format!(
            "PUT {} HTTP/1.1\r\nAuthorization: Bearer {admin_a}\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked",
            img("big2.png")), &chunked(&[png.as_slice(), &[0u8; 1000]].concat(), 100)).await;
        assert_eq!(reply.status, 413, "{}", String::from_utf8_lossy(&reply.body));
        checked.problem(&get(&client, &img("big2.png"), Some(&admin_a), &[]).await, 404, "not-found");

        // A bucket being deleted refuses writes, still serves reads.
        create_bucket(&catalog, a.id, "leaving", json!({"state": "deleting"})).await;
        let reply = put(&client, &obj(&a.name, "leaving", "x"), &admin_a, "text/plain", b"x", &[]).await;
        checked.problem(&reply, 409, "conflict");

        // Usage equals what is stored.
        let bucket = checked.ok(&get(&client, &format!("/v1/tenants/{}/buckets/photos", a.name), Some(&admin_a), &[]).await, 200);
        let listed = checked.ok(&get(&client, &format!("/v1/tenants/{}/buckets/photos/objects?limit=1000", a.name), Some(&admin_a), &[]).await, 200);
        let items = listed["items"].as_array().expect("items");
        let total: i64 = items.iter().map(|i| i["size"].as_i64().unwrap_or(0)).sum();
        assert_eq!(bucket["usage"]["objects"], items.len());
        assert_eq!(bucket["usage"]["bytes"], total);
        drop(tb);
    })
    .await;
}

#[tokio::test]
async fn hostile_keys_are_400() {
    with_tenants("storage-keys", &["stk"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(Store::Fs).await;
        let server = Server::start(app_state(&catalog_url, tb.backend.clone(), None, settings()), 1 << 20).await;
        let client = Client::new(&server.base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        create_bucket(&catalog, t.id, "files", json!({})).await;
        let base = format!("/v1/tenants/{}/buckets/files/objects/", t.name);
        let long = "k".repeat(1025);
        let hostile = [
            "..", "a/../b", "./a", "a/./b", "a/..", "%2e%2e", "%2E%2E/x", "a/%2e%2e/b", "%2e/a",
            "a%00b", "a%5cb", "a%5Cb", "%2fetc/passwd", "/etc/passwd", "a//b", "a%2f%2fb", "%ff%fe",
            "a%c3", "%252e%252e/x", "a%252fb", "a%255cb", "%", long.as_str(), "a%0Ab", "a%7f",
        ];
        for key in hostile {
            for method in ["GET", "PUT", "DELETE"] {
                let reply = raw(&server.base, &format!(
                    "{method} {base}{key} HTTP/1.1\r\nAuthorization: Bearer {admin}\r\nContent-Type: text/plain\r\nContent-Length: 1"), b"x").await;
                assert_eq!(reply.status, 400, "{method} {key:?}: {}", String::from_utf8_lossy(&reply.body));
                assert!(reply.header("content-type").is_some_and(|c| c == "application/problem+json"));
            }
        }
        // A raw backslash in the path, too.
        let reply = raw(&server.base, &format!("GET {base}a\\b HTTP/1.1\r\nAuthorization: Bearer {admin}"), b"").await;
        assert_eq!(reply.status, 400);
        // 1024 bytes is fine.
        let ok = "k".repeat(1024);
        let reply = raw(&server.base, &format!(
            "PUT {base}{ok} HTTP/1.1\r\nAuthorization: Bearer {admin}\r\nContent-Type: text/plain\r\nContent-Length: 1"), b"x").await;
        assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
        // Nothing hostile got stored.
        let listed = client.get(&format!("/v1/tenants/{}/buckets/files/objects", t.name), &admin).await;
        assert_eq!(listed.json["items"].as_array().map(Vec::len), Some(1), "{}", listed.text);
        drop(tb);
    })
    .await;
}
