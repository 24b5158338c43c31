//! Where a tenant's Kubernetes-side effects go: Secrets and Events.
//!
//! The controller uses [`KubeHost`] (Secrets owned by the Tenant, Events on
//! it). `strata-operator apply` runs the same provisioning without a cluster
//! and uses [`LocalHost`] (Secrets as files with mode 0600, Events printed).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use strata_api::Tenant;

/// Secret contents. Deliberately not `Debug`: values are credentials.
pub struct SecretData(pub BTreeMap<String, String>);

impl SecretData {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("local state: {0}")]
    Io(#[from] std::io::Error),
    #[error("secret {0} is malformed: {1}")]
    Malformed(String, String),
    /// A Secret of that name exists and was not created for this Tenant: it
    /// is never read, adopted or overwritten.
    #[error("Secret {0} exists and does not belong to this Tenant; delete or rename it")]
    Conflict(String),
}

impl HostError {
    /// Whether retrying may help: a conflict or a refused object needs a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict(_) | Self::Malformed(..) => false,
            // 4xx other than conflicts, throttling and timeouts: the request
            // itself is wrong (e.g. an invalid name), not the moment.
            Self::Kube(kube::Error::Api(e)) => !matches!(e.code, 400 | 403 | 422),
            _ => true,
        }
    }
}

#[async_trait]
pub trait TenantHost: Send + Sync {
    /// Reads a Secret in the tenant's namespace that this tenant created;
    /// `Err(Conflict)` if one of that name exists but is not the tenant's.
    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, HostError>;
    /// Creates a Secret owned by the tenant (deleted with it), or replaces
    /// one the tenant owns; `Err(Conflict)` if a foreign one is in the way.
    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), HostError>;
    /// Reports a step or failure to whoever watches the tenant.
    async fn event(&self, kind: EventKind, reason: &str, action: &str, note: String);
    /// A provisioning step finished (changed or not). Kubernetes has
    /// conditions for this, so by default nothing is reported.
    async fn step_done(&self, _step: crate::provision::Step) {}
}

/// Secrets and Events through the Kubernetes API.
pub struct KubeHost {
    pub secrets: Api<Secret>,
    pub tenant: Tenant,
    pub recorder: Recorder,
}

impl KubeHost {
    /// Whether this Tenant is the Secret's controlling owner.
    fn owns(&self, secret: &Secret) -> bool {
        let uid = self.tenant.metadata.uid.as_deref();
        secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
    }
}

#[async_trait]
impl TenantHost for KubeHost {
    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, HostError> {
        let Some(secret) = self.secrets.get_opt(name).await? else {
            return Ok(None);
        };
        if !self.owns(&secret) {
            return Err(HostError::Conflict(name.into()));
        }
        let mut out = BTreeMap::new();
        for (k, v) in secret.data.unwrap_or_default() {
            let value = String::from_utf8(v.0)
                .map_err(|_| HostError::Malformed(name.into(), format!("key {k} is not UTF-8")))?;
            out.insert(k, value);
        }
        for (k, v) in secret.string_data.unwrap_or_default() {
            out.insert(k, v);
        }
        Ok(Some(SecretData(out)))
    }

    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), HostError> {
        let owner = self
            .tenant
            .controller_owner_ref(&())
            .expect("Tenant has name and uid");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: self.tenant.namespace(),
                owner_references: Some(vec![owner]),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".into(),
                        "strata-operator".into(),
                    ),
                    ("strata.dev/tenant".into(), self.tenant.name_any()),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.0
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        match self.secrets.get_opt(name).await? {
            // Absent: create, which fails if someone creates it meanwhile.
            None => match self.secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(HostError::Conflict(name.into())),
                Err(e) => Err(e.into()),
            },
            Some(existing) if self.owns(&existing) => {
                let params = PatchParams::apply(crate::FIELD_MANAGER).force();
                self.secrets
                    .patch(name, &params, &Patch::Apply(&secret))
                    .await?;
                Ok(())
            }
            Some(_) => Err(HostError::Conflict(name.into())),
        }
    }

    async fn event(&self, kind: EventKind, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: match kind {
                EventKind::Normal => EventType::Normal,
                EventKind::Warning => EventType::Warning,
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let reference = self.tenant.object_ref(&());
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// Secrets as files under a state directory; Events printed to stdout.
pub struct LocalHost {
    pub dir: PathBuf,
}

#[async_trait]
impl TenantHost for LocalHost {
    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, HostError> {
        let path = self.dir.join(format!("{name}.json"));
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|m| Some(SecretData(m)))
                .map_err(|e| HostError::Malformed(name.into(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), HostError> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{name}.json"));
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let body = serde_json::to_vec_pretty(&data.0).expect("string map serialises");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    async fn event(&self, kind: EventKind, reason: &str, _action: &str, note: String) {
        let mark = match kind {
            EventKind::Normal => "ok  ",
            EventKind::Warning => "FAIL",
        };
        println!("{mark} {reason:<22} {note}");
    }

    async fn step_done(&self, step: crate::provision::Step) {
        println!("     step {step:<17} done");
    }
}
