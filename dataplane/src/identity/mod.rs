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

/// One page of a tenant table listed by its text primary key (keys by id,
/// members by subject), with the shared signed cursor bound to the list and
/// the tenant. `select` is a fixed statement whose `$1` is the last key seen
/// (NULL on the first page) and `$2` the row limit.
pub(crate) async fn list_page<T>(
    ctx: &crate::tenancy::TenantContext,
    http: &crate::http::HttpContext,
    page: crate::http::pagination::PageParams,
    uri: &axum::http::Uri,
    list: &str,
    select: &str,
    key_of: impl Fn(&T) -> String,
) -> Result<axum::response::Response, crate::http::problem::ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + serde::Serialize,
{
    use crate::http::pagination::{Page, PageLimits, Position, QueryFingerprint};
    let limit = PageLimits::DEFAULT.resolve(page.limit)?;
    let fingerprint =
        QueryFingerprint::of(&serde_json::json!({"list": list, "tenant": ctx.tenant_id()}));
    let after: Option<Position<()>> = http
        .cursors
        .decode_param(page.cursor.as_deref(), &fingerprint)?;
    let rows: Vec<T> = sqlx::query_as(select)
        .bind(after.map(|p| p.id))
        .bind(i64::from(limit) + 1)
        .fetch_all(ctx.pool())
        .await?;
    let page = Page::from_rows(rows, limit, &http.cursors, &fingerprint, |row| Position {
        keys: (),
        id: key_of(row),
    });
    Ok(page.into_response_for(uri))
}
