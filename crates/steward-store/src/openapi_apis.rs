//! HTTP APIs described by OpenAPI documents, as administrators configured them.

use crate::sql::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenApiRecord {
    /// The prefix of its tools' names in the registry (`petstore` → `petstore.getPet`).
    pub name: String,
    /// The OpenAPI 3 document, as JSON.
    pub document: String,
    /// Where the operations' paths are appended.
    pub base_url: String,
    /// JSON object: headers sent with every call.
    pub headers: String,
    /// JSON object: query parameters sent with every call.
    pub query: String,
    /// JSON: the OAuth 2 client its calls are authorised with; empty for none.
    pub oauth: String,
    /// Who answers for its tools; empty for nobody named.
    pub owner: String,
    pub created_at: Millis,
    /// Changed whenever the record is: every node rebuilds the API's tools when it sees a
    /// newer one.
    pub updated_at: Millis,
}

#[async_trait]
pub trait OpenApiStore: Send + Sync {
    /// Adds or replaces an API (its `created_at` kept when it was there).
    async fn put_openapi(&self, api: &OpenApiRecord) -> Result<()>;
    /// Every API, by name.
    async fn openapis(&self) -> Result<Vec<OpenApiRecord>>;
    /// Every API's name and `updated_at`: what a node compares to follow changes, without
    /// reading every document again.
    async fn openapi_versions(&self) -> Result<Vec<(String, Millis)>>;
    /// Whether there was one.
    async fn delete_openapi(&self, name: &str) -> Result<bool>;
}

/// An API's OAuth token as stored (sealed), and who is refreshing it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OAuthTokenRecord {
    pub name: String,
    /// Empty until a first token was obtained.
    pub access_sealed: String,
    /// The refresh token the server last rotated in; empty when it never did.
    pub refresh_sealed: String,
    pub refresh_at: Millis,
    pub expires_at: Millis,
    pub lease_owner: String,
    pub lease_until: Millis,
}

#[async_trait]
pub trait OAuthTokenStore: Send + Sync {
    async fn oauth_token(&self, name: &str) -> Result<Option<OAuthTokenRecord>>;
    /// Takes the lease to refresh `name`'s token until `until`, if nobody else holds one at
    /// `now`: whether `owner` has it.
    async fn take_oauth_lease(
        &self,
        name: &str,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool>;
    /// Stores a token just obtained, and gives up `owner`'s lease. Written whether or not the
    /// lease was still held: the server may have rotated the refresh token, and losing the new
    /// one would lock every node out.
    async fn put_oauth_token(&self, t: &OAuthTokenRecord, owner: &str) -> Result<()>;
    /// Gives up `owner`'s lease (its refresh failed).
    async fn release_oauth_lease(&self, name: &str, owner: &str) -> Result<()>;
    /// Marks the token `access_sealed` as due for refresh (the API refused it), if it is still
    /// the stored one.
    async fn expire_oauth_token(&self, name: &str, access_sealed: &str) -> Result<()>;
    /// Forgets `name`'s token (its client changed or the API is gone).
    async fn delete_oauth_token(&self, name: &str) -> Result<()>;
}

macro_rules! impl_oauth_tokens {
    ($store:ty) => {
        #[async_trait]
        impl OAuthTokenStore for $store {
            async fn oauth_token(&self, name: &str) -> Result<Option<OAuthTokenRecord>> {
                Ok(sqlx::query_as(
                    "SELECT name, access_sealed, refresh_sealed, refresh_at, expires_at, lease_owner, lease_until \
                     FROM oauth_tokens WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn take_oauth_lease(&self, name: &str, owner: &str, now: Millis, until: Millis) -> Result<bool> {
                Ok(sqlx::query(
                    "INSERT INTO oauth_tokens (name, access_sealed, refresh_sealed, refresh_at, expires_at, lease_owner, lease_until) \
                     VALUES ($1, '', '', 0, 0, $2, $4) \
                     ON CONFLICT (name) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until \
                     WHERE oauth_tokens.lease_until < $3 OR oauth_tokens.lease_owner = excluded.lease_owner",
                )
                .bind(name)
                .bind(owner)
                .bind(now)
                .bind(until)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn put_oauth_token(&self, t: &OAuthTokenRecord, owner: &str) -> Result<()> {
                sqlx::query(
                    "UPDATE oauth_tokens SET access_sealed = $2, refresh_sealed = $3, refresh_at = $4, expires_at = $5, \
                       lease_until = CASE WHEN lease_owner = $6 THEN 0 ELSE lease_until END, \
                       lease_owner = CASE WHEN lease_owner = $6 THEN '' ELSE lease_owner END \
                     WHERE name = $1",
                )
                .bind(&t.name)
                .bind(&t.access_sealed)
                .bind(&t.refresh_sealed)
                .bind(t.refresh_at)
                .bind(t.expires_at)
                .bind(owner)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn release_oauth_lease(&self, name: &str, owner: &str) -> Result<()> {
                sqlx::query("UPDATE oauth_tokens SET lease_owner = '', lease_until = 0 WHERE name = $1 AND lease_owner = $2")
                    .bind(name)
                    .bind(owner)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn expire_oauth_token(&self, name: &str, access_sealed: &str) -> Result<()> {
                sqlx::query("UPDATE oauth_tokens SET refresh_at = 0 WHERE name = $1 AND access_sealed = $2")
                    .bind(name)
                    .bind(access_sealed)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn delete_oauth_token(&self, name: &str) -> Result<()> {
                sqlx::query("DELETE FROM oauth_tokens WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }
        }
    };
}

impl_oauth_tokens!(SqliteStore);
impl_oauth_tokens!(PgStore);

macro_rules! impl_openapi {
    ($store:ty) => {
        #[async_trait]
        impl OpenApiStore for $store {
            async fn put_openapi(&self, a: &OpenApiRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO openapi_apis (name, document, base_url, headers, query, oauth, owner, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (name) DO UPDATE SET document = excluded.document, \
                       base_url = excluded.base_url, headers = excluded.headers, \
                       query = excluded.query, oauth = excluded.oauth, owner = excluded.owner, updated_at = excluded.updated_at",
                )
                .bind(&a.name)
                .bind(&a.document)
                .bind(&a.base_url)
                .bind(&a.headers)
                .bind(&a.query)
                .bind(&a.oauth)
                .bind(&a.owner)
                .bind(a.created_at)
                .bind(a.updated_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn openapis(&self) -> Result<Vec<OpenApiRecord>> {
                Ok(sqlx::query_as(
                    "SELECT name, document, base_url, headers, query, oauth, owner, created_at, updated_at \
                     FROM openapi_apis ORDER BY name",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn openapi_versions(&self) -> Result<Vec<(String, Millis)>> {
                Ok(sqlx::query_as("SELECT name, updated_at FROM openapi_apis ORDER BY name")
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn delete_openapi(&self, name: &str) -> Result<bool> {
                Ok(sqlx::query("DELETE FROM openapi_apis WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    > 0)
            }
        }
    };
}

impl_openapi!(SqliteStore);
impl_openapi!(PgStore);
