//! Where webhooks may not go (SSRF), with the secure defaults: registering
//! an endpoint that is not https, or whose host is or resolves to a
//! loopback, private, link-local, unspecified or v4-mapped address, is 422;
//! and a delivery whose host resolves to such an address by the time it is
//! sent (DNS rebinding) is refused by the delivery client's resolver, never
//! connected to. A separate test binary: the process-wide policy here is
//! the default one. Needs `source .stack/env`.

mod events_support;
mod support;

use std::time::Duration;

use events_support::Receiver;
use serde_json::json;
use strata_dataplane::events::{Dispatcher, EventSettings};
use support::{Checked, Client, Server, app_state, with_tenants};

#[tokio::test]
async fn non_public_targets_are_refused() {
    with_tenants("ssrf", &["sf", "other"], |catalog_url, _catalog, tenants| async move {
        let tenant = &tenants[0];
        let state = app_state(&catalog_url);
        let server = Server::start(state.clone(), 1 << 20).await;
        let api = Client::new(&server.base);
        let checked = Checked::new(api.clone(), &tenants[1], &[]);
        let owner = api.accept_invitation(tenant).await;
        let hooks = format!("/v1/tenants/{}/webhooks", tenant.name);
        for url in [
            "http://example.com/hook",
            "ftp://example.com/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://172.20.0.1/hook",
            "https://192.168.0.10/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/hook",
            "https://100.64.0.1/hook",
            "https://224.0.0.1/hook",
            "https://[::1]/hook",
            "https://[::]/hook",
            "https://[fe80::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[::ffff:169.254.169.254]/hook",
            "https://localhost/hook",
            "https://host.invalid/hook",
        ] {
            let reply = api.json("POST", &hooks, &owner, json!({"url": url})).await;
            let problem = checked.problem(&reply, 422, "validation-failed");
            assert_eq!(Checked::pointers(&problem), ["/url"], "{url}: {problem}");
        }
        let listed = api.get(&hooks, &owner).await;
        assert_eq!(listed.json["items"], json!([]), "nothing was registered");

        // DNS rebinding: an endpoint whose name now resolves to loopback
        // (written directly, as if it had resolved publicly when it was
        // registered). http is allowed here so only the address decides.
        let receiver = Receiver::start().await;
        let port = receiver.url.rsplit(':').next().expect("port").trim_end_matches("/hook").to_string();
        let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
        for url in [format!("http://localhost:{port}/hook"), format!("http://127.0.0.1:{port}/hook")] {
            sqlx::query("INSERT INTO webhook_endpoints (url, secret) VALUES ($1, 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')")
                .bind(url)
                .execute(&pool)
                .await
                .expect("endpoint");
        }
        let made = api.json("POST", &format!("/v1/tenants/{}/collections", tenant.name), &owner, json!({"name": "c"})).await;
        assert_eq!(made.status, 201);
        let settings = EventSettings {
            allow_http: true,
            allow_private: false,
            max_attempts: 1,
            webhook_timeout: Duration::from_secs(2),
            ..EventSettings::default()
        };
        let dispatcher = Dispatcher::new(state.tenancy.clone(), state.catalog.clone(), None, None, settings)
            .expect("dispatcher");
        dispatcher.run_tenant(&tenant.name).await.expect("fan out");
        dispatcher.run_tenant(&tenant.name).await.expect("deliver");
        let rows: Vec<(String, String, Option<i32>, Option<String>)> = sqlx::query_as(
            "SELECT e.url, d.state, d.last_status, d.last_error FROM webhook_deliveries d \
               JOIN webhook_endpoints e ON e.id = d.endpoint_id ORDER BY e.url",
        )
        .fetch_all(&pool)
        .await
        .expect("deliveries");
        assert!(rows.len() >= 2, "{rows:?}");
        for (url, state, status, error) in &rows {
            assert_eq!(state, "dead", "{url}");
            assert_eq!(*status, None, "{url}: never answered");
            let error = error.as_deref().unwrap_or_default();
            assert!(
                error.contains("non-public") || error.contains("no public address"),
                "{url}: {error}"
            );
        }
        assert!(receiver.got().is_empty(), "the receiver was never reached");
    })
    .await;
}
