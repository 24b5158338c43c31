//! The OpenAPI 3.1 document of the data plane's API, generated from the
//! handlers' `#[utoipa::path]` attributes and the types' `ToSchema` derives,
//! so the description cannot say something the code does not.
//!
//! Served at `GET /v1/openapi.json` and committed as `docs/openapi.json`;
//! `docs/problems.md` is generated from [`PROBLEM_KINDS`]. Both are written
//! by `make openapi` (the `openapi` binary) and a test fails when either
//! drifts from the code, as `make crds` does for the CRDs.
//!
//! Handlers list their success responses and the problem statuses specific
//! to them (`(status = 409, description = "…")`, no body). [`Finish`] then
//! gives every error response the `application/problem+json` content with
//! the [`Problem`] schema and the codes of that status, adds the statuses
//! every tenant route can answer (401, 404, 503, …), the `tenant` path
//! parameter and the security requirement. That keeps the attributes short
//! and the shared error behaviour described in one place.

pub mod documents;
pub mod storage;

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, Required, ResponseBuilder, Schema,
};
use utoipa::{Modify, OpenApi};

use crate::http::problem::{PROBLEM_JSON, PROBLEM_KINDS, ProblemKind};
use crate::http::{FieldError, Problem};
use crate::{documents as documents_api, identity, storage as storage_api, vectors};

/// Where the committed copies live, relative to the workspace root.
pub const OPENAPI_PATH: &str = "docs/openapi.json";
pub const PROBLEMS_PATH: &str = "docs/problems.md";

/// Names of the security schemes (both are `Authorization: Bearer …`).
const JWT_SCHEME: &str = "jwt";
const API_KEY_SCHEME: &str = "apiKey";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata data plane API",
        description = "Set by `Finish` from the code's constants.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // Relative: the document describes whichever data plane serves it.
    servers((url = "/", description = "The data plane serving this document")),
    paths(
        openapi_json,
        identity::invitations::accept,
        identity::keys::create,
        identity::keys::list,
        identity::keys::revoke,
        identity::members::list,
        identity::members::update,
        identity::members::remove,
        documents_api::routes::create_collection,
        documents_api::routes::list_collections,
        documents_api::routes::get_collection,
        documents_api::routes::update_collection,
        documents_api::routes::delete_collection,
        documents_api::routes::create_document,
        documents_api::routes::list_documents,
        documents_api::routes::query_documents,
        documents_api::routes::get_document,
        documents_api::routes::replace_document,
        documents_api::routes::patch_document,
        documents_api::routes::delete_document,
        documents_api::routes::bulk_documents,
        vectors::routes::upsert,
        vectors::routes::get_one,
        vectors::routes::delete_one,
        vectors::routes::delete_many,
        vectors::routes::search_collection,
        vectors::routes::search_across,
        crate::events::webhooks::endpoints::create,
        crate::events::webhooks::endpoints::list,
        crate::events::webhooks::endpoints::get,
        crate::events::webhooks::endpoints::update,
        crate::events::webhooks::endpoints::remove,
        crate::events::webhooks::endpoints::rotate_secret,
        crate::events::webhooks::endpoints::list_deliveries,
        crate::events::webhooks::endpoints::get_delivery,
        crate::events::webhooks::endpoints::replay_delivery,
        crate::events::admin::backlog,
        crate::events::admin::list_dead,
        crate::events::admin::replay_event,
        storage_api::routes::get_bucket,
        storage_api::routes::list_objects,
        storage_api::routes::put_object,
        storage_api::routes::get_object,
        storage_api::routes::head_object,
        storage_api::routes::delete_object,
        storage_api::routes::presign_url,
        storage_api::routes::rotate_signing_keys,
        storage_api::routes::create_upload,
        storage_api::routes::list_uploads,
        storage_api::routes::list_parts,
        storage_api::routes::upload_part,
        storage_api::routes::complete_upload,
        storage_api::routes::abort_upload,
        crate::media::routes::render,
        crate::media::routes::sign_url,
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "collections", description = "Collections: documents with an optional JSON Schema, indexed fields, and an optional vector configuration."),
        (name = "documents", description = "JSON documents: CRUD with ETags and preconditions, merge patch, bulk, filtered and sorted lists with keyset pagination."),
        (name = "events", description = "The tenant's event backlog, dead-lettered events and their replay (docs/events.md)."),
        (name = "invitations", description = "Accepting the invitation the operator issues for a tenant's first admin."),
        (name = "keys", description = "API keys: created by an admin, shown once, revoked at once on every replica."),
        (name = "members", description = "Who belongs to a tenant and with which role."),
        (name = "meta", description = "This description of the API."),
        (name = "buckets", description = "Buckets (made by the operator from Bucket resources): their rules and usage."),
        (name = "objects", description = "Objects: streamed uploads and downloads with ranges, preconditions, copy, listings with prefixes, presigned URLs. Bytes of any type, not JSON."),
        (name = "uploads", description = "Multipart uploads: parts of at least 5 MiB (but the last), completed into one object without copying."),
        (name = "webhooks", description = "Webhook endpoints: Standard Webhooks signatures, event-type filters, secret rotation, every delivery attempt recorded."),
        (name = "vectors", description = "Vectors of a collection (its dimension and metric), top-k search in one collection and across several."),
    ),
    modifiers(&Finish),
)]
struct ApiDoc;

