//! Content types: the declared type against the bucket's allow-list and
//! against the type sniffed from the first bytes, and how a stored object
//! is served so that no browser runs it.
//!
//! Sniffing is a table of magic numbers for the formats that have one
//! (images, PDF, archives, audio/video containers), kept here rather than
//! a dependency so exactly what is recognised is visible and tested. A
//! format without a signature (text, JSON, CSV) is never a mismatch. A
//! declared image, audio, video or PDF whose first bytes carry HTML or
//! script markup is refused as a polyglot; everything is served with
//! `nosniff` and a sandboxing CSP anyway.

use crate::http::problem::ApiError;

/// What `Content-Type` an upload without one gets.
pub const DEFAULT_TYPE: &str = "application/octet-stream";
/// Longest accepted `Content-Type` value.
pub const MAX_CONTENT_TYPE_LEN: usize = 256;
/// How many leading bytes are looked at (sniffing, polyglot markers).
pub const SNIFF_WINDOW: usize = 4096;

/// A parsed `Content-Type`: the essence (`type/subtype`, lower case) and
/// the value as stored (essence plus the parameters as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    pub essence: String,
    pub value: String,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

impl ContentType {
    /// Parses a declared `Content-Type` (`None` → the default type).
    pub fn parse(declared: Option<&str>) -> Result<Self, ApiError> {
        let Some(value) = declared.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Self {
                essence: DEFAULT_TYPE.into(),
                value: DEFAULT_TYPE.into(),
            });
        };
        let bad = || {
            ApiError::invalid_parameter(
                "header",
                "content-type",
                "expected `type/subtype` with optional `; name=value` parameters",
            )
            .with_kind(crate::http::problem::kind::INVALID_HEADER)
        };
        if value.len() > MAX_CONTENT_TYPE_LEN || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad());
        }
        let mut parts = value.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let (kind, sub) = essence.split_once('/').ok_or_else(bad)?;
        if !is_token(kind) || !is_token(sub) {
            return Err(bad());
        }
        let mut params = Vec::new();
        for param in parts {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (name, val) = param.split_once('=').ok_or_else(bad)?;
            let name = name.trim().to_ascii_lowercase();
            let val = val.trim();
            let quoted = val.len() >= 2 && val.starts_with('"') && val.ends_with('"');
            if !is_token(&name) || !(is_token(val) || quoted) {
                return Err(bad());
            }
            params.push(format!("{name}={val}"));
        }
        let value = std::iter::once(essence.clone())
            .chain(params)
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Self { essence, value })
    }

    fn top(&self) -> &str {
        self.essence.split('/').next().unwrap_or("")
    }
}

/// Whether `essence` is allowed by a bucket's list (`type/subtype`,
/// `type/*`, `*/*`); an empty list allows everything.
pub fn allowed(list: &[String], essence: &str) -> bool {
    if list.is_empty() {
        return true;
    }
    let top = essence.split('/').next().unwrap_or("");
    list.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        entry == "*/*"
            || entry == essence
            || entry.strip_suffix("/*").is_some_and(|prefix| prefix == top)
    })
}

/// (type, magic offset, magic bytes)
const SIGNATURES: &[(&str, usize, &[u8])] = &[
    ("image/png", 0, b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", 0, b"\xff\xd8\xff"),
    ("image/gif", 0, b"GIF87a"),
    ("image/gif", 0, b"GIF89a"),
    ("image/bmp", 0, b"BM"),
    ("image/tiff", 0, b"II*\x00"),
    ("image/tiff", 0, b"MM\x00*"),
    ("image/x-icon", 0, b"\x00\x00\x01\x00"),
    ("application/pdf", 0, b"%PDF-"),
    ("application/zip", 0, b"PK\x03\x04"),
    ("application/gzip", 0, b"\x1f\x8b"),
    ("application/x-7z-compressed", 0, b"7z\xbc\xaf\x27\x1c"),
    ("application/x-rar-compressed", 0, b"Rar!\x1a\x07"),
    ("application/x-bzip2", 0, b"BZh"),
    ("application/x-xz", 0, b"\xfd7zXZ\x00"),
    ("application/zstd", 0, b"\x28\xb5\x2f\xfd"),
    ("application/wasm", 0, b"\x00asm"),
    ("application/x-executable", 0, b"\x7fELF"),
    ("application/vnd.microsoft.portable-executable", 0, b"MZ"),
    ("audio/mpeg", 0, b"ID3"),
    ("audio/flac", 0, b"fLaC"),
    ("audio/ogg", 0, b"OggS"),
    ("video/webm", 0, b"\x1a\x45\xdf\xa3"),
];

/// The type the first bytes announce, if they carry a known signature.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 12 && &head[0..4] == b"RIFF" {
        return match &head[8..12] {
            b"WEBP" => Some("image/webp"),
            b"WAVE" => Some("audio/wav"),
            b"AVI " => Some("video/x-msvideo"),
            _ => None,
        };
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return match &head[8..12] {
            b"avif" | b"avis" => Some("image/avif"),
            b"heic" | b"heix" | b"mif1" => Some("image/heic"),
            b"qt  " => Some("video/quicktime"),
            b"M4A " => Some("audio/mp4"),
            _ => Some("video/mp4"),
        };
    }
    SIGNATURES
        .iter()
        .find(|(_, offset, magic)| head.get(*offset..offset + magic.len()) == Some(*magic))
        .map(|(kind, _, _)| *kind)
}

