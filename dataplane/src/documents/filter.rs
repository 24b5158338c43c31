//! The filter language.
//!
//! **JSON** (the `filter` of `POST …/query`):
//!
//! ```json
//! {"and": [
//!     {"age": {"gte": 18, "lt": 65}},
//!     {"or": [{"tags": {"contains": "admin"}}, {"name": {"prefix": "A"}}]},
//!     {"not": {"address.city": "Paris"}}
//! ]}
//! ```
//!
//! A node is an object. Its keys are `and`/`or` (a non-empty list of
//! nodes), `not` (a node), or a field path (`a.b.0`, see
//! [`FieldPath`]); several keys in one node are ANDed. A path maps to an
//! object of operators (several are ANDed) or to a non-object value
//! (shorthand for `eq`). Operators:
//!
//! | op | value | true when |
//! | --- | --- | --- |
//! | `eq`, `ne` | any JSON | the value at the path equals (does not equal, or is missing) |
//! | `gt` `gte` `lt` `lte` | number or string | the value has the same JSON type and compares so (numbers numerically, strings as text) |
//! | `in`, `nin` | list of scalars | the value is one of them (is not, or is missing) |
//! | `exists` | boolean | the path is present (`null` counts as present) |
//! | `prefix` | non-empty string | the value is a string starting with it |
//! | `contains` | non-null JSON | JSON containment: an array contains the element (or all elements of a list), an object the sub-object |
//!
//! **Query parameters** (list endpoint, all ANDed): `filter[age][gte]=18`,
//! `filter[status]=active` (eq). A value is read as JSON when it parses
//! (`3`, `true`, `"3"`, `[1,2]`) and as a string otherwise; `in`/`nin` take a
//! JSON list.
//!
//! Limits: nesting [`MAX_DEPTH`], [`MAX_TERMS`] conditions, values of
//! [`MAX_VALUE_BYTES`], lists of [`MAX_LIST`]. Compiled SQL binds every path
//! (as `text[]`) and every value; only fixed fragments are pushed as text.
//! Field conditions are NULL (not false) when the field is missing or of
//! another type; that is false in a WHERE clause through AND/OR, and `not`
//! wraps its operand in `coalesce(…, false)` so it is the exact complement.

use serde::Serialize;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use super::indexes::{Access, IndexedField, Piece, template};
use super::names::FieldPath;
use crate::http::problem::{ApiError, FieldError, kind};

/// Deepest nesting of `and`/`or`/`not`.
pub const MAX_DEPTH: usize = 8;
/// Most field conditions in one filter.
pub const MAX_TERMS: usize = 64;
/// Largest value (serialised) in one condition.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest `in`/`nin` list.
pub const MAX_LIST: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Exists,
    Prefix,
    Contains,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Eq,
        Op::Ne,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::In,
        Op::Nin,
        Op::Exists,
        Op::Prefix,
        Op::Contains,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "nin" => Op::Nin,
            "exists" => Op::Exists,
            "prefix" => Op::Prefix,
            "contains" => Op::Contains,
            _ => return None,
        })
    }

    fn comparison(self) -> Option<&'static str> {
        match self {
            Op::Gt => Some(" > "),
            Op::Gte => Some(" >= "),
            Op::Lt => Some(" < "),
            Op::Lte => Some(" <= "),
            _ => None,
        }
    }
}

/// A parsed filter. Serialises deterministically (cursor fingerprints).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond {
        path: FieldPath,
        op: Op,
        value: Value,
    },
}

/// A parse error: where (a JSON pointer into the request) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub pointer: String,
    pub message: String,
}

