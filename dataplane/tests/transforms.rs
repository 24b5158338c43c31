//! Image transforms (issue 11) against real services (PostgreSQL, the fs
//! backend, the real router in this process): output sizes and formats
//! checked by decoding them, every fit and format (`auto` from `Accept`
//! with `Vary: Accept`), EXIF orientation applied and metadata stripped,
//! signed URLs (each field tampered, expired, another tenant), unsigned
//! presets on public buckets only, decompression bombs, truncated images
//! and non-images refused with a 4xx problem while the process's peak RSS
//! stays put, single flight under 50 identical requests, variants gone
//! with their source, and 503 + `Retry-After` when every slot is busy.
//! Needs `source .stack/env`.

mod storage_support;
mod support;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use storage_support::{Store, app_state, backend, create_bucket, settings};
use strata_dataplane::media::{Media, MediaSettings};
use support::{Body, Client, Server, Tenant, with_tenants};

fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

/// A smooth 4:3 picture with some detail.
fn photo(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let r = (x * 255 / w) as u8;
        let g = (y * 255 / h) as u8;
        let b = ((x / 8 + y / 8 + seed) % 2 * 200) as u8;
        Rgb([r, g, b])
    })
}

/// A JPEG with an EXIF APP1 segment right after SOI carrying
/// `Orientation` (and a camera model, to see it stripped).
fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    // TIFF, big-endian: header, one IFD of two entries.
    let model = b"StrataCam\0";
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a");
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&2u16.to_be_bytes());
    // 0x0110 Model, ASCII, at offset 8 + 2 + 2*12 + 4 = 38.
    tiff.extend_from_slice(&0x0110u16.to_be_bytes());
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend_from_slice(&(model.len() as u32).to_be_bytes());
    tiff.extend_from_slice(&38u32.to_be_bytes());
    // 0x0112 Orientation, SHORT, 1 value (left-justified in the field).
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    tiff.extend_from_slice(model);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// zlib of `n` zero bytes: deflate with fixed Huffman codes, a literal 0
/// then matches of 258 at distance 1 (13 bits per 258 bytes).
fn zlib_zeros(n: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        len: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.len;
            self.len += bits;
            while self.len >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u64, bits: u32) {
            let mut reversed = 0;
            for i in 0..bits {
                reversed |= ((code >> i) & 1) << (bits - 1 - i);
            }
            self.put(reversed, bits);
        }
    }
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        len: 0,
    };
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman
    let literal_zero = |bits: &mut Bits| bits.code(0x30, 8);
    literal_zero(&mut bits);
    let mut left = n - 1;
    while left >= 258 {
        bits.code(0xC5, 8); // length 258 (code 285)
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        literal_zero(&mut bits);
    }
    bits.code(0, 7); // end of block (256)
    if bits.len > 0 {
        bits.put(0, 8 - bits.len);
    }
    // Adler-32 of zeros: a = 1, b = n mod 65521.
    let b = (n % 65_521) as u32;
    bits.out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    bits.out
}

/// A grayscale PNG claiming `w`×`h` whose IDAT holds only its first rows
/// (zeros): a few KB that would decode to `w`×`h` pixels.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_zeros((w as usize + 1) * 8));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Bytes with no known signature.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Peak and current resident set of this process (KiB).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("field")
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Api {
    http: reqwest::Client,
    base: String,
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn image(&self) -> image::DynamicImage {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        image::load_from_memory(&self.body).expect("decodable output")
    }
    fn format(&self) -> ImageFormat {
        image::guess_format(&self.body).expect("a known format")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// A problem+json with `status` and `code`.
    fn problem(&self, status: u16, code: &str) {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{code}: {text}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{text}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{text}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{text}"
        );
    }
}

