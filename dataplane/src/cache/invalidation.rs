//! Which cached entries a change makes stale, and when they are dropped.
//!
//! Every write of the APIs records its events through
//! [`crate::events::record`], in the write's transaction; that is the one
//! place that knows what changed. [`note`] collects those events for the
//! current request, and [`invalidate_after_writes`] (a layer on the API
//! routes) bumps the matching tags once the handler has answered with a
//! success, before the response leaves: by the time a client sees its
//! write acknowledged, no replica serves the old value (every replica has
//! acknowledged the invalidation, or its lease has run out:
//! [`super::coherence`]).
//!
//! The outbox dispatcher applies the same mapping to every event it
//! publishes ([`tags_for_event`]), so a replica that crashed between its
//! commit and its invalidation is covered too (at least once; bumping a
//! generation twice only costs a miss).
//!
//! | event | tags bumped | cached entries it drops |
//! | --- | --- | --- |
//! | `collection.*` | `collection:<name>`, `collections` | the collection's settings, its documents, lists and searches; lists of collections |
//! | `document.*` | `document:<collection>:<id>`, `documents:<collection>` | that document; the collection's lists |
//! | `vector.*` | `vectors:<collection>` | the collection's search results |
//! | `key.revoked` | `api-key:<id>` | the key's row (refused at once everywhere) |
//! | `member.*`, `invitation.accepted` | `api-keys` | every key row of the tenant (a member's keys follow their role) |
//! | `object.*`, `upload.*` | `object:<bucket>:<key>`, `objects:<bucket>` | the object's metadata; the bucket's lists |
//! | `bucket.*` (the operator's) | `bucket:<bucket>`, `objects:<bucket>` | the bucket's rules and what was cached under them; its lists |

use std::cell::RefCell;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use uuid::Uuid;

use super::{HybridCache, Tag};
use crate::events::Event;

/// What the current request changed, as far as the cache is concerned.
#[derive(Default)]
struct Pending {
    tenant: Option<Uuid>,
    tags: Vec<Tag>,
    /// Events recorded before the tenant was known (not expected: the
    /// extractor runs first), mapped once it is.
    events: Vec<(String, String, Value)>,
}

tokio::task_local! {
    static PENDING: RefCell<Pending>;
}

/// The tenant of the current request (set by the `TenantContext`
/// extractor; no-op outside [`invalidate_after_writes`]).
pub fn set_tenant(tenant: Uuid) {
    let _ = PENDING.try_with(|pending| {
        let mut pending = pending.borrow_mut();
        pending.tenant = Some(tenant);
        let events = std::mem::take(&mut pending.events);
        for (kind, aggregate, data) in events {
            let tags = tags_for_event(tenant, &kind, &aggregate, &data);
            pending.tags.extend(tags);
        }
    });
}

/// Notes an event the current request recorded (called by
/// [`crate::events::record`]; no-op outside a request).
pub fn note(event: &Event) {
    let _ = PENDING.try_with(|pending| {
        let mut pending = pending.borrow_mut();
        match pending.tenant {
            Some(tenant) => {
                let tags = tags_for_event(tenant, &event.kind, &event.aggregate_id, &event.data);
                pending.tags.extend(tags);
            }
            None => pending.events.push((
                event.kind.to_string(),
                event.aggregate_id.clone(),
                event.data.clone(),
            )),
        }
    });
}

/// Middleware: see the module documentation. Only successful answers
/// invalidate (a failed write rolled back: nothing changed).
pub async fn invalidate_after_writes(
    State(cache): State<HybridCache>,
    request: Request,
    next: Next,
) -> Response {
    let (response, mut tags) = PENDING
        .scope(RefCell::new(Pending::default()), async {
            let response = next.run(request).await;
            let tags = PENDING.with(|pending| std::mem::take(&mut pending.borrow_mut().tags));
            (response, tags)
        })
        .await;
    if response.status().is_success() && !tags.is_empty() {
        tags.sort();
        tags.dedup();
        cache.invalidate_tags(&tags).await;
    }
    response
}

fn text<'a>(data: &'a Value, field: &str) -> Option<&'a str> {
    data.get(field).and_then(Value::as_str)
}

