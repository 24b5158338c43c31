//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ready`, `retry`, `failed`, `suspended`, `deleted`.
    pub outcome: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciliations: Family<OutcomeLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub bucket_reconciliations: Family<OutcomeLabels, Counter>,
    pub bucket_reconcile_duration: Histogram,
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            bucket_reconciliations: Family::default(),
            bucket_reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("strata_operator");
        r.register(
            "tenant_reconciliations",
            "Tenant reconciliations by outcome",
            m.reconciliations.clone(),
        );
        r.register(
            "tenant_reconcile_duration_seconds",
            "Time to reconcile one Tenant",
            m.reconcile_duration.clone(),
        );
        r.register(
            "bucket_reconciliations",
            "Bucket reconciliations by outcome",
            m.bucket_reconciliations.clone(),
        );
        r.register(
            "bucket_reconcile_duration_seconds",
            "Time to reconcile one Bucket",
            m.bucket_reconcile_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    pub fn outcome(&self, outcome: &str) {
        self.reconciliations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// `ready`, `waiting`, `conflict`, `retry`, `deleted`.
    pub fn bucket_outcome(&self, outcome: &str) {
        self.bucket_reconciliations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }
}
