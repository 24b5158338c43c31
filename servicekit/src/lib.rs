//! Process plumbing shared by `strata-operator` and `strata-dataplane`:
//! logging setup, the Prometheus registry, the probe/metrics HTTP endpoints and
//! graceful shutdown. Nothing here knows about tenants or Kubernetes.

pub mod probes;
pub mod shutdown;
pub mod telemetry;

pub use probes::{ReadinessCheck, probe_router};
pub use shutdown::shutdown_signal;
pub use telemetry::{LogArgs, LogFormat};
