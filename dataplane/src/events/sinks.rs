//! In-process sinks: consumers of the outbox that live in the data plane
//! itself rather than behind a webhook (media's removal of stale image
//! variants is one, `media::variants::StaleVariants`).
//!
//! The dispatcher hands each claimed batch to every sink after publishing
//! it to Redis and before marking it dispatched, inside the claim's
//! transaction and a savepoint of its own, so a sink's database work
//! commits with the batch's "dispatched" mark or not at all. A sink that
//! fails rolls back its savepoint and the batch is retried with the same
//! backoff and dead-lettering as a Redis failure, so a sink must be
//! idempotent: it may see an event more than once (and other sinks'
//! failures make it see events again). Work outside the database (deleting
//! backend bytes) is returned as a future the dispatcher runs after the
//! commit; it must leave a record that lets a sweeper finish it if the
//! process dies first.

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use super::envelope::OutboxRow;
use crate::tenancy::TenantInfo;

/// What a sink leaves to do once the batch has committed.
pub type AfterCommit = BoxFuture<'static, ()>;

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name in metrics (`sink` label) and stored errors.
    fn name(&self) -> &'static str;

    /// Whether `rows` hold an event this sink acts on. The dispatcher opens
    /// the sink's savepoint (two round trips) only for such a batch.
    fn wants(&self, rows: &[OutboxRow]) -> bool;

    /// Works on `rows` (every event of the batch; a sink picks the types it
    /// wants) in `tx`. `pool` is the tenant's, for work after the commit.
    async fn apply(
        &self,
        tenant: &TenantInfo,
        pool: &PgPool,
        tx: &mut PgConnection,
        rows: &[OutboxRow],
    ) -> anyhow::Result<Option<AfterCommit>>;
}
