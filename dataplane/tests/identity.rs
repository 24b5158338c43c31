//! Tenancy and identity against the real stack: tenants provisioned by the
//! operator's provisioner in a catalog of the test's own, two data-plane
//! app instances (two `AppState`s, as two replicas) logging in as the data
//! plane role. Needs `source .stack/env`.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use strata_dataplane::app::{AppState, Services, api_router};
use strata_dataplane::http::HttpContext;
use strata_dataplane::http::auth::{Authenticator, JwtSettings, JwtVerifier};
use strata_dataplane::http::pagination::CursorCodec;
use strata_dataplane::http::problem::ApiError;
use strata_dataplane::http::request_id;
use strata_dataplane::tenancy::{Action, Resource, Tenancy, TenancySettings, TenantContext};
use strata_db::TenantState;
use strata_operator::host::LocalHost;
use strata_tests::operator_support::{drop_tenant_storage, test_catalog};
use strata_tests::{env, unique, with_database};
use support::{Tenant, provision_tenant};
use tower::ServiceExt;

const JWT_SECRET: &[u8] = b"identity-test-secret-0123456789abcdef";

/// A route only tests mount: what a documents handler would do first.
async fn probe_write(ctx: TenantContext) -> Result<String, ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(ctx.pool())
        .await?;
    Ok(user)
}

/// Who the owner DDL session runs as, and what the search path is.
async fn probe_owner(ctx: TenantContext) -> Result<String, ApiError> {
    ctx.require(Resource::Collections, Action::Manage)?;
    let mut conn = ctx.owner_ddl().await?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await?;
    Ok(user)
}

