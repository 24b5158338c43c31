//! Keyset pagination: `limit`, opaque cursors, `Link: rel="next"`, and the
//! `{ "items": [...], "next_cursor": … }` envelope.
//!
//! A cursor is the last row's sort values and id, serialised as compact
//! JSON, bound to a fingerprint of the query (filter + sort) and
//! authenticated with HMAC-SHA256:
//!
//! ```text
//! cursor = base64url( VERSION || payload_json || HMAC(key, VERSION || fingerprint || payload_json)[..16] )
//! ```
//!
//! The fingerprint is not in the cursor (it is recomputed from the request)
//! but is covered by the MAC, so a cursor presented with another filter or
//! sort fails verification exactly like a forged one: 400 `invalid-cursor`.
//! The MAC is truncated to 128 bits (enough against forgery, and cursors
//! stay short in URLs). Several keys may verify, so the key can be rotated
//! without breaking cursors clients hold.

use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::problem::{ApiError, kind};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// Longest cursor accepted, checked before decoding anything.
pub const MAX_CURSOR_LEN: usize = 2048;
/// Shortest accepted key: HMAC-SHA256's block-size-independent strength is
/// 256 bits; 32 random bytes give all of it.
pub const MIN_KEY_LEN: usize = 32;

/// Page size rules of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub default: u32,
    pub max: u32,
}

impl PageLimits {
    pub const DEFAULT: Self = Self {
        default: 50,
        max: 1000,
    };

    /// The page size for a request. Out-of-range values are refused (400)
    /// rather than clamped, so a client never silently gets fewer rows per
    /// page than it asked for and mistakes that for the end.
    pub fn resolve(&self, requested: Option<u32>) -> Result<u32, ApiError> {
        match requested {
            None => Ok(self.default),
            Some(0) => Err(ApiError::invalid_parameter(
                "query",
                "limit",
                "must be at least 1",
            )),
            Some(n) if n > self.max => Err(ApiError::invalid_parameter(
                "query",
                "limit",
                format!("must be at most {}", self.max),
            )),
            Some(n) => Ok(n),
        }
    }
}

/// The standard query parameters of a list endpoint (extract with
/// `Query<PageParams>` or flatten into the endpoint's own struct).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, at least 1; the default (50) and maximum (1000 unless the
    /// endpoint says less) are the endpoint's. Out of range is a 400, never
    /// silently clamped.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (also in its `Link: rel=next`).
    /// Opaque; valid only for the same query.
    pub cursor: Option<String>,
}

/// Identifies a query: SHA-256 over a canonical description of its filter
/// and sort. Callers pass a value whose serialisation is deterministic (a
/// struct, or the parsed filter tree, not the raw query string), and
/// include what the path scopes (tenant, collection or bucket) so a cursor
/// does not carry over to a sibling resource. `limit` stays out: a client
/// may change the page size between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryFingerprint([u8; 32]);

impl QueryFingerprint {
    pub fn of<T: Serialize>(query: &T) -> Self {
        // Serialising a value built from parsed input cannot fail for the
        // types we use; an empty description would still bind consistently.
        let bytes = serde_json::to_vec(query).unwrap_or_default();
        Self(Sha256::digest(&bytes).into())
    }
}

/// Where the previous page ended: the sort values of its last row and the
/// row's id (the tie-break).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position<K> {
    /// Sort values, one per sort field, in order.
    #[serde(rename = "k")]
    pub keys: K,
    #[serde(rename = "i")]
    pub id: String,
}

/// Signs and verifies cursors.
#[derive(Clone)]
pub struct CursorCodec {
    /// The first key signs; all verify (rotation).
    /// Shared: the codec is part of the state every request clones.
    keys: std::sync::Arc<[Vec<u8>]>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorCodec")
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorKeyError {
    #[error("a cursor key must be at least {MIN_KEY_LEN} bytes")]
    TooShort,
    #[error("no cursor key configured")]
    Missing,
}

fn invalid_cursor() -> ApiError {
    ApiError::invalid_parameter(
        "query",
        "cursor",
        "not a cursor this API issued for this query; start again without a cursor",
    )
    .with_kind(kind::INVALID_CURSOR)
}

impl CursorCodec {
    /// `current` signs; `previous` keys still verify.
    pub fn new(current: Vec<u8>, previous: Vec<Vec<u8>>) -> Result<Self, CursorKeyError> {
        let keys: Vec<Vec<u8>> = std::iter::once(current).chain(previous).collect();
        if keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
            return Err(CursorKeyError::TooShort);
        }
        Ok(Self { keys: keys.into() })
    }

    fn mac(key: &[u8], fingerprint: &QueryFingerprint, payload: &[u8]) -> HmacSha256 {
        // `new_from_slice` accepts any key length for HMAC.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(&[VERSION]);
        mac.update(&fingerprint.0);
        mac.update(payload);
        mac
    }