/// Declared types that name the same format as a sniffed one.
fn same_format(declared: &str, sniffed: &str) -> bool {
    if declared == sniffed {
        return true;
    }
    let aliases: &[(&str, &[&str])] = &[
        ("image/jpeg", &["image/jpg", "image/pjpeg"]),
        ("image/x-icon", &["image/vnd.microsoft.icon"]),
        ("image/bmp", &["image/x-bmp", "image/x-ms-bmp"]),
        ("application/gzip", &["application/x-gzip"]),
        ("application/zip", &["application/x-zip-compressed"]),
        ("audio/mpeg", &["audio/mp3"]),
        (
            "audio/wav",
            &["audio/x-wav", "audio/wave", "audio/vnd.wave"],
        ),
        (
            "video/webm",
            &["audio/webm", "video/x-matroska", "audio/x-matroska"],
        ),
        ("audio/ogg", &["video/ogg", "application/ogg", "audio/opus"]),
        (
            "video/mp4",
            &["audio/mp4", "video/x-m4v", "audio/x-m4a", "video/3gpp"],
        ),
        ("image/heic", &["image/heif"]),
        (
            "application/x-executable",
            &["application/x-elf", "application/x-sharedlib"],
        ),
        (
            "application/vnd.microsoft.portable-executable",
            &["application/x-msdownload", "application/x-dosexec"],
        ),
    ];
    if aliases
        .iter()
        .any(|(canonical, others)| *canonical == sniffed && others.contains(&declared))
    {
        return true;
    }
    // Zip is the container of many formats (OOXML, ODF, EPUB, JAR, APK).
    sniffed == "application/zip"
        && (declared.contains("zip")
            || declared.starts_with("application/vnd.openxmlformats")
            || declared.starts_with("application/vnd.oasis.opendocument")
            || declared == "application/epub+zip"
            || declared == "application/java-archive"
            || declared == "application/vnd.android.package-archive")
}

/// Markup a browser would run if it ever rendered these bytes as HTML.
const ACTIVE_MARKERS: &[&[u8]] = &[
    b"<script",
    b"<html",
    b"<!doctype",
    b"<svg",
    b"<iframe",
    b"<body",
    b"<object",
    b"<embed",
    b"<?xml",
    b"javascript:",
];

fn contains_marker(head: &[u8]) -> Option<&'static str> {
    let lower: Vec<u8> = head.iter().map(u8::to_ascii_lowercase).collect();
    ACTIVE_MARKERS
        .iter()
        .find(|marker| lower.windows(marker.len()).any(|w| w == **marker))
        .map(|m| std::str::from_utf8(m).unwrap_or("markup"))
}

/// Checks the first bytes of an upload against its declared type: a
/// signature of another format, or markup in a binary media type, is a 415
/// naming both.
pub fn check_head(declared: &ContentType, head: &[u8]) -> Result<(), ApiError> {
    let generic = declared.essence == DEFAULT_TYPE;
    if let Some(sniffed) = sniff(head)
        && !generic
        && !same_format(&declared.essence, sniffed)
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body is {sniffed} by its first bytes, but Content-Type declares {}",
            declared.essence
        )));
    }
    let binary_media = matches!(declared.top(), "image" | "audio" | "video")
        || declared.essence == "application/pdf";
    if binary_media
        && declared.essence != "image/svg+xml"
        && let Some(marker) = contains_marker(head)
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body declared as {} carries `{marker}` markup in its first bytes (a polyglot); refused",
            declared.essence
        )));
    }
    Ok(())
}

