//! The invalidation subscriber: one Redis pub/sub connection per process,
//! on [`super::CHANNEL`] (every replica's invalidations) and on this
//! replica's own channel (acknowledgements of its invalidations, barriers
//! of its lease renewals; see [`super::coherence`]).
//!
//! L1 serves only under the lease, which only this loop extends: on every
//! (re)subscription and every loss, L1 is emptied, because messages sent
//! while nobody listened are gone (pub/sub keeps nothing).

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::coherence::{self, Reply};
use super::{CHANNEL, HybridCache};

/// A renewal whose barrier has not come back after this is given up (the
/// next one is sent).
const RENEWAL_TIMEOUT: Duration = Duration::from_millis(500);

/// No barrier back for this long: the subscription is taken for dead (a
/// half-open TCP connection must not look like a quiet one) and re-made.
const SILENCE_LIMIT: Duration = Duration::from_secs(4);

pub(super) async fn run(cache: HybridCache, client: redis::Client) {
    let _lease = WithdrawOnDrop {
        client: client.clone(),
        replica: cache.shared.coherence.id.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let ended = listen(&cache, &client).await;
        if cache.shared.coherence.has_left() {
            return; // shutting down: `leave` withdrew the lease
        }
        match ended {
            Ok(()) => tracing::warn!("cache: invalidation subscription ended; L1 off"),
            Err(error) => {
                tracing::warn!(%error, "cache: invalidation subscription lost; L1 off")
            }
        }
        cache.forget_everything();
        // Writers would wait for our acknowledgements until the lease ran
        // out; tell them at once we are gone (best effort).
        cache.withdraw().await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if cache.l1_serving() {
            backoff = Duration::from_millis(100);
        }
    }
}

async fn listen(cache: &HybridCache, client: &redis::Client) -> redis::RedisResult<()> {
    let coherence = &cache.shared.coherence;
    let connect = client.get_async_pubsub();
    let mut pubsub = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| timeout_error("connect"))??;
    let own = coherence::own_channel(&coherence.id);
    pubsub.subscribe(&[CHANNEL, own.as_str()]).await?;
    // Subscribed from here on: whatever was missed before is dropped now;
    // L1 serves again once the first renewal's barrier is back.
    cache.forget_everything();
    cache.shared.breaker.reset();
    let mut messages = pubsub.on_message();
    let mut renew = tokio::time::interval(coherence::RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outstanding: Option<(u64, Instant)> = None;
    let mut token = 0u64;
    let mut last_barrier = Instant::now();
    let mut announced = false;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return Ok(());
                };
                if message.get_channel_name() == CHANNEL {
                    cache.apply(message.get_payload_bytes());
                    continue;
                }
                match Reply::parse(message.get_payload_bytes()) {
                    Some(Reply::Ack { replica, seq }) => coherence.acknowledged(replica, seq),
                    Some(Reply::Barrier(arrived)) => {
                        if let Some((expected, sent)) = outstanding
                            && arrived == expected
                        {
                            outstanding = None;
                            last_barrier = Instant::now();
                            coherence.extend(sent);
                            if !announced {
                                announced = true;
                                tracing::info!("cache: subscribed to invalidations; L1 on");
                            }
                        }
                    }
                    None => tracing::warn!("cache: unreadable message on the replica channel"),
                }
            }
            _ = renew.tick() => {
                if coherence.has_left() {
                    return Ok(());
                }
                if last_barrier.elapsed() > SILENCE_LIMIT {
                    return Err(timeout_error("lease renewal"));
                }
                if outstanding.is_none_or(|(_, sent)| sent.elapsed() > RENEWAL_TIMEOUT) {
                    token += 1;
                    outstanding = Some((token, Instant::now()));
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.renew_lease(token).await });
                }
            }
        }
    }
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_string()))
}

/// Withdraws the lease when this task is dropped without [`HybridCache::leave`]
/// (its runtime shut down: a test's end, a process returning from `main`),
/// so writers elsewhere do not wait for it until the lease runs out. Best
/// effort and blocking, with short timeouts: the runtime is going away.
struct WithdrawOnDrop {
    client: redis::Client,
    replica: String,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        const LIMIT: Duration = Duration::from_millis(200);
        let Ok(mut conn) = self.client.get_connection_with_timeout(LIMIT) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(LIMIT));
        let _ = conn.set_write_timeout(Some(LIMIT));
        let _ = redis::cmd("ZREM")
            .arg(coherence::REPLICAS)
            .arg(&self.replica)
            .query::<()>(&mut conn);
    }
}