    pub fn encode<K: Serialize>(
        &self,
        position: &Position<K>,
        fingerprint: &QueryFingerprint,
    ) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let tag = Self::mac(&self.keys[0], fingerprint, &payload)
            .finalize()
            .into_bytes();
        let mut bytes = Vec::with_capacity(1 + payload.len() + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Verifies and decodes a cursor for this query; any failure is the same
    /// 400 `invalid-cursor`, so the response reveals nothing about why.
    pub fn decode<K: DeserializeOwned>(
        &self,
        cursor: &str,
        fingerprint: &QueryFingerprint,
    ) -> Result<Position<K>, ApiError> {
        if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
            return Err(invalid_cursor());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| invalid_cursor())?;
        if bytes.len() < 1 + MAC_LEN || bytes[0] != VERSION {
            return Err(invalid_cursor());
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let payload = &body[1..];
        // Constant-time comparison (hmac's verify uses `subtle`).
        let authentic = self.keys.iter().any(|key| {
            Self::mac(key, fingerprint, payload)
                .verify_truncated_left(tag)
                .is_ok()
        });
        if !authentic {
            return Err(invalid_cursor());
        }
        // Authentic payloads are ours, but a deploy may change `K`.
        serde_json::from_slice(payload).map_err(|_| invalid_cursor())
    }

    /// The cursor of the request, decoded, or `None` on the first page.
    pub fn decode_param<K: DeserializeOwned>(
        &self,
        cursor: Option<&str>,
        fingerprint: &QueryFingerprint,
    ) -> Result<Option<Position<K>>, ApiError> {
        cursor.map(|c| self.decode(c, fingerprint)).transpose()
    }
}

/// `<path?query-with-cursor>; rel="next"`: the request's own URI with its
/// `cursor` parameter replaced, as a relative reference (RFC 8288 §3.2).
pub fn next_link(uri: &Uri, next_cursor: &str) -> Option<HeaderValue> {
    let query = uri.query().unwrap_or("");
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name != "cursor" {
            serializer.append_pair(&name, &value);
        }
    }
    serializer.append_pair("cursor", next_cursor);
    let link = format!("<{}?{}>; rel=\"next\"", uri.path(), serializer.finish());
    HeaderValue::from_str(&link).ok()
}

/// The list envelope.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Absent or null on the last page; otherwise pass it as `cursor`.
    pub next_cursor: Option<String>,
    /// Only when the client asked for it (counting is not free).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched rows: the extra row only
    /// tells that there is a next page (it is not returned), and the cursor
    /// points after the last returned row.
    pub fn from_rows<K: Serialize>(
        mut rows: Vec<T>,
        limit: u32,
        codec: &CursorCodec,
        fingerprint: &QueryFingerprint,
        position_of: impl Fn(&T) -> Position<K>,
    ) -> Self {
        let limit = limit as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last()
                .map(|row| codec.encode(&position_of(row), fingerprint))
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
            total: None,
        }
    }
}

impl<T: Serialize> Page<T> {
    /// The JSON response, with `Link: rel="next"` when there is a next page.
    pub fn into_response_for(self, uri: &Uri) -> Response {
        let link = self.next_cursor.as_deref().and_then(|c| next_link(uri, c));
        let mut response = axum::Json(self).into_response();
        if let Some(link) = link {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn codec() -> CursorCodec {
        CursorCodec::new(vec![7; 32], vec![]).expect("key")
    }

    #[derive(Serialize)]
    struct Query<'a> {
        filter: &'a str,
        sort: &'a [&'a str],
    }

    fn fp(filter: &str, sort: &[&str]) -> QueryFingerprint {
        QueryFingerprint::of(&Query { filter, sort })
    }

    #[test]
    fn limits() {
        let limits = PageLimits {
            default: 20,
            max: 100,
        };
        assert_eq!(limits.resolve(None).ok(), Some(20));
        assert_eq!(limits.resolve(Some(1)).ok(), Some(1));
        assert_eq!(limits.resolve(Some(100)).ok(), Some(100));
        for bad in [0, 101, u32::MAX] {
            let error = limits.resolve(Some(bad)).expect_err("out of range");
            assert_eq!(error.kind(), kind::INVALID_PARAMETER);
            assert_eq!(error.to_problem().errors[0].pointer, "#/query/limit");
        }
    }

    #[test]
    fn keys_must_be_long_enough() {
        assert_eq!(
            CursorCodec::new(vec![1; 31], vec![]).err(),
            Some(CursorKeyError::TooShort)
        );
        assert_eq!(
            CursorCodec::new(vec![1; 32], vec![vec![1; 3]]).err(),
            Some(CursorKeyError::TooShort)
        );
        assert!(
            !format!("{:?}", codec()).contains('7'),
            "keys never printed"
        );
    }

