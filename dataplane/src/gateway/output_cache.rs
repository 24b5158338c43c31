//! The output cache: whole responses (status, headers, body) of `GET`s on
//! the routes whose row in [`super::policy::ROUTES`] opts in, kept in the
//! two-level cache ([`crate::cache::HybridCache`]).
//!
//! - **Key**: the path, then the row's vary keys: the tenant's catalog id,
//!   the caller's role (read from the authenticated [`TenantContext`],
//!   never the credential), `Accept`, `Accept-Encoding` and the query
//!   string with its pairs sorted. The response's `Vary` names the headers.
//! - **Who is served**: on an authenticated row, the request is
//!   authenticated first (the same extractor as the handler, which reuses
//!   it: the rate limits count it once), and the row's permission checked,
//!   then the entry of that tenant and role is served. A request without a
//!   credential on such a row never reaches the cache (the handler answers
//!   401). On a public row, a request *with* a credential bypasses it.
//! - **What is stored**: `200` answers only, without `Set-Cookie`, without
//!   `Cache-Control: private` / `no-store` of their own, up to
//!   [`MAX_BODY`] bytes. The request id, `Server-Timing` and the rate-limit
//!   headers are per request and not stored. An answer without an `ETag`
//!   gets one (a digest of the body), so `If-None-Match` gives a 304 from
//!   the cache (RFC 9110 §13.2.2, [`crate::http::preconditions`]).
//! - **Freshness**: each entry carries the tenant-wide tag and the row's
//!   tags (per collection, …), which [`crate::cache::invalidation`] bumps
//!   after every successful write, before the write's answer leaves, and
//!   every replica has dropped them by then ([`crate::cache::coherence`]):
//!   a write is visible at once on every replica. Without Redis, private
//!   entries are not kept in memory at all (another replica's write could
//!   not be heard).
//! - **Preconditions on a hit**: all four, as the handler evaluates them
//!   (RFC 9110 §13.2.2): 304, 412, or 400 for a malformed tag list.
//! - **Headers out**: `Cache-Control: private, max-age=…` on private rows
//!   (public rows get the table's `public, max-age=…` from
//!   [`super::policy::enforce`]), `Age`, and `Cache-Status` (RFC 9211).

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::policy::{Access, CachePolicy, OutputCache, Vary, lookup};
use crate::app::AppState;
use crate::cache::{CacheError, CacheKey, EntryOptions, HybridCache, Tag};
use crate::http::compression::add_vary;
use crate::http::preconditions::{self, EntityTag, Outcome};
use crate::tenancy::TenantContext;

/// Largest body kept (under the cache's 1 MiB value bound, with room
/// for the headers; the OpenAPI document is about 650 KB).
pub const MAX_BODY: usize = 960 * 1024;

pub const CACHE_STATUS: &str = "cache-status";

/// Headers that belong to one request, never to the stored answer.
const PER_REQUEST: &[&str] = &[
    "x-request-id",
    "server-timing",
    "ratelimit",
    "ratelimit-policy",
    "date",
    "age",
    "cache-status",
];

/// A stored answer. Every hit clones the cache's value, so it is shared,
/// not copied.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CachedResponse(Arc<Stored>);

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
    /// When it was made (ms since the Unix epoch), for `Age`.
    stored_at_ms: u64,
    /// `headers` parsed, once per process (not stored in L2).
    #[serde(skip)]
    parsed: OnceLock<HeaderMap>,
}

impl CachedResponse {
    /// The stored headers as a map (each hit clones it: shared values).
    fn header_map(&self) -> &HeaderMap {
        self.0.parsed.get_or_init(|| {
            let mut headers = HeaderMap::new();
            for (name, value) in &self.0.headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(name, value);
                }
            }
            headers
        })
    }
}

/// Why the answer of a miss is not kept.
enum Miss {
    Pass(Response),
    Cache(CacheError),
}

