//! Acknowledged invalidations: why an L1 hit needs no Redis round trip and
//! a write is still seen at once on every replica.
//!
//! Pub/sub alone tells the other replicas of a change *soon*. "At once"
//! (a revoked API key is refused by the very next request anywhere, a
//! write is read back on any replica as soon as it is acknowledged) needs
//! the writer to know that every replica has dropped what it changed. This
//! is the cache-lease protocol of Chubby (Burrows, OSDI 2006, §2.5): a
//! change waits until every cache has acknowledged the invalidation or its
//! lease has run out.
//!
//! - **Lease.** Each replica holds a lease in [`REPLICAS`] (a sorted set:
//!   member its id, score the lease's end in Redis time), renewed every
//!   [`RENEW_EVERY`] to [`LEASE`] by one script that also publishes a
//!   barrier on the replica's own channel. The lease is extended locally
//!   only when that barrier comes back through the subscription, so every
//!   invalidation published before the renewal has been applied by then;
//!   and locally it ends [`LOCAL_MARGIN`] before Redis', counted from
//!   before the renewal was sent. L1 serves only under a live lease.
//! - **Invalidation.** One script bumps the tags' generations, lists the
//!   replicas whose lease is live, and publishes the new generations with
//!   the writer's id and a sequence number. Each replica applies them and
//!   acknowledges on the writer's channel. The writer returns when every
//!   live replica acknowledged, or once the lease of those that did not has
//!   run out: a replica that stopped hearing has stopped serving from L1.
//! - **Cost.** Nothing per read. Per write: one pub/sub round trip to the
//!   slowest replica. A replica that dies without leaving holds writes for
//!   at most [`LEASE`]; one that shuts down leaves the set first.
//!
//! Clocks: the lease's end is compared in Redis time (one clock); a replica
//! only measures durations on its own monotonic clock, with
//! [`LOCAL_MARGIN`] for a step of Redis' clock or a slow timer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The sorted set of replicas' leases.
pub const REPLICAS: &str = "v1:cache:replicas";

/// A lease's length, in Redis: the longest a write waits for a replica
/// that died without leaving.
pub const LEASE: Duration = Duration::from_secs(2);

/// How much earlier a replica's own view of its lease ends.
pub const LOCAL_MARGIN: Duration = Duration::from_millis(250);

/// How often a lease is renewed: a replica keeps serving from L1 through
/// about six renewals lost or late in a row.
pub const RENEW_EVERY: Duration = Duration::from_millis(250);

/// Renews the lease (KEYS: the replicas set; ARGV: the replica's id, the
/// lease in ms, its channel, the barrier) and publishes the barrier; drops
/// leases that have run out.
pub const RENEW_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// Bumps the tags' generations (KEYS: their counters, then the replicas
/// set; ARGV: the tags, then the channel, the writer's id and the
/// sequence number), lists the live leases and publishes, atomically.
/// Returns the new generations and, per live replica, its id and the ms
/// left on its lease.
pub const INVALIDATE_SCRIPT: &str = r#"
local n = #KEYS - 1
local t = {}
for i = 1, n do
  t[i] = {ARGV[i], redis.call('INCR', KEYS[i])}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[n + 1], now, '+inf', 'WITHSCORES')
redis.call('PUBLISH', ARGV[n + 1], cjson.encode({t = t, from = ARGV[n + 2], n = ARGV[n + 3]}))
local gens = {}
for i, pair in ipairs(t) do gens[i] = pair[2] end
local leases = {}
for i = 1, #live, 2 do
  leases[#leases + 1] = {live[i], tonumber(live[i + 1]) - now}
end
return {gens, leases}
"#;

/// A replica's own channel: acknowledgements of its invalidations, and
/// the barriers of its renewals.
pub fn own_channel(replica: &str) -> String {
    format!("v1:cache:replica:{replica}")
}

/// What arrives on a replica's own channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `replica` applied our invalidation `seq`.
    Ack { replica: &'a str, seq: u64 },
    /// Our renewal `token` went through: everything published before it
    /// has been applied.
    Barrier(u64),
}

pub fn ack(replica: &str, seq: &str) -> String {
    format!("a {replica} {seq}")
}

pub fn barrier(token: u64) -> String {
    format!("b {token}")
}

impl<'a> Reply<'a> {
    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut words = text.split(' ');
        match (words.next()?, words.next()?, words.next(), words.next()) {
            ("a", replica, Some(seq), None) => Some(Reply::Ack {
                replica,
                seq: seq.parse().ok()?,
            }),
            ("b", token, None, None) => Some(Reply::Barrier(token.parse().ok()?)),
            _ => None,
        }
    }
}

/// Who must still acknowledge one invalidation.
struct Waiter {
    acked: HashSet<String>,
    /// Known once the script answered (acks may arrive before that).
    expected: Option<HashSet<String>>,
    done: Option<oneshot::Sender<()>>,
}

impl Waiter {
    fn finish_if_complete(&mut self) {
        let complete = self
            .expected
            .as_ref()
            .is_some_and(|expected| expected.is_subset(&self.acked));
        if complete && let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// One replica's side of the protocol.
pub struct Coherence {
    /// This replica's id (random per process).
    pub id: String,
    started: Instant,
    /// L1 serves while the time since `started`, in ms, is below this.
    serve_until_ms: AtomicU64,
    next_seq: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
    /// Shutting down: no more renewals.
    left: AtomicBool,
}

impl Coherence {
    /// `alone`: no Redis, no other replica to hear from; L1 always serves.
    pub fn new(alone: bool) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            started: Instant::now(),
            serve_until_ms: AtomicU64::new(if alone { u64::MAX } else { 0 }),
            next_seq: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            left: AtomicBool::new(false),
        }
    }