    #[test]
    fn round_trip() {
        let position = Position {
            keys: json!(["2026-01-01T00:00:00Z", 42, null]),
            id: "doc-1".into(),
        };
        let query = fp("a eq 1", &["created_at", "n"]);
        let cursor = codec().encode(&position, &query);
        assert!(cursor.len() < 120, "compact: {cursor}");
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {cursor}"
        );
        let back: Position<serde_json::Value> = codec().decode(&cursor, &query).expect("decode");
        assert_eq!(back, position);
    }

    #[test]
    fn cursor_bound_to_its_query() {
        let position = Position {
            keys: vec![1],
            id: "x".into(),
        };
        let cursor = codec().encode(&position, &fp("a eq 1", &["n"]));
        for other in [
            fp("a eq 2", &["n"]),
            fp("a eq 1", &["-n"]),
            fp("a eq 1", &[]),
        ] {
            let error = codec()
                .decode::<Vec<i32>>(&cursor, &other)
                .expect_err("other query");
            assert_eq!(error.kind(), kind::INVALID_CURSOR);
        }
    }

    #[test]
    fn forged_and_garbage_cursors_are_refused() {
        let query = fp("", &[]);
        let position = Position {
            keys: vec![1],
            id: "x".into(),
        };
        let cursor = codec().encode(&position, &query);
        // Another key.
        let other = CursorCodec::new(vec![8; 32], vec![]).expect("key");
        assert!(other.decode::<Vec<i32>>(&cursor, &query).is_err());
        // Every single-byte change of the decoded bytes.
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).expect("b64");
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let tampered = URL_SAFE_NO_PAD.encode(tampered);
            assert!(
                codec().decode::<Vec<i32>>(&tampered, &query).is_err(),
                "byte {i}"
            );
        }
        // A client-made payload with no valid MAC.
        let forged = URL_SAFE_NO_PAD
            .encode([&[VERSION][..], br#"{"k":[999],"i":"z"}"#, &[0; MAC_LEN]].concat());
        assert!(codec().decode::<Vec<i32>>(&forged, &query).is_err());
        for garbage in ["", "!!!", "AA", &"A".repeat(MAX_CURSOR_LEN + 1)] {
            let error = codec()
                .decode::<Vec<i32>>(garbage, &query)
                .expect_err("garbage");
            assert_eq!(error.kind(), kind::INVALID_CURSOR);
        }
        // Authentic, but not the shape the endpoint expects.
        assert!(codec().decode::<Vec<String>>(&cursor, &query).is_err());
    }

    #[test]
    fn rotation_keeps_old_cursors_valid() {
        let query = fp("", &[]);
        let position = Position {
            keys: (),
            id: "x".into(),
        };
        let old = CursorCodec::new(vec![1; 32], vec![]).expect("key");
        let rotated = CursorCodec::new(vec![2; 32], vec![vec![1; 32]]).expect("keys");
        let cursor = old.encode(&position, &query);
        assert!(rotated.decode::<()>(&cursor, &query).is_ok());
        let fresh = rotated.encode(&position, &query);
        assert!(old.decode::<()>(&fresh, &query).is_err());
        assert!(
            rotated
                .decode_param::<()>(None, &query)
                .expect("none")
                .is_none()
        );
    }

    #[test]
    fn link_header_replaces_the_cursor() {
        let uri: Uri =
            "/v1/tenants/t/collections/c/documents?limit=2&cursor=old&sort=-n&filter=a%20b"
                .parse()
                .expect("uri");
        let link = next_link(&uri, "NEW_-1").expect("link");
        assert_eq!(
            link,
            "</v1/tenants/t/collections/c/documents?limit=2&sort=-n&filter=a+b&cursor=NEW_-1>; rel=\"next\""
        );
        let bare: Uri = "/v1/x".parse().expect("uri");
        assert_eq!(
            next_link(&bare, "c").expect("link"),
            "</v1/x?cursor=c>; rel=\"next\""
        );
    }

    #[tokio::test]
    async fn pages_from_rows() {
        let query = fp("", &[]);
        let rows: Vec<(i32, String)> = (0..4).map(|i| (i, format!("id{i}"))).collect();
        let position_of = |row: &(i32, String)| Position {
            keys: [row.0],
            id: row.1.clone(),
        };
        let page = Page::from_rows(rows.clone(), 3, &codec(), &query, position_of);
        assert_eq!(page.items.len(), 3);
        let cursor = page.next_cursor.clone().expect("more");
        let position: Position<[i32; 1]> = codec().decode(&cursor, &query).expect("decode");
        assert_eq!((position.keys, position.id.as_str()), ([2], "id2"));

        let last = Page::from_rows(rows[..3].to_vec(), 3, &codec(), &query, position_of);
        assert_eq!(last.next_cursor, None);

        let uri: Uri = "/v1/x?limit=3".parse().expect("uri");
        let response = page.into_response_for(&uri);
        assert!(response.headers().contains_key(header::LINK));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["next_cursor"], cursor.as_str());
        assert!(body.get("total").is_none());

        let response = last.into_response_for(&uri);
        assert!(!response.headers().contains_key(header::LINK));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["next_cursor"], serde_json::Value::Null);
    }
}
