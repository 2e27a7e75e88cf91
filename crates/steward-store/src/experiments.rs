//! Datasets and experiments.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DatasetRecord {
    pub name: String,
    /// JSON: `[{"input": …, "expected": …}]`.
    pub items: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ExperimentRecord {
    pub id: String,
    pub dataset: String,
    pub agent: String,
    pub agent_version: i64,
    /// JSON: the evaluators' names.
    pub evaluators: String,
    /// JSON: the dataset's items as they were when it started, each with its run's id.
    pub items: String,
    pub created_at: Millis,
}

const DATASET: &str = "name, items, created_at, updated_at";
const EXPERIMENT: &str = "id, dataset, agent, agent_version, evaluators, items, created_at";

#[async_trait]
pub trait ExperimentStore: Send + Sync {
    async fn put_dataset(&self, name: &str, items: &str, now: Millis) -> Result<DatasetRecord>;
    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>>;
    async fn list_datasets(&self) -> Result<Vec<DatasetRecord>>;
    /// Keeps experiment `e` and what each of its runs is to be scored by:
    /// `(run, evaluator, expected)`, in one commit.
    async fn put_experiment(
        &self,
        e: &ExperimentRecord,
        scoring: &[(String, String, Option<String>)],
    ) -> Result<()>;
    /// Experiment runs that ended and lack a score: `(run, evaluator, expected)`.
    async fn experiment_runs_to_score(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, String, Option<String>)>>;
    async fn get_experiment(&self, id: &str) -> Result<Option<ExperimentRecord>>;
    /// The latest experiments, newest first.
    async fn list_experiments(&self, limit: i64) -> Result<Vec<ExperimentRecord>>;
}

macro_rules! impl_experiments {
    ($store:ty) => {
        #[async_trait]
        impl ExperimentStore for $store {
            async fn put_dataset(&self, name: &str, items: &str, now: Millis) -> Result<DatasetRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO datasets (name, items, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (name) DO UPDATE SET items = $2, updated_at = $3 RETURNING {DATASET}"
                ))
                .bind(name)
                .bind(items)
                .bind(now)
                .fetch_one(&self.write)
                .await?)
            }

            async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {DATASET} FROM datasets WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_datasets(&self) -> Result<Vec<DatasetRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {DATASET} FROM datasets ORDER BY name"))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn put_experiment(&self, e: &ExperimentRecord, scoring: &[(String, String, Option<String>)]) -> Result<()> {
                let mut tx = self.begin_write().await?;
                for (run, evaluator, expected) in scoring {
                    sqlx::query(
                        "INSERT INTO experiment_scoring (run_id, evaluator, experiment, expected) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(run)
                    .bind(evaluator)
                    .bind(&e.id)
                    .bind(expected)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO experiments (id, dataset, agent, agent_version, evaluators, items, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&e.id)
                .bind(&e.dataset)
                .bind(&e.agent)
                .bind(e.agent_version)
                .bind(&e.evaluators)
                .bind(&e.items)
                .bind(e.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn experiment_runs_to_score(&self, limit: i64) -> Result<Vec<(String, String, Option<String>)>> {
                Ok(sqlx::query_as(
                    "SELECT x.run_id, x.evaluator, x.expected FROM experiment_scoring x \
                     JOIN runs r ON r.id = x.run_id \
                     WHERE r.state IN ('succeeded', 'failed', 'cancelled') \
                       AND NOT EXISTS (SELECT 1 FROM eval_scores s WHERE s.run_id = x.run_id AND s.evaluator = x.evaluator) \
                     LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn get_experiment(&self, id: &str) -> Result<Option<ExperimentRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {EXPERIMENT} FROM experiments WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_experiments(&self, limit: i64) -> Result<Vec<ExperimentRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {EXPERIMENT} FROM experiments ORDER BY created_at DESC, id LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_experiments!(SqliteStore);
impl_experiments!(PgStore);
