//! Cache keys and tags. Every key is built here, never by hand, so the
//! conventions (ARCHITECTURE.md, "Cache") hold by construction:
//!
//! ```text
//! v1:t:<tenant uuid>:<kind>:<id>[:<id>…][|<vary>=<value>…]
//! ```
//!
//! - `v1` is the key format's version: a change of format or of a value's
//!   encoding bumps it, so old entries are simply never read again;
//! - the tenant's catalog id (a UUID, never its name: names are reused) comes
//!   second, so no two tenants can share a key, whatever their ids look like;
//! - `kind` names the resource (`document`, `collection`, `api-key`, …);
//! - ids and vary values are percent-escaped (`:`, `|`, `=`, `%`), so a
//!   hostile id cannot forge another key's shape;
//! - vary pairs (role, representation…) end the key, in the order given.
//!
//! Tags group keys for invalidation (`v1:t:<tenant>:tag:<name>`); each has a
//! generation counter (see [`super::HybridCache::invalidate_tag`]).

use std::fmt::Write as _;

use uuid::Uuid;

/// A cache key (see the module docs for its shape).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    key: String,
    kind: &'static str,
}

impl CacheKey {
    /// Starts a key for `tenant`'s resource of `kind`.
    pub fn tenant(tenant: Uuid, kind: &'static str) -> KeyBuilder {
        debug_assert!(is_plain(kind), "kinds are fixed words");
        KeyBuilder {
            key: format!("v1:t:{tenant}:{kind}"),
            kind,
            varied: false,
        }
    }

    /// A platform-wide key (no tenant: the catalog's own answers, keyed by
    /// what the request names).
    pub fn platform(kind: &'static str) -> KeyBuilder {
        debug_assert!(is_plain(kind), "kinds are fixed words");
        KeyBuilder {
            key: format!("v1:p:{kind}"),
            kind,
            varied: false,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The resource kind (for metrics).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// Builds a [`CacheKey`]: ids first, then vary pairs.
#[derive(Debug)]
pub struct KeyBuilder {
    key: String,
    kind: &'static str,
    varied: bool,
}

impl KeyBuilder {
    /// Adds an id segment (escaped).
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        debug_assert!(!self.varied, "ids come before vary pairs");
        self.key.push(':');
        escape_into(&mut self.key, id.as_ref());
        self
    }

    /// Adds what varies the value (the caller's role, a representation).
    pub fn vary(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        debug_assert!(is_plain(name));
        self.key.push('|');
        self.key.push_str(name);
        self.key.push('=');
        escape_into(&mut self.key, value.as_ref());
        self.varied = true;
        self
    }

    pub fn build(self) -> CacheKey {
        CacheKey {
            key: self.key,
            kind: self.kind,
        }
    }
}

/// An invalidation group of one tenant (or of the platform).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// A tag of `tenant`: `name` then escaped ids (`collection`, `docs`).
    pub fn tenant<'a>(
        tenant: Uuid,
        name: &'static str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        debug_assert!(is_plain(name));
        let mut tag = format!("v1:t:{tenant}:tag:{name}");
        for id in ids {
            tag.push(':');
            escape_into(&mut tag, id);
        }
        Self(tag)
    }

    /// Everything cached for `tenant` (suspension, deletion, key changes).
    pub fn whole_tenant(tenant: Uuid) -> Self {
        Self::tenant(tenant, "all", [])
    }

    /// A platform-wide tag.
    pub fn platform(name: &'static str) -> Self {
        debug_assert!(is_plain(name));
        Self(format!("v1:p:tag:{name}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where its generation counter lives in Redis.
    pub(super) fn generation_key(&self) -> String {
        format!("{}:gen", self.0)
    }

    /// A tag received in an invalidation message (trusted: our own writers).
    pub(super) fn from_wire(tag: String) -> Self {
        Self(tag)
    }
}

fn is_plain(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Percent-escapes the bytes that give a key its structure.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            ':' | '|' | '=' | '%' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_bytes([0xaa; 16]);
    const B: Uuid = Uuid::from_bytes([0xbb; 16]);

    #[test]
    fn keys_start_with_the_version_and_the_tenant() {
        let key = CacheKey::tenant(A, "document")
            .id("books")
            .id("dune")
            .vary("role", "viewer")
            .build();
        assert_eq!(
            key.as_str(),
            "v1:t:aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa:document:books:dune|role=viewer"
        );
    }

    #[test]
    fn the_same_ids_in_two_tenants_are_two_keys() {
        let a = CacheKey::tenant(A, "document").id("c").id("1").build();
        let b = CacheKey::tenant(B, "document").id("c").id("1").build();
        assert_ne!(a, b);
    }

    #[test]
    fn a_hostile_id_cannot_forge_another_keys_shape() {
        // Without escaping, "c:1" as one id would equal ids "c" and "1", and
        // a `|role=owner` in an id would pose as a vary pair.
        let joined = CacheKey::tenant(A, "document").id("c:1").build();
        let split = CacheKey::tenant(A, "document").id("c").id("1").build();
        assert_ne!(joined, split);
        let forged = CacheKey::tenant(A, "document")
            .id("x|role=owner")
            .vary("role", "viewer")
            .build();
        let real = CacheKey::tenant(A, "document")
            .id("x")
            .vary("role", "owner")
            .build();
        assert_ne!(forged, real);
        assert!(!forged.as_str().contains("|role=owner"));
        // And the escape character itself is escaped.
        let pct = CacheKey::tenant(A, "document").id("%3A").build();
        assert_ne!(pct, CacheKey::tenant(A, "document").id(":").build());
    }

    #[test]
    fn tags_are_per_tenant_and_escaped() {
        assert_ne!(
            Tag::tenant(A, "collection", ["books"]),
            Tag::tenant(B, "collection", ["books"])
        );
        assert_ne!(
            Tag::tenant(A, "document", ["a:b"]),
            Tag::tenant(A, "document", ["a", "b"])
        );
        assert!(
            Tag::whole_tenant(A)
                .generation_key()
                .ends_with(":tag:all:gen")
        );
    }
}
