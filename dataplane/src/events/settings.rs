//! Configuration of the dispatcher and the webhooks API: flags with
//! environment fallbacks, flattened into the data plane's `Config`.
//!
//! The settings the request path needs (the SSRF policy, checked when an
//! endpoint is registered) are installed once at start-up in a process
//! global ([`install`]): `app::router` is shared by every API and takes no
//! per-API arguments, and the policy is a property of the process, like
//! its flags. Without [`install`] the secure defaults hold (HTTPS only, no
//! private addresses).

use std::sync::RwLock;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Events: the outbox dispatcher, its sinks and the webhooks API.
#[derive(Args, Debug, Clone)]
pub struct EventsArgs {
    /// Run the outbox dispatcher in this process. Every replica may run it:
    /// replicas share the work through `FOR UPDATE SKIP LOCKED`. Turn it
    /// off on replicas that should only serve requests.
    #[arg(long, env = "STRATA_DISPATCHER", value_enum, default_value_t = Switch::On)]
    pub dispatcher: Switch,
    /// Outbox rows (or webhook deliveries) claimed per transaction.
    #[arg(long, env = "STRATA_DISPATCH_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub dispatch_batch: u32,
    /// Tenants dispatched at the same time.
    #[arg(long, env = "STRATA_DISPATCH_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub dispatch_concurrency: u32,
    /// Seconds between sweeps over the catalog's tenants (catches what no
    /// hint announced: lost hints, the operator's events, retries).
    #[arg(long, env = "STRATA_DISPATCH_SWEEP_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub dispatch_sweep_seconds: u64,
    /// Attempts before an event (or a webhook delivery) is dead-lettered.
    #[arg(long, env = "STRATA_DISPATCH_MAX_ATTEMPTS", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub dispatch_max_attempts: u32,
    /// First retry delay in milliseconds (doubles per attempt, full jitter).
    #[arg(long, env = "STRATA_DISPATCH_RETRY_BASE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub dispatch_retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "STRATA_DISPATCH_RETRY_CAP_MS", default_value_t = 6 * 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub dispatch_retry_cap_ms: u64,
    /// Hours dispatched events (and their delivered webhooks) are kept.
    #[arg(long, env = "STRATA_EVENT_RETENTION_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u64).range(1..=8_760))]
    pub event_retention_hours: u64,
    /// Seconds a webhook delivery may take (connect + answer).
    #[arg(long, env = "STRATA_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_seconds: u64,
    /// Allow `http://` webhook URLs (local development only).
    #[arg(long, env = "STRATA_WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Allow webhook URLs that resolve to loopback, private, link-local or
    /// other non-public addresses (local development only).
    #[arg(long, env = "STRATA_WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,
    /// Hours an idempotency key's record is kept (then pruned).
    #[arg(long, env = "STRATA_IDEMPOTENCY_TTL_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u64).range(1..=720))]
    pub idempotency_ttl_hours: u64,
}

/// What the dispatcher and the webhooks API need, in units of time.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub dispatcher: bool,
    pub batch: u32,
    pub concurrency: usize,
    pub sweep_interval: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub retention: Duration,
    pub webhook_timeout: Duration,
    pub allow_http: bool,
    pub allow_private: bool,
    pub idempotency_ttl: Duration,
    /// Webhook deliveries claimed per transaction (each is an HTTP call).
    pub delivery_batch: u32,
    /// Outbox batches one tenant gets before others have their turn.
    pub batches_per_turn: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            dispatcher: true,
            batch: 500,
            concurrency: 8,
            sweep_interval: Duration::from_secs(30),
            max_attempts: 15,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(6 * 3600),
            retention: Duration::from_secs(72 * 3600),
            webhook_timeout: Duration::from_secs(10),
            allow_http: false,
            allow_private: false,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            delivery_batch: 32,
            batches_per_turn: 20,
        }
    }
}

impl EventsArgs {
    pub fn settings(&self) -> EventSettings {
        EventSettings {
            dispatcher: self.dispatcher == Switch::On,
            batch: self.dispatch_batch,
            concurrency: self.dispatch_concurrency as usize,
            sweep_interval: Duration::from_secs(self.dispatch_sweep_seconds),
            max_attempts: self.dispatch_max_attempts,
            retry_base: Duration::from_millis(self.dispatch_retry_base_ms),
            retry_cap: Duration::from_millis(
                self.dispatch_retry_cap_ms.max(self.dispatch_retry_base_ms),
            ),
            retention: Duration::from_secs(self.event_retention_hours * 3600),
            webhook_timeout: Duration::from_secs(self.webhook_timeout_seconds),
            allow_http: self.webhook_allow_http,
            allow_private: self.webhook_allow_private,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_hours * 3600),
            ..EventSettings::default()
        }
    }
}

static INSTALLED: RwLock<Option<EventSettings>> = RwLock::new(None);

/// Makes `settings` the process's (see the module documentation).
pub fn install(settings: EventSettings) {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(settings);
}

/// The installed settings, or the secure defaults.
pub fn current() -> EventSettings {
    INSTALLED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        events: EventsArgs,
    }

    #[test]
    fn defaults_are_secure_and_flags_parse() {
        let w = Wrapper::try_parse_from(["x"]).expect("parse");
        let s = w.events.settings();
        assert!(s.dispatcher && !s.allow_http && !s.allow_private);
        assert_eq!(s.idempotency_ttl, Duration::from_secs(86_400));
        let w = Wrapper::try_parse_from(["x", "--dispatcher", "off", "--webhook-allow-http"])
            .expect("parse");
        assert!(!w.events.settings().dispatcher);
        assert!(w.events.settings().allow_http);
        assert!(Wrapper::try_parse_from(["x", "--dispatcher", "maybe"]).is_err());
    }
}