fn app(catalog_url: &str) -> (Router, Tenancy) {
    let catalog = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(catalog_url)
        .expect("catalog pool");
    let login = env("STRATA_DATAPLANE_DATABASE_URL")
        .parse()
        .expect("dataplane url");
    let tenancy = Tenancy::new(
        catalog.clone(),
        TenancySettings {
            // Short, so state changes show within the test's patience.
            catalog_ttl: Duration::from_millis(200),
            roles_ttl: Duration::from_millis(200),
            ..TenancySettings::new(login)
        },
    );
    let jwt = JwtVerifier::new(JwtSettings {
        hs256_secret: Some(JWT_SECRET.to_vec()),
        ..JwtSettings::default()
    })
    .expect("jwt");
    let state = AppState::from(Services {
        catalog: catalog.clone(),
        redis: None,
        http: HttpContext {
            auth: Authenticator::new(Some(jwt), None),
            cursors: CursorCodec::new(vec![9; 32], vec![]).expect("cursor key"),
            gateway: strata_dataplane::gateway::Gateway::unlimited(),
        },
        storage: strata_dataplane::storage::StorageState::unconfigured(catalog.clone()),
        tenancy: tenancy.clone(),
    });
    let routes = Router::new()
        .merge(strata_dataplane::identity::routes())
        .route("/v1/tenants/{tenant}/probe-write", get(probe_write))
        .route("/v1/tenants/{tenant}/probe-owner", get(probe_owner))
        .with_state(state);
    let router = api_router(
        routes,
        1 << 20,
        strata_dataplane::gateway::Gateway::unlimited(),
    )
    .layer(axum::middleware::from_fn(request_id::request_id));
    (router, tenancy)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {auth}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The problem body without the per-request `instance`.
fn without_instance(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut() {
        object.remove("instance");
    }
    body
}

fn jwt(tenant: &str, subject: &str, role: &str) -> String {
    let claims = json!({
        "sub": subject, "tenant": tenant, "role": role,
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("encode")
}

async fn admin_on(database: &str) -> PgPool {
    PgPool::connect(&with_database(&env("STRATA_DATABASE_URL"), database))
        .await
        .expect("admin connection")
}

async fn new_key(app: &Router, tenant: &str, auth: &str, role: &str) -> Reply {
    call(
        app,
        "POST",
        &format!("/v1/tenants/{tenant}/keys"),
        Some(auth),
        Some(json!({"name": format!("{role} key"), "role": role})),
    )
    .await
}

#[tokio::test]
async fn tenancy_keys_members_and_invitations() {
    let (catalog_db, catalog) = test_catalog().await;
    let host = LocalHost {
        dir: std::env::temp_dir().join(unique("strata-identity-")),
    };
    let a = provision_tenant(&catalog, &host, "identity", &unique("ida")).await;
    let b = provision_tenant(&catalog, &host, "identity", &unique("idb")).await;
    let ids = [a.id, b.id];
    // In a task, so a failed assertion still reaches the cleanup below.
    let result = tokio::spawn(scenario(catalog_db.name.clone(), catalog.clone(), a, b)).await;
    for id in ids {
        drop_tenant_storage(id).await;
    }
    let _ = std::fs::remove_dir_all(&host.dir);
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn scenario(catalog_db: String, catalog: strata_db::Catalog, a: Tenant, b: Tenant) {
    let (a_id, b_id) = (a.id, b.id);
    let catalog_url = with_database(&env("STRATA_DATAPLANE_DATABASE_URL"), &catalog_db);
    let (one, one_tenancy) = app(&catalog_url);
    let (two, _) = app(&catalog_url);
    let (ta, tb) = (a.name.as_str(), b.name.as_str());

    // -- Invitation accept: the token is the credential ------------------
    let accept = |token: &str, subject: Option<&str>| {
        let mut body = json!({"token": token});
        if let Some(subject) = subject {
            body["subject"] = json!(subject);
        }
        body
    };
    let wrong = call(
        &one,
        "POST",
        &format!("/v1/tenants/{ta}/invitations/accept"),
        None,
        Some(accept("nope", None)),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND, "{}", wrong.body);
    // A's token on B's path: not B's invitation.
    let crossed = call(
        &one,
        "POST",
        &format!("/v1/tenants/{tb}/invitations/accept"),
        None,
        Some(accept(&a.token, None)),
    )
    .await;
    assert_eq!(crossed.status, StatusCode::NOT_FOUND);
    let accepted = call(
        &one,
        "POST",
        &format!("/v1/tenants/{ta}/invitations/accept"),
        None,
        Some(accept(&a.token, Some("alice"))),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["subject"], "alice");
    assert_eq!(
        accepted.body["role"], "owner",
        "the invitation's role column"
    );
    let owner_key = accepted.body["key"]["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert!(owner_key.starts_with("sk_"));
    let again = call(
        &two,
        "POST",
        &format!("/v1/tenants/{ta}/invitations/accept"),
        None,
        Some(accept(&a.token, Some("mallory"))),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "single use");
    assert_eq!(
        without_instance(again.body),
        without_instance(wrong.body.clone())
    );
    // Expired: B's invitation, aged by the admin.
    let b_admin = admin_on(
        strata_operator::placement::TenantNames::for_tenant(b_id)
            .database
            .as_str(),
    )
    .await;
    sqlx::query("UPDATE invitations SET expires_at = now() - interval '1 minute'")
        .execute(&b_admin)
        .await
        .expect("age invitation");
    let expired = call(
        &one,
        "POST",
        &format!("/v1/tenants/{tb}/invitations/accept"),
        None,
        Some(accept(&b.token, None)),
    )
    .await;
    assert_eq!(expired.status, StatusCode::GONE, "{}", expired.body);
    assert_eq!(expired.body["code"], "invitation-expired");
    sqlx::query("UPDATE invitations SET expires_at = now() + interval '1 hour'")
        .execute(&b_admin)
        .await
        .expect("renew invitation");
    let b_accept = call(
        &one,
        "POST",
        &format!("/v1/tenants/{tb}/invitations/accept"),
        None,
        Some(accept(&b.token, None)),
    )
    .await;
    assert_eq!(b_accept.status, StatusCode::CREATED, "{}", b_accept.body);
    assert_eq!(
        b_accept.body["subject"],
        format!("admin@{tb}.test"),
        "default subject: the email"
    );
    let b_key = b_accept.body["key"]["key"]
        .as_str()
        .expect("key")
        .to_string();
    // What the accept wrote, in one transaction.
    let a_admin = admin_on(
        strata_operator::placement::TenantNames::for_tenant(a_id)
            .database
            .as_str(),
    )
    .await;
    let (audit, outbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events WHERE actor = 'dataplane' AND action = 'invitation.accepted'),
                (SELECT count(*) FROM outbox WHERE topic = 'invitation.accepted')",
    )
    .fetch_one(&a_admin)
    .await
    .expect("audit");
    assert_eq!((audit, outbox), (1, 1));

    // -- The key works; the owner DDL session is the owner ---------------
    let who = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&owner_key),
        None,
    )
    .await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.body);
    assert_eq!(
        who.body, "strata_dataplane",
        "ordinary sessions are the data plane role"
    );
    let owner = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-owner"),
        Some(&owner_key),
        None,
    )
    .await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.body);
    let owner_role: String =
        sqlx::query_scalar("SELECT owner_role FROM catalog.tenants WHERE id = $1")
            .bind(a_id)
            .fetch_one(catalog.pool())
            .await
            .expect("owner role");
    assert_eq!(owner.body, owner_role.as_str());
    // …and its connection never came back to the pool as the owner.
    for _ in 0..6 {
        let who = call(
            &one,
            "GET",
            &format!("/v1/tenants/{ta}/probe-write"),
            Some(&owner_key),
            None,
        )
        .await;
        assert_eq!(who.body, "strata_dataplane");
    }

    // -- Keys: admin manages, cannot exceed its role; viewer cannot write --
    let admin = new_key(&one, ta, &owner_key, "admin").await;
    assert_eq!(admin.status, StatusCode::CREATED, "{}", admin.body);
    assert!(admin.body["secret_hash"].is_null());
    let admin_key = admin.body["key"].as_str().expect("key").to_string();
    let forbidden = new_key(&one, ta, &admin_key, "owner").await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );
    assert_eq!(
        forbidden.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let viewer = new_key(&one, ta, &admin_key, "viewer").await;
    assert_eq!(viewer.status, StatusCode::CREATED);
    let viewer_key = viewer.body["key"].as_str().expect("key").to_string();
    let editor = new_key(&one, ta, &admin_key, "editor").await;
    let editor_key = editor.body["key"].as_str().expect("key").to_string();
    let editor_id = editor.body["id"].as_str().expect("id").to_string();
    let bad_role = new_key(&one, ta, &admin_key, "superuser").await;
    assert_eq!(bad_role.status, StatusCode::UNPROCESSABLE_ENTITY);
    let past = call(
        &one,
        "POST",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&admin_key),
        Some(json!({"role": "viewer", "expires_at": "2001-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        past.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        past.body
    );
    let soon = call(
        &one,
        "POST",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&admin_key),
        Some(json!({"role": "viewer", "expires_at": "2999-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(soon.status, StatusCode::CREATED, "{}", soon.body);
    assert_eq!(soon.body["expires_at"], "2999-01-01T00:00:00.000000Z");

    let denied = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&viewer_key),
        None,
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body["code"], "forbidden");
    let denied = new_key(&one, ta, &viewer_key, "viewer").await;
    assert_eq!(
        denied.status,
        StatusCode::FORBIDDEN,
        "viewers cannot manage keys"
    );
    let allowed = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&editor_key),
        None,
    )
    .await;
    assert_eq!(allowed.status, StatusCode::OK);

    // Listing: paginated, no secrets.
    let page = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/keys?limit=2"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(2));
    assert!(page.headers.contains_key(header::LINK));
    let mut seen = page.body["items"].as_array().cloned().unwrap_or_default();
    let mut cursor = page.body["next_cursor"].as_str().map(String::from);
    while let Some(c) = cursor {
        let next = call(
            &one,
            "GET",
            &format!("/v1/tenants/{ta}/keys?limit=2&cursor={c}"),
            Some(&admin_key),
            None,
        )
        .await;
        assert_eq!(next.status, StatusCode::OK);
        seen.extend(next.body["items"].as_array().cloned().unwrap_or_default());
        cursor = next.body["next_cursor"].as_str().map(String::from);
    }
    assert_eq!(seen.len(), 5, "first key, admin, viewer, editor, soon");
    assert!(!serde_json::to_string(&seen).expect("json").contains("sk_"));
    // A cursor of A's listing means nothing on B's.
    let foreign_cursor = call(
        &one,
        "GET",
        &format!("/v1/tenants/{tb}/keys?limit=1"),
        Some(&b_key),
        None,
    )
    .await;
    let c = foreign_cursor.body["next_cursor"]
        .as_str()
        .map(String::from);
    if let Some(c) = c {
        let reused = call(
            &one,
            "GET",
            &format!("/v1/tenants/{ta}/keys?cursor={c}"),
            Some(&admin_key),
            None,
        )
        .await;
        assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    }

    // -- Revocation: at once, on the other replica ------------------------
    let works = call(
        &two,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(works.status, StatusCode::OK);
    let used = call(
        &two,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&editor_key),
        None,
    )
    .await;
    assert_eq!(used.status, StatusCode::OK);
    let revoked = call(
        &one,
        "DELETE",
        &format!("/v1/tenants/{ta}/keys/{editor_id}"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.body);
    let refused = call(
        &two,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&editor_key),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert_eq!(refused.body["code"], "unauthenticated");
    let missing = call(
        &one,
        "DELETE",
        &format!("/v1/tenants/{ta}/keys/0123456789abcdef"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // Another admin cannot revoke the owner's key (keys alice minted act
    // for alice, so her admin key could: it is her own).
    let first_id = &owner_key[3..19];
    let not_yours = call(
        &one,
        "DELETE",
        &format!("/v1/tenants/{ta}/keys/{first_id}"),
        Some(&jwt(ta, "another-admin", "admin")),
        None,
    )
    .await;
    assert_eq!(not_yours.status, StatusCode::FORBIDDEN);
    // last_used_at was recorded (in the background) for a used key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last_used: Option<String> =
        sqlx::query_scalar("SELECT last_used_at::text FROM api_keys WHERE id = $1")
            .bind(first_id)
            .fetch_one(&a_admin)
            .await
            .expect("last used");
    assert!(last_used.is_some());

    // -- Isolation: A's credentials on B's path read like no tenant -------
    let nowhere = call(
        &one,
        "GET",
        "/v1/tenants/no-such-tenant-here/keys",
        Some(&owner_key),
        None,
    )
    .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/v1/tenants/{tb}/keys"),
        format!("/v1/tenants/{tb}/members"),
        format!("/v1/tenants/{tb}/probe-write"),
    ] {
        let cross = call(&one, "GET", &path, Some(&owner_key), None).await;
        assert_eq!(cross.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            without_instance(cross.body.clone()),
            without_instance(nowhere.body.clone())
        );
        assert!(!cross.body.to_string().contains(tb));
        let cross_jwt = call(&one, "GET", &path, Some(&jwt(ta, "alice", "owner")), None).await;
        assert_eq!(cross_jwt.status, StatusCode::NOT_FOUND);
        assert_eq!(
            without_instance(cross_jwt.body),
            without_instance(nowhere.body.clone())
        );
    }
    let b_first_id = &b_key[3..19];
    let cross_delete = call(
        &one,
        "DELETE",
        &format!("/v1/tenants/{ta}/keys/{b_first_id}"),
        Some(&owner_key),
        None,
    )
    .await;
    assert_eq!(
        cross_delete.status,
        StatusCode::NOT_FOUND,
        "B's key id in A"
    );
    let unauthenticated = call(&one, "GET", &format!("/v1/tenants/{tb}/keys"), None, None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    // -- JWT callers: role claim as-is, no member row needed ---------------
    let jwt_viewer = jwt(ta, "someone-from-the-idp", "viewer");
    let members = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/members"),
        Some(&jwt_viewer),
        None,
    )
    .await;
    assert_eq!(members.status, StatusCode::OK, "{}", members.body);
    assert_eq!(members.body["items"][0]["subject"], "alice");
    assert_eq!(members.body["items"][0]["role"], "owner");
    let write = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&jwt_viewer),
        None,
    )
    .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    let unknown_role = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/members"),
        Some(&jwt(ta, "x", "wizard")),
        None,
    )
    .await;
    assert_eq!(
        unknown_role.status,
        StatusCode::FORBIDDEN,
        "a role the tenant lacks grants nothing"
    );
    let jwt_editor = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/probe-write"),
        Some(&jwt(ta, "e", "editor")),
        None,
    )
    .await;
    assert_eq!(jwt_editor.status, StatusCode::OK);

    // -- Members: last owner, owner-only changes --------------------------
    let demote = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/alice"),
        Some(&owner_key),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(demote.status, StatusCode::CONFLICT, "{}", demote.body);
    let remove = call(
        &one,
        "DELETE",
        &format!("/v1/tenants/{ta}/members/alice"),
        Some(&owner_key),
        None,
    )
    .await;
    assert_eq!(remove.status, StatusCode::CONFLICT);
    let by_admin = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/alice"),
        Some(&admin_key),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(
        by_admin.status,
        StatusCode::FORBIDDEN,
        "only an owner touches an owner"
    );
    let absent = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/nobody"),
        Some(&owner_key),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND);
    // A second owner (a member via B-style insert), then the first may go.
    sqlx::query("INSERT INTO members (subject, role) VALUES ('bob', 'viewer')")
        .execute(&a_admin)
        .await
        .expect("member bob");
    let promote_by_admin = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/bob"),
        Some(&admin_key),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(promote_by_admin.status, StatusCode::FORBIDDEN);
    let promote = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/bob"),
        Some(&owner_key),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(promote.status, StatusCode::OK, "{}", promote.body);
    assert_eq!(promote.body["role"], "owner");
    let demote = call(
        &one,
        "PATCH",
        &format!("/v1/tenants/{ta}/members/alice"),
        Some(&owner_key),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(demote.status, StatusCode::OK, "{}", demote.body);
    // Alice's owner key came down with her.
    let capped = new_key(&two, ta, &owner_key, "viewer").await;
    assert_eq!(capped.status, StatusCode::FORBIDDEN, "{}", capped.body);

    // -- Tenant state: suspended 403, not ready 503 ------------------------
    catalog
        .set_state(a_id, TenantState::Suspended)
        .await
        .expect("suspend");
    one_tenancy.resolver.forget(ta).await;
    let suspended = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(
        suspended.status,
        StatusCode::FORBIDDEN,
        "{}",
        suspended.body
    );
    assert!(
        suspended.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("suspended")
    );
    let suspended_jwt = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&jwt(ta, "a", "admin")),
        None,
    )
    .await;
    assert_eq!(suspended_jwt.status, StatusCode::FORBIDDEN);
    // Another tenant's credential still gets 404, not the state.
    let foreign = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&b_key),
        None,
    )
    .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    catalog
        .set_state(a_id, TenantState::Provisioning)
        .await
        .expect("provisioning");
    one_tenancy.resolver.forget(ta).await;
    let not_ready = call(
        &one,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&jwt(ta, "a", "admin")),
        None,
    )
    .await;
    assert_eq!(
        not_ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        not_ready.body
    );
    assert!(not_ready.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        not_ready.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let accept_not_ready = call(
        &one,
        "POST",
        &format!("/v1/tenants/{ta}/invitations/accept"),
        None,
        Some(accept("x", None)),
    )
    .await;
    assert_eq!(accept_not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    catalog
        .set_state(a_id, TenantState::Ready)
        .await
        .expect("ready");
    // The other replica follows within its cache TTL. (Alice's admin key
    // was lowered to viewer with her, so an admin JWT asks.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = call(
        &two,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&jwt(ta, "a", "admin")),
        None,
    )
    .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    let lowered = call(
        &two,
        "GET",
        &format!("/v1/tenants/{ta}/keys"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(
        lowered.status,
        StatusCode::FORBIDDEN,
        "keys follow a demotion"
    );

    a_admin.close().await;
    b_admin.close().await;
}
