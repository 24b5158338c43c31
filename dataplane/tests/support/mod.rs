//! Shared by the data plane's HTTP tests: tenants provisioned by the
//! operator's provisioner in a catalog of the test's own (their invitation
//! token read from the invite Secret, as the operator leaves it), and the
//! real router (`app::router`, real `AppState`) served on an ephemeral
//! port, logging in as the data plane role, called with reqwest. Needs
//! `source .stack/env`.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use strata_dataplane::app::{AppState, Services, router};
use strata_dataplane::http::HttpContext;
use strata_dataplane::http::auth::{Authenticator, JwtSettings, JwtVerifier};
use strata_dataplane::http::pagination::CursorCodec;
use strata_dataplane::tenancy::{Tenancy, TenancySettings};
use strata_db::TenantState;
use strata_operator::host::{LocalHost, TenantHost};
use strata_operator::provision::{self, TenantInput};
use strata_tests::operator_support::{drop_tenant_storage, provision_local, test_catalog};
use strata_tests::{env, unique, with_database};
use uuid::Uuid;

pub const JWT_SECRET: &[u8] = b"http-test-secret-0123456789abcdef";

pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// The admin invitation's token (accept it for the first key).
    pub token: String,
}

pub async fn provision_tenant(
    catalog: &strata_db::Catalog,
    host: &LocalHost,
    namespace: &str,
    name: &str,
) -> Tenant {
    let input = TenantInput {
        id: Uuid::new_v4(),
        name: name.into(),
        namespace: namespace.into(),
        spec: serde_json::from_value(
            json!({"displayName": "HTTP test", "adminEmail": format!("admin@{name}.test")}),
        )
        .expect("spec"),
        rotation: Default::default(),
    };
    provision_local(catalog, host, &input)
        .await
        .expect("provision");
    catalog
        .set_state(input.id, TenantState::Ready)
        .await
        .expect("ready");
    let secret = host
        .read_secret(&provision::invite_secret_name(name))
        .await
        .expect("read invite")
        .expect("invite secret");
    Tenant {
        id: input.id,
        name: name.into(),
        token: secret.get("token").expect("token").to_string(),
    }
}

/// Provisions one tenant per prefix, runs `scenario` with the catalog's
/// database URL (as the data plane role), the catalog (as the operator,
/// to change tenant states) and the tenants, then drops the tenants'
/// storage even when the scenario panicked.
pub async fn with_tenants<F, Fut>(namespace: &str, prefixes: &[&str], scenario: F)
where
    F: FnOnce(String, strata_db::Catalog, Vec<Tenant>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (catalog_db, catalog) = test_catalog().await;
    let host = LocalHost {
        dir: std::env::temp_dir().join(unique("strata-http-")),
    };
    let mut tenants = Vec::new();
    for prefix in prefixes {
        tenants.push(provision_tenant(&catalog, &host, namespace, &unique(prefix)).await);
    }
    let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();
    let catalog_url = with_database(&env("STRATA_DATAPLANE_DATABASE_URL"), &catalog_db.name);
    // In a task, so a failed assertion still reaches the cleanup below.
    let result = tokio::spawn(scenario(catalog_url, catalog.clone(), tenants)).await;
    for id in ids {
        drop_tenant_storage(id).await;
    }
    let _ = std::fs::remove_dir_all(&host.dir);
    drop(catalog_db);
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// The `AppState` `main` builds, on the test's catalog, with short cache
/// TTLs and an HS256 secret for JWTs.
pub fn app_state(catalog_url: &str) -> AppState {
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
    AppState::from(Services {
        catalog: catalog.clone(),
        redis: None,
        http: HttpContext {
            auth: Authenticator::new(Some(jwt), None),
            cursors: CursorCodec::new(vec![9; 32], vec![]).expect("cursor key"),
            // Tests of other behaviour send bursts; tests/gateway.rs
            // sets its own limits.
            gateway: strata_dataplane::gateway::Gateway::unlimited(),
        },
        storage: strata_dataplane::storage::StorageState::unconfigured(catalog.clone()),
        tenancy,
    })
}

/// The real router served on 127.0.0.1 on a port of the kernel's choice;
/// stopped when dropped.
pub struct Server {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(state: AppState, max_body_bytes: usize) -> Self {
        let app = router(state, Arc::new(Default::default()), max_body_bytes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.expect("serve");
        });
        Self { base, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    /// Bytes with this content type (none when `None`).
    Raw(Option<&'static str>, Vec<u8>),
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body as JSON, `Null` when it is not.
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The target of `Link: <…>; rel="next"`, if any.
    pub fn next_link(&self) -> Option<String> {
        let link = self.header("link")?;
        let (target, params) = link.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.into(),
        }
    }

    /// Sends one request: `path` is absolute (`/v1/…`), `key` a bearer
    /// credential, `headers` added as given.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request
                .header("content-type", "application/json")
                .body(value.to_string()),
            Body::Raw(Some(content_type), bytes) => {
                request.header("content-type", content_type).body(bytes)
            }
            Body::Raw(None, bytes) => request.body(bytes),
        };
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.get_with(path, key, &[]).await
    }

    /// A GET with extra request headers (preconditions, ranges, …).
    pub async fn get_with(&self, path: &str, key: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, Some(key), Body::None, headers).await
    }

    pub async fn json(&self, method: &str, path: &str, key: &str, body: Value) -> Reply {
        self.send(method, path, Some(key), Body::Json(body), &[])
            .await
    }

    /// Accepts a tenant's admin invitation; the first API key.
    pub async fn accept_invitation(&self, tenant: &Tenant) -> String {
        let reply = self
            .send(
                "POST",
                &format!("/v1/tenants/{}/invitations/accept", tenant.name),
                None,
                Body::Json(json!({"token": tenant.token})),
                &[],
            )
            .await;
        assert_eq!(reply.status, 201, "accept: {}", reply.text);
        reply.json["key"]["key"]
            .as_str()
            .expect("first key")
            .to_string()
    }

    /// A new API key with `role`, made by `admin`.
    pub async fn new_key(&self, tenant: &str, admin: &str, role: &str) -> String {
        let reply = self
            .json(
                "POST",
                &format!("/v1/tenants/{tenant}/keys"),
                admin,
                json!({"name": format!("{role} key"), "role": role}),
            )
            .await;
        assert_eq!(reply.status, 201, "new key: {}", reply.text);
        reply.json["key"].as_str().expect("key").to_string()
    }
}

