//! Sorting and keyset pagination.
//!
//! `sort=-age,name`: up to [`MAX_SORT_KEYS`] field paths, `-` for
//! descending. The document id always breaks ties, in the direction of the
//! first key (so an index on `(expr, id)` serves the order both ways).
//! Missing values and values of another type sort as NULL: last ascending,
//! first descending (PostgreSQL's defaults, which btree indexes provide).
//!
//! Indexed fields sort by their typed index expression; other fields by
//! their jsonb value (jsonb's total order: null < strings < numbers <
//! booleans < arrays < objects).
//!
//! The cursor carries the last row's sort values as text (`expr::text`)
//! and its id; the next page continues strictly after that position. The
//! predicate is written out per key (`k1 > v1 OR (k1 = v1 AND …)`) with NULL
//! handled explicitly, since row comparison would treat NULL as unknown.

use serde::Serialize;
use sqlx::{Postgres, QueryBuilder};

use super::filter::push_expr;
use super::indexes::{Access, IndexedField};
use super::names::FieldPath;
use crate::http::pagination::Position;
use crate::http::problem::ApiError;

/// Most sort keys (besides the id tie-break).
pub const MAX_SORT_KEYS: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SortKey {
    pub path: FieldPath,
    pub desc: bool,
    pub access: Access,
}

/// The sort of a request, resolved against the collection's indexed fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sort {
    pub keys: Vec<SortKey>,
}

/// Cursor sort values: the text of each key, NULL as `None`.
pub type Keys = Vec<Option<String>>;

impl Sort {
    /// Parses `sort` (comma-separated, or a list from a JSON body).
    pub fn parse<'a>(
        items: impl IntoIterator<Item = &'a str>,
        indexed: &[IndexedField],
    ) -> Result<Self, ApiError> {
        let mut keys: Vec<SortKey> = Vec::new();
        for item in items {
            let item = item.trim();
            let (desc, dotted) = match item.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, item.strip_prefix('+').unwrap_or(item)),
            };
            let path = FieldPath::parse(dotted)
                .map_err(|m| ApiError::invalid_parameter("query", "sort", m))?;
            if keys.iter().any(|k| k.path == path) {
                return Err(ApiError::invalid_parameter(
                    "query",
                    "sort",
                    format!("`{path}` appears twice"),
                ));
            }
            let access = indexed
                .iter()
                .find(|f| f.path == path)
                .map_or(Access::Jsonb, |f| f.field_type.into());
            keys.push(SortKey { path, desc, access });
            if keys.len() > MAX_SORT_KEYS {
                return Err(ApiError::invalid_parameter(
                    "query",
                    "sort",
                    format!("at most {MAX_SORT_KEYS} sort keys"),
                ));
            }
        }
        Ok(Self { keys })
    }

    /// Direction of the id tie-break.
    fn id_desc(&self) -> bool {
        self.keys.first().is_some_and(|k| k.desc)
    }

    /// `, (k0)::text, (k1)::text …` for the select list.
    pub fn push_select(&self, qb: &mut QueryBuilder<'_, Postgres>) {
        for key in &self.keys {
            qb.push(", (");
            push_expr(qb, key.access, &key.path);
            qb.push(")::text");
        }
    }

    /// ` ORDER BY k0 [DESC], …, id [DESC]`.
    pub fn push_order_by(&self, qb: &mut QueryBuilder<'_, Postgres>) {
        qb.push(" ORDER BY ");
        for key in &self.keys {
            push_expr(qb, key.access, &key.path);
            qb.push(if key.desc { " DESC, " } else { " ASC, " });
        }
        qb.push(if self.id_desc() { "id DESC" } else { "id ASC" });
    }

    /// ` AND (<rows strictly after the cursor position>)`.
    pub fn push_after(
        &self,
        qb: &mut QueryBuilder<'_, Postgres>,
        after: &Position<Keys>,
    ) -> Result<(), ApiError> {
        if after.keys.len() != self.keys.len() {
            // An authentic cursor of this query always matches; be safe.
            return Err(ApiError::invalid_parameter(
                "query",
                "cursor",
                "does not match the sort",
            ));
        }
        qb.push(" AND (");
        for i in 0..=self.keys.len() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push("(TRUE");
            for (key, value) in self.keys.iter().zip(&after.keys).take(i) {
                qb.push(" AND ");
                push_equal(qb, key, value.as_deref());
            }
            qb.push(" AND ");
            match self.keys.get(i) {
                Some(key) => push_beyond(qb, key, after.keys[i].as_deref()),
                None => {
                    qb.push(if self.id_desc() { "id < " } else { "id > " });
                    qb.push_bind(after.id.clone());
                }
            }
            qb.push(")");
        }
        qb.push(")");
        Ok(())
    }
}

fn push_value(qb: &mut QueryBuilder<'_, Postgres>, key: &SortKey, value: &str) {
    qb.push_bind(value.to_string());
    qb.push("::text::");
    qb.push(key.access.sql_type());
}

/// `k = v`, or `k IS NULL` when the cursor value is NULL.
fn push_equal(qb: &mut QueryBuilder<'_, Postgres>, key: &SortKey, value: Option<&str>) {
    qb.push("(");
    push_expr(qb, key.access, &key.path);
    match value {
        None => {
            qb.push(" IS NULL");
        }
        Some(value) => {
            qb.push(" = ");
            push_value(qb, key, value);
        }
    }
    qb.push(")");
}

/// Strictly after `v` in the key's order, NULL being the largest value.
fn push_beyond(qb: &mut QueryBuilder<'_, Postgres>, key: &SortKey, value: Option<&str>) {
    match (key.desc, value) {
        // Ascending, after NULL (the end): nothing.
        (false, None) => {
            qb.push("FALSE");
        }
        (false, Some(value)) => {
            qb.push("(");
            push_expr(qb, key.access, &key.path);
            qb.push(" > ");
            push_value(qb, key, value);
            qb.push(" OR ");
            push_expr(qb, key.access, &key.path);
            qb.push(" IS NULL)");
        }
        // Descending starts with the NULLs; after them come the values.
        (true, None) => {
            qb.push("(");
            push_expr(qb, key.access, &key.path);
            qb.push(" IS NOT NULL)");
        }
        (true, Some(value)) => {
            qb.push("(");
            push_expr(qb, key.access, &key.path);
            qb.push(" < ");
            push_value(qb, key, value);
            qb.push(")");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sort() {
        let s = Sort::parse("-a.b,c".split(','), &[]).expect("sort");
        assert_eq!(s.keys.len(), 2);
        assert!(s.keys[0].desc && !s.keys[1].desc);
        for bad in ["a;drop", "a,a", "a,b,c,d,e", "", "a b", "-"] {
            assert!(Sort::parse(bad.split(','), &[]).is_err(), "{bad}");
        }
    }
}
