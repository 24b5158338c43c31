//! Search: one collection, or several with the same dimension and metric
//! (the two-step path: ANN candidates per collection, concurrently, then a
//! global merge and exact re-rank).

use std::cmp::Ordering;
use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;

use super::model::{
    CROSS_OVERSAMPLE, Errors, Hit, MAX_CANDIDATES, MAX_CROSS_COLLECTIONS, MAX_EF_SEARCH,
    SearchParams, SearchRequest, VectorCollection, is_collection_name, validate_search,
};
use super::store;
use crate::http::ApiError;

/// Per-collection queries of one cross-collection search in flight at
/// once: concurrent, but without taking a whole pool for one request.
const CROSS_CONCURRENCY: usize = 4;

pub fn single_params(
    request: SearchRequest,
    collection: &VectorCollection,
) -> Result<SearchParams, ApiError> {
    let mut errors = Errors::default();
    validate_search(
        request,
        collection.dimension,
        collection.metric,
        &mut errors,
    )
    .ok_or_else(|| ApiError::validation(errors.0))
}

/// Top-k of one collection. The scan returns exact distances; an indexed
/// collection's rows come from its HNSW index, a small one's from an exact
/// scan (the planner decides: only a valid partial index matches).
pub async fn search_one(
    pool: &PgPool,
    collection: &VectorCollection,
    params: &SearchParams,
    max_scan_tuples: u32,
) -> Result<Vec<Hit>, ApiError> {
    store::search(pool, collection, params, params.k, max_scan_tuples).await
}

/// Checks the collection list's shape (before any lookup).
pub fn check_collection_names(names: &[String]) -> Result<(), ApiError> {
    let mut errors = Errors::default();
    if names.is_empty() || names.len() > MAX_CROSS_COLLECTIONS {
        errors.push(
            "/collections",
            format!("name 1 to {MAX_CROSS_COLLECTIONS} collections"),
        );
    }
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        if !is_collection_name(name) {
            errors.push(format!("/collections/{i}"), "not a collection name");
        } else if !seen.insert(name) {
            errors.push(format!("/collections/{i}"), "named twice");
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors.0))
    }
}

/// Validates a cross-collection search against the collections it names
/// (in request order): all must share one dimension and metric, else 422
/// naming each one that differs from the first.
pub fn cross_params(
    request: SearchRequest,
    collections: &[VectorCollection],
) -> Result<SearchParams, ApiError> {
    let mut errors = Errors::default();
    let Some(first) = collections.first() else {
        errors.push("/collections", "name at least one collection");
        return Err(ApiError::validation(errors.0));
    };
    for (i, c) in collections.iter().enumerate().skip(1) {
        if c.dimension != first.dimension || c.metric != first.metric {
            errors.push(
                format!("/collections/{i}"),
                format!(
                    "{} has {} dimensions and metric {}, {} has {} and {}: a cross-collection search needs one dimension and one metric",
                    c.name,
                    c.dimension,
                    c.metric.as_str(),
                    first.name,
                    first.dimension,
                    first.metric.as_str()
                ),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors.0));
    }
    validate_search(request, first.dimension, first.metric, &mut errors)
        .ok_or_else(|| ApiError::validation(errors.0))
}

/// Candidates per collection: `k` oversampled, since each collection's ANN
/// result may miss some of its true top-k, and the global top-k may take
/// all of its rows from one collection.
pub fn candidates_per_collection(k: u32) -> u32 {
    k.saturating_mul(CROSS_OVERSAMPLE)
        .min(MAX_CANDIDATES)
        .max(k)
}

