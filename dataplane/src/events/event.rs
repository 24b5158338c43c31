//! The event a write records, and the one way to record it: in the write's
//! transaction, as an `outbox` row.
//!
//! ```ignore
//! let mut tx = pool.begin().await?;
//! // … the change …
//! events::record(&mut tx, Event::new(types::DOCUMENT_UPDATED, format!("{c}/{id}"))
//!     .version(doc.version).etag(&doc.etag()).data(json!({"changed": changed}))).await?;
//! tx.commit().await?;
//! ```
//!
//! The row holds the event id (a UUIDv7, fixed here so it never changes
//! across retries), the type (`topic`), the aggregate id and a payload
//! `{"version", "etag", "data"}`; [`super::envelope`] turns it into what
//! the sinks receive. A request that records an event also sends a wake-up
//! hint after its response ([`super::hint`]).

use std::borrow::Cow;

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::http::preconditions::EntityTag;

/// One state change. Build with [`Event::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Uuid,
    /// `<aggregate>.<action>`, one of [`super::types`].
    pub kind: Cow<'static, str>,
    pub aggregate_id: String,
    pub version: Option<i64>,
    /// The aggregate's ETag after the change, as sent in `ETag` (quoted).
    pub etag: Option<String>,
    /// A summary of the change (never a whole large document or a secret).
    pub data: Value,
}

impl Event {
    pub fn new(kind: impl Into<Cow<'static, str>>, aggregate_id: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.into(),
            aggregate_id: aggregate_id.into(),
            version: None,
            etag: None,
            data: json!({}),
        }
    }

    pub fn version(mut self, version: i64) -> Self {
        self.version = Some(version);
        self
    }

    pub fn etag(mut self, etag: &EntityTag) -> Self {
        self.etag = Some(etag.to_string());
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// The stored payload.
    fn payload(&self) -> Value {
        json!({"version": self.version, "etag": self.etag, "data": self.data})
    }
}

/// Appends `event` to the outbox on `conn`, which must be the write's
/// transaction. Returns the event id.
pub async fn record(conn: &mut PgConnection, event: Event) -> Result<Uuid, sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, aggregate_id, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(event.id)
    .bind(event.kind.as_ref())
    .bind(&event.aggregate_id)
    .bind(event.payload())
    .execute(conn)
    .await?;
    super::hint::mark();
    crate::cache::invalidation::note(&event);
    Ok(event.id)
}

/// Appends several events in one statement (batch writes: vectors, bulk).
pub async fn record_all(conn: &mut PgConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_ref()).collect();
    let aggregates: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    let payloads: Vec<Value> = events.iter().map(Event::payload).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, aggregate_id, payload) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&aggregates)
    .bind(&payloads)
    .execute(conn)
    .await?;
    super::hint::mark();
    for event in events {
        crate::cache::invalidation::note(event);
    }
    Ok(())
}

/// At most this many field names go into a `fields`/`changed` summary.
pub const MAX_SUMMARY_FIELDS: usize = 64;

/// The top-level field names of a JSON object (sorted, at most
/// [`MAX_SUMMARY_FIELDS`]).
pub fn field_names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = value
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.truncate(MAX_SUMMARY_FIELDS);
    names
}

/// The top-level fields whose value differs between two objects (added,
/// removed or changed; sorted, at most [`MAX_SUMMARY_FIELDS`]).
pub fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = before.as_object().unwrap_or(&empty);
    let b = after.as_object().unwrap_or(&empty);
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    names.sort_unstable();
    names.truncate(MAX_SUMMARY_FIELDS);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let before = json!({"a": 1, "b": {"x": 1}, "c": 3});
        let after = json!({"a": 1, "b": {"x": 2}, "d": 4});
        assert_eq!(changed_fields(&before, &after), ["b", "c", "d"]);
        assert_eq!(field_names(&after), ["a", "b", "d"]);
        let wide: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("f{i:03}"), json!(i))).collect();
        assert_eq!(field_names(&Value::Object(wide)).len(), MAX_SUMMARY_FIELDS);
    }

    #[test]
    fn payload_shape() {
        let e = Event::new("document.updated", "c/d")
            .version(3)
            .data(json!({"changed": ["a"]}));
        assert_eq!(
            e.payload(),
            json!({"version": 3, "etag": null, "data": {"changed": ["a"]}})
        );
        assert_eq!(e.id.get_version_num(), 7);
    }
}
