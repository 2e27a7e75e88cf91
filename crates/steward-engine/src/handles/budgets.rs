//! Budget accounts, what the gateway's calls were, and what everything cost.

use crate::*;

/// `Engine::budgets()`.
pub struct Budgets<'a>(pub(crate) &'a Engine);

impl Budgets<'_> {
    pub async fn calls(
        &self,
        agent: Option<&str>,
        limit: i64,
    ) -> Result<Vec<steward_store::CallRecord>> {
        Ok(self.0.store().list_calls(agent, limit).await?)
    }

    /// Model spend since `since`, grouped `by` agent, model, run or day, most expensive first.
    /// Spend since `since`, grouped `by`, and what outcomes cost over the same period.
    /// Spend since `since` grouped `by`; of `runs` only, when some are named.
    pub async fn costs(
        &self,
        by: &str,
        since: steward_types::Millis,
        runs: &[RunId],
    ) -> Result<(Vec<CostLine>, OutcomeCosts)> {
        let by = CostBy::parse(by)?;
        let mut rows = self.0.store().usage(since).await?;
        if !runs.is_empty() {
            rows.retain(|r| {
                r.run_id
                    .as_deref()
                    .is_some_and(|id| runs.iter().any(|w| w.as_str() == id))
            });
        }
        Ok((
            costs::report(&rows, &self.0.inner.prices, by),
            costs::outcomes(&rows, &self.0.inner.prices),
        ))
    }

    /// Creates or changes a budget account. `cap_usd` per `period` (`total` or `day`).
    pub async fn put(
        &self,
        account: &str,
        parent: Option<&str>,
        cap_usd: f64,
        period: &str,
    ) -> Result<steward_store::BudgetRecord> {
        let valid = |a: &str| {
            !a.is_empty()
                && a.len() <= 200
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        };
        if !valid(account) {
            return Err(Error::InvalidRequest(format!("account {account:?}: use letters, digits and - _ : . (e.g. org, team:search, agent:NAME, run:RUN_ID)")));
        }
        if !(cap_usd.is_finite() && (0.0..=1e9).contains(&cap_usd)) {
            return Err(Error::InvalidRequest(
                "cap_usd: a number from 0 to 1e9".into(),
            ));
        }
        if !matches!(period, "total" | "day" | "month") {
            return Err(Error::InvalidRequest(format!(
                "period: {period:?} is not total, day or month"
            )));
        }
        if let Some(p) = parent {
            // The parent must exist, and the account must not be among its ancestors.
            let mut cur = Some(p.to_string());
            let mut depth = 0;
            while let Some(a) = cur {
                if a == account {
                    return Err(Error::InvalidRequest(format!(
                        "parent: {p:?} would make a cycle through {account:?}"
                    )));
                }
                depth += 1;
                if depth > 16 {
                    return Err(Error::InvalidRequest(
                        "parent: budget hierarchies are at most 16 deep".into(),
                    ));
                }
                cur = self
                    .0
                    .store()
                    .get_budget(&a)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("parent: no budget account {a:?}")))?
                    .parent;
            }
        }
        let cap = (cap_usd * 1e9).round() as i64;
        Ok(self
            .0
            .store()
            .put_budget(
                account,
                parent,
                cap,
                period,
                self.0.inner.shared.clock.now_ms(),
            )
            .await?)
    }

    pub async fn list(&self) -> Result<Vec<steward_store::BudgetRecord>> {
        Ok(self.0.store().list_budgets().await?)
    }
}
