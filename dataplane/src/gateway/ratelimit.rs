//! Request rate limits: GCRA (the generic cell rate algorithm) per tenant,
//! per credential and, for requests without a credential, per client IP.
//!
//! Two stores run the same algorithm:
//! - **Redis** (when configured): one Lua script checks every limit of a
//!   request in one round trip and consumes from none of them unless all
//!   allow it, so a limit holds across replicas;
//! - **in process** (`governor`): used when no Redis is configured, and as
//!   the fallback when Redis fails or is slow. A failed Redis call opens a
//!   short circuit, so an outage costs one timeout, not one per request;
//!   while it is open each replica limits on its own (the limit is then per
//!   replica: looser, never a 5xx).
//!
//! A limit of `q` requests per second allows bursts of `q`. Every limited
//! response carries the IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers); a refusal is a 429 problem with
//! `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
use uuid::Uuid;

use super::policy::RouteClass;
use crate::cache::Breaker;

use crate::http::auth::{CredentialId, Principal};
use crate::http::problem::ApiError;

/// The limits in force, from configuration (0 = no limit).
#[derive(Clone, Copy, Debug)]
pub struct RateLimitSettings {
    /// Per tenant, when its Tenant sets no `quotas.requestsPerSecond`.
    pub tenant_rps: u32,
    /// Per credential (API key, or JWT subject).
    pub credential_rps: u32,
    /// Per client IP, for requests without a credential.
    pub anonymous_rps: u32,
    /// Longest wait for Redis before the request is limited locally.
    pub redis_timeout: Duration,
    /// How long Redis is left alone after it failed.
    pub redis_retry_after: Duration,
}

impl RateLimitSettings {
    /// No limits at all (tests and benchmarks that measure something else).
    pub fn unlimited() -> Self {
        Self {
            tenant_rps: 0,
            credential_rps: 0,
            anonymous_rps: 0,
            ..Self::default()
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            tenant_rps: 1000,
            credential_rps: 200,
            anonymous_rps: 20,
            redis_timeout: Duration::from_millis(50),
            redis_retry_after: Duration::from_secs(5),
        }
    }
}

/// One limit a request is subject to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Limit {
    /// The policy's name in the headers: `tenant`, `credential` or `ip`.
    policy: &'static str,
    /// Store key; keys of one tenant share a Redis hash tag (`{…}`), so
    /// one script call may touch them all, even on a cluster.
    key: String,
    per_second: NonZeroU32,
}

/// The state of one limit after a request was counted (or refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitState {
    pub policy: &'static str,
    pub quota: u32,
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset: Duration,
}

/// What the limiter decided for a request: the state of each of its limits
/// and, when refused, how long to wait.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub limits: Vec<LimitState>,
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    /// `RateLimit-Policy` lists every policy; `RateLimit` reports the one
    /// closest to refusing (the fewest remaining).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if self.limits.is_empty() {
            return;
        }
        let policies = self
            .limits
            .iter()
            .map(|l| format!("\"{}\";q={};w=1", l.policy, l.quota))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(tightest) = self.limits.iter().min_by_key(|l| l.remaining) else {
            return;
        };
        let current = format!(
            "\"{}\";r={};t={}",
            tightest.policy,
            tightest.remaining,
            ceil_seconds(tightest.reset)
        );
        for (name, value) in [(RATELIMIT_POLICY, policies), (RATELIMIT, current)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }

    pub fn into_result(self) -> Result<Decision, ApiError> {
        match self.retry_after {
            None => Ok(self),
            Some(after) => Err(ApiError::RateLimited {
                retry_after: Some(after),
            }),
        }
    }
}

pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";

fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// GCRA over the limits given, in Lua so every check of a request is one
/// atomic round trip. TAT = theoretical arrival time (µs, Redis clock). A
/// request is allowed when `now >= TAT + interval - burst * interval` for
/// every limit; then each TAT moves on by one interval. Returns, per limit:
/// allowed (0/1), remaining, retry-after µs, reset µs.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local results = {}
local new_tats = {}
local denied = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local tolerance = interval * burst
  local allow_at = new_tat - tolerance
  if now < allow_at then
    denied = true
    results[i] = {0, 0, allow_at - now, tat - now}
  else
    new_tats[i] = new_tat
    results[i] = {1, math.floor((now + tolerance - new_tat) / interval), 0, new_tat - now}
  end
