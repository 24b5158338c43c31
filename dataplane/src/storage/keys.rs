//! Object keys: what a client may name an object.
//!
//! Keys never reach the backend (blobs are addressed by ids), so these
//! rules are not what keeps bytes apart; they keep keys unambiguous for
//! clients, presigned URLs, listings and anything that later maps keys to
//! paths (a download to disk, a static-site mirror):
//!
//! - 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 after percent-decoding once;
//! - no control characters (NUL included), no backslash;
//! - no leading `/`, no empty segment except a final one (`dir/` markers),
//!   no `.` or `..` segment;
//! - no percent-encoded `.`, `/`, `\` or NUL left after decoding (a
//!   double-encoded `%252e%252e` is a traversal attempt, not a name).
//!
//! The key is read from the raw request path, not from axum's decoded
//! parameter, so each rule sees exactly what the client sent.

use crate::http::problem::ApiError;

/// S3's limit.
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Validates an already-decoded key (a JSON body field, a copy source).
    pub fn parse(key: &str) -> Result<Self, &'static str> {
        check(key)?;
        Ok(Self(key.to_string()))
    }

    /// Percent-decodes `raw` (one path tail) once and validates it.
    pub fn from_raw_path(raw: &str) -> Result<Self, &'static str> {
        let bytes = percent_decode(raw)?;
        let key = String::from_utf8(bytes).map_err(|_| "is not valid UTF-8")?;
        Self::parse(&key)
    }

    /// The key percent-encoded for a URL path (segments kept).
    pub fn url_path(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(raw: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err("has a malformed percent-encoding");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Err("is longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters (NUL included)");
    }
    if key.contains('\\') {
        return Err("must not contain a backslash");
    }
    if key.starts_with('/') {
        return Err("must not start with `/`");
    }
    let segments: Vec<&str> = key.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return Err("must not have a `.` or `..` segment");
        }
        if segment.is_empty() && i != last {
            return Err("must not have an empty segment (`//`)");
        }
    }
    let lower = key.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return Err("must not contain a percent-encoded `.`, `/`, `\\` or NUL after decoding");
    }
    Ok(())
}

/// The 400 for a bad key.
pub fn invalid_key(message: &str) -> ApiError {
    ApiError::invalid_parameter("path", "key", format!("the object key {message}"))
}

/// The object key of a request path: everything after `/objects/`, raw.
pub fn key_of_path(path: &str) -> Result<ObjectKey, ApiError> {
    let raw = path
        .split_once("/objects/")
        .map(|(_, tail)| tail)
        .ok_or_else(|| invalid_key("is missing"))?;
    ObjectKey::from_raw_path(raw).map_err(invalid_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for key in [
            "a",
            "photos/2024/cat.jpg",
            "dir/",
            "a b/ü.txt",
            "x..y",
            ".hidden",
            "a/.b",
        ] {
            assert!(ObjectKey::parse(key).is_ok(), "{key}");
        }
        assert_eq!(
            ObjectKey::from_raw_path("a%20b/%C3%BC")
                .expect("ok")
                .as_str(),
            "a b/ü"
        );
        assert_eq!(
            ObjectKey::parse("a b/ü?#").expect("ok").url_path(),
            "a%20b/%C3%BC%3F%23"
        );
    }

    #[test]
    fn hostile_keys_are_refused() {
        let long = "a".repeat(1025);
        for raw in [
            "..",
            "a/../b",
            "./a",
            "a/./b",
            "a/..",
            "%2e%2e",
            "a/%2E%2E/b",
            "%2e/a",
            "a%00b",
            "a\\b",
            "a%5cb",
            "a%5Cb",
            "/a",
            "%2fa",
            "a//b",
            "a%2f%2fb",
            "%ff",
            "a%c3",
            "%",
            "%zz",
            "%252e%252e",
            "a%252fb",
            "",
            long.as_str(),
            "a\u{1}b",
        ] {
            assert!(ObjectKey::from_raw_path(raw).is_err(), "{raw:?}");
        }
        assert!(ObjectKey::parse(&"é".repeat(512)).is_ok());
        assert!(ObjectKey::parse(&format!("{}x", "é".repeat(512))).is_err());
    }
}
