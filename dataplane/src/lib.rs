//! Strata's data plane: stateless axum pods that serve tenants' REST clients.
//! It reads the platform catalog (never the Kubernetes API).
//!
//! The APIs ([`identity`], [`documents`], [`vectors`], [`storage`]) are mounted in [`app`]
//! and built on the shared machinery in [`http`] (errors, request ids, auth,
//! tenancy, preconditions, pagination, idempotency). [`openapi`] describes
//! them (`/v1/openapi.json`, from the handlers' attributes) and [`docs`]
//! serves the reference page (`/docs`) with no internet needed.

pub mod app;
pub mod cache;
pub mod config;
pub mod docs;
pub mod documents;
pub mod events;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod media;
pub mod openapi;
pub mod storage;
pub mod tenancy;
pub mod vectors;
