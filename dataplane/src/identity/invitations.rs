//! `POST /v1/tenants/{tenant}/invitations/accept` `{token, subject?}`.
//!
//! The token is the credential (no `Authorization` needed): its SHA-256
//! finds one invitation by the unique `token_hash` index (a hash lookup
//! reveals nothing about the token; the hashes are then compared in
//! constant time anyway). In one transaction the invitation is spent
//! (`UPDATE … WHERE accepted_at IS NULL AND revoked_at IS NULL`: two
//! concurrent accepts cannot both succeed), the invitee becomes a member
//! with the invitation's `role` column (the operator issues the admin
//! invitation with role `owner`), their first API key is minted, and an
//! `audit_events` row (actor `dataplane`) and an `invitation.accepted`
//! outbox row are written. Answer: 201 with the member and the key (shown
//! once).
//!
//! - unknown, already accepted, or revoked token → 404, the same body as an
//!   unknown tenant: a spent token tells its holder nothing new;
//! - expired → 410 `invitation-expired` (only someone holding the token can
//!   learn this, and they need to know to ask for a new one);
//! - `subject` (default: the invitation's email) already a member → 409,
//!   and the invitation stays open.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::keys::{KeyView, NewKeyView, audit};
use crate::http::auth::generate_api_key;
use crate::http::extract::{Json, Path};
use crate::http::idempotency::{self, Idempotent};
use crate::http::problem::{ApiError, FieldError, kind};
use crate::tenancy::Tenancy;

/// Tokens are 43 characters (32 bytes, base64url); anything far longer is
/// not one of ours and is not hashed.
const MAX_TOKEN_LEN: usize = 512;
const MAX_SUBJECT_LEN: usize = 320;
/// Audit and outbox actor for what the data plane does on its own authority.
const ACTOR: &str = "dataplane";
pub const OUTBOX_TOPIC: &str = "invitation.accepted";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    /// The token from the `<tenant>-admin-invite` Secret (key `token`).
    #[schema(min_length = 1, max_length = 512)]
    pub token: String,
    /// The member's subject (the JWT `sub` they will use, if any); default:
    /// the invited email.
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub subject: String,
    pub email: String,
    pub role: String,
    pub key: NewKeyView,
}

#[derive(sqlx::FromRow)]
struct Invitation {
    id: Uuid,
    email: String,
    role: String,
    created_by: String,
    token_hash: Vec<u8>,
    live: bool,
    open: bool,
}

/// Accept an invitation
///
/// The invitation token is the credential: no `Authorization` header. The
/// invitee becomes a member with the invitation's role and gets a first API
/// key (shown once); the invitation is then spent.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/invitations/accept",
    operation_id = "acceptInvitation",
    tag = "invitations",
    security(()),
    request_body = Accept,
    responses(
        (status = 201, description = "The new member and its first API key", body = Accepted),
        (status = 404, description = "Unknown, spent or revoked token (or no such tenant)"),
        (status = 409, description = "`subject` is already a member; the invitation stays open"),
        (status = 410, description = "The invitation has expired"),
        (status = 422, description = "Token or subject of the wrong length"),
    ),
)]
pub async fn accept(
    State(tenancy): State<Tenancy>,
    Path(tenant): Path<String>,
    Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: Idempotent<Json<Accept>>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    if body.token.is_empty() || body.token.len() > MAX_TOKEN_LEN {
        errors.push(FieldError::new(
            "/token",
            "the token from the invitation (1 to 512 characters)",
        ));
    }
    if let Some(subject) = &body.subject
        && (subject.trim().is_empty() || subject.chars().count() > MAX_SUBJECT_LEN)
    {
        errors.push(FieldError::new(
            "/subject",
            format!("1 to {MAX_SUBJECT_LEN} characters"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let handle = tenancy.open(&tenant).await?;
    let hash: [u8; 32] = Sha256::digest(body.token.as_bytes()).into();
    // The token is the credential: its hash scopes the Idempotency-Key.
    let scope = format!(
        "invitation:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut run =
        match idempotency::begin(&handle.pool, scope, idempotency_key, idempotency::ttl()).await? {
            Ok(run) => run,
            Err(replay) => return Ok(replay),
        };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    let inv: Option<Invitation> = sqlx::query_as(
        r#"SELECT id, email, role, created_by, token_hash,
                  expires_at > now() AS live,
                  accepted_at IS NULL AND revoked_at IS NULL AS open
             FROM invitations WHERE token_hash = $1 FOR UPDATE"#,
    )
    .bind(&hash[..])
    .fetch_optional(&mut *tx)
    .await?;
    let Some(inv) = inv else {
        return Err(ApiError::NotFound);
    };
    if !bool::from(inv.token_hash[..].ct_eq(&hash[..])) || !inv.open {
        return Err(ApiError::NotFound);
    }
    if !inv.live {
        return Err(ApiError::bad_request(
            kind::INVITATION_EXPIRED,
            "the invitation has expired; ask the tenant's administrator for a new one",
        ));
    }
    let subject = body.subject.clone().unwrap_or_else(|| inv.email.clone());
    let spent = sqlx::query(
        "UPDATE invitations SET accepted_at = now() WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(inv.id)
    .execute(&mut *tx)
    .await?;
    if spent.rows_affected() != 1 {
        return Err(ApiError::NotFound);
    }
    let inserted = sqlx::query(
        r#"INSERT INTO members (subject, email, role, invited_by)
           VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING"#,
    )
    .bind(&subject)
    .bind(&inv.email)
    .bind(&inv.role)
    .bind(&inv.created_by)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() != 1 {
        // Rolled back on drop: the invitation stays open.
        return Err(ApiError::Conflict(
            "this subject is already a member; accept with another `subject`".into(),
        ));
    }
    let key = generate_api_key();
    let created_by = format!("invitation:{}", inv.id);
    let view: KeyView = sqlx::query_as(&format!(
        r#"INSERT INTO api_keys (id, name, secret_hash, role, subject, created_by)
           VALUES ($1, 'first key', $2, $3, $4, $5)
           RETURNING id, name, role, subject, created_by, {} AS created_at,
                     NULL::text AS expires_at, NULL::text AS last_used_at,
                     NULL::text AS revoked_at"#,
        super::ts("created_at")
    ))
    .bind(&key.key_id)
    .bind(&key.secret_hash[..])
    .bind(&inv.role)
    .bind(&subject)
    .bind(&created_by)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        ACTOR,
        "invitation.accepted",
        &format!("invitation:{}", inv.id),
        json!({ "subject": subject, "role": inv.role, "keyId": key.key_id }),
    )
    .await?;
    // The event names the member and key id, never the key.
    crate::events::record(
        &mut tx,
        crate::events::Event::new(OUTBOX_TOPIC, inv.id.to_string()).data(json!({
            "tenant": handle.tenant.name,
            "invitationId": inv.id,
            "subject": subject,
            "email": inv.email,
            "role": inv.role,
            "keyId": key.key_id,
        })),
    )
    .await?;
    tx.commit().await?;
    let accepted = Accepted {
        subject,
        email: inv.email,
        role: inv.role,
        key: NewKeyView {
            key: key.token,
            view,
        },
    };
    // The key's secret is never stored: a replay shows it as null.
    run.finish_redacted(
        (StatusCode::CREATED, Json(accepted)).into_response(),
        &["/key/key"],
    )
    .await
}
