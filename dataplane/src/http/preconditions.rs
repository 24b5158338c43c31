//! Conditional requests (RFC 9110 §13): entity tags and the evaluation of
//! If-Match / If-Unmodified-Since / If-None-Match / If-Modified-Since, in the
//! order §13.2.2 prescribes, for both APIs.
//!
//! Decisions beyond the RFC:
//! - A malformed If-Match or If-None-Match is a 400 rather than ignored:
//!   ignoring an If-Match would turn a guarded write into a blind one.
//!   Malformed or multi-valued dates are ignored, as §13.1.3/§13.1.4 require.
//! - [`Requirement::Required`] (428, RFC 6585) is satisfied by If-Match or
//!   If-None-Match only; If-Unmodified-Since has one-second resolution and
//!   cannot prevent lost updates within a second.
//! - The optional "the change has already been applied" 2xx of §13.1.1 is
//!   not implemented: a failed If-Match is always 412.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::problem::{ApiError, FieldError, kind};

/// Longest opaque tag accepted in a request header; ours are far shorter.
pub const MAX_TAG_LEN: usize = 256;
/// Most entity tags accepted in one If-Match/If-None-Match (all lines).
pub const MAX_TAGS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed entity tag")]
pub struct InvalidEntityTag;

/// An entity tag: the opaque part (without quotes) and whether it is weak.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    weak: bool,
    tag: String,
}

/// `etagc = %x21 / %x23-7E / obs-text`; we accept the ASCII part only (our
/// own tags never contain obs-text, so such a client tag could not match).
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b)
}

impl EntityTag {
    pub fn strong(tag: impl Into<String>) -> Result<Self, InvalidEntityTag> {
        Self::new(false, tag.into())
    }

    pub fn weak(tag: impl Into<String>) -> Result<Self, InvalidEntityTag> {
        Self::new(true, tag.into())
    }

    fn new(weak: bool, tag: String) -> Result<Self, InvalidEntityTag> {
        if tag.len() > MAX_TAG_LEN || !tag.bytes().all(is_etagc) {
            return Err(InvalidEntityTag);
        }
        Ok(Self { weak, tag })
    }

    /// A strong tag for a version counter (documents).
    pub fn from_version(version: i64) -> Self {
        Self {
            weak: false,
            tag: format!("v{version}"),
        }
    }

    /// A tag derived from content (objects: hash + version; list pages:
    /// weak, over what the page shows): 128 bits of SHA-256 over the parts,
    /// each length-prefixed so `["ab","c"]` and `["a","bc"]` differ.
    pub fn from_digest(weak: bool, parts: &[&[u8]]) -> Self {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in parts {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        Self {
            weak,
            tag: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]),
        }
    }

    pub fn is_weak(&self) -> bool {
        self.weak
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The same tag marked weak (for derived representations).
    pub fn to_weak(&self) -> Self {
        Self {
            weak: true,
            tag: self.tag.clone(),
        }
    }

    /// §8.8.3.2: both strong and the same opaque tag.
    pub fn strong_eq(&self, other: &Self) -> bool {
        !self.weak && !other.weak && self.tag == other.tag
    }

    /// §8.8.3.2: the same opaque tag, whatever the weakness.
    pub fn weak_eq(&self, other: &Self) -> bool {
        self.tag == other.tag
    }

    pub fn header_value(&self) -> HeaderValue {
        // The constructor allowed only visible ASCII, so this cannot fail;
        // the fallback keeps the function total anyway.
        HeaderValue::from_str(&self.to_string()).unwrap_or(HeaderValue::from_static("\"\""))
    }

    /// Parses one tag at the start of `input`; returns it and the rest.
    fn parse_prefix(input: &str) -> Result<(Self, &str), InvalidEntityTag> {
        let (weak, rest) = match input.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let rest = rest.strip_prefix('"').ok_or(InvalidEntityTag)?;
        let end = rest.find('"').ok_or(InvalidEntityTag)?;
        let tag = Self::new(weak, rest[..end].to_string())?;
        Ok((tag, &rest[end + 1..]))
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.tag)
    }
}

