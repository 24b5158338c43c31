//! One suite, run against both backends: the filesystem one in a temp dir,
//! the S3 one against the stack's Garage (`source .stack/env`).

mod support;

use std::time::Duration;

use strata_storage::{BackendError, BlobKey, ByteRange};
use support::{Ctx, body, digest, failing, generated, read_all};

const MIB: usize = 1024 * 1024;

/// Each suite function becomes `fs::<name>` and `s3::<name>`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Ctx::fs().await).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Ctx::s3().await).await
                }
            )*
        }
    };
}

both_backends!(
    roundtrip,
    ranges,
    empty_blob,
    large_blob_in_odd_chunks,
    failing_body_leaves_nothing,
    failing_large_body_leaves_nothing,
    wrong_length_leaves_nothing,
    dropped_put_leaves_nothing,
    copy,
    delete_is_idempotent,
    list_order_after_limit,
    delete_prefix,
    hostile_keys_are_refused,
    check_and_describe,
);

async fn roundtrip(ctx: Ctx) {
    let key = ctx.key("a/b/blob");
    let data = b"hello, strata storage".repeat(100);
    let n = ctx
        .backend
        .put(&key, body(&data, 7), Some(data.len() as u64))
        .await
        .expect("put");
    assert_eq!(n, data.len() as u64);
    assert_eq!(
        read_all(ctx.backend.get(&key, None).await.expect("get")).await,
        data
    );
    let listed = ctx
        .backend
        .list(&format!("{}/", ctx.prefix), None, 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].size, data.len() as u64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((listed[0].modified_unix - now).abs() < 300, "{listed:?}");
    assert!(matches!(
        ctx.backend.get(&ctx.key("a/b/other"), None).await,
        Err(BackendError::NotFound)
    ));
    ctx.cleanup().await;
}

async fn ranges(ctx: Ctx) {
    let key = ctx.key("ranged");
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    ctx.backend
        .put(&key, body(&data, 333), None)
        .await
        .expect("put");
    for (start, end) in [
        (0, 1),
        (999, 1000),
        (100, 600),
        (0, 1000),
        (1000, 1000),
        (5, 5),
    ] {
        let got = read_all(
            ctx.backend
                .get(&key, Some(ByteRange { start, end }))
                .await
                .unwrap_or_else(|e| panic!("{} range {start}..{end}: {e}", ctx.kind)),
        )
        .await;
        assert_eq!(
            got,
            data[start as usize..end as usize],
            "{} range {start}..{end}",
            ctx.kind
        );
    }
    // Past the end: the caller's metadata and the bytes disagree.
    for (start, end) in [(990, 1001), (1000, 1001), (2000, 3000)] {
        let got = ctx.backend.get(&key, Some(ByteRange { start, end })).await;
        assert!(
            matches!(got, Err(BackendError::InvalidRange(_))),
            "{} range {start}..{end}: {:?}",
            ctx.kind,
            got.err()
        );
    }
    assert!(matches!(
        ctx.backend
            .get(&ctx.key("missing"), Some(ByteRange { start: 0, end: 1 }))
            .await,
        Err(BackendError::NotFound)
    ));
    ctx.cleanup().await;
}

async fn empty_blob(ctx: Ctx) {
    let key = ctx.key("empty");
    assert_eq!(
        ctx.backend
            .put(&key, body(&[], 1), Some(0))
            .await
            .expect("put"),
        0
    );
    assert!(
        read_all(ctx.backend.get(&key, None).await.expect("get"))
            .await
            .is_empty()
    );
    let empty_range = ctx
        .backend
        .get(&key, Some(ByteRange { start: 0, end: 0 }))
        .await
        .expect("empty range of an empty blob");
    assert!(read_all(empty_range).await.is_empty());
    // Also with a stream that yields no chunk at all.
    let key2 = ctx.key("empty2");
    ctx.backend
        .put(&key2, Box::pin(futures::stream::empty()), None)
        .await
        .expect("put");
    let listed = ctx
        .backend
        .list(&format!("{}/", ctx.prefix), None, 10)
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|b| b.size).collect::<Vec<_>>(),
        vec![0, 0]
    );
    ctx.cleanup().await;
}