/// The document as served and committed.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// `docs/openapi.json`: pretty JSON with a final newline (what
/// `make openapi` writes and the drift test compares byte for byte).
pub fn document_json() -> String {
    // Serialising the in-memory document (strings, maps) cannot fail.
    let mut json = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// The OpenAPI document of this API (this file).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "meta",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
)]
pub async fn openapi_json() -> Response {
    // Built once: the document is a function of the binary.
    static JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(document_json);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            // Changes only with a deployment; clients may keep it a while.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        JSON.as_str(),
    )
        .into_response()
}

/// Statuses any route under `/v1/tenants/{tenant}` can answer, whatever the
/// handler does: from the credential and tenant checks
/// (`tenancy::TenantContext`), the extractors and the shared middleware.
const TENANT_ROUTE_STATUSES: &[(u16, &str)] = &[
    (400, "A malformed parameter"),
    (401, "No credential, or a malformed, expired or revoked one"),
    (
        403,
        "The role does not allow this action, or the tenant is suspended",
    ),
    (
        404,
        "No such resource for this credential (also when the tenant or the resource belongs to someone else)",
    ),
    (406, "`Accept` excludes JSON"),
    (408, "The request took longer than the limit"),
    (
        429,
        "A rate limit was reached (the credential's, the tenant's, or the client address's without a credential); see `Retry-After`",
    ),
    (500, "Unexpected error; quote `instance`"),
    (
        503,
        "The tenant is not ready yet, or a dependency is unavailable; see `Retry-After`",
    ),
];

/// Statuses of any route that reads a JSON body.
const BODY_STATUSES: &[(u16, &str)] = &[
    (400, "The body is not valid JSON or nests too deep"),
    (413, "The body exceeds the size limit"),
    (415, "The body's `Content-Type` is not JSON"),
    (
        422,
        "The body is well-formed JSON but invalid; `errors` lists each field",
    ),
];

struct Finish;

impl Modify for Finish {
    fn modify(&self, doc: &mut Document) {
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.info.description = Some(introduction());

        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            JWT_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 with the configured secret, or RS256/ES256 from the configured JWKS) with claims `tenant`, `sub`, `role`, `exp`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_<id>_<secret>")
                    .description(Some(
                        "An API key of the tenant, sent as a bearer token: `Authorization: Bearer sk_<id>_<secret>`.",
                    ))
                    .build(),
            ),
        );
        narrow_code_schema(components.schemas.get_mut("Problem"));

        // Before the loop below, which gives the 409/422 it adds their problem schema.
        crate::http::idempotency::document(doc);
        for (path, item) in doc.paths.paths.iter_mut() {
            let tenant_route = path.contains("{tenant}");
            for operation in operations(item) {
                finish_operation(operation, path, tenant_route);
            }
        }
    }
}