impl From<CacheError> for Miss {
    fn from(error: CacheError) -> Self {
        Miss::Cache(error)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The query string with its pairs sorted (`b=2&a=1` ≡ `a=1&b=2`).
pub fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    pairs.sort_unstable();
    pairs.join("&")
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// The key of a request on a cached row (see the module docs).
pub fn key_for(
    policy: &CachePolicy,
    tenant: Option<(uuid::Uuid, &str)>,
    path: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> CacheKey {
    let mut builder = match tenant {
        Some((id, _)) => CacheKey::tenant(id, "response"),
        None => CacheKey::platform("response"),
    }
    .id(path);
    for vary in policy.vary {
        builder = match vary {
            Vary::Tenant => builder,
            Vary::Role => builder.vary("role", tenant.map_or("", |(_, role)| role)),
            Vary::Accept => builder.vary("accept", header_text(headers, &header::ACCEPT)),
            Vary::AcceptEncoding => builder.vary(
                "accept-encoding",
                header_text(headers, &header::ACCEPT_ENCODING),
            ),
            Vary::Query => builder.vary("query", canonical_query(query)),
        };
    }
    builder.build()
}

fn cacheable(response: &Response) -> bool {
    let headers = response.headers();
    let cache_control = header_text(headers, &header::CACHE_CONTROL).to_ascii_lowercase();
    response.status() == StatusCode::OK
        && !headers.contains_key(header::SET_COOKIE)
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !cache_control.contains("private")
        && !cache_control.contains("no-store")
        && axum::body::HttpBody::size_hint(response.body())
            .exact()
            .is_some_and(|n| n <= MAX_BODY as u64)
}

async fn store(response: Response) -> Result<CachedResponse, Miss> {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return Err(Miss::Pass(
                crate::http::ApiError::internal(anyhow::anyhow!("output cache: {error}"))
                    .into_response(),
            ));
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &parts.headers {
        if PER_REQUEST.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = value.to_str() else {
            return Err(Miss::Pass(Response::from_parts(
                parts.clone(),
                Body::from(bytes),
            )));
        };
        headers.push((name.as_str().to_string(), value.to_string()));
    }
    if !parts.headers.contains_key(header::ETAG) {
        let etag = EntityTag::from_digest(false, &[&bytes]);
        headers.push(("etag".into(), etag.to_string()));
    }
    Ok(CachedResponse(Arc::new(Stored {
        status: parts.status.as_u16(),
        headers,
        body: bytes,
        stored_at_ms: now_ms(),
        parsed: OnceLock::new(),
    })))
}

/// The stored answer for this request: 304 when its validators match.
fn respond(
    cached: CachedResponse,
    policy: &CachePolicy,
    request_headers: &HeaderMap,
    is_head: bool,
    hit: bool,
) -> Response {
    let mut headers = cached.header_map().clone();
    // Public rows get theirs from the route table's cache-control column
    // (gateway::policy::enforce, outside this layer); a private entry says
    // how long it is kept here.
    if !policy.public
        && let Ok(value) =
            HeaderValue::from_str(&format!("private, max-age={}", policy.ttl.as_secs()))
    {
        headers.insert(header::CACHE_CONTROL, value);
    }
    for vary in policy.vary {
        match vary {
            Vary::Accept => add_vary(&mut headers, "accept"),
            Vary::AcceptEncoding => add_vary(&mut headers, "accept-encoding"),
            Vary::Role | Vary::Tenant => add_vary(&mut headers, "authorization"),
            Vary::Query => {}
        }
    }
    let age = now_ms().saturating_sub(cached.0.stored_at_ms) / 1000;
    headers.insert(header::AGE, HeaderValue::from(age));
    let status = if hit {
        "strata; hit"
    } else {
        "strata; fwd=miss; stored"
    };
    headers.insert(CACHE_STATUS, HeaderValue::from_static(status));
    let etag = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<EntityTag>().ok());
    let modified = headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    // Every precondition, as the handler would have evaluated them
    // (RFC 9110 §13.2.2): 304 from the entry, but also 412 for a failed
    // If-Match / If-Unmodified-Since and 400 for a malformed tag list.
    let method = if is_head { Method::HEAD } else { Method::GET };
    let current = etag.as_ref().map(|etag| (etag, modified));
    match preconditions::evaluate(&method, request_headers, current) {
        Outcome::Proceed => {}
        Outcome::NotModified => {
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::CONTENT_TYPE);
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            *response.headers_mut() = headers;
            return response;
        }
        refused => {
            let mut response = match refused.into_result(current) {
                Err(error) => error.into_response(),
                Ok(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
            // Still tells what happened, and never a stored header.
            if let Some(status) = headers.get(CACHE_STATUS).cloned() {
                response.headers_mut().insert(CACHE_STATUS, status);
            }
            return response;
        }
    }
    let status = StatusCode::from_u16(cached.0.status).unwrap_or(StatusCode::OK);
    let body = if is_head {
        Body::empty()
    } else {
        Body::from(cached.0.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Middleware over the API routes (see the module docs).
pub async fn output_cache(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let cache = state.tenancy.cache.clone();
    let method = request.method().clone();
    if !cache.is_enabled() || (method != Method::GET && method != Method::HEAD) {
        return next.run(request).await;
    }
    let Some(row) = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| lookup(&method, path.as_str()))
    else {
        return next.run(request).await;
    };
    let OutputCache::On(policy) = row.cache else {
        return next.run(request).await;
    };
    let has_credential = request.headers().contains_key(header::AUTHORIZATION);
    let authenticated = row.access == Access::Authenticated;
    if has_credential != authenticated || request.headers().contains_key(header::RANGE) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let (tags, tenant) = if authenticated {
        let ctx = match TenantContext::from_request_parts(&mut parts, &state).await {
            Ok(ctx) => ctx,
            Err(error) => return error.into_response(),
        };
        if let Some((resource, action)) = policy.permission
            && let Err(error) = ctx.require(resource, action)
        {
            return error.into_response();
        }
        let id = ctx.tenant_id();
        let params = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok();
        let Some(tags) = entry_tags(&policy, id, params.as_ref()) else {
            return next.run(Request::from_parts(parts, body)).await;
        };
        (tags, Some((id, ctx.principal().role.clone())))
    } else {
        (Vec::new(), None)
    };
    let key = key_for(
        &policy,
        tenant.as_ref().map(|(id, role)| (*id, role.as_str())),
        parts.uri.path(),
        &parts.headers,
        parts.uri.query(),
    );
    if method == Method::HEAD {
        return next.run(Request::from_parts(parts, body)).await;
    }
    // The handler is asked for the full representation (what is stored);
    // the request's own preconditions are evaluated against the entry in
    // `respond`, on a miss as on a hit, so a conditional miss neither
    // stores nothing nor answers differently from a hit.
    let request_headers = parts.headers.clone();
    for name in [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        parts.headers.remove(name);
    }
    let request = Request::from_parts(parts, body);
    serve(&cache, &key, &tags, &policy, request_headers, request, next).await
}

/// The tags of the entry a request on `policy`'s row reads: the tenant's,
/// then the row's, from the path (`None` when a parameter is missing).
fn entry_tags(
    policy: &CachePolicy,
    tenant: uuid::Uuid,
    params: Option<&RawPathParams>,
) -> Option<Vec<Tag>> {
    let mut tags = vec![Tag::whole_tenant(tenant)];
    for template in policy.tags {
        let values: Option<Vec<&str>> = template
            .params
            .iter()
            .map(|name| params?.iter().find(|(n, _)| n == name).map(|(_, v)| v))
            .collect();
        tags.push(Tag::tenant(tenant, template.name, values?));
    }
    Some(tags)
}

async fn serve(
    cache: &HybridCache,
    key: &CacheKey,
    tags: &[Tag],
    policy: &CachePolicy,
    request_headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // Without Redis, nothing could tell this replica of another's writes,
    // so private answers are never served from memory.
    let mut options = EntryOptions::new(policy.ttl, policy.ttl);
    if !policy.public {
        options = options.strict();
    }
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let result = cache
        .get_or_create::<CachedResponse, Miss, _, _>(key, tags, options, || async move {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            let response = next.run(request).await;
            if !cacheable(&response) {
                return Err(Miss::Pass(response));
            }
            store(response).await
        })
        .await;
    let hit = !ran.load(std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(cached) => respond(cached, policy, &request_headers, false, hit),
        Err(Miss::Pass(mut response)) => {
            if let Ok(value) = HeaderValue::from_str("strata; fwd=miss; detail=uncacheable") {
                response.headers_mut().insert(CACHE_STATUS, value);
            }
            response
        }
        Err(Miss::Cache(error)) => crate::http::ApiError::from(error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::policy::ROUTES;

    fn openapi_policy() -> CachePolicy {
        let row = ROUTES
            .iter()
            .find(|r| r.path == "/v1/openapi.json")
            .expect("row");
        match row.cache {
            OutputCache::On(policy) => policy,
            OutputCache::Off => panic!("openapi is cached"),
        }
    }

    fn document_list_policy() -> CachePolicy {
        let row = ROUTES
            .iter()
            .find(|r| {
                r.method == "GET"
                    && r.path == "/v1/tenants/{tenant}/collections/{collection}/documents"
            })
            .expect("row");
        match row.cache {
            OutputCache::On(policy) => policy,
            OutputCache::Off => panic!("lists are cached"),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn query_strings_in_any_order_are_one_key() {
        assert_eq!(canonical_query(Some("b=2&a=1")), "a=1&b=2");
        assert_eq!(canonical_query(Some("a=1&&b=2")), "a=1&b=2");
        assert_eq!(canonical_query(None), "");
    }

    /// Two tenants × two roles × two Accept-Encoding × two Accept: every
    /// combination its own key; the query order never matters.
    #[test]
    fn the_vary_matrix_gives_distinct_keys() {
        let policy = document_list_policy();
        let tenants = [
            uuid::Uuid::from_bytes([1; 16]),
            uuid::Uuid::from_bytes([2; 16]),
        ];
        let mut keys = std::collections::HashSet::new();
        for tenant in tenants {
            for role in ["viewer", "owner"] {
                for encoding in ["br", "identity"] {
                    for accept in ["application/json", "*/*"] {
                        let h = headers(&[("accept", accept), ("accept-encoding", encoding)]);
                        let a = key_for(&policy, Some((tenant, role)), "/p", &h, Some("a=1&b=2"));
                        let b = key_for(&policy, Some((tenant, role)), "/p", &h, Some("b=2&a=1"));
                        assert_eq!(a, b);
                        assert!(keys.insert(a), "a key is shared");
                    }
                }
            }
        }
        assert_eq!(keys.len(), 16);
        // An anonymous key never equals an authenticated one.
        let anonymous = key_for(&policy, None, "/p", &HeaderMap::new(), None);
        assert!(!keys.contains(&anonymous));
    }

    #[tokio::test]
    async fn only_plain_200s_are_stored_and_304_comes_from_the_entry() {
        let ok = Response::new(Body::from("{}"));
        assert!(cacheable(&ok));
        let mut cookie = Response::new(Body::from("{}"));
        cookie
            .headers_mut()
            .insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        assert!(!cacheable(&cookie));
        let mut private = Response::new(Body::from("{}"));
        private
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(!cacheable(&private));
        assert!(!cacheable(&StatusCode::NOT_FOUND.into_response()));

        let mut response = Response::new(Body::from("{\"a\":1}"));
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r1"));
        let Ok(cached) = store(response).await else {
            panic!("stored");
        };
        assert!(cached.0.headers.iter().all(|(n, _)| n != "x-request-id"));
        let policy = openapi_policy();
        let first = respond(cached.clone(), &policy, &HeaderMap::new(), false, true);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[CACHE_STATUS], "strata; hit");
        assert!(first.headers().contains_key(header::AGE));
        // Public rows' Cache-Control comes from gateway::policy::enforce.
        assert!(!first.headers().contains_key(header::CACHE_CONTROL));
        let etag = first.headers()[header::ETAG].clone();
        let mut conditional = HeaderMap::new();
        conditional.insert(header::IF_NONE_MATCH, etag);
        let second = respond(cached.clone(), &policy, &conditional, false, true);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert!(second.headers().contains_key(header::ETAG));
        // A failed If-Match is a 412 from the entry, not its 200.
        let mut conditional = HeaderMap::new();
        conditional.insert(header::IF_MATCH, HeaderValue::from_static("\"other\""));
        let third = respond(cached.clone(), &policy, &conditional, false, true);
        assert_eq!(third.status(), StatusCode::PRECONDITION_FAILED);
        let mut conditional = HeaderMap::new();
        conditional.insert(header::IF_NONE_MATCH, HeaderValue::from_static("nope"));
        let fourth = respond(cached, &policy, &conditional, false, true);
        assert_eq!(fourth.status(), StatusCode::BAD_REQUEST);
    }
}