impl FilterError {
    fn new(pointer: &str, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.to_string(),
            message: message.into(),
        }
    }

    pub fn into_api(self) -> ApiError {
        ApiError::BadRequest {
            kind: kind::INVALID_PARAMETER,
            detail: format!("invalid filter: {}", self.message),
            errors: vec![FieldError::new(self.pointer, self.message)],
        }
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

struct Parser {
    terms: usize,
}

/// Parses the JSON form. `pointer` is where the filter sits in the body.
pub fn parse_json(value: &Value, pointer: &str) -> Result<Filter, FilterError> {
    Parser { terms: 0 }.node(value, pointer, 0)
}

impl Parser {
    fn node(&mut self, value: &Value, pointer: &str, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(FilterError::new(
                pointer,
                format!("nested deeper than {MAX_DEPTH}"),
            ));
        }
        let Value::Object(map) = value else {
            return Err(FilterError::new(pointer, "a filter node is an object"));
        };
        if map.is_empty() {
            return Err(FilterError::new(
                pointer,
                "a filter node needs at least one key",
            ));
        }
        let mut parts = Vec::new();
        for (key, child) in map {
            let at = format!("{pointer}/{}", escape(key));
            match key.as_str() {
                "and" | "or" => {
                    let Value::Array(items) = child else {
                        return Err(FilterError::new(&at, "a list of filter nodes"));
                    };
                    if items.is_empty() || items.len() > MAX_TERMS {
                        return Err(FilterError::new(&at, format!("1 to {MAX_TERMS} nodes")));
                    }
                    let nodes = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.node(item, &format!("{at}/{i}"), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(if key == "and" {
                        Filter::And(nodes)
                    } else {
                        Filter::Or(nodes)
                    });
                }
                "not" => parts.push(Filter::Not(Box::new(self.node(child, &at, depth + 1)?))),
                path => {
                    let path = FieldPath::parse(path).map_err(|m| FilterError::new(&at, m))?;
                    match child {
                        Value::Object(ops) => {
                            if ops.is_empty() {
                                return Err(FilterError::new(&at, "no operator"));
                            }
                            for (op, operand) in ops {
                                let op_at = format!("{at}/{}", escape(op));
                                let Some(op) = Op::parse(op) else {
                                    return Err(FilterError::new(
                                        &op_at,
                                        "unknown operator; use eq ne gt gte lt lte in nin exists prefix contains",
                                    ));
                                };
                                parts.push(self.condition(
                                    path.clone(),
                                    op,
                                    operand.clone(),
                                    &op_at,
                                )?);
                            }
                        }
                        other => parts.push(self.condition(path, Op::Eq, other.clone(), &at)?),
                    }
                }
            }
        }
        Ok(if parts.len() == 1 {
            parts.swap_remove(0)
        } else {
            Filter::And(parts)
        })
    }

    fn condition(
        &mut self,
        path: FieldPath,
        op: Op,
        value: Value,
        pointer: &str,
    ) -> Result<Filter, FilterError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(FilterError::new(
                pointer,
                format!("more than {MAX_TERMS} conditions"),
            ));
        }
        check_value(op, &value).map_err(|m| FilterError::new(pointer, m))?;
        Ok(Filter::Cond { path, op, value })
    }
}

fn check_value(op: Op, value: &Value) -> Result<(), String> {
    let size = serde_json::to_string(value)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > MAX_VALUE_BYTES {
        return Err(format!("the value exceeds {MAX_VALUE_BYTES} bytes"));
    }
    if json_depth(value) > MAX_DEPTH {
        return Err(format!("the value nests deeper than {MAX_DEPTH}"));
    }
    if super::nul_pointer(value, "").is_some() {
        return Err(super::NUL_MESSAGE.into());
    }
    match op {
        Op::Eq | Op::Ne => Ok(()),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match value {
            Value::Number(_) | Value::String(_) => Ok(()),
            _ => Err("compare with a number or a string".into()),
        },
        Op::In | Op::Nin => match value {
            Value::Array(items) if !items.is_empty() && items.len() <= MAX_LIST => {
                if items.iter().all(|v| !v.is_array() && !v.is_object()) {
                    Ok(())
                } else {
                    Err("list scalars only".into())
                }
            }
            _ => Err(format!("a list of 1 to {MAX_LIST} scalars")),
        },
        Op::Exists => match value {
            Value::Bool(_) => Ok(()),
            _ => Err("true or false".into()),
        },
        Op::Prefix => match value {
            Value::String(s) if !s.is_empty() => Ok(()),
            _ => Err("a non-empty string".into()),
        },
        Op::Contains => match value {
            Value::Null => Err("a non-null value".into()),
            _ => Ok(()),
        },
    }
}

/// Parses `filter[path]=v` and `filter[path][op]=v` pairs (the caller
/// passes only parameters starting with `filter`). All are ANDed.
pub fn parse_query_params<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Option<Filter>, ApiError> {
    let mut parts = Vec::new();
    for (name, raw) in params {
        let bad = |message: &str| ApiError::invalid_parameter("query", name, message.to_string());
        let rest = name
            .strip_prefix("filter[")
            .ok_or_else(|| bad("use filter[path] or filter[path][op]"))?;
        let (path, rest) = rest
            .split_once(']')
            .ok_or_else(|| bad("use filter[path] or filter[path][op]"))?;
        let op = match rest {
            "" => Op::Eq,
            _ => rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(Op::parse)
                .ok_or_else(|| {
                    bad("unknown operator; use eq ne gt gte lt lte in nin exists prefix contains")
                })?,
        };
        let path = FieldPath::parse(path).map_err(|m| bad(&m))?;
        if raw.len() > MAX_VALUE_BYTES {
            return Err(bad("the value is too long"));
        }
        // JSON when it parses (numbers, booleans, quoted strings, lists),
        // the raw text otherwise.
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        check_value(op, &value).map_err(|m| bad(&m))?;
        parts.push(Filter::Cond { path, op, value });
        if parts.len() > MAX_TERMS {
            return Err(bad(&format!("more than {MAX_TERMS} conditions")));
        }
    }
    Ok(match parts.len() {
        0 => None,
        1 => Some(parts.swap_remove(0)),
        _ => Some(Filter::And(parts)),
    })
}