end
if not denied then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, new_tats[i], 'PX', math.floor((new_tats[i] - now) / 1000) + 1)
  end
end
return results
"#;

type KeyedGcra =
    Gcra<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// In-process GCRA: one keyed limiter per distinct rate (a keyed governor
/// limiter has one quota for all its keys, and tenants' rates differ).
#[derive(Default)]
struct LocalLimiter {
    by_rate: Mutex<HashMap<NonZeroU32, Arc<KeyedGcra>>>,
}

impl LocalLimiter {
    fn limiter(&self, per_second: NonZeroU32) -> Arc<KeyedGcra> {
        let mut map = self.by_rate.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(per_second)
            .or_insert_with(|| {
                Arc::new(
                    Gcra::keyed(Quota::per_second(per_second))
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// Checks the limits in order and stops at the first refusal (the
    /// earlier ones have counted the request: the local store is the
    /// fallback, a slightly stricter answer there is acceptable).
    fn check(&self, limits: &[Limit]) -> Decision {
        let mut decision = Decision::default();
        for limit in limits {
            let quota = limit.per_second.get();
            let limiter = self.limiter(limit.per_second);
            match limiter.check_key(&limit.key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    // Each used cell comes back after one interval.
                    let interval = Duration::from_secs(1) / quota;
                    decision.limits.push(LimitState {
                        policy: limit.policy,
                        quota,
                        remaining,
                        reset: interval * quota.saturating_sub(remaining),
                    });
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    decision.limits.push(LimitState {
                        policy: limit.policy,
                        quota,
                        remaining: 0,
                        reset: wait,
                    });
                    decision.retry_after = Some(wait.max(Duration::from_millis(1)));
                    return decision;
                }
            }
        }
        decision
    }

    /// Forgets keys whose quota is whole again (bounded memory).
    fn prune(&self) {
        let map = self.by_rate.lock().unwrap_or_else(|e| e.into_inner());
        for limiter in map.values() {
            limiter.retain_recent();
        }
    }
}

/// The data plane's limiter (cheap to clone).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RateLimitSettings,
    redis: Option<redis::aio::ConnectionManager>,
    script: redis::Script,
    local: LocalLimiter,
    /// Open after a Redis failure: Redis is left alone for a while.
    breaker: Breaker,
    checks: AtomicU64,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings, redis: Option<redis::aio::ConnectionManager>) -> Self {
        Self {
            inner: Arc::new(Inner {
                breaker: Breaker::new(settings.redis_retry_after),
                settings,
                redis,
                script: redis::Script::new(GCRA_SCRIPT),
                local: LocalLimiter::default(),
                checks: AtomicU64::new(0),
            }),
        }
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.inner.settings
    }

    /// Counts an authenticated request against its tenant's and its
    /// credential's limits, and its route class's (per credential) when
    /// the route has one. `tenant_rps` is the Tenant's own quota. A class
    /// limit counts only while per-credential limits are on (0 = no limits
    /// at all, for tests and benchmarks of other things).
    pub async fn check_principal(
        &self,
        tenant: Uuid,
        tenant_rps: Option<u32>,
        principal: &Principal,
        class: Option<RouteClass>,
    ) -> Decision {
        let settings = &self.inner.settings;
        let credential = match &principal.credential_id {
            CredentialId::ApiKey { key_id } => format!("k:{key_id}"),
            // Per subject, not per token: minting more tokens must not
            // mint more quota.
            CredentialId::Jwt { .. } => format!("s:{}", principal.subject),
        };
        let mut limits = Vec::with_capacity(3);
        if let Some(per_second) = NonZeroU32::new(settings.credential_rps) {
            if let Some(class) = class
                && let Some(class_rps) = NonZeroU32::new(class.per_second)
            {
                limits.push(Limit {
                    policy: class.name,
                    key: format!("v1:rl:{{{tenant}}}:r:{}:{credential}", class.name),
                    per_second: class_rps,
                });
            }
            limits.push(Limit {
                policy: "credential",
                key: format!("v1:rl:{{{tenant}}}:c:{credential}"),
                per_second,
            });
        }
        if let Some(per_second) = NonZeroU32::new(tenant_rps.unwrap_or(settings.tenant_rps)) {
            limits.push(Limit {
                policy: "tenant",
                key: format!("v1:rl:{{{tenant}}}:t"),
                per_second,
            });
        }
        self.check(&limits).await
    }

    /// Counts a request without a credential against its client IP's
    /// limit, and its route class's (per IP) when the route has one.
    pub async fn check_anonymous(&self, ip: Option<IpAddr>, class: Option<RouteClass>) -> Decision {
        let Some(per_second) = NonZeroU32::new(self.inner.settings.anonymous_rps) else {
            return Decision::default();
        };
        // No address (a test calling the router directly): one shared bucket.
        let ip = ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        let mut limits = Vec::with_capacity(2);
        if let Some(class) = class
            && let Some(class_rps) = NonZeroU32::new(class.per_second)
        {
            limits.push(Limit {
                policy: class.name,
                key: format!("v1:rl:{{ip:{ip}}}:r:{}", class.name),
                per_second: class_rps,
            });
        }
        limits.push(Limit {
            policy: "ip",
            key: format!("v1:rl:{{ip:{ip}}}"),
            per_second,
        });
        self.check(&limits).await
    }

    async fn check(&self, limits: &[Limit]) -> Decision {
        if limits.is_empty() {
            return Decision::default();
        }
        // Local keys are kept until their quota is whole again; prune now
        // and then rather than on a timer.
        if self.inner.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.inner.local.prune();
        }
        if let Some(decision) = self.check_redis(limits).await {
            return decision;
        }
        self.inner.local.check(limits)
    }

