//! Gateway policies that sit in front of every route: the per-route table
//! ([`policy`]: body limits, timeouts, `Cache-Control`), the output cache
//! ([`output_cache`]), and request rate limits ([`ratelimit`]) with the
//! client address taken only from trusted proxies ([`client_ip`]).
//!
//! Where limits are counted:
//! - a request **with** a credential is counted by
//!   [`crate::tenancy::context::authenticate`] (every credential path of
//!   both APIs goes through it) once it knows the tenant and the
//!   credential: per credential, per tenant, and per credential on the
//!   route class's own limit when the route's row has one. [`rate_limits`]
//!   hands it the route's class and a [`DecisionSlot`] in a task-local
//!   ([`count_principal`]), so a request is counted once however often it
//!   is authenticated, and puts the headers on whatever response follows,
//!   429 or not;
//! - a request **without** one (invitation acceptance, the OpenAPI
//!   document, public-bucket and signed-URL reads, and any request that
//!   will be refused with 401) is counted here, per client IP (and per IP
//!   on the route class's limit), before any work.

pub mod cache_control;
pub mod client_ip;
pub mod output_cache;
pub mod policy;
pub mod ratelimit;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use client_ip::TrustedProxies;
pub use ratelimit::{Decision, RateLimitSettings, RateLimiter};

use crate::http::ApiError;
use crate::http::auth::Principal;
use policy::RouteClass;

/// What the gateway layer needs (cheap to clone).
#[derive(Clone)]
pub struct Gateway {
    pub limiter: RateLimiter,
    pub proxies: TrustedProxies,
}

impl Gateway {
    /// No limits (unit tests of other layers).
    pub fn unlimited() -> Self {
        Self {
            limiter: RateLimiter::new(RateLimitSettings::unlimited(), None),
            proxies: TrustedProxies::default(),
        }
    }
}

/// Where the extractor leaves its decision for [`rate_limits`].
#[derive(Clone, Default)]
pub struct DecisionSlot(Arc<Mutex<Option<Decision>>>);

impl DecisionSlot {
    pub fn set(&self, decision: Decision) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(decision);
    }

    fn take(&self) -> Option<Decision> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn peek(&self) -> Option<Decision> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What [`rate_limits`] tells the credential path about the request.
#[derive(Clone)]
struct Counting {
    slot: DecisionSlot,
    class: Option<RouteClass>,
}

tokio::task_local! {
    /// Set for the handler of a request with a credential: handlers that
    /// authenticate by hand (storage, media) reach the credential path
    /// without the request's extensions, so the route's class and the slot
    /// travel with the task instead.
    static COUNTING: Counting;
}

/// Counts an authenticated request (see the module docs): once per
/// request; a second authentication of the same request (a copy checks
/// two buckets) gets the first decision. Outside [`rate_limits`] (unit
/// tests of handlers) it counts without a route class.
pub async fn count_principal(
    gateway: &Gateway,
    tenant: uuid::Uuid,
    tenant_rps: Option<u32>,
    principal: &Principal,
) -> Result<(), ApiError> {
    let counting = COUNTING.try_with(Clone::clone).ok();
    if let Some(done) = counting.as_ref().and_then(|c| c.slot.peek()) {
        return done.into_result().map(drop);
    }
    let class = counting.as_ref().and_then(|c| c.class);
    let decision = gateway
        .limiter
        .check_principal(tenant, tenant_rps, principal, class)
        .await;
    if let Some(counting) = &counting {
        counting.slot.set(decision.clone());
    }
    decision.into_result().map(drop)
}

/// Middleware for the API routes: limits requests without a credential by
/// client IP, and writes the `RateLimit` headers of whichever limit applied.
pub async fn rate_limits(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    // The route's own limit, from its row (HEAD reads GET's).
    let class = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| policy::lookup(request.method(), path.as_str()))
        .and_then(|row| row.rate.class());
    if request.headers().contains_key(header::AUTHORIZATION) {
        let counting = Counting {
            slot: DecisionSlot::default(),
            class,
        };
        let slot = counting.slot.clone();
        let mut response = COUNTING.scope(counting, next.run(request)).await;
        if let Some(decision) = slot.take() {
            decision.write_headers(response.headers_mut());
        }
        return response;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let ip = gateway.proxies.client_ip(peer, request.headers());
    let decision = gateway.limiter.check_anonymous(ip, class).await;
    let mut response = match decision.retry_after {
        None => next.run(request).await,
        Some(after) => ApiError::RateLimited {
            retry_after: Some(after),
        }
        .into_response(),
    };
    decision.write_headers(response.headers_mut());
    response
}
