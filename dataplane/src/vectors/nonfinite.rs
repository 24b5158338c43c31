//! `NaN`, `Infinity` and `-Infinity` are not JSON, but common serialisers
//! (Python's `json.dumps`, JavaScript's number printing in some clients)
//! emit them for non-finite floats. For the vector endpoints a non-finite
//! component is a validation error with a pointer (422), not a syntax error
//! (400): when a body fails to parse, the bare tokens (outside strings) are
//! rewritten into placeholder strings and the body parsed again, so the
//! validation that follows reports each one where it is.

use serde_json::Value;

/// The placeholders: a NUL prefix no client string is expected to carry.
const PLACEHOLDERS: [(&[u8], &str); 3] = [
    (b"-Infinity", "\"\\u0000-Infinity\""),
    (b"Infinity", "\"\\u0000Infinity\""),
    (b"NaN", "\"\\u0000NaN\""),
];

pub fn is_placeholder(value: &Value) -> bool {
    matches!(
        value.as_str(),
        Some("\u{0}NaN" | "\u{0}Infinity" | "\u{0}-Infinity")
    )
}

/// The body with bare non-finite tokens replaced, or `None` when it has
/// none (then the original syntax error stands). Linear in the body size.
pub fn rewrite(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut in_string = false;
    let mut escaped = false;
    let mut replaced = false;
    let mut i = 0;
    'outer: while i < body.len() {
        let b = body[i];
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            out.push(b);
            i += 1;
            continue;
        }
        for (token, placeholder) in PLACEHOLDERS {
            if body[i..].starts_with(token) {
                out.extend_from_slice(placeholder.as_bytes());
                i += token.len();
                replaced = true;
                continue 'outer;
            }
        }
        out.push(b);
        i += 1;
    }
    replaced.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_outside_strings_become_placeholders() {
        let body = br#"{"id": "NaN", "vector": [NaN, -Infinity, Infinity, 1]}"#;
        let rewritten = rewrite(body).expect("rewritten");
        let value: Value = serde_json::from_slice(&rewritten).expect("json");
        assert_eq!(value["id"], "NaN", "strings are left alone");
        let v = value["vector"].as_array().expect("array");
        assert!(v[..3].iter().all(is_placeholder));
        assert_eq!(v[3], 1);
        assert!(rewrite(br#"{"a": "x\"NaN"}"#).is_none());
        assert!(rewrite(b"[1, 2").is_none());
    }
}
