//! Alert rules as the management API sees them: put (checked first), listed with their state,
//! removed, and their webhook deliveries read.

use crate::alerts::AlertSpec;
use crate::*;

/// `Engine::alerts()`.
pub struct Alerts<'a>(pub(crate) &'a Engine);

/// A rule with how it stands.
pub struct AlertInfo {
    pub name: String,
    pub spec: AlertSpec,
    pub record: steward_store::AlertRecord,
}

fn check_name(name: &str) -> Result<()> {
    handles::check_resource_name("name", name, 63)
}

impl Alerts<'_> {
    /// Creates or replaces rule `name`. A webhook's secret must be in the vault now.
    pub async fn put(&self, name: &str, spec: AlertSpec) -> Result<AlertInfo> {
        check_name(name)?;
        spec.check().map_err(Error::InvalidRequest)?;
        if let Some(w) = &spec.webhook {
            let vault = self.0.inner.shared.vault.as_ref().ok_or_else(|| {
                Error::InvalidRequest(
                    "webhook.secret: calls are signed with a vault secret, and no vault is configured on this node".into(),
                )
            })?;
            if steward_llm::SecretSource::secret(&**vault, &w.secret).is_none() {
                return Err(Error::InvalidRequest(format!(
                    "webhook.secret: no vault secret {:?}; put it first (PUT /api/v1/secrets/{})",
                    w.secret, w.secret
                )));
            }
        }
        let json = serde_json::to_string(&spec)
            .map_err(|e| Error::InvalidRequest(format!("the rule: {e}")))?;
        let record = self
            .0
            .store()
            .put_alert(name, &json, self.0.inner.shared.clock.now_ms())
            .await?;
        Ok(AlertInfo {
            name: name.to_string(),
            spec,
            record,
        })
    }

    pub async fn list(&self) -> Result<Vec<AlertInfo>> {
        Ok(self
            .0
            .store()
            .list_alerts()
            .await?
            .into_iter()
            .filter_map(|record| {
                Some(AlertInfo {
                    name: record.name.clone(),
                    spec: serde_json::from_str(&record.spec).ok()?,
                    record,
                })
            })
            .collect())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if self.0.store().delete_alert(name).await? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no alert {name:?}")))
        }
    }

    /// Rule `name`'s latest webhook deliveries, newest first.
    pub async fn deliveries(&self, name: &str) -> Result<Vec<steward_store::DeliveryRecord>> {
        check_name(name)?;
        if !self.list().await?.iter().any(|a| a.name == name) {
            return Err(Error::NotFound(format!("no alert {name:?}")));
        }
        Ok(self.0.store().list_deliveries(name, 100).await?)
    }
}
