//! The invalidation subscriber: one Redis pub/sub connection per process on
//! [`super::CHANNEL`]. L1 serves only while it is subscribed; on every
//! (re)subscription and every loss, L1 is emptied, because messages sent
//! while nobody listened are gone (pub/sub keeps nothing).

use std::time::Duration;

use futures::StreamExt as _;

use super::{CHANNEL, HybridCache};

/// How often a silent subscription is checked (PING through the pub/sub
/// connection): a half-open TCP connection must not keep L1 serving.
const HEARTBEAT: Duration = Duration::from_secs(2);

pub(super) async fn run(cache: HybridCache, client: redis::Client) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&cache, &client).await {
            Ok(()) => tracing::warn!("cache: invalidation subscription ended; L1 off"),
            Err(error) => {
                tracing::warn!(%error, "cache: invalidation subscription lost; L1 off")
            }
        }
        cache.forget_everything(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if cache.l1_serving() {
            backoff = Duration::from_millis(100);
        }
    }
}

async fn listen(cache: &HybridCache, client: &redis::Client) -> redis::RedisResult<()> {
    let connect = client.get_async_pubsub();
    let mut pubsub = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| timeout_error("connect"))??;
    pubsub.subscribe(CHANNEL).await?;
    // Subscribed from here on: whatever was missed before is dropped now,
    // then L1 may serve again.
    cache.forget_everything(true);
    cache.shared.breaker.reset();
    tracing::info!("cache: subscribed to invalidations; L1 on");
    let (mut sink, mut stream) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Ok(());
                };
                cache.apply(message.get_payload_bytes());
            }
            _ = heartbeat.tick() => {
                // In subscribed mode the answer is the array ["pong", ""].
                let ping = sink.ping::<redis::Value>();
                tokio::time::timeout(HEARTBEAT, ping)
                    .await
                    .map_err(|_| timeout_error("heartbeat"))??;
            }
        }
    }
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_string()))
}