/// The operations of a path item, whatever their method.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn finish_operation(operation: &mut Operation, path: &str, tenant_route: bool) {
    // `security(())` in an attribute means "no credential": an empty list
    // overrides the document's default (an empty object would mean
    // "credential optional").
    let public = operation
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
    if public {
        operation.security = Some(Vec::new());
    } else if tenant_route {
        operation.security = Some(vec![
            SecurityRequirement::new(JWT_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
        ]);
    }

    // Path parameters the handler did not describe itself, in path order.
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    let names: Vec<&str> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    for (position, name) in names.into_iter().enumerate() {
        let declared = parameters
            .iter()
            .any(|p| p.name == name && p.parameter_in == ParameterIn::Path);
        if !declared && let Some(parameter) = standard_path_parameter(name, path) {
            parameters.insert(position.min(parameters.len()), parameter);
        }
    }

    let mut defaults: Vec<(u16, &str)> = Vec::new();
    if tenant_route {
        defaults.extend(TENANT_ROUTE_STATUSES.iter().filter(|(status, _)| {
            // A route without a credential cannot fail on one.
            !(public && matches!(status, 401 | 403))
        }));
    }
    if operation.request_body.is_some() {
        defaults.extend(BODY_STATUSES);
    }
    // Shared causes of one status are joined; a status the handler
    // describes keeps the handler's words (it knows the case better).
    let mut shared: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for (status, description) in defaults {
        shared.entry(status).or_default().push(description);
    }
    let responses = &mut operation.responses.responses;
    for (status, descriptions) in shared {
        responses.entry(status.to_string()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(descriptions.join("; or: "))
                    .build(),
            )
        });
    }
    // Statuses in numeric order, as readers expect.
    let sorted: BTreeMap<String, RefOr<utoipa::openapi::Response>> =
        std::mem::take(responses).into_iter().collect();
    for (status, mut response) in sorted {
        if let (Ok(code), RefOr::T(response)) = (status.parse::<u16>(), &mut response)
            && code >= 400
            && response.content.is_empty()
        {
            describe_problem(response, code);
        }
        responses.insert(status, response);
    }
}

/// The path parameters many routes share, described once.
fn standard_path_parameter(name: &str, path: &str) -> Option<Parameter> {
    let (description, max_length) = match name {
        "tenant" => (
            "The tenant's name (its `Tenant` resource's `metadata.name`). A credential of another tenant gets 404.",
            63,
        ),
        "collection" => ("The collection's name: 1 to 128 of `A-Z a-z 0-9 _ -`.", 128),
        "bucket" => (
            "The bucket's name (its Bucket resource's name: 3 to 63 of `a-z 0-9 . -`). Another tenant's bucket gets 404.",
            63,
        ),
        "id" if path.contains("/documents/") => (
            "The document's id: 1 to 128 of `A-Z a-z 0-9 _ - . :`, starting with a letter, a digit or `_` (server-chosen ids are UUIDv7).",
            128,
        ),
        "id" if path.contains("/vectors/") => (
            "The vector's id: 1 to 256 bytes without control characters (URL-encoded).",
            256,
        ),
        _ => return None,
    };
    Some(
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(description))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .max_length(Some(max_length)),
            ))
            .build(),
    )
}

/// An error response: problem+json with the [`Problem`] schema, and the
/// codes that status can carry, each linked to its documentation.
fn describe_problem(response: &mut utoipa::openapi::Response, status: u16) {
    let kinds: Vec<&ProblemKind> = PROBLEM_KINDS
        .iter()
        .filter(|k| k.status.as_u16() == status)
        .collect();
    let codes = kinds
        .iter()
        // Plain code names, not links: the `type` URIs are identifiers, and
        // the introduction's table (and docs/problems.md) says what each means.
        .map(|k| format!("`{}`", k.code))
        .collect::<Vec<_>>()
        .join(", ");
    if !codes.is_empty() {
        response.description = format!("{} (problem: {codes})", response.description);
    }
    let mut content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem")));
    if let Some(kind) = kinds.first() {
        content = content.example(Some(serde_json::json!({
            "type": kind.type_uri(),
            "title": kind.title,
            "status": status,
            "detail": kind.description,
            "instance": "0197a6f0-3b1c-7d2e-9f00-4c5d6e7f8a9b",
            "code": kind.code,
        })));
    }
    response
        .content
        .insert(PROBLEM_JSON.to_string(), content.build());
}

/// `Problem.code` is one of the documented kinds.
fn narrow_code_schema(problem: Option<&mut RefOr<Schema>>) {
    let Some(RefOr::T(Schema::Object(object))) = problem else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(code))) = object.properties.get_mut("code") {
        code.enum_values = Some(
            PROBLEM_KINDS
                .iter()
                .map(|k| serde_json::Value::from(k.code))
                .collect(),
        );
    }
}