/// 20 MiB in odd-sized chunks: on S3 a multipart upload of three parts.
async fn large_blob_in_odd_chunks(ctx: Ctx) {
    let key = ctx.key("large");
    let len = 20 * MIB as u64 + 12_345;
    let (want, _) = digest(generated(len, 1_000_003, 42)).await;
    let n = ctx
        .backend
        .put(&key, generated(len, 1_000_003, 42), None)
        .await
        .expect("put");
    assert_eq!(n, len);
    let (got, got_len) = digest(ctx.backend.get(&key, None).await.expect("get")).await;
    assert_eq!((got, got_len), (want, len));
    // A range across the boundary of the first two parts.
    let whole = read_all(generated(len, 1_000_003, 42)).await;
    let range = ByteRange {
        start: 8 * MIB as u64 - 10,
        end: 8 * MIB as u64 + 10,
    };
    let got = read_all(ctx.backend.get(&key, Some(range)).await.expect("get")).await;
    assert_eq!(got, whole[range.start as usize..range.end as usize]);
    ctx.cleanup().await;
}

async fn failing_body_leaves_nothing(ctx: Ctx) {
    let key = ctx.key("broken");
    let got = ctx
        .backend
        .put(&key, failing(vec![7; 100_000], 4096), None)
        .await;
    assert!(matches!(got, Err(BackendError::Body(_))), "{got:?}");
    assert_nothing_left(&ctx, &key).await;
}

/// Past one part: S3's multipart upload must be aborted.
async fn failing_large_body_leaves_nothing(ctx: Ctx) {
    let key = ctx.key("broken-large");
    let got = ctx
        .backend
        .put(&key, failing(vec![7; 19 * MIB], 1 << 20), None)
        .await;
    assert!(matches!(got, Err(BackendError::Body(_))), "{got:?}");
    assert_nothing_left(&ctx, &key).await;
}

/// A body that does not match its announced length is a broken body.
async fn wrong_length_leaves_nothing(ctx: Ctx) {
    for (len, hint) in [(100, 101), (100, 99), (9 * MIB, 9 * MIB + 1)] {
        let key = ctx.key(&format!("short-{len}-{hint}"));
        let got = ctx
            .backend
            .put(&key, body(&vec![1; len], 65536), Some(hint as u64))
            .await;
        assert!(matches!(got, Err(BackendError::Body(_))), "{got:?}");
        assert_nothing_left(&ctx, &key).await;
    }
}

/// The client goes away mid-upload: the handler's future (and the put's)
/// is dropped, and nothing may remain.
async fn dropped_put_leaves_nothing(ctx: Ctx) {
    for (len, name) in [(100_000, "dropped-small"), (10 * MIB, "dropped-large")] {
        let key = ctx.key(name);
        let stalls = Box::pin(futures::StreamExt::chain(
            body(&vec![3; len], 1 << 20),
            futures::stream::pending(),
        ));
        let put = ctx.backend.put(&key, stalls, None);
        assert!(
            tokio::time::timeout(Duration::from_secs(3), put)
                .await
                .is_err(),
            "put of a stalled body returned"
        );
        assert_nothing_left(&ctx, &key).await;
    }
}

