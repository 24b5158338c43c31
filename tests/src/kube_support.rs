//! Kubernetes clients for the local API server, and a namespace per test.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{cleanup_blocking, env, unique};

async fn client_from(path: &str) -> kube::Client {
    let kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("read kubeconfig {path}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("kube client")
}

/// A client with cluster-admin rights on the local stack's API server. The
/// stack's kubeconfig (`.stack/env`) wins over a `KUBECONFIG` in the shell, so
/// a bare `cargo test` never creates test namespaces in whatever cluster the
/// shell points at.
pub async fn admin_client() -> kube::Client {
    client_from(&crate::stack_env_first("KUBECONFIG")).await
}

/// A client with only the operator's ClusterRole.
pub async fn operator_client() -> kube::Client {
    client_from(&env("STRATA_OPERATOR_KUBECONFIG")).await
}

/// A namespace of the test's own, deleted afterwards.
pub struct TestNamespace {
    pub name: String,
    pub client: kube::Client,
}

impl TestNamespace {
    pub async fn new() -> Self {
        let client = admin_client().await;
        let name = unique("test-");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // A client of its own: the test's client is bound to the test's runtime.
        let name = self.name.clone();
        cleanup_blocking(async move {
            let client = admin_client().await;
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::background())
                .await;
        });
    }
}
