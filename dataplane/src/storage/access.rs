//! Who may act on a bucket, in this order:
//!
//! 1. `Authorization` present: the tenant credential path of
//!    [`crate::tenancy::TenantContext`] (401/404/403/503 as everywhere),
//!    then the role's permission on `objects`;
//! 2. presign parameters in the query (object routes only): the URL's
//!    signature for exactly this tenant, method, bucket and key
//!    ([`super::presign`]);
//! 3. neither, on a GET/HEAD of an object in a public bucket: allowed;
//!    anything else without a credential is the 401 of a missing
//!    credential, whether or not the tenant or bucket exists.
//!
//! The bucket is resolved last, by (tenant id, name): another tenant's
//! bucket of the same name is simply not found (404).

use std::sync::Arc;

use axum::http::{HeaderMap, Method, header};
use sqlx::PgPool;

use super::buckets::BucketInfo;
use super::keys::ObjectKey;
use super::presign::{self, Claims, UrlParams};
use crate::app::AppState;
use crate::http::problem::ApiError;
use crate::tenancy::{Action, Resource, TenantInfo, context::authenticate};

/// An authorised request on one bucket.
pub struct Access {
    pub pool: PgPool,
    pub tenant: Arc<TenantInfo>,
    pub bucket: Arc<BucketInfo>,
    /// Who acts (audit, `owner` of objects): the credential's subject,
    /// `presigned:<key id>` or `anonymous`.
    pub actor: String,
    /// The constraints of a presigned PUT.
    pub presigned: Option<Claims>,
    /// The credential's `Idempotency-Key` scope
    /// ([`crate::http::idempotency::scope_of`]); `None` for presigned and
    /// anonymous access, which take no keys (their POSTs do not exist).
    pub idempotency_scope: Option<String>,
}

async fn bucket_of(
    state: &AppState,
    tenant: &TenantInfo,
    bucket: &str,
) -> Result<Arc<BucketInfo>, ApiError> {
    state
        .storage
        .buckets
        .resolve(tenant.id, bucket)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Authorises `action` on objects of `bucket` (and, for presigned URLs,
/// on `key`).
#[allow(clippy::too_many_arguments)]
pub async fn authorize(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    tenant: &str,
    bucket: &str,
    key: Option<&ObjectKey>,
    action: Action,
) -> Result<Access, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authorize_credential(state, headers, tenant, bucket, Resource::Objects, action)
            .await;
    }
    let missing = || ApiError::Unauthenticated("missing credential".into());
    if let (Some(params), Some(key)) = (UrlParams::from_query(query), key) {
        let handle = state.tenancy.open(tenant).await?;
        let found = bucket_of(state, &handle.tenant, bucket).await?;
        let claims = presign::verify(
            &handle.pool,
            state.storage.settings.presign_grace,
            state.storage.settings.presign_max_expiry,
            &params,
            tenant,
            method.as_str(),
            bucket,
            key,
        )
        .await?;
        return Ok(Access {
            pool: handle.pool,
            tenant: handle.tenant,
            bucket: found,
            actor: format!("presigned:{}", claims.key_id),
            presigned: Some(claims),
            idempotency_scope: None,
        });
    }
    if key.is_some() && action == Action::Read && (method == Method::GET || method == Method::HEAD)
    {
        // Public buckets: whatever goes wrong is the 401 any request
        // without a credential gets, so nothing is revealed.
        let Ok(handle) = state.tenancy.open(tenant).await else {
            return Err(missing());
        };
        let Ok(Some(found)) = state
            .storage
            .buckets
            .resolve(handle.tenant.id, bucket)
            .await
        else {
            return Err(missing());
        };
        if found.public {
            return Ok(Access {
                pool: handle.pool,
                tenant: handle.tenant,
                bucket: found,
                actor: "anonymous".into(),
                presigned: None,
                idempotency_scope: None,
            });
        }
    }
    Err(missing())
}

/// The credential path only (bucket-level routes, JSON endpoints).
pub async fn authorize_credential(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    bucket: &str,
    resource: Resource,
    action: Action,
) -> Result<Access, ApiError> {
    let ctx = authenticate(headers, tenant, &state.http, &state.tenancy).await?;
    tracing::Span::current().record("tenant", ctx.tenant_name());
    ctx.require(resource, action)?;
    let found = bucket_of(state, ctx.tenant(), bucket).await?;
    Ok(Access {
        pool: ctx.pool().clone(),
        tenant: Arc::new(ctx.tenant().clone()),
        bucket: found,
        actor: ctx.principal().subject.clone(),
        presigned: None,
        idempotency_scope: Some(crate::http::idempotency::scope_of(ctx.principal())),
    })
}

impl Access {
    /// Runs a POST's write under its `Idempotency-Key`
    /// ([`crate::http::idempotency::begin`]), scoped to this credential.
    pub async fn begin_idempotent(
        &self,
        key: Option<crate::http::idempotency::Keyed>,
    ) -> Result<Result<crate::http::idempotency::Run, axum::response::Response>, ApiError> {
        let scope = self.idempotency_scope.clone().unwrap_or_default();
        crate::http::idempotency::begin(
            &self.pool,
            scope,
            key.filter(|_| self.idempotency_scope.is_some()),
            crate::http::idempotency::ttl(),
        )
        .await
    }
}
