//! API keys and the gateway's calls, from start to settlement.

use crate::sql::prelude::*;

/// API keys and the record of gateway calls.
#[async_trait]
pub trait GatewayStore: Send + Sync {
    async fn create_key(
        &self,
        id: &str,
        key_hash: &str,
        agent: &AgentName,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<ApiKeyRecord>;
    /// The key with this hash, revoked or expired included (the caller says which).
    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Newest first; `agent` filters.
    async fn list_keys(&self, agent: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// Revokes a live key; `None` when there is no such key, `Conflict` when it was revoked.
    async fn revoke_key(&self, id: &str, reason: &str, now: Millis)
        -> Result<Option<ApiKeyRecord>>;
    /// Holds `amount` on every account in `accounts` (none: no hold; the hold's id is the
    /// call's) and records the call as started — one transaction, one commit. Returns the
    /// account whose cap the hold would pass, in which case nothing is written.
    async fn begin_call(
        &self,
        call: &NewCall,
        accounts: &[String],
        amount: i64,
        now: Millis,
    ) -> Result<Option<String>> {
        let begin = CallBegin {
            call: call.clone(),
            accounts: accounts.to_vec(),
            amount,
        };
        Ok(self.begin_calls(&[begin], now).await?.pop().flatten())
    }
    /// [`begin_call`](Self::begin_call) for many calls in one commit: each call's hold is taken
    /// or refused on its own (a refused one writes nothing and leaves the others be); returns,
    /// per call in order, the account whose cap its hold would pass.
    async fn begin_calls(&self, calls: &[CallBegin], now: Millis) -> Result<Vec<Option<String>>> {
        self.write_calls(&[], calls, now).await
    }
    /// Ends calls — each: settles its hold, if it has one (releasing it, booking `spent`),
    /// records its outcome, and adds its tokens to its rate windows — all in one transaction,
    /// one commit.
    async fn end_calls(&self, ends: &[CallEnd]) -> Result<()> {
        self.write_calls(ends, &[], 0).await.map(|_| ())
    }
    /// [`end_calls`](Self::end_calls) and then [`begin_calls`](Self::begin_calls) (at `now`)
    /// in one transaction, one commit: what the [`CallWriter`](crate::CallWriter) writes, so
    /// the ends of calls ride along with the starts of others instead of a commit of their own.
    async fn write_calls(
        &self,
        ends: &[CallEnd],
        begins: &[CallBegin],
        now: Millis,
    ) -> Result<Vec<Option<String>>>;
    /// Whether [`write_calls`](Self::write_calls) does its work — fsync included — on the
    /// thread that polls it: its caller should then give it a thread of its own.
    fn writes_on_calling_thread(&self) -> bool {
        false
    }
    /// Most recent first; `agent` filters.
    async fn list_calls(&self, agent: Option<&str>, limit: i64) -> Result<Vec<CallRecord>>;
    /// Usage of models since a time, managed runs and gateway calls together.
    async fn usage(&self, since: Millis) -> Result<Vec<UsageRow>>;
}

macro_rules! impl_gateway_calls {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl GatewayStore for $store {
            async fn create_key(&self, id: &str, key_hash: &str, agent: &AgentName, expires_at: Option<Millis>, now: Millis) -> Result<ApiKeyRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO api_keys (id, key_hash, agent, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING {KEY_COLUMNS}"
                ))
                .bind(id)
                .bind(key_hash)
                .bind(agent.as_str())
                .bind(now)
                .bind(expires_at)
                .fetch_one(&self.write)
                .await?)
            }

