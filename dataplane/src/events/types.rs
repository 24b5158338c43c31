//! The event types the APIs record, with what their `data` holds. This
//! table is the source of docs/events.md's list; a webhook endpoint's
//! filter names these (or `<aggregate>.*`).
//!
//! Every event carries its aggregate (type, id, and where it has one the
//! new version and ETag); `data` is a summary of the change, never a whole
//! document or a secret.

/// One documented type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    pub name: &'static str,
    /// The aggregate id's shape.
    pub aggregate: &'static str,
    /// What `data` holds.
    pub data: &'static str,
}

macro_rules! types {
    ($($const:ident = ($name:literal, $aggregate:literal, $data:literal);)*) => {
        $(pub const $const: &str = $name;)*
        /// Every type, in documentation order.
        pub const ALL: &[EventType] = &[$(EventType { name: $name, aggregate: $aggregate, data: $data }),*];
    };
}

types! {
    COLLECTION_CREATED = ("collection.created", "`<collection id>`",
        "`name`, `version`");
    COLLECTION_UPDATED = ("collection.updated", "`<collection id>`",
        "`name`, `version`");
    COLLECTION_DELETED = ("collection.deleted", "`<collection id>`",
        "`name`, `version` (the last); its documents and vectors go without events of their own");
    DOCUMENT_CREATED = ("document.created", "`<collection id>/<document id>`",
        "`collection`, `id`, `version`, `fields` (top-level field names, at most 64)");
    DOCUMENT_UPDATED = ("document.updated", "`<collection id>/<document id>`",
        "`collection`, `id`, `version`, `changed` (top-level fields whose value changed, at most 64)");
    DOCUMENT_DELETED = ("document.deleted", "`<collection id>/<document id>`",
        "`collection`, `id`, `version` (the last)");
    VECTOR_UPSERTED = ("vector.upserted", "`<collection id>/<vector id>`",
        "`collection`, `id`, `version` (one event per vector)");
    VECTOR_DELETED = ("vector.deleted", "`<collection id>/<vector id>`",
        "`collection`, `id`, `version` (the last; one event per vector)");
    KEY_CREATED = ("key.created", "`<key id>`",
        "`id`, `name`, `role`, `subject` (never the secret)");
    KEY_REVOKED = ("key.revoked", "`<key id>`", "`id`, `role`");
    MEMBER_JOINED = ("invitation.accepted", "`<invitation id>`",
        "`invitationId`, `subject`, `email`, `role`, `keyId` (the first key's id, never the key)");
    MEMBER_UPDATED = ("member.updated", "`<subject>`", "`subject`, `from`, `to` (roles)");
    MEMBER_REMOVED = ("member.removed", "`<subject>`", "`subject`, `role`");
    TENANT_ADMIN_INVITED = ("tenant.admin_invited", "`<invitation id>`",
        "written by the operator: `email`, `role`, `expiresAt` (never the token)");
    OBJECT_CREATED = ("object.created", "`<bucket id>/<key>`",
        "storage API: `bucket`, `key`, `version`, `size`, `etag`");
    OBJECT_REPLACED = ("object.replaced", "`<bucket id>/<key>`",
        "storage API: `bucket`, `key`, `version`, `size`, `etag`");
    OBJECT_DELETED = ("object.deleted", "`<bucket id>/<key>`",
        "storage API: `bucket`, `key`, `version`");
    OBJECT_INFECTED = ("object.infected", "`<bucket id>/<key>`",
        "storage API: the antivirus verdict of a refused upload");
    UPLOAD_CREATED = ("upload.created", "`<bucket id>/<upload id>`",
        "storage API: `bucket`, `key`, `upload`");
    UPLOAD_ABORTED = ("upload.aborted", "`<bucket id>/<upload id>`",
        "storage API: `bucket`, `parts`");
    SIGNING_KEY_ROTATED = ("signing_key.rotated", "`<key id>`",
        "storage API: `keyId` (the new key's id, never its secret); URLs signed with older keys work through the grace period");
    BUCKET_CONFIGURED = ("bucket.configured", "`<bucket id>`",
        "written by the operator, once per Bucket generation: `bucket`, `generation`, the rules (`public`, `quotaBytes`, `quotaObjects`, `maxObjectSize`, `allowedContentTypes`, `compression`, `imageTransforms`, `antivirusScan`)");
    BUCKET_DELETED = ("bucket.deleted", "`<bucket id>`",
        "written by the operator once the bucket's objects are gone: `bucket`");
}

/// Whether `filter` is a valid webhook filter: a type name (`a.b`) or a
/// whole aggregate (`a.*`). Unknown names are allowed (types are added
/// over time; an endpoint may subscribe ahead), malformed ones are not.
pub fn is_filter(filter: &str) -> bool {
    let Some((aggregate, action)) = filter.split_once('.') else {
        return false;
    };
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    };
    word(aggregate) && (action == "*" || word(action))
}

/// Whether an endpoint with `filters` (empty: all) wants `event_type`.
pub fn matches(filters: &[String], event_type: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| match f.strip_suffix(".*") {
            Some(aggregate) => event_type
                .strip_prefix(aggregate)
                .is_some_and(|rest| rest.starts_with('.')),
            None => f == event_type,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(is_filter("document.updated") && is_filter("document.*"));
        assert!(!is_filter("document") && !is_filter("Document.x") && !is_filter(".x"));
        assert!(!is_filter("*") && !is_filter("a.b.c"));
        let f = vec!["document.*".to_string(), "key.created".to_string()];
        assert!(matches(&f, "document.deleted"));
        assert!(matches(&f, "key.created"));
        assert!(!matches(&f, "key.revoked"));
        assert!(!matches(&f, "documents.x"));
        assert!(matches(&[], "anything.at_all"));
    }

    #[test]
    fn names_are_unique_and_valid_filters() {
        let mut names: Vec<&str> = ALL.iter().map(|t| t.name).collect();
        assert!(names.iter().all(|n| is_filter(n)));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
