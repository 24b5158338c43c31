//! Indexed fields: a collection declares `{path, type}` pairs and each gets
//! a partial expression index on `documents`, restricted to the collection:
//!
//! ```sql
//! CREATE INDEX CONCURRENTLY dx_<collection>_<hash> ON documents
//!     ((<typed expression>), id) WHERE collection_id = '<uuid>'::uuid
//! ```
//!
//! Filters and sorts on an indexed field use the *same* typed expression
//! ([`Piece`] templates, shared by the DDL and the query builder), so the
//! planner can match it; queries run as unnamed statements (custom plans),
//! where the bound path and collection id are constants, which is what lets
//! the expression and the partial predicate match (tested with EXPLAIN).
//!
//! The DDL runs as the tenant's owner (the data plane's role owns nothing),
//! `CONCURRENTLY` so writes to the collection go on while it builds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::names::FieldPath;
use crate::http::problem::{ApiError, FieldError};

/// Most indexed fields per collection (each is an index to maintain).
pub const MAX_INDEXED_FIELDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// RFC 3339 strings, compared as text: order is time order when every
    /// value uses the same offset and precision (UTC, `Z`, as documented).
    Timestamp,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
        }
    }
}

/// How a value at a path is read in SQL: as jsonb, or as a typed scalar
/// that is NULL when the JSON value has another type (so a string never
/// breaks a numeric index or comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Jsonb,
    Text,
    Numeric,
    Boolean,
}

impl From<FieldType> for Access {
    fn from(t: FieldType) -> Self {
        match t {
            FieldType::String | FieldType::Timestamp => Access::Text,
            FieldType::Number => Access::Numeric,
            FieldType::Boolean => Access::Boolean,
        }
    }
}

impl Access {
    /// The SQL type a cursor value (sent as text) is cast back to.
    pub fn sql_type(self) -> &'static str {
        match self {
            Access::Jsonb => "jsonb",
            Access::Text => "text",
            Access::Numeric => "numeric",
            Access::Boolean => "boolean",
        }
    }
}

/// A piece of an expression template: fixed SQL, or the field's path.
#[derive(Debug, Clone, Copy)]
pub enum Piece {
    Sql(&'static str),
    Path,
}

use Piece::{Path as P, Sql as S};

/// The expression reading a field with `access`, as a template. Everything
/// but the path is fixed text.
pub fn template(access: Access) -> &'static [Piece] {
    match access {
        Access::Jsonb => &[S("(data #> "), P, S(")")],
        Access::Text => &[
            S("(CASE WHEN jsonb_typeof(data #> "),
            P,
            S(") = 'string' THEN data #>> "),
            P,
            S(" END)"),
        ],
        Access::Numeric => &[
            S("(CASE WHEN jsonb_typeof(data #> "),
            P,
            S(") = 'number' THEN (data #> "),
            P,
            S(")::numeric END)"),
        ],
        Access::Boolean => &[
            S("(CASE WHEN jsonb_typeof(data #> "),
            P,
            S(") = 'boolean' THEN (data #> "),
            P,
            S(")::boolean END)"),
        ],
    }
}

/// The expression with the path as a literal (index DDL).
pub fn literal_expression(access: Access, path: &FieldPath) -> String {
    template(access)
        .iter()
        .map(|piece| match piece {
            Piece::Sql(sql) => (*sql).to_string(),
            Piece::Path => path.sql_literal(),
        })
        .collect()
}

/// One declared indexed field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IndexedField {
    pub path: FieldPath,
    #[serde(rename = "type")]
    pub field_type: FieldType,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    path: String,
    #[serde(rename = "type")]
    field_type: FieldType,
}

/// Parses the `indexed_fields` of a request (or of the stored column).
/// Errors point below `pointer`.
pub fn parse_fields(
    value: &serde_json::Value,
    pointer: &str,
) -> Result<Vec<IndexedField>, ApiError> {
    let raw: Vec<RawField> = serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::validation(vec![FieldError::new(
            pointer,
            format!(
                "a list of {{\"path\", \"type\"}} with type string|number|boolean|timestamp: {e}"
            ),
        )])
    })?;
    if raw.len() > MAX_INDEXED_FIELDS {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            format!("at most {MAX_INDEXED_FIELDS} indexed fields"),
        )]));
    }
    let mut fields: Vec<IndexedField> = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, field) in raw.into_iter().enumerate() {
        match FieldPath::parse(&field.path) {
            Ok(path) if fields.iter().any(|f| f.path == path) => errors.push(FieldError::new(
                format!("{pointer}/{i}/path"),
                "declared twice",
            )),
            Ok(path) => fields.push(IndexedField {
                path,
                field_type: field.field_type,
            }),
            Err(message) => errors.push(FieldError::new(format!("{pointer}/{i}/path"), message)),
        }
    }
    if errors.is_empty() {
        Ok(fields)
    } else {
        Err(ApiError::validation(errors))
    }
}

