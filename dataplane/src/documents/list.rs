//! Listing and querying documents: `GET …/documents?filter[…]…&sort=…`
//! and `POST …/query` with `{"filter", "sort", "limit", "cursor", "count"}`.
//! Both compile to one statement:
//!
//! ```sql
//! SELECT id, data, …, (k0)::text, … FROM documents
//! WHERE collection_id = $1 AND (<filter>) AND (<after cursor>)
//! ORDER BY k0, …, id LIMIT <limit + 1>
//! ```
//!
//! run as an unnamed statement (`persistent(false)`): PostgreSQL then
//! plans it with the bound values, which is what lets the partial
//! expression indexes of indexed fields match (see [`super::indexes`]).
//! The cursor is bound to a fingerprint of (collection, filter, sort); a
//! cursor reused with another query is a 400. Totals only with `count`.
//!
//! A cursor carries the last row's sort values, unless they are longer
//! than [`MAX_CURSOR_KEYS_BYTES`] (a sort on a field holding long strings
//! or objects): then it names the row only, and the next page reads the
//! row's values back, so cursors and `Link` headers stay short. If that
//! row was deleted in between, the cursor is a 400 (start again).

use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::filter::{self, Fields, Filter};
use super::names::collection_name;
use super::sort::{Keys, Sort};
use super::store::{self, Document, document_columns};
use crate::http::pagination::{CursorCodec, Page, PageLimits, Position, QueryFingerprint};
use crate::http::problem::{ApiError, kind};

/// Longest sort values (serialised) a cursor carries; see the module docs.
pub const MAX_CURSOR_KEYS_BYTES: usize = 1024;

/// The cursor's sort values: `None` when they were too long to carry.
fn carried(keys: &Keys) -> Option<Keys> {
    let size = serde_json::to_vec(keys)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    (size <= MAX_CURSOR_KEYS_BYTES).then(|| keys.clone())
}

/// The sort values of the row a by-reference cursor names.
async fn keys_of(pool: &PgPool, collection: Uuid, sort: &Sort, id: &str) -> Result<Keys, ApiError> {
    let mut qb = QueryBuilder::<Postgres>::new("SELECT id");
    sort.push_select(&mut qb);
    qb.push(" FROM documents WHERE collection_id = ");
    qb.push_bind(collection);
    qb.push(" AND id = ");
    qb.push_bind(id.to_string());
    let Some(row) = qb.build().persistent(false).fetch_optional(pool).await? else {
        return Err(ApiError::invalid_parameter(
            "query",
            "cursor",
            "the document this page ended at was deleted since; start again without a cursor",
        )
        .with_kind(kind::INVALID_CURSOR));
    };
    Ok((0..sort.keys.len())
        .map(|i| row.try_get::<Option<String>, _>(1 + i))
        .collect::<Result<_, _>>()?)
}

/// Page sizes of document lists.
pub const LIMITS: PageLimits = PageLimits {
    default: 50,
    max: 1000,
};

/// A parsed list request.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub filter: Option<Filter>,
    pub sort: Vec<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub count: bool,
}

/// The body of `POST …/query`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DocumentQuery)]
pub struct QueryBody {
    /// The filter language: a node is an object whose keys are `and`/`or` (a list of nodes), `not` (a node) or a field path (`a.b.0`); a path maps to a value (equality) or to an object of operators `eq ne gt gte lt lte in nin exists prefix contains` (ANDed). Limits: depth 8, 64 conditions, values of 4096 bytes, lists of 256.
    #[schema(value_type = Option<Object>, example = json!({"and": [{"year": {"gte": 2020}}, {"tags": {"contains": "db"}}]}))]
    pub filter: Option<Value>,
    /// Up to 4 field paths, `-` for descending; the id breaks ties.
    #[serde(default)]
    #[schema(max_items = 4, example = json!(["-year"]))]
    pub sort: Vec<String>,
    /// Page size, 1 to 1000 (default 50).
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page of the same query.
    pub cursor: Option<String>,
    /// Add `total`, the number of matching documents (costs a count).
    #[serde(default)]
    pub count: bool,
}

impl QueryBody {
    pub fn into_request(self) -> Result<ListRequest, ApiError> {
        let filter = self
            .filter
            .as_ref()
            .map(|f| filter::parse_json(f, "/filter"))
            .transpose()
            .map_err(filter::FilterError::into_api)?;
        Ok(ListRequest {
            filter,
            sort: self.sort,
            limit: self.limit,
            cursor: self.cursor,
            count: self.count,
        })
    }
}

/// Reads the list parameters from a query string: `filter[…]`, `sort`,
/// `limit`, `cursor`, `count`. Unknown parameters are a 400 (a typo in a
/// filter must not silently widen the result).
pub fn parse_query_string(query: Option<&str>) -> Result<ListRequest, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    // Bounded before anything else is done with them.
    if pairs.len() > filter::MAX_TERMS + 8 {
        return Err(ApiError::invalid_parameter(
            "query",
            "filter",
            "too many parameters",
        ));
    }
    let mut request = ListRequest::default();
    let mut filters = Vec::new();
    for (name, value) in &pairs {
        match name.as_str() {
            "sort" => request.sort = value.split(',').map(str::to_string).collect(),
            "limit" => {
                request.limit = Some(value.parse().map_err(|_| {
                    ApiError::invalid_parameter("query", "limit", "a positive integer")
                })?)
            }
            "cursor" => request.cursor = Some(value.clone()),
            "count" => {
                request.count = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid_parameter(
                            "query",
                            "count",
                            "true or false",
                        ));
                    }
                }
            }
            n if n.starts_with("filter[") => filters.push((name.as_str(), value.as_str())),
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(ApiError::invalid_parameter(
                    "query",
                    &shown,
                    "unknown parameter",
                ));
            }
        }
    }
    request.filter = filter::parse_query_params(filters)?;
    Ok(request)
}