/// How conditions on each field are compiled: indexed fields use their
/// index's typed expression; the rest are read by the operand's type.
pub struct Fields<'a> {
    pub indexed: &'a [IndexedField],
}

impl Fields<'_> {
    fn indexed(&self, path: &FieldPath) -> Option<&IndexedField> {
        self.indexed.iter().find(|f| &f.path == path)
    }

    /// Checks that range operators on indexed fields compare with a value
    /// of the declared type (else the typed index could not serve them and
    /// the answer would silently be empty).
    pub fn check(&self, filter: &Filter) -> Result<(), ApiError> {
        match filter {
            Filter::And(items) | Filter::Or(items) => items.iter().try_for_each(|f| self.check(f)),
            Filter::Not(inner) => self.check(inner),
            Filter::Cond { path, op, value } => {
                let (Some(field), Some(_)) = (self.indexed(path), op.comparison()) else {
                    return Ok(());
                };
                let access = Access::from(field.field_type);
                let ok = matches!(
                    (access, value),
                    (Access::Numeric, Value::Number(_)) | (Access::Text, Value::String(_))
                );
                if ok {
                    Ok(())
                } else {
                    Err(ApiError::invalid_parameter(
                        "query",
                        "filter",
                        format!(
                            "`{path}` is an indexed {} field: compare it with a value of that type",
                            field.field_type.as_str()
                        ),
                    ))
                }
            }
        }
    }

    /// How a range comparison reads the field.
    fn range_access(&self, path: &FieldPath, value: &Value) -> Access {
        match self.indexed(path) {
            Some(field) => field.field_type.into(),
            None if value.is_number() => Access::Numeric,
            None => Access::Text,
        }
    }
}

/// Pushes an expression template, binding the path for each occurrence.
pub fn push_expr(qb: &mut QueryBuilder<'_, Postgres>, access: Access, path: &FieldPath) {
    for piece in template(access) {
        match piece {
            Piece::Sql(sql) => {
                qb.push(*sql);
            }
            Piece::Path => {
                qb.push_bind(path.segments().to_vec());
            }
        }
    }
}

/// Pushes the filter as a boolean SQL expression (parenthesised).
pub fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, filter: &Filter, fields: &Fields<'_>) {
    match filter {
        Filter::And(items) | Filter::Or(items) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            qb.push("(");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    qb.push(joiner);
                }
                push_filter(qb, item, fields);
            }
            qb.push(")");
        }
        Filter::Not(inner) => {
            qb.push("(NOT coalesce(");
            push_filter(qb, inner, fields);
            qb.push(", false))");
        }
        Filter::Cond { path, op, value } => push_condition(qb, path, *op, value, fields),
    }
}

fn push_eq(qb: &mut QueryBuilder<'_, Postgres>, path: &FieldPath, value: &Value) {
    let scalar = !value.is_array() && !value.is_object();
    if scalar && !path.has_numeric_segment() {
        // Containment on the GIN index; for a scalar it is equality.
        qb.push("(data @> ");
        qb.push_bind(path.nest(value.clone()));
        qb.push(")");
    } else {
        push_expr(qb, Access::Jsonb, path);
        qb.push(" = ");
        qb.push_bind(value.clone());
    }
}

