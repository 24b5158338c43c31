//! Conditional requests end to end (RFC 9110 §13), against the real
//! router on the stack's PostgreSQL, Redis and S3 server:
//!
//! - **The matrix**: the four precondition headers (If-Match,
//!   If-Unmodified-Since, If-None-Match, If-Modified-Since), each absent,
//!   matching or not matching the current validators — all 3⁴ = 81
//!   combinations (a full factorial: every pair, triple and quadruple of
//!   states, so every branch of §13.2.2's evaluation order is taken with
//!   every state of the fields it must ignore) — × GET, HEAD, PUT, PATCH,
//!   DELETE × the resource existing or not, on a document and on an
//!   object. GET and HEAD also on a document list page. Reads run once on
//!   a data plane without a cache and once as output-cache hits (the
//!   answer asserted to be a `Cache-Status: hit`); writes are checked for
//!   their effect too (a refused write changed nothing).
//! - Expected outcomes come from [`reference`], an implementation of
//!   §13.1 / §13.2.1 / §13.2.2 written here from the RFC's text, not from
//!   `http::preconditions`.
//! - Objects have no PATCH: every combination is a 405 (asserted).
//!   Object GETs are not output-cached (their row says `off`), so objects
//!   have no cache-hit variant.
//!
//! Also: lists (collections, documents, objects) and metadata (a
//! collection, a bucket) carry `ETag` and `Last-Modified` and answer 304
//! to `If-None-Match` / `If-Modified-Since`, from an output-cache hit too.
//!
//! Needs `source .stack/env`.

mod storage_support;
mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;
use storage_support::{Store, app_state, backend, create_bucket, settings};
use strata_dataplane::cache::{CacheSettings, HybridCache};
use support::{Body, Client, Reply, Server, with_tenants};

// ---- The reference implementation ------------------------------------

/// The state of one precondition header in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    Absent,
    /// If-Match / If-None-Match: the current ETag. If-Unmodified-Since /
    /// If-Modified-Since: the current Last-Modified (so "unmodified
    /// since" holds, and "modified since" does not).
    Match,
    /// A tag the resource never had; a date a minute before
    /// Last-Modified.
    Mismatch,
}

const CONDS: [Cond; 3] = [Cond::Absent, Cond::Match, Cond::Mismatch];

#[derive(Clone, Copy, Debug)]
struct Combo {
    if_match: Cond,
    if_unmodified_since: Cond,
    if_none_match: Cond,
    if_modified_since: Cond,
}

/// All 81 combinations.
fn combos() -> Vec<Combo> {
    let mut all = Vec::new();
    for if_match in CONDS {
        for if_unmodified_since in CONDS {
            for if_none_match in CONDS {
                for if_modified_since in CONDS {
                    all.push(Combo {
                        if_match,
                        if_unmodified_since,
                        if_none_match,
                        if_modified_since,
                    });
                }
            }
        }
    }
    all
}

/// The resource as the test knows it.
#[derive(Clone, Debug)]
struct Current {
    exists: bool,
    /// The current ETag (or, when the resource is gone, the one it had).
    etag: String,
    /// Last-Modified as sent (whole seconds); none on list pages.
    last_modified: Option<SystemTime>,
}

/// What the server must answer: a status, and for writes whether the
/// resource changed.
fn reference(method: &str, combo: Combo, current: &Current) -> u16 {
    let read = method == "GET" || method == "HEAD";
    // §13.2.1: preconditions are ignored when the answer without them
    // would not be a 2xx or 412: reading, patching or deleting what does
    // not exist is a 404 whatever the conditions say. (A PUT creates.)
    if !current.exists && method != "PUT" {
        return 404;
    }
    let strong = !current.etag.starts_with("W/");
    // Step 1: If-Match — true iff a current representation exists and one
    // of the listed tags matches it under *strong* comparison (§13.1.1).
    if combo.if_match != Cond::Absent {
        let holds = current.exists && combo.if_match == Cond::Match && strong;
        if !holds {
            return 412;
        }
    } else if combo.if_unmodified_since != Cond::Absent
        && current.exists
        && current.last_modified.is_some()
    {
        // Step 2: If-Unmodified-Since, only without If-Match, and only
        // with a Last-Modified to compare (ignored on a list page, which
        // has none): false when modified after the date.
        if combo.if_unmodified_since == Cond::Mismatch {
            return 412;
        }
    }
    // Step 3: If-None-Match — false iff a current representation exists
    // and a listed tag matches it under *weak* comparison (§13.1.2).
    if combo.if_none_match != Cond::Absent {
        let holds = !(current.exists && combo.if_none_match == Cond::Match);
        if !holds {
            return if read { 304 } else { 412 };
        }
    } else if read
        && combo.if_modified_since != Cond::Absent
        && current.exists
        && current.last_modified.is_some()
    {
        // Step 4: If-Modified-Since, GET/HEAD only, without If-None-Match,
        // with a Last-Modified to compare: false (→ 304) when not modified
        // since the date.
        if combo.if_modified_since == Cond::Match {
            return 304;
        }
    }
    // Step 5: perform the method.
    match method {
        "GET" | "HEAD" => 200,
        "PUT" if current.exists => 200,
        "PUT" => 201,
        "PATCH" => 200,
        "DELETE" => 204,
        other => unreachable!("{other}"),
    }
}