/// The document's introduction: conventions, and every problem kind (so the
/// `/docs` page lists them without the network).
fn introduction() -> String {
    let mut text = String::from(
        "The tenant-facing REST API of Strata's data plane. Every route is under \
`/v1/tenants/{tenant}/` and takes `Authorization: Bearer <JWT or API key>` (the \
invitation accept excepted: its token is the credential). A credential of another \
tenant gets 404, never 403. Bodies are JSON; lists are keyset-paginated (`limit`, \
opaque `cursor`, `Link: rel=\"next\"`).\n\n\
## Errors\n\n\
Every error is an RFC 9457 problem document (`application/problem+json`, schema \
`Problem`) whose `type` is `https://strata.dev/problems/<code>` and whose `instance` \
is the request id. `code` is stable: switch on it. The kinds:\n\n\
| status | code | title | when |\n| --- | --- | --- | --- |\n",
    );
    for kind in PROBLEM_KINDS {
        text.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            kind.status.as_u16(),
            kind.code,
            kind.title,
            kind.description.replace('|', "\\|")
        ));
    }
    text
}

/// `docs/problems.md`, generated from [`PROBLEM_KINDS`]: one section per
/// `type` URI, whose last segment is the section's anchor.
pub fn problems_markdown() -> String {
    let mut text = String::from(
        "<!-- Generated from dataplane/src/http/problem.rs (PROBLEM_KINDS) by `make openapi`; do not edit. -->\n\
# Problem types\n\n\
Every error response of the data plane's API is an RFC 9457 problem document\n\
(`Content-Type: application/problem+json`):\n\n\
```json\n\
{\n  \"type\": \"https://strata.dev/problems/validation-failed\",\n  \"title\": \"Validation failed\",\n  \"status\": 422,\n  \"detail\": \"1 field is invalid\",\n  \"instance\": \"<request id>\",\n  \"code\": \"validation-failed\",\n  \"errors\": [{\"pointer\": \"/vector/3\", \"message\": \"must be a finite number\"}]\n}\n\
```\n\n\
- `type` is `https://strata.dev/problems/<code>`; `<code>` is the heading of its\n  section below.\n\
- `code` is stable: a code is never renamed or reused, so clients may switch on it.\n\
- `instance` is the request id (also the `x-request-id` response header): quote it\n  when reporting a problem; operators find the request in the logs by it.\n\
- `errors` (400 `invalid-parameter`, 422 `validation-failed`) lists each offending\n  field by JSON pointer (`#/query/<name>`, `#/path/<name>`, `#/header/<name>` for\n  parameters).\n\
- Nothing internal (SQL, stack traces, other tenants' names) is ever in a problem.\n\n\
| status | code | title |\n| --- | --- | --- |\n",
    );
    for kind in PROBLEM_KINDS {
        text.push_str(&format!(
            "| {} | [`{}`](#{}) | {} |\n",
            kind.status.as_u16(),
            kind.code,
            kind.code,
            kind.title
        ));
    }
    for kind in PROBLEM_KINDS {
        let status = kind.status;
        text.push_str(&format!(
            "\n## {}\n\n`{}` · {} {}\n\n{}\n",
            kind.code,
            kind.type_uri(),
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            kind.description
        ));
        if let Some(extra) = status_notes(status) {
            text.push_str(&format!("\n{extra}\n"));
        }
    }
    text
}

