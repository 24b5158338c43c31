//! The database API's collections and documents (issue 8, points 3, 4, 6).
//!
//! One file per family of operations, Garage style:
//! - [`names`]: what a collection name, a document id and a field path may be;
//! - [`schema`]: JSON Schema (draft 2020-12) checks of schemas and documents;
//! - [`filter`]: the filter language (query parameters and JSON body), parsed
//!   into a bounded tree and compiled to SQL with every path and value bound;
//! - [`sort`]: sort keys and keyset pagination over them;
//! - [`indexes`]: the per-collection expression indexes of indexed fields;
//! - [`store`]: the SQL of collections and documents, outbox rows included;
//! - [`collections`], [`crud`], [`bulk`], [`list`]: what each request does,
//!   written against a pool (and, for index DDL, an owner connection).
//!
//! Every limit a client can run into is a constant here or in the module
//! that enforces it, so the documentation can list them.

pub mod bulk;
pub mod collections;
pub mod crud;
pub mod filter;
pub mod indexes;
pub mod list;

pub mod names;
pub mod routes;
pub mod schema;
pub mod sort;
pub mod store;

pub use routes::routes;

/// What a client is told about U+0000, which PostgreSQL's `text` and
/// `jsonb` cannot hold (so no stored document has it either).
pub const NUL_MESSAGE: &str = "strings and keys may not contain U+0000 (\\u0000)";

fn nul_segments(value: &serde_json::Value) -> Option<Vec<String>> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(Vec::new()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            nul_segments(v).map(|mut segments| {
                segments.push(i.to_string());
                segments
            })
        }),
        Value::Object(map) => map.iter().find_map(|(key, v)| {
            if key.contains('\0') {
                Some(vec![key.clone()])
            } else {
                nul_segments(v).map(|mut segments| {
                    segments.push(key.clone());
                    segments
                })
            }
        }),
        _ => None,
    }
}

/// The JSON pointer (below `pointer`) of the first string or object key
/// of `value` holding U+0000; `None` when there is none. Allocates only
/// when it finds one.
pub fn nul_pointer(value: &serde_json::Value, pointer: &str) -> Option<String> {
    nul_segments(value).map(|segments| {
        segments
            .iter()
            .rev()
            .fold(pointer.to_string(), |mut at, segment| {
                at.push('/');
                at.push_str(&segment.replace('~', "~0").replace('/', "~1"));
                at
            })
    })
}

/// Largest document (its `data`, serialised) accepted: bigger is a 413.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Deepest nesting of a document's `data` (serde_json stops at 128 already;
/// this keeps documents well inside what the filter paths can address).
pub const MAX_DOCUMENT_DEPTH: usize = 64;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::nul_pointer;

    #[test]
    fn nul_pointer_names_the_first_nul() {
        assert_eq!(nul_pointer(&json!({"a": ["x", {"b": 1}]}), "/data"), None);
        assert_eq!(
            nul_pointer(&json!({"a": ["x", {"b/~": "y\u{0}"}]}), "/data").as_deref(),
            Some("/data/a/1/b~1~0")
        );
        assert_eq!(
            nul_pointer(&json!({"k\u{0}": 1}), "").as_deref(),
            Some("/k\u{0}")
        );
        assert_eq!(nul_pointer(&json!("\u{0}"), "").as_deref(), Some(""));
    }
}
