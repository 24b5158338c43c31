//! Strata's database layer, shared by the operator and the data plane:
//! the embedded migrations of the platform catalog and of tenant databases,
//! the catalog itself, and safe SQL identifiers.

pub mod catalog;
pub mod ident;
pub mod migrations;

pub use catalog::{
    BucketClaim, BucketRecord, BucketState, Catalog, CatalogError, TenantBrief, TenantEntry,
    TenantRecord, TenantState, backend_prefix,
};
pub use ident::Ident;
