//! Gateway policies that sit in front of every API route: today, request
//! rate limits ([`ratelimit`]) with the client address taken only from
//! trusted proxies ([`client_ip`]).
//!
//! Where limits are counted:
//! - a request **with** a credential is counted by the
//!   [`crate::tenancy::TenantContext`] extractor once it knows the tenant
//!   and the credential (per credential, per tenant); it leaves the
//!   decision in a [`DecisionSlot`] so [`rate_limits`] can put the headers
//!   on whatever response follows, 429 or not;
//! - a request **without** one (invitation acceptance, the OpenAPI
//!   document, and any request that will be refused with 401) is counted
//!   here, per client IP, before any work.

pub mod client_ip;
pub mod output_cache;
pub mod policy;
pub mod ratelimit;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use client_ip::TrustedProxies;
pub use ratelimit::{Decision, RateLimitSettings, RateLimiter};

use crate::http::ApiError;

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
}

/// Middleware for the API routes: limits requests without a credential by
/// client IP, and writes the `RateLimit` headers of whichever limit applied.
pub async fn rate_limits(
    State(gateway): State<Gateway>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) {
        let slot = DecisionSlot::default();
        request.extensions_mut().insert(slot.clone());
        let mut response = next.run(request).await;
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
    let decision = gateway.limiter.check_anonymous(ip).await;
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
