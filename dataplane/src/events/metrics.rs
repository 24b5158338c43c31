//! Prometheus metrics of the events machinery, on the process registry
//! (`/metrics`). Handles are process-wide ([`metrics`]); [`register`] adds
//! them to the registry once at start-up.
//!
//! - `strata_events_pending{tenant}`: events neither dispatched nor dead,
//!   as this replica last saw them (per tenant: the one number an operator
//!   needs to find the tenant that is behind);
//! - `strata_events_oldest_pending_age_seconds{tenant}`;
//! - `strata_events_dead{tenant}`: dead-lettered events and deliveries;
//! - `strata_events_deliveries_total{sink,outcome}`: sink `redis` or
//!   `webhook`, outcome `ok`, `retry`, `dead`;
//! - `strata_events_dispatch_latency_seconds`: from the write to the
//!   publish on Redis;
//! - `strata_events_webhook_duration_seconds`: each webhook attempt.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub sink: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct EventMetrics {
    pub pending: Family<TenantLabels, Gauge>,
    pub oldest_pending_age: Family<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub dead: Family<TenantLabels, Gauge>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub dispatch_latency: Histogram,
    pub webhook_duration: Histogram,
}

static METRICS: LazyLock<EventMetrics> = LazyLock::new(|| EventMetrics {
    pending: Family::default(),
    oldest_pending_age: Family::default(),
    dead: Family::default(),
    deliveries: Family::default(),
    dispatch_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
    webhook_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
});

pub fn metrics() -> &'static EventMetrics {
    &METRICS
}

/// Adds the metrics to `registry` (once per registry).
pub fn register(registry: &mut Registry) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("strata_events");
    r.register(
        "pending",
        "Events neither dispatched nor dead, per tenant",
        m.pending.clone(),
    );
    r.register(
        "oldest_pending_age_seconds",
        "Age of the oldest pending event, per tenant",
        m.oldest_pending_age.clone(),
    );
    r.register(
        "dead",
        "Dead-lettered events and webhook deliveries, per tenant",
        m.dead.clone(),
    );
    r.register(
        "deliveries",
        "Deliveries by sink (redis, webhook) and outcome (ok, retry, dead)",
        m.deliveries.clone(),
    );
    r.register(
        "dispatch_latency_seconds",
        "From the write's transaction to the publish on Redis",
        m.dispatch_latency.clone(),
    );
    r.register(
        "webhook_duration_seconds",
        "Duration of each webhook attempt",
        m.webhook_duration.clone(),
    );
}

pub fn count(sink: &'static str, outcome: &'static str, n: u64) {
    metrics()
        .deliveries
        .get_or_create(&DeliveryLabels { sink, outcome })
        .inc_by(n);
}
