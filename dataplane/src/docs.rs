//! `GET /docs`: the API reference, rendered in the browser by Redoc from
//! `/v1/openapi.json`. Everything the page loads is in this binary
//! (`dataplane/assets/redoc/`, vendored from npm by `hack/vendor-redoc.sh`),
//! so it works where the data plane has no internet and leaks no reader to
//! a CDN.
//!
//! The page's Content-Security-Policy allows scripts from this origin only:
//! Redoc's code and a small same-origin init script (no inline script).
//! Redoc needs two exceptions, both kept to what it uses: inline styles
//! (styled-components injects `<style>` elements) and `blob:` workers (its
//! search index runs in a worker built from a blob).
//!
//! The assets are requested with `?v=<content hash>`, so they can be cached
//! for a year as immutable and a new binary's assets are still fetched.
//! Checked in headless Chromium with no network (`hack/docs-screenshot.sh`,
//! which wrote `docs/img/docs-page.png`). The only thing the page then
//! tries to load from elsewhere is the logo of Redoc's "API docs by
//! Redocly" footer (a CDN image), which the CSP blocks before any request.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

const REDOC_JS: &str = include_str!("../assets/redoc/redoc.standalone.js");
const REDOC_VERSION: &str = include_str!("../assets/redoc/VERSION");

/// Renders the document into `#redoc`. A separate file because the CSP
/// allows no inline script.
const INIT_JS: &str = r#"// Strata API docs: render /v1/openapi.json with the vendored Redoc.
Redoc.init(
  "/v1/openapi.json",
  {
    expandResponses: "200,201",
    hideHostname: true,
    jsonSampleExpandLevel: 3,
    pathInMiddlePanel: true,
    requiredPropsFirst: true,
    sortTagsAlphabetically: true,
  },
  document.getElementById("redoc"),
);
"#;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

const YEAR_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// First 16 hex digits of the content's SHA-256: the cache-busting version.
fn short_hash(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

static REDOC_HASH: LazyLock<String> = LazyLock::new(|| short_hash(REDOC_JS));
static INIT_HASH: LazyLock<String> = LazyLock::new(|| short_hash(INIT_JS));

static PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="Redoc {version}">
<title>Strata data plane API</title>
</head>
<body>
<noscript>This page needs JavaScript. The API description is at <a href="/v1/openapi.json">/v1/openapi.json</a>.</noscript>
<div id="redoc"></div>
<script src="/docs/assets/redoc.standalone.js?v={redoc}"></script>
<script src="/docs/assets/init.js?v={init}"></script>
</body>
</html>
"#,
        version = REDOC_VERSION.trim(),
        redoc = *REDOC_HASH,
        init = *INIT_HASH,
    )
});

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(page))
        .route("/docs/assets/redoc.standalone.js", get(redoc_js))
        .route("/docs/assets/init.js", get(init_js))
}

/// Headers every docs response carries.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn page() -> Response {
    let response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            // The page names the assets' hashes: always revalidate it.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        PAGE.as_str(),
    )
        .into_response();
    hardened(response)
}

fn script(body: &'static str, hash: &str) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{hash}\"")).ok();
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(YEAR_IMMUTABLE),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    hardened(response)
}

async fn redoc_js() -> Response {
    script(REDOC_JS, &REDOC_HASH)
}

async fn init_js() -> Response {
    script(INIT_JS, &INIT_HASH)
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get_path(path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 8 << 20).await.expect("body");
        (parts.status, parts.headers, bytes.to_vec())
    }

    #[tokio::test]
    async fn the_page_loads_only_same_origin_scripts() {
        let (status, headers, body) = get_path("/docs").await;
        assert_eq!(status, StatusCode::OK);
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-eval"));
        let html = String::from_utf8(body).expect("utf-8");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        // Every script is an external same-origin file (the CSP forbids inline).
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("<script src=\"/docs/assets/").count(), 2);
        for src in html.split("src=\"").skip(1) {
            let url = src.split('"').next().expect("quoted");
            let (status, headers, _) = get_path(url).await;
            assert_eq!(status, StatusCode::OK, "{url}");
            assert_eq!(headers[header::CACHE_CONTROL], YEAR_IMMUTABLE);
        }
    }

    #[tokio::test]
    async fn the_renderer_is_embedded() {
        let (status, headers, body) = get_path("/docs/assets/redoc.standalone.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("type")
                .starts_with("text/javascript")
        );
        assert!(body.len() > 500_000, "the whole bundle, not a stub");
    }
}
