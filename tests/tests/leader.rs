//! Leader election through a Lease: two replicas never lead at once, and a
//! released lease passes to the waiting replica. Runs with the operator's own
//! (RBAC-limited) identity.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use strata_operator::leader::LeaderElector;
use strata_tests::{TestNamespace, operator_client, unique};

#[tokio::test]
async fn only_one_replica_leads_and_release_hands_over() {
    let ns = TestNamespace::new().await;
    let leases: Api<Lease> = Api::namespaced(operator_client().await, &ns.name);
    let name = unique("lease-");
    let first = LeaderElector::new(leases.clone(), &name, "replica-a");
    let second = LeaderElector::new(leases.clone(), &name, "replica-b");

    tokio::time::timeout(Duration::from_secs(10), first.acquire())
        .await
        .expect("first replica leads");
    // The leader keeps renewing; the second replica must not get in meanwhile.
    let holding = tokio::spawn(async move {
        first.hold().await;
        first
    });
    let attempt = tokio::time::timeout(Duration::from_secs(6), second.acquire()).await;
    assert!(
        attempt.is_err(),
        "second replica acquired a lease that is held and renewed"
    );
    let lease = leases.get(&name).await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-a")
    );

    // The leader steps down (shutdown): the lease passes without waiting for expiry.
    holding.abort();
    let first = LeaderElector::new(leases.clone(), &name, "replica-a");
    first.release().await;
    tokio::time::timeout(Duration::from_secs(10), second.acquire())
        .await
        .expect("second replica takes over");
    let lease = leases.get(&name).await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}
