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

/// Largest document (its `data`, serialised) accepted: bigger is a 413.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Deepest nesting of a document's `data` (serde_json stops at 128 already;
/// this keeps documents well inside what the filter paths can address).
pub const MAX_DOCUMENT_DEPTH: usize = 64;