/// The two-step search. Step 1: every collection's ANN top-`k·4`,
/// fetched concurrently, each on its own connection and transaction.
/// Step 2: the union merged and re-ranked by exact distance (each row's
/// distance is pgvector's exact distance on the stored vector, computed in
/// step 1's SQL; the approximation is only in which rows step 1 found), ties
/// broken by collection then id, and cut to `k`.
pub async fn search_many(
    pool: &PgPool,
    collections: &[VectorCollection],
    params: &SearchParams,
    max_scan_tuples: u32,
) -> Result<Vec<Hit>, ApiError> {
    let limit = candidates_per_collection(params.k);
    // Each collection's scan must be able to return all its candidates in
    // one pass (an HNSW scan yields at most ef_search rows before it
    // iterates).
    let params = &SearchParams {
        ef_search: params.ef_search.max(limit).min(MAX_EF_SEARCH),
        ..params.clone()
    };
    // Owned futures (pool handles and settings cloned): borrowed ones do
    // not satisfy the `Send` bound axum puts on handler futures.
    let searches = collections.iter().cloned().map(|c| {
        let (pool, params) = (pool.clone(), params.clone());
        async move {
            let mut hits = store::search(&pool, &c, &params, limit, max_scan_tuples).await?;
            for hit in &mut hits {
                hit.collection = Some(c.name.clone());
            }
            Ok::<_, ApiError>(hits)
        }
    });
    let per_collection: Vec<Vec<Hit>> = futures::stream::iter(searches)
        .buffer_unordered(CROSS_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(merge(per_collection, params.k as usize))
}

/// Global merge by exact distance (nearest first), then collection and id
/// so equal distances order the same way on every call.
pub fn merge(per_collection: Vec<Vec<Hit>>, k: usize) -> Vec<Hit> {
    let mut all: Vec<Hit> = per_collection.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        a.distance
            .partial_cmp(&b.distance)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.collection.cmp(&b.collection))
            .then_with(|| a.id.cmp(&b.id))
    });
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::vectors::model::{IndexState, Metric};

    fn hit(collection: &str, id: &str, distance: f64) -> Hit {
        Hit {
            collection: Some(collection.into()),
            id: id.into(),
            score: distance,
            distance,
            metadata: None,
            document_id: None,
            document: None,
            vector: None,
        }
    }

    fn coll(name: &str, dimension: u32, metric: Metric) -> VectorCollection {
        VectorCollection {
            id: Uuid::new_v4(),
            name: name.into(),
            dimension,
            metric,
            hnsw_m: None,
            hnsw_ef_construction: None,
            index: IndexState::None,
        }
    }

    #[test]
    fn merge_is_global_and_stable() {
        let merged = merge(
            vec![
                vec![hit("a", "1", 0.1), hit("a", "2", 0.5)],
                vec![hit("b", "1", 0.2), hit("b", "2", 0.1)],
            ],
            3,
        );
        let got: Vec<(String, &str)> = merged
            .iter()
            .map(|h| (h.collection.clone().unwrap_or_default(), h.id.as_str()))
            .collect();
        assert_eq!(
            got,
            [("a".into(), "1"), ("b".into(), "2"), ("b".into(), "1")]
        );
    }

    #[test]
    fn mixed_configurations_are_422_with_pointers() {
        let request = |_: usize| SearchRequest {
            vector: vec![serde_json::json!(1.0); 3],
            k: None,
            filter: None,
            ef_search: None,
            include: vec![],
        };
        let error = cross_params(
            request(3),
            &[
                coll("a", 3, Metric::L2),
                coll("b", 3, Metric::Cosine),
                coll("c", 4, Metric::L2),
            ],
        )
        .expect_err("mixed");
        let ApiError::Validation { errors, .. } = error else {
            panic!("not a 422: {error:?}");
        };
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/collections/1", "/collections/2"]);
        assert!(
            cross_params(
                request(2),
                &[coll("a", 3, Metric::L2), coll("b", 3, Metric::L2)]
            )
            .is_ok()
        );
        assert!(check_collection_names(&["a".into(), "a".into()]).is_err());
        assert!(check_collection_names(&[]).is_err());
        assert!(check_collection_names(&["x' OR 1=1".into()]).is_err());
    }

    #[test]
    fn oversampling_is_bounded() {
        assert_eq!(candidates_per_collection(10), 40);
        assert_eq!(candidates_per_collection(1000), 1000);
    }
}
