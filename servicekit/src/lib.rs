//! Process plumbing shared by `strata-operator` and `strata-dataplane`:
//! logging setup, the Prometheus registry, the probe/metrics HTTP endpoints and
//! graceful shutdown. Nothing here knows about tenants or Kubernetes.

pub mod probes;
pub mod shutdown;
pub mod telemetry;

pub use probes::{ReadinessCheck, probe_router};
pub use shutdown::shutdown_signal;
pub use telemetry::{LogArgs, LogFormat};

/// Selects ring as rustls' crypto provider for the process. Several TLS
/// stacks (kube, sqlx, the AWS SDK) share rustls; with more than one provider
/// compiled in, rustls needs to be told which to use. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