    /// `None` when Redis is not configured, failed, or its circuit is open.
    async fn check_redis(&self, limits: &[Limit]) -> Option<Decision> {
        let mut redis = self.inner.redis.clone()?;
        if !self.inner.breaker.allows() {
            return None;
        }
        let mut invocation = self.inner.script.prepare_invoke();
        for limit in limits {
            let quota = u64::from(limit.per_second.get());
            invocation.key(&limit.key).arg(1_000_000 / quota).arg(quota);
        }
        let call = invocation.invoke_async::<Vec<(i64, i64, i64, i64)>>(&mut redis);
        let result = tokio::time::timeout(self.inner.settings.redis_timeout, call).await;
        let rows = match result {
            Ok(Ok(rows)) if rows.len() == limits.len() => rows,
            failure => {
                let reason = match failure {
                    Err(_) => "timed out".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Ok(Ok(_)) => "unexpected answer".to_string(),
                };
                self.inner.breaker.trip();
                tracing::warn!(%reason, "rate limits: Redis unavailable, limiting locally");
                return None;
            }
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let mut decision = Decision::default();
        for (limit, (allowed, remaining, retry_us, reset_us)) in limits.iter().zip(rows) {
            decision.limits.push(LimitState {
                policy: limit.policy,
                quota: limit.per_second.get(),
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset: micros(reset_us),
            });
            if allowed == 0 {
                let wait = micros(retry_us).max(Duration::from_millis(1));
                decision.retry_after = Some(decision.retry_after.map_or(wait, |w| w.max(wait)));
            }
        }
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(key: &str) -> Principal {
        Principal {
            tenant: "acme".into(),
            subject: "ada".into(),
            role: "viewer".into(),
            credential_id: CredentialId::ApiKey { key_id: key.into() },
        }
    }

    fn limiter(credential_rps: u32, tenant_rps: u32) -> RateLimiter {
        RateLimiter::new(
            RateLimitSettings {
                credential_rps,
                tenant_rps,
                anonymous_rps: 3,
                ..RateLimitSettings::default()
            },
            None,
        )
    }

    #[tokio::test]
    async fn a_burst_past_the_credential_limit_is_refused_with_a_wait() {
        let limiter = limiter(5, 1000);
        let tenant = Uuid::from_bytes([1; 16]);
        for n in 0..5 {
            let d = limiter
                .check_principal(tenant, None, &principal("a"), None)
                .await;
            assert!(d.allowed(), "request {n} within the burst");
            assert_eq!(d.limits[0].remaining, 4 - n);
        }
        let refused = limiter
            .check_principal(tenant, None, &principal("a"), None)
            .await;
        let wait = refused.retry_after.expect("refused");
        assert!(
            wait <= Duration::from_millis(200),
            "one cell is 200 ms: {wait:?}"
        );
        // Another key of the same tenant has its own credential quota.
        assert!(
            limiter
                .check_principal(tenant, None, &principal("b"), None)
                .await
                .allowed()
        );
    }

    #[tokio::test]
    async fn the_tenant_quota_binds_all_its_credentials_and_only_them() {
        let limiter = limiter(100, 1000);
        let tenant = Uuid::from_bytes([1; 16]);
        let other = Uuid::from_bytes([2; 16]);
        for n in 0..3 {
            let d = limiter
                .check_principal(tenant, Some(3), &principal(&format!("k{n}")), None)
                .await;
            assert!(d.allowed());
        }
        let refused = limiter
            .check_principal(tenant, Some(3), &principal("k9"), None)
            .await;
        assert!(!refused.allowed());
        assert_eq!(refused.limits.last().expect("tenant").policy, "tenant");
        assert!(
            limiter
                .check_principal(other, Some(3), &principal("k0"), None)
                .await
                .allowed(),
            "another tenant is not affected"
        );
    }

    #[tokio::test]
    async fn anonymous_requests_are_limited_per_address() {
        let limiter = limiter(100, 1000);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limiter.check_anonymous(Some(a), None).await.allowed());
        }
        assert!(!limiter.check_anonymous(Some(a), None).await.allowed());
        assert!(limiter.check_anonymous(Some(b), None).await.allowed());
    }

