//! JSON Schema (draft 2020-12) for collections. A schema is checked
//! against the draft's meta-schema when it is set; documents are checked
//! against it on every write. Every error is reported with its JSON pointer.
//!
//! Safety: no `$ref` is ever fetched (the crate's HTTP and file resolvers
//! are compiled out: a tenant's schema must not make the data plane reach
//! URLs or files), and `pattern`s use the linear-time `regex` engine, so a
//! hostile pattern cannot backtrack for minutes.

use serde_json::Value;

use crate::http::problem::{ApiError, FieldError};

/// Largest schema accepted (serialised).
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most errors listed for one document (or schema).
pub const MAX_ERRORS: usize = 100;

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// A compiled schema.
pub struct Schema(jsonschema::Validator);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// Checks a schema set on a collection and compiles it. Errors point into
/// the request body below `pointer` (e.g. `/schema/properties/age/type`).
pub fn compile(schema: &Value, pointer: &str) -> Result<Schema, ApiError> {
    let size = serde_json::to_string(schema)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > MAX_SCHEMA_BYTES {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            format!("the schema exceeds {MAX_SCHEMA_BYTES} bytes"),
        )]));
    }
    if let Some(at) = super::nul_pointer(schema, pointer) {
        return Err(ApiError::validation(vec![FieldError::new(
            at,
            super::NUL_MESSAGE,
        )]));
    }
    if !schema.is_object() && !schema.is_boolean() {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            "a schema is an object or a boolean",
        )]));
    }
    if let Some(declared) = schema.get("$schema")
        && declared.as_str().map(|s| s.trim_end_matches('#')) != Some(DRAFT_2020_12)
    {
        return Err(ApiError::validation(vec![FieldError::new(
            format!("{pointer}/$schema"),
            format!("only draft 2020-12 ({DRAFT_2020_12}) is supported"),
        )]));
    }
    let meta = jsonschema::draft202012::meta::validator();
    let errors: Vec<FieldError> = meta
        .iter_errors(schema)
        .take(MAX_ERRORS)
        .map(|e| {
            FieldError::new(
                format!("{pointer}{}", e.instance_path().as_str()),
                e.to_string(),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map(Schema)
        // Unresolvable `$ref`s (remote ones included) and the like.
        .map_err(|e| ApiError::validation(vec![FieldError::new(pointer, e.to_string())]))
}

impl Schema {
    /// Every violation of `document`, pointers below `pointer`.
    pub fn violations(&self, document: &Value, pointer: &str) -> Vec<FieldError> {
        self.0
            .iter_errors(document)
            .take(MAX_ERRORS)
            .map(|e| {
                FieldError::new(
                    format!("{pointer}{}", e.instance_path().as_str()),
                    e.to_string(),
                )
            })
            .collect()
    }

    pub fn validate(&self, document: &Value, pointer: &str) -> Result<(), ApiError> {
        let errors = self.violations(document, pointer);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documents_get_every_error_with_its_pointer() {
        let schema = compile(
            &json!({"type": "object", "required": ["name"], "properties": {
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}}}}),
            "/schema",
        )
        .expect("schema");
        assert!(
            schema
                .validate(&json!({"name": "x", "age": 3}), "/data")
                .is_ok()
        );
        let errors = schema.violations(&json!({"age": -1, "tags": ["a", 2]}), "/data");
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/data"), "{pointers:?}");
        assert!(pointers.contains(&"/data/age"), "{pointers:?}");
        assert!(pointers.contains(&"/data/tags/1"), "{pointers:?}");
    }

    #[test]
    fn bad_schemas_are_422() {
        for bad in [
            json!({"type": "nonsense"}),
            json!({"$schema": "http://json-schema.org/draft-04/schema#"}),
            json!({"$ref": "https://example.com/evil.json"}),
            json!(3),
        ] {
            let error = compile(&bad, "/schema").expect_err("invalid");
            assert_eq!(error.kind().status.as_u16(), 422, "{bad}");
        }
        // A catastrophic-backtracking pattern is harmless with `regex`.
        let schema = compile(&json!({"pattern": "^(a+)+$"}), "/schema").expect("schema");
        let input = format!("{}!", "a".repeat(5000));
        assert!(schema.validate(&json!(input), "").is_err());
    }
}
