//! Strata's data plane: stateless axum pods that serve tenants' REST clients.
//! It reads the platform catalog (never the Kubernetes API).
//!
//! Today it serves the probes and metrics and answers every other path with a
//! problem+json 404; the database and storage APIs are mounted in [`app`] and
//! built on the shared machinery in [`http`] (errors, request ids, auth,
//! tenancy, preconditions, pagination, idempotency).

pub mod app;
pub mod config;
pub mod docs;
pub mod documents;
pub mod http;
pub mod identity;
pub mod openapi;
pub mod tenancy;
pub mod vectors;
