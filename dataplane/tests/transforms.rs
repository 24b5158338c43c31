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
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
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
                // AVIF only where this build encodes it (feature `avif`;
                // below), so `auto` never picks what it cannot make.
                ("auto", Some("image/avif;q=0,image/webp,*/*"), ImageFormat::WebP, "image/webp"),
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
            // AVIF: offered only by builds with the `avif` feature; others
            // refuse it with a 400 that says so.
            let avif = api
                .get(&render("pics", "photo.jpg", "w=160&fmt=avif"), Some(&admin), &[])
                .await;
            let auto_avif = api
                .get(
                    &render("pics", "photo.jpg", "w=160"),
                    Some(&admin),
                    &[("accept", "image/avif,image/webp,*/*")],
                )
                .await;
            if strata_dataplane::media::params::AVIF {
                for got in [&avif, &auto_avif] {
                    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
                    assert_eq!(got.header("content-type"), Some("image/avif"));
                    assert_eq!(&got.body[4..12], b"ftypavif");
                }
            } else {
                avif.problem(400, "invalid-parameter");
                let text = String::from_utf8_lossy(&avif.body);
                assert!(text.contains("avif is not offered"), "{text}");
                assert_eq!(auto_avif.format(), ImageFormat::WebP);
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
            // A replaced source is never served from its old variants, even
            // while they are still stored (no dispatcher runs here; their
            // removal through the outbox is `stale_variants_go_through_the_outbox`).
            let got = api.get(&render("pics", "conc.jpg", "w=60&fmt=png"), Some(&admin), &[]).await;
            assert_eq!(got.image().width(), 60);
            assert_eq!(variant_count(&db, "conc.jpg").await, 2);
            put(&client, t, "pics", "conc.jpg", &admin, encode(&photo(300, 300, 4).into(), ImageFormat::Jpeg)).await;
            let got = api.get(&path, Some(&admin), &[]).await;
            assert_eq!(got.image().height(), 120, "rendered from the new source");
            assert_ne!(got.body, answers[0].1);
            assert_eq!(media.renders() - before, 3);
            // And a deleted one is not found, stale variants or not.
            let deleted = client
                .send("DELETE", &format!("/v1/tenants/{t}/buckets/pics/objects/conc.jpg"), Some(&admin), Body::None, &[])
                .await;
            assert_eq!(deleted.status, 204, "{}", deleted.text);
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

/// zlib of `data` in stored (uncompressed) deflate blocks: enough for the
/// hand-built APNG below.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// An APNG of solid RGB frames; the default (`IDAT`) image is the first
/// frame of the animation.
fn apng(w: u32, h: u32, colours: &[[u8; 3]]) -> Vec<u8> {
    let scanlines = |c: [u8; 3]| {
        // Each scanline: filter type 0 (none), then the pixels.
        let mut row = vec![0u8];
        for _ in 0..w {
            row.extend_from_slice(&c);
        }
        zlib_stored(&row.repeat(h as usize))
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut actl = (colours.len() as u32).to_be_bytes().to_vec();
    actl.extend_from_slice(&0u32.to_be_bytes());
    chunk(&mut out, b"acTL", &actl);
    let mut sequence = 0u32;
    for (i, colour) in colours.iter().enumerate() {
        let mut fctl = sequence.to_be_bytes().to_vec();
        sequence += 1;
        for v in [w, h, 0, 0] {
            fctl.extend_from_slice(&v.to_be_bytes());
        }
        fctl.extend_from_slice(&1u16.to_be_bytes()); // delay 1/10 s
        fctl.extend_from_slice(&10u16.to_be_bytes());
        fctl.extend_from_slice(&[0, 0]); // dispose none, blend source
        chunk(&mut out, b"fcTL", &fctl);
        let data = scanlines(*colour);
        if i == 0 {
            chunk(&mut out, b"IDAT", &data);
        } else {
            let mut fdat = sequence.to_be_bytes().to_vec();
            sequence += 1;
            fdat.extend_from_slice(&data);
            chunk(&mut out, b"fdAT", &fdat);
        }
    }
    chunk(&mut out, b"IEND", &[]);
    out
}

fn riff_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame) whose frames are
/// lossless stills made by the `image` crate's encoder.
fn animated_webp(w: u32, h: u32, colours: &[[u8; 3]]) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0]; // animation
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    let mut anim = 0xFFFF_FFFFu32.to_le_bytes().to_vec(); // background
    anim.extend_from_slice(&0u16.to_le_bytes()); // loop forever
    riff_chunk(&mut body, b"ANIM", &anim);
    for colour in colours {
        let still = encode(
            &RgbImage::from_pixel(w, h, Rgb(*colour)).into(),
            ImageFormat::WebP,
        );
        assert_eq!(&still[12..16], b"VP8L", "a lossless still");
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(w - 1));
        anmf.extend_from_slice(&u24(h - 1));
        anmf.extend_from_slice(&u24(100)); // ms
        anmf.push(0b10); // no blending, no disposal
        anmf.extend_from_slice(&still[12..]);
        riff_chunk(&mut body, b"ANMF", &anmf);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// An animated GIF of solid frames.