impl FromStr for EntityTag {
    type Err = InvalidEntityTag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, rest) = Self::parse_prefix(s.trim())?;
        if rest.is_empty() {
            Ok(tag)
        } else {
            Err(InvalidEntityTag)
        }
    }
}

/// The value of If-Match or If-None-Match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagCondition {
    Any,
    Tags(Vec<EntityTag>),
}

/// Parses every line of `name` as one list (§5.3). `Ok(None)` when absent.
/// Tags may contain commas, so the list is scanned, not split.
pub fn parse_tag_condition(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<TagCondition>, InvalidEntityTag> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut any = false;
    let mut tags = Vec::new();
    for value in values {
        let mut rest = value.to_str().map_err(|_| InvalidEntityTag)?;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('*') {
                any = true;
                rest = after;
            } else {
                let (tag, after) = EntityTag::parse_prefix(rest)?;
                tags.push(tag);
                if tags.len() > MAX_TAGS {
                    return Err(InvalidEntityTag);
                }
                rest = after;
            }
            // After an element only a separator (or the end) may follow.
            let trimmed = rest.trim_start_matches([' ', '\t']);
            if !(trimmed.is_empty() || trimmed.starts_with(',')) {
                return Err(InvalidEntityTag);
            }
            rest = trimmed;
        }
    }
    match (any, tags.is_empty()) {
        (true, true) => Ok(Some(TagCondition::Any)),
        // `*` mixed with tags, or a header with no element at all.
        _ if any || tags.is_empty() => Err(InvalidEntityTag),
        _ => Ok(Some(TagCondition::Tags(tags))),
    }
}

/// One valid HTTP-date, or `None` (absent, several lines, or invalid: all
/// ignored per §13.1.3/§13.1.4).
fn parse_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(first.to_str().ok()?.trim()).ok()
}

/// HTTP dates have one-second resolution: compare on whole seconds, or a
/// resource modified at .5 s would never match its own Last-Modified.
fn truncate_to_second(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => time,
    }
}

/// Whether writes must be conditional (a per-collection switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requirement {
    #[default]
    Optional,
    /// Unsafe methods without If-Match / If-None-Match get 428.
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Perform the method.
    Proceed,
    /// 304 (GET/HEAD only).
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 428: the resource requires a conditional request.
    PreconditionRequired,
    /// 400: this header is malformed.
    Malformed(HeaderName),
}

fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn is_safe(method: &Method) -> bool {
    is_get_or_head(method) || method == Method::OPTIONS || method == Method::TRACE
}

