//! The per-route policy table: for every route of the data plane (method +
//! path template), who may call it, whether its answers go through the
//! output cache (and how), which rate limits count it, how large a body it
//! takes and how long it may take. One table, in code, read by
//! [`enforce`] (body limits, timeouts), by the output cache
//! ([`super::output_cache`]) and by `strata-dataplane routes`.
//!
//! A `GET` row covers `HEAD` too (axum answers HEAD with the GET handler).
//! `tests::every_route_has_a_policy` fails when a mounted route has no row
//! (or a row names no mounted route).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::http::authz::{Action, Resource};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential needed or read (probes, docs, the OpenAPI document,
    /// invitation acceptance: its token is in the body).
    Public,
    /// A credential of the path's tenant (API key or JWT).
    Authenticated,
    /// A credential, or a public bucket, or a presigned / signed URL.
    PublicOrSigned,
}

/// What varies a cached answer (the output cache's key holds each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vary {
    /// The tenant's catalog id.
    Tenant,
    /// The caller's role (never the credential itself).
    Role,
    Accept,
    AcceptEncoding,
    /// The query string, its pairs sorted.
    Query,
}

impl Vary {
    fn label(self) -> &'static str {
        match self {
            Vary::Tenant => "tenant",
            Vary::Role => "role",
            Vary::Accept => "accept",
            Vary::AcceptEncoding => "accept-encoding",
            Vary::Query => "query",
        }
    }
}

/// A cache tag a cached answer carries: a tag name of
/// [`crate::cache::invalidation`] and the path parameters that name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagTemplate {
    pub name: &'static str,
    pub params: &'static [&'static str],
}

/// How an answer may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long an entry is served (invalidation by tag ends it sooner).
    pub ttl: Duration,
    pub vary: &'static [Vary],
    /// Tags besides the tenant-wide one every tenant entry carries.
    pub tags: &'static [TagTemplate],
    /// `Cache-Control: public` (shared caches, CDNs) rather than `private`.
    pub public: bool,
    /// The permission a cached answer is served under (checked on every
    /// hit, after authentication); `None` on public routes.
    pub permission: Option<(Resource, Action)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputCache {
    Off,
    On(CachePolicy),
}

/// Which rate limits count a request ([`super::ratelimit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimit {
    /// Not limited (probes and the docs page: outside the API layers).
    None,
    /// Per client IP (no credential).
    Ip,
    /// Per credential and per tenant; per client IP without a credential.
    Principal,
    /// As [`RateLimit::Principal`], plus the class's own, stricter limit:
    /// per credential (per client IP without one), shared by every route
    /// of the class, so one caller cannot spend the whole tenant quota on
    /// renders or searches.
    Class(RouteClass),
}

impl RateLimit {
    /// The route's own limit, if it has one.
    pub fn class(self) -> Option<RouteClass> {
        match self {
            RateLimit::Class(class) => Some(class),
            _ => None,
        }
    }
}

/// A limit of its own for a class of routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteClass {
    /// The policy's name in the `RateLimit-Policy` header.
    pub name: &'static str,
    /// Requests per second (and burst) per credential or client IP.
    pub per_second: u32,
}

/// Routes whose one request costs far more than a read: image renders
/// (decode, resize, encode), vector searches, bulk writes of up to 1000
/// operations. A quarter of the default per-credential rate.
pub const EXPENSIVE: RouteClass = RouteClass {
    name: "expensive",
    per_second: 50,
};

/// The `Cache-Control` of a route's answers, set by [`enforce`] (so this
/// table is the one place that says it; handlers' own values are
/// rewritten to fit). Applied to 2xx and 304 answers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheControl {
    /// Whatever the handler says (probes; the docs assets, which are
    /// versioned by a content hash and immutable; invitation acceptance).
    Handler,
    /// Authenticated answers: never `public`. A handler's `public` and
    /// `s-maxage` become `private`; an answer without the header gets
    /// `private, no-cache` (a browser may keep it but revalidates: its
    /// `Last-Modified` must not feed heuristic freshness).
    Private,
    /// The same for everyone: `public, max-age=N`.
    Public(Duration),
    /// Objects and renders: without a credential (public bucket, presigned
    /// or signed URL) `public, max-age=M` with M the least of N, the
    /// object's own `max-age` and the seconds the URL has left (a CDN never
    /// serves a URL past its expiry); an object's own `private`,
    /// `no-cache` or `no-store` stays. With a credential: as `Private`.
    Shared(Duration),
}

