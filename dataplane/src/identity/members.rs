//! Members of a tenant (`members` table): who they are and which seeded
//! role they hold. JWT callers do not need a row (their role claim is used
//! as it is); members are who invitations and API keys belong to.
//!
//! - `GET members` (members:read), paginated by subject.
//! - `PATCH members/{subject}` `{role}` (members:write): the caller may only
//!   move a member *from* and *to* roles whose rights it holds itself, so
//!   only an owner grants or takes away `owner`. The member's keys whose
//!   role now exceeds the member's are lowered to it in the same
//!   transaction (a demotion cannot be side-stepped with an older key).
//! - `DELETE members/{subject}` (members:delete): the member's keys go with
//!   it (foreign key `ON DELETE CASCADE`).
//!
//! The last owner can be neither demoted nor removed (409): the owner rows
//! are locked first, so two concurrent requests cannot each remove "the
//! other" owner.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::keys::{actor, audit, check_grantable};
use super::ts;
use crate::events::{self, Event, types};
use crate::http::HttpContext;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::pagination::{Page, PageParams};
use crate::http::problem::ApiError;
use crate::tenancy::context::load_permissions;
use crate::tenancy::{Action, Resource, TenantContext};

/// The role that owns the tenant (seeded by the operator).
pub const OWNER_ROLE: &str = "owner";
/// Longest subject (as the table's CHECK).
const MAX_SUBJECT_LEN: usize = 320;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MemberView {
    /// The member's id: a JWT `sub`, or the invited email by default.
    #[schema(example = "ada@example.com")]
    pub subject: String,
    pub email: Option<String>,
    #[schema(example = "owner")]
    pub role: String,
    pub invited_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn member_columns() -> String {
    format!(
        "subject, email, role, invited_by, {} AS created_at, {} AS updated_at",
        ts("created_at"),
        ts("updated_at")
    )
}

/// List members
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/members",
    operation_id = "listMembers",
    tag = "members",
    params(PageParams),
    responses(
        (status = 200, description = "A page of members by subject; `Link: rel=next` when there is more", body = Page<MemberView>),
        (status = 400, description = "`limit` out of range or a cursor from another list"),
        (status = 403, description = "The caller may not read members"),
    ),
)]
pub async fn list(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Query(page): Query<PageParams>,
    uri: Uri,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Members, Action::Read)?;
    let select = format!(
        "SELECT {} FROM members WHERE ($1::text IS NULL OR subject > $1) ORDER BY subject LIMIT $2",
        member_columns()
    );
    super::list_page(
        &ctx,
        &http,
        page,
        &uri,
        "members",
        &select,
        |row: &MemberView| row.subject.clone(),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    /// The new role; the caller must hold every right of the old and the
    /// new role.
    #[schema(example = "editor")]
    pub role: String,
}

/// Locks the owner rows and the member's row; the member's current role.
async fn lock_member(
    ctx: &TenantContext,
    tx: &mut sqlx::PgConnection,
    subject: &str,
) -> Result<(String, i64), ApiError> {
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_LEN {
        return Err(ApiError::NotFound);
    }
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT subject FROM members WHERE role = $1 ORDER BY subject FOR UPDATE",
    )
    .bind(OWNER_ROLE)
    .fetch_all(&mut *tx)
    .await?;
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM members WHERE subject = $1 FOR UPDATE")
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await?;
    let role = role.ok_or(ApiError::NotFound)?;
    // Taking a member away from a role is like granting it: only with
    // every right that role has.
    let current = load_permissions(&mut *tx, &role).await?;
    if !current.is_subset_of(ctx.permissions()) {
        return Err(ApiError::Forbidden(format!(
            "role `{}` may not change a member with role `{role}`",
            ctx.principal().role
        )));
    }
    Ok((role, owners.len() as i64))
}

fn last_owner() -> ApiError {
    ApiError::Conflict("the tenant's last owner cannot be demoted or removed".into())
}

/// Change a member's role
///
/// The member's keys whose role now exceeds the member's are lowered to it
/// in the same transaction.
#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/members/{subject}",
    operation_id = "updateMember",
    tag = "members",
    params(("subject" = String, Path, description = "The member's subject (URL-encoded)")),
    request_body = UpdateMember,
    responses(
        (status = 200, description = "The member after the change", body = MemberView),
        (status = 403, description = "The old or the new role has rights the caller lacks"),
        (status = 409, description = "The tenant's last owner cannot be demoted"),
        (status = 422, description = "No such role in this tenant"),
    ),
)]
pub async fn update(
    ctx: TenantContext,
    Path((_tenant, subject)): Path<(String, String)>,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<UpdateMember>>,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Members, Action::Write)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    let (current, owners) = lock_member(&ctx, &mut tx, &subject).await?;
    check_grantable(&ctx, &mut tx, &body.role, "/role").await?;
    if current == OWNER_ROLE && body.role != OWNER_ROLE && owners <= 1 {
        return Err(last_owner());
    }
    let member: MemberView = sqlx::query_as(&format!(
        "UPDATE members SET role = $2, updated_at = now() WHERE subject = $1 RETURNING {}",
        member_columns()
    ))
    .bind(&subject)
    .bind(&body.role)
    .fetch_one(&mut *tx)
    .await?;
    // Keys of the member that now exceed the member's role come down to it.
    let new_rights = load_permissions(&mut *tx, &body.role).await?;
    let key_roles: Vec<(String, String)> =
        sqlx::query_as("SELECT id, role FROM api_keys WHERE subject = $1 AND role <> $2")
            .bind(&subject)
            .bind(&body.role)
            .fetch_all(&mut *tx)
            .await?;
    for (id, role) in key_roles {
        if !load_permissions(&mut *tx, &role)
            .await?
            .is_subset_of(&new_rights)
        {
            sqlx::query("UPDATE api_keys SET role = $2 WHERE id = $1")
                .bind(&id)
                .bind(&body.role)
                .execute(&mut *tx)
                .await?;
        }
    }
    audit(
        &mut tx,
        &actor(ctx.principal()),
        "member.role_changed",
        &format!("member:{subject}"),
        json!({ "from": current, "to": body.role }),
    )
    .await?;
    events::record(
        &mut tx,
        Event::new(types::MEMBER_UPDATED, subject.clone())
            .data(json!({"subject": subject, "from": current, "to": body.role})),
    )
    .await?;
    tx.commit().await?;
    run.finish(Json(member).into_response()).await
}

/// Remove a member
///
/// The member's API keys go with it.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/members/{subject}",
    operation_id = "removeMember",
    tag = "members",
    params(("subject" = String, Path, description = "The member's subject (URL-encoded)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The member's role has rights the caller lacks"),
        (status = 409, description = "The tenant's last owner cannot be removed"),
    ),
)]
pub async fn remove(
    ctx: TenantContext,
    Path((_tenant, subject)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require(Resource::Members, Action::Delete)?;
    let mut tx = ctx.pool().begin().await?;
    let (current, owners) = lock_member(&ctx, &mut tx, &subject).await?;
    if current == OWNER_ROLE && owners <= 1 {
        return Err(last_owner());
    }
    sqlx::query("DELETE FROM members WHERE subject = $1")
        .bind(&subject)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &actor(ctx.principal()),
        "member.removed",
        &format!("member:{subject}"),
        json!({ "role": current }),
    )
    .await?;
    events::record(
        &mut tx,
        Event::new(types::MEMBER_REMOVED, subject.clone())
            .data(json!({"subject": subject, "role": current})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
