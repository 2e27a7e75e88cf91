//! OAuth 2 access tokens for HTTP APIs, shared by every node through the store: obtained or
//! refreshed before they expire by one node at a time (it holds a lease on the API's token
//! row), while the others wait for it or use the token still valid. Tokens are sealed with the
//! vault's key; a refresh token the server rotates in is stored whatever happened to the lease,
//! so no rotation is lost. Callers never see a token: it goes in the `Authorization` header and
//! is blanked out of whatever the API answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_store::{OAuthTokenRecord, OAuthTokenStore};
use steward_tools::openapi::{Credentials, OAuthClient};
use steward_tools::secret_refs::{self, Part};
use steward_types::Millis;

use crate::vault::Vault;
use crate::Clock;

/// How long a node may take to obtain a token before another may try.
const LEASE_MS: Millis = 30_000;
/// How long a call waits for another node's refresh before giving up.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(15);
/// How often a waiting node looks at the store again.
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// How long a token lives when the server does not say (RFC 6749 leaves it to the server).
const DEFAULT_LIFETIME_MS: Millis = 300_000;

#[derive(Clone)]
struct Cached {
    access: String,
    sealed: String,
    refresh_at: Millis,
}

/// Every API's current token, on this node.
pub struct OAuthTokens {
    store: Arc<dyn OAuthTokenStore>,
    vault: Option<Arc<Vault>>,
    node: String,
    clock: Arc<dyn Clock>,
    cached: Mutex<HashMap<String, Cached>>,
    /// One task per API on this node goes to the store for a new token; the rest wait for it.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each change under these locks is one insert or removal: a panic leaves nothing half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When to ask for the next token: a third of its life before it ends, at most a minute.
fn refresh_at(now: Millis, lifetime: Millis) -> Millis {
    now + lifetime - (lifetime / 3).min(60_000)
}

impl OAuthTokens {
    pub fn new(
        store: Arc<dyn OAuthTokenStore>,
        vault: Option<Arc<Vault>>,
        node: String,
        clock: Arc<dyn Clock>,
    ) -> Arc<OAuthTokens> {
        Arc::new(OAuthTokens {
            store,
            vault,
            node,
            clock,
            cached: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        })
    }

    fn vault(&self) -> Result<&Vault, String> {
        self.vault.as_deref().ok_or_else(|| {
            "OAuth tokens are kept sealed with the vault's key: start the server with STEWARD_VAULT_KEY".to_string()
        })
    }

    /// The vault secret a field names (`{{secret:NAME}}`), or "" for an empty field.
    fn secret_of(&self, field: &str, value: &str) -> Result<String, String> {
        let parts = secret_refs::parts(value).map_err(|e| format!("{field}: {e}"))?;
        match parts.as_slice() {
            [] => Ok(String::new()),
            [Part::Secret(name)] => {
                use steward_llm::SecretSource;
                self.vault()?.secret(name).ok_or_else(|| {
                    format!(
                        "{field}: secret {name:?} is not in the vault (PUT /api/v1/secrets/{name})"
                    )
                })
            }
            _ => Err(format!(
                "{field}: a credential comes from the vault as {{{{secret:NAME}}}}"
            )),
        }
    }

    fn open(&self, api: &str, what: &str, sealed: &str) -> Result<String, String> {
        self.vault()?
            .open_value(&format!("oauth:{api}:{what}"), sealed)
            .map_err(|e| format!("the stored {what} token: {e}"))
    }

    fn seal(&self, api: &str, what: &str, value: &str) -> Result<String, String> {
        self.vault()?
            .seal_value(&format!("oauth:{api}:{what}"), value)
            .map_err(|e| format!("sealing the {what} token: {e}"))
    }

    fn gate(&self, api: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.gates)
            .entry(api.to_string())
            .or_default()
            .clone()
    }

    fn remember(&self, api: &str, access: &str, row: &OAuthTokenRecord) {
        lock(&self.cached).insert(
            api.to_string(),
            Cached {
                access: access.to_string(),
                sealed: row.access_sealed.clone(),
                refresh_at: row.refresh_at,
            },
        );
    }

