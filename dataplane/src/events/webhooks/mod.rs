//! Webhooks: endpoints a tenant registers ([`endpoints`]), Standard
//! Webhooks signatures ([`signing`]), where deliveries may go ([`ssrf`])
//! and one delivery attempt ([`deliver`]). The dispatcher
//! ([`super::dispatcher`]) claims due deliveries and calls [`deliver`].

pub mod deliver;
pub mod endpoints;
pub mod signing;
pub mod ssrf;
