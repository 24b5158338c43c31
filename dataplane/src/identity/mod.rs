//! Who may act in a tenant: API keys, members and the invitation that
//! makes the first member. Everything lives in the tenant's own database
//! (`api_keys`, `members`, `invitations`), reached through
//! [`crate::tenancy`]; nothing here is cached, so a revocation or a role
//! change is in force on every replica at the next request.
//!
//! Routes (all under `/v1/tenants/{tenant}`): `keys` (POST, GET),
//! `keys/{id}` (DELETE), `members` (GET), `members/{subject}` (PATCH,
//! DELETE), `invitations/accept` (POST, no credential). See [`routes`].

pub mod invitations;
pub mod keys;
pub mod members;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::app::AppState;

/// The identity routes, to be merged into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/keys",
            post(keys::create).get(keys::list),
        )
        .route("/v1/tenants/{tenant}/keys/{id}", delete(keys::revoke))
        .route("/v1/tenants/{tenant}/members", get(members::list))
        .route(
            "/v1/tenants/{tenant}/members/{subject}",
            axum::routing::patch(members::update).delete(members::remove),
        )
        .route(
            "/v1/tenants/{tenant}/invitations/accept",
            post(invitations::accept),
        )
}

/// Timestamps leave the database as RFC 3339 text in UTC (the API's one
/// time format); sqlx has no time crate enabled here.
pub(crate) const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

/// `to_char(<column> AT TIME ZONE 'UTC', RFC3339)` for a fixed column name.
pub(crate) fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', {RFC3339})")
}
