//! Extractors that authenticate the caller and scope the request to the
//! tenant in the path. Order matters and is fixed here: no credential or a
//! bad one is 401; a good credential for another tenant (or a path tenant
//! that is not even a valid name) is 404, the same answer as for a tenant
//! that does not exist.
//!
//! **Tenant routes use [`crate::tenancy::TenantContext`] instead**: it also
//! resolves the tenant in the catalog (state: 403/503), checks API keys in
//! the tenant's own database, loads the role's permissions and hands out the
//! tenant's pool. `TenantScope` checks a JWT's tenant claim only.

use axum::extract::{FromRef, FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::HttpContext;
use super::auth::{Principal, ensure_tenant, is_tenant_name};
use super::problem::ApiError;

/// Authenticates once per request (the result is kept in the request's
/// extensions) and records the tenant in the request's span.
pub async fn principal(parts: &mut Parts, context: &HttpContext) -> Result<Principal, ApiError> {
    if let Some(principal) = parts.extensions.get::<Principal>() {
        return Ok(principal.clone());
    }
    let principal = context.auth.authenticate(&parts.headers).await?;
    tracing::Span::current().record("tenant", principal.tenant.as_str());
    parts.extensions.insert(principal.clone());
    Ok(principal)
}

impl<S> FromRequestParts<S> for Principal
where
    HttpContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        principal(parts, &HttpContext::from_ref(state)).await
    }
}

/// An authenticated caller on a `/v1/tenants/{tenant}/…` route whose
/// credential belongs to that tenant.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub principal: Principal,
}

impl TenantScope {
    pub fn tenant(&self) -> &str {
        &self.principal.tenant
    }
}

impl<S> FromRequestParts<S> for TenantScope
where
    HttpContext: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = principal(parts, &HttpContext::from_ref(state)).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("path params: {}", e.body_text())))?;
        let Some(path_tenant) = params
            .iter()
            .find(|(name, _)| *name == "tenant")
            .map(|(_, value)| value)
        else {
            // The route has no {tenant}: a routing bug, not the client's.
            return Err(ApiError::internal(anyhow::anyhow!(
                "TenantScope on a route without {{tenant}}"
            )));
        };
        if !is_tenant_name(path_tenant) {
            return Err(ApiError::NotFound);
        }
        ensure_tenant(&principal, path_tenant)?;
        Ok(TenantScope { principal })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::http::auth::{ApiKeyStore, Authenticator, StoredApiKey, generate_api_key};
    use crate::http::pagination::CursorCodec;

    struct Keys(Vec<(String, StoredApiKey)>);

    #[async_trait::async_trait]
    impl ApiKeyStore for Keys {
        async fn find(&self, key_id: &str) -> anyhow::Result<Option<StoredApiKey>> {
            Ok(self
                .0
                .iter()
                .find(|(id, _)| id == key_id)
                .map(|(_, k)| k.clone()))
        }
    }

    fn setup() -> (Router, String) {
        let key = generate_api_key();
        let stored = StoredApiKey {
            tenant: "acme".into(),
            subject: "bob".into(),
            role: "viewer".into(),
            secret_hash: key.secret_hash.to_vec(),
            expires_at: Some(SystemTime::now() + std::time::Duration::from_secs(60)),
            revoked: false,
        };
        let context = HttpContext {
            auth: Authenticator::new(
                None,
                Some(Arc::new(Keys(vec![(key.key_id.clone(), stored)]))),
            ),
            cursors: CursorCodec::new(vec![0; 32], vec![]).expect("key"),
            gateway: crate::gateway::Gateway::unlimited(),
        };
        let app = Router::new()
            .route(
                "/v1/tenants/{tenant}/whoami",
                get(|scope: TenantScope| async move {
                    format!("{}:{}", scope.tenant(), scope.principal.subject)
                }),
            )
            .route(
                "/v1/me",
                get(|principal: Principal| async move { principal.subject }),
            )
            .with_state(context);
        (app, key.token)
    }

    async fn call(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn own_tenant_passes() {
        let (app, token) = setup();
        let (status, body) = call(&app, "/v1/tenants/acme/whoami", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "acme:bob");
        let (status, body) = call(&app, "/v1/me", Some(&token)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "bob"));
    }

    #[tokio::test]
    async fn other_tenants_are_not_found_and_missing_credentials_unauthenticated() {
        let (app, token) = setup();
        let (status, other) = call(&app, "/v1/tenants/globex/whoami", Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, invalid) = call(&app, "/v1/tenants/Not_A-Name/whoami", Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Same body: a foreign tenant reads exactly like a missing one.
        assert_eq!(other, invalid);
        assert!(!other.contains("globex"));

        let (status, body) = call(&app, "/v1/tenants/acme/whoami", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        // Unauthenticated on another tenant's path is 401, not 404: the
        // answer must not depend on the path before authentication.
        let (status, _) = call(&app, "/v1/tenants/globex/whoami", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let wrong = generate_api_key();
        let (status, _) = call(&app, "/v1/tenants/acme/whoami", Some(&wrong.token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
