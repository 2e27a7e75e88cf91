//! Stored responses of the gateway's Responses API: the response object, the input items it
//! was given, and the conversation it ends, each readable only in the scope it was made in.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredResponse {
    pub id: String,
    /// Who may read it (the caller's owner, or its agent when it has none).
    pub scope: String,
    /// The response object, as JSON.
    pub body: String,
    /// The input items it was given, as a JSON array.
    pub input_items: String,
    /// Chat messages up to and including its output, as a JSON array.
    pub conversation: String,
    pub created_at: Millis,
}

#[async_trait]
pub trait ResponseStore: Send + Sync {
    async fn put_response(&self, r: &StoredResponse) -> Result<()>;
    /// Response `id`, if it was made in `scope`.
    async fn get_response(&self, id: &str, scope: &str) -> Result<Option<StoredResponse>>;
    /// Deletes response `id` made in `scope`; false when there is none.
    async fn delete_response(&self, id: &str, scope: &str) -> Result<bool>;
    /// Deletes the responses stored before `before`; returns how many.
    async fn sweep_responses(&self, before: Millis) -> Result<u64>;
}

macro_rules! impl_responses {
    ($store:ty) => {
        #[async_trait]
        impl ResponseStore for $store {
            async fn put_response(&self, r: &StoredResponse) -> Result<()> {
                sqlx::query(
                    "INSERT INTO responses (id, scope, body, input_items, conversation, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&r.id)
                .bind(&r.scope)
                .bind(&r.body)
                .bind(&r.input_items)
                .bind(&r.conversation)
                .bind(r.created_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn get_response(&self, id: &str, scope: &str) -> Result<Option<StoredResponse>> {
                Ok(sqlx::query_as(
                    "SELECT id, scope, body, input_items, conversation, created_at FROM responses \
                     WHERE id = $1 AND scope = $2",
                )
                .bind(id)
                .bind(scope)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn delete_response(&self, id: &str, scope: &str) -> Result<bool> {
                let n = sqlx::query("DELETE FROM responses WHERE id = $1 AND scope = $2")
                    .bind(id)
                    .bind(scope)
                    .execute(&self.write)
                    .await?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn sweep_responses(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM responses WHERE created_at < $1")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }
        }
    };
}

impl_responses!(SqliteStore);
impl_responses!(PgStore);