impl Api {
    async fn get(&self, path: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Got {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("send");
        Got {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("body").to_vec(),
        }
    }
}

async fn put(client: &Client, tenant: &str, bucket: &str, key: &str, admin: &str, bytes: Vec<u8>) {
    let content_type = match key.rsplit('.').next() {
        Some("png") => "image/png",
        _ => "image/jpeg",
    };
    let reply = client
        .send(
            "PUT",
            &format!("/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}"),
            Some(admin),
            Body::Raw(Some(content_type), bytes),
            &[],
        )
        .await;
    assert!(
        reply.status == 201 || reply.status == 200,
        "put {key}: {}",
        reply.text
    );
}

/// The tenant database as the stack's superuser (config, variants).
async fn admin_on(tenant: &Tenant) -> sqlx::PgPool {
    let database = strata_operator::placement::TenantNames::for_tenant(tenant.id).database;
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&strata_tests::with_database(
            &strata_tests::env("STRATA_DATABASE_URL"),
            database.as_str(),
        ))
        .await
        .expect("admin pool")
}

async fn variant_count(db: &sqlx::PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM variants WHERE source_key = $1")
        .bind(key)
        .fetch_one(db)
        .await
        .expect("count variants")
}

async fn enable_transforms(catalog: &strata_db::Catalog, bucket: uuid::Uuid) {
    sqlx::query("UPDATE catalog.buckets SET image_transforms = true WHERE id = $1")
        .bind(bucket)
        .execute(catalog.pool())
        .await
        .expect("transforms on");
}

/// Replaces one query field of a signed URL (`name=value`).
fn with_field(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').expect("query");
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((n, _)) if n == name => format!("{n}={value}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

fn field<'a>(url: &'a str, name: &str) -> &'a str {
    url.split_once('?')
        .expect("query")
        .1
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .expect("field")
}