/// What a client should know about a status beyond the kind's description.
fn status_notes(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        401 => "The response has `WWW-Authenticate: Bearer realm=\"strata\"`.",
        405 => "The response has `Allow`.",
        429 => {
            "The response has `Retry-After` (seconds). Every rate-limited response, 429 or not, has the IETF `RateLimit-Policy` header (each limit: `\"credential\";q=200;w=1` is 200 requests per second) and `RateLimit` (the limit closest to refusing: `r` requests remaining, `t` seconds until it is whole again)."
        }
        503 => "The response may have `Retry-After` (seconds).",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use super::*;

    fn workspace_file(relative: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative)
    }

    fn assert_committed(relative: &str, generated: &str) {
        let committed = std::fs::read_to_string(workspace_file(relative))
            .unwrap_or_else(|e| panic!("{relative} is missing ({e}); run `make openapi`"));
        assert!(
            committed == generated,
            "{relative} is stale: the handlers, types or problem kinds changed; \
             run `make openapi` and commit the result"
        );
    }

    /// `docs/openapi.json` must be exactly what the code generates.
    #[test]
    fn committed_openapi_matches_the_code() {
        assert_committed(OPENAPI_PATH, &document_json());
    }

    /// `docs/problems.md` must be exactly what `PROBLEM_KINDS` generates.
    #[test]
    fn committed_problem_docs_match_the_kinds() {
        assert_committed(PROBLEMS_PATH, &problems_markdown());
    }

    #[test]
    fn document_is_openapi_3_1_with_unique_operation_ids() {
        let json: serde_json::Value = serde_json::from_str(&document_json()).expect("valid JSON");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let mut ids = HashSet::new();
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{method} {path} has no tag"
                );
                // Every `{param}` of the path is declared.
                for segment in path.split('/') {
                    if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    {
                        let declared = op["parameters"].as_array().is_some_and(|ps| {
                            ps.iter().any(|p| p["name"] == name && p["in"] == "path")
                        });
                        assert!(
                            declared,
                            "{method} {path}: path parameter {name} undeclared"
                        );
                    }
                }
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if status.parse::<u16>().expect("numeric status") >= 400 {
                        assert_eq!(
                            response["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    fn router() -> axum::Router {
        // Lazy pools: no request below reaches a database.
        let catalog = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let state = crate::app::AppState::from(crate::app::Services {
            catalog: catalog.clone(),
            redis: None,
            http: crate::http::HttpContext {
                auth: crate::http::auth::Authenticator::new(None, None),
                cursors: crate::http::pagination::CursorCodec::new(vec![0; 32], vec![])
                    .expect("key"),
                gateway: crate::gateway::Gateway::unlimited(),
            },
            storage: crate::storage::StorageState::unconfigured(catalog.clone()),
            tenancy: crate::tenancy::Tenancy::new(
                catalog,
                crate::tenancy::TenancySettings::new(sqlx::postgres::PgConnectOptions::new()),
            ),
        });
        crate::app::router(state, Default::default(), 1 << 20)
    }

    /// Every documented operation is served: without a credential it gets
    /// the 401 (or, where no credential is needed, a 2xx or a 422 for the
    /// empty body), never the router's 404 or 405.
    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        use axum::body::Body;
        use tower::ServiceExt;

        let json: serde_json::Value = serde_json::from_str(&document_json()).expect("valid JSON");
        let app = router();
        for (path, item) in json["paths"].as_object().expect("paths") {
            let uri: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in item.as_object().expect("path item").keys() {
                let request = axum::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .expect("request");
                let status = app
                    .clone()
                    .oneshot(request)
                    .await
                    .expect("response")
                    .status();
                assert!(
                    [401, 422, 200].contains(&status.as_u16()),
                    "{method} {path} answered {status}: not routed as documented"
                );
            }
        }
    }

    /// Every route the code mounts under `/v1/` is documented. axum cannot
    /// list its routes, so this reads the `.route("/v1/…"` calls in the
    /// sources (tests excluded).
    #[test]
    fn every_mounted_route_is_documented() {
        let json: serde_json::Value = serde_json::from_str(&document_json()).expect("valid JSON");
        let documented = json["paths"].as_object().expect("paths");
        let mut files = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut found = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("read_dir") {
                    files.push(entry.expect("entry").path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("source");
            let code = source.split("#[cfg(test)]").next().unwrap_or_default();
            for chunk in code.split(".route(").skip(1) {
                let literal = chunk
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|s| s.split('"').next());
                if let Some(route) = literal.filter(|r| r.starts_with("/v1/")) {
                    found += 1;
                    // axum's catch-all `{*key}` is OpenAPI's `{key}`.
                    let route = &route.replace("{*", "{");
                    assert!(
                        documented.contains_key(route),
                        "{route} ({}) is mounted but not in the OpenAPI document: \
                         add #[utoipa::path] to its handlers and list them in openapi.rs",
                        path.display()
                    );
                }
            }
        }
        assert!(found >= 5, "the scan found only {found} routes");
    }

    #[test]
    fn every_problem_kind_is_documented_with_its_type_uri() {
        let markdown = problems_markdown();
        let intro = introduction();
        for kind in PROBLEM_KINDS {
            assert!(markdown.contains(&format!("\n## {}\n", kind.code)));
            assert!(markdown.contains(&kind.type_uri()));
            assert!(intro.contains(&format!("`{}`", kind.code)));
        }
    }
}
