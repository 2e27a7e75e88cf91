//! The engine's vault: secrets sealed in the store (`steward_gov::vault`), decrypted into memory
//! and handed out by name at call time — to providers (`api_key_secret`) and to tools
//! (`{{secret:NAME}}` in `http_request` headers). The API lists names only; no value is ever
//! returned, logged, journaled or shown to a model.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use steward_gov::vault::VaultCipher;
use steward_store::SecretStore;

use crate::{Error, Result};

pub struct Vault {
    cipher: VaultCipher,
    store: Arc<dyn SecretStore>,
    open: RwLock<HashMap<String, String>>,
}

/// Largest secret value accepted.
const MAX_VALUE_BYTES: usize = 16 * 1024;

impl Vault {
    /// Opens every stored secret. One that cannot be decrypted (another key, or altered) is
    /// reported and left out: calls that need it fail saying so.
    pub async fn load(cipher: VaultCipher, store: Arc<dyn SecretStore>) -> Result<Arc<Self>> {
        let v = Arc::new(Vault {
            cipher,
            store,
            open: RwLock::new(HashMap::new()),
        });
        v.refresh().await?;
        Ok(v)
    }

    /// Re-reads the store (secrets another node wrote).
    pub async fn refresh(&self) -> Result<()> {
        let mut open = HashMap::new();
        for (name, sealed, _) in self.store.secrets().await? {
            match self.cipher.open(&name, &sealed) {
                Ok(v) => {
                    open.insert(name, v);
                }
                Err(e) => tracing::error!(error = %e, "a vault secret is unusable"),
            }
        }
        if let Ok(mut o) = self.open.write() {
            *o = open;
        }
        Ok(())
    }

    pub async fn put(&self, name: &str, value: &str, now: i64) -> Result<()> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::InvalidRequest(format!(
                "secret name {name:?}: 1-64 of a-z A-Z 0-9 - _ ."
            )));
        }
        if value.is_empty() || value.len() > MAX_VALUE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "value: between 1 and {MAX_VALUE_BYTES} bytes"
            )));
        }
        let sealed = self
            .cipher
            .seal(name, value)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        self.store.put_secret(name, &sealed, now).await?;
        if let Ok(mut o) = self.open.write() {
            o.insert(name.to_string(), value.to_string());
        }
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<bool> {
        let found = self.store.delete_secret(name).await?;
        if let Ok(mut o) = self.open.write() {
            o.remove(name);
        }
        Ok(found)
    }

    /// The signing key `name` every node shares: `fresh` (hex) is kept when none exists yet.
    /// Kept apart from the secrets, so it is never listed.
    pub async fn shared_key(&self, name: &str, fresh: &str, now: i64) -> Result<String> {
        let ad = format!("signing-key:{name}");
        let sealed = self
            .cipher
            .seal(&ad, fresh)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let stored = self.store.ensure_signing_key(name, &sealed, now).await?;
        self.cipher
            .open(&ad, &stored)
            .map_err(|e| Error::Unavailable(format!("the {name} signing key: {e}")))
    }

    /// `value` sealed under the vault's key for `purpose` (what opens it must name the same),
    /// for values kept outside the secrets table (OAuth tokens).
    pub fn seal_value(&self, purpose: &str, value: &str) -> Result<String> {
        self.cipher
            .seal(purpose, value)
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// What `seal_value(purpose, …)` sealed.
    pub fn open_value(&self, purpose: &str, sealed: &str) -> Result<String> {
        self.cipher
            .open(purpose, sealed)
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Names and when each was last set; never values.
    pub async fn names(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .store
            .secrets()
            .await?
            .into_iter()
            .map(|(n, _, at)| (n, at))
            .collect())
    }
}

impl steward_llm::SecretSource for Vault {
    fn secret(&self, name: &str) -> Option<String> {
        self.open.read().ok()?.get(name).cloned()
    }
}