fn flip_hex(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    chars[0] = if chars[0] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn image_transforms() {
    with_tenants(
        "transforms",
        &["tra", "trb"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let mut state = app_state(&catalog_url, tb.backend.clone(), None, settings());
            // One slot (the 503 below) and a generous time budget: this
            // test runs unoptimised codecs.
            let media = Arc::new(Media::new(MediaSettings {
                concurrency: 1,
                time_budget: Duration::from_secs(120),
                retry_after: Duration::from_secs(3),
                ..MediaSettings::default()
            }));
            state.storage.media = media.clone();
            let server = Server::start(state, 64 << 20).await;
            let client = Client::new(&server.base);
            let api = Api {
                http: reqwest::Client::new(),
                base: server.base.clone(),
            };
            let (a, b) = (&tenants[0], &tenants[1]);
            let admin = client.accept_invitation(a).await;
            let admin_b = client.accept_invitation(b).await;
            let db = admin_on(a).await;
            let t = a.name.as_str();
            for (tenant, name, public) in [
                (a.id, "pics", false),
                (a.id, "pics2", false),
                (a.id, "pub", true),
                (b.id, "pics", false),
            ] {
                let id = create_bucket(&catalog, tenant, name, json!({"public": public})).await;
                enable_transforms(&catalog, id).await;
            }
            let plain = create_bucket(&catalog, a.id, "plain", json!({})).await;
            let _ = plain;
            let render = |bucket: &str, key: &str, query: &str| {
                format!("/v1/tenants/{t}/buckets/{bucket}/render/{key}?{query}")
            };

            let source = photo(640, 480, 0);
            let jpeg = encode(&source.clone().into(), ImageFormat::Jpeg);
            put(&client, t, "pics", "photo.jpg", &admin, jpeg.clone()).await;
            put(&client, t, "pics2", "photo.jpg", &admin, jpeg.clone()).await;
            put(&client, t, "pub", "photo.jpg", &admin, jpeg.clone()).await;
            put(&client, t, "plain", "photo.jpg", &admin, jpeg.clone()).await;
            put(&client, b.name.as_str(), "pics", "photo.jpg", &admin_b, jpeg.clone()).await;

            // Not on a bucket without imageTransforms.
            let got = api
                .get(&render("plain", "photo.jpg", "w=10"), Some(&admin), &[])
                .await;
            got.problem(403, "forbidden");

            // Each fit, checked by decoding (640×480 into a 200×200 box).
            for (fit, w, h) in [
                ("cover", 200, 200),
                ("contain", 200, 200),
                ("fill", 200, 200),
                ("inside", 200, 150),
            ] {
                let got = api
                    .get(
                        &render("pics", "photo.jpg", &format!("w=200&h=200&fit={fit}&fmt=png")),
                        Some(&admin),
                        &[],
                    )
                    .await;
                let image = got.image();
                assert_eq!((image.width(), image.height()), (w, h), "{fit}");
                assert_eq!(got.header("content-type"), Some("image/png"));
                if fit == "contain" {
                    // Letterboxed: 200×150 centred, white bands above and below.
                    let rgb = image.to_rgb8();
                    assert_eq!(rgb.get_pixel(100, 5), &Rgb([255, 255, 255]));
                    assert_eq!(rgb.get_pixel(100, 195), &Rgb([255, 255, 255]));
                    assert_ne!(rgb.get_pixel(100, 100), &Rgb([255, 255, 255]));
                }
            }
            // One side: the other from the aspect ratio; inside never upscales.
            for (query, w, h) in [
                ("w=320&fmt=png", 320, 240),
                ("h=120&fmt=png", 160, 120),
                ("w=1000&h=1000&fit=inside&fmt=png", 640, 480),
            ] {
                let got = api
                    .get(&render("pics", "photo.jpg", query), Some(&admin), &[])
                    .await;
                let image = got.image();
                assert_eq!((image.width(), image.height()), (w, h), "{query}");
            }
            // Cover with gravity keeps the named side: west of a
            // left-dark/right-bright gradient is darker than east.
            let west = api
                .get(&render("pics", "photo.jpg", "w=100&h=100&g=west&fmt=png"), Some(&admin), &[])
                .await
                .image()
                .to_rgb8();
            let east = api
                .get(&render("pics", "photo.jpg", "w=100&h=100&g=east&fmt=png"), Some(&admin), &[])
                .await
                .image()
                .to_rgb8();
            assert!(west.get_pixel(50, 50)[0] + 40 < east.get_pixel(50, 50)[0]);

            // Formats: explicit, and auto from Accept (with Vary: Accept).
            for (fmt, accept, format, content_type) in [
                ("jpeg", None, ImageFormat::Jpeg, "image/jpeg"),
                ("png", None, ImageFormat::Png, "image/png"),
                ("webp", None, ImageFormat::WebP, "image/webp"),
                ("auto", Some("image/avif,image/webp,*/*"), ImageFormat::WebP, "image/webp"),
                ("auto", Some("image/webp;q=0, image/*"), ImageFormat::Jpeg, "image/jpeg"),
                ("auto", None, ImageFormat::Jpeg, "image/jpeg"),
            ] {
                let headers: Vec<(&str, &str)> =
                    accept.map(|a| ("accept", a)).into_iter().collect();
                let got = api
                    .get(
                        &render("pics", "photo.jpg", &format!("w=160&fmt={fmt}")),
                        Some(&admin),
                        &headers,
                    )
                    .await;
                let image = got.image();
                assert_eq!((image.width(), image.height()), (160, 120), "{fmt}");
                assert_eq!(got.format(), format, "{fmt} {accept:?}");
                assert_eq!(got.header("content-type"), Some(content_type));
                let vary = got.header("vary").unwrap_or("").to_ascii_lowercase();
                assert_eq!(
                    vary.split(',').any(|v| v.trim() == "accept"),
                    fmt == "auto",
                    "{fmt}: vary {vary:?}"
                );
                assert!(got.header("etag").is_some());
                assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
            }
            // A variant's ETag gives 304.
            let first = api
                .get(&render("pics", "photo.jpg", "w=160&fmt=webp"), Some(&admin), &[])
                .await;
            let etag = first.header("etag").expect("etag").to_string();
            let again = api
                .get(
                    &render("pics", "photo.jpg", "w=160&fmt=webp"),
                    Some(&admin),
                    &[("if-none-match", &etag)],
                )
                .await;
            assert_eq!(again.status, 304);
            // Bad parameters: 400 with pointers.
            let got = api
                .get(&render("pics", "photo.jpg", "w=0&fit=stretch"), Some(&admin), &[])
                .await;
            assert_eq!(got.status, 400, "{}", String::from_utf8_lossy(&got.body));

            // EXIF orientation 6 (rotate 90° clockwise to display): a
            // 200×100 picture, red left half and blue right half, comes out
            // 100×200 with red on top; metadata is stripped.
            let halves = RgbImage::from_fn(200, 100, |x, _| {
                if x < 100 {
                    Rgb([255, 0, 0])
                } else {
                    Rgb([0, 0, 255])
                }
            });
            let exif = with_exif(&encode(&halves.into(), ImageFormat::Jpeg), 6);
            assert!(exif.windows(9).any(|w| w == b"StrataCam"));
            put(&client, t, "pics", "rotated.jpg", &admin, exif).await;
            for fmt in ["png", "jpeg", "webp"] {
                let got = api
                    .get(&render("pics", "rotated.jpg", &format!("fmt={fmt}&q=95")), Some(&admin), &[])
                    .await;
                let image = got.image().to_rgb8();
                assert_eq!(image.dimensions(), (100, 200), "{fmt}");
                let top = image.get_pixel(50, 20);
                let bottom = image.get_pixel(50, 180);
                assert!(top[0] > 200 && top[2] < 60, "{fmt}: top {top:?}");
                assert!(bottom[2] > 200 && bottom[0] < 60, "{fmt}: bottom {bottom:?}");
                assert!(!got.body.windows(4).any(|w| w == b"Exif"), "{fmt}: EXIF kept");
                assert!(!got.body.windows(9).any(|w| w == b"StrataCam"), "{fmt}");
                if fmt == "jpeg" {
                    // No APP1 (EXIF/XMP) or APP2 (ICC) segment.
                    assert!(!got.body.windows(2).any(|w| w == [0xFF, 0xE1] || w == [0xFF, 0xE2]));
                }
                if fmt == "png" {
                    for kind in [&b"eXIf"[..], b"tEXt", b"iTXt", b"zTXt", b"iCCP"] {
                        assert!(!got.body.windows(4).any(|w| w == kind), "{fmt}");
                    }
                }
            }
            // Alpha survives in PNG and WebP, is flattened on white in JPEG.
            let alpha = RgbaImage::from_fn(80, 60, |x, _| {
                if x < 40 {
                    Rgba([0, 128, 0, 255])
                } else {
                    Rgba([0, 0, 0, 0])
                }
            });
            put(&client, t, "pics", "alpha.png", &admin, encode(&alpha.into(), ImageFormat::Png)).await;
            let png = api
                .get(&render("pics", "alpha.png", "fmt=png"), Some(&admin), &[])
                .await
                .image()
                .to_rgba8();
            assert_eq!(png.get_pixel(70, 30)[3], 0);
            assert_eq!(png.get_pixel(10, 30)[3], 255);
            let jpg = api
                .get(&render("pics", "alpha.png", "fmt=jpeg"), Some(&admin), &[])
                .await
                .image()
                .to_rgb8();
            assert!(jpg.get_pixel(70, 30).0.iter().all(|&c| c > 240));

            // Signed URLs.
            let sign = |body: Value| {
                let client = client.clone();
                let admin = admin.clone();
                let t = t.to_string();
                async move {
                    let reply = client
                        .json("POST", &format!("/v1/tenants/{t}/buckets/pics/render-urls"), &admin, body)
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    reply.json["url"].as_str().expect("url").to_string()
                }
            };
            let url = sign(json!({"key": "photo.jpg", "transform": {"w": 100, "fmt": "png"}, "expires_in": 600})).await;
            let got = api.get(&url, None, &[]).await;
            assert_eq!(got.image().width(), 100);
            // The same transform spelled another way still verifies.
            let spelled = url.replacen("w=100", "width=100", 1);
            assert_eq!(api.get(&spelled, None, &[]).await.status, 200);
            put(&client, t, "pics", "other.jpg", &admin, jpeg.clone()).await;
            let signature = field(&url, "X-Strata-Signature").to_string();
            let key_id = field(&url, "X-Strata-Key-Id").to_string();
            let expires: u64 = field(&url, "X-Strata-Expires").parse().expect("expires");
            let tampered = [
                ("tenant", url.replacen(&format!("/tenants/{t}/"), &format!("/tenants/{}/", b.name), 1)),
                ("bucket", url.replacen("/buckets/pics/", "/buckets/pics2/", 1)),
                ("key", url.replacen("/render/photo.jpg", "/render/other.jpg", 1)),
                ("width", with_field(&url, "w", "101")),
                ("fit", with_field(&url, "fit", "fill")),
                ("gravity", with_field(&url, "g", "north")),
                ("format", with_field(&url, "fmt", "jpeg")),
                ("quality", with_field(&url, "q", "81")),
                ("added field", format!("{url}&h=20")),
                ("expiry", with_field(&url, "X-Strata-Expires", &(expires + 1).to_string())),
                ("key id", with_field(&url, "X-Strata-Key-Id", &flip_hex(&key_id))),
                ("signature", with_field(&url, "X-Strata-Signature", &flip_hex(&signature))),
                ("no signature", url.replacen(&format!("&X-Strata-Signature={signature}"), "", 1)),
            ];
            for (what, tampered) in tampered {
                assert_ne!(tampered, url, "{what}");
                let got = api.get(&tampered, None, &[]).await;
                got.problem(403, "forbidden");
                assert!(got.body.len() < 2000, "{what}");
            }
            // Expired.
            let short = sign(json!({"key": "photo.jpg", "transform": {"w": 90, "fmt": "png"}, "expires_in": 1})).await;
            tokio::time::sleep(Duration::from_millis(2100)).await;
            api.get(&short, None, &[]).await.problem(403, "forbidden");
            // Another tenant's objects: not found, signed or with a key.
            let other = format!("/v1/tenants/{}/buckets/pics/render/photo.jpg?w=10", b.name);
            assert_eq!(api.get(&other, Some(&admin), &[]).await.status, 404);
            let missing_bucket = url.replacen("/buckets/pics/", "/buckets/nope/", 1);
            assert_eq!(api.get(&missing_bucket, None, &[]).await.status, 404);
            let b_url = url.replacen(&format!("/tenants/{t}/"), &format!("/tenants/{}/", b.name), 1)
                .replacen("/buckets/pics/", "/buckets/pics2/", 1);
            assert_eq!(api.get(&b_url, None, &[]).await.status, 404);

            // Unsigned renders: only a preset the tenant allows, only in a
            // public bucket.
            sqlx::query(
                "INSERT INTO config (key, value, source) VALUES ('media.presets', $1, 'tenant')
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            )
            .bind(json!({"thumb": {"w": 64, "h": 64, "fit": "cover", "fmt": "png"}}))
            .execute(&db)
            .await
            .expect("presets");
            let got = api.get(&render("pub", "photo.jpg", "preset=thumb"), None, &[]).await;
            assert_eq!(got.image().to_rgb8().dimensions(), (64, 64));
            api.get(&render("pub", "photo.jpg", "preset=huge"), None, &[])
                .await
                .problem(403, "forbidden");
            assert_eq!(
                api.get(&render("pub", "photo.jpg", "preset=thumb&w=2000"), None, &[]).await.status,
                400
            );
            assert_eq!(api.get(&render("pub", "photo.jpg", "w=64"), None, &[]).await.status, 401);
            assert_eq!(api.get(&render("pics", "photo.jpg", "preset=thumb"), None, &[]).await.status, 401);
            assert_eq!(api.get(&render("pics", "photo.jpg", "w=64"), None, &[]).await.status, 401);

            // Bombs, truncated images, non-images: a 4xx problem each, and
            // the peak RSS does not move (the limits act before decoding).
            let bomb = bomb_png(50_000, 50_000);
            assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
            let area_bomb = bomb_png(16_000, 16_000);
            let mut truncated_png = encode(&photo(400, 300, 1).into(), ImageFormat::Png);
            truncated_png.truncate(truncated_png.len() / 2);
            let truncated_jpeg = jpeg[..jpeg.len() / 3].to_vec();
            let header_only = jpeg[..200].to_vec();
            let cases = [
                ("bomb.png", bomb, "image-too-large"),
                ("area.png", area_bomb, "image-too-large"),
                ("truncated.png", truncated_png, "invalid-image"),
                ("truncated.jpg", truncated_jpeg, "invalid-image"),
                ("header.jpg", header_only, "invalid-image"),
                ("text.jpg", b"just some text, not a JPEG at all\n".repeat(40), "invalid-image"),
                ("noise.png", noise(4096), "invalid-image"),
            ];
            for (key, bytes, _) in &cases {
                put(&client, t, "pics", key, &admin, bytes.clone()).await;
            }
            // Reset the peak (VmHWM) to the current RSS, so it shows
            // what these requests used.
            let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
            let (peak_before, rss_before) = rss();
            for (key, _, code) in &cases {
                for fmt in ["jpeg", "webp"] {
                    let got = api
                        .get(&render("pics", key, &format!("w=100&fmt={fmt}")), Some(&admin), &[])
                        .await;
                    got.problem(422, code);
                }
            }
            let (peak_after, _) = rss();
            let grown = peak_after.saturating_sub(if reset { rss_before } else { peak_before });
            eprintln!(
                "RSS: peak {peak_before} → {peak_after} KiB (reset {reset}, rss {rss_before} KiB), grown {grown} KiB"
            );
            assert!(grown < 64 * 1024, "the peak RSS grew by {grown} KiB");

            // 50 concurrent identical requests: one render, one variant.
            put(&client, t, "pics", "conc.jpg", &admin, encode(&photo(640, 480, 3).into(), ImageFormat::Jpeg)).await;
            let before = media.renders();
            let path = render("pics", "conc.jpg", "w=120&fmt=webp");
            let requests = (0..50).map(|_| {
                let http = api.http.clone();
                let url = format!("{}{path}", api.base);
                let admin = admin.clone();
                async move {
                    let response = http.get(url).bearer_auth(admin).send().await.expect("send");
                    let status = response.status().as_u16();
                    (status, response.bytes().await.expect("body").to_vec())
                }
            });
            let answers = futures::future::join_all(requests).await;
            for (status, body) in &answers {
                assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
                assert_eq!(body, &answers[0].1);
            }
            assert_eq!(media.renders() - before, 1, "one render for 50 requests");
            assert_eq!(variant_count(&db, "conc.jpg").await, 1);
            // Served from the variant afterwards.
            let got = api.get(&path, Some(&admin), &[]).await;
            assert_eq!(got.body, answers[0].1);
            assert_eq!(media.renders() - before, 1);
            // A replaced source takes its variants with it.
            let got = api.get(&render("pics", "conc.jpg", "w=60&fmt=png"), Some(&admin), &[]).await;
            assert_eq!(got.image().width(), 60);
            assert_eq!(variant_count(&db, "conc.jpg").await, 2);
            let blob_keys: Vec<String> =
                sqlx::query_scalar("SELECT blob_key FROM variants WHERE source_key = 'conc.jpg'")
                    .fetch_all(&db)
                    .await
                    .expect("blobs");
            put(&client, t, "pics", "conc.jpg", &admin, encode(&photo(300, 300, 4).into(), ImageFormat::Jpeg)).await;
            assert_eq!(variant_count(&db, "conc.jpg").await, 0);
            for key in &blob_keys {
                let blob = strata_storage::BlobKey::from_stored(key.clone());
                let mut gone = false;
                for _ in 0..50 {
                    if tb.backend.get(&blob, None).await.is_err() {
                        gone = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(gone, "the variant blob {key} outlived its source");
            }
            let got = api.get(&path, Some(&admin), &[]).await;
            assert_eq!(got.image().height(), 120, "rendered from the new source");
            assert_eq!(media.renders() - before, 3);
            // And a deleted one too.
            assert_eq!(variant_count(&db, "conc.jpg").await, 1);
            let deleted = client
                .send("DELETE", &format!("/v1/tenants/{t}/buckets/pics/objects/conc.jpg"), Some(&admin), Body::None, &[])
                .await;
            assert_eq!(deleted.status, 204, "{}", deleted.text);
            assert_eq!(variant_count(&db, "conc.jpg").await, 0);
            assert_eq!(api.get(&path, Some(&admin), &[]).await.status, 404);

            // Two objects with the same bytes (same ETag) have variants of
            // their own: removing one leaves the other's served as stored.
            put(&client, t, "pics", "twin.jpg", &admin, jpeg.clone()).await;
            let before = media.renders();
            let mine = api.get(&render("pics", "photo.jpg", "w=77&fmt=png"), Some(&admin), &[]).await;
            let twin = api.get(&render("pics", "twin.jpg", "w=77&fmt=png"), Some(&admin), &[]).await;
            assert_eq!(mine.image().width(), 77);
            assert_eq!(twin.image().width(), 77);
            assert_ne!(mine.header("etag"), twin.header("etag"));
            assert_eq!(media.renders() - before, 2);
            assert_eq!(variant_count(&db, "twin.jpg").await, 1);
            let deleted = client
                .send("DELETE", &format!("/v1/tenants/{t}/buckets/pics/objects/twin.jpg"), Some(&admin), Body::None, &[])
                .await;
            assert_eq!(deleted.status, 204, "{}", deleted.text);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let again = api.get(&render("pics", "photo.jpg", "w=77&fmt=png"), Some(&admin), &[]).await;
            assert_eq!(again.body, mine.body);
            assert_eq!(media.renders() - before, 2, "served from its own stored variant");

            // Every slot busy (one here): 503 with Retry-After. A large
            // render holds the slot; a second, different one is refused.
            let big = photo(2400, 1800, 5);
            put(&client, t, "pics", "big.png", &admin, encode(&big.into(), ImageFormat::Png)).await;
            let before = media.renders();
            let slow = {
                let http = api.http.clone();
                let url = format!("{}{}", api.base, render("pics", "big.png", "w=2000&fmt=png&q=90"));
                let admin = admin.clone();
                tokio::spawn(async move {
                    http.get(url).bearer_auth(admin).send().await.expect("send").status().as_u16()
                })
            };
            while media.renders() == before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let refused = api
                .get(&render("pics", "photo.jpg", "w=33&fmt=png"), Some(&admin), &[])
                .await;
            assert!(!slow.is_finished(), "the slow render ended too soon to test");
            refused.problem(503, "unavailable");
            assert_eq!(refused.header("retry-after"), Some("3"));
            assert_eq!(slow.await.expect("slow"), 200);
            // Free again.
            let got = api
                .get(&render("pics", "photo.jpg", "w=33&fmt=png"), Some(&admin), &[])
                .await;
            assert_eq!(got.image().width(), 33);
            drop(server);
        },
    )
    .await;
}
