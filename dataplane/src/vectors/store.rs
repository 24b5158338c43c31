//! The vector queries. Values are always bound; the only text spliced into
//! SQL is server-derived and typed: the collection's UUID (see
//! [`VectorCollection::id_literal`] for why it is inlined in searches), its
//! dimension (an integer) and the metric's operator (from an enum).
//!
//! Every write appends its `outbox` rows in the same transaction (see
//! [`outbox`]), as document writes do.

use serde_json::{Value, json};
use sqlx::{Acquire, PgConnection, PgExecutor, PgPool, Postgres, Row};
use uuid::Uuid;

use super::model::{
    Hit, IndexState, Metric, SearchParams, StoredVector, UpsertedItem, ValidItem, VectorCollection,
    is_collection_name,
};
use crate::events::{Event, types};
use crate::http::ApiError;

/// Loads a collection's vector configuration by name. A name the
/// collections table could not hold is a 400 (it can only be hostile or a
/// typo); a missing collection 404; one without a vector configuration 409.
pub async fn find_collection<'e>(
    db: impl PgExecutor<'e>,
    name: &str,
) -> Result<VectorCollection, ApiError> {
    if !is_collection_name(name) {
        return Err(ApiError::invalid_parameter(
            "path",
            "collection",
            "a collection name has 1 to 128 of A-Z a-z 0-9 _ -",
        ));
    }
    let row = sqlx::query(
        "SELECT id, name, vector_dimension, vector_metric, hnsw_m, hnsw_ef_construction, vector_index \
         FROM collections WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound)?;
    collection_from_row(&row)?.ok_or_else(|| {
        ApiError::Conflict(
            "the collection has no vector configuration (dimension and metric)".into(),
        )
    })
}

/// Loads a collection by id (the index builder's view); `None` when it is
/// gone or has no vector configuration.
pub async fn find_collection_by_id<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<VectorCollection>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, name, vector_dimension, vector_metric, hnsw_m, hnsw_ef_construction, vector_index \
         FROM collections WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    match row {
        Some(row) => {
            collection_from_row(&row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))
        }
        None => Ok(None),
    }
}

fn collection_from_row(row: &sqlx::postgres::PgRow) -> Result<Option<VectorCollection>, ApiError> {
    let dimension: Option<i32> = row.try_get("vector_dimension")?;
    let metric: Option<String> = row.try_get("vector_metric")?;
    let (Some(dimension), Some(metric)) = (dimension, metric) else {
        return Ok(None);
    };
    // The table's CHECK constraints guarantee both; anything else is a
    // schema this code does not know, not the client's fault.
    let metric = Metric::parse(&metric)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown vector metric {metric:?}")))?;
    let dimension = u32::try_from(dimension)
        .ok()
        .filter(|d| *d >= 1)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad vector dimension {dimension}")))?;
    let index: String = row.try_get("vector_index")?;
    let index = IndexState::parse(&index)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown index state {index:?}")))?;
    Ok(Some(VectorCollection {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        dimension,
        metric,
        hnsw_m: row.try_get("hnsw_m")?,
        hnsw_ef_construction: row.try_get("hnsw_ef_construction")?,
        index,
    }))
}