pub fn fields_json(fields: &[IndexedField]) -> serde_json::Value {
    serde_json::to_value(fields).unwrap_or_else(|_| serde_json::json!([]))
}

/// Prefix of every index of a collection: lets a collection's indexes be
/// found (and dropped) by name.
pub fn name_prefix(collection: Uuid) -> String {
    format!("dx_{}_", collection.simple())
}

/// The index name of a field: the collection, then a hash of path and type
/// (48 characters, under PostgreSQL's 63).
pub fn index_name(collection: Uuid, field: &IndexedField) -> String {
    let digest = Sha256::digest(format!("{}\0{}", field.path, field.field_type.as_str()));
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", name_prefix(collection))
}

/// The DDL of a field's index. Every interpolated part is validated or
/// server-made: the name (hex), the expression (fixed text and a path of
/// `[A-Za-z0-9_-]` segments) and the collection's UUID.
pub fn create_index_sql(collection: Uuid, field: &IndexedField) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON documents (({expr}), id) \
         WHERE collection_id = '{collection}'::uuid",
        name = index_name(collection, field),
        expr = literal_expression(field.field_type.into(), &field.path),
    )
}

/// Makes the collection's indexes exactly those of `fields`: builds the
/// missing ones, drops those of fields no longer declared, and rebuilds any
/// an interrupted `CONCURRENTLY` left invalid. `conn` must act as the owner.
pub async fn sync(
    conn: &mut PgConnection,
    collection: Uuid,
    fields: &[IndexedField],
) -> Result<(), ApiError> {
    let wanted: Vec<(String, &IndexedField)> = fields
        .iter()
        .map(|f| (index_name(collection, f), f))
        .collect();
    let existing = existing(conn, collection).await?;
    for (name, valid) in &existing {
        let keep = wanted.iter().any(|(w, _)| w == name);
        if !keep || !valid {
            drop_index(conn, name).await?;
        }
    }
    for (name, field) in &wanted {
        if !existing.iter().any(|(n, valid)| n == name && *valid) {
            sqlx::query(&create_index_sql(collection, field))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Drops every index of a collection (it is being deleted).
pub async fn drop_all(conn: &mut PgConnection, collection: Uuid) -> Result<(), ApiError> {
    for (name, _) in existing(conn, collection).await? {
        drop_index(conn, &name).await?;
    }
    Ok(())
}

async fn drop_index(conn: &mut PgConnection, name: &str) -> Result<(), ApiError> {
    // Names come from `existing` (our prefix, hex) — re-checked anyway,
    // since they are interpolated.
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ApiError::internal(anyhow::anyhow!("unexpected index name")));
    }
    sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// (name, valid) of the collection's indexes.
async fn existing(
    conn: &mut PgConnection,
    collection: Uuid,
) -> Result<Vec<(String, bool)>, ApiError> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = 'documents'::regclass AND starts_with(c.relname::text, $1)",
    )
    .bind(name_prefix(collection))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_is_built_from_validated_parts() {
        let id = Uuid::nil();
        let field = IndexedField {
            path: FieldPath::parse("a.b").expect("path"),
            field_type: FieldType::Number,
        };
        let sql = create_index_sql(id, &field);
        assert!(
            sql.starts_with(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS dx_00000000000000000000000000000000_"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(r#"(data #> '{"a","b"}'::text[])::numeric"#),
            "{sql}"
        );
        assert!(index_name(id, &field).len() <= 63);
        let err = parse_fields(
            &serde_json::json!([{"path": "a'b", "type": "number"}]),
            "/indexed_fields",
        )
        .expect_err("bad path");
        assert_eq!(err.to_problem().errors[0].pointer, "/indexed_fields/0/path");
        assert!(parse_fields(&serde_json::json!([{"path": "a", "type": "blob"}]), "/x").is_err());
    }
}
