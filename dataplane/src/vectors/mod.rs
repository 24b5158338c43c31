//! The vector API (issue 8, point 5): upsert, get and delete vectors of a
//! collection, top-k search in one collection, and cross-collection search.
//!
//! Files: `model.rs` (requests, responses, limits, validation),
//! `nonfinite.rs` (NaN/Infinity in bodies become 422s), `store.rs` (the
//! queries), `search.rs` (single and two-step cross-collection search),
//! `index.rs` (the per-collection HNSW index and its background builder),
//! `routes.rs` (the endpoints, behind `TenantContext`).
//!
//! Scores are the metric's natural form: cosine similarity (`1 -` cosine
//! distance, higher is nearer), Euclidean distance (lower is nearer), inner
//! product (higher is nearer). Responses say which (`score`, `order`).

pub mod index;
pub mod model;
pub mod nonfinite;
pub mod routes;
pub mod search;
pub mod store;

pub use index::{IndexBuilder, VectorSettings};
pub use routes::{routes, routes_with};