/// The largest request body a route takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimit {
    /// The route reads no body (not enforced: the body is never read).
    None,
    /// `--max-body-bytes` (JSON and other buffered bodies).
    Configured,
    /// A fixed bound, below the configured one (enforced by [`enforce`]).
    Bytes(u64),
    /// Streamed to storage, bounded by the bucket's rules and quota.
    Streamed,
}

/// The longest a request may take to its response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// A fixed bound, enforced by [`enforce`] (and by the API router's
    /// 30 s layer for API routes).
    Fixed(Duration),
    /// `--object-request-timeout-seconds` (the storage router's layer).
    Objects,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutePolicy {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub cache: OutputCache,
    pub rate: RateLimit,
    pub body: BodyLimit,
    pub timeout: Timeout,
    pub cache_control: CacheControl,
}

/// The API router's timeout (`app::REQUEST_TIMEOUT`).
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

use Access::{Authenticated as AUTH, Public as PUBLIC, PublicOrSigned as SIGNED};
use BodyLimit::{Configured as JSON, None as NO_BODY, Streamed as STREAM};
use CacheControl::{Handler as OWN, Private as PRIV};
use RateLimit::{Ip as IP, None as UNLIMITED, Principal as PRINCIPAL};

/// Expensive routes: their own limit besides the principal's.
const COSTLY: RateLimit = RateLimit::Class(EXPENSIVE);
/// Documentation (the docs page, the OpenAPI document): changes only with
/// a deploy; five minutes of staleness after one is acceptable.
const DOCS: CacheControl = CacheControl::Public(Duration::from_secs(300));
/// Public-bucket objects and signed URLs in shared caches (CDNs): an
/// overwrite or a bucket made private is seen by them within a minute.
const CDN: CacheControl = CacheControl::Shared(Duration::from_secs(60));
use Vary::{Accept, AcceptEncoding, Query, Role, Tenant};

const API: Timeout = Timeout::Fixed(API_TIMEOUT);
const OBJECTS: Timeout = Timeout::Objects;
const PROBE: Timeout = Timeout::Fixed(Duration::from_secs(10));
const OFF: OutputCache = OutputCache::Off;
/// Invitation tokens and other small JSON bodies.
const SMALL: BodyLimit = BodyLimit::Bytes(64 * 1024);