    #[tokio::test]
    async fn zero_means_no_limit_and_no_headers() {
        let limiter = RateLimiter::new(RateLimitSettings::unlimited(), None);
        let d = limiter
            .check_principal(Uuid::nil(), None, &principal("a"), None)
            .await;
        assert!(d.allowed());
        let mut headers = HeaderMap::new();
        d.write_headers(&mut headers);
        assert!(headers.is_empty());
    }

    /// A route class's own limit binds before the credential's, per
    /// credential (and per IP without one), and only on its routes.
    #[tokio::test]
    async fn a_route_class_has_its_own_limit() {
        let class = RouteClass {
            name: "expensive",
            per_second: 3,
        };
        let by_key = limiter(100, 1000);
        let tenant = Uuid::from_bytes([1; 16]);
        for _ in 0..3 {
            let d = by_key
                .check_principal(tenant, None, &principal("a"), Some(class))
                .await;
            assert!(d.allowed());
            assert_eq!(d.limits[0].policy, "expensive");
        }
        let refused = by_key
            .check_principal(tenant, None, &principal("a"), Some(class))
            .await;
        assert!(!refused.allowed());
        let mut headers = HeaderMap::new();
        refused.write_headers(&mut headers);
        assert!(
            headers[RATELIMIT]
                .to_str()
                .is_ok_and(|v| v.starts_with("\"expensive\";r=0"))
        );
        // The same credential on an ordinary route, another credential on
        // the class: both still allowed.
        assert!(
            by_key
                .check_principal(tenant, None, &principal("a"), None)
                .await
                .allowed()
        );
        assert!(
            by_key
                .check_principal(tenant, None, &principal("b"), Some(class))
                .await
                .allowed()
        );
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let anonymous = limiter(100, 1000);
        for _ in 0..3 {
            assert!(
                anonymous
                    .check_anonymous(Some(ip), Some(class))
                    .await
                    .allowed()
            );
        }
        assert!(
            !anonymous
                .check_anonymous(Some(ip), Some(class))
                .await
                .allowed()
        );
        // Limits off: the class is off too.
        let off = RateLimiter::new(RateLimitSettings::unlimited(), None);
        for _ in 0..10 {
            let d = off
                .check_principal(tenant, None, &principal("a"), Some(class))
                .await;
            assert!(d.allowed() && d.limits.is_empty());
        }
    }

    #[test]
    fn headers_list_every_policy_and_report_the_tightest() {
        let decision = Decision {
            limits: vec![
                LimitState {
                    policy: "credential",
                    quota: 200,
                    remaining: 150,
                    reset: Duration::from_millis(250),
                },
                LimitState {
                    policy: "tenant",
                    quota: 1000,
                    remaining: 20,
                    reset: Duration::from_millis(980),
                },
            ],
            retry_after: None,
        };
        let mut headers = HeaderMap::new();
        decision.write_headers(&mut headers);
        assert_eq!(
            headers[RATELIMIT_POLICY],
            "\"credential\";q=200;w=1, \"tenant\";q=1000;w=1"
        );
        assert_eq!(headers[RATELIMIT], "\"tenant\";r=20;t=1");
    }
}