    /// API `api`'s current access token.
    pub async fn token(&self, api: &str, client: &OAuthClient) -> Result<String, String> {
        if let Some(c) = lock(&self.cached).get(api) {
            if c.refresh_at > self.clock.now_ms() {
                return Ok(c.access.clone());
            }
        }
        let gate = self.gate(api);
        let _one_at_a_time = gate.lock().await;
        let store_err = |e: steward_store::Error| format!("the token store: {e}");
        let give_up = tokio::time::Instant::now() + WAIT_FOR_OTHERS;
        loop {
            let now = self.clock.now_ms();
            let row = self.store.oauth_token(api).await.map_err(store_err)?;
            let held = row.as_ref().filter(|r| !r.access_sealed.is_empty());
            if let Some(r) = held.filter(|r| r.refresh_at > now) {
                let access = self.open(api, "access", &r.access_sealed)?;
                self.remember(api, &access, r);
                return Ok(access);
            }
            if self
                .store
                .take_oauth_lease(api, &self.node, now, now + LEASE_MS)
                .await
                .map_err(store_err)?
            {
                // Read again under the lease: what was read before it may be from before
                // another node's refresh, and its refresh token already spent.
                let row = self.store.oauth_token(api).await.map_err(store_err)?;
                if let Some(r) = row
                    .as_ref()
                    .filter(|r| !r.access_sealed.is_empty() && r.refresh_at > now)
                {
                    let _ = self.store.release_oauth_lease(api, &self.node).await;
                    let access = self.open(api, "access", &r.access_sealed)?;
                    self.remember(api, &access, r);
                    return Ok(access);
                }
                return match self.obtain(api, client, row.as_ref()).await {
                    Ok((access, record)) => {
                        self.store
                            .put_oauth_token(&record, &self.node)
                            .await
                            .map_err(store_err)?;
                        self.remember(api, &access, &record);
                        Ok(access)
                    }
                    Err(e) => {
                        let _ = self.store.release_oauth_lease(api, &self.node).await;
                        Err(e)
                    }
                };
            }
            // Another node is getting the next one: the current one serves while it lives.
            if let Some(r) = held.filter(|r| r.expires_at > now + 1_000) {
                return self.open(api, "access", &r.access_sealed);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!(
                    "another node has been obtaining API {api}'s token for {} s; try again",
                    WAIT_FOR_OTHERS.as_secs()
                ));
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }

    /// Asks the token endpoint (this node holds the lease).
    async fn obtain(
        &self,
        api: &str,
        client: &OAuthClient,
        row: Option<&OAuthTokenRecord>,
    ) -> Result<(String, OAuthTokenRecord), String> {
        let secret = self.secret_of("client_secret", &client.client_secret)?;
        let rotated = row.map(|r| r.refresh_sealed.clone()).unwrap_or_default();
        let refresh = if client.refresh_token.is_empty() {
            None
        } else if rotated.is_empty() {
            Some(self.secret_of("refresh_token", &client.refresh_token)?)
        } else {
            Some(self.open(api, "refresh", &rotated)?)
        };
        let token = client.request(&secret, refresh.as_deref()).await?;
        let now = self.clock.now_ms();
        let lifetime = token
            .expires_in
            .map_or(DEFAULT_LIFETIME_MS, |s| (s as Millis).saturating_mul(1000))
            .max(1_000);
        let refresh_sealed = match &token.refresh_token {
            Some(r) => self.seal(api, "refresh", r)?,
            None => rotated,
        };
        let record = OAuthTokenRecord {
            name: api.to_string(),
            access_sealed: self.seal(api, "access", &token.access_token)?,
            refresh_sealed,
            refresh_at: refresh_at(now, lifetime),
            expires_at: now + lifetime,
            lease_owner: String::new(),
            lease_until: 0,
        };
        Ok((token.access_token, record))
    }

    /// The API refused `access`: the next call gets a new token, on every node.
    pub async fn rejected(&self, api: &str, access: &str) {
        let sealed = {
            let mut cached = lock(&self.cached);
            match cached.get(api) {
                Some(c) if c.access == access => cached.remove(api).map(|c| c.sealed),
                _ => None,
            }
        };
        if let Some(sealed) = sealed {
            if let Err(e) = self.store.expire_oauth_token(api, &sealed).await {
                tracing::warn!(api, error = %e, "could not mark a refused OAuth token for refresh");
            }
        }
    }

    /// Forgets API `api`'s token (its client changed, or the API is gone).
    pub async fn forget(&self, api: &str) -> steward_store::Result<()> {
        lock(&self.cached).remove(api);
        self.store.delete_oauth_token(api).await
    }
}

/// What an API's calls draw their credentials from: the vault and the shared tokens.
pub struct ApiCredentials {
    pub vault: Option<Arc<Vault>>,
    pub tokens: Arc<OAuthTokens>,
}

#[async_trait::async_trait]
impl Credentials for ApiCredentials {
    fn secret(&self, name: &str) -> Option<String> {
        use steward_llm::SecretSource;
        self.vault.as_ref()?.secret(name)
    }

    async fn access_token(&self, api: &str, client: &OAuthClient) -> Result<String, String> {
        self.tokens.token(api, client).await
    }

    async fn token_rejected(&self, api: &str, token: &str) {
        self.tokens.rejected(api, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            refresh_at(0, 3_000),
            2_000,
            "a third before, for short lives"
        );
        assert_eq!(
            refresh_at(0, 3_600_000),
            3_540_000,
            "a minute before, for long ones"
        );
    }
}
