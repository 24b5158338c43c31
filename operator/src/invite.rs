//! The admin invitation: single-use and expiring. Only a SHA-256 of the token
//! is stored in the tenant database; the token itself is delivered through a
//! Secret, and the invitation is announced by an outbox event
//! (`tenant.admin_invited`) written in the same transaction.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

pub const OUTBOX_TOPIC: &str = "tenant.admin_invited";

/// A fresh random token (256 bits, URL-safe).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What the invitation step found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum InviteState {
    /// Created now.
    Created { id: Uuid },
    /// The open invitation for this token already exists.
    Pending { id: Uuid },
    /// The admin already accepted an invitation: nothing to send.
    Accepted,
    /// The open invitation for this token has expired: the caller issues a
    /// new token and calls [`ensure`] again, which replaces it.
    Expired { id: Uuid },
}

/// Revokes the open owner invitations the operator issued to any address
/// other than `email` (the tenant's `adminEmail` changed). Returns the
/// revoked invitations' ids and addresses, for the audit trail.
pub async fn revoke_others(pool: &PgPool, email: &str) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"UPDATE invitations SET revoked_at = now()
           WHERE role = 'owner' AND created_by = 'operator'
             AND accepted_at IS NULL AND revoked_at IS NULL
             AND lower(email) <> lower($1)
           RETURNING id, email"#,
        email
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.email)).collect())
}

/// Ensures one open invitation for `email` whose hash matches `token`.
/// An open invitation with another token (the Secret was replaced, or the old
/// one expired) is revoked and replaced, so exactly one invitation is ever
/// open per email.
pub async fn ensure(
    pool: &PgPool,
    tenant: &str,
    email: &str,
    token: &str,
    ttl_hours: i64,
    secret_name: &str,
) -> Result<InviteState, sqlx::Error> {
    let hash = token_hash(token);
    let mut tx = pool.begin().await?;
    // Serialise invite handling for this tenant database.
    sqlx::query!("LOCK TABLE invitations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let accepted = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM invitations
                          WHERE lower(email) = lower($1) AND accepted_at IS NOT NULL) AS "accepted!""#,
        email
    )
    .fetch_one(&mut *tx)
    .await?;
    if accepted {
        tx.commit().await?;
        return Ok(InviteState::Accepted);
    }
    let open = sqlx::query!(
        r#"SELECT id, token_hash, expires_at <= now() AS "expired!" FROM invitations
           WHERE lower(email) = lower($1) AND accepted_at IS NULL AND revoked_at IS NULL"#,
        email
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(open) = &open {
        if open.token_hash == hash {
            tx.commit().await?;
            return Ok(if open.expired {
                InviteState::Expired { id: open.id }
            } else {
                InviteState::Pending { id: open.id }
            });
        }
        sqlx::query!(
            "UPDATE invitations SET revoked_at = now() WHERE id = $1",
            open.id
        )
        .execute(&mut *tx)
        .await?;
    }
    let invitation = sqlx::query!(
        r#"INSERT INTO invitations (email, role, token_hash, created_by, expires_at)
           VALUES ($1, 'owner', $2, 'operator', now() + make_interval(hours => $3::int))
           RETURNING id, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS "expires_at!""#,
        email,
        hash,
        ttl_hours as i32
    )
    .fetch_one(&mut *tx)
    .await?;
    // The event names where the token is, never the token itself.
    let payload = json!({
        "tenant": tenant,
        "invitationId": invitation.id,
        "email": email,
        "role": "owner",
        "expiresAt": invitation.expires_at,
        "tokenSecret": secret_name,
    });
    sqlx::query!(
        "INSERT INTO outbox (topic, aggregate_id, payload) VALUES ($1, $2, $3)",
        OUTBOX_TOPIC,
        invitation.id.to_string(),
        payload
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(InviteState::Created { id: invitation.id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_fixed_size() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a).len(), 32);
        assert_eq!(token_hash(&a), token_hash(&a));
    }
}