fn animated_gif(w: u32, h: u32, colours: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        let frames = colours.iter().map(|c| {
            image::Frame::from_parts(
                RgbaImage::from_pixel(w, h, Rgba([c[0], c[1], c[2], 255])),
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            )
        });
        encoder.encode_frames(frames).expect("gif frames");
    }
    out
}

/// The frames an animation decoder finds, as the colour of their centre.
fn frame_colours(bytes: &[u8], format: ImageFormat) -> Vec<[u8; 3]> {
    use image::AnimationDecoder;
    let frames = match format {
        ImageFormat::Gif => image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
            .expect("gif")
            .into_frames(),
        ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
            .expect("png")
            .apng()
            .expect("apng")
            .into_frames(),
        _ => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .expect("webp")
            .into_frames(),
    };
    frames
        .map(|f| {
            let buffer = f.expect("frame").into_buffer();
            let p = buffer.get_pixel(buffer.width() / 2, buffer.height() / 2);
            [p[0], p[1], p[2]]
        })
        .collect()
}

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 40)
}

#[tokio::test]
async fn animated_inputs_use_their_first_frame() {
    with_tenants(
        "transforms-anim",
        &["tan"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let mut state = app_state(&catalog_url, tb.backend.clone(), None, settings());
            state.storage.media = Arc::new(Media::new(MediaSettings {
                time_budget: Duration::from_secs(120),
                ..MediaSettings::default()
            }));
            let server = Server::start(state, 64 << 20).await;
            let client = Client::new(&server.base);
            let api = Api {
                http: reqwest::Client::new(),
                base: server.base.clone(),
            };
            let tenant = &tenants[0];
            let t = tenant.name.as_str();
            let admin = client.accept_invitation(tenant).await;
            let id = create_bucket(&catalog, tenant.id, "anim", json!({})).await;
            enable_transforms(&catalog, id).await;

            // Red first, then green and blue: a renderer that took any frame
            // but the first would show another colour.
            let (red, green, blue) = ([230, 20, 20], [20, 200, 20], [20, 20, 230]);
            let colours = [red, green, blue];
            let sources = [
                ("anim.gif", animated_gif(64, 48, &colours), ImageFormat::Gif),
                ("anim.png", apng(64, 48, &colours), ImageFormat::Png),
                (
                    "anim.webp",
                    animated_webp(64, 48, &colours),
                    ImageFormat::WebP,
                ),
            ];
            for (key, bytes, format) in &sources {
                // The inputs really are animations of three different frames.
                assert_eq!(
                    image::guess_format(bytes).expect("format"),
                    *format,
                    "{key}"
                );
                let frames = frame_colours(bytes, *format);
                assert_eq!(frames.len(), 3, "{key}");
                for (found, wanted) in frames.iter().zip(colours) {
                    assert!(
                        near(*found, wanted),
                        "{key}: frame {found:?} not {wanted:?}"
                    );
                }
                put(&client, t, "anim", key, &admin, bytes.clone()).await;
                for fmt in ["png", "webp", "jpeg", "auto"] {
                    let path = format!("/v1/tenants/{t}/buckets/anim/render/{key}?w=32&fmt={fmt}");
                    let got = api
                        .get(&path, Some(&admin), &[("accept", "image/webp")])
                        .await;
                    let image = got.image().to_rgb8();
                    assert_eq!(image.dimensions(), (32, 24), "{key} → {fmt}");
                    for (x, y) in [(2, 2), (16, 12), (29, 21)] {
                        let p = image.get_pixel(x, y).0;
                        assert!(
                            near(p, red),
                            "{key} → {fmt}: pixel {p:?} is not the first frame's"
                        );
                    }
                    // A still image: no animation chunks in the output.
                    let body = &got.body;
                    for marker in [&b"acTL"[..], b"fcTL", b"ANIM", b"ANMF", b"NETSCAPE2.0"] {
                        assert!(
                            !body.windows(marker.len()).any(|w| w == marker),
                            "{key} → {fmt}: output is animated ({})",
                            String::from_utf8_lossy(marker)
                        );
                    }
                    let format = got.format();
                    if matches!(format, ImageFormat::Png | ImageFormat::WebP) {
                        let frames = frame_colours_or_still(body, format);
                        assert_eq!(frames, 1, "{key} → {fmt}: {frames} frames");
                    }
                }
            }
            drop(server);
        },
    )
    .await;
}