#[derive(Serialize)]
struct Fingerprint<'a> {
    collection: Uuid,
    filter: &'a Option<Filter>,
    sort: &'a Sort,
}

/// Runs a list request and answers the page (with `Link: rel="next"`).
pub async fn list(
    pool: &PgPool,
    codec: &CursorCodec,
    collection: &str,
    request: ListRequest,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let coll = store::get_collection(pool, collection_name(collection)?).await?;
    list_in(pool, codec, &coll, request, uri).await
}

/// A tenant route's list: the collection's row from the cache
/// ([`store::cached_collection`]).
pub async fn list_cached(
    ctx: &crate::tenancy::TenantContext,
    codec: &CursorCodec,
    collection: &str,
    request: ListRequest,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let coll = store::cached_collection(ctx, collection_name(collection)?).await?;
    list_in(ctx.pool(), codec, &coll, request, uri).await
}

async fn list_in(
    pool: &PgPool,
    codec: &CursorCodec,
    coll: &store::Collection,
    request: ListRequest,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let limit = LIMITS.resolve(request.limit)?;
    let indexed = coll.fields()?;
    let fields = Fields { indexed: &indexed };
    if let Some(filter) = &request.filter {
        fields.check(filter)?;
    }
    let sort = Sort::parse(
        request
            .sort
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty()),
        &indexed,
    )?;
    let fingerprint = QueryFingerprint::of(&Fingerprint {
        collection: coll.id,
        filter: &request.filter,
        sort: &sort,
    });
    let after: Option<Position<Option<Keys>>> =
        codec.decode_param(request.cursor.as_deref(), &fingerprint)?;
    let after = match after {
        Some(Position {
            keys: Some(keys),
            id,
        }) => Some(Position { keys, id }),
        Some(Position { keys: None, id }) => Some(Position {
            keys: keys_of(pool, coll.id, &sort, &id).await?,
            id,
        }),
        None => None,
    };

    let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {}", document_columns()));
    sort.push_select(&mut qb);
    qb.push(" FROM documents WHERE collection_id = ");
    qb.push_bind(coll.id);
    if let Some(filter) = &request.filter {
        qb.push(" AND ");
        filter::push_filter(&mut qb, filter, &fields);
    }
    if let Some(after) = &after {
        sort.push_after(&mut qb, after)?;
    }
    sort.push_order_by(&mut qb);
    qb.push(" LIMIT ");
    qb.push_bind(i64::from(limit) + 1);
    let rows = qb.build().persistent(false).fetch_all(pool).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let doc = Document {
            id: row.try_get("id")?,
            data: row.try_get("data")?,
            version: row.try_get("version")?,
            created_us: row.try_get("created_us")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        let keys: Keys = (0..sort.keys.len())
            .map(|i| row.try_get::<Option<String>, _>(6 + i))
            .collect::<Result<_, _>>()?;
        items.push((doc, keys));
    }
    let page = Page::from_rows(items, limit, codec, &fingerprint, |(doc, keys)| Position {
        keys: carried(keys),
        id: doc.id.clone(),
    });
    let total = if request.count {
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT count(*) FROM documents WHERE collection_id = ");
        qb.push_bind(coll.id);
        if let Some(filter) = &request.filter {
            qb.push(" AND ");
            filter::push_filter(&mut qb, filter, &fields);
        }
        let n: i64 = qb
            .build_query_scalar()
            .persistent(false)
            .fetch_one(pool)
            .await?;
        Some(u64::try_from(n).unwrap_or(0))
    } else {
        None
    };
    let page = Page {
        items: page
            .items
            .into_iter()
            .map(|(doc, _)| doc)
            .collect::<Vec<_>>(),
        next_cursor: page.next_cursor,
        total,
    };
    Ok(page.into_response_for(uri).into_response())
}

/// The plan of a list request's page query (or, with `count`, of its
/// count query). Tests prove index use with it; `enable_seqscan` is off
/// so a small table does not hide an index the planner would use at scale.
pub async fn explain(
    pool: &PgPool,
    collection: &str,
    request: &ListRequest,
) -> Result<String, ApiError> {
    let coll = store::get_collection(pool, collection).await?;
    let indexed = coll.fields()?;
    let fields = Fields { indexed: &indexed };
    let sort = Sort::parse(request.sort.iter().map(String::as_str), &indexed)?;
    let select = if request.count { "count(*)" } else { "id" };
    let mut qb = QueryBuilder::<Postgres>::new(format!(
        "EXPLAIN SELECT {select} FROM documents WHERE collection_id = "
    ));
    qb.push_bind(coll.id);
    if let Some(filter) = &request.filter {
        qb.push(" AND ");
        filter::push_filter(&mut qb, filter, &fields);
    }
    if !request.count {
        sort.push_order_by(&mut qb);
        qb.push(" LIMIT 10");
    }
    let mut conn = pool.acquire().await?;
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await?;
    let lines: Vec<String> = qb
        .build_query_scalar()
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("RESET enable_seqscan")
        .execute(&mut *conn)
        .await?;
    Ok(lines.join("\n"))
}