/// The tags an event makes stale (see the table in the module docs).
pub fn tags_for_event(tenant: Uuid, kind: &str, aggregate_id: &str, data: &Value) -> Vec<Tag> {
    let (aggregate, _action) = kind.split_once('.').unwrap_or((kind, ""));
    let mut tags = Vec::new();
    match aggregate {
        "collection" => {
            if let Some(name) = text(data, "name") {
                tags.push(Tag::tenant(tenant, "collection", [name]));
            }
            // Lists of collections (the output cache's `collections`).
            tags.push(Tag::tenant(tenant, "collections", []));
        }
        "document" => {
            if let Some(collection) = text(data, "collection") {
                if let Some(id) = text(data, "id") {
                    tags.push(Tag::tenant(tenant, "document", [collection, id]));
                }
                tags.push(Tag::tenant(tenant, "documents", [collection]));
            }
        }
        "vector" => {
            if let Some(collection) = text(data, "collection") {
                tags.push(Tag::tenant(tenant, "vectors", [collection]));
            }
        }
        "key" if kind == "key.revoked" => {
            tags.push(Tag::tenant(tenant, "api-key", [aggregate_id]));
        }
        "member" | "invitation" => tags.push(Tag::tenant(tenant, "api-keys", [])),
        // The operator's `bucket.configured`/`bucket.deleted`: the
        // bucket's rules changed (public flag, types, limits), so what was
        // cached under them goes.
        "bucket" => {
            if let Some(bucket) = text(data, "bucket") {
                tags.push(Tag::tenant(tenant, "bucket", [bucket]));
                tags.push(Tag::tenant(tenant, "objects", [bucket]));
            }
        }
        "object" | "upload" => {
            if let Some(bucket) = text(data, "bucket") {
                if let Some(key) = text(data, "key") {
                    tags.push(Tag::tenant(tenant, "object", [bucket, key]));
                }
                tags.push(Tag::tenant(tenant, "objects", [bucket]));
            }
        }
        _ => {}
    }
    tags
}

/// The document tags a cached document GET carries.
pub fn document_tags(tenant: Uuid, collection: &str, id: &str) -> Vec<Tag> {
    vec![
        Tag::whole_tenant(tenant),
        Tag::tenant(tenant, "collection", [collection]),
        Tag::tenant(tenant, "document", [collection, id]),
    ]
}

/// The tags a cached object row carries (by bucket name, as the
/// `object.*` events name it; the key's bucket id tells incarnations of a
/// name apart).
pub fn object_tags(tenant: Uuid, bucket: &str, key: &str) -> Vec<Tag> {
    vec![
        Tag::whole_tenant(tenant),
        Tag::tenant(tenant, "bucket", [bucket]),
        Tag::tenant(tenant, "object", [bucket, key]),
    ]
}

/// The tags a cached API-key row carries.
pub fn api_key_tags(tenant: Uuid, key_id: &str) -> Vec<Tag> {
    vec![
        Tag::whole_tenant(tenant),
        Tag::tenant(tenant, "api-keys", []),
        Tag::tenant(tenant, "api-key", [key_id]),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T: Uuid = Uuid::from_bytes([7; 16]);

    #[test]
    fn a_document_change_drops_the_document_and_the_lists() {
        let tags = tags_for_event(
            T,
            "document.updated",
            "c-id/dune",
            &json!({"collection": "books", "id": "dune", "version": 3}),
        );
        assert_eq!(
            tags,
            [
                Tag::tenant(T, "document", ["books", "dune"]),
                Tag::tenant(T, "documents", ["books"]),
            ]
        );
        // What a cached GET carries includes the bumped document tag.
        assert!(document_tags(T, "books", "dune").contains(&tags[0]));
    }

    #[test]
    fn a_revoked_key_drops_that_key_and_member_changes_drop_all_keys() {
        let revoked = tags_for_event(T, "key.revoked", "0123456789abcdef", &json!({}));
        assert!(api_key_tags(T, "0123456789abcdef").contains(&revoked[0]));
        assert!(!api_key_tags(T, "fedcba9876543210").contains(&revoked[0]));
        let demoted = tags_for_event(T, "member.updated", "ada", &json!({"to": "viewer"}));
        assert!(api_key_tags(T, "fedcba9876543210").contains(&demoted[0]));
    }

    #[test]
    fn an_object_change_drops_that_object_only() {
        for kind in ["object.created", "object.replaced", "object.deleted"] {
            let tags = tags_for_event(
                T,
                kind,
                "b-id/photos/cat.png",
                &json!({"bucket": "media", "key": "photos/cat.png", "size": 3}),
            );
            assert!(object_tags(T, "media", "photos/cat.png").contains(&tags[0]));
            assert!(!object_tags(T, "media", "photos/dog.png").contains(&tags[0]));
            assert!(!object_tags(T, "other", "photos/cat.png").contains(&tags[0]));
        }
        // A bucket's new rules (or its deletion) drop its objects' rows.
        let configured = tags_for_event(T, "bucket.configured", "b", &json!({"bucket": "media"}));
        assert!(object_tags(T, "media", "photos/cat.png").contains(&configured[0]));
    }

    #[test]
    fn a_collection_change_drops_its_documents() {
        let tags = tags_for_event(T, "collection.deleted", "c-id", &json!({"name": "books"}));
        assert!(document_tags(T, "books", "dune").contains(&tags[0]));
        assert!(!document_tags(T, "films", "dune").contains(&tags[0]));
    }

    #[test]
    fn events_without_what_names_an_entry_bump_nothing() {
        assert!(tags_for_event(T, "document.updated", "x", &json!({})).is_empty());
        assert!(tags_for_event(T, "key.created", "k", &json!({"id": "k"})).is_empty());
        assert!(tags_for_event(T, "tenant.admin_invited", "i", &json!({})).is_empty());
    }
}
