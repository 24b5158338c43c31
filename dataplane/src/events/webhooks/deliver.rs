//! One webhook delivery attempt: a signed POST of the event's envelope,
//! bounded by the timeout, never following redirects or proxies, through
//! the SSRF-guarded resolver. Only the status and the latency are kept
//! (the answer's body is not read), and errors are recorded without the
//! URL (it may carry a token in its query).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::header;
use uuid::Uuid;

use super::signing::signature_header;
use super::ssrf::{GuardedResolver, Policy, check_url};
use crate::events::envelope::OutboxRow;
use crate::events::settings::EventSettings;
use crate::tenancy::TenantInfo;

/// A claimed delivery with its endpoint and its event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub delivery_id: i64,
    pub delivery_attempts: i32,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    #[sqlx(flatten)]
    pub event: OutboxRow,
}

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub ok: bool,
    /// The HTTP status; `None` when no answer came.
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
}

pub fn policy(settings: &EventSettings) -> Policy {
    Policy {
        allow_http: settings.allow_http,
        allow_private: settings.allow_private,
    }
}

/// The delivery HTTP client (shared by every tenant's deliveries).
pub fn client(settings: &EventSettings) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(settings.webhook_timeout)
        .connect_timeout(settings.webhook_timeout.min(Duration::from_secs(5)))
        // A redirect could lead anywhere, including where the URL check
        // would refuse to go.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: settings.allow_private,
        }))
        .user_agent(concat!("Strata-Webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()?)
}

/// The `webhook-id` of an event (the same for every attempt and endpoint).
pub fn webhook_id(event_id: Uuid) -> String {
    format!("evt_{}", event_id.simple())
}

pub async fn attempt(
    http: &reqwest::Client,
    policy: Policy,
    tenant: &TenantInfo,
    row: &DeliveryRow,
) -> Attempt {
    let url = match check_url(&row.url, policy) {
        Ok(url) => url,
        Err(reason) => {
            return Attempt {
                ok: false,
                status: None,
                latency_ms: 0,
                error: Some(format!("refused: the URL {reason}")),
            };
        }
    };
    let body = row.event.body(tenant.id, &tenant.name);
    let id = webhook_id(row.event.event_id);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut secrets = vec![row.secret.as_str()];
    if let Some(previous) = &row.previous_secret {
        secrets.push(previous);
    }
    let signature = signature_header(&secrets, &id, timestamp, body.as_bytes());
    let started = Instant::now();
    let result = http
        .post(url)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    match result {
        Ok(response) => {
            let status = response.status();
            Attempt {
                ok: status.is_success(),
                status: Some(i32::from(status.as_u16())),
                latency_ms,
                error: (!status.is_success()).then(|| format!("answered {status}")),
            }
        }
        Err(error) => {
            let what = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            // The causes say why (refused address, DNS, TLS); the URL is
            // left out (it may carry a token).
            let error = error.without_url();
            let mut text = format!("{what}: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            Attempt {
                ok: false,
                status: None,
                latency_ms,
                error: Some(text),
            }
        }
    }
}