/// Whether the request carries a precondition (RFC 9110 §13.1): only then
/// can the current representation change its outcome.
pub fn is_conditional(headers: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

/// [`evaluate_with`] for resources that do not require conditional writes.
pub fn evaluate(
    method: &Method,
    headers: &HeaderMap,
    current: Option<(&EntityTag, Option<SystemTime>)>,
) -> Outcome {
    evaluate_with(method, headers, current, Requirement::Optional)
}

/// RFC 9110 §13.2.2. `current` is the selected representation's ETag and
/// Last-Modified, or `None` when the resource does not exist (a PUT that
/// would create it).
pub fn evaluate_with(
    method: &Method,
    headers: &HeaderMap,
    current: Option<(&EntityTag, Option<SystemTime>)>,
    requirement: Requirement,
) -> Outcome {
    let if_match = match parse_tag_condition(headers, &header::IF_MATCH) {
        Ok(condition) => condition,
        Err(_) => return Outcome::Malformed(header::IF_MATCH),
    };
    let if_none_match = match parse_tag_condition(headers, &header::IF_NONE_MATCH) {
        Ok(condition) => condition,
        Err(_) => return Outcome::Malformed(header::IF_NONE_MATCH),
    };
    if requirement == Requirement::Required
        && !is_safe(method)
        && if_match.is_none()
        && if_none_match.is_none()
    {
        return Outcome::PreconditionRequired;
    }
    let etag = current.map(|(etag, _)| etag);
    let last_modified = current.and_then(|(_, modified)| modified.map(truncate_to_second));

    // Step 1: If-Match (strong comparison; `*` = "exists").
    if let Some(condition) = &if_match {
        let holds = match (condition, etag) {
            (_, None) => false,
            (TagCondition::Any, Some(_)) => true,
            (TagCondition::Tags(tags), Some(etag)) => tags.iter().any(|t| t.strong_eq(etag)),
        };
        if !holds {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(since) = parse_date(headers, &header::IF_UNMODIFIED_SINCE) {
        // Step 2: If-Unmodified-Since, only without If-Match and only when
        // the resource has a modification date.
        if let Some(modified) = last_modified
            && modified > since
        {
            return Outcome::PreconditionFailed;
        }
    }

    // Step 3: If-None-Match (weak comparison; `*` = "does not exist").
    if let Some(condition) = &if_none_match {
        let holds = match (condition, etag) {
            (_, None) => true,
            (TagCondition::Any, Some(_)) => false,
            (TagCondition::Tags(tags), Some(etag)) => !tags.iter().any(|t| t.weak_eq(etag)),
        };
        if !holds {
            return if is_get_or_head(method) {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
    } else if is_get_or_head(method)
        && let Some(since) = parse_date(headers, &header::IF_MODIFIED_SINCE)
        && let Some(modified) = last_modified
        && modified <= since
    {
        // Step 4: If-Modified-Since, GET/HEAD only, without If-None-Match.
        return Outcome::NotModified;
    }
    Outcome::Proceed
}

impl Outcome {
    /// `Ok(())` to proceed; otherwise the response (304 with the validators,
    /// or a problem) as an [`ApiError`] for `?`.
    pub fn into_result(
        self,
        current: Option<(&EntityTag, Option<SystemTime>)>,
    ) -> Result<(), ApiError> {
        match self {
            Outcome::Proceed => Ok(()),
            Outcome::NotModified => Err(ApiError::NotModified {
                etag: current.map(|(etag, _)| etag.header_value()),
                last_modified: current
                    .and_then(|(_, modified)| modified)
                    .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
            }),
            Outcome::PreconditionFailed => Err(ApiError::PreconditionFailed),
            Outcome::PreconditionRequired => Err(ApiError::PreconditionRequired),
            Outcome::Malformed(name) => Err(ApiError::BadRequest {
                kind: kind::INVALID_HEADER,
                detail: format!("the {name} header is not a valid list of entity tags"),
                errors: vec![FieldError::new(
                    format!("#/header/{name}"),
                    "expected `*` or a comma-separated list of quoted entity tags",
                )],
            }),
        }
    }
}

/// Sets `ETag` and (when known) `Last-Modified` on a response.
pub fn set_validators(
    headers: &mut HeaderMap,
    etag: &EntityTag,
    last_modified: Option<SystemTime>,
) {
    headers.insert(header::ETAG, etag.header_value());
    if let Some(value) =
        last_modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok())
    {
        headers.insert(header::LAST_MODIFIED, value);
    }
}

/// Evaluate and convert in one step: `check(…)?` in a handler.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    current: Option<(&EntityTag, Option<SystemTime>)>,
    requirement: Requirement,
) -> Result<(), ApiError> {
    evaluate_with(method, headers, current, requirement).into_result(current)
}

/// Parses the timestamps our SQL writes (`YYYY-MM-DDTHH:MM:SS[.ffffff]Z`,
/// UTC, see `documents::store`, `storage::store`) into a time; anything
/// else is `None` (then no `Last-Modified` is sent, never a wrong one).
pub fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (time, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut time = time.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse::<u32>().ok()?
    };
    Some(
        UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + hour * 3600 + minute * 60 + second)
            + Duration::from_nanos(u64::from(nanos)),
    )
}

/// The validators of a JSON answer that has no version of its own (list
/// pages, bucket metadata): a strong `ETag` over the exact body bytes (the
/// same bytes are the same representation). Then the request's
/// preconditions are evaluated against it (§13.2.2): 304 with the ETag,
/// 412, or 400 for a malformed tag list. Other answers than 200 pass
/// untouched.
///
/// No `Last-Modified`: a page's latest `updated_at` would not move when a
/// row leaves it (deleted, or no longer matching a filter), so an
/// `If-Modified-Since` alone would get a 304 for a page that changed. A
/// date that cannot be "reasonably and consistently determined" is not
/// sent (RFC 9110 §8.8.2), and `If-Modified-Since` is then ignored
/// (§13.1.3).
pub async fn conditional_json(
    response: axum::response::Response,
    method: &Method,
    request_headers: &HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() != axum::http::StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Our own JSON, already in memory (axum::Json): no limit to enforce.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return ApiError::internal(anyhow::anyhow!("list body: {error}")).into_response();
        }
    };
    let etag = EntityTag::from_digest(false, &[&bytes]);
    let current = Some((&etag, None));
    if let Err(error) = evaluate(method, request_headers, current).into_result(current) {
        return error.into_response();
    }
    set_validators(&mut parts.headers, &etag, None);
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> EntityTag {
        s.parse().expect("tag")
    }

    #[test]
    fn our_timestamps_parse() {
        let at = parse_rfc3339_utc("2023-11-14T22:13:20.700000Z").expect("parses");
        assert_eq!(at, UNIX_EPOCH + Duration::from_millis(1_700_000_000_700));
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339_utc("2024-02-29T12:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_208_000))
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "x-1-1T1:1:1Z",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn entity_tags_parse_and_format() {
        let strong = tag("\"abc\"");
        assert!(!strong.is_weak());
        assert_eq!(strong.tag(), "abc");
        assert_eq!(strong.to_string(), "\"abc\"");
        let weak = tag("W/\"abc\"");
        assert!(weak.is_weak());
        assert_eq!(weak.to_string(), "W/\"abc\"");
        assert_eq!(tag("\"\"").tag(), "");
        assert_eq!(tag("  \"a,b\" ").tag(), "a,b");
        assert_eq!(EntityTag::from_version(7).to_string(), "\"v7\"");
        assert_eq!(EntityTag::from_version(7).header_value(), "\"v7\"");
        for bad in [
            "abc",
            "\"abc",
            "w/\"abc\"",
            "W/abc",
            "\"a\"b\"",
            "\"a b\"",
            "\"a\"x",
            "",
        ] {
            assert_eq!(bad.parse::<EntityTag>(), Err(InvalidEntityTag), "{bad}");
        }
        assert!(EntityTag::strong("x".repeat(MAX_TAG_LEN + 1)).is_err());
        assert!(EntityTag::strong("a\"b").is_err());
    }

    #[test]
    fn digests_and_validators() {
        let a = EntityTag::from_digest(false, &[b"ab", b"c"]);
        let b = EntityTag::from_digest(false, &[b"a", b"bc"]);
        assert_ne!(a, b);
        assert_eq!(a, EntityTag::from_digest(false, &[b"ab", b"c"]));
        assert_eq!(a.tag().len(), 22);
        assert!(EntityTag::from_digest(true, &[b"x"]).is_weak());
        // Round trip through the header.
        let parsed: EntityTag = a
            .header_value()
            .to_str()
            .expect("ascii")
            .parse()
            .expect("tag");
        assert_eq!(parsed, a);
        let weak = a.to_weak();
        assert!(weak.weak_eq(&a) && !weak.strong_eq(&a));

        let mut headers = HeaderMap::new();
        let at = UNIX_EPOCH + Duration::from_secs(T0);
        set_validators(&mut headers, &a, Some(at));
        assert_eq!(headers[header::ETAG], a.to_string());
        assert_eq!(headers[header::LAST_MODIFIED], httpdate::fmt_http_date(at));
        let mut headers = HeaderMap::new();
        set_validators(&mut headers, &a, None);
        assert!(!headers.contains_key(header::LAST_MODIFIED));
    }

    #[test]
    fn comparison_functions_follow_the_rfc_table() {
        // RFC 9110 §8.8.3.2, the example table.
        let cases = [
            ("W/\"1\"", "W/\"1\"", false, true),
            ("W/\"1\"", "W/\"2\"", false, false),
            ("W/\"1\"", "\"1\"", false, true),
            ("\"1\"", "\"1\"", true, true),
        ];
        for (a, b, strong, weak) in cases {
            assert_eq!(tag(a).strong_eq(&tag(b)), strong, "{a} {b}");
            assert_eq!(tag(a).weak_eq(&tag(b)), weak, "{a} {b}");
        }
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                (*name).clone(),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn lists_span_lines_and_reject_garbage() {
        let h = headers(&[
            (&header::IF_MATCH, "\"a\", W/\"b\""),
            (&header::IF_MATCH, " \"c,d\" ,"),
        ]);
        assert_eq!(
            parse_tag_condition(&h, &header::IF_MATCH),
            Ok(Some(TagCondition::Tags(vec![
                tag("\"a\""),
                tag("W/\"b\""),
                tag("\"c,d\"")
            ])))
        );
        assert_eq!(
            parse_tag_condition(&headers(&[(&header::IF_MATCH, "*")]), &header::IF_MATCH),
            Ok(Some(TagCondition::Any))
        );
        assert_eq!(
            parse_tag_condition(&HeaderMap::new(), &header::IF_MATCH),
            Ok(None)
        );
        for bad in ["", ",", "*, \"a\"", "a", "\"a\" \"b\"", "**", "\"a\"junk"] {
            assert_eq!(
                parse_tag_condition(&headers(&[(&header::IF_MATCH, bad)]), &header::IF_MATCH),
                Err(InvalidEntityTag),
                "{bad:?}"
            );
        }
        let many = vec!["\"x\""; MAX_TAGS + 1].join(",");
        assert!(
            parse_tag_condition(&headers(&[(&header::IF_MATCH, &many)]), &header::IF_MATCH)
                .is_err()
        );
    }

    // ---- The precedence matrix -------------------------------------------

    const T0: u64 = 1_700_000_000;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum TagCase {
        Absent,
        Match,
        WeakMatch,
        Mismatch,
        Star,
        ListWithMatch,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum DateCase {
        Absent,
        Before,
        Equal,
        After,
        Invalid,
    }

    const TAGS: [TagCase; 6] = [
        TagCase::Absent,
        TagCase::Match,
        TagCase::WeakMatch,
        TagCase::Mismatch,
        TagCase::Star,
        TagCase::ListWithMatch,
    ];
    const DATES: [DateCase; 5] = [
        DateCase::Absent,
        DateCase::Before,
        DateCase::Equal,
        DateCase::After,
        DateCase::Invalid,
    ];

    fn tag_header(case: TagCase) -> Option<&'static str> {
        match case {
            TagCase::Absent => None,
            TagCase::Match => Some("\"v2\""),
            TagCase::WeakMatch => Some("W/\"v2\""),
            TagCase::Mismatch => Some("\"v1\""),
            TagCase::Star => Some("*"),
            TagCase::ListWithMatch => Some("\"v1\", \"v2\""),
        }
    }

    /// Last-Modified is T0 + 0.7 s, so `Equal` also checks truncation.
    fn date_header(case: DateCase) -> Option<String> {
        let at = |secs| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        match case {
            DateCase::Absent => None,
            DateCase::Before => Some(at(T0 - 10)),
            DateCase::Equal => Some(at(T0)),
            DateCase::After => Some(at(T0 + 10)),
            DateCase::Invalid => Some("yesterday".into()),
        }
    }

    /// The RFC's four conditions written as a truth table, independently of
    /// the implementation: `Some(true/false)` = evaluated, `None` = not.
    fn oracle(
        method: &Method,
        im: TagCase,
        ius: DateCase,
        inm: TagCase,
        ims: DateCase,
        exists: bool,
        has_date: bool,
    ) -> Outcome {
        let get = *method == Method::GET || *method == Method::HEAD;
        let date_known =
            |d: DateCase| has_date && exists && !matches!(d, DateCase::Absent | DateCase::Invalid);
        // "unmodified since" holds when Last-Modified (T0) <= the date.
        let unmodified = |d: DateCase| matches!(d, DateCase::Equal | DateCase::After);
        let im_holds = match im {
            TagCase::Absent => None,
            TagCase::Star => Some(exists),
            TagCase::Match | TagCase::ListWithMatch => Some(exists),
            TagCase::WeakMatch | TagCase::Mismatch => Some(false),
        };
        match im_holds {
            Some(false) => return Outcome::PreconditionFailed,
            Some(true) => {}
            None => {
                if date_known(ius) && !unmodified(ius) {
                    return Outcome::PreconditionFailed;
                }
            }
        }
        let inm_holds = match inm {
            TagCase::Absent => None,
            TagCase::Star => Some(!exists),
            TagCase::Match | TagCase::WeakMatch | TagCase::ListWithMatch => Some(!exists),
            TagCase::Mismatch => Some(true),
        };
        match inm_holds {
            Some(false) if get => return Outcome::NotModified,
            Some(false) => return Outcome::PreconditionFailed,
            Some(true) => {}
            None => {
                if get && date_known(ims) && unmodified(ims) {
                    return Outcome::NotModified;
                }
            }
        }
        Outcome::Proceed
    }

    #[test]
    fn precedence_matrix_matches_rfc_9110() {
        let current_tag = tag("\"v2\"");
        let modified = UNIX_EPOCH + Duration::from_millis(T0 * 1000 + 700);
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::POST,
        ];
        let mut checked = 0;
        for method in &methods {
            for im in TAGS {
                for ius in DATES {
                    for inm in TAGS {
                        for ims in DATES {
                            for exists in [true, false] {
                                for has_date in [true, false] {
                                    let mut h = HeaderMap::new();
                                    let mut put = |name: &HeaderName, v: Option<String>| {
                                        if let Some(v) = v {
                                            h.insert(
                                                name.clone(),
                                                HeaderValue::from_str(&v).expect("v"),
                                            );
                                        }
                                    };
                                    put(&header::IF_MATCH, tag_header(im).map(String::from));
                                    put(&header::IF_UNMODIFIED_SINCE, date_header(ius));
                                    put(&header::IF_NONE_MATCH, tag_header(inm).map(String::from));
                                    put(&header::IF_MODIFIED_SINCE, date_header(ims));
                                    let current = exists
                                        .then_some((&current_tag, has_date.then_some(modified)));
                                    let got = evaluate(method, &h, current);
                                    let want = oracle(method, im, ius, inm, ims, exists, has_date);
                                    assert_eq!(
                                        got, want,
                                        "{method} If-Match={im:?} If-Unmodified-Since={ius:?} \
                                         If-None-Match={inm:?} If-Modified-Since={ims:?} \
                                         exists={exists} has_date={has_date}"
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 6 * 5 * 6 * 5 * 2 * 2);
    }

    #[test]
    fn the_usual_cases_by_name() {
        let v2 = tag("\"v2\"");
        let current = Some((&v2, None));
        let h = |name: &HeaderName, v: &str| headers(&[(name, v)]);
        // Conditional GET: revalidation.
        assert_eq!(
            evaluate(&Method::GET, &h(&header::IF_NONE_MATCH, "\"v2\""), current),
            Outcome::NotModified
        );
        assert_eq!(
            evaluate(
                &Method::GET,
                &h(&header::IF_NONE_MATCH, "W/\"v2\""),
                current
            ),
            Outcome::NotModified
        );
        assert_eq!(
            evaluate(&Method::GET, &h(&header::IF_NONE_MATCH, "\"v1\""), current),
            Outcome::Proceed
        );
        // Lost-update prevention.
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_MATCH, "\"v2\""), current),
            Outcome::Proceed
        );
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_MATCH, "\"v1\""), current),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_MATCH, "W/\"v2\""), current),
            Outcome::PreconditionFailed
        );
        // Create only.
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_NONE_MATCH, "*"), None),
            Outcome::Proceed
        );
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_NONE_MATCH, "*"), current),
            Outcome::PreconditionFailed
        );
        // Update only.
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_MATCH, "*"), None),
            Outcome::PreconditionFailed
        );
        // Malformed.
        assert_eq!(
            evaluate(&Method::PUT, &h(&header::IF_MATCH, "v2"), current),
            Outcome::Malformed(header::IF_MATCH)
        );
        assert_eq!(
            evaluate(&Method::GET, &h(&header::IF_NONE_MATCH, "\"v2"), current),
            Outcome::Malformed(header::IF_NONE_MATCH)
        );
    }

    #[test]
    fn dates_with_several_lines_are_ignored() {
        let v2 = tag("\"v2\"");
        let modified = UNIX_EPOCH + Duration::from_secs(T0);
        let date = httpdate::fmt_http_date(modified);
        let h = headers(&[
            (&header::IF_MODIFIED_SINCE, &date),
            (&header::IF_MODIFIED_SINCE, &date),
        ]);
        assert_eq!(
            evaluate(&Method::GET, &h, Some((&v2, Some(modified)))),
            Outcome::Proceed
        );
        let h = headers(&[(&header::IF_MODIFIED_SINCE, &date)]);
        assert_eq!(
            evaluate(&Method::GET, &h, Some((&v2, Some(modified)))),
            Outcome::NotModified
        );
    }

    #[test]
    fn precondition_required() {
        let v2 = tag("\"v2\"");
        let current = Some((&v2, None));
        let none = HeaderMap::new();
        let req = Requirement::Required;
        for method in [Method::PUT, Method::PATCH, Method::DELETE, Method::POST] {
            assert_eq!(
                evaluate_with(&method, &none, current, req),
                Outcome::PreconditionRequired
            );
            assert_eq!(
                evaluate_with(&method, &none, current, Requirement::Optional),
                Outcome::Proceed
            );
        }
        assert_eq!(
            evaluate_with(&Method::GET, &none, current, req),
            Outcome::Proceed
        );
        let h = headers(&[(&header::IF_MATCH, "\"v2\"")]);
        assert_eq!(
            evaluate_with(&Method::PUT, &h, current, req),
            Outcome::Proceed
        );
        let h = headers(&[(&header::IF_NONE_MATCH, "*")]);
        assert_eq!(evaluate_with(&Method::PUT, &h, None, req), Outcome::Proceed);
        let date = httpdate::fmt_http_date(SystemTime::now());
        let h = headers(&[(&header::IF_UNMODIFIED_SINCE, &date)]);
        assert_eq!(
            evaluate_with(&Method::PUT, &h, current, req),
            Outcome::PreconditionRequired
        );
    }

    #[test]
    fn outcomes_become_responses() {
        let v2 = tag("\"v2\"");
        let modified = UNIX_EPOCH + Duration::from_secs(T0);
        let current = Some((&v2, Some(modified)));
        assert!(Outcome::Proceed.into_result(current).is_ok());
        match Outcome::NotModified.into_result(current) {
            Err(ApiError::NotModified {
                etag,
                last_modified,
            }) => {
                assert_eq!(etag, Some(HeaderValue::from_static("\"v2\"")));
                assert_eq!(
                    last_modified.as_ref().and_then(|v| v.to_str().ok()),
                    Some(httpdate::fmt_http_date(modified).as_str())
                );
            }
            other => panic!("{other:?}"),
        }
        let error = check(
            &Method::PUT,
            &headers(&[(&header::IF_MATCH, "nope")]),
            current,
            Requirement::Optional,
        )
        .expect_err("malformed");
        assert_eq!(error.kind(), kind::INVALID_HEADER);
        assert_eq!(error.to_problem().errors[0].pointer, "#/header/if-match");
        assert_eq!(
            Outcome::PreconditionFailed
                .into_result(current)
                .expect_err("412")
                .kind(),
            kind::PRECONDITION_FAILED
        );
        assert_eq!(
            Outcome::PreconditionRequired
                .into_result(current)
                .expect_err("428")
                .kind(),
            kind::PRECONDITION_REQUIRED
        );
    }
}