/// Types a browser would execute or render as a document: always served
/// as an attachment.
pub fn is_active(essence: &str) -> bool {
    matches!(
        essence,
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/javascript"
            | "application/javascript"
            | "application/ecmascript"
            | "text/ecmascript"
            | "application/x-javascript"
            | "text/xsl"
            | "application/xslt+xml"
            | "application/rdf+xml"
            | "text/vtt"
    ) || essence.ends_with("+xml")
        || essence.starts_with("multipart/")
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266 with RFC 8187
/// for the non-ASCII name; the plain `filename` is an ASCII fallback).
pub fn attachment(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let fallback = if fallback.trim().is_empty() {
        "download".to_string()
    } else {
        fallback
    };
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The last segment of a key (the file name a download gets).
pub fn file_name(key: &str) -> &str {
    key.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("download")
}

/// A stored `Content-Disposition` is accepted when it is a plain header
/// value of `inline` or `attachment` with parameters.
pub fn parse_disposition(value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    let kind = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if value.len() > 1024
        || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
        || !(kind == "inline" || kind == "attachment")
    {
        return Err(ApiError::invalid_parameter(
            "header",
            "content-disposition",
            "expected `inline` or `attachment` with optional parameters (visible ASCII, at most 1024 bytes)",
        )
        .with_kind(crate::http::problem::kind::INVALID_HEADER));
    }
    Ok(value.to_string())
}

/// The `Content-Disposition` an object is served with: what was stored,
/// unless the type is active, which is always an attachment.
pub fn serving_disposition(essence: &str, stored: Option<&str>, key: &str) -> Option<String> {
    let stored_attachment = stored.is_some_and(|s| {
        s.trim_start()
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case("attachment"))
    });
    if is_active(essence) && !stored_attachment {
        return Some(attachment(file_name(key)));
    }
    stored.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(s: &str) -> ContentType {
        ContentType::parse(Some(s)).expect("content type")
    }

    #[test]
    fn declared_types_parse_with_parameters() {
        assert_eq!(
            ct("Text/Plain ; Charset=utf-8").value,
            "text/plain; charset=utf-8"
        );
        assert_eq!(ct("text/plain").essence, "text/plain");
        assert_eq!(
            ContentType::parse(None).expect("default").essence,
            DEFAULT_TYPE
        );
        for bad in [
            "text",
            "text/",
            "/x",
            "a b/c",
            "text/plain; x",
            "téxt/plain",
        ] {
            assert!(ContentType::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_lists_with_wildcards() {
        let list = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert!(allowed(&list, "image/png"));
        assert!(allowed(&list, "application/pdf"));
        assert!(!allowed(&list, "text/html"));
        assert!(!allowed(&list, "imagex/png"));
        assert!(allowed(&[], "text/html"));
        assert!(allowed(&["*/*".to_string()], "text/html"));
    }

    #[test]
    fn sniffing_and_mismatches() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png), Some("image/png"));
        assert!(check_head(&ct("image/png"), png).is_ok());
        assert!(check_head(&ct("application/octet-stream"), png).is_ok());
        let error = check_head(&ct("image/jpeg"), png).expect_err("mismatch");
        let detail = error.to_problem().detail.unwrap_or_default();
        assert!(
            detail.contains("image/png") && detail.contains("image/jpeg"),
            "{detail}"
        );
        assert!(check_head(&ct("text/plain"), b"%PDF-1.7").is_err());
        assert!(check_head(&ct("image/jpg"), b"\xff\xd8\xff\xe0").is_ok());
        assert!(check_head(&ct("text/plain"), b"hello").is_ok());
        assert!(
            check_head(
                &ct("application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
                b"PK\x03\x04"
            )
            .is_ok()
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    }

    #[test]
    fn polyglots_are_refused() {
        let mut gif = b"GIF89a\x01\x00\x01\x00".to_vec();
        gif.extend_from_slice(b"/*<ScRiPt>alert(1)</script>*/");
        assert_eq!(
            check_head(&ct("image/gif"), &gif)
                .expect_err("polyglot")
                .kind()
                .status,
            415
        );
        assert!(check_head(&ct("text/plain"), b"<script>ok as text</script>").is_ok());
    }

    #[test]
    fn active_types_are_attachments() {
        assert!(is_active("text/html"));
        assert!(is_active("image/svg+xml"));
        assert!(is_active("application/atom+xml"));
        assert!(!is_active("image/png"));
        assert_eq!(
            serving_disposition("text/html", Some("inline"), "a/page.html").as_deref(),
            Some("attachment; filename=\"page.html\"; filename*=UTF-8''page.html")
        );
        assert_eq!(
            serving_disposition("image/png", Some("inline"), "a.png").as_deref(),
            Some("inline")
        );
        assert_eq!(serving_disposition("image/png", None, "a.png"), None);
        assert_eq!(
            attachment("naïve \"x\".txt"),
            "attachment; filename=\"na_ve _x_.txt\"; filename*=UTF-8''na%C3%AFve%20%22x%22.txt"
        );
        assert!(parse_disposition("attachment; filename=\"a.txt\"").is_ok());
        assert!(parse_disposition("evil").is_err());
    }
}