fn push_condition(
    qb: &mut QueryBuilder<'_, Postgres>,
    path: &FieldPath,
    op: Op,
    value: &Value,
    fields: &Fields<'_>,
) {
    match op {
        Op::Eq => push_eq(qb, path, value),
        Op::Ne => {
            qb.push("(NOT coalesce(");
            push_eq(qb, path, value);
            qb.push(", false))");
        }
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let access = fields.range_access(path, value);
            qb.push("(");
            push_expr(qb, access, path);
            qb.push(op.comparison().unwrap_or(" = "));
            match (access, value) {
                (Access::Numeric, Value::Number(n)) => {
                    qb.push_bind(n.to_string());
                    qb.push("::numeric");
                }
                (_, Value::String(s)) => {
                    qb.push_bind(s.clone());
                }
                // `Fields::check` and `check_value` rule the rest out;
                // compare with NULL (false) rather than panic.
                _ => {
                    qb.push("NULL");
                }
            }
            qb.push(")");
        }
        Op::In | Op::Nin => {
            let items: Vec<Value> = match value {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            qb.push(if op == Op::In { "(" } else { "(NOT coalesce(" });
            push_expr(qb, Access::Jsonb, path);
            qb.push(" = ANY(");
            qb.push_bind(items);
            qb.push("::jsonb[])");
            qb.push(if op == Op::In { ")" } else { ", false))" });
        }
        Op::Exists => {
            qb.push("(");
            push_expr(qb, Access::Jsonb, path);
            qb.push(if value.as_bool() == Some(false) {
                " IS NULL)"
            } else {
                " IS NOT NULL)"
            });
        }
        Op::Prefix => {
            qb.push("starts_with(");
            push_expr(qb, Access::Text, path);
            qb.push(", ");
            qb.push_bind(value.as_str().unwrap_or_default().to_string());
            qb.push(")");
        }
        Op::Contains => {
            let wanted = match value {
                Value::Array(_) | Value::Object(_) => value.clone(),
                scalar => Value::Array(vec![scalar.clone()]),
            };
            if path.has_numeric_segment() {
                qb.push("(");
                push_expr(qb, Access::Jsonb, path);
                qb.push(" @> ");
                qb.push_bind(wanted);
                qb.push(")");
            } else {
                qb.push("(data @> ");
                qb.push_bind(path.nest(wanted));
                qb.push(")");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_json_form() {
        let f = parse_json(
            &json!({"and": [{"age": {"gte": 18, "lt": 65}}, {"not": {"a.b": "x"}}]}),
            "/filter",
        )
        .expect("filter");
        let Filter::And(items) = f else { panic!("and") };
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[1], Filter::Not(_)));
    }

    #[test]
    fn rejects_with_pointers() {
        let cases = [
            (json!({"a'b": 1}), "/filter/a'b"),
            (json!({"a": {"regex": ".*"}}), "/filter/a/regex"),
            (json!({"and": []}), "/filter/and"),
            (json!({"and": [{"x": {"gt": true}}]}), "/filter/and/0/x/gt"),
            (json!({"a": {"in": [[1]]}}), "/filter/a/in"),
            (json!([]), "/filter"),
            (json!({"a/b": 1}), "/filter/a~1b"),
        ];
        for (filter, pointer) in cases {
            let error = parse_json(&filter, "/filter").expect_err("invalid");
            assert_eq!(error.pointer, pointer, "{filter}");
            assert_eq!(error.into_api().kind().status.as_u16(), 400);
        }
        let mut deep = json!({"a": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "not": deep });
        }
        assert!(parse_json(&deep, "").is_err());
        let many: Vec<Value> = (0..=MAX_TERMS).map(|i| json!({"a": i})).collect();
        assert!(parse_json(&json!({"or": many}), "").is_err());
    }

    #[test]
    fn parses_query_parameters() {
        let f = parse_query_params([("filter[age][gte]", "18"), ("filter[name]", "bob")])
            .expect("ok")
            .expect("some");
        assert_eq!(
            f,
            Filter::And(vec![
                Filter::Cond {
                    path: FieldPath::parse("age").expect("p"),
                    op: Op::Gte,
                    value: json!(18)
                },
                Filter::Cond {
                    path: FieldPath::parse("name").expect("p"),
                    op: Op::Eq,
                    value: json!("bob")
                },
            ])
        );
        for bad in [
            ("filter[a';--]", "1"),
            ("filter[a][like]", "1"),
            ("filter[a][in]", "1"),
            ("filter[a", "1"),
            ("filter[a][gt]x", "1"),
        ] {
            assert!(parse_query_params([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compiled_sql_binds_every_path_and_value() {
        let hostile = "x'); DROP TABLE documents; --";
        let f = parse_json(
            &json!({"or": [{"a": hostile}, {"a.0": {"ne": hostile}}, {"b": {"prefix": hostile}}, {"c": {"in": [hostile]}}]}),
            "",
        )
        .expect("filter");
        let mut qb = QueryBuilder::<Postgres>::new("SELECT 1 WHERE ");
        push_filter(&mut qb, &f, &Fields { indexed: &[] });
        let sql = qb.sql();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("x'"), "{sql}");
    }
}
