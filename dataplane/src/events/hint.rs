//! Wake-up hints: after a request that recorded events has its response,
//! the tenant's name is published on [`HINT_CHANNEL`] so a dispatcher
//! dispatches that tenant at once instead of at its next sweep.
//!
//! Why Redis and not `NOTIFY`: `LISTEN`/`NOTIFY` is per database, and each
//! tenant has its own; one listening connection per tenant database per
//! replica does not scale to thousands of tenants. A hint is only a hint:
//! one that is lost (Redis down, no dispatcher subscribed at that moment,
//! a crash between commit and publish) delays the events until the next
//! sweep, it never loses them — the outbox row is the truth.
//!
//! How: [`announce`] wraps every API request in a task-local flag;
//! [`super::record`] sets it (it runs inside the handler's future, on the
//! same task). After the response, a set flag and a 2xx status publish the
//! tenant name of the path (`/v1/tenants/{tenant}/…`). Publishing is
//! spawned: the response does not wait for Redis.

use std::cell::Cell;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The channel dispatchers subscribe to; messages are tenant names.
pub const HINT_CHANNEL: &str = "v1:dispatch:hints";

tokio::task_local! {
    static RECORDED: Cell<bool>;
}

/// Notes that the current request recorded an event (no-op outside
/// [`announce`], e.g. in the operator or a test calling the store).
pub fn mark() {
    let _ = RECORDED.try_with(|flag| flag.set(true));
}

/// The tenant name of an API path, if it is a tenant route.
pub fn tenant_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Middleware: see the module documentation.
pub async fn announce(
    State(redis): State<Option<redis::aio::ConnectionManager>>,
    request: Request,
    next: Next,
) -> Response {
    let tenant = tenant_of(request.uri().path()).map(str::to_string);
    let (response, recorded) = RECORDED
        .scope(Cell::new(false), async {
            let response = next.run(request).await;
            (response, RECORDED.with(Cell::get))
        })
        .await;
    if recorded
        && response.status().is_success()
        && let (Some(tenant), Some(redis)) = (tenant, redis)
    {
        tokio::spawn(publish(redis, tenant));
    }
    response
}

/// Publishes one hint; failures are logged (the sweep catches up).
pub async fn publish(mut redis: redis::aio::ConnectionManager, tenant: String) {
    let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(HINT_CHANNEL)
        .arg(&tenant)
        .query_async(&mut redis)
        .await;
    if let Err(error) = result {
        tracing::debug!(%tenant, %error, "dispatch hint not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_from_path() {
        assert_eq!(tenant_of("/v1/tenants/acme/collections"), Some("acme"));
        assert_eq!(tenant_of("/v1/tenants/acme"), Some("acme"));
        assert_eq!(tenant_of("/v1/tenants//x"), None);
        assert_eq!(tenant_of("/v1/openapi.json"), None);
    }

    #[tokio::test]
    async fn mark_sets_the_flag_only_inside_a_scope() {
        mark();
        let seen = RECORDED
            .scope(Cell::new(false), async {
                mark();
                RECORDED.with(Cell::get)
            })
            .await;
        assert!(seen);
    }
}
