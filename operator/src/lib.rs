//! Strata's operator: reconciles `Tenant` resources into provisioned tenant
//! databases (catalog entry, database and role, extensions, migrations, seeds,
//! admin invite, audit), and `Bucket` resources into catalog entries and
//! backend prefixes ([`bucket`]), with status conditions and Events.
//!
//! Layout: [`provision`] holds the steps and is shared by the [`controller`]
//! and the offline [`offline::apply`]; [`placement`] is the seam that decides
//! where a tenant's data lives; [`host`] is where Kubernetes-side effects go.

pub mod audit;
pub mod bucket;
pub mod cluster;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod host;
pub mod invite;
pub mod leader;
pub mod metrics;
pub mod offline;
pub mod placement;
pub mod platform;
pub mod provision;
pub mod scram;
pub mod seed;

/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "strata-operator";
