//! Tenant and Bucket CRDs on the real local kube-apiserver: structural schema,
//! CEL immutability, status subresource with server-side apply, watches,
//! finalizers and the operator's RBAC.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use strata_api::{Bucket, Tenant, TenantSpec};
use strata_tests::{TestNamespace, operator_client};

fn tenant(name: &str, email: &str) -> Tenant {
    let spec: TenantSpec = serde_json::from_value(json!({
        "displayName": "Test tenant",
        "adminEmail": email,
        "quotas": { "storageBytes": 1024, "collections": 3 },
    }))
    .expect("spec");
    Tenant::new(name, spec)
}

/// The API server's message for a refused request.
fn refusal(result: Result<Tenant, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "expected 422 Invalid, got {e:?}");
            e.message
        }
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn tenant_create_get_list_watch() {
    let ns = TestNamespace::new().await;
    let tenants: Api<Tenant> = ns.api();
    let watch = watcher(tenants.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);

    tenants
        .create(&PostParams::default(), &tenant("alpha", "a@alpha.example"))
        .await
        .expect("create");
    let got = tenants.get("alpha").await.expect("get");
    assert_eq!(got.spec.admin_email, "a@alpha.example");
    assert_eq!(
        got.spec.deletion_policy,
        strata_api::DeletionPolicy::Retain,
        "default applied by the schema"
    );
    tenants
        .create(&PostParams::default(), &tenant("beta", "b@beta.example"))
        .await
        .expect("create");
    let names: Vec<String> = tenants
        .list(&ListParams::default())
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.metadata.name.unwrap_or_default())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let t = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
            .await
            .expect("watch event in time")
            .expect("watch ok")
            .expect("stream open");
        let name = t.metadata.name.unwrap_or_default();
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen.sort();
    assert_eq!(seen, ["alpha", "beta"]);
    for name in ["alpha", "beta"] {
        tenants
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
}

#[tokio::test]
async fn status_subresource_with_server_side_apply_merges_conditions() {
    let ns = TestNamespace::new().await;
    let tenants: Api<Tenant> = ns.api();
    tenants
        .create(&PostParams::default(), &tenant("gamma", "g@gamma.example"))
        .await
        .expect("create");
    let apply = |manager: &str| PatchParams::apply(manager).force();
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "reason": "Test", "message": "", "lastTransitionTime": "2026-11-27T00:00:00Z", "observedGeneration": 1});
    // Two field managers own one condition each; list-map keys merge them.
    tenants
        .patch_status(
            "gamma",
            &apply("writer-a"),
            &Patch::Apply(json!({"apiVersion": "strata.dev/v1alpha1", "kind": "Tenant", "status": {"phase": "Provisioning", "conditions": [condition("DatabaseReady", "True")]}})),
        )
        .await
        .expect("status apply a");
    tenants
        .patch_status(
            "gamma",
            &apply("writer-b"),
            &Patch::Apply(json!({"apiVersion": "strata.dev/v1alpha1", "kind": "Tenant", "status": {"conditions": [condition("Migrated", "False")]}})),
        )
        .await
        .expect("status apply b");
    let t = tenants.get_status("gamma").await.expect("get status");
    let status = t.status.clone().expect("status");
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["DatabaseReady", "Migrated"]);
    assert_eq!(status.phase, Some(strata_api::TenantPhase::Provisioning));
    // A status write through the main resource is ignored (subresource).
    let mut changed = t.clone();
    changed.status.as_mut().expect("status").phase = Some(strata_api::TenantPhase::Failed);
    changed.metadata.managed_fields = None;
    tenants
        .replace("gamma", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(
        tenants
            .get("gamma")
            .await
            .expect("get")
            .status
            .expect("status")
            .phase,
        Some(strata_api::TenantPhase::Provisioning)
    );
    // The spec's generation is untouched by status writes.
    assert_eq!(
        tenants.get("gamma").await.expect("get").metadata.generation,
        Some(1)
    );
    tenants
        .delete("gamma", &DeleteParams::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() {
    let ns = TestNamespace::new().await;
    let tenants: Api<Tenant> = ns.api();
    let pp = PostParams::default();

    let msg = refusal(
        tenants
            .create(&pp, &tenant("bad-email", "not-an-email"))
            .await,
    );
    assert!(msg.contains("spec.adminEmail"), "{msg}");

    let mut negative = tenant("negative", "n@neg.example");
    negative.spec.quotas.storage_bytes = Some(-1);
    let msg = refusal(tenants.create(&pp, &negative).await);
    assert!(msg.contains("spec.quotas.storageBytes"), "{msg}");

    // Names the operator could never provision are refused at admission:
    // over 63 characters (a label value), dots (not a catalog name).
    for bad in ["a".repeat(64), "with.dot".to_string()] {
        let msg = refusal(tenants.create(&pp, &tenant(&bad, "n@name.example")).await);
        assert!(
            msg.contains("metadata.name must be a DNS label"),
            "{bad}: {msg}"
        );
    }
    tenants
        .create(&pp, &tenant(&"a".repeat(63), "n@name.example"))
        .await
        .expect("63 characters is a valid name");
    // A cluster is named, never given as a connection string.
    let mut url = tenant("url-cluster", "u@url.example");
    url.spec.cluster = Some("postgres://x:y@evil:5432/db".into());
    let msg = refusal(tenants.create(&pp, &url).await);
    assert!(msg.contains("spec.cluster"), "{msg}");

    // Immutable: the database cluster cannot change once set.
    let mut pinned = tenant("pinned", "p@pinned.example");
    pinned.spec.cluster = Some("cluster-a".into());
    tenants.create(&pp, &pinned).await.expect("create");
    let moved = json!({"spec": {"cluster": "cluster-b"}});
    let msg = refusal(
        tenants
            .patch("pinned", &PatchParams::default(), &Patch::Merge(&moved))
            .await,
    );
    assert!(msg.contains("spec.cluster"), "{msg}");
    assert!(msg.contains("immutable"), "{msg}");
    let unset = json!({"spec": {"cluster": null}});
    let msg = refusal(
        tenants
            .patch("pinned", &PatchParams::default(), &Patch::Merge(&unset))
            .await,
    );
    assert!(msg.contains("spec.cluster"), "{msg}");
    // Other fields stay mutable.
    tenants
        .patch(
            "pinned",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"displayName": "Renamed"}})),
        )
        .await
        .expect("mutable field");
    tenants
        .delete("pinned", &DeleteParams::default())
        .await
        .expect("delete");

    // Bucket: name and tenantRef are immutable; content types are checked.
    let buckets: Api<Bucket> = ns.api();
    let bucket: Bucket = serde_json::from_value(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Bucket",
        "metadata": {"name": "media"},
        "spec": {"tenantRef": "acme", "name": "acme-media", "allowedContentTypes": ["image/*", "application/pdf"]},
    }))
    .expect("bucket");
    buckets.create(&pp, &bucket).await.expect("create bucket");
    for (patch, field) in [
        (json!({"spec": {"name": "other-name"}}), "spec.name"),
        (json!({"spec": {"tenantRef": "other"}}), "spec.tenantRef"),
        (
            json!({"spec": {"allowedContentTypes": ["not a type"]}}),
            "spec.allowedContentTypes",
        ),
        (
            json!({"spec": {"quota": {"bytes": -5}}}),
            "spec.quota.bytes",
        ),
    ] {
        match buckets
            .patch("media", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert!(e.message.contains(field), "{field}: {}", e.message)
            }
            other => panic!("{field}: expected refusal, got {other:?}"),
        }
    }
    buckets
        .delete("media", &DeleteParams::default())
        .await
        .expect("delete bucket");
}