const fn tag(name: &'static str, params: &'static [&'static str]) -> TagTemplate {
    TagTemplate { name, params }
}

/// Per tenant and role: what authenticated reads vary on.
const PRIVATE_VARY: &[Vary] = &[Tenant, Role, Accept, AcceptEncoding, Query];

/// `GET …/collections`: changed by any collection event.
const COLLECTION_LIST: OutputCache = OutputCache::On(CachePolicy {
    ttl: Duration::from_secs(60),
    vary: PRIVATE_VARY,
    tags: &[tag("collections", &[])],
    public: false,
    permission: Some((Resource::Collections, Action::Read)),
});

/// `GET …/collections/{collection}`.
const COLLECTION: OutputCache = OutputCache::On(CachePolicy {
    ttl: Duration::from_secs(60),
    vary: PRIVATE_VARY,
    tags: &[tag("collection", &["collection"])],
    public: false,
    permission: Some((Resource::Collections, Action::Read)),
});

/// `GET …/collections/{collection}/documents` (lists, filters, pages).
const DOCUMENT_LIST: OutputCache = OutputCache::On(CachePolicy {
    ttl: Duration::from_secs(30),
    vary: PRIVATE_VARY,
    tags: &[
        tag("collection", &["collection"]),
        tag("documents", &["collection"]),
    ],
    public: false,
    permission: Some((Resource::Documents, Action::Read)),
});

/// `GET …/documents/{id}`: one document (under it, the handler's own
/// document cache; a hit here skips the handler and the serialisation).
const DOCUMENT: OutputCache = OutputCache::On(CachePolicy {
    ttl: Duration::from_secs(30),
    vary: PRIVATE_VARY,
    tags: &[
        tag("collection", &["collection"]),
        tag("document", &["collection", "id"]),
    ],
    public: false,
    permission: Some((Resource::Documents, Action::Read)),
});

/// The OpenAPI document: the same for everyone, changed only by a deploy.
const OPENAPI: OutputCache = OutputCache::On(CachePolicy {
    ttl: Duration::from_secs(300),
    vary: &[Accept, AcceptEncoding, Query],
    tags: &[],
    public: true,
    permission: None,
});

#[allow(clippy::too_many_arguments)]
const fn row(
    method: &'static str,
    path: &'static str,
    access: Access,
    cache: OutputCache,
    rate: RateLimit,
    body: BodyLimit,
    timeout: Timeout,
    cache_control: CacheControl,
) -> RoutePolicy {
    RoutePolicy {
        method,
        path,
        access,
        cache,
        rate,
        body,
        timeout,
        cache_control,
    }
}

macro_rules! t {
    ($rest:literal) => {
        concat!("/v1/tenants/{tenant}", $rest)
    };
}

/// Every route. Keep it sorted by area; `strata-dataplane routes` prints it.
#[rustfmt::skip]
pub const ROUTES: &[RoutePolicy] = &[
    //  method    path                                                       access  output cache    rate limit  body     timeout  cache-control
    // Probes and documentation.
    row("GET",    "/healthz",                                                PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   OWN),
    row("GET",    "/readyz",                                                 PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   OWN),
    row("GET",    "/metrics",                                                PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   OWN),
    row("GET",    "/docs",                                                   PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   DOCS),
    row("GET",    "/docs/assets/redoc.standalone.js",                        PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   OWN),
    row("GET",    "/docs/assets/init.js",                                    PUBLIC, OFF,            UNLIMITED,  NO_BODY, PROBE,   OWN),
    row("GET",    "/v1/openapi.json",                                        PUBLIC, OPENAPI,        IP,         NO_BODY, API,     DOCS),
    // Identity.
    row("POST",   t!("/keys"),                                               AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("GET",    t!("/keys"),                                               AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("DELETE", t!("/keys/{id}"),                                          AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/members"),                                            AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("PATCH",  t!("/members/{subject}"),                                  AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("DELETE", t!("/members/{subject}"),                                  AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/invitations/accept"),                                 PUBLIC, OFF,            IP,         SMALL,   API,     OWN),
    // Documents.
    row("POST",   t!("/collections"),                                        AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("GET",    t!("/collections"),                                        AUTH,   COLLECTION_LIST, PRINCIPAL, NO_BODY, API,     PRIV),
    row("GET",    t!("/collections/{collection}"),                           AUTH,   COLLECTION,     PRINCIPAL,  NO_BODY, API,     PRIV),
    row("PATCH",  t!("/collections/{collection}"),                           AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("DELETE", t!("/collections/{collection}"),                           AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/collections/{collection}/documents"),                 AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("GET",    t!("/collections/{collection}/documents"),                 AUTH,   DOCUMENT_LIST,  PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/collections/{collection}/documents/{id}"),            AUTH,   DOCUMENT,       PRINCIPAL,  NO_BODY, API,     PRIV),
    row("PUT",    t!("/collections/{collection}/documents/{id}"),            AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("PATCH",  t!("/collections/{collection}/documents/{id}"),            AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("DELETE", t!("/collections/{collection}/documents/{id}"),            AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/collections/{collection}/query"),                     AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("POST",   t!("/collections/{collection}/bulk"),                      AUTH,   OFF,            COSTLY,     JSON,    API,     PRIV),
    // Vectors.
    row("POST",   t!("/collections/{collection}/vectors"),                   AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("PUT",    t!("/collections/{collection}/vectors"),                   AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("POST",   t!("/collections/{collection}/vectors/delete"),            AUTH,   OFF,            PRINCIPAL,  JSON,    API,     PRIV),
    row("GET",    t!("/collections/{collection}/vectors/delete"),            AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/collections/{collection}/vectors/{id}"),              AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("DELETE", t!("/collections/{collection}/vectors/{id}"),              AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/collections/{collection}/search"),                    AUTH,   OFF,            COSTLY,     JSON,    API,     PRIV),
    row("POST",   t!("/search"),                                             AUTH,   OFF,            COSTLY,     JSON,    API,     PRIV),
    // Events and webhooks.
    row("POST",   t!("/webhooks"),                                           AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("GET",    t!("/webhooks"),                                           AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/webhooks/{id}"),                                      AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("PATCH",  t!("/webhooks/{id}"),                                      AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("DELETE", t!("/webhooks/{id}"),                                      AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/webhooks/{id}/rotate-secret"),                        AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("GET",    t!("/webhooks/{id}/deliveries"),                           AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/webhooks/{id}/deliveries/{delivery}"),                AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/webhooks/{id}/deliveries/{delivery}/replay"),         AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    row("GET",    t!("/events/backlog"),                                     AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("GET",    t!("/events/dead"),                                        AUTH,   OFF,            PRINCIPAL,  NO_BODY, API,     PRIV),
    row("POST",   t!("/events/{event}/replay"),                              AUTH,   OFF,            PRINCIPAL,  SMALL,   API,     PRIV),
    // Storage (own router: streamed bodies, the object timeout).
    row("GET",    t!("/buckets/{bucket}"),                                   AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("GET",    t!("/buckets/{bucket}/objects"),                           AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("GET",    t!("/buckets/{bucket}/objects/{*key}"),                    SIGNED, OFF,            PRINCIPAL,  NO_BODY, OBJECTS, CDN),
    row("PUT",    t!("/buckets/{bucket}/objects/{*key}"),                    SIGNED, OFF,            PRINCIPAL,  STREAM,  OBJECTS, PRIV),
    row("DELETE", t!("/buckets/{bucket}/objects/{*key}"),                    AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("POST",   t!("/buckets/{bucket}/presign"),                           AUTH,   OFF,            PRINCIPAL,  JSON,    OBJECTS, PRIV),
    row("POST",   t!("/buckets/{bucket}/uploads"),                           AUTH,   OFF,            PRINCIPAL,  JSON,    OBJECTS, PRIV),
    row("GET",    t!("/buckets/{bucket}/uploads"),                           AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("GET",    t!("/buckets/{bucket}/uploads/{upload}"),                  AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("POST",   t!("/buckets/{bucket}/uploads/{upload}"),                  AUTH,   OFF,            PRINCIPAL,  JSON,    OBJECTS, PRIV),
    row("DELETE", t!("/buckets/{bucket}/uploads/{upload}"),                  AUTH,   OFF,            PRINCIPAL,  NO_BODY, OBJECTS, PRIV),
    row("PUT",    t!("/buckets/{bucket}/uploads/{upload}/parts/{part}"),     AUTH,   OFF,            PRINCIPAL,  STREAM,  OBJECTS, PRIV),
    row("GET",    t!("/buckets/{bucket}/render/{*key}"),                     SIGNED, OFF,            COSTLY,     NO_BODY, OBJECTS, CDN),
    row("POST",   t!("/buckets/{bucket}/render-urls"),                       AUTH,   OFF,            PRINCIPAL,  JSON,    OBJECTS, PRIV),
    row("POST",   t!("/signing-keys/rotate"),                                AUTH,   OFF,            PRINCIPAL,  SMALL,   OBJECTS, PRIV),
];

/// The row of `method` on the route template `path` (HEAD reads GET's).
pub fn lookup(method: &Method, path: &str) -> Option<&'static RoutePolicy> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    BY_ROUTE.get(method)?.get(path).copied()
}

/// [`ROUTES`] by method, then template: every request looks its row up
/// (policy, output cache), so not by a scan. The first row wins, as in
/// the table.
static BY_ROUTE: LazyLock<HashMap<&str, HashMap<&str, &RoutePolicy>>> = LazyLock::new(|| {
    let mut rows: HashMap<&str, HashMap<&str, &RoutePolicy>> = HashMap::new();
    for row in ROUTES {
        rows.entry(row.method)
            .or_default()
            .entry(row.path)
            .or_insert(row);
    }
    rows
});

/// Middleware over every route: applies the row's fixed body limit (by
/// `Content-Length`; streamed bodies are bounded where they are read),
/// fixed timeout (to the response head) and `Cache-Control`
/// ([`super::cache_control`]). Routes without a row, and
/// methods a route does not have, pass untouched (the router answers).
pub async fn enforce(request: Request, next: Next) -> Response {
    let Some(policy) = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| lookup(request.method(), path.as_str()))
    else {
        return next.run(request).await;
    };
    let id = request
        .extensions()
        .get::<crate::http::request_id::RequestId>()
        .cloned();
    if let BodyLimit::Bytes(limit) = policy.body {
        let length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|length| length > limit) {
            let response = ApiError::PayloadTooLarge { limit: Some(limit) }.into_response();
            return crate::http::finish_problem(response, id);
        }
    }
    let has_credential = request.headers().contains_key(header::AUTHORIZATION);
    let query = request.uri().query().map(str::to_string);
    let mut response = match policy.timeout {
        Timeout::Fixed(limit) => match tokio::time::timeout(limit, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                return crate::http::finish_problem(
                    axum::http::StatusCode::REQUEST_TIMEOUT.into_response(),
                    id,
                );
            }
        },
        Timeout::Objects => next.run(request).await,
    };
    let status = response.status();
    if status.is_success() || status == axum::http::StatusCode::NOT_MODIFIED {
        super::cache_control::apply(
            policy.cache_control,
            response.headers_mut(),
            has_credential,
            query.as_deref(),
            std::time::SystemTime::now(),
        );
    }
    response
}

fn access_label(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Authenticated => "authenticated",
        Access::PublicOrSigned => "public bucket, signed URL or credential",
    }
}

fn cache_label(cache: &OutputCache) -> String {
    match cache {
        OutputCache::Off => "off".into(),
        OutputCache::On(policy) => {
            let vary: Vec<&str> = policy.vary.iter().map(|v| v.label()).collect();
            let mut tags: Vec<String> = Vec::new();
            if policy.vary.contains(&Vary::Tenant) {
                tags.push("all".into());
            }
            for tag in policy.tags {
                if tag.params.is_empty() {
                    tags.push(tag.name.into());
                } else {
                    let params: Vec<String> =
                        tag.params.iter().map(|p| format!("{{{p}}}")).collect();
                    tags.push(format!("{}:{}", tag.name, params.join(":")));
                }
            }
            format!(
                "{} {}s; vary {}; tags {}",
                if policy.public { "public" } else { "private" },
                policy.ttl.as_secs(),
                vary.join(", "),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(", ")
                }
            )
        }
    }
}

fn rate_label(rate: RateLimit) -> String {
    match rate {
        RateLimit::None => "none".into(),
        RateLimit::Ip => "ip".into(),
        RateLimit::Principal => "credential, tenant (ip without one)".into(),
        RateLimit::Class(class) => format!(
            "credential, tenant, {} {}/s (ip without one)",
            class.name, class.per_second
        ),
    }
}

fn body_label(body: BodyLimit) -> String {
    match body {
        BodyLimit::None => "none".into(),
        BodyLimit::Configured => "--max-body-bytes".into(),
        BodyLimit::Bytes(n) => format!("{} KiB", n / 1024),
        BodyLimit::Streamed => "streamed".into(),
    }
}

fn timeout_label(timeout: Timeout) -> String {
    match timeout {
        Timeout::Fixed(d) => format!("{}s", d.as_secs()),
        Timeout::Objects => "--object-request-timeout-seconds".into(),
    }
}

/// The table as text (`strata-dataplane routes`): one line per route,
/// columns separated by tabs when `tsv`, aligned otherwise.
pub fn render(tsv: bool) -> String {
    let header = [
        "METHOD",
        "PATH",
        "ACCESS",
        "OUTPUT CACHE",
        "RATE LIMIT",
        "BODY",
        "TIMEOUT",
        "CACHE-CONTROL",
    ];
    let rows: Vec<[String; 8]> = ROUTES
        .iter()
        .map(|r| {
            [
                r.method.to_string(),
                r.path.to_string(),
                access_label(r.access).to_string(),
                cache_label(&r.cache),
                rate_label(r.rate),
                body_label(r.body),
                timeout_label(r.timeout),
                super::cache_control::label(r.cache_control),
            ]
        })
        .collect();
    let mut out = String::new();
    if tsv {
        let _ = writeln!(out, "{}", header.join("\t"));
        for row in &rows {
            let _ = writeln!(out, "{}", row.join("\t"));
        }
        return out;
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use prometheus_client::registry::Registry;
    use sqlx::postgres::PgPoolOptions;
    use tower::ServiceExt;

    use super::*;
    use crate::app::{AppState, router};
    use crate::gateway::Gateway;
    use crate::http::HttpContext;

    /// Route templates mounted in the sources (tests excluded), read the
    /// way `openapi::tests::every_mounted_route_is_documented` does, plus
    /// the probes (servicekit's router).
    fn mounted_templates() -> BTreeSet<String> {
        let mut found: BTreeSet<String> = ["/healthz", "/readyz", "/metrics"]
            .into_iter()
            .map(String::from)
            .collect();
        let mut files = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("read_dir") {
                    files.push(entry.expect("entry").path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("policy.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("source");
            let code = source.split("#[cfg(test)]").next().unwrap_or_default();
            for chunk in code.split(".route(").skip(1) {
                let literal = chunk
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|s| s.split('"').next());
                if let Some(route) = literal.filter(|r| r.starts_with('/')) {
                    found.insert(route.to_string());
                }
            }
        }
        found
    }

    /// A concrete path for a template (every parameter filled in).
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|segment| match segment {
                "{tenant}" => "acme",
                "{*key}" => "a/b.txt",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn app() -> axum::Router {
        let catalog = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let http = HttpContext {
            auth: crate::http::auth::Authenticator::new(None, None),
            cursors: crate::http::pagination::CursorCodec::new(vec![0; 32], vec![]).expect("key"),
            gateway: Gateway::unlimited(),
        };
        let tenancy = crate::tenancy::Tenancy::new(
            catalog.clone(),
            crate::tenancy::TenancySettings::new(sqlx::postgres::PgConnectOptions::new()),
        );
        router(
            AppState::from(crate::app::Services {
                storage: crate::storage::StorageState::unconfigured(catalog.clone()),
                catalog,
                redis: None,
                http,
                tenancy,
            }),
            Arc::new(Registry::default()),
            1024,
        )
    }

    /// Asks the real router every method of every mounted template: what
    /// is not 405 (nor the unknown-path 404) is a route, and needs a row.
    #[tokio::test]
    async fn every_route_has_a_policy() {
        let app = app();
        let templates = mounted_templates();
        assert!(templates.len() >= 40, "the scan found {}", templates.len());
        let mut routed = BTreeSet::new();
        for template in &templates {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let request = Request::builder()
                    .method(method)
                    .uri(concrete(template))
                    .body(Body::empty())
                    .expect("request");
                let response = app.clone().oneshot(request).await.expect("response");
                if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                    continue;
                }
                routed.insert((method.to_string(), template.clone()));
            }
        }
        let table: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let missing: Vec<_> = routed.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "routes without a row in gateway::policy::ROUTES: {missing:?}"
        );
        let stale: Vec<_> = table.difference(&routed).collect();
        assert!(
            stale.is_empty(),
            "rows of gateway::policy::ROUTES that name no route: {stale:?}"
        );
        assert_eq!(table.len(), ROUTES.len(), "one row per method and path");
    }

    #[test]
    fn cacheable_rows_are_reads_with_a_sound_policy() {
        for row in ROUTES {
            let OutputCache::On(policy) = row.cache else {
                continue;
            };
            assert_eq!(row.method, "GET", "{}: only reads are cached", row.path);
            match row.access {
                Access::Authenticated => {
                    assert!(!policy.public, "{}: private answers", row.path);
                    assert!(policy.permission.is_some(), "{}: checked on hits", row.path);
                    for vary in [Vary::Tenant, Vary::Role] {
                        assert!(policy.vary.contains(&vary), "{}: {vary:?}", row.path);
                    }
                }
                _ => assert!(policy.public, "{}", row.path),
            }
            for tag in policy.tags {
                for param in tag.params {
                    assert!(
                        row.path.contains(&format!("{{{param}}}")),
                        "{}: tag {} names {param}",
                        row.path,
                        tag.name
                    );
                }
            }
        }
    }

    /// Authenticated rows are never public; public output-cache entries
    /// are declared public to clients too; shared (CDN) answers only on
    /// reads that may go without a credential.
    #[test]
    fn cache_control_fits_access() {
        for row in ROUTES {
            match row.cache_control {
                CacheControl::Public(_) => assert_eq!(row.access, Access::Public, "{}", row.path),
                CacheControl::Shared(_) => {
                    assert_eq!(row.access, Access::PublicOrSigned, "{}", row.path);
                    assert_eq!(row.method, "GET", "{}", row.path);
                }
                CacheControl::Private => assert_ne!(row.access, Access::Public, "{}", row.path),
                CacheControl::Handler => {
                    assert_eq!(row.access, Access::Public, "{}: authenticated", row.path)
                }
            }
            if let OutputCache::On(policy) = row.cache
                && policy.public
            {
                assert!(
                    matches!(row.cache_control, CacheControl::Public(_)),
                    "{}: a public entry is declared public",
                    row.path
                );
            }
        }
    }

    #[test]
    fn the_printed_table_has_every_route() {
        let text = render(false);
        assert_eq!(text.lines().count(), ROUTES.len() + 1);
        assert!(text.contains("/v1/openapi.json"));
        let tsv = render(true);
        assert!(tsv.lines().all(|l| l.split('\t').count() == 8));
    }
}