            async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
                    .bind(key_hash)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_keys(&self, agent: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 IS NULL OR agent = $1) ORDER BY created_at DESC, id"
                ))
                .bind(agent)
                .fetch_all(&self.read)
                .await?)
            }

            async fn revoke_key(&self, id: &str, reason: &str, now: Millis) -> Result<Option<ApiKeyRecord>> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query("UPDATE api_keys SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let rec: Option<ApiKeyRecord> = sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                match rec {
                    Some(_) if n == 0 => Err(Error::Conflict(format!("key {id} is revoked already"))),
                    r => Ok(r),
                }
            }

            async fn write_calls(&self, ends: &[CallEnd], begins: &[CallBegin], now: Millis) -> Result<Vec<Option<String>>> {
                self.write_calls_now(ends, begins, now).await
            }

            fn writes_on_calling_thread(&self) -> bool {
                self.direct_writes()
            }

            async fn list_calls(&self, agent: Option<&str>, limit: i64) -> Result<Vec<CallRecord>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, agent, run_id, model, deployment, status, error, stream, tokens_in, tokens_out, \
                       started_at, duration_us FROM gateway_calls WHERE 1 = 1",
                );
                if let Some(a) = agent {
                    qb.push(" AND agent = ").push_bind(a.to_string());
                }
                qb.push(" ORDER BY started_at DESC, id DESC LIMIT ").push_bind(limit.clamp(1, 10_000));
                Ok(qb.build_query_as().fetch_all(&self.read).await?)
            }

            async fn usage(&self, since: Millis) -> Result<Vec<UsageRow>> {
                Ok(sqlx::query_as(
                    "SELECT j.kind AS kind, r.agent AS agent, j.name AS model, j.run_id AS run_id, \
                       r.task_id AS task_id, t.state AS task_state, COALESCE(r.verdict, r.state) AS run_state, j.at / 3600000 AS hour, \
                       COUNT(*) AS calls, CAST(SUM(j.tokens_in) AS BIGINT) AS tokens_in, \
                       CAST(SUM(j.tokens_out) AS BIGINT) AS tokens_out, CAST(0 AS BIGINT) AS booked_nanos \
                     FROM journal j JOIN runs r ON r.id = j.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE j.phase = 1 AND j.kind IN ('model', 'tool') AND j.at >= $1 \
                     GROUP BY j.kind, r.agent, j.name, j.run_id, r.task_id, t.state, r.state, r.verdict, j.at / 3600000 \
                     UNION ALL \
                     SELECT 'model', g.agent, COALESCE(g.deployment, g.model), g.run_id, r.task_id, t.state, COALESCE(r.verdict, r.state), \
                       g.started_at / 3600000, COUNT(*), CAST(SUM(g.tokens_in) AS BIGINT), CAST(SUM(g.tokens_out) AS BIGINT), \
                       CAST(SUM(COALESCE(g.booked_nanos, 0)) AS BIGINT) \
                     FROM gateway_calls g LEFT JOIN runs r ON r.id = g.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE g.status <> 'started' AND g.started_at >= $1 \
                     GROUP BY g.agent, COALESCE(g.deployment, g.model), g.run_id, r.task_id, t.state, r.state, r.verdict, g.started_at / 3600000 \
                     UNION ALL \
                     SELECT 'model', r.agent, i.name, i.run_id, r.task_id, t.state, COALESCE(r.verdict, r.state), i.at / 3600000, \
                       COUNT(*), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(SUM(i.booked_nanos) AS BIGINT) \
                     FROM interrupted_steps i JOIN runs r ON r.id = i.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE i.at >= $1 \
                     GROUP BY r.agent, i.name, i.run_id, r.task_id, t.state, r.state, r.verdict, i.at / 3600000",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_gateway_calls!(SqliteStore, sqlx::Sqlite);
impl_gateway_calls!(PgStore, sqlx::Postgres);

/// The audit records that go with calls' ends, `(at, body)`.
pub(crate) fn end_records(ends: &[CallEnd]) -> Vec<(Millis, String)> {
    ends.iter()
        .filter_map(|e| Some((e.at, e.audit.clone()?)))
        .collect()
}

impl SqliteStore {
    fn direct_writes(&self) -> bool {
        true
    }

    async fn write_calls_now(
        &self,
        ends: &[CallEnd],
        begins: &[CallBegin],
        now: Millis,
    ) -> Result<Vec<Option<String>>> {
        // The store's one write connection, held for the transaction (see `sqlite_direct`); the
        // work runs on this thread, which the call writer gives it (`writes_on_calling_thread`).
        let _writing = self.write.acquire().await?;
        self.direct.write_calls(ends, begins, now)
    }
}

impl PgStore {
    fn direct_writes(&self) -> bool {
        false
    }

    /// Ends calls inside `tx` in a handful of statements whatever their number (each a
    /// round trip to the server): their holds deleted in
    /// one, each account charged once for all of them (in name order), their outcomes
    /// recorded in one. A hold already settled is found gone and charged nothing.
    async fn end_calls_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        ends: &[CallEnd],
    ) -> Result<()> {
        let Some(at) = ends.iter().map(|e| e.at).max() else {
            return Ok(());
        };
        let mut charges: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        // Under PostgreSQL's 65,535 bound values a statement.
        for chunk in ends.chunks(1000) {
            let mut qb =
                sqlx::QueryBuilder::<sqlx::Postgres>::new("DELETE FROM budget_holds WHERE id IN (");
            let mut ids = qb.separated(", ");
            for e in chunk {
                ids.push_bind(e.id.clone());
            }
            qb.push(") RETURNING id, accounts, amount");
            let held: Vec<(String, String, i64)> = qb.build_query_as().fetch_all(&mut **tx).await?;
            for (id, accounts, amount) in held {
                let spent = chunk.iter().find(|e| e.id == id).map_or(0, |e| e.spent);
                let accounts: Vec<String> = serde_json::from_str(&accounts)
                    .map_err(|e| Error::Corrupt(format!("budget hold {id}: {e}")))?;
                for account in accounts {
                    let c = charges.entry(account).or_default();
                    c.0 += amount;
                    c.1 += spent;
                }
            }
        }
        for (account, (released, spent)) in &charges {
            Self::charge_in(tx, account, *released, *spent, at).await?;
        }
        // A VALUES list names its columns column1, column2, … in both engines.
        for chunk in ends.chunks(1000) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "UPDATE gateway_calls SET deployment = v.column2, status = v.column3, error = v.column4, \
                   tokens_in = v.column5, tokens_out = v.column6, duration_us = v.column7 FROM (",
            );
            qb.push_values(chunk, |mut b, e| {
                let o = &e.outcome;
                b.push_bind(e.id.clone())
                    .push_bind(o.deployment.clone())
                    .push_bind(o.status.clone())
                    .push_bind(o.error.clone())
                    .push_bind(o.tokens_in)
                    .push_bind(o.tokens_out)
                    .push_bind(o.duration_us);
            });
            qb.push(") AS v WHERE gateway_calls.id = v.column1");
            qb.build().execute(&mut **tx).await?;
        }
        for e in ends {
            let tokens = e.outcome.tokens_in + e.outcome.tokens_out;
            for scope in e.rate_scopes.iter().filter(|_| tokens > 0) {
                sqlx::query("UPDATE rate_windows SET tokens = tokens + $1 WHERE scope = $2 AND window_start = $3")
                    .bind(tokens)
                    .bind(scope)
                    .bind(e.rate_window)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    async fn write_calls_now(
        &self,
        ends: &[CallEnd],
        begins: &[CallBegin],
        now: Millis,
    ) -> Result<Vec<Option<String>>> {
        let mut tx = self.begin_write().await?;
        // Ends first: a settled hold frees what a call begun in the same commit may take.
        let audit = end_records(ends);
        if !audit.is_empty() {
            Self::append_audit_in(&mut tx, &audit).await?;
        }
        Self::end_calls_in(&mut tx, ends).await?;
        // A refused hold must undo what it took at the accounts it passed. A hold on one
        // account takes nothing when refused; a lone call with nothing else in the
        // transaction rolls the transaction back; only the rest need a savepoint (two
        // more statements).
        let alone = ends.is_empty() && begins.len() == 1;
        let mut refused = Vec::with_capacity(begins.len());
        for c in begins {
            let hold = NewHold {
                id: &c.call.id,
                kind: HOLD_CALL,
                run_id: c.call.run_id.as_deref(),
                accounts: &c.accounts,
                amount: c.amount,
            };
            if c.accounts.len() == 1 || (alone && !c.accounts.is_empty()) {
                if let Some(account) = Self::hold_in(&mut tx, &hold, now).await? {
                    if alone {
                        tx.rollback().await?;
                        return Ok(vec![Some(account)]);
                    }
                    refused.push(Some(account));
                    continue;
                }
            } else if !c.accounts.is_empty() {
                let mut one = sqlx::Acquire::begin(&mut *tx).await?;
                if let Some(account) = Self::hold_in(&mut one, &hold, now).await? {
                    one.rollback().await?;
                    refused.push(Some(account));
                    continue;
                }
                one.commit().await?;
            }
            sqlx::query(
                "INSERT INTO gateway_calls (id, agent, run_id, model, status, stream, tokens_in, tokens_out, \
                   started_at, duration_us) VALUES ($1, $2, $3, $4, 'started', $5, 0, 0, $6, 0)",
            )
            .bind(&c.call.id)
            .bind(&c.call.agent)
            .bind(&c.call.run_id)
            .bind(&c.call.model)
            .bind(i64::from(c.call.stream))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            refused.push(None);
        }
        tx.commit().await?;
        Ok(refused)
    }
}
