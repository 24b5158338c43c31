//! `Cache-Control` from the route table ([`super::policy::CacheControl`]):
//! one rewrite of whatever the handler set, applied by
//! [`super::policy::enforce`] to 2xx and 304 answers. Handlers keep
//! setting what they know (an object's stored `Cache-Control`, a render's
//! default); the table decides who may keep the answer and for how long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};

use super::policy::CacheControl;

/// The query parameter of presigned object URLs and signed render URLs
/// that holds their expiry (Unix seconds; `storage::presign`,
/// `media::sign` use the same name). The handler has verified it when the
/// answer is a success.
const EXPIRES: &str = "X-Strata-Expires";

/// The directives of a header value, lower-cased, without blanks.
fn directives(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

fn max_age(directives: &[String]) -> Option<u64> {
    directives
        .iter()
        .find_map(|d| d.strip_prefix("max-age=")?.trim_matches('"').parse().ok())
}

fn set(headers: &mut HeaderMap, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(header::CACHE_CONTROL, value);
    }
}

/// Seconds a signed URL has left, from its query (`None`: not signed).
fn remaining(query: Option<&str>, now: SystemTime) -> Option<u64> {
    let expires = form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == EXPIRES)?
        .1
        .parse::<u64>()
        // A signed URL whose expiry does not parse was refused by its
        // handler; if it got here anyway, it may not be kept at all.
        .unwrap_or(0);
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Some(expires.saturating_sub(now))
}

/// Never in a shared cache: `public` and `s-maxage` go, `private` leads.
fn private(headers: &mut HeaderMap) {
    let own = directives(headers);
    if own.iter().any(|d| d == "no-store") {
        return;
    }
    let kept: Vec<&str> = own
        .iter()
        .map(String::as_str)
        .filter(|d| *d != "public" && *d != "private" && !d.starts_with("s-maxage"))
        .collect();
    if kept.is_empty() {
        set(headers, "private, no-cache");
    } else {
        set(headers, &format!("private, {}", kept.join(", ")));
    }
}

/// Rewrites `headers` (of a 2xx or 304 answer) for `rule`.
pub fn apply(
    rule: CacheControl,
    headers: &mut HeaderMap,
    has_credential: bool,
    query: Option<&str>,
    now: SystemTime,
) {
    match rule {
        CacheControl::Handler => {}
        CacheControl::Private => private(headers),
        CacheControl::Public(age) => set(headers, &format!("public, max-age={}", age.as_secs())),
        CacheControl::Shared(_) if has_credential => private(headers),
        CacheControl::Shared(age) => {
            let own = directives(headers);
            if own
                .iter()
                .any(|d| matches!(d.as_str(), "private" | "no-cache" | "no-store"))
            {
                // The object's owner said so.
                return;
            }
            let age = [Some(age.as_secs()), max_age(&own), remaining(query, now)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(0);
            set(headers, &format!("public, max-age={age}"));
        }
    }
}

/// For the printed table.
pub fn label(rule: CacheControl) -> String {
    let secs = |d: Duration| d.as_secs();
    match rule {
        CacheControl::Handler => "handler's".into(),
        CacheControl::Private => "private".into(),
        CacheControl::Public(age) => format!("public {}s", secs(age)),
        CacheControl::Shared(age) => {
            format!(
                "public {}s (≤ URL expiry) without credential, else private",
                secs(age)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: CacheControl, own: Option<&str>, credential: bool, query: Option<&str>) -> String {
        let mut headers = HeaderMap::new();
        if let Some(own) = own {
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_str(own).expect("v"),
            );
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        apply(rule, &mut headers, credential, query, now);
        headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn authenticated_answers_are_never_public() {
        let rule = CacheControl::Private;
        assert_eq!(run(rule, None, true, None), "private, no-cache");
        assert_eq!(
            run(rule, Some("public, max-age=60"), true, None),
            "private, max-age=60"
        );
        assert_eq!(
            run(rule, Some("private, max-age=30"), true, None),
            "private, max-age=30"
        );
        assert_eq!(run(rule, Some("no-store"), true, None), "no-store");
        assert_eq!(
            run(rule, Some("Public, S-MaxAge=600, max-age=5"), true, None),
            "private, max-age=5"
        );
    }

    #[test]
    fn public_rows_say_the_declared_age() {
        let rule = CacheControl::Public(Duration::from_secs(300));
        assert_eq!(
            run(rule, Some("no-cache"), false, None),
            "public, max-age=300"
        );
        assert_eq!(run(rule, None, false, None), "public, max-age=300");
    }

    #[test]
    fn shared_rows_never_outlive_the_url_nor_the_owner() {
        let rule = CacheControl::Shared(Duration::from_secs(60));
        // Public bucket, object without its own header.
        assert_eq!(run(rule, None, false, None), "public, max-age=60");
        // The object's own shorter age wins; a longer one is cut.
        assert_eq!(
            run(rule, Some("max-age=10"), false, None),
            "public, max-age=10"
        );
        assert_eq!(
            run(rule, Some("max-age=86400"), false, None),
            "public, max-age=60"
        );
        // A presigned URL with 15 s left; one already expired.
        let q = "X-Strata-Expires=1000015&X-Strata-Signature=ab";
        assert_eq!(run(rule, None, false, Some(q)), "public, max-age=15");
        let q = "X-Strata-Expires=999999";
        assert_eq!(run(rule, None, false, Some(q)), "public, max-age=0");
        let q = "X-Strata-Expires=soon";
        assert_eq!(run(rule, None, false, Some(q)), "public, max-age=0");
        // The owner's private or no-store stays.
        assert_eq!(run(rule, Some("private"), false, None), "private");
        assert_eq!(run(rule, Some("no-store"), false, None), "no-store");
        // With a credential: private.
        assert_eq!(
            run(rule, Some("max-age=300"), true, None),
            "private, max-age=300"
        );
        assert_eq!(run(rule, None, true, None), "private, no-cache");
    }
}