/// The request headers of a combination against `current`.
fn headers(combo: Combo, current: &Current) -> Vec<(&'static str, String)> {
    let other_tag = "\"never-this\"".to_string();
    // Undated (a list page): dates are sent all the same, and ignored.
    let dated = current
        .last_modified
        .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let before = httpdate::fmt_http_date(dated - Duration::from_secs(60));
    let at = httpdate::fmt_http_date(dated);
    let tag = |cond: Cond| match cond {
        Cond::Absent => None,
        Cond::Match => Some(current.etag.clone()),
        Cond::Mismatch => Some(other_tag.clone()),
    };
    let date = |cond: Cond| match cond {
        Cond::Absent => None,
        Cond::Match => Some(at.clone()),
        Cond::Mismatch => Some(before.clone()),
    };
    [
        ("if-match", tag(combo.if_match)),
        ("if-unmodified-since", date(combo.if_unmodified_since)),
        ("if-none-match", tag(combo.if_none_match)),
        ("if-modified-since", date(combo.if_modified_since)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}

#[test]
fn the_reference_follows_the_rfc_examples() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let there = Current {
        exists: true,
        etag: "\"a\"".into(),
        last_modified: Some(now),
    };
    let gone = Current {
        exists: false,
        ..there.clone()
    };
    let c = |im, ius, inm, ims| Combo {
        if_match: im,
        if_unmodified_since: ius,
        if_none_match: inm,
        if_modified_since: ims,
    };
    use Cond::{Absent as A, Match as M, Mismatch as X};
    // Revalidation.
    assert_eq!(reference("GET", c(A, A, M, A), &there), 304);
    assert_eq!(reference("GET", c(A, A, A, M), &there), 304);
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(reference("GET", c(A, A, X, M), &there), 200);
    // If-Match wins over If-Unmodified-Since.
    assert_eq!(reference("PUT", c(M, X, A, A), &there), 200);
    assert_eq!(reference("PUT", c(X, M, A, A), &there), 412);
    // Lost update; create-only.
    assert_eq!(reference("PATCH", c(X, A, A, A), &there), 412);
    assert_eq!(reference("PUT", c(A, A, M, A), &there), 412);
    assert_eq!(reference("PUT", c(A, A, M, A), &gone), 201);
    assert_eq!(reference("PUT", c(M, A, A, A), &gone), 412);
    // If-Modified-Since is for reads only.
    assert_eq!(reference("DELETE", c(A, A, A, M), &there), 204);
    // Without a Last-Modified (a list page) both dates are ignored.
    let undated = Current {
        last_modified: None,
        ..there.clone()
    };
    assert_eq!(reference("GET", c(A, A, A, M), &undated), 200);
    assert_eq!(reference("GET", c(A, X, A, A), &undated), 200);
    // Absent: 404 whatever the conditions.
    assert_eq!(reference("DELETE", c(M, A, A, A), &gone), 404);
    assert_eq!(reference("GET", c(X, X, M, M), &gone), 404);
    assert_eq!(combos().len(), 81);
}

// ---- Harness ---------------------------------------------------------

/// An `If-Modified-Since` no date of ours can be after.
const FAR_FUTURE: &str = "Fri, 01 Jan 2100 00:00:00 GMT";

fn last_modified_of(reply: &Reply) -> SystemTime {
    let value = reply.header("last-modified").expect("Last-Modified");
    httpdate::parse_http_date(value).expect("an HTTP date")
}

fn etag_of(reply: &Reply) -> String {
    reply.header("etag").expect("ETag").to_string()
}

fn is_hit(reply: &Reply) -> bool {
    reply.header("cache-status") == Some("strata; hit")
}

/// A data plane with the two-level cache on the stack's Redis (so the
/// output cache stores and serves), or without any cache.
async fn server(catalog_url: &str, cached: bool) -> Server {
    // The stack's S3 server (Garage): no temp dir to keep alive.
    let store = backend(Store::S3).await;
    let mut state = app_state(catalog_url, store.backend.clone(), None, settings());
    if cached {
        let client = redis::Client::open(strata_tests::env("STRATA_REDIS_URL")).expect("url");
        let manager = redis::aio::ConnectionManager::new(client.clone())
            .await
            .expect("redis");
        let cache = HybridCache::new(CacheSettings::default(), Some(manager), None);
        cache.spawn_subscriber(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cache.l1_serving() {
            assert!(std::time::Instant::now() < deadline, "not subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        state.tenancy.cache = cache;
    }
    Server::start(state, 8 << 20).await
}

/// One resource kind under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Document,
    Object,
}

struct Target<'a> {
    client: &'a Client,
    key: &'a str,
    kind: Kind,
    path: String,
    round: u32,
}

impl Target<'_> {
    fn body(&self) -> Body {
        match self.kind {
            Kind::Document => Body::Json(json!({"round": self.round})),
            Kind::Object => Body::Raw(
                Some("application/octet-stream"),
                format!("round {}", self.round).into_bytes(),
            ),
        }
    }

    /// Makes the resource exist (a fresh version) or not; returns what it
    /// is now.
    async fn reset(&mut self, exists: bool, previous: &Option<Current>) -> Current {
        self.round += 1;
        if exists {
            let reply = self
                .client
                .send("PUT", &self.path, Some(self.key), self.body(), &[])
                .await;
            assert!(matches!(reply.status, 200 | 201), "{}", reply.text);
            return Current {
                exists: true,
                etag: etag_of(&reply),
                last_modified: Some(last_modified_of(&reply)),
            };
        }
        let reply = self
            .client
            .send("DELETE", &self.path, Some(self.key), Body::None, &[])
            .await;
        assert!(matches!(reply.status, 204 | 404), "{}", reply.text);
        let previous = previous.clone().expect("a version before");
        Current {
            exists: false,
            ..previous
        }
    }

    /// The resource's ETag now (`None`: absent).
    async fn etag_now(&self) -> Option<String> {
        let reply = self
            .client
            .send("GET", &self.path, Some(self.key), Body::None, &[])
            .await;
        match reply.status {
            200 => Some(etag_of(&reply)),
            404 => None,
            other => panic!("GET {}: {other} {}", self.path, reply.text),
        }
    }
}

/// Runs every combination of `methods` on `target`, with the resource
/// existing and not; returns the number of requests checked.
async fn writes_and_reads(target: &mut Target<'_>, methods: &[&str]) -> usize {
    let mut checked = 0;
    let mut current = Some(target.reset(true, &None).await);
    for method in methods {
        for exists in [true, false] {
            for combo in combos() {
                let now = target.reset(exists, &current).await;
                current = Some(now.clone());
                let sent = headers(combo, &now);
                let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let body = match *method {
                    "PUT" => target.body(),
                    "PATCH" => Body::Json(json!({"patched": target.round})),
                    _ => Body::None,
                };
                let reply = target
                    .client
                    .send(method, &target.path, Some(target.key), body, &sent)
                    .await;
                let context = format!("{:?} {method} exists={exists} {combo:?}", target.kind);
                if target.kind == Kind::Object && *method == "PATCH" {
                    // Objects have no PATCH: the router's 405, whatever
                    // the conditions.
                    assert_eq!(reply.status, 405, "{context}: {}", reply.text);
                    assert!(reply.header("allow").is_some(), "{context}");
                    checked += 1;
                    continue;
                }
                let want = reference(method, combo, &now);
                assert_eq!(reply.status, want, "{context}: {}", reply.text);
                match want {
                    412 => assert_eq!(
                        reply.header("content-type"),
                        Some("application/problem+json"),
                        "{context}"
                    ),
                    304 => assert_eq!(
                        reply.header("etag"),
                        Some(now.etag.as_str()),
                        "{context}: {:?}",
                        reply.headers
                    ),
                    200 if *method == "GET" || *method == "HEAD" => {
                        assert_eq!(reply.header("etag"), Some(now.etag.as_str()), "{context}");
                        assert!(reply.header("last-modified").is_some(), "{context}");
                    }
                    _ => {}
                }
                // A write did what its status says, and nothing when refused.
                if !matches!(*method, "GET" | "HEAD") {
                    let after = target.etag_now().await;
                    match want {
                        200 | 201 => {
                            let tag = after.unwrap_or_else(|| panic!("{context}: gone"));
                            assert_ne!(tag, now.etag, "{context}: unchanged");
                        }
                        204 => assert_eq!(after, None, "{context}: still there"),
                        _ if now.exists => {
                            assert_eq!(after.as_deref(), Some(now.etag.as_str()), "{context}")
                        }
                        _ => assert_eq!(after, None, "{context}: created"),
                    }
                }
                checked += 1;
            }
        }
    }
    checked
}

/// GET and HEAD of every combination on one existing resource, first on a
/// data plane without a cache (the handler answers), then on one with it,
/// where every GET must be an output-cache hit.
async fn reads_with_and_without_hits(
    plain: &Client,
    cached: &Client,
    key: &str,
    path: &str,
) -> usize {
    let primed = cached.send("GET", path, Some(key), Body::None, &[]).await;
    assert_eq!(primed.status, 200, "{path}: {}", primed.text);
    let current = Current {
        exists: true,
        etag: etag_of(&primed),
        last_modified: primed
            .header("last-modified")
            .map(|value| httpdate::parse_http_date(value).expect("an HTTP date")),
    };
    let mut checked = 0;
    for (client, hits) in [(plain, false), (cached, true)] {
        for method in ["GET", "HEAD"] {
            for combo in combos() {
                let sent = headers(combo, &current);
                let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let reply = client
                    .send(method, path, Some(key), Body::None, &sent)
                    .await;
                let context = format!("{path} {method} hits={hits} {combo:?}");
                assert_eq!(
                    reply.status,
                    reference(method, combo, &current),
                    "{context}: {}",
                    reply.text
                );
                // HEAD is always passed to the handler; every GET on the
                // cached data plane is served from the entry.
                assert_eq!(is_hit(&reply), hits && method == "GET", "{context}");
                if reply.status == 304 || reply.status == 200 {
                    assert_eq!(
                        reply.header("etag"),
                        Some(current.etag.as_str()),
                        "{context}"
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

#[tokio::test]
async fn the_precondition_matrix_holds_on_documents_and_objects() {
    with_tenants(
        "preconditions",
        &["pm"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            let plain_server = server(&catalog_url, false).await;
            let cached_server = server(&catalog_url, true).await;
            let plain = Client::new(&plain_server.base);
            let cached = Client::new(&cached_server.base);
            let key = cached.accept_invitation(tenant).await;
            let t = &tenant.name;
            let made = cached
                .json(
                    "POST",
                    &format!("/v1/tenants/{t}/collections"),
                    &key,
                    json!({"name": "m"}),
                )
                .await;
            assert_eq!(made.status, 201, "{}", made.text);
            create_bucket(&catalog, tenant.id, "files", json!({})).await;

            // Writes (and reads of whatever each reset left) on the data
            // plane with the cache: a write there drops its entries.
            let mut checked = 0;
            let methods = ["GET", "HEAD", "PUT", "PATCH", "DELETE"];
            let mut document = Target {
                client: &cached,
                key: &key,
                kind: Kind::Document,
                path: format!("/v1/tenants/{t}/collections/m/documents/d1"),
                round: 0,
            };
            checked += writes_and_reads(&mut document, &methods).await;
            let mut object = Target {
                client: &cached,
                key: &key,
                kind: Kind::Object,
                path: format!("/v1/tenants/{t}/buckets/files/objects/dir/o1.bin"),
                round: 0,
            };
            checked += writes_and_reads(&mut object, &methods).await;
            assert_eq!(checked, 2 * 5 * 2 * 81);

            // Reads with and without output-cache hits: one document and a
            // list page of documents.
            let docs = format!("/v1/tenants/{t}/collections/m/documents");
            for id in ["d1", "d2", "d3"] {
                let put = cached
                    .json("PUT", &format!("{docs}/{id}"), &key, json!({"id": id}))
                    .await;
                assert!(matches!(put.status, 200 | 201), "{}", put.text);
            }
            let mut reads = 0;
            reads +=
                reads_with_and_without_hits(&plain, &cached, &key, &format!("{docs}/d2")).await;
            reads += reads_with_and_without_hits(&plain, &cached, &key, &format!("{docs}?limit=2"))
                .await;
            assert_eq!(reads, 2 * 2 * 2 * 81);
        },
    )
    .await;
}

#[tokio::test]
async fn lists_and_metadata_carry_validators() {
    with_tenants(
        "preconditions",
        &["pv"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            let cached_server = server(&catalog_url, true).await;
            let api = Client::new(&cached_server.base);
            let key = api.accept_invitation(tenant).await;
            let t = &tenant.name;
            for name in ["a", "b"] {
                let made = api
                    .json(
                        "POST",
                        &format!("/v1/tenants/{t}/collections"),
                        &key,
                        json!({"name": name}),
                    )
                    .await;
                assert_eq!(made.status, 201, "{}", made.text);
            }
            let docs = format!("/v1/tenants/{t}/collections/a/documents");
            let doc = api
                .json("POST", &docs, &key, json!({"id": "x", "data": {"n": 1}}))
                .await;
            assert_eq!(doc.status, 201, "{}", doc.text);
            create_bucket(&catalog, tenant.id, "files", json!({})).await;
            let objects = format!("/v1/tenants/{t}/buckets/files/objects");
            let put = api
                .send(
                    "PUT",
                    &format!("{objects}/k1"),
                    Some(&key),
                    Body::Raw(Some("text/plain"), b"one".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(put.status, 201, "{}", put.text);

            // (path, output-cached, has Last-Modified). Lists have none: a
            // page's latest date does not move when a row leaves it.
            let cases = [
                (format!("/v1/tenants/{t}/collections"), true, false),
                (format!("/v1/tenants/{t}/collections/a"), true, true),
                (docs.clone(), true, false),
                (format!("{docs}/x"), true, true),
                (objects.clone(), false, false),
                (format!("/v1/tenants/{t}/buckets/files"), false, false),
            ];
            for (path, output_cached, dated) in &cases {
                let first = api.get(path, &key).await;
                assert_eq!(first.status, 200, "{path}: {}", first.text);
                let etag = first
                    .header("etag")
                    .unwrap_or_else(|| panic!("{path}: ETag"))
                    .to_string();
                assert!(!etag.starts_with("W/"), "{path}: strong");
                assert_eq!(first.header("last-modified").is_some(), *dated, "{path}");
                let by_tag = api
                    .get_with(path, &key, &[("if-none-match", etag.as_str())])
                    .await;
                assert_eq!(by_tag.status, 304, "{path}: {}", by_tag.text);
                assert_eq!(by_tag.header("etag"), Some(etag.as_str()), "{path}");
                assert_eq!(is_hit(&by_tag), *output_cached, "{path}");
                if *dated {
                    let at = first.header("last-modified").expect("date").to_string();
                    let by_date = api
                        .get_with(path, &key, &[("if-modified-since", at.as_str())])
                        .await;
                    assert_eq!(by_date.status, 304, "{path}: {}", by_date.text);
                    assert_eq!(is_hit(&by_date), *output_cached, "{path}");
                } else {
                    // No date to compare: If-Modified-Since is ignored
                    // (RFC 9110 §13.1.3), even one in the future.
                    let ignored = api
                        .get_with(path, &key, &[("if-modified-since", FAR_FUTURE)])
                        .await;
                    assert_eq!(ignored.status, 200, "{path}: {}", ignored.text);
                }
                // A failed If-Match is a 412, from an entry too.
                let refused = api.get_with(path, &key, &[("if-match", "\"other\"")]).await;
                assert_eq!(refused.status, 412, "{path}: {}", refused.text);
            }

            // A change moves the validators of the list it shows in.
            let before = api.get(&docs, &key).await;
            let doc = api
                .json("PUT", &format!("{docs}/x"), &key, json!({"n": 2}))
                .await;
            assert_eq!(doc.status, 200, "{}", doc.text);
            let after = api
                .get_with(
                    &docs,
                    &key,
                    &[("if-none-match", before.header("etag").expect("etag"))],
                )
                .await;
            assert_eq!(after.status, 200, "{}", after.text);
            assert_ne!(after.header("etag"), before.header("etag"));
            // A deletion changes the page's digest, though no row's date
            // moves: If-None-Match sees it, and If-Modified-Since, which
            // could not, is not answered 304.
            let second = api
                .json("POST", &docs, &key, json!({"id": "y", "data": {}}))
                .await;
            assert_eq!(second.status, 201, "{}", second.text);
            let full = api.get(&docs, &key).await;
            let gone = api
                .send("DELETE", &format!("{docs}/y"), Some(&key), Body::None, &[])
                .await;
            assert_eq!(gone.status, 204, "{}", gone.text);
            let revalidated = api
                .get_with(
                    &docs,
                    &key,
                    &[("if-none-match", full.header("etag").expect("etag"))],
                )
                .await;
            assert_eq!(revalidated.status, 200, "{}", revalidated.text);
            let by_date = api
                .get_with(&docs, &key, &[("if-modified-since", FAR_FUTURE)])
                .await;
            assert_eq!(by_date.status, 200, "{}", by_date.text);
        },
    )
    .await;
}