async fn assert_nothing_left(ctx: &Ctx, key: &BlobKey) {
    assert!(
        matches!(
            ctx.backend.get(key, None).await,
            Err(BackendError::NotFound)
        ),
        "{}: {key} is visible",
        ctx.kind
    );
    assert!(ctx.list_all().await.is_empty(), "{}", ctx.kind);
    match &ctx.dir {
        // No temp file left in the staging directory.
        Some(dir) => {
            let tmp = dir.path().join("objects/.tmp");
            let left: Vec<_> = std::fs::read_dir(&tmp)
                .expect("read .tmp")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert!(left.is_empty(), "temp files left: {left:?}");
        }
        // No multipart upload left (the abort of a dropped put runs in the
        // background: give it a moment).
        None => {
            let client = support::s3_client();
            let mut uploads = Vec::new();
            for _ in 0..50 {
                let listed = client
                    .list_multipart_uploads()
                    .bucket(support::TEST_BUCKET)
                    .prefix(key.as_str())
                    .send()
                    .await
                    .expect("list multipart uploads");
                uploads = listed.uploads().to_vec();
                if uploads.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(uploads.is_empty(), "multipart uploads left: {uploads:?}");
        }
    }
}

async fn copy(ctx: Ctx) {
    let (a, b) = (ctx.key("src/a"), ctx.key("dst/b"));
    ctx.backend
        .put(&a, body(b"original", 3), None)
        .await
        .expect("put");
    ctx.backend.copy(&a, &b).await.expect("copy");
    assert_eq!(
        read_all(ctx.backend.get(&b, None).await.expect("get")).await,
        b"original"
    );
    // Onto an existing blob: replaced whole.
    let c = ctx.key("src/c");
    ctx.backend
        .put(&c, body(b"another, longer blob", 5), None)
        .await
        .expect("put");
    ctx.backend.copy(&c, &b).await.expect("copy over");
    assert_eq!(
        read_all(ctx.backend.get(&b, None).await.expect("get")).await,
        b"another, longer blob"
    );
    // Onto itself: unchanged.
    ctx.backend.copy(&a, &a).await.expect("copy onto itself");
    assert_eq!(
        read_all(ctx.backend.get(&a, None).await.expect("get")).await,
        b"original"
    );
    // The copy is independent of its source.
    ctx.backend.delete(&c).await.expect("delete");
    assert_eq!(
        read_all(ctx.backend.get(&b, None).await.expect("get")).await,
        b"another, longer blob"
    );
    assert!(matches!(
        ctx.backend.copy(&ctx.key("missing"), &ctx.key("x")).await,
        Err(BackendError::NotFound)
    ));
    assert_eq!(ctx.list_all().await, vec!["dst/b", "src/a"]);
    ctx.cleanup().await;
}

async fn delete_is_idempotent(ctx: Ctx) {
    let key = ctx.key("d/e/f");
    ctx.backend.delete(&key).await.expect("delete missing");
    ctx.backend
        .put(&key, body(b"x", 1), None)
        .await
        .expect("put");
    ctx.backend.delete(&key).await.expect("delete");
    ctx.backend.delete(&key).await.expect("delete again");
    assert!(matches!(
        ctx.backend.get(&key, None).await,
        Err(BackendError::NotFound)
    ));
    // A key that names a "directory" of other keys holds no blob.
    ctx.backend
        .put(&ctx.key("d/e/g"), body(b"y", 1), None)
        .await
        .expect("put");
    ctx.backend
        .delete(&ctx.key("d/e"))
        .await
        .expect("delete dir-like key");
    assert!(matches!(
        ctx.backend.get(&ctx.key("d/e"), None).await,
        Err(BackendError::NotFound)
    ));
    assert_eq!(ctx.list_all().await, vec!["d/e/g"]);
    // Put again where a delete pruned the directories.
    ctx.backend.delete(&ctx.key("d/e/g")).await.expect("delete");
    ctx.backend
        .put(&key, body(b"z", 1), None)
        .await
        .expect("put after prune");
    assert_eq!(ctx.list_all().await, vec!["d/e/f"]);
    ctx.cleanup().await;
}

async fn list_order_after_limit(ctx: Ctx) {
    // Byte order of whole keys: '-' (0x2d) < '/' (0x2f) < '0' (0x30), so a
    // walk that sorted directory names alone would get `a-c` and `a/...`
    // the wrong way round.
    let names = [
        "a/b", "a-c", "a0", "a/c/d", "a/c/e", "b", "a/c-x", "ab/x", "z/y/x/w",
    ];
    for name in names {
        ctx.backend
            .put(&ctx.key(name), body(name.as_bytes(), 2), None)
            .await
            .expect("put");
    }
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(ctx.list_all().await, want, "{}", ctx.kind);

    // Pages of 2, each starting after the previous page's last key.
    let mut paged = Vec::new();
    let mut after: Option<BlobKey> = None;
    loop {
        let page = ctx
            .backend
            .list(&format!("{}/", ctx.prefix), after.as_ref(), 2)
            .await
            .expect("list page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        paged.extend(
            page.iter()
                .map(|b| b.key.as_str()[ctx.prefix.len() + 1..].to_owned()),
        );
    }
    assert_eq!(paged, want, "{} paged", ctx.kind);

    // Prefixes: a directory, and a partial segment.
    let under = |p: &str| {
        let mut v: Vec<String> = want.iter().filter(|k| k.starts_with(p)).cloned().collect();
        v.sort();
        v
    };
    for prefix in ["a/", "a", "a/c", "a/c/", "z/y/", "nothing"] {
        let got: Vec<String> = ctx
            .backend
            .list(&format!("{}/{prefix}", ctx.prefix), None, 100)
            .await
            .expect("list prefix")
            .into_iter()
            .map(|b| b.key.as_str()[ctx.prefix.len() + 1..].to_owned())
            .collect();
        assert_eq!(got, under(prefix), "{} prefix {prefix:?}", ctx.kind);
    }
    // `after` that is not itself a key, and limit 0.
    let after = BlobKey::parse(format!("{}/a/c", ctx.prefix)).expect("key");
    let got: Vec<String> = ctx
        .backend
        .list(&format!("{}/", ctx.prefix), Some(&after), 3)
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.key.as_str()[ctx.prefix.len() + 1..].to_owned())
        .collect();
    assert_eq!(got, vec!["a/c-x", "a/c/d", "a/c/e"], "{}", ctx.kind);
    assert!(
        ctx.backend
            .list(&format!("{}/", ctx.prefix), None, 0)
            .await
            .expect("list")
            .is_empty()
    );
    ctx.cleanup().await;
}

