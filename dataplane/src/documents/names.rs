//! What names, ids and field paths may be. The charsets are narrow on
//! purpose: names appear in URLs, logs and index names, and field paths of
//! indexed fields end up (as validated literals) in index DDL.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::http::problem::{ApiError, FieldError};

/// Longest collection name (the `collections.name` CHECK says the same).
pub const MAX_NAME_LEN: usize = 128;
/// Longest document id.
pub const MAX_ID_LEN: usize = 128;
/// Most segments of a field path (`a.b.c` has three).
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Longest segment of a field path.
pub const MAX_SEGMENT_LEN: usize = 64;
/// Longest field path, dots included.
pub const MAX_PATH_LEN: usize = 256;

/// `[A-Za-z0-9_-]{1,128}`, like the database CHECK.
pub fn is_collection_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A document id: 1–128 of `[A-Za-z0-9._:-]`, starting with a letter, a
/// digit or `_` (so `.` and `..` never appear as path segments).
pub fn is_document_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    id.len() <= MAX_ID_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// The 404 a malformed collection name gets: no such collection can exist.
pub fn collection_name(name: &str) -> Result<&str, ApiError> {
    if is_collection_name(name) {
        Ok(name)
    } else {
        Err(ApiError::NotFound)
    }
}

/// A client-chosen id that is not valid is a 400 naming where it came from.
pub fn document_id<'a>(id: &'a str, pointer: &str) -> Result<&'a str, ApiError> {
    if is_document_id(id) {
        Ok(id)
    } else {
        Err(ApiError::BadRequest {
            kind: crate::http::problem::kind::INVALID_PARAMETER,
            detail: "invalid document id".into(),
            errors: vec![FieldError::new(
                pointer,
                format!(
                    "1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ - . : starting with a letter, digit or _"
                ),
            )],
        })
    }
}

/// A path into a document's `data`: dot-separated segments of
/// `[A-Za-z0-9_-]`; an all-digit segment also indexes arrays.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(dotted: &str) -> Result<Self, String> {
        if dotted.is_empty() || dotted.len() > MAX_PATH_LEN {
            return Err(format!("a field path has 1 to {MAX_PATH_LEN} characters"));
        }
        let segments: Vec<String> = dotted.split('.').map(str::to_string).collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!(
                "a field path has at most {MAX_PATH_SEGMENTS} segments"
            ));
        }
        for segment in &segments {
            let valid = !segment.is_empty()
                && segment.len() <= MAX_SEGMENT_LEN
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(format!(
                    "field path segments are 1 to {MAX_SEGMENT_LEN} of A-Z a-z 0-9 _ -, separated by dots"
                ));
            }
        }
        Ok(Self(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// Whether some segment could be an array index: containment (`@>`)
    /// only walks objects, so such paths are compared with `#>` instead.
    pub fn has_numeric_segment(&self) -> bool {
        self.0.iter().any(|s| s.bytes().all(|b| b.is_ascii_digit()))
    }

    /// `value` nested under the path: `a.b` + 1 → `{"a":{"b":1}}`.
    pub fn nest(&self, value: serde_json::Value) -> serde_json::Value {
        self.0.iter().rev().fold(value, |inner, key| {
            let mut map = serde_json::Map::new();
            map.insert(key.clone(), inner);
            serde_json::Value::Object(map)
        })
    }

    /// The path as a PostgreSQL `text[]` literal (`'{"a","b"}'::text[]`),
    /// for index DDL only, where parameters cannot be used. Safe because
    /// segments hold nothing but `[A-Za-z0-9_-]`; quoting each element
    /// keeps a segment named `null` a string.
    pub fn sql_literal(&self) -> String {
        let elements: Vec<String> = self.0.iter().map(|s| format!("\"{s}\"")).collect();
        format!("'{{{}}}'::text[]", elements.join(","))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(is_collection_name("users_v2-x"));
        for bad in ["", "a b", "a;drop", "ü", &"x".repeat(129), "a.b", "a/b"] {
            assert!(!is_collection_name(bad), "{bad}");
        }
        assert!(is_document_id("018f-abc.def:1"));
        assert!(is_document_id("_x"));
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a b",
            "a/b",
            "a'b",
            &"x".repeat(129),
            "a%20",
        ] {
            assert!(!is_document_id(bad), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let p = FieldPath::parse("a.b_c.0").expect("path");
        assert_eq!(p.segments(), ["a", "b_c", "0"]);
        assert!(p.has_numeric_segment());
        assert_eq!(p.to_string(), "a.b_c.0");
        assert_eq!(
            FieldPath::parse("a.null").expect("path").sql_literal(),
            r#"'{"a","null"}'::text[]"#
        );
        assert_eq!(
            FieldPath::parse("a.b")
                .expect("p")
                .nest(serde_json::json!(1)),
            serde_json::json!({"a": {"b": 1}})
        );
        for bad in [
            "",
            ".",
            "a..b",
            "a.",
            "a'",
            "a b",
            "a\"b",
            "a}",
            &"a.".repeat(20),
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
