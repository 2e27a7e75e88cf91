//! Evaluators and the scores they gave runs.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct EvaluatorRecord {
    pub name: String,
    pub spec: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ScoreRecord {
    pub run_id: String,
    pub evaluator: String,
    /// 0 when an online evaluator's sample left the run out (no score).
    pub sampled: i64,
    /// From 0 to 1.
    pub score: Option<f64>,
    pub passed: Option<i64>,
    pub reason: Option<String>,
    /// What scoring cost (a judge's model call), in nano-dollars.
    pub cost_nanos: i64,
    pub agent: String,
    pub at: Millis,
}

const EVALUATOR: &str = "name, spec, created_at, updated_at";
const SCORE: &str = "run_id, evaluator, sampled, score, passed, reason, cost_nanos, agent, at";

#[async_trait]
pub trait EvaluationStore: Send + Sync {
    async fn put_evaluator(&self, name: &str, spec: &str, now: Millis) -> Result<EvaluatorRecord>;
    async fn list_evaluators(&self) -> Result<Vec<EvaluatorRecord>>;
    async fn delete_evaluator(&self, name: &str) -> Result<bool>;
    /// Runs of `agent` created since `since` that ended and `evaluator` has not looked at.
    async fn runs_to_score(
        &self,
        evaluator: &str,
        agent: &str,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<String>>;
    /// Claims the scoring of `run` by `evaluator` for `node` until `until`: true unless the run
    /// has that score already or another node holds an unexpired claim (an expired one, or this
    /// node's own, is taken over). Claims are kept after the score, so a node that read the run
    /// as unscored before the score landed cannot claim it again.
    async fn claim_score(
        &self,
        run: &str,
        evaluator: &str,
        node: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool>;
    /// Keeps a score; false when the run already had one from this evaluator.
    async fn put_score(&self, s: &ScoreRecord) -> Result<bool>;
    /// Scores (sampled ones), newest first: of `run`, of `evaluator`, or both.
    async fn list_scores(
        &self,
        run: Option<&str>,
        evaluator: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ScoreRecord>>;
}

macro_rules! impl_evaluation {
    ($store:ty) => {
        #[async_trait]
        impl EvaluationStore for $store {
            async fn put_evaluator(&self, name: &str, spec: &str, now: Millis) -> Result<EvaluatorRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO evaluators (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (name) DO UPDATE SET spec = $2, updated_at = $3 RETURNING {EVALUATOR}"
                ))
                .bind(name)
                .bind(spec)
                .bind(now)
                .fetch_one(&self.write)
                .await?)
            }

            async fn list_evaluators(&self) -> Result<Vec<EvaluatorRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {EVALUATOR} FROM evaluators ORDER BY name"))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn delete_evaluator(&self, name: &str) -> Result<bool> {
                Ok(sqlx::query("DELETE FROM evaluators WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn runs_to_score(&self, evaluator: &str, agent: &str, since: Millis, limit: i64) -> Result<Vec<String>> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT r.id FROM runs r WHERE r.agent = $1 AND r.created_at >= $2 \
                       AND r.state IN ('succeeded', 'failed', 'cancelled') \
                       AND NOT EXISTS (SELECT 1 FROM eval_scores s WHERE s.run_id = r.id AND s.evaluator = $3) \
                     ORDER BY r.created_at LIMIT $4",
                )
                .bind(agent)
                .bind(since)
                .bind(evaluator)
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            async fn claim_score(&self, run: &str, evaluator: &str, node: &str, now: Millis, until: Millis) -> Result<bool> {
                Ok(sqlx::query(
                    "INSERT INTO eval_claims (run_id, evaluator, node, until) SELECT $1, $2, $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM eval_scores WHERE run_id = $1 AND evaluator = $2) \
                     ON CONFLICT (run_id, evaluator) DO UPDATE SET node = excluded.node, until = excluded.until \
                     WHERE eval_claims.until <= $5 OR eval_claims.node = excluded.node",
                )
                .bind(run)
                .bind(evaluator)
                .bind(node)
                .bind(until)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn put_score(&self, s: &ScoreRecord) -> Result<bool> {
                Ok(sqlx::query(
                    "INSERT INTO eval_scores (run_id, evaluator, sampled, score, passed, reason, cost_nanos, agent, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id, evaluator) DO NOTHING",
                )
                .bind(&s.run_id)
                .bind(&s.evaluator)
                .bind(s.sampled)
                .bind(s.score)
                .bind(s.passed)
                .bind(&s.reason)
                .bind(s.cost_nanos)
                .bind(&s.agent)
                .bind(s.at)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn list_scores(&self, run: Option<&str>, evaluator: Option<&str>, limit: i64) -> Result<Vec<ScoreRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {SCORE} FROM eval_scores WHERE sampled = 1 AND ($1 IS NULL OR run_id = $1) \
                       AND ($2 IS NULL OR evaluator = $2) ORDER BY at DESC, run_id LIMIT $3"
                ))
                .bind(run)
                .bind(evaluator)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_evaluation!(SqliteStore);
impl_evaluation!(PgStore);
