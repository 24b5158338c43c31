//! What the sinks receive: one JSON object per event, the same for the
//! Redis feed and for webhooks (the webhook body).
//!
//! ```json
//! {
//!   "id": "01933b5e-…",                  // the event id: dedupe on it
//!   "type": "document.updated",
//!   "timestamp": "2026-11-28T06:10:00.123456Z",   // when the write ran
//!   "tenant": {"id": "…", "name": "acme"},
//!   "aggregate": {"type": "document", "id": "<collection id>/<doc id>",
//!                 "version": 4, "etag": "\"v4.5f2…\""},
//!   "data": {"collection": "articles", "id": "pg-tips", "version": 4,
//!            "changed": ["title"]}
//! }
//! ```

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// An outbox row as the dispatcher claims it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub topic: String,
    pub aggregate_id: String,
    pub payload: Value,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Microseconds since the epoch (latency metrics).
    pub created_us: i64,
    pub attempts: i32,
}

#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub timestamp: &'a str,
    pub tenant: TenantRef<'a>,
    pub aggregate: Aggregate<'a>,
    pub data: &'a Value,
}

#[derive(Debug, Serialize)]
pub struct TenantRef<'a> {
    pub id: Uuid,
    pub name: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Aggregate<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub id: &'a str,
    pub version: Option<i64>,
    pub etag: Option<&'a str>,
}

static EMPTY: Value = Value::Null;

impl OutboxRow {
    /// The envelope of this row. Rows written through `events::record`
    /// hold `{"version", "etag", "data"}`; older rows (the operator's)
    /// hold the data itself.
    pub fn envelope<'a>(&'a self, tenant_id: Uuid, tenant: &'a str) -> Envelope<'a> {
        let structured = self.payload.get("data").is_some();
        let data = if structured {
            self.payload.get("data").unwrap_or(&EMPTY)
        } else {
            &self.payload
        };
        Envelope {
            id: self.event_id,
            kind: &self.topic,
            timestamp: &self.created_at,
            tenant: TenantRef {
                id: tenant_id,
                name: tenant,
            },
            aggregate: Aggregate {
                kind: self.topic.split('.').next().unwrap_or_default(),
                id: &self.aggregate_id,
                version: self.payload.get("version").and_then(Value::as_i64),
                etag: self.payload.get("etag").and_then(Value::as_str),
            },
            data,
        }
    }

    /// The envelope serialised (serialising owned JSON cannot fail).
    pub fn body(&self, tenant_id: Uuid, tenant: &str) -> String {
        serde_json::to_string(&self.envelope(tenant_id, tenant)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(payload: Value) -> OutboxRow {
        OutboxRow {
            id: 1,
            event_id: Uuid::nil(),
            topic: "document.updated".into(),
            aggregate_id: "c/d".into(),
            payload,
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            created_us: 0,
            attempts: 0,
        }
    }

    #[test]
    fn structured_and_legacy_payloads() {
        let r = row(json!({"version": 2, "etag": "\"v2\"", "data": {"changed": ["a"]}}));
        let v: Value = serde_json::from_str(&r.body(Uuid::nil(), "t")).expect("json");
        assert_eq!(v["type"], "document.updated");
        assert_eq!(
            v["aggregate"],
            json!({"type": "document", "id": "c/d", "version": 2, "etag": "\"v2\""})
        );
        assert_eq!(v["data"], json!({"changed": ["a"]}));
        assert_eq!(v["tenant"]["name"], "t");
        let legacy = row(json!({"email": "a@b"}));
        let v: Value = serde_json::from_str(&legacy.body(Uuid::nil(), "t")).expect("json");
        assert_eq!(v["data"], json!({"email": "a@b"}));
        assert_eq!(v["aggregate"]["version"], Value::Null);
    }
}
