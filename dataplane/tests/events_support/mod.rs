//! Shared by the events tests: a real webhook receiver (axum on an
//! ephemeral port) whose behaviour the test switches (answer 2xx, fail
//! with 500, hang past the timeout), a reference Standard Webhooks
//! verifier written from the specification (not the data plane's code),
//! a Redis subscriber of a tenant's event channel, and an in-process
//! data plane with a dispatcher and test settings.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use strata_dataplane::app::AppState;
use strata_dataplane::events::{Dispatcher, EventSettings};
use strata_tests::env;

pub const OK: u8 = 0;
pub const FAIL: u8 = 1;
pub const HANG: u8 = 2;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub json: Value,
    /// How the receiver answered it.
    pub answered: u8,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub mode: Arc<AtomicU8>,
    pub got: Arc<Mutex<Vec<Received>>>,
    /// Applied events, by `webhook-id` (the dedupe a careful receiver does).
    pub applied: Arc<Mutex<HashMap<String, Value>>>,
    /// Modes for the next requests, in order, before `mode` applies.
    pub script: Arc<Mutex<std::collections::VecDeque<u8>>>,
    pub url: String,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let scripted = r.script.lock().expect("lock").pop_front();
    let mode = scripted.unwrap_or_else(|| r.mode.load(Ordering::SeqCst));
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        answered: mode,
    };
    r.got.lock().expect("lock").push(received.clone());
    match mode {
        FAIL => StatusCode::INTERNAL_SERVER_ERROR,
        HANG => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
        _ => {
            r.applied
                .lock()
                .expect("lock")
                .entry(received.id)
                .or_insert(received.json);
            StatusCode::NO_CONTENT
        }
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = Receiver {
            url: format!("http://{}/hook", listener.local_addr().expect("addr")),
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Answers the next requests with `modes`, then with the mode.
    pub fn script(&self, modes: &[u8]) {
        self.script.lock().expect("lock").extend(modes);
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    pub fn applied(&self) -> HashMap<String, Value> {
        self.applied.lock().expect("lock").clone()
    }
}

/// The Standard Webhooks verification, from the specification: the
/// timestamp within 5 minutes, and one of the space-separated `v1,`
/// signatures equal (in constant time) to the base64 HMAC-SHA256, keyed
/// with the base64-decoded secret after `whsec_`, of `id.timestamp.body`.
pub fn verify(secret: &str, r: &Received) -> Result<(), String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").ok_or("secret prefix")?)
        .map_err(|e| e.to_string())?;
    let timestamp: i64 = r.timestamp.parse().map_err(|_| "timestamp")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    if (now - timestamp).abs() > 300 {
        return Err("timestamp outside tolerance".into());
    }
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.body);
    for candidate in r.signature.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(&signed);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err("no signature verifies".into())
}

/// Messages published on a tenant's event channel, collected from now on.
pub async fn subscribe(tenant_id: uuid::Uuid) -> Arc<Mutex<Vec<Value>>> {
    let client = redis::Client::open(env("STRATA_REDIS_URL")).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(format!("v1:t:{tenant_id}:events"))
        .await
        .expect("subscribe");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Ok(text) = message.get_payload::<String>() {
                let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                sink.lock().expect("lock").push(value);
            }
        }
    });
    seen
}

pub async fn redis() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(env("STRATA_REDIS_URL")).expect("redis url");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis")
}

/// Fast retries, local webhooks allowed, a short timeout.
pub fn settings() -> EventSettings {
    EventSettings {
        sweep_interval: Duration::from_secs(1),
        max_attempts: 4,
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_secs(1),
        webhook_timeout: Duration::from_secs(1),
        allow_http: true,
        allow_private: true,
        ..EventSettings::default()
    }
}

/// The test `AppState` with Redis (for hints) and a running dispatcher.
pub async fn state_with_dispatcher(
    mut state: AppState,
    settings: EventSettings,
) -> (AppState, tokio::task::JoinHandle<()>) {
    strata_dataplane::events::settings::install(settings.clone());
    let redis = redis().await;
    state.redis = Some(redis.clone());
    let client = redis::Client::open(env("STRATA_REDIS_URL")).expect("redis url");
    let dispatcher = Dispatcher::new(
        state.tenancy.clone(),
        state.catalog.clone(),
        Some(redis),
        Some(client),
        settings,
    )
    .expect("dispatcher");
    let task = dispatcher.spawn();
    (state, task)
}

/// Polls `check` until it holds or `timeout` passes (then panics with
/// `what`).
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