/// Inserts or replaces a validated batch in one statement (one round trip,
/// atomic). The vectors travel as one flat `real[]` (binary, no text
/// formatting of floats) and each row takes its slice.
pub async fn upsert<'e>(
    db: impl Acquire<'e, Database = Postgres>,
    collection: &VectorCollection,
    items: &[ValidItem],
) -> Result<Vec<UpsertedItem>, ApiError> {
    let dim = collection.dimension;
    let mut ids = Vec::with_capacity(items.len());
    let mut metadata = Vec::with_capacity(items.len());
    let mut documents = Vec::with_capacity(items.len());
    let mut flat = Vec::with_capacity(items.len() * dim as usize);
    for item in items {
        ids.push(item.id.as_str());
        metadata.push(&item.metadata);
        documents.push(item.document_id.as_deref());
        flat.extend_from_slice(&item.vector);
    }
    let sql = format!(
        "INSERT INTO embeddings (collection_id, id, embedding, metadata, document_id) \
         SELECT $1, u.id, ($5::real[])[(u.n::int - 1) * {dim} + 1 : u.n::int * {dim}]::vector({dim}), \
                u.metadata, u.document_id \
         FROM unnest($2::text[], $3::jsonb[], $4::text[]) WITH ORDINALITY AS u(id, metadata, document_id, n) \
         ON CONFLICT (collection_id, id) DO UPDATE SET \
             embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata, \
             document_id = EXCLUDED.document_id, version = embeddings.version + 1, updated_at = now() \
         RETURNING id, version"
    );
    let mut tx = db.begin().await?;
    let rows = sqlx::query(&sql)
        .bind(collection.id)
        .bind(&ids)
        .bind(&metadata)
        .bind(&documents)
        .bind(&flat)
        .fetch_all(&mut *tx)
        .await?;
    let done = rows
        .iter()
        .map(|row| {
            Ok(UpsertedItem {
                id: row.try_get("id")?,
                version: row.try_get("version")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (ids, versions): (Vec<&str>, Vec<i64>) =
        done.iter().map(|i| (i.id.as_str(), i.version)).unzip();
    outbox(&mut tx, types::VECTOR_UPSERTED, collection, &ids, &versions).await?;
    tx.commit().await?;
    Ok(done)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    collection: &VectorCollection,
    id: &str,
) -> Result<StoredVector, ApiError> {
    let row = sqlx::query(
        "SELECT id, embedding::real[] AS vector, metadata, document_id, version, \
                to_json(created_at) #>> '{}' AS created_at, to_json(updated_at) #>> '{}' AS updated_at \
         FROM embeddings WHERE collection_id = $1 AND id = $2",
    )
    .bind(collection.id)
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(StoredVector {
        id: row.try_get("id")?,
        vector: row.try_get("vector")?,
        metadata: row.try_get("metadata")?,
        document_id: row.try_get("document_id")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The events of a vector write, in its transaction (one statement for
/// the batch): `vector.upserted` / `vector.deleted`, one per vector,
/// aggregate id `<collection id>/<vector id>` (as documents do), the
/// version, and the collection's name and the vector id as data.
async fn outbox(
    conn: &mut PgConnection,
    topic: &'static str,
    collection: &VectorCollection,
    ids: &[&str],
    versions: &[i64],
) -> Result<(), ApiError> {
    let events: Vec<Event> = ids
        .iter()
        .zip(versions)
        .map(|(id, version)| {
            Event::new(topic, format!("{}/{id}", collection.id))
                .version(*version)
                .data(json!({"collection": collection.name, "id": id, "version": version}))
        })
        .collect();
    crate::events::record_all(conn, &events).await?;
    Ok(())
}

/// What a delete selects: ids, or a metadata filter.
enum Selection<'a> {
    Ids(&'a [String]),
    Matching(&'a Value),
}

/// Deletes the selected rows with their outbox rows; how many.
async fn delete_where<'e>(
    db: impl Acquire<'e, Database = Postgres>,
    collection: &VectorCollection,
    selection: Selection<'_>,
) -> Result<u64, ApiError> {
    let mut tx = db.begin().await?;
    let condition = match selection {
        Selection::Ids(_) => "id = ANY($2)",
        Selection::Matching(_) => "metadata @> $2",
    };
    let sql = format!(
        "DELETE FROM embeddings WHERE collection_id = $1 AND {condition} RETURNING id, version"
    );
    let query = sqlx::query_as::<_, (String, i64)>(&sql).bind(collection.id);
    let query = match selection {
        Selection::Ids(ids) => query.bind(ids),
        Selection::Matching(filter) => query.bind(filter),
    };
    let rows = query.fetch_all(&mut *tx).await?;
    let (ids, versions): (Vec<&str>, Vec<i64>) =
        rows.iter().map(|(id, v)| (id.as_str(), *v)).unzip();
    outbox(&mut tx, types::VECTOR_DELETED, collection, &ids, &versions).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

pub async fn delete_ids<'e>(
    db: impl Acquire<'e, Database = Postgres>,
    collection: &VectorCollection,
    ids: &[String],
) -> Result<u64, ApiError> {
    delete_where(db, collection, Selection::Ids(ids)).await
}

pub async fn delete_matching<'e>(
    db: impl Acquire<'e, Database = Postgres>,
    collection: &VectorCollection,
    filter: &Value,
) -> Result<u64, ApiError> {
    delete_where(db, collection, Selection::Matching(filter)).await
}

/// The search statement for one collection. Binds: `$1` the query vector
/// (`real[]`), `$2` the filter (only when `with_filter`).
///
/// - The collection id is a literal and the ordering expression is the
///   indexed expression, so the planner can use the collection's partial
///   HNSW index, in custom and generic plans alike. A collection without a
///   (valid) index is scanned exactly through the primary key.
/// - The limit is a literal too (a validated integer): a generic plan
///   with `LIMIT $n` assumes a tenth of the rows are wanted, and prices
///   the HNSW scan out for mid-sized collections.
/// - The inner query is the index scan; with iterative scans in relaxed
///   order its rows may come slightly out of order, so the outer query
///   sorts again, by exact distance (id breaks ties). `MATERIALIZED` keeps
///   the planner from merging the two and losing the LIMIT under the scan.
/// - The distance is pgvector's exact distance on the stored vector (HNSW
///   only chooses candidates), which is what cross-collection re-ranking
///   relies on.
pub fn search_sql(
    collection: &VectorCollection,
    with_filter: bool,
    params: &SearchParams,
    limit: u32,
) -> String {
    let dim = collection.dimension;
    let op = collection.metric.operator();
    let id = collection.id_literal();
    let filter = if with_filter {
        " AND e.metadata @> $2::jsonb"
    } else {
        ""
    };
    let vector = if params.include_vector {
        ", e.embedding::real[] AS vector"
    } else {
        ""
    };
    let (document, join) = if params.include_document {
        (
            ", d.data AS document",
            format!(" LEFT JOIN documents d ON d.collection_id = {id} AND d.id = h.document_id"),
        )
    } else {
        ("", String::new())
    };
    format!(
        "WITH h AS MATERIALIZED ( \
             SELECT e.id, e.metadata, e.document_id{vector}, \
                    e.embedding::vector({dim}) {op} $1::real[]::vector({dim}) AS distance \
             FROM embeddings e \
             WHERE e.collection_id = {id}{filter} \
             ORDER BY distance LIMIT {limit}) \
         SELECT h.*{document} FROM h{join} ORDER BY h.distance, h.id"
    )
}

/// Settings for the search transaction, bound through `set_config` (a
/// `SET` statement cannot take parameters):
/// - `hnsw.ef_search`: the candidate list size (recall vs speed);
/// - `hnsw.iterative_scan = relaxed_order`: when a filter drops rows, the
///   scan continues past `ef_search` until `k` rows pass (pgvector 0.8),
///   so a filtered search returns `k` rows whenever `k` match;
/// - `hnsw.max_scan_tuples`: bounds how far it continues (a selective
///   filter on a large collection would otherwise scan the whole graph).
async fn configure_search(
    tx: &mut sqlx::PgConnection,
    ef_search: u32,
    max_scan_tuples: u32,
) -> Result<(), ApiError> {
    sqlx::query(
        "SELECT set_config('hnsw.ef_search', $1, true), \
                set_config('hnsw.iterative_scan', 'relaxed_order', true), \
                set_config('hnsw.max_scan_tuples', $2, true)",
    )
    .bind(ef_search.to_string())
    .bind(max_scan_tuples.to_string())
    .execute(tx)
    .await?;
    Ok(())
}

/// Top-`limit` rows of one collection, nearest first, with exact
/// distances, in a transaction of its own (the settings are `LOCAL`).
pub async fn search(
    pool: &PgPool,
    collection: &VectorCollection,
    params: &SearchParams,
    limit: u32,
    max_scan_tuples: u32,
) -> Result<Vec<Hit>, ApiError> {
    let mut tx = pool.begin().await?;
    let hits = search_in(&mut tx, collection, params, limit, max_scan_tuples).await?;
    tx.commit().await?;
    Ok(hits)
}

/// [`search`] inside the caller's transaction (which must be one: the
/// settings are transaction-local).
pub async fn search_in(
    tx: &mut sqlx::PgConnection,
    collection: &VectorCollection,
    params: &SearchParams,
    limit: u32,
    max_scan_tuples: u32,
) -> Result<Vec<Hit>, ApiError> {
    let sql = search_sql(collection, params.filter.is_some(), params, limit);
    configure_search(&mut *tx, params.ef_search, max_scan_tuples).await?;
    // Not kept in the connection's statement cache: the text differs per
    // collection and limit, and would churn it; planning is small next to
    // an HNSW scan.
    let mut query = sqlx::query(&sql).persistent(false).bind(&params.vector);
    if let Some(filter) = &params.filter {
        query = query.bind(filter);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    rows.iter()
        .map(|row| {
            let distance: f64 = row.try_get("distance")?;
            Ok(Hit {
                collection: None,
                id: row.try_get("id")?,
                score: collection.metric.score(distance),
                distance,
                metadata: if params.include_metadata {
                    Some(row.try_get("metadata")?)
                } else {
                    None
                },
                document_id: if params.include_document {
                    row.try_get("document_id")?
                } else {
                    None
                },
                document: if params.include_document {
                    Some(
                        row.try_get::<Option<Value>, _>("document")?
                            .unwrap_or(Value::Null),
                    )
                } else {
                    None
                },
                vector: if params.include_vector {
                    Some(row.try_get("vector")?)
                } else {
                    None
                },
            })
        })
        .collect()
}

/// Whether the collection holds at least `threshold` vectors. Reads at
/// most `threshold` primary-key entries, so it stays cheap however large
/// the collection is.
pub async fn holds_at_least<'e>(
    db: impl PgExecutor<'e>,
    collection: Uuid,
    threshold: i64,
) -> Result<bool, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM embeddings WHERE collection_id = $1 LIMIT $2) s",
    )
    .bind(collection)
    .bind(threshold)
    .fetch_one(db)
    .await?;
    Ok(count >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::model::DEFAULT_EF_SEARCH;

    #[test]
    fn search_sql_inlines_only_typed_values() {
        let c = VectorCollection {
            id: Uuid::from_u128(0x1234),
            name: "c".into(),
            dimension: 3,
            metric: Metric::InnerProduct,
            hnsw_m: None,
            hnsw_ef_construction: None,
            index: IndexState::Ready,
        };
        let params = SearchParams {
            vector: vec![1.0, 2.0, 3.0],
            k: 5,
            filter: None,
            ef_search: DEFAULT_EF_SEARCH,
            include_metadata: false,
            include_document: true,
            include_vector: false,
        };
        let sql = search_sql(&c, true, &params, 5);
        assert!(
            sql.contains("e.embedding::vector(3) <#> $1::real[]::vector(3)"),
            "{sql}"
        );
        assert!(sql.contains("collection_id = '00000000-0000-0000-0000-000000001234'"));
        assert!(sql.contains("metadata @> $2::jsonb"));
        assert!(sql.contains("LIMIT 5)"));
        assert!(sql.contains("LEFT JOIN documents"));
    }
}
