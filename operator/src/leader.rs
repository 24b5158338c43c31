//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas
//! never provision the same tenant at once. The semantics are client-go's
//! (`k8s.io/client-go/tools/leaderelection`):
//!
//! - three durations, `lease_duration` (15 s) > `renew_deadline` (10 s) >
//!   `retry_period` (2 s);
//! - the holder renews every `retry_period`. Every renewal attempt (a GET and a
//!   `replace`) runs under a deadline of `renew_deadline` counted from the
//!   start of the last attempt that succeeded. When the deadline passes — the
//!   API server refuses, errors, or simply stops answering — [`LeaderElector::hold`]
//!   returns, and the caller must stop acting as leader at once;
//! - a candidate never compares the remote `renewTime` with its own wall
//!   clock. It remembers the last lease record it saw (holder, times,
//!   transitions, resourceVersion) and the local monotonic instant it first
//!   saw that record; the lease counts as expired only once the record has not
//!   changed for the record's `leaseDurationSeconds`. A released lease (no
//!   holder) may be taken at once;
//! - every write carries the resourceVersion that was read, so of two
//!   candidates that race for an expired lease only one wins (409 for the
//!   other).
//!
//! # The bound: no overlap between two leaders
//!
//! Say the old leader A starts its last successful renewal at `t_r` (A's
//! monotonic clock). A stops leading no later than `t_r + renew_deadline`,
//! whether or not it can reach the API server. The renewed record is committed
//! after `t_r`, and candidate B can only see it after that: B first sees it at
//! `t_o >= t_r`, and B writes itself in as holder no earlier than
//! `t_o + lease_duration >= t_r + lease_duration`. So A stops at least
//! `lease_duration - renew_deadline` (5 s by default) before B starts. That
//! margin covers the time A needs to drop its work once the deadline fires and
//! any difference in the *rate* of the two machines' monotonic clocks; wall
//! clock skew between nodes plays no part.
//!
//! What the bound does not cover (as in client-go): a process that is frozen
//! (SIGSTOP, a paused VM) for longer than the margin exactly while it still
//! believes it leads, and requests A sent before it stopped (an API write or a
//! SQL statement already on the wire) that the server applies afterwards.
//! Closing those needs a fencing token checked by the server; the
//! provisioner's steps being idempotent is what keeps such a late write
//! harmless today.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

/// How long a lease is valid without a change seen by a candidate.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps leading without a successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between acquire and renew attempts.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's `JitterFactor`: candidates wait `retry_period * (1 + rand * 1.2)`.
const JITTER_FACTOR: f64 = 1.2;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    state: Mutex<State>,
}

/// Why [`LeaderElector::hold`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// No renewal completed within the renew deadline.
    RenewDeadline,
    /// Another replica holds the lease.
    Lost,
    /// `hold` was called without holding the lease.
    NotLeader,
}

/// The end of a term as leader.
#[derive(Debug, Clone, Copy)]
pub struct StepDown {
    pub reason: StepDownReason,
    /// Start of the last successful acquire or renew attempt.
    pub last_renewal: Option<Instant>,
}

#[derive(Default)]
struct State {
    observed: Option<Observed>,
    /// Start of the last attempt that acquired or renewed the lease; `None`
    /// while not leading.
    renewed_at: Option<Instant>,
}

/// The last lease record seen, and when (locally) it was first seen.
#[derive(Debug, Clone)]
struct Observed {
    record: Record,
    since: Instant,
}

/// What identifies one version of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    acquire_time: Option<MicroTime>,
    renew_time: Option<MicroTime>,
    lease_duration_seconds: Option<i32>,
    transitions: Option<i32>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            lease_duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

impl Observed {
    /// Remembers `record`, restarting the clock only if it differs from the
    /// one seen before.
    fn update(previous: Option<Self>, record: Record, now: Instant) -> Self {
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Self { record, since: now },
        }
    }

    /// Whether the holder may be presumed gone: the record has not changed for
    /// its lease duration (`fallback` if it states none), by the local clock.
    fn expired(&self, now: Instant, fallback: Duration) -> bool {
        let duration = match self.record.lease_duration_seconds {
            Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
            _ => fallback,
        };
        now >= self.since + duration
    }
}

