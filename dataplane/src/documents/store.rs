//! The SQL of collections and documents. Static statements use runtime
//! `sqlx::query` (offline metadata is regenerated centrally); dynamic ones
//! (filters, sorts) are in [`super::list`] through `QueryBuilder`.
//!
//! Every write records its event in the same transaction
//! ([`crate::events::record`]): `collection.*` with the collection id as
//! aggregate, `document.*` with `<collection id>/<document id>`; the new
//! version and ETag, and a summary (field names, never the document).

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{FromRow, PgConnection, PgExecutor, Row};
use uuid::Uuid;

use super::indexes::{IndexedField, parse_fields};
use crate::events::{self, Event, types};
use crate::http::preconditions::EntityTag;
use crate::http::problem::ApiError;

/// `to_char(… AT TIME ZONE 'UTC', RFC 3339)` (no time crate in sqlx here).
fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// A version alone would repeat after delete + re-create, so the tag also
/// names the creation time (microseconds): a stale `If-Match` from before
/// a re-creation never matches.
pub fn etag(version: i64, created_us: i64) -> EntityTag {
    EntityTag::strong(format!("v{version}.{created_us:x}"))
        .unwrap_or_else(|_| EntityTag::from_version(version))
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, serde::Deserialize)]
pub struct Collection {
    pub id: Uuid,
    pub name: String,
    pub json_schema: Option<Value>,
    pub vector_dimension: Option<i32>,
    pub vector_metric: Option<String>,
    pub hnsw_m: Option<i32>,
    pub hnsw_ef_construction: Option<i32>,
    pub version: i64,
    pub require_if_match: bool,
    pub indexed_fields: Value,
    pub created_us: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Collection {
    pub fn etag(&self) -> EntityTag {
        etag(self.version, self.created_us)
    }

    pub fn fields(&self) -> Result<Vec<IndexedField>, ApiError> {
        // Stored by us, so a parse failure is our bug.
        parse_fields(&self.indexed_fields, "")
            .map_err(|_| ApiError::internal(anyhow::anyhow!("stored indexed_fields do not parse")))
    }

    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "schema": self.json_schema,
            "vector": self.vector_dimension.map(|d| json!({
                "dimension": d,
                "metric": self.vector_metric,
                "hnsw": {"m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction},
            })),
            "indexed_fields": self.indexed_fields,
            "require_if_match": self.require_if_match,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

fn collection_columns() -> String {
    format!(
        "id, name, json_schema, vector_dimension, vector_metric, hnsw_m, hnsw_ef_construction, version, \
         require_if_match, indexed_fields, (extract(epoch from created_at) * 1000000)::int8 AS created_us, \
         {} AS created_at, {} AS updated_at",
        ts("created_at"),
        ts("updated_at")
    )
}

pub async fn find_collection<'e>(
    db: impl PgExecutor<'e>,
    name: &str,
) -> Result<Option<Collection>, ApiError> {
    let sql = format!(
        "SELECT {} FROM collections WHERE name = $1",
        collection_columns()
    );
    Ok(sqlx::query_as(&sql).bind(name).fetch_optional(db).await?)
}

/// The collection, locked for the rest of the transaction (writes that
/// check its settings, updates, deletes).
pub async fn lock_collection(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Collection>, ApiError> {
    let sql = format!(
        "SELECT {} FROM collections WHERE name = $1 FOR UPDATE",
        collection_columns()
    );
    Ok(sqlx::query_as(&sql).bind(name).fetch_optional(conn).await?)
}

pub async fn get_collection<'e>(
    db: impl PgExecutor<'e>,
    name: &str,
) -> Result<Collection, ApiError> {
    find_collection(db, name).await?.ok_or(ApiError::NotFound)
}

/// How long a collection's row is reused by reads: `collection.*` events
/// drop it at once, so the TTLs only bound memory and a missed
/// invalidation.
const COLLECTION_CACHE: crate::cache::EntryOptions = crate::cache::EntryOptions::new(
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(300),
);

/// The collection's row for a read outside any transaction (its GET, list
/// and query pages), from the two-level cache (`collection:<name>`, tagged
/// `collection:<name>`: dropped by `collection.*`). Writes read the row in
/// their own transaction instead, so they never validate against a schema
/// that just changed.
pub async fn cached_collection(
    ctx: &crate::tenancy::TenantContext,
    name: &str,
) -> Result<Collection, ApiError> {
    use crate::cache::{CacheKey, Tag};
    let tenant = ctx.tenant_id();
    let key = CacheKey::tenant(tenant, "collection").id(name).build();
    let tags = [
        Tag::whole_tenant(tenant),
        Tag::tenant(tenant, "collection", [name]),
    ];
    ctx.cache()
        .get_or_create(&key, &tags, COLLECTION_CACHE, || {
            get_collection(ctx.pool(), name)
        })
        .await
}

pub struct NewCollection<'a> {
    pub name: &'a str,
    pub schema: Option<&'a Value>,
    pub dimension: Option<i32>,
    pub metric: Option<&'a str>,
    pub hnsw_m: Option<i32>,
    pub hnsw_ef_construction: Option<i32>,
    pub require_if_match: bool,
    pub indexed_fields: Value,
}

pub async fn insert_collection(
    conn: &mut PgConnection,
    new: &NewCollection<'_>,
) -> Result<Collection, ApiError> {
    let sql = format!(
        "INSERT INTO collections (name, json_schema, vector_dimension, vector_metric, hnsw_m, \
         hnsw_ef_construction, require_if_match, indexed_fields) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING {}",
        collection_columns()
    );
    let row: Collection = sqlx::query_as(&sql)
        .bind(new.name)
        .bind(new.schema)
        .bind(new.dimension)
        .bind(new.metric)
        .bind(new.hnsw_m)
        .bind(new.hnsw_ef_construction)
        .bind(new.require_if_match)
        .bind(&new.indexed_fields)
        .fetch_one(&mut *conn)
        .await?;
    events::record(conn, collection_event(types::COLLECTION_CREATED, &row)).await?;
    Ok(row)
}

pub async fn update_collection(
    conn: &mut PgConnection,
    id: Uuid,
    schema: Option<&Value>,
    require_if_match: bool,
    indexed_fields: &Value,
) -> Result<Collection, ApiError> {
    let sql = format!(
        "UPDATE collections SET json_schema = $2, require_if_match = $3, indexed_fields = $4, \
         version = version + 1, updated_at = now() WHERE id = $1 RETURNING {}",
        collection_columns()
    );
    let row: Collection = sqlx::query_as(&sql)
        .bind(id)
        .bind(schema)
        .bind(require_if_match)
        .bind(indexed_fields)
        .fetch_one(&mut *conn)
        .await?;
    events::record(conn, collection_event(types::COLLECTION_UPDATED, &row)).await?;
    Ok(row)
}

/// Deletes the collection; documents and vectors go with it (foreign keys
/// `ON DELETE CASCADE`).
pub async fn delete_collection(
    conn: &mut PgConnection,
    collection: &Collection,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM collections WHERE id = $1")
        .bind(collection.id)
        .execute(&mut *conn)
        .await?;
    events::record(
        conn,
        collection_event(types::COLLECTION_DELETED, collection),
    )
    .await?;
    Ok(())
}

fn collection_event(kind: &'static str, c: &Collection) -> Event {
    Event::new(kind, c.id.to_string())
        .version(c.version)
        .etag(&c.etag())
        .data(json!({"name": c.name, "version": c.version}))
}

fn document_event(kind: &'static str, coll: &Collection, doc_id: &str, version: i64) -> Event {
    Event::new(kind, aggregate(coll.id, doc_id))
        .version(version)
        .data(json!({"collection": coll.name, "id": doc_id, "version": version}))
}

pub async fn list_collections<'e>(
    db: impl PgExecutor<'e>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Collection>, ApiError> {
    let sql = format!(
        "SELECT {} FROM collections WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
        collection_columns()
    );
    Ok(sqlx::query_as(&sql)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(db)
        .await?)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Document {
    #[schema(example = "pg-tips")]
    pub id: String,
    #[schema(value_type = Object)]
    pub data: Value,
    /// Increases with every write; the `ETag` is derived from it.
    pub version: i64,
    #[serde(skip)]
    pub created_us: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Document {
    pub fn etag(&self) -> EntityTag {
        etag(self.version, self.created_us)
    }
}

pub fn document_columns() -> String {
    format!(
        "id, data, version, (extract(epoch from created_at) * 1000000)::int8 AS created_us, \
         {} AS created_at, {} AS updated_at",
        ts("created_at"),
        ts("updated_at")
    )
}

pub async fn find_document<'e>(
    db: impl PgExecutor<'e>,
    collection: Uuid,
    id: &str,
    lock: bool,
) -> Result<Option<Document>, ApiError> {
    let sql = format!(
        "SELECT {} FROM documents WHERE collection_id = $1 AND id = $2{}",
        document_columns(),
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_as(&sql)
        .bind(collection)
        .bind(id)
        .fetch_optional(db)
        .await?)
}

fn aggregate(collection: Uuid, id: &str) -> String {
    format!("{collection}/{id}")
}

/// Inserts unless the id exists (`None` then: the caller decides between
/// 409 and 412). Race-safe: `ON CONFLICT DO NOTHING`.
pub async fn insert_document(
    conn: &mut PgConnection,
    coll: &Collection,
    id: &str,
    data: &Value,
) -> Result<Option<Document>, ApiError> {
    let collection = coll.id;
    let sql = format!(
        "INSERT INTO documents (collection_id, id, data) VALUES ($1, $2, $3) \
         ON CONFLICT (collection_id, id) DO NOTHING RETURNING {}",
        document_columns()
    );
    let row: Option<Document> = sqlx::query_as(&sql)
        .bind(collection)
        .bind(id)
        .bind(data)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(doc) = &row {
        let mut event =
            document_event(types::DOCUMENT_CREATED, coll, id, doc.version).etag(&doc.etag());
        event.data["fields"] = json!(events::event::field_names(data));
        events::record(conn, event).await?;
    }
    Ok(row)
}

/// Replaces the data of an existing (locked) document. The event names
/// the top-level fields whose value changed (the old data is read in the
/// same statement, from the snapshot before the update).
pub async fn update_document(
    conn: &mut PgConnection,
    coll: &Collection,
    id: &str,
    data: &Value,
) -> Result<Document, ApiError> {
    let sql = format!(
        "WITH old AS (SELECT data AS before FROM documents WHERE collection_id = $1 AND id = $2) \
         UPDATE documents SET data = $3, version = version + 1, updated_at = now() \
         WHERE collection_id = $1 AND id = $2 RETURNING {}, (SELECT before FROM old) AS before",
        document_columns()
    );
    let row = sqlx::query(&sql)
        .bind(coll.id)
        .bind(id)
        .bind(data)
        .fetch_one(&mut *conn)
        .await?;
    let doc = Document::from_row(&row)?;
    let before: Option<Value> = row.try_get("before")?;
    let mut event =
        document_event(types::DOCUMENT_UPDATED, coll, id, doc.version).etag(&doc.etag());
    event.data["changed"] = json!(events::event::changed_fields(
        before.as_ref().unwrap_or(&Value::Null),
        data
    ));
    events::record(conn, event).await?;
    Ok(doc)
}

/// Deletes a document; `false` when there was none.
pub async fn delete_document(
    conn: &mut PgConnection,
    coll: &Collection,
    id: &str,
) -> Result<bool, ApiError> {
    let collection = coll.id;
    let version: Option<i64> = sqlx::query_scalar(
        "DELETE FROM documents WHERE collection_id = $1 AND id = $2 RETURNING version",
    )
    .bind(collection)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match version {
        Some(version) => {
            events::record(
                conn,
                document_event(types::DOCUMENT_DELETED, coll, id, version),
            )
            .await?;
            Ok(true)
        }
        None => Ok(false),
    }
}