#[tokio::test]
async fn a_finalizer_holds_deletion_until_removed() {
    let ns = TestNamespace::new().await;
    let tenants: Api<Tenant> = ns.api();
    let mut t = tenant("held", "h@held.example");
    t.metadata.finalizers = Some(vec!["strata.dev/test-hold".into()]);
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("create");
    tenants
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete accepted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = tenants.get("held").await.expect("still there");
    assert!(
        still.metadata.deletion_timestamp.is_some(),
        "marked for deletion"
    );
    tenants
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove finalizer");
    for _ in 0..50 {
        if tenants.get_opt("held").await.expect("get").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tenant was not deleted after its finalizer was removed");
}

#[tokio::test]
async fn operator_identity_has_only_its_role() {
    let ns = TestNamespace::new().await;
    let admin_tenants: Api<Tenant> = ns.api();
    admin_tenants
        .create(
            &PostParams::default(),
            &tenant("watched", "w@watched.example"),
        )
        .await
        .expect("create");

    let operator = operator_client().await;
    // Allowed: list and watch Tenants in every namespace.
    let tenants: Api<Tenant> = Api::all(operator.clone());
    let listed = tenants
        .list(&ListParams::default())
        .await
        .expect("operator lists tenants");
    assert!(
        listed
            .iter()
            .any(|t| t.metadata.name.as_deref() == Some("watched"))
    );
    let mut stream = tenants
        .watch(&Default::default(), "0")
        .await
        .expect("operator watches tenants")
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event");
    assert!(first.is_some());

    // Refused: what the ClusterRole does not grant.
    let namespaces: Api<Namespace> = Api::all(operator.clone());
    match namespaces.delete(&ns.name, &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("operator must not delete namespaces: {other:?}"),
    }
    let ns_tenants: Api<Tenant> = Api::namespaced(operator.clone(), &ns.name);
    match ns_tenants.delete("watched", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("operator must not delete tenants: {other:?}"),
    }
    match ns_tenants
        .create(
            &PostParams::default(),
            &tenant("sneaky", "s@sneaky.example"),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("operator must not create tenants: {other:?}"),
    }
    admin_tenants
        .delete("watched", &DeleteParams::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn examples_apply_as_they_are() {
    let ns = TestNamespace::new().await;
    let root = strata_tests::repo_root();
    let mut tenant: Tenant = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("examples/tenant.yaml")).expect("read"),
    )
    .expect("parse");
    let mut bucket: Bucket = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("examples/bucket.yaml")).expect("read"),
    )
    .expect("parse");
    tenant.metadata.namespace = Some(ns.name.clone());
    bucket.metadata.namespace = Some(ns.name.clone());
    let tenants: Api<Tenant> = ns.api();
    let buckets: Api<Bucket> = ns.api();
    // Server-side dry run: the API server validates the examples as they are.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    tenants
        .create(&dry, &tenant)
        .await
        .expect("examples/tenant.yaml is valid");
    buckets
        .create(&dry, &bucket)
        .await
        .expect("examples/bucket.yaml is valid");
}