/// Frames of an output: 1 for a still PNG (not APNG) or WebP (not
/// animated).
fn frame_colours_or_still(bytes: &[u8], format: ImageFormat) -> usize {
    match format {
        ImageFormat::Png => {
            let decoder = image::codecs::png::PngDecoder::new(Cursor::new(bytes)).expect("png");
            if decoder.is_apng().expect("apng?") {
                frame_colours(bytes, format).len()
            } else {
                1
            }
        }
        _ => {
            let decoder = image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).expect("webp");
            if decoder.has_animation() {
                frame_colours(bytes, format).len()
            } else {
                1
            }
        }
    }
}

/// Media settings as `strata-dataplane` parses them from its flags.
fn media_from_flags(flags: &[&str]) -> MediaSettings {
    use clap::Parser;
    let mut argv = vec!["strata-dataplane", "--catalog-url", "postgres://unused"];
    argv.extend_from_slice(flags);
    strata_dataplane::config::Config::try_parse_from(argv)
        .expect("flags")
        .media
        .settings()
}

#[tokio::test]
async fn time_budget_holds_inside_a_transform() {
    with_tenants("transforms-budget", &["tbu"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(Store::Fs).await;
        let mut state = app_state(&catalog_url, tb.backend.clone(), None, settings());
        // A tiny budget and one slot, set by flag.
        let settings = media_from_flags(&[
            "--media-time-budget-ms",
            "1",
            "--media-transform-slots",
            "1",
        ]);
        assert_eq!(settings.time_budget, Duration::from_millis(1));
        let media = Arc::new(Media::new(settings));
        let mut second = state.clone();
        state.storage.media = media.clone();
        let server = Server::start(state, 64 << 20).await;
        let client = Client::new(&server.base);
        let api = Api {
            http: reqwest::Client::new(),
            base: server.base.clone(),
        };
        let tenant = &tenants[0];
        let t = tenant.name.as_str();
        let admin = client.accept_invitation(tenant).await;
        let id = create_bucket(&catalog, tenant.id, "slow", json!({})).await;
        enable_transforms(&catalog, id).await;
        let render = |key: &str, query: &str| format!("/v1/tenants/{t}/buckets/slow/render/{key}?{query}");
        let timed_out = |got: &Got| {
            got.problem(503, "unavailable");
            assert!(got.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0)));
            let text = String::from_utf8_lossy(&got.body);
            assert!(text.contains("time budget"), "{text}");
        };
        let slots_free = |media: &Arc<Media>| {
            let media = media.clone();
            async move {
            let started = std::time::Instant::now();
            while media.slots_in_use() > 0 {
                assert!(started.elapsed() < Duration::from_secs(120), "a slot never came back");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started.elapsed()
            }
        };

        // 1. A JPEG decode (read a byte at a time) stops inside the decode:
        //    the slot comes back long before the decode would have ended.
        let jpeg = encode(&photo(1600, 1200, 7).into(), ImageFormat::Jpeg);
        let full = {
            let params = strata_dataplane::media::params::Params::from_fields(
                &[("w", "1600".to_string()), ("fmt", "png".to_string())].into_iter().collect(),
                4096,
            )
            .expect("params");
            let limits = strata_dataplane::media::transform::Limits::default();
            let source = jpeg.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let far = started + Duration::from_secs(600);
                strata_dataplane::media::transform::render(&source, &params, &limits, far)
                    .expect("renders with time");
                started.elapsed()
            })
            .await
            .expect("full render")
        };
        put(&client, t, "slow", "big.jpg", &admin, jpeg).await;
        let started = std::time::Instant::now();
        let got = api.get(&render("big.jpg", "w=1600&fmt=png"), Some(&admin), &[]).await;
        let answered = started.elapsed();
        timed_out(&got);
        let ran_on = slots_free(&media).await;
        eprintln!("JPEG: uninterrupted {full:?}; answered after {answered:?}, the work ended ≤ {ran_on:?} later");
        assert!(
            ran_on * 4 < full,
            "the transform ran on after its budget ({ran_on:?}; uninterrupted {full:?})"
        );

        // 2. A lossy WebP decode cannot be interrupted (it reads whole
        //    partitions first, then decodes from memory): the answer still
        //    comes at the budget, and the slot stays taken until the decode
        //    really ends, so a second transform meanwhile is refused as
        //    busy. A budget of 300 ms (by flag) lets the header reads pass
        //    and ends inside the decode, which takes seconds here.
        let settings = media_from_flags(&[
            "--media-time-budget-ms",
            "300",
            "--media-transform-slots",
            "1",
        ]);
        let media = Arc::new(Media::new(settings));
        second.storage.media = media.clone();
        let server2 = Server::start(second, 64 << 20).await;
        let api2 = Api {
            http: reqwest::Client::new(),
            base: server2.base.clone(),
        };
        let big = photo(1600, 1200, 8);
        let webp = webp::Encoder::from_rgb(big.as_raw(), big.width(), big.height())
            .encode(80.0)
            .to_vec();
        put(&client, t, "slow", "big.webp", &admin, webp).await;
        let started = std::time::Instant::now();
        let got = api2.get(&render("big.webp", "w=100&fmt=png"), Some(&admin), &[]).await;
        let answered = started.elapsed();
        timed_out(&got);
        assert_eq!(media.slots_in_use(), 1, "the overrunning decode holds its slot");
        let busy = api2.get(&render("big.jpg", "w=10&fmt=png"), Some(&admin), &[]).await;
        busy.problem(503, "unavailable");
        let text = String::from_utf8_lossy(&busy.body);
        assert!(text.contains("busy"), "{text}");
        let held = slots_free(&media).await;
        eprintln!("WebP: answered after {answered:?}; the slot was held {held:?} more");
        assert!(answered < Duration::from_secs(5), "answered after {answered:?}");
        // Free again: the next request gets a slot (a small render fits).
        put(&client, t, "slow", "small.png", &admin, encode(&photo(40, 30, 9).into(), ImageFormat::Png)).await;
        let got = api2.get(&render("small.png", "w=10&fmt=png"), Some(&admin), &[]).await;
        assert_eq!(got.image().width(), 10);
        drop(server2);
        drop(server);
    })
    .await;
}

