//! `strata-operator apply -f tenant.yaml`: the same provisioning, once,
//! without a Kubernetes cluster (for non-Kubernetes installs and local use).

use strata_api::Tenant;
use uuid::Uuid;

use crate::cluster::{Clusters, NoNamedClusters};
use crate::config::ApplyArgs;
use crate::host::LocalHost;
use crate::provision::{self, Provisioner, TenantInput};

/// Namespace for deriving a stable tenant id from `namespace/name` when the
/// manifest has no uid (it never came from an API server).
const OFFLINE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a8e_53a4_4f7e_9f0b_8b6e_2d4c_1a90);

pub async fn apply(args: &ApplyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let tenant: Tenant = serde_yaml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a valid Tenant: {e}", args.file.display()))?;
    let name = tenant
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("metadata.name is required"))?;
    let namespace = tenant
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let id = match &tenant.metadata.uid {
        Some(uid) => Uuid::parse_str(uid)?,
        None => Uuid::new_v5(
            &OFFLINE_ID_NAMESPACE,
            format!("{namespace}/{name}").as_bytes(),
        ),
    };
    println!("tenant {namespace}/{name} (id {id})");

    let settings = args.db.settings("offline");
    let catalog = crate::platform::open(&args.db.database_url, &args.db.platform_database)
        .await
        .map_err(|e| anyhow::anyhow!("opening the platform database: {e}"))?;
    println!(
        "ok   {:<22} platform database {}",
        "CatalogReady", args.db.platform_database
    );
    let host = LocalHost {
        dir: args.state_dir.join(&namespace),
    };
    // Offline, only the default cluster (the --database-url) exists.
    let clusters = Clusters::new(
        Box::new(NoNamedClusters),
        args.db.database_url.clone(),
        args.db.session_limits(),
    )
    .with_default_dataplane_role(args.db.dataplane_role.clone());
    let input = TenantInput {
        id,
        name,
        namespace,
        spec: tenant.spec,
        // Offline there is no status to remember a rotation in.
        rotation: Default::default(),
    };
    let cluster = provision::resolve_cluster(&clusters, provision::cluster_name(&input.spec))
        .await
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let provisioned = Provisioner {
        settings: &settings,
        catalog: &catalog,
        cluster: &cluster,
        host: &host,
    }
    .provision(&input)
    .await
    .map_err(|f| anyhow::anyhow!("{f}"))?;
    println!(
        "ok   {:<22} database {} at schema version {}; credentials in {}",
        "Ready",
        provisioned.database_name,
        provisioned.schema_version,
        host.dir
            .join(format!("{}.json", provisioned.credentials_secret))
            .display()
    );
    Ok(())
}
