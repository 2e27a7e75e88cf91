//! The vault's secrets: sealed when put, never shown, only their names listed.

use crate::*;

/// `Engine::secrets()`.
pub struct Secrets<'a>(pub(crate) &'a Engine);

impl Secrets<'_> {
    fn vault(&self) -> Result<&Arc<vault::Vault>> {
        self.0
            .inner
            .shared
            .vault
            .as_ref()
            .ok_or_else(|| Error::Unavailable("no vault is configured on this node".into()))
    }

    /// Seals and stores a secret; its value is never returned.
    pub async fn put(&self, name: &str, value: &str) -> Result<i64> {
        let now = self.0.inner.shared.clock.now_ms();
        self.vault()?.put(name, value, now).await?;
        Ok(now)
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        if self.vault()?.delete(name).await? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no secret {name}")))
        }
    }

    /// The secrets' names and when each was set.
    pub async fn names(&self) -> Result<Vec<(String, i64)>> {
        self.vault()?.names().await
    }
}