/// Panics unless `lease_duration > renew_deadline > retry_period > 0` and the
/// lease duration is whole seconds.
fn check_timing(lease_duration: Duration, renew_deadline: Duration, retry_period: Duration) {
    assert!(
        lease_duration > renew_deadline && renew_deadline > retry_period && !retry_period.is_zero(),
        "leader election needs lease duration > renew deadline > retry period > 0"
    );
    assert!(
        lease_duration.subsec_nanos() == 0 && i32::try_from(lease_duration.as_secs()).is_ok(),
        "the lease duration must be whole seconds"
    );
}

/// The outcome of one acquire-or-renew attempt that reached the API server.
enum Attempt {
    /// This replica holds the lease (acquired or renewed).
    Leader,
    /// Another replica holds a lease that has not expired.
    HeldBy(String),
    /// Someone else wrote the lease between our read and our write.
    Conflict,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
            state: Mutex::default(),
        }
    }

    /// Other durations (tests use short ones). Requires
    /// `lease_duration > renew_deadline > retry_period > 0`, and a lease
    /// duration in whole seconds (the Lease stores seconds).
    ///
    /// # Panics
    /// If the durations break that order.
    #[must_use]
    pub fn with_timing(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        check_timing(lease_duration, renew_deadline, retry_period);
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut waiting_for = None;
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leader)) => {
                    self.state().renewed_at = Some(started);
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if waiting_for.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, %holder, "lease held by another replica; waiting");
                        waiting_for = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, lease = %self.name, "leader election"),
                Err(_) => {
                    tracing::warn!(lease = %self.name, timeout = ?self.renew_deadline, "leader election attempt timed out");
                }
            }
            let jitter = 1.0 + rand::random::<f64>() * JITTER_FACTOR;
            tokio::time::sleep(self.retry_period.mul_f64(jitter)).await;
        }
    }

    /// Renews the lease every retry period; returns as soon as this replica
    /// must stop leading: a renewal did not complete within the renew deadline
    /// of the last successful one (also when the API server does not answer at
    /// all), or another replica holds the lease. The caller must stop all
    /// leader work at once and must not [`release`](Self::release) the lease.
    pub async fn hold(&self) -> StepDown {
        let Some(mut renewed_at) = self.state().renewed_at else {
            return StepDown {
                reason: StepDownReason::NotLeader,
                last_renewal: None,
            };
        };
        loop {
            tokio::time::sleep_until(renewed_at + self.retry_period).await;
            let round = async {
                loop {
                    let started = Instant::now();
                    match self.try_acquire_or_renew().await {
                        Ok(Attempt::Leader) => return Ok(started),
                        Ok(Attempt::HeldBy(holder)) => return Err(holder),
                        Ok(Attempt::Conflict) => {
                            tracing::warn!(lease = %self.name, "lease changed while renewing");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, lease = %self.name, "cannot renew lease")
                        }
                    }
                    tokio::time::sleep(self.retry_period).await;
                }
            };
            let reason = match tokio::time::timeout_at(renewed_at + self.renew_deadline, round)
                .await
            {
                Ok(Ok(started)) => {
                    renewed_at = started;
                    self.state().renewed_at = Some(started);
                    continue;
                }
                Ok(Err(holder)) => {
                    tracing::error!(lease = %self.name, %holder, "leadership lost to another replica");
                    StepDownReason::Lost
                }
                Err(_) => {
                    tracing::error!(
                        lease = %self.name,
                        renew_deadline = ?self.renew_deadline,
                        since_last_renewal = ?renewed_at.elapsed(),
                        "lease not renewed within the renew deadline; stepping down"
                    );
                    StepDownReason::RenewDeadline
                }
            };
            self.state().renewed_at = None;
            return StepDown {
                reason,
                last_renewal: Some(renewed_at),
            };
        }
    }

    /// Gives the lease up on a graceful shutdown (after leader work stopped),
    /// so a successor need not wait for expiry. Bounded by the renew deadline;
    /// does nothing if another replica holds the lease.
    pub async fn release(&self) {
        self.state().renewed_at = None;
        match tokio::time::timeout(self.renew_deadline, self.try_release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.name, "released leadership"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, lease = %self.name, "cannot release lease"),
            Err(_) => tracing::warn!(lease = %self.name, "releasing the lease timed out"),
        }
    }

    /// Start of the attempt that last acquired or renewed the lease, while
    /// this replica leads.
    pub fn last_renewal(&self) -> Option<Instant> {
        self.state().renewed_at
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `lease` as observed now; returns whether it has expired.
    fn observe(&self, lease: &Lease) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let observed = Observed::update(state.observed.take(), Record::of(lease), now);
        let expired = observed.expired(now, self.lease_duration);
        state.observed = Some(observed);
        expired
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let wall = MicroTime(jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_duration_seconds()),
                    acquire_time: Some(wall.clone()),
                    renew_time: Some(wall),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leader)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let expired = self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if let Some(holder) = holder.as_ref()
            && !ours
            && !expired
        {
            return Ok(Attempt::HeldBy(holder.clone()));
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(wall.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(wall);
        spec.lease_duration_seconds = Some(self.lease_duration_seconds());
        // `replace` sends the resourceVersion we read: a concurrent writer makes it 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Leader)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    async fn try_release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        // As client-go: no holder, a 1 s lease, transitions kept.
        let wall = MicroTime(jiff::Timestamp::now());
        spec.holder_identity = None;
        spec.acquire_time = Some(wall.clone());
        spec.renew_time = Some(wall);
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, resource_version: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            acquire_time: None,
            renew_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            lease_duration_seconds: Some(15),
            transitions: Some(0),
            resource_version: Some(resource_version.into()),
        }
    }

    #[test]
    fn expiry_counts_from_the_first_sight_of_an_unchanged_record() {
        let t0 = Instant::now();
        let seen = Observed::update(None, record("a", "1"), t0);
        // A renewTime far in the past does not make a freshly seen lease expired.
        assert!(!seen.expired(t0, LEASE_DURATION));
        // Seeing the same record again does not restart the clock.
        let seen = Observed::update(Some(seen), record("a", "1"), t0 + Duration::from_secs(10));
        assert!(!seen.expired(t0 + Duration::from_secs(14), LEASE_DURATION));
        assert!(seen.expired(t0 + Duration::from_secs(15), LEASE_DURATION));
        // A renewal (new resourceVersion) restarts it.
        let seen = Observed::update(Some(seen), record("a", "2"), t0 + Duration::from_secs(16));
        assert!(!seen.expired(t0 + Duration::from_secs(30), LEASE_DURATION));
        assert!(seen.expired(t0 + Duration::from_secs(31), LEASE_DURATION));
    }

    #[test]
    fn expiry_uses_the_duration_the_record_states() {
        let t0 = Instant::now();
        let mut short = record("a", "1");
        short.lease_duration_seconds = Some(6);
        let seen = Observed::update(None, short, t0);
        assert!(seen.expired(t0 + Duration::from_secs(6), LEASE_DURATION));
        let mut unstated = record("a", "1");
        unstated.lease_duration_seconds = None;
        let seen = Observed::update(None, unstated, t0);
        assert!(!seen.expired(t0 + Duration::from_secs(6), LEASE_DURATION));
    }

    #[test]
    fn timing_must_be_ordered() {
        check_timing(LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD);
        let secs = Duration::from_secs;
        for (lease, renew, retry) in [
            (secs(4), secs(4), secs(1)),
            (secs(6), secs(1), secs(1)),
            (secs(6), secs(4), Duration::ZERO),
            (Duration::from_millis(6500), secs(4), secs(1)),
        ] {
            let result = std::panic::catch_unwind(|| check_timing(lease, renew, retry));
            assert!(result.is_err(), "{lease:?} {renew:?} {retry:?} accepted");
        }
    }
}