/// A problem body without its per-request `instance`.
pub fn without_instance(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut() {
        object.remove("instance");
    }
    body
}

/// What no response body may contain: SQL and internal names. Tests add
/// their own words and the other tenant's identity ([`Checked::new`]).
pub const INTERNAL_WORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE ",
    "DELETE FROM",
    "relation",
    "constraint",
    "violates",
    "duplicate key",
    "syntax error at",
    "pg_",
    "sqlx",
    "outbox",
    "collection_id",
    "strata_dataplane",
    "catalog.",
];

/// A client whose answers are checked: problems well formed (type, title,
/// status, code, `instance` = `X-Request-Id`), successes JSON, and no body
/// leaking internal words or the other tenant.
pub struct Checked {
    pub client: Client,
    leaks: Vec<String>,
}

impl Checked {
    /// `other` is the tenant whose name, id, database and owner role must
    /// never appear; `extra` are more words this test forbids.
    pub fn new(client: Client, other: &Tenant, extra: &[&str]) -> Self {
        let names = strata_operator::placement::TenantNames::for_tenant(other.id);
        let leaks = INTERNAL_WORDS
            .iter()
            .chain(extra)
            .map(|w| w.to_string())
            .chain([
                other.name.clone(),
                other.id.to_string(),
                names.database.as_str().to_string(),
                names.owner.as_str().to_string(),
            ])
            .collect();
        Self { client, leaks }
    }

    /// Asserts `reply` is the problem `code` with `status`, well formed,
    /// and leak-free; returns its body.
    pub fn problem(&self, reply: &Reply, status: u16, code: &str) -> Value {
        assert_eq!(reply.status, status, "{code}: {}", reply.text);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{}",
            reply.text
        );
        let body = &reply.json;
        assert_eq!(
            body["type"],
            format!("https://strata.dev/problems/{code}"),
            "{body}"
        );
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["code"], code, "{body}");
        let id = reply.header("x-request-id").expect("x-request-id");
        assert!(!id.is_empty());
        assert_eq!(body["instance"], id, "instance is the request id");
        self.no_leak(reply);
        body.clone()
    }

    /// A JSON answer with `status` (no body for 204), leak-free.
    pub fn ok(&self, reply: &Reply, status: u16) -> Value {
        assert_eq!(reply.status, status, "{}", reply.text);
        if status != 204 {
            assert_eq!(
                reply.header("content-type"),
                Some("application/json"),
                "{}",
                reply.text
            );
        }
        assert!(reply.header("x-request-id").is_some());
        self.no_leak(reply);
        reply.json.clone()
    }

    pub fn no_leak(&self, reply: &Reply) {
        for word in &self.leaks {
            assert!(
                !reply.text.contains(word.as_str()),
                "{word:?} leaked in {}",
                reply.text
            );
        }
    }

    /// The pointers of a problem's `errors`.
    pub fn pointers(body: &Value) -> Vec<String> {
        body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["pointer"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}