/// The bucket's usage as the API reports it: (bytes, stored bytes).
async fn bucket_usage(client: &Client, tenant: &str, bucket: &str, key: &str) -> (i64, i64) {
    let reply = client
        .send(
            "GET",
            &format!("/v1/tenants/{tenant}/buckets/{bucket}"),
            Some(key),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let usage = &reply.json["usage"];
    (
        usage["bytes"].as_i64().expect("bytes"),
        usage["stored_bytes"].as_i64().expect("stored bytes"),
    )
}

/// (blob key, size) of a source's variants.
async fn variant_blobs(db: &sqlx::PgPool, key: &str) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT blob_key, size FROM variants WHERE source_key = $1 ORDER BY blob_key")
        .bind(key)
        .fetch_all(db)
        .await
        .expect("variants")
}

/// Waits (at most `bound`) until `key` has exactly `rows` variant rows.
async fn wait_for_variants(db: &sqlx::PgPool, key: &str, rows: i64, bound: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if variant_count(db, key).await == rows {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{key}: {} variant rows after {bound:?}, wanted {rows}",
            variant_count(db, key).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stale_variants_go_through_the_outbox() {
    use strata_dataplane::events::{Dispatcher, EventSettings};
    use strata_dataplane::media::variants::StaleVariants;
    with_tenants(
        "transforms-outbox",
        &["tou"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let mut state = app_state(&catalog_url, tb.backend.clone(), None, settings());
            let media = Arc::new(Media::new(MediaSettings {
                time_budget: Duration::from_secs(120),
                ..MediaSettings::default()
            }));
            state.storage.media = media.clone();
            let server = Server::start(state.clone(), 64 << 20).await;
            let client = Client::new(&server.base);
            let api = Api {
                http: reqwest::Client::new(),
                base: server.base.clone(),
            };
            let tenant = &tenants[0];
            let t = tenant.name.as_str();
            let admin = client.accept_invitation(tenant).await;
            let db = admin_on(tenant).await;
            let id = create_bucket(&catalog, tenant.id, "pics", json!({})).await;
            enable_transforms(&catalog, id).await;
            let render = |key: &str, query: &str| {
                format!("/v1/tenants/{t}/buckets/pics/render/{key}?{query}")
            };
            let blob_gone = |key: String| {
                let backend = tb.backend.clone();
                async move {
                    backend
                        .get(&strata_storage::BlobKey::from_stored(key), None)
                        .await
                        .is_err()
                }
            };
            let tenant_bytes = || async {
                sqlx::query_scalar::<_, i64>("SELECT bytes FROM bucket_usage WHERE bucket_id = $1")
                    .bind(strata_dataplane::storage::quota::TENANT_ROW)
                    .fetch_one(&db)
                    .await
                    .expect("tenant usage")
            };

            // Two variants of a source, counted in the usage.
            put(
                &client,
                t,
                "pics",
                "photo.jpg",
                &admin,
                encode(&photo(640, 480, 1).into(), ImageFormat::Jpeg),
            )
            .await;
            let (source_only, _) = bucket_usage(&client, t, "pics", &admin).await;
            for query in ["w=64&fmt=png", "w=80&fmt=webp"] {
                assert_eq!(
                    api.get(&render("photo.jpg", query), Some(&admin), &[])
                        .await
                        .status,
                    200
                );
            }
            let old = variant_blobs(&db, "photo.jpg").await;
            assert_eq!(old.len(), 2);
            let old_bytes: i64 = old.iter().map(|(_, size)| size).sum();
            let (with_variants, stored_with) = bucket_usage(&client, t, "pics", &admin).await;
            assert_eq!(with_variants, source_only + old_bytes);

            // Overwritten with no dispatcher running: the old variants stay
            // (removal is the outbox's job, not the write's), and are never
            // served: the render is made from the new source.
            let new_source = encode(&photo(300, 300, 2).into(), ImageFormat::Jpeg);
            put(&client, t, "pics", "photo.jpg", &admin, new_source.clone()).await;
            assert_eq!(variant_count(&db, "photo.jpg").await, 2);
            let before = media.renders();
            let got = api
                .get(&render("photo.jpg", "w=64&fmt=png"), Some(&admin), &[])
                .await;
            assert_eq!(
                got.image().to_rgb8().dimensions(),
                (64, 64),
                "rendered from the new source"
            );
            assert_eq!(media.renders() - before, 1);
            let fresh = variant_blobs(&db, "photo.jpg").await;
            assert_eq!(fresh.len(), 3);
            let fresh_bytes = fresh.iter().map(|(_, s)| s).sum::<i64>() - old_bytes;

            // The dispatcher (with the variants sink, as `main` runs it)
            // removes the stale rows and blobs and gives their bytes back.
            let dispatcher = Dispatcher::new(
                state.tenancy.clone(),
                state.catalog.clone(),
                None,
                None,
                EventSettings {
                    sweep_interval: Duration::from_millis(200),
                    ..EventSettings::default()
                },
            )
            .expect("dispatcher")
            .with_sink(StaleVariants::new(state.storage.clone()))
            .spawn();
            let bound = Duration::from_secs(15);
            let took = wait_for_variants(&db, "photo.jpg", 1, bound).await;
            eprintln!("overwrite: stale variants removed {took:?} after the dispatcher started");
            let kept = variant_blobs(&db, "photo.jpg").await;
            assert!(
                old.iter().all(|o| !kept.contains(o)),
                "only the new variant is kept"
            );
            for (key, _) in &old {
                let started = std::time::Instant::now();
                while !blob_gone(key.clone()).await {
                    assert!(
                        started.elapsed() < bound,
                        "the stale blob {key} is still there"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            assert!(
                !blob_gone(kept[0].0.clone()).await,
                "the current variant's blob stays"
            );
            let (after_overwrite, stored_after) = bucket_usage(&client, t, "pics", &admin).await;
            let new_size = new_source.len() as i64;
            assert_eq!(
                after_overwrite,
                new_size + fresh_bytes,
                "usage lost the stale variants"
            );
            assert!(after_overwrite < with_variants && stored_after < stored_with);
            assert_eq!(
                tenant_bytes().await,
                after_overwrite,
                "the tenant's total too"
            );
            // Served as stored afterwards (no render).
            let before = media.renders();
            let again = api
                .get(&render("photo.jpg", "w=64&fmt=png"), Some(&admin), &[])
                .await;
            assert_eq!(again.body, got.body);
            assert_eq!(media.renders(), before);

            // Deleted: its variant goes too, and the usage drops to nothing.
            let deleted = client
                .send(
                    "DELETE",
                    &format!("/v1/tenants/{t}/buckets/pics/objects/photo.jpg"),
                    Some(&admin),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(deleted.status, 204, "{}", deleted.text);
            let took = wait_for_variants(&db, "photo.jpg", 0, bound).await;
            eprintln!("delete: variants removed after {took:?}");
            let started = std::time::Instant::now();
            while !blob_gone(kept[0].0.clone()).await {
                assert!(
                    started.elapsed() < bound,
                    "the deleted source's variant blob is still there"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(bucket_usage(&client, t, "pics", &admin).await, (0, 0));
            assert_eq!(tenant_bytes().await, 0);
            // The events that did it are dispatched (not retried, not dead).
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE topic LIKE 'object.%' AND dispatched_at IS NULL",
            )
            .fetch_one(&db)
            .await
            .expect("outbox");
            assert_eq!(open, 0);
            dispatcher.abort();
            drop(server);
        },
    )
    .await;
}