    fn ms_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether L1 may serve now.
    pub fn serving(&self) -> bool {
        self.serving_at(Instant::now())
    }

    /// [`Self::serving`] at `now` (a lookup that reads the clock anyway).
    pub fn serving_at(&self, now: Instant) -> bool {
        self.ms_since_start(now) < self.serve_until_ms.load(Ordering::Acquire)
    }

    /// The renewal sent at `sent` came back through the subscription.
    pub fn extend(&self, sent: Instant) {
        if self.left.load(Ordering::Acquire) {
            return;
        }
        let until = self.ms_since_start(sent + LEASE - LOCAL_MARGIN);
        self.serve_until_ms.store(until, Ordering::Release);
    }

    /// Stops serving from L1 until the next renewal comes back.
    pub fn suspend(&self) {
        self.serve_until_ms.store(0, Ordering::Release);
    }

    /// Stops serving for good (shutdown): no more renewals.
    pub fn leave(&self) {
        self.left.store(true, Ordering::Release);
        self.suspend();
    }

    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// Registers an invalidation about to be sent: its sequence number and
    /// what completes when every replica acknowledged it.
    pub fn expect(&self) -> (u64, oneshot::Receiver<()>) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (done, acknowledged) = oneshot::channel();
        self.lock().insert(
            seq,
            Waiter {
                acked: HashSet::new(),
                expected: None,
                done: Some(done),
            },
        );
        (seq, acknowledged)
    }

    /// An acknowledgement arrived on our channel.
    pub fn acknowledged(&self, replica: &str, seq: u64) {
        if let Some(waiter) = self.lock().get_mut(&seq) {
            waiter.acked.insert(replica.to_string());
            waiter.finish_if_complete();
        }
    }

    /// Waits until every other replica in `leases` (id, ms left on its
    /// lease when the invalidation was published) acknowledged `seq`, or
    /// its lease has run out. False when some lease ran out unacknowledged.
    pub async fn wait(
        &self,
        seq: u64,
        acknowledged: oneshot::Receiver<()>,
        leases: Vec<(String, i64)>,
    ) -> bool {
        let others: Vec<(String, i64)> = leases
            .into_iter()
            .filter(|(replica, _)| *replica != self.id)
            .collect();
        // Whole ms in Redis; one more so the wait is never short of it.
        let longest = others.iter().map(|(_, left)| *left).max().unwrap_or(0);
        let longest = Duration::from_millis(u64::try_from(longest.max(0)).unwrap_or(0) + 1);
        if let Some(waiter) = self.lock().get_mut(&seq) {
            waiter.expected = Some(others.into_iter().map(|(replica, _)| replica).collect());
            waiter.finish_if_complete();
        }
        let all = tokio::time::timeout(longest, acknowledged).await.is_ok();
        self.forget(seq);
        all
    }

    /// The invalidation was not sent: nobody will acknowledge it.
    pub fn forget(&self, seq: u64) {
        self.lock().remove(&seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_nothing_else_does() {
        assert_eq!(
            Reply::parse(ack("r1", "7").as_bytes()),
            Some(Reply::Ack {
                replica: "r1",
                seq: 7
            })
        );
        assert_eq!(
            Reply::parse(barrier(42).as_bytes()),
            Some(Reply::Barrier(42))
        );
        for bad in ["", "a r1", "a r1 x", "b", "b 1 2", "c 1", "a r1 7 8"] {
            assert_eq!(Reply::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_wait_ends_with_the_last_acknowledgement_even_one_that_came_first() {
        let coherence = Coherence::new(false);
        let (seq, acknowledged) = coherence.expect();
        // One ack arrives before the script's answer, one after.
        coherence.acknowledged("b", seq);
        let waiting = coherence.wait(
            seq,
            acknowledged,
            vec![
                (coherence.id.clone(), 900),
                ("b".into(), 900),
                ("c".into(), 60_000),
            ],
        );
        tokio::pin!(waiting);
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "c has not acknowledged"
        );
        coherence.acknowledged("c", seq);
        assert!(waiting.await, "all acknowledged");
        assert!(coherence.lock().is_empty());
    }

    #[tokio::test]
    async fn a_silent_replica_is_waited_for_until_its_lease_ends() {
        let coherence = Coherence::new(false);
        let (seq, acknowledged) = coherence.expect();
        let started = Instant::now();
        let all = coherence
            .wait(seq, acknowledged, vec![("silent".into(), 60)])
            .await;
        assert!(!all);
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(coherence.lock().is_empty());
    }

    #[test]
    fn the_lease_serves_only_after_a_renewal_and_never_after_leaving() {
        let coherence = Coherence::new(false);
        assert!(!coherence.serving(), "no renewal yet");
        coherence.extend(Instant::now());
        assert!(coherence.serving());
        coherence.suspend();
        assert!(!coherence.serving());
        coherence.extend(Instant::now());
        coherence.leave();
        coherence.extend(Instant::now());
        assert!(!coherence.serving(), "left for good");
        // A renewal that took longer than the lease to come back is none.
        let late = Coherence::new(false);
        if let Some(long_ago) = Instant::now().checked_sub(LEASE) {
            late.extend(long_ago);
            assert!(!late.serving());
        }
        assert!(Coherence::new(true).serving(), "alone: always");
    }
}
