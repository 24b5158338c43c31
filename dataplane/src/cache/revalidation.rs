//! Generation checks of revalidated L1 hits, batched: one `MGET` serves
//! every check that arrived while the previous one was in flight.
//!
//! Each API-key use and each private output-cache hit needs the current
//! generations of its tags. Under load, dozens of those checks are waiting
//! at any moment, most for the same few keys (one tenant, one credential);
//! a round trip each cost more CPU (the data plane's and Redis') than the
//! rest of an L1 hit. A task drains the queue, sends one `MGET` of the
//! union of the keys, and answers each check with its own keys' values.
//!
//! Why this keeps "a revoked key is refused at once": a check is queued
//! before the batch that carries it is drained, and the batch's `MGET`
//! leaves after that, so Redis is read after the check arrived; a bump
//! acknowledged before then is seen. (Joining an `MGET` already in flight
//! would not be safe: it may have been read before the bump.)

use std::collections::HashMap;
use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use super::{HybridCache, Shared};

/// Most checks answered by one `MGET`.
const MAX_BATCH: usize = 256;

struct Check {
    keys: Vec<String>,
    reply: oneshot::Sender<Option<Vec<Option<u64>>>>,
}

/// The sending side; the task ends when the cache is dropped.
pub(super) struct Queue {
    checks: mpsc::UnboundedSender<Check>,
}

impl Queue {
    /// Starts the task (needs a Tokio runtime).
    pub(super) fn start(shared: Weak<Shared>) -> Self {
        let (checks, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(shared, queue));
        Self { checks }
    }

    /// The values of `keys` (generation counters) read after this call,
    /// or `None` when Redis did not answer in time.
    pub(super) async fn generations(&self, keys: Vec<String>) -> Option<Vec<Option<u64>>> {
        let (reply, answer) = oneshot::channel();
        self.checks.send(Check { keys, reply }).ok()?;
        answer.await.ok().flatten()
    }
}

async fn run(shared: Weak<Shared>, mut queue: mpsc::UnboundedReceiver<Check>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let answers = answer(&HybridCache { shared }, &batch).await;
        for (check, answer) in batch.drain(..).zip(answers) {
            let _ = check.reply.send(answer);
        }
    }
}

/// One `MGET` of the union of the batch's keys; each check's values in its
/// own order (`None` for every check when Redis did not answer).
async fn answer(cache: &HybridCache, batch: &[Check]) -> Vec<Option<Vec<Option<u64>>>> {
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut keys: Vec<&str> = Vec::new();
    for key in batch.iter().flat_map(|check| &check.keys) {
        position.entry(key.as_str()).or_insert_with(|| {
            keys.push(key.as_str());
            keys.len() - 1
        });
    }
    let fetched: Option<Vec<Option<u64>>> = match cache.redis() {
        Some(mut redis) => {
            cache.shared.metrics.revalidation_reads.inc();
            cache
                .redis_call(async { redis::cmd("MGET").arg(&keys).query_async(&mut redis).await })
                .await
        }
        None => None,
    };
    batch
        .iter()
        .map(|check| {
            let values = fetched.as_ref()?;
            check
                .keys
                .iter()
                .map(|key| values.get(position[key.as_str()]).copied())
                .collect()
        })
        .collect()
}