async fn delete_prefix(ctx: Ctx) {
    let names: Vec<String> = (0..1010)
        .map(|i| format!("b/one/o/{i:05}"))
        .chain([
            "b/one-sibling/x".into(),
            "b/onex".into(),
            "b/two/o/1".into(),
        ])
        .collect();
    // 1,010 blobs under b/one/: more than one listing page.
    futures::StreamExt::for_each_concurrent(futures::stream::iter(names.iter()), 32, |name| {
        let (backend, key) = (&ctx.backend, ctx.key(name));
        async move {
            backend.put(&key, body(b"x", 1), None).await.expect("put");
        }
    })
    .await;
    let deleted = ctx
        .backend
        .delete_prefix(&format!("{}/b/one/", ctx.prefix))
        .await
        .expect("delete prefix");
    assert_eq!(deleted, 1010);
    // Neighbours whose keys merely start alike are untouched.
    assert_eq!(
        ctx.list_all().await,
        vec!["b/one-sibling/x", "b/onex", "b/two/o/1"]
    );
    for bad in ["", "/", "test/", "b/one", "../", "a//"] {
        assert!(
            matches!(
                ctx.backend.delete_prefix(bad).await,
                Err(BackendError::InvalidKey(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(ctx.list_all().await.len(), 3);
    ctx.cleanup().await;
}

async fn hostile_keys_are_refused(ctx: Ctx) {
    let long = "x".repeat(1025);
    let hostile = [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "a/",
        ".",
        "..",
        ".tmp/x",
        "a\\..\\b",
        "a\0b",
        "a\nb",
        long.as_str(),
    ];
    for raw in hostile {
        assert!(
            matches!(BlobKey::parse(raw), Err(BackendError::InvalidKey(_))),
            "{raw:?} parsed"
        );
        let key = BlobKey::from_stored(raw);
        let put = ctx.backend.put(&key, body(b"evil", 4), None).await;
        assert!(
            matches!(put, Err(BackendError::InvalidKey(_))),
            "{} put {raw:?}: {put:?}",
            ctx.kind
        );
        assert!(matches!(
            ctx.backend.get(&key, None).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            ctx.backend.delete(&key).await,
            Err(BackendError::InvalidKey(_))
        ));
        let ok = ctx.key("fine");
        assert!(matches!(
            ctx.backend.copy(&ok, &key).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            ctx.backend.copy(&key, &ok).await,
            Err(BackendError::InvalidKey(_))
        ));
    }
    // Nothing was written next to the fs root, nor inside it.
    if let Some(dir) = &ctx.dir {
        let mut beside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        beside.sort();
        assert_eq!(beside, vec!["objects"]);
    }
    assert!(ctx.list_all().await.is_empty());
    // Unusual but safe characters are keys like any other.
    let odd = ctx.key("spaces and ünïcödé/100%/a?b#c");
    ctx.backend
        .put(&odd, body(b"odd", 1), None)
        .await
        .expect("put odd key");
    ctx.backend
        .copy(&odd, &ctx.key("copied %20"))
        .await
        .expect("copy odd key");
    assert_eq!(
        read_all(
            ctx.backend
                .get(&ctx.key("copied %20"), None)
                .await
                .expect("get")
        )
        .await,
        b"odd"
    );
    ctx.cleanup().await;
}

async fn check_and_describe(ctx: Ctx) {
    ctx.backend.check().await.expect("check");
    let described = ctx.backend.describe();
    let scheme = if ctx.kind == "fs" { "file://" } else { "s3://" };
    assert!(described.starts_with(scheme), "{described}");
    assert!(
        !described.contains(&support::env("STRATA_S3_SECRET_ACCESS_KEY")),
        "{described}"
    );
}
