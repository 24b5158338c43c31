//! The Redis feed: every event of a tenant is published on
//! `v1:t:{tenant_id}:events` (the tenant's catalog id, stable across
//! renames) as its envelope ([`super::envelope`]). The cache subscribes
//! (`PSUBSCRIBE v1:t:*:events`) and drops what an event names.
//!
//! Delivery is at least once: a dispatcher that crashes after publishing
//! and before its commit publishes the batch again. Receivers make this
//! harmless by remembering the event ids they applied (or, for a cache,
//! because dropping an entry twice is the same as dropping it once; an
//! entry whose cached version is newer than the event's `aggregate.version`
//! is kept).

use uuid::Uuid;

/// The channel of a tenant's events.
pub fn channel(tenant_id: Uuid) -> String {
    format!("v1:t:{tenant_id}:events")
}

/// Publishes `bodies` on the tenant's channel in one pipeline (one round
/// trip per batch).
pub async fn publish(
    redis: &mut redis::aio::ConnectionManager,
    tenant_id: Uuid,
    bodies: &[String],
) -> redis::RedisResult<()> {
    if bodies.is_empty() {
        return Ok(());
    }
    let channel = channel(tenant_id);
    let mut pipe = redis::pipe();
    for body in bodies {
        pipe.cmd("PUBLISH").arg(&channel).arg(body).ignore();
    }
    pipe.query_async::<()>(redis).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_scheme() {
        assert_eq!(
            super::channel(uuid::Uuid::nil()),
            "v1:t:00000000-0000-0000-0000-000000000000:events"
        );
    }
}
